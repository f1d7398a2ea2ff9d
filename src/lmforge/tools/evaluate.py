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

from lmforge.data.shards import iter_eval_batches
from lmforge.runs import loader
from lmforge.training.distributed import DistInfo
from lmforge.training.loop import evaluate_loss, lm_loss


def check_max_batches(max_batches: int | None) -> None:
    """``--max-batches``: None (all) or an integer >= 1, else a UserError naming the flag."""
    if max_batches is not None:
        from lmforge.config.fields import check_int

        check_int("--max-batches", max_batches, 1, None)


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats / token of the split's own token frequencies.

    >>> round(unigram_entropy(np.array([0, 0, 1, 1]), 4), 4)  # two equally likely tokens: ln 2
    0.6931
    """
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class _Split:
    """A token array seen as a TokenData whose val split it is (for MLMBatches.eval_batches)."""

    def __init__(self, tokens):
        self.train = self.val = tokens


def evaluate_run(run_dir: str | Path, data: str | None = None, split: str = "val",
                 max_batches: int | None = None, device: str = "cpu",
                 text_column: str | None = None, label_column: str | None = None, compile: bool = False) -> dict:
    """A language model: loss / perplexity on ``split`` of its own token data or of ``data``.
    A classifier: accuracy, precision / recall / F1 and the confusion matrix on ``data`` (default: its own).
    ``compile``: run the model through ``torch.compile`` (dynamic shapes; pays off for int8 runs, whose
    quantize / rescale passes it fuses, and for large evaluation sets)."""
    check_max_batches(max_batches)
    if data is not None and not data.strip():  # not "the run's own data", and never the current folder
        from lmforge.errors import UserError

        raise UserError(f"--data: expected a data set name or a file / folder (omit it for the run's own data), got {data!r}")
    cfg, model, tok = loader.load_run(run_dir, device, verb="evaluate")
    if compile:
        model = torch.compile(model, dynamic=True)
    if cfg.finetune.labels:
        return evaluate_classifier(cfg, model, tok, run_dir, data, split, text_column, label_column, device)
    if split not in ("train", "val"):
        from lmforge.errors import UserError

        raise UserError(f"--split {split}: a language-model run has train and val splits")
    if data is None:
        from lmforge.data.shards import TokenData

        token_data = TokenData.load(Path(run_dir) / "data")
        tokens = token_data.train if split == "train" else token_data.val
        chars = token_data.meta.get(f"{split}_chars")
        source = f"{run_dir}/data ({split})"
    else:
        from lmforge.data.registry import load_text

        train_text, val_text = load_text(data, cfg.data.val_fraction)
        text = train_text if split == "train" else val_text
        from lmforge.tokenizer import encode_long

        tokens, chars = np.asarray(encode_long(tok, text), dtype=np.int64), len(text)
        source = f"{data} ({split})"
    if len(tokens) < 2:
        from lmforge.errors import UserError

        raise UserError(f"{source}: has {len(tokens)} tokens; at least 2 are needed to evaluate")
    block = min(cfg.model.block_size, len(tokens) - 1)
    if cfg.model.name == "bert":  # masked-LM loss with fixed masks (the same each time it is evaluated)
        from lmforge.recipes.pretrain import MLMBatches

        mlm = MLMBatches(_Split(tokens), block, 8, cfg.train.seed, max_batches, tok, cfg.data.mask_prob)
        loss = evaluate_loss(model, mlm.eval_batches(), lm_loss, torch.device(device), "float32", DistInfo())
        return {"run_dir": str(run_dir), "data": source, "objective": "mlm", "loss": round(loss, 5),
                "perplexity": round(math.exp(min(loss, 50.0)), 3),
                "unigram_entropy": round(unigram_entropy(tokens, cfg.model.vocab_size), 5)}
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


@torch.no_grad()
def predict_proba(model: torch.nn.Module, tok, texts: list[str], max_length: int, batch_size: int = 64,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Class probabilities (N, num_labels) for ``texts`` with a fine-tuned classifier."""
    from lmforge.recipes.finetune import collate, encode_texts

    ids = encode_texts(tok, texts, max_length)
    pad = tok.pad_id if tok.pad_id is not None else 0
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths per batch: little padding
    out = []
    for i in range(0, len(ids), batch_size):
        x, mask = collate([ids[j] for j in order[i : i + batch_size]], pad)
        out.append(model(x.to(device), mask.to(device)).float().softmax(-1).cpu())
    if not out:
        return torch.zeros(0, 0)
    probs = torch.cat(out)
    return probs[torch.argsort(torch.tensor(order))]  # back to the input order


def evaluate_classifier(cfg, model, tok, run_dir, data: str | None, split: str, text_column: str | None,
                        label_column: str | None, device: str = "cpu") -> dict:
    """Accuracy, macro and per-class precision / recall / F1 and the confusion matrix (scikit-learn)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    from lmforge.data.labelled import load_labelled

    ft = cfg.finetune
    names = ft.label_names
    d = load_labelled(data or ft.data, split, text_column or ft.text_column, label_column or ft.label_column, names)
    max_len = cfg.classifier_max_length
    pred = predict_proba(model, tok, d.texts, max_len, device=device).argmax(-1).tolist()
    idx = list(range(len(names)))
    p, r, f, support = precision_recall_fscore_support(d.labels, pred, labels=idx, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(d.labels, pred, labels=idx, average="macro", zero_division=0)
    return {
        "run_dir": str(run_dir),
        "data": f"{d.source} ({split})" if (data or ft.data) and not Path(data or ft.data).exists() else d.source,
        "examples": len(d),
        "accuracy": round(float(accuracy_score(d.labels, pred)), 5),
        "macro_precision": round(float(mp), 5),
        "macro_recall": round(float(mr), 5),
        "macro_f1": round(float(mf), 5),
        "per_class": {n: {"precision": round(float(p[i]), 5), "recall": round(float(r[i]), 5),
                          "f1": round(float(f[i]), 5), "support": int(support[i])} for i, n in enumerate(names)},
        "labels": names,
        "confusion": confusion_matrix(d.labels, pred, labels=idx).tolist(),
    }


def predict_texts(run_dir: str | Path, texts: list[str], input_file: str | None = None, text_column: str = "text",
                  device: str = "cpu") -> list[tuple[str, float, str]]:
    """(label, probability, text) for each text, with a fine-tuned classifier run dir."""
    from lmforge.config.fields import check_text, show
    from lmforge.data.labelled import read_texts
    from lmforge.errors import UserError

    texts = list(texts)
    for i, t in enumerate(texts, 1):  # a command line's bytes that are not UTF-8 arrive as lone surrogates
        if not isinstance(t, str):
            raise UserError(f"predict: text {i}: expected a string, got {show(t)}")
        check_text(f"predict: text {i} of {len(texts)}", t)
    texts += read_texts(input_file, text_column) if input_file else []  # bad input fails fast
    if not texts:
        raise UserError("predict: no text given (pass texts as arguments or --input FILE)")
    cfg, model, tok = loader.load_run(run_dir, device)
    if not cfg.finetune.labels:
        raise UserError(f"{run_dir}: not a fine-tuned classifier (predict needs a run made by `lmforge finetune`)")
    max_len = cfg.classifier_max_length
    probs = predict_proba(model, tok, texts, max_len, device=device)
    names = cfg.finetune.label_names
    best = probs.max(-1)
    return [(names[i], float(pv), t) for i, pv, t in zip(best.indices.tolist(), best.values.tolist(), texts)]
