"""blat_contract.beam: batched beam search checked against an exhaustive search written here.

The next-token distributions come from a seeded generator keyed on (batch item, whole prefix), so every
prefix of every item gets its own, deterministic distribution and nothing about the search is special-cased.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from blat_contract.beam import DecodingOptions, Hypothesis, beam_search
from blat_contract.vocab import END, PAD, START, UNK

V = 7  # 4 specials + 3 words
EMITTABLE = [UNK, 4, 5, 6]  # tokens a caption may contain (PAD and START are never emitted)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def hashed_logp(item: int, prefix: tuple[int, ...], seed: int = 0, temperature: float = 1.5) -> np.ndarray:
    """A normalised (V,) log-distribution that depends on the seed, the batch item and the whole prefix."""
    rng = np.random.default_rng([seed, item, len(prefix), *prefix])
    return log_softmax(rng.normal(size=V) * temperature)


def make_step(seed: int = 0, item_offset: int = 0, calls: list | None = None):
    def step(seqs: np.ndarray, origin: np.ndarray) -> np.ndarray:
        assert seqs.ndim == 2 and seqs.dtype == np.int64 and (seqs[:, 0] == START).all()
        assert origin.shape == (seqs.shape[0],)
        if calls is not None:
            calls.append(seqs.shape)
        return np.stack([hashed_logp(int(o) + item_offset, tuple(s.tolist()), seed) for s, o in zip(seqs, origin)])

    return step


def exhaustive(
    item: int, max_tokens: int, seed: int = 0, alpha: float = 0.0
) -> list[tuple[float, float, tuple[int, ...]]]:
    """Every caption of 0..max_tokens emittable words + END: (rank score, log-prob, words), best first."""
    out = []
    for n in range(max_tokens + 1):
        for words in itertools.product(EMITTABLE, repeat=n):
            prefix, lp = (START,), 0.0
            for w in words:
                lp += hashed_logp(item, prefix, seed)[w]
                prefix += (w,)
            lp += hashed_logp(item, prefix, seed)[END]
            # GNMT length penalty ((5 + |Y|) / 6) ** alpha, |Y| counting the emitted END token
            score = lp / ((5.0 + n + 1) / 6.0) ** alpha
            out.append((score, lp, words))
    out.sort(key=lambda x: -x[0])
    return out


def greedy(item: int, max_tokens: int, seed: int = 0) -> tuple[tuple[int, ...], float]:
    """Textbook greedy decoding: take the most likely token (END included) until END or max_tokens words."""
    prefix, lp = (START,), 0.0
    while True:
        logp = hashed_logp(item, prefix, seed).copy()
        logp[[PAD, START]] = -np.inf
        tok = END if len(prefix) - 1 == max_tokens else int(np.argmax(logp))
        lp += logp[tok]
        if tok == END:
            return prefix[1:], lp
        prefix += (tok,)


@pytest.mark.parametrize("max_tokens", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_is_exhaustive(max_tokens, seed):
    # every word sequence of 0..max_tokens words (the empty one included) is a prefix
    n_prefixes = sum(len(EMITTABLE) ** n for n in range(max_tokens + 1))
    opts = DecodingOptions(beam_size=n_prefixes, max_tokens=max_tokens, n_best=min(10, n_prefixes))
    B = 3
    result = beam_search(make_step(seed), B, opts)
    assert len(result) == B
    for b in range(B):
        ref = exhaustive(b, max_tokens, seed)
        got = result[b]
        assert len(got) == opts.n_best
        assert got[0].tokens == ref[0][2]
        assert got[0].log_prob == pytest.approx(ref[0][1], abs=1e-12)
        assert [h.tokens for h in got] == [r[2] for r in ref[: opts.n_best]]
        np.testing.assert_allclose([h.log_prob for h in got], [r[1] for r in ref[: opts.n_best]], atol=1e-12)
        np.testing.assert_allclose([h.score for h in got], [h.log_prob for h in got])  # no length penalty


def test_items_get_different_answers():
    """Guard: the test distribution really depends on the batch item (else batching tests prove little)."""
    best = {exhaustive(b, 3)[0][2] for b in range(6)}
    assert len(best) > 1


@pytest.mark.parametrize("beam_size,n_best", [(1, 1), (2, 2), (3, 1), (3, 3), (8, 4)])
def test_batched_equals_each_item_alone(beam_size, n_best):
    opts = DecodingOptions(beam_size=beam_size, max_tokens=4, n_best=n_best)
    B = 5
    batched = beam_search(make_step(seed=7), B, opts)
    for b in range(B):
        alone = beam_search(make_step(seed=7, item_offset=b), 1, opts)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[b]]
        np.testing.assert_allclose([h.log_prob for h in alone], [h.log_prob for h in batched[b]], atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_beam_one_is_greedy(seed):
    opts = DecodingOptions(beam_size=1, max_tokens=5)
    result = beam_search(make_step(seed), 4, opts)
    for b in range(4):
        tokens, lp = greedy(b, 5, seed)
        assert result[b][0].tokens == tokens
        assert result[b][0].log_prob == pytest.approx(lp, abs=1e-12)


def test_beam_one_is_greedy_when_an_early_end_looks_better():
    """END is the runner-up at step 0 and would beat the greedy caption's total; greedy still continues."""
    dists = {
        (START,): {4: 0.50, END: 0.45},  # greedy takes word 4
        (START, 4): {END: 0.80, 5: 0.15},  # then END: total log(.5 * .8) < log(.45)
    }

    def step(seqs, origin):
        out = []
        for s in seqs:
            p = np.full(V, 1e-3)
            for tok, q in dists.get(tuple(s.tolist()), {END: 0.9}).items():
                p[tok] = q
            out.append(np.log(p / p.sum()))
        return np.stack(out)

    greedy_hyp = beam_search(step, 1, DecodingOptions(beam_size=1, max_tokens=3))[0][0]
    assert greedy_hyp.tokens == (4,)
    wide = beam_search(step, 1, DecodingOptions(beam_size=85, max_tokens=3))[0][0]
    assert wide.tokens == ()  # the exhaustive optimum is the empty caption


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(beam_size=0),
        dict(max_tokens=0),
        dict(n_best=0),
        dict(beam_size=2, n_best=3),
        dict(length_penalty=-0.1),
    ],
)
def test_options_validation(kwargs):
    with pytest.raises(ValueError):
        DecodingOptions(**kwargs)


@pytest.mark.parametrize("max_tokens", [1, 4])
def test_max_tokens_forces_end(max_tokens):
    """The step would rather not stop before max_tokens words (END at -30 there): captions run to exactly
    max_tokens words and then end, with the end token's log-prob in the score; nothing longer is tried."""
    calls = []

    def step(seqs, origin):
        calls.append(seqs.shape[1])
        out = np.stack([hashed_logp(int(o), tuple(s.tolist())) for s, o in zip(seqs, origin)])
        if seqs.shape[1] - 1 < max_tokens:
            out[:, END] = -30.0  # no longer normalised, which the search does not need
        return out

    result = beam_search(step, 2, DecodingOptions(beam_size=3, max_tokens=max_tokens, n_best=3))
    assert max(calls) == max_tokens + 1  # START + max_tokens words, never longer
    for b, hyps in enumerate(result):
        assert len(hyps) == 3
        for h in hyps:
            assert len(h.tokens) == max_tokens
            prefix, lp = (START,), 0.0
            for w in h.tokens:
                lp += hashed_logp(b, prefix)[w]
                prefix += (w,)
            lp += hashed_logp(b, prefix)[END]
            assert h.log_prob == pytest.approx(lp, abs=1e-12)  # the forced END is scored


def test_never_emits_pad_or_start_even_when_likely():
    def step(seqs, origin):
        p = np.full((len(seqs), V), 0.01)
        p[:, PAD], p[:, START] = 0.5, 0.4
        p[:, 5] = 0.05 if seqs.shape[1] == 1 else 0.0001
        return np.log(p / p.sum(1, keepdims=True))

    for hyps in beam_search(step, 2, DecodingOptions(beam_size=4, max_tokens=3, n_best=4)):
        for h in hyps:
            assert PAD not in h.tokens and START not in h.tokens and END not in h.tokens


def test_length_penalty_prefers_a_longer_caption():
    """'' has the higher log-prob, 'w' wins once the GNMT length penalty (alpha = 1) divides it."""
    W = 4
    probs = {
        (START,): {END: 0.40, W: 0.55},
        (START, W): {END: 0.65, W: 0.30},
    }

    def step(seqs, origin):
        out = []
        for s in seqs:
            p = np.zeros(V)
            for tok, q in probs.get(tuple(s.tolist()), {END: 0.9, W: 0.05}).items():
                p[tok] = q
            p[p == 0] = (1.0 - p.sum()) / (p == 0).sum()
            out.append(np.log(p))
        return np.stack(out)

    lp_empty = math.log(0.40)
    lp_w = math.log(0.55) + math.log(0.65)
    assert lp_empty > lp_w  # plain log-prob ranks '' first

    plain = beam_search(step, 1, DecodingOptions(beam_size=85, max_tokens=3, n_best=2))[0]
    assert plain[0].tokens == () and plain[0].log_prob == pytest.approx(lp_empty)
    assert plain[1].tokens == (W,) and plain[1].log_prob == pytest.approx(lp_w)

    alpha = 1.0
    pen = beam_search(step, 1, DecodingOptions(beam_size=85, max_tokens=3, n_best=2, length_penalty=alpha))[0]
    assert pen[0].tokens == (W,)
    assert pen[0].log_prob == pytest.approx(lp_w)  # log_prob stays the plain sum
    assert pen[0].score == pytest.approx(lp_w / ((5 + 2) / 6) ** alpha)  # one word + END
    assert pen[1].tokens == () and pen[1].score == pytest.approx(lp_empty / ((5 + 1) / 6) ** alpha)


@pytest.mark.parametrize("alpha", [0.6, 1.0, 2.0])
def test_wide_beam_with_length_penalty_is_exhaustive(alpha):
    opts = DecodingOptions(beam_size=85, max_tokens=3, n_best=5, length_penalty=alpha)  # 1 + 4 + 16 + 64 prefixes
    result = beam_search(make_step(seed=3), 2, opts)
    for b in range(2):
        ref = exhaustive(b, 3, seed=3, alpha=alpha)
        assert [h.tokens for h in result[b]] == [r[2] for r in ref[:5]]
        np.testing.assert_allclose([h.score for h in result[b]], [r[0] for r in ref[:5]], atol=1e-12)


def test_hypotheses_sort_by_score_only():
    a, b = Hypothesis(-1.0, -5.0, (4,)), Hypothesis(-2.0, -0.5, (5,))
    assert sorted([b, a], reverse=True) == [a, b]
