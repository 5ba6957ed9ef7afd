"""python -m blat_gateway: start the gateway (REST on http_port, gRPC on grpc_port) with one settings object.

Settings come from defaults, a JSON file (--config or $BLAT_SERVER_CONFIG) and BLAT_SERVER_* environment
variables (BLAT_SERVER_HTTP_PORT=9000, BLAT_SERVER_LIMITS__MAX_TEXT_CHARS=300, ...); they are logged at start-up
with API keys redacted. Stops cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

log = logging.getLogger("blat_gateway")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def exposure_warning(settings) -> str | None:
    """What to warn about a gateway that other machines can reach and that asks no key (None: nothing)."""
    host = settings.host.strip("[]").lower()
    if settings.auth.keys or host in LOOPBACK_HOSTS or host.startswith("127."):
        return None
    return (
        f"the gateway listens on {settings.host}, reachable from other machines, and auth.keys is empty: anyone "
        "who can reach it may add, delete and roll back; set auth.keys (BLAT_SERVER_AUTH__KEYS) or bind 127.0.0.1"
    )


def start_gateway(settings):
    """The gateway as `serve` runs it, without the HTTP listener: (gateway, started gRPC server, its port, ASGI app).

    Also used by the tests to run a gateway inside the test process (tests/server/conftest.py `inproc_gateway`)."""
    from blat_gateway.grpc_service import create_grpc_server
    from blat_gateway.rest import create_app
    from blat_gateway.service import Gateway

    gateway = Gateway(settings)
    try:
        gateway.ingest.seed()
        grpc_server, grpc_port = create_grpc_server(gateway, f"{settings.host}:{settings.grpc_port}")
        grpc_server.start()
    except BaseException:
        gateway.close()
        raise
    return gateway, grpc_server, grpc_port, create_app(gateway)


def uvicorn_options(settings) -> dict:
    """uvicorn's options for the gateway's REST side (header limits through the guarded protocol)."""
    from blat_gateway.grpc_service import MAX_MESSAGE_BYTES_SLACK
    from blat_gateway.http_protocol import guarded_protocol

    limits = settings.limits
    return dict(
        host=settings.host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,  # the gateway writes its own access lines, with request ids (blat_gateway/observe.py)
        log_config=None,  # uvicorn's loggers go through the root's JSON handler: every log line is JSON
        http=guarded_protocol(limits.max_header_bytes, limits.header_timeout_s),
        # /v1/tag/stream: websockets' sans-I/O protocol (uvicorn stops reading a socket until the app took its last
        # message), with a message as large as a gRPC message may be.
        ws="websockets-sansio",
        ws_max_size=limits.max_upload_bytes + MAX_MESSAGE_BYTES_SLACK,
    )


def stop_gateway(gateway, grpc_server, grace_s: float = 5) -> None:
    """The shutdown after the REST side stopped: gRPC health NOT_SERVING while in-flight calls finish, then close."""
    grpc_server.health_watch.set()
    grpc_server.health.enter_graceful_shutdown()  # health checks answer NOT_SERVING while in-flight calls finish
    grpc_server.stop(grace=grace_s).wait()
    gateway.close()


def serve(settings) -> int:
    import uvicorn

    warning = exposure_warning(settings)
    if warning:
        log.warning(warning)
    gateway, grpc_server, grpc_port, app = start_gateway(settings)
    log.info(
        "serving",
        extra={
            "http": f"http://{settings.host}:{settings.http_port}",
            "grpc": f"{settings.host}:{grpc_port}",
            "bundle": gateway.manifest.id,
            "backend": settings.backend,
            "index": gateway.store.stats().to_dict(),
        },
    )
    # While it serves, uvicorn handles SIGINT/SIGTERM itself; when it is done it restores the previous handlers and
    # raises the signal again. With Python's defaults that kills the process (SIGTERM) or raises KeyboardInterrupt
    # (SIGINT) before the shutdown below runs: these handlers let the repeated signal end uvicorn.run() normally.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        uvicorn.run(app, **uvicorn_options(settings))
    finally:
        stop_gateway(gateway, grpc_server)
        log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    from blat_contract.logs import setup_logging
    from blat_gateway.observe import capture_native_stderr, install_request_ids
    from blat_gateway.settings import load_settings

    p = argparse.ArgumentParser(
        prog="python -m blat_gateway", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="JSON settings file (overrides defaults; env vars override it)")
    p.add_argument("--bundle", help="model bundle directory (overrides the settings)")
    p.add_argument("--index-dir", help="index directory (overrides the settings)")
    p.add_argument("--http-port", type=int)
    p.add_argument("--grpc-port", type=int)
    p.add_argument("--print-settings", action="store_true", help="print the effective settings as JSON and exit")
    p.add_argument(
        "--rollback",
        action="store_true",
        help="make the previous index version live again and exit, without serving (the way back from a "
        "live version that fails its integrity check at start)",
    )
    args = p.parse_args(argv)
    overrides = {
        k: v
        for k, v in {
            "bundle": args.bundle,
            "index_dir": args.index_dir,
            "http_port": args.http_port,
            "grpc_port": args.grpc_port,
        }.items()
        if v is not None
    }
    try:
        settings = load_settings(args.config, **overrides)
    except (ValueError, OSError) as e:
        print(f"settings: {e}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    if args.print_settings:
        import json

        print(json.dumps(settings.redacted(), indent=2))
        return 0
    from blat_gateway.errors import ServiceError

    if args.rollback:
        return rollback(settings)
    capture_native_stderr()  # serving only: a long-lived process whose stderr must hold JSON lines alone
    setup_logging(settings.log_level)  # again: onto the stderr capture_native_stderr kept
    install_request_ids()
    log.info("settings", extra={"settings": settings.redacted()})
    try:
        return serve(settings)
    except (ValueError, OSError) as e:  # a missing or broken bundle, a port in use, ...
        log.error(str(e))
        return 2
    except ServiceError as e:  # a damaged index version, an index directory another process holds, ...
        log.error(e.message)
        return 2


def rollback(settings) -> int:
    from blat_gateway.errors import ServiceError
    from blat_gateway.index.faiss_index import rollback_offline

    if settings.index_engine != "faiss":
        log.error("--rollback works on the FAISS engine's index directory; with Milvus, roll back through a gateway")
        return 2
    try:
        live, previous = rollback_offline(settings.index_dir)
    except (ServiceError, OSError) as e:
        log.error(getattr(e, "message", None) or str(e))
        return 2
    log.info(f"index {settings.index_dir}: version {live} is live again; {previous} is the previous version")
    return 0


if __name__ == "__main__":
    sys.exit(main())
