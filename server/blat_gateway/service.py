"""The gateway's operations, shared by the REST and gRPC faces so the two APIs cannot drift.

Every method takes plain values (bytes, strings, numbers), validates them against the settings' limits,
and returns plain dataclasses or raises a `blat_gateway.errors.ServiceError`. Model calls go through the
micro-batchers with the request deadline; search by stored id touches only the index, so it keeps
working while the model backend is down.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from blat_contract.beam import DecodingOptions
from blat_contract.config import to_dict
from blat_contract.labels import tags_to_multi_hot
from blat_gateway.audio import AudioLimits, DecodedAudio, decode_audio
from blat_gateway.backends import Backend
from blat_gateway.admission import Gate, remaining, reset_deadline, set_deadline
from blat_gateway.batching import MicroBatcher
from blat_gateway.errors import BadRequest, DeadlineExceeded, Forbidden, NotFound, ServiceError
from blat_gateway.index import Hit, IndexStore, ItemRecord, SearchFilter
from blat_gateway.index.bulk import read_folder
from blat_gateway.index.rebuild import Entry, Skipped
from blat_gateway.ingest import check_path, read_inside_roots
from blat_gateway.inputs import check_text, manifest_rows
from blat_gateway.item_limits import check_fields, check_record
from blat_gateway.memory import MemoryReleaser
from blat_gateway.metrics import Metrics
from blat_gateway.runtime import ModelRuntime
from blat_gateway.settings import PredictSettings, Settings
from blat_gateway.tagging import LabelScore, LabelSet, head_index
from blat_gateway.uploads import UploadStore

log = logging.getLogger(__name__)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"}
MAX_BEAM = 10
MAX_WINDOWS = 2000
MAX_WINDOWED_AUDIO = 8  # windows may cover a clip at most this many times over (window_s / hop_s <= 8)
LABEL_CACHE_SIZE = 4096  # embeddings of custom labels kept (oldest dropped first)
# A rebuild decodes clips into a window of at most this many clips or samples (64 MB of float32), sorts the window by
# length and embeds it in batches of neighbours: a batch is padded to its longest clip, so mixing a 30 s ambience
# into a batch of 1 s effects costs 30 s per clip (on the seed corpus: 7,742 padded seconds in file order for 2,667
# seconds of audio; 4,059 with these windows: bench/rebuild_batching.py).
REBUILD_WINDOW_CLIPS = 256
REBUILD_WINDOW_SAMPLES = 16_000_000
T = TypeVar("T")


def window_spans(n: int, win: int, hop: int) -> list[tuple[int, int]]:
    """[start, end) sample spans of windows over n samples: full windows every `hop`, then one shorter window for
    what the last full one left out (a clip shorter than a window is one window). A stream that emits each window
    once its audio has arrived, and the rest at its end, makes the same spans."""
    spans = [(s, s + win) for s in range(0, n - win + 1, hop)]
    if not spans:
        return [(0, n)] if n else []
    if spans[-1][1] < n:
        spans.append((spans[-1][0] + hop, n))
    return spans


def length_batches(items: Iterable[T], length: Callable[[T], int], batch: int, window_items: int = REBUILD_WINDOW_CLIPS,
                   window_length: int = REBUILD_WINDOW_SAMPLES) -> Iterator[list[T]]:
    """Batches of at most `batch` items of similar `length`: items are held in windows (closed at `window_items`
    items or `window_length` total length), each window sorted by length (stably) and cut into batches."""
    window: list[T] = []
    held = 0
    for item in items:
        window.append(item)
        held += length(item)
        if len(window) >= window_items or held >= window_length:
            window.sort(key=length)
            yield from (window[i: i + batch] for i in range(0, len(window), batch))
            window, held = [], 0
    window.sort(key=length)
    yield from (window[i: i + batch] for i in range(0, len(window), batch))


@dataclass(frozen=True)
class TagWindow:
    start_s: float
    end_s: float
    tags: tuple[LabelScore, ...]


@dataclass(frozen=True)
class CaptionResult:
    text: str
    log_prob: float
    guide_tags: list[str]  # the AudioSet tags that guided the captioner: given, or predicted
    tags_predicted: bool  # the guide tags were predicted by the bundle's tagger (none were given)


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "triton":
        from blat_gateway.backends.triton import TritonBackend

        return TritonBackend(settings.bundle, settings.triton)
    from blat_gateway.backends.ort import OnnxRuntimeBackend

    return OnnxRuntimeBackend(settings.bundle, threads=settings.ort_threads, spinning=settings.ort_spinning,
                              memory_arena=settings.ort_memory_arena)


def open_store(settings: Settings, dim: int, bundle_id: str) -> IndexStore:
    """The index the settings name: FAISS versions under index_dir, or Milvus (milvus-lite in index_dir by default)."""
    milvus = None
    if settings.index_engine == "milvus":
        milvus = settings.milvus
        if not milvus.uri:
            milvus = replace(milvus, uri=str(Path(settings.index_dir) / "milvus.db"))
    return IndexStore(settings.index_dir, dim=dim, bundle_id=bundle_id, kind=settings.index_kind, milvus=milvus)


def content_hash(samples: np.ndarray) -> str:
    """sha256 of the decoded, resampled float32 samples: the same sound in two containers is one content."""
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()


def predicted_fields(runtime: ModelRuntime, embedding: np.ndarray, probs: np.ndarray | None,
                     predict: PredictSettings | None, tags: Sequence[str]) -> dict:
    """Record fields for audio that came without tags: its confident tags as /v1/tag scores them, and their scores
    under extra["predicted_tags"] (so a reader can tell them from given tags). Nothing when tags were given, the
    bundle has no tagger, or prediction is off."""
    if tags or probs is None or predict is None or not predict.tags:
        return {}
    found = runtime.predicted_tags(embedding, probs, predict.tag_threshold, predict.max_tags)
    return {"tags": list(found), "extra": {"predicted_tags": found}} if found else {}


def guided_captions(runtime: ModelRuntime, waves: Sequence[np.ndarray], tags: Sequence[Sequence[str]],
                    predict: PredictSettings) -> list[str]:
    """One best caption per clip, each guided by its first `predict.caption_tags` tags (BLAT's captioner)."""
    spec = runtime.manifest.captioner
    multi_hot = np.stack([tags_to_multi_hot(list(t)[: predict.caption_tags]) for t in tags])
    options = DecodingOptions(beam_size=spec.beam_size, max_tokens=spec.max_tokens)
    return [hyps[0][0] if hyps else "" for hyps in runtime.captions(list(waves), multi_hot, options)]


def embed_files(runtime: ModelRuntime, entries: Iterable[dict], decode: Callable[[str], DecodedAudio],
                batch: int, predict: PredictSettings | None = None,
                on_unreadable: Callable[[dict, str], None] | None = None) -> Iterator[tuple[dict, np.ndarray]]:
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
            records.append({"id": e["id"], "source_uri": e["path"], "duration_s": d.duration_s,
                            "tags": list(e.get("tags", ())), "caption": e.get("caption", ""),
                            "content_hash": content_hash(d.samples),
                            **predicted_fields(runtime, embeddings[i], None if probs is None else probs[i], predict,
                                               e.get("tags"))})
        todo = [i for i, r in enumerate(records) if predict and predict.captions and runtime.manifest.captioner
                and not r["caption"] and "predicted_tags" in r.get("extra", {})]
        if todo:
            texts = guided_captions(runtime, [chunk[i][1].samples for i in todo], [records[i]["tags"] for i in todo],
                                    predict)
            for i, text in zip(todo, texts):
                records[i]["caption"] = text
                records[i]["extra"]["predicted_caption"] = True
        yield from zip(records, embeddings)


class Gateway:
    def __init__(self, settings: Settings, backend: Backend | None = None, store: IndexStore | None = None,
                 metrics: Metrics | None = None):
        self.settings, self.limits = settings, settings.limits
        self.memory = MemoryReleaser()  # first, before the threads: caps malloc arenas, returns freed memory
        self.backend = backend or make_backend(settings)
        self.runtime = ModelRuntime(settings.bundle, self.backend, settings.batching.max_call_seconds,
                                    settings.batching.max_caption_rows)
        self.manifest = self.runtime.manifest
        self.audio_limits = AudioLimits(max_bytes=self.limits.max_upload_bytes, max_seconds=self.limits.max_audio_seconds)
        self.store = store or open_store(settings, self.manifest.embedding_dim, self.manifest.id)
        self.uploads = UploadStore(settings.index_dir)
        self.metrics = metrics or Metrics()
        b = settings.batching
        # The gates bound the requests; a request may queue many items (texts, labels), so the batchers' own queues
        # are only a backstop sized for full gates of full requests.
        items = b.max_queue * max(self.limits.max_texts, self.limits.max_labels, 1)
        batcher = lambda name, fn: MicroBatcher(name, fn, b.max_batch, b.max_wait_ms / 1000, items,  # noqa: E731
                                                on_batch=self.metrics.observe_batch, on_idle=self.memory.soon)
        self.gates = {"audio": Gate("audio", b.max_queue), "text": Gate("text", b.max_queue)}
        self.audio_batcher = batcher("audio_embed", self._analyze_batch)
        self.text_batcher = batcher("text_embed", lambda texts: list(self.runtime.encode_text(texts)))
        self.caption_batcher = batcher("caption", self._caption_batch)
        self.metrics.bind(self)
        self._label_cache: OrderedDict[str, np.ndarray] = OrderedDict()

    # -- inputs ------------------------------------------------------------------------------------------------------

    def decode(self, data: bytes) -> DecodedAudio:
        return decode_audio(data, self.runtime.sample_rate, self.audio_limits)

    def _check_text(self, text: object, what: str = "text") -> str:
        return check_text(text, what, self.limits.max_text_chars)

    def _check_k(self, k: int) -> int:
        if not isinstance(k, int) or not 1 <= k <= self.limits.max_k:
            raise BadRequest(f"k must be an integer in [1, {self.limits.max_k}], got {k!r}")
        return k

    def _check_path(self, path: str, trusted: bool = False) -> Path:
        """A server-side path must resolve (symlinks included) inside one of the configured ingest roots."""
        return check_path(path, self.settings.ingest_roots, trusted)

    def _read_path(self, path: str | Path, trusted: bool = False) -> bytes:
        """Checked against the roots again as it is opened (server/blat_gateway/ingest.py): a rebuild opens files later."""
        return read_inside_roots(path, self.settings.ingest_roots, self.limits.max_upload_bytes, trusted)

    @property
    def timeout(self) -> float:
        """Seconds left of the current request's deadline (set at admission); DeadlineExceeded when none are left."""
        return remaining(self.limits.request_timeout_s)

    def _result(self, future):
        """A batcher future's result within the request's deadline; DeadlineExceeded (504) past it, as `submit`."""
        try:
            return future.result(timeout=self.timeout)
        except TimeoutError:  # concurrent.futures.TimeoutError is TimeoutError since Python 3.11
            raise DeadlineExceeded("the request's deadline passed while its model work was running") from None

    @contextlib.contextmanager
    def admitted(self, gate: str | None) -> Iterator[None]:
        """The faces' entry: a place in `gate` (None: no model call) and the request's deadline, for the call."""
        with self.gates[gate].admitted() if gate else contextlib.nullcontext():
            token = set_deadline(self.limits.request_timeout_s)
            try:
                yield
            finally:
                reset_deadline(token)

    @property
    def admissible(self) -> int:
        """Requests the gates admit at once: the faces size their thread pools from it."""
        return sum(g.capacity for g in self.gates.values())

    # -- embeddings --------------------------------------------------------------------------------------------------

    def _analyze_batch(self, waves: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        emb, probs = self.runtime.analyze_audio(waves)
        return [(e, None if probs is None else probs[i]) for i, e in enumerate(emb)]

    def analyze_waveform(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """-> the (D,) embedding and the tagger's (H,) class probabilities (None when the bundle has no tagger)."""
        return self.audio_batcher.submit(samples, self.timeout)

    def embed_waveform(self, samples: np.ndarray) -> np.ndarray:
        return self.analyze_waveform(samples)[0]

    def embed_audio(self, data: bytes) -> np.ndarray:
        """Encoded audio bytes -> (D,) unit-norm embedding."""
        return self.embed_waveform(self.decode(data).samples)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not isinstance(texts, (list, tuple)) or not texts:
            raise BadRequest("texts must be a non-empty list of strings")
        if len(texts) > self.limits.max_texts:
            raise BadRequest(f"at most {self.limits.max_texts} texts per request, got {len(texts)}")
        checked = [self._check_text(t, f"texts[{i}]") for i, t in enumerate(texts)]
        futures = [self.text_batcher.submit_future(t, self.timeout) for t in checked]
        return np.stack([self._result(f) for f in futures])

    # -- search --------------------------------------------------------------------------------------------------------

    def search_text(self, query: str, k: int = 10, flt: SearchFilter | None = None) -> list[Hit]:
        self._check_k(k)
        vec = self.text_batcher.submit(self._check_text(query, "query"), self.timeout)
        return self.store.search(vec, k, flt)[0]

    def search_audio(self, data: bytes, k: int = 10, flt: SearchFilter | None = None) -> list[Hit]:
        self._check_k(k)
        return self.store.search(self.embed_audio(data), k, flt)[0]

    def search_item(self, item_id: str, k: int = 10, flt: SearchFilter | None = None) -> list[Hit]:
        """Neighbours of a stored item, from its stored embedding: no model call."""
        return self.store.search_by_id(item_id, self._check_k(k), flt)

    # -- tagging ---------------------------------------------------------------------------------------------------

    def _labels(self, labels: Sequence[str] | None) -> LabelSet:
        """The labels to score: the bank's (the 527 AudioSet labels) by default. A label the tagger knows is scored
        by it; a label the bank lacks is embedded through the prompt and gets the bank's mean calibration."""
        bank = self.runtime.labels
        tagger = self.manifest.tagger.labels if self.manifest.tagger else None
        mix = self.manifest.tagger.zero_shot_weight if self.manifest.tagger else 0.0
        if not labels:
            return self.runtime.default_labels
        if len(labels) > self.limits.max_labels:
            raise BadRequest(f"at most {self.limits.max_labels} labels, got {len(labels)}")
        index = {n.lower(): i for i, n in enumerate(bank.names)}
        for i, label in enumerate(labels):
            self._check_text(label, f"labels[{i}]")
        new = [label for label in dict.fromkeys(labels) if label.lower() not in index and label not in self._label_cache]
        # New labels are embedded together: their futures join the same text batches.
        prompts = [self.manifest.labels.prompt_template.format(label=label.lower()) for label in new]
        futures = [self.text_batcher.submit_future(p, self.timeout) for p in prompts]
        fresh = {label: self._result(f) for label, f in zip(new, futures)}
        mean_scale, mean_bias = float(bank.scale.mean()), float(bank.bias.mean())
        names, embs, scale, bias = [], [], [], []
        for label in labels:
            i = index.get(label.lower())
            if i is not None:
                emb, s, b = bank.embeddings[i], bank.scale[i], bank.bias[i]
            else:
                emb = fresh.get(label)
                if emb is None:
                    emb = self._label_cache[label]
                else:
                    self._label_cache[label] = emb
                s, b = mean_scale, mean_bias
            names.append(label)
            embs.append(emb)
            scale.append(s)
            bias.append(b)
        while len(self._label_cache) > LABEL_CACHE_SIZE:
            self._label_cache.popitem(last=False)
        return LabelSet(tuple(names), np.stack(embs), np.array(scale, np.float32), np.array(bias, np.float32),
                        head_index(tuple(names), tagger), mix)

    def check_windows(self, window_s: float, hop_s: float) -> tuple[int, int]:
        """Window and hop in seconds (hop 0 = the window) -> in samples; the same limits on both faces."""
        step, longest = self.manifest.audio.frame_seconds, self.limits.max_audio_seconds
        hop_s = hop_s or window_s
        if not (step <= window_s <= longest and step <= hop_s <= window_s):  # False for NaN too
            raise BadRequest(f"need {step:g} s (one frame step) <= hop_s <= window_s <= {longest:g} s, "
                             f"got window_s={window_s!r}, hop_s={hop_s!r}")
        rate = self.runtime.sample_rate
        return round(window_s * rate), round(hop_s * rate)

    def label_bank(self, labels: Sequence[str] | None = None) -> LabelSet:
        """The labels to score (the 527 AudioSet labels by default), resolved once per request or stream."""
        return self._labels(labels)

    @staticmethod
    def _score(outputs: Sequence[tuple[np.ndarray, np.ndarray | None]], labels: LabelSet) -> np.ndarray:
        """Clips' (embedding, class probabilities) -> (B, K) scores of `labels`."""
        probs = [p for _, p in outputs]
        return labels.scores(np.stack([e for e, _ in outputs]), None if probs[0] is None else np.stack(probs))

    def tag_windows(self, samples: np.ndarray, win: int, hop: int, labels: LabelSet, top_k: int = 10,
                    offset: int = 0) -> tuple[TagWindow, ...]:
        """Tags per window of `samples`, each window analysed as a clip of its own (the windows of one clip share
        batches). The one scoring path of windowed tagging: /v1/tag with window_s and the StreamTag RPC."""
        spans = window_spans(len(samples), win, hop)
        if len(spans) > MAX_WINDOWS or sum(b - a for a, b in spans) > MAX_WINDOWED_AUDIO * len(samples) + win:
            raise BadRequest(f"{len(spans)} windows of {win / self.runtime.sample_rate:g} s; at most {MAX_WINDOWS}, "
                             f"covering at most {MAX_WINDOWED_AUDIO}x the clip (use a larger hop_s)")
        futures = [self.audio_batcher.submit_future(samples[a:b], self.timeout) for a, b in spans]
        probs = self._score([self._result(f) for f in futures], labels)
        rate = self.runtime.sample_rate
        return tuple(TagWindow((offset + a) / rate, (offset + b) / rate, labels.top(p, top_k))
                     for (a, b), p in zip(spans, probs))

    def tag(self, data: bytes, labels: Sequence[str] | None = None, top_k: int = 10, window_s: float = 0.0,
            hop_s: float = 0.0) -> tuple[tuple[LabelScore, ...], tuple[TagWindow, ...]]:
        """Clip-level tags and, with window_s > 0, tags per window (see `tag_windows`)."""
        if not isinstance(top_k, int) or top_k < 1:
            raise BadRequest(f"top_k must be a positive integer, got {top_k!r}")
        spans = self.check_windows(window_s, hop_s) if (window_s or hop_s) else None
        label_set = self._labels(labels)
        audio = self.decode(data)
        clip = label_set.top(self._score([self.analyze_waveform(audio.samples)], label_set)[0], top_k)
        return clip, (self.tag_windows(audio.samples, *spans, label_set, top_k) if spans else ())

    # -- captioning ------------------------------------------------------------------------------------------------

    def caption(self, data: bytes, tags: Sequence[str] = (), n_best: int = 1, beam_size: int = 0) -> list[CaptionResult]:
        """Captions guided by `tags`; without tags, by the clip's confident predicted tags (bundles with a tagger;
        settings.predict.caption_tags of them), else unguided. Each answer names the tags that guided it."""
        spec = self.manifest.captioner
        if spec is None:
            raise NotFound(f"bundle {self.manifest.id} has no captioner")
        beam = beam_size or spec.beam_size
        if not 1 <= beam <= MAX_BEAM or not 1 <= n_best <= beam:
            raise BadRequest(f"need 1 <= n_best <= beam_size <= {MAX_BEAM}, got n_best={n_best}, beam_size={beam}")
        for i, tag in enumerate(tags):
            self._check_text(tag, f"tags[{i}]")
        try:
            multi_hot = tags_to_multi_hot(tags) if tags else None
        except KeyError as e:
            raise BadRequest(f"unknown AudioSet tag(s): {e.args[0]}") from None
        audio = self.decode(data)
        guide, predicted = list(tags), False
        p = self.settings.predict
        if not tags and spec.use_tags and self.runtime.has_tagger and p.caption_tags:
            guide = list(self.runtime.predicted_tags(*self.analyze_waveform(audio.samples), p.tag_threshold,
                                                     p.caption_tags))
            predicted = bool(guide)
            multi_hot = tags_to_multi_hot(guide) if guide else None
        options = DecodingOptions(beam_size=beam, max_tokens=spec.max_tokens, n_best=n_best)
        hyps = self.caption_batcher.submit((audio.samples, multi_hot, options), self.timeout)
        return [CaptionResult(text, log_prob, guide, predicted) for text, log_prob in hyps]

    def _caption_batch(self, jobs: Sequence[tuple[np.ndarray, np.ndarray | None, DecodingOptions]]) -> list:
        """Clips that share decoding options are captioned in one beam search; no tags = an all-zero tag vector."""
        out: list = [None] * len(jobs)
        groups: dict[DecodingOptions, list[int]] = {}
        for i, (_, _, options) in enumerate(jobs):
            groups.setdefault(options, []).append(i)
        n_tags = self.manifest.captioner.n_tags
        for options, idx in groups.items():
            tags = np.stack([jobs[i][1] if jobs[i][1] is not None else np.zeros(n_tags, np.float32) for i in idx])
            for i, hyps in zip(idx, self.runtime.captions([jobs[i][0] for i in idx], tags, options)):
                out[i] = hyps
        return out

    # -- items -----------------------------------------------------------------------------------------------------

    def add_item(self, item_id: str, data: bytes | None = None, path: str | None = None, tags: Sequence[str] = (),
                 caption: str = "", source_uri: str = "", upsert: bool = False) -> ItemRecord:
        """Store one item. Without tags it gets the tagger's predicted ones (settings.predict), marked in
        extra["predicted_tags"] with their scores; with predict.captions and no caption, a caption guided by them."""
        if (data is None) == (path is None):
            raise BadRequest("give exactly one of: uploaded audio, or a server-side path")
        check_fields(self.limits, tags, caption, source_uri)  # before any model work
        uploaded = path is None
        if path is not None:
            real = self._check_path(path)
            data, source_uri = self._read_path(real), source_uri or str(real)
        audio = self.decode(data)
        record = ItemRecord(id=item_id, source_uri=source_uri, duration_s=audio.duration_s, tags=tuple(tags),
                            caption=caption, content_hash=content_hash(audio.samples))
        embedding, probs = self.analyze_waveform(audio.samples)
        predicted = predicted_fields(self.runtime, embedding, probs, self.settings.predict, record.tags)
        if predicted:
            extra = dict(predicted["extra"])
            if self.settings.predict.captions and not caption and self.manifest.captioner:
                options = DecodingOptions(beam_size=self.manifest.captioner.beam_size,
                                          max_tokens=self.manifest.captioner.max_tokens)
                guide = tags_to_multi_hot(predicted["tags"][: self.settings.predict.caption_tags])
                caption = self.caption_batcher.submit((audio.samples, guide, options), self.timeout)[0][0]
                extra["predicted_caption"] = True
            record = replace(record, tags=tuple(predicted["tags"]), caption=caption, extra=extra)
        check_record(record, self.limits)  # what was derived too: a path as source_uri, predicted fields
        replaced = self._existing(item_id) if upsert else None
        if not uploaded:  # its audio stays where it is (played back from source_uri while inside the roots)
            stored = self.store.add(record, embedding, upsert=upsert)
        else:
            with self.uploads.staged(data) as upload:  # durable before the commit, in place before the answer
                stored = self.store.add(record, embedding, upsert=upsert)
                upload.commit(item_id, stored.content_hash)
        if replaced is not None and (replaced.content_hash != stored.content_hash or not uploaded):
            self.uploads.remove(item_id, replaced.content_hash)  # the upload an upsert replaced
        return stored

    def _existing(self, item_id: str) -> ItemRecord | None:
        try:
            return self.store.get(item_id)
        except NotFound:
            return None

    def get_item(self, item_id: str) -> ItemRecord:
        return self.store.get(item_id)

    def delete_item(self, item_id: str) -> ItemRecord:
        removed = self.store.delete(item_id)
        self.uploads.remove(item_id, removed.content_hash)
        return removed

    def item_audio(self, item_id: str) -> Path:
        """The file holding a stored item's audio: its upload, or its source file while that is inside the ingest
        roots. NotFound otherwise (the answer says which)."""
        item = self.store.get(item_id)
        upload = self.uploads.find(item_id, item.content_hash)
        if upload is not None:
            return upload
        if item.source_uri:
            try:
                real = self._check_path(item.source_uri)
                if real.is_file():
                    return real
            except (Forbidden, NotFound, BadRequest):
                pass
        raise NotFound(f"item {item_id!r} has no playable audio here: it was not uploaded, and its source "
                       f"{item.source_uri or '(none)'} is not a file inside the ingest roots", id=item_id)

    # -- rebuilds --------------------------------------------------------------------------------------------------

    def _rebuild_entries(self, folder: str | None, manifest: str | None, trusted: bool = False) -> list[dict]:
        if folder is not None:
            root = self._check_path(folder, trusted)
            if not root.is_dir():
                raise BadRequest(f"{folder} is not a folder")
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            for p in files:  # a symlink inside the folder must not lead outside the roots
                self._check_path(str(p), trusted)
            return [{"id": str(p.relative_to(root)).replace(" ", "_"), "path": str(p)} for p in files]
        path = self._check_path(manifest, trusted)
        entries = []
        for n, entry in manifest_rows(path):
            audio = entry.pop("audio")
            entry["path"] = str(self._check_path(str(path.parent / audio), trusted))  # an absolute audio stays so
            try:  # the record's own checks, now: a bad row refuses the request instead of failing the job later
                ItemRecord(id=entry["id"], tags=entry["tags"], caption=entry["caption"])
                check_fields(self.limits, entry["tags"], entry["caption"], entry["path"])
            except BadRequest as e:
                raise BadRequest(f"{manifest}:{n}: {e.message}") from None
            entries.append(entry)
        return entries

    def start_rebuild(self, folder: str | None = None, manifest: str | None = None, trusted: bool = False,
                      embeddings: str | None = None):
        """From audio (a folder or a manifest, embedded here) or from `embeddings`, a finished embedding job's folder
        (python -m blat_jobs.embed). trusted: the operator's own paths (settings.seed_manifest), exempt from the
        ingest-roots check."""
        if sum(x is not None for x in (folder, manifest, embeddings)) != 1:
            raise BadRequest("give exactly one of: folder, manifest, embeddings")
        share = self.settings.rebuild_max_unreadable_share
        if embeddings is not None:
            summary, pairs = read_folder(self._check_path(embeddings, trusted), lambda r: check_record(r, self.limits))
            if summary["bundle_id"] != self.manifest.id:
                raise BadRequest(f"{embeddings} holds embeddings of bundle {summary['bundle_id']!r}; this gateway "
                                 f"serves {self.manifest.id!r}: embed the collection with its bundle")
            return self.store.start_rebuild(pairs, int(summary["items"]), bundle_id=self.manifest.id,
                                            max_unreadable_share=share).progress()
        entries = self._rebuild_entries(folder, manifest, trusted)

        def pairs() -> Iterator[Entry]:
            """Each file opened under the roots' check; an unreadable one, or one whose record breaks a limit, is
            `Skipped` with its reason (the job counts them)."""
            decode = lambda path: self.decode(self._read_path(path, trusted))  # noqa: E731
            unreadable: list[str] = []
            for record, emb in embed_files(self.runtime, entries, decode, self.settings.batching.max_batch,
                                           self.settings.predict, lambda _, why: unreadable.append(why)):
                yield from (Skipped(why) for why in unreadable)
                unreadable.clear()
                try:
                    yield check_record(ItemRecord(**record), self.limits), emb
                except BadRequest as e:
                    yield Skipped(f"{record['source_uri']}: {e.message}")
            yield from (Skipped(why) for why in unreadable)

        return self.store.start_rebuild(pairs, len(entries), bundle_id=self.manifest.id,
                                        max_unreadable_share=share).progress()

    def rebuild_status(self, job_id: str):
        job = self.store.rebuild_job
        if job is None or job.progress().version != job_id:
            raise NotFound(f"no rebuild job {job_id!r}")
        return job.progress()

    def cancel_rebuild(self, job_id: str):
        progress = self.rebuild_status(job_id)
        self.store.rebuild_job.cancel()
        return progress

    def rollback(self):
        self.store.rollback()
        return self.store.stats()

    def seed_index(self):
        """At start-up: an empty index with a configured seed manifest is rebuilt from it in the background."""
        if self.settings.seed_manifest and not self.settings.read_only and self.store.stats().count == 0 \
                and self.store.rebuild_job is None:
            progress = self.start_rebuild(manifest=self.settings.seed_manifest, trusted=True)
            log.info("seeding the index", extra={"manifest": self.settings.seed_manifest, "job": progress.version,
                                                 "items": progress.total})
            return progress
        return None

    # -- status ----------------------------------------------------------------------------------------------------

    def stats(self):
        return self.store.stats()

    def info(self) -> dict:
        """What both faces answer for Info: the bundle's bundle.json, the backend and the limits in force."""
        return {"bundle": json.loads((Path(self.settings.bundle) / "bundle.json").read_text()),
                "backend": self.settings.backend, "limits": to_dict(self.limits)}

    def ready(self) -> tuple[bool, str]:
        try:
            if not self.backend.ready():
                return False, f"model backend ({self.settings.backend}) is not ready"
            self.store.stats()
        except ServiceError as e:
            return False, e.message
        return True, "ready"

    def close(self) -> None:
        for b in (self.audio_batcher, self.text_batcher, self.caption_batcher):
            b.close()
        self.memory.close()
        self.store.close()
        self.backend.close()
