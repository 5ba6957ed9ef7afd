"""The bundle contract: ONNX Runtime (through the server's runtime) reproduces PyTorch, and bad bundles fail."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from blat_contract.beam import DecodingOptions
from blat_contract.bundle import BundleError, LabelBank, read_bundle
from blat_contract.labels import audioset_labels, tags_to_multi_hot
from blat_gateway.backends.ort import OnnxRuntimeBackend
from blat_gateway.runtime import ModelRuntime, pad_batch

ATOL = 1e-4


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    return ModelRuntime(tiny_bundle, OnnxRuntimeBackend(tiny_bundle, threads=2))


def torch_audio(dual, waves):
    batch, lengths = pad_batch(waves, dual.cfg.audio.min_samples)
    with torch.no_grad():
        return dual.encode_audio(torch.from_numpy(batch), torch.from_numpy(lengths)).numpy()


@pytest.mark.parametrize("lengths", [[32000], [5000, 48000, 17777], [1000, 2000], [96000] * 4])
def test_audio_parity_random(runtime, tiny_models, lengths):
    rng = np.random.default_rng(len(lengths))
    waves = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    assert np.abs(runtime.encode_audio(waves) - torch_audio(tiny_models[0], waves)).max() <= ATOL


def test_audio_parity_real(runtime, tiny_models, real_clips):
    waves = list(real_clips.values())[:8]  # unequal lengths, real recordings
    assert np.abs(runtime.encode_audio(waves) - torch_audio(tiny_models[0], waves)).max() <= ATOL


def test_batch_equals_single(runtime, real_clips):
    waves = list(real_clips.values())[:5]
    together = runtime.encode_audio(waves)
    alone = np.concatenate([runtime.encode_audio([w]) for w in waves])
    assert np.abs(together - alone).max() <= 1e-5


def test_pooling_all_frames_gives_the_embedding(runtime, real_clips):
    waves = list(real_clips.values())[:3]
    emb, frames, frame_lengths = runtime.audio_features(waves)
    assert np.abs(runtime.pool_frames(frames, frame_lengths) - emb).max() <= 1e-5


@pytest.mark.parametrize(
    "texts",
    [
        ["a dog barks"],
        ["rain", "a man speaks while a car passes by on a wet road", "birds chirp then a door slams", "x " * 80],
    ],
)
def test_text_parity(runtime, tiny_models, texts):
    with torch.no_grad():
        ref = tiny_models[0].encode_texts(texts).numpy()
    out = runtime.encode_text(texts)
    assert out.shape == ref.shape and np.abs(out - ref).max() <= ATOL
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_captions_match_torch(runtime, tiny_models, real_clips):
    captioner = tiny_models[1]
    waves = list(real_clips.values())[:6]
    tags = np.stack([tags_to_multi_hot(t) for t in (["Dog"], ["Rain", "Wind"], [], ["Bell"], ["Alarm"], ["Speech"])])
    opts = DecodingOptions(beam_size=3, max_tokens=8, n_best=2)
    ours = runtime.caption(waves, tags, opts)
    batch, lengths = pad_batch(waves, captioner.cfg.audio.min_samples)
    ref = captioner.generate(torch.from_numpy(batch), torch.from_numpy(lengths), torch.from_numpy(tags), opts)
    assert [[h.tokens for h in hs] for hs in ours] == [[h.tokens for h in hs] for hs in ref]
    assert np.allclose([h.log_prob for hs in ours for h in hs], [h.log_prob for hs in ref for h in hs], atol=1e-3)


def test_manifest_describes_the_bundle(tiny_bundle, tiny_models):
    m = read_bundle(tiny_bundle)
    dual = tiny_models[0]
    assert m.embedding_dim == dual.cfg.embed_dim
    assert m.audio.sample_rate == 32000 and m.audio.min_samples == dual.cfg.audio.min_samples
    assert abs(m.logit_scale - float(dual.logit_scale.detach().exp())) < 1e-4
    assert set(m.graphs) == {"audio_encoder", "audio_pool", "text_encoder", "captioner_encoder", "captioner_decoder"}
    assert set(m.files) == {p.name for p in tiny_bundle.iterdir()} - {"bundle.json"}
    assert m.captioner is not None and m.captioner.beam_size == 3
    assert "{label}" in m.labels.prompt_template and m.labels.count == 527
    assert all(v <= ATOL for v in m.metrics["export_parity_max_abs"].values())


def test_label_bank_scores_are_independent(runtime, real_clips):
    bank = LabelBank.load(runtime.bundle_dir / "labels.npz")
    assert bank.names == audioset_labels() and bank.embeddings.shape == (527, runtime.manifest.embedding_dim)
    scores = bank.scores(runtime.encode_audio(list(real_clips.values())[:4]))
    assert scores.shape == (4, 527) and ((scores > 0) & (scores < 1)).all()
    assert not np.allclose(scores.sum(1), 1.0)  # not a softmax over labels


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_altered_file_fails(tiny_bundle, tmp_path):
    b = _copy(tiny_bundle, tmp_path / "b")
    with open(b / "labels.npz", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="labels.npz has sha256"):
        read_bundle(b)


def test_missing_file_fails(tiny_bundle, tmp_path):
    b = _copy(tiny_bundle, tmp_path / "b")
    (b / "text_encoder.onnx").unlink()
    with pytest.raises(BundleError, match="missing file text_encoder.onnx"):
        read_bundle(b)
    with pytest.raises(BundleError, match="not a model bundle"):
        read_bundle(tmp_path)


def test_unknown_format_and_bad_fields_fail(tiny_bundle, tmp_path):
    b = _copy(tiny_bundle, tmp_path / "b")
    raw = json.loads((b / "bundle.json").read_text())
    (b / "bundle.json").write_text(json.dumps({**raw, "format_version": 99}))
    with pytest.raises(BundleError, match="v99"):
        read_bundle(b)
    (b / "bundle.json").write_text(json.dumps({**raw, "surprise": 1}))
    with pytest.raises(BundleError, match="surprise"):
        read_bundle(b)
    del raw["files"]["vocab.json"]
    (b / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="vocab.json"):
        read_bundle(b)
