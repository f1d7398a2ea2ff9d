"""Image training speed: `lmforge train` against a plain hand-written PyTorch loop of the same model.

    .venv/bin/python benchmarks/vision.py [--config configs/mnist-cnn.yaml] [--steps 100] [--threads 2] [--repeats 3]

Both train the recipe's model (built by ``lmforge.models.build``, so the very same module) on the recipe's data
with the recipe's batch size, optimizer settings (AdamW, fused as lmforge's), dtype and threads, without
augmentation (the framework's own cost is what is measured). The plain loop is what a user would write: the
uint8 images in memory, a random batch each step, ``/ 255``, forward, cross-entropy, backward, clip, step.
lmforge is ``lmforge.recipes.train.train`` for ``--steps`` steps into a fresh run dir, timed by the ``elapsed``
of fit()'s records of its first and last step (steps 2..N; data preparation, the final evaluation and the
checkpoint excluded); the plain loop's clock covers its N steps.
The two run alternately, ``--repeats`` times after a warm-up; the medians of images/s and their ratio are
printed as JSON (target: lmforge >= the plain loop). ``--smoke``: digits, a few steps.

Both run in this one process, so both get the malloc thresholds that fit() fixes
(``lmforge.devices.tune_host_allocator``, applied here before either runs; a plain loop's author gets the
same from ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``). Without it glibc's adaptive threshold made
both 10-15% slower and the ratio depend on what the process had allocated before (0.92 in the first
measurement). ``--default-malloc`` leaves glibc's defaults (``allocator_tuned`` in the JSON says which).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import ROOT, LoadMonitor, emit, machine, quiet_warnings, ratio, set_threads

NO_AUG = {"image.rotate": "0", "image.translate": "0", "image.scale": "0", "image.shear": "0", "image.crop_padding": "0",
          "image.crop_scale": "0", "image.hflip": "false", "image.auto": "none", "image.erasing": "0", "image.mixup": "0",
          "image.cutmix": "0"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "mnist-cnn.yaml"))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="digits, a few steps")
    p.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc thresholds as they are")
    args = p.parse_args(argv)
    import os

    from lmforge.devices import tune_host_allocator

    if args.default_malloc:
        os.environ["LMFORGE_MALLOC"] = "default"  # fit() then leaves them too
    tuned = tune_host_allocator()
    quiet_warnings()
    set_threads(args.threads)
    from lmforge.config import apply_overrides, load_config
    from lmforge.models import build
    from lmforge.recipes.train import train
    from lmforge.tasks.image import read_split

    over = {**NO_AUG, "train.eval_interval": "0", "train.keep_best": "", "train.log_interval": "1000000",
            "train.num_threads": str(args.threads), "train.warmup_steps": "0"}
    if args.smoke:
        args.config, args.steps, args.repeats = str(ROOT / "configs" / "digits-cnn.yaml"), 5, 1
    over["train.max_steps"] = over["train.save_interval"] = str(args.steps)
    cfg = apply_overrides(load_config(args.config), over)
    work = Path(tempfile.mkdtemp(prefix="lmforge-vision-bench-"))
    runs = iter(range(10**6))

    def lmforge_run() -> float:
        """Images/s between the first and the last step's records (fit() logs both): its training steps, not
        the final evaluation and checkpoint the plain loop does not do."""
        from lmforge.runs.files import read_metrics

        run = work / f"run{next(runs)}"
        train(args.config, overrides=over, out=run, progress=False)
        steps = [r for r in read_metrics(run) if r.get("split") == "train"]
        first, last = steps[0], steps[-1]
        return (last["step"] - first["step"]) * cfg.train.batch_size / (last["elapsed"] - first["elapsed"])

    data = read_split(cfg, "train")
    first = work / "run-shape"
    train(args.config, overrides={**over, "train.max_steps": "1"}, out=first, progress=False)
    shaped = load_config(str(first / "config.yaml"))  # the model fields the recipe filled in from the data

    def plain_run() -> float:
        torch.manual_seed(0)
        model = build(shaped.model).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)
        bf16 = cfg.train.dtype == "bfloat16"
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.randint(0, len(data), (cfg.train.batch_size,), generator=g)
            x, y = data.images[idx].float() / 255, data.labels[idx]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
        return args.steps * cfg.train.batch_size / (time.perf_counter() - t0)

    with LoadMonitor() as mon:
        lmforge_run(), plain_run()  # warm-up
        got: dict[str, list[float]] = {"lmforge": [], "plain": []}
        for _ in range(max(1, args.repeats)):
            got["lmforge"].append(lmforge_run())
            got["plain"].append(plain_run())
    med = {k: statistics.median(v) for k, v in got.items()}
    out = {"benchmark": "vision", "config": str(Path(args.config).relative_to(ROOT)), "model": shaped.model.name,
           "batch": cfg.train.batch_size, "dtype": cfg.train.dtype, "steps": args.steps,
           "lmforge_images_per_s": round(med["lmforge"], 1), "plain_images_per_s": round(med["plain"], 1),
           "samples": {k: [round(v, 1) for v in vs] for k, vs in got.items()},
           "allocator_tuned": tuned, "ratio": ratio(med["lmforge"], med["plain"]), "ratios": {"lmforge_vs_plain": ratio(med["lmforge"], med["plain"])},
           **machine(args.threads, args.repeats), **mon.report()}
    return emit(out)


if __name__ == "__main__":
    main()
