"""Time to quality: how long lmforge's pretraining recipe takes to reach the validation loss that a
transformers GPT-2 reaches in a fixed wall-clock budget, on the same tokens.

    .venv/bin/python benchmarks/speedrun.py [--ref-minutes 10] [--threads 2] [--dtype bf16] [--data peoples-daily]

Data: one byte-level BPE tokenizer (``--vocab`` 8192) trained once by lmforge on the train split of
``--data`` (a registered set or a .txt file) and the token shards it makes, cached in
``runs/bench/speedrun/``; both sides train on those shards and are scored on the same held-out
windows of the validation split (``--eval-windows`` evenly spaced windows of min(both contexts) tokens),
mean next-token cross-entropy in nats/token (``lm_loss``), always in float32 with dropout off.

1. Reference: ``transformers.GPT2LMHeadModel``, the 13.8M shape of ``train.py`` (6 layers, width 384,
   6 heads, context 256, tied head, GPT-2's own init, dropout 0 as nanoGPT pretrains), batch 8;
   AdamW (betas 0.9 / 0.95, eps 1e-8, weight decay 0.1 on matrices only), peak LR 1e-3 (nanoGPT's
   figure for ~10M models), gradient clipping at 1.0, linear warmup over the first 5% then cosine
   decay to 10%: a schedule over *training time* (the budget is wall clock, not steps). It trains
   for ``--ref-minutes``; its final validation loss is the target. Attention: ``eager`` under bf16,
   ``sdpa`` in fp32 (the faster of the two in each, PERF-NOTES.md).
2. lmforge: the recipe ``--recipe`` (default ``configs/gpt-zh-speedrun.yaml``: the demo's 5.3M shape,
   context 128, batch 32, with rotary positions, RMSNorm, a squared-ReLU MLP, no biases or dropout,
   Muon, 400 steps) run by ``lmforge.training.loop.fit`` in this process, with these overrides only: the
   shared tokenizer, ``--dtype``, ``--threads``, no checkpoints before the end, and ``max_steps`` /
   ``warmup_steps`` scaled by ref-minutes / 10 (a recipe's steps are its plan against a 10-minute
   reference). Context and batch differ from the reference by the
   recipe's design. It stops at the first evaluation at or below the target, or after ``--cap`` x
   ref-minutes of training (default 1: slower than the reference is a ratio below 1 whatever its value).

Clocks count training only: evaluations (every ``--eval-every`` seconds of training, default
1/20 of the budget, on both sides) are paused out, so the time to the target is known to within one
interval. ``ratio`` = reference seconds / lmforge seconds to the same loss (0 when lmforge does not
get there within the cap). Every reference result is kept in ``runs/bench/speedrun/ref-*.json``;
``--reuse-ref`` takes it from there instead of training again when the settings match (for trying
lmforge recipes: the ratio is then against a run made earlier, under that run's machine load). ``--smoke``: tiny shapes, a 3-second reference (tests; pass ``--data`` a small file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import _common
import torch
from _common import LoadMonitor, emit, machine, quiet_warnings, set_threads

REF = {"13.8M": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=8, lr=1e-3),
       "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch=4, lr=3e-3)}  # --smoke
SMOKE_RECIPE = {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32, "model.dropout": 0.0,
                "train.batch_size": 4, "train.max_steps": 5000, "train.warmup_steps": 10}
RECIPE_MINUTES = 10  # the budget the recipe's max_steps is planned for
WARMUP_FRAC, MIN_LR_RATIO = 0.05, 0.1


class _Stop(Exception):
    """Raised from fit's after_step hook: the target loss was reached or the time cap passed."""


def prepare(spec: str, vocab: int):
    """(tokenizer, TokenData): one lmforge BPE tokenizer and its shards, cached by text and vocab size."""
    from lmforge.data.shards import prepare_tokens
    from lmforge.data.text import load_text
    from lmforge.tokenizer import Tokenizer, train_tokenizer

    train_text, val_text = load_text(spec)
    key = hashlib.sha256(train_text.encode("utf-8")).hexdigest()[:12]
    folder = _common.CACHE_DIR / "speedrun" / f"{Path(spec).stem}-{vocab}-{key}"
    tok_path = folder / "tokenizer.json"
    if not tok_path.exists():
        print(f"training a {vocab}-token BPE tokenizer on {spec} ...", file=sys.stderr, flush=True)
        train_tokenizer(train_text.splitlines(keepends=True), vocab).save(tok_path)
    tok = Tokenizer.load(tok_path)
    return tok, tok_path, prepare_tokens(tok, train_text, val_text, folder / "data")


@torch.no_grad()
def val_loss(model: torch.nn.Module, batches: list, hf: bool) -> float:
    """Mean next-token cross-entropy (nats/token) over ``batches``, float32, eval mode."""
    from lmforge.tasks.lm import lm_loss

    was = model.training
    model.eval()
    total, n = 0.0, 0
    for x, y in batches:
        logits = model(x).logits if hf else model(x)
        total += lm_loss(logits, y).item() * y.numel()
        n += y.numel()
    model.train(was)
    return total / n


def train_reference(shape: dict, vocab_size: int, data, evals: list, seconds: float, every: float, dtype: str) -> dict:
    """GPT2LMHeadModel trained for ``seconds`` of training time; its curve and final validation loss."""
    import transformers

    from lmforge.data.batches import LMBatches
    from lmforge.devices import autocast_context
    from lmforge.tasks.lm import lm_loss

    attn = "eager" if dtype == "bf16" else "sdpa"
    cfg = transformers.GPT2Config(vocab_size=vocab_size, n_positions=shape["block_size"], n_embd=shape["n_embd"],
                                  n_layer=shape["n_layer"], n_head=shape["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0, attn_implementation=attn)
    torch.manual_seed(1337)
    model = transformers.GPT2LMHeadModel(cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    lr = shape["lr"]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8)
    batches = LMBatches(data, shape["block_size"], shape["batch"], seed=1337, eval_batches=0)
    ctx = autocast_context(torch.device("cpu"), "bfloat16" if dtype == "bf16" else "float32")
    curve, step, clock, next_eval = [], 0, 0.0, every
    model.train()
    while clock < seconds:
        t0 = time.perf_counter()
        p = clock / seconds  # schedule over the share of the budget used
        if p < WARMUP_FRAC:
            now_lr = lr * max(p, 1e-3) / WARMUP_FRAC
        else:
            frac = (p - WARMUP_FRAC) / (1 - WARMUP_FRAC)
            now_lr = lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = now_lr
        x, y = batches.train_batch(step, 0, shape["batch"])
        with ctx:
            loss = lm_loss(model(x).logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        clock += time.perf_counter() - t0
        if clock >= next_eval or clock >= seconds:
            curve.append([round(clock, 1), round(val_loss(model, evals, hf=True), 4)])
            next_eval += every
    tokens = step * shape["batch"] * shape["block_size"]
    config = {"model": f"transformers.GPT2LMHeadModel ({attn} attention)", **shape, "vocab_size": vocab_size,
              "dropout": 0.0, "optimizer": "AdamW betas (0.9, 0.95) wd 0.1 (matrices), clip 1.0",
              "schedule": f"warmup {WARMUP_FRAC:.0%} of the time, cosine to {MIN_LR_RATIO} x lr"}
    return {"val_loss": curve[-1][1], "seconds": round(clock, 2), "steps": step, "tokens": tokens,
            "tok_per_s": round(tokens / clock, 1), "params": sum(p.numel() for p in model.parameters()),
            "config": config, "curve": curve}


def train_lmforge(recipe: str, overrides: dict, tok_path: Path, data, evals: list, target: float, cap: float,
                  every: float, dtype: str, threads: int) -> dict:
    """The recipe run by ``fit`` until its validation loss reaches ``target`` or ``cap`` seconds of training."""
    from lmforge.config import load_config
    from lmforge.data.batches import LMBatches
    from lmforge.models import build
    from lmforge.tasks.lm import lm_loss
    from lmforge.training.loop import fit

    cfg = load_config(recipe, overrides)
    steps = cfg.train.max_steps
    t = cfg.train
    t.dtype, t.num_threads, t.device = ("bfloat16" if dtype == "bf16" else "float32"), threads, "cpu"
    t.eval_interval, t.save_interval, t.log_interval = 0, steps, max(1, steps // 20)
    cfg.data.tokenizer, cfg.model.vocab_size = str(tok_path), data.vocab_size
    torch.manual_seed(t.seed)
    model = build(cfg.model)
    batches = LMBatches(data, cfg.model.block_size, t.batch_size, t.seed, t.eval_batches)
    state = {"clock": 0.0, "mark": 0.0, "next": every, "steps": 0, "reached": None}
    curve: list = []

    def after_step(step: int) -> None:
        now = time.perf_counter()
        state["clock"] += now - state["mark"]
        state["steps"] = done = step + 1
        clock = state["clock"]
        if clock >= state["next"] or clock >= cap or done == steps:
            loss = val_loss(model, evals, hf=False)
            curve.append([round(clock, 1), round(loss, 4)])
            state["next"] += every
            if loss <= target:
                state["reached"] = clock
                raise _Stop
            if clock >= cap:
                raise _Stop
        state["mark"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as run_dir:
        state["mark"] = time.perf_counter()
        try:
            fit(model, batches, t, run_dir, loss_fn=lm_loss, progress=False, after_step=after_step)
        except _Stop:
            pass
    tokens = state["steps"] * t.batch_size * cfg.model.block_size
    config = {"recipe": recipe, "overrides": dict(overrides), "n_layer": cfg.model.n_layer,
              "n_head": cfg.model.n_head, "n_embd": cfg.model.n_embd, "block_size": cfg.model.block_size,
              "batch": t.batch_size, "dropout": cfg.model.dropout, "lr": t.lr, "warmup_steps": t.warmup_steps,
              "max_steps": steps, "min_lr_ratio": t.min_lr_ratio, "weight_decay": t.weight_decay,
              "betas": [t.beta1, t.beta2], "grad_clip": t.grad_clip, "dtype": t.dtype}
    clock = max(state["clock"], 1e-9)
    return {"seconds": None if state["reached"] is None else round(state["reached"], 2),
            "val_loss": curve[-1][1] if curve else None, "steps": state["steps"], "tokens": tokens,
            "trained_seconds": round(clock, 2), "tok_per_s": round(tokens / clock, 1),
            "params": sum(p.numel() for p in model.parameters()), "config": config, "curve": curve}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="peoples-daily", help="a registered text set or a .txt file")
    ap.add_argument("--vocab", type=int, default=8192, help="the shared tokenizer's vocabulary size")
    ap.add_argument("--ref-minutes", type=float, default=10.0, help="the reference's training budget")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16", help="autocast dtype of both sides")
    ap.add_argument("--recipe", default=str(_common.ROOT / "configs" / "gpt-zh-speedrun.yaml"))
    ap.add_argument("--lmforge-steps", type=int, default=0,
                    help="the recipe's max_steps (its LR schedule length); 0 = the recipe's x ref-minutes / 10")
    ap.add_argument("--eval-every", type=float, default=0.0, help="seconds of training between evaluations; "
                    "0 = ref-minutes x 3 (1/20 of the budget)")
    ap.add_argument("--eval-windows", type=int, default=256, help="held-out windows scored at each evaluation")
    ap.add_argument("--reuse-ref", action="store_true", help="reuse the kept reference run of the same settings")
    ap.add_argument("--cap", type=float, default=1.0, help="lmforge's training time limit, in multiples of the reference's")
    ap.add_argument("--smoke", action="store_true", help="tiny models, a 3-second reference (tests)")
    args = ap.parse_args(argv)
    from lmforge.config import load_config
    from lmforge.data.shards import iter_eval_batches

    shape, overrides, seconds = REF["13.8M"], {}, args.ref_minutes * 60
    if args.smoke:
        shape, overrides, seconds, args.vocab, args.eval_windows = REF["tiny"], dict(SMOKE_RECIPE), 3.0, 512, 16
    every = args.eval_every or seconds / 20
    if not args.smoke:
        base = load_config(args.recipe).train
        scale = args.ref_minutes / RECIPE_MINUTES
        steps = args.lmforge_steps or max(10, round(base.max_steps * scale))
        overrides = {"train.max_steps": steps,
                     "train.warmup_steps": min(base.warmup_steps, max(1, round(base.warmup_steps * steps / base.max_steps)))}
    quiet_warnings()
    set_threads(args.threads)
    tok, tok_path, data = prepare(args.data, args.vocab)
    context = min(shape["block_size"], load_config(args.recipe, overrides).model.block_size, len(data.val) - 1)
    per = min(32, args.eval_windows)
    evals = list(iter_eval_batches(data.val, context, per, max_batches=math.ceil(args.eval_windows / per)))
    eval_tokens = sum(y.numel() for _, y in evals)

    ref_key = hashlib.sha256(json.dumps([shape, tok_path.parent.name, args.dtype, seconds, args.threads,
                                         args.eval_windows, torch.__version__]).encode()).hexdigest()[:12]
    ref_file = _common.CACHE_DIR / "speedrun" / f"ref-{ref_key}.json"
    with LoadMonitor() as mon:
        if args.reuse_ref and ref_file.exists():
            ref = json.loads(ref_file.read_text())
            ref["reused"] = str(ref_file)
        else:
            ref = train_reference(shape, tok.vocab_size, data, evals, seconds, every, args.dtype)
            ref_file.parent.mkdir(parents=True, exist_ok=True)
            ref_file.write_text(json.dumps(ref))
        print(f"reference: val loss {ref['val_loss']} after {ref['seconds']} s, {ref['tok_per_s']} tok/s",
              file=sys.stderr, flush=True)
        ours = train_lmforge(args.recipe, overrides, tok_path, data, evals, ref["val_loss"], args.cap * seconds, every,
                             args.dtype, args.threads)
        print(f"lmforge: {ours['seconds']} s to {ref['val_loss']} (last {ours['val_loss']}), {ours['tok_per_s']} tok/s",
              file=sys.stderr, flush=True)
    r = round(ref["seconds"] / ours["seconds"], 3) if ours["seconds"] else 0.0
    out = {"benchmark": "speedrun", "data": args.data, "vocab_size": tok.vocab_size, "dtype": args.dtype,
           "train_tokens": len(data.train), "val_tokens": len(data.val),
           "eval": {"context": context, "windows": sum(len(y) for _, y in evals), "tokens": eval_tokens,
                    "every_seconds": round(every, 2), "loss": "lm_loss, nats/token, float32, eval mode"},
           "ref_val_loss": ref["val_loss"], "ref_seconds": ref["seconds"], "lmforge_seconds": ours["seconds"],
           "lmforge_val_loss": ours["val_loss"], "reached": ours["seconds"] is not None,
           "ref_tok_per_s": ref["tok_per_s"], "lmforge_tok_per_s": ours["tok_per_s"],
           "ratio": r, "ratios": {"time_to_ref_loss": r}, "reference": ref, "lmforge": ours,
           **machine(args.threads, 1), **mon.report()}
    return emit(out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
