"""ELECTRA pretraining (Clark et al., 2020): replaced-token detection, for a BERT-style encoder.

A small masked-LM *generator* fills the masked positions with tokens it samples; the
*discriminator* (the encoder that fine-tuning takes) reads the result and says, for every token,
whether it was replaced. The discriminator learns from all tokens of a block, not only the ~15-25%
that masked-LM scores, which is why the paper finds ELECTRA reaching a given downstream accuracy
with much less compute than masked-LM. (On chn-reviews at 1,500 steps it did not: see docs/results.md.)

``ElectraForPretraining`` holds ``bert`` (the discriminator: the same :class:`~lmforge.models.bert.BERT`
and parameter names a masked-LM run has, so ``lmforge finetune --base`` loads ``bert.*`` unchanged),
``disc_head`` (dense C -> C, GELU, C -> 1) and ``generator`` (a ``BertForMaskedLM`` of
``model.generator_layers`` layers at the same width, whose token / position / type embeddings and
embedding LayerNorm *are* the discriminator's, as the paper ties them). With the masked labels,
``forward`` returns :class:`ElectraOutput`: the generator's logits at the masked positions and what the
discriminator made of the corrupted block; the training loss (generator CE + 50 x discriminator BCE)
and the evaluator live with the ``rtd`` task (:mod:`lmforge.tasks.rtd`). Sampled tokens carry no
gradient back to the generator.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.models.bert import BERT, BertForMaskedLM

_SHARED = ("wte", "wpe", "wtt", "ln_e")  # embedding modules the generator takes from the discriminator


class ElectraOutput(NamedTuple):
    """What one masked batch gives: the generator at the masked positions, the discriminator on the result."""

    gen_logits: Tensor  # (N, V) at the N masked positions
    gen_targets: Tensor  # (N,) the original ids there
    disc_logits: Tensor  # (B, T) float32: replaced-token logits of the corrupted block
    replaced: Tensor  # (B, T) bool: which tokens the generator's samples changed
    keep: Tensor  # (B, T) float: 1 for real tokens, 0 for padding


class ElectraForPretraining(nn.Module):
    """Generator + discriminator. ``forward(idx, labels)`` -> :class:`ElectraOutput`;
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
                token_type_ids: Tensor | None = None):
        """``idx``: masked inputs (B, T); ``labels``: the original ids where masked, -100 elsewhere.
        With labels: :class:`ElectraOutput`; without: the discriminator's (B, T) logits."""
        if labels is None:
            return self.disc_head(self.bert(idx, attention_mask, token_type_ids)).squeeze(-1)  # (B, T)
        picked = labels != -100  # (B, T)
        gen_logits = self.generator(idx, attention_mask, token_type_ids, select=picked)  # (N, V)
        target = labels[picked]  # (N,)
        with torch.no_grad():  # sample the replacements: Gumbel-max over the generator's distribution
            u = torch.rand(gen_logits.shape, device=gen_logits.device).clamp_(1e-9, 1.0)
            sampled = (gen_logits.float() - torch.log(-torch.log(u))).argmax(-1)  # (N,)
            corrupt = idx.clone()
            corrupt[picked] = sampled
            replaced = torch.zeros_like(picked)
            replaced[picked] = sampled != target  # a sample equal to the original counts as original
        disc_logits = self.disc_head(self.bert(corrupt, attention_mask, token_type_ids)).squeeze(-1).float()  # (B, T)
        keep = torch.ones_like(disc_logits) if attention_mask is None else attention_mask.float()
        return ElectraOutput(gen_logits, target, disc_logits, replaced, keep)

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (shared embeddings count once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
