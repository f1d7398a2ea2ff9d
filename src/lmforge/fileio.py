"""Atomic file writes: a temp file in the same folder, fsync, then ``os.replace`` over the target.

A reader (or a run resumed after SIGKILL) sees either the old file or the new one, never a torn one.
A write that fails (a full disk, a read-only file system, a folder where a file should be) removes its
temp file, leaves the old file as it was and raises :class:`WriteError`: one line naming the path.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path

from lmforge.errors import UserError

# the temp files of atomic_write_bytes: ".<target name>.<8 random characters>.tmp" (tempfile.mkstemp)
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")


class WriteError(UserError):
    """A file could not be written; ``exit_code`` is 1 for a full disk (the input was fine), else 2."""

    def __init__(self, path: str | Path, error: OSError) -> None:
        self.path, self.errno, self.error = Path(path), error.errno, error
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        self.exit_code = 1 if full else 2
        reason = "no space left on the device" if full else (error.strerror or str(error)).lower()
        where = f"{error.filename}" if error.filename and Path(str(error.filename)) != self.path else ""
        kept = "; nothing already saved was lost (the previous file, if any, is as it was)"
        super().__init__(f"{self.path}: cannot write ({reason}{': ' + where if where else ''}){kept}")


def check_writable_target(path: str | Path) -> Path:
    """``path`` as a file to (re)write: not a folder, not a device / pipe / socket (a rename would replace
    the node itself). A symlink is followed, so the file it points to is what gets replaced."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return path
    except OSError as e:
        raise WriteError(path, e) from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a folder; expected the path of a file to write")
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: not a regular file (a device, pipe or socket); expected the path of a file to write")
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + fsync + rename)."""
    path = check_writable_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise WriteError(path, e) from None
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp makes 0600; a run dir's files get the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise WriteError(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


_UMASK: list[int] = []


def _mode_for(path: Path) -> int:
    """The mode of the file being replaced, or the one a plain ``open(path, "w")`` would give (0666 & ~umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        if not _UMASK:  # read once: os.umask can only be read by setting it
            _UMASK.append(os.umask(0o022))
            os.umask(_UMASK[0])
        return 0o666 & ~_UMASK[0]


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def temp_dir_beside(out: str | Path) -> Path:
    """A new temporary folder next to ``out`` (its parents made), to fill and then rename onto ``out`` in one
    step; a place where no folder can be made is a :class:`WriteError` naming ``out``."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise WriteError(out, e) from None


def remove_stale_temps(folder: str | Path) -> list[str]:
    """Delete the temp files that killed atomic writes left in ``folder`` (not below it) -> their names."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if TEMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return sorted(removed)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
