"""Step 3 (stage 1): the tag-guided captioner trains on the captioned split, its loss falls, the checkpoint alone
reloads and captions, and the tags it is given change what it says."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from blat.checkpoint import load_checkpoint
from blat.models.captioner import tags_tensor
from blat.pipeline.data import batch_audio, file_sha256, load_clips, load_scene_manifest
from blat.pipeline.stages import CaptionerConfig
from blat.pipeline.train_captioner import build_captioner, main, train_captioner
from blat_contract.beam import DecodingOptions

from .pipeline_data import tiny_captioner, tiny_scenes


@pytest.fixture(scope="module")
def trained():
    path = tiny_captioner()
    model, meta = load_checkpoint(path)
    return path, model, meta


def test_loss_falls_and_the_checkpoint_records_its_provenance(trained):
    path, model, meta = trained
    losses = meta["train_losses"]
    assert len(losses) == meta["epochs"] == 12
    assert losses[-1] < 0.75 * losses[0] and losses[-1] == meta["final_train_loss"]
    assert meta["data_manifest_sha256"] == file_sha256(tiny_scenes())
    assert meta["vocab_size"] == len(model.vocab) and meta["seed"] == 0 and meta["use_tags"] is True
    assert meta["recipe"]["arch"] == "tiny-captioner" and meta["train_split"] == "captioned"
    assert meta["pairs"] == 5 * meta["clips"] == 5 * 48


def test_vocabulary_comes_from_the_captioned_split_only(trained):
    _, model, _ = trained
    from blat_contract.vocab import Vocabulary

    rows = load_scene_manifest(tiny_scenes(), "captioned")
    assert model.vocab == Vocabulary.build(c for r in rows for c in r["captions"])


def _test_batch(n=8, split="test_scenes"):
    rows = load_scene_manifest(tiny_scenes(), split)[:n]
    wave, lengths = batch_audio(load_clips(rows))
    return rows, torch.from_numpy(wave), torch.from_numpy(lengths)


def test_reloaded_captioner_captions_and_tags_change_its_output(trained):
    _, model, _ = trained
    rows, wave, lengths = _test_batch(split="captioned")  # tags it has learnt (test scenes may hold unseen ones)
    true_tags = [r["tags"] for r in rows]
    other_tags = true_tags[1:] + true_tags[:1]  # each clip gets another scene's tags
    opts = DecodingOptions(beam_size=3, max_tokens=20)
    with_true = model.caption(wave, lengths, tags_tensor(true_tags), opts)
    with_other = model.caption(wave, lengths, tags_tensor(other_tags), opts)
    assert all(c.strip() for c in with_true)
    assert sum(a != b for a, b in zip(with_true, with_other)) >= len(rows) // 2, (with_true, with_other)
    # and the words follow the tags: captions share more words with references written for the given tags
    from blat_contract.vocab import words

    def overlap(captions, refs):
        return np.mean([len(set(words(c)) & {w for r in ref for w in words(r)}) for c, ref in zip(captions, refs)])

    refs = [r["captions"] for r in rows]
    assert overlap(with_true, refs) > overlap(with_other, refs)


def test_captioner_without_tags_ignores_them():
    path = tiny_captioner(use_tags=False, epochs=2)
    model, meta = load_checkpoint(path)
    assert meta["use_tags"] is False and model.tag_table is None
    rows, wave, lengths = _test_batch(4)
    a = model.caption(wave, lengths, tags_tensor([r["tags"] for r in rows]))
    assert a == model.caption(wave, lengths, tags_tensor([["Dog"]] * len(rows))) == model.caption(wave, lengths, None)


def test_training_is_deterministic_given_the_seed(tmp_path):
    cfg = CaptionerConfig(arch="tiny-captioner", epochs=1, batch_size=30, seed=7, num_threads=1)
    a, _ = load_checkpoint(train_captioner(tiny_scenes(), tmp_path / "a.safetensors", cfg, progress=False))
    b, meta = load_checkpoint(train_captioner(tiny_scenes(), tmp_path / "b.safetensors", cfg, progress=False))
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    c, _ = load_checkpoint(
        train_captioner(tiny_scenes(), tmp_path / "c.safetensors", dataclasses.replace(cfg, seed=8), progress=False)
    )
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_architecture_and_flags_come_from_the_config():
    from blat_contract.vocab import Vocabulary

    vocab = Vocabulary.build(["a dog barks"])
    model = build_captioner(CaptionerConfig(arch="tiny-captioner", use_tags=False, max_tokens=12), vocab)
    assert model.cfg.use_tags is False and model.cfg.max_tokens == 12 and model.cfg.d_model == 64
    with pytest.raises(ValueError, match="not a captioner"):
        build_captioner(CaptionerConfig(arch="tiny-dual"), vocab)


def test_cli_trains_with_overrides(tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    assert (
        main(
            [
                "--scenes",
                str(tiny_scenes()),
                "--out",
                str(out),
                "--arch",
                "tiny-captioner",
                "--epochs",
                "1",
                "--no-tags",
                "--no-progress",
                "--num-threads",
                "1",
                "--log-level",
                "WARNING",
            ]
        )
        == 0
    )
    _, meta = load_checkpoint(out)
    assert meta["use_tags"] is False and meta["epochs"] == 1 and "final train loss" in capsys.readouterr().out
