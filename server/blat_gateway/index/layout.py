"""The store's directory layout, its atomic `CURRENT` pointer and its single-process lock.

root/
  LOCK                  flock'ed while a process has the store open (the kernel drops it on kill -9)
  CURRENT               {"current": "v0003", "previous": "v0002"}: replaced atomically, never edited in place
  versions/v0003/       one complete version: items.sqlite (metadata + embeddings), index.faiss (a cache) and
                        index.faiss.sha256 (the snapshot's checksum, verified at open; SQLite checks its own file)
  versions/v0002/       the version `rollback()` returns to
  versions/v0004/       a rebuild in progress (deleted on open if no pointer names it)
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from pathlib import Path

from blat_contract.bundle import sha256_file
from blat_gateway.errors import Conflict

VERSION_RE = re.compile(r"v(\d{4,})")


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file inside `path` durable (the directory entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old content or the new one, never a torn mix, even across kill -9 or power loss."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def recorded_checksums(path: Path) -> list[str] | None:
    """The sha256 values `path` may have (one; two while a replacement's rename is pending), or None when none were
    recorded (a file written before checksums were)."""
    sums = checksum_path(path)
    return sums.read_text().split() if sums.exists() else None


def replace_checksummed(tmp: Path, path: Path) -> None:
    """Rename the fsynced `tmp` over `path`, keeping its checksum file true at every instant: it names the old and
    the new content while the rename is pending, so a kill at any point leaves a file that verifies. The caller
    serialises replacements of one path."""
    new = sha256_file(tmp)  # read back from the page cache: one pass over a snapshot, never per item
    # A file from before checksums is never vouched for: a kill inside this window makes the next open call it
    # damaged and rebuild the cache from the rows, which is always safe.
    old = [s for s in recorded_checksums(path) or [] if s != new] if path.exists() else []
    write_atomic(checksum_path(path), "\n".join(old + [new]).encode())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    write_atomic(checksum_path(path), new.encode())


def versions_dir(root: Path) -> Path:
    return root / "versions"


def version_name(number: int) -> str:
    return f"v{number:04d}"


def read_pointer(root: Path) -> tuple[str, str | None] | None:
    """(current, previous) version names, or None for a new store."""
    path = root / "CURRENT"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data["current"], data.get("previous")


def _number(name: str | None) -> int:
    m = VERSION_RE.fullmatch(name or "")
    return int(m.group(1)) if m else 0


def _last_number(root: Path) -> int:
    """The highest version number the pointer has recorded (0 for a new store or an older pointer file)."""
    path = root / "CURRENT"
    return int(json.loads(path.read_text()).get("last", 0)) if path.exists() else 0


def write_pointer(root: Path, current: str, previous: str | None) -> None:
    """`last` keeps the highest number ever named, so a name is never given twice (a rollback drops a version)."""
    last = max(_last_number(root), _number(current), _number(previous))
    write_atomic(root / "CURRENT", json.dumps({"current": current, "previous": previous, "last": last}).encode())


def next_version(root: Path) -> str:
    """A name never used in this store: above every version directory and every name the pointer recorded."""
    numbers = [int(m.group(1)) for p in versions_dir(root).iterdir() if (m := VERSION_RE.fullmatch(p.name))]
    return version_name(max(max(numbers, default=0), _last_number(root)) + 1)


def remove_unreferenced(root: Path, keep: set[str]) -> list[str]:
    """Delete version directories no pointer names: failed, cancelled or killed rebuilds, and older generations."""
    removed = []
    for p in sorted(versions_dir(root).iterdir()):
        if VERSION_RE.fullmatch(p.name) and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    for tmp in root.glob("*.tmp"):  # a pointer write killed before its rename
        tmp.unlink(missing_ok=True)
    return removed


class RootLock:
    """An exclusive flock on root/LOCK: two processes appending to one store would each hold a stale FAISS cache."""

    def __init__(self, root: Path):
        self._fd = os.open(root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise Conflict(f"index store {root} is already open in another process") from None

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
