"""LoRA (Hu et al., 2021) for any model built from ``nn.Linear``: a Linear swap, a freeze helper, a merge.

>>> from lmforge.config import ModelConfig
>>> from lmforge.models import build
>>> model = build(ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=16))
>>> plain_keys = list(model.state_dict())
>>> apply_lora(model, LoRAConfig(rank=4, targets=("c_attn", "mlp.*")))  # doctest: +ELLIPSIS
['transformer.h.0.attn.c_attn', 'transformer.h.0.mlp.c_fc', 'transformer.h.0.mlp.c_proj', 'transformer.h.1...]
>>> mark_trainable(model)  # (trainable, total): 3584 adapter parameters
(3584, ...)
>>> sorted(lora_state_dict(model))[:2]  # what a run dir saves: the adapters only
['transformer.h.0.attn.c_attn.lora_A', 'transformer.h.0.attn.c_attn.lora_B']
>>> list(merge_lora(model).state_dict()) == plain_keys  # a plain GPT again
True

State-dict keys: a wrapped Linear ``<name>`` holds ``<name>.base.weight``, ``<name>.base.bias`` (the
frozen original) and ``<name>.lora_A``, ``<name>.lora_B``. :func:`merge_lora` maps them back to the
plain model's ``<name>.weight`` / ``<name>.bias`` (weight = base + B @ A * alpha / rank).
So: build the plain model, load its weights, then ``apply_lora``; never load a plain checkpoint into a
LoRA model.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from fnmatch import fnmatch

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import LoRAConfig
from lmforge.errors import UserError

__all__ = ["LoRAConfig", "LoRALinear", "apply_lora", "load_lora_state_dict", "lora_state_dict", "mark_trainable", "merge_lora"]


class LoRALinear(nn.Module):
    """``base(x) + dropout(x) @ A.T @ B.T * alpha / rank`` around a frozen ``nn.Linear`` (``.base``).

    A (rank, in) is kaiming-uniform as in the paper / peft, B (out, rank) is zero, so at init the
    output is exactly the base's. ``merge()`` folds the update into ``base.weight`` (forward then
    skips the adapter; do not train while merged), ``unmerge()`` takes it out again.

    >>> lin = LoRALinear(nn.Linear(4, 3), rank=2, alpha=4.0)  # scaling = alpha / rank = 2.0
    >>> [(n, tuple(p.shape), p.requires_grad) for n, p in lin.named_parameters()]
    [('lora_A', (2, 4), True), ('lora_B', (3, 2), True), ('base.weight', (3, 4), False), ('base.bias', (3,), False)]
    >>> x = torch.randn(5, 4)
    >>> torch.equal(lin(x), lin.base(x))  # B = 0 at init
    True
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        w = base.weight  # (out, in); the adapter lives on its device, in its dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.merged = False
        self.train(base.training)  # wrapping a Linear of an eval-mode model must not turn dropout on

    def delta_weight(self) -> Tensor:
        """The update B @ A * scaling (out, in), computed in float32, in the base weight's dtype."""
        return (self.lora_B.float() @ self.lora_A.float() * self.scaling).to(self.base.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)  # (..., out)
        if self.merged:
            return y
        h = F.linear(self.dropout(x), self.lora_A)  # (..., rank)
        return y + F.linear(h, self.lora_B) * self.scaling  # (..., out)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def _few(names: list[str], k: int = 4) -> str:
    return ", ".join(names[:k]) + (" ..." if len(names) > k else "")


def _kinds(names) -> list[str]:
    """Names with layer indices folded: h.0.attn.c_attn, h.1.attn.c_attn -> h.*.attn.c_attn (a valid pattern)."""
    return list(dict.fromkeys(re.sub(r"(?<![^.])\d+(?![^.])", "*", n) for n in names))


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` matches the whole dotted name or a suffix of it: 'attn.c_proj' matches 'h.0.attn.c_proj'."""
    return fnmatch(name, pattern) or fnmatch(name, "*." + pattern)


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Plain Linear modules by name, excluding those already inside a LoRALinear (and MultiheadAttention's
    out_proj, whose weight it reads directly, so that a wrapper would be ignored)."""
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n
            and n.rpartition(".")[0] not in wrapped and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)  # works for ModuleList / ModuleDict children too


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap every ``nn.Linear`` matching ``cfg.targets`` in a :class:`LoRALinear`, in place; return their names.

    Every pattern must match something. A Linear whose weight is tied to another parameter (GPT's
    ``lm_head`` shares ``transformer.wte.weight``) is refused when named, skipped by a wildcard such as '*'.
    """
    linears = _linears(model)
    aliases = defaultdict(list)  # id(parameter) -> every name it is reachable under
    for n, p in model.named_parameters(remove_duplicate=False):
        aliases[id(p)].append(n)
    tied = {n: [a for pn, p in m.named_parameters(prefix=n) for a in aliases[id(p)] if a != pn] for n, m in linears.items()}
    chosen: list[str] = []
    for pat in cfg.patterns:
        hits = [n for n in linears if _matches(n, pat)]
        if not hits:
            done = [n for n, m in model.named_modules() if isinstance(m, LoRALinear) and _matches(n, pat)]
            if done:
                raise UserError(f"lora.targets: {pat!r} matches only modules that already have LoRA ({_few(done)})")
            raise UserError(f"lora.targets: no nn.Linear matches {pat!r} (Linear modules are: {_few(_kinds(linears), 8) or 'none'})")
        hit_tied = [n for n in hits if tied[n]]
        if hit_tied and (not any(c in pat for c in "*?[") or len(hit_tied) == len(hits)):
            n = hit_tied[0]
            raise UserError(f"lora.targets: {n!r} shares its weight with {tied[n][0]} (tied); an adapter would change "
                            f"both, so leave it out of lora.targets (or untie it, e.g. model.tie_weights=false)")
        chosen += [n for n in hits if not tied[n] and n not in chosen]
    chosen.sort(key=list(linears).index)  # model order
    for n in chosen:
        _replace(model, n, LoRALinear(linears[n], cfg.rank, cfg.alpha, cfg.dropout))
    return chosen


def mark_trainable(model: nn.Module, extra: tuple[str, ...] = ()) -> tuple[int, int]:
    """Freeze everything but the adapters and parameters matching an ``extra`` pattern (e.g. 'head.*').

    Returns (trainable, total) parameter counts (a tied weight counts once).
    """
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora_A.requires_grad_(True)
            m.lora_B.requires_grad_(True)
    for pat in extra:
        hits = [p for n, p in model.named_parameters(remove_duplicate=False) if _matches(n, pat)]
        if not hits:
            names = _kinds(n for n, _ in model.named_parameters())
            raise UserError(f"trainable pattern {pat!r} matches no parameter (parameters are: {_few(names, 8)})")
        for p in hits:
            p.requires_grad_(True)
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its base Linear with the update merged in, in place; return ``model``.

    The result has the original architecture and state-dict keys (``<name>.base.weight`` becomes
    ``<name>.weight``) and saves / exports as a plain model. ``requires_grad`` flags are left as they
    are (call ``model.requires_grad_(True)`` to train it fully). Deep-copy first to keep the LoRA model.
    """
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            m.merge()
            _replace(model, name, m.base)
    return model


def lora_state_dict(model: nn.Module, extra: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """Only the adapter tensors (``<name>.lora_A`` / ``.lora_B``) and tensors matching an ``extra`` pattern."""
    keys = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, LoRALinear) for p in ("lora_A", "lora_B")}
    return {k: v for k, v in model.state_dict().items() if k in keys or any(_matches(k, pat) for pat in extra)}


def load_lora_state_dict(model: nn.Module, sd: dict[str, Tensor], extra: tuple[str, ...] = ()) -> None:
    """Copy adapters (+ ``extra`` parameters) saved by :func:`lora_state_dict` into a model after apply_lora.

    Keys must match exactly: missing, unexpected or mis-shaped tensors raise UserError naming them.
    """
    own = lora_state_dict(model, extra)
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    if missing or unexpected:
        parts = [f"missing keys: {_few(missing)}"] * bool(missing) + [f"unexpected keys: {_few(unexpected)}"] * bool(unexpected)
        hint = "" if own else " (the model has no adapters: call apply_lora with the same lora.targets first)"
        raise UserError(f"LoRA state dict does not fit the model: {'; '.join(parts)}{hint}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise UserError(f"LoRA state dict: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)} "
                            f"(was it trained with another lora.rank?)")
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v)
