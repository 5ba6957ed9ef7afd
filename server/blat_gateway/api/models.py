"""The model verbs: tag (an upload, or up to max_clips_per_request clips in one call; live streams: api/live.py),
caption, and embed audio or texts (also as the
OpenAI-compatible `POST /v1/embeddings` and `GET /v1/models` that embedding servers share)."""

# (no `from __future__ import annotations`: FastAPI reads the handlers' annotations, which name per-app models)

import base64
from datetime import datetime
from typing import Annotated

import numpy as np
from fastapi import Depends, Query
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from blat_gateway.api import proto_io
from blat_gateway.api.json_io import answer, audio_body, base64_audio, window_json
from blat_gateway.endpoint import AUDIO_ERRORS, READ, READ_ERRORS, endpoint
from blat_gateway.errors import BadRequest, NotFound
from blat_gateway.index.records import MAX_TAGS
from blat_gateway.schema import (
    CaptionsOut,
    EmbeddingsOut,
    OpenAIEmbeddingsOut,
    OpenAIModelsOut,
    TagClipsOut,
    TagsOut,
)
from blat_gateway.services.captioning import MAX_BEAM
from blat_wire import blat_pb2 as pb

AUDIO_IN = {"scope": READ, "gate": "audio", "body": "audio", "errors": AUDIO_ERRORS, "tag": "models"}

tag = endpoint("tag", route="POST /v1/tag", rpc="Tag", ok=TagsOut, **AUDIO_IN)
caption = endpoint("caption", route="POST /v1/caption", rpc="Caption", ok=CaptionsOut, **AUDIO_IN)
embed_audio = endpoint("embed_audio", route="POST /v1/embed/audio", rpc="EmbedAudio", ok=EmbeddingsOut, **AUDIO_IN)
embed_text = endpoint(
    "embed_text",
    route="POST /v1/embed/text",
    rpc="EmbedText",
    scope=READ,
    gate="text",
    body="json",
    ok=EmbeddingsOut,
    errors=READ_ERRORS,
    tag="models",
)

# OpenAI's embeddings API (as infinity, TEI and vLLM serve it): the model input, text or audio, is known only once
# the JSON is read, so the route admits itself through that input's gate.
openai_embeddings = endpoint(
    "openai_embeddings",
    route="POST /v1/embeddings",
    scope=READ,
    body="audio_json",
    ok=OpenAIEmbeddingsOut,
    errors=(*AUDIO_ERRORS, 404),
    tag="openai",
)
openai_models = endpoint(
    "openai_models", route="GET /v1/models", scope=READ, ok=OpenAIModelsOut, errors=(401, 403), tag="openai"
)


@tag.rest
def _(gw, m):
    lim = gw.limits

    def seconds_query():  # one Query object per parameter: FastAPI keeps per-parameter state on it
        return Query(0.0, ge=0, le=lim.max_audio_seconds, description="0: none (hop_s 0: the window)")

    async def tag(
        data: Annotated[bytes, Depends(audio_body)],
        labels: list[str] = Query([], max_length=lim.max_labels),
        top_k: int = Query(10, ge=1, le=lim.max_labels),
        window_s: float = seconds_query(),
        hop_s: float = seconds_query(),
    ) -> JSONResponse:
        """Tags with independent per-label scores: the 527 AudioSet labels, or `labels`; `window_s` > 0 adds tags per
        window over time. Each tag says its `scorer`: the bundle's supervised AudioSet tagger for the classes it was
        trained on (`tagger+zero_shot` where the bundle mixes in the zero-shot score), zero-shot (the label's prompt
        against the audio embedding) for any other label."""
        clip, windows = await run_in_threadpool(gw.tagging.tag, data, labels or None, top_k, window_s, hop_s)
        return answer({"tags": [vars(t) for t in clip], "windows": [window_json(w) for w in windows]})

    return tag


@tag.grpc
def _(gw, req):
    clip, windows = gw.tagging.tag(req.audio.data, list(req.labels) or None, req.top_k or 10, req.window_s, req.hop_s)
    return pb.TagResponse(tags=proto_io.scores(clip), windows=[proto_io.tag_window(w) for w in windows])


@caption.rest
def _(gw, m):
    async def caption(
        data: Annotated[bytes, Depends(audio_body)],
        tags: list[str] = Query([], max_length=MAX_TAGS),
        n_best: int = Query(1, ge=1, le=MAX_BEAM),
        beam_size: int = Query(0, ge=0, le=MAX_BEAM, description="0: the bundle's default"),
    ) -> JSONResponse:
        """Captions for the clip, optionally guided by AudioSet tags (display names); n-best by beam search."""
        result = await run_in_threadpool(gw.captioning.caption, data, tags, n_best, beam_size)
        return answer({"captions": [vars(c) for c in result]})

    return caption


@caption.grpc
def _(gw, req):
    caps = gw.captioning.caption(req.audio.data, list(req.tags), req.n_best or 1, req.beam_size)
    return pb.CaptionResponse(
        captions=[
            pb.Caption(text=c.text, log_prob=c.log_prob, guide_tags=c.guide_tags, tags_predicted=c.tags_predicted)
            for c in caps
        ]
    )


@embed_audio.rest
def _(gw, m):
    async def embed_audio(data: Annotated[bytes, Depends(audio_body)]) -> JSONResponse:
        vec = await run_in_threadpool(gw.embedding.audio, data)
        return answer({"embeddings": [vec.tolist()], "dim": len(vec), "bundle": gw.manifest.id})

    return embed_audio


@embed_audio.grpc
def _(gw, req):
    vec = gw.embedding.audio(req.audio.data)
    return pb.EmbedResponse(embeddings=[pb.Embedding(values=vec.tolist())], dim=len(vec), bundle=gw.manifest.id)


@embed_text.rest
def _(gw, m):
    async def embed_text(req: m.EmbedTextBody) -> JSONResponse:
        vecs = await run_in_threadpool(gw.embedding.texts, req.texts)
        return answer({"embeddings": vecs.tolist(), "dim": vecs.shape[1], "bundle": gw.manifest.id})

    return embed_text


@embed_text.grpc
def _(gw, req):
    vecs = gw.embedding.texts(list(req.texts))
    return pb.EmbedResponse(
        embeddings=[pb.Embedding(values=v.tolist()) for v in vecs], dim=vecs.shape[1], bundle=gw.manifest.id
    )


def _openai_embeddings(gw, req) -> dict:
    manifest = gw.manifest
    if req.model not in (manifest.id, manifest.name):
        raise NotFound(f"model {req.model!r}: this gateway serves {manifest.id!r}", model=req.model)
    inputs = [req.input] if isinstance(req.input, str) else list(req.input)
    with gw.gates[req.modality].admitted():  # the front door admitted no gate: the input decides which
        if req.modality == "audio":
            vecs = gw.embedding.audios([base64_audio(v, f"input[{i}]") for i, v in enumerate(inputs)])
        else:
            vecs = gw.embedding.texts(inputs)
    if req.dimensions is not None and req.dimensions != vecs.shape[1]:
        raise BadRequest(f"dimensions: this model's embeddings have {vecs.shape[1]}; it cannot shorten them")
    vecs = vecs.astype("<f4")
    encode = (
        (lambda v: base64.b64encode(v.tobytes()).decode()) if req.encoding_format == "base64" else np.ndarray.tolist
    )
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vecs)],
        "model": manifest.id,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


@openai_embeddings.rest
def _(gw, m):
    async def openai_embeddings(req: m.OpenAIEmbeddingsBody) -> JSONResponse:
        """OpenAI-compatible embeddings (`openai.OpenAI(base_url=".../v1").embeddings.create(...)`): texts, or with
        `"modality": "audio"` (infinity's extension) base64-encoded clips, into the shared space, so a text and a
        clip embedded here compare by cosine. Limits as /v1/embed/*: at most limits.max_texts texts or
        limits.max_clips_per_request clips lasting together at most limits.max_audio_seconds."""
        return answer(await run_in_threadpool(_openai_embeddings, gw, req))

    return openai_embeddings


@openai_models.rest
def _(gw, m):
    async def openai_models() -> JSONResponse:
        """The served bundle as OpenAI's model list (what OpenAI-compatible clients read first)."""
        created = datetime.fromisoformat(gw.manifest.created.replace("Z", "+00:00")).timestamp()
        model = {"id": gw.manifest.id, "object": "model", "created": int(created), "owned_by": "blat"}
        return answer({"object": "list", "data": [model]})

    return openai_models


# Several clips in one call: base64 in JSON, as proto3 JSON writes bytes, so the REST body is the JSON form of the
# gRPC request; together they stay within one upload's limits (the front door caps an "audio_json" body).
tag_clips = endpoint(
    "tag_clips",
    route="POST /v1/tag/clips",
    rpc="TagClips",
    scope=READ,
    gate="audio",
    body="audio_json",
    ok=TagClipsOut,
    errors=AUDIO_ERRORS,
    tag="models",
)


def _tags_json(clip, windows) -> dict:
    return {"tags": [vars(t) for t in clip], "windows": [window_json(w) for w in windows]}


@tag_clips.rest
def _(gw, m):
    async def tag_clips(req: m.TagClipsBody) -> JSONResponse:
        """`/v1/tag` for up to limits.max_clips_per_request clips at once, with the same options for each: one result
        per clip, in order. All or nothing: a clip that does not decode fails the call and the error names it."""
        clips = [base64_audio(a.data, f"audios[{i}]") for i, a in enumerate(req.audios)]
        results = await run_in_threadpool(
            gw.tagging.tag_clips, clips, req.labels or None, req.top_k, req.window_s, req.hop_s
        )
        return answer({"results": [_tags_json(clip, windows) for clip, windows in results]})

    return tag_clips


@tag_clips.grpc
def _(gw, req):
    results = gw.tagging.tag_clips(
        [a.data for a in req.audios], list(req.labels) or None, req.top_k or 10, req.window_s, req.hop_s
    )
    return pb.TagClipsResponse(
        results=[
            pb.TagResponse(tags=proto_io.scores(clip), windows=[proto_io.tag_window(w) for w in windows])
            for clip, windows in results
        ]
    )
