"""Batch-1 generation: lmforge ``generate`` vs transformers ``generate`` (KV cache on, greedy), fp32 / bf16 / int8.

    .venv/bin/python benchmarks/generate.py [--threads 2] [--shapes 13.8M,124M] [--repeats 3]

Two GPT shapes with random weights: 13.8M (6 layers, width 384, 6 heads, context 256, vocab 8192)
and 124M (GPT-2 small: 12 layers, width 768, 12 heads, context 1024, vocab 50257). Both libraries
hold the same weights (lmforge's, through ``lmforge.hf``); a 32-token prompt, 128 new tokens, greedy
(eos never stops either). Per dtype:

- fp32: the models as built;
- bf16: weights cast to bfloat16 (``model.to(torch.bfloat16)`` on both sides);
- lmforge's model goes through ``lmforge.models.layers.for_decode`` first, as ``lmforge generate``
  does (fp32: input-major weight layout; bf16: oneDNN-prepacked weights; int8: unchanged);
- int8: lmforge's ``compress`` int8 (``quantize_int8``: per-channel int8 weights, per-token int8
  activations, ``torch._int_mm``); transformers has no int8 path of its own on CPU, so its ``Conv1D``
  layers are turned into ``nn.Linear`` (``quantize_dynamic`` skips Conv1D) and go through torch's
  ``quantize_dynamic`` (fbgemm, per-channel weights): what torch offers.

tokens/s = 128 / wall time of one whole ``generate`` call (prefill included), median of
``--repeats`` after one warm-up, the two libraries alternating. For each shape and dtype the
memory-bandwidth bound is the read bandwidth (``peak.mem_read_gbps``, measured in this process after
each timing, so under the same load; the median of those) over the bytes one decode step must read
(every weight the step multiplies by, the tied head included, not the embedding tables); ``share``
is tokens/s over that bound. The last line is one JSON object; ``ratio`` is the smallest lmforge /
transformers tokens/s ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import peak
import torch
from _common import LoadMonitor, emit, machine, quiet_warnings, ratio, set_threads, timed
from torch import nn

SHAPES = {
    "13.8M": dict(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384),
    "124M": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "tiny": dict(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32),  # --smoke
}
DTYPES = ("fp32", "bf16", "int8")


def build_pair(shape: str):
    """(lmforge GPT, transformers GPT2LMHeadModel) with the same random weights, eval mode."""
    import transformers

    from lmforge.config import ModelConfig
    from lmforge.hf import gpt_to_hf_state_dict, hf_gpt2_config
    from lmforge.models import GPT

    cfg = ModelConfig(**SHAPES[shape])
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    hf = transformers.GPT2LMHeadModel(hf_gpt2_config(cfg)).eval()
    hf.load_state_dict(gpt_to_hf_state_dict(ours.state_dict(), cfg))
    hf.generation_config.eos_token_id = None  # random weights: never stop early
    hf.generation_config.pad_token_id = 0
    return ours, hf


def hf_int8(hf: nn.Module) -> nn.Module:
    """A copy of a GPT2LMHeadModel whose Conv1D layers are nn.Linear, through torch's quantize_dynamic."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    from transformers.pytorch_utils import Conv1D

    hf = copy.deepcopy(hf)
    for name, m in list(hf.named_modules()):
        if isinstance(m, Conv1D):
            lin = nn.Linear(m.weight.shape[0], m.weight.shape[1])  # Conv1D weight is (in, out)
            lin.weight.data = m.weight.data.t().contiguous()
            lin.bias.data = m.bias.data.clone()
            parent, _, child = name.rpartition(".")
            setattr(hf.get_submodule(parent), child, lin)
    return quantize_dynamic(hf, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def variants(ours: nn.Module, hf: nn.Module, dtype: str):
    """(lmforge model, transformers model, bytes a decode step reads, seconds ``for_decode`` took) for ``dtype``;
    lmforge's model goes through ``for_decode`` (as ``lmforge generate`` does)."""
    from lmforge.models.layers import for_decode
    from lmforge.models.quantize import quantize_int8

    if dtype == "fp32":
        ours, hf = copy.deepcopy(ours), hf
    elif dtype == "bf16":
        ours, hf = copy.deepcopy(ours).to(torch.bfloat16), copy.deepcopy(hf).to(torch.bfloat16)
    else:
        ours, hf = quantize_int8(ours)[0], hf_int8(hf)
    nbytes = decode_bytes(ours)  # before packing: packed weights are no parameters
    t0 = time.perf_counter()
    for_decode(ours)
    return ours, hf, nbytes, time.perf_counter() - t0


def decode_bytes(model: nn.Module) -> int:
    """Bytes one decode step reads: every parameter / buffer but the embedding tables (one row each),
    a table tied to the head counted once (the head reads all of it)."""
    tr = model.transformer
    head = getattr(model.lm_head, "weight", None)
    skip = {id(t) for m in (tr.wte, getattr(tr, "wpe", None)) if m is not None for t in m.parameters()
            if head is None or t is not head}
    skip |= {id(b) for n, b in model.named_buffers() if n == "pos_table"}
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in skip and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="13.8M,124M")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="a tiny model, 8 tokens, 1 repeat (tests)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.shapes, args.prompt, args.new, args.repeats = "tiny", 4, 8, 1
    quiet_warnings()
    set_threads(args.threads)
    from lmforge.tools.generate import generate

    results, ratios, bandwidth, nbytes_of = {}, {}, [], {}
    with LoadMonitor() as mon:
        for shape in args.shapes.split(","):
            base_ours, base_hf = build_pair(shape)
            g = torch.Generator().manual_seed(1)
            prompt = torch.randint(0, base_ours.cfg.vocab_size, (1, args.prompt), generator=g)
            for dtype in args.dtypes.split(","):
                ours, hf, nbytes, prep_s = variants(base_ours, base_hf, dtype)

                def run_ours(ours=ours):
                    return list(generate(ours, prompt[0].tolist(), args.new, temperature=0))

                def run_hf(hf=hf):
                    with torch.inference_mode():
                        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new,
                                          do_sample=False, use_cache=True)
                    return out[0, args.prompt:].tolist()

                same = run_ours() == run_hf()
                sec = timed({"lmforge": run_ours, "transformers": run_hf}, args.repeats, warmup=1)
                bandwidth.append(peak.mem_read_gbps(16 if args.smoke else 256, repeats=3))  # now: under the same load
                tok = {k: round(args.new / v, 2) for k, v in sec.items()}
                results[f"{shape}_{dtype}"] = {
                    "lmforge_tok_s": tok["lmforge"], "transformers_tok_s": tok["transformers"],
                    "ratio": ratio(tok["lmforge"], tok["transformers"]), "same_tokens": same,
                    "decode_mbytes": round(nbytes / 1e6, 1), "for_decode_seconds": round(prep_s, 3)}
                ratios[f"{shape}_{dtype}"] = results[f"{shape}_{dtype}"]["ratio"]
                nbytes_of[f"{shape}_{dtype}"] = nbytes
                print(shape, dtype, results[f"{shape}_{dtype}"], file=sys.stderr, flush=True)
    gbps = statistics.median(bandwidth)  # one figure for all rows: single reads of it are noisy
    for key, r in results.items():
        bound = gbps * 1e9 / nbytes_of[key]
        r.update(bandwidth_bound_tok_s=round(bound, 1), lmforge_share_of_bound=round(r["lmforge_tok_s"] / bound, 3),
                 transformers_share_of_bound=round(r["transformers_tok_s"] / bound, 3))
    out = {"benchmark": "generate", "prompt_tokens": args.prompt, "new_tokens": args.new, "results": results,
           "ratios": ratios, "ratio": min(ratios.values()),
           "mem_read_gbps": round(gbps, 2), **machine(args.threads, args.repeats),
           **mon.report()}
    return emit(out)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
