"""The soak script on the tiny bundle with short phases: it runs end to end against real gateway processes, the
closed loop sees no errors, overload is answered (200 or 429, nothing else), and kill -9 loses no acknowledged
write. The long figures come from `make soak` (BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest

from tests.bench import load_bench

soak = load_bench("soak")


@pytest.mark.slow
def test_soak_short_run(tiny_bundle, tmp_path):
    out = tmp_path / "soak.json"
    assert (
        soak.main(
            [
                "--bundle",
                str(tiny_bundle),
                "--sustain-s",
                "3",
                "--kill-cycles",
                "2",
                "--no-triton",
                "--concurrency",
                "8",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["sustained"]["statuses"]) == {"200"} and result["sustained"]["requests"] > 0
    assert set(result["overload"]["statuses"]) <= {"200", "429"} and result["overload"]["recovered"]
    assert result["kill9"]["lost"] == 0 and result["kill9"]["acknowledged"] > 0
