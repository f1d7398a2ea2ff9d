"""Regenerate ``benchmarks/RESULTS.md`` from the JSON lines the benchmarks printed.

    .venv/bin/python benchmarks/results.py runs/bench/results.jsonl > benchmarks/RESULTS.md

``make bench`` runs every benchmark, appends the last stdout line of each to
``runs/bench/results.jsonl`` and calls this. Known benchmarks (peak, train, generate, encoder, speedrun, translate,
translate_decode) get a table of their own; any other JSON object with a ``benchmark`` key gets its scalar fields and ratios.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return out + [""]


def conditions(r: dict) -> str:
    load = r.get("foreign_cpus")
    busy = f"; other processes kept {load} CPUs busy meanwhile" + (" (contended: compare ratios, not figures)"
                                                                    if r.get("contended") else "") if load is not None else ""
    n = r.get("threads", "?")
    return (f"{n} thread{'' if n == 1 else 's'}, {r.get('repeats', '?')} repeats (median), torch {r.get('torch', '?')}, "
            f"{r.get('cpu', '?')}, {r.get('date', '?')}{busy}.")


def peak(r: dict) -> list[str]:
    return table(["fp32 GFLOP/s", "bf16 GFLOP/s", "int8 GOP/s (`_int_mm`)", "memory read GB/s"],
                 [[r["fp32_gflops"], r["bf16_gflops"], r["int8_gops"], r["mem_read_gbps"]]])


def train(r: dict) -> list[str]:
    tok, mfu, ratios = r["tok_per_s"], r["mfu"], r["ratios"]
    modes = [k[len("lmforge_"):] for k in tok if k.startswith("lmforge_")]
    rows = [[m, tok[f"lmforge_{m}"], tok.get(f"transformers_sdpa_{m}"), tok.get(f"transformers_eager_{m}"),
             f"**{fmt(ratios[m])}**", mfu[f"lmforge_{m}"], mfu.get(f"transformers_sdpa_{m}")] for m in modes]
    lines = [f"{r['model']} ({fmt(r['params'])} parameters), batch {r['batch']} x {r['context']} tokens, one full "
             f"optimizer step (AdamW, clip 1.0); {r['model_gflop_per_step']} GFLOP per step.", ""]
    lines += table(["mode", "lmforge tok/s", "transformers (sdpa) tok/s", "transformers (eager) tok/s",
                    "ratio (vs faster)", "lmforge MFU", "transformers MFU"], rows)
    best = {m: max(mfu.get(f"transformers_sdpa_{m}", 0), mfu.get(f"transformers_eager_{m}", 0)) for m in modes}
    ceil = ", ".join(f"{m} {1 / v:.2f}x" if v < 1 else f"{m} none (MFU >= 1: the probe's peak is no ceiling here)"
                     for m, v in best.items() if v > 0)
    return lines + [f"What any implementation could gain at most over transformers' faster variant, running at the "
                    f"matmul peak of `peak.py`: {ceil}.", ""]


def generate(r: dict) -> list[str]:
    rows = [[k.replace("_", " "), v["lmforge_tok_s"], v["transformers_tok_s"], f"**{fmt(v['ratio'])}**",
             v["bandwidth_bound_tok_s"], v["lmforge_share_of_bound"], v["transformers_share_of_bound"]]
            for k, v in r["results"].items()]
    lines = [f"Batch 1, {r['prompt_tokens']}-token prompt, {r['new_tokens']} new tokens, greedy, KV cache; "
             f"bound = memory read bandwidth ({fmt(r.get('mem_read_gbps'))} GB/s) / bytes per decode step.", ""]
    return lines + table(["model, dtype", "lmforge tok/s", "transformers tok/s", "ratio", "bandwidth bound tok/s",
                          "lmforge share of bound", "transformers share"], rows)


def encoder(r: dict) -> list[str]:
    acc = r.get("accuracy") or {}
    rows = [[k, v, acc.get(k)] for k, v in r["seq_per_s"].items()]
    lines = [f"{r['model']}, batch {r['batch']} x {r['seq']} tokens.", ""]
    return lines + table(["variant", "seq/s", "accuracy"], rows) + table(["ratio", "value"], list(r["ratios"].items()))


def speedrun(r: dict) -> list[str]:
    ref, ours = r["reference"], r["lmforge"]
    rc, oc = ref["config"], ours["config"]
    rows = [["reference: " + rc["model"], fmt(ref["params"]), f"{rc['n_layer']} x {rc['n_embd']}, ctx {rc['block_size']}",
             rc["batch"], rc["lr"], ref["tok_per_s"], ref["val_loss"], ref["seconds"]],
            ["lmforge: " + Path(oc["recipe"]).name, fmt(ours["params"]), f"{oc['n_layer']} x {oc['n_embd']}, ctx {oc['block_size']}",
             oc["batch"], oc["lr"], ours["tok_per_s"], ours["val_loss"], ours["seconds"]]]
    lines = [f"{r['data']} ({fmt(r['train_tokens'])} training tokens, {r['vocab_size']}-token BPE), {r['dtype']}; "
             f"validation loss (nats/token) on {r['eval']['windows']} held-out windows of {r['eval']['context']} tokens, "
             f"every {r['eval']['every_seconds']} s of training. The reference trains for its budget; lmforge until it "
             f"reaches the reference's final loss{'' if r['reached'] else ' (not reached within the cap)'}."
             + (" The reference run was reused from an earlier run (`--reuse-ref`)." if ref.get("reused") else ""), ""]
    lines += table(["run", "params", "shape", "batch", "lr", "tok/s", "val loss", "seconds to it"], rows)
    return lines + [f"Time to the reference's loss: **{fmt(r['ratio'])}x** faster.", ""]


def generic(r: dict) -> list[str]:
    rows = [[k, v] for k, v in r.items() if isinstance(v, (int, float, str)) and k not in ("benchmark", "ratio")]
    lines = table(["field", "value"], rows)
    if isinstance(r.get("ratios"), dict):
        lines += table(["ratio", "value"], list(r["ratios"].items()))
    return lines


def translate(r: dict) -> list[str]:
    curve = lambda c: ", ".join(f"{p['seconds']:.0f} s {p['bleu']:.2f}" for p in c)  # noqa: E731
    lines = [f"zh -> en on hsk-zh-en, {r['budget_s']:.0f} s of training each ({r['dtype']}), test BLEU of greedy "
             f"decoding on {r['test_sentences']} sentences as training goes. MarianMTModel of the recipe's shape, lr "
             f"{r['peer_lr']:g}, warmup {r['peer_warmup']}, weight decay {r.get('peer_weight_decay', 0.01):g}"
             + (f", {r['peer_attn']} attention, fused AdamW." if r.get("peer_attn") else "."), ""]
    lines += table(["system", "steps", "final test BLEU", "curve (train seconds, BLEU)"],
                   [["lmforge recipe", r["lmforge"][-1]["steps"], r["lmforge_final_bleu"], curve(r["lmforge"])],
                    ["MarianMTModel", r["marian"][-1]["steps"], r["marian_final_bleu"], curve(r["marian"])]])
    t = r["lmforge_seconds_to_marian_final"]
    reached = (f"lmforge reaches Marian's final BLEU after {t:.0f} s: **{fmt(r['ratio'])}** of the budget (target <= 0.5)"
               if t is not None else "lmforge never reaches Marian's final BLEU")
    return lines + [f"{reached}. lmforge at the end, beam 5: {fmt(r['lmforge_beam5_bleu'])} BLEU, "
                    f"{fmt(r['lmforge_beam5_sentences_per_s'])} sentences/s.", ""]


def translate_decode(r: dict) -> list[str]:
    keys = [k for k in ("lmforge_beam5", "lmforge_greedy", "hf_greedy_one", "hf_beam5") if k in r]
    lines = [f"The run's {r['test_sentences']} test sentences, batched decoders {r['batch']} at a time; the HF model is "
             f"the run's `export --format hf` folder (greedy outputs identical: {r['greedy_outputs_identical']}).", ""]
    lines += table(["decoder", "sentences/s", "test BLEU", "seconds"],
                   [[k, r[k]["sentences_per_s"], r[k]["bleu"], r[k]["seconds"]] for k in keys])
    return lines + table(["ratio", "value"], list(r["ratios"].items()))


RENDER = {"peak": peak, "train": train, "generate": generate, "encoder": encoder, "speedrun": speedrun,
          "translate": translate, "translate_decode": translate_decode}


def render(records: list[dict]) -> str:
    lines = ["# Benchmark results", "",
             "Written by `make bench` (`benchmarks/results.py`): every benchmark runs the peers in one process,",
             "alternately, median of the repeats after warm-up. `ratio` is lmforge / peer (the smallest of a benchmark",
             "is its headline). Timing noise between runs is about +-8%: ratios within 10% are no difference.", ""]
    lines += table(["benchmark", "headline ratio", "threads", "date", "contended"],
                   [[r["benchmark"], r.get("ratio"), r.get("threads"), r.get("date"), r.get("contended")] for r in records])
    for r in records:
        lines += [f"## {r['benchmark']}", ""]
        try:
            lines += RENDER.get(r["benchmark"], generic)(r)
        except (KeyError, TypeError):  # a newer or older format: show what there is
            lines += generic(r)
        lines += [conditions(r), ""]
    return "\n".join(lines).rstrip() + "\n"


def read(path: str | None) -> list[dict]:
    text = Path(path).read_text() if path and path != "-" else sys.stdin.read()
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "benchmark" in obj:
                records.append(obj)
    return records


def main(argv=None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    text = render(read(argv[0] if argv else None))
    sys.stdout.write(text)
    return text


if __name__ == "__main__":
    main()
