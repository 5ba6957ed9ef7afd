"""blat.models.dual: the contrastive model's heads, normalisation and temperature (tiny-dual)."""

from __future__ import annotations

import math

import pytest
import torch

import blat
from blat.models import DualEncoder

TEXTS = ["a dog barks", "rain on a roof while a man is speaking loudly", "birds"]


@pytest.fixture(scope="module")
def model() -> DualEncoder:
    torch.manual_seed(0)
    m = blat.create_model("tiny-dual").eval()
    assert isinstance(m, DualEncoder)
    return m


def audio(lengths=(16_000, 9_000, 4_000), seed=0):
    g = torch.Generator().manual_seed(seed)
    wave = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wave[i, :n] = torch.randn(n, generator=g) * 0.2
    return wave, torch.tensor(lengths)


@torch.no_grad()
def test_embeddings_are_unit_norm_with_the_right_shape(model):
    wave, lengths = audio()
    a = model.encode_audio(wave, lengths)
    t = model.encode_texts(TEXTS)
    assert a.shape == (3, model.cfg.embed_dim) == t.shape
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))


def test_logit_scale_init(model):
    assert model.logit_scale.shape == ()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert model.logit_scale.requires_grad


@torch.no_grad()
def test_forward_returns_both_towers_and_the_exponentiated_scale(model):
    wave, lengths = audio()
    tok = model.text_encoder.tokenize(TEXTS)
    a, t, scale = model(wave, lengths, tok["input_ids"], tok["attention_mask"])
    torch.testing.assert_close(a, model.encode_audio(wave, lengths))
    torch.testing.assert_close(t, model.encode_text(**tok))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


@torch.no_grad()
def test_encode_texts_equals_encode_text_of_tokenize(model):
    tok = model.text_encoder.tokenize(TEXTS)
    torch.testing.assert_close(model.encode_texts(TEXTS), model.encode_text(tok["input_ids"], tok["attention_mask"]))
    # and a sentence's vector does not depend on its batch-mates' padding
    torch.testing.assert_close(model.encode_texts(TEXTS[2:])[0], model.encode_texts(TEXTS)[2], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_audio_embedding_ignores_batch_padding(model):
    wave, lengths = audio()
    batch = model.encode_audio(wave, lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(batch[i], model.encode_audio(wave[i : i + 1, :n])[0], atol=1e-5, rtol=1e-5)


def test_heads_and_state_dict_names(model):
    sd = model.state_dict()
    assert sd["audio_proj.weight"].shape == (model.cfg.embed_dim, model.cfg.audio.embed_dim)
    assert sd["text_proj.weight"].shape == (model.cfg.embed_dim, model.text_encoder.hidden_size)
    assert "logit_scale" in sd
    assert any(k.startswith("audio_encoder.conv_block1.") for k in sd)
    assert any(k.startswith("text_encoder.model.embeddings.") for k in sd)


def test_gradients_reach_both_towers_and_the_scale(model):
    model.train()
    try:
        wave, lengths = audio()
        tok = model.text_encoder.tokenize(TEXTS)
        a, t, scale = model(wave, lengths, tok["input_ids"], tok["attention_mask"])
        logits = scale * a @ t.T
        target = torch.arange(3)
        loss = (
            torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)
        ) / 2
        model.zero_grad()
        loss.backward()
        assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0
        assert model.audio_encoder.conv_block1.conv1.weight.grad.abs().sum() > 0
        assert model.text_encoder.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@torch.no_grad()
def test_mlp_heads_round_trip_through_a_checkpoint(model, tmp_path):
    import dataclasses

    cfg = dataclasses.replace(model.cfg, projection_hidden=24)
    torch.manual_seed(1)
    mlp = DualEncoder(cfg, model.text_encoder.tokenizer).eval()
    sd = mlp.state_dict()
    assert sd["audio_proj.0.weight"].shape == (24, cfg.audio.embed_dim)
    assert sd["audio_proj.2.weight"].shape == (cfg.embed_dim, 24)
    assert sd["text_proj.0.weight"].shape == (24, mlp.text_encoder.hidden_size)
    wave, lengths = audio()
    blat.save_checkpoint(mlp, tmp_path / "mlp.safetensors")
    again, _ = blat.load_checkpoint(tmp_path / "mlp.safetensors")
    assert again.cfg.projection_hidden == 24
    torch.testing.assert_close(again.eval().encode_audio(wave, lengths), mlp.encode_audio(wave, lengths))
    torch.testing.assert_close(again.encode_texts(TEXTS), mlp.encode_texts(TEXTS))
