"""Tabular files: one reader for ``.csv``, ``.tsv``, ``.jsonl`` and ``.txt``, with ``file:line`` errors.

Labelled text (:mod:`lmforge.data.labelled`), ``lmforge predict --input`` and any later table of
columns (sentence pairs: a source and a target) read their files here. A file is UTF-8 (a BOM is
fine; a NUL byte or bytes that are not UTF-8 stop the read), told apart by its extension:

- ``.tsv``: a header row naming the columns, then one row a line, fields separated by tabs, as
  the IANA ``text/tab-separated-values`` definition has it. **No quoting**: a ``"`` is a character
  like any other, so a review that begins with a quote is read as written. A field cannot hold a
  tab or a line break; a line with the wrong number of fields is the file's error
  (``reviews.tsv:7: expected 2 tab-separated fields (the header has text, label), got 3``).
  ``tsv_quoting="csv"`` reads a ``.tsv`` the CSV way instead (next item) with tabs for commas:
  for files written by Python's ``csv`` module or pandas with quoting on.
- ``.csv``: a header row, then one row a record, standard CSV quoting (Python's :mod:`csv`): a
  field holding a comma, a double quote or a line break is wrapped in double quotes, with its
  quotes doubled (``"He said ""hi"", then left"``), so a field may span several lines.
- ``.jsonl``: one JSON object a line; the columns are its keys (other keys are ignored) and a
  value may be any JSON value (:meth:`Row.text` checks for a string).
- ``.txt`` (only where ``formats`` allows it, for one column): one value a line, as written.

Blank lines are skipped (in ``.txt`` and ``.jsonl`` also lines of spaces). Columns of the header
other than ``columns`` are read past. Errors are one-line :class:`UserError` messages that name the file
and the line: ``reviews.csv:1: no column 'text' in the header (the columns are: 'review', 'label')``.

>>> import pathlib, tempfile
>>> with tempfile.TemporaryDirectory() as folder:
...     f = pathlib.Path(folder, "pairs.tsv")
...     _ = f.write_text('source\\ttarget\\n"Hi," she said.\\t« Salut », dit-elle.\\n\\nGood night\\tBonne nuit\\n', encoding="utf-8")
...     [(row.line, row.text("source"), row.text("target")) for row in read_table(f, ["source", "target"])]
[(2, '"Hi," she said.', '« Salut », dit-elle.'), (4, 'Good night', 'Bonne nuit')]
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.config.fields import check_text
from lmforge.errors import UserError

TABLE_FORMATS = (".csv", ".tsv", ".jsonl")
TSV_QUOTINGS = ("none", "csv")  # tsv_quoting: IANA plain tab-separated lines | the csv module's quoting


@dataclass(frozen=True, slots=True)
class Row:
    """One row of a table: the values of the requested columns, and where the row began."""

    path: Path
    line: int  # 1-based line of the file on which the row begins
    values: dict  # column -> value: a str (.csv / .tsv / .txt) or any JSON value (.jsonl)

    def __getitem__(self, column: str):
        return self.values[column]

    @property
    def where(self) -> str:
        """``file:line``, the start of this row's error messages."""
        return f"{self.path}:{self.line}"

    def error(self, message: str) -> UserError:
        """A :class:`UserError` ``file:line: message`` about this row (raise it)."""
        return UserError(f"{self.where}: {message}")

    def text(self, column: str) -> str:
        """The value of ``column``, checked to be a string of text that is not only white space."""
        value = self.values[column]
        if not isinstance(value, str):
            raise self.error(f"{column!r} is {json.dumps(value)}, expected a string")
        if not value.strip():
            raise self.error(f"empty text in {column!r} (expected some text)")
        check_text(f"{self.where}: {column!r}", value)  # a JSON "\\ud800" escape is a lone surrogate, not text
        return value


def read_table(path: str | os.PathLike, columns: Sequence[str], *, formats: Sequence[str] = TABLE_FORMATS,
               tsv_quoting: str = "none", of: str = "") -> Iterator[Row]:
    """The rows of a table file, in file order, each with the values of ``columns`` (see the module docstring).

    ``formats``: the extensions accepted (``.txt`` too for a one-column read); ``tsv_quoting``:
    ``"none"`` (plain tab-separated lines, the default) or ``"csv"`` (CSV-style quoting in a
    ``.tsv``); ``of``: what the file holds, for the message about a missing file (``"texts"``).

    The file is opened and decoded at once (an unsupported extension, a missing file or bytes
    that are not UTF-8 raise here); the rows are checked as they are read, so a loop over them
    stops at the file's first error, whether in the layout (a missing column, a field too many)
    or in a value the caller checks (:meth:`Row.text`). A file with no rows is an error too.
    """
    columns = list(columns)
    if not columns or len(set(columns)) != len(columns):
        raise ValueError(f"columns: expected distinct column names, got {columns!r}")
    if tsv_quoting not in TSV_QUOTINGS:
        raise UserError(f"tsv_quoting: expected one of {', '.join(TSV_QUOTINGS)}, got {tsv_quoting!r}")
    path, ext, text = open_text(path, tuple(formats), of)
    if ext == ".txt":
        if len(columns) != 1:
            raise ValueError(f"{path}: a .txt file holds one column, not {len(columns)} ({', '.join(columns)})")
        return _read_txt(path, text, columns[0])
    if ext == ".jsonl":
        return _read_jsonl(path, text, columns)
    if ext == ".tsv" and tsv_quoting == "none":
        return _read_tsv(path, text, columns)
    return _read_quoted(path, text, "\t" if ext == ".tsv" else ",", columns)


# ----------------------------------------------------------------------------------- opening
def decode(path: Path) -> str:
    """The UTF-8 text of ``path`` (a BOM dropped); a NUL byte or bytes that are not UTF-8 are a ``file:line`` error."""
    data = path.read_bytes()
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise UserError(f"{path}:{line}: NUL byte: not UTF-8 text (UTF-16? save the file as UTF-8)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8") from None


def open_text(path: str | os.PathLike, formats: tuple[str, ...], of: str = "") -> tuple[Path, str, str]:
    """(path, lower-case extension, decoded text) of a file whose extension is one of ``formats``."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in formats:
        raise UserError(f"{path}: unsupported extension {ext or '(none)'!r} (expected {', '.join(formats)})")
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a {', '.join(formats)} file{' of ' + of if of else ''})")
    return path, ext, decode(path)


# ----------------------------------------------------------------------------------- formats
def _and(columns: list[str]) -> str:
    names = [repr(c) for c in columns]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _header(path: Path, line: int, fields: list[str], columns: list[str], delimiter: str) -> tuple[list[str], list[int]]:
    """The stripped header and the index of each of ``columns`` in it (a missing column is an error)."""
    header = [h.strip() for h in fields]
    missing = [c for c in columns if c not in header]
    if missing:
        other, other_sep, other_ext = (",", "comma", ".csv") if delimiter == "\t" else ("\t", "tab", ".tsv")
        hint = f"; is it {other_sep}-separated? name it {other_ext}" if len(header) == 1 and other in fields[0] else ""
        raise UserError(f"{path}:{line}: no column {missing[0]!r} in the header "
                        f"(the columns are: {', '.join(map(repr, header))}{hint})")
    return header, [header.index(c) for c in columns]


def _no_rows(path: Path, header: list[str] | None, columns: list[str], next_line: int) -> UserError:
    if header is None:
        return UserError(f"{path}:1: the file is empty (expected a header row with {_and(columns)})")
    return UserError(f"{path}:{next_line}: no examples under the header (expected one row per example)")


def _read_tsv(path: Path, text: str, columns: list[str]) -> Iterator[Row]:
    """IANA text/tab-separated-values: one record a line, fields split at every tab, no quoting."""
    header = index = None
    line = rows = 0
    for line, raw in enumerate(io.StringIO(text, newline=""), 1):  # lines end at \n, \r\n or \r, as for the csv module
        raw = raw.removesuffix("\n").removesuffix("\r")
        if not raw:  # a blank line
            continue
        fields = raw.split("\t")
        if header is None:
            header, index = _header(path, line, fields, columns, "\t")
            continue
        if len(fields) != len(header):
            raise UserError(f"{path}:{line}: expected {len(header)} tab-separated fields (the header has "
                            f"{', '.join(header)}), got {len(fields)}; a .tsv field cannot hold a tab or a line break "
                            "(remove it, or quote the fields the CSV way and read the file with tsv_quoting=csv)")
        rows += 1
        yield Row(path, line, {c: fields[i] for c, i in zip(columns, index)})
    if not rows:
        raise _no_rows(path, header, columns, line + 1)


def _read_quoted(path: Path, text: str, delimiter: str, columns: list[str]) -> Iterator[Row]:
    """CSV (or TSV with ``tsv_quoting="csv"``) read by the csv module: a quoted field may hold anything."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    kind, sep = ("TSV", "tab") if delimiter == "\t" else ("CSV", "comma")
    header = index = None
    start, rows = 1, 0
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1  # the line this record began on; the next one's
            if not fields:  # a blank line
                continue
            if header is None:
                header, index = _header(path, line, fields, columns, delimiter)
                continue
            if len(fields) != len(header):
                raise UserError(f"{path}:{line}: {len(fields)} field{'s' * (len(fields) != 1)}, expected {len(header)} "
                                f"(the header has {', '.join(header)}); quote a field that holds a {sep}")
            rows += 1
            yield Row(path, line, {c: fields[i] for c, i in zip(columns, index)})
    except csv.Error as e:
        if "field larger than field limit" in str(e):  # the csv module's 131,072 characters
            raise UserError(f"{path}:{start}: a field longer than {csv.field_size_limit():,} characters "
                            "(an unclosed quote? else split the text)") from None
        raise UserError(f"{path}:{start}: bad {kind} quoting: {e} "
                        '(a quoted field ends with " and a quote inside it is doubled: "")') from None
    if not rows:
        raise _no_rows(path, header, columns, start)


def _read_jsonl(path: Path, text: str, columns: list[str]) -> Iterator[Row]:
    rows = 0
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{line}: not valid JSON ({e.msg}, column {e.colno}); expected one object a line") from None
        if not isinstance(obj, dict):
            example = ", ".join(f'"{c}": "..."' for c in columns)
            raise UserError(f"{path}:{line}: a JSON {type(obj).__name__}, expected an object like {{{example}}}")
        for key in columns:
            if key not in obj:
                raise UserError(f"{path}:{line}: no key {key!r} (the keys are: {', '.join(map(repr, obj)) or 'none'})")
        rows += 1
        yield Row(path, line, {c: obj[c] for c in columns})
    if not rows:
        raise UserError(f"{path}:1: the file is empty (expected one JSON object a line)")


def _read_txt(path: Path, text: str, column: str) -> Iterator[Row]:
    rows = 0
    for line, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            rows += 1
            yield Row(path, line, {column: raw})
    if not rows:
        raise UserError(f"{path}:1: the file is empty (expected one text a line)")
