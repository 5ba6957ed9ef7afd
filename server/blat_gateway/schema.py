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

from blat_gateway.index.records import ID_PATTERN, MAX_K, MAX_TAGS, SearchFilter
from blat_gateway.settings import LimitSettings

# Declared in the schema, checked by blat_gateway.index.records.check_id (whose 400 says what is wrong in words).
ID = {
    "json_schema_extra": {"pattern": f"^{ID_PATTERN.pattern}$"},
    "description": "1-200 of A-Z a-z 0-9 . _ : / -; no empty, '.' or '..' segment between slashes",
}


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

        def to_filter(self) -> SearchFilter:
            return SearchFilter(
                tuple(self.tags_any), tuple(self.tags_all), self.source_prefix, self.min_duration_s, self.max_duration_s
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

    class AddFromPathBody(BaseModel):
        id: str = Field(**ID)
        path: str = Field(min_length=1, description="a file under one of the configured ingest roots")
        tags: list[Tag] = Field([], **stored.tags)
        caption: str = Field("", **stored.caption)
        source_uri: str = Field("", **stored.source_uri)
        upsert: bool = False

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

    return SimpleNamespace(
        FilterBody=FilterBody,
        SearchTextBody=SearchTextBody,
        SearchItemBody=SearchItemBody,
        SearchTextsBody=SearchTextsBody,
        EmbedTextBody=EmbedTextBody,
        OpenAIEmbeddingsBody=OpenAIEmbeddingsBody,
        AddFromPathBody=AddFromPathBody,
        RebuildBody=RebuildBody,
        k=k_range,
        offset=offset_range,
        limit={"ge": 1, "le": limits.max_k, "description": f"items per page, 1-{limits.max_k}"},
        stored=stored,
        Tag=Tag,
    )


# -- responses ---------------------------------------------------------------------------------------------------


class ItemOut(BaseModel):
    id: str
    source_uri: str
    duration_s: float | None
    tags: list[str]
    caption: str
    content_hash: str
    added_at: str = Field(description="ISO 8601 UTC with milliseconds, as over gRPC")
    extra: dict[str, Any]


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


class CaptionOut(BaseModel):
    text: str
    log_prob: float
    guide_tags: list[str] = Field(description="the AudioSet tags that guided the captioner: given, or predicted")
    tags_predicted: bool = Field(description="the guide tags were predicted by the bundle's tagger")


class CaptionsOut(BaseModel):
    captions: list[CaptionOut]


class AudioEmbeddingOut(BaseModel):
    embedding: list[float]
    dim: int
    bundle: str


class TextEmbeddingsOut(BaseModel):
    embeddings: list[list[float]]
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
    version: str
    state: str
    done: int
    total: int
    added: int
    skipped: int
    skipped_reasons: list[str]
    recall: float | None
    error: str | None
    started_at: float
    finished_at: float | None
    unreadable: int = Field(
        description="entries that could not be read (undecodable, outside the ingest roots, "
        "over a stored-string limit), skipped: counted in `skipped` too"
    )


class StatsOut(BaseModel):
    version: str
    previous_version: str | None
    count: int
    dim: int
    bundle_id: str
    serving_bundle_id: str
    kind: str
    index_type: str
    index_total: int
    tombstones: int
    writes_since_snapshot: int
    needs_compaction: bool
    params: dict[str, Any]
    gpu: bool
    rebuild: dict[str, Any] | None
    bundle_mismatch: bool


class InfoOut(BaseModel):
    bundle: dict[str, Any] = Field(description="the bundle's bundle.json")
    backend: str
    limits: dict[str, Any]


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    ready: bool
    detail: str
