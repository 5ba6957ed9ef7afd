"""Server-side paths (item add from a path, rebuilds): resolved and checked against the ingest roots when a request
names them, and again when a file is opened, since a rebuild opens its files later, in a background job.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from blat_gateway.audio import read_limited
from blat_gateway.errors import BadRequest, Forbidden, NotFound
from blat_gateway.inputs import check_text

# O_NOFOLLOW: the resolved path's last part must not have become a symlink since; O_NONBLOCK: a FIFO swapped in
# cannot hold the reader (regular files ignore it).
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _inside(real: Path, roots: Sequence[Path]) -> bool:
    return any(real == r or r in real.parents for r in roots)


def check_path(path: str, roots: Sequence[str], trusted: bool = False) -> Path:
    """The resolved path (symlinks followed), which must lie inside one of `roots` unless `trusted` (the operator's
    own paths); Forbidden outside them, NotFound when nothing is there."""
    real = Path(check_text(path, "path")).resolve()
    resolved = [Path(r).resolve() for r in roots]
    if not trusted and not _inside(real, resolved):
        raise Forbidden(
            f"{path} is outside the configured ingest roots"
            + ("" if resolved else " (none are configured: set ingest_roots)")
        )
    if not real.exists():
        raise NotFound(f"{path} does not exist")
    return real


def read_inside_roots(path: str | Path, roots: Sequence[str], max_bytes: int, trusted: bool = False) -> bytes:
    """The bytes of a regular file, checked as it is opened: the path is resolved again (a symlink swapped in since
    the request was checked leads where it leads now), and on Linux the file actually opened is checked too
    (/proc/self/fd), which closes the gap between resolving and opening."""
    real = check_path(str(path), roots, trusted)
    try:
        fd = os.open(real, OPEN_FLAGS)
    except OSError as e:
        raise BadRequest(f"{path} cannot be opened: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder, a FIFO, a device
            raise BadRequest(f"{path} is not a file")
        opened = Path(f"/proc/self/fd/{fd}")
        if (
            not trusted
            and opened.is_symlink()
            and not _inside(Path(os.readlink(opened)), [Path(r).resolve() for r in roots])
        ):
            raise Forbidden(f"{path} is outside the configured ingest roots (it changed while it was opened)")
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as f:
        return read_limited(f, max_bytes)
