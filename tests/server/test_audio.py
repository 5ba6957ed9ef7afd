"""blat_gateway/audio.py: bounded reads, the format allow-list, refusal of hostile files, downmix and resampling."""

from __future__ import annotations

import asyncio
import io
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

from blat_gateway.audio import (
    DECODE_BLOCK_FRAMES,
    AudioLimits,
    DecodedAudio,
    _read_mono,
    decode_audio,
    encode_wav,
    read_limited,
    read_limited_async,
    sniff_format,
)
from blat_gateway.errors import BadAudio, ServiceError, TooLarge, UnsupportedFormat
from tests.server.badinputs import BadInput, _flac_set_total_samples, bad_inputs, odd_inputs, wav_bytes

TARGET = 32_000
# Defaults everywhere but the byte cap, so the over-size case is 1 MiB rather than 32 MiB.
LIMITS = AudioLimits(max_bytes=1 << 20)
BAD = bad_inputs(limits=LIMITS)
ODD = odd_inputs()
ERROR_FOR_STATUS = {413: TooLarge, 415: UnsupportedFormat, 422: BadAudio}
MP3_WRITABLE = "MP3" in sf.available_formats() and any(c.name == "mp3_truncated" for c in BAD)


def _tone(seconds: float, rate: int, freq: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(round(seconds * rate))) / rate)).astype(np.float32)


def _encode(x: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


# ---------------------------------------------------------------------------------------------------- hostile input


def test_the_catalogue_is_broad():
    assert len(BAD) >= 40 and all(c.expect_status and max(c.expect_status) < 500 for c in BAD)
    assert {413, 415, 422} <= set().union(*(c.expect_status for c in BAD))


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
def test_bad_input_is_refused_with_its_status(case: BadInput):
    with pytest.raises(ServiceError) as info:
        decode_audio(case.data, TARGET, LIMITS)
    err = info.value
    assert err.http_status in case.expect_status, f"{case.name}: {type(err).__name__} {err.message}"
    assert type(err) is ERROR_FOR_STATUS[err.http_status]
    assert err.message and "BytesIO" not in err.message and "0x7f" not in err.message  # for people, not a repr


@pytest.mark.parametrize("case", ODD, ids=lambda c: c.name)
def test_odd_but_valid_input_decodes(case: BadInput):
    assert case.expect_status == {200}
    out = decode_audio(case.data, TARGET, LIMITS)
    assert isinstance(out, DecodedAudio) and out.sample_rate == TARGET
    assert out.samples.dtype == np.float32 and out.samples.ndim == 1 and np.isfinite(out.samples).all()
    assert abs(len(out.samples) - out.duration_s * TARGET) <= 2


def test_bad_inputs_can_be_written_to_a_directory(tmp_path):
    cases = bad_inputs(tmp_path, limits=LIMITS)
    assert all(c.path is not None and c.path.read_bytes() == c.data for c in cases)


def _mutants(rng: np.random.Generator) -> list[bytes]:
    """Random bytes, random bytes behind each accepted magic, and valid files with flipped, overwritten or cut bytes."""
    tone = _tone(0.3, 8000, 440)
    valid = [
        _encode(tone, 8000, "WAV", "PCM_16"),
        _encode(tone, 8000, "WAV", "FLOAT"),
        _encode(tone, 8000, "FLAC", "PCM_16"),
        _encode(tone, 8000, "OGG", "VORBIS"),
        _encode(_tone(0.3, 48000, 440), 48000, "OGG", "OPUS"),
    ]
    if MP3_WRITABLE:
        valid.append(_encode(tone, 8000, "MP3", "MPEG_LAYER_III"))
    magics = [
        b"RIFF\x00\x10\x00\x00WAVEfmt ",
        b"fLaC",
        b"OggS\x00\x02",
        b"ID3\x03\x00\x00\x00\x00\x00\x10",
        b"\xff\xfb\x90\x00",
        b"\xff\xe3\x48\xc4",
    ]
    out = [rng.bytes(int(n)) for n in rng.integers(1, 5000, 40)]
    out += [magics[i % len(magics)] + rng.bytes(int(rng.integers(0, 3000))) for i in range(30)]
    for i in range(60):
        data = bytearray(valid[i % len(valid)])
        kind = i // len(valid) % 3
        if kind == 0:  # flip random bytes, header included
            for j in rng.integers(0, len(data), int(rng.integers(1, 40))):
                data[j] ^= int(rng.integers(1, 256))
        elif kind == 1:  # overwrite a run with garbage
            j = int(rng.integers(0, len(data)))
            data[j : j + 64] = rng.bytes(64)
        else:  # cut anywhere
            data = data[: int(rng.integers(1, len(data)))]
        out.append(bytes(data))
    return out


def test_garbage_and_mutated_files_only_raise_service_errors():
    outcomes = {"decoded": 0, "refused": 0}
    mutants = _mutants(np.random.default_rng(7))
    for data in mutants:
        try:
            out = decode_audio(data, TARGET, LIMITS)
        except ServiceError as e:
            assert e.http_status in (413, 415, 422), e.message
            outcomes["refused"] += 1
        else:  # damage a decoder tolerates (PCM noise, a resynced MP3) is fine, if the result is usable
            assert out.samples.dtype == np.float32 and np.isfinite(out.samples).all()
            assert np.abs(out.samples).max(initial=0) <= 2 * LIMITS.max_abs_sample  # resampling ringing aside
            outcomes["decoded"] += 1
    # every file got an answer (decoded or refused with a service error: nothing else raised, nothing hung)
    assert outcomes["decoded"] + outcomes["refused"] == len(mutants), outcomes
    assert outcomes["refused"] > 100, outcomes


def test_lying_headers_do_not_drive_allocation():
    """A header may declare gigabytes; memory follows the bytes present, never the declaration."""
    tiny = (np.random.default_rng(0).standard_normal(800) * 3000).astype("<i2").tobytes()
    flac = _encode(_tone(0.5, 8000, 440), 8000, "FLAC", "PCM_16")
    roomy = AudioLimits(max_seconds=1e9)  # so the declared duration alone is not refused
    tracemalloc.start()
    try:
        placeholder = decode_audio(wav_bytes(tiny, data_size=0xFFFFFFFF), TARGET, roomy)  # 'unknown length' WAV
        with pytest.raises(BadAudio, match="truncated"):
            decode_audio(wav_bytes(tiny, data_size=0x7000_0000), TARGET, roomy)
        with pytest.raises(BadAudio):  # STREAMINFO claims 2**36 - 1 samples (~99 days at 8 kHz)
            decode_audio(_flac_set_total_samples(flac, (1 << 36) - 1), TARGET, roomy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes"
    assert placeholder.duration_s == pytest.approx(0.1)
    with pytest.raises(TooLarge, match="from its header"):  # with the default limit, the declaration is refused
        decode_audio(_flac_set_total_samples(flac, (1 << 36) - 1), TARGET, LIMITS)


class _EndlessDecoder:
    """A SoundFile stand-in whose header says 1 s and whose decoder never runs dry."""

    samplerate, channels, frames = 8000, 2, 8000

    def __init__(self, block: np.ndarray | None = None):
        self.requested = self.calls = 0
        self.block = block

    def read(self, n, dtype, always_2d):
        self.requested += n
        self.calls += 1
        return np.full((n, self.channels), 0.1, np.float32) if self.block is None else self.block[:n]


def test_the_read_loop_is_capped_whatever_the_decoder_does():
    limits = AudioLimits(max_seconds=3.0)
    endless = _EndlessDecoder()
    with pytest.raises(TooLarge, match="limit of 3 s"):
        _read_mono(endless, TARGET, limits)
    assert endless.requested == 3 * 8000 + 1  # the cap plus the one frame that proves it exceeded
    assert endless.calls == 1 and DECODE_BLOCK_FRAMES > 3 * 8000  # one read: blocks never pass the cap
    many = _EndlessDecoder()
    with pytest.raises(TooLarge):
        _read_mono(many, TARGET, AudioLimits(max_seconds=20.0))
    assert many.requested == 20 * 8000 + 1 and many.calls == -(-(20 * 8000 + 1) // DECODE_BLOCK_FRAMES)
    dry = _EndlessDecoder(block=np.zeros((0, 2), np.float32))  # a decoder that returns nothing ends the loop
    samples, frames = _read_mono(dry, TARGET, limits)
    assert frames == 0 and len(samples) == 0 and dry.calls == 1


def test_counted_duration_limit_on_real_audio():
    x = _tone(2.5, 8000, 440)
    with pytest.raises(TooLarge):
        decode_audio(encode_wav(x, 8000), TARGET, AudioLimits(max_seconds=2.0))
    assert decode_audio(encode_wav(x, 8000), TARGET, AudioLimits(max_seconds=2.5)).duration_s == 2.5
    if MP3_WRITABLE:  # MP3 header lengths are estimates, so for MP3 only the counted frames decide
        mp3 = _encode(x, 8000, "MP3", "MPEG_LAYER_III")
        with pytest.raises(TooLarge, match="more than the limit of 2 s"):
            decode_audio(mp3, TARGET, AudioLimits(max_seconds=2.0))


def test_allowed_formats_are_configurable():
    flac = _encode(_tone(0.5, 8000, 440), 8000, "FLAC", "PCM_16")
    with pytest.raises(UnsupportedFormat, match="FLAC uploads are not accepted"):
        decode_audio(flac, TARGET, AudioLimits(formats=("WAV",)))
    with pytest.raises(ValueError):
        AudioLimits(formats=("AIFF",))
    with pytest.raises(ValueError):
        AudioLimits(min_rate=48_000, max_rate=8_000)
    with pytest.raises(ValueError):
        AudioLimits(max_seconds=0)


def test_more_channels_when_allowed_are_downmixed():
    x = np.stack([_tone(0.5, 8000, 440, amp=0.8 * (c % 2)) for c in range(6)], axis=1)  # odd channels carry 0.8
    out = decode_audio(_encode(x, 8000, "WAV", "FLOAT"), TARGET, AudioLimits(max_channels=8))
    assert out.channels == 6 and np.abs(out.samples[1000:-1000]).max() == pytest.approx(0.4, abs=0.01)


# ---------------------------------------------------------------------------------------------------- valid input

CASES = [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("OGG", "OPUS")]
if "MP3" in sf.available_formats():
    CASES.append(("MP3", "MPEG_LAYER_III"))


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", [8000, 44100, 48000])
@pytest.mark.parametrize("fmt,subtype", CASES, ids=lambda v: v)
def test_valid_files_decode_to_mono_at_the_target_rate(fmt, subtype, rate, channels):
    if subtype == "OPUS" and rate == 44100:
        pytest.skip("Opus has no 44.1 kHz mode")
    freq, seconds = 1000.0, 1.0
    left = _tone(seconds, rate, freq, amp=0.5)
    x = np.stack([left, 0.5 * left], axis=1) if channels == 2 else left  # downmix: amplitude 0.375
    try:
        data = _encode(x, rate, fmt, subtype)
    except sf.LibsndfileError as e:
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}: {e}")
    out = decode_audio(data, TARGET, LIMITS)
    assert (out.format, out.subtype, out.original_rate, out.channels) == (fmt, subtype, rate, channels)
    assert out.sample_rate == TARGET and out.samples.dtype == np.float32 and out.samples.ndim == 1
    lossy = fmt in ("OGG", "MP3")
    assert out.duration_s == pytest.approx(seconds, abs=0.03 if lossy else 1e-9)
    assert len(out.samples) == pytest.approx(out.duration_s * TARGET, abs=2)
    assert _peak_hz(out.samples, TARGET) == pytest.approx(freq, abs=2.0)
    mid = out.samples[TARGET // 10 : -TARGET // 10]
    amp = 0.375 if channels == 2 else 0.5
    assert np.sqrt(np.mean(mid**2)) * np.sqrt(2) == pytest.approx(amp, rel=0.1 if lossy else 0.005)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
def test_resampling_matches_the_analytic_sine(rate):
    """Golden reference: the same sine evaluated at 32 kHz (away from the edges, where the filter starts up)."""
    freq = 1234.5
    out = decode_audio(_encode(_tone(1.0, rate, freq), rate, "WAV", "FLOAT"), TARGET, LIMITS)
    want = 0.5 * np.sin(2 * np.pi * freq * np.arange(len(out.samples)) / TARGET)
    np.testing.assert_allclose(out.samples[2000:-2000], want[2000:-2000], atol=2e-3)


def test_resampling_agrees_with_scipy_polyphase():
    scipy_signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(3).standard_normal(44100).astype(np.float32) * 0.1
    x = scipy_signal.lfilter(*scipy_signal.butter(8, 12_000 / 22_050), x).astype(np.float32)  # band-limit it
    out = decode_audio(_encode(x, 44100, "WAV", "FLOAT"), TARGET, LIMITS).samples
    ref = scipy_signal.resample_poly(x, 320, 441).astype(np.float32)
    assert len(out) == len(ref)
    err = np.abs(out - ref)[1000:-1000].max() / np.abs(ref).max()
    assert err < 1e-2, err


def test_no_resampling_at_the_target_rate_is_exact():
    x = np.random.default_rng(4).uniform(-1, 1, 3200).astype(np.float32)
    out = decode_audio(_encode(x, TARGET, "WAV", "FLOAT"), TARGET, LIMITS)
    np.testing.assert_array_equal(out.samples, x)


def test_encode_wav_round_trip():
    x = _tone(0.25, 16000, 300)
    data = encode_wav(x, 16000)
    assert sniff_format(data) == "WAV" and sf.info(io.BytesIO(data)).subtype == "PCM_16"
    back, rate = sf.read(io.BytesIO(encode_wav(x, 16000, subtype="FLOAT")), dtype="float32")
    assert rate == 16000
    np.testing.assert_array_equal(back, x)


def test_concurrent_decodes_agree():
    files = [encode_wav(_tone(1.0, r, 500), r) for r in (8000, 44100, 48000, 16000)] * 4
    serial = [decode_audio(d, TARGET).samples for d in files]
    with ThreadPoolExecutor(8) as pool:
        parallel = [o.samples for o in pool.map(lambda d: decode_audio(d, TARGET), files)]
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------------- reading


def _endless_chunks(counter: list[int], size: int = 1000):
    while True:
        counter[0] += 1
        yield b"x" * size


class _EndlessFile:
    def __init__(self):
        self.asked = 0

    def read(self, n=-1):
        assert n > 0, "read() without a size would buffer the whole body"
        self.asked += n
        return b"y" * n


def test_read_limited_stops_as_soon_as_the_limit_is_passed():
    counter = [0]
    with pytest.raises(TooLarge, match="10000 bytes"):
        read_limited(_endless_chunks(counter), 10_000)
    assert counter[0] == 11  # the 11th chunk crosses the limit; nothing after it is pulled
    f = _EndlessFile()
    with pytest.raises(TooLarge):
        read_limited(f, 100_000, chunk_bytes=4096)
    assert f.asked == 100_001


def test_read_limited_returns_everything_up_to_the_limit():
    assert read_limited(io.BytesIO(b"a" * 10_000), 10_000, chunk_bytes=3000) == b"a" * 10_000
    assert read_limited([b"ab", b"", b"cd"], 4) == b"abcd"
    assert read_limited(io.BytesIO(b""), 10) == b""


class _AsyncUpload:
    """Like FastAPI's UploadFile: `await read(n)`."""

    def __init__(self, data: bytes):
        self.buf = io.BytesIO(data)

    async def read(self, n=-1):
        await asyncio.sleep(0)
        return self.buf.read(n)


def test_read_limited_async():
    counter = [0]

    async def endless():
        while True:
            counter[0] += 1
            yield b"z" * 1000

    async def main():
        with pytest.raises(TooLarge):
            await read_limited_async(endless(), 5_500)
        assert counter[0] == 6
        assert await read_limited_async(_AsyncUpload(b"q" * 5000), 5000, chunk_bytes=700) == b"q" * 5000
        with pytest.raises(TooLarge):
            await read_limited_async(_AsyncUpload(b"q" * 5001), 5000)
        assert await read_limited_async(io.BytesIO(b"sync"), 10) == b"sync"  # a plain file works too

    asyncio.run(main())
