"""python -m blat_export: turn checkpoints into a model bundle and (optionally) a Triton model repository.

bundle   checkpoint(s) -> bundle directory: ONNX graphs (waveform -> embedding with the log-mel front end
         inside; text ids -> embedding; captioner encoder + decoder step), tokenizer.json, vocab.json, the
         527-label bank with calibration, and bundle.json (shapes, preprocessing, sha256 of every file).
         Every graph is checked against PyTorch (max |diff| <= 1e-4) before the bundle is written.
release  a pipeline run -> a model release (releases/<name>/<version>/): the trained heads, the calibrated
         label bank, a model card and the hashes, small enough to commit; `bundle --release` serves it.
triton   bundle directory -> Triton model repository (a new integer version beside the old ones).
fetch    a published model by name (blat-cnn14-bertm): its checkpoint downloaded once (resumable; size and sha256
         recorded on the first download, checked on every later use), then its bundle (blat_export/fetch.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("blat_export")


def _load_dual(args):
    import blat
    from blat.convert import import_blat_checkpoint
    from blat_export.bundle import checkpoint_source

    if args.blat_release:
        return import_blat_checkpoint(args.blat_release, trusted=args.trusted), checkpoint_source(
            args.blat_release, {"kind": "blat-release"}
        )
    path = Path(args.dual)
    if path.is_file():
        model, meta = blat.load_checkpoint(path)
        return model, checkpoint_source(path, meta)
    return blat.load_model(args.dual), {"architecture": args.dual, "weights": "random (registry architecture)"}


def _load_captioner(args):
    import blat
    from blat_contract.labels import audioset_labels
    from blat_contract.vocab import Vocabulary
    from blat_export.bundle import checkpoint_source

    if not args.captioner:
        return None, None
    path = Path(args.captioner)
    if path.is_file():
        model, meta = blat.load_checkpoint(path)
        return model, checkpoint_source(path, meta)
    # A registry architecture with random weights: a vocabulary from the AudioSet label words.
    vocab = Vocabulary.build(audioset_labels())
    return blat.create_model(args.captioner, vocab=vocab).eval(), {"architecture": args.captioner, "weights": "random"}


def _calibration(args, sample_rate: int):
    """Tagged reference clips from a scene/corpus manifest: (waveforms, lengths, targets) for per-label Platt fits."""
    if not args.calibration:
        return None
    import numpy as np
    import torch

    from blat.pipeline.data import load_audio, load_scene_manifest
    from blat_contract.labels import tags_to_multi_hot

    splits = [s for s in args.calibration_splits.split(",") if s] or None
    rows = load_scene_manifest(args.calibration, splits)
    if not rows:
        raise ValueError(f"{args.calibration}: no rows in splits {splits}")
    root = Path(args.calibration).parent
    waves = [load_audio(root / r["audio"], sample_rate) for r in rows]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    targets = np.stack([tags_to_multi_hot(r["tags"]) for r in rows])
    log.info("calibration clips", extra={"clips": len(rows), "labels_with_positives": int((targets.sum(0) > 0).sum())})
    return batch, lengths, targets


def cmd_bundle(args) -> int:
    import torch

    from blat_export.bundle import write_bundle

    torch.manual_seed(args.seed)
    if args.release:
        return _bundle_from_release(args)
    dual, dual_src = _load_dual(args)
    captioner, cap_src = _load_captioner(args)
    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    out = write_bundle(
        args.out,
        dual,
        captioner,
        name=args.name,
        version=args.version,
        prompt=args.prompt,
        source={"dual_encoder": dual_src, "captioner": cap_src},
        beam_size=args.beam_size,
        calibration=_calibration(args, dual.cfg.audio.frontend.sample_rate),
        metrics=metrics,
        overwrite=args.overwrite,
    )
    print(out)
    if args.triton:
        args.bundle = out
        return cmd_triton(args)
    return 0


def _bundle_from_release(args) -> int:
    from blat_export.bundle import write_bundle
    from blat_export.release import load_release

    dual, captioner, bank, release = load_release(args.release)  # every hash checked first
    out = write_bundle(
        args.out,
        dual,
        captioner,
        name=release.name,
        version=release.version,
        prompt=release.label_prompt,
        label_bank=(bank, release.label_calibration),
        source={"release": str(args.release), "release_id": release.id, "command": release.command},
        beam_size=args.beam_size,
        metrics=release.metrics,
        tagger_zero_shot_weight=release.tagger_zero_shot_weight,
        overwrite=args.overwrite,
    )
    print(out)
    if args.triton:
        args.bundle = out
        return cmd_triton(args)
    return 0


def cmd_release(args) -> int:
    """runs/<recipe>/ -> a release: model/ checkpoints, a label bank calibrated on the run's captioned split."""
    import blat
    from blat_export.labels import build_label_bank
    from blat_export.release import attach_sources, write_release

    run = Path(args.run)
    report = json.loads((run / "report.json").read_text())
    dual, dual_meta = blat.load_checkpoint(run / "model" / "dual.safetensors")
    captioner, cap_meta = blat.load_checkpoint(run / "model" / "captioner.safetensors")
    dual = attach_sources(dual, dual_meta["recipe"]["model"])  # frozen towers: from their packages, not the release
    captioner = attach_sources(captioner, cap_meta["arch"])
    # the run's scene manifest: its own, or the prebuilt one its recipe names (the paper recipe)
    args.calibration = json.loads((run / "model" / "recipe.json").read_text()).get("manifest") or str(
        run / "scenes" / "manifest.jsonl"
    )
    audio, lengths, targets = _calibration(args, dual.cfg.audio.frontend.sample_rate)
    bank, method = build_label_bank(dual, args.prompt, audio=audio, lengths=lengths, targets=targets)
    model_metrics = json.loads((run / "model" / "metrics.json").read_text())
    variant = model_metrics.get("variant", "tag_guided")
    recipe_json = (run / "model" / "recipe.json").read_text().strip()
    card = (
        (run / "model" / "MODEL_CARD.md")
        .read_text()
        .replace("see metrics.json and ../report.md", "release.json (metrics) and the report below")
        + f"\n## Reproduce\n\n`{args.command}` (the recipe below, then `python -m blat_export release`). "
        f"Tagging over the 527 labels as `/v1/tag` serves it: `bench/eval_tagging.py` on the exported bundle."
        + f"\n\n## Recipe `{report['recipe']}`\n\n```json\n{recipe_json}\n```\n"
        + "\n## Evaluation\n\n"
        + (run / "report.md").read_text()
    )
    metrics = {
        "summary": report.get("summary"),
        "seeds": report.get("seeds"),
        "variant": variant,
        variant: model_metrics["evaluation"],
    }
    out = write_release(
        args.out,
        dual,
        captioner,
        bank,
        name=args.name,
        version=args.version,
        command=args.command,
        recipe=report["recipe"],
        seeds=tuple(report.get("seeds") or ()),
        label_prompt=args.prompt,
        label_calibration=method,
        model_card=card,
        metrics=metrics,
        tagger_zero_shot_weight=args.tagger_zero_shot_weight,
        overwrite=args.overwrite,
    )
    print(out)
    return 0


def cmd_triton(args) -> int:
    from blat_export.triton import write_repository

    for flavor in ["gpu", "cpu"] if args.flavor == "both" else [args.flavor]:
        repo = args.triton if flavor == "gpu" or args.flavor != "both" else Path(str(args.triton) + "-cpu")
        print(write_repository(args.bundle, repo, flavor=flavor, tensorrt=args.tensorrt))
    return 0


def cmd_fetch(args) -> int:
    from blat_export.fetch import FetchError, fetch_bundle, published_models

    if args.list:
        for model in published_models().values():
            print(f"{model.name}: {model.about}\n  {model.url}")
        return 0
    if not args.name:
        log.error("name a published model (--list shows them)")
        return 2
    try:
        print(fetch_bundle(args.name, args.cache, export_argv, args.url, args.trusted))
    except FetchError as e:
        log.error(str(e))
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m blat_export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)

    def triton_args(s, required: bool):
        s.add_argument(
            "--triton",
            type=Path,
            required=required,
            default=None,
            help="model repository to write (e.g. model_repository/); a new integer version is added per model",
        )
        s.add_argument(
            "--flavor",
            choices=["gpu", "cpu", "both"],
            default="gpu",
            help="gpu: onnxruntime backend, KIND_GPU, dynamic batching; cpu: the same models as Python-backend "
            "models running the ONNX files with onnxruntime (for tritonserver builds without the "
            "onnxruntime backend); both: writes <triton> and <triton>-cpu",
        )
        s.add_argument("--tensorrt", action="store_true", help="gpu flavour: enable the TensorRT accelerator in fp16")

    s = sub.add_parser(
        "bundle",
        help="checkpoint(s) -> bundle directory (+ Triton repository with --triton)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--release",
        type=Path,
        help="a model release folder (releases/<name>/<version>/): its "
        "hashes are checked, its label bank and metrics used as they are",
    )
    src.add_argument("--dual", help="our dual-encoder checkpoint (.safetensors), or a registry name for random weights")
    src.add_argument("--blat-release", type=Path, help="the released BLAT checkpoint (blat_cnn14_bertm.pth)")
    s.add_argument("--trusted", action="store_true", help="allow full unpickling of --blat-release")
    s.add_argument("--captioner", help="our captioner checkpoint, or a registry name for random weights; omit for none")
    s.add_argument("--out", type=Path, required=True, help="bundle directory to create (must not exist)")
    s.add_argument("--name", default="blat")
    s.add_argument("--version", default=None, help="bundle version (default: UTC timestamp)")
    s.add_argument(
        "--prompt", default="this is a sound of {label}", help="zero-shot prompt template for the label bank"
    )
    s.add_argument("--beam-size", type=int, default=3, help="default beam for captioning")
    s.add_argument("--seed", type=int, default=0, help="seed for random-weight registry models")
    s.add_argument(
        "--calibration",
        help="JSON Lines manifest of tagged clips (audio, tags) for per-label score "
        "calibration; without it, generic reference sounds set a z-score threshold",
    )
    s.add_argument(
        "--calibration-splits",
        default="captioned",
        help="comma-separated splits of --calibration to use ('' = all rows)",
    )
    s.add_argument("--metrics", help="JSON file of evaluation results to record in bundle.json")
    s.add_argument("--overwrite", action="store_true")
    triton_args(s, required=False)
    s.set_defaults(fn=cmd_bundle)

    s = sub.add_parser(
        "release",
        help="pipeline run -> model release to commit",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--run", type=Path, required=True, help="pipeline output folder (python -m blat.pipeline.run)")
    s.add_argument("--out", type=Path, required=True, help="release folder, e.g. releases/blat-demo/1")
    s.add_argument("--name", default="blat-demo")
    s.add_argument("--version", default="1")
    s.add_argument("--command", default="make train RECIPE=demo", help="the command that reproduces it, recorded")
    s.add_argument("--prompt", default="this is a sound of {label}")
    s.add_argument("--calibration-splits", default="captioned", help="splits of the run's scenes for calibration")
    s.add_argument(
        "--tagger-zero-shot-weight",
        type=float,
        default=0.5,
        help="towers with a supervised AudioSet head: share of the zero-shot score mixed into the head's "
        "labels by /v1/tag (0: the head alone). 0.5 for blat-demo/2: see README, Results by family",
    )
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_release)

    s = sub.add_parser(
        "fetch",
        help="a published model by name -> its checked checkpoint and its bundle",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Download a published checkpoint (resumable) into --cache, record its size and sha256 in "
        "<cache>/fetch.lock.json the first time and check them every later time, then export its bundle to "
        "<cache>/<name>/bundle (kept while the checkpoint is unchanged). Offline, put the file in --cache by hand: "
        "the error says where.",
    )
    s.add_argument("name", nargs="?", help="the published model (see --list)")
    s.add_argument("--list", action="store_true", help="list the published models and their URLs")
    s.add_argument("--cache", type=Path, default=Path("runs/models"), help="where checkpoints and bundles are kept")
    s.add_argument("--url", help="download from this address instead of the published one (a mirror)")
    s.add_argument("--trusted", action="store_true", help="allow full unpickling of the checkpoint")
    s.set_defaults(fn=cmd_fetch)

    s = sub.add_parser("triton", help="bundle directory -> Triton model repository")
    s.add_argument("--bundle", type=Path, required=True)
    triton_args(s, required=True)
    s.set_defaults(fn=cmd_triton)
    return p


def export_argv(argv: list[str]) -> int:
    """One command of this module, in this process, without setting up logging again."""
    args = build_parser().parse_args(argv)
    return args.fn(args)


def main(argv: list[str] | None = None) -> int:
    from blat_contract.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return args.fn(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        log.error(str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
