"""Evaluation of language models: loss, perplexity, bits per character, and the unigram baseline.

The unigram entropy of a split is the loss (nats / token) of the best model that ignores context:
predicting every token from its frequency in that split. A trained LM must beat it by a wide margin
to have learned anything beyond token frequencies.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lmforge import checkpoint as ckpt
from lmforge.data import iter_eval_batches
from lmforge.distributed import DistInfo
from lmforge.train import evaluate_loss, lm_loss


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats / token of the split's own token frequencies.

    >>> round(unigram_entropy(np.array([0, 0, 1, 1]), 4), 4)  # two equally likely tokens: ln 2
    0.6931
    """
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def evaluate_run(run_dir: str | Path, data: str | None = None, split: str = "val",
                 max_batches: int | None = None, device: str = "cpu") -> dict:
    """Loss / perplexity of a run's model on ``split`` of its own token data, or of ``data`` (a name or path)."""
    cfg, model, tok = ckpt.load_run(run_dir, device)
    if data is None:
        from lmforge.data import TokenData

        token_data = TokenData.load(Path(run_dir) / "data")
        tokens = token_data.train if split == "train" else token_data.val
        chars = token_data.meta.get(f"{split}_chars")
        source = f"{run_dir}/data ({split})"
    else:
        from lmforge.datasets import load_text

        train_text, val_text = load_text(data, cfg.data.val_fraction)
        text = train_text if split == "train" else val_text
        tokens, chars = np.asarray(tok.encode(text), dtype=np.int64), len(text)
        source = f"{data} ({split})"
    if len(tokens) < 2:
        from lmforge.errors import UserError

        raise UserError(f"{source}: has {len(tokens)} tokens; at least 2 are needed to evaluate")
    block = min(cfg.model.block_size, len(tokens) - 1)
    scored = 0

    def counted():
        nonlocal scored
        for x, y in iter_eval_batches(tokens, block, batch_size=8, max_batches=max_batches):
            scored += y.numel()
            yield x, y

    loss = evaluate_loss(model, counted(), lm_loss, torch.device(device), "float32", DistInfo())
    h1 = unigram_entropy(tokens, cfg.model.vocab_size)
    result = {
        "run_dir": str(run_dir),
        "data": source,
        "tokens": int(scored),
        "loss": round(loss, 5),
        "perplexity": round(math.exp(min(loss, 50.0)), 3),
        "unigram_entropy": round(h1, 5),
        "unigram_perplexity": round(math.exp(h1), 3),
    }
    if chars:  # tokenizer-independent: comparable across vocabularies
        per_char = len(tokens) / chars / math.log(2)
        result.update(bits_per_char=round(loss * per_char, 4), unigram_bits_per_char=round(h1 * per_char, 4))
    return result
