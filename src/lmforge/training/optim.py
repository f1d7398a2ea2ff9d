"""Optimizers and learning-rate schedules.

Schedules are pure functions of the step (``lr_at``), not stateful scheduler objects: the LR of
any step can be recomputed after a resume, so there is no scheduler state to save or get wrong.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import torch

from lmforge.config import TrainConfig
from lmforge.errors import UserError

_IN_BLOCK = re.compile(r"(^|\.)h\.\d+\.")  # a module inside Transformer block N: transformer.h.N.*, bert.h.N.*


def param_groups(model: torch.nn.Module, weight_decay: float, lr_scale: Callable[[str], float] | None = None,
                 select: Callable[[torch.nn.Parameter], bool] | None = None) -> list[dict]:
    """Decay matrices (Linear / Embedding weights), not biases or norm gains (as nanoGPT / GPT-2).

    ``lr_scale(name)`` gives a parameter a multiple of the scheduled LR (layer-wise LR decay); groups
    carry it as ``"lr_scale"`` and :func:`set_lr` applies it. ``select(p)``: only the parameters it accepts.
    """
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and (select is None or select(p)):
            groups.setdefault((p.dim() >= 2, lr_scale(name) if lr_scale else 1.0), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
            for (decay, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))]


def muon_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What ``optimizer=muon`` trains with Muon: the weights of the ``nn.Linear`` layers inside Transformer
    blocks (attention and MLP projections). Embeddings, output heads, norms, biases and LoRA adapters are not."""
    return [m.weight for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and _IN_BLOCK.search(name) and m.weight.requires_grad]


class MuonAdamW(torch.optim.Optimizer):
    """Muon (``torch.optim.Muon``) for :func:`muon_matrices`, AdamW for every other parameter, as one optimizer.

    ``param_groups`` lists Muon's groups then AdamW's: the very dicts the two step with, so :func:`set_lr`
    reaches both. ``state_dict()`` is one standard optimizer state dict over the parameters in that order
    (what :mod:`lmforge.runs.files` saves); ``load_state_dict`` hands each optimizer its part.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
        self.optimizers = (muon, adamw)
        super().__init__([p for opt in self.optimizers for g in opt.param_groups for p in g["params"]], {})
        self._share_groups()

    def _share_groups(self) -> None:
        self.param_groups = [g for opt in self.optimizers for g in opt.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": {}, "param_groups": []}
        offset = 0  # each optimizer numbers its parameters from 0: shift the second past the first
        for opt in self.optimizers:
            sd = opt.state_dict()
            out["state"].update({offset + i: s for i, s in sd["state"].items()})
            out["param_groups"] += [{**g, "params": [offset + i for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(groups)} parameter groups, this Muon + AdamW has {len(self.param_groups)}")
        first = offset = 0
        for opt in self.optimizers:
            mine = groups[first : first + len(opt.param_groups)]
            ids = {i for g in mine for i in g["params"]}
            opt.load_state_dict({"state": {i - offset: s for i, s in state_dict["state"].items() if i in ids},
                                 "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in mine]})
            first, offset = first + len(mine), offset + len(ids)
        self._share_groups()  # load_state_dict gave each optimizer new group dicts


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                    lr_scale: Callable[[str], float] | None = None) -> torch.optim.Optimizer:
    if cfg.optimizer == "muon":
        return _build_muon(model, cfg, lr_scale)
    groups = param_groups(model, cfg.weight_decay, lr_scale)
    if cfg.optimizer == "adamw":
        return _adamw(groups, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, alpha=cfg.beta2)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")  # config validation makes this unreachable


def _build_muon(model: torch.nn.Module, cfg: TrainConfig, lr_scale: Callable[[str], float] | None) -> MuonAdamW:
    """Muon's update is scaled to AdamW's RMS (``adjust_lr_fn="match_rms_adamw"``), so both take the scheduled
    LR (times ``cfg.muon_lr_scale`` for Muon); weight decay is ``cfg.weight_decay`` on all of Muon's matrices."""
    ids = {id(p) for p in muon_matrices(model)}
    if not ids:
        raise UserError("train.optimizer: muon trains the weight matrices of Transformer blocks and this model has no "
                        "trainable one (an LSTM, or LoRA adapters only); use adamw")
    muon_groups = param_groups(model, cfg.weight_decay, lr_scale, select=lambda p: id(p) in ids)
    for g in muon_groups:
        g["lr_scale"] *= cfg.muon_lr_scale
    muon = torch.optim.Muon(muon_groups, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                            adjust_lr_fn="match_rms_adamw")
    rest = param_groups(model, cfg.weight_decay, lr_scale, select=lambda p: id(p) not in ids)
    return MuonAdamW(muon, _adamw(rest, cfg))


def _adamw(groups: list[dict], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all parameters) when every parameter is a float tensor on CPU or CUDA:
    on CPU ~4x faster than the per-parameter loop (docs/results.md), the same update up to rounding."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused or None)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear warmup over ``warmup_steps`` to ``lr``, then:
    - ``cosine``: half-cosine from lr down to ``lr * min_lr_ratio`` at ``max_steps``;
    - ``constant``: lr;
    - ``step``: lr * gamma ** (steps after warmup // step_size);
    - ``cosine_restarts``: the cosine repeated every ``restart_period`` steps (SGDR);
    - ``inverse_sqrt``: lr * sqrt(warmup_steps / (step + 1)), the Transformer paper's decay (fairseq's
      ``inverse_sqrt``), continuous with the warmup.

    >>> cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.0)
    >>> [round(lr_at(s, cfg), 3) for s in (0, 9, 10, 60, 110)]
    [0.1, 1.0, 1.0, 0.5, 0.0]
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = step - cfg.warmup_steps
    low = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (t // cfg.step_size)
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * math.sqrt(max(1, cfg.warmup_steps) / (step + 1))
    if cfg.schedule == "cosine":
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        frac = min(1.0, t / span)
    else:  # cosine_restarts
        frac = (t % cfg.restart_period) / cfg.restart_period
    return low + 0.5 * (cfg.lr - low) * (1.0 + math.cos(math.pi * frac))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
