"""Importing foreign checkpoints (blat.convert) with no real checkpoint at hand.

The files are built here from the *published* layouts (FIELD_NOTES section 1), not from our model code:
audio keys are spelled out by hand with CNN14's shapes, text keys come from a Hugging Face BertModel of
BERT-medium's size. Every tensor gets random values, so a tensor landing in the wrong place shows up.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import blat
from blat.checkpoint import CheckpointError
from blat.convert import import_blat_checkpoint, import_panns_cnn14
from blat.models import Cnn14

transformers = pytest.importorskip("transformers")

CNN14_CHANNELS = (64, 128, 256, 512, 1024, 2048)
BERT_MEDIUM = dict(
    hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=2048, vocab_size=30522
)
# A scaled-down file with the same layout, for the failure cases (the importer reads sizes off the shapes).
SMALL_CHANNELS = (8, 16, 32, 64, 128, 256)
SMALL_BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=128, vocab_size=30522)
DROPPED = (
    "text_encoder.model.embeddings.position_ids",
    "text_encoder.model.pooler.dense.weight",
    "text_encoder.model.pooler.dense.bias",
)


def bn_shapes(name: str, c: int) -> dict[str, tuple]:
    return {
        **{f"{name}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")},
        f"{name}.num_batches_tracked": (),
    }


def cnn14_shapes(prefix: str, channels=CNN14_CHANNELS, n_mels: int = 64, embed: int = 2048) -> dict[str, tuple]:
    """bn0, conv_block{1..n}.{conv1,conv2,bn1,bn2}, fc1: the PANNs / BLAT audio names and shapes."""
    shapes = bn_shapes(f"{prefix}bn0", n_mels)
    c_in = 1
    for i, c in enumerate(channels, 1):
        block = f"{prefix}conv_block{i}"
        shapes[f"{block}.conv1.weight"] = (c, c_in, 3, 3)
        shapes[f"{block}.conv2.weight"] = (c, c, 3, 3)
        shapes.update(bn_shapes(f"{block}.bn1", c))
        shapes.update(bn_shapes(f"{block}.bn2", c))
        c_in = c
    shapes[f"{prefix}fc1.weight"] = (embed, channels[-1])
    shapes[f"{prefix}fc1.bias"] = (embed,)
    return shapes


def bert_shapes(prefix: str, **bert) -> dict[str, tuple]:
    """A full HF BertModel (pooler included) with its keys prefixed; built on the meta device (no memory)."""
    with torch.device("meta"):
        model = transformers.BertModel(transformers.BertConfig(**bert), add_pooling_layer=True)
    return {prefix + k: tuple(v.shape) for k, v in model.state_dict().items()}


def random_tensors(shapes: dict[str, tuple], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random values everywhere: weights ~ N(0, 1/fan_in), BN variances positive, batch counters ints."""
    out = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(int(torch.randint(1, 10**6, (), generator=gen)), dtype=torch.long)
        elif k.endswith("running_var") or k.endswith(".window") or k.endswith(".fb"):
            out[k] = torch.rand(shape, generator=gen) + 0.5
        elif len(shape) >= 2:
            out[k] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        else:
            out[k] = torch.randn(shape, generator=gen) * 0.1
    return out


def blat_state_dict(
    channels=CNN14_CHANNELS, audio_embed=2048, bert=BERT_MEDIUM, embed=1024, seed=0, logit_scale_shape=()
) -> dict[str, torch.Tensor]:
    """The released BLAT state_dict layout, random values."""
    hidden = bert["hidden_size"]
    shapes = {
        "audio_encoder.melspec_extractor.spectrogram.window": (1024,),
        "audio_encoder.melspec_extractor.mel_scale.fb": (513, 64),
        **cnn14_shapes("audio_encoder.", channels, 64, audio_embed),
        **bert_shapes("text_encoder.model.", **bert),
        "audio_proj.weight": (embed, audio_embed),
        "audio_proj.bias": (embed,),
        "text_proj.weight": (embed, hidden),
        "text_proj.bias": (embed,),
    }
    gen = torch.Generator().manual_seed(seed)
    sd = random_tensors(shapes, gen)
    sd["text_encoder.model.embeddings.position_ids"] = torch.arange(512, dtype=torch.long)[None]  # old saves hold it
    sd["logit_scale"] = (torch.rand((), generator=gen) + 2.0).reshape(logit_scale_shape)
    return sd


def save_blat(sd, path, **extra):
    torch.save(
        {
            "state_dict": sd,
            "epoch": 3,
            "iteration": 100,
            "monitor_best": 0.5,
            "config": {
                "model": {"audio_encoder": "Cnn14", "text_encoder": "prajjwal1/bert-medium"},
                "optimizer": {"lr": 1e-4},
            },
            **extra,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def blat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("blat") / "blat_cnn14_bertm.pth"
    save_blat(blat_state_dict(), path)  # ~124M params, ~0.5 GB; freed once written
    return path


@pytest.fixture(scope="module")
def imported(blat_file):
    return import_blat_checkpoint(blat_file)


@pytest.fixture(scope="module")
def file_sd(blat_file):
    return torch.load(blat_file, map_location="cpu", weights_only=True, mmap=True)["state_dict"]


# ---------------------------------------------------------------- the released BLAT model, paper size


def test_blat_file_has_the_published_layout(file_sd):
    """Guard the fixture itself: the shapes FIELD_NOTES lists and the keys the importer must drop."""
    assert file_sd["audio_encoder.melspec_extractor.spectrogram.window"].shape == (1024,)
    assert file_sd["audio_encoder.melspec_extractor.mel_scale.fb"].shape == (513, 64)
    assert file_sd["audio_encoder.conv_block6.conv2.weight"].shape == (2048, 2048, 3, 3)
    assert file_sd["audio_proj.weight"].shape == (1024, 2048) and file_sd["text_proj.weight"].shape == (1024, 512)
    assert file_sd["text_encoder.model.embeddings.word_embeddings.weight"].shape == (30522, 512)
    assert file_sd["logit_scale"].shape == ()
    assert all(k in file_sd for k in DROPPED)
    n = sum(v.numel() for k, v in file_sd.items() if k not in DROPPED)
    assert 123e6 < n < 124.5e6  # "about 123.7M parameters"


def test_blat_every_tensor_lands_where_it_should(imported, file_sd):
    model_sd = imported.state_dict()
    kept = {k for k in file_sd if k not in DROPPED}
    assert set(model_sd) == kept, (sorted(set(model_sd) - kept), sorted(kept - set(model_sd)))
    wrong = [
        k for k in sorted(kept) if model_sd[k].dtype != file_sd[k].dtype or not torch.equal(model_sd[k], file_sd[k])
    ]
    assert not wrong, f"tensors that differ from the file: {wrong}"


def test_blat_config_read_off_the_shapes(imported):
    cfg = imported.cfg
    assert cfg.audio.channels == CNN14_CHANNELS and cfg.audio.embed_dim == 2048 and cfg.embed_dim == 1024
    assert cfg.audio.frontend.n_mels == 64 and cfg.audio.frontend.n_fft == 1024
    hf = imported.text_encoder.model.config
    assert (hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.intermediate_size, hf.vocab_size) == (
        512,
        8,
        8,
        2048,
        30522,
    )
    assert cfg.text.pooling == "cls" and cfg.text.max_tokens == 30
    assert not imported.training


def test_blat_logit_scale_is_the_files(imported, file_sd):
    assert imported.logit_scale.shape == ()
    assert imported.logit_scale.item() == file_sd["logit_scale"].item()


def test_blat_imported_model_runs(imported):
    torch.manual_seed(0)
    wave = torch.randn(2, 32_000) * 0.1
    with torch.no_grad():
        a = imported.encode_audio(wave, torch.tensor([32_000, 20_000]))
        t = imported.encode_texts(["a dog barks", "a man is speaking", "birds are chirping"])
    assert a.shape == (2, 1024) and t.shape == (3, 1024)
    assert torch.isfinite(a).all() and torch.isfinite(t).all()
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))


def test_blat_text_tower_matches_hf_bert_with_the_files_weights(imported, file_sd):
    """An independent path: HF BertModel loaded with the file's text weights, [CLS], text_proj, L2 norm."""
    prefix = "text_encoder.model."
    with torch.device("meta"):  # no random init: every weight comes from the file (assign=True)
        bert = transformers.BertModel(transformers.BertConfig(**BERT_MEDIUM), add_pooling_layer=True)
    sub = {k[len(prefix) :]: v for k, v in file_sd.items() if k.startswith(prefix) and k not in DROPPED[:1]}
    bert.load_state_dict(sub, strict=True, assign=True)
    bert.eval()
    tok = imported.text_encoder.tokenize(["a dog barks", "birds are chirping in the trees at dawn"])
    ids = tok["input_ids"]
    with torch.no_grad():  # positions and segment ids given explicitly: BERT's buffers for them stayed on meta
        cls = bert(
            **tok, token_type_ids=torch.zeros_like(ids), position_ids=torch.arange(ids.shape[1])[None].expand_as(ids)
        ).last_hidden_state[:, 0]
        want = F.normalize(cls @ file_sd["text_proj.weight"].T + file_sd["text_proj.bias"], dim=-1)
        got = imported.encode_text(**tok)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- BLAT layout, scaled down: shapes and failures


def small_blat(tmp_path, name="small.pth", edit=None, **kw):
    sd = blat_state_dict(SMALL_CHANNELS, 64, SMALL_BERT, 32, **kw)
    if edit:
        edit(sd)
    return save_blat(sd, tmp_path / name), sd


@pytest.mark.parametrize("logit_scale_shape", [(), (1,)])
def test_blat_small_layout_sizes_come_from_the_file(tmp_path, logit_scale_shape):
    path, sd = small_blat(tmp_path, logit_scale_shape=logit_scale_shape)
    model = import_blat_checkpoint(path)
    assert model.cfg.audio.channels == SMALL_CHANNELS and model.cfg.audio.embed_dim == 64 and model.cfg.embed_dim == 32
    assert model.text_encoder.model.config.num_hidden_layers == 2 and model.text_encoder.hidden_size == 64
    got = model.state_dict()
    assert set(got) == set(sd) - set(DROPPED)
    for k, v in got.items():
        assert torch.equal(v, sd[k].reshape(v.shape)), k


def test_blat_bare_state_dict_is_accepted(tmp_path):
    sd = blat_state_dict(SMALL_CHANNELS, 64, SMALL_BERT, 32)
    torch.save(sd, tmp_path / "bare.pth")
    model = import_blat_checkpoint(tmp_path / "bare.pth")
    assert torch.equal(model.state_dict()["audio_proj.weight"], sd["audio_proj.weight"])


def rename(old, new):
    def edit(sd):
        sd[new] = sd.pop(old)

    return edit


@pytest.mark.parametrize(
    "old, new",
    [
        ("audio_encoder.fc1.weight", "audio_encoder.fc_1.weight"),
        ("audio_encoder.conv_block3.conv1.weight", "audio_encoder.conv_block3.conv_1.weight"),
        ("audio_encoder.bn0.weight", "audio_encoder.bn_0.weight"),
        (
            "text_encoder.model.encoder.layer.0.intermediate.dense.weight",
            "text_encoder.model.encoder.layer.0.intermediate.dense_.weight",
        ),
        ("text_encoder.model.embeddings.word_embeddings.weight", "text_encoder.model.embeddings.word_embedding.weight"),
        ("text_proj.bias", "text_projection.bias"),
        ("logit_scale", "logit_scale_"),
    ],
)
def test_blat_renamed_key_lists_missing_and_unexpected(tmp_path, old, new):
    path, _ = small_blat(tmp_path, edit=rename(old, new))
    with pytest.raises(CheckpointError) as err:
        import_blat_checkpoint(path)
    msg = str(err.value)
    assert "missing keys (1): " + old in msg and "unexpected keys (1): " + new in msg, msg


@pytest.mark.parametrize(
    "key, shape, model_shape",
    [
        ("audio_encoder.conv_block2.conv2.weight", (16, 16, 5, 5), (16, 16, 3, 3)),
        ("text_encoder.model.encoder.layer.1.attention.self.key.bias", (63,), (64,)),
        ("logit_scale", (2,), ()),
    ],
)
def test_blat_wrong_shape_is_named(tmp_path, key, shape, model_shape):
    def edit(sd):
        sd[key] = torch.zeros(shape)

    path, _ = small_blat(tmp_path, edit=edit)
    with pytest.raises(CheckpointError) as err:
        import_blat_checkpoint(path)
    assert f"shape mismatches (1): {key}: file {shape} vs model {model_shape}" in str(err.value), str(err.value)


def test_blat_extra_key_is_unexpected(tmp_path):
    def edit(sd):
        sd["audio_encoder.fc_audioset.weight"] = torch.zeros(527, 64)

    path, _ = small_blat(tmp_path, edit=edit)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): audio_encoder\.fc_audioset\.weight"):
        import_blat_checkpoint(path)


def test_blat_without_state_dict_fails_clearly(tmp_path):
    path = tmp_path / "no_sd.pth"
    torch.save({"epoch": 3, "iteration": 100, "monitor_best": 0.5, "config": {}}, path)
    with pytest.raises(CheckpointError, match="state_dict") as err:
        import_blat_checkpoint(path)
    assert str(path) in str(err.value)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="state_dict"):
        import_blat_checkpoint(path)
    torch.save({"model": {"fc1.weight": torch.zeros(2, 2)}}, path)  # a PANNs file passed by mistake
    with pytest.raises(CheckpointError, match=r"'state_dict'.*\['model'\]"):
        import_blat_checkpoint(path)


def test_blat_state_dict_without_a_tower_says_which(tmp_path):
    sd = blat_state_dict(SMALL_CHANNELS, 64, SMALL_BERT, 32)
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("audio_encoder.")}}, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="no CNN14 audio encoder under 'audio_encoder.'"):
        import_blat_checkpoint(tmp_path / "a.pth")
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("text_encoder.")}}, tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match="no BERT text encoder under 'text_encoder.model.'"):
        import_blat_checkpoint(tmp_path / "t.pth")


def test_blat_not_a_torch_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"definitely not a pickle")
    with pytest.raises(CheckpointError, match="cannot read as a torch checkpoint"):
        import_blat_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        import_blat_checkpoint(tmp_path / "absent.pth")


def test_blat_tokenizer_must_match_the_vocabulary(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel({"[PAD]": 0, "[UNK]": 1, "dog": 2}, unk_token="[UNK]"))
    tok.save(str(tmp_path / "tokenizer.json"))
    path, _ = small_blat(tmp_path)
    with pytest.raises(CheckpointError, match="3 tokens.*30522"):
        import_blat_checkpoint(path, tokenizer=str(tmp_path / "tokenizer.json"))


# ---------------------------------------------------------------- PANNs CNN14


def panns_file(path, channels=CNN14_CHANNELS, embed=2048, drop=(), seed=1, **extra):
    shapes = {
        **cnn14_shapes("", channels, 64, embed),
        "spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
        "spectrogram_extractor.stft.conv_imag.weight": (513, 1, 1024),
        "logmel_extractor.melW": (1025, 64),  # deliberately unlike ours: ignored
        "fc_audioset.weight": (527, embed),
        "fc_audioset.bias": (527,),
    }
    sd = random_tensors({k: v for k, v in shapes.items() if k not in drop}, torch.Generator().manual_seed(seed))
    torch.save({"model": sd, "iteration": 660000, **extra}, path)
    return sd


def test_panns_into_paper_size_cnn14(tmp_path):
    torch.manual_seed(0)
    encoder = Cnn14(blat.get_model_config("blat-cnn14-bertm").audio)
    front = {k: v.clone() for k, v in encoder.state_dict().items() if k.startswith("melspec_extractor.")}
    assert front  # window and mel filterbank buffers
    sd = panns_file(tmp_path / "Cnn14_mAP=0.431.pth")
    assert import_panns_cnn14(tmp_path / "Cnn14_mAP=0.431.pth", encoder) is encoder
    got = encoder.state_dict()
    kept = {k for k in sd if not k.startswith(("spectrogram_extractor.", "logmel_extractor.", "fc_audioset."))}
    assert set(got) == kept | set(front)
    wrong = [k for k in sorted(kept) if not torch.equal(got[k], sd[k])]
    assert not wrong, wrong
    for k, v in front.items():
        assert torch.equal(got[k], v), f"{k} changed: the encoder's own front end must be kept"


def test_panns_missing_conv_key_is_named(tmp_path):
    encoder = Cnn14(blat.config.AudioEncoderConfig(channels=(8, 16, 32), embed_dim=32))
    panns_file(tmp_path / "cnn.pth", (8, 16, 32), 32, drop=("conv_block2.conv1.weight",))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): conv_block2\.conv1\.weight"):
        import_panns_cnn14(tmp_path / "cnn.pth", encoder)


def test_panns_size_mismatch_is_named(tmp_path):
    encoder = Cnn14(blat.config.AudioEncoderConfig(channels=(8, 16, 32), embed_dim=32))
    panns_file(tmp_path / "cnn.pth", (8, 16, 32), 48)
    with pytest.raises(CheckpointError, match=r"fc1\.weight: file \(48, 32\) vs model \(32, 32\)"):
        import_panns_cnn14(tmp_path / "cnn.pth", encoder)


def test_panns_without_model_dict(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="'model'"):
        import_panns_cnn14(tmp_path / "x.pth", Cnn14(blat.config.AudioEncoderConfig(channels=(8, 16, 32))))


# ---------------------------------------------------------------- weights_only


class Opaque:
    """A custom class: torch.load(weights_only=True) refuses to unpickle it."""

    def __init__(self, value=1):
        self.value = value


def test_custom_pickled_class_needs_trusted(tmp_path):
    small = (8, 16, 32)
    sd = panns_file(tmp_path / "cnn.pth", small, 32, extra_state=Opaque())
    with pytest.raises(CheckpointError, match=r"trusted=True"):
        import_panns_cnn14(tmp_path / "cnn.pth", Cnn14(blat.config.AudioEncoderConfig(channels=small, embed_dim=32)))
    encoder = import_panns_cnn14(
        tmp_path / "cnn.pth", Cnn14(blat.config.AudioEncoderConfig(channels=small, embed_dim=32)), trusted=True
    )
    assert torch.equal(encoder.state_dict()["fc1.weight"], sd["fc1.weight"])

    path, _ = small_blat(tmp_path, name="blat_opaque.pth")
    raw = torch.load(path, weights_only=True)
    raw["config"] = Opaque()  # any non-tensor, non-builtin object in the pickle
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"trusted=True"):
        import_blat_checkpoint(path)
    assert import_blat_checkpoint(path, trusted=True).cfg.audio.channels == SMALL_CHANNELS
