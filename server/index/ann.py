"""FAISS helpers: build, tune, save and load the approximate-nearest-neighbour cache of one version.

Every index is an `IndexIDMap` (so it knows its own int64 ids, which the store reconciles against SQLite) over
inner product on unit vectors, i.e. cosine: exact `Flat`, `IVF<nlist>,Flat`, or `HNSW<M>,Flat`. Not `IndexIDMap2`:
its reverse map (for `reconstruct`) is not needed, since embeddings live in SQLite, and it makes every
`remove_ids` rebuild a hash map of all N ids.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from server.errors import BadRequest
from server.index.layout import fsync_dir

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "hnsw")
RECALL_K = 10  # validation and tuning measure recall@10
DEFAULT_EF_SEARCH = 64  # FAISS's default of 16 gives recall@10 below 0.9 on hard (uniform random) data
IVF_MIN_PER_LIST = 39  # FAISS warns below 39 training points per centroid: clusters become unstable


@dataclass(frozen=True)
class AnnConfig:
    kind: str = "flat"  # flat: exact; ivf / hnsw: approximate, for large collections
    ivf_min_items: int = 10_000  # an ivf version below this stays flat (exact, and flat is fast at this size)
    nlist: int | None = None  # IVF lists; None: about sqrt(N), fixed when the index is trained
    hnsw_m: int = 32  # HNSW links per node
    ef_construction: int = 80  # HNSW build-time beam; more is slower to build, better connected
    target_recall: float = 0.95  # recall@10 vs exact (worst query distance) that tuning aims for and a rebuild must
    # reach (ivf / hnsw)
    use_gpu: bool = False  # search a GPU copy of flat / IVF indexes when faiss has GPUs (faiss-gpu only)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise BadRequest(f"unknown index kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.ivf_min_items < 1 or self.hnsw_m < 4 or self.ef_construction < 1:
            raise BadRequest("ivf_min_items >= 1, hnsw_m >= 4 and ef_construction >= 1 are required")
        if not 0.0 < self.target_recall <= 1.0:
            raise BadRequest(f"target_recall must be in (0, 1], got {self.target_recall}")


def index_type(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "flat"


def supports_remove(index: faiss.Index) -> bool:
    return index_type(index) != "hnsw"  # HNSW graphs cannot unlink a node: only a compaction drops its tombstones


def ids(index: faiss.Index) -> np.ndarray:
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def params(index: faiss.Index) -> dict:
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIVF):
        return {"nlist": int(inner.nlist), "nprobe": int(inner.nprobe)}
    if isinstance(inner, faiss.IndexHNSW):
        return {"M": int(inner.hnsw.nb_neighbors(1)), "efSearch": int(inner.hnsw.efSearch)}
    return {}


def empty(dim: int, cfg: AnnConfig) -> faiss.Index:
    """An index that takes adds right away: flat, or HNSW (IVF needs training first, so it starts flat)."""
    if cfg.kind == "hnsw":
        index = faiss.index_factory(dim, f"IDMap,HNSW{cfg.hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
        hnsw = faiss.downcast_index(index.index).hnsw
        hnsw.efConstruction = cfg.ef_construction
        hnsw.efSearch = DEFAULT_EF_SEARCH  # until a compaction or rebuild tunes it on the data
        return index
    return faiss.index_factory(dim, "IDMap,Flat", faiss.METRIC_INNER_PRODUCT)


def build(dim: int, cfg: AnnConfig, n: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]],
          train: np.ndarray | None = None) -> faiss.Index:
    """A fresh index over `chunks` of (fids (b,), unit vectors (b, D)); `n` = how many vectors will come.

    An ivf index is trained on `train` (a sample of the same vectors) when n >= ivf_min_items, else it is flat.
    """
    if cfg.kind == "ivf" and n >= cfg.ivf_min_items and train is not None:
        nlist = cfg.nlist or int(round(math.sqrt(n)))
        nlist = max(1, min(nlist, len(train) // IVF_MIN_PER_LIST))
        index = faiss.index_factory(dim, f"IDMap,IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(train, dtype=np.float32))
    else:
        index = empty(dim, cfg)
    for fids, vecs in chunks:
        index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), fids)
    return index


def search(index: faiss.Index, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k), fids (Q, k)); missing results are fid -1. HNSW uses max(efSearch, k) by itself."""
    k = max(1, min(k, index.ntotal))
    return index.search(x, k)


def exact_topk(chunks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
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


def query_sets(sample: Callable[[int, np.random.Generator], np.ndarray],
               vectors: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], noises: Sequence[float], n: int,
               seed: int = 0) -> list[QuerySet]:
    """One set of `n` perturbed queries per noise level, with its exact top-k; `sample(n, rng)` draws stored unit
    vectors, `vectors()` streams (fids, vectors) for the exact search (one pass for all the sets)."""
    sets = []
    for i, noise in enumerate(noises):
        rng = np.random.default_rng(seed * len(noises) + i)
        sets.append(perturbed(sample(n, rng), noise, rng))
    scores, fids = exact_topk(vectors(), np.concatenate(sets), RECALL_K)
    bounds = np.cumsum([0] + [len(q) for q in sets])
    return [(q, (scores[a:b], fids[a:b])) for q, a, b in zip(sets, bounds[:-1], bounds[1:])]


def worst_recall(index: faiss.Index, sets: list[QuerySet]) -> float:
    """recall@10 of `index` on each query set, the lowest one."""
    return min(recall(search(index, q, RECALL_K), exact) for q, exact in sets)


def tune(index: faiss.Index, sets: list[QuerySet], target: float) -> float:
    """Set nprobe (IVF) or efSearch (HNSW) to the smallest value at which every query set reaches `target`
    recall@10 (doubling, then bisecting); returns the worst set's recall (the best reachable one when the target is
    out of reach). Flat is exact."""
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIVF):
        name, lo, top = "nprobe", 1, int(inner.nlist)
    elif isinstance(inner, faiss.IndexHNSW):
        name, lo, top, inner = "efSearch", RECALL_K, 1024, inner.hnsw
    else:
        return worst_recall(index, sets)

    def measure(v: int) -> float:
        setattr(inner, name, v)
        return worst_recall(index, sets)

    # Recall grows (nearly) monotonically with the parameter, so double until the target is met...
    prev, v = lo - 1, lo
    while (got := measure(v)) < target and v < top:
        prev, v = v, min(2 * v, top)
    if got < target:
        return got
    # ... then bisect between the last miss and the first hit for the smallest value that still meets it.
    best, best_recall = v, got
    while best - prev > 1:
        mid = (prev + best) // 2
        if (r := measure(mid)) >= target:
            best, best_recall = mid, r
        else:
            prev = mid
    setattr(inner, name, best)
    return best_recall


def save(index: faiss.Index, path: Path) -> None:
    """Write atomically (temp file, fsync, rename, fsync dir): a kill mid-write leaves the previous file intact.

    The temp name is per thread: a compaction may save while a snapshot of the same version is being written.
    """
    tmp = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
    faiss.write_index(index, str(tmp))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def load(path: Path, dim: int) -> faiss.Index | None:
    """The cached index, or None when it is missing, unreadable or not ours (the caller rebuilds it from SQLite)."""
    if not path.exists():
        return None
    try:
        index = faiss.read_index(str(path))
    except Exception as e:  # faiss raises RuntimeError for a truncated or corrupt file
        log.warning("ignoring unreadable FAISS snapshot %s: %s", path, e)
        return None
    if not isinstance(index, faiss.IndexIDMap) or index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        log.warning("ignoring FAISS snapshot %s: not an inner-product IDMap index of dim %d", path, dim)
        return None
    return index


def to_gpu(index: faiss.Index) -> faiss.Index | None:
    """A GPU copy for searching, or None. Untested here (no faiss-gpu in CI): guarded so any failure means CPU."""
    if index_type(index) == "hnsw" or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return None  # FAISS has no GPU HNSW
    try:
        if faiss.get_num_gpus() < 1:
            return None
        return faiss.index_cpu_to_all_gpus(index)
    except Exception as e:
        log.warning("FAISS GPU copy failed, searching on CPU: %s", e)
        return None
