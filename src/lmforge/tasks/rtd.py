"""``rtd``: replaced-token detection (ELECTRA, Clark et al. 2020) for a BERT-style encoder.

The model (:class:`~lmforge.models.electra.ElectraForPretraining`) returns what a masked batch gives;
this task turns that into the training loss, generator masked-LM cross-entropy + ``DISC_WEIGHT`` (50,
the paper's lambda) x the discriminator's mean binary cross-entropy over the real tokens, and into an
evaluator for ``fit()``. That sum need not fall (the discriminator's task hardens as the generator
improves), so the evaluator logs the two losses and the discriminator's accuracy beside it.

A pretraining run of this task holds a generator and a discriminator: only ``finetune --base`` takes it
(the discriminator, stored as ``bert.*``); evaluate, compress, distill and export refuse it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge import tasks
from lmforge.errors import UserError
from lmforge.tasks.mlm import MaskedLanguageModelling

DISC_WEIGHT = 50.0


def rtd_losses(out) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(generator masked-LM CE, discriminator BCE over the real tokens, discriminator accuracy) of an
    :class:`~lmforge.models.electra.ElectraOutput`."""
    gen_loss = F.cross_entropy(out.gen_logits.float(), out.gen_targets)
    per_token = F.binary_cross_entropy_with_logits(out.disc_logits, out.replaced.float(), reduction="none")
    n = out.keep.sum().clamp(min=1.0)
    right = (((out.disc_logits > 0) == out.replaced).float() * out.keep).sum() / n
    return gen_loss, (per_token * out.keep).sum() / n, right.detach()


def rtd_loss(out, _labels=None) -> torch.Tensor:
    """``fit()``'s loss: generator CE + ``DISC_WEIGHT`` x discriminator BCE."""
    gen, disc, _ = rtd_losses(out)
    return gen + DISC_WEIGHT * disc


@torch.no_grad()
def evaluate_rtd(model, batches, device, dtype: str, info) -> tuple[float, dict[str, float]]:
    """``fit()``'s evaluator: (the training loss, {generator_loss, discriminator_loss, discriminator_accuracy})
    over the evaluation batches, sharded over ranks (``info``: the run's DistInfo)."""
    from lmforge.devices import autocast_context, to_device

    was_training = model.training
    model.eval()
    total = torch.zeros(4, dtype=torch.float64)  # generator CE, discriminator BCE, accuracy, batches
    for i, (x, _y) in enumerate(batches):
        if i % info.world_size != info.rank:
            continue
        with autocast_context(device, dtype):
            gen, disc, acc = rtd_losses(model(**to_device(x, device)))
        total += torch.tensor([gen.item(), disc.item(), acc.item(), 1.0], dtype=torch.float64)
    info.all_reduce_sum(total)
    model.train(was_training)
    n = max(total[3].item(), 1.0)
    gen, disc, acc = (total[:3] / n).tolist()
    return gen + DISC_WEIGHT * disc, {"generator_loss": gen, "discriminator_loss": disc, "discriminator_accuracy": acc}


def pretraining_only(where, verb: str) -> UserError:
    """The one-line error for a command that needs a finished model but got an ELECTRA pretraining run."""
    return UserError(f"{where}: an ELECTRA pretraining run (generator + discriminator) has nothing to {verb}; fine-tune "
                     f"its encoder first (lmforge finetune --base {where} ...)")


class ReplacedTokenDetection(MaskedLanguageModelling):
    name = "rtd"
    form = "rtd"
    finished = False
    evaluator = staticmethod(evaluate_rtd)

    def loss(self, output, target):
        return rtd_loss(output, target)

    def run_batches(self, cfg, run_dir, tok):
        raise pretraining_only(run_dir, "fine-tune while compressing")

    def evaluate(self, cfg, model, tok, run_dir, data, split, **options) -> dict:
        raise pretraining_only(run_dir, "evaluate")


tasks.register(ReplacedTokenDetection())
