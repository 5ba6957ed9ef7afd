"""The tagging evaluation's arithmetic: hit rates on a hand-made score matrix, and chance levels against a
brute-force average over every ranking."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.bench import load_bench

eval_tagging = load_bench("eval_tagging")


def test_hit_rates_on_known_scores():
    scores = np.array(
        [
            [0.9, 0.1, 0.5, 0.2],  # best: 0, top-2: {0, 2}
            [0.1, 0.2, 0.3, 0.8],  # best: 3, top-2: {3, 2}
            [0.4, 0.3, 0.2, 0.1],
        ]
    )  # best: 0, top-2: {0, 1}
    targets = [{2}, {3}, {1, 2}]
    assert eval_tagging.hit_rate(scores, targets, 1) == pytest.approx(1 / 3)
    assert eval_tagging.hit_rate(scores, targets, 2) == pytest.approx(1.0)


@pytest.mark.parametrize("k,tags", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_chance_equals_the_mean_over_all_rankings(k, tags):
    n = 5
    target = set(range(tags))
    brute = np.mean([bool(set(order[:k]) & target) for order in itertools.permutations(range(n))])
    assert eval_tagging.chance_hit_rate(n, [target], k) == pytest.approx(brute)
