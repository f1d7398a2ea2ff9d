"""Text to pretrain on: a registered set's splits, a ``.txt`` file, a folder of them, or several of these
joined by commas, as (train, val) text. A labelled set gives its texts without labels."""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.data.corpora import is_val_unit
from lmforge.data.registry import REGISTRY, dataset_names, get
from lmforge.errors import UserError


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (expected a plain .txt file)") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_local(path: Path) -> str:
    if path.is_file():
        text = _read_text_file(path)
        if not text.strip():
            raise UserError(f"{path}: the file is empty (expected some text)")
        return text
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise UserError(f"{path}: the folder holds no .txt files (expected text files ending in .txt)")
    texts = [_read_text_file(f) for f in files]
    texts = [t if t.endswith("\n") else t + "\n" for t in texts if t.strip()]
    if not texts:
        raise UserError(f"{path}: every .txt file in the folder is empty (expected some text)")
    return "".join(texts)


def split_text(text: str, val_fraction: float = 0.05) -> tuple[str, str]:
    """(train, val) of a local text by the line-hash rule (``val_fraction`` of the lines, by hash);
    small texts fall back to the tail.

    A blank line follows the split of the line before it, so paragraphs stay separated in both
    splits. If the hash rule leaves either side empty (a tiny file), the last ``val_fraction`` of
    the lines (at least one) is held out instead; a single line is cut by characters:

    >>> split_text("abcdefghijklmnopqrst", 0.1)
    ('abcdefghijklmnopqr', 'st')
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [l + "\n" for l in lines]
    if text and not text.endswith("\n"):
        lines[-1] = lines[-1][:-1]
    parts: dict[bool, list[str]] = {False: [], True: []}
    to_val = False
    for line in lines:
        if line.strip():
            to_val = is_val_unit(line.rstrip("\n"), val_fraction)
        parts[to_val].append(line)
    if parts[False] and parts[True]:
        return "".join(parts[False]), "".join(parts[True])
    if len(lines) > 1:
        k = max(1, round(len(lines) * val_fraction))
        return "".join(lines[:-k]), "".join(lines[-k:])
    if len(text) < 2:
        raise UserError(f"too little text to split into train and validation: {text!r}")
    k = max(1, round(len(text) * val_fraction))
    return text[:-k], text[-k:]


def load_text(spec: str, val_fraction: float = 0.05) -> tuple[str, str]:
    """(train_text, val_text) of a registered set name, a ``.txt`` file, a folder of them, or
    several of these joined by commas (``peoples-daily,chn-reviews``), concatenated in that order.

    A folder is read recursively, files in sorted path order. Registered sets keep their fixed
    split; ``val_fraction`` applies to local text. A labelled set contributes its texts without
    labels, one per line: train texts to train, val texts to val, its test split never (so
    domain-adaptive pretraining on a task's own texts cannot see the texts it is scored on).
    """
    if not spec.strip():  # Path("") is the current folder: never read it by accident
        raise UserError(f"data.path {spec!r}: expected a data set name, a .txt file or a folder of them")
    if "," in spec and not Path(spec).expanduser().exists():
        parts = [s.strip() for s in spec.split(",")]
        if not all(parts):
            raise UserError(f"data.path {spec!r}: an empty name between commas (expected NAME|FILE|FOLDER[,NAME|FILE|FOLDER...])")
        pairs = [load_text(s, val_fraction) for s in parts]
        return _join([t for t, _ in pairs]), _join([v for _, v in pairs])
    if spec in REGISTRY:
        e = REGISTRY[spec]
        if e.content == "labelled":
            from lmforge.data.labelled import load_labelled

            return tuple("".join(t + "\n" for t in load_labelled(spec, split).texts) for split in ("train", "val"))
        if e.content != "text":
            raise UserError(f"data set {spec!r} is not a text corpus (it is a {e.content} set; "
                            f"text corpora: {', '.join(dataset_names('text') + dataset_names('labelled'))})")
        d = get(spec)
        if not (d / "train.txt").exists():
            raise UserError(f"data set {spec!r} is not a text corpus (it has no train.txt)")
        return (d / "train.txt").read_text(encoding="utf-8"), (d / "val.txt").read_text(encoding="utf-8")
    path = Path(spec).expanduser()
    if not path.exists():
        if os.sep in spec or "/" in spec or spec.endswith(".txt"):
            raise UserError(f"{spec}: no such file or folder (expected a .txt file or a folder of them)")
        raise UserError(
            f"unknown data set {spec!r}: expected one of {', '.join(dataset_names('text') + dataset_names('labelled'))} "
            "or a path to a .txt file or folder"
        )
    return split_text(_read_local(path), val_fraction)


def _join(texts: list[str]) -> str:
    """Texts one after another, each ending in a newline so no line runs into the next source."""
    return "".join(t if not t or t.endswith("\n") else t + "\n" for t in texts)
