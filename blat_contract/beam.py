"""Batched beam search over any next-token function (numpy), shared by torch and ONNX captioners.

A caption is up to `max_tokens` words followed by the end token; its log-probability is the
sum over those tokens, the end token included. With a beam at least as wide as the number of
prefixes (word sequences of 0..max_tokens words) the search is exhaustive, and beam_size=1 is
greedy decoding; `tests/contract/test_beam.py` checks exactly that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from blat_contract.vocab import END, MAX_CAPTION_TOKENS, PAD, START

# step(tokens (N, t) int64 starting with START, origin (N,) int64 batch index) -> (N, V) log-probs
StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DecodingOptions:
    beam_size: int = 3  # live hypotheses per clip; 1 is greedy decoding
    max_tokens: int = MAX_CAPTION_TOKENS  # words before the end token is forced
    n_best: int = 1  # finished hypotheses returned per clip (<= beam_size)
    length_penalty: float = 0.0  # GNMT alpha; 0 ranks by summed log-probability

    def __post_init__(self):
        if self.beam_size < 1 or self.max_tokens < 1:
            raise ValueError("beam_size and max_tokens must be >= 1")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError(f"n_best must be in [1, beam_size={self.beam_size}], got {self.n_best}")
        if self.length_penalty < 0:
            raise ValueError("length_penalty must be >= 0")


@dataclass(frozen=True, order=True)
class Hypothesis:
    score: float  # ranking score: log_prob, or log_prob / GNMT length factor
    log_prob: float = field(compare=False)  # summed log-probability incl. the end token
    tokens: tuple[int, ...] = field(compare=False)  # word ids, without start/end


def _rank_score(log_prob: float, n_words: int, alpha: float) -> float:
    if alpha == 0.0:
        return log_prob
    return log_prob / (((5.0 + n_words + 1) / 6.0) ** alpha)


def beam_search(step: StepFn, batch_size: int, options: DecodingOptions = DecodingOptions()) -> list[list[Hypothesis]]:
    """Decode `batch_size` items in lock-step; returns `options.n_best` hypotheses per item, best first."""
    K, alpha = options.beam_size, options.length_penalty
    seqs = np.full((batch_size, 1), START, dtype=np.int64)  # (N, t) live prefixes
    origin = np.arange(batch_size, dtype=np.int64)  # (N,) batch item of each live row
    scores = np.zeros(batch_size, dtype=np.float64)  # (N,) summed log-prob of each live row
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]

    for t in range(options.max_tokens + 1):
        if len(seqs) == 0:
            break
        logp = np.asarray(step(seqs, origin), dtype=np.float64)  # (N, V)
        logp = np.where(np.isfinite(logp), logp, -np.inf)
        logp[:, [PAD, START]] = -np.inf
        n_words = t  # words in each live prefix
        ended = scores + logp[:, END]  # (N,) each live row ending here
        logp[:, END] = -np.inf
        if t == options.max_tokens:
            logp[:] = -np.inf  # no more words: only the end token
        cand = scores[:, None] + logp  # (N, V) scores of one-word extensions

        keep_rows, keep_toks, keep_scores = [], [], []
        for b in np.unique(origin):
            rows = np.nonzero(origin == b)[0]
            flat = cand[rows].ravel()
            top = np.argsort(-flat, kind="stable")[:K]
            top = top[np.isfinite(flat[top])]
            # A row's ending is kept when it would enter the beam (fewer than K extensions beat it): so
            # beam_size=1 is greedy, and a beam as wide as the number of prefixes keeps every ending.
            kth = flat[top[K - 1]] if len(top) == K else -np.inf
            for r in rows[np.isfinite(ended[rows]) & (ended[rows] >= kth)]:
                finished[b].append(
                    Hypothesis(_rank_score(ended[r], n_words, alpha), ended[r], tuple(seqs[r, 1:].tolist()))
                )
            best_live = flat[top[0]] if len(top) else -np.inf
            done = sorted(finished[b], reverse=True)
            # Without a length penalty scores only fall, so no live row can overtake the n-th finished one.
            if alpha == 0.0 and len(done) >= options.n_best and best_live <= done[options.n_best - 1].score:
                continue
            V = cand.shape[1]
            keep_rows.extend(rows[top // V])
            keep_toks.extend(top % V)
            keep_scores.extend(flat[top])
        keep_rows = np.asarray(keep_rows, dtype=np.int64)
        seqs = np.concatenate([seqs[keep_rows], np.asarray(keep_toks, dtype=np.int64)[:, None]], axis=1)
        origin = origin[keep_rows]
        scores = np.asarray(keep_scores, dtype=np.float64)

    return [sorted(f, reverse=True)[: options.n_best] for f in finished]
