"""Gateway settings: one typed object, read from defaults, then a JSON file, then BLAT_SERVER_* environment variables.

    BLAT_SERVER_CONFIG=/etc/blat.json BLAT_SERVER_HTTP_PORT=9000 BLAT_SERVER_LIMITS__MAX_TEXT_CHARS=300 python -m
    blat_gateway

Nested fields use a double underscore (BLAT_SERVER_BATCHING__MAX_BATCH=32). Values are JSON-decoded when possible.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from blat_contract.config import apply_env, from_dict, to_dict
from blat_gateway.access import redact
from blat_gateway.index.milvus import MilvusConfig
from blat_gateway.index.protocol import ENGINES, KINDS
from blat_gateway.index.records import MAX_TAG_CHARS, MAX_TAGS
from blat_gateway.item_limits import GRPC_DEFAULT_MAX_RECEIVE, worst_search_reply_bytes

ENV_PREFIX = "BLAT_SERVER_"
CONFIG_ENV = "BLAT_SERVER_CONFIG"


@dataclass(frozen=True)
class BatchSettings:
    max_batch: int = 16  # requests merged into one model call
    max_wait_ms: float = 5.0  # how long the first request waits for company
    max_queue: int = 64  # requests admitted at once per model input type (audio, text); more get 429 at once
    # The memory budget of one model call (its memory grows with its input): a batch past it is cut into several
    # calls. Seconds of padded audio per audio-graph call (clips x longest; a longer clip runs alone), and
    # hypotheses per captioner-decoder call (clips x beam).
    max_call_seconds: float = 120.0
    max_caption_rows: int = 32

    def __post_init__(self):
        if self.max_batch < 1 or self.max_queue < 1 or self.max_wait_ms < 0:
            raise ValueError("batching: max_batch and max_queue must be >= 1, max_wait_ms >= 0")
        if self.max_call_seconds <= 0 or self.max_caption_rows < 1:
            raise ValueError("batching: need max_call_seconds > 0 and max_caption_rows >= 1")


@dataclass(frozen=True)
class TritonSettings:
    # Triton gRPC endpoint. Several replicas: "dns:///triton-headless:8001" (every address the name resolves to) or
    # "ipv4:10.0.0.1:8001,10.0.0.2:8001", with load_balancing "round_robin" to spread calls over all of them.
    url: str = "127.0.0.1:8001"
    load_balancing: str = "pick_first"  # gRPC's policy: "pick_first" (one connection) or "round_robin" (each call to
    # the next ready replica; one HTTP/2 connection per replica, so an L4 Service would pin them all to one pod)
    timeout_s: float = 10.0  # deadline of one inference call
    retries: int = 2  # extra attempts on UNAVAILABLE, with backoff
    breaker_failures: int = 5  # consecutive failures that open the circuit
    breaker_reset_s: float = 10.0  # open circuit: fail fast this long, then try one call
    model_version: str = ""  # "" = Triton's version policy (latest)

    def __post_init__(self):
        if self.load_balancing not in ("pick_first", "round_robin"):
            raise ValueError(f"triton.load_balancing must be pick_first or round_robin, got {self.load_balancing!r}")


@dataclass(frozen=True)
class LimitSettings:
    max_upload_bytes: int = 32 * 1024 * 1024  # enforced while reading the body (120 s of 48 kHz stereo WAV fits)
    max_json_bytes: int = 1024 * 1024  # any JSON request body (64 texts of 512 characters take at most 128 KiB)
    max_audio_seconds: float = 120.0  # per clip, after decoding
    max_text_chars: int = 512  # per query text
    max_texts: int = 64  # texts per embed request
    max_k: int = 100  # results per search
    max_labels: int = 1000  # labels per tagging request (the 527 AudioSet labels by default)
    request_timeout_s: float = 30.0  # deadline for any call
    max_clips_per_request: int = 16
    max_header_bytes: int = 64 * 1024  # request line (414) and header block (431); 1,000 short labels fit in a URL
    header_timeout_s: float = 10.0  # the request line and headers must arrive within this (408)
    body_idle_s: float = 15.0  # a request body that sends nothing for this long is dropped (408)
    max_streams: int = 8  # concurrent StreamTag streams; more get RESOURCE_EXHAUSTED
    stream_idle_s: float = 30.0  # a stream that sends nothing this long is closed (DEADLINE_EXCEEDED)
    stream_max_s: float = 3600.0  # no stream lasts longer
    # A stream that is never idle yet sends audio far slower than it plays (a drip) would hold a stream place for
    # stream_max_s: after its first stream_idle_s it must have sent at least this much audio per second of its life.
    stream_min_realtime: float = 0.25
    # Request bodies are read before admission (a slow body must not hold a gate); this bounds the bytes of the
    # bodies held at once (read or being served). Past it uploads get 429. Default: 64 maximal uploads.
    max_body_bytes_in_flight: int = 64 * 32 * 1024 * 1024
    # What an item stores (add, rebuild, manifests alike; 400). Search answers carry these strings: with max_k hits
    # at these lengths a gRPC reply stays under a default client's 4 MiB (server/blat_gateway/item_limits.py; 3.57 MiB
    # at most).
    max_caption_chars: int = 2000
    max_tags: int = 64  # tags per item (at most records.MAX_TAGS, the stores' own bound)
    max_tag_chars: int = 64  # per tag (at most records.MAX_TAG_CHARS); AudioSet names take at most 40
    max_source_uri_chars: int = 1024
    max_extra_bytes: int = 8 * 1024  # `extra` as compact UTF-8 JSON (index/extra.py: its keys and filters)

    def __post_init__(self):
        if self.max_body_bytes_in_flight < self.max_upload_bytes * 4 // 3 + self.max_json_bytes:
            raise ValueError(
                "limits.max_body_bytes_in_flight must hold at least one maximal upload, base64-encoded in JSON "
                "(4/3 max_upload_bytes + max_json_bytes)"
            )
        if not (1 <= self.max_tags <= MAX_TAGS and 1 <= self.max_tag_chars <= MAX_TAG_CHARS):
            raise ValueError(f"limits: need 1 <= max_tags <= {MAX_TAGS}, 1 <= max_tag_chars <= {MAX_TAG_CHARS}")
        if (worst := worst_search_reply_bytes(self)) > GRPC_DEFAULT_MAX_RECEIVE:
            raise ValueError(
                f"limits: a gRPC search answer of max_k={self.max_k} items at the stored-string limits "
                f"could take {worst / 2**20:.1f} MiB, over the 4 MiB a default gRPC client accepts: "
                "lower max_k or the max_caption_chars / max_tag(s) / max_source_uri_chars / max_extra_bytes limits"
            )


@dataclass(frozen=True)
class AuthSettings:
    # API key -> scopes ("read", "write"). Empty: no authentication (the embedded default on loopback).
    keys: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        for key, scopes in self.keys.items():
            bad = set(scopes) - {"read", "write"}
            if bad or not key:
                raise ValueError(f"auth.keys: scopes must be 'read'/'write', got {sorted(bad)}")


@dataclass(frozen=True)
class BrowserSettings:
    """What keeps other web pages off a gateway (a browser on the same machine or network can reach it)."""

    # Host values served on non-public routes, besides localhost, 127.0.0.1, [::1] and the bound `host`: a DNS
    # name rebound to this address (another site's page, Host: evil.example) gets 421. "*": any; ".example.com":
    # it and its subdomains. Health, metrics, the page and the docs answer any Host (probes use the pod address).
    allowed_hosts: tuple[str, ...] = ()
    # Origins (scheme://host[:port]) whose pages may call the API (CORS answers, and their state-changing
    # requests pass the Origin check). Empty: no cross-origin calls at all; only the gateway's own page.
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self):
        bad = [o for o in self.cors_origins if o == "*" or "://" not in o or o.endswith("/")]
        if bad:
            raise ValueError(f"browser.cors_origins: give scheme://host[:port] origins, no '*', got {bad}")


@dataclass(frozen=True)
class PredictSettings:
    """What the gateway predicts for audio that arrives without tags, with bundles whose audio tower carries a
    supervised tagger (BLAT's bootstrapping applied to the user's own audio)."""

    tags: bool = True  # items added or rebuilt without tags get the tagger's confident tags, marked as predicted
    tag_threshold: float = 0.2  # least probability of a predicted tag
    max_tags: int = 5  # predicted tags per item (best first)
    captions: bool = False  # items added or rebuilt without a caption get one, guided by their predicted tags
    caption_tags: int = 3  # predicted tags that guide a caption (of those above tag_threshold)

    def __post_init__(self):
        if not 0 < self.tag_threshold < 1 or self.max_tags < 1 or self.caption_tags < 0:
            raise ValueError("predict: need 0 < tag_threshold < 1, max_tags >= 1, caption_tags >= 0")


@dataclass(frozen=True)
class Settings:
    bundle: str = "bundles/default"  # model bundle directory (bundle.json inside)
    backend: str = "onnxruntime"  # "onnxruntime" (in-process) or "triton"
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 50051
    index_dir: str = "data/index"  # FAISS versions (SQLite + FAISS) and uploaded audio (share it across replicas)
    index_kind: str = "flat"  # "flat" (exact), "ivf" or "hnsw"
    index_engine: str = "faiss"  # "faiss" (this host) or "milvus" (a Milvus server or cluster; milvus-lite locally)
    milvus: MilvusConfig = field(default_factory=MilvusConfig)  # used when index_engine is "milvus"
    read_only: bool = False  # refuse writes, rebuilds and rollbacks (403): search replicas beside one writer
    ingest_roots: tuple[str, ...] = ()  # server-side paths allowed for item add / rebuild
    seed_manifest: str = ""  # operator's JSON Lines manifest: an empty index is rebuilt from it at start-up
    # A rebuild skips entries it cannot read, decode or store (each reason kept on the job) and fails only when more
    # than this share of its entries were skipped so: a folder of mostly foreign files is a mistake, not a collection.
    rebuild_max_unreadable_share: float = 0.5
    ort_threads: int = 0  # ONNX Runtime intra-op threads; 0 = all cores
    ort_spinning: bool = False  # let ONNX Runtime's idle threads busy-wait (faster on cores the gateway leaves free)
    ort_memory_arena: bool = False  # ONNX Runtime's CPU arena: keeps each graph's largest call's memory for good
    log_level: str = "INFO"
    access_log: bool = True  # one JSON line per request and RPC (logger blat_gateway.access), with its request id
    batching: BatchSettings = field(default_factory=BatchSettings)
    triton: TritonSettings = field(default_factory=TritonSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    predict: PredictSettings = field(default_factory=PredictSettings)
    browser: BrowserSettings = field(default_factory=BrowserSettings)

    def __post_init__(self):
        if self.backend not in ("onnxruntime", "triton"):
            raise ValueError(f"backend must be 'onnxruntime' or 'triton', got {self.backend!r}")
        if self.index_kind not in KINDS:
            raise ValueError(f"index_kind must be one of {', '.join(KINDS)}, got {self.index_kind!r}")
        if self.index_engine not in ENGINES:
            raise ValueError(f"index_engine must be one of {', '.join(ENGINES)}, got {self.index_engine!r}")
        if not 0 <= self.rebuild_max_unreadable_share <= 1:
            raise ValueError(f"rebuild_max_unreadable_share must be in [0, 1], got {self.rebuild_max_unreadable_share}")
        if self.predict.max_tags > self.limits.max_tags:  # predicted tags are stored: they must fit the limit
            raise ValueError(f"predict.max_tags {self.predict.max_tags} > limits.max_tags {self.limits.max_tags}")

    def redacted(self) -> dict:
        """For the start-up log: everything but the API keys themselves."""
        d = to_dict(self)
        d["auth"]["keys"] = {redact(k): v for k, v in self.auth.keys.items()}
        d["milvus"]["token"] = redact(self.milvus.token) if self.milvus.token else ""
        return d


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None, **overrides) -> Settings:
    """Defaults <- JSON file (`path` or $BLAT_SERVER_CONFIG) <- BLAT_SERVER_* env vars <- keyword overrides."""
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.pop(CONFIG_ENV, None)
    data: dict = json.loads(Path(path).read_text()) if path else {}
    environ.pop(CONFIG_ENV, None)
    data = apply_env(data, ENV_PREFIX, environ)
    data.update(overrides)
    return from_dict(Settings, data, where=str(path or "settings"))
