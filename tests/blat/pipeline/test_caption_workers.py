"""Stage 2 with several workers (blat_jobs.shards): `--workers 2` and a real `torchrun --nproc_per_node 2` write the
captions of a single-worker run byte for byte, each shard computed once; a killed worker's shard is redone by the
next run; `--merge-only` refuses an incomplete job and names the missing shards."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from blat.pipeline.caption import MERGED, caption_split
from blat.pipeline.stages import CaptioningConfig
from blat_jobs import shards as js
from tests.jobs.claims import kill_holding

from .pipeline_data import REPO, tiny_captioner, tiny_scenes

CFG = CaptioningConfig(shard_size=3, batch_size=2, num_threads=1)  # 24 tags-only clips -> 8 shards
FLAGS = ["--shard-size", "3", "--batch-size", "2", "--num-threads", "1", "--no-progress", "--log-level", "WARNING"]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """captions.jsonl bytes of one in-process worker, captioner mode."""
    return caption_split(
        tiny_scenes(), tmp_path_factory.mktemp("one") / "job", CFG, tiny_captioner(), progress=False
    ).read_bytes()


def run(args: list[str], env: dict | None = None, torchrun: bool = False) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"] if torchrun else []
    cmd = [sys.executable, *launcher, "-m", "blat.pipeline.caption", *args]
    return subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **ENV, **(env or {})}, capture_output=True, text=True, timeout=240
    )


def captioner_args(out) -> list[str]:
    return ["--scenes", str(tiny_scenes()), "--checkpoint", str(tiny_captioner()), "--out", str(out), *FLAGS]


def each_shard_once(out, n: int = 8) -> dict[str, list[int]]:
    ledgers = js.ledgers(out)
    assert sorted(k for s in ledgers.values() for k in s) == list(range(n)), ledgers
    return ledgers


def test_two_local_workers_write_the_single_worker_captions(single, tmp_path):
    out = tmp_path / "workers"
    done = run([*captioner_args(out), "--workers", "2"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / MERGED).read_bytes() == single
    ledgers = each_shard_once(out)
    assert all(w.startswith(("rank0of2", "rank1of2")) for w, s in ledgers.items() if s)  # the parent had nothing left


@pytest.mark.slow
def test_torchrun_ranks_write_the_single_worker_captions(single, tmp_path):
    out = tmp_path / "torchrun"
    done = run(captioner_args(out), env={js.DELAY_ENV: "0.2"}, torchrun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / MERGED).read_bytes() == single
    ledgers = each_shard_once(out)
    assert {w.split("-")[0] for w, s in ledgers.items() if s} <= {"rank0of2", "rank1of2"}
    assert "rank 1 of 2: done; rank 0 merges" in done.stdout


def test_a_killed_workers_shard_is_redone_and_merge_only_checks(tmp_path):
    args = ["--scenes", str(tiny_scenes()), "--mode", "templates", "--out", str(tmp_path / "t"), *FLAGS]
    reference = caption_split(
        tiny_scenes(), tmp_path / "ref", CaptioningConfig(mode="templates", shard_size=3), progress=False
    ).read_bytes()
    out = tmp_path / "t"
    proc = subprocess.Popen(
        [sys.executable, "-m", "blat.pipeline.caption", *args],
        cwd=REPO,
        env={**os.environ, **ENV, js.DELAY_ENV: "60"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    claim = out / js.CLAIMS / "shard-00000.claim"
    kill_holding(proc, claim)
    assert claim.exists() and not list(out.glob("shard-*.jsonl"))  # killed holding shard 0

    merge = run([*args, "--merge-only"])
    assert merge.returncode == 2 and "8 of 8 shards unfinished" in merge.stderr, merge.stderr
    assert "shard-00000.jsonl (missing; claimed by rank0of1" in merge.stderr and "shard-00007.jsonl" in merge.stderr
    assert not (out / MERGED).exists()

    done = run([*args, "--workers", "2", "--lease-s", "2"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / MERGED).read_bytes() == reference
    each_shard_once(out)
    assert not claim.exists() and not list(out.glob("*.tmp*"))
    assert run([*args, "--merge-only"]).returncode == 0 and (out / MERGED).read_bytes() == reference
