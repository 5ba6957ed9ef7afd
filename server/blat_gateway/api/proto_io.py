"""Domain values to and from blat_wire messages: what the gRPC adapters share."""

from __future__ import annotations

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
    )


def k_filter_offset(req) -> tuple[int, SearchFilter | None, int]:
    """A search request's k (unset: 10; a k that was sent is checked, 0 included, as over REST), filter, offset."""
    return (req.k if req.HasField("k") else 10), search_filter(req.filter), req.offset


def item(it: ItemRecord) -> pb.Item:
    return pb.Item(
        id=it.id,
        source_uri=it.source_uri,
        duration_s=it.duration_s or 0.0,
        tags=list(it.tags),
        caption=it.caption,
        content_hash=it.content_hash,
        added_at=iso_time(it.added_at),
    )


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
    return pb.Job(
        job_id=p.version,
        state=p.state,
        done=p.done,
        total=p.total,
        error=p.error or "",
        version=p.version,
        added=p.added,
        skipped=p.skipped,
    )


def stats(s) -> pb.StatsResponse:
    return pb.StatsResponse(
        items=s.count,
        deleted_pending=s.tombstones,
        index_kind=s.kind,
        index_version=s.version,
        bundle=s.bundle_id,
        dim=s.dim,
        previous_version=s.previous_version or "",
        index_engine=s.engine,
    )
