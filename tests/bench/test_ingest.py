"""The ingestion benchmark on the tiny bundle: every path (folder rebuild, from-path at each concurrency) ingests every
clip into its own gateway's index, and each rate is set beside the encoder-only rate."""
from __future__ import annotations

import json

from tests.bench import load_bench

ingest = load_bench("ingest")


def test_every_path_ingests_every_clip(tiny_bundle, tmp_path):
    out = tmp_path / "ingest.json"
    assert ingest.main(["--bundle", str(tiny_bundle), "--clips", "10", "--max-s", "3", "--concurrency", "1", "4",
                        "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rebuild"]["state"] == "succeeded" and result["rebuild"]["added"] == 10
    for name in ("rebuild", "from-path c=1", "from-path c=4"):
        assert result[name]["index_count"] == 10 and result[name]["vs_encoder"] > 0
    assert result["from-path c=1"]["statuses"] == result["from-path c=4"]["statuses"] == {"201": 10}
    assert result["encoder only"]["clips_per_s"] > 0 and result["audio_s"] > 0
