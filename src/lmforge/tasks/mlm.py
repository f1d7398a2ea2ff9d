"""``mlm``: masked language modelling (BERT): BERT's 80/10/10 masking of random blocks, cross-entropy on the
masked positions. In training the encoder's vocabulary-wide head runs on the masked positions only
(``{"idx", "select"}`` inputs); evaluation scores full (B, T) logits against fixed masks."""

from __future__ import annotations

import math

import torch

from lmforge import tasks
from lmforge.tasks.lm import LanguageModelling, eval_tokens, mean_loss, unigram_entropy


class _Split:
    """A token array seen as a TokenData whose val split it is (for MLMBatches.eval_batches)."""

    def __init__(self, tokens):
        self.train = self.val = tokens


class MaskedLanguageModelling(LanguageModelling):
    name = "mlm"
    form = "select"  # training batches: the head scores the masked positions only

    def batches(self, cfg, tok, data, form: str | None = None):
        from lmforge.data.batches import MLMBatches

        t = cfg.train
        return MLMBatches(data, cfg.model.block_size, t.batch_size, t.seed, t.eval_batches, tok, cfg.data.mask_prob,
                          form=form or self.form)

    def run_batches(self, cfg, run_dir, tok):
        from pathlib import Path

        from lmforge.data.shards import TokenData

        return self.batches(cfg, tok, TokenData.load(Path(run_dir) / "data"), form="full")

    def evaluate(self, cfg, model, tok, run_dir, data, split, max_batches=None, device="cpu", **_options) -> dict:
        """Masked-LM loss with fixed masks (the same each time it is evaluated)."""
        from lmforge.data.batches import MLMBatches

        tokens, _chars, source = eval_tokens(cfg, tok, run_dir, data, split)
        block = min(cfg.model.block_size, len(tokens) - 1)
        mlm = MLMBatches(_Split(tokens), block, 8, cfg.train.seed, max_batches, tok, cfg.data.mask_prob)
        loss, _ = mean_loss(model, mlm.eval_batches(), torch.device(device))
        return {"run_dir": str(run_dir), "data": source, "objective": "mlm", "loss": round(loss, 5),
                "perplexity": round(math.exp(min(loss, 50.0)), 3),
                "unigram_entropy": round(unigram_entropy(tokens, cfg.model.vocab_size), 5)}


tasks.register(MaskedLanguageModelling())
