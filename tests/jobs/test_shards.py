"""blat_jobs.shards: planning, atomic outputs, what a rerun has left to compute, the spec check and the merge check.

Shards here are text files of their ids ending in an END line, so a truncated file is recognisably damaged."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from blat_jobs import shards as js

IDS = [f"item{i:02d}" for i in range(10)][::-1]  # unsorted on purpose: plans sort them


def read_ids(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    if not lines or lines[-1] != "END":
        raise ValueError(f"{path}: truncated")
    return lines[:-1]


def write(f, ids: list[str]) -> None:
    f.write(("\n".join([*ids, "END"]) + "\n").encode())


def make_job(folder: Path, spec: dict | None = None, **kw) -> js.Job:
    return js.open_job(folder, spec or {"version": 1}, js.plan(IDS, 3), "txt", read_ids, write, **kw)


def compute(job: js.Job) -> list[int]:
    """What an engine does: store every pending shard (here a shard's result is its ids)."""
    todo = job.pending()
    for k in todo:
        job.store(k, job.shards[k])
    return todo


def combine(paths: list[Path], f) -> None:
    f.write(json.dumps([i for p in paths for i in read_ids(p)]).encode())


def test_plan_is_fixed_by_the_sorted_ids():
    shards = js.plan(IDS, 3)
    assert shards == js.plan(sorted(IDS), 3) == js.plan(list(reversed(IDS)), 3)
    assert [len(s) for s in shards] == [3, 3, 3, 1] and sum(shards, []) == sorted(IDS)
    with pytest.raises(ValueError, match="duplicate ids"):
        js.plan(["a", "b", "a"], 2)
    with pytest.raises(ValueError, match="shard_size"):
        js.plan(IDS, 0)


def test_run_resume_and_merge(tmp_path):
    job = make_job(tmp_path)
    assert compute(job) == [0, 1, 2, 3]
    merged = js.merge(job, "all.json", combine)
    assert json.loads(merged.read_text()) == sorted(IDS)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.txt")}
    assert make_job(tmp_path).pending() == []  # the output is the record: nothing left for a rerun
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.txt")} == mtimes


def test_a_shard_written_twice_is_whole_and_the_same(tmp_path):
    """A retried task writes its shard again: the atomic rename leaves one whole file, no temp files."""
    job = make_job(tmp_path)
    compute(job)
    before = job.path(2).read_bytes()
    job.store(2, job.shards[2])
    assert job.path(2).read_bytes() == before and not list(tmp_path.glob("*.tmp-*"))


def test_a_failed_write_leaves_no_shard(tmp_path):
    job = make_job(tmp_path)

    def broken(f):
        f.write(b"item0")
        raise OSError("disk full")

    with pytest.raises(OSError):
        js.write_atomic(job.path(0), broken)
    assert not job.path(0).exists() and not list(tmp_path.glob("*.tmp-*")) and job.pending() == [0, 1, 2, 3]


def test_damaged_missing_and_temp_files(tmp_path):
    job = make_job(tmp_path)
    compute(job)
    job.path(1).write_text("item03\nitem04\n")  # truncated: no END line
    job.path(2).unlink()
    (tmp_path / "shard-00002.txt.tmp-999-deadbeef").write_text("half a shard")  # a killed writer's temp file
    (tmp_path / "shard-00009.txt").write_text("END\n")  # not planned
    with pytest.raises(js.Incomplete, match=r"shard-00001.txt \(damaged.*") as e:
        js.merge(job, "all.json", combine)
    assert e.value.missing == [2] and e.value.invalid == [1] and "shard-00002.txt (missing)" in str(e.value)
    assert "shard-00009.txt (not planned)" in str(e.value) and not (tmp_path / "all.json").exists()

    assert job.pending() == [1, 2] and compute(job) == [1, 2]
    (tmp_path / "shard-00009.txt").unlink()
    assert json.loads(js.merge(job, "all.json", combine).read_text()) == sorted(IDS)
    assert not list(tmp_path.glob("*.tmp-*"))  # the merge removed the dead writer's temp file


def test_another_spec_is_refused_unless_overwrite(tmp_path):
    compute(make_job(tmp_path))
    js.merge(make_job(tmp_path), "all.json", combine)
    with pytest.raises(js.JobMismatch, match="version"):
        make_job(tmp_path, {"version": 2})
    with pytest.raises(js.JobMismatch, match="version"):
        make_job(tmp_path, {"version": 2}, readonly=True)
    job = make_job(tmp_path, {"version": 2}, overwrite=True, outputs=["all.json"])
    assert not list(tmp_path.glob("shard-*")) and not (tmp_path / "all.json").exists()
    assert json.loads((tmp_path / js.JOB).read_text())["spec"] == {"version": 2}
    assert compute(job) == [0, 1, 2, 3]


def test_readonly_needs_a_job_and_changes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no job.json"):
        make_job(tmp_path / "none", readonly=True)
    assert not (tmp_path / "none").exists()
    make_job(tmp_path)
    before = (tmp_path / js.JOB).stat().st_mtime_ns
    assert make_job(tmp_path, readonly=True).pending() == [0, 1, 2, 3]
    assert (tmp_path / js.JOB).stat().st_mtime_ns == before


def test_the_job_folder_module_imports_only_the_standard_library():
    path = Path(js.__file__)
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots - set(sys.stdlib_module_names)
