"""Where a translation training step goes: torch.profiler over a run's recipe, its own batches.

    .venv/bin/python benchmarks/translate_profile.py --run runs/zh-en [--threads 2] [--steps 15]

Builds the run's model from its config (fresh weights: the step's cost does not depend on them), then
times ``--steps`` training steps (forward under the recipe's autocast, the recipe's label-smoothed loss,
backward, the recipe's gradient clipping, AdamW) after 5 warm-up steps, and profiles as many more. Prints
JSON: steps/s, the estimated GFLOP of a step (6 x each stack's matrix parameters x the tokens it reads:
the encoder's the source tokens, the decoder's and the output layer's the target tokens), and each op's
share of the profiled CPU time (the top ``--top``). ``--smoke`` trains a tiny run first (as translate_decode.py does).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, emit, machine, quiet_warnings, set_threads

sys.path.insert(0, str(ROOT / "tests"))  # --smoke's generated pairs


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="a translation run dir (seq2seq)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--smoke", action="store_true", help="train a tiny run on generated pairs first; 2 steps")
    args = p.parse_args(argv)
    quiet_warnings()
    set_threads(args.threads)
    from torch.profiler import ProfilerActivity, profile

    from lmforge.config import load_config
    from lmforge.models import build
    from lmforge.tasks import translate as T
    from lmforge.tokenizer import Tokenizer

    if args.smoke:
        from translate_decode import _smoke_run

        args.run, args.steps = str(_smoke_run(Path(tempfile.mkdtemp(prefix="lmforge-translate-prof-")))), 2
    if not args.run:
        p.error("--run RUN is required (or --smoke)")
    run = Path(args.run)
    cfg = load_config(str(run / "config.yaml"))
    tok = Tokenizer.load(run / "tokenizer.json")
    batches = T.Translation().batches(cfg, tok, (T.run_pairs(cfg, run, "train"), T.run_pairs(cfg, run, "val"), tok))
    torch.manual_seed(cfg.train.seed)
    model = build(cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    bf16 = cfg.train.dtype == "bfloat16"
    tokens = []  # (source, target) tokens of each step

    def step(i: int) -> None:
        x, y = batches.train_batch(i, 0, 1)
        tokens.append((x["src"].numel(), x["tgt"].numel()))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = T.smoothed_loss(model(x["src"], x["src_mask"], x["tgt"]), y, cfg.translate.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()

    for i in range(5):
        step(i)
    t0 = time.perf_counter()
    for i in range(5, 5 + args.steps):
        step(i)
    steps_per_s = args.steps / (time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(5 + args.steps, 5 + 2 * args.steps):
            step(i)
    ops = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ops) or 1
    top = sorted(ops, key=lambda e: -e.self_cpu_time_total)[: args.top]
    def matrices(stack: str) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith(stack) and p.dim() == 2 and "wpe" not in n)

    dec = matrices("decoder.") + cfg.model.vocab_size * cfg.model.n_embd  # + the output layer (tied to wte)
    src, tgt = (sum(t[j] for t in tokens) / len(tokens) for j in (0, 1))
    gflop = 6 * (matrices("encoder.") * src + dec * tgt) / 1e9
    out = {"benchmark": "translate_profile", "run": str(run), "dtype": cfg.train.dtype, "steps_per_s": round(steps_per_s, 3),
           "gflop_per_step": round(gflop, 3), "gflops": round(gflop * steps_per_s, 1),
           "op_shares": {e.key: round(e.self_cpu_time_total / total, 4) for e in top},
           "op_calls_per_step": {e.key: round(e.count / args.steps, 1) for e in top},
           **machine(args.threads, 1)}
    return emit(out)


if __name__ == "__main__":
    main()
