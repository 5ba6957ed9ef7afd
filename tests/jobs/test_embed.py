"""blat_jobs.embed on Ray: two model actors embed a collection exactly like one; a rerun computes only the shards
that are missing; the merge refuses an incomplete job and names what is missing; a request the cluster cannot hold
fails at once. Actor, node and driver kills: test_ray_faults.py.

Equality is exact (np.array_equal): every actor runs ONNX Runtime with one thread on the same shards, so the same
inputs go through the same kernels (seen: bit-identical).

The jobs run on the session's Ray cluster (tests/conftest.py), in-process or as a subprocess joined to it; one
command line run starts its own local Ray, as a user's would. The gateway that rebuilds from their output is real.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from blat_jobs import embed
from blat_jobs import shards as js
from blat_jobs.ray_run import RayOptions, Unschedulable
from tests.jobs.jobdata import cli, result, shard_writers, write_collection
from tests.jobs.jobdata import run_args as job_args
from tests.jobs.jobdata import run_job as job

N_CLIPS, SHARD = 10, 3  # -> 4 shards


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    return write_collection(tmp_path_factory.mktemp("collection"), N_CLIPS)


def run_job(collection, bundle, out, workers: int = 1, **kw):
    return job(collection, bundle, out, SHARD, workers, **kw)


def run_args(collection, bundle, out, *extra: str) -> list[str]:
    return job_args(collection, bundle, out, SHARD, *extra)


@pytest.fixture(scope="module")
def single(collection, tiny_bundle, ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "job"
    summary = run_job(collection, tiny_bundle, out)
    assert sorted(summary.computed) == [0, 1, 2, 3] and len(summary.workers) == 1
    return result(out)


def assert_same(out: Path, single) -> None:
    records, emb = result(out)
    ref_records, ref_emb = single
    assert [r["id"] for r in records] == [r["id"] for r in ref_records] == sorted(r["id"] for r in ref_records)
    assert records == ref_records and emb.dtype == np.float32 and np.array_equal(emb, ref_emb)


def test_records_and_spec(single, collection, tiny_bundle, tmp_path):
    records, emb = single
    assert len(records) == N_CLIPS and emb.shape[0] == N_CLIPS
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    by_id = {r["id"]: r for r in records}
    assert by_id["clip0"]["tags"] == ["Dog"] and by_id["odd/1"]["caption"] == "clip number 1"
    assert by_id["clip0"]["source_uri"] == str(collection.parent / "audio" / "clip0.wav")
    assert all(len(r["content_hash"]) == 64 and 0.4 < r["duration_s"] < 2.1 for r in records)
    out = tmp_path / "job"
    run_job(collection, tiny_bundle, out)
    spec = json.loads((out / js.JOB).read_text())["spec"]
    manifest_sha256 = hashlib.sha256(collection.read_bytes()).hexdigest()
    assert spec["bundle_id"] == "tiny@test" and spec["manifest_sha256"] == manifest_sha256
    other = tmp_path / "other.jsonl"
    other.write_text(collection.read_text().replace("clip number 1", "clip one"))
    (tmp_path / "audio").symlink_to(collection.parent / "audio")
    with pytest.raises(js.JobMismatch, match="manifest_sha256"):
        run_job(other, tiny_bundle, out)


@pytest.mark.parametrize("decode", ["actors", "tasks"])  # decoded in the actors (CPU default) or by Ray tasks
def test_two_actors_equal_one_and_write_each_shard_once(single, collection, tiny_bundle, tmp_path, decode):
    out = tmp_path / "two"
    summary = run_job(collection, tiny_bundle, out, workers=2, num_cpus=0.5, decode=decode)
    assert sorted(summary.computed) == [0, 1, 2, 3] and sum(summary.workers.values()) == 4
    assert_same(out, single)
    assert set(shard_writers(out).values()) <= set(summary.workers)


def test_a_rerun_computes_only_missing_shards_and_merge_names_them(single, collection, tiny_bundle, tmp_path):
    out = tmp_path / "rerun"
    run_job(collection, tiny_bundle, out, workers=2)
    kept = {k: os.stat(out / f"shard-{k:05d}.npz") for k in (0, 2, 3)}
    (out / "shard-00001.npz").unlink()
    (out / "shard-00003.npz").write_bytes(b"damaged")
    kept.pop(3)
    merged = cli("merge", "--out", str(out))
    assert merged.returncode == 2, merged.stderr
    assert "2 of 4 shards unfinished" in merged.stderr and "shard-00001.npz (missing)" in merged.stderr
    assert "shard-00003.npz (damaged or other ids)" in merged.stderr

    again = run_job(collection, tiny_bundle, out, workers=2)
    assert sorted(again.computed) == [1, 3] and again.found_done == 2
    for k, st in kept.items():  # the shards already there were not written again
        now = os.stat(out / f"shard-{k:05d}.npz")
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert_same(out, single)
    assert cli("merge", "--out", str(out)).returncode == 0
    assert run_job(collection, tiny_bundle, out).computed == []  # finished: nothing to compute, Ray not needed


def test_the_command_line_on_its_own_local_ray(single, collection, tiny_bundle, tmp_path):
    """No --address: the command starts a local Ray with this machine's cores (and it goes away with it)."""
    out = tmp_path / "cli"
    done = cli(*run_args(collection, tiny_bundle, out, "--workers", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "computed shards [0, 1, 2, 3] (0 already done); merged" in done.stdout
    assert_same(out, single)
    assert json.loads((out / embed.MERGED).read_text())["items"] == N_CLIPS


def test_resources_the_cluster_lacks_fail_at_once_naming_them(collection, tiny_bundle, ray_cluster, tmp_path):
    started = time.monotonic()
    with pytest.raises(
        Unschedulable, match=r"1 model actor\(s\) with 1 CPU and 1 GPU each; the cluster has 4 CPU and 0 GPU on 2 node"
    ):
        embed.run(
            collection, tiny_bundle, tmp_path / "gpu", shard_size=SHARD, ray=RayOptions(num_gpus=1, progress=False)
        )
    with pytest.raises(Unschedulable, match="no CPU left for the decode tasks"):
        embed.run(
            collection,
            tiny_bundle,
            tmp_path / "cpu",
            shard_size=SHARD,
            ray=RayOptions(workers=2, num_cpus=2, decode="tasks"),
        )
    assert time.monotonic() - started < 10
    done = cli(
        *run_args(collection, tiny_bundle, tmp_path / "cli", "--num-gpus", "1", "--address", ray_cluster.address),
        "--wait-resources",
        "1",  # joined by address, it waits (default 60 s) for nodes that may still be joining
    )
    assert done.returncode == 2 and "error: asked for 1 model actor(s)" in done.stderr and "0 GPU" in done.stderr
    assert not list((tmp_path / "cli").glob("shard-*"))


@pytest.mark.slow
def test_a_gateway_rebuilds_from_the_job_without_embedding_again(single, collection, tiny_bundle, tmp_path):
    """The job folder is a rebuild source: the index then holds exactly the job's records and embeddings."""
    import shutil

    from blat_client import Client, ClientError
    from tests.server.conftest import running_server

    roots = tmp_path / "roots"
    out = roots / "job"
    shutil.copytree(collection.parent, roots / "collection")
    run_job(roots / "collection" / "manifest.jsonl", tiny_bundle, out)
    records, emb = single
    with running_server(tiny_bundle, tmp_path, roots=roots) as server:
        client = Client(server.http_url)
        with pytest.raises(ClientError) as e:  # not a finished job
            client.start_rebuild(embeddings=str(roots / "collection"), mode="replace")
        assert e.value.status == 400 and "complete.json" in e.value.message
        job = client.start_rebuild(embeddings=str(out), mode="replace")
        while not (job := client.rebuild_status(job.job_id)).finished:
            time.sleep(0.1)
        assert (job.state, job.added, job.total) == ("succeeded", N_CLIPS, N_CLIPS)
        assert client.stats().items == N_CLIPS
        for r in records:
            item = client.get_item(r["id"])
            assert (item.tags, item.caption) == (tuple(r["tags"]), r["caption"])
            assert item.duration_s == pytest.approx(r["duration_s"], rel=1e-6)  # float32 on the wire
        # the gateway embeds a clip as the job did, and finds the job's vector for it at cosine 1
        for r, e in list(zip(records, emb))[:4]:
            data = Path(r["source_uri"]).read_bytes()
            np.testing.assert_allclose(client.embed_audio(data), e, atol=1e-4)
            hits = client.search_audio(data, k=3).hits
            assert any(h.id == r["id"] and h.score == pytest.approx(1.0, abs=1e-4) for h in hits)
