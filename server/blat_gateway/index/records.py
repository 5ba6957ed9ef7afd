"""The value types of the index store: stored items, search hits, metadata filters, statistics.

Everything here is plain data with its checks; nothing touches disk or FAISS. Invalid input raises
`BadRequest`, so the REST and gRPC faces answer 400 / INVALID_ARGUMENT without extra mapping.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from blat_gateway.errors import BadRequest
from blat_gateway.index.extra import Condition, parse_conditions
from blat_gateway.inputs import check_text

ID_PATTERN = re.compile(r"[A-Za-z0-9._:/-]{1,200}")  # ids travel in URLs and gRPC fields: no spaces or escapes
MAX_TAGS = 64  # per item; tags are short labels, not documents
MAX_TAG_CHARS = 200
MAX_K = 1000  # per query; larger result pages belong to an export, not a search


def iso_time(epoch_s: float | None) -> str:
    """Unix seconds -> "2026-12-03T06:45:45.123Z" (UTC, milliseconds): the one form `added_at` takes on the wire,
    over REST and gRPC alike; "" when unknown."""
    if epoch_s is None:
        return ""
    whole = int(epoch_s // 1)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((epoch_s - whole) * 1000):03d}Z"


def check_id(item_id: Any) -> str:
    """Ids are path-like ("pack/sound") but never hold a "." or ".." segment or an empty one ("a//b", "/a"): a URL
    client normalises those away, and /v1/items/a/../b would then name another item."""
    if not isinstance(item_id, str) or not ID_PATTERN.fullmatch(item_id):
        raise BadRequest(
            f"invalid item id {item_id!r}: use 1-200 characters of A-Z a-z 0-9 . _ : / -",
            id=str(item_id)[:200].encode("utf-8", "backslashreplace").decode(),
        )
    if any(seg in ("", ".", "..") for seg in item_id.split("/")):
        raise BadRequest(f"invalid item id {item_id!r}: no empty, '.' or '..' segments between slashes", id=item_id)
    return item_id


def _check_tags(tags: Any) -> tuple[str, ...]:
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise BadRequest(f"tags must be a list of strings, got {type(tags).__name__}")
    out = tuple(dict.fromkeys(tags))  # drop repeats, keep the given order
    if len(out) > MAX_TAGS:
        raise BadRequest(f"at most {MAX_TAGS} tags per item, got {len(out)}")
    for i, tag in enumerate(out):
        check_text(tag, f"tags[{i}]", MAX_TAG_CHARS)
    return out


@dataclass(frozen=True)
class ItemRecord:
    """One stored audio item's metadata (its embedding is kept next to it, see `IndexStore.embedding`)."""

    id: str  # chosen by the user; see ID_PATTERN
    source_uri: str = ""  # where the audio came from (file path, URL, object key)
    duration_s: float | None = None  # clip length in seconds, if known
    tags: tuple[str, ...] = ()  # free labels, matched exactly (case-sensitive) by SearchFilter
    caption: str = ""
    content_hash: str = ""  # e.g. sha256 of the decoded audio; "" = unknown, never a duplicate
    added_at: float | None = None  # unix seconds; None: the store stamps the time of the write
    extra: dict[str, Any] = field(default_factory=dict, hash=False)  # any JSON object

    def __post_init__(self):
        check_id(self.id)
        for name in ("source_uri", "caption", "content_hash"):
            check_text(getattr(self, name), name, allow_empty=True)
        object.__setattr__(self, "tags", _check_tags(self.tags))  # frozen: lists become tuples here
        if self.duration_s is not None:
            d = self.duration_s
            if not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0:
                raise BadRequest(f"duration_s must be a finite number >= 0, got {self.duration_s!r}")
            object.__setattr__(self, "duration_s", float(self.duration_s))
        if self.added_at is not None and not (isinstance(self.added_at, (int, float)) and math.isfinite(self.added_at)):
            raise BadRequest(f"added_at must be unix seconds, got {self.added_at!r}")
        if not isinstance(self.extra, dict):
            raise BadRequest("extra must be a JSON object")
        try:
            json.dumps(self.extra, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise BadRequest(f"extra is not JSON-serialisable: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source_uri": self.source_uri,
            "duration_s": self.duration_s,
            "tags": list(self.tags),
            "caption": self.caption,
            "content_hash": self.content_hash,
            "added_at": iso_time(self.added_at),
            "extra": self.extra,
        }


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity (stored embeddings and queries are unit norm)
    item: ItemRecord


@dataclass(frozen=True)
class SearchFilter:
    """A conjunction of simple metadata conditions; an empty filter matches everything.

    `matches` (Python, applied to ANN candidates) and `blat_gateway.index.db.filter_sql` (SQL, for the exact fallback)
    must agree; tests check both against the same brute force.
    """

    tags_any: tuple[str, ...] = ()  # at least one of these tags
    tags_all: tuple[str, ...] = ()  # every one of these tags
    source_prefix: str | None = None  # source_uri starts with this
    min_duration_s: float | None = None  # items without a duration fail any duration bound
    max_duration_s: float | None = None
    # Conditions on keys of `extra` (index/extra.py), sorted by key; given as {key: condition} they are parsed.
    extra: tuple[tuple[str, Condition], ...] = ()

    def __post_init__(self):
        if not isinstance(self.extra, tuple):
            object.__setattr__(self, "extra", parse_conditions(self.extra))
        object.__setattr__(self, "tags_any", _check_tags(self.tags_any))
        object.__setattr__(self, "tags_all", _check_tags(self.tags_all))
        if self.source_prefix is not None:
            check_text(self.source_prefix, "source_prefix", allow_empty=True)
        for name in ("min_duration_s", "max_duration_s"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise BadRequest(f"{name} must be a finite number, got {v!r}")
        lo, hi = self.min_duration_s, self.max_duration_s
        if lo is not None and hi is not None and lo > hi:
            raise BadRequest(f"min_duration_s {lo} > max_duration_s {hi}")

    @property
    def empty(self) -> bool:
        return not (
            self.tags_any
            or self.tags_all
            or self.source_prefix
            or self.min_duration_s is not None
            or self.max_duration_s is not None
            or self.extra
        )

    def matches(self, item: ItemRecord) -> bool:
        tags = set(item.tags)
        if self.tags_any and not tags.intersection(self.tags_any):
            return False
        if self.tags_all and not tags.issuperset(self.tags_all):
            return False
        if self.source_prefix and not item.source_uri.startswith(self.source_prefix):
            return False
        if any(not cond.matches(item.extra.get(key)) for key, cond in self.extra):
            return False
        if self.min_duration_s is not None or self.max_duration_s is not None:
            d = item.duration_s
            if (
                d is None
                or (self.min_duration_s is not None and d < self.min_duration_s)
                or (self.max_duration_s is not None and d > self.max_duration_s)
            ):
                return False
        return True


@dataclass(frozen=True)
class IndexStats:
    version: str  # live version directory name, e.g. "v0003"
    previous_version: str | None  # what `rollback()` would return to
    count: int  # live items
    dim: int
    bundle_id: str  # bundle whose embeddings the live version holds
    serving_bundle_id: str  # bundle the store was opened for (queries are embedded with it)
    kind: str  # configured: flat / ivf / hnsw
    engine: str  # faiss / milvus
    index_type: str  # what FAISS actually holds now ("flat" while an ivf version is below its training minimum)
    index_total: int  # vectors inside FAISS, tombstones included
    tombstones: int  # deleted vectors still inside FAISS, filtered at query time until `compact()`
    writes_since_snapshot: int
    needs_compaction: bool  # many tombstones, or an ivf version that outgrew flat
    params: dict[str, Any]  # nlist / nprobe / efSearch
    gpu: bool
    rebuild: Any  # the current or last rebuild job's RebuildProgress, or None

    @property
    def bundle_mismatch(self) -> bool:
        return self.bundle_id != self.serving_bundle_id

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bundle_mismatch": self.bundle_mismatch}


def as_unit_rows(x: Any, dim: int, what: str = "embedding") -> np.ndarray:
    """(D,) or (Q, D) -> (Q, D) float32 rows of unit norm; BadRequest for a wrong shape, NaN or a zero vector."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != dim or a.shape[0] == 0:
        raise BadRequest(f"{what} must have shape ({dim},) or (n, {dim}), got {np.shape(x)}")
    if not np.isfinite(a).all():
        raise BadRequest(f"{what} contains NaN or infinity")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if (norms < 1e-12).any():
        raise BadRequest(f"{what} has a zero vector")
    # Normalised here, not trusted: inner product equals cosine only for unit vectors, and scores must be cosines.
    return np.ascontiguousarray(a / norms, dtype=np.float32)
