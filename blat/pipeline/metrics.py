"""Evaluation metrics in plain numpy: captioning (BLEU, ROUGE-L, CIDEr-D), ranking (average precision,
retrieval recall / mAP@10) and the chance level of each, so every score can be printed beside what a random
system would get.

Caption metrics follow the coco-caption reference code (pycocoevalcap), which the tests check against:
captions are tokenised with `blat_contract.vocab.words` (lower case, punctuation dropped) on both sides.
Ties in retrieval count against the system (a tie with a wrong item is not a hit), so a collapsed model
that gives every item the same score scores at or below chance, never at the top.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from blat_contract.vocab import words

NGRAMS = 4  # BLEU-4 and CIDEr-D use 1..4-grams
ROUGE_BETA = 1.2  # coco-caption's ROUGE-L F-measure weight
CIDER_SIGMA = 6.0  # CIDEr-D's Gaussian length penalty width (words)
CIDER_SCALE = 10.0  # CIDEr-D is reported x10
_TINY, _SMALL = 1e-15, 1e-9  # coco-caption's BLEU guards against log(0) and division by zero


# --- captioning ---------------------------------------------------------------------------------------------------


def _ngrams(tokens: Sequence[str], n: int = NGRAMS) -> Counter:
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def _check(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[str]:
    if set(candidates) != set(references):
        missing, extra = set(candidates) - set(references), set(references) - set(candidates)
        raise ValueError(
            f"candidates and references must share ids: {len(missing)} without references "
            f"(e.g. {sorted(missing)[:3]}), {len(extra)} without a candidate (e.g. {sorted(extra)[:3]})"
        )
    empty = [k for k, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"{len(empty)} ids have no reference caption, e.g. {empty[:3]}")
    if not candidates:
        raise ValueError("no captions to score")
    return sorted(candidates)


def bleu(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]], n: int = NGRAMS) -> list[float]:
    """Corpus BLEU-1..n (coco-caption): clipped n-gram counts summed over the corpus, brevity penalty from the
    total candidate length against, per candidate, the reference length closest to it."""
    correct, guess = [0] * n, [0] * n
    cand_len = ref_len = 0
    for key in _check(candidates, references):
        cand = words(candidates[key])
        refs = [words(r) for r in references[key]]
        max_ref = Counter()
        for r in refs:
            for g, c in _ngrams(r, n).items():
                max_ref[g] = max(max_ref[g], c)
        for g, c in _ngrams(cand, n).items():
            correct[len(g) - 1] += min(c, max_ref[g])
        for k in range(n):
            guess[k] += max(0, len(cand) - k)
        cand_len += len(cand)
        ref_len += min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]  # closest; the shorter on a tie
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))  # geometric mean of the 1..k+1-gram precisions
    ratio = (cand_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programme, one row at a time)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, start=1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(
    candidates: Mapping[str, str], references: Mapping[str, Sequence[str]], beta: float = ROUGE_BETA
) -> tuple[float, dict[str, float]]:
    """ROUGE-L (coco-caption): per candidate, the best LCS precision and the best LCS recall over its references
    (each maximised on its own) combined into F_beta; the corpus score is the mean. -> (mean, per id)."""
    per = {}
    for key in _check(candidates, references):
        cand = words(candidates[key])
        prec = rec = 0.0
        for r in references[key]:
            ref = words(r)
            lcs = _lcs(ref, cand)
            prec = max(prec, lcs / len(cand) if cand else 0.0)
            rec = max(rec, lcs / len(ref) if ref else 0.0)
        per[key] = (1 + beta**2) * prec * rec / (rec + beta**2 * prec) if prec and rec else 0.0
    return float(np.mean(list(per.values()))), per


def cider_d(
    candidates: Mapping[str, str], references: Mapping[str, Sequence[str]], sigma: float = CIDER_SIGMA
) -> tuple[float, dict[str, float]]:
    """CIDEr-D (coco-caption): TF-IDF n-gram vectors (n = 1..4) with document frequency counted over the
    references of the evaluated set (a "document" is one id's reference set), candidate weights clipped at the
    reference's, cosine per n, a Gaussian length penalty exp(-delta^2 / (2 sigma^2)), averaged over n and over
    the references, x10. -> (mean, per id).

    As in coco-caption (and aac-metrics), the length in the penalty is counted in bigrams, i.e. words - 1
    for captions of two words or more, so delta is the word-count difference except for one-word captions.
    """
    keys = _check(candidates, references)
    cand_grams = {k: _ngrams(words(candidates[k])) for k in keys}
    ref_grams = {k: [_ngrams(words(r)) for r in references[k]] for k in keys}
    doc_freq = Counter(g for k in keys for g in {g for r in ref_grams[k] for g in r})
    log_docs = math.log(len(keys))

    def vector(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(NGRAMS)]
        norm = [0.0] * NGRAMS
        length = 0
        for g, tf in counts.items():
            n = len(g) - 1
            w = tf * (log_docs - math.log(max(1.0, doc_freq[g])))
            vec[n][g] = w
            norm[n] += w * w
            if n == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    per = {}
    for k in keys:
        vec_c, norm_c, len_c = vector(cand_grams[k])
        total = 0.0
        for ref in ref_grams[k]:
            vec_r, norm_r, len_r = vector(ref)
            penalty = math.exp(-((len_c - len_r) ** 2) / (2 * sigma**2))
            for n in range(NGRAMS):
                dot = sum(min(w, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, w in vec_c[n].items())
                if norm_c[n] and norm_r[n]:
                    dot /= norm_c[n] * norm_r[n]
                total += dot * penalty
        per[k] = CIDER_SCALE * total / NGRAMS / len(ref_grams[k])
    return float(np.mean(list(per.values()))), per


def caption_scores(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of one candidate per id against that id's references."""
    b = bleu(candidates, references)
    out = {f"bleu_{k + 1}": b[k] for k in range(NGRAMS)}
    out["rouge_l"] = rouge_l(candidates, references)[0]
    out["cider_d"] = cider_d(candidates, references)[0]
    return out


def shuffled_candidates(candidates: Mapping[str, str]) -> dict[str, str]:
    """The caption-metric "chance" system: each id gets the candidate written for the next id (sorted ids,
    cyclic), i.e. a fluent caption of an unrelated clip from the same system."""
    keys = sorted(candidates)
    return {k: candidates[keys[(i + 1) % len(keys)]] for i, k in enumerate(keys)}


# --- ranking ------------------------------------------------------------------------------------------------------


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall step curve, one step per distinct score (ties form one step), the same
    definition as sklearn.metrics.average_precision_score. scores, positive: (N,). NaN if no positive."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    tp = np.cumsum(y)
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # one threshold per distinct score
    tp = tp[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Macro mAP over the columns (labels) that have at least one positive. scores, targets: (N, K).
    -> (mAP, (K,) per-label AP with NaN where a label has no positive)."""
    ap = np.array([average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])
    present = ~np.isnan(ap)
    if not present.any():
        raise ValueError("no label has a positive example")
    return float(ap[present].mean()), ap


def expected_random_ap(n: int, n_pos: int) -> float:
    """Expected AP of a uniformly random ranking of n items with n_pos positives:
    (P-1)/(N-1) + H_N (N-P) / (N (N-1)), H_N the N-th harmonic number (-> P/N for large N)."""
    if not 0 < n_pos <= n:
        raise ValueError(f"need 0 < n_pos <= n, got {n_pos}, {n}")
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (n_pos - 1) / (n - 1) + harmonic * (n - n_pos) / (n * (n - 1))


def ranked_relevance(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(Q, D) scores and bool relevance -> (Q, D) relevance in ranked order, best first. At equal score the
    irrelevant items come first (ties count against the system)."""
    order = np.lexsort((relevant, -scores), axis=-1)  # last key is primary: score descending, then irrelevant first
    return np.take_along_axis(relevant, order, axis=-1)


def _ap_at_k(ranked: np.ndarray, k: int) -> np.ndarray:
    """(Q, D) ranked relevance -> (Q,) AP@k = sum over relevant items in the top k of precision at their rank,
    divided by min(k, relevant items)."""
    top = ranked[:, :k].astype(np.float64)
    precision = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1)
    return (precision * top).sum(axis=1) / np.minimum(ranked.sum(axis=1), k)


def retrieval_metrics(
    similarity: np.ndarray, caption_audio: np.ndarray, ks: Sequence[int] = (1, 5, 10), map_k: int = 10
) -> dict[str, float]:
    """Text<->audio retrieval with several captions per clip (the authors' protocol).

    similarity: (A, T) audio x caption scores; caption_audio: (T,) index of each caption's clip.
    Text-to-audio ranks the single true clip for each caption; audio-to-text takes the best-ranked of the clip's
    true captions. Also mAP@k both ways (t2a: 1/rank within the top k; a2t: AP@k over the clip's captions),
    median and mean rank, and t2a_geomean = (R@1 R@5 R@10)^(1/3), BLAT's checkpoint-selection metric.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    caption_audio = np.asarray(caption_audio)
    n_audio, n_text = similarity.shape
    if caption_audio.shape != (n_text,):
        raise ValueError(f"caption_audio must have shape ({n_text},), got {caption_audio.shape}")
    relevant = caption_audio[None, :] == np.arange(n_audio)[:, None]  # (A, T)
    if not relevant.any(axis=1).all():
        raise ValueError("every clip needs at least one caption")
    t2a = ranked_relevance(similarity.T, relevant.T)  # (T, A)
    a2t = ranked_relevance(similarity, relevant)  # (A, T)
    out: dict[str, float] = {}
    for name, ranked in (("t2a", t2a), ("a2t", a2t)):
        first = ranked.argmax(axis=1) + 1  # rank of the best-ranked true item
        for k in ks:
            out[f"{name}_r{k}"] = float(np.mean(first <= k))
        out[f"{name}_map{map_k}"] = float(np.mean(_ap_at_k(ranked, map_k)))
        out[f"{name}_median_rank"] = float(np.median(first))
        out[f"{name}_mean_rank"] = float(np.mean(first))
    if all(k in ks for k in (1, 5, 10)):
        out["t2a_geomean"] = float(np.cbrt(out["t2a_r1"] * out["t2a_r5"] * out["t2a_r10"]))
    return out


def _hit_chance(n_items: int, n_relevant: int, k: int) -> float:
    """P(at least one of n_relevant items in the top k of a random ranking of n_items)."""
    k = min(k, n_items)
    return 1.0 - math.comb(n_items - n_relevant, k) / math.comb(n_items, k)


def _ap_at_k_chance(n_items: int, n_relevant: int, k: int) -> float:
    """E[AP@k] for a random ranking: sum_j P(rel at j) E[#rel in top j | rel at j] / j, over min(k, C)."""
    c, d = n_relevant, n_items
    total = sum((c / d) * (1 + (j - 1) * (c - 1) / max(d - 1, 1)) / j for j in range(1, min(k, d) + 1))
    return total / min(k, c)


def retrieval_chance(
    caption_audio: np.ndarray, n_audio: int, ks: Sequence[int] = (1, 5, 10), map_k: int = 10
) -> dict[str, float]:
    """The expected value of each `retrieval_metrics` entry for a random ranking (exact, not simulated)."""
    counts = np.bincount(np.asarray(caption_audio), minlength=n_audio)  # captions per clip
    n_text = int(counts.sum())
    out: dict[str, float] = {}
    for k in ks:
        out[f"t2a_r{k}"] = min(k, n_audio) / n_audio
        out[f"a2t_r{k}"] = float(np.mean([_hit_chance(n_text, c, k) for c in counts]))
    out[f"t2a_map{map_k}"] = _ap_at_k_chance(n_audio, 1, map_k)
    out[f"a2t_map{map_k}"] = float(np.mean([_ap_at_k_chance(n_text, c, map_k) for c in counts]))
    out["t2a_median_rank"] = out["t2a_mean_rank"] = (n_audio + 1) / 2
    # best of c random positions among T: E[min] = (T + 1) / (c + 1)
    out["a2t_mean_rank"] = float(np.mean((n_text + 1) / (counts + 1)))
    out["a2t_median_rank"] = float(np.median((n_text + 1) / (counts + 1)))
    if all(k in ks for k in (1, 5, 10)):
        out["t2a_geomean"] = float(np.cbrt(out["t2a_r1"] * out["t2a_r5"] * out["t2a_r10"]))
    return out


def classification_accuracy(scores: np.ndarray, target: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy; a tie with a wrong class counts as wrong. scores: (N, K); target: (N,) class index."""
    scores = np.asarray(scores, dtype=np.float64)
    true = scores[np.arange(len(target)), target][:, None]
    beaten_or_tied = (scores >= true).sum(axis=1) - 1  # classes other than the true one scoring >= it
    return {("accuracy" if k == 1 else f"top{k}_accuracy"): float(np.mean(beaten_or_tied < k)) for k in ks}
