"""ELECTRA pretraining (Clark et al., 2020): replaced-token detection, for a BERT-style encoder.

A small masked-LM *generator* fills the masked positions with tokens it samples; the
*discriminator* (the encoder that fine-tuning takes) reads the result and says, for every token,
whether it was replaced. The discriminator learns from all tokens of a block, not only the ~15-25%
that masked-LM scores, which is why the paper finds ELECTRA reaching a given downstream accuracy
with much less compute than masked-LM. (On chn-reviews at 1,500 steps it did not: see the README.)

``ElectraForPretraining`` holds ``bert`` (the discriminator: the same :class:`~lmforge.models.bert.BERT`
and parameter names a masked-LM run has, so ``lmforge finetune --base`` loads ``bert.*`` unchanged),
``disc_head`` (dense C -> C, GELU, C -> 1) and ``generator`` (a ``BertForMaskedLM`` of
``model.generator_layers`` layers at the same width, whose token / position / type embeddings and
embedding LayerNorm *are* the discriminator's, as the paper ties them). Training loss:
masked-LM cross-entropy of the generator + ``DISC_WEIGHT`` (50, the paper's lambda) x the mean binary
cross-entropy of the discriminator over the real (non-padding) tokens. Sampled tokens carry no
gradient back to the generator.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.models.bert import BERT, BertForMaskedLM

DISC_WEIGHT = 50.0
_SHARED = ("wte", "wpe", "wtt", "ln_e")  # embedding modules the generator takes from the discriminator


class ElectraForPretraining(nn.Module):
    """Generator + discriminator. ``forward(idx, labels)`` -> the training loss (a scalar tensor);
    ``forward(idx)`` -> the discriminator's replaced-token logits (B, T).

    >>> m = ElectraForPretraining(ModelConfig(name="electra", vocab_size=100, n_layer=2, n_embd=32, n_head=2, block_size=16))
    >>> m.generator.bert.wte is m.bert.wte, m.generator.mlm_head.decoder.weight is m.bert.wte.weight, len(m.generator.bert.h)
    (True, True, 1)
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.bert = BERT(cfg)
        C = cfg.n_embd
        self.disc_head = nn.Sequential(nn.Linear(C, C), nn.GELU(), nn.Linear(C, 1))
        self.generator = BertForMaskedLM(dataclasses.replace(cfg, name="bert", n_layer=cfg.generator_layers,
                                                             layer_n_head="", layer_n_inner=""))
        for name in _SHARED:
            if hasattr(self.bert, name):
                setattr(self.generator.bert, name, getattr(self.bert, name))
        if cfg.tie_weights:
            self.generator.mlm_head.decoder.weight = self.bert.wte.weight
        self.apply(BertForMaskedLM._init_weights)

    def forward(self, idx: Tensor, labels: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        """``idx``: masked inputs (B, T); ``labels``: the original ids where masked, -100 elsewhere.
        With labels: generator CE + ``DISC_WEIGHT`` x discriminator BCE (a scalar); without: (B, T) logits."""
        if labels is None:
            return self.disc_head(self.bert(idx, attention_mask, token_type_ids)).squeeze(-1)  # (B, T)
        gen_loss, disc_loss, _ = self.losses(idx, labels, attention_mask, token_type_ids)
        return gen_loss + DISC_WEIGHT * disc_loss

    def losses(self, idx: Tensor, labels: Tensor, attention_mask: Tensor | None = None,
               token_type_ids: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(generator masked-LM CE, discriminator BCE, discriminator accuracy) for one masked batch."""
        picked = labels != -100  # (B, T)
        gen_logits = self.generator(idx, attention_mask, token_type_ids, select=picked)  # (N, V)
        target = labels[picked]  # (N,)
        gen_loss = F.cross_entropy(gen_logits.float(), target)
        with torch.no_grad():  # sample the replacements: Gumbel-max over the generator's distribution
            u = torch.rand(gen_logits.shape, device=gen_logits.device).clamp_(1e-9, 1.0)
            sampled = (gen_logits.float() - torch.log(-torch.log(u))).argmax(-1)  # (N,)
            corrupt = idx.clone()
            corrupt[picked] = sampled
            replaced = torch.zeros_like(picked)
            replaced[picked] = sampled != target  # a sample equal to the original counts as original
        disc_logits = self.disc_head(self.bert(corrupt, attention_mask, token_type_ids)).squeeze(-1).float()  # (B, T)
        per_token = F.binary_cross_entropy_with_logits(disc_logits, replaced.float(), reduction="none")
        keep = torch.ones_like(per_token) if attention_mask is None else attention_mask.float()
        n = keep.sum().clamp(min=1.0)
        right = (((disc_logits > 0) == replaced).float() * keep).sum() / n
        return gen_loss, (per_token * keep).sum() / n, right.detach()

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (shared embeddings count once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def evaluate_electra(model: ElectraForPretraining, batches, device, dtype: str, info) -> tuple[float, dict[str, float]]:
    """``fit()``'s evaluator: (the training loss, {generator_loss, discriminator_loss, discriminator_accuracy})
    over the evaluation batches, sharded over ranks. The combined loss mixes a task that gets harder as the
    generator improves, so it need not fall; the discriminator's accuracy against the share of original
    tokens (~85% at the usual masking) says more."""
    from lmforge.training import distributed
    from lmforge.training.loop import autocast_context, to_device

    was_training = model.training
    model.eval()
    total = torch.zeros(4, dtype=torch.float64)  # generator CE, discriminator BCE, accuracy, batches
    for i, (x, _y) in enumerate(batches):
        if i % info.world_size != info.rank:
            continue
        with autocast_context(device, dtype):
            gen, disc, acc = model.losses(**to_device(x, device))
        total += torch.tensor([gen.item(), disc.item(), acc.item(), 1.0], dtype=torch.float64)
    distributed.all_reduce_sum(total, info)
    model.train(was_training)
    n = max(total[3].item(), 1.0)
    gen, disc, acc = (total[:3] / n).tolist()
    return gen + DISC_WEIGHT * disc, {"generator_loss": gen, "discriminator_loss": disc, "discriminator_accuracy": acc}


def electra_loss(out: Tensor, _labels: Tensor) -> Tensor:
    """``fit()``'s loss function for ELECTRA: the model already returned its loss."""
    return out


def pretraining_only(where, verb: str):
    """The one-line error for a command that needs a finished model but got an ELECTRA pretraining run."""
    from lmforge.errors import UserError

    return UserError(f"{where}: an ELECTRA pretraining run (generator + discriminator) has nothing to {verb}; fine-tune "
                     f"its encoder first (lmforge finetune --base {where} ...)")
