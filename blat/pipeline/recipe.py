"""Pipeline recipes: one JSON file per size (`blat/pipeline/recipes/ci.json`, `demo.json`, `paper.json`) with a
section per stage.

`load_recipe("ci")` reads the named preset (or a path to a JSON file) into a typed `Recipe`; unknown
keys are errors (blat_contract.config.from_dict). Each stage reads only its own section.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from blat.pipeline.evaluate import EvalConfig
from blat.pipeline.pretrain import PretrainConfig
from blat_contract.config import from_dict

RECIPES_DIR = Path(__file__).parent / "recipes"


# --- scenes / captioner / captioning sections: steps 2-4 (scenes.py, train_captioner.py, caption.py) ---


@dataclasses.dataclass(frozen=True)
class ScenesConfig:
    """Step 2: simulated scenes (an AudioCaps-like captioned split, an AudioSet-like tags-only split, test sets)."""

    n_captioned: int = 600  # scenes with reference captions: stage 1 trains the captioner on them
    n_tags_only: int = 1200  # scenes whose captions are held back: stage 2 captions them from audio + tags
    n_test_scenes: int = 150  # held-out scenes (test sources only); test_events = every test-source clip
    canvas_s: float = 5.0  # scene length, seconds
    sample_rate: int = 32000  # Hz, mono
    event_weights: tuple[float, ...] = (0.3, 0.4, 0.3)  # probability of 1, 2, 3, ... events per scene
    p_background: float = 0.5  # chance of an ambience bed under the events (when the split has one)
    p_overlap: float = 0.35  # chance that an event starts inside the previous one
    max_event_s: float = 4.0  # longest piece cut from an event clip (also <= canvas / number of events)
    background_min_s: float = 1.0  # shortest clip usable as a (looped) background
    event_level_db: tuple[float, float] = (-26.0, -16.0)  # RMS of each event, dBFS
    snr_db: tuple[float, float] = (3.0, 15.0)  # mean event level over the background's RMS, dB
    n_captions: int = 5  # reference captions per scene (AudioCaps eval / Clotho use 5)
    split_fractions: tuple[float, float, float] = (0.35, 0.45, 0.20)  # of sources: captioned, tags_only, test
    # The captioned and tags-only groups' own recordings also join their splits as single-event rows (ids
    # "<split>/e00000", cut to the canvas), as AudioCaps and AudioSet hold recordings, not only mixtures.
    source_events: bool = False
    seed: int = 0

    def __post_init__(self):
        if min(self.n_captioned, self.n_tags_only, self.n_test_scenes) < 0 or self.n_captioned == 0:
            raise ValueError("scene counts must be >= 0 and n_captioned >= 1")
        if not self.event_weights or min(self.event_weights) < 0 or sum(self.event_weights) <= 0:
            raise ValueError(f"event_weights must be non-negative with a positive sum, got {self.event_weights}")
        if len(self.split_fractions) != 3 or min(self.split_fractions) <= 0:
            raise ValueError(f"split_fractions needs 3 positive numbers, got {self.split_fractions}")
        if self.canvas_s <= 0 or self.max_event_s <= 0 or self.n_captions < 1:
            raise ValueError("canvas_s, max_event_s must be > 0 and n_captions >= 1")
        for name in ("event_level_db", "snr_db"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: low {lo} > high {hi}")


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
    """Step 3 (stage 1): train the tag-guided captioner on the captioned split (teacher forcing)."""

    arch: str = "small-captioner"  # a registry architecture (blat/model_configs/*.json with kind "captioner")
    use_tags: bool = True  # False trains the ablation "captioner without tags"
    # Std of the initial tag table. The word embeddings start at N(0, 1) (torch's default); the model's own 0.02
    # makes the added tag vector ~50x weaker than the words, and small runs then learn to ignore the tags.
    tag_init_std: float = 1.0
    min_count: int = 1  # words seen fewer times in the training captions become <unk>
    max_tokens: int = 20  # words per caption (longer captions are cut), BLAT's cap
    epochs: int = 10
    batch_size: int = 32  # caption pairs per step: batch_size // captions_per_clip clips, each with all its captions
    lr: float = 5e-4  # Adam, constant (the paper's setting)
    label_smoothing: float = 0.1
    clip_s: float = 10.0  # longer clips are randomly cropped to this many seconds
    # Learning-rate multiplier of the audio tower. 0 freezes it (a pretrained tower such as aisfx): eval mode, and
    # its frames computed once per clip when no clip is longer than clip_s.
    tower_lr_scale: float = 1.0
    tower_cache: str = ""  # folder for a frozen tower's per-clip frames, shared by runs and seeds ("" = none)
    seed: int = 0
    device: str = "cpu"  # "cuda" works too
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.min_count < 1 or self.max_tokens < 1:
            raise ValueError("epochs, batch_size, min_count, max_tokens must be >= 1 and lr > 0")
        if self.tower_lr_scale < 0:
            raise ValueError(f"tower_lr_scale must be >= 0, got {self.tower_lr_scale}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


CAPTIONING_MODES = ("captioner", "no_tags", "templates")


@dataclasses.dataclass(frozen=True)
class CaptioningConfig:
    """Step 4 (stage 2): caption the tags-only split with beam search; sharded and resumable."""

    mode: str = "captioner"  # captioner: audio + tags; no_tags: audio only (ablation b); templates: tags only (ablation c)
    split: str = "tags_only"  # which scene split to caption
    beam_size: int = 3
    max_tokens: int = 20  # words before the end token is forced
    length_penalty: float = 0.0  # GNMT alpha; 0 ranks by summed log-probability (BLAT)
    batch_size: int = 32  # clips per forward pass
    shard_size: int = 200  # rows per shard file (a killed run loses at most one shard)
    tower_cache: str = ""  # folder for the audio tower's per-clip frames, shared with stage 1 ("" = none)
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def __post_init__(self):
        if self.mode not in CAPTIONING_MODES:
            raise ValueError(f"captioning.mode must be one of {CAPTIONING_MODES}, got {self.mode!r}")
        if min(self.beam_size, self.max_tokens, self.batch_size, self.shard_size) < 1:
            raise ValueError("beam_size, max_tokens, batch_size and shard_size must be >= 1")


# Ablation variants of stage 2 -> stage 3: name -> the captioning mode that writes the tags-only split's texts.
VARIANTS = {"tag_guided": "captioner", "no_tags": "no_tags", "templates": "templates"}
# Pre-training texts joined from other variants: each tags-only clip pairs with its captions from every part (a
# training pair draws one of them). "tag_guided+templates": the tag-guided captioner's caption and the template
# caption of the clip's tags, both made from the tags the clip comes with.
JOINED = {"tag_guided+templates": ("tag_guided", "templates")}


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str = "ci"
    scenes: ScenesConfig = dataclasses.field(default_factory=ScenesConfig)
    captioner: CaptionerConfig = dataclasses.field(default_factory=CaptionerConfig)
    captioning: CaptioningConfig = dataclasses.field(default_factory=CaptioningConfig)
    corpus: str = "ci"  # Debian package set (blat/pipeline/sources.py SIZES)
    # A prebuilt scenes manifest (e.g. from python -m blat.pipeline.datasets; relative to the working directory).
    # When set, the corpus and scenes steps are skipped (and `corpus`, `scenes` unused); stages 1-4 read it.
    manifest: str = ""
    ablation: bool = False  # also pre-train on (b) untagged-captioner captions and (c) tags-only template text
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    evaluate: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    release_variant: str = "tag_guided"  # the variant whose dual encoder <out>/model/ holds (VARIANTS or JOINED)

    def __post_init__(self):
        if self.release_variant not in {**VARIANTS, **JOINED}:
            raise ValueError(f"release_variant must be one of {[*VARIANTS, *JOINED]}, got {self.release_variant!r}")


def with_overrides(section, args):
    """A recipe section with the command-line flags that name its fields (and were given) put in."""
    names = {f.name for f in dataclasses.fields(section)}
    return dataclasses.replace(section, **{k: v for k, v in vars(args).items() if k in names and v is not None})


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A preset name ("ci", "demo", "paper") or a path to a recipe JSON file."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.json"
    if not path.exists():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.json"))
        raise FileNotFoundError(f"no recipe {name_or_path!r}; presets: {known}")
    data: dict[str, Any] = json.loads(path.read_text())
    data.setdefault("name", path.stem)
    return from_dict(Recipe, data, where=str(path))


# --- pretrain/evaluate sections: added by the pretraining stage ---
