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
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from blat_gateway.index.exact import RECALL_K, QuerySet, recall, tune_param
from blat_gateway.index.layout import recorded_checksums, replace_checksummed, sha256_file
from blat_gateway.index.protocol import AnnConfig

log = logging.getLogger(__name__)

DEFAULT_EF_SEARCH = 64  # FAISS's default of 16 gives recall@10 below 0.9 on hard (uniform random) data
IVF_MIN_PER_LIST = 39  # FAISS warns below 39 training points per centroid: clusters become unstable


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


def build(
    dim: int, cfg: AnnConfig, n: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]], train: np.ndarray | None = None
) -> faiss.Index:
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

    best, got = tune_param(measure, lo, top, target)
    setattr(inner, name, best)
    return got


_SAVE_LOCK = threading.Lock()  # a compaction's save and a snapshot of one version must not interleave checksums


def save(index: faiss.Index, path: Path) -> None:
    """Write atomically (temp file, fsync, rename, fsync dir) with its checksum (layout.replace_checksummed): a kill
    mid-write leaves the previous file intact, and whichever file is there verifies.

    The temp name is per thread: a compaction may save while a snapshot of the same version is being written.
    """
    tmp = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
    faiss.write_index(index, str(tmp))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    with _SAVE_LOCK:
        replace_checksummed(tmp, path)


def load(path: Path, dim: int) -> faiss.Index | None:
    """The cached index, or None when it is missing, damaged, unreadable or not ours (the caller rebuilds it from
    SQLite, the truth). Damage is told by the checksum recorded when the file was written: FAISS reads noise inside
    its vectors without complaint (4 KiB of it put one item at the top of every query, score 2.6e37)."""
    if not path.exists():
        return None
    sums = recorded_checksums(path)
    if sums is None:
        log.info(
            "FAISS snapshot %s has no checksum (written before checksums were recorded): loaded unverified; "
            "the next snapshot records one",
            path,
        )
    elif (got := sha256_file(path)) not in sums:
        log.error(
            "FAISS snapshot %s is damaged (sha256 %s, recorded %s): ignored; the index is rebuilt from the "
            "rows of items.sqlite and snapshotted again",
            path,
            got[:16],
            " or ".join(s[:16] for s in sums),
        )
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


def size_bytes(index: faiss.Index) -> int:
    """What the index takes serialised (about its memory footprint)."""
    return len(faiss.serialize_index(index))


def set_threads(n: int) -> None:
    faiss.omp_set_num_threads(n)
