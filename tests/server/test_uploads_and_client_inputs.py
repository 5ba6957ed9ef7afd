"""Ways to send audio that applications use: a multipart form (`curl -F file=@clip.wav`) as well as the raw body;
from the client, bytes, paths, open binary files and decoded samples (`Samples(array, rate)`); a URL without a
scheme is a clear error, not a raw HTTP/2 failure; both command lines answer --version."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from blat_client import Client, Samples
from blat_gateway.audio import decode_audio
from tests.server.conftest import RATE, running_inproc, synth_clip, wav


@pytest.fixture(scope="module")
def gw(tiny_bundle, tmp_path_factory):
    with running_inproc(tiny_bundle, tmp_path_factory.mktemp("uploads")) as server:
        yield server


def test_a_multipart_upload_answers_like_the_raw_body(gw):
    clip = wav(synth_clip(11, 1.0))
    with httpx.Client(base_url=gw.http_url, timeout=60) as http:
        raw = http.post("/v1/tag?top_k=5", content=clip).json()
        form = http.post("/v1/tag?top_k=5", files={"file": ("clip.wav", clip, "audio/wav")})
        assert form.status_code == 200 and form.json() == raw
        other_name = http.post("/v1/embed/audio", files={"audio": ("x.wav", clip)})  # any field name
        assert other_name.status_code == 200
        assert other_name.json() == http.post("/v1/embed/audio", content=clip).json()
        two = http.post("/v1/tag", files=[("a", ("a.wav", clip)), ("b", ("b.wav", clip))])
        assert two.status_code == 400, two.text
        none = http.post("/v1/tag", data={"just": "a field"}, files={"f": ("", b"")})
        assert none.status_code in (400, 422), none.text
        broken = http.post(
            "/v1/tag", content=b"--x\r\nnot a part", headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert broken.status_code in (400, 422) and broken.json()["error"]["message"], broken.text
        assert http.get("/healthz").status_code == 200


def test_the_client_takes_paths_files_bytes_and_samples(gw, tmp_path):
    samples = synth_clip(12, 1.0)
    clip = wav(samples)
    path = tmp_path / "clip.wav"
    path.write_bytes(clip)
    with Client(gw.http_url) as c, Client(f"grpc://{gw.grpc_address}") as g:
        want = np.asarray(c.embed_audio(clip))
        for client in (c, g):
            for audio in (clip, str(path), path, io.BytesIO(clip), open(path, "rb")):
                np.testing.assert_allclose(client.embed_audio(audio), want, atol=1e-5)
            # decoded samples at their own rate, mono or (n, channels): resampled and mixed by the server
            decoded = decode_audio(clip)
            got = client.embed_audio(Samples(decoded.samples, RATE))
            np.testing.assert_allclose(got, want, atol=1e-4)
            as_list = Samples(decoded.samples.tolist(), RATE)  # no numpy needed on the client's side
            np.testing.assert_allclose(client.embed_audio(as_list), want, atol=1e-4)
            as_int16 = Samples((decoded.samples * 32767).astype(np.int16), RATE)
            np.testing.assert_allclose(client.embed_audio(as_int16), want, atol=0.05)
            stereo = np.stack([decoded.samples, decoded.samples], axis=1)
            np.testing.assert_allclose(client.embed_audio(Samples(stereo, RATE)), want, atol=1e-4)
        with pytest.raises(TypeError, match="Samples"):
            c.embed_audio(samples)  # an array without its rate
        with pytest.raises(TypeError, match="binary"):
            c.embed_audio(io.StringIO("text"))
        with pytest.raises(ValueError, match="sample_rate"):
            c.embed_audio(Samples(samples, 0))


def test_a_url_without_a_scheme_is_a_clear_error(gw):
    host_port = gw.http_url.removeprefix("http://")
    with pytest.raises(ValueError, match=rf"http://{host_port}.*grpc://{host_port}"):
        Client(host_port)


@pytest.mark.parametrize(
    "command", [[str(Path(sys.executable).parent / "blat")], [sys.executable, "-m", "blat_client"]]
)
def test_version(command):
    out = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "blat-" in out.stdout and any(c.isdigit() for c in out.stdout), out
