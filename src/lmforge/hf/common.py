"""Shared by the Hugging Face key maps."""

from __future__ import annotations

from torch import Tensor

from lmforge.errors import UserError


def check_shape(key: str, t: Tensor, expected: tuple[int, ...], side: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise UserError(
            f"{side} weight {key!r}: shape {tuple(t.shape)} does not match {tuple(expected)} expected from the model config"
        )

