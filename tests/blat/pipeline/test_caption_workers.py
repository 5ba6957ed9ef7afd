"""Stage 2 on several Ray actors (blat_jobs.ray_run): two actors, in-process or from the command line joined to a
cluster, write the captions of a one-actor run byte for byte; a killed driver's job resumes with only the missing
shards computed; `--merge-only` refuses an incomplete job and names the missing shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from blat.pipeline.caption import MERGED, caption_split
from blat.pipeline.stages import CaptioningConfig
from blat_jobs.ray_run import DELAY_ENV, RayOptions

from .pipeline_data import REPO, tiny_captioner, tiny_scenes

CFG = CaptioningConfig(shard_size=3, batch_size=2, num_threads=1)  # 24 tags-only clips -> 8 shards
FLAGS = ["--shard-size", "3", "--batch-size", "2", "--num-threads", "1", "--no-progress", "--log-level", "WARNING"]
pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """captions.jsonl bytes of one actor, captioner mode."""
    return caption_split(
        tiny_scenes(), tmp_path_factory.mktemp("one") / "job", CFG, tiny_captioner(), progress=False
    ).read_bytes()


def command(args: list[str], env: dict | None = None, wait: bool = True):
    """The command line, joined to the session's cluster ($RAY_ADDRESS, set by ray.init in this process)."""
    cmd = [sys.executable, "-m", "blat.pipeline.caption", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_two_actors_write_the_single_actor_captions(single, tmp_path):
    out = tmp_path / "two"
    merged = caption_split(
        tiny_scenes(), out, CFG, tiny_captioner(), ray=RayOptions(workers=2, num_cpus=0.5, progress=False)
    )
    assert merged.read_bytes() == single


def test_the_command_line_on_a_cluster_address(single, ray_cluster, tmp_path):
    out = tmp_path / "cli"
    args = ["--scenes", str(tiny_scenes()), "--checkpoint", str(tiny_captioner()), "--out", str(out), *FLAGS]
    done = command([*args, "--address", ray_cluster.address, "--workers", "2", "--num-cpus", "0.5"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / MERGED).read_bytes() == single


def test_a_killed_drivers_job_resumes_and_merge_only_checks(tmp_path):
    args = ["--scenes", str(tiny_scenes()), "--mode", "templates", "--out", str(tmp_path / "t"), *FLAGS]
    reference = caption_split(
        tiny_scenes(), tmp_path / "ref", CaptioningConfig(mode="templates", shard_size=3), progress=False
    ).read_bytes()
    out = tmp_path / "t"
    proc = command([*args, "--workers", "2", "--num-cpus", "0.5"], env={DELAY_ENV: "0.5"}, wait=False)
    deadline = time.time() + 120
    while len(list(out.glob("shard-*.jsonl"))) < 2:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "no shards within 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.5)  # an actor may finish the shard it had begun: the driver's death ends its actors
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.jsonl")}
    assert 2 <= len(before) < 8

    merge = command([*args, "--merge-only"])
    assert merge.returncode == 2 and f"{8 - len(before)} of 8 shards unfinished" in merge.stderr, merge.stderr
    missing = [f"shard-{k:05d}.jsonl" for k in range(8) if f"shard-{k:05d}.jsonl" not in before]
    assert all(f"{name} (missing)" in merge.stderr for name in missing)
    assert not (out / MERGED).exists()

    done = command([*args, "--workers", "2", "--num-cpus", "0.5"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / MERGED).read_bytes() == reference
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before  # only the missing shards were computed
    assert not list(out.glob("*.tmp*"))
    assert command([*args, "--merge-only"]).returncode == 0 and (out / MERGED).read_bytes() == reference
