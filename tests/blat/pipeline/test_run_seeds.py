"""The pipeline over several seeds: one corpus and scene set, each seed's stages in its own folder, a report of
mean [min, max] over seeds, the exported model from the first seed, and the frozen-tower cache shared by all."""

from __future__ import annotations

import dataclasses
import json

import pytest

from blat.pipeline.run import run_pipeline

from .pipeline_data import tiny_frozen_recipe

# Stage 2 runs on Ray: the session's cluster, so a worker process never starts a second Ray after a first.
pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_seeds_run_apart_and_are_summarised(tmp_path):
    recipe = tiny_frozen_recipe(tmp_path)
    out = tmp_path / "run"
    report = run_pipeline(recipe, out, command="pytest", seeds=(3, 5))
    assert report["seeds"] == [3, 5]
    for n in (3, 5):
        seed_report = json.loads((out / f"seed-{n}" / "seed_report.json").read_text())
        cfg = json.loads((out / f"seed-{n}" / "dual-tag_guided" / "report.json").read_text())["config"]
        assert cfg["seed"] == n and cfg["tower_cache"] == str(out / "tower_cache")
        assert seed_report["variants"]["tag_guided"]["evaluation"]["protocols"]
    cell = report["summary"]["tag_guided"]["zero-shot acc"]
    assert len(cell["values"]) == 2 and cell["min"] <= cell["mean"] <= cell["max"]
    assert (out / "model" / "dual.safetensors").read_bytes() == (
        out / "seed-3" / "dual-tag_guided" / "dual.safetensors"
    ).read_bytes()
    assert "over seeds 3, 5" in (out / "report.md").read_text()
    # (random towers differ per seed, so each seed has its own files; a pretrained tower would share one)
    assert {p.name.split("-")[0] for p in (out / "tower_cache").iterdir()} == {"frames", "pooled"}
    again = run_pipeline(dataclasses.replace(recipe), out, command="pytest", seeds=(3, 5))  # everything done: reused
    assert again["summary"] == report["summary"]
