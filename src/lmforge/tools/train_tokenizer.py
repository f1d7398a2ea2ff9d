"""``lmforge tokenizer train``: a byte-level BPE tokenizer trained on a data set or text files, saved as
``OUT/tokenizer.json`` (never over an existing tokenizer or a run's)."""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.errors import UserError
from lmforge.tokenizer import MIN_VOCAB_SIZE, SPECIAL_TOKENS, train_tokenizer


def train_from_spec(spec: str, vocab_size: int, out_dir: str | os.PathLike, min_frequency: int = 2) -> Path:
    """Train on the train split of ``spec`` (see :func:`lmforge.data.text.load_text`); the saved path."""
    from lmforge.config.fields import show
    from lmforge.data.text import load_text

    if not (isinstance(vocab_size, int) and MIN_VOCAB_SIZE <= vocab_size <= 2**32 - 1):  # before any text is read
        raise UserError(f"--vocab-size: expected an integer >= {MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} "
                        f"special tokens), got {show(vocab_size)}")
    if not spec.strip():  # Path("") is the current folder: it would train on whatever .txt files are there
        raise UserError(f"--data: expected a data set name, a .txt file or a folder of them, got {show(spec)}")
    target = Path(out_dir) / "tokenizer.json"
    if target.exists() or (Path(out_dir) / "config.yaml").exists():  # a run's tokenizer must match its weights
        raise UserError(f"--out {out_dir}: already holds {'a run' if (Path(out_dir) / 'config.yaml').exists() else target.name}; "
                        "a tokenizer is never overwritten (choose a new folder or delete it first)")
    train_text, _ = load_text(spec)
    tok = train_tokenizer(train_text.splitlines(keepends=True), vocab_size, min_frequency)
    return tok.save(target)
