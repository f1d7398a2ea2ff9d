"""Test accuracy of image runs on their test split and on a shifted / rotated copy of it, written to .npz.

    .venv/bin/python benchmarks/image_robustness.py RUN [RUN ...] [--rotate 20] [--shift 0.15] [--seed 0] [--out FILE.npz]

The copy: every test image of the first run's data, warped once by ``lmforge.data.augment.warp`` (the
function the training augmentation uses) with an angle drawn uniformly in [-rotate, rotate] degrees and
shifts in x and y drawn uniformly in [-shift, shift] of the image side, scale 1, from a generator seeded
with ``--seed``; bilinear, zeros outside, rounded back to uint8. It is written as an .npz (``images``,
``labels``, ``label_names``) and every run is scored by ``lmforge evaluate RUN --data FILE.npz``, as a user
would, and on ``--split test``. Prints JSON: per run its test and shifted accuracy, the drop, and (``ratios``)
shifted / test accuracy.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import LoadMonitor, emit, machine, quiet_warnings, set_threads


def shifted_copy(run: str, out: Path, rotate: float, shift: float, seed: int) -> dict:
    """Write the warped copy of ``run``'s test split to ``out``; returns how it was made."""
    import numpy as np

    from lmforge.data.augment import to_float, warp
    from lmforge.data.mnist import save_npz
    from lmforge.runs import loader
    from lmforge.tasks.image import read_split

    cfg = loader.read_run_config(loader.require_run_dir(run))
    d = read_split(cfg, "test")
    g = torch.Generator().manual_seed(seed)
    n = len(d.labels)

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=g) * (hi - lo) + lo

    angle, tx, ty = u(-rotate, rotate), u(-shift, shift), u(-shift, shift)
    zero = torch.zeros(n)
    x = warp(to_float(d.images), angle, tx, ty, torch.ones(n), zero, zero)  # (N, C, H, W) in [0, 1]
    images = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    save_npz(out, images, d.labels.numpy().astype(np.int64), cfg.image.label_names)
    return {"file": str(out), "images": n, "rotate_degrees": rotate, "shift_fraction": shift, "seed": seed,
            "source": f"{cfg.image.data} (test)"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--rotate", type=float, default=20.0)
    p.add_argument("--shift", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    quiet_warnings()
    set_threads(args.threads)
    from lmforge.tools.evaluate import evaluate_run

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lmforge-robust-")) / "shifted.npz"
    rows = {}
    with LoadMonitor() as mon:
        made = shifted_copy(args.runs[0], out, args.rotate, args.shift, args.seed)
        for run in args.runs:
            test = evaluate_run(run, split="test")["accuracy"]
            moved = evaluate_run(run, data=str(out))["accuracy"]
            rows[run] = {"test_accuracy": test, "shifted_accuracy": moved, "drop": round(test - moved, 5)}
    ratios = {run: round(r["shifted_accuracy"] / max(r["test_accuracy"], 1e-9), 4) for run, r in rows.items()}
    return emit({"benchmark": "image_robustness", "shifted": made, "runs": rows, "ratio": min(ratios.values()),
                 "ratios": ratios, **machine(args.threads, 1), **mon.report()})


if __name__ == "__main__":
    main()
