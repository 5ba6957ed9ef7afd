"""The real datasets as a scenes manifest: AudioCaps caption CSVs and AudioSet segment CSVs over downloaded clips.

    python -m blat.pipeline.datasets --out data/paper --audio /data/audiocaps /data/audioset \\
        --audiocaps-train train.csv --audiocaps-val val.csv --audiocaps-test test.csv \\
        --audioset balanced_train_segments.csv unbalanced_train_segments.csv --audioset-eval eval_segments.csv

Writes <out>/manifest.jsonl (the format blat.pipeline.scenes writes, so stages 1-4 read it unchanged; point a
recipe's `manifest` at it) and <out>/report.json (counts per split: rows read, dropped, missing, written).

Splits: AudioCaps train -> captioned (stage 1 trains on its captions); AudioCaps val -> val (no stage reads it);
AudioCaps test -> test_scenes (retrieval, caption scores); AudioSet train CSVs -> tags_only (stage 2 captions it,
captions empty); AudioSet eval -> test_events, every segment with all its labels (`--events single`: only
segments with exactly one label, for the single-label zero-shot protocol). AudioCaps clips are tagged by joining
their YouTube id with every AudioSet CSV given (--audioset, --audioset-eval, --tags-from).

A YouTube id is in one split only, the first of test_scenes, test_events, val, captioned, tags_only whose CSVs
list it (files present or not), so no test clip is trained on and no AudioCaps clip is also a synthetic pair.

Audio: each segment's file is looked up by name templates (--pattern, tried in order; fields youtube_id, start,
end, start_int, end_int and, for AudioCaps, audiocap_id) over every file below the --audio folders with a
libsndfile extension. A missing or unreadable file is counted, not fatal. Clips must be 32 kHz (what training and
evaluation read); --resample writes 32 kHz mono FLAC copies of other clips under <out>/audio32k/.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path

import soundfile as sf

from blat.pipeline.data import load_audio, write_jsonl
from blat_contract.audio import SAMPLE_RATE

log = logging.getLogger("blat.pipeline.datasets" if __name__ == "__main__" else __name__)

# File-name templates (no extension) of common downloaders, tried in order: aac-datasets
# ("{youtube_id}_{start_time}"), PANNs' audioset_tagging_cnn ("Y" + id), one file per id, audiocaps-download (one
# file per caption row, named by its audiocap_id), and a millisecond start.
DEFAULT_PATTERNS = (
    "{youtube_id}_{start_int}",
    "Y{youtube_id}",
    "{youtube_id}",
    "{audiocap_id}",
    "{youtube_id}_{start:.3f}",
)
# What libsndfile decodes (mp3 since libsndfile 1.1; ogg holds Vorbis or Opus). m4a/aac/webm are not: convert them.
DEFAULT_EXTENSIONS = ("wav", "flac", "ogg", "opus", "mp3")
PATTERN_FIELDS = ("youtube_id", "start", "end", "start_int", "end_int", "audiocap_id")
CLIP_SECONDS = 10.0  # AudioCaps lists only a start; its clips are AudioSet's 10 s segments
# A YouTube id goes to the first of these splits whose CSVs list it.
SPLIT_ORDER = ("test_scenes", "test_events", "val", "captioned", "tags_only")
EVENTS_MODES = ("all", "single")


class DatasetError(ValueError):
    """A CSV that does not parse, or labels outside the 527 AudioSet classes."""


@dataclasses.dataclass
class Segment:
    """One clip of a CSV: a YouTube id and a window, with its tags (display names) and reference captions."""

    youtube_id: str
    start: float
    end: float
    tags: list[str] = dataclasses.field(default_factory=list)
    captions: list[str] = dataclasses.field(default_factory=list)
    audiocap_ids: list[str] = dataclasses.field(default_factory=list)  # AudioCaps rows (one per caption)
    dataset: str = ""  # "audiocaps" or "audioset"

    @property
    def id(self) -> str:
        return f"{self.youtube_id}_{_seconds(self.start)}"


def _seconds(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


# --- CSV readers ---------------------------------------------------------------------------------------------------


def mid_to_name() -> dict[str, str]:
    """AudioSet machine ids ("/m/09x0r") -> display names ("Speech"), the 527 classes of blat_contract.labels."""
    path = resources.files("blat_contract") / "data" / "audioset" / "class_labels_indices.csv"
    with path.open(newline="", encoding="utf-8") as f:
        return {r["mid"]: r["display_name"] for r in csv.DictReader(f)}


def read_audiocaps(path: str | Path) -> list[Segment]:
    """An AudioCaps CSV (audiocap_id, youtube_id, start_time, caption): one segment per (youtube_id, start_time),
    with the captions of all its rows in file order."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"audiocap_id", "youtube_id", "start_time", "caption"}
        if not need <= set(reader.fieldnames or ()):
            raise DatasetError(f"{path}: AudioCaps CSV needs columns {sorted(need)}, got {reader.fieldnames}")
        clips: dict[tuple[str, float], Segment] = {}
        for line, row in enumerate(reader, start=2):
            try:
                start = float(row["start_time"])
            except (TypeError, ValueError):
                raise DatasetError(f"{path}:{line}: start_time {row['start_time']!r} is not a number") from None
            yid = (row["youtube_id"] or "").strip()
            if not yid:
                raise DatasetError(f"{path}:{line}: empty youtube_id")
            seg = clips.setdefault((yid, start), Segment(yid, start, start + CLIP_SECONDS, dataset="audiocaps"))
            caption = (row["caption"] or "").strip()
            if caption:
                seg.captions.append(caption)
            seg.audiocap_ids.append(str(row["audiocap_id"]).strip())
    return list(clips.values())


def _segment_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of an AudioSet segment CSV: `#` comment lines and a YTID header row skipped, fields
    separated by ", " with the label list quoted."""
    with open(path, newline="", encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            fields = [x.strip() for x in next(csv.reader([text], skipinitialspace=True))]
            if fields[0] != "YTID":
                yield line, fields


def read_audioset(path: str | Path, names: dict[str, str] | None = None) -> list[Segment]:
    """An AudioSet segment CSV (YTID, start_seconds, end_seconds, positive_labels): one segment per row, its mids
    made display names. Mids outside the 527 classes are an error naming them and the first line of each."""
    path = Path(path)
    names = names if names is not None else mid_to_name()
    out: list[Segment] = []
    unknown: dict[str, int] = {}
    for line, fields in _segment_rows(path):
        if len(fields) != 4:
            raise DatasetError(
                f"{path}:{line}: expected 4 fields (YTID, start_seconds, end_seconds, "
                f"positive_labels), got {len(fields)}: {fields}"
            )
        yid, start, end, labels = fields
        try:
            start_s, end_s = float(start), float(end)
        except ValueError:
            raise DatasetError(f"{path}:{line}: start/end {start!r}, {end!r} are not numbers") from None
        mids = [m.strip() for m in labels.split(",") if m.strip()]
        for m in mids:
            if m not in names:
                unknown.setdefault(m, line)
        tags = list(dict.fromkeys(names[m] for m in mids if m in names))
        out.append(Segment(yid, start_s, end_s, tags=tags, dataset="audioset"))
    if unknown:
        shown = ", ".join(f"{m!r} (line {n})" for m, n in list(unknown.items())[:10])
        raise DatasetError(
            f"{path}: {len(unknown)} label id(s) are not among the 527 AudioSet classes "
            f"(blat_contract/data/audioset/class_labels_indices.csv): {shown}"
        )
    return out


# --- finding the audio ---------------------------------------------------------------------------------------------


def check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """Templates that format with the known fields (a typo fails here, not after scanning the folders)."""
    sample = {"youtube_id": "abc", "start": 30.0, "end": 40.0, "start_int": 30, "end_int": 40, "audiocap_id": "1"}
    for p in patterns:
        try:
            p.format_map(sample)
        except (KeyError, ValueError, IndexError) as e:
            raise DatasetError(
                f"file-name pattern {p!r}: {type(e).__name__} {e}; fields: {', '.join(PATTERN_FIELDS)}"
            ) from None
    if not patterns:
        raise DatasetError("give at least one file-name pattern")
    return tuple(patterns)


def candidate_names(seg: Segment, patterns: Sequence[str]) -> list[str]:
    """File names (no extension) a segment's audio may have, in pattern order; a pattern naming audiocap_id is
    tried with each of the segment's AudioCaps rows and skipped for AudioSet segments."""
    base = {
        "youtube_id": seg.youtube_id,
        "start": seg.start,
        "end": seg.end,
        "start_int": int(seg.start),
        "end_int": int(seg.end),
    }
    out: list[str] = []
    for p in patterns:
        if "audiocap_id" not in p:
            out.append(p.format_map({**base, "audiocap_id": ""}))
        else:
            out += [p.format_map({**base, "audiocap_id": a}) for a in seg.audiocap_ids]
    return list(dict.fromkeys(out))


class AudioIndex:
    """Every audio file below some folders, by name without extension: the bare name and the path relative to its
    folder (for patterns with a "/"). Of files sharing a name, the first extension in `extensions` wins."""

    def __init__(self, roots: Sequence[str | Path], extensions: Sequence[str] = DEFAULT_EXTENSIONS):
        rank = {e.lower().lstrip("."): i for i, e in enumerate(extensions)}
        self.files: dict[str, tuple[int, Path]] = {}
        self.duplicates = 0  # names held by more than one file (same name in two folders)
        self.count = 0
        for root in roots:
            root = Path(root).expanduser().resolve()
            if not root.is_dir():
                raise FileNotFoundError(f"audio folder not found: {root}")
            for folder, dirs, names in os.walk(root, followlinks=True):
                dirs.sort()
                for name in sorted(names):
                    stem, dot, ext = name.rpartition(".")
                    if not dot or ext.lower() not in rank:
                        continue
                    self.count += 1
                    path = Path(folder) / name
                    rel = path.relative_to(root).with_suffix("").as_posix()
                    for key in dict.fromkeys((stem, rel)):
                        self._add(key, rank[ext.lower()], path)

    def _add(self, key: str, rank: int, path: Path) -> None:
        old = self.files.get(key)
        if old is not None and old[1].with_suffix("") != path.with_suffix(""):
            self.duplicates += 1  # another folder: the first found (in sorted order) stays
        elif old is None or rank < old[0]:
            self.files[key] = (rank, path)

    def find(self, names: Iterable[str]) -> Path | None:
        for n in names:
            hit = self.files.get(n)
            if hit is not None:
                return hit[1]
        return None


def _probe(path: str) -> tuple[int, int] | str:
    """(sample rate, frames) of a sound file, or why it cannot be used."""
    try:
        info = sf.info(path)
    except Exception as e:  # libsndfile raises RuntimeError subclasses, or OSError / TypeError on odd files
        return f"{type(e).__name__}: {e}"
    if info.frames <= 0 or info.samplerate <= 0:
        return "no samples"
    return int(info.samplerate), int(info.frames)


def _resample(job: tuple[str, str]) -> tuple[int, int] | str:
    """Write `src` as 32 kHz mono 16-bit FLAC at `dst` (kept when it is there already); (rate, frames) or why not."""
    src, dst = job
    if os.path.exists(dst):
        return _probe(dst)
    try:
        wave = load_audio(src, SAMPLE_RATE)
        tmp = f"{dst}.tmp{os.getpid()}.flac"
        sf.write(tmp, wave, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
        os.replace(tmp, dst)
    except Exception as e:  # a file that probes but does not decode
        return f"{type(e).__name__}: {e}"
    return SAMPLE_RATE, len(wave)


def _map(fn: Callable, items: list, jobs: int) -> list:
    if jobs <= 1 or len(items) < 64:
        return [fn(x) for x in items]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(fn, items, chunksize=256))


# --- the manifest --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sources:
    """The CSVs of each split (paths). A split without CSVs is left out of the manifest."""

    audiocaps_train: tuple[str, ...] = ()  # -> captioned
    audiocaps_val: tuple[str, ...] = ()  # -> val (held out, read by no stage)
    audiocaps_test: tuple[str, ...] = ()  # -> test_scenes
    audioset_train: tuple[str, ...] = ()  # -> tags_only (e.g. balanced + unbalanced train)
    audioset_eval: tuple[str, ...] = ()  # -> test_events
    audioset_tags: tuple[str, ...] = ()  # segment CSVs used only to tag AudioCaps clips (no rows of their own)


def read_sources(src: Sources, events: str = "all") -> tuple[dict[str, list[Segment]], dict]:
    """Segments per split, with AudioCaps clips tagged and every YouTube id in one split only; and the counts."""
    if events not in EVENTS_MODES:
        raise DatasetError(f"events must be one of {EVENTS_MODES}, got {events!r}")
    names = mid_to_name()
    audioset = {
        p: read_audioset(p, names) for p in dict.fromkeys(src.audioset_train + src.audioset_eval + src.audioset_tags)
    }
    by_split: dict[str, list[Segment]] = {
        "captioned": [s for p in src.audiocaps_train for s in read_audiocaps(p)],
        "val": [s for p in src.audiocaps_val for s in read_audiocaps(p)],
        "test_scenes": [s for p in src.audiocaps_test for s in read_audiocaps(p)],
        "tags_only": [s for p in src.audioset_train for s in audioset[p]],
        "test_events": [s for p in src.audioset_eval for s in audioset[p]],
    }
    report: dict = {"events": events, "splits": {}}
    # Tags of AudioCaps clips: the AudioSet segment of the same YouTube id (the first CSV that lists it).
    tags_of: dict[str, list[str]] = {}
    for segs in audioset.values():
        for s in segs:
            tags_of.setdefault(s.youtube_id, s.tags)
    for split in ("captioned", "val", "test_scenes"):
        for s in by_split[split]:
            s.tags = list(tags_of.get(s.youtube_id, []))
    owner: dict[str, str] = {}
    for split in SPLIT_ORDER:  # reserve ids from the CSVs, in precedence order
        for s in by_split[split]:
            owner.setdefault(s.youtube_id, split)
    out: dict[str, list[Segment]] = {}
    for split in SPLIT_ORDER:
        rows = by_split[split]
        if not rows:
            continue
        counts: Counter = Counter(csv_segments=len(rows))
        kept: dict[str, Segment] = {}
        for s in rows:
            if owner[s.youtube_id] != split:
                counts[f"dropped_in_{owner[s.youtube_id]}"] += 1
            elif s.id in kept:
                counts["dropped_duplicate"] += 1
            elif split == "test_events" and events == "single" and len(s.tags) != 1:
                counts["dropped_not_single_label"] += 1
            elif split == "tags_only" and not s.tags:
                counts["dropped_no_tags"] += 1
            else:
                kept[s.id] = s
        if split in ("captioned", "val", "test_scenes"):
            counts["without_tags"] = sum(1 for s in kept.values() if not s.tags)
            counts["without_captions"] = sum(1 for s in kept.values() if not s.captions)
            if split != "val":  # clips without reference captions cannot train or score captions
                kept = {k: s for k, s in kept.items() if s.captions}
        out[split] = list(kept.values())
        counts["kept"] = len(out[split])
        report["splits"][split] = dict(counts)
    if not out:
        raise DatasetError(
            "no CSV given: pass at least one of --audiocaps-train/-val/-test, --audioset, --audioset-eval"
        )
    if any(out.get(s) for s in ("captioned", "val", "test_scenes")) and not audioset:
        log.warning("no AudioSet CSV given: AudioCaps clips have no tags (the tag-guided captioner needs them)")
    return out, report


def build_manifest(
    src: Sources,
    audio_dirs: Sequence[str | Path],
    out_dir: str | Path,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    events: str = "all",
    resample: bool = False,
    jobs: int = 1,
) -> dict:
    """Write <out_dir>/manifest.jsonl and report.json from the CSVs in `src` and the clips below `audio_dirs`;
    returns the report. Raises DatasetError for clips not at 32 kHz unless `resample`."""
    started = time.time()
    out_dir = Path(out_dir).resolve()
    patterns = check_patterns(patterns)
    splits, report = read_sources(src, events)
    index = AudioIndex(audio_dirs, extensions)
    log.info("audio files indexed", extra={"files": index.count, "duplicate_names": index.duplicates})
    todo: list[tuple[str, Segment, Path]] = []
    for split, segs in splits.items():
        missing = []
        for s in segs:
            path = index.find(candidate_names(s, patterns))
            if path is None:
                missing.append(s.id)
            else:
                todo.append((split, s, path))
        report["splits"][split]["missing_audio"] = len(missing)
        if missing:
            report["splits"][split]["missing_examples"] = missing[:10]
    probes = _map(_probe, [str(p) for _, _, p in todo], jobs)
    wrong_rate = [i for i, r in enumerate(probes) if isinstance(r, tuple) and r[0] != SAMPLE_RATE]
    if wrong_rate and not resample:
        rates = Counter(probes[i][0] for i in wrong_rate)
        raise DatasetError(
            f"{len(wrong_rate)} clips are not at {SAMPLE_RATE} Hz (rates {dict(rates.most_common(5))}, "
            f"e.g. {todo[wrong_rate[0]][2]}); pass --resample to write 32 kHz FLAC copies under "
            f"{out_dir / 'audio32k'}"
        )
    if wrong_rate:
        (out_dir / "audio32k").mkdir(parents=True, exist_ok=True)
        jobs_ = [(str(todo[i][2]), str(out_dir / "audio32k" / f"{todo[i][1].id}.flac")) for i in wrong_rate]
        for i, got in zip(wrong_rate, _map(_resample, jobs_, jobs)):
            probes[i] = got
            if isinstance(got, tuple):
                todo[i] = (todo[i][0], todo[i][1], out_dir / "audio32k" / f"{todo[i][1].id}.flac")
    rows, unreadable = [], defaultdict(list)
    for (split, s, path), probe in zip(todo, probes):
        if isinstance(probe, str):
            unreadable[split].append(f"{path}: {probe}")
            continue
        rows.append(
            {
                "id": s.id,
                "audio": _relative(path, out_dir),
                "duration": round(probe[1] / probe[0], 3),
                "tags": s.tags,
                "captions": s.captions,
                "split": split,
                "dataset": s.dataset,
                "youtube_id": s.youtube_id,
                "start": s.start,
                "end": s.end,
            }
        )
    resampled = Counter(todo[i][0] for i in wrong_rate if isinstance(probes[i], tuple))
    for split, counts in report["splits"].items():
        counts["unreadable_audio"] = len(unreadable[split])
        if unreadable[split]:
            counts["unreadable_examples"] = unreadable[split][:10]
        counts["resampled"] = resampled[split]
        counts["written"] = sum(1 for r in rows if r["split"] == split)
    write_jsonl(rows, out_dir / "manifest.jsonl")
    report.update(
        {
            "manifest": str(out_dir / "manifest.jsonl"),
            "sources": dataclasses.asdict(src),
            "audio_dirs": [str(Path(d).expanduser().resolve()) for d in audio_dirs],
            "patterns": list(patterns),
            "extensions": list(extensions),
            "audio_files_indexed": index.count,
            "duplicate_file_names": index.duplicates,
            "rows": len(rows),
            "seconds": round(time.time() - started, 1),
        }
    )
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    for split, counts in report["splits"].items():
        if counts["missing_audio"] or counts["unreadable_audio"]:
            log.warning(
                "clips left out",
                extra={
                    "split": split,
                    "missing_audio": counts["missing_audio"],
                    "unreadable_audio": counts["unreadable_audio"],
                },
            )
    log.info("manifest written", extra={"manifest": report["manifest"], "rows": len(rows)})
    return report


def _relative(path: Path, root: Path) -> str:
    """The manifest's audio field: relative to the manifest's folder when the file lies below it, else absolute."""
    path = path.resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# --- command line --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m blat.pipeline.datasets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (manifest.jsonl, report.json, audio32k/)")
    p.add_argument(
        "--audio",
        nargs="+",
        required=True,
        action="extend",
        metavar="DIR",
        help="folders holding the downloaded clips (searched recursively)",
    )
    csvs = {
        "audiocaps_train": "AudioCaps train CSV(s) -> captioned",
        "audiocaps_val": "AudioCaps val CSV(s) -> val (held out)",
        "audiocaps_test": "AudioCaps test CSV(s) -> test_scenes",
        "audioset_train": "AudioSet segment CSV(s) -> tags_only (balanced/unbalanced train)",
        "audioset_eval": "AudioSet eval segment CSV(s) -> test_events",
        "audioset_tags": "AudioSet segment CSV(s) only to tag AudioCaps clips",
    }
    flags = {"audioset_train": "--audioset", "audioset_tags": "--tags-from"}
    for name, text in csvs.items():
        p.add_argument(
            flags.get(name, "--" + name.replace("_", "-")),
            dest=name,
            nargs="+",
            action="extend",
            default=[],
            metavar="CSV",
            help=text,
        )
    p.add_argument(
        "--pattern",
        action="append",
        metavar="TEMPLATE",
        help="file name without extension, Python format fields "
        f"{', '.join(PATTERN_FIELDS)} (repeatable, tried in order; a '/' matches a path below "
        f"an --audio folder). Default: {' '.join(DEFAULT_PATTERNS)}",
    )
    p.add_argument(
        "--ext",
        action="append",
        metavar="EXT",
        help=f"audio extensions in order of preference (default: {' '.join(DEFAULT_EXTENSIONS)})",
    )
    p.add_argument(
        "--events",
        choices=EVENTS_MODES,
        default="all",
        help="AudioSet eval segments in test_events: all (multi-label; for the tagging protocol) or only "
        "those with exactly one label (for zero_shot_events)",
    )
    p.add_argument("--resample", action="store_true", help="write 32 kHz mono FLAC copies of clips at other rates")
    p.add_argument("--jobs", type=int, default=1, help="processes for reading headers and resampling")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    from blat_contract.logs import setup_logging

    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    src = Sources(**{f.name: tuple(getattr(args, f.name)) for f in dataclasses.fields(Sources)})
    try:
        report = build_manifest(
            src,
            args.audio,
            args.out,
            args.pattern or DEFAULT_PATTERNS,
            args.ext or DEFAULT_EXTENSIONS,
            args.events,
            args.resample,
            args.jobs,
        )
    except (DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, c in report["splits"].items():
        print(
            f"{split:12s} {c['written']:8d} written of {c['csv_segments']} in the CSVs "
            f"(missing audio {c['missing_audio']}, unreadable {c['unreadable_audio']}, "
            f"in another split {sum(v for k, v in c.items() if k.startswith('dropped_in_'))})"
        )
    print(f"{report['manifest']} ({report['rows']} rows; details in report.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
