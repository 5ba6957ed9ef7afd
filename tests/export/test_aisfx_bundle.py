"""A bundle of the pretrained aisfx tower: its front end and masking go into ONNX, and the server's runtime
reproduces PyTorch on real recordings, alone and batched. The export and the server never name the tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("aisfx", reason="the aisfx package (pip install --no-deps aisfx==0.1.2)")

import blat
from blat_contract.bundle import read_bundle
from blat_contract.vocab import Vocabulary
from blat_gateway.backends.ort import OnnxRuntimeBackend
from blat_gateway.runtime import ModelRuntime, pad_batch

CAPTIONS = ["a door slams", "a bell rings twice", "water drips in a cave"]


@pytest.fixture(scope="module")
def aisfx_bundle(tmp_path_factory):
    from blat_export.bundle import write_bundle

    torch.manual_seed(0)
    dual = blat.create_model("aisfx-minilm").eval()
    captioner = blat.create_model("aisfx-captioner", vocab=Vocabulary.build(CAPTIONS)).eval()
    out = write_bundle(tmp_path_factory.mktemp("bundles") / "aisfx", dual, captioner, name="aisfx", version="test")
    return out, dual, captioner


def test_export_parity_is_recorded(aisfx_bundle):
    manifest = read_bundle(aisfx_bundle[0])
    assert max(manifest.metrics["export_parity_max_abs"].values()) <= 1e-4
    assert manifest.audio.frontend.mel_scale == "htk" and manifest.audio.sample_rate == 32000
    assert manifest.audio.frame_seconds == pytest.approx(8 * 743 / 32000)


def test_runtime_matches_torch_on_real_clips(aisfx_bundle, real_clips):
    out, dual, _ = aisfx_bundle
    runtime = ModelRuntime(out, OnnxRuntimeBackend(out, threads=2))
    waves = list(real_clips.values())[:6]  # unequal lengths
    batch, lengths = pad_batch(waves, dual.cfg.audio.min_samples)
    with torch.no_grad():
        ref = dual.encode_audio(torch.from_numpy(batch), torch.from_numpy(lengths)).numpy()
    together = runtime.encode_audio(waves)
    assert np.abs(together - ref).max() <= 1e-4
    alone = np.concatenate([runtime.encode_audio([w]) for w in waves])
    assert np.abs(together - alone).max() <= 1e-5
