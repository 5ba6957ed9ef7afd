"""The soak's memory phase on the tiny bundle, two requests per kind: every kind is answered 200 and the RSS figures
come back. The default bundle's figures come from `bench/soak.py --phases memory` (BENCHMARKS.md)."""

from __future__ import annotations

import pytest

from tests.bench import load_bench

load_bench("soak")  # puts bench/ on sys.path, as the script does
soak_memory = load_bench("soak_memory")


@pytest.mark.slow
def test_memory_phase_answers_every_kind(tiny_bundle, tmp_path):
    out = soak_memory.phase_memory(tiny_bundle, tmp_path, concurrency=2, settle_s=1.0)
    assert set(out["kinds"]) == {"caption", "windows", "labels", "upload"}
    assert all(k["statuses"] == {"200": 2} for k in out["kinds"].values()), out
    assert 0 < out["rss_mb_start"] < out["rss_mb_peak"] and "aborted" not in out
    assert "after load" in soak_memory.memory_lines(out)[-1]
