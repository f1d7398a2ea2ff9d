"""Token attributions of a text classifier: integrated gradients (Captum), occlusion, and random ones (the
baseline every method is measured against).

All three explain the probability of one class (``target``: by default the predicted one) for one text and
return one score per token of the model's input (its special tokens included, scored 0):

- ``ig``: Captum's ``LayerIntegratedGradients`` on the token embedding, from a baseline where every token
  but the specials is the pad token, ``n_steps`` Gauss-Legendre points. The scores of a text sum to
  p(target | text) - p(target | baseline) up to the *convergence delta* Captum reports; when that delta is
  over ``DELTA_TOLERANCE`` the steps are doubled (up to ``MAX_STEPS``) and the result says whether it converged.
- ``occlusion``: p(target | text) - p(target | the text with that token replaced by pad), every token at once
  in one batch.
- ``random``: standard normal scores from a generator seeded by ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lmforge.errors import UserError

METHODS = ("ig", "occlusion", "random")
DELTA_TOLERANCE = 0.01  # |sum of IG scores - (p(x) - p(baseline))|, on the probability scale
N_STEPS, MAX_STEPS = 50, 400


@dataclass
class Explanation:
    """One text's attributions: ``scores[i]`` for ``pieces[i]`` (the text of token ``ids[i]``)."""

    text: str
    ids: list[int]
    pieces: list[str]
    special: list[bool]
    method: str
    target: int
    probs: list[float]  # the model's class probabilities for the text
    scores: list[float]
    extra: dict = field(default_factory=dict)  # ig: delta, steps, converged, baseline_prob


def token_embedding(model: nn.Module, vocab_size: int) -> nn.Embedding:
    """The classifier's token embedding: its first ``nn.Embedding`` of ``vocab_size`` rows."""
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m.num_embeddings == vocab_size:
            return m
    raise UserError(f"{type(model).__name__}: no token embedding of {vocab_size} rows to attribute to")


def pieces_of(tok, text: str, ids: list[int]) -> tuple[list[str], list[bool]]:
    """The text span of each input id (its offsets in ``text``), a special token's own string, and which are special."""
    specials = set(tok.special_ids)
    enc = tok.hf.encode(text, add_special_tokens=False)
    content, offsets = enc.ids, enc.offsets
    lead = 1 if ids and ids[0] in specials and (not content or ids[0] != content[0]) else 0
    pieces, special = [], []
    for i, t in enumerate(ids):
        j = i - lead
        if t in specials:
            pieces.append(tok.decode([t]))
            special.append(True)
        elif 0 <= j < len(content) and content[j] == t:
            a, b = offsets[j]
            pieces.append(text[a:b])
            special.append(False)
        else:  # the last id of a truncated text
            pieces.append(tok.decode([t]))
            special.append(False)
    return pieces, special


class _Prob(nn.Module):
    """p(class | ids) for Captum: the classifier's softmax, one column per target."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        p = self.model(idx, mask).float().softmax(-1)  # (B, K)
        return p.gather(1, target.view(-1, 1)).squeeze(1)  # (B,)


def baseline_ids(ids: Tensor, special: Tensor, pad_id: int) -> Tensor:
    """``ids`` with every non-special token replaced by the pad token."""
    return torch.where(special, ids, torch.full_like(ids, pad_id))


def until_converged(run, n_steps: int = N_STEPS) -> tuple[Tensor, float, int]:
    """``run(steps) -> (attributions, delta)`` with the steps doubled from ``n_steps`` until |delta| <= the
    tolerance or ``MAX_STEPS``; -> (attributions, |delta|, steps)."""
    steps = n_steps
    while True:
        attr, delta = run(steps)
        delta = float(delta.abs().max())
        if delta <= DELTA_TOLERANCE or steps >= MAX_STEPS:
            return attr, delta, steps
        steps *= 2


def integrated_gradients(model: nn.Module, ids: Tensor, special: Tensor, target: int, pad_id: int, vocab_size: int,
                         n_steps: int = N_STEPS) -> tuple[Tensor, dict]:
    """IG scores (T,) for one sequence ``ids`` (T,), doubling the steps until the delta is within tolerance."""
    try:
        from captum.attr import LayerIntegratedGradients
    except ImportError:
        raise UserError("--method ig needs Captum: pip install 'lmforge[explain]' (or use --method occlusion)") from None

    f = _Prob(model)
    lig = LayerIntegratedGradients(f, token_embedding(model, vocab_size))
    x, base = ids.view(1, -1), baseline_ids(ids, special, pad_id).view(1, -1)
    mask, tgt = torch.ones_like(x), torch.tensor([target])
    attr, delta, steps = until_converged(
        lambda n: lig.attribute(x, baselines=base, additional_forward_args=(mask, tgt), n_steps=n, method="gausslegendre",
                                return_convergence_delta=True, internal_batch_size=64), n_steps)
    with torch.no_grad():
        p_base = float(f(base, mask, tgt))
    scores = attr.sum(-1).squeeze(0).detach()  # (T,) summed over the embedding dimensions
    scores = torch.where(special, torch.zeros_like(scores), scores)  # the specials are in the baseline too
    return scores, {"delta": round(delta, 6), "steps": steps, "converged": delta <= DELTA_TOLERANCE,
                    "baseline_prob": round(p_base, 6)}


@torch.no_grad()
def occlusion(model: nn.Module, ids: Tensor, special: Tensor, target: int, pad_id: int, batch: int = 64) -> Tensor:
    """Occlusion scores (T,): the drop in p(target) when each non-special token alone becomes pad."""
    f = _Prob(model)
    T = len(ids)
    x = ids.view(1, -1)
    p = float(f(x, torch.ones_like(x), torch.tensor([target])))
    rows = ids.repeat(T, 1)  # (T, T): row i has token i occluded
    rows[torch.arange(T), torch.arange(T)] = pad_id
    out = []
    for i in range(0, T, batch):
        r = rows[i : i + batch]
        out.append(p - f(r, torch.ones_like(r), torch.full((len(r),), target)))
    scores = torch.cat(out)
    return torch.where(special, torch.zeros_like(scores), scores)


def random_scores(ids: Tensor, special: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(len(ids), generator=g)
    return torch.where(special, torch.zeros_like(s), s)


@torch.no_grad()
def class_probs(model: nn.Module, ids: Tensor) -> Tensor:
    x = ids.view(1, -1)
    return model(x, torch.ones_like(x)).float().softmax(-1).squeeze(0)


def explain_text(model: nn.Module, tok, text: str, max_length: int, method: str, target: int | None = None,
                 seed: int = 0, n_steps: int = N_STEPS) -> Explanation:
    """Attributions of ``method`` for ``text`` (``target``: a class index; None = the predicted class)."""
    from lmforge.data.batches import encode_texts

    if method not in METHODS:
        raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")
    ids_list = encode_texts(tok, [text], max_length)[0]
    if not ids_list:
        raise UserError("explain: the text has no tokens")
    pieces, special_list = pieces_of(tok, text, ids_list)
    ids, special = torch.tensor(ids_list), torch.tensor(special_list)
    probs = class_probs(model, ids)
    c = int(probs.argmax()) if target is None else target
    pad = tok.pad_id if tok.pad_id is not None else 0
    extra: dict = {}
    if method == "ig":
        scores, extra = integrated_gradients(model, ids, special, c, pad, tok.vocab_size, n_steps)
    elif method == "occlusion":
        scores = occlusion(model, ids, special, c, pad)
    else:
        scores = random_scores(ids, special, seed)
    return Explanation(text, ids_list, pieces, special_list, method, c, [round(float(p), 6) for p in probs],
                       [round(float(s), 6) for s in scores], extra)
