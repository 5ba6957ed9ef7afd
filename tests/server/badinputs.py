"""Hostile and damaged uploads, each with the HTTP statuses an endpoint may answer; shared by the decoder and API tests.

`bad_inputs()` must all be refused with a 4xx; `odd_inputs()` are strange but valid files that must decode (200).
Files are made with soundfile and then damaged, or written byte by byte where soundfile would refuse to write them.
Sizes follow the given limits, so the over-size and over-long cases stay small when the limits are.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from blat_gateway.audio import AudioLimits

BAD_REQUEST, TOO_LARGE, UNSUPPORTED, UNPROCESSABLE = 400, 413, 415, 422
OK = 200


@dataclass(frozen=True)
class BadInput:
    name: str  # unique, usable as a test id
    filename: str  # the name the client sends (decoding must not trust it)
    content_type: str  # the type the client sends (likewise)
    data: bytes
    expect_status: frozenset[int]  # acceptable HTTP statuses
    note: str = ""  # what is wrong with it
    path: Path | None = None  # where it was written, when a directory was given


def _sine(seconds: float, rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def _encode(samples: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes | None:
    """A file written by libsndfile, or None where this libsndfile cannot write it (MP3 needs lame)."""
    buf = io.BytesIO()
    try:
        sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, ValueError, TypeError):
        return None
    return buf.getvalue()


def wav_bytes(
    payload: bytes = b"",
    rate: int = 8000,
    channels: int = 1,
    code: int = 1,
    bits: int = 16,
    data_size: int | None = None,
    fmt_size: int = 16,
    extra_chunks: bytes = b"",
    fmt: bool = True,
    data: bool = True,
) -> bytes:
    """A WAVE file written by hand, so every header field can lie: `data_size` overrides the data chunk's size."""
    align = max(channels * bits // 8, 0)
    fmt_body = struct.pack(
        "<HHIIHH", code, channels & 0xFFFF, rate & 0xFFFFFFFF, (rate * align) & 0xFFFFFFFF, align & 0xFFFF, bits
    )
    body = b"WAVE"
    if fmt:
        body += b"fmt " + struct.pack("<I", fmt_size & 0xFFFFFFFF) + fmt_body
    body += extra_chunks
    if data:
        body += b"data" + struct.pack("<I", (len(payload) if data_size is None else data_size) & 0xFFFFFFFF) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def wav_extensible(payload: bytes, sub_code: int, rate: int = 8000, channels: int = 1, bits: int = 16) -> bytes:
    """WAVE_FORMAT_EXTENSIBLE header whose sub-format GUID starts with `sub_code`."""
    align = channels * bits // 8
    guid = struct.pack("<H", sub_code) + bytes.fromhex("000000001000800000AA00389B71")
    fmt_body = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * align, align, bits, 22, bits, 0) + guid
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body
    body += b"data" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _damage(data: bytes, rng: np.random.Generator, start: int, length: int) -> bytes:
    out = bytearray(data)
    out[start : start + length] = rng.bytes(min(length, len(data) - start))
    return bytes(out)


def _flac_set_total_samples(data: bytes, total: int) -> bytes:
    """Rewrite STREAMINFO's 36-bit total-samples field (0 means 'unknown length')."""
    out = bytearray(data)
    word = int.from_bytes(out[18:26], "big")  # sample rate (20) | channels (3) | bits (5) | total samples (36)
    out[18:26] = ((word & ~((1 << 36) - 1)) | total).to_bytes(8, "big")
    return bytes(out)


def bad_inputs(tmp: Path | None = None, limits: AudioLimits | None = None) -> list[BadInput]:
    """At least 40 uploads an endpoint must refuse with a 4xx (and never a 5xx or a crash)."""
    limits = limits or AudioLimits()
    rng = np.random.default_rng(1234)
    pcm16 = (rng.standard_normal(800) * 3000).astype("<i2").tobytes()  # 0.1 s of 8 kHz noise
    tone = _sine(1.0, 8000)
    flac = _encode(tone, 8000, "FLAC", "PCM_16")
    ogg = _encode(tone, 8000, "OGG", "VORBIS")
    opus = _encode(tone, 48000, "OGG", "OPUS")
    mp3 = _encode(tone, 8000, "MP3", "MPEG_LAYER_III")
    long_s = limits.max_seconds + 1.0
    zip_buf = io.BytesIO()
    with zipfile.ZipFile(zip_buf, "w") as z:
        z.writestr("clip.wav", wav_bytes(pcm16))
    elf = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHI", 2, 0x3E, 1) + bytes(200)
    id3 = b"ID3\x03\x00\x00\x00\x00\x00\x10" + bytes(16)

    W, F, O, M, X = "audio/wav", "audio/flac", "audio/ogg", "audio/mpeg", "application/octet-stream"  # noqa: E741
    cases: list[tuple[str, str, str, bytes | None, set[int], str]] = [
        # not audio at all
        ("empty", "clip.wav", W, b"", {UNPROCESSABLE}, "zero bytes"),
        ("random_bytes", "clip.wav", W, rng.bytes(64), {UNSUPPORTED}, "64 random bytes"),
        ("png_as_wav", "clip.wav", W, b"\x89PNG\r\n\x1a\n" + bytes(8) + b"IHDR" + rng.bytes(100), {UNSUPPORTED}, ""),
        ("text_as_wav", "clip.wav", W, b"hello, this is not audio\n" * 20, {UNSUPPORTED}, ""),
        ("json_as_wav", "clip.wav", W, json.dumps({"audio": [0.1, 0.2]}).encode(), {UNSUPPORTED}, ""),
        ("zip_as_wav", "clip.wav", W, zip_buf.getvalue(), {UNSUPPORTED}, "a WAV inside a ZIP"),
        ("elf_as_wav", "clip.wav", W, elf, {UNSUPPORTED}, "an executable header"),
        (
            "gzip_bomb_as_wav",
            "clip.wav",
            W,
            gzip.compress(bytes(10 * 2**20), 9),
            {UNSUPPORTED},
            "10 MiB of zeros gzipped",
        ),
        (
            "aiff_not_allowed",
            "clip.aiff",
            "audio/aiff",
            _encode(tone, 8000, "AIFF", "PCM_16"),
            {UNSUPPORTED},
            "valid audio, but not an allowed container",
        ),
        ("riff_avi", "clip.wav", W, b"RIFF" + struct.pack("<I", 100) + b"AVI LIST" + bytes(100), {UNSUPPORTED}, ""),
        # damaged WAV
        ("wav_header_only", "clip.wav", W, wav_bytes(data_size=1600), {UNPROCESSABLE}, "declares 0.1 s, holds none"),
        (
            "wav_truncated_mid_data",
            "clip.wav",
            W,
            wav_bytes(pcm16, data_size=len(pcm16))[: 44 + 333],
            {UNPROCESSABLE},
            "cut mid-sample",
        ),
        (
            "wav_float_garbage",
            "clip.wav",
            W,
            wav_bytes(rng.bytes(4000), code=3, bits=32),
            {UNPROCESSABLE},
            "random bytes as float samples: NaN/Inf/huge",
        ),
        (
            "wav_fmt_size_huge",
            "clip.wav",
            W,
            wav_bytes(pcm16, fmt_size=0xFFFFFFF0),
            {UNPROCESSABLE},
            "wrong chunk size",
        ),
        ("wav_fmt_size_short", "clip.wav", W, wav_bytes(pcm16, fmt_size=4), {UNPROCESSABLE}, "wrong chunk size"),
        ("wav_no_fmt_chunk", "clip.wav", W, wav_bytes(pcm16, fmt=False), {UNPROCESSABLE}, ""),
        ("wav_no_data_chunk", "clip.wav", W, wav_bytes(data=False), {UNPROCESSABLE}, ""),
        (
            "wav_declares_1gib",
            "clip.wav",
            W,
            wav_bytes(pcm16, data_size=1 << 30),
            {UNPROCESSABLE},
            "header declares 1 GiB of data, holds 1.6 kB",
        ),
        (
            "wav_many_junk_chunks",
            "clip.wav",
            W,
            wav_bytes(pcm16, extra_chunks=b"JUNK\x00\x00\x00\x00" * 100_000),
            {UNPROCESSABLE},
            "100k empty chunks between fmt and data",
        ),
        ("wav_bits_0", "clip.wav", W, wav_bytes(pcm16, bits=0), {UNPROCESSABLE}, ""),
        # absurd parameters
        ("wav_rate_0hz", "clip.wav", W, wav_bytes(pcm16, rate=0), {UNPROCESSABLE}, ""),
        ("wav_rate_1hz", "clip.wav", W, wav_bytes(pcm16, rate=1), {UNPROCESSABLE}, ""),
        ("wav_rate_10mhz", "clip.wav", W, wav_bytes(pcm16, rate=10_000_000), {UNPROCESSABLE}, ""),
        ("wav_0_channels", "clip.wav", W, wav_bytes(pcm16, channels=0), {UNPROCESSABLE}, ""),
        (
            "wav_8_channels",
            "clip.wav",
            W,
            _encode(_sine(0.5, 8000, channels=8), 8000, "WAV", "PCM_16"),
            {UNPROCESSABLE},
            "more channels than max_channels",
        ),
        ("wav_65535_channels", "clip.wav", W, wav_bytes(pcm16, channels=65535), {UNPROCESSABLE}, ""),
        # unusable samples
        (
            "wav_nan_samples",
            "clip.wav",
            W,
            wav_bytes(np.full(800, np.nan, "<f4").tobytes(), code=3, bits=32),
            {UNPROCESSABLE},
            "",
        ),
        (
            "wav_inf_samples",
            "clip.wav",
            W,
            wav_bytes(np.r_[np.zeros(400), np.inf, np.zeros(399)].astype("<f4").tobytes(), code=3, bits=32),
            {UNPROCESSABLE},
            "one +Inf among zeros",
        ),
        (
            "wav_double_1e30",
            "clip.wav",
            W,
            wav_bytes(np.full(800, 1e30, "<f8").tobytes(), code=3, bits=64),
            {UNPROCESSABLE},
            "finite in float32 but absurd",
        ),
        (
            "wav_double_1e40",
            "clip.wav",
            W,
            wav_bytes(np.full(800, -1e40, "<f8").tobytes(), code=3, bits=64),
            {UNPROCESSABLE},
            "overflows float32 to -Inf",
        ),
        ("wav_zero_frames", "clip.wav", W, wav_bytes(b""), {UNPROCESSABLE}, "valid header, no frames"),
        ("wav_one_sample", "clip.wav", W, wav_bytes(pcm16[:2]), {UNPROCESSABLE}, "shorter than min_seconds"),
        # codecs outside the allow-list
        (
            "wav_codec_mpeg3",
            "clip.wav",
            W,
            wav_bytes(rng.bytes(800), code=0x55, bits=0),
            {UNSUPPORTED},
            "format code 0x55",
        ),
        ("wav_codec_ms_adpcm", "clip.wav", W, wav_bytes(rng.bytes(800), code=0x2, bits=4), {UNSUPPORTED}, ""),
        ("wav_codec_unknown", "clip.wav", W, wav_bytes(pcm16, code=0x1234), {UNSUPPORTED}, ""),
        ("wavex_unknown_subformat", "clip.wav", W, wav_extensible(pcm16, 0x1234), {UNSUPPORTED}, ""),
        # over the limits
        (
            "wav_too_long",
            "clip.wav",
            W,
            _encode(np.zeros(int(long_s * limits.min_rate), np.float32), limits.min_rate, "WAV", "PCM_U8"),
            {TOO_LARGE},
            "max_seconds + 1 at the lowest rate",
        ),
        (
            "flac_too_long_silence",
            "clip.flac",
            F,
            _encode(np.zeros(int(long_s * 8000), np.float32), 8000, "FLAC", "PCM_16"),
            {TOO_LARGE},
            "a decompression bomb",
        ),
        (
            "ogg_too_long_silence",
            "clip.ogg",
            O,
            _encode(np.zeros(int(long_s * 8000), np.float32), 8000, "OGG", "VORBIS"),
            {TOO_LARGE},
            "",
        ),
        (
            "oversize",
            "clip.wav",
            W,
            wav_bytes(bytes(limits.max_bytes + 1 - 44), bits=8),
            {TOO_LARGE},
            "max_bytes + 1 bytes",
        ),
        # damaged FLAC / OGG / MP3
        ("flac_truncated", "clip.flac", F, flac[: len(flac) // 2], {UNPROCESSABLE}, "cut in half"),
        ("flac_header_only", "clip.flac", F, flac[:42], {UNPROCESSABLE}, "fLaC + STREAMINFO"),
        ("flac_corrupt_frames", "clip.flac", F, _damage(flac, rng, len(flac) // 3, 200), {UNPROCESSABLE}, ""),
        ("flac_magic_then_garbage", "clip.flac", F, b"fLaC" + rng.bytes(2000), {UNPROCESSABLE}, ""),
        (
            "flac_unknown_length",
            "clip.flac",
            F,
            _flac_set_total_samples(flac, 0),
            {UNPROCESSABLE},
            "STREAMINFO total samples 0 (libsndfile cannot read it)",
        ),
        ("ogg_truncated", "clip.ogg", O, ogg[: len(ogg) // 2], {UNPROCESSABLE}, ""),
        ("ogg_truncated_headers", "clip.ogg", O, ogg[:100], {UNPROCESSABLE}, ""),
        ("ogg_corrupt", "clip.ogg", O, _damage(ogg, rng, len(ogg) // 3, 200), {UNPROCESSABLE}, ""),
        ("ogg_magic_then_garbage", "clip.ogg", O, b"OggS" + rng.bytes(2000), {UNPROCESSABLE}, ""),
        ("opus_corrupt", "clip.opus", O, _damage(opus, rng, len(opus) // 3, 200), {UNPROCESSABLE}, ""),
        ("mp3_id3_then_garbage", "clip.mp3", M, id3 + rng.bytes(3000), {UNPROCESSABLE}, ""),
        ("mp3_sync_then_garbage", "clip.mp3", M, b"\xff\xfb\x90\x00" + rng.bytes(3000), {UNPROCESSABLE}, ""),
        ("mp3_truncated", "clip.mp3", M, None if mp3 is None else mp3[:100], {UNPROCESSABLE}, "first 100 bytes"),
        ("octet_stream_garbage", "upload.bin", X, rng.bytes(4096), {UNSUPPORTED}, ""),
    ]
    return _materialise(cases, tmp)


def odd_inputs(tmp: Path | None = None) -> list[BadInput]:
    """Strange but valid uploads that must decode (expect 200): placeholders, tags, misleading names."""
    rng = np.random.default_rng(99)
    pcm16 = (rng.standard_normal(800) * 3000).astype("<i2").tobytes()
    tone = _sine(0.5, 8000)
    id3 = b"ID3\x03\x00\x00\x00\x00\x00\x10" + bytes(16)
    flac = _encode(tone, 8000, "FLAC", "PCM_16")
    mp3 = _encode(tone, 8000, "MP3", "MPEG_LAYER_III")
    W = "audio/wav"
    cases = [
        (
            "wav_size_placeholder",
            "clip.wav",
            W,
            wav_bytes(pcm16, data_size=0xFFFFFFFF),
            {OK},
            "streaming writers' 'unknown length' data size; 0.1 s present",
        ),
        ("wav_list_chunk_after_data", "clip.wav", W, wav_bytes(pcm16) + b"LIST\x04\x00\x00\x00INFO", {OK}, ""),
        ("wavex_pcm", "clip.wav", W, wav_extensible(pcm16, 1), {OK}, "WAVE_FORMAT_EXTENSIBLE PCM"),
        ("wav_u8", "clip.wav", W, _encode(tone, 8000, "WAV", "PCM_U8"), {OK}, ""),
        ("wav_ulaw", "clip.wav", W, _encode(tone, 8000, "WAV", "ULAW"), {OK}, ""),
        ("wav_float_over_full_scale", "clip.wav", W, _encode(4 * tone, 8000, "WAV", "FLOAT"), {OK}, "peak 2.0"),
        ("wav_named_mp3", "clip.mp3", "audio/mpeg", wav_bytes(pcm16), {OK}, "the name and type lie; the bytes win"),
        ("flac_with_id3", "clip.flac", "audio/flac", None if flac is None else id3 + flac, {OK}, ""),
        ("mp3_with_id3", "clip.mp3", "audio/mpeg", None if mp3 is None else id3 + mp3, {OK}, ""),
        (
            "stereo_opposite_phase",
            "clip.wav",
            W,
            _encode(np.stack([tone, -tone], 1), 8000, "WAV", "PCM_16"),
            {OK},
            "downmixes to silence",
        ),
    ]
    return _materialise(cases, tmp)


def _materialise(cases, tmp: Path | None) -> list[BadInput]:
    out = []
    for name, filename, content_type, data, statuses, note in cases:
        if data is None:  # this libsndfile cannot write the source file (MP3 without lame)
            continue
        path = None
        if tmp is not None:
            path = Path(tmp) / name / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        out.append(BadInput(name, filename, content_type, data, frozenset(statuses), note, path))
    assert len({c.name for c in out}) == len(out), "case names must be unique"
    return out
