"""How /v1/tag and StreamTag score labels: the bundle's supervised tagger for the labels it was trained on (mixed
with the zero-shot score by the bundle's `tagger.zero_shot_weight`), the zero-shot label bank (each label's prompt
embedded by the text tower, calibrated) for every other label.

Both give independent per-label probabilities (never a softmax over labels), and every answer says which scorer
produced each label, so a client can tell a trained AudioSet class from a free-text label.

Why a mix: the head was trained on AudioSet and hears speech and music well, but ranks generic classes ("Music",
"Animal") above the specific one; the zero-shot bank was trained on the release's own corpus and knows its sound
effects. On blat-demo/2's held-out events an equal mix beats either alone (README, Results by family).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TAGGER = "tagger"  # the audio tower's supervised AudioSet head (bundle.json `tagger`)
MIXED = "tagger+zero_shot"  # the head's probability mixed with the zero-shot one (tagger.zero_shot_weight > 0)
ZERO_SHOT = "zero_shot"  # cosine of audio and prompt embeddings, calibrated per label (bundle.json `labels`)


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float  # independent per-label probability
    scorer: str = ZERO_SHOT  # TAGGER, MIXED or ZERO_SHOT


@dataclass(frozen=True)
class LabelSet:
    """The labels one request scores, resolved once per request or stream."""

    names: tuple[str, ...]
    embeddings: np.ndarray  # (K, D) prompt embeddings (rows of tagger labels are unused)
    scale: np.ndarray  # (K,) zero-shot calibration: sigmoid(scale * cosine + bias)
    bias: np.ndarray  # (K,)
    head_index: np.ndarray  # (K,) int: the label's output in the tagger's class_probs, -1 for zero-shot
    zero_shot_weight: float = 0.0  # share of the zero-shot score in the tagger's labels (bundle.json tagger)

    @property
    def scorers(self) -> tuple[str, ...]:
        known = MIXED if self.zero_shot_weight > 0 else TAGGER
        return tuple(known if i >= 0 else ZERO_SHOT for i in self.head_index)

    def scores(self, audio_embeddings: np.ndarray, class_probs: np.ndarray | None) -> np.ndarray:
        """(B, D) unit-norm embeddings and the tagger's (B, H) probabilities (None without one) -> (B, K)."""
        probs = 1.0 / (1.0 + np.exp(-((audio_embeddings @ self.embeddings.T) * self.scale + self.bias)))
        known = self.head_index >= 0
        if class_probs is not None and known.any():
            w = self.zero_shot_weight
            probs[:, known] = (1.0 - w) * class_probs[:, self.head_index[known]] + w * probs[:, known]
        return probs

    def top(self, probs: np.ndarray, top_k: int) -> tuple[LabelScore, ...]:
        """The `top_k` best of one clip's (K,) scores, best first (ties keep the label order)."""
        scorers = self.scorers
        order = np.argsort(-probs, kind="stable")[:top_k]
        return tuple(LabelScore(self.names[i], float(probs[i]), scorers[i]) for i in order)


def confident_tags(labels: tuple[str, ...], probs: np.ndarray, threshold: float, limit: int) -> dict[str, float]:
    """The tagger's labels scoring at least `threshold` in one clip's (K,) `probs`, best first, at most `limit`."""
    order = np.argsort(-probs, kind="stable")[:limit]
    return {labels[i]: round(float(probs[i]), 4) for i in order if probs[i] >= threshold}


def head_index(names: tuple[str, ...], tagger_labels: tuple[str, ...] | None) -> np.ndarray:
    """(K,) position of each name (case-insensitive) among the tagger's labels, -1 where it has none."""
    where = {n.lower(): i for i, n in enumerate(tagger_labels or ())}
    return np.array([where.get(n.lower(), -1) for n in names], dtype=np.int64)
