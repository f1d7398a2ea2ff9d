"""Training throughput: lmforge GPT vs transformers GPT2LMHeadModel, fp32 and bf16 autocast, eager and compiled.

    .venv/bin/python benchmarks/train.py [--threads 2] [--repeats 5] [--no-compile]

The 13.8M shape (6 layers, width 384, 6 heads, context 256, vocab 8192, tied head) at batch 8: both
models hold the same initial weights (lmforge's, through ``lmforge.hf``) and train on the same random
tokens. One call is one full optimizer step as ``lmforge pretrain`` runs it: forward under
``autocast`` (bf16) or not (fp32), ``lm_loss`` (cross-entropy in float32), backward, gradient
clipping at 1.0, AdamW (lmforge's ``build_optimizer``: decay on matrices only) and ``zero_grad``.
The same step code drives both models, so the difference is the model. transformers is timed with
its default attention (``sdpa``) and with ``eager``; each lmforge figure is compared with the faster.

tokens/s = batch x context / median step time (after 2 warm-up steps, variants alternating).
MFU = model FLOPs per step / time / the matmul peak of the dtype (``peak.py``), FLOPs as in nanoGPT /
PaLM: 6 x (matmul parameters, tied head included) + 12 x layers x width x context per token.
``--no-compile`` skips the ``torch.compile`` variants (~1-2 min of compiling). The last line is one
JSON object; ``ratio`` is the smallest lmforge / transformers tokens/s ratio over the modes run.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import peak
import torch
from _common import LoadMonitor, emit, machine, quiet_warnings, ratio, set_threads, timed
from torch import nn

SHAPES = {
    "13.8M": dict(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384),
    "tiny": dict(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32),  # --smoke
}


def flops_per_token(cfg) -> float:
    """Training FLOPs per token: 6 N + 12 L C T (N: parameters in matmuls, the head included)."""
    C, L, T, V = cfg.n_embd, cfg.n_layer, cfg.block_size, cfg.vocab_size
    n_matmul = L * (12 * C * C) + V * C
    return 6 * n_matmul + 12 * L * C * T


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str, hf: bool):
    """One optimizer step of ``model`` on (x, y), as ``lmforge.training.loop.fit`` does it."""
    from lmforge.config import TrainConfig
    from lmforge.devices import autocast_context
    from lmforge.tasks.lm import lm_loss
    from lmforge.training.optim import build_optimizer

    opt = build_optimizer(model, TrainConfig(lr=3e-4, weight_decay=0.1))
    device = torch.device("cpu")
    model.train()

    def step():
        with autocast_context(device, "bfloat16" if dtype == "bf16" else "float32"):
            logits = model(x).logits if hf else model(x)
            loss = lm_loss(logits, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def build(shape: str):
    """(lmforge GPT, {attn: transformers GPT2LMHeadModel}) with the same initial weights."""
    import transformers

    from lmforge.config import ModelConfig
    from lmforge.hf import gpt_to_hf_state_dict, hf_gpt2_config
    from lmforge.models import GPT

    cfg = ModelConfig(**SHAPES[shape])
    torch.manual_seed(0)
    ours = GPT(cfg)
    sd = gpt_to_hf_state_dict(ours.state_dict(), cfg)
    hfs = {}
    for attn in ("sdpa", "eager"):
        hf = transformers.GPT2LMHeadModel(hf_gpt2_config(cfg, attn_implementation=attn))
        hf.load_state_dict(sd)
        hfs[attn] = hf
    return cfg, ours, hfs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--smoke", action="store_true", help="a tiny model, batch 2, 1 repeat, no compile (tests)")
    args = ap.parse_args(argv)
    shape = "13.8M"
    if args.smoke:
        shape, args.batch, args.repeats, args.no_compile = "tiny", 2, 1, True
    quiet_warnings()
    set_threads(args.threads)
    pk = peak.peaks(args.threads, **({"n": 256, "repeats": 1, "cache": False} if args.smoke else {}))
    cfg, ours, hfs = build(shape)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, cfg.vocab_size, (args.batch, cfg.block_size + 1), generator=g)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    tokens = x.numel()
    fpt = flops_per_token(cfg)

    modes = [(d, False) for d in args.dtypes.split(",")]
    if not args.no_compile:
        modes += [(d, True) for d in args.dtypes.split(",")]
    tok_s, mfu, ratios, compile_s = {}, {}, {}, {}
    with LoadMonitor() as mon:
        for dtype, compiled in modes:
            mode = dtype + ("_compiled" if compiled else "")
            models = {"lmforge": copy.deepcopy(ours), **{f"transformers_{a}": copy.deepcopy(m) for a, m in hfs.items()}}
            if compiled:
                models = {k: torch.compile(m) for k, m in models.items()}
            fns = {k: step_fn(m, x, y, dtype, hf=k != "lmforge") for k, m in models.items()}
            if compiled:  # the first steps compile (forward and backward): time them apart
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    f()
                    compile_s[f"{k}_{mode}"] = round(time.perf_counter() - t0, 1)
            sec = timed(fns, args.repeats, warmup=2)
            peak_flops = pk["bf16_gflops" if dtype == "bf16" else "fp32_gflops"] * 1e9
            for k, s in sec.items():
                tok_s[f"{k}_{mode}"] = round(tokens / s, 1)
                mfu[f"{k}_{mode}"] = round(fpt * tokens / s / peak_flops, 3)
            best_hf = max(tok_s[f"transformers_sdpa_{mode}"], tok_s[f"transformers_eager_{mode}"])
            ratios[mode] = ratio(tok_s[f"lmforge_{mode}"], best_hf)
            ratios[f"{mode}_vs_transformers_default"] = ratio(tok_s[f"lmforge_{mode}"], tok_s[f"transformers_sdpa_{mode}"])
            print(mode, {k: v for k, v in tok_s.items() if k.endswith(mode)}, ratios[mode], file=sys.stderr, flush=True)
    headline = {k: v for k, v in ratios.items() if not k.endswith("_default")}
    out = {"benchmark": "train", "model": f"GPT {shape}", "params": sum(p.numel() for p in ours.parameters()),
           "batch": args.batch, "context": cfg.block_size, "tokens_per_step": tokens,
           "model_gflop_per_step": round(fpt * tokens / 1e9, 1), "tok_per_s": tok_s, "mfu": mfu,
           "ratios": ratios, "ratio": min(headline.values()), "compile_seconds": compile_s or None,
           "peak": pk, **machine(args.threads, args.repeats), **mon.report()}
    return emit(out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
