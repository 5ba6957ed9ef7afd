"""Where corpus audio comes from: Debian packages fetched with `apt-get download`, unpacked with `dpkg-deb -x`
(never installed), and the containers inside them (zip/pk3 archives, OpenTTD's `opensfx.cat` sound catalogue), plus
General-MIDI SoundFonts whose instruments are rendered note by note (`blat.pipeline.instruments`).

Each sound is a `Member`: a picklable pointer (file on disk, optional zip entry or byte span) that a worker
process can read without sharing open handles.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import shutil
import struct
import subprocess
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

APT_GET = "apt-get"  # command names, module-level so tests (and odd systems) can point them elsewhere
DPKG_DEB = "dpkg-deb"
AUDIO_EXTENSIONS = (".wav", ".ogg", ".oga", ".flac", ".mp3", ".opus")
ZIP_EXTENSIONS = (".zip", ".pk3", ".wz")  # .wz: Warzone 2100 data archives are zips
CATALOGUE_EXTENSIONS = (".cat",)  # OpenTTD base sound sets


@dataclass(frozen=True)
class PackageSpec:
    name: str  # Debian package name
    root: str  # folder inside the package holding its sounds; tag-rule patterns and clip ids are relative to it
    note: str = ""  # what is in it, for --help
    licence: str = "see copyright"  # for files its copyright file does not name (or is not machine-readable)
    plan: str = ""  # SoundFont packages: which notes to render (a key of instruments.PLANS); "" = audio files


PACKAGES = {
    p.name: p
    for p in [
        PackageSpec(
            "openttd-opensfx",
            "usr/share/games/openttd/baseset/opensfx",
            "73 transport/industry recordings in opensfx.cat, each with a caption, author and licence",
        ),
        PackageSpec(
            "minetest-data",
            "usr/share/games/minetest/games",
            "footsteps per surface, digging, doors, glass, fire, water",
        ),
        PackageSpec(
            "ufoai-sound", "usr/share/games/ufoai/base", "0snd.pk3: weapons, ambience, footsteps, impacts, doors"
        ),
        PackageSpec("bucklespring-data", "usr/share/buckle/wav", "IBM Model M key presses and releases"),
        PackageSpec("sound-theme-freedesktop", "usr/share/sounds/freedesktop/stereo", "desktop event sounds"),
        PackageSpec(
            "0ad-data", "usr/share/games/0ad/mods/public", "1.4 GB .deb; public.zip: animals, actors, weather, tools"
        ),
        PackageSpec(
            "wesnoth-1.16-data", "usr/share/games/wesnoth/1.16", "146 MB .deb: weapons, creatures, ambience", "GPL-2+"
        ),
        PackageSpec(
            "scorched3d-data", "usr/share/games/scorched3d/data/globalmods", "animals, vehicles, weather, weapons"
        ),
        PackageSpec(
            "lincity-ng-data", "usr/share/games/lincity-ng/sounds", "city ambiences: traffic, industry, farms, water"
        ),
        PackageSpec(
            "flare-game", "usr/share/games/flare/mods", "123 MB .deb: footsteps, inventory foley, ambience loops"
        ),
        PackageSpec(
            "widelands-data", "usr/share/games/widelands/data", "381 MB .deb: crafts, animals, farm, woodcutting"
        ),
        PackageSpec(
            "megaglest-data", "usr/share/games/megaglest", "242 MB .deb: animals, weather, siege and work sounds"
        ),
        PackageSpec(
            "tuxpaint-stamps-default", "usr/share/tuxpaint/stamps", "161 MB .deb: ~75 animal and household sounds"
        ),
        PackageSpec(
            "redeclipse-data",
            "usr/share/games/redeclipse/data/sounds",
            "862 MB .deb: weather and water ambiences, machinery, footsteps, guns, explosions",
            "CC-BY-SA-3.0",
        ),
        PackageSpec(
            "openarena-data",
            "usr/share/games/openarena",
            "44 MB .deb; pak0.pk3: footsteps, guns, explosions, fire, wind, machinery",
            "GPL-2+",
        ),
        # Not in `demo`: 1.3 GB to download for ~60 usable clips; select it by name when bandwidth is cheap.
        PackageSpec(
            "flightgear-data-base",
            "usr/share/games/flightgear",
            "1.3 GB .deb: aircraft engines, rotors, tyres, doors, switches, rain, thunder, wind",
            "GPL-2+",
        ),
        PackageSpec(
            "supertuxkart-data",
            "usr/share/games/supertuxkart/data",
            "628 MB .deb: engines, crashes, water, weather, animals",
            "GPL-3+",
        ),
        PackageSpec(
            "hedgewars-data",
            "usr/share/games/hedgewars/Data/Sounds",
            "145 MB .deb: guns, explosions, tools, water",
            "GFDL-1.3",
        ),
        PackageSpec(
            "supertux-data", "usr/share/games/supertux2/sounds", "162 MB .deb: cartoon foley, weather, fire", "GPL-3+"
        ),
        PackageSpec(
            "cube2-data",
            "usr/share/games/cube2/packages/sounds",
            "173 MB .deb: guns, explosions, footsteps",
            "CC-BY-3.0",
        ),
        PackageSpec(
            "warzone2100-data",
            "usr/share/games/warzone2100",
            "143 MB .deb; base.wz: guns, cannons, explosions, steam, fire (most of its audio is voice)",
            "GPL-2+",
        ),
        PackageSpec(
            "nexuiz-data",
            "usr/share/games/nexuiz/data",
            "267 MB .deb; data.pk3: footsteps, machinery, wind, steam, guns, explosions (half its audio is voice)",
            "GPL-2+",
        ),
        PackageSpec(
            "berusky2-data",
            "usr/share/games/berusky2/sound",
            "560 MB .deb: thunder, rain, birds, frogs, water, footsteps, town and forest ambiences",
            "GPL-2+",
        ),
        PackageSpec(
            "btanks-data",
            "usr/share/games/btanks/data/sounds",
            "26 MB .deb: explosions, tank cannons, engines, fire, helicopter, train, outdoor ambiences",
        ),
        PackageSpec(
            "torcs-data",
            "usr/share/games/torcs/data/sound",
            "333 MB .deb: one engine recording per car model, crashes, skids",
            "GPL-2+",
        ),
        PackageSpec(
            "scratch",
            "usr/share/scratch",
            "26 MB .deb; Media/Sounds: animals, doors, vehicles, water, human sounds, music loops, instruments",
            "CC-BY-SA-3.0",
        ),
        PackageSpec("alsa-utils", "usr/share/sounds/alsa", "1 MB .deb: a woman speaking the names of speaker channels"),
        PackageSpec(
            "fluid-soundfont-gm",
            "usr/share/sounds/sf2",
            "120 MB .deb: FluidR3 General-MIDI SoundFont, ~580 notes of 87 instruments and 34 drums rendered",
            "MIT",
            plan="full",
        ),
        PackageSpec(
            "timgm6mb-soundfont",
            "usr/share/sounds/sf2",
            "5 MB .deb: TimGM6mb General-MIDI SoundFont, one note of each of 56 instrument classes rendered",
            "GPL-2",
            plan="small",
        ),
    ]
}
_CI = ("openttd-opensfx", "minetest-data", "ufoai-sound", "bucklespring-data", "sound-theme-freedesktop")
SIZES = {
    "ci": _CI,
    # The gateway's default index: ~1,000 real recordings of 100+ AudioSet classes for 450 MB of downloads.
    # Plus speech (megaglest unit voices, alsa-utils), music (megaglest and scorched3d soundtracks, scratch loops) and
    # one rendered note per instrument class (timgm6mb-soundfont, 5 MB).
    "seed": _CI
    + (
        "scorched3d-data",
        "btanks-data",
        "scratch",
        "openarena-data",
        "lincity-ng-data",
        "megaglest-data",
        "alsa-utils",
        "timgm6mb-soundfont",
    ),
    "demo": _CI
    + (
        "0ad-data",
        "wesnoth-1.16-data",
        "scorched3d-data",
        "lincity-ng-data",
        "flare-game",
        "widelands-data",
        "megaglest-data",
        "tuxpaint-stamps-default",
        "redeclipse-data",
        "openarena-data",
        "supertuxkart-data",
        "hedgewars-data",
        "supertux-data",
        "cube2-data",
        "warzone2100-data",
        "nexuiz-data",
        "berusky2-data",
        "btanks-data",
        "torcs-data",
        "scratch",
        "alsa-utils",
        "fluid-soundfont-gm",
    ),
}


class SourceError(RuntimeError):
    """A package could not be downloaded or unpacked; the message says what to do instead."""


@dataclass(frozen=True)
class Member:
    """One sound inside a package, possibly inside a container file."""

    package: str
    path: str  # relative to the package root, through containers ("0snd.pk3/sound/x.ogg"); rules and ids use it
    file: str  # absolute path of the file on disk that holds the bytes
    origin: str  # the path as shipped in the .deb, plus "!entry" inside a container
    inner: str | None = None  # zip entry name
    span: tuple[int, int] | None = None  # (offset, size) of RIFF bytes inside a catalogue
    caption: str | None = None  # a human description shipped with the sound
    credit: str | None = None  # author/licence line shipped with the sound
    group: str | None = None  # recording identity when the path does not give it (catalogue entries)
    note: tuple[int, int, int, int] | None = None  # SoundFont notes: (bank, program, key, velocity) to render from file
    tags: tuple[str, ...] = ()  # AudioSet tags the source itself gives (SoundFont notes); the tag table may override
    window: tuple[float, float] | None = None  # an excerpt: (start, length) in seconds of the decoded recording


# --- apt-get download + dpkg-deb -x ----------------------------------------------------------------------------


def _no_tool(tool: str, package: str) -> SourceError:
    return SourceError(
        f"cannot fetch Debian package {package!r}: `{tool}` was not found on PATH. The corpus builder downloads sound "
        f"packages with apt-get and unpacks them with dpkg-deb, so it needs a Debian/Ubuntu system (run `apt-get "
        f"update` once first). Alternatives: put {package}_*.deb into <cache>/debs/ yourself, or build from your own "
        f"audio with `python -m blat.pipeline.corpus --from-folder DIR --csv TAGS.csv`."
    )


def download_deb(package: str, debs_dir: Path) -> Path:
    """`apt-get download PACKAGE` into debs_dir, unless a .deb of it is already there. Returns the .deb path."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    cached = sorted(debs_dir.glob(f"{package}_*.deb"))
    if cached:
        return cached[-1]
    if shutil.which(APT_GET) is None:
        raise _no_tool(APT_GET, package)
    log.info("downloading package", extra={"package": package, "dir": str(debs_dir)})
    proc = subprocess.run([APT_GET, "download", package], cwd=debs_dir, capture_output=True, text=True)
    cached = sorted(debs_dir.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not cached:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise SourceError(
            f"`apt-get download {package}` failed (exit {proc.returncode}):\n{tail}\nIf the package is unknown or the "
            f"lists are stale, run `apt-get update` first (as root). Or build from your own audio with --from-folder."
        )
    return cached[-1]


def unpack_deb(deb: Path, dest: Path) -> Path:
    """`dpkg-deb -x` into dest (atomically: a half-unpacked tree is never mistaken for a finished one)."""
    if dest.is_dir():
        return dest
    if shutil.which(DPKG_DEB) is None:
        raise _no_tool(DPKG_DEB, deb.name.split("_")[0])
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("unpacking package", extra={"deb": deb.name, "dest": str(dest)})
    proc = subprocess.run([DPKG_DEB, "-x", str(deb), str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SourceError(f"`dpkg-deb -x {deb}` failed: {proc.stderr.strip()[-500:]} (delete the .deb to re-download)")
    os.replace(tmp, dest)
    return dest


def fetch_package(package: str, cache: Path) -> Path:
    """Download (cached in <cache>/debs) and unpack (cached in <cache>/unpacked/<package>); returns the tree."""
    deb = download_deb(package, cache / "debs")
    return unpack_deb(deb, cache / "unpacked" / package)


def copyright_file(package: str, tree: Path) -> Path | None:
    path = tree / "usr" / "share" / "doc" / package / "copyright"
    return path if path.is_file() else None


# --- containers -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatEntry:
    index: int
    description: str  # '"Title". Original "x.wav" by "y". Edited by "z". License: ...'
    offset: int  # of the RIFF bytes in the file
    size: int  # of the RIFF bytes


def parse_opensfx_cat(data: bytes) -> list[CatEntry]:
    """OpenTTD sound catalogue: a table of (offset, size) little-endian u32 pairs, then entries of u8 length +
    description (NUL-terminated) + RIFF WAV bytes. Bit 31 of an offset marks the newer format; `size` counts the
    RIFF bytes only; the table's length is the first offset."""
    if len(data) < 8:
        raise ValueError("not a sound catalogue: shorter than one table entry")
    table_bytes = struct.unpack_from("<I", data, 0)[0] & 0x7FFF_FFFF
    if table_bytes % 8 or not 8 <= table_bytes <= len(data):
        raise ValueError(f"not a sound catalogue: table length {table_bytes} for a {len(data)}-byte file")
    entries = []
    for i in range(table_bytes // 8):
        offset, size = struct.unpack_from("<II", data, 8 * i)
        offset &= 0x7FFF_FFFF
        if offset >= len(data):
            raise ValueError(f"catalogue entry {i}: offset {offset} past the end ({len(data)} bytes)")
        n = data[offset]
        description = data[offset + 1 : offset + 1 + n].split(b"\0", 1)[0].decode("utf-8", "replace").strip()
        start = offset + 1 + n
        if data[start : start + 4] != b"RIFF" or start + size > len(data):
            raise ValueError(f"catalogue entry {i}: no RIFF data of {size} bytes at {start}")
        entries.append(CatEntry(i, description, start, size))
    return entries


_QUOTED_TITLE = re.compile(r'^"(?P<title>[^"]+)"\.?\s*(?P<rest>.*)$')
_ORIGINAL = re.compile(r'Orig[a-z]*al "(?P<name>[^"]+)"')


def split_opensfx_description(description: str) -> tuple[str, str]:
    """'"Ship horn". Original "x.aif" by Leon Milo. License: CC BY 3.0.' -> ("Ship horn", credit line)."""
    m = _QUOTED_TITLE.match(description)
    if not m:
        return description, description
    return m["title"].strip(), m["rest"].strip()


def _cat_members(package: str, file: Path, rel: str, origin: str) -> list[Member]:
    entries = parse_opensfx_cat(file.read_bytes())
    members = []
    for e in entries:
        title, credit = split_opensfx_description(e.description)
        caption = re.sub(r"\s*\(\d+\)$", "", title)  # "Toyland: Sugar mine (2)" -> "Toyland: Sugar mine"
        original = _ORIGINAL.search(credit)  # entries edited from one source file share a recording
        group = f"{rel}:original:{original['name']}" if original else f"{rel}:{e.index:02d}"
        name = f"{e.index:02d} {title}".replace("/", "-")  # "Train/ship breakdown" must not become a folder
        members.append(
            Member(
                package,
                f"{rel}/{name}",
                str(file),
                f"{origin}!{e.index}",
                span=(e.offset, e.size),
                caption=caption,
                credit=credit,
                group=group,
            )
        )
    return members


@lru_cache(maxsize=4)
def _open_zip(path: str, pid: int) -> zipfile.ZipFile:
    """Kept open per process (re-reading a 1.7 GB archive's directory per clip is slow); keyed by pid so a
    forked worker never shares a file offset with its parent."""
    return zipfile.ZipFile(path)


def _zip_members(package: str, file: Path, rel: str, origin: str) -> list[Member]:
    with zipfile.ZipFile(file) as z:
        names = [i.filename for i in z.infolist() if not i.is_dir() and i.filename.lower().endswith(AUDIO_EXTENSIONS)]
    return [Member(package, f"{rel}/{n}", str(file), f"{origin}!{n}", inner=n) for n in sorted(names)]


def _soundfont_members(spec: PackageSpec, root: Path, tree: Path) -> list[Member]:
    """One member per note of the package's plan, for each .sf2 under the root:
    "<file>.sf2/program/040 Violin/G4 v112"."""
    from blat.pipeline import instruments

    members = []
    for file in sorted(root.rglob("*.sf2")):
        if file.is_symlink():
            continue
        rel, origin = file.relative_to(root).as_posix(), file.relative_to(tree).as_posix()
        for n in instruments.plan_notes(spec.plan):
            where = f"{rel}/{n.path}"
            members.append(
                Member(
                    spec.name,
                    where,
                    str(file),
                    f"{origin}!{n.path}",
                    caption=None,
                    group=f"{rel}/{n.path.rsplit('/', 1)[0]}",
                    note=(n.entry.bank, n.program, n.key, n.velocity),
                    tags=n.entry.tags,
                )
            )
    return members


def list_members(spec: PackageSpec, tree: Path) -> list[Member]:
    """Every sound under the package root: plain audio files, audio inside zips, and catalogue entries (or, for a
    SoundFont package, the notes of its plan)."""
    root = tree / spec.root
    if not root.is_dir():
        raise SourceError(f"{spec.name}: expected sounds under {spec.root}, which the unpacked package lacks")
    if spec.plan:
        return _soundfont_members(spec, root, tree)
    members = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            file = Path(dirpath) / name
            if file.is_symlink():  # another name for a file that is listed itself (or lives in another package)
                continue
            rel, origin, low = file.relative_to(root).as_posix(), file.relative_to(tree).as_posix(), name.lower()
            if low.endswith(AUDIO_EXTENSIONS):
                members.append(Member(spec.name, rel, str(file), origin))
            elif low.endswith(ZIP_EXTENSIONS):
                members += _zip_members(spec.name, file, rel, origin)
            elif low.endswith(CATALOGUE_EXTENSIONS):
                members += _cat_members(spec.name, file, rel, origin)
    return members


def member_digest(m: Member) -> bytes:
    """Identity of a member's audio for de-duplication: its bytes (plus the excerpt window), or for a rendered note
    the SoundFont file and the note (hashing a 148 MB SoundFont per note would be slow and say nothing)."""
    if m.note is not None:
        st = os.stat(m.file)
        return hashlib.sha1(f"{os.path.basename(m.file)}:{st.st_size}:{m.note}".encode()).digest()
    h = hashlib.sha1(read_member(m))
    if m.window is not None:
        h.update(repr(m.window).encode())
    return h.digest()


def read_member(m: Member) -> bytes:
    """The encoded bytes of one sound (a WAV/Ogg/FLAC/MP3 file image)."""
    if m.inner is not None:
        return _open_zip(m.file, os.getpid()).read(m.inner)
    with open(m.file, "rb") as f:
        if m.span is None:
            return f.read()
        f.seek(m.span[0])
        return f.read(m.span[1])


# --- licences ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _dep5_stanzas(text: str) -> tuple[tuple[tuple[re.Pattern, ...], str], ...]:
    """(Files patterns as regexes, License short name) per stanza of a machine-readable (DEP-5) copyright file.
    A pattern matches a path's tail at a folder boundary: source-tree paths differ from installed ones."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields and fields.get("license"):
            patterns = tuple(re.compile(r"(^|/)" + fnmatch.translate(p)) for p in fields["files"].split())
            stanzas.append((patterns, fields["license"].splitlines()[0].strip()))
    return tuple(stanzas)


def licence_for(copyright_text: str, origin: str, default: str = "see copyright") -> str:
    """Best-effort short licence name for a shipped path: the last DEP-5 `Files:` stanza whose pattern matches
    the path's tail, tried with and without container file names ("0snd.pk3/")."""
    path = origin.replace("!", "/")
    paths = {path, re.sub(r"[^/]+\.(zip|pk3|cat)/", "", path)}
    found = None
    for patterns, licence in _dep5_stanzas(copyright_text):
        if any(rx.search(p) for rx in patterns for p in paths):
            found = licence
    return found or default
