"""What a user of `/v1/tag?top_k=5` sees, measured on held-out single events: a served bundle (ONNX Runtime, the
gateway's own runtime and label bank, no torch) ranks all 527 AudioSet labels for every clip of a split.

    .venv/bin/python bench/eval_tagging.py --bundle runs/demo/bundle-seed-0 --manifest runs/demo/scenes/manifest.jsonl

Prints and writes (--out) per bundle: top-1 and top-5 hit rates (the best label, or any of the best 5, is one of
the clip's tags) ranked by the calibrated score sigmoid(scale * cosine + bias) as the gateway does, the same by raw
cosine, zero-shot accuracy over the classes present in the split (a clip's class is its first tag), and chance
levels. Several --bundle values give one row each and their mean [min, max].
"""

from __future__ import annotations

import argparse
import json
import sys
from math import comb
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blat_gateway.backends.ort import OnnxRuntimeBackend
from blat_gateway.runtime import ModelRuntime


def hit_rate(scores: np.ndarray, targets: list[set[int]], k: int) -> float:
    """Share of rows whose k best-scored columns hold at least one target column."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([bool(set(row.tolist()) & t) for row, t in zip(top, targets)]))


def chance_hit_rate(n_labels: int, targets: list[set[int]], k: int) -> float:
    """Expected hit rate of a random ranking: 1 - C(K - t, k) / C(K, k) for a clip with t tags."""
    return float(np.mean([1 - comb(n_labels - len(t), k) / comb(n_labels, k) for t in targets]))


def evaluate_bundle(bundle: Path, manifest: Path, split: str, batch: int = 16) -> dict:
    runtime = ModelRuntime(bundle, OnnxRuntimeBackend(bundle, threads=2))
    bank = runtime.labels
    index = {n: i for i, n in enumerate(bank.names)}
    rows = [r for r in map(json.loads, manifest.read_text().splitlines()) if r["split"] == split]
    waves = [sf.read(str(manifest.parent / r["audio"]), dtype="float32")[0] for r in rows]
    emb = np.concatenate([runtime.encode_audio(waves[i : i + batch]) for i in range(0, len(waves), batch)])
    targets = [{index[t] for t in r["tags"] if t in index} for r in rows]
    calibrated, cosine = bank.scores(emb), emb @ bank.embeddings.T
    classes = sorted({r["tags"][0] for r in rows})
    cls = np.array([classes.index(r["tags"][0]) for r in rows])
    zero_shot = float(np.mean(np.argmax(cosine[:, [index[c] for c in classes]], axis=1) == cls))
    return {
        "bundle": str(bundle),
        "split": split,
        "clips": len(rows),
        "classes": len(classes),
        "tag_top1": hit_rate(calibrated, targets, 1),
        "tag_top5": hit_rate(calibrated, targets, 5),
        "cosine_top1": hit_rate(cosine, targets, 1),
        "cosine_top5": hit_rate(cosine, targets, 5),
        "zero_shot": zero_shot,
        "chance": {
            "tag_top1": chance_hit_rate(len(bank.names), targets, 1),
            "tag_top5": chance_hit_rate(len(bank.names), targets, 5),
            "zero_shot": 1 / len(classes),
        },
        "calibration": runtime.manifest.labels.calibration,
    }


KEYS = ("tag_top1", "tag_top5", "cosine_top1", "cosine_top5", "zero_shot")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, nargs="+", required=True, help="bundle folder(s), e.g. one per seed")
    p.add_argument("--manifest", type=Path, required=True, help="scene manifest holding the held-out split")
    p.add_argument("--split", default="test_events")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    results = [evaluate_bundle(b, args.manifest, args.split) for b in args.bundle]
    print(f"{'bundle':40s} " + " ".join(f"{k:>11s}" for k in KEYS))
    for r in results:
        print(f"{Path(r['bundle']).name:40s} " + " ".join(f"{r[k]:11.3f}" for k in KEYS))
    summary = {
        k: {
            "mean": float(np.mean([r[k] for r in results])),
            "min": min(r[k] for r in results),
            "max": max(r[k] for r in results),
        }
        for k in KEYS
    }
    print(f"{'mean [min, max]':40s} " + " ".join(f"{summary[k]['mean']:11.3f}" for k in KEYS))
    print(
        f"chance: top-1 {results[0]['chance']['tag_top1']:.4f}, top-5 {results[0]['chance']['tag_top5']:.4f}, "
        f"zero-shot {results[0]['chance']['zero_shot']:.4f} ({results[0]['clips']} clips, "
        f"{results[0]['classes']} classes)"
    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "command": "python bench/eval_tagging.py " + " ".join(argv or sys.argv[1:]),
                    "results": results,
                    "summary": summary,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
