"""What ``lmforge compress`` measures differently for a translation run (task ``translate``, an encoder-decoder).

- ``latency_ms_b1`` / ``latency_ms_b32``: one teacher-forced forward pass (encoder and decoder) of batch 1 / 32
  with ``seq_len`` source and ``seq_len`` target tokens, as for the other tasks one forward pass.
- ``decode_ms_per_sentence_b32``: greedy decoding (the task's own batched decoding, key / value cache) of up to
  32 validation sentences of the run, per sentence; ``decode_sentences`` says how many.
- ``greedy_agreement`` (compressed run only): the share of those sentences whose greedy translation is the same
  for both models.
- the metric: BLEU, chrF, loss and perplexity of the task's ``evaluate`` on the run's validation pairs.
"""

from __future__ import annotations

from pathlib import Path

import torch

METRIC_KEYS = ("bleu", "chrf", "loss", "perplexity", "sentences", "beam")
DECODE_SENTENCES = 32


def is_translation(cfg) -> bool:
    from lmforge import tasks

    return tasks.of(cfg).name == "translate"


def forward_args(tok, T: int, sizes=(1, 32)) -> dict[int, dict]:
    """Teacher-forced inputs {batch: {"src", "src_mask", "tgt"}} of random ids, ``T`` tokens a side."""
    g = torch.Generator().manual_seed(0)
    src = torch.randint(0, tok.vocab_size, (max(sizes), T), generator=g)  # (32, T)
    tgt = torch.randint(0, tok.vocab_size, (max(sizes), T), generator=g)  # (32, T)
    return {b: {"src": src[:b], "src_mask": torch.ones_like(src[:b], dtype=torch.bool), "tgt": tgt[:b]} for b in sizes}


def decode_figures(src: Path, cfg, tok, orig, comp, repeats: int, res: dict, median_ms) -> None:
    """Greedy decoding of up to 32 val sentences by both models: time per sentence and agreement, into ``res``
    (``median_ms``: :func:`lmforge.tools.compress.common.median_ms`, which times them alternately)."""
    from lmforge.tasks.translate import run_pairs, source_tokenizer, translate_texts

    try:
        sources = [s for s in run_pairs(cfg, src, "val").sources if s.strip()][:DECODE_SENTENCES]
    except Exception:  # noqa: BLE001 - no val pairs stored: the decode figures are left out, with a note
        sources = []
    if not sources:
        for r in res.values():
            r["decode_ms_per_sentence_b32"] = None
        res["compressed"]["decode_note"] = f"{src}/data/val.tsv: no validation pairs, decoding not timed"
        return
    src_tok = source_tokenizer(cfg, src, tok)
    outputs = []

    def decode(m):
        out = translate_texts(cfg, m, tok, src_tok, sources, beam=1, batch_size=DECODE_SENTENCES)
        outputs.append((m, out))

    times = median_ms([lambda m=m: decode(m) for m in (orig, comp)], max(1, repeats // 3), warmup=1)
    for r, ms in zip(res.values(), times):
        r["decode_ms_per_sentence_b32"] = round(ms / len(sources), 3)
        r["decode_sentences"] = len(sources)
    first = {id(m): out for m, out in reversed(outputs)}  # the first output of each model
    a, b = first[id(orig)], first[id(comp)]
    res["compressed"]["greedy_agreement"] = round(sum(x == y for x, y in zip(a, b)) / len(a), 4)
