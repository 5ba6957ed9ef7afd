"""Prometheus metrics of the gateway: requests and latency per endpoint, batch sizes, queue depth, index size."""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _version() -> str:
    try:
        return version("blat-serve")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "blat_requests_total", "Requests by endpoint and status", ["api", "endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "blat_request_seconds",
            "Request latency by endpoint",
            ["api", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "blat_batch_size",
            "Requests merged per model call",
            ["batcher"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.queue = Gauge("blat_queue_depth", "Requests waiting per batcher", ["batcher"], registry=r)
        self.admitted = Gauge(
            "blat_admitted", "Requests admitted per model input gate (at most batching.max_queue)", ["gate"], registry=r
        )
        self.model = Histogram(
            "blat_model_seconds",
            "Seconds per model call (one batch) by batcher: audio_embed (embedding and tagger), text_embed, caption",
            ["batcher"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.build = Gauge(
            "blat_build_info",
            "1, labelled with what is served: the gateway's version, the bundle, the backend, the index engine",
            ["version", "bundle", "backend", "engine"],
            registry=r,
        )
        self.items = Gauge("blat_index_items", "Live items in the index", registry=r)
        self.tombstones = Gauge("blat_index_tombstones", "Deleted items not yet compacted", registry=r)

    def bind(self, gateway) -> None:
        """Gauges read the live values at scrape time."""
        for b in (gateway.audio_batcher, gateway.text_batcher, gateway.caption_batcher):
            self.queue.labels(b.name).set_function(lambda b=b: b.depth)
        for name, gate in gateway.gates.items():
            self.admitted.labels(name).set_function(lambda g=gate: g.held)
        self.items.set_function(lambda: gateway.store.stats().count)
        self.build.labels(_version(), gateway.manifest.id, gateway.settings.backend, gateway.settings.index_engine).set(
            1
        )
        self.tombstones.set_function(lambda: gateway.store.stats().tombstones)

    def observe_batch(self, batcher: str, size: int) -> None:
        self.batch.labels(batcher).observe(size)

    def timed(self, batcher: str, fn):
        """`fn` (one batch through a model), with its seconds observed in blat_model_seconds."""
        hist = self.model.labels(batcher)

        def run(batch):
            t0 = time.perf_counter()
            try:
                return fn(batch)
            finally:
                hist.observe(time.perf_counter() - t0)

        return run

    def observe(self, api: str, endpoint: str, status: int | str, seconds: float) -> None:
        self.requests.labels(api, endpoint, str(status)).inc()
        self.latency.labels(api, endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
