"""Value types of the index store: id rules, record checks, filters (Python and SQL agree), query rows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from blat_gateway.errors import BadRequest
from blat_gateway.index import ItemRecord, SearchFilter
from blat_gateway.index.db import VersionDB, VersionMeta
from blat_gateway.index.records import as_unit_rows, check_id
from tests.server.index.helpers import item, unit


@pytest.mark.parametrize("good", ["a", "clip-1", "s3:/bucket/x.wav", "A.b_c:d/e-f", "x" * 200])
def test_good_ids(good):
    assert check_id(good) == good


@pytest.mark.parametrize("bad", ["", "x" * 201, "has space", "tab\t", "é", "a?b", "a#b", "new\nline", None, 12, b"x"])
def test_bad_ids(bad):
    with pytest.raises(BadRequest):
        check_id(bad)
    with pytest.raises(BadRequest):
        ItemRecord(id=bad)


def test_record_normalises_and_checks():
    r = ItemRecord(id="a", tags=["x", "y", "x"], duration_s=3)
    assert r.tags == ("x", "y") and r.duration_s == 3.0
    for bad in (
        {"duration_s": -1},
        {"duration_s": float("nan")},
        {"tags": "dog"},
        {"tags": [""]},
        {"tags": [1]},
        {"extra": {"x": object()}},
        {"extra": [1]},
        {"caption": None},
    ):
        with pytest.raises(BadRequest):
            ItemRecord(id="a", **bad)
    assert hash(r) == hash(ItemRecord(id="a", tags=("x", "y"), duration_s=3.0))  # extra is left out of the hash


def test_filter_checks():
    with pytest.raises(BadRequest):
        SearchFilter(min_duration_s=5, max_duration_s=1)
    with pytest.raises(BadRequest):
        SearchFilter(tags_any="dog")
    assert SearchFilter().empty and not SearchFilter(tags_all=("dog",)).empty
    assert not SearchFilter(extra={"licence": "CC0-1.0"}).empty
    for bad in (
        {"bad key": "x"},  # keys are plain names
        {"1st": "x"},
        {"k": {"like": "x"}},  # an unknown operator
        {"k": {}},
        {"k": {"gt": True}},  # bounds are numbers or strings
        {"k": {"in": []}},
        {"k": {"in": "abc"}},
        {"k": {"eq": {"nested": 1}}},
        {"k": None},  # null is not filterable
        {"k": float("nan")},
        ["k"],
    ):
        with pytest.raises(BadRequest):
            SearchFilter(extra=bad)


FILTERS = [
    SearchFilter(tags_any=("dog", "car")),
    SearchFilter(tags_all=("dog", "rain")),
    SearchFilter(tags_all=("dog",), tags_any=("music", "speech")),
    SearchFilter(source_prefix="s3://bucket/b/"),
    SearchFilter(source_prefix="s3://bucket/%"),  # '%' is literal, not a LIKE wildcard
    SearchFilter(min_duration_s=10, max_duration_s=12.5),
    SearchFilter(max_duration_s=0),
    SearchFilter(tags_any=("silence",), source_prefix="s3://bucket/a"),
    SearchFilter(tags_any=("nope",)),
    SearchFilter(extra={"licence": "CC0-1.0"}),
    SearchFilter(extra={"n": {"gte": 3, "lt": 7.5}}),
    SearchFilter(extra={"n": {"in": [1, 2, "5"]}}),
    SearchFilter(extra={"flag": True}),
    SearchFilter(extra={"flag": 1}),
    SearchFilter(extra={"day": {"gte": "2024-03-01"}}, tags_any=("dog",)),
]


@pytest.mark.parametrize("flt", FILTERS, ids=range(len(FILTERS)))
def test_filter_sql_equals_python(tmp_path, flt):
    db = VersionDB.create(tmp_path / "x.sqlite", VersionMeta(dim=4, bundle_id="b", kind="flat", created_at=0.0))
    kinds = [{"licence": "CC0-1.0", "n": 3, "flag": True}, {"n": 7.5, "flag": 1, "day": "2024-03-02"}, {"n": "5"}, {}]
    items = [replace(item(i), extra={**kinds[i % 4], "day": f"2024-0{i % 5 + 1}-01"}) for i in range(80)]
    items.append(ItemRecord(id="no-duration", tags=("dog",), extra={"n": 2, "flag": False}))
    vecs = unit(len(items), 4)
    with db.tx():
        fids = [db.put(it, v, upsert=False)[0] for it, v in zip(items, vecs)]
    want = sorted(f for f, it in zip(fids, items) if flt.matches(it))
    assert sorted(db.matching_fids(flt).tolist()) == want
    db.close()


def test_as_unit_rows():
    x = as_unit_rows([3.0, 4.0], 2)
    assert x.shape == (1, 2) and x.dtype == np.float32 and np.allclose(x, [[0.6, 0.8]])
    assert as_unit_rows(np.ones((5, 2)), 2).shape == (5, 2)
    for bad in ([1.0, 2.0, 3.0], [[0.0, 0.0]], [np.nan, 1.0], np.zeros((0, 2)), np.ones((1, 1, 2))):
        with pytest.raises(BadRequest):
            as_unit_rows(bad, 2)
