"""Step 4 (stage 2): sharded, resumable captioning of the tags-only split, on Ray (the session's cluster, joined by the
command through $RAY_ADDRESS). Killing the job after its first shard and rerunning gives exactly the captions of an
uninterrupted run; a finished job reruns as a no-op."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from blat.pipeline.caption import JOB, MERGED, JobMismatch, caption_split, read_captions, shard_name
from blat.pipeline.data import file_sha256, load_jsonl, load_scene_manifest
from blat.pipeline.stages import CaptioningConfig
from blat.pipeline.templates import tags_caption

from .pipeline_data import REPO, tiny_captioner, tiny_scenes

CFG = CaptioningConfig(shard_size=3, batch_size=2, num_threads=1)  # 24 tags-only clips -> 8 shards
pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("captions") / "full"
    merged = caption_split(tiny_scenes(), out, CFG, tiny_captioner(), progress=False)
    return out, load_jsonl(merged)


def test_every_tags_only_clip_gets_a_caption_with_provenance(uninterrupted):
    out, rows = uninterrupted
    scenes = {r["id"]: r for r in load_scene_manifest(tiny_scenes(), "tags_only")}
    assert [r["id"] for r in rows] == sorted(scenes)
    sha = file_sha256(tiny_captioner())
    for r in rows:
        assert r["caption"].strip() and r["log_prob"] < 0
        assert r["tags"] == scenes[r["id"]]["tags"] and r["audio"] == scenes[r["id"]]["audio"]
        p = r["provenance"]
        assert p["mode"] == "captioner" and p["checkpoint_sha256"] == sha and p["use_tags"] is True
        assert (
            p["decoding"] == {"beam_size": 3, "max_tokens": 20, "length_penalty": 0.0, "n_best": 1} and p["seed"] == 0
        )
        assert len(r["caption"].split()) <= 20
    assert sorted(p.name for p in out.glob("shard-*.jsonl")) == [shard_name(k) for k in range(8)]
    assert read_captions(out) == rows


def test_killed_run_resumes_to_the_same_captions(uninterrupted, tmp_path):
    _, expected = uninterrupted
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "blat.pipeline.caption",
        "--scenes",
        str(tiny_scenes()),
        "--checkpoint",
        str(tiny_captioner()),
        "--out",
        str(out),
        "--shard-size",
        "3",
        "--batch-size",
        "1",
        "--num-threads",
        "1",
        "--no-progress",
        "--log-level",
        "WARNING",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(out.glob("shard-*.jsonl")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no shard within 120 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(out.glob("shard-*.jsonl"))
    assert not (out / MERGED).exists() and 1 <= len(done) < 8  # killed mid-job
    for path in done:  # whatever landed is whole: atomic shard writes
        k = int(path.stem.split("-")[1])
        assert [r["id"] for r in load_jsonl(path)] == [r["id"] for r in expected[3 * k : 3 * k + 3]]
    mtimes = {p.name: p.stat().st_mtime_ns for p in done}

    resumed = load_jsonl(caption_split(tiny_scenes(), out, CFG, tiny_captioner(), progress=False))
    assert [(r["id"], r["caption"], r["log_prob"]) for r in resumed] == [
        (r["id"], r["caption"], r["log_prob"]) for r in expected
    ]
    assert {p: (out / p).stat().st_mtime_ns for p in mtimes} == mtimes  # finished shards were not recomputed
    assert not list(out.glob("*.tmp*"))


def test_rerun_of_a_finished_job_is_a_no_op_and_other_settings_are_refused(uninterrupted):
    out, rows = uninterrupted
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.jsonl")}
    assert load_jsonl(caption_split(tiny_scenes(), out, CFG, tiny_captioner(), progress=False)) == rows
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.jsonl")} == mtimes
    other = CaptioningConfig(shard_size=3, beam_size=2)
    with pytest.raises(JobMismatch, match="beam_size|decoding"):
        caption_split(tiny_scenes(), out, other, tiny_captioner(), progress=False)
    assert (out / JOB).is_file()


def test_templates_mode_needs_no_captioner(tmp_path):
    rows = load_jsonl(
        caption_split(tiny_scenes(), tmp_path / "t", CaptioningConfig(mode="templates", shard_size=10), progress=False)
    )
    assert len(rows) == 24
    for r in rows:
        assert r["caption"] == tags_caption(r["tags"]) and r["caption"].startswith("the sound of ")
        assert r["provenance"]["mode"] == "templates" and r["provenance"]["checkpoint_sha256"] is None


def test_no_tags_mode_records_it_and_a_captioner_is_required(tmp_path):
    cfg = CaptioningConfig(mode="no_tags", shard_size=8, num_threads=1)
    rows = load_jsonl(
        caption_split(
            tiny_scenes(), tmp_path / "n", cfg, tiny_captioner(use_tags=False, epochs=2), limit=8, progress=False
        )
    )
    assert len(rows) == 8 and all(r["provenance"]["use_tags"] is False for r in rows)
    assert all(r["provenance"]["mode"] == "no_tags" for r in rows)
    with pytest.raises(ValueError, match="needs a captioner checkpoint"):
        caption_split(tiny_scenes(), tmp_path / "x", CaptioningConfig(), None, progress=False)


def test_cli_help(capsys):
    from blat.pipeline import caption

    with pytest.raises(SystemExit) as e:
        caption.main(["--help"])
    assert e.value.code == 0 and "--no-tags" in capsys.readouterr().out
