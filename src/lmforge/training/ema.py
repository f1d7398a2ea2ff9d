"""An exponential moving average of a model's weights, kept by ``fit()`` when ``train.ema_decay`` is set."""

from __future__ import annotations

import contextlib

import torch

from lmforge.errors import UserError


class EMA:
    """An exponential moving average of the trainable parameters, with the usual warm-up
    (decay_t = min(decay, (1 + t) / (10 + t)), so early steps are not dominated by the initial weights).

    ``swapped(model)`` puts the average into the model for evaluation / saving and the live
    weights back afterwards.
    """

    def __init__(self, model: torch.nn.Module, decay: float, state: dict[str, torch.Tensor] | None = None) -> None:
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.avg = {n: p.detach().clone() for n, p in self.params.items()}
        for n, v in (state or {}).items():
            if n not in self.avg or self.avg[n].shape != v.shape:
                raise UserError(f"training state: EMA tensor {n} does not match the model (was train.ema_decay changed?)")
            self.avg[n].copy_(v)

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        names = list(self.avg)
        torch._foreach_lerp_([self.avg[n] for n in names], [self.params[n].detach() for n in names], 1.0 - d)

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module):
        live = {n: p.detach().clone() for n, p in self.params.items()}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(live[n])

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for n, p in self.params.items():
            p.copy_(self.avg[n])
