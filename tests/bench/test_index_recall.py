"""The index benchmark on a small set: every kind is built, tuned and measured on held-out queries, and the tuned
approximate indexes meet the recall target at every query distance."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location("index_recall", Path(__file__).parents[2] / "bench" / "index_recall.py")
index_recall = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(index_recall)


def test_index_bench_small(tmp_path):
    out = tmp_path / "index.json"
    assert index_recall.main(["--sizes", "12000", "--dim", "32", "--json", str(out)]) == 0
    rows = {r["kind"]: r for r in json.loads(out.read_text())}
    assert {"flat", "ivf", "hnsw", "hnsw (former tuning)"} <= set(rows)
    assert rows["flat"]["recall_worst"] == 1.0
    for kind in ("ivf", "hnsw"):
        assert rows[kind]["recall_worst"] >= 0.93, rows[kind]  # target 0.95 tuned with a margin, measured held out
        assert rows[kind]["index_mb"] > 0 and rows[kind]["p99_ms"] > 0
