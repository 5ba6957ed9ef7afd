"""Data the pipeline-stage tests share, built once per test process (functools.cache; kept out of conftest.py so
several test modules can import it): the real `ci` corpus, tiny scene sets and tiny trained captioners.

The `ci` corpus needs its five .debs in <repo>/.cache/corpus (downloaded by apt-get on first use); without them and
without apt-get the tests that use it are skipped. `synthetic_corpus` needs nothing.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import shutil
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[3]
CORPUS_CACHE = REPO / ".cache" / "corpus"
SR = 32_000


def _tmpdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"blat-test-{prefix}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@cache
def ci_corpus() -> Path:
    """The real ci corpus (~500 clips) -> its manifest.jsonl."""
    from blat.pipeline import sources
    from blat.pipeline.corpus import build_corpus

    cached = all(any((CORPUS_CACHE / "debs").glob(f"{p}_*.deb")) for p in sources.SIZES["ci"])
    if not cached and (shutil.which(sources.APT_GET) is None or shutil.which(sources.DPKG_DEB) is None):
        pytest.skip("needs apt-get and dpkg-deb (or the ci .debs already in .cache/corpus/debs)")
    out = _tmpdir("ci-corpus")
    build_corpus(sources.SIZES["ci"], out, CORPUS_CACHE, jobs=2)
    return out / "manifest.jsonl"


TINY = dict(n_captioned=48, n_tags_only=24, n_test_scenes=8, canvas_s=2.0)


@cache
def tiny_scenes() -> Path:
    """Scenes from the real ci corpus: 48 captioned, 24 tags-only, 8 test scenes of 2 s (+ every test-source clip)."""
    from blat.pipeline.scenes import make_scenes
    from blat.pipeline.stages import ScenesConfig

    return make_scenes(ci_corpus(), _tmpdir("scenes"), ScenesConfig(**TINY))


@cache
def tiny_captioner(use_tags: bool = True, epochs: int = 12) -> Path:
    """A tiny-captioner trained on tiny_scenes()' captioned split -> checkpoint path."""
    from blat.pipeline.stages import CaptionerConfig
    from blat.pipeline.train_captioner import train_captioner

    cfg = CaptionerConfig(
        arch="tiny-captioner", use_tags=use_tags, epochs=epochs, batch_size=30, lr=2e-3, seed=0, num_threads=1
    )  # 1 thread: robust when other tests share the 2 cores
    return train_captioner(tiny_scenes(), _tmpdir("captioner") / "captioner.safetensors", cfg, progress=False)


# A synthetic corpus: (tags, kind, seconds, takes); kinds are tones at distinct pitches, clicks and noise beds.
SYNTHETIC = [
    (["Dog", "Bark"], 440.0, 0.6, 3),
    (["Door"], "click", 0.4, 3),
    (["Bell"], 1200.0, 0.8, 3),
    (["Computer keyboard", "Typing"], "click", 0.3, 4),
    (["Siren"], 700.0, 1.2, 3),
    (["Cat", "Meow"], 900.0, 0.7, 3),
    (["Rain"], "noise", 3.0, 3),
    (["Wind"], "noise", 2.5, 3),
    (["Car"], 150.0, 1.5, 3),
    (["Bird"], 3000.0, 0.5, 3),
]


def _synth(kind, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    if kind == "noise":
        return (0.2 * rng.standard_normal(len(t))).astype(np.float32)
    if kind == "click":
        x = np.zeros(len(t))
        x[:: SR // 20][:4] = 0.8
        return np.convolve(x, np.exp(-np.arange(200) / 30.0))[: len(t)].astype(np.float32)
    env = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)  # 20 ms ramps
    return (0.5 * env * np.sin(2 * np.pi * kind * t)).astype(np.float32)


def synthetic_corpus(out: Path, seed: int = 0) -> Path:
    """A corpus-shaped folder (manifest.jsonl + FLACs) of synthetic sounds, several takes per source."""
    rng = np.random.default_rng(seed)
    rows = []
    for tags, kind, seconds, takes in SYNTHETIC:
        name = tags[0].split(",")[0].lower().replace(" ", "-")
        for src in range(2):
            for take in range(takes):
                cid = f"synth/{name}-{src}-{take}"
                wave = _synth(kind, seconds * (1 + 0.1 * take), rng)
                (out / "audio" / "synth").mkdir(parents=True, exist_ok=True)
                sf.write(str(out / "audio" / f"{cid}.flac"), wave, SR, format="FLAC", subtype="PCM_16")
                rows.append(
                    {
                        "id": cid,
                        "audio": f"audio/{cid}.flac",
                        "duration": round(len(wave) / SR, 3),
                        "tags": tags,
                        "captions": [],
                        "caption_hint": "",
                        "split": "unassigned",
                        "package": "synth",
                        "path": f"{name}/{src}/{take}.flac",
                        "source": f"synth:{name}-{src}",
                        "licence": "CC0",
                    }
                )
    with open(out / "manifest.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return out / "manifest.jsonl"


def scenes_config(**overrides):
    from blat.pipeline.stages import ScenesConfig

    return dataclasses.replace(ScenesConfig(**TINY), **overrides)


def tiny_frozen_recipe(tmp_path: Path, **overrides):
    """A whole-pipeline recipe small enough for a test: tiny towers kept frozen, one epoch per stage, on scenes
    made from `synthetic_corpus` (24 captioned, 16 tags-only, 6 test scenes + single events)."""
    from blat.pipeline.recipe import Recipe
    from blat.pipeline.scenes import make_scenes
    from blat.pipeline.stages import CaptionerConfig, CaptioningConfig, PretrainConfig

    corpus = synthetic_corpus(tmp_path / "corpus")
    manifest = make_scenes(
        corpus,
        tmp_path / "scenes",
        scenes_config(n_captioned=24, n_tags_only=16, n_test_scenes=6, canvas_s=2.0, source_events=True),
    )
    return Recipe(
        name="tiny",
        manifest=str(manifest),
        captioner=CaptionerConfig(
            arch="tiny-captioner", epochs=1, batch_size=16, clip_s=2.0, tower_lr_scale=0.0, num_threads=1
        ),
        captioning=CaptioningConfig(beam_size=1, batch_size=16, num_threads=1),
        pretrain=PretrainConfig(
            model="tiny-dual",
            freeze_text=True,
            tower_lr_scale=0.0,
            epochs=1,
            batch_size=8,
            clip_seconds=2.0,
            val_size=4,
            num_threads=1,
            log_every=1000,
        ),
        **overrides,
    )
