"""Rebuild reads: each path is checked again when the job opens it (a symlink swapped in after the request was checked
is refused), decode errors never echo a file's bytes, and unreadable files are skipped with their reasons: the job
fails only when more than `rebuild_max_unreadable_share` of its entries were."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from blat_gateway.errors import NotFound
from blat_gateway.service import Gateway
from blat_gateway.settings import load_settings
from tests.server.conftest import running_inproc, synth_clip, wav

SECRET = b"\x01\x02\x03\x04TOP-SECRET-KEY=hunter2\n" * 8  # a file that is not audio, and must not be quoted


def wait_job(http: httpx.Client, job: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        got = http.get(f"/v1/index/rebuild/{job}").json()
        if got["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def quoted(text: str) -> bool:
    """Does `text` quote SECRET's bytes, as text or as hex?"""
    return "SECRET" in text or "hunter2" in text or "01 02 03 04" in text or "01020304" in text


@pytest.fixture
def gateway(tiny_bundle, tmp_path):
    """An in-process gateway whose ingest root is tmp_path/roots; tmp_path/outside is not under it."""
    (tmp_path / "roots").mkdir()
    (tmp_path / "outside").mkdir()
    gw = Gateway(
        load_settings(
            environ={},
            bundle=str(tiny_bundle),
            index_dir=str(tmp_path / "index"),
            ingest_roots=[str(tmp_path / "roots")],
        )
    )
    yield gw
    gw.close()


def test_a_symlink_swapped_in_after_the_request_is_refused_when_opened(gateway, tmp_path):
    roots, outside = tmp_path / "roots", tmp_path / "outside"
    clips = roots / "clips"
    clips.mkdir()
    (clips / "a.wav").write_bytes(wav(synth_clip(1)))
    (roots / "inside.wav").write_bytes(wav(synth_clip(2)))
    (roots / "inside-too.wav").write_bytes(wav(synth_clip(3)))
    (outside / "private.wav").write_bytes(wav(synth_clip(4)))  # decodable: read, it would be indexed
    (clips / "b.wav").symlink_to(roots / "inside.wav")
    (clips / "c.wav").symlink_to(roots / "inside-too.wav")  # a symlink that stays inside the roots is fine

    # Hold the job inside its first decode (a.wav read, b.wav not yet), swap b.wav's target, let it go on.
    decoding, go_on, decode = threading.Event(), threading.Event(), gateway.ingest.decode

    def held_decode(data: bytes):
        decoding.set()
        assert go_on.wait(30)
        return decode(data)

    gateway.ingest.decode = held_decode
    progress = gateway.ingest.start_rebuild(folder=str(clips), mode="replace")
    assert progress.total == 3 and decoding.wait(30)
    (clips / "b.wav").unlink()
    (clips / "b.wav").symlink_to(outside / "private.wav")
    go_on.set()
    done = gateway.store.rebuild_job.wait(60)
    assert done.state == "succeeded", done
    assert (done.added, done.skipped) == (2, 1), done  # before: 3 added, private.wav among them
    assert done.unreadable == 1
    assert "b.wav" in done.skipped_reasons[0] and "ingest roots" in done.skipped_reasons[0], done.skipped_reasons
    assert gateway.items.get("c.wav").id == "c.wav"
    with pytest.raises(NotFound):
        gateway.items.get("b.wav")


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    with running_inproc(tiny_bundle, tmp_path_factory.mktemp("rebuild-safety")) as gw:  # API only: in-process
        yield gw


def folder_of(server, name: str, good: int, bad: int):
    folder = server.roots / name
    folder.mkdir()
    for i in range(good):
        (folder / f"good-{i}.wav").write_bytes(wav(synth_clip(100 * len(name) + i, 0.5)))
    for i in range(bad):
        (folder / f"bad-{i}.wav").write_bytes(SECRET)
    return folder


def test_one_undecodable_file_is_skipped_with_its_reason(server):
    folder = folder_of(server, "six", good=5, bad=1)
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        r = http.post("/v1/index/rebuild", json={"folder": str(folder), "mode": "replace"})
        assert r.status_code == 202, r.text
        job = wait_job(http, r.json()["job_id"])
        assert job["state"] == "succeeded", job
        assert (job["total"], job["added"], job["skipped"], job["unreadable"]) == (6, 5, 1, 1)
        assert len(job["skipped_reasons"]) == 1 and "bad-0.wav" in job["skipped_reasons"][0], job
        assert "unsupported audio format" in job["skipped_reasons"][0] and not quoted(job["skipped_reasons"][0])
        assert http.get("/v1/index/stats").json()["items"] == 5


def test_a_rebuild_fails_past_the_stated_share_of_unreadable_files(server):
    folder = folder_of(server, "mostly-bad", good=2, bad=4)
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        before = http.get("/v1/index/stats").json()
        job = wait_job(
            http, http.post("/v1/index/rebuild", json={"folder": str(folder), "mode": "replace"}).json()["job_id"]
        )
        assert job["state"] == "failed" and job["unreadable"] == 4, job
        assert "4 of 6" in job["error"] and "50%" in job["error"] and not quoted(job["error"]), job["error"]
        assert http.get("/v1/index/stats").json()["index_version"] == before["index_version"]  # the live index stays


def test_an_unknown_format_error_never_echoes_the_bytes(server):
    r = httpx.post(f"{server.http_url}/v1/tag", content=SECRET, timeout=30)
    assert r.status_code == 415 and not quoted(r.text), r.text
    r = httpx.post(f"{server.http_url}/v1/tag", content=b"RIFF\x10\x00\x00\x00SCRT" + bytes(64), timeout=30)
    assert r.status_code == 415 and "SCRT" not in r.text, r.text


def test_a_folder_swapped_for_a_symlink_between_resolving_and_opening_is_caught(tmp_path, monkeypatch):
    """The last gap: the path resolved inside the roots, then a folder on it became a symlink to outside before the
    open. The file actually opened is checked (/proc/self/fd), not the name."""
    from blat_gateway import ingest
    from blat_gateway.errors import BadRequest, Forbidden

    roots, outside = tmp_path / "roots", tmp_path / "outside"
    (roots / "sub").mkdir(parents=True)
    outside.mkdir()
    (roots / "sub" / "a.wav").write_bytes(b"inside")
    (outside / "a.wav").write_bytes(b"private")
    assert ingest.read_inside_roots(roots / "sub" / "a.wav", [str(roots)], 1 << 20) == b"inside"
    real_open = ingest.os.open

    def swapped_open(path, flags, *args):
        (roots / "sub").rename(roots / "old-sub")
        (roots / "sub").symlink_to(outside)
        return real_open(path, flags, *args)

    monkeypatch.setattr(ingest.os, "open", swapped_open)
    with pytest.raises(Forbidden, match="outside the configured ingest roots"):
        ingest.read_inside_roots(roots / "sub" / "a.wav", [str(roots)], 1 << 20)
    monkeypatch.setattr(ingest.os, "open", real_open)
    (roots / "sub").unlink()
    (roots / "old-sub").rename(roots / "sub")

    def swapped_file(path, flags, *args):  # the file itself replaced by a symlink: O_NOFOLLOW refuses it
        (roots / "sub" / "a.wav").unlink()
        (roots / "sub" / "a.wav").symlink_to(outside / "a.wav")
        return real_open(path, flags, *args)

    monkeypatch.setattr(ingest.os, "open", swapped_file)
    with pytest.raises(BadRequest, match="cannot be opened"):
        ingest.read_inside_roots(roots / "sub" / "a.wav", [str(roots)], 1 << 20)


def test_rebuilds_say_their_mode_and_every_change_is_audited(gateway, tmp_path, caplog):
    from blat_gateway.errors import BadRequest

    clips = tmp_path / "roots" / "merge-me"
    clips.mkdir()
    for i in range(3):
        (clips / f"m{i}.wav").write_bytes(wav(synth_clip(300 + i)))
    gateway.items.add("kept", wav(synth_clip(299)))
    with pytest.raises(BadRequest) as e:  # no mode: refused, saying what would go
        gateway.ingest.start_rebuild(folder=str(clips))
    assert "1 stored now go" in e.value.message and "merge" in e.value.message
    with caplog.at_level("INFO", logger="blat_gateway.audit"):
        job = gateway.ingest.start_rebuild(folder=str(clips), mode="merge")
        assert gateway.store.rebuild_job.wait(60).state == "succeeded"
        assert {it.id for it in gateway.items.list(limit=10).items} == {"kept", "m0.wav", "m1.wav", "m2.wav"}
        gateway.items.delete("m1.wav")
        gateway.ingest.rollback()
    lines = [(r.getMessage(), getattr(r, "action", None)) for r in caplog.records if r.name == "blat_gateway.audit"]
    assert lines == [("rebuild started", "rebuild"), ("item deleted", "delete"), ("index rolled back", "rollback")]
    started = next(r for r in caplog.records if getattr(r, "action", None) == "rebuild")
    assert (started.mode, started.folder, started.job, started.items_before) == ("merge", str(clips), job.version, 1)


def test_a_manifest_row_carries_its_metadata_into_the_item(server):
    """A manifest row's `extra` (the seed manifest's licence, package and file) is stored with the item; a row whose
    extra is not an object is refused naming the row."""
    folder = server.roots / "with-metadata"
    folder.mkdir()
    (folder / "a.wav").write_bytes(wav(synth_clip(8800, 0.8)))
    extra = {"licence": "CC0-1.0", "package": "demo-sounds", "file": "a.wav"}
    (folder / "good.jsonl").write_text(json.dumps({"id": "meta/a", "audio": "a.wav", "extra": extra}) + "\n")
    (folder / "bad.jsonl").write_text(json.dumps({"id": "meta/b", "audio": "a.wav", "extra": ["CC0"]}) + "\n")
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        r = http.post("/v1/index/rebuild", json={"manifest": str(folder / "bad.jsonl"), "mode": "merge"})
        assert r.status_code == 400 and "bad.jsonl:1" in r.text and "extra" in r.text, r.text
        r = http.post("/v1/index/rebuild", json={"manifest": str(folder / "good.jsonl"), "mode": "merge"})
        assert r.status_code == 202, r.text
        assert wait_job(http, r.json()["job_id"])["state"] == "succeeded"
        assert http.get("/v1/items/meta/a").json()["extra"] == extra
