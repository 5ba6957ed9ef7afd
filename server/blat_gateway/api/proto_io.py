"""Domain values to and from blat_wire messages: what the gRPC adapters share."""

from __future__ import annotations

import json

from google.protobuf.json_format import MessageToDict

from blat_gateway.api.json_io import job_json, stats_json
from blat_gateway.errors import BadRequest, ServiceError
from blat_gateway.index import ItemRecord, SearchFilter
from blat_gateway.index.records import iso_time
from blat_gateway.service import Gateway
from blat_gateway.services.search import Found
from blat_gateway.tagging import LabelScore
from blat_wire import blat_pb2 as pb


def search_filter(f: pb.Filter) -> SearchFilter | None:
    if not f.ByteSize():
        return None
    return SearchFilter(
        tuple(f.tags_any),
        tuple(f.tags_all),
        f.source_prefix or None,
        f.min_duration_s or None,
        f.max_duration_s or None,
        {key: MessageToDict(cond) for key, cond in f.extra.items()},  # REST's form: {"eq": ..., "in": [...]}
    )


def k_filter_offset(req) -> tuple[int, SearchFilter | None, int]:
    """A search request's k (unset: 10; a k that was sent is checked, 0 included, as over REST), filter, offset."""
    return (req.k if req.HasField("k") else 10), search_filter(req.filter), req.offset


def extra_json(extra: dict) -> str:
    """Compact UTF-8 JSON, the form limits.max_extra_bytes measures; a lone surrogate (which UTF-8 cannot carry)
    becomes its JSON escape, so the text stays valid JSON of the same value."""
    text = json.dumps(extra, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def item(it: ItemRecord) -> pb.Item:
    return pb.Item(
        id=it.id,
        source_uri=it.source_uri,
        duration_s=it.duration_s or 0.0,
        tags=list(it.tags),
        caption=it.caption,
        content_hash=it.content_hash,
        added_at=iso_time(it.added_at),
        extra_json=extra_json(it.extra),
    )


def add_item(req: pb.AddItemRequest) -> dict:
    """An AddItemRequest as ItemsService.add's keyword arguments."""
    source = req.WhichOneof("source")
    if source is None:
        raise BadRequest(f"item {req.id!r}: give audio or a server-side path")
    try:
        extra = json.loads(req.extra_json) if req.extra_json else {}
    except ValueError as e:
        raise BadRequest(f"item {req.id!r}: extra_json is not valid JSON: {e}") from None
    return {
        "item_id": req.id,
        "data": req.audio.data if source == "audio" else None,
        "path": req.path if source == "path" else None,
        "tags": list(req.tags),
        "caption": req.caption,
        "source_uri": req.source_uri,
        "upsert": req.upsert,
        "extra": extra,
        "dedupe": req.dedupe,
    }


def hits(gw: Gateway, found: Found) -> pb.SearchResponse:
    return pb.SearchResponse(
        hits=[pb.Hit(id=h.id, score=h.score, item=item(h.item)) for h in found.hits],
        bundle=gw.manifest.id,
        index_version=found.index_version,
    )


def scores(tags: tuple[LabelScore, ...]) -> list[pb.LabelScore]:
    return [pb.LabelScore(label=t.label, score=t.score, scorer=t.scorer) for t in tags]


def tag_window(w) -> pb.TagWindow:
    return pb.TagWindow(start_s=w.start_s, end_s=w.end_s, tags=scores(w.tags))


def job(p) -> pb.Job:
    fields = job_json(p)
    return pb.Job(**{k: v for k, v in fields.items() if v is not None})  # recall: unset until measured


def stats(s) -> pb.StatsResponse:
    fields = stats_json(s)
    rebuild = fields.pop("rebuild")
    params = fields.pop("params")
    out = pb.StatsResponse(**fields, params_json=json.dumps(params))
    if rebuild is not None:
        out.rebuild.CopyFrom(pb.Job(**{k: v for k, v in rebuild.items() if v is not None}))
    return out


def error(e: ServiceError) -> pb.Error:
    details = json.dumps(e.details, default=str) if e.details else ""
    return pb.Error(code=e.grpc_code, http_status=e.http_status, reason=e.code, message=e.message, details_json=details)
