"""Step 1 of the BLAT pipeline: build a corpus of real sound-event recordings with AudioSet tags.

Downloads a chosen set of Debian packages (`apt-get download`, cached), unpacks them without installing
(`dpkg-deb -x`), keeps the files that a curated table (`data/tag_rules.csv`) maps to AudioSet tags, and writes
mono 32 kHz 16-bit FLAC clips plus a JSON Lines manifest and each package's copyright file:

    <out>/audio/<id>.flac   <out>/manifest.jsonl   <out>/licenses/<package>/copyright   <out>/build_report.json

Or the same from your own folder of audio and a CSV of tags/captions. Run `python -m blat.pipeline.corpus -h`.

Besides sound effects the corpus holds speech and human sounds (game voice lines, alsa-utils' spoken channel names),
music (game soundtracks cut into up to `EXCERPTS_PER_TRACK` excerpts of `EXCERPT_SECONDS`, tagged
"Music; Video game music" and more only where a name says it) and single instrument notes rendered from a Debian
General-MIDI SoundFont (`blat.pipeline.instruments`). `blat.pipeline.families` groups the tags into families.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from blat.pipeline import sources
from blat.pipeline.data import load_scene_manifest, write_jsonl
from blat.pipeline.families import MUSIC, family
from blat.pipeline.sources import Member, SourceError
from blat.pipeline.tags import TagTable, TagTableError, load_tag_table, parse_tags
from blat_contract.audio import SAMPLE_RATE

log = logging.getLogger("blat.pipeline.corpus" if __name__ == "__main__" else __name__)

MIN_SECONDS = 0.32  # shorter clips are skipped (the BLAT captioner skips them too)
MAX_SECONDS = 30.0  # longer recordings keep their first 30 s
SILENCE_DBFS = -60.0  # a clip whose peak is below this is treated as silent and skipped
SILENCE_PEAK = 10 ** (SILENCE_DBFS / 20)  # 0.001 of full scale
DEFAULT_CACHE = Path("~/.cache/blat/corpus")  # or $BLAT_CACHE / --cache
UNASSIGNED = "unassigned"  # split, until a later stage assigns them by source recording
EXCERPT_SECONDS = 10.0  # music tracks longer than EXCERPT_MIN_TRACK are cut into excerpts of this length ...
EXCERPTS_PER_TRACK = 3  # ... at most this many, spread evenly over the track (they share one recording group)
EXCERPT_MIN_TRACK = 32.0  # shorter music is kept whole (up to MAX_SECONDS), like every other sound


@dataclass
class ManifestRow:
    """One line of manifest.jsonl."""

    id: str  # "<package>/<slug of the path>", stable across runs and unique
    audio: str  # FLAC path relative to the manifest's folder: "audio/<id>.flac"
    duration: float  # seconds, after capping at MAX_SECONDS
    tags: list[str]  # AudioSet display names
    captions: list[str]  # human descriptions shipped with the sound (may be empty)
    caption_hint: str  # the tag table's short description of the sound ("" if none)
    split: str  # "unassigned" here
    package: str  # Debian package (or the user folder's name)
    path: str  # the file as shipped: path in the .deb, plus "!entry" inside a container
    source: str  # recording group: package + path with the take number removed; keep groups within one split
    licence: str  # short licence name (and credit where the package gives one per sound)


def load_manifest(path: str | Path) -> list[dict]:
    """manifest.jsonl -> list of row dicts (fields of ManifestRow)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_manifest(rows: list[ManifestRow], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in sorted(rows, key=lambda r: r.id):
            f.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# --- audio ------------------------------------------------------------------------------------------------------


def to_mono(wave: np.ndarray, sr: int, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """(N,) or (N, C) float audio at `sr` Hz -> (M,) float32 mono at SAMPLE_RATE, capped at max_seconds."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)  # (N, C) -> (N,)
    wave = wave[: int(round(max_seconds * sr))]
    if sr != SAMPLE_RATE:
        g = gcd(SAMPLE_RATE, sr)
        wave = resample_poly(wave, SAMPLE_RATE // g, sr // g)  # polyphase, Kaiser-windowed anti-alias filter
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """An encoded file image (WAV/Ogg/FLAC/MP3) -> ((N, C) float32, sample rate)."""
    wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return wave, sr


def load_member(member: Member) -> tuple[np.ndarray, int]:
    """A member's audio: decoded from its bytes (cut to its excerpt window) or rendered from its SoundFont."""
    if member.note is not None:
        from blat.pipeline.instruments import render_note

        bank, program, key, velocity = member.note
        return render_note(member.file, bank, program, key, velocity, SAMPLE_RATE), SAMPLE_RATE
    wave, sr = decode(sources.read_member(member))
    if member.window is not None:
        start, length = member.window
        wave = wave[int(round(start * sr)) : int(round((start + length) * sr))]
    return wave, sr


def _process(job: tuple[Member, str, float]) -> tuple[str, float]:
    """Worker: decode, downmix, resample and write one clip. Returns (outcome, seconds)."""
    member, out, min_seconds = job
    try:
        wave = to_mono(*load_member(member))
    except Exception as e:  # a file libsndfile cannot read is skipped, not fatal
        return f"failed: {type(e).__name__}: {e}", 0.0
    seconds = len(wave) / SAMPLE_RATE
    if seconds < min_seconds:
        return "too_short", seconds
    if not len(wave) or np.abs(wave).max() < SILENCE_PEAK:
        return "silent", seconds
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = out + ".partial"
    sf.write(tmp, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp, out)
    return "written", seconds


# --- ids and recording groups -----------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def clip_ids(prefix: str, paths: list[str]) -> dict[str, str]:
    """Stable, unique ids "<prefix>/<dir>/<stem>" from paths; an extension is appended only where stems collide."""

    def base(p: str) -> str:
        parts = p.split("/")
        return "/".join([_slug(d) for d in parts[:-1]] + [_slug(os.path.splitext(parts[-1])[0])])

    bases = [base(p) for p in paths]
    counts = Counter(bases)
    ids, seen = {}, set()
    for p, b in zip(paths, bases):
        if counts[b] > 1:
            b = f"{b}-{_slug(os.path.splitext(p)[1]) or 'noext'}"
        candidate, n = b, 1
        while candidate in seen:
            n += 1
            candidate = f"{b}-{n}"
        seen.add(candidate)
        ids[p] = f"{prefix}/{candidate}"
    return ids


_TAKE = re.compile(r"[-_. ]?\d+[a-z]?$")  # a trailing take number: ".2", "_01", "-3", "12b"


def recording_group(package: str, path: str, group: str | None = None) -> str:
    """Takes of one recording share a group: "gravel_footstep.2.ogg" -> "<package>:.../gravel_footstep"."""
    if group:
        return f"{package}:{group}"
    stem = os.path.splitext(path)[0]
    return f"{package}:{_TAKE.sub('', stem) or stem}"


# --- building ---------------------------------------------------------------------------------------------------


@dataclass
class PackageStats:
    files: int = 0  # audio files found under the package root
    tagged: int = 0  # matched a rule with tags
    excluded: int = 0  # matched a rule with no tags (speech, music, voices)
    unmatched: int = 0  # no rule: skipped
    duplicates: int = 0  # byte-identical to a file kept earlier (games ship one recording under several names)
    written: int = 0  # clips decoded and written this run
    reused: int = 0  # clips already in <out> from an earlier run
    too_short: int = 0
    silent: int = 0
    failed: int = 0
    seconds: float = 0.0  # total duration of the clips in the manifest
    unmatched_paths: list[str] = field(default_factory=list)

    @property
    def clips(self) -> int:
        return self.written + self.reused


def _run(jobs: list[tuple[Member, str]], workers: int, desc: str) -> list[tuple[str, float]]:
    if workers <= 1 or len(jobs) < 2:
        return [_process(j) for j in tqdm(jobs, desc=desc, unit="clip")]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_process, jobs, chunksize=4), total=len(jobs), desc=desc, unit="clip"))


def _encode(
    items: list[tuple[Member, ManifestRow]],
    out: Path,
    stats: dict[str, PackageStats],
    workers: int,
    min_seconds: float = MIN_SECONDS,
) -> list[ManifestRow]:
    """Write each item's clip unless it is already there; returns the rows whose clip exists."""
    rows, todo = [], []
    for member, row in items:
        flac = out / row.audio
        if flac.is_file():
            info = sf.info(str(flac))
            row.duration = round(info.frames / info.samplerate, 3)
            stats[member.package].reused += 1
            rows.append(row)
        else:
            todo.append((member, row))
    results = _run([(m, str(out / r.audio), min_seconds) for m, r in todo], workers, "decoding")
    for (member, row), (outcome, seconds) in zip(todo, results):
        st = stats[member.package]
        if outcome == "written":
            st.written += 1
            row.duration = round(seconds, 3)
            rows.append(row)
        elif outcome in ("too_short", "silent"):
            setattr(st, outcome, getattr(st, outcome) + 1)
        else:
            st.failed += 1
            log.warning("cannot decode", extra={"package": member.package, "path": member.origin, "error": outcome})
    for row in rows:
        stats[row.package].seconds += row.duration
    return rows


def _finish(out: Path, rows: list[ManifestRow], stats: dict[str, PackageStats], started: float) -> dict:
    """Prune clips no longer in the manifest, write the manifest and the build report."""
    keep = {(out / r.audio).resolve() for r in rows}
    for package in stats:
        for flac in (out / "audio" / package).rglob("*.flac") if (out / "audio" / package).is_dir() else []:
            if flac.resolve() not in keep:
                flac.unlink()
    write_manifest(rows, out / "manifest.jsonl")
    report = {
        "manifest": str(out / "manifest.jsonl"),
        "clips": len(rows),
        "seconds": round(time.time() - started, 1),
        "packages": {p: {**asdict(s), "clips": s.clips, "seconds": round(s.seconds, 1)} for p, s in stats.items()},
    }
    (out / "build_report.json").write_text(json.dumps(report, indent=1) + "\n")
    for package, s in stats.items():
        log.info(
            "package done",
            extra={
                "package": package,
                "files": s.files,
                "tagged": s.tagged,
                "excluded": s.excluded,
                "unmatched": s.unmatched,
                "clips": s.clips,
                "duplicates": s.duplicates,
                "too_short": s.too_short,
                "silent": s.silent,
                "failed": s.failed,
            },
        )
    log.info("corpus written", extra={"manifest": report["manifest"], "clips": len(rows), "seconds": report["seconds"]})
    return report


def build_corpus(
    packages: list[str] | tuple[str, ...],
    out: str | Path,
    cache: str | Path | None = None,
    jobs: int = 1,
    table: TagTable | None = None,
    min_seconds: float = MIN_SECONDS,
) -> dict:
    """Fetch, unpack, tag and encode the given Debian packages into `out`. Returns the build report (a dict,
    also written to <out>/build_report.json). Reruns reuse the download cache and clips already written.
    min_seconds: shorter clips are skipped (training needs MIN_SECONDS; an index can keep shorter sounds)."""
    started = time.time()
    out, cache = Path(out), resolve_cache(cache)
    table = table or load_tag_table()
    unknown = [p for p in packages if p not in sources.PACKAGES]
    if unknown:
        raise ValueError(f"unknown packages {unknown}; known: {', '.join(sources.PACKAGES)}")
    (out / "audio").mkdir(parents=True, exist_ok=True)
    stats = {p: PackageStats() for p in packages}
    items = [item for p in packages for item in _scan_package(p, cache, out, table, stats[p])]
    rows = _encode(_drop_duplicates(items, stats), out, stats, jobs, min_seconds)
    return _finish(out, rows, stats, started)


def _scan_package(
    package: str, cache: Path, out: Path, table: TagTable, st: PackageStats
) -> list[tuple[Member, ManifestRow]]:
    """Fetch and unpack one package, copy its copyright file, and turn its tagged sounds into manifest rows."""
    tree = sources.fetch_package(package, cache)
    copyright_path = sources.copyright_file(package, tree)
    if copyright_path is None:
        raise SourceError(f"{package} ships no usr/share/doc/{package}/copyright: refusing to use its audio")
    (out / "licenses" / package).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(copyright_path, out / "licenses" / package / "copyright")
    copyright_text = copyright_path.read_text(encoding="utf-8", errors="replace")
    spec = sources.PACKAGES[package]
    members = sources.list_members(spec, tree)
    ids = clip_ids(package, [m.path for m in members])  # over all files, so a rule change never renames a clip
    st.files, items = len(members), []
    for m in members:
        rule = table.match(package, m.path)
        if rule is None and m.tags:  # a SoundFont note: labelled by data/gm_instruments.csv unless a rule says else
            tags, hint = m.tags, f"a {m.path.split('/')[-2][4:]} note"
        elif rule is None:
            st.unmatched += 1
            st.unmatched_paths.append(m.path)
            continue
        elif rule.excludes:
            st.excluded += 1
            continue
        else:
            tags, hint = rule.tags, rule.caption_hint
        st.tagged += 1
        licence = m.credit or sources.licence_for(copyright_text, m.origin, spec.licence)
        row = ManifestRow(
            id=ids[m.path],
            audio=f"audio/{ids[m.path]}.flac",
            duration=0.0,
            tags=list(tags),
            captions=[m.caption] if m.caption else [],
            caption_hint=hint,
            split=UNASSIGNED,
            package=package,
            path=m.origin,
            source=recording_group(package, m.origin, m.group),
            licence=licence,
        )
        items += excerpts(m, row) if "Music" in tags and family(tags) == MUSIC else [(m, row)]
    log.info(
        "package scanned",
        extra={
            "package": package,
            "files": st.files,
            "tagged": st.tagged,
            "excluded": st.excluded,
            "unmatched": st.unmatched,
        },
    )
    return items


def excerpts(member: Member, row: ManifestRow) -> list[tuple[Member, ManifestRow]]:
    """A music track longer than EXCERPT_MIN_TRACK -> up to EXCERPTS_PER_TRACK excerpts of EXCERPT_SECONDS, evenly
    spread between 5 s after its start and its end; ids get "-at-<start>s", paths "#t=<start>,<end>" (a media
    fragment), and all excerpts keep the track's recording group. Shorter (or unreadable) tracks stay one clip."""
    try:
        info = sf.info(io.BytesIO(sources.read_member(member)))
        seconds = info.frames / info.samplerate
    except Exception:  # decoding will report it
        return [(member, row)]
    if seconds < EXCERPT_MIN_TRACK:
        return [(member, row)]
    first, last = min(5.0, seconds - EXCERPT_SECONDS), seconds - EXCERPT_SECONDS - 1.0
    count = max(1, min(EXCERPTS_PER_TRACK, int((last - first) // EXCERPT_SECONDS) + 1))
    starts = [first + (last - first) * i / max(count - 1, 1) for i in range(count)] if count > 1 else [first]
    out = []
    for start in starts:
        start = float(int(start))
        cut_id = f"{row.id}-at-{int(start)}s"
        out.append(
            (
                replace(member, window=(start, EXCERPT_SECONDS)),
                replace(
                    row,
                    id=cut_id,
                    audio=f"audio/{cut_id}.flac",
                    path=f"{row.path}#t={int(start)},{int(start + EXCERPT_SECONDS)}",
                ),
            )
        )
    return out


def _drop_duplicates(
    items: list[tuple[Member, ManifestRow]], stats: dict[str, PackageStats]
) -> list[tuple[Member, ManifestRow]]:
    """Keep the first of byte-identical files: a copy under another name would leak across splits."""
    seen, kept = set(), []
    for member, row in tqdm(items, desc="hashing", unit="file"):
        digest = sources.member_digest(member)
        if digest in seen:
            stats[member.package].duplicates += 1
        else:
            seen.add(digest)
            kept.append((member, row))
    return kept


def build_from_folder(folder: str | Path, csv_path: str | Path, out: str | Path, jobs: int = 1) -> dict:
    """Your own audio: `csv_path` has columns path (relative to folder), tags (`;`-separated AudioSet names) and/or
    caption (several separated by `|`), and optionally licence and source. Same outputs as build_corpus."""
    started = time.time()
    folder, out = Path(folder), Path(out)
    name = _slug(folder.resolve().name)
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise TagTableError(f"{csv_path}: needs a 'path' column (and tags and/or caption), got {reader.fieldnames}")
        records = [(i, r) for i, r in enumerate(reader, start=2)]
    ids = clip_ids(name, [r["path"] for _, r in records])
    stats, items = {name: PackageStats(files=len(records))}, []
    for line, r in records:
        where = f"{csv_path}:{line}"
        tags = parse_tags(r.get("tags") or "", where)
        captions = [c.strip() for c in (r.get("caption") or "").split("|") if c.strip()]
        if not tags and not captions:
            raise TagTableError(f"{where}: {r['path']!r} has neither tags nor a caption")
        file = folder / r["path"]
        if not file.is_file():
            raise FileNotFoundError(f"{where}: no such audio file {file}")
        stats[name].tagged += 1
        member = Member(name, r["path"], str(file), r["path"])
        items.append(
            (
                member,
                ManifestRow(
                    id=ids[r["path"]],
                    audio=f"audio/{ids[r['path']]}.flac",
                    duration=0.0,
                    tags=list(tags),
                    captions=captions,
                    caption_hint="",
                    split=UNASSIGNED,
                    package=name,
                    path=r["path"],
                    source=(r.get("source") or "").strip() or recording_group(name, r["path"]),
                    licence=(r.get("licence") or "").strip() or "unknown (user-supplied)",
                ),
            )
        )
    (out / "audio").mkdir(parents=True, exist_ok=True)
    return _finish(out, _encode(_drop_duplicates(items, stats), out, stats, jobs), stats, started)


def resolve_cache(cache: str | Path | None) -> Path:
    return Path(cache or os.environ.get("BLAT_CACHE") or DEFAULT_CACHE).expanduser()


def write_index_seed(
    manifest: Path, path: Path, splits: tuple[str, ...] | None = ("test_events", "test_scenes")
) -> Path:
    """Clips of `manifest` (a scene manifest's held-out splits, never trained on; or, with splits=None, every row
    of a corpus manifest) as the gateway's seed index manifest: id, audio (absolute), tags, caption, and as the item's
    metadata (`extra`) where the corpus knows them: the sound's licence, Debian package and file in it."""
    rows = load_scene_manifest(manifest, list(splits) if splits else None)
    write_jsonl(
        (
            {
                "id": r["id"],
                "audio": str((manifest.parent / r["audio"]).resolve()),
                "tags": r["tags"],
                "caption": (r.get("captions") or [r.get("caption_hint") or ""])[0],
                "extra": {
                    k: r[f] for k, f in (("licence", "licence"), ("package", "package"), ("file", "path")) if r.get(f)
                },
            }
            for r in rows
        ),
        path,
    )
    return path


# --- command line -----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {p.name:24s} {p.note}" for p in sources.PACKAGES.values())
    sizes = "\n".join(f"  {k:5s} {', '.join(v)}" for k, v in sources.SIZES.items())
    p = argparse.ArgumentParser(
        prog="python -m blat.pipeline.corpus",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(__doc__.split("\n\n")[:3]),
        epilog=f"sizes:\n{sizes}\n\npackages:\n{listing}\n\nexamples:\n"
        "  python -m blat.pipeline.corpus --size ci --out runs/corpus/ci\n"
        "  python -m blat.pipeline.corpus --from-folder my_wavs --csv my_wavs/tags.csv --out runs/corpus/mine\n"
        "\nNeeds apt-get and dpkg-deb (Debian/Ubuntu; run `apt-get update` once) unless --from-folder is used.",
    )
    p.add_argument("--size", choices=sorted(sources.SIZES), default="ci", help="which package set (default: ci)")
    p.add_argument("--packages", help="comma-separated package names instead of --size")
    p.add_argument("--out", type=Path, help="output folder (default: runs/corpus/<size or folder name>)")
    p.add_argument("--cache", type=Path, help=f"download cache (default: $BLAT_CACHE or {DEFAULT_CACHE})")
    p.add_argument("--from-folder", type=Path, metavar="DIR", help="build from your own audio folder instead")
    p.add_argument("--csv", type=Path, help="with --from-folder: CSV with path,tags,caption[,licence,source]")
    p.add_argument("--rules", type=Path, help="tag table to use instead of the committed data/tag_rules.csv")
    p.add_argument(
        "--min-seconds",
        type=float,
        default=MIN_SECONDS,
        help=f"skip shorter clips (default {MIN_SECONDS}: the captioner's minimum; an index may keep shorter)",
    )
    p.add_argument(
        "--index-seed",
        type=Path,
        metavar="PATH",
        help="also write the gateway's seed manifest (id, audio, tags, caption per clip) to PATH",
    )
    p.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="parallel decode processes (default: all cores)"
    )
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    from blat_contract.logs import setup_logging

    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.from_folder:
            if not args.csv:
                raise SystemExit("--from-folder needs --csv (columns: path,tags,caption)")
            report = build_from_folder(
                args.from_folder, args.csv, args.out or Path("runs/corpus") / args.from_folder.name, jobs=args.jobs
            )
        else:
            packages = args.packages.split(",") if args.packages else list(sources.SIZES[args.size])
            table = load_tag_table(args.rules) if args.rules else None
            report = build_corpus(
                packages, args.out or Path("runs/corpus") / args.size, args.cache, args.jobs, table, args.min_seconds
            )
    except (SourceError, TagTableError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'package':26s} {'files':>6s} {'tagged':>6s} {'excluded':>8s} {'no rule':>7s} {'clips':>6s} {'hours':>6s}")
    for name, s in report["packages"].items():
        print(
            f"{name:26s} {s['files']:6d} {s['tagged']:6d} {s['excluded']:8d} {s['unmatched']:7d} {s['clips']:6d} "
            f"{s['seconds'] / 3600:6.2f}"
        )
    print(f"{report['clips']} clips in {report['manifest']} ({report['seconds']} s)")
    if args.index_seed:
        print(f"seed manifest: {write_index_seed(Path(report['manifest']), args.index_seed, splits=None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
