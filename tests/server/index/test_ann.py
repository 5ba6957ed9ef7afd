"""Approximate indexes against exact search: recall@10 of IVF and HNSW on random unit vectors, and the helpers."""
from __future__ import annotations

import numpy as np
import pytest

from server.index import AnnConfig, IndexStore
from server.index.ann import exact_topk, recall
from tests.server.index.helpers import brute, item, noisy, recall_at, unit

N, DIM = 5000, 64  # uniform random vectors: the hardest case for IVF, which real (clustered) embeddings are not


@pytest.fixture(scope="module")
def data():
    vecs = unit(N, DIM, seed=21)
    queries = noisy(vecs[np.random.default_rng(5).choice(N, 100, replace=False)], seed=22)
    truth = [[i for i, _ in hits] for hits in brute(vecs, [f"clip-{i}" for i in range(N)], queries, 10)]
    return vecs, queries, truth


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_recall_vs_exact_above_threshold(tmp_path, data, kind):
    vecs, queries, truth = data
    with IndexStore(tmp_path, DIM, "b", config=AnnConfig(kind=kind, ivf_min_items=1000)) as store:
        store.add_many((item(i), vecs[i]) for i in range(N))
        if kind == "hnsw":  # incremental HNSW is searchable before any compaction
            got = [[h.id for h in hits] for hits in store.search(queries, 10)]
            assert recall_at(got, truth) >= 0.9
        report = store.compact()  # trains IVF (nlist ~ sqrt(N)) / rebuilds HNSW, then tunes nprobe / efSearch
        assert store.stats().index_type == kind and report["recall"] >= 0.9
        got = [[h.id for h in hits] for hits in store.search(queries, 10)]  # queries the tuner never saw
        assert recall_at(got, truth) >= 0.9
        if kind == "ivf":
            p = report["params"]
            assert p["nlist"] == round(np.sqrt(N)) and p["nprobe"] < p["nlist"]  # not silently exhaustive


def test_exact_topk_streams_and_pads():
    vecs = unit(50, 8, seed=1)
    q = vecs[:3]
    chunks = [(np.arange(i, min(i + 7, 50)), vecs[i:i + 7]) for i in range(0, 50, 7)]
    s, ids = exact_topk(chunks, q, 5)
    want = np.argsort(-(q @ vecs.T), axis=1)[:, :5]
    assert (ids == want).all() and np.allclose(s, np.take_along_axis(q @ vecs.T, want, 1))
    s, ids = exact_topk([(np.arange(3), vecs[:3])], q, 5)  # fewer vectors than k
    assert (ids[:, 3:] == -1).all() and np.isinf(s[:, 3:]).all()


def test_recall_counts_ties_as_found():
    exact = (np.array([[0.9, 0.5, 0.5]]), np.array([[1, 2, 3]]))
    assert recall((np.array([[0.9, 0.5, 0.5]]), np.array([[1, 3, 4]])), exact, k=3) == 1.0  # 4 ties with 2
    assert recall((np.array([[0.9, 0.4, -1]]), np.array([[1, 5, -1]])), exact, k=3) == pytest.approx(1 / 3)
