"""Per-label calibration of zero-shot scores."""

from __future__ import annotations

import numpy as np

from blat_export.labels import MIN_POSITIVES, Z_THRESHOLD, calibrate, reference_audio


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_uncalibrated_threshold_is_mean_plus_k_sd():
    rng = np.random.default_rng(0)
    sims = rng.normal(loc=np.linspace(-0.2, 0.3, 6), scale=np.linspace(0.01, 0.1, 6), size=(400, 6))
    scale, bias, method = calibrate(sims)
    at_threshold = sims.mean(0) + Z_THRESHOLD * sims.std(0)
    assert np.allclose(sigmoid(scale * at_threshold + bias), 0.5, atol=1e-3)
    assert (sigmoid(scale * sims.mean(0) + bias) < 0.01).all()
    assert "z-score" in method


def test_platt_fit_separates_positives_per_label():
    rng = np.random.default_rng(1)
    m, k = 600, 4
    targets = (rng.random((m, k)) < 0.2).astype(np.float32)
    offsets = np.array([0.0, 0.5, -0.3, 0.1])  # labels live at different similarity levels
    sims = offsets + 0.05 * rng.standard_normal((m, k)) + 0.15 * targets
    scale, bias, method = calibrate(sims, targets)
    probs = sigmoid(sims * scale + bias)
    accuracy = ((probs > 0.5) == (targets > 0)).mean(0)
    assert (accuracy > 0.9).all(), accuracy
    assert (scale > 0).all() and "platt" in method
    # A single global threshold could not do this: offsets differ by more than the positive shift.
    global_acc = ((sims > np.median(sims)) == (targets > 0)).mean()
    assert global_acc < accuracy.min()


def test_sparse_labels_share_a_fit():
    rng = np.random.default_rng(2)
    sims = rng.standard_normal((50, 3)) * 0.1
    targets = np.zeros((50, 3), np.float32)
    targets[:10, 0] = 1  # only label 0 has enough positives
    targets[0, 1] = 1
    assert MIN_POSITIVES > 1
    scale, bias, _ = calibrate(sims, targets)
    assert np.isfinite(scale).all() and np.isfinite(bias).all()


def test_reference_audio_is_varied():
    audio = reference_audio(32000, seconds=1.0)
    assert audio.shape[1] == 32000 and audio.shape[0] >= 10
    energies = audio.square().mean(1)
    assert energies[0] == 0 and len(set(np.round(energies.numpy(), 6))) > 5
