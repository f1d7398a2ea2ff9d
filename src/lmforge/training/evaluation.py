"""The plain validation loss ``fit()`` logs for tasks without an evaluator of their own."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from lmforge.devices import autocast_context, call, to_device
from lmforge.training import distributed

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: Iterable, loss_fn: LossFn, device, dtype: str, info,
                  with_accuracy: bool = False):
    """Mean loss over the evaluation batches (sharded over ranks, summed with all-reduce); with
    ``with_accuracy`` also the share of argmax(logits) == y, from the same forward passes: (loss, acc)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(3, dtype=torch.float64)  # loss * n, n, right
    for i, (x, y) in enumerate(batches):
        if i % info.world_size != info.rank:
            continue
        with autocast_context(device, dtype):
            logits = call(model, to_device(x, device))
        y = y.to(device)
        n = y.numel()
        right = (logits.argmax(-1) == y).sum().item() if with_accuracy else 0
        total += torch.tensor([loss_fn(logits, y).double().item() * n, n, right], dtype=torch.float64)
    distributed.all_reduce_sum(total, info)
    model.train(was_training)
    loss = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
    if with_accuracy:
        return loss, (total[2] / total[1]).item() if total[1] > 0 else float("nan")
    return loss
