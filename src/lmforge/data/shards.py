"""Token shards on disk and language-model batches drawn from them.

:func:`prepare_tokens` writes ``train.bin`` / ``val.bin`` (raw uint16, or uint32 when the vocab
does not fit) and ``meta.json``. The token stream is exactly ``encode(text)`` of each split, line
after line with its ``"\\n"`` kept, so ``decode(train) == train_text``: no EOS is inserted, since
the corpora here are line-oriented text, not separate documents. ``meta.json`` is written last;
a folder whose ``meta.json`` fingerprint (tokenizer sha256 + text sha256) matches is reused as is.

Batches: a window of ``block_size + 1`` tokens from ``start`` gives ``x = w[:-1]``, ``y = w[1:]``:

>>> make_batch(np.arange(10, dtype=np.uint16), torch.tensor([2]), block_size=3)
(tensor([[2, 3, 4]]), tensor([[3, 4, 5]]))
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from lmforge.errors import UserError
from lmforge.fileio import atomic_write_bytes

LINES_PER_CHUNK = 4096
CHARS_PER_CHUNK = 1 << 20  # and at most about this many characters per encode_batch call


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class TokenData:
    train: np.ndarray  # read-only np.memmap (or an empty array for an empty split)
    val: np.ndarray
    vocab_size: int
    dtype: np.dtype
    meta: dict

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "TokenData":
        out_dir = Path(out_dir)
        try:
            meta = json.loads((out_dir / "meta.json").read_text())
            dtype, counts = np.dtype(meta["dtype"]), {s: int(meta[f"{s}_tokens"]) for s in ("train", "val")}
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{out_dir}: not a prepared token folder (no readable meta.json with dtype and token counts)") from None
        splits = {}
        for split in ("train", "val"):
            path, n = out_dir / f"{split}.bin", counts[split]
            if not path.is_file() or path.stat().st_size != n * dtype.itemsize:
                raise UserError(f"{path}: missing or not {n} {dtype} tokens as meta.json says (prepare again)")
            splits[split] = np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
        return cls(splits["train"], splits["val"], meta["vocab_size"], dtype, meta)


def _lines(text: str, specials: tuple[str, ...] | None = None) -> Iterator[str]:
    """The lines of ``text``, each with its "\\n" (the last without, if the text ends without one); a line of
    more than PIECE_CHARS characters comes in pieces cut where byte-level BPE cuts anyway, never inside one of
    ``specials`` (the same ids for lmforge's and GPT-2's tokenizers, and WordPiece's, whose words end at a space;
    a pre-tokenizer that marks word starts, such as Metaspace, may see a piece's start as one)."""
    from lmforge.tokenizer import PIECE_CHARS, SPECIAL_TOKENS, text_pieces

    specials = tuple(SPECIAL_TOKENS.values()) if specials is None else specials

    start, n = 0, len(text)
    while start < n:
        end = text.find("\n", start)
        end = n if end == -1 else end + 1
        if end - start > PIECE_CHARS:
            yield from text_pieces(text[start:end], specials=specials)
        else:
            yield text[start:end]
        start = end


def _batches(text: str, specials: tuple[str, ...] | None = None) -> Iterator[list[str]]:
    """Lines (or pieces of long ones) in batches of at most LINES_PER_CHUNK items and about CHARS_PER_CHUNK
    characters: what one ``encode_batch`` holds in memory stays bounded, however the text is laid out."""
    batch: list[str] = []
    chars = 0
    for line in _lines(text, specials):
        batch.append(line)
        chars += len(line)
        if len(batch) >= LINES_PER_CHUNK or chars >= CHARS_PER_CHUNK:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encode_text(tokenizer, text: str, desc: str, dtype=np.int64) -> np.ndarray:
    """``tokenizer.encode(text)`` in batches of lines (each keeps its "\\n"), as one array of ``dtype``."""
    hf = getattr(tokenizer, "hf", None)
    specials = tuple(t.content for t in hf.get_added_tokens_decoder().values()) if hf is not None else None
    bar = tqdm(_batches(text, specials), desc=f"tokenizing {desc}", unit="chunk", file=sys.stderr,
               disable=len(text) < 2_000_000, leave=False)
    parts = [np.fromiter(chain.from_iterable(tokenizer.encode_batch(batch)), np.int64).astype(dtype) for batch in bar]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def prepare_tokens(tokenizer, train_text: str, val_text: str, out_dir: str | os.PathLike) -> TokenData:
    """Tokenize both splits into ``out_dir`` (or reuse what is there when the fingerprint matches)."""
    out_dir = Path(out_dir)
    fingerprint = {"tokenizer_sha256": tokenizer.sha256, "train_sha256": _sha256(train_text),
                   "val_sha256": _sha256(val_text)}
    if (out_dir / "meta.json").exists():
        try:
            data = TokenData.load(out_dir)
            if all(data.meta.get(k) == v for k, v in fingerprint.items()):
                return data
        except (UserError, KeyError, TypeError):
            pass  # half-written or foreign: prepare again
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # the .bin files change: invalid until rewritten
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32)
    meta = {"dtype": dtype.name, "vocab_size": tokenizer.vocab_size, **fingerprint}
    for split, text in (("train", train_text), ("val", val_text)):
        ids = _encode_text(tokenizer, text, split, dtype)
        atomic_write_bytes(out_dir / f"{split}.bin", ids.tobytes())
        meta[f"{split}_tokens"] = int(ids.size)
        meta[f"{split}_chars"] = len(text)
    atomic_write_bytes(out_dir / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return TokenData.load(out_dir)


def _check_length(n_tokens: int, block_size: int, split: str) -> None:
    if n_tokens < block_size + 1:
        raise UserError(
            f"the {split} split has {n_tokens} tokens, too few for block_size={block_size} (needs at least "
            f"{block_size + 1}): make model.block_size smaller or give more data"
        )


def sample_starts(n_tokens: int, block_size: int, batch_size: int, generator: torch.Generator,
                  split: str = "train") -> torch.LongTensor:
    """``batch_size`` uniform random window starts in ``[0, n_tokens - block_size - 1]``."""
    _check_length(n_tokens, block_size, split)
    return torch.randint(0, n_tokens - block_size, (batch_size,), generator=generator)


def make_batch(tokens: np.ndarray, starts: torch.LongTensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), int64 tensors of shape (B, T); ``y[b, t] == x[b, t + 1]`` = ``tokens[start + t + 1]``."""
    idx = starts.numpy()[:, None] + np.arange(block_size + 1)  # (B, T+1) fancy index: one copy
    w = torch.from_numpy(tokens[idx].astype(np.int64))
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def iter_eval_batches(tokens: np.ndarray, block_size: int, batch_size: int, max_batches: int | None = None,
                      split: str = "val") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic evaluation batches: evenly spaced windows over the whole split.

    With ``max_batches=None`` the windows are the non-overlapping ones that tile the split;
    otherwise at most ``batch_size * max_batches`` windows, spread evenly (never more windows than
    fit without overlap). The last batch may be smaller.
    """
    n = len(tokens)
    _check_length(n, block_size, split)
    n_windows = (n - 1) // block_size
    if max_batches is not None:
        n_windows = min(n_windows, batch_size * max_batches)
    starts = torch.from_numpy(np.linspace(0, n - block_size - 1, n_windows).round().astype(np.int64))
    for i in range(0, n_windows, batch_size):
        yield make_batch(tokens, starts[i : i + batch_size], block_size)
