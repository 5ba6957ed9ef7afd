"""Evaluation by sound family of served bundles (ONNX Runtime, the gateway's own scoring; no torch), on held-out
single events: what `/v1/tag` and `/v1/caption` give a user, per family (blat/pipeline/families.py).

    make eval-families    # seed bundles of runs/demo (bench/seed_bundles.py), blat-demo/1, then this script:
    .venv/bin/python bench/eval_families.py --bundle new.0=B0 new.1=B1 new.2=B2 old=B \
        --manifest runs/demo/scenes/manifest.jsonl --out bench/results/eval_families.json

Bundles named NAME.SEED are one model over seeds: the summary gives their mean, min and max per figure.

Per bundle and family:
- tag top-1 / top-5: the best label, or any of the best 5, of the 527 AudioSet labels is the clip's class (its first
  tag), ranked as /v1/tag ranks them (the bundle's tagger where it has one, zero-shot elsewhere); `_any` variants
  count any of the clip's tags (its class and the ancestors the corpus adds, e.g. "Music" for a piano note);
- head top-5 (bundles with a tagger): the same with the tagger's labels alone, i.e. the supervised head by itself;
- zero-shot accuracy: among the classes present in the split, the best by prompt cosine ("this is a sound of ...");
- caption names class: the share of clips whose best caption, guided by the clip's predicted tags where the bundle
  has a tagger (as /v1/caption without tags), holds a word of its class's name or phrase-bank phrases.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.eval_tagging import hit_rate
from blat.pipeline.families import FAMILIES, family
from blat_contract.beam import DecodingOptions
from blat_contract.labels import audioset_labels, tags_to_multi_hot
from blat_gateway.backends.ort import OnnxRuntimeBackend
from blat_gateway.runtime import ModelRuntime
from blat_gateway.settings import PredictSettings

# Words that name no sound source: left out when matching a caption against a class's name and phrases.
FILLER = set(
    "a an the of and or is are in on at to by with from for its his her their some someone something sound "
    "sounds noise noises plays playing played makes making made being one two while then after as it "
    "loud quiet soft distant nearby short long several many other type kind".split()
)


def class_words(label: str, phrases: dict) -> set[str]:
    """Words naming `label`: of its display name and of its phrase-bank clauses and noun phrases."""
    bank = phrases.get(label)
    text = " ".join([label, *(bank.clauses + bank.nouns if bank else ())]).lower()
    return {w for w in re.findall(r"[a-z]+", text) if len(w) > 2 and w not in FILLER}


def names_class(caption: str, words: set[str]) -> bool:
    return bool(words & set(re.findall(r"[a-z]+", caption.lower())))


def evaluate(bundle: Path, rows: list[dict], waves: list[np.ndarray], phrases: dict, batch: int = 16) -> dict:
    runtime = ModelRuntime(bundle, OnnxRuntimeBackend(bundle, threads=2))
    bank, tagger, labels = runtime.labels, runtime.manifest.tagger, runtime.default_labels
    emb, probs = [], []
    for i in range(0, len(waves), batch):
        e, p = runtime.analyze_audio(waves[i : i + batch])
        emb.append(e)
        probs.append(p)
    emb = np.concatenate(emb)
    probs = np.concatenate(probs) if tagger else None
    scores = labels.scores(emb, probs)  # (M, 527) as /v1/tag ranks them
    index = {n: i for i, n in enumerate(bank.names)}
    primary = [{index[r["tags"][0]]} for r in rows]
    anytag = [{index[t] for t in r["tags"] if t in index} for r in rows]
    head = None
    if tagger:  # the supervised head alone: its own probabilities, other labels ranked last
        head = np.full_like(scores, -1.0)
        known = labels.head_index >= 0
        head[:, known] = probs[:, labels.head_index[known]]
    classes = sorted({r["tags"][0] for r in rows})
    cosine = emb @ bank.embeddings[[index[c] for c in classes]].T
    zero_shot = np.argmax(cosine, axis=1) == np.array([classes.index(r["tags"][0]) for r in rows])

    captions = []
    if runtime.manifest.captioner:
        spec, predict = runtime.manifest.captioner, PredictSettings()
        options = DecodingOptions(beam_size=spec.beam_size, max_tokens=spec.max_tokens)
        for i in range(0, len(waves), batch):
            guide = None
            if tagger and spec.use_tags:  # as /v1/caption without tags: the clip's predicted tags
                guide = np.stack(
                    [
                        tags_to_multi_hot(runtime.predicted_tags(e, p, predict.tag_threshold, predict.caption_tags))
                        for e, p in zip(emb[i : i + batch], probs[i : i + batch])
                    ]
                )
            captions += [h[0][0] for h in runtime.captions(waves[i : i + batch], guide, options)]
    fams = [family(r["tags"]) for r in rows]
    out = {}
    for fam in (*FAMILIES, "all"):
        sel = [i for i, f in enumerate(fams) if fam in ("all", f)]
        if not sel:
            continue
        pick = lambda xs: [xs[i] for i in sel]  # noqa: E731
        res = {
            "clips": len(sel),
            "tag_top1": hit_rate(scores[sel], pick(primary), 1),
            "tag_top5": hit_rate(scores[sel], pick(primary), 5),
            "tag_top1_any": hit_rate(scores[sel], pick(anytag), 1),
            "tag_top5_any": hit_rate(scores[sel], pick(anytag), 5),
            "zero_shot": float(zero_shot[sel].mean()),
        }
        if head is not None:
            res["head_top5"] = hit_rate(head[sel], pick(primary), 5)
        if captions:
            res["caption_names_class"] = float(
                np.mean([names_class(captions[i], class_words(rows[i]["tags"][0], phrases)) for i in sel])
            )
        out[fam] = res
    return {
        "bundle": runtime.manifest.id,
        "path": str(bundle),
        "classes": len(classes),
        "families": out,
        "examples": [
            {"id": rows[i]["id"], "tags": rows[i]["tags"], "caption": captions[i] if captions else ""}
            for i in range(0, len(rows), max(1, len(rows) // 12))
        ],
    }


def over_seeds(results: dict, keys: tuple[str, ...]) -> dict:
    """{NAME: {family: {key: {mean, min, max, n}}}} over the bundles named NAME or NAME.SEED."""
    groups = defaultdict(list)
    for name, res in results.items():
        groups[name.rsplit(".", 1)[0] if "." in name else name].append(res["families"])
    out = {}
    for name, runs in groups.items():
        out[name] = {}
        for fam in runs[0]:
            out[name][fam] = {}
            for k in keys:
                vals = [r[fam][k] for r in runs if fam in r and k in r[fam]]
                if vals:
                    out[name][fam][k] = {
                        "mean": float(np.mean(vals)),
                        "min": float(min(vals)),
                        "max": float(max(vals)),
                        "n": len(vals),
                    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", nargs="+", required=True, help="NAME=FOLDER of each bundle to compare")
    p.add_argument("--manifest", type=Path, required=True, help="scene manifest holding the held-out split")
    p.add_argument("--split", default="test_events")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    from blat.pipeline.templates import load_phrase_bank

    known = set(audioset_labels())
    rows = [
        r
        for r in map(json.loads, args.manifest.read_text().splitlines())
        if r["split"] == args.split and r["tags"] and r["tags"][0] in known
    ]
    waves = [sf.read(str(args.manifest.parent / r["audio"]), dtype="float32")[0] for r in rows]
    phrases = load_phrase_bank()
    results = {}
    for spec in args.bundle:
        name, _, folder = spec.partition("=")
        results[name] = evaluate(Path(folder), rows, waves, phrases)
    keys = ("tag_top1", "tag_top5", "tag_top5_any", "head_top5", "zero_shot", "caption_names_class")
    counts = defaultdict(int)
    for r in rows:
        counts[family(r["tags"])] += 1
    print(f"{len(rows)} clips of {args.split}: " + ", ".join(f"{f} {counts[f]}" for f in FAMILIES))
    print(f"{'bundle':10s} {'family':18s} " + " ".join(f"{k:>19s}" for k in keys))
    for name, res in results.items():
        for fam, m in res["families"].items():
            print(f"{name:10s} {fam:18s} " + " ".join(f"{m[k]:19.3f}" if k in m else f"{'-':>19s}" for k in keys))
    summary = over_seeds(results, keys)
    print("\nover seeds (mean [min, max]):")
    for name, fams in summary.items():
        for fam, m in fams.items():
            print(
                f"{name:10s} {fam:18s} "
                + " ".join(
                    f"{m[k]['mean']:.3f} [{m[k]['min']:.3f},{m[k]['max']:.3f}]" if k in m else f"{'-':>19s}"
                    for k in keys
                )
            )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "command": "python bench/eval_families.py " + " ".join(argv or sys.argv[1:]),
                    "summary": summary,
                    "results": results,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
