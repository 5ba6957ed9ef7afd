"""Recall and latency of the index kinds (flat, IVF, HNSW) as the store builds and tunes them, on held-out queries.

    .venv/bin/python bench/index_recall.py                        # 10k and 100k vectors, 128-d
    .venv/bin/python bench/index_recall.py --sizes 1000000 --json index_1m.json

Vectors: a synthetic clustered set (unit vectors around 1,000 random centres, like embeddings of a corpus with many
near-duplicates), of the default index dimension. Each index is built with server/index/ann.py and tuned by
`ann.tune` on one draw of query sets (stored vectors perturbed at each distance in
server.index.version.QUERY_NOISES); recall@10 is then measured on a second, held-out draw, per distance. Latency is
one query at a time (p50 / p99 over the held-out queries); memory is the serialised index size; build time includes
IVF training and tuning. Prints JSON and a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.index import ann  # noqa: E402
from server.index.version import QUERY_NOISES, SAMPLE_QUERIES, TUNE_MARGIN  # noqa: E402


def clustered(n: int, dim: int, rng: np.random.Generator, centres: int = 1000, spread: float = 1.0) -> np.ndarray:
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def chunks(x: np.ndarray, size: int = 50_000):
    for i in range(0, len(x), size):
        yield np.arange(i, min(i + size, len(x)), dtype=np.int64), x[i: i + size]


def query_sets(x: np.ndarray, seed: int) -> list[ann.QuerySet]:
    """The store's kind of query sets (server.index.version.query_sets), over an array instead of a version."""
    return ann.query_sets(lambda n, rng: x[rng.integers(0, len(x), n)], lambda: chunks(x), QUERY_NOISES,
                          SAMPLE_QUERIES, seed)


def measure(kind: str, x: np.ndarray, target: float, seed: int, former: bool = False) -> dict:
    """former: tune as the store did before (one query set at noise 0.5, target 0.9), for comparison."""
    rng = np.random.default_rng(seed)
    cfg = ann.AnnConfig(kind=kind, target_recall=target)
    t0 = time.perf_counter()
    train = x[rng.choice(len(x), min(len(x), max(256 * int(np.sqrt(len(x))), 10_000)), replace=False)]
    index = ann.build(x.shape[1], cfg, len(x), chunks(x), train if kind == "ivf" else None)
    if former:
        former_set = ann.query_sets(lambda n, r: x[r.integers(0, len(x), n)], lambda: chunks(x), (0.5,),
                                    SAMPLE_QUERIES, seed)
        tuned = ann.tune(index, former_set, 0.9 + TUNE_MARGIN)
    else:
        tuned = ann.tune(index, query_sets(x, seed), min(1.0, target + TUNE_MARGIN))
    build_s = time.perf_counter() - t0
    held_out = query_sets(x, seed + 1000)
    recalls = {f"noise {noise:g}": round(ann.recall(ann.search(index, q, ann.RECALL_K), exact), 4)
               for noise, (q, exact) in zip(QUERY_NOISES, held_out)}
    latencies = []
    for q, _ in held_out:
        for row in q:
            t = time.perf_counter()
            ann.search(index, row[None], ann.RECALL_K)
            latencies.append(time.perf_counter() - t)
    latencies.sort()
    return {"kind": ann.index_type(index) + (" (former tuning)" if former else ""), "n": len(x), "params": ann.params(index), "tuning_recall": round(tuned, 4),
            "recall_held_out": recalls, "recall_worst": min(recalls.values()),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 3),
            "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 3),
            "build_s": round(build_s, 1), "index_mb": round(len(ann.faiss.serialize_index(index)) / 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000", help="comma-separated vector counts")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--kinds", default="flat,ivf,hnsw")
    p.add_argument("--target", type=float, default=ann.AnnConfig().target_recall, help="recall@10 target")
    p.add_argument("--threads", type=int, default=0, help="FAISS threads (0: all cores)")
    p.add_argument("--spread", type=float, default=1.0,
                   help="noise around each centre (per-dimension std before normalising): larger = harder, flatter data")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        ann.faiss.omp_set_num_threads(args.threads)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        x = clustered(n, args.dim, np.random.default_rng(n), spread=args.spread)
        for kind in args.kinds.split(","):
            rows.append(measure(kind, x, args.target, seed=7))
        if "hnsw" in args.kinds:
            rows.append(measure("hnsw", x, args.target, seed=7, former=True))
    print(json.dumps(rows, indent=2))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(f"\n{'n':>8s} {'index':22s} {'params':28s} {'recall@10 by noise ' + str(QUERY_NOISES):34s} {'p50 ms':>7s} "
          f"{'p99 ms':>7s} {'build s':>8s} {'MB':>7s}")
    for r in rows:
        rec = " ".join(f"{v:.3f}" for v in r["recall_held_out"].values())
        print(f"{r['n']:8d} {r['kind']:22s} {json.dumps(r['params']):28s} {rec:34s} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
              f"{r['build_s']:8.1f} {r['index_mb']:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
