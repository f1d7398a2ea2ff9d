"""Optimizers and learning-rate schedules.

Schedules are pure functions of the step (``lr_at``), not stateful scheduler objects: the LR of
any step can be recomputed after a resume, so there is no scheduler state to save or get wrong.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from lmforge.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float,
                 lr_scale: Callable[[str], float] | None = None) -> list[dict]:
    """Decay matrices (Linear / Embedding weights), not biases or norm gains (as nanoGPT / GPT-2).

    ``lr_scale(name)`` gives a parameter a multiple of the scheduled LR (layer-wise LR decay); groups
    carry it as ``"lr_scale"`` and :func:`set_lr` applies it.
    """
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((p.dim() >= 2, lr_scale(name) if lr_scale else 1.0), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
            for (decay, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                    lr_scale: Callable[[str], float] | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, lr_scale)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, alpha=cfg.beta2)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")  # config validation makes this unreachable


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear warmup over ``warmup_steps`` to ``lr``, then:
    - ``cosine``: half-cosine from lr down to ``lr * min_lr_ratio`` at ``max_steps``;
    - ``constant``: lr;
    - ``step``: lr * gamma ** (steps after warmup // step_size);
    - ``cosine_restarts``: the cosine repeated every ``restart_period`` steps (SGDR).

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
    if cfg.schedule == "cosine":
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        frac = min(1.0, t / span)
    else:  # cosine_restarts
        frac = (t % cfg.restart_period) / cfg.restart_period
    return low + 0.5 * (cfg.lr - low) * (1.0 + math.cos(math.pi * frac))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
