"""blat_jobs.shards: planning, exclusive claims, stale-claim takeover, atomic outputs, resumption and the merge check.

Shards here are text files of their ids ending in an END line, so a truncated file is recognisably damaged."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
import time
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


def combine(paths: list[Path], f) -> None:
    f.write(json.dumps([i for p in paths for i in read_ids(p)]).encode())


def test_plan_is_fixed_by_the_sorted_ids():
    shards = js.plan(IDS, 3)
    assert shards == js.plan(sorted(IDS), 3) == js.plan(list(reversed(IDS)), 3)
    assert [len(s) for s in shards] == [3, 3, 3, 1] and sum(shards, []) == sorted(IDS)
    with pytest.raises(ValueError, match="duplicate ids"):
        js.plan(["a", "b", "a"], 2)


def test_only_one_of_many_claimers_wins(tmp_path):
    path, won, start = tmp_path / "shard-00000.claim", [], threading.Barrier(8)

    def claimer(i):
        start.wait()
        won.append(js.claim(path, f"w{i}", lease_s=30))

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [c for c in won if c is not None]
    assert len(held) == 1 and held[0].ours()
    assert js.claim(path, "late", lease_s=30) is None  # held and fresh
    held[0].release()
    assert not path.exists()
    again = js.claim(path, "next", lease_s=30)
    assert again is not None
    again.release()


def _foreign_claim(path: Path, age_s: float, **info) -> None:
    path.write_text(json.dumps({"worker": "elsewhere-1", "host": "another-node", "pid": 1, "nonce": "n0", **info}))
    t = time.time() - age_s
    os.utime(path, (t, t))


def test_a_stale_claim_is_taken_over_and_a_fresh_one_is_not(tmp_path, monkeypatch):
    path = tmp_path / "shard-00000.claim"
    _foreign_claim(path, age_s=5)
    assert js.claim(path, "me", lease_s=30) is None  # 5 s old, lease 30 s: its worker is alive
    _foreign_claim(path, age_s=100)
    stale_view = js._read_claim(path)
    mine = js.claim(path, "me", lease_s=30)
    assert mine is not None and json.loads(path.read_text())["worker"] == "me"
    # A second worker that judged the same stale claim before our rename must not take it from us: the takeover
    # marker of that stale claim's nonce exists already.
    monkeypatch.setattr(js, "_read_claim", lambda p: stale_view)
    assert js.claim(path, "other", lease_s=30) is None
    monkeypatch.undo()
    assert mine.ours()
    mine.release()
    assert not path.exists() and not list(tmp_path.glob("*.takeover-*"))


def test_an_empty_claim_goes_stale_by_its_age(tmp_path):
    path = tmp_path / "shard-00000.claim"
    path.write_text("")  # its writer died between the exclusive create and the write
    assert js.claim(path, "me", lease_s=30) is None
    os.utime(path, (time.time() - 100,) * 2)
    held = js.claim(path, "me", lease_s=30)
    assert held is not None and held.ours()
    held.release()


def test_a_claim_of_a_dead_local_process_is_stale_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "shard-00000.claim"
    _foreign_claim(path, age_s=0, host=js.HOST, pid=int(dead.stdout))
    held = js.claim(path, "me", lease_s=3600)
    assert held is not None
    held.release()
    _foreign_claim(path, age_s=0, host=js.HOST, pid=os.getpid())  # alive (this process): not stale
    assert js.claim(path, "me", lease_s=3600) is None


def test_the_heartbeat_keeps_a_claim_fresh(tmp_path):
    path = tmp_path / "shard-00000.claim"
    held = js.claim(path, "me", lease_s=0.3)  # heartbeat every 0.1 s
    old = time.time() - 100
    os.utime(path, (old, old))
    time.sleep(0.35)
    assert time.time() - path.stat().st_mtime < 0.3
    held.release()


def test_run_resume_and_merge(tmp_path):
    job = make_job(tmp_path)
    first = js.run_worker(job, lambda k, ids: ids, lease_s=5)
    assert first.computed == [0, 1, 2, 3] and first.found_done == 0
    assert js.ledgers(tmp_path) == {first.worker: [0, 1, 2, 3]}
    merged = js.merge(job, "all.json", combine)
    assert json.loads(merged.read_text()) == sorted(IDS)
    assert not list((tmp_path / js.CLAIMS).iterdir())  # finished shards keep no claim

    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.txt")}
    rerun = js.run_worker(make_job(tmp_path), lambda k, ids: pytest.fail("nothing should be computed"), lease_s=5)
    assert rerun.computed == [] and rerun.found_done == 4
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.txt")} == mtimes


def test_damaged_missing_and_temp_files(tmp_path):
    job = make_job(tmp_path)
    js.run_worker(job, lambda k, ids: ids, lease_s=5)
    job.path(1).write_text("item03\nitem04\n")  # truncated: no END line
    job.path(2).unlink()
    (tmp_path / "shard-00002.txt.tmp-999-deadbeef").write_text("half a shard")  # a killed writer's temp file
    with pytest.raises(js.Incomplete, match=r"shard-00001.txt \(damaged.*") as e:
        js.merge(job, "all.json", combine)
    assert e.value.missing == [2] and e.value.invalid == [1] and "shard-00002.txt (missing)" in str(e.value)
    assert not (tmp_path / "all.json").exists()

    again = js.run_worker(job, lambda k, ids: ids, lease_s=5)
    assert sorted(again.computed) == [1, 2]
    assert not list(tmp_path.glob("*.tmp-*"))
    assert json.loads(js.merge(job, "all.json", combine).read_text()) == sorted(IDS)


def test_another_spec_is_refused_unless_overwrite(tmp_path):
    js.run_worker(make_job(tmp_path), lambda k, ids: ids, lease_s=5)
    with pytest.raises(js.JobMismatch, match="version"):
        make_job(tmp_path, {"version": 2})
    job = make_job(tmp_path, {"version": 2}, overwrite=True)
    assert not list(tmp_path.glob("shard-*")) and not js.ledgers(tmp_path)
    assert js.run_worker(job, lambda k, ids: ids, lease_s=5).computed == [0, 1, 2, 3]


def test_two_workers_share_the_shards_and_the_waiter_takes_over_a_dead_claim(tmp_path):
    job = make_job(tmp_path)
    job.path(0).parent.joinpath(js.CLAIMS).mkdir(exist_ok=True)
    _foreign_claim(job.claim_path(3), age_s=0)  # a worker elsewhere holds shard 3, then dies

    def slow(k, ids):
        time.sleep(0.05)
        return ids

    results = {}
    helper = threading.Thread(
        target=lambda: results.setdefault(1, js.run_worker(job, slow, js.Identity(1, 2, 1), lease_s=30, wait=False))
    )
    helper.start()
    started = time.time()
    results[0] = js.run_worker(job, slow, js.Identity(0, 2, 0), lease_s=0.6, wait=True, poll_s=0.05)
    helper.join()
    assert 3 not in results[1].computed  # its lease (30 s) keeps the dead claim valid for it
    computed = results[0].computed + results[1].computed
    assert sorted(computed) == [0, 1, 2, 3]  # each shard exactly once
    assert 3 in results[0].computed and time.time() - started >= 0.5  # after the dead claim's lease ran out
    assert json.loads(js.merge(job, "all.json", combine).read_text()) == sorted(IDS)


def test_identity_from_torchrun_env():
    assert js.Identity.from_env({}) == js.Identity(0, 1, 0)
    ident = js.Identity.from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert ident == js.Identity(5, 8, 1) and ident.device("cuda") == "cuda:1" and ident.device("cpu") == "cpu"
    with pytest.raises(ValueError):
        js.Identity.from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_the_runner_imports_only_the_standard_library():
    path = Path(js.__file__)
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots - set(sys.stdlib_module_names)
