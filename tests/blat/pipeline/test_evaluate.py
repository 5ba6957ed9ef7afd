"""blat.pipeline.evaluate: the named protocols on encoders with known answers (perfect -> 1, random -> chance),
on a real tiny model end to end, caption scoring, and the command line."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

import blat
from blat.pipeline import evaluate
from blat.pipeline.evaluate import PROTOCOLS, evaluate_captions, evaluate_dual, primary_tag
from blat.pipeline.stages import PROTOCOL_NAMES, EvalConfig
from blat_contract.audio import SAMPLE_RATE
from blat_contract.config import ConfigError, from_dict
from tests.blat.pipeline.synthetic_scenes import TAGS, make_scene_manifest

CAPTIONS_PER_CLIP = 3


def write_lookup_manifest(root, n_scenes=12, n_events=10, seed=0):
    """FLAC clips with unique lengths (a stub encoder tells them apart by length) and known tags/captions."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True)
    rows = []
    for i in range(n_scenes + n_events):
        split = "test_scenes" if i < n_scenes else "test_events"
        if split == "test_events":
            tags = [TAGS[i % len(TAGS)]]
        else:
            tags = [TAGS[j] for j in sorted(rng.choice(len(TAGS), size=int(rng.integers(1, 3)), replace=False))]
        n = 1000 + 7 * i  # unique length
        sf.write(str(root / "audio" / f"{i}.flac"), np.zeros(n, np.float32), SAMPLE_RATE, format="FLAC")
        rows.append(
            {
                "id": f"clip{i}",
                "audio": f"audio/{i}.flac",
                "duration": n / SAMPLE_RATE,
                "tags": tags,
                "captions": [f"caption {c} of clip {i}" for c in range(CAPTIONS_PER_CLIP)],
                "split": split,
                "events": [],
                "background": None,
            }
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "manifest.jsonl", rows


class LookupEncoder(nn.Module):
    """A stand-in dual encoder with embeddings chosen by the test: a clip is recognised by its length.

    Space: [one dim per tag | one dim per clip]. Perfect mode: a clip = its tags (multi-hot) + its own identity
    dim; a prompt = its tag's dim; a caption = its clip's identity dim. Random mode: fixed random unit vectors."""

    def __init__(self, rows, mode="perfect"):
        super().__init__()
        self.cfg = SimpleNamespace(audio=SimpleNamespace(frontend=SimpleNamespace(sample_rate=SAMPLE_RATE)))
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device
        self.mode, self.rng = mode, np.random.default_rng(1)
        dim = len(TAGS) + len(rows)
        self.audio, self.text = {}, {}
        for i, r in enumerate(rows):
            v = np.zeros(dim)
            v[[TAGS.index(t) for t in r["tags"]]] = 1.0
            v[len(TAGS) + i] = 1.0
            self.audio[1000 + 7 * i] = v
            for c in r["captions"]:
                self.text[c] = np.eye(dim)[len(TAGS) + i]
        for k, tag in enumerate(TAGS):
            self.text[EvalConfig().prompt.format(label=tag.lower())] = np.eye(dim)[k]
        if mode == "random":
            self.audio = {k: self.rng.standard_normal(dim) for k in self.audio}
            self.text = {k: self.rng.standard_normal(dim) for k in self.text}

    @staticmethod
    def _unit(vectors):
        x = torch.tensor(np.stack(vectors), dtype=torch.float32)
        return x / x.norm(dim=-1, keepdim=True)

    def encode_audio(self, waveform, lengths):
        return self._unit([self.audio[int(n)] for n in lengths])

    def encode_texts(self, texts):
        return self._unit([self.text[t] for t in texts])


@pytest.fixture(scope="module")
def lookup(tmp_path_factory):
    return write_lookup_manifest(tmp_path_factory.mktemp("lookup"))


def test_registry_names_and_splits():
    assert set(PROTOCOLS) == {"zero_shot_events", "tagging_scenes", "retrieval_scenes"}
    assert set(PROTOCOLS) == set(PROTOCOL_NAMES)  # what EvalConfig checks its protocols against
    assert PROTOCOLS["zero_shot_events"].split == "test_events"
    assert {PROTOCOLS[p].split for p in ("tagging_scenes", "retrieval_scenes")} == {"test_scenes"}


def test_perfect_embeddings_score_one_everywhere(lookup):
    manifest, rows = lookup
    out = evaluate_dual(LookupEncoder(rows), manifest)
    zs, tag, ret = (out["protocols"][p] for p in ("zero_shot_events", "tagging_scenes", "retrieval_scenes"))
    assert zs["metrics"]["accuracy"] == 1.0 and zs["counts"] == {"clips": 10, "classes": len(TAGS)}
    assert zs["chance"]["accuracy"] == pytest.approx(1 / len(TAGS))
    assert zs["settings"]["prompt"] == "this is a sound of {label}"
    assert tag["metrics"]["map"] == 1.0 and 0 < tag["chance"]["map"] < 1
    m = ret["metrics"]
    assert m["t2a_r1"] == m["a2t_r1"] == m["t2a_map10"] == m["a2t_map10"] == 1.0 and m["t2a_median_rank"] == 1
    assert ret["counts"] == {"clips": 12, "captions": 12 * CAPTIONS_PER_CLIP}
    assert ret["chance"]["t2a_r1"] == pytest.approx(1 / 12)
    for r in out["protocols"].values():  # every result names its protocol, split and settings
        assert {"protocol", "split", "description", "settings", "metrics", "chance", "counts"} <= set(r)


def test_random_embeddings_score_near_chance(tmp_path):
    manifest, rows = write_lookup_manifest(tmp_path, n_scenes=60, n_events=40, seed=3)
    out = evaluate_dual(LookupEncoder(rows, mode="random"), manifest)["protocols"]
    ret = out["retrieval_scenes"]
    for k in ("t2a_r5", "t2a_r10", "a2t_r5", "a2t_r10"):
        assert abs(ret["metrics"][k] - ret["chance"][k]) < 0.15, (k, ret["metrics"][k], ret["chance"][k])
    assert abs(out["tagging_scenes"]["metrics"]["map"] - out["tagging_scenes"]["chance"]["map"]) < 0.2
    assert out["zero_shot_events"]["metrics"]["accuracy"] < 3 * out["zero_shot_events"]["chance"]["accuracy"]


def test_absent_split_is_reported_as_skipped(lookup, tmp_path):
    manifest, rows = lookup
    scenes_only = tmp_path / "manifest.jsonl"
    scenes_only.write_text(
        "".join(line + "\n" for line in manifest.read_text().splitlines() if '"test_scenes"' in line)
    )
    shutil.copytree(manifest.parent / "audio", tmp_path / "audio")
    out = evaluate_dual(LookupEncoder(rows), scenes_only, protocols=["zero_shot_events", "retrieval_scenes"])
    assert "skipped" in out["protocols"]["zero_shot_events"]
    assert out["protocols"]["retrieval_scenes"]["metrics"]["t2a_r1"] == 1.0


def test_primary_tag_is_the_first_tag():
    assert primary_tag({"id": "x", "tags": ["Steam whistle", "Whistle"]}) == "Steam whistle"
    with pytest.raises(ValueError, match="no tags"):
        primary_tag({"id": "x", "tags": []})


def test_config_rejects_unknown_protocols_and_bad_prompts():
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(EvalConfig, {"protocols": ["zero_shot_esc50"]})
    with pytest.raises(ConfigError, match="label"):
        EvalConfig(prompt="a sound")
    with pytest.raises(ValueError, match="unknown protocols"):
        evaluate_dual(None, "unused.jsonl", protocols=["nope"])


def test_a_protocol_can_read_another_split(lookup):
    """EvalConfig.splits (the paper recipe: multi-label tagging on AudioSet's eval segments in test_events)."""
    manifest, rows = lookup
    cfg = EvalConfig(splits={"tagging_scenes": "test_events"})
    out = evaluate_dual(LookupEncoder(rows), manifest, protocols=["tagging_scenes"], cfg=cfg)["protocols"]
    tag = out["tagging_scenes"]
    assert tag["split"] == "test_events" and tag["counts"]["clips"] == 10 and tag["metrics"]["map"] == 1.0
    assert EvalConfig().splits == {}
    with pytest.raises(ConfigError, match="evaluate.splits"):
        from_dict(EvalConfig, {"splits": {"tagging_esc50": "test_events"}})


def test_batched_encoding_equals_one_clip_at_a_time(tmp_path):
    torch.manual_seed(0)
    model = blat.create_model("tiny-dual").eval()
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (9000, 4000, 16000, 12345)]
    paths = []
    for i, w in enumerate(waves):
        paths.append(tmp_path / f"{i}.flac")
        sf.write(str(paths[-1]), w, SAMPLE_RATE, format="FLAC", subtype="PCM_24")
    batched = evaluate.encode_clips(model, paths, batch_size=3)
    single = np.concatenate([evaluate.encode_clips(model, [p], batch_size=1) for p in paths])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_tiny_model_end_to_end_and_cli(tmp_path, capsys):
    manifest, synthetic = make_scene_manifest(
        tmp_path / "scenes", counts={"test_scenes": 10, "test_events": 10}, seconds=0.5
    )
    torch.manual_seed(0)
    model = blat.create_model("tiny-dual").train()
    out = evaluate_dual(model, manifest, cfg=EvalConfig(batch_size=4))
    assert model.training  # restored after evaluation
    for name, r in out["protocols"].items():
        assert set(r["metrics"]) <= set(r["chance"]) | {"t2a_median_rank"}, name
        assert all(np.isfinite(v) for v in r["metrics"].values())
    assert (
        evaluate.main(
            [
                "dual",
                "--model",
                "tiny-dual",
                "--manifest",
                str(manifest),
                "--out",
                str(tmp_path / "dual.json"),
                "--protocols",
                "retrieval_scenes",
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "dual.json").read_text())
    assert list(saved["protocols"]) == ["retrieval_scenes"] and saved["model"] == "tiny-dual"
    assert "x chance" in capsys.readouterr().out


def test_evaluate_captions_and_its_cli(tmp_path):
    refs = {
        "a": ["a dog barks loudly", "a dog is barking"],
        "b": ["rain falls on a roof", "heavy rain"],
        "c": ["a bell rings twice", "bells are ringing"],
    }
    good = evaluate_captions({"a": "a dog barks", "b": "rain falls on a roof", "c": "a bell rings"}, refs)
    assert good["protocol"] == "captioning" and good["counts"] == {"clips": 3, "references": 6}
    for k in ("bleu_4", "rouge_l", "cider_d"):
        assert good["metrics"][k] > 3 * good["chance"][k], k
    assert good["settings"]["cider_d_sigma"] == 6.0
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"id": k, "audio": f"{k}.flac", "captions": v, "split": "test_scenes"}) + "\n"
            for k, v in refs.items()
        )
    )
    cands = tmp_path / "captions.jsonl"
    cands.write_text("".join(json.dumps({"id": k, "caption": v[0], "log_prob": -1.0}) + "\n" for k, v in refs.items()))
    assert (
        evaluate.main(
            [
                "captions",
                "--candidates",
                str(cands),
                "--manifest",
                str(manifest),
                "--out",
                str(tmp_path / "captions.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "captions.json").read_text())["metrics"]["bleu_4"] == pytest.approx(1.0)


@pytest.mark.bench  # a training/evaluation run: `make test-bench`
def test_meteor_when_java_and_pycocoevalcap_are_there():
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("no java")
    refs = {"a": ["a dog barks loudly", "a dog is barking"], "b": ["rain falls on a roof", "heavy rain"]}
    out = evaluate_captions({"a": "a dog barks loudly", "b": "a cat meows"}, refs, meteor=True)
    assert 0 < out["chance"]["meteor"] < out["metrics"]["meteor"] <= 1
