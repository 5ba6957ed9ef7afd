"""Shared test data for the index store: random unit vectors, items derived from an index, brute-force search."""

from __future__ import annotations

import hashlib

import numpy as np

from blat_gateway.index import ItemRecord, SearchFilter

TAGS = ("dog", "rain", "speech", "music", "car")


def unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 rows of unit norm."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noisy(base: np.ndarray, scale: float = 0.5, seed: int = 1) -> np.ndarray:
    """Unit queries near `base` rows, like real queries near stored clips."""
    rng = np.random.default_rng(seed)
    q = base + scale * rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(base.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def item(i: int, prefix: str = "clip") -> ItemRecord:
    """Deterministic metadata for item i: tags, a source folder and a duration that filters can select on."""
    tags = tuple(TAGS[j] for j in range(len(TAGS)) if (i >> j) & 1) or ("silence",)
    return ItemRecord(
        id=f"{prefix}-{i}",
        source_uri=f"s3://bucket/{'a' if i % 3 else 'b'}/{i}.wav",
        duration_s=float(i % 30),
        tags=tags,
        caption=f"sound {i}",
        content_hash=f"{prefix}-hash-{i}",
        extra={"i": i},
    )


def brute(vecs: np.ndarray, ids: list[str], queries: np.ndarray, k: int, keep=None) -> list[list[tuple[str, float]]]:
    """Exact (id, score) top-k by numpy; `keep` is a boolean mask over the rows (a metadata filter)."""
    out = []
    for q in queries:
        s = vecs @ q
        if keep is not None:
            s = np.where(keep, s, -np.inf)
        order = np.argsort(-s, kind="stable")[:k]
        out.append([(ids[j], float(s[j])) for j in order if np.isfinite(s[j])])
    return out


def mask(items: list[ItemRecord], flt: SearchFilter) -> np.ndarray:
    return np.array([flt.matches(it) for it in items])


def recall_at(got: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)]))


def crash_item(item_id: str, version: int = 0) -> ItemRecord:
    """The record the crash tests write for `item_id` (version > 0: an upsert's replacement)."""
    n = sum(map(ord, item_id))
    return ItemRecord(
        id=item_id,
        source_uri=f"file:///data/{item_id}.wav",
        duration_s=float(n % 17),
        tags=(f"t{n % 4}", "crash"),
        caption=f"{item_id} v{version}",
        content_hash=f"{item_id}#{version}",
        extra={"version": version},
    )


def crash_vector(item_id: str, version: int, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(f"{item_id}#{version}".encode()).digest()[:8], "little")
    return unit(1, dim, seed=seed)[0]
