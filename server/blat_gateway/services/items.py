"""Items: add (an upload or a server-side path; predicted tags and caption for audio that came without), get,
delete, and the file holding an item's audio. Uploads are kept durable next to the index (blat_gateway.uploads)."""

from __future__ import annotations

import base64
import binascii
import contextvars
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from blat_gateway.errors import BadRequest, Forbidden, NotFound, ServiceError
from blat_gateway.index import ItemRecord, SearchFilter
from blat_gateway.index.extra import check_written
from blat_gateway.inference import content_hash, predicted_fields
from blat_gateway.item_limits import check_fields, check_record
from blat_gateway.services.captioning import CaptioningService
from blat_gateway.services.context import Context
from blat_gateway.services.ingest import IngestService


@dataclass(frozen=True)
class ItemsPage:
    items: list[ItemRecord]
    next_cursor: str  # "" on the last page
    index_version: str


def cursor_after(item_id: str) -> str:
    """The opaque cursor of the page after `item_id` (its base64url: clients must not build or read one)."""
    return base64.urlsafe_b64encode(item_id.encode()).decode().rstrip("=")


def id_before(cursor: str) -> str:
    """The id a cursor continues after ("" from the start); BadRequest for a cursor this server did not give."""
    if not cursor:
        return ""
    try:
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("cursor: not one this server gave (pass next_cursor from the previous page)") from None


audit = logging.getLogger("blat_gateway.audit")
log = logging.getLogger(__name__)
ADD_MANY_THREADS = 4  # items of one AddItems call stored at once (their audio shares the batcher's batches)


class ItemsService:
    def __init__(self, ctx: Context, captioning: CaptioningService, ingest: IngestService):
        self.ctx, self.captioning, self.ingest = ctx, captioning, ingest

    def add(
        self,
        item_id: str,
        data: bytes | None = None,
        path: str | None = None,
        tags: Sequence[str] = (),
        caption: str = "",
        source_uri: str = "",
        upsert: bool = False,
        extra: dict | None = None,
        dedupe: bool = False,
    ) -> ItemRecord:
        """Store one item. Without tags it gets the tagger's predicted ones (settings.predict), marked in
        extra["predicted_tags"] with their scores; with predict.captions and no caption, a caption guided by them.
        `extra`: the caller's metadata (index/extra.py says what it may hold). `dedupe`: refuse (409) the sound of
        an item stored under another id; without it the same sound may be stored under several ids."""
        ctx, predict = self.ctx, self.ctx.settings.predict
        if (data is None) == (path is None):
            raise BadRequest("give exactly one of: uploaded audio, or a server-side path")
        extra = check_written(extra)
        check_fields(ctx.limits, tags, caption, source_uri, extra)  # before any model work
        uploaded = path is None
        if path is not None:
            real = self.ingest.check_path(path)
            data, source_uri = self.ingest.read_path(real), source_uri or str(real)
        audio = ctx.decode(data)
        record = ItemRecord(
            id=item_id,
            source_uri=source_uri,
            duration_s=audio.duration_s,
            tags=tuple(tags),
            caption=caption,
            content_hash=content_hash(audio.samples),
            extra=extra,
        )
        embedding, probs = ctx.analyze(audio.samples)
        predicted = predicted_fields(ctx.runtime, embedding, probs, predict, record.tags)
        if predicted:
            extra = {**extra, **predicted["extra"]}
            if predict.captions and not caption and ctx.manifest.captioner:
                caption = self.captioning.guided(audio.samples, predicted["tags"])
                extra["predicted_caption"] = True
            record = replace(record, tags=tuple(predicted["tags"]), caption=caption, extra=extra)
        check_record(record, ctx.limits)  # what was derived too: a path as source_uri, predicted fields
        replaced = self._existing(item_id) if upsert else None
        if not uploaded:  # its audio stays where it is (played back from source_uri while inside the roots)
            stored = ctx.store.add(record, embedding, upsert=upsert, dedupe=dedupe)
        else:
            with ctx.uploads.staged(data) as upload:  # durable before the commit, in place before the answer
                stored = ctx.store.add(record, embedding, upsert=upsert, dedupe=dedupe)
                upload.commit(item_id, stored.content_hash)
        if replaced is not None and (replaced.content_hash != stored.content_hash or not uploaded):
            ctx.uploads.remove(item_id, replaced.content_hash)  # the upload an upsert replaced
        return stored

    def add_many(self, entries: Sequence[dict]) -> list[tuple[str, ItemRecord | None, ServiceError | None]]:
        """AddItems: each entry (`add`'s keyword arguments) stored or refused on its own, a few at a time so their
        audio shares batches: one (id, stored item or None, error or None) per entry, in order. At most
        limits.max_clips_per_request entries."""
        if not 1 <= len(entries) <= self.ctx.limits.max_clips_per_request:
            raise BadRequest(f"items: give 1-{self.ctx.limits.max_clips_per_request} items, got {len(entries)}")

        def one(entry: dict) -> tuple[str, ItemRecord | None, ServiceError | None]:
            try:
                return entry["item_id"], self.add(**entry), None
            except ServiceError as e:
                return entry["item_id"], None, e
            except Exception:  # one item's failure must not lose the others' answers: they may be stored
                log.exception("unexpected error storing %r", entry["item_id"])
                return entry["item_id"], None, ServiceError("internal error (the gateway's log has the details)")

        with ThreadPoolExecutor(min(len(entries), ADD_MANY_THREADS)) as pool:
            # Each task runs in a copy of this request's context: its deadline (admission.remaining) goes with it.
            futures = [pool.submit(contextvars.copy_context().run, one, entry) for entry in entries]
            return [f.result() for f in futures]

    def _existing(self, item_id: str) -> ItemRecord | None:
        try:
            return self.ctx.store.get(item_id)
        except NotFound:
            return None

    def get(self, item_id: str) -> ItemRecord:
        return self.ctx.store.get(item_id)

    def list(self, flt: SearchFilter | None = None, limit: int = 100, cursor: str = "") -> ItemsPage:
        """A page of up to `limit` items in id order (1..limits.max_k) after `cursor`, filtered like a search."""
        if not isinstance(limit, int) or not 1 <= limit <= self.ctx.limits.max_k:
            raise BadRequest(f"limit must be an integer in [1, {self.ctx.limits.max_k}], got {limit!r}")
        items, version = self.ctx.store.page(id_before(cursor), limit + 1, flt)  # one more: is there a next page?
        more = len(items) > limit
        items = items[:limit]
        return ItemsPage(items, cursor_after(items[-1].id) if more else "", version)

    def delete(self, item_id: str) -> ItemRecord:
        removed = self.ctx.store.delete(item_id)
        self.ctx.uploads.remove(item_id, removed.content_hash)
        audit.info("item deleted", extra={"action": "delete", "id": item_id, "content_hash": removed.content_hash})
        return removed

    def audio(self, item_id: str) -> Path:
        """The file holding a stored item's audio: its upload, or its source file while that is inside the ingest
        roots. NotFound otherwise (the answer says which)."""
        item = self.ctx.store.get(item_id)
        upload = self.ctx.uploads.find(item_id, item.content_hash)
        if upload is not None:
            return upload
        if item.source_uri:
            try:
                real = self.ingest.check_path(item.source_uri)
                if real.is_file():
                    return real
            except (Forbidden, NotFound, BadRequest):
                pass
        raise NotFound(
            f"item {item_id!r} has no playable audio here: it was not uploaded, and its source "
            f"{item.source_uri or '(none)'} is not a file inside the ingest roots",
            id=item_id,
        )
