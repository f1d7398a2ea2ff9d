"""Decoding speed of a translation run on its test split: lmforge vs transformers on the same weights.

The run is exported with ``lmforge export --format hf`` (a ``MarianMTModel`` folder, or
``PegasusForConditionalGeneration`` for a pre-LN run, checked to give lmforge's greedy tokens), then both
decode the run's test sources:

- ``lmforge_beam5``: lmforge's batched beam search (beam 5, the run's length penalty and length limit,
  ``--batch`` sentences at a time, key / value cache, cross-attention keys / values once per source);
- ``lmforge_greedy``: lmforge's batched greedy decoding;
- ``hf_greedy_one``: the exported model's ``generate`` greedy, one sentence at a time (the issue's reference);
- ``hf_beam5``: ``generate`` with ``num_beams=5``, ``--batch`` sentences at a time (the peer doing what
  lmforge does).

Each is timed alternately (median of ``--repeats`` after one warm-up pass); sentences/s and test BLEU are
reported, and ``ratio`` = lmforge_beam5 sentences/s / hf_greedy_one sentences/s (the target is >= 3).
The run must be one those classes express (sinusoidal positions, shared embeddings): others are refused
in one line. ``--smoke`` trains a tiny such run on generated pairs first.

    .venv/bin/python benchmarks/translate_decode.py --run runs/zh-en --threads 2
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch
from _common import ROOT, LoadMonitor, emit, machine, quiet_warnings, ratio, set_threads, timed

sys.path.insert(0, str(ROOT / "tests"))  # --smoke's generated pairs


def _smoke_run(work: Path) -> Path:
    from helpers import make_pairs, translation_recipe

    from lmforge.recipes.train import train

    data = make_pairs(work / "pairs.tsv", n=200)
    overrides = {"model.pos_emb": "sinusoidal", "model.norm_first": "false", "translate.test_fraction": "0.1",
                 "train.num_threads": "1"}
    train(translation_recipe(work, data, steps=30), overrides, out=work / "run", progress=False)
    return work / "run"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="a translation run dir (a seq2seq run that exports with --format hf)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=32, help="sentences per batch for the batched decoders (default 32)")
    p.add_argument("--smoke", action="store_true", help="train a tiny run on generated pairs first; one repeat")
    args = p.parse_args(argv)
    quiet_warnings()
    set_threads(args.threads)
    from transformers import AutoModelForSeq2SeqLM

    from lmforge.data.pair_batches import collate_pairs
    from lmforge.models.search import translate_ids
    from lmforge.runs.loader import load_run
    from lmforge.tasks.translate import bleu_chrf, decode_config, encode_side, run_pairs
    from lmforge.tools.export import export_run

    work = Path(tempfile.mkdtemp(prefix="lmforge-decode-bench-"))
    if args.smoke:
        args.run, args.repeats = str(_smoke_run(work)), 1
    if not args.run:
        p.error("--run RUN is required (or --smoke)")
    run = Path(args.run)
    export_run(run, "hf", work / "hf")
    cfg, model, tok = load_run(run)
    hf = AutoModelForSeq2SeqLM.from_pretrained(work / "hf").eval()
    test = run_pairs(cfg, run, "test")
    block, t = cfg.model.block_size, cfg.translate
    src = encode_side(tok, test.sources, block)
    limit = [min(math.floor(t.max_len_a * len(s) + t.max_len_b), block - 1) for s in src]
    outputs: dict[str, list[list[int]]] = {}

    def ours(beam: int):
        def go():
            with torch.no_grad():
                outputs[f"lmforge_{'beam5' if beam > 1 else 'greedy'}"] = translate_ids(
                    model, src, tok.bos_id, tok.eos_id, tok.pad_id, decode_config(cfg, beam), batch_size=args.batch,
                    max_positions=block)
        return go

    def strip(row: list[int]) -> list[int]:
        row = row[1:] if row and row[0] == tok.bos_id else row  # generate's rows start with the decoder start token
        return row[: row.index(tok.eos_id)] if tok.eos_id in row else [i for i in row if i != tok.pad_id]

    def hf_one():
        with torch.no_grad():
            outputs["hf_greedy_one"] = [strip(hf.generate(input_ids=torch.tensor([s]), num_beams=1, do_sample=False,
                                                          max_new_tokens=n)[0].tolist()) for s, n in zip(src, limit)]

    def hf_beam():
        out = []
        with torch.no_grad():
            for i in range(0, len(src), args.batch):
                x, _ = collate_pairs(src[i: i + args.batch], None, tok.pad_id, tok.bos_id, tok.eos_id)
                rows = hf.generate(input_ids=x["src"], attention_mask=x["src_mask"].long(), num_beams=5, do_sample=False,
                                   length_penalty=t.length_penalty, max_new_tokens=max(limit[i: i + args.batch]))
                out += [strip(r.tolist()) for r in rows]
        outputs["hf_beam5"] = out

    fns = {"lmforge_beam5": ours(5), "lmforge_greedy": ours(1), "hf_greedy_one": hf_one, "hf_beam5": hf_beam}
    with LoadMonitor() as mon:
        secs = timed(fns, args.repeats, warmup=1)
    n = len(src)
    res = {}
    for k, s in secs.items():
        hyps = [tok.decode(ids, skip_special_tokens=True).strip() for ids in outputs[k]]
        res[k] = {"seconds": round(s, 3), "sentences_per_s": round(n / s, 2), "bleu": bleu_chrf(hyps, test.targets)["bleu"]}
    same = sum(a == b for a, b in zip(outputs["lmforge_greedy"], outputs["hf_greedy_one"]))
    speedup = ratio(res["lmforge_beam5"]["sentences_per_s"], res["hf_greedy_one"]["sentences_per_s"])
    out = {"benchmark": "translate_decode", "run": str(run), "test_sentences": n, "batch": args.batch, **res,
           "greedy_outputs_identical": f"{same}/{n}", "ratio": speedup,
           "ratios": {"lmforge_beam5_vs_hf_greedy_one": speedup,
                      "lmforge_beam5_vs_hf_beam5": ratio(res["lmforge_beam5"]["sentences_per_s"],
                                                         res["hf_beam5"]["sentences_per_s"]),
                      "lmforge_greedy_vs_hf_greedy_one": ratio(res["lmforge_greedy"]["sentences_per_s"],
                                                               res["hf_greedy_one"]["sentences_per_s"])},
           **machine(args.threads, args.repeats), **mon.report()}
    return emit(out)


if __name__ == "__main__":
    main()
