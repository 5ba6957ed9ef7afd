"""Rebuild batching: clips embedded together have similar lengths (a batch is padded to its longest clip), every
clip is embedded exactly once, and a window bounds how much decoded audio is held at a time."""

from __future__ import annotations

import random

from blat_gateway.inference import length_batches


def padded(batches) -> int:
    return sum(len(b) * max(b) for b in batches)


def test_every_item_once_in_batches_of_similar_length():
    rng = random.Random(0)
    lengths = [rng.choice([1, 2, 3, 30]) * 32_000 for _ in range(500)]
    batches = list(length_batches(lengths, lambda n: n, batch=16, window_items=100, window_length=10**12))
    assert sorted(x for b in batches for x in b) == sorted(lengths)
    assert all(1 <= len(b) <= 16 for b in batches)
    in_order = [lengths[i : i + 16] for i in range(0, len(lengths), 16)]
    assert padded(batches) < 0.6 * padded(in_order)


def test_a_window_closes_at_its_length_budget_and_keeps_order_for_ties():
    items = [("a", 5), ("b", 1), ("c", 5), ("d", 1), ("e", 2)]
    batches = list(length_batches(items, lambda it: it[1], batch=2, window_items=100, window_length=7))
    # window 1: a b c (5 + 1 + 5 >= 7) sorted -> b a c; window 2: d e
    assert [[name for name, _ in b] for b in batches] == [["b", "a"], ["c"], ["d", "e"]]


def test_nothing_in_nothing_out():
    assert list(length_batches([], len, batch=4)) == []
