"""blat.pipeline.pretrain and .contrastive: the InfoNCE loss by hand, data order and crops, the frozen-text
cache, checkpoints and metadata, and that a few steps on a tiny synthetic set beat the untrained model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import blat
from blat.pipeline import pretrain as pt
from blat.pipeline.contrastive import contrastive_loss
from blat.pipeline.evaluate import evaluate_dual
from blat.pipeline.stages import PretrainConfig
from blat_contract.config import ConfigError
from tests.blat.pipeline.synthetic_scenes import make_scene_manifest, write_tiny_config

FAST = {"model": "tiny-dual", "clip_seconds": 0.5, "num_threads": 1, "log_every": 1000}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """(manifest, synthetic captions): 48 tags-only clips with synthetic captions, 8 captioned, 20 test scenes."""
    return make_scene_manifest(
        tmp_path_factory.mktemp("scenes"),
        seconds=0.6,
        counts={"captioned": 8, "tags_only": 48, "test_scenes": 20, "test_events": 10},
    )


def test_info_nce_by_hand():
    audio = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    text = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    scale = 2.0
    sim = [[sum(a * t for a, t in zip(audio[i].tolist(), text[j].tolist())) for j in range(3)] for i in range(3)]

    def ce(rows):  # mean over rows of -log softmax at the diagonal
        return sum(math.log(sum(math.exp(scale * v) for v in row)) - scale * row[i] for i, row in enumerate(rows)) / 3

    expected = (ce(sim) + ce([list(col) for col in zip(*sim)])) / 2
    got = contrastive_loss(audio, text, torch.tensor(math.log(scale)))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_loss_gradient_reaches_the_temperature():
    audio = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1)
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    contrastive_loss(audio, audio.clone(), scale).backward()
    assert scale.grad is not None and scale.grad.item() < 0  # matched pairs: a sharper softmax lowers the loss


def test_schedule_warms_up_then_follows_a_cosine():
    f = [pt.lr_factor(s, total=10, warmup=2) for s in range(10)]
    assert f[:2] == [0.5, 1.0]
    assert f[2] == pytest.approx(1.0) and f[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert all(a >= b for a, b in zip(f[1:], f[2:]))


def test_shards_of_a_global_batch_are_the_one_process_batch():
    one = list(pt._ShardSampler(20, 8, seed=3, epoch=1, rank=0, world=1))
    two = list(
        zip(
            pt._ShardSampler(20, 8, seed=3, epoch=1, rank=0, world=2),
            pt._ShardSampler(20, 8, seed=3, epoch=1, rank=1, world=2),
        )
    )
    assert len(one) == 2 == len(two)  # the incomplete last batch is dropped
    assert [a + b for a, b in two] == one
    assert one != list(pt._ShardSampler(20, 8, seed=3, epoch=2, rank=0, world=1))  # a new order each epoch


def test_crops_and_captions_depend_only_on_seed_epoch_and_index(scenes):
    manifest, synthetic = scenes
    pairs, _ = pt.load_pairs(manifest, synthetic, use_captioned=True)
    ds = pt.PairDataset(pairs, clip_samples=8000, sample_rate=32000, seed=0)
    a, b = ds[(0, 5)], ds[(0, 5)]
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert a[0].shape == (8000,) and a[1] == 8000
    assert not torch.equal(ds[(1, 5)][0], a[0])  # another epoch, another crop
    wave, length = pt.crop(np.ones(100, np.float32), 160, np.random.default_rng(0))
    assert length == 100 and wave.shape == (160,) and wave[100:].sum() == 0  # short clips are zero-padded


def test_pairs_and_held_out_split(scenes, tmp_path):
    manifest, synthetic = scenes
    synth_only, table = pt.load_pairs(manifest, synthetic)
    assert len(synth_only) == 48 and all(p.id.startswith("tags_only") for p in synth_only)
    assert all(len(p.references) == 5 for p in synth_only)  # held-back references travel along for validation
    both, table2 = pt.load_pairs(manifest, synthetic, use_captioned=True)
    assert len(both) == 56 and len(table2) > len(table)
    train, val = pt.hold_out(both, 6, seed=0)
    assert len(val) == 6 and not {p.id for p in train} & {p.id for p in val}
    assert pt.hold_out(both, 6, seed=0) == (train, val)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "nowhere", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match="missing"):
        pt.load_pairs(manifest, bad)


def test_config_checks():
    with pytest.raises(ConfigError, match="unknown key"):
        pt.load_config(overrides=["batch_sise=4"])
    with pytest.raises(ConfigError, match="negatives"):
        PretrainConfig(batch_size=1)
    cfg = pt.load_config(overrides=["freeze_text=true", "lr=3e-4"], environ={"BLAT_PRETRAIN_EPOCHS": "3"})
    assert cfg.freeze_text is True and cfg.lr == 3e-4 and cfg.epochs == 3


def _first_batch(cfg, pairs):
    """The first global batch pretrain() trains on (same order, crops and captions)."""
    ds = pt.PairDataset(pairs, int(cfg.clip_seconds * 32000), 32000, cfg.seed)
    idx = pt.global_batches(len(pairs), cfg.batch_size, cfg.seed, 0)[0]
    return pt._collate([ds[(0, int(i))] for i in idx])


def test_frozen_text_cache_gives_the_unfrozen_first_step_loss(scenes, tmp_path):
    manifest, synthetic = scenes
    cfg = PretrainConfig(**FAST, freeze_text=True, batch_size=8, val_size=0, max_steps=1, epochs=1)
    report = pt.pretrain(cfg, manifest, tmp_path / "frozen", synthetic)
    logged = json.loads((tmp_path / "frozen" / "steps.jsonl").read_text().splitlines()[0])["loss"]
    assert report["first_loss"] == logged

    pairs, captions = pt.load_pairs(manifest, synthetic)
    wave, lengths, ids = _first_batch(cfg, pairs)
    model = pt.build_model("tiny-dual", cfg.seed).train()
    model.text_encoder.requires_grad_(False)
    model.text_encoder.eval()
    audio, text = pt.embed_batch(model, wave, lengths, ids, captions)  # the text tower runs, frozen
    unfrozen = contrastive_loss(audio, text, model.logit_scale)
    assert logged == pytest.approx(unfrozen.item(), abs=1e-6)
    features = pt.text_features(model, captions)  # and the cache, in the same model
    audio2, text2 = pt.embed_batch(model, wave, lengths, ids, captions, features)
    torch.testing.assert_close(text2, text, atol=1e-6, rtol=0)

    _, meta = blat.load_checkpoint(tmp_path / "frozen" / "dual.safetensors")
    assert meta["frozen_text"] is True and "cached" in meta["text_tower"]
    assert meta["data"]["manifest_sha256"] == pt.file_sha256(manifest)
    assert meta["recipe"]["freeze_text"] is True and meta["best"]["metric"] == "last epoch"


def test_frozen_text_tower_does_not_move(scenes, tmp_path):
    manifest, synthetic = scenes
    cfg = PretrainConfig(**{**FAST, "lr": 1e-2}, freeze_text=True, batch_size=8, val_size=0, max_steps=2, epochs=1)
    pt.pretrain(cfg, manifest, tmp_path / "run", synthetic)
    trained = blat.load_checkpoint(tmp_path / "run" / "dual.safetensors")[0].state_dict()
    start = pt.build_model("tiny-dual", cfg.seed).state_dict()
    for k in start:
        if k.startswith("text_encoder."):
            assert torch.equal(trained[k], start[k]), k
    assert not torch.equal(trained["text_proj.weight"], start["text_proj.weight"])
    assert not torch.equal(trained["audio_proj.weight"], start["audio_proj.weight"])


def test_panns_weights_initialise_the_audio_tower(scenes, tmp_path):
    manifest, synthetic = scenes
    torch.manual_seed(5)
    donor = blat.create_model("tiny-dual").audio_encoder
    sd = {k: v for k, v in donor.state_dict().items() if not k.startswith("melspec_extractor.")}
    torch.save({"model": sd}, tmp_path / "panns.pth")
    cfg = PretrainConfig(
        **{**FAST, "lr": 1e-12},
        panns_checkpoint=str(tmp_path / "panns.pth"),
        batch_size=8,
        val_size=0,
        max_steps=1,
        epochs=1,
    )
    pt.pretrain(cfg, manifest, tmp_path / "run", synthetic)
    got = blat.load_checkpoint(tmp_path / "run" / "dual.safetensors")[0].audio_encoder.state_dict()
    torch.testing.assert_close(got["conv_block1.conv1.weight"], sd["conv_block1.conv1.weight"], atol=1e-9, rtol=0)


@pytest.mark.bench  # a training/evaluation run: `make test-bench`
def test_a_few_steps_beat_the_untrained_model(scenes, tmp_path):
    manifest, synthetic = scenes
    model = str(write_tiny_config(tmp_path / "tiny.json"))  # mean pooling: see synthetic_scenes.TINY_NO_DROPOUT
    cfg = PretrainConfig(
        **{**FAST, "lr": 3e-3, "model": model}, batch_size=16, epochs=8, val_size=0, warmup_fraction=0.1
    )
    report = pt.pretrain(cfg, manifest, tmp_path / "run", synthetic)
    assert report["steps"] == 8 * 3
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert np.mean([s["loss"] for s in steps[-6:]]) < np.mean([s["loss"] for s in steps[:6]])

    trained = blat.load_checkpoint(tmp_path / "run" / "dual.safetensors")[0]
    untrained = pt.build_model(model, cfg.seed)
    before = evaluate_dual(untrained, manifest, protocols=["retrieval_scenes"])["protocols"]["retrieval_scenes"]
    after = evaluate_dual(trained, manifest, protocols=["retrieval_scenes"])["protocols"]["retrieval_scenes"]
    assert after["metrics"]["t2a_geomean"] > before["metrics"]["t2a_geomean"] + 0.15  # seen: 0.18 -> 0.48
    assert after["metrics"]["t2a_map10"] > 1.5 * after["chance"]["t2a_map10"]


def test_validation_picks_the_best_epoch_and_writes_a_report(scenes, tmp_path):
    manifest, synthetic = scenes
    cfg = PretrainConfig(**{**FAST, "lr": 3e-3}, batch_size=8, epochs=2, val_size=8, val_captions="references")
    report = pt.pretrain(cfg, manifest, tmp_path / "run", synthetic)
    assert report["val_pairs"] == 8 and report["train_pairs"] == 40 and len(report["history"]) == 2
    best = max(report["history"], key=lambda h: h["val"]["t2a_geomean"])
    assert report["best"]["epoch"] == best["epoch"] and report["best"]["metric"] == "t2a_geomean"
    assert report["val_chance"]["t2a_r1"] == pytest.approx(1 / 8)
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["best"] == report["best"]
    _, meta = blat.load_checkpoint(tmp_path / "run" / "dual.safetensors")
    assert meta["best"]["epoch"] == best["epoch"] and meta["data"]["val_pairs"] == 8


def test_too_few_pairs_for_a_batch_is_a_clear_error(scenes, tmp_path):
    manifest, synthetic = scenes
    with pytest.raises(ValueError, match="fewer than one global batch"):
        pt.pretrain(PretrainConfig(**FAST, batch_size=64, val_size=0), manifest, tmp_path / "run", synthetic)
