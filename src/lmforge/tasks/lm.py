"""``lm``: causal language modelling (GPT): predict each next token of random blocks of the token shards.

Metrics: loss (nats / token), perplexity, bits per character and the unigram baseline: the loss of
the best model that ignores context, predicting every token from its frequency in that split. A
trained LM must beat it by a wide margin to have learned anything beyond token frequencies.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge import tasks
from lmforge.errors import UserError


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (B, T, V), targets (B, T), -100 ignored. Computed in float32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats / token of the split's own token frequencies.

    >>> round(unigram_entropy(np.array([0, 0, 1, 1]), 4), 4)  # two equally likely tokens: ln 2
    0.6931
    """
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches, device) -> tuple[float, int]:
    """(mean of ``lm_loss`` over the batches, each weighted by its number of targets; targets scored)."""
    from lmforge.devices import call, to_device

    was_training = model.training
    model.eval()
    total, n_all = 0.0, 0
    for x, y in batches:
        y = y.to(device)
        n = y.numel()
        total += lm_loss(call(model, to_device(x, device)), y).double().item() * n
        n_all += n
    model.train(was_training)
    return (total / n_all if n_all else float("nan")), n_all


def eval_tokens(cfg, tok, run_dir, data: str | None, split: str) -> tuple[np.ndarray, int | None, str]:
    """(token ids, characters or None, description) of ``split`` of the run's shards or of ``data``."""
    if split not in ("train", "val"):
        raise UserError(f"--split {split}: a language-model run has train and val splits")
    if data is None:
        from lmforge.data.shards import TokenData

        token_data = TokenData.load(Path(run_dir) / "data")
        tokens = token_data.train if split == "train" else token_data.val
        chars, source = token_data.meta.get(f"{split}_chars"), f"{run_dir}/data ({split})"
    else:
        from lmforge.data.text import load_text
        from lmforge.tokenizer import encode_long

        train_text, val_text = load_text(data, cfg.data.val_fraction)
        text = train_text if split == "train" else val_text
        tokens, chars, source = np.asarray(encode_long(tok, text), dtype=np.int64), len(text), f"{data} ({split})"
    if len(tokens) < 2:
        raise UserError(f"{source}: has {len(tokens)} tokens; at least 2 are needed to evaluate")
    return tokens, chars, source


class LanguageModelling(tasks.Task):
    name = "lm"

    def build(self, cfg, tok):
        from lmforge.models import build

        return build(cfg.model)

    def batches(self, cfg, tok, data):
        """``data``: the run's :class:`~lmforge.data.shards.TokenData`."""
        from lmforge.data.batches import LMBatches

        t = cfg.train
        return LMBatches(data, cfg.model.block_size, t.batch_size, t.seed, t.eval_batches)

    def run_batches(self, cfg, run_dir, tok):
        from lmforge.data.shards import TokenData

        return self.batches(cfg, tok, TokenData.load(Path(run_dir) / "data"))

    def loss(self, output, target):
        return lm_loss(output, target)

    def evaluate(self, cfg, model, tok, run_dir, data, split, max_batches=None, device="cpu", **_options) -> dict:
        from lmforge.data.shards import iter_eval_batches

        tokens, chars, source = eval_tokens(cfg, tok, run_dir, data, split)
        block = min(cfg.model.block_size, len(tokens) - 1)
        loss, scored = mean_loss(model, iter_eval_batches(tokens, block, batch_size=8, max_batches=max_batches),
                                 torch.device(device))
        h1 = unigram_entropy(tokens, cfg.model.vocab_size)
        result = {"run_dir": str(run_dir), "data": source, "tokens": int(scored), "loss": round(loss, 5),
                  "perplexity": round(math.exp(min(loss, 50.0)), 3), "unigram_entropy": round(h1, 5),
                  "unigram_perplexity": round(math.exp(h1), 3)}
        if chars:  # tokenizer-independent: comparable across vocabularies
            per_char = len(tokens) / chars / math.log(2)
            result.update(bits_per_char=round(loss * per_char, 4), unigram_bits_per_char=round(h1 * per_char, 4))
        return result


tasks.register(LanguageModelling())
