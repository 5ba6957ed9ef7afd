"""Exact search and recall, in numpy only: the ground truth every index engine (FAISS, Milvus) is measured against.

Validation of a rebuilt version and tuning of nprobe / efSearch compare an engine's answers on sample queries with
`exact_topk` over the same vectors; `recall` scores the comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

RECALL_K = 10  # validation and tuning measure recall@10
SAMPLE_QUERIES = 100  # queries per distance used to measure recall when tuning and validating
# Sample queries are stored vectors plus noise of these norms, renormalised: 0.05 is a near-duplicate (an upload of
# a stored clip), 0.3 a similar sound, 1.0 a query as far from its best match as a text is from audio (cosine
# about 0.7). Approximate indexes differ by distance (HNSW is worst on near-duplicates), so tuning and validation
# take the worst of the three.
QUERY_NOISES = (0.05, 0.3, 1.0)
TUNE_MARGIN = 0.03  # tune a little above the target so validation on other queries does not fail by noise


def exact_topk(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force (scores (Q, k), fids (Q, k)) by streaming the vectors, best first; fid -1 pads short results."""
    q = queries.shape[0]
    best_s = np.full((q, 0), -np.inf, np.float32)
    best_i = np.full((q, 0), -1, np.int64)
    for fids, vecs in chunks:
        s = queries @ vecs.T  # (Q, b)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(fids, s.shape)], axis=1)
        if all_s.shape[1] > k:
            top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
            all_s, all_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
        best_s, best_i = all_s, all_i
    order = np.argsort(-best_s, axis=1, kind="stable")
    best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    if best_s.shape[1] < k:
        pad = k - best_s.shape[1]
        best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_i = np.pad(best_i, ((0, 0), (0, pad)), constant_values=-1)
    return best_s, best_i


def recall(ann: tuple[np.ndarray, np.ndarray], exact: tuple[np.ndarray, np.ndarray], k: int = RECALL_K) -> float:
    """Mean recall@k of `ann` vs `exact` (both (scores, fids)). A result tied with the exact k-th score counts as
    found, so exact search scores 1.0 even when equal scores are ordered differently."""
    (a_s, a_i), (e_s, e_i) = ann, exact
    found = total = 0
    for q in range(e_i.shape[0]):
        truth = {int(f) for f in e_i[q, :k] if f >= 0}
        if not truth:
            continue
        kth = e_s[q, min(k, len(truth)) - 1]
        got = {int(f) for f, s in zip(a_i[q, :k], a_s[q, :k]) if f >= 0 and (f in truth or s >= kth - 1e-5)}
        found += min(len(got), len(truth))
        total += len(truth)
    return found / total if total else 1.0


def perturbed(base: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Unit queries: rows of `base` (unit vectors) plus Gaussian noise of norm about `noise`, renormalised."""
    noisy = base + noise * rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(max(base.shape[1], 1))
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


QuerySet = tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]  # (queries (Q, D), exact (scores, fids) of each)


def query_sets(
    sample: Callable[[int, np.random.Generator], np.ndarray],
    vectors: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    noises: Sequence[float],
    n: int,
    seed: int = 0,
) -> list[QuerySet]:
    """One set of `n` perturbed queries per noise level, with its exact top-k; `sample(n, rng)` draws stored unit
    vectors, `vectors()` streams (fids, vectors) for the exact search (one pass for all the sets)."""
    sets = []
    for i, noise in enumerate(noises):
        rng = np.random.default_rng(seed * len(noises) + i)
        sets.append(perturbed(sample(n, rng), noise, rng))
    scores, fids = exact_topk(vectors(), np.concatenate(sets), RECALL_K)
    bounds = np.cumsum([0] + [len(q) for q in sets])
    return [(q, (scores[a:b], fids[a:b])) for q, a, b in zip(sets, bounds[:-1], bounds[1:])]


def tune_param(measure: Callable[[int], float], lo: int, top: int, target: float) -> tuple[int, float]:
    """(the smallest value in [lo, top] at which `measure(value)` reaches `target`, the recall measured there).
    `measure` is a recall growing nearly monotonically with the value (nprobe, efSearch); each value is measured
    once: doubling, then bisecting. `top` when the target is out of reach."""
    measured: dict[int, float] = {}

    def at(v: int) -> float:
        if v not in measured:
            measured[v] = measure(v)
        return measured[v]

    prev, v = lo - 1, lo
    while at(v) < target and v < top:
        prev, v = v, min(2 * v, top)
    if at(v) < target:
        return top, at(top)
    while v - prev > 1:  # the last miss and the first hit: bisect for the smallest hit
        mid = (prev + v) // 2
        if at(mid) >= target:
            v = mid
        else:
            prev = mid
    return v, at(v)
