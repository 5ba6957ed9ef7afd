"""server/blat_gateway/tagging.py: how labels are scored, mixed and named, on small hand-made label sets."""

from __future__ import annotations

import numpy as np
import pytest

from blat_gateway.tagging import MIXED, TAGGER, ZERO_SHOT, LabelSet, confident_tags, head_index


def label_set(weight: float) -> LabelSet:
    # three labels: the tagger knows "Dog" (its output 1) and "Cat" (output 0); "a squeaky hinge" is free text
    names = ("Dog", "Cat", "a squeaky hinge")
    emb = np.eye(3, 4, dtype=np.float32)
    return LabelSet(
        names, emb, np.full(3, 10, np.float32), np.zeros(3, np.float32), head_index(names, ("cat", "dog")), weight
    )


def test_head_index_is_case_insensitive_and_marks_unknown_labels():
    assert head_index(("Dog", "CAT", "Owl"), ("cat", "dog")).tolist() == [1, 0, -1]
    assert head_index(("Dog",), None).tolist() == [-1]


@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 1.0])
def test_known_labels_mix_head_and_zero_shot_by_the_bundle_weight(weight):
    labels = label_set(weight)
    audio = np.array([[0.6, 0.8, 0.0, 0.0]], np.float32)  # cosines 0.6, 0.8, 0 with the three prompts
    head = np.array([[0.9, 0.05]], np.float32)  # Cat 0.9, Dog 0.05
    zero_shot = 1 / (1 + np.exp(-10 * np.array([0.6, 0.8, 0.0])))
    got = labels.scores(audio, head)[0]
    np.testing.assert_allclose(got[:2], (1 - weight) * np.array([0.05, 0.9]) + weight * zero_shot[:2], rtol=1e-5)
    np.testing.assert_allclose(got[2], zero_shot[2], rtol=1e-5)  # a label the head lacks is zero-shot whatever w
    assert labels.scorers == ((MIXED if weight else TAGGER),) * 2 + (ZERO_SHOT,)


def test_without_a_tagger_every_label_is_zero_shot():
    labels = label_set(0.5)
    audio = np.array([[0.6, 0.8, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(
        labels.scores(audio, None)[0], 1 / (1 + np.exp(-10 * np.array([0.6, 0.8, 0.0]))), rtol=1e-5
    )


def test_top_names_the_scorer_of_each_label():
    labels = label_set(0.5)
    top = labels.top(np.array([0.1, 0.7, 0.4]), 2)
    assert [(t.label, t.scorer) for t in top] == [("Cat", MIXED), ("a squeaky hinge", ZERO_SHOT)]


def test_confident_tags_keep_the_best_above_the_threshold():
    probs = np.array([0.3, 0.9, 0.1, 0.5])
    assert confident_tags(("a", "b", "c", "d"), probs, 0.2, 2) == {"b": 0.9, "d": 0.5}
    assert confident_tags(("a", "b", "c", "d"), probs, 0.95, 3) == {}
