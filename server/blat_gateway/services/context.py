"""What every service shares: the settings and limits, the model runtime, the index and uploads, the micro-batchers,
and the current request's deadline. Model calls go through the batchers with that deadline."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np

from blat_gateway.admission import remaining
from blat_gateway.audio import AudioLimits, DecodedAudio, decode_audio
from blat_gateway.batching import MicroBatcher
from blat_gateway.errors import BadRequest, DeadlineExceeded, ServiceError, TooLarge
from blat_gateway.index import IndexStore
from blat_gateway.inputs import check_text
from blat_gateway.runtime import ModelRuntime
from blat_gateway.settings import Settings
from blat_gateway.uploads import UploadStore


class Context:
    def __init__(
        self,
        settings: Settings,
        runtime: ModelRuntime,
        store: IndexStore,
        uploads: UploadStore,
        audio_batcher: MicroBatcher,
        text_batcher: MicroBatcher,
        caption_batcher: MicroBatcher,
    ):
        self.settings, self.limits, self.runtime, self.manifest = settings, settings.limits, runtime, runtime.manifest
        self.store, self.uploads = store, uploads
        self.audio_batcher, self.text_batcher, self.caption_batcher = audio_batcher, text_batcher, caption_batcher
        self.audio_limits = AudioLimits(
            max_bytes=self.limits.max_upload_bytes, max_seconds=self.limits.max_audio_seconds
        )

    def decode(self, data: bytes) -> DecodedAudio:
        return decode_audio(data, self.runtime.sample_rate, self.audio_limits)

    def decode_clips(self, clips: Sequence[bytes], name: str) -> list[np.ndarray]:
        """Several encoded clips of one request -> their samples: 1 to limits.max_clips_per_request clips, lasting
        together at most limits.max_audio_seconds (the memory one upload may take). An error names the clip
        (`audios[2]: ...`); nothing is decoded past it."""
        if not clips:
            raise BadRequest(f"{name}: give at least one clip")
        if len(clips) > self.limits.max_clips_per_request:
            raise BadRequest(f"{name}: at most {self.limits.max_clips_per_request} clips per request, got {len(clips)}")
        samples, seconds = [], 0.0
        for i, data in enumerate(clips):
            try:
                audio = self.decode(data)
            except ServiceError as e:
                e.message = f"{name}[{i}]: {e.message}"
                e.args = (e.message,)
                raise
            seconds += audio.duration_s
            if seconds > self.limits.max_audio_seconds:
                raise TooLarge(
                    f"the clips of one request last {seconds:.1f} s or more; together at most "
                    f"{self.limits.max_audio_seconds:g} s (limits.max_audio_seconds)"
                )
            samples.append(audio.samples)
        return samples

    def check_text(self, text: object, what: str = "text") -> str:
        return check_text(text, what, self.limits.max_text_chars)

    def check_k(self, k: int) -> int:
        if not isinstance(k, int) or not 1 <= k <= self.limits.max_k:
            raise BadRequest(f"k must be an integer in [1, {self.limits.max_k}], got {k!r}")
        return k

    @property
    def timeout(self) -> float:
        """Seconds left of the current request's deadline (set at admission); DeadlineExceeded when none are left."""
        return remaining(self.limits.request_timeout_s)

    def result(self, future: Future):
        """A batcher future's result within the request's deadline; DeadlineExceeded (504) past it, as `submit`."""
        try:
            return future.result(timeout=self.timeout)
        except TimeoutError:  # concurrent.futures.TimeoutError is TimeoutError since Python 3.11
            raise DeadlineExceeded("the request's deadline passed while its model work was running") from None

    def analyze(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """-> the (D,) embedding and the tagger's (H,) class probabilities (None when the bundle has no tagger)."""
        return self.audio_batcher.submit(samples, self.timeout)
