"""Ingestion rate: a folder of clips added through the gateway's own paths, against the audio encoder alone.

    .venv/bin/python bench/ingest.py --bundle runs/default/bundle --clips 200 --json ingest.json

Writes --clips WAVs of log-uniform lengths in [--min-s, --max-s] (most clips short, a few long, as in a sound-effects
library), then, each against a fresh `python -m blat_gateway` subprocess (an empty index; default settings):
  rebuild      POST /v1/index/rebuild {"folder"}, polled until the job has succeeded (decode, embed in length-sorted
               batches, write, build and validate the index); job_s is the job's own start-to-finish time;
  from-path    POST /v1/items/from-path for every file, at each --concurrency (the micro-batcher merges concurrent
               requests; every item is durable when its 201 answers).
Then, with no gateway running, the encoder alone: the same clips decoded (not timed) and embedded in-process by
ModelRuntime over ONNX Runtime in `blat_gateway.inference.length_batches` of --batch, with --threads (0 = all cores, the
gateway's default). Prints one JSON object and a table: clips/s and audio seconds/s of each path and its ratio to the
encoder-only rate. Exit 1 when a path did not ingest every clip.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import GatewayProcess, RawHttp, percentile_ms, wav_bytes  # noqa: E402

from blat_contract.bundle import read_bundle  # noqa: E402
from blat_gateway.audio import decode_audio  # noqa: E402
from blat_gateway.backends.ort import OnnxRuntimeBackend  # noqa: E402
from blat_gateway.inference import length_batches  # noqa: E402
from blat_gateway.runtime import ModelRuntime  # noqa: E402

FINAL_STATES = {"succeeded", "failed", "cancelled"}


def write_clips(folder: Path, n: int, min_s: float, max_s: float, rate: int) -> list[float]:
    """n float WAVs named clip0000.wav...; returns their lengths in seconds."""
    folder.mkdir(parents=True)
    lengths = np.exp(np.random.default_rng(0).uniform(np.log(min_s), np.log(max_s), n))
    for i, seconds in enumerate(lengths):
        (folder / f"clip{i:04d}.wav").write_bytes(wav_bytes(float(seconds), rate, seed=i))
    return [float(s) for s in lengths]


def rates(n: int, audio_s: float, wall: float) -> dict:
    return {"wall_s": round(wall, 2), "clips_per_s": round(n / wall, 2), "audio_s_per_s": round(audio_s / wall, 1)}


@contextlib.contextmanager
def gateway(bundle: Path, work: Path, clips: Path) -> Iterator[GatewayProcess]:
    """A fresh gateway whose ingest root holds the clips (hard links: a symlink would resolve outside the root), warmed
    by one embedding so that no path pays for the first model call."""
    gw = GatewayProcess(bundle, work)
    (gw.roots / "clips").mkdir()
    for f in clips.iterdir():
        os.link(f, gw.roots / "clips" / f.name)
    with gw:
        httpx.post(gw.url + "/v1/embed/audio", content=min(clips.iterdir()).read_bytes(), timeout=60).raise_for_status()
        yield gw


def index_count(gw: GatewayProcess) -> int:
    return httpx.get(gw.url + "/v1/index/stats", timeout=30).json()["items"]


def iso_s(text: str) -> float:
    """The gateway's ISO 8601 UTC time -> Unix seconds."""
    return datetime.fromisoformat(text).timestamp()


def via_rebuild(gw: GatewayProcess, n: int, audio_s: float) -> dict:
    t0 = time.perf_counter()
    job = httpx.post(
        gw.url + "/v1/index/rebuild", json={"folder": str(gw.roots / "clips"), "mode": "replace"}, timeout=60
    ).json()
    while job["state"] not in FINAL_STATES:
        time.sleep(0.05)
        job = httpx.get(f"{gw.url}/v1/index/rebuild/{job['job_id']}", timeout=30).json()
    out = rates(n, audio_s, time.perf_counter() - t0)
    return {
        **out,
        "job_s": round(iso_s(job["finished_at"]) - iso_s(job["started_at"]), 2),
        "state": job["state"],
        "added": job["added"],
        "error": job["error"],
        "index_count": index_count(gw),
    }


async def post_each(url: str, files: list[Path], concurrency: int) -> tuple[list[tuple[int, float]], float]:
    """Every file once through POST /v1/items/from-path, `concurrency` requests in flight; (results, wall seconds)."""
    client, todo, results = RawHttp(url, cap=concurrency), iter(files), []

    async def worker() -> None:
        for f in todo:  # one iterator shared by the workers: each file is taken once
            body = json.dumps({"id": f.stem, "path": str(f)}).encode()
            results.append(await client.request("POST", "/v1/items/from-path", body))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    client.close()
    return results, wall


def via_from_path(gw: GatewayProcess, n: int, audio_s: float, concurrency: int) -> dict:
    results, wall = asyncio.run(post_each(gw.url, sorted((gw.roots / "clips").iterdir()), concurrency))
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = sorted(t for s, t in results if s == 201)
    return {
        **rates(n, audio_s, wall),
        "statuses": statuses,
        "p50_ms": percentile_ms(ok, 0.5),
        "p99_ms": percentile_ms(ok, 0.99),
        "index_count": index_count(gw),
    }


def encoder_only(bundle: Path, clips: Path, threads: int, batch: int, audio_s: float) -> dict:
    runtime = ModelRuntime(bundle, OnnxRuntimeBackend(bundle, threads=threads))
    rate = runtime.sample_rate
    waves = [decode_audio(f.read_bytes(), rate).samples for f in sorted(clips.iterdir())]
    runtime.encode_audio(waves[:1])  # warm-up: the first run allocates
    t0 = time.perf_counter()
    for b in length_batches(waves, len, batch):
        runtime.encode_audio(b)
    return {**rates(len(waves), audio_s, time.perf_counter() - t0), "threads": threads, "batch": batch}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "runs/default/bundle")
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--min-s", type=float, default=0.5)
    p.add_argument("--max-s", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="from-path requests in flight")
    p.add_argument("--batch", type=int, default=16, help="encoder-only clips per call (the gateway's max_batch)")
    p.add_argument("--threads", type=int, default=0, help="encoder-only ONNX Runtime threads (0: all cores)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    manifest = read_bundle(args.bundle, verify=False)
    out: dict = {"bundle": manifest.id, "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "clips": args.clips}
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        clips = Path(tmp) / "clips"
        lengths = write_clips(clips, args.clips, args.min_s, args.max_s, manifest.audio.sample_rate)
        audio_s = sum(lengths)
        out.update(audio_s=round(audio_s, 1), median_clip_s=round(float(np.median(lengths)), 2))
        paths = [("rebuild", None)] + [(f"from-path c={c}", c) for c in args.concurrency]
        for name, concurrency in paths:  # one gateway at a time, each with an empty index
            with gateway(args.bundle, Path(tmp) / name.replace(" ", "_"), clips) as gw:
                out[name] = (
                    via_rebuild(gw, args.clips, audio_s)
                    if concurrency is None
                    else via_from_path(gw, args.clips, audio_s, concurrency)
                )
        out["encoder only"] = encoder_only(args.bundle, clips, args.threads, args.batch, audio_s)
    for name, _ in paths:
        out[name]["vs_encoder"] = round(out[name]["clips_per_s"] / out["encoder only"]["clips_per_s"], 2)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(f"\n{args.clips} clips, {audio_s:.0f} s of audio (median {out['median_clip_s']} s), bundle {manifest.id}")
    print(f"{'path':16s} {'wall s':>8s} {'clips/s':>8s} {'audio s/s':>10s} {'vs encoder':>11s} {'in index':>9s}")
    for name in ["encoder only"] + [name for name, _ in paths]:
        r = out[name]
        print(
            f"{name:16s} {r['wall_s']:8.1f} {r['clips_per_s']:8.1f} {r['audio_s_per_s']:10.1f} "
            f"{r.get('vs_encoder', 1.0):10.2f}x {r.get('index_count', ''):>9}"
        )
    return 0 if all(out[name]["index_count"] == args.clips for name, _ in paths) else 1


if __name__ == "__main__":
    sys.exit(main())
