"""The gRPC transport (service blat.v1.Blat in blat_client/_wire/blat.proto). Each operation is described as a
`GrpcCall` (method, request message, parser) and sent by `send` (blocking channel) or `asend` (grpc.aio channel).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
import grpc.aio
from google.protobuf import json_format

from blat_client._wire import blat_pb2 as pb
from blat_client._wire import blat_pb2_grpc as pb_grpc
from blat_client.audio import Audio, read_audio
from blat_client.errors import GRPC_TO_HTTP, ClientError, no_answer, parse_details, parse_retry_after
from blat_client.filters import Filter, check_filter, extra_conditions
from blat_client.types import (
    Caption,
    Hit,
    Info,
    Item,
    ItemResult,
    ItemsPage,
    Job,
    LabelScore,
    SearchResult,
    Stats,
    Tags,
    TagWindow,
)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # uploads are capped by the server's limits, not by the channel


@dataclass
class GrpcCall:
    method: str
    request: Any
    parse: Callable[[Any], Any]


def item(it: pb.Item) -> Item:
    return Item(
        id=it.id,
        source_uri=it.source_uri,
        duration_s=it.duration_s,
        tags=tuple(it.tags),
        caption=it.caption,
        content_hash=it.content_hash,
        added_at=it.added_at,
        extra=_json_object(it.extra_json),
    )


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {}


def item_results(r: pb.AddItemsResponse) -> list[ItemResult]:
    out = []
    for x in r.results:
        error = None
        if x.HasField("error"):
            e = x.error
            details = _json_object(e.details_json)
            error = ClientError(e.http_status, e.code, e.message, details, None, e.reason)
        out.append(ItemResult(x.id, item(x.item) if x.HasField("item") else None, error))
    return out


def search_result(r: pb.SearchResponse) -> SearchResult:
    return SearchResult([Hit(h.id, h.score, item(h.item)) for h in r.hits], r.bundle, r.index_version)


def scores(rows: Iterable[pb.LabelScore]) -> list[LabelScore]:
    return [LabelScore(t.label, t.score, t.scorer) for t in rows]


def window(w: pb.TagWindow) -> TagWindow:
    return TagWindow(w.start_s, w.end_s, scores(w.tags))


def job(j: pb.Job) -> Job:
    return Job(
        job_id=j.job_id,
        state=j.state,
        done=j.done,
        total=j.total,
        added=j.added,
        skipped=j.skipped,
        error=j.error,
        version=j.version,
    )


def stats(s: pb.StatsResponse) -> Stats:
    return Stats(
        items=s.items,
        deleted_pending=s.deleted_pending,
        index_kind=s.index_kind,
        index_version=s.index_version,
        previous_version=s.previous_version,
        dim=s.dim,
        bundle=s.bundle,
        index_engine=s.index_engine,
    )


def _filter(flt: Filter | None) -> pb.Filter | None:
    checked = check_filter(flt)
    if not checked:
        return None
    if "extra" in checked:
        checked["extra"] = extra_conditions(checked["extra"])
    try:
        return cast(pb.Filter, json_format.ParseDict(checked, pb.Filter()))
    except json_format.ParseError as e:
        raise ValueError(f"filter: {e}") from None


def _error(e: grpc.RpcError) -> ClientError:
    code = e.code() if hasattr(e, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    trailing = dict(e.trailing_metadata() or ()) if hasattr(e, "trailing_metadata") else {}
    details = e.details() if hasattr(e, "details") else str(e)
    reason = trailing.get("blat-error-reason", "")
    if not reason:  # not the gateway's answer: gRPC's own (no connection, the client's deadline), or a proxy's
        if name == "UNAVAILABLE" and "failed to connect" in (details or "").lower():
            return no_answer("unreachable", details)
        if name == "DEADLINE_EXCEEDED":
            return no_answer("timeout", details or "no answer in time")
    try:
        status = int(trailing.get("blat-http-status") or GRPC_TO_HTTP.get(name, 500))
    except ValueError:
        status = GRPC_TO_HTTP.get(name, 500)
    retry_after = parse_retry_after(trailing.get("retry-after"))
    return ClientError(
        status, name, details or "", parse_details(trailing.get("blat-error-details")), retry_after, reason
    )


def _add_request(
    item_id: str,
    audio: Audio | None,
    path: str | None,
    tags_: Sequence[str],
    caption: str,
    source_uri: str,
    upsert: bool,
    extra: Mapping[str, Any] | None,
    dedupe: bool,
) -> pb.AddItemRequest:
    req = pb.AddItemRequest(
        id=item_id,
        tags=list(tags_),
        caption=caption,
        source_uri=source_uri,
        upsert=upsert,
        extra_json=json.dumps(dict(extra)) if extra else "",
        dedupe=dedupe,
    )
    if audio is not None:
        req.audio.CopyFrom(pb.Audio(data=read_audio(audio)))
    elif path is not None:
        req.path = str(path)
    else:
        raise ValueError("give exactly one of: audio, path")
    return req


class GrpcTransport:
    name = "grpc"

    def __init__(self, address: str, api_key: str | None, timeout: float):
        self.address, self.timeout = address, timeout
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        self._channel: grpc.Channel | None = None
        self._achannel: grpc.aio.Channel | None = None  # belongs to the event loop it is first used in
        self._sync: pb_grpc.BlatStub | None = None
        self._async: pb_grpc.BlatStub | None = None

    def _stub(self) -> pb_grpc.BlatStub:
        if self._sync is None:
            self._channel = grpc.insecure_channel(self.address, options=self._options)
            self._sync = pb_grpc.BlatStub(self._channel)  # type: ignore[no-untyped-call]  # generated, untyped
        return self._sync

    def _astub(self) -> pb_grpc.BlatStub:
        if self._async is None:
            self._achannel = grpc.aio.insecure_channel(self.address, options=self._options)
            self._async = pb_grpc.BlatStub(self._achannel)  # type: ignore[no-untyped-call]
        return self._async

    # -- sending ---------------------------------------------------------------------------------------------------
    def send(self, call: GrpcCall) -> Any:
        try:
            return call.parse(
                getattr(self._stub(), call.method)(call.request, timeout=self.timeout, metadata=self.metadata)
            )
        except grpc.RpcError as e:
            raise _error(e) from None

    async def asend(self, call: GrpcCall) -> Any:
        try:
            return call.parse(
                await getattr(self._astub(), call.method)(call.request, timeout=self.timeout, metadata=self.metadata)
            )
        except grpc.RpcError as e:
            raise _error(e) from None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    async def aclose(self) -> None:
        if self._achannel is not None:
            await self._achannel.close()

    # -- streaming tags --------------------------------------------------------------------------------------------
    @staticmethod
    def _config(
        sample_rate: int, encoding: str, window_s: float, hop_s: float, top_k: int, labels: Sequence[str]
    ) -> pb.StreamTagRequest:
        return pb.StreamTagRequest(
            config=pb.StreamConfig(
                sample_rate=sample_rate,
                encoding=encoding,
                window_s=window_s,
                hop_s=hop_s,
                top_k=top_k,
                labels=list(labels),
            )
        )

    def stream_tag(
        self,
        chunks: Iterable[bytes],
        sample_rate: int,
        encoding: str,
        window_s: float,
        hop_s: float,
        top_k: int,
        labels: Sequence[str],
        timeout: float | None,
    ) -> Iterator[TagWindow]:
        def requests() -> Iterator[pb.StreamTagRequest]:
            yield self._config(sample_rate, encoding, window_s, hop_s, top_k, labels)
            for chunk in chunks:
                yield pb.StreamTagRequest(pcm=bytes(chunk))

        try:
            for w in self._stub().StreamTag(requests(), timeout=timeout, metadata=self.metadata):
                yield window(w)
        except grpc.RpcError as e:
            raise _error(e) from None

    async def astream_tag(
        self,
        chunks: Iterable[bytes] | AsyncIterable[bytes],
        sample_rate: int,
        encoding: str,
        window_s: float,
        hop_s: float,
        top_k: int,
        labels: Sequence[str],
        timeout: float | None,
    ) -> AsyncIterator[TagWindow]:
        async def requests() -> AsyncIterator[pb.StreamTagRequest]:
            yield self._config(sample_rate, encoding, window_s, hop_s, top_k, labels)
            if isinstance(chunks, AsyncIterable):
                async for chunk in chunks:
                    yield pb.StreamTagRequest(pcm=bytes(chunk))
            else:
                for chunk in chunks:
                    yield pb.StreamTagRequest(pcm=bytes(chunk))

        try:
            async for w in self._astub().StreamTag(requests(), timeout=timeout, metadata=self.metadata):
                yield window(w)
        except grpc.RpcError as e:
            raise _error(e) from None

    # -- operations ------------------------------------------------------------------------------------------------
    def search_text(self, query: str, k: int, flt: Filter | None, offset: int = 0) -> GrpcCall:
        req = pb.SearchTextRequest(query=query, k=k, offset=offset, filter=_filter(flt))
        return GrpcCall("SearchText", req, search_result)

    def search_texts(self, queries: Sequence[str], k: int, flt: Filter | None, offset: int = 0) -> GrpcCall:
        req = pb.SearchTextsRequest(queries=list(queries), k=k, offset=offset, filter=_filter(flt))
        return GrpcCall("SearchTexts", req, lambda r: [search_result(x) for x in r.results])

    def search_audio(self, audio: Audio, k: int, flt: Filter | None, offset: int = 0) -> GrpcCall:
        req = pb.SearchAudioRequest(audio=pb.Audio(data=read_audio(audio)), k=k, offset=offset, filter=_filter(flt))
        return GrpcCall("SearchAudio", req, search_result)

    def search_item(self, item_id: str, k: int, flt: Filter | None, offset: int = 0) -> GrpcCall:
        req = pb.SearchItemRequest(id=item_id, k=k, offset=offset, filter=_filter(flt))
        return GrpcCall("SearchItem", req, search_result)

    def tag(self, audio: Audio, labels: Sequence[str], top_k: int, window_s: float, hop_s: float) -> GrpcCall:
        req = pb.TagRequest(
            audio=pb.Audio(data=read_audio(audio)), labels=list(labels), top_k=top_k, window_s=window_s, hop_s=hop_s
        )
        return GrpcCall("Tag", req, lambda r: Tags(scores(r.tags), [window(w) for w in r.windows]))

    def tag_clips(
        self, audios: Sequence[Audio], labels: Sequence[str], top_k: int, window_s: float, hop_s: float
    ) -> GrpcCall:
        req = pb.TagClipsRequest(
            audios=[pb.Audio(data=read_audio(a)) for a in audios],
            labels=list(labels),
            top_k=top_k,
            window_s=window_s,
            hop_s=hop_s,
        )
        return GrpcCall(
            "TagClips", req, lambda r: [Tags(scores(x.tags), [window(w) for w in x.windows]) for x in r.results]
        )

    def caption(self, audio: Audio, tags_: Sequence[str], n_best: int, beam_size: int) -> GrpcCall:
        req = pb.CaptionRequest(
            audio=pb.Audio(data=read_audio(audio)), tags=list(tags_), n_best=n_best, beam_size=beam_size
        )
        return GrpcCall(
            "Caption",
            req,
            lambda r: [Caption(c.text, c.log_prob, list(c.guide_tags), c.tags_predicted) for c in r.captions],
        )

    def embed_audio(self, audio: Audio) -> GrpcCall:
        return GrpcCall(
            "EmbedAudio",
            pb.EmbedAudioRequest(audio=pb.Audio(data=read_audio(audio))),
            lambda r: list(r.embeddings[0].values),
        )

    def embed_text(self, texts: Sequence[str]) -> GrpcCall:
        return GrpcCall(
            "EmbedText", pb.EmbedTextRequest(texts=list(texts)), lambda r: [list(e.values) for e in r.embeddings]
        )

    def add_item(
        self,
        item_id: str,
        audio: Audio | None,
        path: str | None,
        tags_: Sequence[str],
        caption: str,
        source_uri: str,
        upsert: bool,
        extra: Mapping[str, Any] | None = None,
        dedupe: bool = False,
    ) -> GrpcCall:
        return GrpcCall(
            "AddItem", _add_request(item_id, audio, path, tags_, caption, source_uri, upsert, extra, dedupe), item
        )

    def add_batch(self, entries: Sequence[Mapping[str, Any]]) -> GrpcCall:
        """AddItems: each entry add_item's arguments by name (item_id, audio or path, tags, ...)."""
        reqs = [
            _add_request(
                e["item_id"],
                e.get("audio"),
                e.get("path"),
                e.get("tags", ()),
                e.get("caption", ""),
                e.get("source_uri", ""),
                e.get("upsert", False),
                e.get("extra"),
                e.get("dedupe", False),
            )  # fmt: skip
            for e in entries
        ]
        return GrpcCall("AddItems", pb.AddItemsRequest(items=reqs), item_results)

    def get_item(self, item_id: str) -> GrpcCall:
        return GrpcCall("GetItem", pb.ItemRequest(id=item_id), item)

    def list_items(self, flt: Filter | None, limit: int, cursor: str) -> GrpcCall:
        return GrpcCall(
            "ListItems",
            pb.ListItemsRequest(filter=_filter(flt), limit=limit, cursor=cursor),
            lambda r: ItemsPage([item(x) for x in r.items], r.next_cursor, r.index_version),
        )

    def delete_item(self, item_id: str) -> GrpcCall:
        return GrpcCall("DeleteItem", pb.ItemRequest(id=item_id), lambda r: item(r.item))

    def start_rebuild(
        self, folder: str | None, manifest: str | None, embeddings: str | None, mode: str, dedupe: bool = False
    ) -> GrpcCall:
        source = {
            k: str(v)
            for k, v in (("folder", folder), ("manifest", manifest), ("embeddings", embeddings))
            if v is not None
        }
        req = pb.RebuildRequest(mode=mode, dedupe=dedupe)
        for k, v in source.items():
            setattr(req, k, v)
        return GrpcCall("StartRebuild", req, job)

    def rebuild_status(self, job_id: str) -> GrpcCall:
        return GrpcCall("GetRebuild", pb.JobRequest(job_id=job_id), job)

    def cancel_rebuild(self, job_id: str) -> GrpcCall:
        return GrpcCall("CancelRebuild", pb.JobRequest(job_id=job_id), job)

    def rollback(self) -> GrpcCall:
        return GrpcCall("RollbackIndex", pb.Empty(), stats)

    def stats(self) -> GrpcCall:
        return GrpcCall("Stats", pb.Empty(), stats)

    def info(self) -> GrpcCall:
        return GrpcCall(
            "Info", pb.Empty(), lambda r: Info(json.loads(r.bundle_json), r.backend, json.loads(r.limits_json or "{}"))
        )
