"""Stage 4 of the BLAT pipeline: evaluate a dual encoder with fixed, named protocols, and score captions.

Each protocol has a name, the manifest split it reads and its settings; every result records all three beside
the metrics and the chance level of each metric (`blat.pipeline.metrics`), so results stay comparable:

    zero_shot_events   test_events: top-1/top-5 accuracy; the classes are the clips' primary tags
    tagging_scenes     test_scenes: macro mAP of prompt similarities over the labels present in the split
    retrieval_scenes   test_scenes: text<->audio R@1/5/10, mAP@10, median/mean rank (authors' protocol)

`EvalConfig.splits` points a protocol at another split (the paper recipe: tagging_scenes reads test_events,
AudioSet's multi-label eval segments; results name the split they read).

    python -m blat.pipeline.evaluate dual --model runs/pretrain/dual.safetensors --manifest runs/scenes/manifest.jsonl
    python -m blat.pipeline.evaluate captions --candidates captions.jsonl --manifest runs/scenes/manifest.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from blat.pipeline import metrics
from blat.pipeline.contrastive import resolve_device
from blat.pipeline.recipe import load_recipe
from blat.pipeline.stages import PROTOCOL_NAMES, EvalConfig
from blat_contract.config import apply_env, from_dict, to_dict

log = logging.getLogger("blat.pipeline.evaluate" if __name__ == "__main__" else __name__)

CAPTION_TOKENIZER = "blat_contract.vocab.words (lower case, [a-z0-9'] words, punctuation dropped)"


# --- audio and text encoding ---------------------------------------------------------------------------------------


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """A mono float32 clip at `sample_rate` (manifests hold 32 kHz mono FLAC; anything else is an error)."""
    wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != sample_rate:
        raise ValueError(f"{path}: sample rate {sr} Hz, the model expects {sample_rate} Hz")
    return wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]


def load_split(manifest: str | Path, split: str | None = None) -> list[dict]:
    """Rows of a manifest (JSON Lines) in `split` (all rows if None), with `audio` made an absolute path."""
    manifest = Path(manifest)
    rows = []
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if split is None or row.get("split") == split:
                    row["audio"] = str((manifest.parent / row["audio"]).resolve())
                    rows.append(row)
    return rows


@torch.no_grad()
def encode_clips(
    model,
    paths: Sequence[str | Path],
    batch_size: int = 16,
    device: torch.device | None = None,
    waves: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Audio embeddings (N, E) of whole clips, batched by length and read one batch at a time (a clip's
    embedding does not depend on its batch: every CNN layer masks by the true length). `waves` (mono float32
    at the model's rate) replaces reading `paths`."""
    sample_rate = model.cfg.audio.frontend.sample_rate
    device = device or _model_device(model)
    n = len(waves) if waves is not None else len(paths)
    frames = [len(w) for w in waves] if waves is not None else [sf.info(str(p)).frames for p in paths]
    order = np.argsort(frames, kind="stable")
    out: list[np.ndarray | None] = [None] * n
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        clips = [waves[i] if waves is not None else read_audio(paths[i], sample_rate) for i in idx]
        lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
        batch = torch.zeros(len(idx), int(lengths.max()))
        for row, clip in enumerate(clips):
            batch[row, : len(clip)] = torch.from_numpy(clip)
        emb = model.encode_audio(batch.to(device), lengths.to(device)).float().cpu().numpy()
        for row, i in enumerate(idx):
            out[i] = emb[row]
    return np.stack(out) if n else np.zeros((0, 0), np.float32)


@torch.no_grad()
def encode_texts(model, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Text embeddings (N, E)."""
    chunks = [
        model.encode_texts(list(texts[i : i + batch_size])).float().cpu().numpy()
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


# --- protocols -----------------------------------------------------------------------------------------------------


def primary_tag(row: Mapping[str, Any]) -> str:
    """A single-event clip's class: its first tag. Tags are listed most specific first (the corpus tag table's
    convention, e.g. "Steam whistle; Whistle"), so the first tag is the event's own label."""
    if not row.get("tags"):
        raise ValueError(f"clip {row.get('id')!r} has no tags, so no class")
    return row["tags"][0]


class _Context:
    """What protocols share within one evaluate_dual call: the model, the manifest's rows and cached embeddings."""

    def __init__(self, model, manifest: Path, cfg: EvalConfig, device: torch.device):
        self.model, self.manifest, self.cfg, self.device = model, manifest, cfg, device
        self._rows = load_split(manifest)
        self._audio: dict[str, np.ndarray] = {}

    def rows(self, split: str) -> list[dict]:
        return [r for r in self._rows if r.get("split") == split]

    def audio(self, split: str) -> np.ndarray:
        if split not in self._audio:
            t0 = time.perf_counter()
            paths = [r["audio"] for r in self.rows(split)]
            self._audio[split] = encode_clips(self.model, paths, self.cfg.batch_size, self.device)
            log.info(
                "encoded clips",
                extra={"split": split, "clips": len(paths), "seconds": round(time.perf_counter() - t0, 2)},
            )
        return self._audio[split]

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        return encode_texts(self.model, texts, self.cfg.text_batch_size)

    def prompts(self, labels: Sequence[str]) -> np.ndarray:
        return self.texts([self.cfg.prompt.format(label=label.lower()) for label in labels])


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    split: str  # the manifest split it reads (unless EvalConfig.splits names another)
    description: str
    run: Callable[[_Context, list[dict], str], dict]  # (context, rows, their split) -> {metrics, chance, settings, ...}


PROTOCOLS: dict[str, Protocol] = {}


def _register(name: str, split: str, description: str):
    if name not in PROTOCOL_NAMES:
        raise ValueError(f"protocol {name!r} is not in blat.pipeline.stages.PROTOCOL_NAMES {PROTOCOL_NAMES}")

    def wrap(fn):
        PROTOCOLS[name] = Protocol(name, split, description, fn)
        return fn

    return wrap


@_register(
    "zero_shot_events",
    "test_events",
    "top-1/top-5 accuracy of prompt similarities over the classes present in the split; "
    "a clip's class is its primary (first) tag",
)
def _zero_shot_events(ctx: _Context, rows: list[dict], split: str) -> dict:
    labels = [primary_tag(r) for r in rows]
    classes = sorted(set(labels))
    target = np.array([classes.index(lab) for lab in labels])
    scores = ctx.audio(split) @ ctx.prompts(classes).T  # (N, K) cosine similarities
    ks = (1, 5) if len(classes) > 5 else (1,)
    return {
        "metrics": metrics.classification_accuracy(scores, target, ks),
        "chance": {("accuracy" if k == 1 else f"top{k}_accuracy"): min(k, len(classes)) / len(classes) for k in ks},
        "settings": {
            "prompt": ctx.cfg.prompt,
            "label_case": "lower",
            "class_of_clip": "primary tag (first tag)",
            "classes": classes,
        },
        "counts": {"clips": len(rows), "classes": len(classes)},
    }


@_register(
    "tagging_scenes",
    "test_scenes",
    "multi-label zero-shot tagging: macro mAP of prompt similarities over the labels present in the split",
)
def _tagging_scenes(ctx: _Context, rows: list[dict], split: str) -> dict:
    labels = sorted({t for r in rows for t in r.get("tags", [])})
    if not labels:
        raise ValueError(f"no clip in {split} has tags")
    targets = np.array([[lab in r.get("tags", []) for lab in labels] for r in rows])  # (N, K)
    scores = ctx.audio(split) @ ctx.prompts(labels).T
    value, per_label = metrics.mean_average_precision(scores, targets)
    chance = float(np.mean([metrics.expected_random_ap(len(rows), int(p)) for p in targets.sum(axis=0)]))
    return {
        "metrics": {"map": value},
        "chance": {"map": chance},
        "settings": {
            "prompt": ctx.cfg.prompt,
            "label_case": "lower",
            "labels": "all tags present in the split",
            "ap": "area under the precision-recall steps (sklearn's definition)",
        },
        "per_label": {lab: round(float(a), 4) for lab, a in zip(labels, per_label)},
        "counts": {"clips": len(rows), "labels": len(labels), "positives": int(targets.sum())},
    }


@_register(
    "retrieval_scenes",
    "test_scenes",
    "text<->audio retrieval with every reference caption: t2a ranks the single true clip for each caption, "
    "a2t the best-ranked of the clip's true captions",
)
def _retrieval_scenes(ctx: _Context, rows: list[dict], split: str) -> dict:
    keep = [i for i, r in enumerate(rows) if r.get("captions")]
    if not keep:
        raise ValueError(f"no clip in {split} has reference captions")
    captions = [c for i in keep for c in rows[i]["captions"]]
    caption_audio = np.array([j for j, i in enumerate(keep) for _ in rows[i]["captions"]])
    sim = ctx.audio(split)[keep] @ ctx.texts(captions).T  # (A, T)
    return {
        "metrics": metrics.retrieval_metrics(sim, caption_audio),
        "chance": metrics.retrieval_chance(caption_audio, len(keep)),
        "settings": {
            "captions": "all references of each clip",
            "ties": "count against the system",
            "map_k": 10,
            "a2t_map": "AP@10 over the clip's captions, / min(10, captions)",
        },
        "counts": {"clips": len(keep), "captions": len(captions)},
    }


def evaluate_dual(
    model, manifest: str | Path, protocols: Sequence[str] | None = None, cfg: EvalConfig | None = None
) -> dict:
    """Run the named protocols (default: cfg.protocols) on `manifest`'s test splits.

    `model` needs `encode_audio(waveform, lengths)`, `encode_texts(texts)` and `cfg.audio.frontend.sample_rate`
    (a DualEncoder). Returns {"manifest", "protocols": {name: {protocol, split, description, settings, metrics,
    chance, counts, seconds} or {protocol, split, skipped}}}.
    """
    cfg = cfg or EvalConfig()
    names = tuple(protocols) if protocols is not None else cfg.protocols
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; known: {sorted(PROTOCOLS)}")
    device = resolve_device(cfg.device)
    was_training = getattr(model, "training", False)
    if hasattr(model, "to"):
        model.to(device)
    if hasattr(model, "eval"):
        model.eval()
    ctx = _Context(model, Path(manifest), cfg, device)
    results = {}
    try:
        for name in names:
            p = PROTOCOLS[name]
            split = cfg.splits.get(name, p.split)
            rows = ctx.rows(split)
            head = {"protocol": name, "split": split, "description": p.description}
            if not rows:
                log.warning("protocol skipped: empty split", extra={"protocol": name, "split": split})
                results[name] = {**head, "skipped": f"no rows with split {split!r} in {manifest}"}
                continue
            t0 = time.perf_counter()
            results[name] = {**head, **p.run(ctx, rows, split), "seconds": round(time.perf_counter() - t0, 2)}
            log.info("protocol done", extra={"protocol": name, **results[name]["metrics"]})
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    return {"manifest": str(manifest), "protocols": results}


# --- captions ------------------------------------------------------------------------------------------------------


def _meteor(candidate_sets: Sequence[Mapping[str, str]], references: Mapping[str, Sequence[str]]) -> list[float] | str:
    """METEOR 1.5 of each candidate set via pycocoevalcap's jar (one java process), or why it was left out."""
    if shutil.which("java") is None:
        return "no java on PATH"
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError:
        return "pycocoevalcap is not installed"
    from blat_contract.vocab import words

    keys = sorted(references)
    gts = {k: [" ".join(words(r)) for r in references[k]] for k in keys}
    scorer = Meteor()  # a java subprocess; its __del__ stops it
    try:
        return [float(scorer.compute_score(gts, {k: [" ".join(words(c[k]))] for k in keys})[0]) for c in candidate_sets]
    except (ValueError, OSError) as e:  # the jar died or printed nothing
        return f"METEOR failed ({type(e).__name__}: {e})"
    finally:
        del scorer


def evaluate_captions(
    candidates: Mapping[str, str], references: Mapping[str, Sequence[str]], meteor: bool = False
) -> dict:
    """Score one candidate caption per id against that id's references: BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR
    when asked and java + pycocoevalcap are there). The chance level is the same metrics for shuffled candidates
    (each id scored with another id's candidate)."""
    shuffled = metrics.shuffled_candidates(candidates)
    scores = metrics.caption_scores(candidates, references)
    chance = metrics.caption_scores(shuffled, references)
    settings = {
        "tokenizer": CAPTION_TOKENIZER,
        "bleu": "corpus BLEU, closest reference length",
        "rouge_l_beta": metrics.ROUGE_BETA,
        "cider_d_sigma": metrics.CIDER_SIGMA,
        "cider_d_document_frequency": "references of the evaluated set",
        "chance": "each id scored with the next id's candidate (sorted ids, cyclic)",
    }
    if meteor:
        got = _meteor([candidates, shuffled], references)
        if isinstance(got, str):
            log.warning("METEOR left out", extra={"reason": got})
            settings["meteor"] = f"left out: {got}"
        else:
            scores["meteor"], chance["meteor"] = got
            settings["meteor"] = "METEOR 1.5 (pycocoevalcap jar), -l en -norm"
    return {
        "protocol": "captioning",
        "metrics": scores,
        "chance": chance,
        "settings": settings,
        "counts": {"clips": len(candidates), "references": sum(len(r) for r in references.values())},
    }


# --- reporting and command line ------------------------------------------------------------------------------------


def format_results(results: Mapping[str, Any]) -> str:
    """A table: protocol, metric, value, chance, value / chance."""
    blocks = results["protocols"].values() if "protocols" in results else [results]
    lines = [f"{'protocol':18s} {'metric':20s} {'value':>9s} {'chance':>9s} {'x chance':>9s}"]
    for r in blocks:
        if "skipped" in r:
            lines.append(f"{r['protocol']:18s} skipped: {r['skipped']}")
            continue
        for k, v in r["metrics"].items():
            c = r["chance"].get(k)
            ratio = f"{v / c:9.2f}" if c and "rank" not in k else f"{'':9s}"
            lines.append(f"{r['protocol']:18s} {k:20s} {v:9.4f} {(f'{c:9.4f}' if c is not None else ''):>9s} {ratio}")
    return "\n".join(lines)


def _load_config(args) -> EvalConfig:
    data: dict[str, Any] = {}
    if args.recipe:
        section = load_recipe(args.recipe).evaluate or {}
        data = to_dict(section) if dataclasses.is_dataclass(section) else dict(section)
    if args.config:
        data.update(json.loads(Path(args.config).read_text()))
    if getattr(args, "protocols", None):
        data["protocols"] = args.protocols.split(",")
    if getattr(args, "device", None):
        data["device"] = args.device
    return from_dict(EvalConfig, apply_env(data, "BLAT_EVALUATE_"), where="evaluate config")


def _read_candidates(path: Path) -> dict[str, str]:
    """Candidate captions from JSON Lines rows {id, caption, ...} (stage 2's output) or a JSON {id: caption}."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return dict(json.loads(text))
    out = {}
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            out.setdefault(row["id"], row["caption"])  # the first caption per id
    return out


def main(argv: list[str] | None = None) -> int:
    from blat_contract.logs import setup_logging

    p = argparse.ArgumentParser(
        prog="python -m blat.pipeline.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dual", help="run the retrieval / zero-shot protocols on a dual-encoder checkpoint")
    d.add_argument("--model", required=True, help="checkpoint path or registry name")
    d.add_argument("--protocols", help=f"comma-separated subset of {','.join(PROTOCOLS)}")
    d.add_argument("--device")
    c = sub.add_parser("captions", help="score candidate captions against a manifest's reference captions")
    c.add_argument("--candidates", type=Path, required=True, help="JSONL rows {id, caption} or JSON {id: caption}")
    c.add_argument("--split", help="only ids of this split (default: every candidate id)")
    c.add_argument("--meteor", action="store_true", help="also METEOR (needs java and pycocoevalcap)")
    for s in (d, c):
        s.add_argument("--manifest", type=Path, required=True)
        s.add_argument("--out", type=Path, help="write the results as JSON here")
        s.add_argument("--config", type=Path, help="JSON file with EvalConfig fields")
        s.add_argument("--recipe", help="take the `evaluate` section of this recipe (name or path)")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    try:
        cfg = _load_config(args)
        log.info("evaluate config", extra={"config": to_dict(cfg)})
        if args.command == "dual":
            import blat

            results = evaluate_dual(blat.load_model(args.model), args.manifest, cfg=cfg)
            results["model"] = str(args.model)
        else:
            cands = _read_candidates(args.candidates)
            rows = {r["id"]: r for r in load_split(args.manifest, args.split)}
            cands = {k: v for k, v in cands.items() if k in rows and rows[k].get("captions")}
            results = evaluate_captions(
                cands, {k: rows[k]["captions"] for k in cands}, meteor=args.meteor or cfg.meteor
            )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_results(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
