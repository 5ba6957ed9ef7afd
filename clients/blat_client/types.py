"""What the gateway answers, as typed values. Both transports build exactly these, field for field.

`to_dict()` gives plain JSON-ready data (the CLI's --json output). Times are ISO 8601 UTC strings with milliseconds
("2026-12-03T06:45:45.123Z"), as the server writes them on both faces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blat_client.errors import ClientError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class _Value:
    def to_dict(self: DataclassInstance) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Item(_Value):
    """One stored clip's metadata."""

    id: str
    source_uri: str = ""  # where the audio came from (a server-side path, or what the uploader said)
    duration_s: float = 0.0
    tags: tuple[str, ...] = ()
    caption: str = ""
    content_hash: str = ""  # sha256 of the decoded audio (add with dedupe=True to refuse a second copy of a sound)
    added_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict, hash=False)  # metadata: the caller's, and predicted tags


@dataclass(frozen=True)
class Hit(_Value):
    id: str
    score: float  # cosine similarity in the shared space, higher is closer
    item: Item


@dataclass(frozen=True)
class SearchResult(_Value):
    hits: list[Hit]
    bundle: str  # the model bundle that embedded the query
    index_version: str  # the index version that answered

    @property
    def ids(self) -> list[str]:
        return [h.id for h in self.hits]


@dataclass(frozen=True)
class AddReport(_Value):
    """What `add_items` did: ids added, ids already stored (skipped: a rerun resumes), and failures."""

    added: list[str]
    skipped: list[str]
    failed: list[dict[str, str]]  # {"id", "reason"}


@dataclass(frozen=True)
class ItemResult(_Value):
    """One item of a batch add: what was stored, or why it was not (the error a single add would have raised)."""

    id: str
    item: Item | None
    error: ClientError | None = None


@dataclass(frozen=True)
class ItemsPage(_Value):
    items: list[Item]
    next_cursor: str  # pass as `cursor` for the next page; "" on the last page
    index_version: str


@dataclass(frozen=True)
class LabelScore(_Value):
    label: str
    score: float  # independent per-label probability-like score in [0, 1]
    scorer: str = ""  # "tagger" (supervised AudioSet head), "tagger+zero_shot" (the two mixed), "zero_shot" (prompt)


@dataclass(frozen=True)
class TagWindow(_Value):
    start_s: float
    end_s: float
    tags: list[LabelScore]


@dataclass(frozen=True)
class Tags(_Value):
    tags: list[LabelScore]  # the whole clip, best first
    windows: list[TagWindow] = field(default_factory=list)  # only when window_s > 0 was asked for


@dataclass(frozen=True)
class Caption(_Value):
    text: str
    log_prob: float  # the beam's total log-probability
    guide_tags: list[str] = field(default_factory=list)  # the AudioSet tags that guided it: given, or predicted
    tags_predicted: bool = False  # the guide tags were predicted by the bundle's tagger (none were given)


@dataclass(frozen=True)
class Job(_Value):
    """A background index rebuild. `state`: pending, running, validating, succeeded, failed or cancelled."""

    job_id: str
    state: str
    done: int  # entries consumed, skipped ones included
    total: int
    added: int
    skipped: int
    error: str  # "" unless failed
    version: str  # the index version it builds

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Stats(_Value):
    items: int  # live items
    deleted_pending: int  # deletions not yet compacted out of the vector index
    index_kind: str  # flat, ivf or hnsw
    index_version: str
    previous_version: str  # what rollback() would restore; "" when there is none
    dim: int
    bundle: str
    index_engine: str  # faiss or milvus


@dataclass(frozen=True)
class Info(_Value):
    bundle: dict[str, Any]  # the served bundle's bundle.json
    backend: str  # onnxruntime or triton
    limits: dict[str, Any]  # the server's request limits (sizes, counts, timeouts)
