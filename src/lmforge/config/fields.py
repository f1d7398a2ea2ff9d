"""The building blocks of the config sections: a field with help text and the validation helpers."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from lmforge.errors import UserError


def F(default: Any, help: str) -> Any:  # noqa: A002 - 'help' reads best in the field list
    """A dataclass field with a one-line help text (shown by ``lmforge <verb> --help``)."""
    return field(default=default, metadata={"help": help})


def check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise UserError(f"{section}.{name}: expected one of {', '.join(map(str, choices))}, got {value!r}")


def check_positive(section: str, name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{section}.{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
