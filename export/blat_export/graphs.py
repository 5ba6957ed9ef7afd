"""The torch modules that become the bundle's ONNX graphs, and their export with the dynamo exporter.

Each wrapper fixes one graph's tensor names and shapes; `GRAPH_SPECS` is the contract the server reads
back from bundle.json. Dynamic axes: B (batch), N (samples), L (tokens), T (frames), S (steps).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from blat.models import DualEncoder, TagGuidedCaptioner
from blat.models.dual import NORM_EPS

log = logging.getLogger(__name__)
OPSET = 18


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[str | int, ...]  # symbolic axes are strings

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


class AudioEncoderGraph(nn.Module):
    """waveform (B, N), lengths (B,) -> audio_embedding (B, D) unit norm, frames (B, T, C), frame_lengths (B,)."""

    def __init__(self, model: DualEncoder):
        super().__init__()
        self.encoder, self.proj = model.audio_encoder, model.audio_proj

    def forward(self, waveform, lengths):
        frames, valid = self.encoder.frames(waveform, lengths)
        emb = nn.functional.normalize(self.proj(self.encoder.pool(frames, valid)), dim=-1, eps=NORM_EPS)
        return emb, frames, valid


class AudioPoolGraph(nn.Module):
    """frames (B, T, C), frame_lengths (B,) -> audio_embedding (B, D): the audio encoder's head alone, so windowed
    tagging pools any span of a long clip's frames without re-running the CNN."""

    def __init__(self, model: DualEncoder):
        super().__init__()
        self.encoder, self.proj = model.audio_encoder, model.audio_proj

    def forward(self, frames, frame_lengths):
        return nn.functional.normalize(self.proj(self.encoder.pool(frames, frame_lengths)), dim=-1, eps=NORM_EPS)


class AudioTaggerGraph(nn.Module):
    """frames (B, T, C), frame_lengths (B,) -> class_probs (B, K): the tower's supervised AudioSet head (towers that
    carry one), on the same frames the audio encoder returns."""

    def __init__(self, model: DualEncoder):
        super().__init__()
        self.encoder = model.audio_encoder

    def forward(self, frames, frame_lengths):
        return self.encoder.class_probs(frames, frame_lengths)


def has_tagger(model: DualEncoder) -> bool:
    """Whether the dual encoder's audio tower carries a supervised head (exported as the audio_tagger graph)."""
    return bool(model.cfg.audio.head_classes)


class TextEncoderGraph(nn.Module):
    """input_ids, attention_mask (B, L) int64 -> text_embedding (B, D) unit norm."""

    def __init__(self, model: DualEncoder):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.encode_text(input_ids, attention_mask)


class CaptionerEncoderGraph(nn.Module):
    """waveform (B, N), lengths (B,), tags (B, 527) -> memory (B, T, d), memory_lengths (B,), tag_vector (B, d)."""

    def __init__(self, model: TagGuidedCaptioner):
        super().__init__()
        self.model = model

    def forward(self, waveform, lengths, tags):
        return self.model.encode(waveform, lengths, tags)


class CaptionerDecoderGraph(nn.Module):
    """tokens (S, L), memory (S, T, d), memory_lengths (S,), tag_vector (S, d) -> log_probs (S, V) of the next token."""

    def __init__(self, model: TagGuidedCaptioner):
        super().__init__()
        self.model = model

    def forward(self, tokens, memory, memory_lengths, tag_vector):
        logits = self.model.decode(tokens, memory, memory_lengths, tag_vector)[:, -1]
        return torch.log_softmax(logits, dim=-1)


def _f(name, *shape):
    return TensorSpec(name, "float32", shape)


def _i(name, *shape):
    return TensorSpec(name, "int64", shape)


# graph name -> (inputs, outputs); D embedding dim, C frame channels, K head classes, d decoder width, V vocabulary
GRAPH_SPECS: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {
    "audio_encoder": (
        (_f("waveform", "B", "N"), _i("lengths", "B")),
        (_f("audio_embedding", "B", "D"), _f("frames", "B", "T", "C"), _i("frame_lengths", "B")),
    ),
    "audio_pool": ((_f("frames", "B", "T", "C"), _i("frame_lengths", "B")), (_f("audio_embedding", "B", "D"),)),
    "audio_tagger": ((_f("frames", "B", "T", "C"), _i("frame_lengths", "B")), (_f("class_probs", "B", "K"),)),
    "text_encoder": ((_i("input_ids", "B", "L"), _i("attention_mask", "B", "L")), (_f("text_embedding", "B", "D"),)),
    "captioner_encoder": (
        (_f("waveform", "B", "N"), _i("lengths", "B"), _f("tags", "B", 527)),
        (_f("memory", "B", "T", "d"), _i("memory_lengths", "B"), _f("tag_vector", "B", "d")),
    ),
    "captioner_decoder": (
        (_i("tokens", "S", "L"), _f("memory", "S", "T", "d"), _i("memory_lengths", "S"), _f("tag_vector", "S", "d")),
        (_f("log_probs", "S", "V"),),
    ),
}


def _example_inputs(name: str, model: nn.Module) -> tuple[torch.Tensor, ...]:
    """Shapes chosen so no dynamic axis is 0, 1 or equal to another (export would specialise on them)."""
    g = torch.Generator().manual_seed(0)
    if name in ("audio_encoder", "captioner_encoder"):
        audio_cfg = model.cfg.audio
        n = max(3 * audio_cfg.min_samples, audio_cfg.frontend.sample_rate) + 17
        wave = 0.1 * torch.randn(3, n, generator=g)
        lengths = torch.tensor([n, n - 1000, n // 2 + 3])
        if name == "audio_encoder":
            return wave, lengths
        tags = (torch.rand(3, 527, generator=g) < 0.01).float()
        return wave, lengths, tags
    if name in ("audio_pool", "audio_tagger"):
        c = model.cfg.audio.out_channels
        return torch.randn(3, 11, c, generator=g), torch.tensor([11, 7, 5])
    if name == "text_encoder":
        enc = model.text_encoder.tokenize(["a dog barks twice in the distance", "rain", "a man talks while cars pass"])
        return enc["input_ids"], enc["attention_mask"]
    if name == "captioner_decoder":
        d, s, t = model.cfg.d_model, 5, 13
        tokens = torch.randint(4, len(model.vocab), (s, 4), generator=g)
        tokens[:, 0] = 1
        return (
            tokens,
            torch.randn(s, t, d, generator=g),
            torch.tensor([13, 12, 9, 13, 6]),
            torch.randn(s, d, generator=g),
        )
    raise KeyError(name)


_WRAPPERS = {
    "audio_encoder": AudioEncoderGraph,
    "audio_pool": AudioPoolGraph,
    "audio_tagger": AudioTaggerGraph,
    "text_encoder": TextEncoderGraph,
    "captioner_encoder": CaptionerEncoderGraph,
    "captioner_decoder": CaptionerDecoderGraph,
}


def export_graph(name: str, model: nn.Module, path: str | Path) -> Path:
    """Export one graph of `model` (eval mode) to `path` with every symbolic axis dynamic."""
    inputs, outputs = GRAPH_SPECS[name]
    wrapper = _WRAPPERS[name](model).eval()
    example = _example_inputs(name, model)
    dynamic = tuple({i: Dim.AUTO for i, ax in enumerate(spec.shape) if isinstance(ax, str)} for spec in inputs)
    path = Path(path)
    log.info("exporting graph", extra={"graph": name, "path": str(path)})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            example,
            dynamo=True,
            opset_version=OPSET,
            dynamic_shapes=dynamic,
            verbose=False,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            optimize=True,
        )
    program.save(str(path), external_data=False)
    return path
