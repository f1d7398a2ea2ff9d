"""Faithfulness of attributions: ERASER's comprehensiveness and sufficiency (DeYoung et al., 2020).

For a text, its predicted class c and a method's token ranking, with r_k the top k% of the (non-special)
tokens by score:

- comprehensiveness = p(c | text) - p(c | text without r_k): how much the prediction loses when the tokens
  the method found most important are deleted (higher is better);
- sufficiency = p(c | text) - p(c | r_k alone): how much it loses when only they are kept (lower is better).

Both are averaged over k in ``BINS`` (1, 5, 10, 20, 50%: ERASER's area over the perturbation curve, at least
one token per bin) and over the examples. Deleted tokens are removed from the sequence (the specials stay),
as in ERASER. The ``random`` method (seeded scores) is the floor a method must clear: an attribution no
better than random on a trained model is not explaining it.
"""

from __future__ import annotations

import math

import torch

BINS = (0.01, 0.05, 0.10, 0.20, 0.50)


@torch.no_grad()
def _prob(model, seqs: list[list[int]], c: int, pad_id: int) -> torch.Tensor:
    from lmforge.data.batches import collate

    x, mask = collate(seqs, pad_id)
    return model(x, mask).float().softmax(-1)[:, c]


def erasure_scores(model, ids: list[int], special: list[bool], scores: list[float], c: int, pad_id: int) -> dict:
    """(comprehensiveness, sufficiency) of one ranking, each averaged over ``BINS``."""
    content = [i for i, s in enumerate(special) if not s]
    order = sorted(content, key=lambda i: -scores[i])
    full = _prob(model, [ids], c, pad_id)[0]
    without, only = [], []
    for b in BINS:
        k = max(1, math.ceil(b * len(content)))
        top = set(order[:k])
        without.append([t for i, t in enumerate(ids) if i not in top] or [pad_id])
        only.append([t for i, t in enumerate(ids) if special[i] or i in top])
    p_without = _prob(model, without, c, pad_id)
    p_only = _prob(model, only, c, pad_id)
    return {"comprehensiveness": float((full - p_without).mean()), "sufficiency": float((full - p_only).mean())}


def faithfulness(model, tok, texts: list[str], max_length: int, methods: list[str], seed: int = 0,
                 progress: bool = True) -> dict:
    """{method: {"comprehensiveness", "sufficiency", "examples"}} over ``texts`` (each at its predicted class),
    plus "ig_delta_max" and "ig_not_converged" when ``ig`` is among the methods."""
    from tqdm.auto import tqdm

    from lmforge.tools.explain.attribution import explain_text

    pad = tok.pad_id if tok.pad_id is not None else 0
    sums = {m: {"comprehensiveness": 0.0, "sufficiency": 0.0} for m in methods}
    n, deltas, unconverged = 0, [], 0
    for j, text in enumerate(tqdm(texts, desc="faithfulness", unit="text", disable=not progress)):
        if not text.strip():
            continue
        for m in methods:
            e = explain_text(model, tok, text, max_length, m, seed=seed + j)
            if not any(not s for s in e.special):
                break
            r = erasure_scores(model, e.ids, e.special, e.scores, e.target, pad)
            for k, v in r.items():
                sums[m][k] += v
            if m == "ig":
                deltas.append(e.extra["delta"])
                unconverged += not e.extra["converged"]
        else:
            n += 1
    out: dict = {m: {k: round(v / max(n, 1), 5) for k, v in s.items()} for m, s in sums.items()}
    for m in methods:
        out[m]["examples"] = n
    if "random" in out:
        rc = out["random"]["comprehensiveness"]
        for m in methods:
            if m != "random":
                out[m]["comprehensiveness_vs_random"] = round(out[m]["comprehensiveness"] / rc, 3) if rc > 0 else None
    if deltas:
        out["ig_delta_max"], out["ig_not_converged"] = round(max(deltas), 6), unconverged
    out["bins"] = list(BINS)
    return out
