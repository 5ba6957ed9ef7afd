"""Background rebuilds on each engine: progress, the old version serving meanwhile, validation, cancel, rollback,
replayed writes. FAISS only: leftover version directories (Milvus: leftover collections, below)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest

from blat_gateway.errors import Conflict, NotFound
from blat_gateway.index import AnnConfig, ItemRecord, exact
from tests.server.index.conftest import faiss_open, stored_versions
from tests.server.index.helpers import item, unit

DIM = 16
OLD, NEW = unit(60, DIM, seed=1), unit(200, DIM, seed=2)


class Gate:
    """A source that yields `n` pairs, stopping after `pause_at` until `release()`: a rebuild caught mid-way."""

    def __init__(self, vecs: np.ndarray, pause_at: int, prefix: str = "new", n: int | None = None):
        self.vecs, self.pause_at, self.prefix = vecs, pause_at, prefix
        self.n = len(vecs) if n is None else n
        self.paused, self.go = threading.Event(), threading.Event()

    def __iter__(self):
        for i in range(self.n):
            if i == self.pause_at:
                self.paused.set()
                assert self.go.wait(10)
            yield item(i, self.prefix), self.vecs[i]

    def release(self):
        self.go.set()


@pytest.fixture
def store(tmp_path, open_store):
    s = open_store(tmp_path, DIM, "bundle-1")
    s.add_many((item(i, "old"), OLD[i]) for i in range(60))
    yield s
    s.close()


def test_rebuild_swaps_after_validation_and_serves_old_meanwhile(store, version_name):
    store.add(item(7, "new"), NEW[7])  # an item both in the live version and in the rebuild's source
    src = Gate(NEW, pause_at=120)
    job = store.start_rebuild(src, total=200)
    assert src.paused.wait(10)
    p = job.progress()
    assert p.state == "running" and p.version == version_name(2) and 0 < p.done <= 120 and p.total == 200
    assert store.search(OLD[3], 1)[0][0].id == "old-3"  # still the old version
    assert store.stats().version == version_name(1) and store.stats().rebuild.state == "running"
    with pytest.raises(Conflict):
        store.start_rebuild([], total=0)
    with pytest.raises(Conflict):
        store.rollback()
    # Writes during the rebuild land in the live version now and are replayed into the new one before the swap.
    extra = unit(1, DIM, seed=3)[0]
    store.add(ItemRecord(id="during", content_hash="during-hash"), extra)
    store.delete("old-5")
    store.delete("new-7")  # the replay deletes it from the new version too
    assert store.get("during").id == "during"
    src.release()
    p = job.wait(30)
    assert p.state == "succeeded" and (p.done, p.added, p.skipped, p.error) == (200, 200, 0, None) and p.recall == 1.0
    s = store.stats()
    assert (s.version, s.previous_version, s.count) == (version_name(2), version_name(1), 200 - 1 + 1)  # -new-7 +during
    assert store.search(NEW[10], 1)[0][0].id == "new-10"
    assert store.search(extra, 1)[0][0].id == "during"
    with pytest.raises(NotFound):
        store.get("new-7")
    with pytest.raises(NotFound):
        store.get("old-3")
    assert stored_versions(store) == [version_name(1), version_name(2)]


def test_rollback_is_one_step_back_not_a_toggle(store, tmp_path, open_store, version_name):
    assert store.start_rebuild(((item(i, "new"), NEW[i]) for i in range(50)), total=50).wait(30).state == "succeeded"
    assert store.rollback() == version_name(1)
    assert store.search(OLD[3], 1)[0][0].id == "old-3" and store.stats().previous_version is None
    with pytest.raises(NotFound):  # a second rollback does not bring the rebuilt version back
        store.rollback()
    store.close()
    with open_store(tmp_path, DIM, "bundle-1") as again:  # the rollback is durable
        assert again.stats().version == version_name(1) and again.get("old-1").id == "old-1"
        assert again.stats().previous_version is None
        with pytest.raises(NotFound):
            again.rollback()
        assert again.start_rebuild([(item(0, "third"), NEW[0])], total=1).wait(30).state == "succeeded"
        assert (again.stats().version, again.stats().previous_version) == (version_name(3), version_name(1))
        assert stored_versions(again) == [version_name(1), version_name(3)]  # v2, rolled back from, is gone


def test_no_previous_version(store):
    with pytest.raises(NotFound):
        store.rollback()


@pytest.mark.parametrize("case", ["short source", "other bundle", "source raises", "recall"])
def test_failed_validation_leaves_old_version_live(store, case, version_name):
    pairs = [(item(i, "new"), NEW[i]) for i in range(40)]
    if case == "short source":
        job = store.start_rebuild(pairs, total=45)
    elif case == "other bundle":
        job = store.start_rebuild(pairs, total=40, bundle_id="bundle-2")
    elif case == "source raises":

        def broken():
            yield pairs[0]
            raise OSError("manifest unreadable")

        job = store.start_rebuild(broken, total=40)
    else:
        job = store.start_rebuild(pairs, total=40, min_recall=1.01)  # unreachable: validation must refuse
    p = job.wait(30)
    assert p.state == "failed" and p.error
    assert {
        "short source": "expected 45",
        "other bundle": "bundle-2",
        "source raises": "manifest unreadable",
        "recall": "recall",
    }[case] in p.error
    s = store.stats()
    assert (s.version, s.previous_version, s.count) == (version_name(1), None, 60)
    assert store.search(OLD[0], 1)[0][0].id == "old-0"
    assert stored_versions(store) == [version_name(1)]
    store.add(ItemRecord(id="after"), NEW[0])  # writes work again, and are not logged for a dead job
    assert store._rebuild_log is None


def test_cancel(store, version_name):
    src = Gate(NEW, pause_at=30)
    job = store.start_rebuild(src, total=200)
    assert src.paused.wait(10)
    job.cancel()
    src.release()
    p = job.wait(30)
    assert p.state == "cancelled" and store.stats().version == version_name(1)
    assert stored_versions(store) == [version_name(1)]
    assert store.start_rebuild([(item(0, "new"), NEW[0])], total=1).wait(30).state == "succeeded"


@pytest.mark.parametrize("dedupe", [False, True])
def test_duplicates_in_source_are_skipped_and_counted(store, dedupe):
    """A repeated id is always skipped; the same sound under a new id only with dedupe (the rule of adds too)."""
    pairs = [(item(i, "new"), NEW[i]) for i in range(10)]
    pairs += [
        (item(3, "new"), NEW[3]),
        (ItemRecord(id="same-audio", content_hash=pairs[4][0].content_hash), NEW[4]),
        (ItemRecord(id="bad-vector"), np.zeros(DIM)),
    ]
    p = store.start_rebuild(pairs, total=len(pairs), dedupe=dedupe).wait(30)
    skipped = 3 if dedupe else 2
    assert p.state == "succeeded" and (p.done, p.added, p.skipped) == (13, 13 - skipped, skipped)
    kept = {it.id for it in store.page("", 100)[0]}
    assert len(p.skipped_reasons) == skipped and ("same-audio" in kept) != dedupe


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_rebuild_is_tuned_and_validated(tmp_path, open_store, kind):
    vecs = unit(3000, DIM, seed=4)
    with open_store(tmp_path, DIM, "b", config=AnnConfig(kind=kind, ivf_min_items=1000, nlist=64)) as store:
        p = store.start_rebuild(((item(i), vecs[i]) for i in range(3000)), total=3000).wait(120)
        assert p.state == "succeeded" and p.recall >= 0.95
        s = store.stats()
        assert s.index_type == kind and s.count == 3000
        key = {"ivf": "nprobe", "hnsw": "ef" if store.engine == "milvus" else "efSearch"}[kind]
        assert 1 <= s.params[key] <= (64 if kind == "ivf" else 1024)  # tuned: the smallest that reaches the target
        q = vecs[:50]
        assert [h[0].id for h in store.search(q, 1)] == [item(i).id for i in range(50)]
        # The tuned parameters reach the target on the index that serves, on queries tuning never saw. (Tuned while
        # milvus-lite still searched unindexed segments by brute force, ef came out far too small.)
        queries = exact.perturbed(
            vecs[np.random.default_rng(9).choice(3000, 200, replace=False)], 0.3, np.random.default_rng(9)
        )
        truth = exact.exact_topk([(np.arange(3000), vecs)], queries, exact.RECALL_K)
        hits = store.search(queries, exact.RECALL_K)
        served = (
            np.array([[h.score for h in row] for row in hits], np.float32),
            np.array([[int(h.id.split("-")[-1]) for h in row] for row in hits]),
        )
        assert exact.recall(served, truth) >= 0.95


def test_rebuild_for_a_new_bundle(store, tmp_path, open_store):
    store.close()
    with open_store(tmp_path, DIM, "bundle-2") as upgraded:  # the gateway now serves another bundle
        with pytest.raises(Conflict):
            upgraded.add(ItemRecord(id="x"), NEW[0])  # would mix two embedding spaces in one index
        p = upgraded.start_rebuild(((item(i, "new"), NEW[i]) for i in range(20)), total=20).wait(30)
        assert p.state == "succeeded" and not upgraded.stats().bundle_mismatch
        upgraded.add(ItemRecord(id="x"), NEW[0])


def test_leftover_build_directory_is_removed_on_open(tmp_path):
    faiss_open(tmp_path, DIM, "bundle-1").close()
    (tmp_path / "versions" / "v0007").mkdir()  # a rebuild killed mid-way
    (tmp_path / "CURRENT.tmp").write_text("torn")
    with faiss_open(tmp_path, DIM, "bundle-1") as again:
        again.add_many((item(i, "old"), OLD[i]) for i in range(60))
        assert again.stats().count == 60
    assert [p.name for p in (tmp_path / "versions").iterdir()] == ["v0001"] and not (tmp_path / "CURRENT.tmp").exists()


def test_leftover_milvus_collection_is_dropped_by_the_next_rebuild(tmp_path):
    from tests.server.index.conftest import VERSION_NAMES, milvus_open

    version_name = VERSION_NAMES["milvus"].format
    with milvus_open(tmp_path, DIM, "b") as store:
        store.index._create(version_name(7), store.index.meta, store.config)  # a rebuild killed before its swap
        assert stored_versions(store) == [version_name(1), version_name(7)]
        assert store.start_rebuild([(item(0), NEW[0])], total=1).wait(30).state == "succeeded"
        # v0007 is dropped, and its number is not given again: a version name always means one content
        assert stored_versions(store) == [version_name(1), version_name(8)]


def test_close_cancels_a_running_rebuild(tmp_path, open_store):
    store = open_store(tmp_path, DIM, "b")
    src = Gate(NEW, pause_at=5)
    job = store.start_rebuild(src, total=200)
    assert src.paused.wait(10)
    threading.Timer(0.2, src.release).start()
    store.close()
    assert job.progress().state == "cancelled"


def test_searches_across_swaps_never_fail(store):
    """Readers search without pause while three rebuilds fill new versions and move the live one under them (on
    Milvus: the alias moves, and the version before is released, then dropped): no search fails, and each answer
    comes whole from one version."""
    stop, errors, seen = threading.Event(), [], Counter()

    def reader(seed: int) -> None:
        queries = unit(64, DIM, seed=seed)
        n = 0
        while not stop.is_set():
            try:
                hits = store.search(queries[n % 64], 5)[0]
            except Exception as e:
                errors.append(e)
                return
            versions = {h.id.split("-")[0] for h in hits}
            if len(versions) != 1 or len(hits) != 5:
                errors.append(AssertionError(f"a search answered {[h.id for h in hits]}"))
                return
            seen[versions.pop()] += 1
            n += 1

    readers = [threading.Thread(target=reader, args=(seed,)) for seed in (11, 12, 13)]
    for t in readers:
        t.start()
    try:
        for n, generation in enumerate(("gen1", "gen2", "gen3")):
            vecs = unit(100, DIM, seed=20 + n)
            p = store.start_rebuild(((item(i, generation), vecs[i]) for i in range(100)), total=100).wait(60)
            assert p.state == "succeeded", p.error
            before = seen[generation]
            deadline = time.monotonic() + 10
            while seen[generation] < before + 3 and time.monotonic() < deadline and not errors:
                time.sleep(0.01)  # each version serves a few searches before the next swap
    finally:
        stop.set()
        for t in readers:
            t.join(30)
    assert not errors, errors[0]
    assert all(seen[g] > 0 for g in ("old", "gen1", "gen2", "gen3")), seen
