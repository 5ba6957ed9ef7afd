"""The audio of uploaded items, kept beside the index so it can be played back (GET /v1/audio/{id}).

One file per stored item under `<index_dir>/audio/`, named by the sha256 of its id and content hash: an item that
a rebuild or rollback brings back under the same id with other audio never finds this upload. An add stages the
upload (temp file, fsync) before the index commit and moves it into place after the commit and before the answer:
a refused add (409) never touches the stored audio of another item, and an acknowledged add's audio survives
kill -9. A kill between the commit and the rename leaves an item without audio (it answers 404 for its audio) and an
orphan temp file, removed at the next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path

from blat_gateway.audio import sniff_format
from blat_gateway.errors import UnsupportedFormat
from blat_gateway.index.layout import fsync_dir

MEDIA_TYPES = {"WAV": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg", "MP3": "audio/mpeg"}


def media_type(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        return MEDIA_TYPES[sniff_format(head)]
    except UnsupportedFormat:  # not recognisable from its first bytes: let the browser sniff it
        return "application/octet-stream"


class UploadStore:
    def __init__(self, index_dir: str | os.PathLike):
        self.root = Path(index_dir) / "audio"
        if not self.root.is_dir():
            self.root.mkdir(parents=True)
            fsync_dir(self.root.parent)  # the folder's own entry, or a crash could lose it with the first upload
        for stale in self.root.glob(".staged-*"):  # from a process killed mid-add
            stale.unlink(missing_ok=True)

    def path(self, item_id: str, content_hash: str) -> Path:
        return self.root / hashlib.sha256(f"{item_id}\0{content_hash}".encode()).hexdigest()

    def find(self, item_id: str, content_hash: str) -> Path | None:
        path = self.path(item_id, content_hash)
        return path if path.is_file() else None

    @contextlib.contextmanager
    def staged(self, data: bytes):
        """A durable temp copy of `data`; `commit(item_id)` on the yielded object moves it into place. Removed
        if the block raises or never commits."""
        tmp = self.root / f".staged-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        staged = _Staged(self, tmp)
        try:
            yield staged
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self, item_id: str, content_hash: str) -> None:
        path = self.path(item_id, content_hash)
        if path.exists():
            path.unlink()
            fsync_dir(self.root)


class _Staged:
    def __init__(self, store: UploadStore, tmp: Path):
        self.store, self.tmp = store, tmp

    def commit(self, item_id: str, content_hash: str) -> None:
        os.replace(self.tmp, self.store.path(item_id, content_hash))
        fsync_dir(self.store.root)
