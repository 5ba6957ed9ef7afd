"""Uploaded audio -> mono float32 at the bundle rate, within stated limits.

Bytes are read with a size cap (`read_limited`, `read_limited_async`); `decode_audio` sniffs the container from its
magic bytes, decodes an allow-list of formats with libsndfile (through `soundfile`) in bounded blocks, downmixes by the
channel mean and resamples with soxr. Every failure is a `blat_gateway.errors.ServiceError` with a message for people.

What is guaranteed, for any input bytes:
- reading an upload buffers at most `max_bytes` plus the chunk that crossed it;
- the decode loop reads at most `max_seconds * rate + 1` frames, in blocks of at most `DECODE_BLOCK_FRAMES`, and
  ends on the first empty block, so it cannot spin however the header lies (its frame count is never used to size
  an allocation); decoded memory is about `max_seconds * target_rate * 4` bytes plus one block;
- a libsndfile failure (a `RuntimeError` from soundfile) or any other decoder exception becomes `BadAudio`;
  NaN/Inf or absurdly large samples, rates outside [min_rate, max_rate], too many channels, zero or too few frames
  are rejected before the model sees them.
What is not: libsndfile and its codecs (libFLAC, libvorbis, libopus, mpg123) run in this process, so a bug inside one
C call (an endless loop, a crash) cannot be interrupted from Python. The allow-list keeps that surface small (no
ADPCM/GSM/AIFF/CAF/... parsers are reachable), cffi releases the GIL so a decode run in a worker thread does not
block the event loop, and the work per upload is bounded by its bytes and the frame cap. Process isolation with a
kill-on-timeout would close the rest, at the cost of copying every upload across processes; not done here.
mpg123 writes warnings about damaged MP3 frames to stderr (bounded by the upload's size).
"""

from __future__ import annotations

import inspect
import io
import math
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from blat_contract.audio import HOP_LENGTH, SAMPLE_RATE
from blat_gateway.errors import BadAudio, BadRequest, ServiceError, TooLarge, UnsupportedFormat

MiB = 1 << 20
MAX_BYTES = 32 * MiB  # per upload: 120 s of 16-bit 48 kHz stereo WAV is 23 MB; compressed formats are far smaller
MAX_SECONDS = 120.0  # per clip, for the synchronous endpoints
MIN_SECONDS = HOP_LENGTH / SAMPLE_RATE  # 0.01 s: one front-end frame step; shorter clips carry no usable signal
MIN_RATE, MAX_RATE = 8_000, 192_000  # Hz: telephone speech .. high-resolution studio audio
MAX_CHANNELS = 2  # mono or stereo; multichannel stems are refused rather than guessed at
MAX_ABS_SAMPLE = 1_000.0  # 60 dB over full scale: float files may exceed 1.0, but not by this much
READ_CHUNK_BYTES = 64 * 1024  # upload read size
DECODE_BLOCK_FRAMES = 1 << 16  # frames per libsndfile read: 512 KiB for float32 stereo
PCM_ENCODINGS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}  # raw PCM that StreamTag takes

FORMATS = ("WAV", "FLAC", "OGG", "MP3")  # containers we accept, as sniffed from magic bytes
# libsndfile's name(s) for each container, and the encodings inside it that we let libsndfile decode.
_SF_FORMATS = {"WAV": {"WAV", "WAVEX"}, "FLAC": {"FLAC"}, "OGG": {"OGG"}, "MP3": {"MP3"}}
_SUBTYPES = {
    "WAV": {"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"},
    "FLAC": {"PCM_S8", "PCM_16", "PCM_24"},
    "OGG": {"VORBIS", "OPUS"},
    "MP3": {"MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III"},
}
# WAVE fmt codes allowed through to libsndfile (1 PCM, 3 IEEE float, 6 A-law, 7 mu-law); 0xFFFE is the extensible
# header, whose sub-format carries the real code.
_WAV_CODES = {1, 3, 6, 7}
_WAV_EXTENSIBLE = 0xFFFE
_WAV_CODE_NAMES = {
    0x0002: "MS ADPCM",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MPEG Layer 3",
    0x00FF: "AAC",
    0x0161: "WMA",
    0x1610: "AAC",
}
# Writers that cannot seek back (pipes) leave a placeholder data size, 0xFFFFFFFF or near 2 GiB: not a truncation.
_WAV_SIZE_PLACEHOLDER = 0x7FFF_F000
_SF_UNKNOWN_FRAMES = 1 << 62  # libsndfile reports SF_COUNT_MAX when it does not know the length
# Magic bytes of common non-audio uploads, for a clearer 415 message.
_NOT_AUDIO = [
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"\x7fELF", "an ELF executable"),
    (b"FORM", "AIFF/IFF audio"),
    (b"RF64", "RF64 audio"),
    (b"\x1aE\xdf\xa3", "Matroska/WebM"),
    (b".snd", "AU audio"),
    (b"caff", "CAF audio"),
]


@dataclass(frozen=True)
class AudioLimits:
    """What an upload may be. The defaults suit the synchronous endpoints; a service may pass stricter ones."""

    max_bytes: int = MAX_BYTES  # upload size, enforced while reading
    max_seconds: float = MAX_SECONDS  # clip duration, from the header before decoding and counted while decoding
    min_seconds: float = MIN_SECONDS  # shorter clips are refused (zero frames always are)
    max_channels: int = MAX_CHANNELS  # more channels are refused; 2..max_channels are downmixed by their mean
    min_rate: int = MIN_RATE  # Hz, lowest accepted source sample rate
    max_rate: int = MAX_RATE  # Hz, highest accepted source sample rate
    max_abs_sample: float = MAX_ABS_SAMPLE  # a decoded sample beyond this magnitude is refused (as are NaN and Inf)
    formats: tuple[str, ...] = FORMATS  # allowed containers, a subset of FORMATS

    def __post_init__(self):
        if self.max_bytes <= 0 or self.max_channels < 1 or self.max_abs_sample <= 0:
            raise ValueError("max_bytes, max_channels and max_abs_sample must be positive")
        if not 0 <= self.min_seconds < self.max_seconds:
            raise ValueError(f"need 0 <= min_seconds < max_seconds, got {self.min_seconds}, {self.max_seconds}")
        if not 0 < self.min_rate <= self.max_rate:
            raise ValueError(f"need 0 < min_rate <= max_rate, got {self.min_rate}, {self.max_rate}")
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {self.formats}")


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """A decoded clip: `samples` (N,) float32 mono at `sample_rate`; the rest describes the upload."""

    samples: np.ndarray  # (N,) float32, not clipped
    sample_rate: int  # Hz, the requested target rate
    duration_s: float  # seconds of audio in the upload (decoded frames / original_rate)
    original_rate: int  # Hz, as stored in the file
    channels: int  # as stored in the file, before the downmix
    format: str  # container: one of FORMATS
    subtype: str  # encoding inside it, libsndfile's name (PCM_16, VORBIS, MPEG_LAYER_III, ...)


# ---------------------------------------------------------------------------------------------------- reading


def _too_large_upload(max_bytes: int) -> TooLarge:
    return TooLarge(f"upload exceeds the limit of {max_bytes} bytes ({max_bytes / MiB:g} MiB)", max_bytes=max_bytes)


def read_limited(source, max_bytes: int, chunk_bytes: int = READ_CHUNK_BYTES) -> bytes:
    """All bytes of `source` (a binary file-like with `read(n)`, or an iterable of bytes chunks).

    Raises TooLarge as soon as more than `max_bytes` arrive: a file-like is never asked for more than `max_bytes + 1`
    bytes in all, and an iterable's chunk that crosses the limit is dropped before it is buffered.
    """
    chunks, total = [], 0
    if hasattr(source, "read"):
        while chunk := source.read(min(chunk_bytes, max_bytes + 1 - total)):
            total += len(chunk)
            if total > max_bytes:
                raise _too_large_upload(max_bytes)
            chunks.append(chunk)
    else:
        for chunk in source:
            total += len(chunk)
            if total > max_bytes:
                raise _too_large_upload(max_bytes)
            chunks.append(chunk)
    return b"".join(chunks)


async def read_limited_async(source, max_bytes: int, chunk_bytes: int = READ_CHUNK_BYTES) -> bytes:
    """`read_limited` for async sources: an object with `read(n)` (FastAPI's UploadFile, async or not) or an async
    iterator of bytes chunks (Starlette's `request.stream()`).

    Note that Starlette spools a multipart body to a temporary file before the handler sees an UploadFile, so for
    multipart uploads the byte cap must also be applied to the request body (Content-Length and a counting stream).
    """
    chunks, total = [], 0
    if hasattr(source, "read"):
        while True:
            chunk = source.read(min(chunk_bytes, max_bytes + 1 - total))
            if inspect.isawaitable(chunk):
                chunk = await chunk
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise _too_large_upload(max_bytes)
            chunks.append(chunk)
    else:
        async for chunk in source:
            total += len(chunk)
            if total > max_bytes:
                raise _too_large_upload(max_bytes)
            chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------------- sniffing


def _is_mpeg_frame(head: bytes) -> bool:
    """An MPEG audio frame header: 11 sync bits, and no reserved version, layer, bitrate or rate codes."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate != 15 and rate != 3  # layer 0 is ADTS AAC


def sniff_format(data: bytes) -> str:
    """The container of `data` from its magic bytes (one of FORMATS); UnsupportedFormat if none matches."""
    head = bytes(data[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "WAV"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        return "OGG"
    if head[:3] == b"ID3":  # an ID3v2 tag (synchsafe size) in front of MP3, sometimes of FLAC
        if len(head) >= 10:
            size = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
            size += 10 if head[5] & 0x10 else 0  # footer present
            if bytes(data[size : size + 4]) == b"fLaC":
                return "FLAC"
        return "MP3"
    if _is_mpeg_frame(head):
        return "MP3"
    what = next((name for magic, name in _NOT_AUDIO if head.startswith(magic)), None)
    if what is None and head[:4] == b"RIFF":
        what = "a RIFF file other than WAVE"
    elif what is None and head[4:8] == b"ftyp":
        what = "MP4/M4A (AAC)"
    elif what is None and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        what = "text, such as JSON or HTML"
    # Never the bytes themselves: server-side paths (add from path, rebuilds) would quote files the caller cannot read.
    hint = f"it looks like {what}" if what else "no known audio signature"
    raise UnsupportedFormat(
        f"unsupported audio format ({hint}); accepted: WAV, FLAC, OGG (Vorbis, Opus), MP3", accepted=list(FORMATS)
    )


def _wav_chunks(data: bytes) -> tuple[int | None, int | None, int]:
    """(fmt code, declared data bytes, data bytes present) from the RIFF chunk list; None where not found.

    Looks at the first 64 chunks only; anything stranger is left to libsndfile to refuse.
    """
    pos, code, declared, present = 12, None, None, 0
    for _ in range(64):
        if pos + 8 > len(data):
            break
        cid, size = bytes(data[pos : pos + 4]), struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt " and size >= 2 and body + 2 <= len(data):
            code = struct.unpack_from("<H", data, body)[0]
            if code == _WAV_EXTENSIBLE and size >= 26 and body + 26 <= len(data):
                code = struct.unpack_from("<H", data, body + 24)[0]  # first two bytes of the sub-format GUID
        elif cid == b"data":
            declared, present = size, len(data) - body
            break
        pos = body + size + (size & 1)
    return code, declared, present


# ---------------------------------------------------------------------------------------------------- decoding


# libsndfile texts that mislead when the input is an in-memory upload, and what they mean there.
_CLEARER = {
    "File does not exist or is not a regular file": "no decodable MPEG audio frames found",
    "Internal psf_fseek() failed": "the stream is damaged, or its header gives no length",
    "SF_INFO struct incomplete": "the header lacks a sample rate or channel count",
}


def _libsndfile_message(e: Exception) -> str:
    # soundfile's LibsndfileError carries libsndfile's own text; its str() names the BytesIO object.
    text = getattr(e, "error_string", None) or str(e) or type(e).__name__
    return next((clear for known, clear in _CLEARER.items() if known in text), text)


def _check_info(f: sf.SoundFile, container: str, limits: AudioLimits) -> None:
    """Refuse on the header alone, before any sample is decoded."""
    if f.format not in _SF_FORMATS[container]:
        raise UnsupportedFormat(f"the file starts like {container} but libsndfile reads it as {f.format}")
    if f.subtype not in _SUBTYPES[container]:
        raise UnsupportedFormat(
            f"{container} with {f.subtype} encoding is not supported; "
            f"accepted: {', '.join(sorted(_SUBTYPES[container]))}"
        )
    if not limits.min_rate <= f.samplerate <= limits.max_rate:
        raise BadAudio(
            f"sample rate {f.samplerate} Hz is outside the accepted {limits.min_rate}..{limits.max_rate} Hz",
            sample_rate=f.samplerate,
        )
    if not 1 <= f.channels <= limits.max_channels:
        raise BadAudio(f"{f.channels} channels; at most {limits.max_channels} are accepted", channels=f.channels)
    # MP3 lengths are estimates (file size / first frame's bitrate without a Xing header): those are only counted.
    if container != "MP3" and 0 < f.frames < _SF_UNKNOWN_FRAMES and f.frames / f.samplerate > limits.max_seconds:
        raise TooLarge(
            f"the clip lasts {f.frames / f.samplerate:.1f} s (from its header); the limit is {limits.max_seconds:g} s",
            max_seconds=limits.max_seconds,
        )


def check_samples(samples: np.ndarray, limits: AudioLimits, at_s: float = 0.0) -> None:
    """BadAudio when decoded samples hold NaN, Inf or magnitudes over `limits.max_abs_sample`; `at_s`: where the
    block starts in the clip, for the message. Uploads (per decoded block) and StreamTag's PCM (per chunk) both pass."""
    if not len(samples):
        return
    peak = float(np.max(np.abs(samples)))
    if not math.isfinite(peak):
        raise BadAudio(f"the audio contains NaN or infinite samples (near {at_s:.2f} s)")
    if peak > limits.max_abs_sample:
        raise BadAudio(
            f"the audio contains samples of magnitude {peak:.3g}; "
            f"at most {limits.max_abs_sample:g} is accepted (full scale is 1.0)"
        )


def decode_pcm(data: bytes, encoding: str, limits: AudioLimits, at_s: float = 0.0) -> np.ndarray:
    """Raw little-endian mono PCM (`encoding`: one of PCM_ENCODINGS, whole samples only) -> (N,) float32, checked
    as decoded uploads are (`check_samples`)."""
    dtype = PCM_ENCODINGS[encoding]
    samples = np.frombuffer(data, dtype=dtype).astype(np.float32)
    if dtype.kind == "i":
        samples /= 32768.0
    check_samples(samples, limits, at_s)
    return samples


def _read_mono(f: sf.SoundFile, target_rate: int, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """(samples (N,) float32 at target_rate, frames decoded), reading at most max_seconds * rate + 1 frames."""
    rate, channels = f.samplerate, f.channels
    cap = math.floor(limits.max_seconds * rate)  # frames allowed; one more proves the clip too long
    resampler = None if rate == target_rate else soxr.ResampleStream(rate, target_rate, 1, "float32", quality="HQ")
    out, frames = [], 0
    while frames <= cap:
        block = f.read(min(DECODE_BLOCK_FRAMES, cap + 1 - frames), dtype="float32", always_2d=True)  # (n, C)
        if len(block) == 0:  # exhausted (or the decoder gave up): every pass either ends or advances
            break
        check_samples(block, limits, frames / rate)
        frames += len(block)
        mono = block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0]
        out.append(resampler.resample_chunk(mono) if resampler else mono)
    if frames > cap:
        raise TooLarge(
            f"the clip lasts more than the limit of {limits.max_seconds:g} s", max_seconds=limits.max_seconds
        )
    if resampler and frames:
        out.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    samples = np.concatenate(out) if out else np.zeros(0, np.float32)
    return samples, frames


def decode_audio(data: bytes, target_rate: int = SAMPLE_RATE, limits: AudioLimits | None = None) -> DecodedAudio:
    """Decode an uploaded file to (N,) float32 mono at `target_rate` Hz, or raise a ServiceError.

    UnsupportedFormat (415): not an allowed container or encoding. TooLarge (413): over max_bytes or max_seconds.
    BadAudio (422): damaged, empty, too short, absurd rate or channel count, NaN/Inf or huge samples.
    """
    limits = limits or AudioLimits()
    if not isinstance(target_rate, (int, np.integer)) or target_rate <= 0:
        raise BadRequest(f"target_rate must be a positive integer, got {target_rate!r}")
    target_rate = int(target_rate)
    if len(data) > limits.max_bytes:
        raise _too_large_upload(limits.max_bytes)
    if len(data) == 0:
        raise BadAudio("the upload is empty")
    container = sniff_format(data)
    if container not in limits.formats:
        raise UnsupportedFormat(f"{container} uploads are not accepted here; accepted: {', '.join(limits.formats)}")
    if container == "WAV":
        code, declared, present = _wav_chunks(data)
        if code is not None and code not in _WAV_CODES:
            name = _WAV_CODE_NAMES.get(code, f"format code 0x{code:04X}")
            raise UnsupportedFormat(f"WAV with {name} encoding is not supported; accepted: PCM, float, A-law, mu-law")
        if declared is not None and present < declared < _WAV_SIZE_PLACEHOLDER:
            raise BadAudio(
                f"the WAV file is truncated: its header declares {declared} bytes of audio, {present} are present"
            )
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            _check_info(f, container, limits)
            samples, frames = _read_mono(f, target_rate, limits)
            rate, channels, subtype = f.samplerate, f.channels, f.subtype
            declared_frames = f.frames
    except (ServiceError, MemoryError):  # MemoryError is the server's trouble, not the upload's: a 5xx
        raise
    except Exception as e:
        raise BadAudio(f"could not decode the {container} file: {_libsndfile_message(e)}") from None
    if frames == 0:
        raise BadAudio(f"the {container} file contains no audio samples")
    if container == "FLAC" and 0 < declared_frames < _SF_UNKNOWN_FRAMES and frames < declared_frames:
        raise BadAudio(f"the FLAC file is truncated: {frames} of {declared_frames} frames decoded")
    duration = frames / rate
    if duration < limits.min_seconds:
        raise BadAudio(f"the clip lasts {duration:.4f} s; the minimum is {limits.min_seconds:g} s")
    return DecodedAudio(
        samples=samples,
        sample_rate=target_rate,
        duration_s=duration,
        original_rate=rate,
        channels=channels,
        format=container,
        subtype=subtype,
    )


def encode_wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    """A WAV file of `samples` ((N,) or (N, C) float in [-1, 1]) at `rate` Hz, for tests and clients."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples), rate, format="WAV", subtype=subtype)
    return buf.getvalue()
