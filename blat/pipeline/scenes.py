"""Step 2 of the BLAT pipeline: simulated scenes, related the way AudioCaps relates to AudioSet.

Each corpus *source* (the takes of one recording) goes to one group: captioned, tags_only or test. Scenes mix 1-3
event clips of one group over an optional looped ambience, at known onsets and gains, and get 5 template captions
that follow the true order and overlap of the events. Outputs (32 kHz mono 16-bit FLAC):

    <out>/audio/<split>/<n>.flac   <out>/manifest.jsonl   <out>/report.json

Splits: captioned (plays AudioCaps: stage 1 trains on its captions), tags_only (plays AudioSet: only its tags may be
used for training; its captions are kept for evaluation), test_scenes and test_events (held-out sources only).
Run `python -m blat.pipeline.scenes -h`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from blat.pipeline import templates
from blat.pipeline.data import file_sha256, load_audio, load_jsonl, write_jsonl
from blat.pipeline.recipe import load_recipe, with_overrides
from blat.pipeline.stages import ScenesConfig
from blat_contract.config import to_dict

log = logging.getLogger("blat.pipeline.scenes" if __name__ == "__main__" else __name__)

GROUPS = ("captioned", "tags_only", "test")  # what a source is assigned to
SPLITS = ("captioned", "tags_only", "test_scenes", "test_events")  # what a manifest row is in
FADE_S = 0.005  # fade at the cut ends of a cropped event piece (no clicks)
PEAK = 0.95  # a mix louder than this is scaled down as a whole
# A clip whose main (first) tag is one of these, and that has none of NOT_BACKGROUND, can be a steady background
# bed (ambience) when it is long enough: rain, wind, water, fire, engines idling, hums...
BACKGROUND_TAGS = frozenset(
    {
        "Rain",
        "Wind",
        "Water",
        "Stream",
        "Ocean",
        "Waves, surf",
        "Waterfall",
        "Fire",
        "Idling",
        "Hum",
        "Mains hum",
        "Air conditioning",
        "Mechanical fan",
        "Rustling leaves",
        "Traffic noise, roadway noise",
        "Static",
        "White noise",
        "Insect",
        "Cricket",
        "Outside, rural or natural",
        "Outside, urban or manmade",
        "Whir",
        "Boiling",
        "Heavy engine (low frequency)",
        "Engine",
        "Trickle, dribble",
        "Crowd",
    }
)
NOT_BACKGROUND = frozenset(
    {
        "Walk, footsteps",
        "Splash, splatter",
        "Explosion",
        "Whoosh, swoosh, swish",
        "Thunder",
        "Engine starting",
        "Accelerating, revving, vroom",
        "Breaking",
    }
)


def is_background(clip: dict, min_seconds: float) -> bool:
    tags = clip["tags"]
    return (
        bool(tags) and tags[0] in BACKGROUND_TAGS and not NOT_BACKGROUND & set(tags) and clip["duration"] >= min_seconds
    )


# --- splitting by source ------------------------------------------------------------------------------------------


def assign_sources(rows: Sequence[dict], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """{source: group}. Stratified by each source's main tag: within a tag the sources are dealt to the group furthest
    below its share, so common tags reach every group; rarer tags fill whichever group is globally short."""
    main_tag: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        main_tag.setdefault(row["source"], row["tags"][0] if row["tags"] else "")
    strata: dict[str, list[str]] = defaultdict(list)
    for source, tag in sorted(main_tag.items()):
        strata[tag].append(source)
    rng = np.random.default_rng(seed)
    share = np.asarray(fractions, dtype=float) / sum(fractions)
    total = np.zeros(len(GROUPS))
    out = {}
    for tag in sorted(strata):
        sources = strata[tag]
        rng.shuffle(sources)
        local = np.zeros(len(GROUPS))
        for source in sources:
            deficit = share * (local.sum() + 1) - local + share * (total.sum() + 1) - total
            g = int(np.argmax(deficit + rng.uniform(0, 1e-6, len(GROUPS))))  # tiny jitter breaks exact ties
            local[g] += 1
            total[g] += 1
            out[source] = GROUPS[g]
    return out


# --- mixing -------------------------------------------------------------------------------------------------------


def _db(x: float) -> float:
    return float(20 * np.log10(max(x, 1e-12)))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def event_piece(wave: np.ndarray, clip_offset: float, duration: float, sr: int) -> np.ndarray:
    """The part of a clip an event plays: [clip_offset, +duration) s, faded at any cut end."""
    a = int(round(clip_offset * sr))
    piece = wave[a : a + int(round(duration * sr))].astype(np.float32)
    n = min(int(FADE_S * sr), len(piece) // 2)
    if n:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        if a > 0:
            piece[:n] *= ramp
        if a + len(piece) < len(wave):
            piece[-n:] *= ramp[::-1]
    return piece


def background_bed(wave: np.ndarray, clip_offset: float, n: int, sr: int) -> np.ndarray:
    """n samples of a clip played in a loop from clip_offset (game ambiences are made to loop)."""
    start = int(round(clip_offset * sr))
    return wave[(start + np.arange(n)) % len(wave)].astype(np.float32)


def render_scene(spec: dict, clips: dict[str, np.ndarray], canvas_s: float, sr: int) -> np.ndarray:
    """A scene from its manifest row: sum of gain * piece at each onset, over the looped background. (N,) float32."""
    n = int(round(canvas_s * sr))
    mix = np.zeros(n, dtype=np.float32)
    bg = spec.get("background")
    if bg:
        mix += np.float32(10 ** (bg["gain_db"] / 20)) * background_bed(clips[bg["clip_id"]], bg["clip_offset"], n, sr)
    for ev in spec["events"]:
        piece = event_piece(clips[ev["clip_id"]], ev["clip_offset"], ev["offset"] - ev["onset"], sr)
        a = int(round(ev["onset"] * sr))
        piece = piece[: n - a]
        mix[a : a + len(piece)] += np.float32(10 ** (ev["gain_db"] / 20)) * piece
    return mix


class _Pool:
    """The clips of one group, for drawing events (balanced over tag sets) and backgrounds."""

    def __init__(self, rows: list[dict], cfg: ScenesConfig):
        self.by_tags: dict[tuple[str, ...], list[dict]] = defaultdict(list)
        for r in rows:
            if r["tags"]:
                self.by_tags[tuple(r["tags"])].append(r)
        self.keys = sorted(self.by_tags)
        w = np.sqrt([len(self.by_tags[k]) for k in self.keys])  # sqrt: common sounds are common, not dominant
        self.weights = w / w.sum() if len(w) else w
        self.backgrounds = sorted((r for r in rows if is_background(r, cfg.background_min_s)), key=lambda r: r["id"])

    def draw_events(self, k: int, rng: np.random.Generator) -> list[dict]:
        """k clips with pairwise-disjoint tags where the pool allows it (fewer otherwise)."""
        chosen, used = [], set()
        for _ in range(8 * k):
            if len(chosen) == k:
                break
            key = self.keys[int(rng.choice(len(self.keys), p=self.weights))]
            if used & set(key):
                continue
            clips = self.by_tags[key]
            chosen.append(clips[int(rng.integers(len(clips)))])
            used |= set(key)
        return chosen

    def draw_background(self, exclude: set[str], rng: np.random.Generator) -> dict | None:
        ok = [r for r in self.backgrounds if not exclude & set(r["tags"])]
        return ok[int(rng.integers(len(ok)))] if ok else None


def plan_scene(pool: _Pool, cfg: ScenesConfig, rng: np.random.Generator, clips: dict[str, np.ndarray]) -> dict:
    """Choose clips, pieces, onsets and gains of one scene (no audio written). Events come sorted by onset."""
    sr, canvas = cfg.sample_rate, cfg.canvas_s
    k = 1 + int(rng.choice(len(cfg.event_weights), p=np.asarray(cfg.event_weights) / sum(cfg.event_weights)))
    picks = pool.draw_events(k, rng)
    cap = min(cfg.max_event_s, canvas / len(picks))
    events = []
    for clip in picks:
        dur = len(clips[clip["id"]]) / sr
        length = dur if dur <= cap else float(rng.uniform(0.5, 1.0)) * cap
        clip_offset = float(rng.uniform(0, dur - length)) if dur > length else 0.0
        events.append({"clip": clip, "length": round(length, 4), "clip_offset": round(clip_offset, 4)})
    # back to back with random gaps; then some events move to start inside the previous one (overlap)
    gaps = rng.dirichlet(np.ones(len(events) + 1)) * max(0.0, canvas - sum(e["length"] for e in events))
    t = 0.0
    for i, e in enumerate(events):
        t += gaps[i]
        e["onset"] = t
        if i and rng.random() < cfg.p_overlap:
            prev = events[i - 1]
            e["onset"] = float(rng.uniform(prev["onset"], prev["onset"] + 0.7 * prev["length"]))
        t = max(t, e["onset"]) + e["length"]
    spec_events = []
    levels = rng.uniform(*cfg.event_level_db, size=len(events))
    for e, level in zip(events, levels):
        onset = round(min(e["onset"], canvas - e["length"]), 4)
        piece = event_piece(clips[e["clip"]["id"]], e["clip_offset"], e["length"], sr)
        spec_events.append(
            {
                "clip_id": e["clip"]["id"],
                "source": e["clip"]["source"],
                "tags": list(e["clip"]["tags"]),
                "onset": onset,
                "offset": round(onset + e["length"], 4),
                "clip_offset": e["clip_offset"],
                "gain_db": float(level - _db(_rms(piece))),
            }
        )
    spec_events.sort(key=lambda ev: (ev["onset"], ev["clip_id"]))
    background = None
    if rng.random() < cfg.p_background:
        bg = pool.draw_background({t for e in spec_events for t in e["tags"]}, rng)
        if bg is not None:
            n = int(round(canvas * sr))
            off = round(float(rng.uniform(0, max(0.0, bg["duration"] - 0.1))), 4)
            snr = float(rng.uniform(*cfg.snr_db))
            level = float(np.mean(levels)) - snr
            bed = background_bed(clips[bg["id"]], off, n, sr)
            background = {
                "clip_id": bg["id"],
                "source": bg["source"],
                "tags": list(bg["tags"]),
                "clip_offset": off,
                "gain_db": level - _db(_rms(bed)),
                "snr_db": round(snr, 2),
            }
    spec = {"events": spec_events, "background": background}
    peak = float(np.abs(render_scene(spec, clips, canvas, sr)).max())
    if peak > PEAK:  # scale everything down together: relative levels (and SNRs) are kept
        for part in [*spec_events, *([background] if background else [])]:
            part["gain_db"] += _db(PEAK / peak)
    for part in [*spec_events, *([background] if background else [])]:
        part["gain_db"] = round(part["gain_db"], 3)
    return spec


def _write_flac(path: Path, wave: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    sf.write(str(tmp), np.clip(wave, -1.0, 1.0), sr, format="FLAC", subtype="PCM_16")
    os.replace(tmp, path)


def scene_tags(spec: dict) -> list[str]:
    """Union of the events' (in onset order) and the background's tags."""
    parts = [*spec["events"], *([spec["background"]] if spec["background"] else [])]
    return list(dict.fromkeys(t for p in parts for t in p["tags"]))


# --- the whole step -----------------------------------------------------------------------------------------------


def _config_key(cfg: ScenesConfig, corpus_sha: str) -> str:
    return hashlib.sha256(
        json.dumps({"config": to_dict(cfg), "corpus": corpus_sha}, sort_keys=True).encode()
    ).hexdigest()


def make_scenes(
    corpus_manifest: str | Path, out_dir: str | Path, config: ScenesConfig | None = None, force: bool = False
) -> Path:
    """Build the scene manifest (and audio) from a corpus manifest. Returns <out_dir>/manifest.jsonl.

    Deterministic given (corpus manifest, config); a rerun with the same inputs returns at once unless `force`."""
    cfg = config or ScenesConfig()
    corpus_manifest, out = Path(corpus_manifest), Path(out_dir)
    corpus_sha = file_sha256(corpus_manifest)
    key = _config_key(cfg, corpus_sha)
    manifest, report_path = out / "manifest.jsonl", out / "report.json"
    if not force and manifest.is_file() and report_path.is_file():
        if json.loads(report_path.read_text()).get("key") == key:
            log.info("scenes up to date", extra={"manifest": str(manifest)})
            return manifest
    started = time.time()
    sr = cfg.sample_rate
    rows = [r for r in load_jsonl(corpus_manifest) if r["tags"]]
    if not rows:
        raise ValueError(f"{corpus_manifest}: no tagged clips")
    group_of = assign_sources(rows, cfg.split_fractions, cfg.seed)
    root = corpus_manifest.parent
    clips = {r["id"]: load_audio(root / r["audio"], sr) for r in tqdm(rows, desc="loading clips", unit="clip")}
    pools = {g: _Pool([r for r in rows if group_of[r["source"]] == g], cfg) for g in GROUPS}
    if not pools["captioned"].keys:
        raise ValueError("no clips in the captioned group: the corpus is too small")

    by_id, out_rows = {r["id"]: r for r in rows}, []
    jobs = [
        ("captioned", "captioned", cfg.n_captioned),
        ("tags_only", "tags_only", cfg.n_tags_only),
        ("test_scenes", "test", cfg.n_test_scenes),
    ]
    for split_index, (split, group, count) in enumerate(jobs):
        if count and not pools[group].keys:
            log.warning("no clips for split", extra={"split": split})
            continue
        for i in tqdm(range(count), desc=split, unit="scene"):
            rng = np.random.default_rng([cfg.seed, split_index, i])  # per scene: order-independent, reproducible
            spec = plan_scene(pools[group], cfg, rng, clips)
            captions = templates.distinct_captions(
                lambda r: templates.scene_caption(spec["events"], spec["background"], r),  # noqa: B023 - called here
                rng,
                cfg.n_captions,
                first=_single_event_text(spec, by_id),
            )
            sid = f"{split}/{i:05d}"
            _write_flac(out / "audio" / f"{sid}.flac", render_scene(spec, clips, cfg.canvas_s, sr), sr)
            out_rows.append(
                {
                    "id": sid,
                    "audio": f"audio/{sid}.flac",
                    "duration": cfg.canvas_s,
                    "tags": scene_tags(spec),
                    "captions": captions,
                    "split": split,
                    **spec,
                    "seed": cfg.seed,
                }
            )
    event_jobs = [("test_events", "test", "")]  # every held-out recording, alone
    if cfg.source_events:  # the training groups' recordings too (AudioCaps and AudioSet clips are recordings)
        event_jobs += [("captioned", "captioned", "e"), ("tags_only", "tags_only", "e")]
    for k, (split, group, prefix) in enumerate(event_jobs):
        group_clips = sorted((r for r in rows if group_of[r["source"]] == group), key=lambda r: r["id"])
        out_rows += _event_rows(group_clips, clips, split, prefix, len(jobs) + k, cfg, out)
    write_jsonl(out_rows, manifest)
    report = _report(out_rows, group_of, cfg, key, corpus_manifest, corpus_sha, time.time() - started)
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    log.info(
        "scenes written",
        extra={
            "manifest": str(manifest),
            "rows": len(out_rows),
            "splits": report["splits"],
            "seconds": report["seconds"],
        },
    )
    return manifest


def _event_rows(
    group_clips: list[dict],
    clips: dict[str, np.ndarray],
    split: str,
    prefix: str,
    job: int,
    cfg: ScenesConfig,
    out: Path,
) -> list[dict]:
    """One row per recording, kept at its own length up to the canvas, with template references."""
    sr, rows = cfg.sample_rate, []
    for i, r in enumerate(tqdm(group_clips, desc=f"{split}: recordings", unit="clip")):
        rng = np.random.default_rng([cfg.seed, job, i])
        wave = clips[r["id"]][: int(round(cfg.canvas_s * sr))]
        sid = f"{split}/{prefix}{i:05d}"
        _write_flac(out / "audio" / f"{sid}.flac", wave, sr)
        dur = round(len(wave) / sr, 4)
        rows.append(
            {
                "id": sid,
                "audio": f"audio/{sid}.flac",
                "duration": dur,
                "tags": list(r["tags"]),
                "captions": templates.event_captions(
                    r["tags"], r.get("caption_hint", ""), r.get("captions", []), rng, cfg.n_captions
                ),
                "split": split,
                "events": [
                    {
                        "clip_id": r["id"],
                        "source": r["source"],
                        "tags": list(r["tags"]),
                        "onset": 0.0,
                        "offset": dur,
                        "clip_offset": 0.0,
                        "gain_db": 0.0,
                    }
                ],
                "background": None,
                "seed": cfg.seed,
            }
        )
    return rows


def _single_event_text(spec: dict, by_id: dict[str, dict]) -> list[str]:
    """A lone event without background may be described by its clip's own shipped text (one reference at most)."""
    if len(spec["events"]) != 1 or spec["background"]:
        return []
    clip = by_id[spec["events"][0]["clip_id"]]
    text = templates.shipped_text(clip.get("caption_hint", ""), clip.get("captions", []))
    return [text[0][:1].upper() + text[0][1:]] if text else []


def _report(
    rows: list[dict],
    group_of: dict[str, str],
    cfg: ScenesConfig,
    key: str,
    corpus: Path,
    corpus_sha: str,
    seconds: float,
) -> dict:
    splits = Counter(r["split"] for r in rows)
    tags = {s: Counter(t for r in rows if r["split"] == s for t in r["tags"]) for s in SPLITS}
    return {
        "key": key,
        "config": to_dict(cfg),
        "corpus_manifest": str(corpus),
        "corpus_sha256": corpus_sha,
        "seconds": round(seconds, 1),
        "splits": dict(splits),
        "sources": dict(Counter(group_of.values())),
        "events_per_scene": {s: dict(Counter(len(r["events"]) for r in rows if r["split"] == s)) for s in SPLITS},
        "with_background": {s: sum(1 for r in rows if r["split"] == s and r["background"]) for s in SPLITS},
        "distinct_tags": {s: len(c) for s, c in tags.items()},
        "source_groups": group_of,
    }


# --- command line -------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m blat.pipeline.scenes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(__doc__.split("\n\n")[:3]),
        epilog="examples:\n"
        "  python -m blat.pipeline.scenes --corpus runs/corpus/ci/manifest.jsonl --out runs/scenes/ci\n"
        "  python -m blat.pipeline.scenes --corpus ... --out ... --recipe demo --n-captioned 2000 --seed 1\n",
    )
    p.add_argument("--corpus", type=Path, required=True, help="corpus manifest.jsonl (python -m blat.pipeline.corpus)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--recipe", default="ci", help="preset name (ci, demo) or recipe JSON path; its 'scenes' section")
    for name in ("n_captioned", "n_tags_only", "n_test_scenes", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"override scenes.{name}")
    p.add_argument("--canvas-s", type=float, help="override scenes.canvas_s (seconds)")
    p.add_argument("--force", action="store_true", help="rebuild even if the output matches the inputs")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    from blat_contract.logs import setup_logging

    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_recipe(args.recipe).scenes
    cfg = with_overrides(cfg, args)
    manifest = make_scenes(args.corpus, args.out, cfg, force=args.force)
    report = json.loads((manifest.parent / "report.json").read_text())
    print(f"{manifest}: {report['splits']} (sources per group {report['sources']}, {report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
