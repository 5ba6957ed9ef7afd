"""blat.models registry and blat.load_model."""

from __future__ import annotations

import pytest
import torch

import blat
from blat.config import CaptionerConfig, DualEncoderConfig
from blat.models import DualEncoder, TagGuidedCaptioner
from blat_contract.vocab import Vocabulary

VOCAB = Vocabulary.build(["a dog barks", "rain falls on a roof"])
PAPER = {"blat-cnn14-bertm", "blat-captioner"}  # ~124M and ~85M parameters: seconds to build
EXPECTED = {
    "blat-captioner",
    "blat-cnn14-bertm",
    "ci-captioner",
    "ci-cnn-minilm",
    "small-captioner",
    "small-cnn-minilm",
    "tiny-captioner",
    "tiny-dual",
}


def test_list_models():
    names = blat.list_models()
    assert names == sorted(names)
    assert EXPECTED <= set(names)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in PAPER else n for n in blat.list_models()]
)
def test_every_registered_model_builds(name):
    cfg = blat.get_model_config(name)
    if isinstance(cfg, CaptionerConfig):
        with pytest.raises(ValueError, match="vocabulary"):
            blat.create_model(name)
        model = blat.create_model(name, vocab=VOCAB)
        assert isinstance(model, TagGuidedCaptioner) and model.cfg.vocab_size == len(VOCAB)
    else:
        assert isinstance(cfg, DualEncoderConfig)
        model = blat.create_model(name)
        assert isinstance(model, DualEncoder)
    n = sum(p.numel() for p in model.parameters())
    assert n > 0 and all(torch.isfinite(p).all() for p in model.parameters())
    if name == "blat-cnn14-bertm":
        # the published size of BLAT (CNN14 + BERT-medium with its pooler + heads) is 123.7M parameters;
        # we drop BERT's unused pooler (512 * 512 + 512)
        assert round((n + 512 * 512 + 512) / 1e5) == 1237, n


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as e:
        blat.get_model_config("tiny-dule")
    msg = str(e.value)
    assert "tiny-dule" in msg and all(name in msg for name in blat.list_models())
    with pytest.raises(ValueError, match="tiny-dual"):
        blat.create_model("nope")


def test_load_model_by_name_is_a_fresh_model_in_eval_mode():
    model = blat.load_model("tiny-dual")
    assert isinstance(model, DualEncoder) and not model.training


def test_load_model_bogus_string(tmp_path):
    with pytest.raises(ValueError) as e:
        blat.load_model("definitely/not-a-model")
    msg = str(e.value)
    assert "definitely/not-a-model" in msg and all(name in msg for name in blat.list_models())
    with pytest.raises(ValueError):
        blat.load_model(tmp_path)  # a folder is not a checkpoint file


def test_load_model_captioner_name_needs_a_vocabulary():
    with pytest.raises(ValueError, match="vocabulary"):
        blat.load_model("tiny-captioner")
