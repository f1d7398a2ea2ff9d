"""Labelled text: a text and a class label per example, from a CSV, TSV or JSONL file or a registered set.

Files are read by :func:`lmforge.data.tables.read_table` (UTF-8, a BOM is fine), told apart by
their extension:

- ``.tsv``: a header row naming the columns, then one example a line, fields separated by tabs
  and not quoted (IANA text/tab-separated-values): a ``"`` is part of the text, and a text cannot
  hold a tab or a line break. ``tsv_quoting="csv"`` (``finetune.tsv_quoting: csv``) reads a
  ``.tsv`` quoted the CSV way, as the ``.csv`` below.
- ``.csv``: a header row naming the columns, then one example a row. Quoting is the CSV way: a
  field holding a comma, a double quote or a line break is wrapped in double quotes, with its
  quotes doubled (``"He said ""hi"", then left"``), so a text may span several lines.
- ``.jsonl``: one JSON object a line, ``{"text": "...", "label": "positive"}``; a label may be a
  string or an integer (``1`` and ``"1"`` are the same label).

Blank lines are skipped. Anything else wrong stops the read with a one-line :class:`UserError`
naming the file and line: ``reviews.csv:7: 3 fields, expected 2 (the header has text, label)``.

Labels are names; ``labels`` holds their indices in ``label_names``. Without ``label_names`` they
are the file's labels, sorted (numerically when all are integers, so ``"2"`` comes before ``"10"``).
To evaluate a model, pass its own ``label_names``: the indices then mean what they meant in
training, and a label the model never saw is an error rather than a silent wrong index.

Registered sets (``chn-reviews``, ``movie-snippets``) come deduplicated and split 80/10/10
(see :mod:`lmforge.data.registry`); their ``.tsv`` files quote a text holding a ``"`` the CSV way
(:func:`lmforge.data.corpora.write_labelled_splits`) and are read so. :func:`stratified_split`
splits a single file of your own the same way.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lmforge.config.fields import check_text
from lmforge.data import registry as datasets
from lmforge.data.corpora import LABELLED_SPLITS, split_by_hash
from lmforge.data.tables import TABLE_FORMATS, Row, read_table
from lmforge.errors import UserError

FORMATS = TABLE_FORMATS


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
def _label(row: Row, column: str) -> str:
    """The label of ``row`` as a stripped string (``1`` and ``"1"`` are the same label)."""
    label = row[column]
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise row.error(f"{column!r} is {json.dumps(label)}, expected a string or an integer")
    label = str(label).strip()
    if not label:
        raise row.error(f"empty label in {column!r} (expected a class name)")
    check_text(f"{row.where}: {column!r}", label)
    return label


def read_labelled(path: str | os.PathLike, text_column: str = "text", label_column: str = "label",
                  label_names: list[str] | None = None, *, tsv_quoting: str = "none") -> LabelledData:
    """Read a ``.csv``, ``.tsv`` or ``.jsonl`` file of labelled text (see the module docstring).

    ``label_names``: the labels a model was trained on; every label of the file must be one of them.
    ``tsv_quoting``: ``"none"`` (a ``.tsv`` is plain tab-separated lines) or ``"csv"`` (its fields
    are quoted the CSV way); see :func:`lmforge.data.tables.read_table`.
    """
    rows = [(row.line, row.text(text_column), _label(row, label_column))
            for row in read_table(path, [text_column, label_column], formats=FORMATS, tsv_quoting=tsv_quoting)]
    path = Path(path)
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


def read_texts(path: str | os.PathLike, text_column: str = "text", *, tsv_quoting: str = "none") -> list[str]:
    """Texts without labels (``lmforge predict --input``): a ``.txt`` file, one text a line, or the
    ``text_column`` of a ``.csv`` / ``.tsv`` / ``.jsonl`` file, read and checked as :func:`read_labelled`
    reads its files (any label column is ignored)."""
    rows = read_table(path, [text_column], formats=(".txt", *FORMATS), tsv_quoting=tsv_quoting, of="texts")
    return [row.text(text_column) for row in rows]


def load_labelled(spec: str, split: str = "train", text_column: str = "text", label_column: str = "label",
                  label_names: list[str] | None = None, *, tsv_quoting: str = "none") -> LabelledData:
    """A split of a registered labelled set (``"train"``, ``"val"`` or ``"test"``), or a whole file.

    A registered set's ``label_names`` are those of the whole set (the same for every split); its
    files are read with CSV quoting, as they were written. ``tsv_quoting`` applies to a ``.tsv`` file
    of your own (:func:`read_labelled`).
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
        return read_labelled(folder / f"{split}.tsv", label_names=label_names, tsv_quoting="csv")
    path = Path(spec).expanduser()
    if not path.exists() and not (os.sep in spec or "/" in spec or path.suffix.lower() in FORMATS):
        raise UserError(f"unknown data set {spec!r}: expected one of {', '.join(datasets.dataset_names('labelled'))} "
                        f"or a path to a {', '.join(FORMATS)} file")
    return read_labelled(path, text_column, label_column, label_names, tsv_quoting=tsv_quoting)


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
