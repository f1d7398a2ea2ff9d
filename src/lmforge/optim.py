"""Optimizers and learning-rate schedules.

Schedules are pure functions of the step (``lr_at``), not stateful scheduler objects: the LR of
any step can be recomputed after a resume, so there is no scheduler state to save or get wrong.
"""

from __future__ import annotations

import math

import torch

from lmforge.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (Linear / Embedding weights), not biases or norm gains (as nanoGPT / GPT-2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
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
        group["lr"] = lr
