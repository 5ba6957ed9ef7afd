"""gRPC face of the gateway (blat_wire/blat.proto), with health checking and reflection: serves every declared
endpoint (server/blat_gateway/api/) that has a gRPC adapter, behind one interceptor (auth, admission, deadlines,
errors, metrics)."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from blat_gateway.access import authorize, presented_key
from blat_gateway.admission import THREADS_WITHOUT_MODEL, reset_deadline, set_deadline
from blat_gateway.api import ENDPOINTS, by_rpc
from blat_gateway.endpoint import Endpoint
from blat_gateway.errors import BadRequest, DeadlineExceeded, ServiceError, grpc_answer, unexpected
from blat_gateway.observe import HEADER, choose_request_id, key_digest, log_access, request_id
from blat_gateway.service import Gateway
from blat_wire import blat_pb2 as pb
from blat_wire import blat_pb2_grpc as pb_grpc

SERVICE = "blat.v1.Blat"
MAX_MESSAGE_BYTES_SLACK = 64 * 1024  # room for the non-audio fields of a request
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
HEALTH_POLL_S = 2.0  # how often the gRPC health status is brought in line with readiness
log = logging.getLogger(__name__)


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
    """Each method of blat.v1.Blat runs its endpoint's gRPC adapter (server/blat_gateway/api/). A stream is capped by
    limits.max_streams (the gateway's `streams` gate, shared with the WebSocket face) and paced: it ends when it sends
    nothing for limits.stream_idle_s or lasts longer than limits.stream_max_s."""

    def __init__(self, gateway: Gateway):
        self.gw = gateway


def _bind(ep: Endpoint):
    serve = ep.serve_grpc
    if ep.stream:

        def call(self: BlatServicer, requests: Iterator, ctx) -> Iterator:
            limits = self.gw.limits
            with self.gw.streams.admitted():  # shared with the WebSocket face
                yield from serve(self.gw, _paced(requests, limits.stream_idle_s, limits.stream_max_s))

    else:

        def call(self: BlatServicer, request, ctx):
            return serve(self.gw, request)

    call.__name__ = call.__qualname__ = ep.rpc
    return call


for _ep in ENDPOINTS:
    if _ep.rpc and _ep.serve_grpc:
        setattr(BlatServicer, _ep.rpc, _bind(_ep))


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
        access = by_rpc(method)
        rid, outcome = choose_request_id(meta.get(HEADER)), ["OK"]

        def begin(ctx):
            """The request id in this worker thread's context and on the answer's initial metadata."""
            ctx.send_initial_metadata(((HEADER, rid),))
            return request_id.set(rid)

        def end(ctx, token, t0: float) -> None:
            if self.gw.settings.access_log:
                log_access(
                    api="grpc",
                    method="RPC",
                    endpoint=method,
                    status=outcome[0],
                    duration_ms=round((time.perf_counter() - t0) * 1000, 2),
                    client=ctx.peer(),
                    key=key_digest(meta),
                )
            with contextlib.suppress(ValueError):  # a stream's generator may be closed from another context
                request_id.reset(token)

        def check():
            authorize(
                access, self.gw.settings.auth.keys, presented_key(meta), method, read_only=self.gw.settings.read_only
            )

        def fail(ctx, e: ServiceError):
            code, message, trailing = grpc_answer(e)
            outcome[0] = code
            self.gw.metrics.observe("grpc", method, code, 0.0)
            if trailing:  # reason, HTTP status, details and Retry-After, as over REST
                ctx.set_trailing_metadata(trailing)
            ctx.abort(getattr(grpc.StatusCode, code), message)

        def caught(ctx, e: Exception):  # the catch-all: a status with a message, never UNKNOWN
            fail(ctx, unexpected(e, log, method))

        if handler.unary_unary:
            inner, limits = handler.unary_unary, self.gw.limits

            # Served as a client stream of one message (the same bytes on the wire): gRPC would otherwise hand the
            # call a worker thread that waits for the message with no time limit.
            def unary(reqs, ctx):
                t0, rid_token = time.perf_counter(), begin(ctx)
                token = set_deadline(limits.request_timeout_s)  # the deadline covers the message's arrival
                try:
                    try:
                        check()
                        req = _first_message(reqs, limits.body_idle_s, limits.request_timeout_s)
                        gate = self.gw.gates[access.gate].admitted() if access.gate else contextlib.nullcontext()
                        with gate:
                            out = inner(req, ctx)
                    except ServiceError as e:
                        fail(ctx, e)
                    except Exception as e:
                        caught(ctx, e)
                    finally:
                        reset_deadline(token)
                    self.gw.metrics.observe("grpc", method, "OK", time.perf_counter() - t0)
                    return out
                finally:
                    end(ctx, rid_token, t0)

            return grpc.stream_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            inner_stream = handler.stream_stream

            def stream(reqs, ctx):
                t0, rid_token = time.perf_counter(), begin(ctx)
                try:
                    try:
                        check()
                        yield from inner_stream(reqs, ctx)
                    except ServiceError as e:
                        fail(ctx, e)
                    except Exception as e:
                        caught(ctx, e)
                    self.gw.metrics.observe("grpc", method, "OK", time.perf_counter() - t0)
                finally:
                    end(ctx, rid_token, t0)

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
