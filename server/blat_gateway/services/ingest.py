"""Ingest: server-side paths under the configured ingest roots, the entries of a rebuild (a folder or a manifest),
and rebuilds of the index (from audio or from an embedding job's folder), their status, cancel, rollback, and the
seed rebuild at start-up."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from blat_gateway.audio import DecodedAudio
from blat_gateway.errors import BadRequest, NotFound
from blat_gateway.index import ItemRecord
from blat_gateway.index.bulk import read_folder
from blat_gateway.index.rebuild import Entry, Skipped
from blat_gateway.inference import embed_files
from blat_gateway.ingest import check_path, read_inside_roots
from blat_gateway.inputs import manifest_rows
from blat_gateway.item_limits import check_fields, check_record
from blat_gateway.services.context import Context

log = logging.getLogger(__name__)
audit = logging.getLogger("blat_gateway.audit")  # one line per change to what the index holds as a whole
MODES = ("replace", "merge")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"}


class IngestService:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def check_path(self, path: str, trusted: bool = False) -> Path:
        """A server-side path must resolve (symlinks included) inside one of the configured ingest roots."""
        return check_path(path, self.ctx.settings.ingest_roots, trusted)

    def read_path(self, path: str | Path, trusted: bool = False) -> bytes:
        """Checked against the roots again as it is opened (blat_gateway/ingest.py): a rebuild opens files later."""
        return read_inside_roots(path, self.ctx.settings.ingest_roots, self.ctx.limits.max_upload_bytes, trusted)

    def decode(self, data: bytes) -> DecodedAudio:
        """How a rebuild decodes a file's bytes (the uploads' decoder and limits)."""
        return self.ctx.decode(data)

    def rebuild_entries(self, folder: str | None, manifest: str | None, trusted: bool = False) -> list[dict]:
        if folder is not None:
            root = self.check_path(folder, trusted)
            if not root.is_dir():
                raise BadRequest(f"{folder} is not a folder")
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            for p in files:  # a symlink inside the folder must not lead outside the roots
                self.check_path(str(p), trusted)
            return [{"id": str(p.relative_to(root)).replace(" ", "_"), "path": str(p)} for p in files]
        path = self.check_path(manifest, trusted)
        entries = []
        for n, entry in manifest_rows(path):
            audio = entry.pop("audio")
            entry["path"] = str(self.check_path(str(path.parent / audio), trusted))  # an absolute audio stays so
            try:  # the record's own checks, now: a bad row refuses the request instead of failing the job later
                ItemRecord(id=entry["id"], tags=entry["tags"], caption=entry["caption"], extra=entry["extra"])
                check_fields(self.ctx.limits, entry["tags"], entry["caption"], entry["path"])
            except BadRequest as e:
                raise BadRequest(f"{manifest}:{n}: {e.message}") from None
            entries.append(entry)
        return entries

    def start_rebuild(
        self,
        folder: str | None = None,
        manifest: str | None = None,
        trusted: bool = False,
        embeddings: str | None = None,
        mode: str = "",
        dedupe: bool = False,
    ):
        """From audio (a folder or a manifest, embedded here) or from `embeddings`, a finished embedding job's folder
        (python -m blat_jobs.embed). `mode` must be said: "replace" (the new version holds only these items) or
        "merge" (the stored items too; an id in both takes the new entry). trusted: the operator's own paths
        (settings.seed_manifest), exempt from the ingest-roots check."""
        ctx = self.ctx
        if mode not in MODES:
            raise BadRequest(
                f"mode must be 'replace' (the new index holds only these items: the {ctx.store.stats().count} "
                f"stored now go) or 'merge' (they are added to the stored ones), got {mode!r}"
            )
        if sum(x is not None for x in (folder, manifest, embeddings)) != 1:
            raise BadRequest("give exactly one of: folder, manifest, embeddings")
        progress = self._start(folder, manifest, trusted, embeddings, mode, dedupe)
        source = {"folder": folder, "manifest": manifest, "embeddings": embeddings}
        audit.info(
            "rebuild started",
            extra={
                "action": "rebuild",
                "mode": mode,
                "dedupe": dedupe,
                **{k: v for k, v in source.items() if v is not None},
                "job": progress.version,
                "entries": progress.total,
                "items_before": ctx.store.stats().count,
            },
        )
        return progress

    def _start(self, folder, manifest, trusted: bool, embeddings, mode: str, dedupe: bool):
        ctx, bundle_id = self.ctx, self.ctx.manifest.id
        share = ctx.settings.rebuild_max_unreadable_share
        if embeddings is not None:
            summary, pairs = read_folder(self.check_path(embeddings, trusted), lambda r: check_record(r, ctx.limits))
            if summary["bundle_id"] != bundle_id:
                raise BadRequest(
                    f"{embeddings} holds embeddings of bundle {summary['bundle_id']!r}; this gateway "
                    f"serves {bundle_id!r}: embed the collection with its bundle"
                )
            return self._launch(pairs, int(summary["items"]), mode, bundle_id, share, dedupe)
        entries = self.rebuild_entries(folder, manifest, trusted)

        def pairs() -> Iterator[Entry]:
            """Each file opened under the roots' check; an unreadable one, or one whose record breaks a limit, is
            `Skipped` with its reason (the job counts them)."""
            decode = lambda path: self.decode(self.read_path(path, trusted))  # noqa: E731
            unreadable: list[str] = []
            for record, emb in embed_files(
                ctx.runtime,
                entries,
                decode,
                ctx.settings.batching.max_batch,
                ctx.settings.predict,
                lambda _, why: unreadable.append(why),
            ):
                yield from (Skipped(why) for why in unreadable)
                unreadable.clear()
                try:
                    yield check_record(ItemRecord(**record), ctx.limits), emb
                except BadRequest as e:
                    yield Skipped(f"{record['source_uri']}: {e.message}")
            yield from (Skipped(why) for why in unreadable)

        return self._launch(pairs, len(entries), mode, bundle_id, share, dedupe)

    def _launch(self, source, total: int, mode: str, bundle_id: str, share: float, dedupe: bool):
        """Start the job; a merge streams the stored items after the new ones, leaving out the ids already given
        (the new entry wins). Its total is an estimate: writes go on while it reads the stored items."""
        store = self.ctx.store
        if mode == "merge":
            new = source

            def merged() -> Iterator[Entry]:
                given: set[str] = set()
                for entry in new() if callable(new) else new:
                    if not isinstance(entry, Skipped):
                        given.add(entry[0].id)
                    yield entry
                yield from ((it, vec) for it, vec in store.live_pairs() if it.id not in given)

            source, total = merged, total + store.stats().count
        job = store.start_rebuild(
            source,
            total,
            bundle_id=bundle_id,
            max_unreadable_share=share,
            exact_total=mode == "replace",
            dedupe=dedupe,
        )
        return job.progress()

    def rebuild_status(self, job_id: str):
        job = self.ctx.store.rebuild_job
        if job is None or job.progress().version != job_id:
            raise NotFound(f"no rebuild job {job_id!r}")
        return job.progress()

    def cancel_rebuild(self, job_id: str):
        progress = self.rebuild_status(job_id)
        self.ctx.store.rebuild_job.cancel()
        audit.info("rebuild cancelled", extra={"action": "cancel_rebuild", "job": job_id})
        return progress

    def rollback(self):
        before = self.ctx.store.stats()
        self.ctx.store.rollback()
        after = self.ctx.store.stats()
        audit.info(
            "index rolled back",
            extra={"action": "rollback", "from": before.version, "to": after.version, "items": after.count},
        )
        return after

    def seed(self):
        """At start-up: an empty index with a configured seed manifest is rebuilt from it in the background."""
        settings, store = self.ctx.settings, self.ctx.store
        if settings.seed_manifest and not settings.read_only and store.stats().count == 0 and store.rebuild_job is None:
            progress = self.start_rebuild(manifest=settings.seed_manifest, trusted=True, mode="replace")
            log.info(
                "seeding the index",
                extra={"manifest": settings.seed_manifest, "job": progress.version, "items": progress.total},
            )
            return progress
        return None
