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

from blat.pipeline.stages import CaptionerConfig, CaptioningConfig, EvalConfig, PretrainConfig, ScenesConfig
from blat_contract.config import from_dict

RECIPES_DIR = Path(__file__).parent / "recipes"


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
