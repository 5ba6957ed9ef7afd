"""Tagging: the labels a request scores (the bank's, or free text embedded through the prompt and cached), clip tags,
tags per window (/v1/tag with window_s), and StreamTag's stream of raw PCM scored window by window."""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass

import numpy as np
import soxr

from blat_gateway.audio import PCM_ENCODINGS, decode_pcm
from blat_gateway.errors import BadRequest, DeadlineExceeded
from blat_gateway.services.context import Context
from blat_gateway.tagging import LabelScore, LabelSet, head_index

MAX_WINDOWS = 2000
MAX_WINDOWED_AUDIO = 8  # windows may cover a clip at most this many times over (window_s / hop_s <= 8)
LABEL_CACHE_SIZE = 4096  # embeddings of custom labels kept (oldest dropped first)


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


@dataclass(frozen=True)
class TagWindow:
    start_s: float
    end_s: float
    tags: tuple[LabelScore, ...]


def _score(outputs: Sequence[tuple[np.ndarray, np.ndarray | None]], labels: LabelSet) -> np.ndarray:
    """Clips' (embedding, class probabilities) -> (B, K) scores of `labels`."""
    probs = [p for _, p in outputs]
    return labels.scores(np.stack([e for e, _ in outputs]), None if probs[0] is None else np.stack(probs))


class TaggingService:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._label_cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def labels(self, labels: Sequence[str] | None = None) -> LabelSet:
        """The labels to score, resolved once per request or stream: the bank's (the 527 AudioSet labels) by default.
        A label the tagger knows is scored by it; a label the bank lacks is embedded through the prompt and gets the
        bank's mean calibration."""
        ctx = self.ctx
        bank, manifest = ctx.runtime.labels, ctx.manifest
        tagger = manifest.tagger.labels if manifest.tagger else None
        mix = manifest.tagger.zero_shot_weight if manifest.tagger else 0.0
        if not labels:
            return ctx.runtime.default_labels
        if len(labels) > ctx.limits.max_labels:
            raise BadRequest(f"at most {ctx.limits.max_labels} labels, got {len(labels)}")
        index = {n.lower(): i for i, n in enumerate(bank.names)}
        for i, label in enumerate(labels):
            ctx.check_text(label, f"labels[{i}]")
        cache = self._label_cache
        new = [label for label in dict.fromkeys(labels) if label.lower() not in index and label not in cache]
        # New labels are embedded together: their futures join the same text batches.
        prompts = [manifest.labels.prompt_template.format(label=label.lower()) for label in new]
        futures = [ctx.text_batcher.submit_future(p, ctx.timeout) for p in prompts]
        fresh = {label: ctx.result(f) for label, f in zip(new, futures)}
        mean_scale, mean_bias = float(bank.scale.mean()), float(bank.bias.mean())
        names, embs, scale, bias = [], [], [], []
        for label in labels:
            i = index.get(label.lower())
            if i is not None:
                emb, s, b = bank.embeddings[i], bank.scale[i], bank.bias[i]
            else:
                emb = fresh.get(label)
                if emb is None:
                    emb = cache[label]
                else:
                    cache[label] = emb
                s, b = mean_scale, mean_bias
            names.append(label)
            embs.append(emb)
            scale.append(s)
            bias.append(b)
        while len(cache) > LABEL_CACHE_SIZE:
            cache.popitem(last=False)
        return LabelSet(
            tuple(names),
            np.stack(embs),
            np.array(scale, np.float32),
            np.array(bias, np.float32),
            head_index(tuple(names), tagger),
            mix,
        )

    def check_windows(self, window_s: float, hop_s: float) -> tuple[int, int]:
        """Window and hop in seconds (hop 0 = the window) -> in samples; the same limits on both faces."""
        step, longest = self.ctx.manifest.audio.frame_seconds, self.ctx.limits.max_audio_seconds
        hop_s = hop_s or window_s
        if not (step <= window_s <= longest and step <= hop_s <= window_s):  # False for NaN too
            raise BadRequest(
                f"need {step:g} s (one frame step) <= hop_s <= window_s <= {longest:g} s, "
                f"got window_s={window_s!r}, hop_s={hop_s!r}"
            )
        rate = self.ctx.runtime.sample_rate
        return round(window_s * rate), round(hop_s * rate)

    def windows(
        self, samples: np.ndarray, win: int, hop: int, labels: LabelSet, top_k: int = 10, offset: int = 0
    ) -> tuple[TagWindow, ...]:
        """Tags per window of `samples`, each window analysed as a clip of its own (the windows of one clip share
        batches). The one scoring path of windowed tagging: /v1/tag with window_s and the StreamTag RPC."""
        ctx, rate = self.ctx, self.ctx.runtime.sample_rate
        spans = window_spans(len(samples), win, hop)
        if len(spans) > MAX_WINDOWS or sum(b - a for a, b in spans) > MAX_WINDOWED_AUDIO * len(samples) + win:
            raise BadRequest(
                f"{len(spans)} windows of {win / rate:g} s; at most {MAX_WINDOWS}, "
                f"covering at most {MAX_WINDOWED_AUDIO}x the clip (use a larger hop_s)"
            )
        futures = [ctx.audio_batcher.submit_future(samples[a:b], ctx.timeout) for a, b in spans]
        probs = _score([ctx.result(f) for f in futures], labels)
        return tuple(
            TagWindow((offset + a) / rate, (offset + b) / rate, labels.top(p, top_k)) for (a, b), p in zip(spans, probs)
        )

    def tag(
        self,
        data: bytes,
        labels: Sequence[str] | None = None,
        top_k: int = 10,
        window_s: float = 0.0,
        hop_s: float = 0.0,
    ) -> tuple[tuple[LabelScore, ...], tuple[TagWindow, ...]]:
        """Clip-level tags and, with window_s > 0, tags per window (see `windows`)."""
        if not isinstance(top_k, int) or top_k < 1:
            raise BadRequest(f"top_k must be a positive integer, got {top_k!r}")
        spans = self.check_windows(window_s, hop_s) if (window_s or hop_s) else None
        label_set = self.labels(labels)
        audio = self.ctx.decode(data)
        clip = label_set.top(_score([self.ctx.analyze(audio.samples)], label_set)[0], top_k)
        return clip, (self.windows(audio.samples, *spans, label_set, top_k) if spans else ())

    def tag_clips(
        self,
        clips: Sequence[bytes],
        labels: Sequence[str] | None = None,
        top_k: int = 10,
        window_s: float = 0.0,
        hop_s: float = 0.0,
    ) -> list[tuple[tuple[LabelScore, ...], tuple[TagWindow, ...]]]:
        """`tag` for several clips of one request (the limits of `Context.decode_clips`), scored in shared batches;
        all or nothing: a clip that does not decode fails the call, naming it."""
        if not isinstance(top_k, int) or top_k < 1:
            raise BadRequest(f"top_k must be a positive integer, got {top_k!r}")
        spans = self.check_windows(window_s, hop_s) if (window_s or hop_s) else None
        label_set, ctx = self.labels(labels), self.ctx
        samples = ctx.decode_clips(clips, "audios")
        futures = [ctx.audio_batcher.submit_future(x, ctx.timeout) for x in samples]
        scores = _score([ctx.result(f) for f in futures], label_set)
        return [
            (label_set.top(p, top_k), self.windows(x, *spans, label_set, top_k) if spans else ())
            for x, p in zip(samples, scores)
        ]

    def stream(
        self,
        encoding: str,
        sample_rate: int,
        window_s: float = 2.0,
        hop_s: float = 1.0,
        labels: Sequence[str] | None = None,
        top_k: int = 5,
        admit: Callable[[], ContextManager] = contextlib.nullcontext,
    ) -> TagStream:
        """A StreamTag stream's state, its config checked; `admit()` is entered around each window's scoring."""
        limits = self.ctx.audio_limits
        if encoding not in PCM_ENCODINGS or not limits.min_rate <= sample_rate <= limits.max_rate:
            raise BadRequest(
                f"encoding must be one of {sorted(PCM_ENCODINGS)} and sample_rate in "
                f"[{limits.min_rate}, {limits.max_rate}]"
            )
        win, hop = self.check_windows(window_s, hop_s)
        return TagStream(self, encoding, sample_rate, win, hop, self.labels(labels), top_k, admit)


class TagStream:
    """Chunks of raw mono PCM in (`feed`), one TagWindow out per hop once a window of audio has arrived, and the
    rest at the end (`finish`): the spans `window_spans` makes for the whole clip. Each chunk is decoded and checked
    as uploads are (`blat_gateway.audio.decode_pcm`) and resampled by one streaming resampler (no seams).

    The faces (StreamTag over gRPC, /v1/tag/stream over WebSocket) time the wait for each chunk; the stream itself
    refuses a drip: past its first limits.stream_idle_s it must have sent limits.stream_min_realtime seconds of audio
    per second of its life (DeadlineExceeded), so a slow sender cannot hold one of the limits.max_streams places."""

    def __init__(
        self,
        tagging: TaggingService,
        encoding: str,
        sample_rate: int,
        win: int,
        hop: int,
        labels: LabelSet,
        top_k: int,
        admit: Callable[[], ContextManager],
    ):
        self.tagging, self.encoding, self.sample_rate = tagging, encoding, sample_rate
        self.win, self.hop, self.labels, self.top_k, self.admit = win, hop, labels, top_k, admit
        self.itemsize = PCM_ENCODINGS[encoding].itemsize
        rate = tagging.ctx.runtime.sample_rate
        self.resampler = (
            soxr.ResampleStream(sample_rate, rate, 1, "float32", quality="HQ") if sample_rate != rate else None
        )
        self.buffer, self.start, self.last_end, self.pending, self.received = np.zeros(0, np.float32), 0, 0, b"", 0
        self.began = time.monotonic()

    def _windows(self, samples: np.ndarray, offset: int) -> tuple[TagWindow, ...]:
        with self.admit():  # each window is admitted like a request of its own
            return self.tagging.windows(samples, self.win, self.hop, self.labels, self.top_k, offset=offset)

    def _check_pace(self, pcm_bytes: int) -> None:
        limits = self.tagging.ctx.limits
        sent_s = (self.received * self.itemsize + len(self.pending) + pcm_bytes) / self.itemsize / self.sample_rate
        lived_s = time.monotonic() - self.began
        if lived_s > limits.stream_idle_s and sent_s < limits.stream_min_realtime * lived_s:
            raise DeadlineExceeded(
                f"the stream sent {sent_s:.2f} s of audio in {lived_s:.1f} s, under "
                f"{limits.stream_min_realtime:g}x real time (limits.stream_min_realtime)"
            )

    def feed(self, pcm: bytes) -> Iterator[TagWindow]:
        self._check_pace(len(pcm))
        raw = self.pending + pcm
        usable = len(raw) - len(raw) % self.itemsize
        self.pending = raw[usable:]
        chunk = decode_pcm(raw[:usable], self.encoding, self.tagging.ctx.audio_limits, self.received / self.sample_rate)
        self.received += len(chunk)
        if self.resampler is not None:
            chunk = self.resampler.resample_chunk(chunk)
        self.buffer = np.concatenate([self.buffer, chunk.astype(np.float32, copy=False)])
        while len(self.buffer) >= self.win:
            yield from self._windows(self.buffer[: self.win], self.start)
            self.last_end = self.start + self.win
            self.buffer, self.start = self.buffer[self.hop :], self.start + self.hop

    def finish(self) -> Iterator[TagWindow]:
        if self.resampler is not None:
            tail = self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self.buffer = np.concatenate([self.buffer, tail])
        if len(self.buffer) and self.start + len(self.buffer) > self.last_end:  # after the last full window
            yield from self._windows(self.buffer, self.start)
