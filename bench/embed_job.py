"""Embedding-job throughput: the engine before Ray (local worker processes claiming shards through files) against
Ray Data at the same number of workers, on the same bundle and manifest, in one run.

    .venv/bin/python bench/embed_job.py --bundle runs/default/bundle --baseline-src /tmp/jobs-before

--baseline-src is a checkout of the commit before Ray (its `blat_jobs.embed run --workers N` starts N processes
that claim shards through files); it runs on this venv, its packages first on PYTHONPATH. Both sides run as the
command a user types, end to end (interpreter start, imports, Ray's start for the new one, every shard, the merge),
alternating, --repeats times each; the figures are medians. Two rates per engine: end to end (clips / the command's
wall time) and steady (the clips after the first shard / the time from the first shard file to the last, from
their mtimes: the same measure for both, start-up left out). The manifest is --clips rows over the recordings in
examples/ (0.4-12 s, 16 kHz), repeated under distinct ids. Ray's start-up cost comes from the job's own structured
log ("job computed": startup_s is starting Ray and checking its resources, first_shard_s the time to the first shard
written); for both engines the time from the command's start to its first shard file is printed too. The two
runs' embeddings are compared (they should be equal: same shards, same batches, one thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIPS = sorted([*ROOT.glob("examples/*.wav"), *ROOT.glob("examples/clips/*.wav")])


def write_manifest(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"clip{i:05d}", "audio": str(CLIPS[i % len(CLIPS)]), "tags": []} for i in range(n)]
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float, list[dict]]:
    """Wall seconds of the command, its start as a wall-clock time, and its JSON log lines."""
    started, t0 = time.time(), time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    logs = []
    for line in done.stderr.splitlines():
        try:
            logs.append(json.loads(line))
        except ValueError:
            pass
    return wall, started, logs


def shard_times(out: Path, started: float, shard_size: int, clips: int) -> tuple[float, float]:
    """(seconds from the command's start to its first shard file, steady clips/s from the first shard to the last)."""
    mtimes = sorted(p.stat().st_mtime for p in out.glob("shard-*.npz"))
    return mtimes[0] - started, (clips - shard_size) / (mtimes[-1] - mtimes[0])


def embeddings(out: Path) -> np.ndarray:
    parts = []
    for path in sorted(out.glob("shard-*.npz")):
        with np.load(path) as z:
            parts.append(z["embeddings"])
    return np.concatenate(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--baseline-src", type=Path, required=True, help="a checkout of the commit before Ray")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clips", type=int, default=400)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-embed-job")
    p.add_argument("--decode", default="tasks", choices=("tasks", "actors"), help="the Ray side's --decode")
    args = p.parse_args(argv)
    manifest = write_manifest(args.work, args.clips)
    common = [
        "--manifest",
        str(manifest),
        "--bundle",
        str(args.bundle.resolve()),
        "--shard-size",
        str(args.shard_size),
        "--workers",
        str(args.workers),
        "--log-level",
        "INFO",
    ]
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    src = args.baseline_src.resolve()
    sides = {
        "local workers (before)": (
            [sys.executable, "-m", "blat_jobs.embed", "run", *common],
            {**base, "PYTHONPATH": os.pathsep.join(str(src / d) for d in ("", "server", "export"))},
            src,
        ),
        "Ray Data (now)": (
            [sys.executable, "-m", "blat_jobs.embed", "run", *common, "--no-progress", "--decode", args.decode],
            {**base, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"},
            ROOT,
        ),
    }
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sides}  # (wall, first shard, steady)
    ray_logs: list[dict] = []
    for r in range(args.repeats):
        for name, (cmd, env, cwd) in sides.items():
            out = args.work / f"out-{len(runs[name])}-{'ray' if 'Ray' in name else 'before'}"
            shutil.rmtree(out, ignore_errors=True)
            wall, started, logs = run([*cmd, "--out", str(out)], env, cwd)
            runs[name].append((wall, *shard_times(out, started, args.shard_size, args.clips)))
            ray_logs += [line for line in logs if line.get("msg") == "job computed"]
            print(f"  run {r + 1}: {name}: {wall:.1f} s", flush=True)
    medians = {name: [statistics.median(x) for x in zip(*rs)] for name, rs in runs.items()}
    (wall_b, _, steady_b), (wall_r, _, steady_r) = medians.values()
    diff = np.abs(embeddings(args.work / "out-0-before") - embeddings(args.work / "out-0-ray")).max()
    head = f"{args.clips} clips, shards of {args.shard_size}, {args.workers} workers, Ray decode {args.decode}"
    print(f"\n{head}, {os.cpu_count()} cores, bundle {args.bundle}; median of {args.repeats} runs each")
    print(f"{'engine':24s} {'wall s':>7s} {'clips/s':>8s} {'first shard s':>14s} {'steady clips/s':>15s}")
    for name, (wall, first, steady) in medians.items():
        print(f"{name:24s} {wall:7.1f} {args.clips / wall:8.1f} {first:14.1f} {steady:15.1f}")
    print(f"ratio Ray / before: end to end {wall_b / wall_r:.2f}, steady {steady_r / steady_b:.2f} (clips/s)")
    startup = statistics.median(line["startup_s"] for line in ray_logs)
    first = statistics.median(line["first_shard_s"] for line in ray_logs)
    print(f"Ray start-up (ray.init + resource check): {startup:.1f} s; first shard written after {first:.1f} s")
    print(f"largest embedding difference between the two engines: {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
