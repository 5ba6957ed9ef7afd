"""Recall and latency of the index kinds (flat, IVF, HNSW): FAISS alone, and through the gateway's `IndexStore`.

    .venv/bin/python bench/index_recall.py                        # 10k and 100k vectors, 256-d, both parts
    .venv/bin/python bench/index_recall.py --sizes 1000000 --store-sizes 1000000 --json index_1m.json

Vectors: a synthetic clustered set (unit vectors around 1,000 random centres, like embeddings of a corpus with many
near-duplicates), of the served bundle's embedding dimension (256).

FAISS alone (--sizes): each index is built with server/blat_gateway/index/ann.py and tuned by `ann.tune` on one draw of
query
sets (stored vectors perturbed at each distance in blat_gateway.index.exact.QUERY_NOISES); recall@10 is then measured on
a second, held-out draw, per distance. Latency is one query at a time (p50 / p99 over the held-out queries); memory
is the serialised index size; build time includes IVF training and tuning.

Through the store (--store-sizes): a store of each kind is loaded in a temporary directory the way the gateway loads
a collection in bulk (`IndexStore.start_rebuild` with a source of pairs: rows into SQLite, then the index built from
them, IVF trained, nprobe / efSearch tuned, recall validated, swapped in), from the same vectors with metadata like
a tagged sound library (an id, a source path, a duration, a caption, a content hash and 3 of 30 AudioSet labels, so
each tag is on 10% of the items). Measured: load time (SQLite ingest, then index build + tuning + validation), the
rebuild's validated recall@10, `store.search(q, 10)` one query at a time without and with a tag filter (p50 / p99;
SQLite metadata of the hits included), the store's size on disk, the process's resident memory growth (Linux /proc:
held after the load, and peak during it), and ms per item of one later `add_many` of 1,000 items. `--engines
faiss,milvus` measures the store on each engine (milvus: milvus-lite, the embedded Milvus, in this process; its
disk figure is its data folder).

Prints one JSON object ({"faiss": rows, "store": rows}) and two tables.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blat_contract.labels import audioset_labels  # noqa: E402
from blat_gateway.index import AnnConfig, IndexStore, ItemRecord, SearchFilter, ann, exact  # noqa: E402
from blat_gateway.index.exact import QUERY_NOISES, SAMPLE_QUERIES, TUNE_MARGIN  # noqa: E402
from blat_gateway.index.rebuild import RebuildProgress  # noqa: E402

VOCAB, TAGS_PER_ITEM = 30, 3  # each tag is on 3/30 = 10% of the items: the filtered search's selectivity
ADD_BATCH = 1000


def clustered(n: int, dim: int, rng: np.random.Generator, centres: int = 1000, spread: float = 1.0) -> np.ndarray:
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def chunks(x: np.ndarray, size: int = 50_000):
    for i in range(0, len(x), size):
        yield np.arange(i, min(i + size, len(x)), dtype=np.int64), x[i : i + size]


def query_sets(x: np.ndarray, seed: int) -> list[exact.QuerySet]:
    """The store's kind of query sets (blat_gateway.index.version.query_sets), over an array instead of a version."""
    return exact.query_sets(
        lambda n, rng: x[rng.integers(0, len(x), n)], lambda: chunks(x), QUERY_NOISES, SAMPLE_QUERIES, seed
    )


def percentiles_ms(latencies: list[float]) -> tuple[float, float]:
    latencies = sorted(latencies)
    return (
        round(1000 * latencies[len(latencies) // 2], 3),
        round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 3),
    )


def measure(kind: str, x: np.ndarray, target: float, seed: int, former: bool = False) -> dict:
    """FAISS alone. former: tune as the store did before (one query set at noise 0.5, target 0.9), for comparison."""
    rng = np.random.default_rng(seed)
    cfg = AnnConfig(kind=kind, target_recall=target)
    t0 = time.perf_counter()
    train = x[rng.choice(len(x), min(len(x), max(256 * int(np.sqrt(len(x))), 10_000)), replace=False)]
    index = ann.build(x.shape[1], cfg, len(x), chunks(x), train if kind == "ivf" else None)
    if former:
        former_set = exact.query_sets(
            lambda n, r: x[r.integers(0, len(x), n)], lambda: chunks(x), (0.5,), SAMPLE_QUERIES, seed
        )
        tuned = ann.tune(index, former_set, 0.9 + TUNE_MARGIN)
    else:
        tuned = ann.tune(index, query_sets(x, seed), min(1.0, target + TUNE_MARGIN))
    build_s = time.perf_counter() - t0
    held_out = query_sets(x, seed + 1000)
    recalls = {
        f"noise {noise:g}": round(exact.recall(ann.search(index, q, exact.RECALL_K), truth), 4)
        for noise, (q, truth) in zip(QUERY_NOISES, held_out)
    }
    latencies = []
    for q, _ in held_out:
        for row in q:
            t = time.perf_counter()
            ann.search(index, row[None], exact.RECALL_K)
            latencies.append(time.perf_counter() - t)
    p50, p99 = percentiles_ms(latencies)
    return {
        "kind": ann.index_type(index) + (" (former tuning)" if former else ""),
        "n": len(x),
        "params": ann.params(index),
        "tuning_recall": round(tuned, 4),
        "recall_held_out": recalls,
        "recall_worst": min(recalls.values()),
        "p50_ms": p50,
        "p99_ms": p99,
        "build_s": round(build_s, 1),
        "index_mb": round(ann.size_bytes(index) / 1e6, 1),
    }


# -- through the store ---------------------------------------------------------------------------------------------


def vocabulary() -> list[str]:
    """VOCAB AudioSet label names spread over the ontology (not the first 30, which are all kinds of speech)."""
    names = audioset_labels()
    return list(names[:: len(names) // VOCAB][:VOCAB])


def library(x: np.ndarray, vocab: list[str], seed: int):
    """A rebuild source (a callable, as the gateway passes one): the vectors as items with metadata."""

    def pairs():
        rng = np.random.default_rng(seed)
        for ids, vecs in chunks(x, 4096):
            picks = np.argsort(rng.random((len(ids), len(vocab))), axis=1)[:, :TAGS_PER_ITEM]
            durations = rng.uniform(0.5, 30.0, len(ids)).round(2)
            for i, vec, pick, duration in zip(ids, vecs, picks, durations):
                tags = tuple(vocab[j] for j in pick)
                yield (
                    ItemRecord(
                        id=f"lib/{i:07d}",
                        source_uri=f"library/{i:07d}.wav",
                        duration_s=float(duration),
                        tags=tags,
                        caption=f"{tags[0]}, then {tags[1].lower()}",
                        content_hash=hashlib.sha256(int(i).to_bytes(8, "little")).hexdigest(),
                    ),
                    vec,
                )

    return pairs


def load(store: IndexStore, source, n: int) -> tuple[float, float, RebuildProgress]:
    """Load through `start_rebuild`, the product's bulk path (seeding, folder and manifest rebuilds) -> (ingest s,
    total s, progress). Polled, to split the SQLite ingest from the index build, tuning and validation after it."""
    t0 = time.perf_counter()
    job = store.start_rebuild(source, n)
    ingest_s = None
    while job.running:
        if job.wait(0.1).state not in ("pending", "running") and ingest_s is None:
            ingest_s = time.perf_counter() - t0
    progress = job.progress()
    if progress.state != "succeeded":
        raise RuntimeError(f"the rebuild {progress.state}: {progress.error}")
    return ingest_s or 0.0, time.perf_counter() - t0, progress


def held_out_queries(x: np.ndarray, seed: int) -> np.ndarray:
    """SAMPLE_QUERIES queries per distance in QUERY_NOISES, as the FAISS part's held-out sets (no exact top-k)."""
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [exact.perturbed(x[rng.integers(0, len(x), SAMPLE_QUERIES)], noise, rng) for noise in QUERY_NOISES]
    )


def timed_searches(store: IndexStore, queries: np.ndarray, flt: SearchFilter | None) -> tuple[list[float], list]:
    latencies, results = [], []
    for q in queries:
        t = time.perf_counter()
        results.append(store.search(q, 10, flt)[0])
        latencies.append(time.perf_counter() - t)
    return latencies, results


def proc_mb(key: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident since the last `settle`) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def settle() -> None:
    """Free what earlier measurements left, so that the next growth in RSS is the next store's own: the previous
    store is only freed by the cycle collector (it and its rebuild job refer to each other), and glibc keeps freed
    heap pages until trimmed. Then reset the peak (Linux: VmHWM back to the current RSS)."""
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def add_ms(store: IndexStore, x: np.ndarray, vocab: list[str], rng: np.random.Generator) -> float:
    """ms per item of one add_many of ADD_BATCH new items into the loaded store: the cost of writes after a load."""
    vecs = exact.perturbed(x[rng.integers(0, len(x), ADD_BATCH)], 0.3, rng)
    pairs = [(ItemRecord(id=f"new/{i}", tags=(vocab[0],), caption="added later"), v) for i, v in enumerate(vecs)]
    t = time.perf_counter()
    store.add_many(pairs)
    return 1000 * (time.perf_counter() - t) / ADD_BATCH


@contextlib.contextmanager
def open_store(engine: str, root: str, dim: int, cfg: AnnConfig) -> Iterator[IndexStore]:
    from blat_gateway.index.milvus import MilvusConfig

    if engine == "faiss":
        with IndexStore(root, dim, "bench", config=cfg) as store:
            yield store
    elif engine == "milvus":  # milvus-lite: the embedded Milvus, in this process
        milvus = MilvusConfig(uri=f"{root}/milvus.db", collection="bench")
        with IndexStore(None, dim, "bench", config=cfg, milvus=milvus) as store:
            yield store
    else:  # milvus-server: a real Milvus 2.3 server, started for this store with the test suite's helper
        from tests.server.index.milvus_server import Server

        server = Server(Path(root) / "server", settings={})  # Milvus's own timers, as deployed
        try:
            milvus = MilvusConfig(uri=server.start(), collection="bench", timeout_s=60)
            with IndexStore(None, dim, "bench", config=cfg, milvus=milvus) as store:
                yield store
        finally:
            server.stop()


def measure_store(
    kind: str, x: np.ndarray, target: float, seed: int, parent: Path | None, engine: str = "faiss"
) -> dict:
    vocab = vocabulary()
    queries = held_out_queries(x, seed + 1000)
    flt = SearchFilter(tags_any=(vocab[0],))
    with tempfile.TemporaryDirectory(prefix="index_store_", dir=parent) as root:
        settle()
        rss0 = proc_mb("VmRSS")
        with open_store(engine, root, x.shape[1], AnnConfig(kind=kind, target_recall=target)) as store:
            ingest_s, load_s, progress = load(store, library(x, vocab, seed), len(x))
            rss, peak = proc_mb("VmRSS") - rss0, proc_mb("VmHWM") - rss0
            disk_mb = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file()) / 1e6
            stats = store.stats()
            plain, _ = timed_searches(store, queries, None)
            filtered, results = timed_searches(store, queries, flt)
            per_add = add_ms(store, x, vocab, np.random.default_rng(seed))
    p50, p99 = percentiles_ms(plain)
    f50, f99 = percentiles_ms(filtered)
    return {
        "engine": engine,
        "kind": kind,
        "n": len(x),
        "index": stats.index_type,
        "params": stats.params,
        "recall_validated": progress.recall,
        "ingest_s": round(ingest_s, 1),
        "load_s": round(load_s, 1),
        "p50_ms": p50,
        "p99_ms": p99,
        "filter": f"tags_any {vocab[0]!r}",
        "filtered_p50_ms": f50,
        "filtered_p99_ms": f99,
        "filtered_hits_mean": round(float(np.mean([len(r) for r in results])), 2),
        "filtered_hits_off_tag": sum(vocab[0] not in h.item.tags for r in results for h in r),
        "disk_mb": round(disk_mb, 1),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(peak, 1),
        "add_many_ms_per_item": round(per_add, 3),
    }


def print_tables(rows: list[dict], store_rows: list[dict]) -> None:
    if rows:
        print(
            f"\nFAISS alone\n{'n':>8s} {'index':22s} {'params':28s} {'recall@10 by noise ' + str(QUERY_NOISES):34s} "
            f"{'p50 ms':>7s} {'p99 ms':>7s} {'build s':>8s} {'MB':>7s}"
        )
    for r in rows:
        rec = " ".join(f"{v:.3f}" for v in r["recall_held_out"].values())
        print(
            f"{r['n']:8d} {r['kind']:22s} {json.dumps(r['params']):28s} {rec:34s} {r['p50_ms']:7.2f} "
            f"{r['p99_ms']:7.2f} {r['build_s']:8.1f} {r['index_mb']:7.1f}"
        )
    if store_rows:
        print(
            f"\nThrough IndexStore (search k=10; filtered: {store_rows[0]['filter']}, 10% of items)\n"
            f"{'n':>8s} {'engine':13s} {'kind':5s} {'params':28s} {'recall':>6s} {'ingest s':>8s} {'load s':>7s} "
            f"{'p50 ms':>7s} "
            f"{'p99 ms':>7s} {'filt p50':>8s} {'filt p99':>8s} {'disk MB':>8s} {'RSS MB':>7s} {'peak MB':>7s} "
            f"{'add ms':>7s}"
        )
    for r in store_rows:
        print(
            f"{r['n']:8d} {r['engine']:13s} {r['kind']:5s} {json.dumps(r['params']):28s} {r['recall_validated']:6.3f} "
            f"{r['ingest_s']:8.1f} {r['load_s']:7.1f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
            f"{r['filtered_p50_ms']:8.2f} {r['filtered_p99_ms']:8.2f} {r['disk_mb']:8.1f} {r['rss_mb']:7.1f} "
            f"{r['peak_rss_mb']:7.1f} {r['add_many_ms_per_item']:7.3f}"
        )


def sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000", help="comma-separated vector counts for FAISS alone ('' none)")
    p.add_argument(
        "--store-sizes", default="10000,100000", help="comma-separated vector counts for the IndexStore part ('' none)"
    )
    p.add_argument("--dim", type=int, default=256, help="embedding dimension (the served bundle's is 256)")
    p.add_argument("--kinds", default="flat,ivf,hnsw")
    p.add_argument(
        "--engines",
        default="faiss",
        help="index engines for the IndexStore part: faiss, milvus (milvus-lite), milvus-server (milvus==2.3.5's "
        "standalone server, started per store; its memory is not in the RSS columns)",
    )
    p.add_argument("--target", type=float, default=AnnConfig().target_recall, help="recall@10 target")
    p.add_argument("--threads", type=int, default=0, help="FAISS threads (0: all cores)")
    p.add_argument(
        "--spread",
        type=float,
        default=1.0,
        help="noise around each centre (per-dimension std before normalising): larger = harder, flatter data",
    )
    p.add_argument("--store-dir", type=Path, help="where the temporary stores go (default: the system's temp dir)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        ann.set_threads(args.threads)
    kinds, faiss_sizes, store_sizes = args.kinds.split(","), sizes(args.sizes), sizes(args.store_sizes)
    rows, store_rows = [], []
    for n in sorted(set(faiss_sizes) | set(store_sizes)):
        x = clustered(n, args.dim, np.random.default_rng(n), spread=args.spread)
        if n in faiss_sizes:
            rows += [measure(kind, x, args.target, seed=7) for kind in kinds]
            if "hnsw" in kinds:
                rows.append(measure("hnsw", x, args.target, seed=7, former=True))
        if n in store_sizes:
            store_rows += [
                measure_store(kind, x, args.target, seed=7, parent=args.store_dir, engine=engine)
                for engine in args.engines.split(",")
                for kind in kinds
            ]
    out = json.dumps({"faiss": rows, "store": store_rows}, indent=2)
    print(out)
    if args.json:
        args.json.write_text(out)
    print_tables(rows, store_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
