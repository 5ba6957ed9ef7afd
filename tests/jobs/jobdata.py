"""Test helpers shared by the embedding job's tests: a small collection of real WAVs, the job's result as the
gateway's rebuild reads it, and the job run in-process or as a command."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from blat_gateway.index.bulk import read_folder
from blat_jobs import embed
from blat_jobs.ray_run import RayOptions, Summary

REPO = Path(__file__).resolve().parents[2]
SR = 32_000


def write_collection(root: Path, n_clips: int) -> Path:
    """n short WAVs (tones and noise, 0.5-2 s) and a manifest in the gateway's format (relative paths)."""
    rng = np.random.default_rng(0)
    rows = []
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for i in range(n_clips):
        n = int(SR * (0.5 + 1.5 * rng.random()))
        t = np.arange(n) / SR
        wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) if i % 2 else 0.2 * rng.standard_normal(n)
        sf.write(str(root / "audio" / f"clip{i}.wav"), wave.astype(np.float32), SR, subtype="PCM_16")
        row = {"audio": f"audio/clip{i}.wav", "tags": ["Dog"] if i % 3 == 0 else [], "caption": f"clip number {i}"}
        if i % 2:
            row["id"] = f"odd/{i}"  # the others default to the file's stem
        rows.append(row)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "manifest.jsonl"


def result(out: Path) -> tuple[list[dict], np.ndarray]:
    """The finished folder as the gateway's rebuild reads it (blat_gateway.index.bulk): records as dicts (tags a list,
    as the job wrote them) and embeddings, in id order."""
    _, pairs = read_folder(out)
    pairs = list(pairs())
    return [{**dataclasses.asdict(r), "tags": list(r.tags)} for r, _ in pairs], np.stack([e for _, e in pairs])


def run_job(
    collection, bundle, out, shard_size: int, workers: int = 1, num_cpus: float | None = None, decode: str = "tasks"
) -> Summary:
    """The job in-process, on the Ray this process is connected to (the session's cluster)."""
    opts = RayOptions(workers=workers, num_cpus=num_cpus, progress=False, decode=decode)
    return embed.run(collection, bundle, out, shard_size=shard_size, threads=1, ray=opts)


def cli(*args: str, env: dict | None = None, wait: bool = True, timeout: float = 180):
    """`python -m blat_jobs.embed ...` as a user runs it (without --address: its own local Ray)."""
    cmd = [sys.executable, "-m", "blat_jobs.embed", *args]
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # set by this process's ray.init
    env = {**base, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_args(collection, bundle, out, shard_size: int, *extra: str) -> list[str]:
    return [
        "run",
        "--manifest",
        str(collection),
        "--bundle",
        str(bundle),
        "--out",
        str(out),
        "--shard-size",
        str(shard_size),
        "--threads",
        "1",
        "--log-level",
        "WARNING",
        "--no-progress",
        *extra,
    ]


def shard_writers(out: Path) -> dict[int, str]:
    """shard -> the actor that wrote it, "<Ray node id>/<pid>"."""
    got = {}
    for path in sorted(out.glob("shard-*.npz")):
        with np.load(path) as z:
            got[int(path.stem.split("-")[1])] = str(z["worker"])
    return got
