"""Captioning throughput: one batched beam search over several clips against one clip per call.

    .venv/bin/python bench/caption_batching.py --bundle runs/default/bundle --clips 32 --json caption_batching.json

In-process, as the gateway's caption batcher calls it: ModelRuntime over ONNX Runtime (--threads, 0 = all cores, the
gateway's default), `runtime.captions(waves, None, DecodingOptions(beam, max_tokens))` on --clips clips of lengths
uniform in [--min-s, --max-s] (in a fixed order, so each batch mixes lengths as concurrent requests do), cut into
batches of each --batches size. Prints one JSON object and a table: clips/s per batch size, the speed-up over one
clip per call, and the largest difference of a best caption's log-probability from its one-clip value. A batch is
padded to its longest clip and the graphs mask the padding by length, so every clip should get the same caption at
every batch size; differing captions are listed and make the exit status 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import wav_bytes  # noqa: E402

from blat_contract.beam import DecodingOptions  # noqa: E402
from blat_gateway.backends.ort import OnnxRuntimeBackend  # noqa: E402
from blat_gateway.runtime import ModelRuntime  # noqa: E402

Captions = list[tuple[str, float]]  # per clip: its best caption and log-probability


def clips(n: int, min_s: float, max_s: float, rate: int) -> list[np.ndarray]:
    lengths = np.random.default_rng(0).uniform(min_s, max_s, n)
    return [sf.read(io.BytesIO(wav_bytes(float(s), rate, seed=i)), dtype="float32")[0] for i, s in enumerate(lengths)]


def caption_all(
    runtime: ModelRuntime, waves: list[np.ndarray], batch: int, options: DecodingOptions
) -> tuple[Captions, float]:
    """Every clip captioned, `batch` clips per call; (captions, wall seconds)."""
    out: Captions = []
    t0 = time.perf_counter()
    for i in range(0, len(waves), batch):
        out += [hyps[0] for hyps in runtime.captions(waves[i : i + batch], None, options)]
    return out, time.perf_counter() - t0


def compare(runtime: ModelRuntime, waves: list[np.ndarray], batches: list[int], options: DecodingOptions) -> dict:
    """Per batch size: rate, speed-up over one clip per call, and the clips captioned otherwise than alone."""
    base, base_wall = caption_all(runtime, waves, 1, options)
    rows, mismatches = [], []
    for batch in [1] + [b for b in batches if b != 1]:
        got, wall = (base, base_wall) if batch == 1 else caption_all(runtime, waves, batch, options)
        differ = [i for i, (a, b) in enumerate(zip(base, got)) if a[0] != b[0]]
        mismatches += [{"clip": i, "batch": batch, "alone": base[i][0], "batched": got[i][0]} for i in differ]
        rows.append(
            {
                "batch": batch,
                "wall_s": round(wall, 2),
                "clips_per_s": round(len(waves) / wall, 2),
                "speedup": round(base_wall / wall, 2),
                "differing_captions": len(differ),
                "max_log_prob_diff": float(max(abs(a[1] - b[1]) for a, b in zip(base, got))),
            }
        )
    return {"batches": rows, "mismatches": mismatches}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "runs/default/bundle")
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--min-s", type=float, default=3.0)
    p.add_argument("--max-s", type=float, default=7.0)
    p.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16], help="clips per call (1 always runs)")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--max-tokens", type=int, help="default: the bundle's")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    runtime = ModelRuntime(args.bundle, OnnxRuntimeBackend(args.bundle, threads=args.threads))
    options = DecodingOptions(beam_size=args.beam, max_tokens=args.max_tokens or runtime.manifest.captioner.max_tokens)
    waves = clips(args.clips, args.min_s, args.max_s, runtime.sample_rate)
    runtime.captions(waves[:1], None, options)  # warm-up: the first runs allocate
    audio_s = sum(map(len, waves)) / runtime.sample_rate
    out = {
        "bundle": runtime.manifest.id,
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "clips": len(waves),
        "audio_s": round(audio_s, 1),
        "beam": options.beam_size,
        "max_tokens": options.max_tokens,
        **compare(runtime, waves, args.batches, options),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(
        f"\n{len(waves)} clips, {audio_s:.0f} s of audio, beam {options.beam_size}, max {options.max_tokens} tokens, "
        f"{args.threads} threads (0: all), bundle {runtime.manifest.id}"
    )
    print(f"{'batch':>5s} {'wall s':>8s} {'clips/s':>8s} {'speed-up':>9s} {'differing':>10s} {'max |dlogp|':>12s}")
    for r in out["batches"]:
        print(
            f"{r['batch']:5d} {r['wall_s']:8.1f} {r['clips_per_s']:8.2f} {r['speedup']:8.2f}x "
            f"{r['differing_captions']:10d} {r['max_log_prob_diff']:12.1e}"
        )
    return 1 if out["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
