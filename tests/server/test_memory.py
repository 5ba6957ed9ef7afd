"""The memory budget (issue 22, item 3): each model call's input is bounded, ONNX Runtime keeps no arena, freed memory
goes back to the OS, and a real gateway's RSS stays bounded under concurrent maximal windowed tagging and returns
to its baseline afterwards. The full-size figures (the default bundle, every kind of request) are the soak's
memory phase (bench/soak_memory.py).

A real process: its resident memory (RSS) is what is measured.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from blat_contract.beam import DecodingOptions
from blat_gateway.backends.ort import OnnxRuntimeBackend
from blat_gateway.memory import MemoryReleaser
from blat_gateway.runtime import ModelRuntime, sub_batches
from tests.server.conftest import RATE, running_server, wav

CONCURRENT = 8
PEAK_OVER_BASELINE_MB = 1200  # now about 650 (tiny bundle); before, 8 x 120 s clips went in one padded call
RETURNED_WITHIN_MB = 150  # after the load, RSS is back within this of the warm baseline (now about 50)


class RecordingBackend:
    """The real ONNX Runtime backend, recording each call's input shapes."""

    def __init__(self, inner: OnnxRuntimeBackend):
        self.inner, self.manifest, self.calls = inner, inner.manifest, []

    def run(self, graph, inputs, timeout_s=None):
        self.calls.append((graph, {k: v.shape for k, v in inputs.items()}))
        return self.inner.run(graph, inputs)


def test_sub_batches_cover_every_clip_once_within_the_budget():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(1, 5000, 200)] + [9000, 12000]  # two clips over the budget
    batches = sub_batches(lengths, 8000, 16)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 16
        assert len(b) * max(lengths[i] for i in b) <= 8000 or len(b) == 1


def test_model_calls_stay_within_the_budget_and_give_the_same_answers(tiny_bundle):
    backend = RecordingBackend(OnnxRuntimeBackend(tiny_bundle, threads=1))
    whole = ModelRuntime(tiny_bundle, backend.inner, max_call_seconds=1000.0, max_caption_rows=1000)
    budget = ModelRuntime(tiny_bundle, backend, max_call_seconds=4.0, max_caption_rows=6)
    rng = np.random.default_rng(1)
    waves = [rng.standard_normal(int(s * RATE)).astype(np.float32) * 0.1 for s in (3.0, 0.5, 1.0, 2.5, 0.7, 1.5)]
    np.testing.assert_allclose(budget.encode_audio(waves), whole.encode_audio(waves), atol=1e-5)
    options = DecodingOptions(beam_size=3, max_tokens=6, n_best=2)
    got, want = budget.captions(waves, None, options), whole.captions(waves, None, options)
    assert [[t for t, _ in c] for c in got] == [[t for t, _ in c] for c in want]
    audio_calls = [s["waveform"] for g, s in backend.calls if g in ("audio_encoder", "captioner_encoder")]
    assert len(audio_calls) > 2 and all(b * n <= 4.0 * RATE or b == 1 for b, n in audio_calls)
    assert max(s["tokens"][0] for g, s in backend.calls if g == "captioner_decoder") <= 6


def test_onnxruntime_keeps_no_arena_by_default(tiny_bundle):
    for on in (False, True):
        backend = OnnxRuntimeBackend(tiny_bundle, threads=1, memory_arena=on)
        opts = backend.sessions["audio_encoder"].get_session_options()
        assert (opts.enable_cpu_mem_arena, opts.enable_mem_pattern) == (on, on)


def test_memory_releaser_trims_soon_then_once_more_and_stops():
    releaser = MemoryReleaser(delay_s=0.05, settle_s=0.2)
    if not releaser.available:
        pytest.skip("no malloc_trim here (not glibc)")
    for _ in range(100):
        releaser.soon()
    time.sleep(0.15)
    assert releaser.trims == 1
    time.sleep(0.6)
    assert releaser.trims == 2


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def tag_windows_at_once(url: str, body: bytes, params: dict, n: int) -> list[int | str]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        answers = await asyncio.gather(
            *(c.post("/v1/tag", params=params, content=body) for _ in range(n)), return_exceptions=True
        )
    return [a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers]


def test_gateway_rss_is_bounded_under_maximal_windowed_tagging_and_returns(tiny_bundle, tmp_path):
    env = {"BLAT_SERVER_LIMITS__REQUEST_TIMEOUT_S": "120"}  # every request's work runs, none spared by a 504
    with running_server(tiny_bundle, tmp_path, env=env) as gw:
        info = httpx.get(gw.http_url + "/v1/info").json()
        step, longest = info["bundle"]["audio"]["frame_seconds"], info["limits"]["max_audio_seconds"]
        hop = max(step, longest / 250)  # 250 windows per request: enough to mix with the clips, fast enough
        params = {"top_k": 3, "window_s": hop, "hop_s": hop}
        rng = np.random.default_rng(2)
        clip = wav(rng.standard_normal(int(longest * RATE)).astype(np.float32) * 0.1)
        warm = wav(rng.standard_normal(int(20 * RATE)).astype(np.float32) * 0.1)
        assert asyncio.run(tag_windows_at_once(gw.http_url, warm, params, 2)) == [200, 200]  # sessions warmed up
        time.sleep(1.0)
        baseline = rss_mb(gw.pid)

        peaks, done = [baseline], threading.Event()

        def poll() -> None:  # past the bound the test has failed: stop the gateway before it takes the machine
            while not done.wait(0.02):
                peaks.append(rss_mb(gw.pid))
                if peaks[-1] - baseline > PEAK_OVER_BASELINE_MB:
                    gw.kill()
                    return

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            statuses = asyncio.run(tag_windows_at_once(gw.http_url, clip, params, CONCURRENT))
        finally:
            done.set()
            poller.join()
        peak = max(peaks)
        assert peak - baseline <= PEAK_OVER_BASELINE_MB, f"RSS {baseline:.0f} -> peak {peak:.0f} MB"
        assert statuses == [200] * CONCURRENT

        deadline, after = time.monotonic() + 10, rss_mb(gw.pid)
        while after - baseline >= RETURNED_WITHIN_MB and time.monotonic() < deadline:
            time.sleep(0.25)
            after = rss_mb(gw.pid)
        assert after - baseline < RETURNED_WITHIN_MB, f"RSS {baseline:.0f} -> {peak:.0f} -> {after:.0f} MB after load"
        print(f"RSS {baseline:.0f} MB warm, {peak:.0f} MB peak, {after:.0f} MB after the load")
