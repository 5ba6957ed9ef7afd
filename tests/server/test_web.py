"""The page, /docs and item audio over real HTTP (the browser drives them in test_browser.py)."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.server.conftest import running_inproc, synth_clip, wav

KEYS = '{"reader": ["read"], "writer": ["read", "write"]}'


@pytest.fixture(scope="module")
def gw(tiny_bundle, tmp_path_factory):
    with running_inproc(
        tiny_bundle, tmp_path_factory.mktemp("web"), env={"BLAT_SERVER_AUTH__KEYS": KEYS}
    ) as gw:  # API: in-process
        yield gw


def http(gw, key: str | None = "writer") -> httpx.Client:
    return httpx.Client(base_url=gw.http_url, timeout=30, headers={"authorization": f"Bearer {key}"} if key else {})


def upload(c: httpx.Client, item_id: str, data: bytes, **params) -> httpx.Response:
    return c.post("/v1/items", params={"id": item_id, **params}, content=data)


def external_urls(text: str) -> list[str]:
    return [u for u in re.findall(r"https?://[^\s\"'<>)]+", text) if not u.startswith("http://127.0.0.1")]


def test_page_and_its_files_are_public_and_local(gw):
    with http(gw, None) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="(/web/[^"]+)"', page.text)
        assert sorted(assets) == ["/web/app.js", "/web/live.js", "/web/results.js", "/web/style.css"]
        scripts = (
            "/web/app.js",
            "/web/results.js",
            "/web/live.js",
            "/web/mic-worklet.js",
        )  # the worklet: loaded by live.js
        for path, kind in [*((p, "text/javascript") for p in scripts), ("/web/style.css", "text/css")]:
            r = c.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and len(r.content) > 500
            assert external_urls(r.text) == [], path
        assert external_urls(page.text) == []
        assert c.get("/web/../service.py").status_code == 404 and c.get("/web/secret.txt").status_code == 404


def test_docs_come_from_local_assets(gw):
    with http(gw, None) as c:
        docs = c.get("/docs")
        assert docs.status_code == 200 and external_urls(docs.text) == []
        for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', docs.text):
            assert c.get(asset).status_code == 200, asset
        assert "/docs/assets/swagger-ui-bundle.js" in docs.text and "/openapi.json" in docs.text
        redoc = c.get("/redoc")
        assert redoc.status_code == 200 and external_urls(redoc.text) == []
        assert c.get("/docs/assets/redoc.standalone.js").status_code == 200


def test_uploaded_audio_is_kept_and_streamed(gw):
    data = wav(synth_clip(4100, seconds=2.0), subtype="PCM_16")
    with http(gw) as c:
        assert upload(c, "web/up", data).status_code == 201
        r = c.get("/v1/audio/web/up")
        assert r.status_code == 200 and r.content == data and r.headers["content-type"] == "audio/wav"
        part = c.get("/v1/audio/web/up", headers={"range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == data[100:200]
        # A refused add (409: the id exists) leaves the stored audio alone.
        other = wav(synth_clip(4101, seconds=1.0), subtype="PCM_16")
        assert upload(c, "web/up", other).status_code == 409
        assert c.get("/v1/audio/web/up").content == data
        # An upsert replaces it; a delete removes it.
        assert upload(c, "web/up", other, upsert="true").status_code == 201
        assert c.get("/v1/audio/web/up").content == other
        assert c.delete("/v1/items/web/up").status_code == 200
        gone = c.get("/v1/audio/web/up")
        assert gone.status_code == 404 and gone.json()["error"]["reason"] == "not_found"
        assert list((gw.index_dir / "audio").iterdir()) == []


def test_path_items_play_their_file_while_it_is_inside_the_roots(gw):
    data = wav(synth_clip(4200, seconds=1.5))
    source = gw.roots / "web-source.wav"
    source.write_bytes(data)
    with http(gw) as c:
        r = c.post("/v1/items/from-path", json={"id": "web/path", "path": str(source)})
        assert r.status_code == 201, r.text
        assert c.get("/v1/audio/web/path").content == data
        source.unlink()
        gone = c.get("/v1/audio/web/path")
        assert gone.status_code == 404 and "ingest roots" in gone.json()["error"]["message"]
        assert c.get("/v1/audio/web/no-such-item").status_code == 404


def test_audio_needs_a_read_key(gw):
    data = wav(synth_clip(4300, seconds=1.0))
    with http(gw) as writer:
        assert upload(writer, "web/keyed", data).status_code == 201
    with http(gw, None) as anonymous, http(gw, "reader") as reader, http(gw, "wrong") as wrong:
        assert anonymous.get("/v1/audio/web/keyed").status_code == 401
        assert wrong.get("/v1/audio/web/keyed").status_code == 401
        assert reader.get("/v1/audio/web/keyed").content == data


def test_uploads_survive_a_restart_and_the_rollback_of_a_rebuild(tiny_bundle, tmp_path):
    """Kept audio is tied to the item's content: after a rebuild stores other audio under the same id, that id plays
    the rebuilt file; rolled back, it plays the upload again."""
    uploaded, rebuilt = wav(synth_clip(4400, seconds=1.0)), wav(synth_clip(4401, seconds=1.0))
    with running_inproc(tiny_bundle, tmp_path) as gw:  # restart(): a new in-process gateway on the same index
        folder = gw.roots / "batch"
        folder.mkdir()
        (folder / "same.wav").write_bytes(rebuilt)
        with http(gw, None) as c:
            assert upload(c, "same.wav", uploaded).status_code == 201
        gw = gw.restart()
        with http(gw, None) as c:
            assert c.get("/v1/audio/same.wav").content == uploaded
            job = c.post("/v1/index/rebuild", json={"folder": str(folder), "mode": "replace"}).json()
            for _ in range(300):
                state = c.get(f"/v1/index/rebuild/{job['job_id']}").json()["state"]
                if state in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.1)
            assert state == "succeeded"
            assert c.get("/v1/audio/same.wav").content == rebuilt
            assert c.post("/v1/index/rollback").status_code == 200
            assert c.get("/v1/audio/same.wav").content == uploaded
        gw.stop()
