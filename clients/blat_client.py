"""Python clients of the BLAT gateway that speak only the wire protocol: `RestClient` (HTTP/JSON under /v1, with
httpx) and `GrpcClient` (wire/blat.proto, service blat.v1.Blat). Neither imports the server.

Both faces return the same plain data, so code can switch between them:

    hits      {"hits": [{"id", "score", "item": {...}}], "bundle", "index_version"}
    item      {"id", "source_uri", "duration_s", "tags", "caption", "content_hash", "added_at"}
    tags      {"tags": [{"label", "score"}], "windows": [{"start_s", "end_s", "tags": [...]}]}
    captions  [{"text", "log_prob"}]
    job       {"job_id", "state", "done", "total", "error"}    (REST adds its extra progress fields)
    stats     {"items", "deleted_pending", "index_kind", "index_version", "bundle"}    (REST adds the rest)
    embedding list[float]; embed_text -> list[list[float]]

`added_at` is an ISO 8601 UTC string with milliseconds ("2026-12-03T06:45:45.123Z") over both transports.
Audio arguments are encoded files: `bytes`, or a path to read. Every error is a `ClientError` with an HTTP-style
`status` (gRPC codes are mapped onto the statuses the REST face uses for the same failure), a machine-readable `code`
(REST: the error code, e.g. "not_found"; gRPC: the status code name, e.g. "NOT_FOUND") and the server's message.

    from clients import RestClient
    with RestClient("http://127.0.0.1:8080") as c:
        for hit in c.search_text("dog barking", k=5)["hits"]:
            print(hit["id"], hit["score"])
"""
from __future__ import annotations

import json
import os
from urllib.parse import quote
from typing import Any, Iterable, Iterator, Mapping, Sequence

import grpc
import httpx

from wire import blat_pb2 as pb
from wire import blat_pb2_grpc as pb_grpc

Audio = bytes | str | os.PathLike
Filter = Mapping[str, Any]  # tags_any, tags_all, source_prefix, min_duration_s, max_duration_s
FILTER_KEYS = ("tags_any", "tags_all", "source_prefix", "min_duration_s", "max_duration_s")
DEFAULT_TIMEOUT_S = 60.0

# The HTTP status the REST face answers for the failure a gRPC code stands for (server/errors.py's table, inverted).
GRPC_TO_HTTP = {"INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 413, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403,
                "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503,
                "DEADLINE_EXCEEDED": 504, "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNKNOWN": 500,
                "FAILED_PRECONDITION": 400, "CANCELLED": 499, "ABORTED": 409, "DATA_LOSS": 500}


class ClientError(Exception):
    """An error answer (or no answer) from the gateway.

    status: HTTP status (over gRPC: the status REST answers for the same failure; 0 when no answer came)
    code: REST's error code ("bad_audio", "not_found", ...) or the gRPC status code name ("NOT_FOUND", ...)
    message: the server's explanation; details: REST's error details; retry_after: seconds, from a 429's Retry-After
    """

    def __init__(self, status: int, code: str, message: str, details: dict | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.details = details or {}
        self.retry_after = retry_after


def read_audio(audio: Audio) -> bytes:
    """Bytes as they are; anything else is a path to an audio file."""
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return bytes(audio)
    with open(audio, "rb") as f:
        return f.read()


def _path(segment: str) -> str:
    """An id as a URL path: percent-encoded, except the '/' and ':' that ids may hold."""
    return quote(str(segment), safe="/:")


def _check_filter(flt: Filter | None) -> dict[str, Any]:
    flt = dict(flt or {})
    unknown = set(flt) - set(FILTER_KEYS)
    if unknown:
        raise ValueError(f"unknown filter keys {sorted(unknown)}; known: {list(FILTER_KEYS)}")
    return {k: v for k, v in flt.items() if v not in (None, [], ())}


def _stats(s: Mapping[str, Any]) -> dict[str, Any]:
    """REST's IndexStats JSON -> the common stats shape (keeping every REST field)."""
    return {**s, "items": s["count"], "deleted_pending": s["tombstones"], "index_kind": s["kind"],
            "index_version": s["version"], "bundle": s["bundle_id"]}


def _job(p: Mapping[str, Any]) -> dict[str, Any]:
    """REST's RebuildProgress JSON -> the common job shape (keeping every REST field)."""
    return {**p, "job_id": p["version"], "error": p.get("error") or ""}


# ------------------------------------------------------------------------------------------------------------ REST

class RestClient:
    """The REST face (`/v1/...`). `api_key` travels as `Authorization: Bearer <key>`."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None):
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, ok: Sequence[int] = (200, 201, 202), **kwargs) -> Any:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ClientError(0, "unreachable", f"{method} {self.base_url}{path}: {e}") from None
        if r.status_code in ok:
            return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        raise self._error(r)

    @staticmethod
    def _error(r: httpx.Response) -> ClientError:
        retry = r.headers.get("retry-after")
        retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
        try:
            err = r.json()["error"]
            return ClientError(r.status_code, str(err.get("code", "")), str(err.get("message", "")),
                               err.get("details"), retry_after)
        except (ValueError, KeyError, TypeError, AttributeError):  # not the gateway's JSON error (a proxy, a 405)
            return ClientError(r.status_code, f"http_{r.status_code}", r.text[:500], None, retry_after)

    def _upload(self, path: str, audio: Audio, params: Mapping[str, Any]) -> Any:
        params = {k: v for k, v in params.items() if v not in (None, [], ())}
        return self._call("POST", path, params=params, content=read_audio(audio),
                          headers={"content-type": "application/octet-stream"})

    # -- search --------------------------------------------------------------------------------------------------
    def search_text(self, query: str, k: int = 10, filter: Filter | None = None) -> dict:
        body: dict[str, Any] = {"query": query, "k": k}
        if filter:
            body["filter"] = _check_filter(filter)
        return self._call("POST", "/v1/search/text", json=body)

    def search_audio(self, audio: Audio, k: int = 10, filter: Filter | None = None) -> dict:
        return self._upload("/v1/search/audio", audio, {"k": k, **_check_filter(filter)})

    def search_item(self, item_id: str, k: int = 10, filter: Filter | None = None) -> dict:
        body: dict[str, Any] = {"id": item_id, "k": k}
        if filter:
            body["filter"] = _check_filter(filter)
        return self._call("POST", "/v1/search/item", json=body)

    # -- models --------------------------------------------------------------------------------------------------
    def tag(self, audio: Audio, labels: Sequence[str] | None = None, top_k: int = 10, window_s: float = 0.0,
            hop_s: float = 0.0) -> dict:
        return self._upload("/v1/tag", audio, {"labels": list(labels or []), "top_k": top_k,
                                               "window_s": window_s or None, "hop_s": hop_s or None})

    def caption(self, audio: Audio, tags: Sequence[str] = (), n_best: int = 1, beam_size: int = 0) -> list[dict]:
        out = self._upload("/v1/caption", audio, {"tags": list(tags), "n_best": n_best, "beam_size": beam_size or None})
        return out["captions"]

    def embed_audio(self, audio: Audio) -> list[float]:
        return self._upload("/v1/embed/audio", audio, {})["embedding"]

    def embed_text(self, texts: Sequence[str] | str) -> list[list[float]]:
        return self._call("POST", "/v1/embed/text", json={"texts": [texts] if isinstance(texts, str) else list(texts)})[
            "embeddings"]

    def stream_tag(self, *args, **kwargs):
        raise NotImplementedError("streaming tags are gRPC-only: use GrpcClient.stream_tag")

    # -- items ---------------------------------------------------------------------------------------------------
    def add_item(self, item_id: str, audio: Audio | None = None, path: str | None = None, tags: Sequence[str] = (),
                 caption: str = "", source_uri: str = "", upsert: bool = False) -> dict:
        """Store an uploaded clip (`audio`) or a server-side file under the ingest roots (`path`)."""
        if (audio is None) == (path is None):
            raise ValueError("give exactly one of: audio, path")
        if path is not None:
            return self._call("POST", "/v1/items/from-path", json={
                "id": item_id, "path": str(path), "tags": list(tags), "caption": caption, "source_uri": source_uri,
                "upsert": upsert})
        return self._upload("/v1/items", audio, {"id": item_id, "tags": list(tags), "caption": caption or None,
                                                 "source_uri": source_uri or None, "upsert": upsert or None})

    def get_item(self, item_id: str) -> dict:
        return self._call("GET", f"/v1/items/{_path(item_id)}")

    def delete_item(self, item_id: str) -> dict:
        return self._call("DELETE", f"/v1/items/{_path(item_id)}")

    # -- index ---------------------------------------------------------------------------------------------------
    def start_rebuild(self, folder: str | None = None, manifest: str | None = None) -> dict:
        body = {k: str(v) for k, v in (("folder", folder), ("manifest", manifest)) if v is not None}
        return _job(self._call("POST", "/v1/index/rebuild", json=body))

    def rebuild_status(self, job_id: str) -> dict:
        return _job(self._call("GET", f"/v1/index/rebuild/{_path(job_id)}"))

    def cancel_rebuild(self, job_id: str) -> dict:
        return _job(self._call("POST", f"/v1/index/rebuild/{_path(job_id)}/cancel"))

    def rollback(self) -> dict:
        return _stats(self._call("POST", "/v1/index/rollback"))

    def stats(self) -> dict:
        return _stats(self._call("GET", "/v1/index/stats"))

    def info(self) -> dict:
        """{"bundle": bundle.json, "backend": ..., "limits": {...}}"""
        return self._call("GET", "/v1/info")

    # -- operations ----------------------------------------------------------------------------------------------
    def healthz(self) -> dict:
        return self._call("GET", "/healthz")

    def readyz(self) -> dict:
        """{"ready": bool, "detail": str}; a not-ready server (503) answers it too, without raising."""
        return self._call("GET", "/readyz", ok=(200, 503))

    def metrics(self) -> str:
        return self._call("GET", "/metrics")

    def openapi(self) -> dict:
        return self._call("GET", "/openapi.json")


# ------------------------------------------------------------------------------------------------------------ gRPC

def _item(it: pb.Item) -> dict:
    return {"id": it.id, "source_uri": it.source_uri, "duration_s": it.duration_s, "tags": list(it.tags),
            "caption": it.caption, "content_hash": it.content_hash, "added_at": it.added_at}


def _scores(tags) -> list[dict]:
    return [{"label": t.label, "score": t.score} for t in tags]


def _window(w: pb.TagWindow) -> dict:
    return {"start_s": w.start_s, "end_s": w.end_s, "tags": _scores(w.tags)}


def _pb_filter(flt: Filter | None) -> pb.Filter | None:
    flt = _check_filter(flt)
    return pb.Filter(**flt) if flt else None


class GrpcClient:
    """The gRPC face (`blat.v1.Blat`). `api_key` travels as `authorization: Bearer <key>` metadata."""

    def __init__(self, address: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 max_message_bytes: int = 256 * 1024 * 1024):
        self.address, self.timeout = address, timeout
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", max_message_bytes),
                                                               ("grpc.max_receive_message_length", max_message_bytes)])
        self.stub = pb_grpc.BlatStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _error(e: grpc.RpcError) -> ClientError:
        code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
        name = code.name if code is not None else "UNKNOWN"
        details = e.details() if hasattr(e, "details") else str(e)
        return ClientError(GRPC_TO_HTTP.get(name, 500), name, details or "")

    def _call(self, method: str, request) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _hits(self, r: pb.SearchResponse) -> dict:
        return {"hits": [{"id": h.id, "score": h.score, "item": _item(h.item)} for h in r.hits], "bundle": r.bundle,
                "index_version": r.index_version}

    @staticmethod
    def _job(j: pb.Job) -> dict:
        return {"job_id": j.job_id, "state": j.state, "done": j.done, "total": j.total, "error": j.error,
                "version": j.version}

    @staticmethod
    def _stats(s: pb.StatsResponse) -> dict:
        return {"items": s.items, "deleted_pending": s.deleted_pending, "index_kind": s.index_kind,
                "index_version": s.index_version, "bundle": s.bundle}

    # -- search --------------------------------------------------------------------------------------------------
    def search_text(self, query: str, k: int = 10, filter: Filter | None = None) -> dict:
        return self._hits(self._call("SearchText", pb.SearchTextRequest(query=query, k=k, filter=_pb_filter(filter))))

    def search_audio(self, audio: Audio, k: int = 10, filter: Filter | None = None) -> dict:
        return self._hits(self._call("SearchAudio", pb.SearchAudioRequest(
            audio=pb.Audio(data=read_audio(audio)), k=k, filter=_pb_filter(filter))))

    def search_item(self, item_id: str, k: int = 10, filter: Filter | None = None) -> dict:
        return self._hits(self._call("SearchItem", pb.SearchItemRequest(id=item_id, k=k, filter=_pb_filter(filter))))

    # -- models --------------------------------------------------------------------------------------------------
    def tag(self, audio: Audio, labels: Sequence[str] | None = None, top_k: int = 10, window_s: float = 0.0,
            hop_s: float = 0.0) -> dict:
        r = self._call("Tag", pb.TagRequest(audio=pb.Audio(data=read_audio(audio)), labels=list(labels or []),
                                            top_k=top_k, window_s=window_s, hop_s=hop_s))
        return {"tags": _scores(r.tags), "windows": [_window(w) for w in r.windows]}

    def caption(self, audio: Audio, tags: Sequence[str] = (), n_best: int = 1, beam_size: int = 0) -> list[dict]:
        r = self._call("Caption", pb.CaptionRequest(audio=pb.Audio(data=read_audio(audio)), tags=list(tags),
                                                    n_best=n_best, beam_size=beam_size))
        return [{"text": c.text, "log_prob": c.log_prob} for c in r.captions]

    def embed_audio(self, audio: Audio) -> list[float]:
        r = self._call("EmbedAudio", pb.EmbedAudioRequest(audio=pb.Audio(data=read_audio(audio))))
        return list(r.embeddings[0].values)

    def embed_text(self, texts: Sequence[str] | str) -> list[list[float]]:
        r = self._call("EmbedText", pb.EmbedTextRequest(texts=[texts] if isinstance(texts, str) else list(texts)))
        return [list(e.values) for e in r.embeddings]

    def stream_tag(self, chunks: Iterable[bytes], sample_rate: int, encoding: str = "f32le", window_s: float = 0.0,
                   hop_s: float = 0.0, top_k: int = 0, labels: Sequence[str] = ()) -> Iterator[dict]:
        """Raw mono PCM chunks (`encoding` "f32le" or "s16le" at `sample_rate`) in; one window dict out per hop.

        The server answers as windows fill, so this yields while `chunks` is still being consumed."""
        def requests():
            yield pb.StreamTagRequest(config=pb.StreamConfig(sample_rate=sample_rate, encoding=encoding,
                                                             window_s=window_s, hop_s=hop_s, top_k=top_k,
                                                             labels=list(labels)))
            for chunk in chunks:
                yield pb.StreamTagRequest(pcm=bytes(chunk))

        try:
            for w in self.stub.StreamTag(requests(), timeout=self.timeout, metadata=self.metadata):
                yield _window(w)
        except grpc.RpcError as e:
            raise self._error(e) from None

    # -- items ---------------------------------------------------------------------------------------------------
    def add_item(self, item_id: str, audio: Audio | None = None, path: str | None = None, tags: Sequence[str] = (),
                 caption: str = "", source_uri: str = "", upsert: bool = False) -> dict:
        if (audio is None) == (path is None):
            raise ValueError("give exactly one of: audio, path")
        source = {"audio": pb.Audio(data=read_audio(audio))} if audio is not None else {"path": str(path)}
        return _item(self._call("AddItem", pb.AddItemRequest(id=item_id, tags=list(tags), caption=caption,
                                                             source_uri=source_uri, upsert=upsert, **source)))

    def get_item(self, item_id: str) -> dict:
        return _item(self._call("GetItem", pb.ItemRequest(id=item_id)))

    def delete_item(self, item_id: str) -> dict:
        return {"deleted": self._call("DeleteItem", pb.ItemRequest(id=item_id)).deleted}

    # -- index ---------------------------------------------------------------------------------------------------
    def start_rebuild(self, folder: str | None = None, manifest: str | None = None) -> dict:
        if (folder is None) == (manifest is None):
            raise ValueError("give exactly one of: folder, manifest")
        req = pb.RebuildRequest(folder=str(folder)) if folder is not None else pb.RebuildRequest(manifest=str(manifest))
        return self._job(self._call("StartRebuild", req))

    def rebuild_status(self, job_id: str) -> dict:
        return self._job(self._call("GetRebuild", pb.JobRequest(job_id=job_id)))

    def cancel_rebuild(self, job_id: str) -> dict:
        return self._job(self._call("CancelRebuild", pb.JobRequest(job_id=job_id)))

    def rollback(self) -> dict:
        return self._stats(self._call("RollbackIndex", pb.Empty()))

    def stats(self) -> dict:
        return self._stats(self._call("Stats", pb.Empty()))

    def info(self) -> dict:
        """{"bundle": bundle.json, "backend": ...}"""
        r = self._call("Info", pb.Empty())
        return {"bundle": json.loads(r.bundle_json), "backend": r.backend}


def connect(url: str | None = None, grpc_address: str | None = None, api_key: str | None = None,
            timeout: float = DEFAULT_TIMEOUT_S) -> RestClient | GrpcClient:
    """A GrpcClient when `grpc_address` is given, else a RestClient for `url`."""
    if grpc_address:
        return GrpcClient(grpc_address, api_key, timeout)
    return RestClient(url or "http://127.0.0.1:8080", api_key, timeout)
