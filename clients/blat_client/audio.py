"""Audio arguments and the PCM a stream sends, with the standard library only (the client carries no decoder)."""

from __future__ import annotations

import array
import os
import struct
import sys
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")  # what the server decodes


@dataclass(frozen=True)
class Samples:
    """Decoded audio to send: an array of samples (numpy or anything with the array protocol; (n,) mono or
    (n, channels)) in [-1, 1] at `sample_rate` Hz. Sent as a 32-bit float WAV, which the server resamples."""

    data: Any
    sample_rate: int

    def to_wav(self) -> bytes:
        """32-bit float WAV bytes, read through the buffer protocol (numpy arrays, array.array) or from a list:
        the client needs no numpy of its own."""
        if not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {self.sample_rate!r}")
        samples, channels = _float32(self.data)
        if len(samples) == 0:
            raise ValueError("samples: none given")
        if sys.byteorder == "big":
            samples.byteswap()
        data = samples.tobytes()
        fmt = struct.pack("<HHIIHH", 3, channels, self.sample_rate, self.sample_rate * 4 * channels, 4 * channels, 32)
        return (
            b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", len(data)) + data
        )  # fmt: skip


def _float32(data: Any) -> tuple[array.array[float], int]:
    """(interleaved float32 samples, channels) from (n,) or (n, channels) data."""
    if isinstance(data, (list, tuple)):
        rows = [list(r) if isinstance(r, (list, tuple)) else [r] for r in data]
        channels = len(rows[0]) if rows else 1
        if any(len(r) != channels for r in rows):
            raise ValueError("samples: every row needs the same number of channels")
        return array.array("f", [float(v) for r in rows for v in r]), channels
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"samples: an array (numpy, array.array) or a list, not {type(data).__name__}") from None
    if view.ndim not in (1, 2):
        raise ValueError(f"samples must be (n,) or (n, channels), got shape {view.shape}")
    code = view.format.lstrip("@=<")
    if code not in ("f", "d", "h", "i"):
        raise TypeError(f"samples: float32, float64, int16 or int32 values, not format {view.format!r}")
    values: array.array[Any] = array.array(code, view.tobytes())  # C order: interleaved channels
    if code == "h":
        values = array.array("f", (v / 32768.0 for v in values))
    elif code == "i":
        values = array.array("f", (v / 2147483648.0 for v in values))
    elif code == "d":
        values = array.array("f", values)
    return values, view.shape[1] if view.ndim == 2 and view.shape else 1


# Encoded file bytes, a path to read them from, an open binary file, or decoded `Samples`.
Audio = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO | Samples


def read_audio(audio: Audio) -> bytes:
    """The encoded bytes to send: bytes as they are, a binary file object read from where it stands, `Samples`
    written as a WAV, anything else opened as a path to an encoded audio file (WAV, FLAC, OGG or MP3)."""
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return bytes(audio)
    if isinstance(audio, Samples):
        return audio.to_wav()
    if hasattr(audio, "read"):
        data = audio.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("a file object must be opened in binary mode ('rb')")
        return bytes(data)
    if hasattr(audio, "dtype") and hasattr(audio, "shape"):
        raise TypeError("an array of samples needs its rate: pass blat_client.Samples(array, sample_rate)")
    if not isinstance(audio, (str, os.PathLike)):
        raise TypeError(f"audio: bytes, a path, a binary file or Samples(array, rate), not {type(audio).__name__}")
    with open(audio, "rb") as f:
        return f.read()


def wav_chunks(path: str | os.PathLike[str], chunk_s: float = 0.5) -> tuple[int, Iterator[bytes]]:
    """A 16-bit PCM WAV file as (sample rate, s16le mono chunks of `chunk_s` seconds) for `stream_tag`.

    Multi-channel files stream their first channel. Other encodings: decode them first (e.g. with ffmpeg)."""
    wav = wave.open(os.fspath(path), "rb")
    if wav.getsampwidth() != 2:
        wav.close()
        raise ValueError(
            f"{path}: stream_tag's helper reads 16-bit PCM WAV only (this one has {8 * wav.getsampwidth()}-bit samples)"
        )
    rate, channels = wav.getframerate(), wav.getnchannels()
    frames_per_chunk = max(1, int(rate * chunk_s))

    def chunks() -> Iterator[bytes]:
        with wav:
            while data := wav.readframes(frames_per_chunk):
                if channels > 1:
                    samples = array.array("h", data)[0::channels]
                    if sys.byteorder == "big":
                        samples.byteswap()
                    data = samples.tobytes()
                yield data

    return rate, chunks()
