"""The throughput bench on the tiny bundle with short cells: every path answers 200 in both modes, the model-alone
limit and the ratios are computed; and the profile breakdown attributes samples to the innermost known part."""

from __future__ import annotations

import json

import pytest

from tests.bench import load_bench

throughput = load_bench("throughput")


@pytest.mark.slow
def test_throughput_short_run(tiny_bundle, tmp_path):
    out = tmp_path / "throughput.json"
    assert (
        throughput.main(
            [
                "--bundle",
                str(tiny_bundle),
                "--concurrency",
                "1,4",
                "--seconds",
                "1",
                "--warmup-s",
                "0.3",
                "--items",
                "50",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    for mode in ("batched", "unbatched"):
        for path in ("text", "tag", "caption"):
            for c in (1, 4):
                cell = result[mode][f"{path}@{c}"]
                # every request answered 200: the statuses count the requests, no error
                assert cell["requests"] >= 1 and cell["statuses"] == {"200": cell["requests"]}, (mode, path, c, cell)
                assert cell["error_rate"] == 0, (mode, path, c, cell)
                assert cell["p50_ms"] <= cell["p95_ms"] <= cell["p99_ms"]
    assert {"text@batch1", "text@batch16", "tag@batch16 spinning", "caption@batch16"} <= set(result["model_alone"])
    for path in ("text", "tag", "caption"):  # each ratio is the two cells' own figures
        batched, unbatched = result["batched"][f"{path}@4"]["rps_ok"], result["unbatched"][f"{path}@4"]["rps_ok"]
        assert result["ratios"][f"{path} c=4 batched / unbatched"] == round(batched / unbatched, 3)


def test_queries_differ_so_no_cache_can_answer_them():
    queries = [throughput.query(i) for i in range(20_000)]
    assert len(set(queries)) == len(queries)


def test_profile_breakdown_takes_the_innermost_known_part(tmp_path):
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "thread (1): MainThread;run (asyncio/base_events.py:1);encode (fastapi/encoders.py:9) 30\n"
        "thread (2): batcher;_run (server/blat_gateway/batching.py:5);run (onnxruntime/capi/session.py:2) 50\n"
        "thread (3): worker;search_text (server/blat_gateway/service.py:3);"
        "search (server/blat_gateway/index/store.py:4) 10\n"
        "thread (1): MainThread;mystery (somewhere/else.py:1) 10\n"
    )
    shares = throughput.breakdown(raw, possible=200)
    assert shares == {
        "model: ONNX Runtime call": 25.0,
        "JSON encoding": 15.0,
        "index: SQLite and records": 5.0,
        "other": 5.0,
        "GIL held, total": 50.0,
    }
