"""How much batching by length saves when the gateway embeds a folder or manifest (index rebuild, seeding).

    .venv/bin/python bench/rebuild_batching.py --bundle runs/default/bundle --manifest
    runs/default/seed/index_seed.jsonl

Decodes every clip of the manifest as the gateway does (blat_gateway.audio.decode_audio), then embeds them twice with
the
bundle's audio graph on ONNX Runtime: in file order, in batches of --batch (the old rebuild), and in the batches
`blat_gateway.inference.length_batches` makes (the rebuild now). Prints the padded audio seconds each way, the wall time
of each and their ratio, and the largest difference between a clip's two embeddings (masking by length makes a
clip's embedding independent of its batch-mates, so it should be ~1e-6).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blat_gateway.audio import decode_audio
from blat_gateway.backends.ort import OnnxRuntimeBackend
from blat_gateway.inference import length_batches
from blat_gateway.runtime import ModelRuntime


def embed(runtime: ModelRuntime, waves: list[np.ndarray], batches: list[list[int]]) -> tuple[np.ndarray, float]:
    out = np.zeros((len(waves), runtime.manifest.embedding_dim), np.float32)
    t0 = time.perf_counter()
    for b in batches:
        out[b] = runtime.encode_audio([waves[i] for i in b])
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True, help="JSON Lines rows with an `audio` path")
    p.add_argument("--batch", type=int, default=16, help="clips per model call (the gateway's max_batch)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    runtime = ModelRuntime(args.bundle, OnnxRuntimeBackend(args.bundle, threads=args.threads))
    rate = runtime.manifest.audio.sample_rate
    rows = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
    waves = [decode_audio((args.manifest.parent / r["audio"]).read_bytes(), rate).samples for r in rows]
    seconds = np.array([len(w) / rate for w in waves])
    ways = {
        "file order": [list(range(i, min(i + args.batch, len(waves)))) for i in range(0, len(waves), args.batch)],
        "length_batches": list(length_batches(range(len(waves)), lambda i: len(waves[i]), args.batch)),
    }
    results = {}
    for name, batches in ways.items():
        emb, wall = embed(runtime, waves, batches)
        padded = sum(len(b) * seconds[b].max() for b in batches)
        results[name] = (emb, wall, padded)
    print(
        f"{len(waves)} clips, {seconds.sum():.0f} s of audio, batch {args.batch}, {args.threads} threads, "
        f"bundle {runtime.manifest.id}"
    )
    print(f"{'batching':16s} {'padded s':>9s} {'wall s':>8s} {'clips/s':>8s}")
    for name, (_, wall, padded) in results.items():
        print(f"{name:16s} {padded:9.0f} {wall:8.1f} {len(waves) / wall:8.1f}")
    (a, wall_a, _), (b, wall_b, _) = results.values()
    print(f"speed-up {wall_a / wall_b:.2f}x; largest embedding difference between the two {np.abs(a - b).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
