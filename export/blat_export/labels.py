"""The label bank: AudioSet names embedded through a prompt template, with per-label calibration.

Scores are independent per label, sigmoid(scale * cosine + bias), never a softmax over labels:
a clip can be both "Dog" and "Rain". With tagged reference clips each label gets a Platt fit on its
standardised similarity; labels with too few positives, and bundles without tagged clips, fall back
to a shared slope and a threshold a fixed number of standard deviations above the label's mean.
"""

from __future__ import annotations

import numpy as np
import torch

from blat.models import DualEncoder
from blat_contract.bundle import LabelBank
from blat_contract.labels import audioset_labels

DEFAULT_PROMPT = "this is a sound of {label}"
Z_THRESHOLD = 3.0  # uncalibrated: a label scores 0.5 at mean + 3 std of its reference similarities
Z_SLOPE = 2.0  # logit units per standard deviation
MIN_POSITIVES = 3  # per-label Platt fit only with at least this many positive reference clips


def reference_audio(sample_rate: int, seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    """(M, N) generic sounds (noises, tones, chirps, clicks, silence) for data-free calibration."""
    g = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    clips = [np.zeros(n)]
    for level in (0.01, 0.1, 0.5):
        white = g.standard_normal(n)
        clips += [level * white, level * np.cumsum(white) / np.sqrt(n)]  # white and brown noise
    for f in (110, 440, 1000, 3000, 8000):
        clips.append(0.3 * np.sin(2 * np.pi * f * t))
    clips.append(0.3 * np.sin(2 * np.pi * (100 + 4000 * t / seconds) * t))  # chirp
    clicks = np.zeros(n)
    clicks[:: sample_rate // 4] = 0.9
    clips.append(clicks)
    return torch.from_numpy(np.stack(clips).astype(np.float32))


def _platt(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> tuple[float, float]:
    """1-D logistic regression y ~ sigmoid(w x + b) by Newton's method, with a small L2 on w."""
    w, b = 1.0, 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(w * x + b)))
        r = p * (1 - p) + 1e-9
        grad = np.array([np.sum((p - y) * x) + l2 * w, np.sum(p - y)])
        hess = np.array([[np.sum(r * x * x) + l2, np.sum(r * x)], [np.sum(r * x), np.sum(r)]])
        step = np.linalg.solve(hess, grad)
        w, b = w - step[0], b - step[1]
        if np.abs(step).max() < 1e-6:
            break
    return float(w), float(b)


def calibrate(similarities: np.ndarray, targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """similarities (M, K) reference-clip x label cosines, targets (M, K) 0/1 or None
    -> scale (K,), bias (K,), method."""
    mu = similarities.mean(0)
    sd = similarities.std(0) + 1e-6
    z = (similarities - mu) / sd  # (M, K)
    w = np.full(similarities.shape[1], Z_SLOPE)
    b = np.full(similarities.shape[1], -Z_SLOPE * Z_THRESHOLD)
    method = f"reference z-score (slope {Z_SLOPE}, threshold {Z_THRESHOLD} sd, {len(similarities)} clips)"
    if targets is not None:
        positives = targets.sum(0)
        rich = positives >= MIN_POSITIVES
        if targets.sum() > 0:  # a shared fit over all labels for the sparse ones
            w[:], b[:] = _platt(z.ravel(), targets.ravel().astype(np.float64))
        for k in np.nonzero(rich & (positives < len(targets)))[0]:
            w[k], b[k] = _platt(z[:, k], targets[:, k].astype(np.float64))
        method = f"platt on {len(targets)} tagged clips ({int(rich.sum())} labels fitted alone, the rest shared)"
    # Fold the standardisation in: sigmoid(w * (s - mu) / sd + b) = sigmoid(scale * s + bias).
    return (w / sd).astype(np.float32), (b - w * mu / sd).astype(np.float32), method


@torch.no_grad()
def build_label_bank(
    model: DualEncoder,
    prompt: str = DEFAULT_PROMPT,
    names: tuple[str, ...] | None = None,
    audio: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    targets: np.ndarray | None = None,
    batch: int = 64,
) -> tuple[LabelBank, str]:
    """Embed `prompt` for every label and calibrate on `audio` (default: `reference_audio`)."""
    names = names or audioset_labels()
    texts = [prompt.format(label=n.lower()) for n in names]
    emb = torch.cat([model.encode_texts(texts[i : i + batch]) for i in range(0, len(texts), batch)]).numpy()
    if audio is None:
        audio = reference_audio(model.cfg.audio.frontend.sample_rate)
    audio_emb = torch.cat(
        [
            model.encode_audio(audio[i : i + batch], None if lengths is None else lengths[i : i + batch])
            for i in range(0, len(audio), batch)
        ]
    ).numpy()
    scale, bias, method = calibrate(audio_emb @ emb.T, targets)
    return LabelBank(tuple(names), emb.astype(np.float32), scale, bias), method
