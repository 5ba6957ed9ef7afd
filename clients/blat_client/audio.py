"""Audio arguments and the PCM a stream sends, with the standard library only (the client carries no decoder)."""

from __future__ import annotations

import array
import os
import sys
import wave
from collections.abc import Iterator

Audio = bytes | bytearray | memoryview | str | os.PathLike  # encoded file bytes, or a path to read them from
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")  # what the server decodes


def read_audio(audio: Audio) -> bytes:
    """Bytes as they are; anything else is a path to an encoded audio file (WAV, FLAC, OGG or MP3)."""
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return bytes(audio)
    with open(audio, "rb") as f:
        return f.read()


def wav_chunks(path: str | os.PathLike, chunk_s: float = 0.5) -> tuple[int, Iterator[bytes]]:
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
