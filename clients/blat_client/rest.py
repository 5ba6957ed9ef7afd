"""The REST transport (`/v1/...` over HTTP/JSON, with httpx). Each operation is first described as a `RestCall`,
then sent by `send` (blocking) or `asend` (asyncio), so both modes share every path, parameter and parser.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from blat_client.audio import Audio, read_audio
from blat_client.errors import HTTP_TO_GRPC, ClientError, no_answer, parse_retry_after
from blat_client.filters import Filter, check_filter
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


@dataclass
class RestCall:
    method: str
    path: str
    parse: Callable[[Any], Any]
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | None = None


JOB_FIELDS = [f.name for f in dataclasses.fields(Job)]
STATS_FIELDS = [f.name for f in dataclasses.fields(Stats)]


def f32(x: float) -> float:
    """A JSON number at the precision the gRPC face carries it (a protobuf float), so both faces answer equal values."""
    value: float = struct.unpack("f", struct.pack("f", float(x)))[0]
    return value


def item(d: Mapping[str, Any]) -> Item:
    return Item(
        id=d["id"],
        source_uri=d.get("source_uri", ""),
        duration_s=f32(d.get("duration_s", 0.0)),
        tags=tuple(d.get("tags", ())),
        caption=d.get("caption", ""),
        content_hash=d.get("content_hash", ""),
        added_at=d.get("added_at", ""),
        extra=dict(d.get("extra") or {}),
    )


def search_result(d: Mapping[str, Any]) -> SearchResult:
    return SearchResult(
        [Hit(h["id"], f32(h["score"]), item(h["item"])) for h in d["hits"]], d["bundle"], d["index_version"]
    )


def scores(rows: Iterable[Mapping[str, Any]]) -> list[LabelScore]:
    return [LabelScore(r["label"], f32(r["score"]), r.get("scorer", "")) for r in rows]


def tags(d: Mapping[str, Any]) -> Tags:
    return Tags(
        scores(d["tags"]), [TagWindow(f32(w["start_s"]), f32(w["end_s"]), scores(w["tags"])) for w in d["windows"]]
    )


def job(d: Mapping[str, Any]) -> Job:
    """REST's Job carries blat.proto's field names (more of them than the client's Job keeps)."""
    return Job(**{f: d[f] for f in JOB_FIELDS})


def stats(d: Mapping[str, Any]) -> Stats:
    return Stats(**{f: d[f] for f in STATS_FIELDS})


def error_of(status: int, err: Mapping[str, Any], retry_after: float | None = None) -> ClientError:
    """The ClientError of the gateway's error object (a refused call's body, or one item's in a batch answer)."""
    details = err.get("details") if isinstance(err.get("details"), dict) else None
    return ClientError(
        int(err.get("http_status") or status), str(err["code"]), str(err["message"]), details, retry_after,
        str(err.get("reason", "")),
    )  # fmt: skip


def item_results(d: Mapping[str, Any]) -> list[ItemResult]:
    return [
        ItemResult(
            r["id"], item(r["item"]) if r.get("item") else None, error_of(0, r["error"]) if r.get("error") else None
        )
        for r in d["results"]
    ]


def _query_filter(flt: Filter | None) -> dict[str, Any]:
    """A filter as query parameters: its `extra` conditions as one JSON text."""
    out = check_filter(flt)
    if "extra" in out:
        out["extra"] = json.dumps(out["extra"])
    return out


def _b64(audio: Audio) -> dict[str, str]:
    """blat.proto's Audio in proto3's JSON: the file's bytes, base64."""
    return {"data": base64.b64encode(read_audio(audio)).decode("ascii")}


def _segment(value: str) -> str:
    """An id as a URL path: percent-encoded, except the '/' and ':' that ids may hold."""
    return quote(str(value), safe="/:")


def _params(values: Mapping[str, Any]) -> dict[str, Any]:
    """Query parameters without the empty ones. Numbers are always sent, 0 included, so that the server checks
    them (k=0 is refused, not read as the default)."""
    return {
        k: v
        for k, v in values.items()
        if v is not False and not (v is None or (isinstance(v, (str, list, tuple)) and not v))
    }


class _Sending:
    """httpcore's trace of one request: whether sending it was cut off. A gateway that refuses a request before
    reading all of it (429 under load) and closes makes the kernel reset the connection, and the answer can be lost
    with it; httpcore then reports only that no answer came."""

    def __init__(self) -> None:
        self.cut = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event in ("http11.send_request_headers.failed", "http11.send_request_body.failed"):
            self.cut = True

    async def atrace(self, event: str, info: dict[str, Any]) -> None:
        self.trace(event, info)


class RestTransport:
    name = "rest"

    def __init__(self, base_url: str, api_key: str | None, timeout: float):
        self.base_url = base_url.rstrip("/")
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self._sync: httpx.Client | None = None
        self._async: httpx.AsyncClient | None = None

    # -- sending ---------------------------------------------------------------------------------------------------
    def send(self, call: RestCall) -> Any:
        if self._sync is None:
            self._sync = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout)
        sent = _Sending()
        try:
            r = self._sync.request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                content=call.content,
                extensions={"trace": sent.trace},
            )
        except httpx.TransportError as e:
            raise self._no_answer(call, e, sent) from None
        return self._answer(call, r)

    async def asend(self, call: RestCall) -> Any:
        if self._async is None:
            self._async = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout)
        sent = _Sending()
        try:
            r = await self._async.request(
                call.method,
                call.path,
                params=call.params,
                json=call.json,
                content=call.content,
                extensions={"trace": sent.atrace},
            )
        except httpx.TransportError as e:
            raise self._no_answer(call, e, sent) from None
        return self._answer(call, r)

    def _no_answer(self, call: RestCall, e: httpx.TransportError, sent: _Sending) -> ClientError:
        where = f"{call.method} {self.base_url}{call.path}"
        if isinstance(e, httpx.TimeoutException):
            return no_answer("timeout", f"{where}: no answer within {self.timeout:g} s ({type(e).__name__})")
        if sent.cut:  # retryable: the server cannot have acted on a request it did not read to the end
            return no_answer(
                "connection_reset",
                f"{where}: the server closed the connection before it had "
                f"read the whole request (a refusal under load): {e!r}",
            )
        return no_answer("unreachable", f"{where}: {e!r}")

    @staticmethod
    def _answer(call: RestCall, r: httpx.Response) -> Any:
        if r.is_success:
            return call.parse(r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text)
        retry_after = parse_retry_after(r.headers.get("retry-after"))
        try:
            error = error_of(r.status_code, r.json()["error"], retry_after)
        except (ValueError, KeyError, TypeError, AttributeError):  # not the gateway's JSON error (a proxy, say)
            code = HTTP_TO_GRPC.get(r.status_code, "INTERNAL" if r.status_code >= 500 else "UNKNOWN")
            raise ClientError(r.status_code, code, r.text[:500], None, retry_after, f"http_{r.status_code}") from None
        raise error

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()

    # -- operations ------------------------------------------------------------------------------------------------
    def _upload(self, path: str, audio: Audio, params: Mapping[str, Any], parse: Callable[[Any], Any]) -> RestCall:
        return RestCall("POST", path, parse, params=_params(params), content=read_audio(audio))

    def search_text(self, query: str, k: int, flt: Filter | None, offset: int = 0) -> RestCall:
        body = {"query": query, "k": k, "offset": offset, **({"filter": check_filter(flt)} if flt else {})}
        return RestCall("POST", "/v1/search/text", search_result, json=body)

    def search_texts(self, queries: Sequence[str], k: int, flt: Filter | None, offset: int = 0) -> RestCall:
        body = {"queries": list(queries), "k": k, "offset": offset, **({"filter": check_filter(flt)} if flt else {})}
        return RestCall("POST", "/v1/search/texts", lambda d: [search_result(r) for r in d["results"]], json=body)

    def search_audio(self, audio: Audio, k: int, flt: Filter | None, offset: int = 0) -> RestCall:
        return self._upload("/v1/search/audio", audio, {"k": k, "offset": offset, **_query_filter(flt)}, search_result)

    def search_item(self, item_id: str, k: int, flt: Filter | None, offset: int = 0) -> RestCall:
        body = {"id": item_id, "k": k, "offset": offset, **({"filter": check_filter(flt)} if flt else {})}
        return RestCall("POST", "/v1/search/item", search_result, json=body)

    def tag(self, audio: Audio, labels: Sequence[str], top_k: int, window_s: float, hop_s: float) -> RestCall:
        return self._upload(
            "/v1/tag", audio, {"labels": list(labels), "top_k": top_k, "window_s": window_s, "hop_s": hop_s}, tags
        )

    def tag_clips(
        self, audios: Sequence[Audio], labels: Sequence[str], top_k: int, window_s: float, hop_s: float
    ) -> RestCall:
        body = {
            "audios": [_b64(a) for a in audios],
            "labels": list(labels),
            "top_k": top_k,
            "window_s": window_s,
            "hop_s": hop_s,
        }
        return RestCall("POST", "/v1/tag/clips", lambda d: [tags(r) for r in d["results"]], json=body)

    def caption(self, audio: Audio, tags_: Sequence[str], n_best: int, beam_size: int) -> RestCall:
        return self._upload(
            "/v1/caption",
            audio,
            {"tags": list(tags_), "n_best": n_best, "beam_size": beam_size},
            lambda d: [
                Caption(
                    c["text"], f32(c["log_prob"]), list(c.get("guide_tags", [])), bool(c.get("tags_predicted", False))
                )
                for c in d["captions"]
            ],
        )

    def embed_audio(self, audio: Audio) -> RestCall:
        return self._upload("/v1/embed/audio", audio, {}, lambda d: [float(x) for x in d["embeddings"][0]])

    def embed_text(self, texts: Sequence[str]) -> RestCall:
        return RestCall("POST", "/v1/embed/text", lambda d: d["embeddings"], json={"texts": list(texts)})

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
    ) -> RestCall:
        fields = {"id": item_id, "tags": list(tags_), "caption": caption, "source_uri": source_uri, "upsert": upsert}
        if path is not None:
            body = {**fields, "path": str(path), "extra": dict(extra or {}), "dedupe": dedupe}
            return RestCall("POST", "/v1/items/from-path", item, json=body)
        if audio is None:
            raise ValueError("give exactly one of: audio, path")
        extra_text = json.dumps(dict(extra)) if extra else None
        return self._upload("/v1/items", audio, {**fields, "extra": extra_text, "dedupe": dedupe}, item)

    def add_batch(self, entries: Sequence[Mapping[str, Any]]) -> RestCall:
        """AddItems: each entry add_item's arguments by name (item_id, audio or path, tags, ...)."""
        body = []
        for e in entries:
            one = {k: e[k] for k in ("tags", "caption", "source_uri", "upsert", "dedupe") if k in e}
            one["tags"] = list(one.get("tags", ()))
            source = {"audio": _b64(e["audio"])} if e.get("audio") is not None else {"path": str(e["path"])}
            body.append({"id": e["item_id"], **source, **one, "extra": dict(e.get("extra") or {})})
        return RestCall("POST", "/v1/items/batch", item_results, json={"items": body})

    def get_item(self, item_id: str) -> RestCall:
        return RestCall("GET", f"/v1/items/{_segment(item_id)}", item)

    def list_items(self, flt: Filter | None, limit: int, cursor: str) -> RestCall:
        params = _params({"limit": limit, "cursor": cursor, **_query_filter(flt)})
        return RestCall(
            "GET",
            "/v1/items",
            lambda d: ItemsPage([item(x) for x in d["items"]], d["next_cursor"], d["index_version"]),
            params=params,
        )

    def delete_item(self, item_id: str) -> RestCall:
        return RestCall("DELETE", f"/v1/items/{_segment(item_id)}", lambda d: item(d["item"]))

    def start_rebuild(
        self, folder: str | None, manifest: str | None, embeddings: str | None, mode: str, dedupe: bool = False
    ) -> RestCall:
        body = {
            k: str(v)
            for k, v in (("folder", folder), ("manifest", manifest), ("embeddings", embeddings))
            if v is not None
        }
        return RestCall("POST", "/v1/index/rebuild", job, json={**body, "mode": mode, "dedupe": dedupe})

    def rebuild_status(self, job_id: str) -> RestCall:
        return RestCall("GET", f"/v1/index/rebuild/{_segment(job_id)}", job)

    def cancel_rebuild(self, job_id: str) -> RestCall:
        return RestCall("POST", f"/v1/index/rebuild/{_segment(job_id)}/cancel", job)

    def rollback(self) -> RestCall:
        return RestCall("POST", "/v1/index/rollback", stats)

    def stats(self) -> RestCall:
        return RestCall("GET", "/v1/index/stats", stats)

    def info(self) -> RestCall:
        return RestCall("GET", "/v1/info", lambda d: Info(d["bundle"], d["backend"], d["limits"]))
