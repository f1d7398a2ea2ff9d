"""Labelled text: a text and a class label per example, from a CSV, TSV or JSONL file or a registered set.

Files (UTF-8, a BOM is fine), told apart by their extension:

- ``.csv`` / ``.tsv``: a header row naming the columns, then one example a row. Quoting is the CSV
  way: a field holding a comma (tab), a double quote or a line break is wrapped in double quotes,
  with its quotes doubled (``"He said ""hi"", then left"``), so a text may span several lines.
- ``.jsonl``: one JSON object a line, ``{"text": "...", "label": "positive"}``; a label may be a
  string or an integer (``1`` and ``"1"`` are the same label).

Blank lines are skipped. Anything else wrong stops the read with a one-line :class:`UserError`
naming the file and line: ``reviews.csv:7: 3 fields, expected 2 (the header has text, label)``.

Labels are names; ``labels`` holds their indices in ``label_names``. Without ``label_names`` they
are the file's labels, sorted (numerically when all are integers, so ``"2"`` comes before ``"10"``).
To evaluate a model, pass its own ``label_names``: the indices then mean what they meant in
training, and a label the model never saw is an error rather than a silent wrong index.

Registered sets (``chn-reviews``, ``movie-snippets``) come deduplicated and split 80/10/10
(see :mod:`lmforge.data.registry`); :func:`stratified_split` splits a single file of your own the same way.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lmforge.config.fields import check_text
from lmforge.data import registry as datasets
from lmforge.data.corpora import LABELLED_SPLITS, split_by_hash
from lmforge.errors import UserError

FORMATS = (".csv", ".tsv", ".jsonl")


@dataclass
class LabelledData:
    texts: list[str]
    labels: list[int]  # indices into label_names
    label_names: list[str]
    source: str  # the file it was read from

    def __len__(self) -> int:
        return len(self.texts)


def sort_labels(labels) -> list[str]:
    """Unique labels, sorted: numerically if every one is an integer, else as strings.

    >>> sort_labels(["10", "2", "1", "2"]), sort_labels(["pos", "neg", "10"])
    (['1', '2', '10'], ['10', 'neg', 'pos'])
    """
    unique = set(labels)
    if all(re.fullmatch(r"-?\d+", l) for l in unique):
        return sorted(unique, key=lambda l: (int(l), l))
    return sorted(unique)


# ----------------------------------------------------------------------------------- reading
def _decode(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise UserError(f"{path}:{line}: NUL byte: not UTF-8 text (UTF-16? save the file as UTF-8)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8") from None


def _open(path: str | os.PathLike, formats: tuple[str, ...], of: str = "") -> tuple[Path, str, str]:
    """(path, lower-case extension, decoded text) of a file whose extension is one of ``formats``."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in formats:
        raise UserError(f"{path}: unsupported extension {ext or '(none)'!r} (expected {', '.join(formats)})")
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a {', '.join(formats)} file{' of ' + of if of else ''})")
    return path, ext, _decode(path)


def _check_example(path: Path, line: int, text, label, text_column: str, label_column: str | None) -> tuple[str, str | None]:
    """``(text, label)`` checked and the label normalised to a stripped string (``label_column`` None: texts only)."""
    if not isinstance(text, str):
        raise UserError(f"{path}:{line}: {text_column!r} is {json.dumps(text)}, expected a string")
    if not text.strip():
        raise UserError(f"{path}:{line}: empty text in {text_column!r} (expected some text)")
    check_text(f"{path}:{line}: {text_column!r}", text)  # a JSON "\\ud800" escape is a lone surrogate, not text
    if label_column is None:
        return text, None
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise UserError(f"{path}:{line}: {label_column!r} is {json.dumps(label)}, expected a string or an integer")
    label = str(label).strip()
    if not label:
        raise UserError(f"{path}:{line}: empty label in {label_column!r} (expected a class name)")
    check_text(f"{path}:{line}: {label_column!r}", label)
    return text, label


def _read_delimited(path: Path, text: str, delimiter: str, text_column: str,
                    label_column: str | None) -> list[tuple[int, str, str | None]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    kind, sep = ("TSV", "tab") if delimiter == "\t" else ("CSV", "comma")
    rows, header, start = [], None, 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1  # the line this record began on; the next one's
            if not row:  # a blank line
                continue
            if header is None:
                header = [h.strip() for h in row]
                missing = [c for c in (text_column, label_column) if c is not None and c not in header]
                if missing:
                    other, other_sep, other_ext = (",", "comma", ".csv") if delimiter == "\t" else ("\t", "tab", ".tsv")
                    hint = f"; is it {other_sep}-separated? name it {other_ext}" if len(header) == 1 and other in row[0] else ""
                    raise UserError(f"{path}:{line}: no column {missing[0]!r} in the header "
                                    f"(the columns are: {', '.join(map(repr, header))}{hint})")
                i_text = header.index(text_column)
                i_label = header.index(label_column) if label_column is not None else None
                continue
            if len(row) != len(header):
                raise UserError(f"{path}:{line}: {len(row)} field{'s' * (len(row) != 1)}, expected {len(header)} "
                                f"(the header has {', '.join(header)}); quote a field that holds a {sep}")
            label = row[i_label] if i_label is not None else None
            rows.append((line, *_check_example(path, line, row[i_text], label, text_column, label_column)))
    except csv.Error as e:
        if "field larger than field limit" in str(e):  # the csv module's 131,072 characters
            raise UserError(f"{path}:{start}: a field longer than {csv.field_size_limit():,} characters "
                            "(an unclosed quote? else split the text)") from None
        raise UserError(f"{path}:{start}: bad {kind} quoting: {e} "
                        '(a quoted field ends with " and a quote inside it is doubled: "")') from None
    if header is None:
        wanted = f"{text_column!r}" + (f" and {label_column!r}" if label_column is not None else "")
        raise UserError(f"{path}:1: the file is empty (expected a header row with {wanted})")
    if not rows:
        raise UserError(f"{path}:{start}: no examples under the header (expected one row per example)")
    return rows


def _read_jsonl(path: Path, text: str, text_column: str, label_column: str | None) -> list[tuple[int, str, str | None]]:
    rows = []
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{line}: not valid JSON ({e.msg}, column {e.colno}); expected one object a line") from None
        if not isinstance(obj, dict):
            example = f'"{text_column}": "..."' + (f', "{label_column}": "..."' if label_column is not None else "")
            raise UserError(f"{path}:{line}: a JSON {type(obj).__name__}, expected an object like {{{example}}}")
        for key in (text_column, label_column):
            if key is not None and key not in obj:
                raise UserError(f"{path}:{line}: no key {key!r} (the keys are: {', '.join(map(repr, obj)) or 'none'})")
        label = obj[label_column] if label_column is not None else None
        rows.append((line, *_check_example(path, line, obj[text_column], label, text_column, label_column)))
    if not rows:
        raise UserError(f"{path}:1: the file is empty (expected one JSON object a line)")
    return rows


def read_labelled(path: str | os.PathLike, text_column: str = "text", label_column: str = "label",
                  label_names: list[str] | None = None) -> LabelledData:
    """Read a ``.csv``, ``.tsv`` or ``.jsonl`` file of labelled text (see the module docstring).

    ``label_names``: the labels a model was trained on; every label of the file must be one of them.
    """
    path, ext, text = _open(path, FORMATS)
    if ext == ".jsonl":
        rows = _read_jsonl(path, text, text_column, label_column)
    else:
        rows = _read_delimited(path, text, "," if ext == ".csv" else "\t", text_column, label_column)
    if label_names is None:
        names = sort_labels(label for _, _, label in rows)
    else:
        names = [str(n) for n in label_names]
        known = set(names)
        for line, _, label in rows:
            if label not in known:
                raise UserError(f"{path}:{line}: label {label!r} is not one the model knows ({', '.join(names)}); "
                                "a label seen only here cannot be predicted")
    index = {n: i for i, n in enumerate(names)}
    return LabelledData([t for _, t, _ in rows], [index[l] for _, _, l in rows], names, str(path))


def read_texts(path: str | os.PathLike, text_column: str = "text") -> list[str]:
    """Texts without labels (``lmforge predict --input``): a ``.txt`` file, one text a line, or the
    ``text_column`` of a ``.csv`` / ``.tsv`` / ``.jsonl`` file, read and checked as :func:`read_labelled`
    reads its files (any label column is ignored)."""
    path, ext, text = _open(path, (".txt", *FORMATS), "texts")
    if ext == ".txt":
        texts = [line for line in text.splitlines() if line.strip()]
        if not texts:
            raise UserError(f"{path}:1: the file is empty (expected one text a line)")
        return texts
    if ext == ".jsonl":
        rows = _read_jsonl(path, text, text_column, None)
    else:
        rows = _read_delimited(path, text, "," if ext == ".csv" else "\t", text_column, None)
    return [t for _, t, _ in rows]


def load_labelled(spec: str, split: str = "train", text_column: str = "text", label_column: str = "label",
                  label_names: list[str] | None = None) -> LabelledData:
    """A split of a registered labelled set (``"train"``, ``"val"`` or ``"test"``), or a whole file.

    A registered set's ``label_names`` are those of the whole set (the same for every split).
    """
    if not spec.strip():  # Path("") is the current folder
        raise UserError(f"finetune.data {spec!r}: expected a labelled data set name or a {', '.join(FORMATS)} file")
    if datasets.is_registered(spec):
        content = datasets.REGISTRY[spec].content
        if content != "labelled":
            raise UserError(f"data set {spec!r} is not a labelled set (it is a {content} set; "
                            f"labelled sets: {', '.join(datasets.dataset_names('labelled'))})")
        if split not in LABELLED_SPLITS:
            raise UserError(f"split {split!r} of {spec!r}: expected one of {', '.join(LABELLED_SPLITS)}")
        folder = datasets.get(spec)
        if label_names is None:
            label_names = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["labels"]
        return read_labelled(folder / f"{split}.tsv", label_names=label_names)
    path = Path(spec).expanduser()
    if not path.exists() and not (os.sep in spec or "/" in spec or path.suffix.lower() in FORMATS):
        raise UserError(f"unknown data set {spec!r}: expected one of {', '.join(datasets.dataset_names('labelled'))} "
                        f"or a path to a {', '.join(FORMATS)} file")
    return read_labelled(path, text_column, label_column, label_names)


# -------------------------------------------------------------------------------- statistics
def class_counts(data: LabelledData) -> dict[str, int]:
    """Examples per label name, in ``label_names`` order (zeros included)."""
    counts = [0] * len(data.label_names)
    for i in data.labels:
        counts[i] += 1
    return dict(zip(data.label_names, counts))


def stratified_split(data: LabelledData, fractions: tuple[float, ...] = (0.8, 0.1, 0.1),
                     seed: int = 0) -> tuple[LabelledData, ...]:
    """``len(fractions)`` parts of ``data`` (train, val, test ...) with each class split by ``fractions``.

    Deterministic: within each class the unique texts are ordered by ``sha1(salt + text)`` and cut
    at the fractions (:func:`lmforge.data.corpora.split_by_hash`; the salt is ``""`` for seed 0, as for
    the registered sets, else ``"<seed>:"``), so the parts do not depend on the order of the rows.
    Copies of a text go to one part together, even under two labels (the text goes where its first
    class sends it), so no text is in two parts. Each part keeps the input order and ``label_names``.

    >>> d = LabelledData([f"t{i}" for i in range(20)], [0] * 10 + [1] * 10, ["neg", "pos"], "x.csv")
    >>> [class_counts(p) for p in stratified_split(d, (0.8, 0.2))]
    [{'neg': 8, 'pos': 8}, {'neg': 2, 'pos': 2}]
    """
    if not fractions or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"split fractions {tuple(fractions)}: expected numbers >= 0 that sum to 1, e.g. (0.8, 0.1, 0.1)")
    salt = "" if seed == 0 else f"{seed}:"
    part_of: dict[str, int] = {}
    for label in range(len(data.label_names)):
        texts = list(dict.fromkeys(t for t, l in zip(data.texts, data.labels) if l == label and t not in part_of))
        for k, part in enumerate(split_by_hash(texts, tuple(fractions), salt)):
            part_of.update((t, k) for t in part)
    parts = []
    for k in range(len(fractions)):
        idx = [i for i, t in enumerate(data.texts) if part_of[t] == k]
        parts.append(LabelledData([data.texts[i] for i in idx], [data.labels[i] for i in idx], list(data.label_names),
                                  f"{data.source} (part {k + 1} of {len(fractions)})"))
    return tuple(parts)
