"""The bundle contract: what `export` writes and the server reads. `read_bundle` checks it before serving.

A bundle is a directory: ONNX graphs, tokenizer.json, vocab.json (captioner), labels.npz and bundle.json,
whose `files` maps every other file to its sha256.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blat_contract.audio import FrontEndConfig
from blat_contract.config import ConfigError, from_dict, to_dict

BUNDLE_FORMAT = "blat-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST = "bundle.json"


class BundleError(ValueError):
    """A bundle directory is incomplete, altered, or of an unknown format."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy dtype name: float32 or int64
    shape: tuple[str | int, ...]  # symbolic axes (B, N, L, T, S, ...) are strings


@dataclass(frozen=True)
class GraphInfo:
    file: str  # ONNX file inside the bundle
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class AudioSpec:
    frontend: FrontEndConfig  # inside audio_encoder.onnx; the server only decodes, downmixes, resamples
    min_samples: int  # shorter clips must be zero-padded (lengths keep the true size)
    frame_seconds: float  # seconds per row of `frames` (windowed tagging)
    clip_seconds: float  # training crop length

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate


@dataclass(frozen=True)
class TextSpec:
    tokenizer: str  # tokenizer.json, loaded with the `tokenizers` library
    max_tokens: int  # truncation length incl. [CLS]/[SEP]
    pad_id: int = 0


@dataclass(frozen=True)
class LabelSpec:
    file: str  # labels.npz: names (K,), text_embeddings (K, D), scale (K,), bias (K,)
    prompt_template: str  # e.g. "this is a sound of {label}"
    calibration: str  # how scale/bias were fitted; score = sigmoid(scale * cosine + bias)
    count: int


@dataclass(frozen=True)
class TaggerSpec:
    """A supervised AudioSet head (graph audio_tagger): per-class probabilities for `labels`, in output order."""

    labels: tuple[str, ...]  # AudioSet display names (a subset of the 527) of the K outputs
    source: str  # what the head is (network, training data, licence)
    pooling: str  # how a clip's score comes from its frames
    # Share of the zero-shot score in the labels the head knows: p = (1 - w) * head + w * zero-shot (0: the head
    # alone). The release chooses it (release.json `tagger_zero_shot_weight`); /v1/tag names the mix `tagger+zero_shot`.
    zero_shot_weight: float = 0.0


@dataclass(frozen=True)
class CaptionerSpec:
    vocab: str  # vocab.json: a list of tokens, pad/start/end/unk first
    max_tokens: int  # words per caption
    beam_size: int  # default decoding
    use_tags: bool  # whether the captioner reads the 527-d tag vector
    n_tags: int = 527


@dataclass(frozen=True)
class BundleManifest:
    name: str
    version: str
    created: str  # ISO 8601 UTC
    embedding_dim: int
    logit_scale: float  # exp() already applied: multiply cosines by it for softmax logits
    audio: AudioSpec
    text: TextSpec
    labels: LabelSpec
    graphs: dict[str, GraphInfo]
    files: dict[str, str]  # file name -> sha256 hex, for every file but bundle.json
    captioner: CaptionerSpec | None = None
    tagger: TaggerSpec | None = None  # None: every label is scored zero-shot through the label bank
    source: dict[str, Any] = field(default_factory=dict)  # checkpoints it came from (path, sha256, meta)
    metrics: dict[str, Any] = field(default_factory=dict)  # evaluation results when known
    format: str = BUNDLE_FORMAT
    format_version: int = BUNDLE_FORMAT_VERSION

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(bundle_dir: Path, manifest: BundleManifest) -> Path:
    path = Path(bundle_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_dict(manifest), indent=2) + "\n")
    tmp.replace(path)
    return path


def read_bundle(bundle_dir: str | Path, verify: bool = True) -> BundleManifest:
    """Parse bundle.json; with `verify`, every listed file must exist with its recorded sha256."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST} (not a model bundle)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: invalid JSON: {e}") from None
    if raw.get("format") != BUNDLE_FORMAT or int(raw.get("format_version", 0)) > BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{path}: format {raw.get('format')!r} v{raw.get('format_version')} is not "
            f"{BUNDLE_FORMAT} v<={BUNDLE_FORMAT_VERSION}"
        )
    try:
        manifest = from_dict(BundleManifest, raw, where=str(path))
    except (ConfigError, TypeError, ValueError) as e:
        raise BundleError(str(e)) from None
    needed = {g.file for g in manifest.graphs.values()} | {manifest.text.tokenizer, manifest.labels.file}
    if manifest.captioner:
        needed.add(manifest.captioner.vocab)
    if manifest.tagger and "audio_tagger" not in manifest.graphs:
        raise BundleError(f"{path}: a tagger is declared but there is no audio_tagger graph")
    unlisted = sorted(needed - set(manifest.files))
    if unlisted:
        raise BundleError(f"{path}: files used but not hashed: {unlisted}")
    if verify:
        verify_files(bundle_dir, manifest.files, MANIFEST, BundleError)
    return manifest


def verify_files(folder: Path, files: dict[str, str], listed_in: str, error: type[Exception] = BundleError) -> None:
    """Every file of `files` (name -> sha256) must exist in `folder` with that digest."""
    for name, digest in sorted(files.items()):
        f = Path(folder) / name
        if not f.is_file():
            raise error(f"{folder}: missing file {name}")
        actual = sha256_file(f)
        if actual != digest:
            raise error(
                f"{folder}: {name} has sha256 {actual[:12]}..., {listed_in} says {digest[:12]}... "
                "(file altered or partly copied)"
            )


@dataclass(frozen=True)
class LabelBank:
    """Label names with text embeddings and per-label calibration: score = sigmoid(scale * cosine + bias)."""

    names: tuple[str, ...]
    embeddings: np.ndarray  # (K, D) float32, unit norm
    scale: np.ndarray  # (K,)
    bias: np.ndarray  # (K,)

    def save(self, path: Path) -> None:
        np.savez(
            path,
            names=np.array(self.names),
            text_embeddings=self.embeddings.astype(np.float32),
            scale=self.scale.astype(np.float32),
            bias=self.bias.astype(np.float32),
        )

    @classmethod
    def load(cls, path: Path) -> LabelBank:
        with np.load(path, allow_pickle=False) as z:
            return cls(tuple(str(n) for n in z["names"]), z["text_embeddings"], z["scale"], z["bias"])

    def scores(self, audio_embeddings: np.ndarray) -> np.ndarray:
        """(B, D) unit-norm audio embeddings -> (B, K) independent per-label probabilities."""
        logits = (audio_embeddings @ self.embeddings.T) * self.scale + self.bias
        return 1.0 / (1.0 + np.exp(-logits))
