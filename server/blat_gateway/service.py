"""The gateway's composition root: builds the model runtime, the index, the micro-batchers and the services by concern
(server/blat_gateway/services/), which the REST and gRPC faces call directly: `gw.search.text(...)`,
`gw.tagging.tag(...)`, `gw.items.add(...)`, `gw.ingest.start_rebuild(...)`. What stays here is the request's
admission (gates and deadline) and the gateway's status and lifecycle.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from blat_contract.config import to_dict
from blat_gateway.admission import Gate, reset_deadline, set_deadline
from blat_gateway.backends import Backend
from blat_gateway.batching import MicroBatcher
from blat_gateway.errors import ServiceError
from blat_gateway.index import IndexStore
from blat_gateway.inference import analyze_batch, make_backend
from blat_gateway.memory import MemoryReleaser
from blat_gateway.metrics import Metrics
from blat_gateway.runtime import ModelRuntime
from blat_gateway.services.captioning import CaptioningService, caption_batch
from blat_gateway.services.context import Context
from blat_gateway.services.embedding import EmbeddingService
from blat_gateway.services.ingest import IngestService
from blat_gateway.services.items import ItemsService
from blat_gateway.services.search import SearchService
from blat_gateway.services.tagging import TaggingService
from blat_gateway.settings import Settings
from blat_gateway.uploads import UploadStore


def open_store(settings: Settings, dim: int, bundle_id: str) -> IndexStore:
    """The index the settings name: FAISS versions under index_dir, or Milvus (milvus-lite in index_dir by default)."""
    milvus = None
    if settings.index_engine == "milvus":
        milvus = settings.milvus
        if not milvus.uri:
            milvus = replace(milvus, uri=str(Path(settings.index_dir) / "milvus.db"))
    return IndexStore(settings.index_dir, dim=dim, bundle_id=bundle_id, kind=settings.index_kind, milvus=milvus)


class Gateway:
    def __init__(
        self,
        settings: Settings,
        backend: Backend | None = None,
        store: IndexStore | None = None,
        metrics: Metrics | None = None,
    ):
        self.settings, self.limits = settings, settings.limits
        self.memory = MemoryReleaser()  # first, before the threads: caps malloc arenas, returns freed memory
        self.backend = backend or make_backend(settings)
        self.runtime = runtime = ModelRuntime(
            settings.bundle, self.backend, settings.batching.max_call_seconds, settings.batching.max_caption_rows
        )
        self.manifest = runtime.manifest
        self.store = store or open_store(settings, self.manifest.embedding_dim, self.manifest.id)
        self.uploads = UploadStore(settings.index_dir)
        self.metrics = metrics or Metrics()
        b = settings.batching
        # The gates bound the requests; a request may queue many items (texts, labels), so the batchers' own queues
        # are only a backstop sized for full gates of full requests.
        items = b.max_queue * max(self.limits.max_texts, self.limits.max_labels, 1)

        def batcher(name, fn):
            return MicroBatcher(
                name,
                self.metrics.timed(name, fn),
                b.max_batch,
                b.max_wait_ms / 1000,
                items,
                on_batch=self.metrics.observe_batch,
                on_idle=self.memory.soon,
            )

        self.gates = {"audio": Gate("audio", b.max_queue), "text": Gate("text", b.max_queue)}
        # Live tagging streams, on both faces together (StreamTag over gRPC, /v1/tag/stream over WebSocket): a
        # stream holds its place for its whole life; each of its windows passes the audio gate on its own.
        self.streams = Gate("streams", self.limits.max_streams)
        self.audio_batcher = batcher("audio_embed", lambda waves: analyze_batch(runtime, waves))
        self.text_batcher = batcher("text_embed", lambda texts: list(runtime.encode_text(texts)))
        self.caption_batcher = batcher("caption", lambda jobs: caption_batch(runtime, jobs))
        ctx = Context(
            settings, runtime, self.store, self.uploads, self.audio_batcher, self.text_batcher, self.caption_batcher
        )
        self.embedding = EmbeddingService(ctx)
        self.search = SearchService(ctx, self.embedding)
        self.tagging = TaggingService(ctx)
        self.captioning = CaptioningService(ctx)
        self.ingest = IngestService(ctx)
        self.items = ItemsService(ctx, self.captioning, self.ingest)
        self.metrics.bind(self)

    @contextlib.contextmanager
    def admitted(self, gate: str | None) -> Iterator[None]:
        """The faces' entry: a place in `gate` (None: no model call) and the request's deadline, for the call."""
        with self.gates[gate].admitted() if gate else contextlib.nullcontext():
            token = set_deadline(self.limits.request_timeout_s)
            try:
                yield
            finally:
                reset_deadline(token)

    @property
    def admissible(self) -> int:
        """Requests the gates admit at once: the faces size their thread pools from it."""
        return sum(g.capacity for g in self.gates.values())

    def stats(self):
        return self.store.stats()

    def info(self) -> dict:
        """What both faces answer for Info: the bundle's bundle.json, the backend and the limits in force."""
        return {
            "bundle": json.loads((Path(self.settings.bundle) / "bundle.json").read_text()),
            "backend": self.settings.backend,
            "limits": to_dict(self.limits),
        }

    def ready(self) -> tuple[bool, str]:
        try:
            if not self.backend.ready():
                return False, f"model backend ({self.settings.backend}) is not ready"
            self.store.stats()
        except ServiceError as e:
            return False, e.message
        return True, "ready"

    def close(self) -> None:
        for b in (self.audio_batcher, self.text_batcher, self.caption_batcher):
            b.close()
        self.memory.close()
        self.store.close()
        self.backend.close()
