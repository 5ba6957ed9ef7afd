"""The REST face's JSON shapes: request bodies with the configured limits in their schema, and every response.

Request models are made per app from the settings' limits (`request_models`), so /openapi.json states the limits
the server enforces (k range, text length and count, the id pattern). Response models document what each route
returns; routes still build plain dicts (validating every answer would cost time on the hot path), and the
schema test (schemathesis against the live server) checks that the answers conform.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from blat_gateway.index.extra import MAX_CONDITIONS, MAX_IN
from blat_gateway.index.records import ID_PATTERN, MAX_K, MAX_TAGS, SearchFilter
from blat_gateway.settings import LimitSettings

# Declared in the schema, checked by blat_gateway.index.records.check_id (whose 400 says what is wrong in words).
ID = {
    "json_schema_extra": {"pattern": f"^{ID_PATTERN.pattern}$"},
    "description": "1-200 of A-Z a-z 0-9 . _ : / -; no empty, '.' or '..' segment between slashes",
}


Scalar = str | float | bool


class ExtraCondition(BaseModel):
    """Bounds on one key of `extra` (blat.proto's ExtraCondition): every one given must hold."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    eq: Scalar | None = Field(None, description="equal to this (the same kind: true is not 1)")
    in_: list[Scalar] | None = Field(None, alias="in", max_length=MAX_IN, description="equal to one of these")
    gt: str | float | None = Field(None, description="numbers against numbers, strings (ISO dates) against strings")
    gte: str | float | None = None
    lt: str | float | None = None
    lte: str | float | None = None


def request_models(limits: LimitSettings) -> SimpleNamespace:
    text_range = {"min_length": 1, "max_length": limits.max_text_chars}
    # What an item stores (server/blat_gateway/item_limits.py checks the same limits on both faces and in rebuilds).
    stored = SimpleNamespace(
        caption={
            "max_length": limits.max_caption_chars,
            "description": f"at most {limits.max_caption_chars} characters",
        },
        source_uri={
            "max_length": limits.max_source_uri_chars,
            "description": f"at most {limits.max_source_uri_chars} characters",
        },
        tags={
            "max_length": limits.max_tags,
            "description": f"at most {limits.max_tags} tags of {limits.max_tag_chars} characters",
        },
    )
    Tag = Annotated[str, Field(max_length=limits.max_tag_chars)]
    k_range = {"ge": 1, "le": limits.max_k, "description": f"results, 1-{limits.max_k}"}
    offset_range = {
        "ge": 0,
        "le": MAX_K - 1,
        "description": f"hits to skip first (page 2 of ten: 10); k + offset <= {MAX_K}",
    }

    class FilterBody(BaseModel):
        model_config = ConfigDict(extra="forbid")  # a misspelt condition must not silently match everything

        tags_any: list[str] = Field([], max_length=MAX_TAGS, description="items with at least one of these tags")
        tags_all: list[str] = Field([], max_length=MAX_TAGS, description="items with every one of these tags")
        source_prefix: str | None = Field(None, description="source_uri starts with this")
        min_duration_s: float | None = None
        max_duration_s: float | None = None
        extra: dict[str, ExtraCondition | str | float | bool] = Field(
            {},
            max_length=MAX_CONDITIONS,
            description="conditions on keys of the items' extra, all of which must hold: a bare value means eq "
            '({"licence": "CC0-1.0", "year": {"gte": 2020}})',
        )

        def to_filter(self) -> SearchFilter:
            extra = {k: v.model_dump(by_alias=True, exclude_none=True) if isinstance(v, BaseModel) else v
                     for k, v in self.extra.items()}  # fmt: skip
            return SearchFilter(
                tuple(self.tags_any),
                tuple(self.tags_all),
                self.source_prefix,
                self.min_duration_s,
                self.max_duration_s,
                extra,
            )

    class SearchTextBody(BaseModel):
        query: str = Field(description="free text", **text_range)
        k: int = Field(10, **k_range)
        offset: int = Field(0, **offset_range)
        filter: FilterBody | None = None

    class SearchTextsBody(BaseModel):
        queries: list[Annotated[str, Field(**text_range)]] = Field(
            min_length=1, max_length=limits.max_texts, description=f"1-{limits.max_texts} free-text queries"
        )
        k: int = Field(10, **k_range)
        offset: int = Field(0, **offset_range)
        filter: FilterBody | None = None

    class SearchItemBody(BaseModel):
        id: str = Field(**ID)
        k: int = Field(10, **k_range)
        offset: int = Field(0, **offset_range)
        filter: FilterBody | None = None

    class EmbedTextBody(BaseModel):
        texts: list[str] = Field(min_length=1, max_length=limits.max_texts, description="texts to embed")

    class OpenAIEmbeddingsBody(BaseModel):
        """POST /v1/embeddings as OpenAI, infinity, TEI and vLLM take it; `modality` is infinity's extension."""

        model: str = Field(description="the bundle: its id (name@version, see GET /v1/models) or its name")
        input: str | list[str] = Field(
            description="texts; with modality 'audio', encoded clips as base64 or data: URIs "
            f"(at most {limits.max_texts} texts or {limits.max_clips_per_request} clips)"
        )
        encoding_format: Literal["float", "base64"] = Field(
            "float", description="base64: each embedding as little-endian float32 bytes"
        )
        modality: Literal["text", "audio"] = "text"
        dimensions: int | None = Field(None, description="only the model's own dimension is accepted")
        user: str | None = Field(None, max_length=256, description="accepted and ignored")

    written = SimpleNamespace(
        extra={
            "description": f"metadata, a JSON object of at most {limits.max_extra_bytes} bytes; keys as filters "
            "name them (1-64 of A-Z a-z 0-9 _, not 'predicted_...')"
        },  # fmt: skip
        dedupe={"description": "refuse (409) the same sound stored under another id; without it, it is stored again"},
    )

    class AddFromPathBody(BaseModel):
        id: str = Field(**ID)
        path: str = Field(min_length=1, description="a file under one of the configured ingest roots")
        tags: list[Tag] = Field([], **stored.tags)
        caption: str = Field("", **stored.caption)
        source_uri: str = Field("", **stored.source_uri)
        upsert: bool = False
        extra: dict[str, Any] = Field({}, **written.extra)
        dedupe: bool = Field(False, **written.dedupe)

    class AudioIn(BaseModel):
        """blat.proto's Audio: an encoded clip, base64 (as proto3's JSON writes bytes)."""

        model_config = ConfigDict(extra="forbid")
        data: str = Field(min_length=1, description="the encoded file (WAV, FLAC, OGG, MP3), base64")
        filename: str = Field("", max_length=256)

    class AddItemBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: str = Field(**ID)
        audio: AudioIn | None = Field(None, description="the clip; or `path`")
        path: str | None = Field(None, min_length=1, description="a file under the ingest roots; or `audio`")
        tags: list[Tag] = Field([], **stored.tags)
        caption: str = Field("", **stored.caption)
        source_uri: str = Field("", **stored.source_uri)
        upsert: bool = False
        extra: dict[str, Any] = Field({}, **written.extra)
        dedupe: bool = Field(False, **written.dedupe)

    clips = {
        "min_length": 1,
        "max_length": limits.max_clips_per_request,
        "description": f"1-{limits.max_clips_per_request}, whose files together take at most "
        f"{limits.max_upload_bytes:,} bytes and last at most {limits.max_audio_seconds:g} s",
    }

    class AddItemsBody(BaseModel):
        items: list[AddItemBody] = Field(**clips)

    class TagClipsBody(BaseModel):
        audios: list[AudioIn] = Field(**clips)
        labels: list[str] = Field([], max_length=limits.max_labels, description="empty: the bundle's labels")
        top_k: int = Field(10, ge=1, le=limits.max_labels)
        window_s: float = Field(0.0, ge=0, le=limits.max_audio_seconds, description="> 0: tags per window too")
        hop_s: float = Field(0.0, ge=0, le=limits.max_audio_seconds, description="0: window_s")

    class RebuildBody(BaseModel):
        mode: Literal["replace", "merge"] = Field(
            description="replace: the new index holds only these items (the stored ones go); merge: they are added "
            "to the stored ones (an id in both takes the new entry). Required: a rebuild never replaces by default"
        )
        folder: str | None = Field(None, description="a folder under the ingest roots; ids are relative paths")
        manifest: str | None = Field(
            None, description="a JSON Lines file under the ingest roots: id, audio|path, tags, caption"
        )
        embeddings: str | None = Field(
            None,
            description="a finished embedding job's folder under the ingest roots "
            "(python -m blat_jobs.embed): precomputed, not embedded again",
        )
        dedupe: bool = Field(False, description="skip an entry with the sound of an earlier one")

    class StreamConfigBody(BaseModel):
        """The first message of a /v1/tag/stream WebSocket: StreamConfig's fields, with its defaults."""

        model_config = ConfigDict(extra="forbid")

        encoding: Literal["f32le", "s16le"] = Field(description="of the binary messages that follow: raw mono PCM")
        sample_rate: int = Field(ge=1, description="of the PCM (the server resamples it)")
        window_s: float = Field(2.0, gt=0, le=limits.max_audio_seconds)
        hop_s: float = Field(1.0, gt=0, le=limits.max_audio_seconds, description="at most window_s")
        top_k: int = Field(5, ge=1, le=limits.max_labels)
        labels: list[str] = Field([], max_length=limits.max_labels, description="empty: the bundle's labels")

    return SimpleNamespace(
        StreamConfigBody=StreamConfigBody,
        FilterBody=FilterBody,
        SearchTextBody=SearchTextBody,
        SearchItemBody=SearchItemBody,
        SearchTextsBody=SearchTextsBody,
        EmbedTextBody=EmbedTextBody,
        OpenAIEmbeddingsBody=OpenAIEmbeddingsBody,
        AddFromPathBody=AddFromPathBody,
        AddItemsBody=AddItemsBody,
        TagClipsBody=TagClipsBody,
        RebuildBody=RebuildBody,
        k=k_range,
        offset=offset_range,
        limit={"ge": 1, "le": limits.max_k, "description": f"items per page, 1-{limits.max_k}"},
        stored=stored,
        written=written,
        Tag=Tag,
    )


# -- responses ---------------------------------------------------------------------------------------------------
# Field names are blat.proto's (tests/server/test_vocabulary.py checks it): a proto string `X_json` is the JSON
# value `X` here, and a proto `Embedding {values}` a plain array.


class ErrorOut(BaseModel):
    code: str = Field(description="the gRPC status code name (NOT_FOUND, INVALID_ARGUMENT, ...): both faces' code")
    http_status: int = Field(description="the HTTP status REST answers with")
    reason: str = Field(description="the finer, stable name (bad_audio, read_only, overloaded, ...)")
    message: str
    details: dict[str, Any] | None = None


class ErrorBodyOut(BaseModel):
    error: ErrorOut


class ItemOut(BaseModel):
    id: str
    source_uri: str
    duration_s: float | None
    tags: list[str]
    caption: str
    content_hash: str
    added_at: str = Field(description="ISO 8601 UTC with milliseconds, as over gRPC")
    extra: dict[str, Any]


class ItemResultOut(BaseModel):
    id: str
    item: ItemOut | None = Field(None, description="what was stored, when it was")
    error: ErrorOut | None = Field(None, description="why not, when it was not")


class AddItemsOut(BaseModel):
    results: list[ItemResultOut] = Field(description="one per item, in order")


class ItemsPageOut(BaseModel):
    items: list[ItemOut]
    next_cursor: str = Field(description="pass as `cursor` for the next page; empty on the last page")
    index_version: str


class HitOut(BaseModel):
    id: str
    score: float = Field(description="cosine similarity")
    item: ItemOut


class HitsOut(BaseModel):
    hits: list[HitOut]
    bundle: str
    index_version: str


class SearchResultsOut(BaseModel):
    results: list[HitsOut] = Field(description="one per query, in order")


class LabelScoreOut(BaseModel):
    label: str
    score: float = Field(description="independent per-label probability")
    scorer: str = Field(
        description="'tagger': the bundle's supervised AudioSet head; 'tagger+zero_shot': the "
        "head's probability mixed with the zero-shot one (bundle.json "
        "tagger.zero_shot_weight); 'zero_shot': the label's prompt embedding against the "
        "audio embedding, calibrated"
    )


class TagWindowOut(BaseModel):
    start_s: float
    end_s: float
    tags: list[LabelScoreOut]


class TagsOut(BaseModel):
    tags: list[LabelScoreOut]
    windows: list[TagWindowOut]


class TagClipsOut(BaseModel):
    results: list[TagsOut] = Field(description="one per clip, in order")


class CaptionOut(BaseModel):
    text: str
    log_prob: float
    guide_tags: list[str] = Field(description="the AudioSet tags that guided the captioner: given, or predicted")
    tags_predicted: bool = Field(description="the guide tags were predicted by the bundle's tagger")


class CaptionsOut(BaseModel):
    captions: list[CaptionOut]


class EmbeddingsOut(BaseModel):
    embeddings: list[list[float]] = Field(description="one per input (a clip: one), unit norm")
    dim: int
    bundle: str


class OpenAIEmbeddingOut(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class OpenAIUsageOut(BaseModel):
    prompt_tokens: int = Field(description="0: the gateway does not meter tokens")
    total_tokens: int


class OpenAIEmbeddingsOut(BaseModel):
    object: Literal["list"]
    data: list[OpenAIEmbeddingOut]
    model: str
    usage: OpenAIUsageOut


class OpenAIModelOut(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelsOut(BaseModel):
    object: Literal["list"]
    data: list[OpenAIModelOut]


class DeletedOut(BaseModel):
    deleted: bool
    item: ItemOut


class JobOut(BaseModel):
    job_id: str = Field(description="what GET /v1/index/rebuild/{job_id} takes")
    state: str = Field(description="pending, running, validating, succeeded, failed or cancelled")
    done: int
    total: int
    error: str = Field(description="'' unless failed")
    version: str = Field(description="the index version it builds")
    added: int
    skipped: int
    skipped_reasons: list[str] = Field(description="the first few")
    recall: float | None = Field(description="recall@10 against exact search, once validated")
    started_at: str = Field(description="ISO 8601 UTC")
    finished_at: str = Field(description="ISO 8601 UTC; '' while it runs")
    unreadable: int = Field(
        description="entries that could not be read (undecodable, outside the ingest roots, "
        "over a stored-string limit), skipped: counted in `skipped` too"
    )


class StatsOut(BaseModel):
    items: int = Field(description="live items")
    deleted_pending: int = Field(description="deleted vectors not yet compacted out")
    index_kind: str = Field(description="configured: flat, ivf or hnsw")
    index_version: str
    bundle: str = Field(description="the bundle whose embeddings the index holds")
    dim: int
    previous_version: str = Field(description="what a rollback would restore; '' when none")
    index_engine: str = Field(description="faiss or milvus")
    serving_bundle: str = Field(description="the bundle queries are embedded with")
    bundle_mismatch: bool
    index_type: str = Field(description="what the engine holds now ('flat' while an ivf version is small)")
    index_total: int
    writes_since_snapshot: int
    needs_compaction: bool
    params: dict[str, Any]
    gpu: bool
    rebuild: JobOut | None


class InfoOut(BaseModel):
    bundle: dict[str, Any] = Field(description="the bundle's bundle.json")
    backend: str
    limits: dict[str, Any]


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    ready: bool
    detail: str
