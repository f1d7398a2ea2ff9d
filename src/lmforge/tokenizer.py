"""Byte-level BPE (Hugging Face ``tokenizers``): train, save, load, encode, decode.

Byte-level means every string round-trips exactly, whatever its script: ``decode(encode(s)) == s``
for Chinese, emoji, control characters and stray whitespace alike (no normalizer, no unknown
token, no prefix space).

Special tokens have the fixed ids 0..4 (:data:`SPECIAL_TOKENS` order). ``encode`` adds none,
but a special token's *string* in the text is matched as that token, so it still round-trips:

>>> tok = train_tokenizer(["a b a b"], vocab_size=261)  # the 256 bytes + 5 special tokens
>>> ids = tok.encode("a<|endoftext|>b")
>>> tok.eos_id in ids, tok.decode(ids), tok.decode(ids, skip_special_tokens=True)
(True, 'a<|endoftext|>b', 'ab')

Tokenizers made elsewhere keep their own special tokens: each role (bos, eos, pad, unk, mask) is
looked up by the candidate strings in :data:`ROLE_TOKENS`, so a BERT WordPiece vocabulary (see
:meth:`Tokenizer.from_wordpiece_vocab`) answers with [CLS], [SEP], [PAD], [UNK], [MASK]. With
``encode(text, add_special_tokens=True)`` a sequence gets the tokenizer's own template (BERT:
``[CLS] ... [SEP]``), or ``bos ... eos`` when the tokenizer has none (lmforge's byte-level BPE).

Training is deterministic: the same texts give a byte-identical ``tokenizer.json`` (and so the
same :attr:`Tokenizer.sha256`), with or without ``TOKENIZERS_PARALLELISM``; the BPE trainer
breaks ties between equally frequent pairs by the pair itself, not by hash-map order.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmforge.errors import UserError
from lmforge.fileio import atomic_write_text

SPECIAL_TOKENS = {"bos": "<|bos|>", "eos": "<|endoftext|>", "pad": "<|pad|>", "unk": "<|unk|>", "mask": "<|mask|>"}
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte plus the special tokens
# role -> the strings that may play it, first match wins: lmforge's own (SPECIAL_TOKENS), then BERT's.
ROLE_TOKENS = {
    "bos": ("<|bos|>", "[CLS]"),
    "eos": ("<|endoftext|>", "[SEP]"),
    "pad": ("<|pad|>", "[PAD]"),
    "unk": ("<|unk|>", "[UNK]"),
    "mask": ("<|mask|>", "[MASK]"),
}


class Tokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` with lmforge's special-token roles."""

    def __init__(self, hf: _HFTokenizer):
        self.hf = hf

    # -- encode / decode
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` frames them (BERT: ``[CLS] ... [SEP]``, else bos ... eos)."""
        if not add_special_tokens:
            return self.hf.encode(text, add_special_tokens=False).ids
        return self.encode_batch([text], add_special_tokens=True)[0]

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        own_template = add_special_tokens and self.hf.post_processor is not None
        ids = [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=own_template)]
        if add_special_tokens and not own_template:
            bos, eos = [i for i in (self.bos_id,) if i is not None], [i for i in (self.eos_id,) if i is not None]
            ids = [bos + x + eos for x in ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # -- vocabulary
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def _special_id(self, role: str) -> int | None:
        """Id of a role's token, the first of :data:`ROLE_TOKENS` found; GPT-2 files have only
        ``<|endoftext|>``, which then serves as all roles but mask. lmforge's own strings count
        anywhere in the vocabulary (as always); the others only as added *special* tokens, so an
        ordinary piece spelled ``[CLS]`` in some BPE vocabulary never takes a role.
        """
        i = self.hf.token_to_id(ROLE_TOKENS[role][0])
        if i is not None:
            return i
        specials = {t.content: i for i, t in self.hf.get_added_tokens_decoder().items() if t.special}
        for candidate in ROLE_TOKENS[role][1:]:
            if candidate in specials:
                return specials[candidate]
        return None if role in ("eos", "mask") else self._special_id("eos")

    bos_id = property(lambda self: self._special_id("bos"))
    eos_id = property(lambda self: self._special_id("eos"))
    pad_id = property(lambda self: self._special_id("pad"))
    unk_id = property(lambda self: self._special_id("unk"))
    mask_id = property(lambda self: self._special_id("mask"))

    @property
    def special_ids(self) -> list[int]:
        """Sorted ids of every role's token that exists (e.g. what MLM masking must never pick)."""
        return sorted({i for i in map(self._special_id, ROLE_TOKENS) if i is not None})

    # -- files
    def to_json(self) -> str:
        return self.hf.to_str()

    @property
    def sha256(self) -> str:
        """Fingerprint: sha256 of the serialized ``tokenizer.json`` text."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (a ``.../tokenizer.json`` file) atomically: temp file, then rename."""
        path = Path(path)
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """From a ``tokenizer.json`` file or a folder that holds one."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"{path}: no such tokenizer file (expected a tokenizer.json or a folder holding one)")
        try:
            return cls(_HFTokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"{path}: not a valid tokenizer.json ({first})") from None

    @classmethod
    def from_gpt2_files(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike) -> "Tokenizer":
        """From GPT-2 style ``vocab.json`` + ``merges.txt`` (canonical GPT-2 ids are kept)."""
        for p in (vocab_json, merges_txt):
            if not Path(p).is_file():
                raise UserError(f"{p}: no such file (expected GPT-2 vocab.json and merges.txt)")
        try:
            hf = _HFTokenizer(models.BPE.from_file(str(vocab_json), str(merges_txt)))
        except Exception as e:
            raise UserError(f"{vocab_json}, {merges_txt}: not GPT-2 BPE files ({str(e).splitlines()[0]})") from None
        _byte_level(hf)
        hf.add_special_tokens([t for t in SPECIAL_TOKENS.values() if hf.token_to_id(t) is not None])
        return cls(hf)

    @classmethod
    def from_wordpiece_vocab(
        cls,
        vocab_txt: str | os.PathLike,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        handle_chinese_chars: bool = True,
    ) -> "Tokenizer":
        """From a BERT ``vocab.txt`` (one token a line, id = line number), set up as
        ``tokenizers.BertWordPieceTokenizer`` does: BERT normalizer and pre-tokenizer, ``##``
        continuation pieces, [CLS] / [SEP] template, the five special tokens added when present.
        """
        path = Path(vocab_txt)
        if not path.is_file():
            raise UserError(f"{path}: no such file (expected a BERT vocab.txt)")
        try:
            vocab = models.WordPiece.read_file(str(path))
        except Exception as e:
            raise UserError(f"{path}: not a WordPiece vocab.txt ({str(e).splitlines()[0]})") from None
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in vocab]
        if missing:
            raise UserError(f"{path}: BERT vocab.txt lacks {', '.join(missing)}")
        hf = _HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
        hf.add_special_tokens([t for *_, t in ROLE_TOKENS.values() if t in vocab])
        hf.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=handle_chinese_chars, strip_accents=strip_accents, lowercase=lowercase
        )
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        hf.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
        hf.decoder = decoders.WordPiece(prefix="##")
        return cls(hf)


def _byte_level(hf: _HFTokenizer) -> None:
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()


PIECE_CHARS = 1 << 16  # a longer text is trained on / encoded in pieces of at most this many characters


def _is_cut(text: str, i: int, specials: tuple[str, ...]) -> bool:
    """Whether cutting ``text`` before ``text[i]`` leaves byte-level BPE's tokens as they are: a pre-token
    (GPT-2's pattern, no look-behind) always ends there, the left part ends in no space (so the
    ``\\s+(?!\\S)`` look-ahead sees the same), and no special token string spans the cut."""
    a, b = text[i - 1], text[i]
    if a.isspace() or not (b == " " or (a.isalpha() and not b.isalpha())):
        return False
    return not any(text.find(t, max(0, i - len(t) + 1), i + len(t) - 1) != -1 for t in specials)


def text_pieces(text: str, max_chars: int = PIECE_CHARS, specials: tuple[str, ...] = tuple(SPECIAL_TOKENS.values())):
    """``text`` in consecutive pieces of at most ``max_chars`` characters (``"".join`` gives it back), so a
    20 MB line is tokenized in bounded memory. Pieces are cut where byte-level BPE cuts anyway: before a
    space that follows a non-space, or after a letter run (see :func:`_is_cut`); encoding the pieces one by
    one then gives exactly the ids of the whole (and a tokenizer trained on them, the same merges). Only a
    stretch of ``max_chars // 2`` characters with no such place (one giant word) is cut where it must be.

    >>> list(text_pieces("ab cd ef", 4, ()))
    ['ab', ' cd', ' ef']
    """
    start, n = 0, len(text)
    while n - start > max_chars:
        end = start + max_chars
        cut = next((i for i in range(end, start + max(1, max_chars // 2) - 1, -1) if _is_cut(text, i, specials)), end)
        yield text[start:cut]
        start = cut
    if start < n or not text:
        yield text[start:]


def encode_long(tok: "Tokenizer", text: str) -> list[int]:
    """``tok.encode(text)``, in pieces (:func:`text_pieces`) when the text is long and the tokenizer
    byte-level: the same ids, in bounded memory (one 20 MB line encoded whole takes gigabytes)."""
    if len(text) <= PIECE_CHARS or not isinstance(tok.hf.pre_tokenizer, pre_tokenizers.ByteLevel):
        return tok.encode(text)
    specials = tuple(t.content for t in tok.hf.get_added_tokens_decoder().values())
    ids: list[int] = []
    batch: list[str] = []
    for piece in text_pieces(text, specials=specials):
        batch.append(piece)
        if len(batch) == 16:
            ids.extend(i for e in tok.hf.encode_batch(batch, add_special_tokens=False) for i in e.ids)
            batch = []
    ids.extend(i for e in tok.hf.encode_batch(batch, add_special_tokens=False) for i in e.ids)
    return ids


def _bounded(texts: Iterable[str]) -> Iterable[str]:
    for t in texts:
        if len(t) > PIECE_CHARS:
            yield from text_pieces(t)
        else:
            yield t


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, show_progress: bool = False
) -> Tokenizer:
    """Train byte-level BPE on ``texts`` (an iterable of documents or lines; a very long one is read in
    pieces cut where the pre-tokenizer cuts anyway, :func:`text_pieces`: same merges, bounded memory)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(
            f"vocab_size={vocab_size} is too small: a byte-level tokenizer needs at least {MIN_VOCAB_SIZE} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    hf = _HFTokenizer(models.BPE())
    _byte_level(hf)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    hf.train_from_iterator(_bounded(texts), trainer=trainer)
    tok = Tokenizer(hf)
    if tok.vocab_size < vocab_size:
        warnings.warn(
            f"the tokenizer reached only {tok.vocab_size} of vocab_size={vocab_size} tokens: the text has too "
            f"few pairs seen at least min_frequency={min_frequency} times (give more text or a smaller vocab_size)",
            stacklevel=2,
        )
    return tok
