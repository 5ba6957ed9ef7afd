"""The index: rebuild it in the background (status, cancel), roll it back, and describe it and the bundle."""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations, which name per-app models)

import json

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from blat_gateway.api import proto_io
from blat_gateway.api.json_io import answer, job_json, stats_json
from blat_gateway.endpoint import READ, WRITE, endpoint
from blat_gateway.schema import InfoOut, JobOut, StatsOut
from blat_wire import blat_pb2 as pb

start_rebuild = endpoint(
    "start_rebuild",
    route="POST /v1/index/rebuild",
    rpc="StartRebuild",
    scope=WRITE,
    body="json",
    status=202,
    ok=JobOut,
    errors=(400, 401, 403, 404, 409),
    tag="index",
)
rebuild_status = endpoint(
    "rebuild_status",
    route="GET /v1/index/rebuild/{job_id}",
    rpc="GetRebuild",
    scope=READ,
    ok=JobOut,
    errors=(401, 403, 404),
    tag="index",
)
cancel_rebuild = endpoint(
    "cancel_rebuild",
    route="POST /v1/index/rebuild/{job_id}/cancel",
    rpc="CancelRebuild",
    scope=WRITE,
    ok=JobOut,
    errors=(401, 403, 404),
    tag="index",
)
rollback = endpoint(
    "rollback",
    route="POST /v1/index/rollback",
    rpc="RollbackIndex",
    scope=WRITE,
    ok=StatsOut,
    errors=(401, 403, 404, 409),
    tag="index",
)
stats = endpoint(
    "stats", route="GET /v1/index/stats", rpc="Stats", scope=READ, ok=StatsOut, errors=(401, 403), tag="index"
)
info = endpoint("info", route="GET /v1/info", rpc="Info", scope=READ, ok=InfoOut, errors=(401, 403), tag="index")


@start_rebuild.rest
def _(gw, m):
    async def start_rebuild(req: m.RebuildBody) -> JSONResponse:
        """Rebuild the index from a folder, a manifest or an embedding job in the background, replacing what it
        holds or merging into it (`mode`, required); searches use the old version until the new one validates, then
        it swaps (/v1/index/rollback goes one step back)."""
        job = await run_in_threadpool(
            lambda: gw.ingest.start_rebuild(
                req.folder, req.manifest, embeddings=req.embeddings, mode=req.mode, dedupe=req.dedupe
            )
        )
        return answer(job_json(job), 202)

    return start_rebuild


@start_rebuild.grpc
def _(gw, req):
    source = req.WhichOneof("source")
    return proto_io.job(
        gw.ingest.start_rebuild(
            req.folder if source == "folder" else None,
            req.manifest if source == "manifest" else None,
            embeddings=req.embeddings if source == "embeddings" else None,
            mode=req.mode,
            dedupe=req.dedupe,
        )
    )


@rebuild_status.rest
def _(gw, m):
    async def rebuild_status(job_id: str) -> JSONResponse:
        return answer(job_json(gw.ingest.rebuild_status(job_id)))

    return rebuild_status


@rebuild_status.grpc
def _(gw, req):
    return proto_io.job(gw.ingest.rebuild_status(req.job_id))


@cancel_rebuild.rest
def _(gw, m):
    async def cancel_rebuild(job_id: str) -> JSONResponse:
        return answer(job_json(gw.ingest.cancel_rebuild(job_id)))

    return cancel_rebuild


@cancel_rebuild.grpc
def _(gw, req):
    return proto_io.job(gw.ingest.cancel_rebuild(req.job_id))


@rollback.rest
def _(gw, m):
    async def rollback() -> JSONResponse:
        return answer(stats_json(await run_in_threadpool(gw.ingest.rollback)))

    return rollback


@rollback.grpc
def _(gw, req):
    return proto_io.stats(gw.ingest.rollback())


@stats.rest
def _(gw, m):
    async def stats() -> JSONResponse:
        return answer(stats_json(await run_in_threadpool(gw.stats)))

    return stats


@stats.grpc
def _(gw, req):
    return proto_io.stats(gw.stats())


@info.rest
def _(gw, m):
    async def info() -> JSONResponse:
        """The model bundle (bundle.json), the backend, and the limits."""
        return answer(gw.info())

    return info


@info.grpc
def _(gw, req):
    info = gw.info()
    return pb.InfoResponse(
        bundle_json=json.dumps(info["bundle"]), backend=info["backend"], limits_json=json.dumps(info["limits"])
    )
