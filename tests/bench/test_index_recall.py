"""The index benchmark on a small set: every kind is built, tuned and measured on held-out queries, and the tuned
approximate indexes meet the recall target at every query distance; then each kind is loaded into a real
`IndexStore` and searched through it, with and without a tag filter."""

from __future__ import annotations

import json

from tests.bench import load_bench

index_recall = load_bench("index_recall")


def test_index_bench_small(tmp_path):
    out = tmp_path / "index.json"
    assert (
        index_recall.main(
            [
                "--sizes",
                "12000",
                "--store-sizes",
                "12000",
                "--dim",
                "32",
                "--store-dir",
                str(tmp_path),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    rows = {r["kind"]: r for r in result["faiss"]}
    assert {"flat", "ivf", "hnsw", "hnsw (former tuning)"} <= set(rows)
    assert rows["flat"]["recall_worst"] == 1.0
    for kind in ("ivf", "hnsw"):
        assert rows[kind]["recall_worst"] >= 0.93, rows[kind]  # target 0.95 tuned with a margin, measured held out
        assert rows[kind]["index_mb"] > 0 and rows[kind]["p99_ms"] > 0

    store = {r["kind"]: r for r in result["store"]}
    assert set(store) == {"flat", "ivf", "hnsw"}
    for kind, r in store.items():
        assert r["n"] == 12000 and r["index"] == kind, r  # 12,000 >= ivf_min_items: the rebuild trained IVF
        assert r["recall_validated"] >= 0.95, r  # the rebuild swapped in only an index that reached the target
        assert r["p99_ms"] >= r["p50_ms"] > 0 and r["filtered_p99_ms"] >= r["filtered_p50_ms"] > 0, r
        assert r["filtered_hits_off_tag"] == 0 and r["filtered_hits_mean"] == 10, r  # 10% of 12,000 carry the tag
        assert r["load_s"] >= r["ingest_s"] >= 0 and r["disk_mb"] > 0 and r["add_many_ms_per_item"] > 0, r
    assert not list(tmp_path.glob("index_store_*"))  # the temporary stores are removed
