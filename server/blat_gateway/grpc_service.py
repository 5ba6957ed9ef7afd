"""gRPC face of the gateway (blat_wire/blat.proto), with health checking and reflection. Same service calls as REST."""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from blat_gateway.access import authorize, grpc_access, presented_key
from blat_gateway.admission import THREADS_WITHOUT_MODEL, Gate, reset_deadline, set_deadline
from blat_gateway.errors import BadRequest, DeadlineExceeded, ServiceError
from blat_gateway.index import Hit, ItemRecord, SearchFilter
from blat_gateway.index.records import iso_time
from blat_gateway.service import Gateway
from blat_gateway.services.tagging import TagWindow
from blat_gateway.tagging import LabelScore
from blat_wire import blat_pb2 as pb
from blat_wire import blat_pb2_grpc as pb_grpc

SERVICE = "blat.v1.Blat"
MAX_MESSAGE_BYTES_SLACK = 64 * 1024  # room for the non-audio fields of a request
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
HEALTH_POLL_S = 2.0  # how often the gRPC health status is brought in line with readiness
log = logging.getLogger(__name__)


def _filter(f: pb.Filter) -> SearchFilter | None:
    if not f.ByteSize():
        return None
    return SearchFilter(
        tuple(f.tags_any),
        tuple(f.tags_all),
        f.source_prefix or None,
        f.min_duration_s or None,
        f.max_duration_s or None,
    )


def _item(it: ItemRecord) -> pb.Item:
    return pb.Item(
        id=it.id,
        source_uri=it.source_uri,
        duration_s=it.duration_s or 0.0,
        tags=list(it.tags),
        caption=it.caption,
        content_hash=it.content_hash,
        added_at=iso_time(it.added_at),
    )


def _scores(tags: tuple[LabelScore, ...]) -> list[pb.LabelScore]:
    return [pb.LabelScore(label=t.label, score=t.score, scorer=t.scorer) for t in tags]


def _job(p) -> pb.Job:
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


def _stats(s) -> pb.StatsResponse:
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


def _paced(requests: Iterator, idle_s: float, max_s: float) -> Iterator:
    """The stream's messages, read by a helper thread so that waiting for the client has a time limit: raises
    DeadlineExceeded after idle_s without a message or max_s in all (the RPC then ends and frees its worker)."""
    inbox: queue.Queue = queue.Queue(maxsize=8)  # a few chunks of read-ahead; the client waits beyond that
    done = threading.Event()

    def offer(item) -> bool:  # False once the handler is gone: then nobody will read the inbox
        while not done.is_set():
            try:
                inbox.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for msg in requests:
                if not offer(("msg", msg)):
                    return
            offer(("end", None))
        except Exception as e:
            offer(("error", e))

    threading.Thread(target=pump, name="stream-reader", daemon=True).start()
    ends_at = time.monotonic() + max_s
    try:
        while True:
            left = ends_at - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"the stream lasted longer than stream_max_s ({max_s:g} s)")
            try:
                kind, msg = inbox.get(timeout=min(idle_s, left))
            except queue.Empty:
                if time.monotonic() >= ends_at:
                    continue
                raise DeadlineExceeded(f"no message for stream_idle_s ({idle_s:g} s): the stream was closed") from None
            if kind == "end":
                return
            if kind == "error":
                raise BadRequest(f"the stream broke: {msg}")
            yield msg
    finally:
        done.set()


def _first_message(requests: Iterator, idle_s: float, deadline_s: float):
    """A unary call's request, read with the time limits of a REST body: DeadlineExceeded when it stalls for idle_s
    or is not in within the request's deadline (a call waiting for its message holds a worker thread)."""
    paced = _paced(requests, min(idle_s, deadline_s), deadline_s)
    try:
        return next(paced)
    except StopIteration:
        raise BadRequest("the call carried no request message") from None
    except DeadlineExceeded:
        raise DeadlineExceeded(f"the request message was not in within {min(idle_s, deadline_s):g} s") from None
    finally:
        paced.close()


class BlatServicer(pb_grpc.BlatServicer):
    def __init__(self, gateway: Gateway):
        self.gw = gateway
        self.streams = Gate("streams", gateway.limits.max_streams)

    def _hits(self, hits: list[Hit]) -> pb.SearchResponse:
        return pb.SearchResponse(
            hits=[pb.Hit(id=h.id, score=h.score, item=_item(h.item)) for h in hits],
            bundle=self.gw.manifest.id,
            index_version=self.gw.store.stats().version,
        )

    def SearchText(self, req, ctx):
        return self._hits(self.gw.search.text(req.query, req.k or 10, _filter(req.filter)))

    def SearchAudio(self, req, ctx):
        return self._hits(self.gw.search.audio(req.audio.data, req.k or 10, _filter(req.filter)))

    def SearchItem(self, req, ctx):
        return self._hits(self.gw.search.item(req.id, req.k or 10, _filter(req.filter)))

    def Tag(self, req, ctx):
        clip, windows = self.gw.tagging.tag(
            req.audio.data, list(req.labels) or None, req.top_k or 10, req.window_s, req.hop_s
        )
        return pb.TagResponse(
            tags=_scores(clip),
            windows=[pb.TagWindow(start_s=w.start_s, end_s=w.end_s, tags=_scores(w.tags)) for w in windows],
        )

    def StreamTag(self, requests: Iterator[pb.StreamTagRequest], ctx) -> Iterator[pb.TagWindow]:
        """Chunks of raw mono PCM in; one TagWindow out per hop once a window of audio has arrived. At most
        limits.max_streams at once; a stream ends when it sends nothing for limits.stream_idle_s or lasts longer than
        limits.stream_max_s. The PCM is decoded, checked and windowed by the tagging service's TagStream
        (server/blat_gateway/services/tagging.py), and its windows scored as /v1/tag scores them."""
        with self.streams.admitted():
            yield from self._stream_tag(_paced(requests, self.gw.limits.stream_idle_s, self.gw.limits.stream_max_s))

    def _stream_tag(self, requests: Iterator[pb.StreamTagRequest]) -> Iterator[pb.TagWindow]:
        first = next(requests, None)
        if first is None or first.WhichOneof("payload") != "config":
            raise BadRequest("the first StreamTag message must carry the config")
        cfg = first.config
        stream = self.gw.tagging.stream(
            cfg.encoding,
            cfg.sample_rate,
            cfg.window_s or 2.0,
            cfg.hop_s or 1.0,
            list(cfg.labels) or None,
            cfg.top_k or 5,
            admit=lambda: self.gw.admitted("audio"),
        )
        began, received_s, limits = time.monotonic(), 0.0, self.gw.limits

        def out(windows: Iterator[TagWindow]) -> Iterator[pb.TagWindow]:
            return (pb.TagWindow(start_s=w.start_s, end_s=w.end_s, tags=_scores(w.tags)) for w in windows)

        for msg in requests:
            if msg.WhichOneof("payload") != "pcm":
                raise BadRequest("only PCM chunks may follow the config")
            received_s += len(msg.pcm) / stream.itemsize / cfg.sample_rate
            lived_s = time.monotonic() - began
            if lived_s > limits.stream_idle_s and received_s < limits.stream_min_realtime * lived_s:
                raise DeadlineExceeded(
                    f"the stream sent {received_s:.2f} s of audio in {lived_s:.1f} s, under "
                    f"{limits.stream_min_realtime:g}x real time (limits.stream_min_realtime)"
                )
            yield from out(stream.feed(msg.pcm))
        yield from out(stream.finish())

    def Caption(self, req, ctx):
        caps = self.gw.captioning.caption(req.audio.data, list(req.tags), req.n_best or 1, req.beam_size)
        return pb.CaptionResponse(
            captions=[
                pb.Caption(text=c.text, log_prob=c.log_prob, guide_tags=c.guide_tags, tags_predicted=c.tags_predicted)
                for c in caps
            ]
        )

    def EmbedAudio(self, req, ctx):
        vec = self.gw.embedding.audio(req.audio.data)
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=vec.tolist())], dim=len(vec), bundle=self.gw.manifest.id
        )

    def EmbedText(self, req, ctx):
        vecs = self.gw.embedding.texts(list(req.texts))
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=v.tolist()) for v in vecs], dim=vecs.shape[1], bundle=self.gw.manifest.id
        )

    def AddItem(self, req, ctx):
        source = req.WhichOneof("source")
        if source is None:
            raise BadRequest("give audio or a server-side path")
        data, path = (req.audio.data, None) if source == "audio" else (None, req.path)
        return _item(self.gw.items.add(req.id, data, path, list(req.tags), req.caption, req.source_uri, req.upsert))

    def GetItem(self, req, ctx):
        return _item(self.gw.items.get(req.id))

    def DeleteItem(self, req, ctx):
        return pb.DeleteItemResponse(deleted=True, item=_item(self.gw.items.delete(req.id)))

    def StartRebuild(self, req, ctx):
        source = req.WhichOneof("source")
        return _job(
            self.gw.ingest.start_rebuild(
                req.folder if source == "folder" else None,
                req.manifest if source == "manifest" else None,
                embeddings=req.embeddings if source == "embeddings" else None,
            )
        )

    def GetRebuild(self, req, ctx):
        return _job(self.gw.ingest.rebuild_status(req.job_id))

    def CancelRebuild(self, req, ctx):
        return _job(self.gw.ingest.cancel_rebuild(req.job_id))

    def RollbackIndex(self, req, ctx):
        return _stats(self.gw.ingest.rollback())

    def Stats(self, req, ctx):
        return _stats(self.gw.stats())

    def Info(self, req, ctx):
        info = self.gw.info()
        return pb.InfoResponse(
            bundle_json=json.dumps(info["bundle"]), backend=info["backend"], limits_json=json.dumps(info["limits"])
        )


class _Guard(grpc.ServerInterceptor):
    """Auth by API key (metadata `authorization: Bearer <key>` or `x-api-key`), ServiceError -> status code, metrics."""

    def __init__(self, gateway: Gateway):
        self.gw = gateway

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE}/"):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        meta = dict(details.invocation_metadata or ())
        access = grpc_access(method)

        def check():
            authorize(
                access, self.gw.settings.auth.keys, presented_key(meta), method, read_only=self.gw.settings.read_only
            )

        def fail(ctx, e: ServiceError):
            self.gw.metrics.observe("grpc", method, e.grpc_code, 0.0)
            if hasattr(e, "retry_after_s"):  # the REST face's Retry-After header, as trailing metadata
                ctx.set_trailing_metadata((("retry-after", str(max(1, round(e.retry_after_s)))),))
            ctx.abort(getattr(grpc.StatusCode, e.grpc_code), e.message)

        def unexpected(ctx, e: Exception):  # the catch-all: a status with a message, never UNKNOWN
            if isinstance(e, TimeoutError):
                fail(ctx, DeadlineExceeded("the request's deadline passed while its work was running"))
            log.exception("unhandled error in %s", method)
            fail(ctx, ServiceError("internal error (the gateway's log has the details)"))

        if handler.unary_unary:
            inner, limits = handler.unary_unary, self.gw.limits

            # Served as a client stream of one message (the same bytes on the wire): gRPC would otherwise hand the
            # call a worker thread that waits for the message with no time limit.
            def unary(reqs, ctx):
                t0 = time.perf_counter()
                token = set_deadline(limits.request_timeout_s)  # the deadline covers the message's arrival
                try:
                    check()
                    req = _first_message(reqs, limits.body_idle_s, limits.request_timeout_s)
                    gate = self.gw.gates[access.gate].admitted() if access.gate else contextlib.nullcontext()
                    with gate:
                        out = inner(req, ctx)
                except ServiceError as e:
                    fail(ctx, e)
                except Exception as e:
                    unexpected(ctx, e)
                finally:
                    reset_deadline(token)
                self.gw.metrics.observe("grpc", method, "OK", time.perf_counter() - t0)
                return out

            return grpc.stream_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            inner_stream = handler.stream_stream

            def stream(reqs, ctx):
                t0 = time.perf_counter()
                try:
                    check()
                    yield from inner_stream(reqs, ctx)
                except ServiceError as e:
                    fail(ctx, e)
                except Exception as e:
                    unexpected(ctx, e)
                self.gw.metrics.observe("grpc", method, "OK", time.perf_counter() - t0)

            return grpc.stream_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


def create_grpc_server(gateway: Gateway, address: str, workers: int | None = None) -> tuple[grpc.Server, int]:
    """A started-later gRPC server bound to `address` ("host:port", port 0 = any); returns (server, port).

    Each RPC holds a worker thread while it runs. The default pool has a thread for every request the gates can
    admit and every stream the cap allows, plus THREADS_WITHOUT_MODEL: health checks, item reads and refusals
    (429s) never wait behind admitted work or open streams."""
    if workers is None:
        workers = gateway.admissible + gateway.limits.max_streams + THREADS_WITHOUT_MODEL
    max_msg = gateway.limits.max_upload_bytes + MAX_MESSAGE_BYTES_SLACK  # larger messages: RESOURCE_EXHAUSTED
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        interceptors=[_Guard(gateway)],
        options=[("grpc.max_receive_message_length", max_msg)],
    )
    pb_grpc.add_BlatServicer_to_server(BlatServicer(gateway), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def set_health() -> None:
        ok = gateway.ready()[0]
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            health_servicer.set(name, status)  # ignored once enter_graceful_shutdown() was called

    def watch(stop: threading.Event, every_s: float = HEALTH_POLL_S) -> None:
        """Follow readiness, like /readyz: a backend that becomes ready late, goes away or comes back."""
        while not stop.wait(every_s):
            try:
                set_health()
            except Exception:
                pass

    set_health()
    stop_watch = threading.Event()
    threading.Thread(target=watch, args=(stop_watch,), name="grpc-health", daemon=True).start()
    names = (
        pb.DESCRIPTOR.services_by_name["Blat"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
        REFLECTION_V1,
    )
    reflection.enable_server_reflection(names, server)
    # grpc.reflection.v1 (what current grpcurl and Postman ask first) has the v1alpha messages under a new package
    # name, field for field, so v1alpha's servicer answers it on the wire; grpcio-reflection ships only v1alpha.
    v1 = reflection.ReflectionServicer(names)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REFLECTION_V1,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        v1.ServerReflectionInfo,
                        reflection_pb2.ServerReflectionRequest.FromString,
                        reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port(address)
    server.health = health_servicer  # the launcher flips it on shutdown
    server.health_watch = stop_watch  # set it to stop following readiness
    return server, port
