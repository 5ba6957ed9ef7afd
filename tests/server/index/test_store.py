"""IndexStore on each engine: exact search vs numpy, writes, duplicates, filters, persistence. FAISS only:
snapshot + replay, tombstones, compaction, the directory lock (see conftest.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from blat_gateway.errors import BackendDown, BadRequest, Conflict, NotFound
from blat_gateway.index import AnnConfig, IndexStore, ItemRecord, SearchFilter
from tests.server.index.conftest import faiss_open
from tests.server.index.helpers import brute, item, mask, noisy, unit

DIM = 32


@pytest.fixture
def filled(tmp_path, open_store):
    """A flat store of 300 items on the engine under test; yields (store, items, vectors)."""
    items, vecs = [item(i) for i in range(300)], unit(300, DIM)
    store = open_store(tmp_path, DIM, "bundle-a")
    store.add_many(zip(items, vecs))
    yield store, items, vecs
    store.close()


def ids_scores(hits):
    return [h.id for h in hits], np.array([h.score for h in hits])


def assert_matches_brute(store, items, vecs, queries, k, flt=None):
    truth = brute(vecs, [it.id for it in items], queries, k, None if flt is None else mask(items, flt))
    for hits, want in zip(store.search(queries, k, flt), truth):
        got_ids, got_scores = ids_scores(hits)
        assert got_ids == [i for i, _ in want]
        np.testing.assert_allclose(got_scores, [s for _, s in want], atol=1e-5)


def test_add_get_and_exact_search(filled):
    store, items, vecs = filled
    assert store.get("clip-7") == ItemRecord(**{**vars(items[7]), "added_at": store.get("clip-7").added_at})
    assert store.get("clip-7").added_at > 1.6e9
    np.testing.assert_allclose(store.embedding("clip-7"), vecs[7], atol=1e-6)
    assert_matches_brute(store, items, vecs, noisy(vecs[:20]), k=10)
    single = store.search(vecs[3], 1)  # (D,) query -> one list
    assert len(single) == 1 and single[0][0].id == "clip-3" and single[0][0].score == pytest.approx(1.0, abs=1e-5)
    assert len(store.search(vecs[0], 1000)[0]) == 300  # k above the count returns everything
    with pytest.raises(NotFound):
        store.get("missing")
    with pytest.raises(NotFound):
        store.embedding("missing")


def test_inputs_are_checked(filled):
    store, _, vecs = filled
    for k in (0, 1001, 2.5):
        with pytest.raises(BadRequest):
            store.search(vecs[0], k)
    with pytest.raises(BadRequest):
        store.search(np.ones(DIM + 1), 5)
    with pytest.raises(BadRequest):
        store.add(ItemRecord(id="z"), np.zeros(DIM))
    with pytest.raises(BadRequest):
        store.add(ItemRecord(id="z"), np.ones(3))
    with pytest.raises(BadRequest):
        store.delete("bad id")


def test_embeddings_are_normalised(tmp_path, open_store):
    with open_store(tmp_path, 3, "b") as store:
        store.add(ItemRecord(id="a"), [0.0, 3.0, 4.0])
        np.testing.assert_allclose(store.embedding("a"), [0, 0.6, 0.8], atol=1e-6)
        assert store.search([0, 1, 1], 1)[0][0].score == pytest.approx((0.6 + 0.8) / np.sqrt(2), abs=1e-6)


def test_conflict_upsert_delete(filled):
    store, items, vecs = filled
    new = unit(1, DIM, seed=99)[0]
    with pytest.raises(Conflict):
        store.add(ItemRecord(id="clip-5"), new)
    stored = store.add(ItemRecord(id="clip-5", caption="replaced", content_hash="clip-hash-5"), new, upsert=True)
    assert store.get("clip-5").caption == "replaced" == stored.caption
    np.testing.assert_allclose(store.embedding("clip-5"), new, atol=1e-6)
    assert store.search(new, 1)[0][0].id == "clip-5"
    assert all(h.id != "clip-5" for h in store.search(vecs[5], 5)[0])  # the old vector is gone
    removed = store.delete("clip-9")
    assert removed.id == "clip-9" and store.stats().count == 299
    with pytest.raises(NotFound):
        store.delete("clip-9")
    with pytest.raises(NotFound):
        store.get("clip-9")
    assert all(h.id != "clip-9" for h in store.search(vecs[9], 20)[0])
    vecs = vecs.copy()
    vecs[5] = new
    keep = [i for i in range(300) if i != 9]
    items = [store.get(items[i].id) for i in keep]
    assert_matches_brute(store, items, vecs[keep], noisy(vecs[:30]), k=10)


def test_duplicate_content_hash_is_refused_only_with_dedupe(filled):
    store, _, _ = filled
    v = unit(1, DIM, seed=5)[0]
    with pytest.raises(Conflict) as e:
        store.add(ItemRecord(id="copy", content_hash="clip-hash-12"), v, dedupe=True)
    assert e.value.details["existing_id"] == "clip-12" and "clip-12" in e.value.message
    with pytest.raises(Conflict):  # upsert of another id does not bypass the check either
        store.add(ItemRecord(id="clip-13", content_hash="clip-hash-12"), v, upsert=True, dedupe=True)
    store.add(ItemRecord(id="clip-12", content_hash="clip-hash-12"), v, upsert=True, dedupe=True)  # same id: fine
    store.add(ItemRecord(id="copy", content_hash="clip-hash-12"), v)  # without dedupe: a second id, same sound
    assert store.get("copy").content_hash == store.get("clip-12").content_hash
    store.delete("clip-12")
    store.delete("copy")
    store.add(ItemRecord(id="copy-2", content_hash="clip-hash-12"), v, dedupe=True)  # the hash is free again
    store.add(ItemRecord(id="nohash-1"), v, dedupe=True)
    store.add(ItemRecord(id="nohash-2"), v, dedupe=True)  # "" is "unknown", never a duplicate


def test_add_many_is_all_or_nothing(filled):
    store, _, _ = filled
    batch = [
        (ItemRecord(id="n1", content_hash="new-1"), unit(1, DIM, 1)[0]),
        (ItemRecord(id="n2", content_hash="new-1"), unit(1, DIM, 2)[0]),
    ]  # duplicate inside the batch
    with pytest.raises(Conflict):
        store.add_many(batch, dedupe=True)
    with pytest.raises(NotFound):
        store.get("n1")
    assert store.stats().count == 300


FILTERS = {
    "common": (SearchFilter(tags_any=("dog",)), False),  # about half the items: the first candidates suffice
    "rare": (SearchFilter(tags_all=("dog", "rain", "speech", "music")), True),  # more candidates, or an exact scan
    "prefix+duration": (SearchFilter(source_prefix="s3://bucket/b/", min_duration_s=5, max_duration_s=20), True),
    "empty": (SearchFilter(tags_any=("none-such",)), True),
}


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filtered_search_is_exact(filled, name):
    store, items, vecs = filled
    assert_matches_brute(store, items, vecs, noisy(vecs[:15], seed=3), k=10, flt=FILTERS[name][0])


def test_filters_with_awkward_values(tmp_path, open_store):
    """Prefixes holding the characters a query language escapes (% _ \\ ") or ending in non-ASCII characters, tags
    with quotes, durations at the bounds and missing: every engine answers exactly what `SearchFilter.matches`
    says."""
    odd = [
        "/a/100%_x",
        "/a/100x",
        '/a/q"uote',
        "/a/back\\slash",
        "/a/b_c",
        "/a/bxc",
        "/a/",
        "/a/é/1",
        "/a/ê",
        "/a/\U0010ffffz",
    ]
    items = [
        ItemRecord(
            id=f"o{i}",
            source_uri=uri,
            duration_s=None if i % 3 == 0 else float(i),
            tags=('say "hi"', "t") if i % 2 else ("it's",),
        )
        for i, uri in enumerate(odd * 3)
    ]
    vecs = unit(len(items), DIM, seed=8)
    with open_store(tmp_path, DIM, "b") as store:
        store.add_many(zip(items, vecs))
        for flt in (
            SearchFilter(source_prefix="/a/100%"),
            SearchFilter(source_prefix="/a/b_c"),
            SearchFilter(source_prefix='/a/q"'),
            SearchFilter(source_prefix="/a/back\\"),
            SearchFilter(source_prefix="/a/é"),  # a range up to "/a/ê" on Milvus: not that one
            SearchFilter(source_prefix="/a/\U0010ffff"),  # the last code point: no string above the range
            SearchFilter(tags_any=('say "hi"',)),
            SearchFilter(tags_all=("it's",), min_duration_s=-1),
            SearchFilter(max_duration_s=4.0),
            SearchFilter(min_duration_s=4.0, max_duration_s=4.0),
        ):
            assert_matches_brute(store, items, vecs, vecs[:3], k=len(items), flt=flt)


EXTRA = [
    {"licence": "CC0-1.0", "year": 2019, "date": "2019-05-01", "public": True},
    {"licence": "CC-BY-4.0", "year": 2023.5, "date": "2023-11-30", "public": False},
    {"licence": "GPL-2+", "year": "2021", "date": "2021-01-01", "public": 1},  # a year as text, 1 as a number
    {"licence": None, "nested": {"licence": "CC0-1.0"}, "public": "yes"},
    {},
]
EXTRA_FILTERS = [
    {"licence": "CC0-1.0"},
    {"licence": {"in": ["CC-BY-4.0", "GPL-2+"]}},
    {"year": {"gte": 2020}},  # numbers only: "2021" is text
    {"year": {"gt": "2020"}},  # text only
    {"date": {"gte": "2020-01-01", "lt": "2023-12-01"}},
    {"public": True},  # not the number 1
    {"public": 1},  # not true
    {"public": {"in": [True, "yes"]}},
    {"licence": "CC0-1.0", "year": {"lte": 2019}},
    {"licence": {"eq": "CC0-1.0", "in": ["GPL-2+"]}},  # both must hold: nothing
    {"missing": "x"},
]


@pytest.mark.parametrize("conditions", EXTRA_FILTERS, ids=range(len(EXTRA_FILTERS)))
def test_extra_filters_on_every_engine(tmp_path, open_store, conditions):
    """Conditions on `extra` keys (equality, `in`, ranges on numbers or on ISO dates): every engine returns what
    `SearchFilter.matches` says, in searches and in listing; kinds never mix (true is not 1, "2021" not 2021)."""
    items = [
        ItemRecord(id=f"m{i:02d}", tags=("dog",) if i % 2 else ("rain",), extra=EXTRA[i % len(EXTRA)])
        for i in range(30)
    ]
    vecs = unit(len(items), DIM, seed=11)
    with open_store(tmp_path, DIM, "b") as store:
        store.add_many(zip(items, vecs))
        for flt in (SearchFilter(extra=conditions), SearchFilter(tags_any=("dog",), extra=conditions)):
            want = [it.id for it in items if flt.matches(it)]
            assert_matches_brute(store, items, vecs, vecs[:3], k=len(items), flt=flt)
            assert [it.id for it in store.page("", 100, flt)[0]] == want
    assert any(SearchFilter(extra=c).matches(it) for c in EXTRA_FILTERS for it in items)  # not all empty


@pytest.mark.parametrize("rounds", [1, 3], ids=["scan-early", "fetch-more"])
@pytest.mark.parametrize("name", sorted(FILTERS))
def test_faiss_filtered_search_paths(tmp_path, name, rounds, monkeypatch):
    """FAISS finds enough matches two ways (over-fetching rounds; the exact scan of matching rows): both exact."""
    from blat_gateway.index import version

    flt, rare = FILTERS[name]
    items, vecs = [item(i) for i in range(300)], unit(300, DIM)
    store = faiss_open(tmp_path, DIM, "bundle-a")
    store.add_many(zip(items, vecs))
    scans = []
    real = version.Version._exact
    monkeypatch.setattr(version.Version, "_exact", lambda self, x, k, f: scans.append(len(x)) or real(self, x, k, f))
    monkeypatch.setattr(version, "FETCH_ROUNDS", rounds)
    assert_matches_brute(store, items, vecs, noisy(vecs[:15], seed=3), k=10, flt=flt)
    assert bool(scans) == (rare and rounds == 1)  # with 3 rounds the 300 vectors are all seen before a scan
    store.close()


def test_filter_from_a_json_dict(filled):
    store, items, vecs = filled
    hits = store.search(vecs[0], 5, {"tags_any": ["rain"], "max_duration_s": 20})[0]
    assert hits and all("rain" in h.item.tags and h.item.duration_s <= 20 for h in hits)
    with pytest.raises(BadRequest):
        store.search(vecs[0], 5, {"tag": "rain"})


def test_flat_tombstones_are_purged_in_batches(tmp_path):
    vecs = unit(1000, DIM, seed=12)
    with IndexStore(tmp_path, DIM, "b") as store:
        store.add_many((item(i), vecs[i]) for i in range(1000))
        for i in range(99):
            store.delete(item(i).id)
        s = store.stats()
        assert (s.tombstones, s.index_total, s.count) == (99, 1000, 901)  # deletes are O(1): tombstones only
        assert all(h[0].id == item(i).id for i, h in zip(range(99, 150), store.search(vecs[99:150], 1)))
        for i in range(99, 256):
            store.delete(item(i).id)
        s = store.stats()
        assert (s.tombstones, s.index_total, s.count) == (0, 744, 744)  # one batch removal at 256


def test_search_by_id(filled):
    store, items, vecs = filled
    hits = store.search_by_id("clip-4", 5)
    truth = brute(vecs, [it.id for it in items], vecs[4:5], 6)[0][1:]
    assert [h.id for h in hits] == [i for i, _ in truth]
    flt = SearchFilter(tags_any=("rain",))
    assert all("rain" in h.item.tags for h in store.search_by_id("clip-4", 5, flt))
    with pytest.raises(NotFound):
        store.search_by_id("missing", 5)


def test_persistence_across_reopen(filled, tmp_path, open_store, version_name):
    store, items, vecs = filled
    store.delete("clip-0")
    queries = noisy(vecs[:10], seed=4)
    before = [[(h.id, h.score) for h in hits] for hits in store.search(queries, 8)]
    store.close()
    with pytest.raises(BackendDown):
        store.search(queries, 8)
    with open_store(tmp_path, DIM, "bundle-a") as again:
        after = [[(h.id, h.score) for h in hits] for hits in again.search(queries, 8)]
        assert after == before
        s = again.stats()
        assert (s.count, s.index_total, s.writes_since_snapshot, s.version) == (299, 299, 0, version_name(1))
        assert again.get("clip-1") == store_get_like(items[1], again)


def store_get_like(it, store):
    return ItemRecord(**{**vars(it), "added_at": store.get(it.id).added_at})


def test_one_process_at_a_time(tmp_path):
    with faiss_open(tmp_path / "idx", DIM, "bundle-a"), pytest.raises(Conflict):
        faiss_open(tmp_path / "idx", DIM, "bundle-a")


def crash(store: IndexStore) -> None:
    """Drop a store the way kill -9 would: no snapshot, no checkpoint; only the directory lock is released."""
    store._closed = True
    store.index.live.db.conn.close()
    store.index._root_lock.release()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_snapshot_then_replay(tmp_path, kind):
    items, vecs = [item(i) for i in range(400)], unit(400, DIM, seed=7)
    store = IndexStore(tmp_path, DIM, "b", kind)
    store.add_many(zip(items[:300], vecs[:300]))
    store.snapshot()
    assert store.stats().writes_since_snapshot == 0
    store.add_many(zip(items[300:], vecs[300:]))  # after the snapshot: must be replayed from SQLite
    for i in range(0, 300, 10):
        store.delete(items[i].id)  # vectors inside the snapshot whose rows are gone
    crash(store)
    with IndexStore(tmp_path, DIM, "b", kind) as again:
        s = again.stats()
        keep = [i for i in range(400) if i % 10 or i >= 300]
        assert s.count == len(keep) == s.index_total - s.tombstones
        assert s.tombstones == (30 if kind == "hnsw" else 0)
        got = [[h.id for h in hits] for hits in again.search(vecs[keep[::7]], 1)]
        assert got == [[items[i].id] for i in keep[::7]]
        found = {h.id for hits in again.search(vecs[:300:10], 3) for h in hits}
        assert not found & {items[i].id for i in range(0, 300, 10)}


def test_damaged_snapshot_is_rebuilt_from_rows(tmp_path):
    items, vecs = [item(i) for i in range(300)], unit(300, DIM)
    store = faiss_open(tmp_path / "idx", DIM, "bundle-a")
    store.add_many(zip(items, vecs))
    store.snapshot()
    store.close()
    (tmp_path / "idx" / "versions" / "v0001" / "index.faiss").write_bytes(b"not a faiss index")
    with IndexStore(tmp_path / "idx", DIM, "bundle-a") as again:
        assert_matches_brute(again, items, vecs, noisy(vecs[:10]), k=5)


def test_hnsw_tombstones_and_compaction(tmp_path):
    items, vecs = [item(i) for i in range(500)], unit(500, DIM, seed=8)
    with IndexStore(tmp_path, DIM, "b", "hnsw") as store:
        store.add_many(zip(items, vecs))
        dead = [items[i].id for i in range(0, 500, 2)]
        for i in dead:
            store.delete(i)
        s = store.stats()
        assert (s.tombstones, s.count, s.index_total, s.needs_compaction) == (250, 250, 500, True)
        hits = store.search(vecs[:50], 10)
        assert all(len(h) == 10 and not {x.id for x in h} & set(dead) for h in hits)
        report = store.compact()
        s = store.stats()
        assert report["tombstones_removed"] == 250
        assert (s.tombstones, s.index_total, s.needs_compaction) == (0, 250, False)
        assert s.params["efSearch"] >= 10  # tuned; FAISS searches with max(efSearch, k) anyway
        assert [h[0].id for h in store.search(vecs[1::2][:40], 1)] == [items[i].id for i in range(1, 80, 2)]


def test_compaction_trains_ivf_once_large_enough(tmp_path):
    cfg = AnnConfig(kind="ivf", ivf_min_items=1000)
    vecs = unit(1500, DIM, seed=9)
    with IndexStore(tmp_path, DIM, "b", config=cfg) as store:
        store.add_many((item(i), vecs[i]) for i in range(1500))
        assert store.stats().index_type == "flat" and store.stats().needs_compaction
        report = store.compact()
        assert report["index_type"] == "ivf" and report["recall"] >= 0.9
        store.add(item(5000), unit(1, DIM, 10)[0])  # adds go into the trained IVF
        assert store.stats().index_type == "ivf" and store.stats().count == 1501
    with IndexStore(tmp_path, DIM, "b", config=cfg) as again:  # the snapshot keeps IVF and its tuned nprobe
        s = again.stats()
        assert s.index_type == "ivf" and s.params == report["params"] and s.count == 1501
    (tmp_path / "versions" / "v0001" / "index.faiss").unlink()  # lost: retrained from rows, nprobe from SQLite
    with IndexStore(tmp_path, DIM, "b", config=cfg) as again:
        s = again.stats()
        assert s.index_type == "ivf" and s.params == report["params"] and s.count == 1501


def test_bundle_mismatch_refuses_adds_but_searches(filled, tmp_path, open_store):
    store, _, vecs = filled
    store.close()
    with open_store(tmp_path, DIM, "bundle-b") as other:
        s = other.stats()
        assert s.bundle_id == "bundle-a" and s.serving_bundle_id == "bundle-b" and s.bundle_mismatch
        with pytest.raises(Conflict):
            other.add(ItemRecord(id="x"), vecs[0])
        assert other.search(vecs[0], 1)[0][0].id == "clip-0"


def test_concurrent_writers_and_readers(tmp_path, open_store):
    vecs = unit(400, DIM, seed=11)
    errors = []
    with open_store(tmp_path, DIM, "b", "hnsw") as store:

        def writer(part):
            try:
                for i in range(part, 400, 4):
                    store.add(item(i), vecs[i])
                    if i % 5 == 0:
                        store.delete(item(i).id)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        def reader():
            try:
                for j in range(100):
                    store.search(vecs[j], 5)
                    store.stats()
            except Exception as e:  # pragma: no cover
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(p,)) for p in range(4)] + [threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert store.stats().count == 400 - 80


def test_writes_during_compaction_are_kept(tmp_path, monkeypatch):
    from blat_gateway.index import faiss_index as store_module

    vecs = unit(3000, DIM, seed=13)
    items = [item(i) for i in range(3000)]
    built, proceed = threading.Event(), threading.Event()

    def build_then_wait(db, cfg):  # the new index is read and built; the writes below come after it
        out = real_build(db, cfg)
        built.set()
        assert proceed.wait(10)
        return out

    real_build = store_module.build_from_db
    monkeypatch.setattr(store_module, "build_from_db", build_then_wait)
    with IndexStore(tmp_path, DIM, "b") as store:
        store.add_many(zip(items[:2000], vecs[:2000]))
        for i in range(0, 300, 3):
            store.delete(items[i].id)
        worker = threading.Thread(target=store.compact)
        worker.start()  # builds from its own read snapshot, outside the store lock
        assert built.wait(10)
        for i in range(2000, 3000):
            store.add(items[i], vecs[i])
            if i % 10 == 0:
                store.delete(items[i - 1000].id)
        proceed.set()
        worker.join()
        gone = set(range(0, 300, 3)) | {i - 1000 for i in range(2000, 3000, 10)}
        keep = [i for i in range(3000) if i not in gone]
        s = store.stats()
        assert s.count == len(keep) == s.index_total - s.tombstones
        assert_matches_brute(store, [items[i] for i in keep], vecs[keep], noisy(vecs[::150], seed=6), k=10)


def test_gpu_flag_without_gpus_searches_on_cpu(tmp_path):
    vecs = unit(50, DIM, seed=14)
    with IndexStore(tmp_path, DIM, "b", config=AnnConfig(use_gpu=True)) as store:  # faiss-cpu: no GPUs
        store.add_many((item(i), vecs[i]) for i in range(50))
        assert store.stats().gpu is False and store.search(vecs[7], 1)[0][0].id == "clip-7"


def test_paging_lists_every_item_once_in_id_order_with_filters_and_writes_between_pages(filled):
    store, items, vecs = filled
    everything, after = [], ""
    while True:
        page, version = store.page(after, 37)
        assert version == store.version and len(page) <= 37
        everything += page
        if len(page) < 37:
            break
        after = page[-1].id
    assert [it.id for it in everything] == sorted(it.id for it in items)  # all 300, once, in id order
    flt = SearchFilter(tags_any=("dog",), source_prefix="s3://bucket/a/")
    want = sorted(it.id for it in items if flt.matches(it))
    assert 0 < len(want) < 300 and [it.id for it in store.page("", 1000, flt)[0]] == want
    # Keyset paging: an item added before the cursor, or deleted, never shifts a later page.
    first, _ = store.page("", 10)
    store.add(item(10_000, prefix="a"), unit(1, DIM, seed=9)[0])  # sorts before every "clip-..."
    store.delete(first[-1].id)
    second, _ = store.page(first[-1].id, 10)
    assert [it.id for it in second] == sorted(it.id for it in items)[10:20]
    with pytest.raises(BadRequest):
        store.page("", 0)
