"""The ingestion benchmark on the tiny bundle: every path (folder rebuild, from-path at each concurrency) ingests every
clip into its own gateway's index, and each rate is set beside the encoder-only rate."""

from __future__ import annotations

import json

import pytest

from tests.bench import load_bench

ingest = load_bench("ingest")


def test_every_path_ingests_every_clip(tiny_bundle, tmp_path):
    out = tmp_path / "ingest.json"
    assert (
        ingest.main(
            [
                "--bundle",
                str(tiny_bundle),
                "--clips",
                "10",
                "--max-s",
                "3",
                "--concurrency",
                "1",
                "4",
                "--threads",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["clips"] == 10 and 10 * 0.5 <= result["audio_s"] <= 10 * 3 and 0.5 <= result["median_clip_s"] <= 3
    assert result["rebuild"]["state"] == "succeeded" and result["rebuild"]["added"] == 10
    assert result["rebuild"]["error"] == "" and result["rebuild"]["job_s"] <= result["rebuild"]["wall_s"] + 0.01
    encoder = result["encoder only"]
    assert encoder["threads"] == 1 and encoder["batch"] == 16
    for name in ("rebuild", "from-path c=1", "from-path c=4", "encoder only"):
        r = result[name]
        assert r.get("index_count", 10) == 10, (name, r)
        # every rate comes from the same clips and the same wall time: audio per clip is the corpus's own
        assert r["audio_s_per_s"] / r["clips_per_s"] == pytest.approx(result["audio_s"] / 10, rel=0.05), (name, r)
        if name != "encoder only":
            assert r["vs_encoder"] == round(r["clips_per_s"] / encoder["clips_per_s"], 2), (name, r)
    for name in ("from-path c=1", "from-path c=4"):
        assert result[name]["statuses"] == {"201": 10}
        assert result[name]["p50_ms"] <= result[name]["p99_ms"]
