"""server/blat_gateway/backends/triton.py against a real tritonserver (the nvidia-pytriton wheel's, CPU-flavour
repository):
the same outputs as in-process ONNX Runtime for every graph, deadlines, retries, and the circuit breaker.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from blat_contract.beam import DecodingOptions
from blat_gateway.backends.ort import OnnxRuntimeBackend
from blat_gateway.backends.triton import CircuitBreaker, TritonBackend
from blat_gateway.errors import BackendDown, BackendError, DeadlineExceeded
from blat_gateway.runtime import ModelRuntime, pad_batch
from blat_gateway.settings import TritonSettings
from tests.server.conftest import launch_triton, synth_clip

ATOL = 1e-5
LOGGER = "blat_gateway.backends.triton"


@pytest.fixture(scope="module")
def ort_backend(tiny_bundle):
    return OnnxRuntimeBackend(tiny_bundle, threads=1)


@pytest.fixture(scope="module")
def backend(tiny_bundle, triton):
    b = TritonBackend(tiny_bundle, TritonSettings(url=triton.grpc_url, breaker_failures=1000))
    yield b
    b.close()


def feeds(tiny_bundle, ort_backend) -> dict[str, dict[str, np.ndarray]]:
    """Inputs for every graph of the bundle: unequal clip lengths, real token ids, several beams per clip."""
    manifest = ort_backend.manifest
    waves = [synth_clip(s, seconds) for s, seconds in ((1, 1.3), (2, 0.4), (3, 2.0))]
    wave, lengths = pad_batch(waves, manifest.audio.min_samples)
    enc = ort_backend.run("audio_encoder", {"waveform": wave, "lengths": lengths})
    tokenizer = ModelRuntime(tiny_bundle, ort_backend).tokenizer
    texts = tokenizer.encode_batch(["dog barking", "rain falls on a tin roof while thunder rolls", "a"])
    tags = (np.random.default_rng(0).random((3, manifest.captioner.n_tags)) < 0.02).astype(np.float32)
    cap = ort_backend.run("captioner_encoder", {"waveform": wave, "lengths": lengths, "tags": tags})
    origin = np.array([0, 0, 1, 2, 2])
    tokens = np.concatenate([np.ones((5, 1), np.int64), np.random.default_rng(1).integers(4, 8, (5, 3))], axis=1)
    return {
        "audio_encoder": {"waveform": wave, "lengths": lengths},
        "audio_pool": {"frames": enc["frames"], "frame_lengths": np.maximum(enc["frame_lengths"] - 3, 1)},
        "text_encoder": {
            "input_ids": np.array([t.ids for t in texts], np.int64),
            "attention_mask": np.array([t.attention_mask for t in texts], np.int64),
        },
        "captioner_encoder": {"waveform": wave, "lengths": lengths, "tags": tags},
        "captioner_decoder": {
            "tokens": tokens,
            "memory": cap["memory"][origin],
            "memory_lengths": cap["memory_lengths"][origin],
            "tag_vector": cap["tag_vector"][origin],
        },
    }


def test_every_graph_equals_onnxruntime(tiny_bundle, backend, ort_backend):
    assert backend.ready()
    inputs = feeds(tiny_bundle, ort_backend)
    assert set(inputs) == set(backend.manifest.graphs)
    for graph, feed in inputs.items():
        got, want = backend.run(graph, feed), ort_backend.run(graph, feed)
        assert list(got) == list(want), graph
        for name, ref in want.items():
            assert got[name].shape == ref.shape and got[name].dtype == ref.dtype, (graph, name)
            assert np.abs(got[name].astype(np.float64) - ref).max() <= ATOL, (graph, name)
    # the runtime's verbs on top give the same answers too
    rt_triton, rt_ort = ModelRuntime(tiny_bundle, backend), ModelRuntime(tiny_bundle, ort_backend)
    waves = [synth_clip(9, 0.7), synth_clip(10, 1.1)]
    np.testing.assert_allclose(rt_triton.encode_audio(waves), rt_ort.encode_audio(waves), atol=ATOL)
    assert [[h.tokens for h in hs] for hs in rt_triton.caption(waves)] == [
        [h.tokens for h in hs] for hs in rt_ort.caption(waves)
    ]


def test_captions_come_from_the_bls_captioner_in_one_call(tiny_bundle, backend, ort_backend, monkeypatch):
    """Over Triton the runtime sends the whole beam search to the BLS `captioner` model (no per-step round trips),
    and gets the captions the in-process beam search finds."""
    waves = [synth_clip(s, seconds) for s, seconds in ((4, 1.1), (5, 0.6))]
    tags = (np.random.default_rng(2).random((2, ort_backend.manifest.captioner.n_tags)) < 0.02).astype(np.float32)
    options = DecodingOptions(beam_size=3, n_best=2, max_tokens=ort_backend.manifest.captioner.max_tokens)
    expected = ModelRuntime(tiny_bundle, ort_backend).captions(waves, tags, options)
    calls: list[str] = []
    infer = backend.client.infer
    monkeypatch.setattr(backend.client, "infer", lambda model, *a, **k: (calls.append(model), infer(model, *a, **k))[1])
    got = ModelRuntime(tiny_bundle, backend).captions(waves, tags, options)
    assert calls == ["captioner"]
    assert [[t for t, _ in clip] for clip in got] == [[t for t, _ in clip] for clip in expected]
    assert np.allclose([[p for _, p in clip] for clip in got], [[p for _, p in clip] for clip in expected], atol=1e-4)


def test_bad_calls_are_backend_errors(backend):
    with pytest.raises(BackendError, match="no graph"):
        backend.run("no_such_graph", {})
    with pytest.raises(BackendError, match="missing input"):
        backend.run("audio_encoder", {"waveform": np.zeros((1, 32000), np.float32)})
    with pytest.raises(BackendError, match="audio_encoder"):  # Triton's own refusal: a wrong rank
        backend.run(
            "audio_encoder",
            {"waveform": np.zeros((1, 2, 3, 32000), np.float32), "lengths": np.array([32000], np.int64)},
        )
    assert not backend.breaker.is_open


def test_timeout_is_deadline_exceeded(backend):
    wave = np.zeros((8, 10 * 32000), np.float32)
    lengths = np.full(8, wave.shape[1], np.int64)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="audio_encoder"):
        backend.run("audio_encoder", {"waveform": wave, "lengths": lengths}, timeout_s=0.001)
    assert time.monotonic() - t0 < 2
    out = backend.run("audio_encoder", {"waveform": wave[:1, :32000], "lengths": np.array([32000])}, timeout_s=30)
    assert out["audio_embedding"].shape[0] == 1  # the server is fine, and so is the client


def test_circuit_breaker_states():
    breaker = CircuitBreaker(failures=2, reset_s=0.2)
    assert breaker.allow() and not breaker.is_open
    breaker.failure()
    assert breaker.allow()  # one failure: still closed
    breaker.failure()
    assert breaker.is_open and not breaker.allow()  # open: fail fast
    time.sleep(0.25)
    assert breaker.allow()  # half-open: one trial call ...
    assert not breaker.allow() and not breaker.allow()  # ... and only one
    breaker.failure()  # the trial failed: open again for reset_s
    assert not breaker.allow()
    time.sleep(0.25)
    assert breaker.allow()
    breaker.success()  # the trial succeeded: closed
    assert not breaker.is_open and breaker.allow() and breaker.allow()


def attempts(caplog) -> int:
    return sum(r.name == LOGGER and r.getMessage() == "triton unavailable" for r in caplog.records)


@pytest.mark.slow
def test_server_down_retries_then_breaker_opens_and_recovers(tiny_bundle, triton_repo, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    triton = launch_triton(triton_repo)
    port = triton.grpc_port
    feed = {"input_ids": np.array([[101, 2000, 102]], np.int64), "attention_mask": np.ones((1, 3), np.int64)}
    retrying = TritonBackend(
        tiny_bundle, TritonSettings(url=triton.grpc_url, retries=2, timeout_s=5, breaker_failures=1000)
    )
    breaking = TritonBackend(
        tiny_bundle,
        TritonSettings(url=triton.grpc_url, retries=0, timeout_s=5, breaker_failures=3, breaker_reset_s=1.0),
    )
    try:
        for b in (retrying, breaking):
            assert b.run("text_encoder", feed)["text_embedding"].shape == (1, 32)
        triton.stop()
        assert not retrying.ready()

        # bounded retries with backoff, then BackendDown (well within the deadline)
        caplog.clear()
        t0 = time.monotonic()
        with pytest.raises(BackendDown, match=r"unavailable \(model text_encoder, 3 attempts\)"):
            retrying.run("text_encoder", feed)
        assert attempts(caplog) == 3 and time.monotonic() - t0 < 5

        # the breaker: three failed calls open it; then calls fail fast without touching the network
        for _ in range(3):
            with pytest.raises(BackendDown, match="unavailable"):
                breaking.run("text_encoder", feed)
        assert breaking.breaker.is_open
        caplog.clear()
        t0 = time.monotonic()
        for _ in range(20):
            with pytest.raises(BackendDown, match="circuit open"):
                breaking.run("text_encoder", feed)
        assert time.monotonic() - t0 < 0.5 and attempts(caplog) == 0

        # after reset_s it half-opens: one trial call reaches out (and fails: still down), the next fails fast
        time.sleep(1.1)
        with pytest.raises(BackendDown, match="unavailable"):
            breaking.run("text_encoder", feed)
        assert attempts(caplog) == 1
        with pytest.raises(BackendDown, match="circuit open"):
            breaking.run("text_encoder", feed)

        # Triton comes back on the same port: the next trial call succeeds and closes the circuit
        triton = launch_triton(triton_repo, grpc_port=port)
        deadline = time.monotonic() + 30
        while True:
            time.sleep(1.05)
            try:
                out = breaking.run("text_encoder", feed)
                break
            except BackendDown:  # the channel may still be waiting out its reconnect backoff
                assert time.monotonic() < deadline, "the backend did not recover after Triton came back"
        assert out["text_embedding"].shape == (1, 32) and not breaking.breaker.is_open
        for _ in range(3):
            breaking.run("text_encoder", feed)
        assert retrying.run("text_encoder", feed)["text_embedding"].shape == (1, 32) and retrying.ready()
    finally:
        retrying.close()
        breaking.close()
        triton.stop()


def test_yamnet_tagger_in_triton_equals_onnxruntime(yamnet_bundle, real_clips, tmp_path):
    """The default's tower (YAMNet) and its supervised head (audio_tagger) served by a real Triton: the same
    embeddings and class probabilities as in-process ONNX Runtime, on real recordings of unequal lengths."""
    from blat_export.triton import write_repository

    repo = write_repository(yamnet_bundle, tmp_path / "repo", flavor="cpu", intra_op_threads=1)
    assert (repo / "audio_tagger" / "config.pbtxt").is_file()
    with launch_triton(repo) as process:
        triton = TritonBackend(yamnet_bundle, TritonSettings(url=process.grpc_url))
        try:
            waves = [real_clips["phone-outgoing-busy"], real_clips["bell"][: 32000 * 3]]
            got = ModelRuntime(yamnet_bundle, triton).analyze_audio(waves)
            want = ModelRuntime(yamnet_bundle, OnnxRuntimeBackend(yamnet_bundle, threads=1)).analyze_audio(waves)
        finally:
            triton.close()
    np.testing.assert_allclose(got[0], want[0], atol=ATOL)
    assert got[1].shape == want[1].shape == (2, 521)
    np.testing.assert_allclose(got[1], want[1], atol=ATOL)
