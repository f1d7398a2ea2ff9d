"""Where the time goes: torch.profiler shares of a training step and of batch-1 decoding, lmforge beside transformers.

    .venv/bin/python benchmarks/profiles.py [--threads 1] [--steps 3] [--tokens 32]

The models and inputs of ``train.py`` (13.8M, batch 8 x 256, fp32 and bf16 autocast, one full AdamW step)
and ``generate.py`` (batch 1, 32-token prompt, greedy with KV cache; the 13.8M model in fp32, the 124M
shape in int8). Self CPU time of every aten op over ``--steps`` steps (after one warm-up) is summed into
categories: ``matmul`` (mm / addmm / bmm / linear / int8 matmuls: the work a faster implementation
cannot avoid), ``attention`` (SDPA kernels), ``optimizer`` (AdamW's foreach ops, clipping), ``copy``
(dtype casts, copies, cat), ``elementwise`` (the rest of aten), ``python`` (wall time no op accounts for:
interpreter, module calls). A diagnostic, not part of ``make bench``: the issue notes quote it to say
what stands between a figure and its target. The last line is one JSON object (no ``ratio``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _common import emit, machine, quiet_warnings, set_threads

CATEGORIES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::_int_mm", "aten::linear", "quantized::linear_dynamic",
               "mkldnn::", "onednn::", "quantized::", "aten::_weight_int8pack_mm", "aten::baddbmm"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),
    "optimizer": ("aten::_foreach", "aten::_fused_adamw"),
    "copy": ("aten::copy_", "aten::to", "aten::_to_copy", "aten::cat", "aten::clone", "aten::contiguous"),
}


def category(name: str) -> str:
    for cat, prefixes in CATEGORIES.items():
        if name.startswith(prefixes):
            return cat
    return "elementwise" if name.startswith("aten::") else "other"


def profile(fn, steps: int) -> dict:
    """Shares of self CPU time by category, and the top ops, over ``steps`` calls of ``fn``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()  # warm-up
    t0 = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    wall_us = (time.perf_counter() - t0) * 1e6
    ops = [(e.key, e.self_cpu_time_total) for e in prof.key_averages() if e.self_cpu_time_total > 0]
    by_cat: dict[str, float] = {}
    for name, us in ops:
        by_cat[category(name)] = by_cat.get(category(name), 0.0) + us
    accounted = sum(by_cat.values())
    by_cat["python"] = max(0.0, wall_us - accounted)  # profiler overhead included: an upper bound
    top = sorted(ops, key=lambda kv: -kv[1])[:8]
    return {"ms_per_step": round(wall_us / steps / 1e3, 2),
            "shares": {k: round(v / wall_us, 3) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
            "top_ops": [[name, round(us / wall_us, 3)] for name, us in top]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="profiled training steps / generations")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per profiled generation")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (tests)")
    args = ap.parse_args(argv)
    quiet_warnings()
    set_threads(args.threads)
    import generate as gen
    import train as tr

    from lmforge.tools.generate import generate

    out: dict = {"benchmark": "profiles"}
    shape = "tiny" if args.smoke else "13.8M"
    cfg, ours, hfs = tr.build(shape)
    hf = hfs["sdpa"]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (2 if args.smoke else 8, cfg.block_size), generator=g)
    y = torch.roll(x, -1, 1)
    for dtype in ("fp32", "bf16"):
        for name, model, is_hf in (("lmforge", ours, False), ("transformers", hf, True)):
            out[f"train_{dtype}_{name}"] = profile(tr.step_fn(model, x, y, dtype, is_hf), args.steps)
            print(f"train {dtype} {name}", out[f"train_{dtype}_{name}"]["shares"], file=sys.stderr, flush=True)
    decode_cases = [("tiny", "fp32")] if args.smoke else [("13.8M", "fp32"), ("124M", "int8")]
    for dshape, dtype in decode_cases:
        base_ours, base_hf = gen.build_pair(dshape)
        m_ours, m_hf, _, _ = gen.variants(base_ours, base_hf, dtype)
        prompt = torch.randint(0, base_ours.cfg.vocab_size, (1, 32), generator=g)
        n = 4 if args.smoke else args.tokens

        def run_ours(m=m_ours):
            return list(generate(m, prompt[0].tolist(), n, temperature=0))

        def run_hf(m=m_hf):
            with torch.inference_mode():
                return m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False,
                                  use_cache=True)

        for name, fn in (("lmforge", run_ours), ("transformers", run_hf)):
            r = profile(fn, args.steps)
            r["ms_per_token"] = round(r["ms_per_step"] / n, 3)
            out[f"decode_{dshape}_{dtype}_{name}"] = r
            print(f"decode {dshape} {dtype} {name}", r["ms_per_token"], r["shares"], file=sys.stderr, flush=True)
    out.update(machine(args.threads, args.steps))
    return emit(out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
