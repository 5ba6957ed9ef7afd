"""The live-tagging benchmark on the tiny bundle against a real gateway process, over gRPC and the WebSocket: paced
and as fast as possible, every window of every concurrent stream is answered, with a lag, a real-time factor (fast)
and the server's CPU per audio second."""

from __future__ import annotations

import json

from tests.bench import load_bench

stream_tag = load_bench("stream_tag")


def run(tiny_bundle, tmp_path, *extra: str) -> dict:
    out = tmp_path / "stream.json"
    assert (
        stream_tag.main(
            ["--bundle", str(tiny_bundle), "--streams", "1", "3", "--seconds", "3.3", *extra, "--json", str(out)]
        )
        == 0
    )
    return json.loads(out.read_text())


def test_paced_streams_answer_every_window(tiny_bundle, tmp_path):
    result = run(tiny_bundle, tmp_path)
    assert [(lv["face"], lv["streams"]) for lv in result["levels"]] == [("grpc", 1), ("grpc", 3), ("ws", 1), ("ws", 3)]
    for level in result["levels"]:
        # 3.3 s in 2 s windows every 1 s: [0, 2], [1, 3], then [2, 3.3] when the stream ends
        assert level["windows"] == level["expected_windows"] == 3 * level["streams"] and level["errors"] == []
        assert level["rtf"] is None and level["cpu_rtf"] > 0 and 0 < level["lag_p50_ms"] <= level["lag_p99_ms"]


def test_fast_streams_have_a_real_time_factor(tiny_bundle, tmp_path):
    result = run(tiny_bundle, tmp_path, "--fast")
    for level in result["levels"]:
        assert level["windows"] == level["expected_windows"] and level["errors"] == []
        assert 0 < level["rtf"] < 1 and level["cpu_rtf"] > 0 and level["windows_per_s"] > 0
