"""Data utilities the pipeline stages share: JSON Lines manifests, audio loading with an in-memory cache, and
batching of clips into padded (B, N) tensors with true lengths (random crops for training)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from blat_contract.audio import SAMPLE_RATE


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(rows: Iterable[dict], path: str | Path, fsync: bool = False) -> None:
    """Atomic: written to a temporary sibling, then renamed over `path` (fsync'd first when asked)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def load_scene_manifest(path: str | Path, splits: str | Sequence[str] | None = None) -> list[dict]:
    """Rows of a scene manifest (blat.pipeline.scenes), optionally only some splits; `audio` made absolute."""
    path = Path(path)
    wanted = {splits} if isinstance(splits, str) else set(splits) if splits else None
    rows = [r for r in load_jsonl(path) if wanted is None or r["split"] in wanted]
    for r in rows:
        r["audio_path"] = str(path.parent / r["audio"])
    return rows


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A sound file -> (N,) float32 mono at `sample_rate` (downmixed and resampled if needed)."""
    wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if sr != sample_rate:
        g = gcd(sample_rate, sr)
        wave = resample_poly(wave, sample_rate // g, sr // g).astype(np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32)


def load_clips(rows: Sequence[dict], sample_rate: int = SAMPLE_RATE, desc: str = "loading audio") -> list[np.ndarray]:
    """Decode every row's audio once (rows from load_scene_manifest); small sets are kept in memory for all epochs."""
    return [load_audio(r["audio_path"], sample_rate) for r in tqdm(rows, desc=desc, unit="clip", leave=False)]


def batch_audio(
    waves: Sequence[np.ndarray],
    max_samples: int | None = None,
    min_samples: int = 1,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Clips -> (B, N) float32 zero-padded to the longest, and (B,) int64 true lengths.

    A clip longer than `max_samples` is cropped: at a random start when `rng` is given (training), else its start.
    N is at least `min_samples` (the encoder's shortest input)."""
    cut = []
    for w in waves:
        if max_samples and len(w) > max_samples:
            a = int(rng.integers(len(w) - max_samples + 1)) if rng is not None else 0
            w = w[a : a + max_samples]
        cut.append(w)
    lengths = np.asarray([len(w) for w in cut], dtype=np.int64)
    out = np.zeros((len(cut), max(int(lengths.max(initial=0)), min_samples)), dtype=np.float32)
    for i, w in enumerate(cut):
        out[i, : len(w)] = w
    return out, lengths
