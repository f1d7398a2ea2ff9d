"""User-facing errors.

A ``UserError`` is something the user got wrong (a missing file, a bad config key, a run dir that
is not one). The CLI prints its message as one line on stderr and exits with code 2, with no
traceback. Messages name the file / line / field and say what was expected.
"""


class UserError(Exception):
    """What the user got wrong, shown as one line (``lmforge: error: <message>``), exit code 2."""
