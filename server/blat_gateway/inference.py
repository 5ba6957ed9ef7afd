"""The gateway's inference layer: model calls shared by the gateway's services and the batch jobs (blat_jobs/embed.py).

Plain functions over a `ModelRuntime`: the backend a setting names, batches of clips of similar length, the embedding
of files as a rebuild stores them, and the fields predicted for audio that came without tags. Nothing here imports the
gateway's services or its faces, so a job can use the gateway's model path without the server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from blat_contract.beam import DecodingOptions
from blat_contract.labels import tags_to_multi_hot
from blat_gateway.audio import DecodedAudio
from blat_gateway.backends import Backend
from blat_gateway.errors import ServiceError
from blat_gateway.runtime import ModelRuntime
from blat_gateway.settings import PredictSettings, Settings

# A rebuild decodes clips into a window of at most this many clips or samples (64 MB of float32), sorts the window by
# length and embeds it in batches of neighbours: a batch is padded to its longest clip, so mixing a 30 s ambience
# into a batch of 1 s effects costs 30 s per clip (on the seed corpus: 7,742 padded seconds in file order for 2,667
# seconds of audio; 4,059 with these windows: bench/rebuild_batching.py).
REBUILD_WINDOW_CLIPS = 256
REBUILD_WINDOW_SAMPLES = 16_000_000
T = TypeVar("T")


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "triton":
        from blat_gateway.backends.triton import TritonBackend

        return TritonBackend(settings.bundle, settings.triton)
    from blat_gateway.backends.ort import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        settings.bundle,
        threads=settings.ort_threads,
        spinning=settings.ort_spinning,
        memory_arena=settings.ort_memory_arena,
    )


def length_batches(
    items: Iterable[T],
    length: Callable[[T], int],
    batch: int,
    window_items: int = REBUILD_WINDOW_CLIPS,
    window_length: int = REBUILD_WINDOW_SAMPLES,
) -> Iterator[list[T]]:
    """Batches of at most `batch` items of similar `length`: items are held in windows (closed at `window_items`
    items or `window_length` total length), each window sorted by length (stably) and cut into batches."""
    window: list[T] = []
    held = 0
    for item in items:
        window.append(item)
        held += length(item)
        if len(window) >= window_items or held >= window_length:
            window.sort(key=length)
            yield from (window[i : i + batch] for i in range(0, len(window), batch))
            window, held = [], 0
    window.sort(key=length)
    yield from (window[i : i + batch] for i in range(0, len(window), batch))


def analyze_batch(runtime: ModelRuntime, waves: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Clips -> one (embedding, tagger probabilities or None) per clip: what the audio micro-batcher runs."""
    emb, probs = runtime.analyze_audio(waves)
    return [(e, None if probs is None else probs[i]) for i, e in enumerate(emb)]


def content_hash(samples: np.ndarray) -> str:
    """sha256 of the decoded, resampled float32 samples: the same sound in two containers is one content."""
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()


def predicted_fields(
    runtime: ModelRuntime,
    embedding: np.ndarray,
    probs: np.ndarray | None,
    predict: PredictSettings | None,
    tags: Sequence[str],
) -> dict:
    """Record fields for audio that came without tags: its confident tags as /v1/tag scores them, and their scores
    under extra["predicted_tags"] (so a reader can tell them from given tags). Nothing when tags were given, the
    bundle has no tagger, or prediction is off."""
    if tags or probs is None or predict is None or not predict.tags:
        return {}
    found = runtime.predicted_tags(embedding, probs, predict.tag_threshold, predict.max_tags)
    return {"tags": list(found), "extra": {"predicted_tags": found}} if found else {}


def guided_captions(
    runtime: ModelRuntime, waves: Sequence[np.ndarray], tags: Sequence[Sequence[str]], predict: PredictSettings
) -> list[str]:
    """One best caption per clip, each guided by its first `predict.caption_tags` tags (BLAT's captioner)."""
    spec = runtime.manifest.captioner
    multi_hot = np.stack([tags_to_multi_hot(list(t)[: predict.caption_tags]) for t in tags])
    options = DecodingOptions(beam_size=spec.beam_size, max_tokens=spec.max_tokens)
    return [hyps[0][0] if hyps else "" for hyps in runtime.captions(list(waves), multi_hot, options)]


def embed_files(
    runtime: ModelRuntime,
    entries: Iterable[dict],
    decode: Callable[[str], DecodedAudio],
    batch: int,
    predict: PredictSettings | None = None,
    on_unreadable: Callable[[dict, str], None] | None = None,
) -> Iterator[tuple[dict, np.ndarray]]:
    """(record fields, (D,) embedding) for each {id, path, tags, caption} entry, as a rebuild stores it: each file
    decoded by `decode(path)`, embedded in batches of similar length (so the order changes). With `predict`, an
    entry without tags gets predicted ones (and, with predict.captions, a caption guided by them). A file that fails
    to decode raises ValueError naming it, or with `on_unreadable` is reported to it as (entry, "path: why") and
    left out. The gateway's rebuild and the embedding job (blat_jobs/embed.py) use this."""

    def decoded() -> Iterator[tuple[dict, DecodedAudio]]:
        for e in entries:
            try:
                yield e, decode(e["path"])
            except ServiceError as err:
                if on_unreadable is None:
                    raise ValueError(f"{e['path']}: {err.message}") from None
                on_unreadable(e, f"{e['path']}: {err.message}")

    for chunk in length_batches(decoded(), lambda ed: len(ed[1].samples), batch):
        embeddings, probs = runtime.analyze_audio([d.samples for _, d in chunk])
        records = []
        for i, (e, d) in enumerate(chunk):
            record = {
                "id": e["id"],
                "source_uri": e["path"],
                "duration_s": d.duration_s,
                "tags": list(e.get("tags", ())),
                "caption": e.get("caption", ""),
                "content_hash": content_hash(d.samples),
                **predicted_fields(runtime, embeddings[i], None if probs is None else probs[i], predict, e.get("tags")),
            }
            if e.get("extra"):  # the entry's metadata, beside what the server predicted
                record["extra"] = {**e["extra"], **record.get("extra", {})}
            records.append(record)
        todo = [
            i
            for i, r in enumerate(records)
            if predict
            and predict.captions
            and runtime.manifest.captioner
            and not r["caption"]
            and "predicted_tags" in r.get("extra", {})
        ]
        if todo:
            texts = guided_captions(
                runtime, [chunk[i][1].samples for i in todo], [records[i]["tags"] for i in todo], predict
            )
            for i, text in zip(todo, texts):
                records[i]["caption"] = text
                records[i]["extra"]["predicted_caption"] = True
        yield from zip(records, embeddings)
