"""`blat fetch NAME` (blat_export/fetch.py) over a local HTTP server that serves a checkpoint of the released BLAT
layout made here (scaled down): a download cut short resumes with a Range request, the first complete file is
recorded in the lock and checked on every later fetch, the bundle is exported and served, and without a network it
fails at once saying where to put the file by hand."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from blat_contract.bundle import read_bundle
from blat_export.__main__ import export_argv
from blat_export.fetch import LOCK, FetchError, fetch, fetch_bundle, published_models
from tests.blat.test_convert import SMALL_BERT, SMALL_CHANNELS, blat_state_dict, save_blat
from tests.server.conftest import ROOT, running_inproc, synth_clip, wav

NAME = "blat-cnn14-bertm"


class Mirror:
    """A file server that answers Range requests, counts requests, and can cut its next answer short."""

    def __init__(self, body: bytes):
        self.body, self.requests, self.cut_after = body, [], None
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                mirror.requests.append(self.headers.get("Range"))
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                data = mirror.body[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(mirror.body) - 1}/{len(mirror.body)}")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if mirror.cut_after is not None:  # part of it, then the connection drops
                    self.wfile.write(data[: mirror.cut_after])
                    mirror.cut_after = None
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/{published_models()[NAME].file}"

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("published") / "blat_cnn14_bertm.pth"
    save_blat(blat_state_dict(SMALL_CHANNELS, 64, SMALL_BERT, 32), path)
    return path.read_bytes()


@pytest.fixture
def mirror(checkpoint):
    m = Mirror(checkpoint)
    yield m
    m.close()


def test_the_published_names_are_data():
    model = published_models()[NAME]
    assert model.url.startswith("https://zenodo.org/records/8192397/") and model.file == "blat_cnn14_bertm.pth"


def test_a_cut_download_resumes_is_recorded_and_its_bundle_serves(mirror, checkpoint, tmp_path):
    cache = tmp_path / "models"
    mirror.cut_after = len(checkpoint) // 3
    with pytest.raises(FetchError, match="run the same command again to resume"):
        fetch(NAME, cache, url=mirror.url)
    part = cache / "blat_cnn14_bertm.pth.part"
    assert part.stat().st_size == len(checkpoint) // 3 and not (cache / LOCK).exists()

    bundle = fetch_bundle(NAME, cache, export_argv, url=mirror.url)
    assert mirror.requests == [None, f"bytes={len(checkpoint) // 3}-"]  # the rest only
    path = cache / "blat_cnn14_bertm.pth"
    assert path.read_bytes() == checkpoint and not part.exists()
    lock = json.loads((cache / LOCK).read_text())[NAME]
    assert (lock["size"], lock["sha256"]) == (len(checkpoint), hashlib.sha256(checkpoint).hexdigest())
    manifest = read_bundle(bundle)  # every file's sha256 checked
    assert manifest.name == NAME and manifest.embedding_dim == 32

    # a second fetch downloads nothing and keeps the bundle
    made = (bundle / "bundle.json").stat().st_mtime
    assert fetch_bundle(NAME, cache, export_argv, url=mirror.url) == bundle and len(mirror.requests) == 2
    assert (bundle / "bundle.json").stat().st_mtime == made

    # the gateway serves it
    with running_inproc(bundle, tmp_path / "gw") as gw, httpx.Client(base_url=gw.http_url, timeout=60) as c:
        assert c.get("/v1/info").json()["bundle"]["name"] == NAME
        assert c.post("/v1/items", params={"id": "a/clip"}, content=wav(synth_clip(1, 1.0))).status_code == 201
        assert c.post("/v1/search/text", json={"query": "a dog barks", "k": 1}).json()["hits"][0]["id"] == "a/clip"


def test_a_changed_file_is_refused_against_the_lock(mirror, checkpoint, tmp_path):
    cache = tmp_path / "models"
    fetch(NAME, cache, url=mirror.url)
    path = cache / "blat_cnn14_bertm.pth"
    path.write_bytes(checkpoint[:-1] + bytes([checkpoint[-1] ^ 1]))
    with pytest.raises(FetchError, match="is not the file recorded"):
        fetch(NAME, cache, url=mirror.url)
    path.unlink()  # removed: downloaded again, and it matches
    assert fetch(NAME, cache, url=mirror.url).read_bytes() == checkpoint


def test_offline_it_fails_at_once_and_says_where_to_put_the_file(tmp_path, checkpoint):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "models"
    t0 = time.monotonic()
    cmd = [
        sys.executable,
        "-m",
        "blat_cli",
        "fetch",
        NAME,
        "--cache",
        str(cache),
        "--url",
        f"http://127.0.0.1:{port}/x",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1 and time.monotonic() - t0 < 60
    assert f"put it at {cache / 'blat_cnn14_bertm.pth'}" in out.stderr and "cannot reach" in out.stderr
    # put there by hand, it is used (and recorded)
    (cache / "blat_cnn14_bertm.pth").write_bytes(checkpoint)
    assert fetch(NAME, cache, url=f"http://127.0.0.1:{port}/x").read_bytes() == checkpoint
    assert json.loads((cache / LOCK).read_text())[NAME]["size"] == len(checkpoint)
