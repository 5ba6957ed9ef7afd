"""The caption-batching benchmark on the tiny bundle: every batch size captions every clip as one clip per call does
(the tiny captioner's captions are empty, so the log-probabilities carry the check: padding is masked by length), and
captions that do differ are reported, not hidden."""

from __future__ import annotations

import json

from tests.bench import load_bench

caption_batching = load_bench("caption_batching")

ARGS = ["--clips", "6", "--min-s", "0.5", "--max-s", "3", "--batches", "2", "6", "--threads", "1"]


def test_batched_captions_match_one_at_a_time(tiny_bundle, tmp_path):
    out = tmp_path / "captions.json"
    assert caption_batching.main(["--bundle", str(tiny_bundle), *ARGS, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["batch"] for r in result["batches"]] == [1, 2, 6] and result["mismatches"] == []
    for r in result["batches"]:
        assert r["differing_captions"] == 0 and r["max_log_prob_diff"] < 1e-4 and r["clips_per_s"] > 0


def test_differing_captions_are_reported(tiny_bundle, tmp_path, monkeypatch):
    honest = caption_batching.ModelRuntime.captions

    def batch_dependent(self, waves, tags, options):  # a captioner whose padding leaks into the caption
        return [[(f"{len(waves)} clips", hyps[0][1])] for hyps in honest(self, waves, tags, options)]

    monkeypatch.setattr(caption_batching.ModelRuntime, "captions", batch_dependent)
    out = tmp_path / "captions.json"
    assert caption_batching.main(["--bundle", str(tiny_bundle), *ARGS, "--json", str(out)]) == 1
    result = json.loads(out.read_text())
    assert [r["differing_captions"] for r in result["batches"]] == [0, 6, 6]
    assert result["mismatches"][0] == {"clip": 0, "batch": 2, "alone": "1 clips", "batched": "2 clips"}
