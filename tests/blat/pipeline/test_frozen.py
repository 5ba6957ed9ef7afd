"""Frozen audio towers: outputs computed once per clip equal the tower run alone, a disk cache is reused across
calls and follows the tower's weights, and frozen parameter groups stay untouched by training."""

from __future__ import annotations

import numpy as np
import torch

import blat
from blat.pipeline.frozen import cache_file, clip_key, freeze, pad_frames, per_clip_outputs, tower_params


def _tower():
    torch.manual_seed(0)
    return blat.create_model("tiny-dual").audio_encoder.eval()


def test_per_clip_outputs_equal_each_clip_alone():
    tower = _tower()
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (9000, 3000, 16000, 500)]
    pooled = per_clip_outputs(tower, waves, tower.cfg.min_samples, batch_size=3)
    frames = per_clip_outputs(tower.frames, waves, tower.cfg.min_samples, batch_size=3)
    with torch.no_grad():
        for w, p, f in zip(waves, pooled, frames):
            alone_f, valid = tower.frames(torch.from_numpy(w[None]))
            torch.testing.assert_close(p, tower(torch.from_numpy(w[None]))[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(f, alone_f[0, : int(valid[0])], atol=1e-5, rtol=1e-5)
    batch, valid = pad_frames(frames)
    assert batch.shape[0] == 4 and valid.tolist() == [len(f) for f in frames]


def test_disk_cache_is_reused_and_keyed_by_the_weights(tmp_path):
    tower = _tower()
    paths = []
    for i, n in enumerate((8000, 12000)):
        p = tmp_path / f"{i}.bin"
        p.write_bytes(b"x" * n)
        paths.append(p)
    waves = [np.full(n, 0.05, np.float32) for n in (8000, 12000)]
    keys = [clip_key(p) for p in paths]
    cache = cache_file(tmp_path / "cache", tower, "pooled")
    first = per_clip_outputs(tower, waves, tower.cfg.min_samples, keys=keys, cache=cache)
    calls = []
    spy = lambda w, n: calls.append(len(w)) or tower(w, n)  # noqa: E731
    again = per_clip_outputs(spy, waves, tower.cfg.min_samples, keys=keys, cache=cache)
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(first, again))  # nothing recomputed
    paths[1].write_bytes(b"y" * 5)  # a rewritten clip gets a new key and is computed again
    per_clip_outputs(spy, waves, tower.cfg.min_samples, keys=[clip_key(p) for p in paths], cache=cache)
    assert calls == [1]
    with torch.no_grad():
        tower.fc1.weight.add_(1.0)
    assert cache_file(tmp_path / "cache", tower, "pooled") != cache  # other weights, another file


def test_frozen_tower_gets_no_group_and_stays_in_eval():
    model = blat.create_model("tiny-dual")
    groups = tower_params(model, 1e-3, 0.0)
    tower_ids = {id(p) for p in model.audio_encoder.parameters()}
    assert len(groups) == 1 and not tower_ids & {id(p) for p in groups[0]["params"]}
    assert not model.audio_encoder.training and not any(p.requires_grad for p in model.audio_encoder.parameters())
    model.train()
    freeze(model.audio_encoder)
    assert not model.audio_encoder.training and model.audio_proj.training
    scaled = tower_params(blat.create_model("tiny-dual"), 1e-3, 0.1)
    assert [g["lr"] for g in scaled] == [1e-3, 1e-4]
