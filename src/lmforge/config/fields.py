"""The building blocks of the config sections: a field with help text and the validation helpers.

Every numeric field is checked where it is declared (its section's ``__post_init__``) with
:func:`check_int` / :func:`check_float`: finite and within its range, before any work, with messages
of one form: ``train.lr: expected a finite number > 0, got nan``. :func:`show` bounds what a message
echoes of a value (a YAML alias bomb is a list of a billion items: its repr is cut, not built)."""

from __future__ import annotations

import math
import numbers
import reprlib
from dataclasses import field
from typing import Any

from lmforge.errors import UserError

MAX_SHOWN = 200  # characters of a value an error message echoes at most
INT_MAX = 2**31 - 1  # sizes and counts: what torch takes as a dimension (and far beyond any real run)

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 3, 8, 8, 8, 8
_repr.maxstring = _repr.maxother = _repr.maxlong = MAX_SHOWN


def show(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)``, at most ``limit`` characters (cut with '...'); cheap for huge or deeply nested values.

    >>> "..." in show("x" * 1000), len(show("x" * 1000)) <= 200, len(show([[list(range(10**6))] * 10**3])) <= 200
    (True, True, True)
    >>> show(float("nan")), show(3)
    ('nan', '3')
    """
    text = _repr.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def F(default: Any, help: str) -> Any:  # noqa: A002 - 'help' reads best in the field list
    """A dataclass field with a one-line help text (shown by ``lmforge <verb> --help``)."""
    return field(default=default, metadata={"help": help})


def check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise UserError(f"{section}.{name}: expected one of {', '.join(map(str, choices))}, got {show(value)}")


def _bounds(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def check_int(where: str, value: Any, lo: int = 1, hi: int | None = INT_MAX) -> None:
    """``value`` is an int (not a bool) in ``[lo, hi]`` (``hi=None``: no upper bound), else a UserError
    ``where: expected an integer >= lo, got value`` (or ``in [lo, hi]``, when ``hi`` is a real limit)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    if not ok:
        beyond = hi is not None and isinstance(value, numbers.Integral) and value > hi
        what = f">= {lo}" if hi is None or (hi == INT_MAX and not beyond) else f"in [{lo}, {hi}]"
        raise UserError(f"{where}: expected an integer {what}, got {show(value)}")


def check_float(where: str, value: Any, lo: float = 0.0, hi: float | None = None, lo_open: bool = True,
                hi_open: bool = False, what: str = "") -> None:
    """``value`` is a finite number within ``lo`` .. ``hi`` (``*_open``: that end excluded; ``hi=None``: no
    upper bound), else a UserError ``where: expected a finite number > 0, got nan`` (``what``, e.g.
    ``"a probability"``, names a bounded quantity: ``expected a probability in [0, 1), got 1.5``)."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and (value > lo if lo_open else value >= lo)
          and (hi is None or (value < hi if hi_open else value <= hi)))
    if not ok:
        noun = what or ("a finite number" if hi is None else "a number")
        raise UserError(f"{where}: expected {noun} {_bounds(lo, hi, lo_open, hi_open)}, got {show(value)}")


def check_positive(section: str, name: str, value: float, allow_zero: bool = False) -> None:
    """A positive (``allow_zero``: non-negative) finite number, or for an int field an integer >= 1 (>= 0)."""
    where = f"{section}.{name}"
    if isinstance(value, int) and not isinstance(value, bool):
        check_int(where, value, 0 if allow_zero else 1)
    else:
        check_float(where, value, 0.0, lo_open=not allow_zero)


def check_text(where: str, text: str) -> None:
    """``text`` encodes as UTF-8, else ``where: not valid UTF-8 ...``. Bytes that are not UTF-8 in a command
    line reach Python as lone surrogates (U+DC80..U+DCFF, PEP 383): such a one names its byte.

    >>> check_text("--prompt", "\\udcff\\udcfe")
    Traceback (most recent call last):
    lmforge.errors.UserError: --prompt: not valid UTF-8 (byte 0xff at character 0); expected UTF-8 text
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        cp = ord(text[e.start])
        what = f"byte 0x{cp - 0xDC00:02x}" if 0xDC80 <= cp <= 0xDCFF else f"a lone surrogate U+{cp:04X}"
        raise UserError(f"{where}: not valid UTF-8 ({what} at character {e.start}); expected UTF-8 text") from None
