"""Sentence pairs (a source and a target sentence, for translation), from a file or a registered set.

Files are read by :func:`lmforge.data.tables.read_table` (UTF-8, a BOM is fine), told apart by
their extension:

- ``.tsv``: a header row naming the columns, then one pair a line, fields separated by tabs and
  not quoted: ``zh<TAB>en`` then ``你好。<TAB>Hello.`` is the plain pair format. ``tsv_quoting="csv"``
  reads a ``.tsv`` quoted the CSV way.
- ``.csv``: a header row, then one pair a record, CSV quoting (a field may hold commas, quotes
  and line breaks).
- ``.jsonl``: one JSON object a line, ``{"zh": "你好。", "en": "Hello."}``.

The source and target are the columns ``source_column`` and ``target_column``; left empty, the
first and second column of the header (of a ``.jsonl`` file: the first and second key of its first
object), so either name alone picks the other side as the first remaining column (``source_column="en"``
on a ``zh<TAB>en`` file translates English to Chinese). Each side is stripped; an empty side is an error.

Registered pair sets (``hsk-zh-en``) come deduplicated and split 90/5/5 by the sha1 of the source
(:func:`lmforge.data.corpora.prepare_hsk_zh_en`). A local file is one set of pairs: split it with
:func:`split_pairs`, which keeps every copy and every translation of a source in one split.

Errors are one-line :class:`UserError` messages naming the file and the line:
``pairs.tsv:7: empty target (column 'en')``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmforge.data import registry as datasets
from lmforge.data.corpora import PAIR_SPLITS, split_by_hash
from lmforge.data.tables import TABLE_FORMATS, Row, open_text, read_table
from lmforge.errors import UserError

FORMATS = TABLE_FORMATS
TOO_LONG = ("refuse", "truncate")


@dataclass
class Pairs:
    sources: list[str]
    targets: list[str]
    source: str  # where the pairs come from: the file read (the start of its error messages)
    lines: list[int]  # 1-based line of the file on which each pair begins

    def __post_init__(self) -> None:
        if not len(self.sources) == len(self.targets) == len(self.lines):
            raise ValueError(f"{self.source}: {len(self.sources)} sources, {len(self.targets)} targets and "
                             f"{len(self.lines)} lines: expected as many of each")

    def __len__(self) -> int:
        return len(self.sources)

    def where(self, i: int) -> str:
        """``file:line`` of pair ``i``, the start of an error message about it."""
        return f"{self.source}:{self.lines[i]}"

    def subset(self, index) -> Pairs:
        """The pairs at positions ``index``, in that order (same ``source``, so errors still name the file)."""
        index = list(index)
        return Pairs([self.sources[i] for i in index], [self.targets[i] for i in index], self.source,
                     [self.lines[i] for i in index])


# ----------------------------------------------------------------------------------- reading
def _first_row(path: Path, ext: str, text: str, tsv_quoting: str) -> tuple[int, list[str]] | None:
    """(line, names) of the header of a table (the keys of a ``.jsonl`` file's first object), or None
    when there is none to read: :func:`read_table` then reports the file's error itself."""
    if ext == ".jsonl":
        for line, raw in enumerate(text.split("\n"), 1):
            if raw.strip():
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError:
                    return None
                return (line, list(obj)) if isinstance(obj, dict) else None
        return None
    stream = io.StringIO(text, newline="")
    if ext == ".tsv" and tsv_quoting == "none":
        for line, raw in enumerate(stream, 1):
            if raw := raw.removesuffix("\n").removesuffix("\r"):
                return line, [h.strip() for h in raw.split("\t")]
        return None
    reader = csv.reader(stream, delimiter="\t" if ext == ".tsv" else ",", strict=True)
    try:
        start = 1
        for fields in reader:  # only the header record: the table is read by read_table
            line, start = start, reader.line_num + 1
            if fields:
                return line, [h.strip() for h in fields]
    except csv.Error:
        return None
    return None


def pair_columns(path: str | os.PathLike, source_column: str = "", target_column: str = "", *,
                 tsv_quoting: str = "none") -> tuple[str, str]:
    """The (source, target) column names of a pair file: those given, an empty one taken from the header."""
    path = Path(path)
    if source_column and target_column:
        if source_column == target_column:
            raise UserError(f"{path}: the source and the target are both column {source_column!r} "
                            "(expected two different columns)")
        return source_column, target_column
    path, ext, text = open_text(path, FORMATS, "sentence pairs")
    first = _first_row(path, ext, text, tsv_quoting)
    if first is None:  # an empty file, bad JSON or quoting: read_table says what is wrong
        return source_column or "source", target_column or "target"
    line, names = first
    if len(names) < 2:
        what = "key in the first object" if ext == ".jsonl" else "column in the header"
        other = {".tsv": (",", "comma", ".csv"), ".csv": ("\t", "tab", ".tsv")}.get(ext)
        hint = f"; is it {other[1]}-separated? name it {other[2]}" if other and names and other[0] in names[0] else ""
        raise UserError(f"{path}:{line}: one {what} ({', '.join(map(repr, names)) or 'none'}), expected two: "
                        f"a source and a target, e.g. zh<TAB>en{hint}")
    source = source_column or next((n for n in names if n != target_column), names[0])
    target = target_column or next((n for n in names if n != source), names[0])
    if source == target:
        raise UserError(f"{path}:{line}: the source and the target would both be column {source!r} "
                        f"(the columns are: {', '.join(map(repr, names))}); name both columns")
    return source, target


def _side(row: Row, column: str, side: str) -> str:
    value = row[column]
    if isinstance(value, str) and not value.strip():
        raise row.error(f"empty {side} (column {column!r})")
    return row.text(column).strip()


def read_pairs(path: str | os.PathLike, source_column: str = "", target_column: str = "", *,
               tsv_quoting: str = "none") -> Pairs:
    """Every pair of a ``.tsv``, ``.csv`` or ``.jsonl`` file, in file order (see the module docstring)."""
    src, tgt = pair_columns(path, source_column, target_column, tsv_quoting=tsv_quoting)
    sources, targets, lines = [], [], []
    for row in read_table(path, [src, tgt], formats=FORMATS, tsv_quoting=tsv_quoting, of="sentence pairs"):
        sources.append(_side(row, src, "source"))
        targets.append(_side(row, tgt, "target"))
        lines.append(row.line)
    return Pairs(sources, targets, str(path), lines)


def load_pairs(spec: str, split: str = "train", source_column: str = "", target_column: str = "",
               tsv_quoting: str = "none") -> Pairs:
    """A split of a registered pair set (``"train"``, ``"val"`` or ``"test"``), or every pair of a file.

    ``split`` is ignored for a file (split it with :func:`split_pairs`). Columns may be given for a
    registered set too (``source_column="en"`` reverses ``hsk-zh-en``); its files are plain ``.tsv``.
    """
    if not spec.strip():  # Path("") is the current folder
        raise UserError(f"translate.data {spec!r}: expected a sentence-pair set name or a {', '.join(FORMATS)} file")
    if datasets.is_registered(spec):
        content = datasets.REGISTRY[spec].content
        if content != "pairs":
            raise UserError(f"data set {spec!r} is not a sentence-pair set (it is a {content} set; "
                            f"pair sets: {', '.join(datasets.dataset_names('pairs'))})")
        if split not in PAIR_SPLITS:
            raise UserError(f"split {split!r} of {spec!r}: expected one of {', '.join(PAIR_SPLITS)}")
        return read_pairs(datasets.get(spec) / f"{split}.tsv", source_column, target_column)
    path = Path(spec).expanduser()
    if not path.exists() and not (os.sep in spec or "/" in spec or path.suffix.lower() in FORMATS):
        raise UserError(f"unknown data set {spec!r}: expected one of {', '.join(datasets.dataset_names('pairs'))} "
                        f"or a path to a {', '.join(FORMATS)} file")
    return read_pairs(path, source_column, target_column, tsv_quoting=tsv_quoting)


# ------------------------------------------------------------------------- splits, filters
def split_pairs(pairs: Pairs, val_fraction: float, test_fraction: float = 0.0) -> dict[str, Pairs]:
    """``{"train", "val"}`` (and ``"test"`` when ``test_fraction`` > 0) parts of ``pairs``.

    The unique sources are ordered by their sha1 and cut at the fractions
    (:func:`lmforge.data.corpora.split_by_hash`, as the registered sets are split), so a source's
    copies and translations all land in one part, and the parts are the same on every machine
    whatever the order of the file. Each part keeps the file order and ``source`` (its errors still
    name the file and line). A part of a tiny file may come out empty.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise UserError(f"val_fraction {val_fraction} and test_fraction {test_fraction}: expected fractions >= 0 "
                        "that leave some pairs for training (their sum under 1)")
    fractions = (1 - val_fraction - test_fraction, val_fraction, test_fraction)
    part_of: dict[str, int] = {}
    for k, part in enumerate(split_by_hash(list(dict.fromkeys(pairs.sources)), fractions)):
        part_of.update((s, k) for s in part)
    names = PAIR_SPLITS if test_fraction > 0 else PAIR_SPLITS[:2]
    return {name: pairs.subset(i for i, s in enumerate(pairs.sources) if part_of[s] == k)
            for k, name in enumerate(names)}


def filter_pairs(pairs: Pairs, max_tokens: int, ratio: float, count: Callable[[str], int],
                 count_target: Callable[[str], int] | None = None) -> tuple[Pairs, int]:
    """(the pairs kept, the number dropped), as Moses' clean-corpus-n and fairseq's filters do.

    ``max_tokens``: drop a pair with either side over this many tokens; 0 = off. ``ratio``: drop a
    pair whose longer side has more than ``ratio`` times the tokens of the shorter side (a misaligned
    or truncated pair); 0 = off. Tokens are ``count(source)`` and ``count_target(target)`` (``count``
    for both sides without it: one joint tokenizer).
    """
    if max_tokens < 0:
        raise UserError(f"filter max_tokens {max_tokens}: expected a number of tokens >= 0 (0 = off)")
    if ratio != 0 and ratio < 1:
        raise UserError(f"filter ratio {ratio}: expected 0 (off) or a ratio >= 1 (e.g. 9, as Moses' clean-corpus)")
    count_target = count_target or count
    keep = []
    for i, (s, t) in enumerate(zip(pairs.sources, pairs.targets)):
        ns, nt = count(s), count_target(t)
        if max_tokens and max(ns, nt) > max_tokens:
            continue
        if ratio and max(ns, nt) / max(min(ns, nt), 1) > ratio:
            continue
        keep.append(i)
    return pairs.subset(keep), len(pairs) - len(keep)


def check_lengths(pairs: Pairs, max_source: int, max_target: int, count: Callable[[str], int],
                  count_target: Callable[[str], int] | str | None = None, too_long: str | None = None, *,
                  limit: str = "model.block_size", option: str = "translate.too_long") -> int:
    """The number of pairs with a side over its limit (``max_source`` / ``max_target`` tokens; 0 = none).

    Tokens are ``count(source)`` and ``count_target(target)`` (``count`` for both without it), so
    both ``check_lengths(p, S, T, count, "refuse")`` and ``check_lengths(p, S, T, count_src, count_tgt, "refuse")``
    work. ``too_long="refuse"``: the first such pair is an error, ``file:line: source has 130 tokens, the
    model's limit is 128 (model.block_size) ...``; ``"truncate"``: they are counted (the caller warns
    and truncates). ``limit`` and ``option`` name the settings in the message.
    """
    if isinstance(count_target, str) and too_long is None:  # check_lengths(pairs, S, T, count, too_long)
        count_target, too_long = None, count_target
    if too_long not in TOO_LONG or isinstance(count_target, str):
        raise UserError(f"too_long: expected one of {', '.join(TOO_LONG)}, got {too_long!r}")
    counts = (count, count_target or count)
    over = 0
    for i, (s, t) in enumerate(zip(pairs.sources, pairs.targets)):
        for side, text, most, n_of in (("source", s, max_source, counts[0]), ("target", t, max_target, counts[1])):
            n = n_of(text) if most else 0
            if n > most:
                if too_long == "refuse":
                    raise UserError(f"{pairs.where(i)}: {side} has {n} tokens, the model's limit is {most} ({limit}); "
                                    f"shorten or drop the pair, or set {option}=truncate")
                over += 1
                break
    return over
