"""blat_jobs.embed: several worker processes embed a collection exactly like one worker; a killed worker's shard is
redone by another; the merge refuses an incomplete job and names what is missing.

Equality is exact (np.array_equal): every worker runs ONNX Runtime with one thread on the same shards, so the same
inputs go through the same kernels (seen: bit-identical).

The workers are real processes (one is killed); the gateway that rebuilds from their output is one too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from blat_gateway.index.bulk import read_folder
from blat_jobs import embed
from blat_jobs import shards as js
from tests.jobs.claims import kill_holding

REPO = Path(__file__).resolve().parents[2]
SR = 32_000
N_CLIPS, SHARD = 10, 3  # -> 4 shards


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """10 short WAVs (tones and noise, 0.5-2 s) and a manifest in the gateway's format (relative paths)."""
    root = tmp_path_factory.mktemp("collection")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_CLIPS):
        n = int(SR * (0.5 + 1.5 * rng.random()))
        t = np.arange(n) / SR
        wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) if i % 2 else 0.2 * rng.standard_normal(n)
        (root / "audio").mkdir(exist_ok=True)
        sf.write(str(root / "audio" / f"clip{i}.wav"), wave.astype(np.float32), SR, subtype="PCM_16")
        row = {"audio": f"audio/clip{i}.wav", "tags": ["Dog"] if i % 3 == 0 else [], "caption": f"clip number {i}"}
        if i % 2:
            row["id"] = f"odd/{i}"  # the others default to the file's stem
        rows.append(row)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "manifest.jsonl"


def result(out: Path) -> tuple[list[dict], np.ndarray]:
    """The finished folder as the gateway's rebuild reads it (blat_gateway.index.bulk): records as dicts (tags a list,
    as
    the job wrote them) and embeddings, in id order."""
    _, pairs = read_folder(out)
    pairs = list(pairs())
    return [{**dataclasses.asdict(r), "tags": list(r.tags)} for r, _ in pairs], np.stack([e for _, e in pairs])


@pytest.fixture(scope="module")
def single(collection, tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "job"
    summary = embed.run(collection, tiny_bundle, out, shard_size=SHARD, threads=1)
    assert summary.computed == [0, 1, 2, 3]
    return result(out)


def cli(*args: str, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "blat_jobs.embed", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def run_args(collection, bundle, out, *extra) -> list[str]:
    return [
        "run",
        "--manifest",
        str(collection),
        "--bundle",
        str(bundle),
        "--out",
        str(out),
        "--shard-size",
        str(SHARD),
        "--threads",
        "1",
        "--log-level",
        "WARNING",
        *extra,
    ]


def assert_same(out: Path, single) -> None:
    records, emb = result(out)
    ref_records, ref_emb = single
    assert [r["id"] for r in records] == [r["id"] for r in ref_records] == sorted(r["id"] for r in ref_records)
    assert records == ref_records and emb.dtype == np.float32 and np.array_equal(emb, ref_emb)


def shard_writers(out: Path) -> dict[int, str]:
    got = {}
    for k in range(4):
        with np.load(out / f"shard-{k:05d}.npz") as z:
            got[k] = str(z["worker"])
    return got


def test_records_and_spec(single, collection, tiny_bundle, tmp_path):
    records, emb = single
    assert len(records) == N_CLIPS and emb.shape[0] == N_CLIPS
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    by_id = {r["id"]: r for r in records}
    assert by_id["clip0"]["tags"] == ["Dog"] and by_id["odd/1"]["caption"] == "clip number 1"
    assert by_id["clip0"]["source_uri"] == str(collection.parent / "audio" / "clip0.wav")
    assert all(len(r["content_hash"]) == 64 and 0.4 < r["duration_s"] < 2.1 for r in records)
    out = tmp_path / "job"
    embed.run(collection, tiny_bundle, out, shard_size=SHARD, threads=1)
    spec = json.loads((out / js.JOB).read_text())["spec"]
    manifest_sha256 = hashlib.sha256(collection.read_bytes()).hexdigest()
    assert spec["bundle_id"] == "tiny@test" and spec["manifest_sha256"] == manifest_sha256
    other = tmp_path / "other.jsonl"
    other.write_text(collection.read_text().replace("clip number 1", "clip one"))
    (tmp_path / "audio").symlink_to(collection.parent / "audio")
    with pytest.raises(js.JobMismatch, match="manifest_sha256"):
        embed.run(other, tiny_bundle, out, shard_size=SHARD, threads=1)


def test_two_local_workers_equal_one_and_compute_each_shard_once(single, collection, tiny_bundle, tmp_path):
    out = tmp_path / "two"
    done = cli(*run_args(collection, tiny_bundle, out, "--workers", "2"), env={js.DELAY_ENV: "0.3"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same(out, single)
    ledgers = js.ledgers(out)
    computed = sorted(k for shards in ledgers.values() for k in shards)
    assert computed == [0, 1, 2, 3], ledgers  # each shard exactly once
    assert {w for w in ledgers if ledgers[w]} <= {w for w in ledgers if w.startswith(("rank0of2", "rank1of2"))}
    writers = shard_writers(out)
    assert all(k in ledgers[writers[k]] for k in writers)


def test_torchrun_style_ranks_equal_one(single, collection, tiny_bundle, tmp_path):
    """Two independent processes with torchrun's environment: rank 1 leaves after its pass, rank 0 merges."""
    out = tmp_path / "ranks"
    procs = [
        cli(
            *run_args(collection, tiny_bundle, out),
            wait=False,
            env={"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": "2", js.DELAY_ENV: "0.3"},
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    assert "merged" in outs[0][0] and "merged" not in outs[1][0]
    assert_same(out, single)
    assert sorted(k for s in js.ledgers(out).values() for k in s) == [0, 1, 2, 3]


def test_a_killed_workers_shard_is_redone(single, collection, tiny_bundle, tmp_path):
    out = tmp_path / "killed"
    proc = cli(*run_args(collection, tiny_bundle, out), wait=False, env={js.DELAY_ENV: "60"})
    claim = out / js.CLAIMS / "shard-00000.claim"
    kill_holding(proc, claim)
    assert claim.exists() and not (out / "shard-00000.npz").exists()  # killed while it held shard 0

    merged = cli("merge", "--out", str(out))
    assert merged.returncode == 2 and "shard-00000.npz (missing" in merged.stderr, merged.stderr
    assert not (out / embed.MERGED).exists()

    done = cli(*run_args(collection, tiny_bundle, out, "--workers", "2", "--lease-s", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same(out, single)
    ledgers = js.ledgers(out)
    assert sorted(k for s in ledgers.values() for k in s) == [0, 1, 2, 3]  # the killed worker wrote nothing
    assert not claim.exists() and json.loads((out / embed.MERGED).read_text())["items"] == N_CLIPS
    assert cli("merge", "--out", str(out)).returncode == 0


@pytest.mark.slow
def test_a_gateway_rebuilds_from_the_job_without_embedding_again(single, collection, tiny_bundle, tmp_path):
    """The job folder is a rebuild source: the index then holds exactly the job's records and embeddings."""
    import shutil

    from blat_client import Client, ClientError
    from tests.server.conftest import running_server

    roots = tmp_path / "roots"
    out = roots / "job"
    shutil.copytree(collection.parent, roots / "collection")
    embed.run(roots / "collection" / "manifest.jsonl", tiny_bundle, out, shard_size=SHARD, threads=1)
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
