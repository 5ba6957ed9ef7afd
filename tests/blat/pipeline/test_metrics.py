"""blat.pipeline.metrics: caption metrics against coco-caption (pycocoevalcap) and hand-checked values; average
precision against sklearn; retrieval metrics and every chance formula against hand examples and simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from blat.pipeline import metrics
from blat_contract.vocab import words

REFS = {
    "a": ["A dog barks loudly in the distance.", "a dog is barking", "dogs bark while the wind blows"],
    "b": ["Rain falls on a metal roof", "heavy rain on a roof", "rain is falling steadily"],
    "c": ["a man speaks and a car passes by", "a man talks as a vehicle drives past", "speech and a passing car"],
    "d": ["birds chirp, then a door slams", "birds are chirping and a door closes", "a door slams while birds sing"],
    "e": ["an engine idles", "a motor runs at idle", "an idling engine rumbles"],
}
CANDIDATE_SETS = {
    "mixed": {
        "a": "a dog barks",
        "b": "rain falls on a roof",
        "c": "a man is speaking",
        "d": "birds chirp and a door slams shut",
        "e": "a car engine idles and rumbles quietly",
    },
    "one_word_and_long": {
        "a": "dog",
        "b": "rain falls on a metal roof while heavy rain is falling steadily on it",
        "c": "a man speaks and a car passes by",
        "d": "birds",
        "e": "an engine",
    },
    "nothing_right": {
        "a": "music plays",
        "b": "a baby cries",
        "c": "water drips",
        "d": "a phone rings",
        "e": "people clap",
    },
}


def coco(scorer, candidates, references, **kwargs):
    """Score with a pycocoevalcap scorer on the same tokenisation as ours (words joined by spaces)."""
    gts = {k: [" ".join(words(r)) for r in references[k]] for k in candidates}
    res = {k: [" ".join(words(candidates[k]))] for k in candidates}
    return scorer.compute_score(gts, res, **kwargs)


@pytest.mark.parametrize("name", sorted(CANDIDATE_SETS))
def test_caption_metrics_match_pycocoevalcap(name):
    """Reference: pycocoevalcap 1.2 (coco-caption's BLEU, ROUGE-L and CIDEr-D scorers, pure Python)."""
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    cands = CANDIDATE_SETS[name]
    np.testing.assert_allclose(
        metrics.bleu(cands, REFS), coco(Bleu(4), cands, REFS, verbose=0)[0], rtol=1e-12, atol=1e-15
    )
    ours_r, per_r = metrics.rouge_l(cands, REFS)
    theirs_r, their_per_r = coco(Rouge(), cands, REFS)
    assert ours_r == pytest.approx(theirs_r, abs=1e-12)
    np.testing.assert_allclose([per_r[k] for k in sorted(cands)], their_per_r, atol=1e-12)
    ours_c, per_c = metrics.cider_d(cands, REFS)
    theirs_c, their_per_c = coco(Cider(), cands, REFS)
    assert ours_c == pytest.approx(theirs_c, abs=1e-9)
    np.testing.assert_allclose([per_c[k] for k in sorted(cands)], their_per_c, atol=1e-9)


def test_bleu_by_hand():
    # "the cat sat" vs "the cat sat on the mat": 1-3-gram precisions are 1, no 4-gram to match (coco's 1e-15 /
    # 1e-9 guard gives 1e-6), brevity penalty exp(1 - 6/3).
    b = metrics.bleu({"x": "The cat sat."}, {"x": ["the cat sat on the mat"]})
    bp = math.exp(1 - 6 / 3)
    np.testing.assert_allclose(b[:3], [bp, bp, bp], rtol=1e-9)
    assert b[3] == pytest.approx(bp * (1e-15 / 1e-9) ** 0.25, rel=1e-6)
    # a perfect candidate scores 1 at every order
    np.testing.assert_allclose(
        metrics.bleu({"x": "a dog barks at a cat"}, {"x": ["a dog barks at a cat"]}), [1, 1, 1, 1], rtol=1e-9
    )
    # clipping: "the the the" against "the cat": 1 of 3 unigrams counts
    assert metrics.bleu({"x": "the the the"}, {"x": ["the cat"]})[0] == pytest.approx(1 / 3, rel=1e-9)


def test_rouge_l_by_hand():
    # LCS("a b c d", "a c e d") = 3 ("a c d"): P = R = 3/4, F = 3/4 whatever beta
    assert metrics.rouge_l({"x": "a b c d"}, {"x": ["a c e d"]})[0] == pytest.approx(0.75)
    # the best precision and the best recall are taken over references separately
    score, _ = metrics.rouge_l({"x": "a b"}, {"x": ["a b c d", "a"]})  # P = max(2/2, 1/2) = 1, R = max(2/4, 1/1) = 1
    assert score == pytest.approx(1.0)
    assert metrics.rouge_l({"x": ""}, {"x": ["a b"]})[0] == 0.0


def test_cider_d_is_ten_for_exact_distinct_captions():
    # every candidate equals its only reference (4 words, so every n = 1..4 has n-grams) and shares no n-gram
    # with other ids: idf = log N for all its n-grams, cosine 1 for each n, no length penalty -> 10
    refs = {"a": ["dog barks loudly outside"], "b": ["rain falls hard today"], "c": ["engine idles very quietly"]}
    score, per = metrics.cider_d({k: v[0] for k, v in refs.items()}, refs)
    assert score == pytest.approx(10.0)
    # an n-gram found in every id's references has idf 0 and adds nothing
    shared = {"a": ["the dog"], "b": ["the rain"]}
    assert metrics.cider_d({"a": "the", "b": "the"}, shared)[0] == 0.0


def test_caption_inputs_are_checked():
    with pytest.raises(ValueError, match="share ids"):
        metrics.caption_scores({"a": "x"}, {"b": ["x"]})
    with pytest.raises(ValueError, match="no reference"):
        metrics.caption_scores({"a": "x"}, {"a": []})


def test_shuffled_candidates_is_a_cyclic_shift():
    assert metrics.shuffled_candidates({"b": "B", "a": "A", "c": "C"}) == {"a": "B", "b": "C", "c": "A"}


# --- average precision ---------------------------------------------------------------------------------------------


def test_average_precision_by_hand():
    assert metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.average_precision([0.1, 0.2, 0.3], [0, 0, 1]) == 1.0
    # a tie between a positive and a negative is one step: precision 1/2 at recall 1
    assert metrics.average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert math.isnan(metrics.average_precision([0.5, 0.4], [0, 0]))


def test_average_precision_matches_sklearn_with_and_without_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(5, 60))
        y = rng.random(n) < rng.uniform(0.1, 0.6)
        y[0] = True
        scores = rng.random(n) if trial % 2 else rng.integers(0, 4, n).astype(float)  # odd trials: heavy ties
        assert metrics.average_precision(scores, y) == pytest.approx(
            sklearn_metrics.average_precision_score(y, scores), abs=1e-12
        )


def test_mean_average_precision_skips_labels_without_positives():
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.1, 0.3, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]], dtype=bool)
    value, per_label = metrics.mean_average_precision(scores, targets)
    assert np.isnan(per_label[2]) and value == pytest.approx(1.0)


def test_expected_random_ap_is_exact():
    for n, p in [(5, 2), (6, 1), (6, 6), (7, 3)]:
        aps = []
        for positions in itertools.combinations(range(n), p):  # every placement of the positives, equally likely
            y = np.zeros(n, dtype=bool)
            y[list(positions)] = True
            aps.append(metrics.average_precision(-np.arange(n, dtype=float), y))
        assert metrics.expected_random_ap(n, p) == pytest.approx(np.mean(aps), abs=1e-12)
    assert metrics.expected_random_ap(100_000, 1000) == pytest.approx(0.01, abs=1e-3)  # -> prevalence


# --- retrieval and classification ----------------------------------------------------------------------------------


def test_retrieval_metrics_by_hand():
    # 3 clips, captions 0,1 -> clip 0; 2 -> clip 1; 3,4 -> clip 2
    caption_audio = np.array([0, 0, 1, 2, 2])
    sim = np.array(
        [
            [0.9, 0.1, 0.5, 0.0, 0.6],  # clip 0: its captions rank 1st and 4th
            [0.8, 0.2, 0.4, 0.3, 0.1],  # clip 1: its caption ranks 2nd
            [0.1, 0.3, 0.2, 0.4, 0.7],  # clip 2: its captions rank 1st and 2nd
        ]
    )
    m = metrics.retrieval_metrics(sim, caption_audio)
    # t2a ranks of the true clip per caption: c0: clip0 .9 vs .8, .1 -> 1; c1: .1 vs .2, .3 -> 3; c2: .4 vs .5 -> 2;
    # c3: .4 vs .0, .3 -> 1; c4: .7 vs .6, .1 -> 1
    t2a = np.array([1, 3, 2, 1, 1])
    assert m["t2a_r1"] == pytest.approx(np.mean(t2a <= 1))
    assert m["t2a_r5"] == 1.0 and m["t2a_median_rank"] == 1 and m["t2a_mean_rank"] == pytest.approx(t2a.mean())
    assert m["t2a_map10"] == pytest.approx(np.mean(1 / t2a))
    a2t = np.array([1, 2, 1])
    assert m["a2t_r1"] == pytest.approx(2 / 3) and m["a2t_mean_rank"] == pytest.approx(a2t.mean())
    # a2t AP@10: clip 0 hits at ranks 1 and 4 -> (1 + 2/4) / 2; clip 1 at 2 -> 1/2; clip 2 at 1, 2 -> 1
    assert m["a2t_map10"] == pytest.approx(((1 + 2 / 4) / 2 + 0.5 + 1.0) / 3)
    assert m["t2a_geomean"] == pytest.approx(np.cbrt(m["t2a_r1"] * m["t2a_r5"] * m["t2a_r10"]))


def test_perfect_and_collapsed_retrieval():
    caption_audio = np.repeat(np.arange(20), 5)
    perfect = (caption_audio[None, :] == np.arange(20)[:, None]).astype(float)
    m = metrics.retrieval_metrics(perfect, caption_audio)
    assert m["t2a_r1"] == m["a2t_r1"] == m["t2a_map10"] == m["a2t_map10"] == 1.0
    # a collapsed model (every score equal) gets nothing at rank 1: ties count against it
    flat = metrics.retrieval_metrics(np.zeros((20, 100)), caption_audio)
    assert flat["t2a_r1"] == flat["a2t_r1"] == 0.0 and flat["t2a_mean_rank"] == 20


def test_random_retrieval_matches_the_chance_formulas():
    rng = np.random.default_rng(0)
    caption_audio = np.concatenate([np.repeat(np.arange(30), 5), np.arange(30, 40)])  # 5 captions, then 1 caption
    runs = [metrics.retrieval_metrics(rng.random((40, len(caption_audio))), caption_audio) for _ in range(300)]
    chance = metrics.retrieval_chance(caption_audio, 40)
    for key in (
        "t2a_r1",
        "t2a_r5",
        "t2a_r10",
        "t2a_map10",
        "a2t_r1",
        "a2t_r5",
        "a2t_r10",
        "a2t_map10",
        "t2a_mean_rank",
        "a2t_mean_rank",
    ):
        mean = np.mean([r[key] for r in runs])
        assert mean == pytest.approx(chance[key], rel=0.05, abs=0.004), key


def test_classification_accuracy_counts_ties_as_wrong():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.3, 0.3], [0.1, 0.5, 0.4]])
    got = metrics.classification_accuracy(scores, np.array([0, 1, 2, 2]), ks=(1, 2))
    assert got == {"accuracy": 0.5, "top2_accuracy": 0.75}
