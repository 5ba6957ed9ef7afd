from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Audio(_message.Message):
    __slots__ = ("data", "filename")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    filename: str
    def __init__(self, data: _Optional[bytes] = ..., filename: _Optional[str] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("tags_any", "tags_all", "source_prefix", "min_duration_s", "max_duration_s", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ExtraCondition
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ExtraCondition, _Mapping]] = ...) -> None: ...
    TAGS_ANY_FIELD_NUMBER: _ClassVar[int]
    TAGS_ALL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    tags_any: _containers.RepeatedScalarFieldContainer[str]
    tags_all: _containers.RepeatedScalarFieldContainer[str]
    source_prefix: str
    min_duration_s: float
    max_duration_s: float
    extra: _containers.MessageMap[str, ExtraCondition]
    def __init__(self, tags_any: _Optional[_Iterable[str]] = ..., tags_all: _Optional[_Iterable[str]] = ..., source_prefix: _Optional[str] = ..., min_duration_s: _Optional[float] = ..., max_duration_s: _Optional[float] = ..., extra: _Optional[_Mapping[str, ExtraCondition]] = ...) -> None: ...

class ExtraCondition(_message.Message):
    __slots__ = ("eq", "gt", "gte", "lt", "lte")
    EQ_FIELD_NUMBER: _ClassVar[int]
    IN_FIELD_NUMBER: _ClassVar[int]
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    eq: _struct_pb2.Value
    gt: _struct_pb2.Value
    gte: _struct_pb2.Value
    lt: _struct_pb2.Value
    lte: _struct_pb2.Value
    def __init__(self, eq: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., gt: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., gte: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., lt: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., lte: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., **kwargs) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "source_uri", "duration_s", "tags", "caption", "content_hash", "added_at", "extra_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    ADDED_AT_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    source_uri: str
    duration_s: float
    tags: _containers.RepeatedScalarFieldContainer[str]
    caption: str
    content_hash: str
    added_at: str
    extra_json: str
    def __init__(self, id: _Optional[str] = ..., source_uri: _Optional[str] = ..., duration_s: _Optional[float] = ..., tags: _Optional[_Iterable[str]] = ..., caption: _Optional[str] = ..., content_hash: _Optional[str] = ..., added_at: _Optional[str] = ..., extra_json: _Optional[str] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "item")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    item: Item
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., item: _Optional[_Union[Item, _Mapping]] = ...) -> None: ...

class SearchTextRequest(_message.Message):
    __slots__ = ("query", "k", "filter", "offset")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    query: str
    k: int
    filter: Filter
    offset: int
    def __init__(self, query: _Optional[str] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., offset: _Optional[int] = ...) -> None: ...

class SearchTextsRequest(_message.Message):
    __slots__ = ("queries", "k", "filter", "offset")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedScalarFieldContainer[str]
    k: int
    filter: Filter
    offset: int
    def __init__(self, queries: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., offset: _Optional[int] = ...) -> None: ...

class SearchTextsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...

class SearchAudioRequest(_message.Message):
    __slots__ = ("audio", "k", "filter", "offset")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    k: int
    filter: Filter
    offset: int
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., offset: _Optional[int] = ...) -> None: ...

class SearchItemRequest(_message.Message):
    __slots__ = ("id", "k", "filter", "offset")
    ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    id: str
    k: int
    filter: Filter
    offset: int
    def __init__(self, id: _Optional[str] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., offset: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "bundle", "index_version")
    HITS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    bundle: str
    index_version: str
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., bundle: _Optional[str] = ..., index_version: _Optional[str] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score", "scorer")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    scorer: str
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., scorer: _Optional[str] = ...) -> None: ...

class TagRequest(_message.Message):
    __slots__ = ("audio", "labels", "top_k", "window_s", "hop_s")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    HOP_S_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    labels: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    window_s: float
    hop_s: float
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., window_s: _Optional[float] = ..., hop_s: _Optional[float] = ...) -> None: ...

class TagWindow(_message.Message):
    __slots__ = ("start_s", "end_s", "tags")
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    start_s: float
    end_s: float
    tags: _containers.RepeatedCompositeFieldContainer[LabelScore]
    def __init__(self, start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., tags: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ...) -> None: ...

class TagResponse(_message.Message):
    __slots__ = ("tags", "windows")
    TAGS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedCompositeFieldContainer[LabelScore]
    windows: _containers.RepeatedCompositeFieldContainer[TagWindow]
    def __init__(self, tags: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., windows: _Optional[_Iterable[_Union[TagWindow, _Mapping]]] = ...) -> None: ...

class TagClipsRequest(_message.Message):
    __slots__ = ("audios", "labels", "top_k", "window_s", "hop_s")
    AUDIOS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    HOP_S_FIELD_NUMBER: _ClassVar[int]
    audios: _containers.RepeatedCompositeFieldContainer[Audio]
    labels: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    window_s: float
    hop_s: float
    def __init__(self, audios: _Optional[_Iterable[_Union[Audio, _Mapping]]] = ..., labels: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., window_s: _Optional[float] = ..., hop_s: _Optional[float] = ...) -> None: ...

class TagClipsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TagResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[TagResponse, _Mapping]]] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("sample_rate", "encoding", "window_s", "hop_s", "top_k", "labels")
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    HOP_S_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    sample_rate: int
    encoding: str
    window_s: float
    hop_s: float
    top_k: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sample_rate: _Optional[int] = ..., encoding: _Optional[str] = ..., window_s: _Optional[float] = ..., hop_s: _Optional[float] = ..., top_k: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamTagRequest(_message.Message):
    __slots__ = ("config", "pcm")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    pcm: bytes
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., pcm: _Optional[bytes] = ...) -> None: ...

class CaptionRequest(_message.Message):
    __slots__ = ("audio", "tags", "n_best", "beam_size")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    N_BEST_FIELD_NUMBER: _ClassVar[int]
    BEAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    tags: _containers.RepeatedScalarFieldContainer[str]
    n_best: int
    beam_size: int
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., n_best: _Optional[int] = ..., beam_size: _Optional[int] = ...) -> None: ...

class Caption(_message.Message):
    __slots__ = ("text", "log_prob", "guide_tags", "tags_predicted")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOG_PROB_FIELD_NUMBER: _ClassVar[int]
    GUIDE_TAGS_FIELD_NUMBER: _ClassVar[int]
    TAGS_PREDICTED_FIELD_NUMBER: _ClassVar[int]
    text: str
    log_prob: float
    guide_tags: _containers.RepeatedScalarFieldContainer[str]
    tags_predicted: bool
    def __init__(self, text: _Optional[str] = ..., log_prob: _Optional[float] = ..., guide_tags: _Optional[_Iterable[str]] = ..., tags_predicted: bool = ...) -> None: ...

class CaptionResponse(_message.Message):
    __slots__ = ("captions",)
    CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    captions: _containers.RepeatedCompositeFieldContainer[Caption]
    def __init__(self, captions: _Optional[_Iterable[_Union[Caption, _Mapping]]] = ...) -> None: ...

class EmbedAudioRequest(_message.Message):
    __slots__ = ("audio",)
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ...) -> None: ...

class EmbedTextRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "dim", "bundle")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    dim: int
    bundle: str
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., dim: _Optional[int] = ..., bundle: _Optional[str] = ...) -> None: ...

class AddItemRequest(_message.Message):
    __slots__ = ("id", "audio", "path", "tags", "caption", "source_uri", "upsert", "extra_json", "dedupe")
    ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    UPSERT_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_FIELD_NUMBER: _ClassVar[int]
    id: str
    audio: Audio
    path: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    caption: str
    source_uri: str
    upsert: bool
    extra_json: str
    dedupe: bool
    def __init__(self, id: _Optional[str] = ..., audio: _Optional[_Union[Audio, _Mapping]] = ..., path: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., caption: _Optional[str] = ..., source_uri: _Optional[str] = ..., upsert: bool = ..., extra_json: _Optional[str] = ..., dedupe: bool = ...) -> None: ...

class AddItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[AddItemRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[AddItemRequest, _Mapping]]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "http_status", "reason", "message", "details_json")
    CODE_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    code: str
    http_status: int
    reason: str
    message: str
    details_json: str
    def __init__(self, code: _Optional[str] = ..., http_status: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., details_json: _Optional[str] = ...) -> None: ...

class ItemResult(_message.Message):
    __slots__ = ("id", "item", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    item: Item
    error: Error
    def __init__(self, id: _Optional[str] = ..., item: _Optional[_Union[Item, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class AddItemsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ItemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ItemResult, _Mapping]]] = ...) -> None: ...

class ItemRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("filter", "limit", "cursor")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    filter: Filter
    limit: int
    cursor: str
    def __init__(self, filter: _Optional[_Union[Filter, _Mapping]] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ItemsPage(_message.Message):
    __slots__ = ("items", "next_cursor", "index_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    next_cursor: str
    index_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., index_version: _Optional[str] = ...) -> None: ...

class DeleteItemResponse(_message.Message):
    __slots__ = ("deleted", "item")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    item: Item
    def __init__(self, deleted: bool = ..., item: _Optional[_Union[Item, _Mapping]] = ...) -> None: ...

class RebuildRequest(_message.Message):
    __slots__ = ("folder", "manifest", "embeddings", "mode", "dedupe")
    FOLDER_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_FIELD_NUMBER: _ClassVar[int]
    folder: str
    manifest: str
    embeddings: str
    mode: str
    dedupe: bool
    def __init__(self, folder: _Optional[str] = ..., manifest: _Optional[str] = ..., embeddings: _Optional[str] = ..., mode: _Optional[str] = ..., dedupe: bool = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "done", "total", "error", "version", "added", "skipped", "skipped_reasons", "recall", "started_at", "finished_at", "unreadable")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_REASONS_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    done: int
    total: int
    error: str
    version: str
    added: int
    skipped: int
    skipped_reasons: _containers.RepeatedScalarFieldContainer[str]
    recall: float
    started_at: str
    finished_at: str
    unreadable: int
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., error: _Optional[str] = ..., version: _Optional[str] = ..., added: _Optional[int] = ..., skipped: _Optional[int] = ..., skipped_reasons: _Optional[_Iterable[str]] = ..., recall: _Optional[float] = ..., started_at: _Optional[str] = ..., finished_at: _Optional[str] = ..., unreadable: _Optional[int] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("items", "deleted_pending", "index_kind", "index_version", "bundle", "dim", "previous_version", "index_engine", "serving_bundle", "bundle_mismatch", "index_type", "index_total", "writes_since_snapshot", "needs_compaction", "params_json", "gpu", "rebuild")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DELETED_PENDING_FIELD_NUMBER: _ClassVar[int]
    INDEX_KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_ENGINE_FIELD_NUMBER: _ClassVar[int]
    SERVING_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_TOTAL_FIELD_NUMBER: _ClassVar[int]
    WRITES_SINCE_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    NEEDS_COMPACTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    REBUILD_FIELD_NUMBER: _ClassVar[int]
    items: int
    deleted_pending: int
    index_kind: str
    index_version: str
    bundle: str
    dim: int
    previous_version: str
    index_engine: str
    serving_bundle: str
    bundle_mismatch: bool
    index_type: str
    index_total: int
    writes_since_snapshot: int
    needs_compaction: bool
    params_json: str
    gpu: bool
    rebuild: Job
    def __init__(self, items: _Optional[int] = ..., deleted_pending: _Optional[int] = ..., index_kind: _Optional[str] = ..., index_version: _Optional[str] = ..., bundle: _Optional[str] = ..., dim: _Optional[int] = ..., previous_version: _Optional[str] = ..., index_engine: _Optional[str] = ..., serving_bundle: _Optional[str] = ..., bundle_mismatch: bool = ..., index_type: _Optional[str] = ..., index_total: _Optional[int] = ..., writes_since_snapshot: _Optional[int] = ..., needs_compaction: bool = ..., params_json: _Optional[str] = ..., gpu: bool = ..., rebuild: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("bundle_json", "backend", "limits_json")
    BUNDLE_JSON_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LIMITS_JSON_FIELD_NUMBER: _ClassVar[int]
    bundle_json: str
    backend: str
    limits_json: str
    def __init__(self, bundle_json: _Optional[str] = ..., backend: _Optional[str] = ..., limits_json: _Optional[str] = ...) -> None: ...
