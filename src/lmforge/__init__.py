"""lmforge: the whole life of a Transformer model on modest hardware."""

__version__ = "0.1.0"

from lmforge.errors import UserError  # noqa: E402,F401
