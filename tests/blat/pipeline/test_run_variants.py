"""Which pre-training text the exported model is trained on: the recipe's `release_variant`, including a variant
joined from two others (the tag-guided captioner's captions and the clip's tag templates)."""

from __future__ import annotations

import json

import pytest

from blat.pipeline.recipe import Recipe
from blat.pipeline.run import join_captions, run_pipeline

from .pipeline_data import tiny_frozen_recipe

# Stage 2 runs on Ray: the session's cluster, so a worker process never starts a second Ray after a first.
pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_release_variant_must_be_known():
    with pytest.raises(ValueError, match="release_variant must be one of"):
        Recipe(release_variant="tag-guided")


def test_join_captions_keeps_every_row_of_every_part(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"id": "x", "caption": "a dog barks"}\n{"id": "y", "caption": "rain"}')  # no final newline
    b.write_text('{"id": "x", "caption": "the sound of dog"}\n\n')
    joined = join_captions([a, b], tmp_path / "j" / "captions.jsonl")
    rows = [json.loads(line) for line in joined.read_text().splitlines()]
    assert [(r["id"], r["caption"]) for r in rows] == [("x", "a dog barks"), ("y", "rain"), ("x", "the sound of dog")]
    assert not list(joined.parent.glob("*.partial"))


def test_joined_variant_is_trained_and_exported(tmp_path):
    recipe = tiny_frozen_recipe(tmp_path, release_variant="tag_guided+templates")
    out = tmp_path / "run"
    report = run_pipeline(recipe, out, command="pytest")
    assert list(report["variants"]) == ["tag_guided+templates"]  # no ablation: only the released variant trains
    captions = out / "captions"
    joined = [json.loads(line) for line in (captions / "tag_guided+templates-tags_only" / "captions.jsonl").open()]
    parts = {
        name: [json.loads(line) for line in (captions / f"{name}-tags_only" / "captions.jsonl").open()]
        for name in ("tag_guided", "templates")
    }
    assert joined == parts["tag_guided"] + parts["templates"]
    assert {r["provenance"]["mode"] for r in joined} == {"captioner", "templates"}
    assert report["variants"]["tag_guided+templates"]["synthetic_captions"].endswith(
        "tag_guided+templates-tags_only/captions.jsonl"
    )
    pretrain_report = json.loads((out / "dual-tag_guided+templates" / "report.json").read_text())
    assert pretrain_report["train_pairs"] > 0
    assert (out / "model" / "dual.safetensors").read_bytes() == (
        out / "dual-tag_guided+templates" / "dual.safetensors"
    ).read_bytes()
    assert json.loads((out / "model" / "metrics.json").read_text())["variant"] == "tag_guided+templates"
    card = (out / "model" / "MODEL_CARD.md").read_text()
    assert "variant `tag_guided+templates`" in card and "template captions of each clip's tags" in card

    # `python -m blat_export release` on that run: the released variant's metrics, the recipe and the command in the
    # card
    from blat_export.__main__ import main as export_main
    from blat_export.release import read_release

    assert (
        export_main(
            [
                "release",
                "--run",
                str(out),
                "--out",
                str(tmp_path / "rel" / "1"),
                "--name",
                "tiny",
                "--version",
                "1",
                "--command",
                "make train RECIPE=tiny",
            ]
        )
        == 0
    )
    release = read_release(tmp_path / "rel" / "1")
    assert release.metrics["variant"] == "tag_guided+templates"
    assert release.metrics["tag_guided+templates"] == report["variants"]["tag_guided+templates"]["evaluation"]
    card = (tmp_path / "rel" / "1" / "MODEL_CARD.md").read_text()
    assert "`make train RECIPE=tiny`" in card and '"release_variant": "tag_guided+templates"' in card
    assert "## Evaluation" in card and "tag_guided+templates" in card.split("## Evaluation")[1]
