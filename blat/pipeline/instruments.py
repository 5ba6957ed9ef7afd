"""Real sampled instruments for the corpus: single notes rendered from a Debian General-MIDI SoundFont (SF2).

Choice: a small pure-Python (numpy/scipy) SF2 player instead of Debian's `fluidsynth` binary. Reading SF2 is a
documented RIFF format (SoundFont 2.04): `pdta` holds presets -> preset zones -> instruments -> instrument zones ->
samples with their generators, `sdta/smpl` holds the recorded 16-bit samples. Playing one note needs only what this
module does: pick the zones whose key and velocity ranges hold the note (stereo pairs sum to mono), resample the
recorded sample to the note's pitch (root key, scale tuning, coarse/fine tune, sample pitch correction), loop it per
its sample mode, shape it with the volume envelope (delay, attack, hold, decay to sustain, release after note-off,
key scaling of hold/decay) and its initial attenuation, and low-pass it at its initial filter cutoff. Modulators,
LFOs, the modulation envelope, chorus and reverb are ignored. No shared libraries, no MIDI, nothing installed: the
`.deb` is fetched and unpacked like every other corpus package (`fluid-soundfont-gm` for `demo`, the 6 MB
`timgm6mb-soundfont` for `seed`).

Which notes: every General-MIDI program that an AudioSet class describes (`data/gm_instruments.csv`: program or drum
key, GM name, AudioSet tags, pitches) and the drum keys of the standard kit (bank 128, preset 0). A `NotePlan` picks
pitches and velocities per program; notes are held for `HOLD_SECONDS` and keep their release tail (the clip ends when
the tail falls 60 dB below the peak, or at `MAX_TAIL_SECONDS`).
"""

from __future__ import annotations

import csv
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

GM_TABLE_PATH = Path(__file__).with_name("data") / "gm_instruments.csv"
HOLD_SECONDS = 1.2  # note-on to note-off
MAX_TAIL_SECONDS = 1.8  # release tail kept after note-off, at most
DRUM_BANK = 128
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

# generator operators (SoundFont 2.04, section 8.1.2)
G_START, G_END, G_STARTLOOP, G_ENDLOOP, G_START_COARSE = 0, 1, 2, 3, 4
G_END_COARSE, G_FILTER_FC, G_STARTLOOP_COARSE, G_ENDLOOP_COARSE = 12, 8, 45, 50
G_DELAY, G_ATTACK, G_HOLD, G_DECAY, G_SUSTAIN, G_RELEASE, G_KEY_HOLD, G_KEY_DECAY = 33, 34, 35, 36, 37, 38, 39, 40
G_INSTRUMENT, G_KEYRANGE, G_VELRANGE, G_KEYNUM, G_VELOCITY, G_ATTENUATION = 41, 43, 44, 46, 47, 48
G_COARSE, G_FINE, G_SAMPLE, G_MODES, G_SCALE, G_ROOT = 51, 52, 53, 54, 56, 58
_RANGES = (G_KEYRANGE, G_VELRANGE)
_DEFAULTS = {
    G_DELAY: -12000,
    G_ATTACK: -12000,
    G_HOLD: -12000,
    G_DECAY: -12000,
    G_RELEASE: -12000,
    G_SUSTAIN: 0,
    G_FILTER_FC: 13500,
    G_SCALE: 100,
    G_ROOT: -1,
    G_KEYNUM: -1,
    G_VELOCITY: -1,
}


class SoundFontError(ValueError):
    """Not a readable SF2 file (or a preset it lacks)."""


@dataclass(frozen=True)
class Sample:
    name: str
    start: int
    end: int
    loop_start: int
    loop_end: int
    rate: int
    root: int
    correction: int  # cents


Zone = dict  # generator operator -> amount (ranges as (lo, hi))


@dataclass
class SoundFont:
    path: str
    data: np.ndarray  # int16 sample pool (memory-mapped)
    samples: list[Sample]
    instruments: list[tuple[str, list[Zone]]]  # name, zones (the global zone already merged in)
    presets: dict[tuple[int, int], tuple[str, list[Zone]]]  # (bank, program) -> name, zones (global merged in)


def _chunks(buf: bytes, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        cid, size = buf[pos : pos + 4], struct.unpack_from("<I", buf, pos + 4)[0]
        yield cid, pos + 8, size
        pos += 8 + size + (size & 1)


def _zones(
    bags: list[tuple[int, int]], gens: list[tuple[int, int]], first: int, last: int, terminal: int
) -> list[Zone]:
    """Zones of one preset/instrument: bags first..last-1; a first zone without the terminal generator is global."""
    zones = []
    for b in range(first, last):
        zone: Zone = {}
        for op, amount in gens[bags[b][0] : bags[b + 1][0]]:
            if op in _RANGES:
                zone[op] = (amount & 0xFF, amount >> 8)
            else:
                zone[op] = amount - 65536 if amount >= 32768 else amount  # signed
        zones.append(zone)
    if zones and terminal not in zones[0]:
        glob, zones = zones[0], zones[1:]
        zones = [{**glob, **z} for z in zones]
    return [z for z in zones if terminal in z]


@lru_cache(maxsize=2)
def load_soundfont(path: str) -> SoundFont:
    """Parse an SF2 file's preset/instrument/sample tables; the sample pool stays memory-mapped."""
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
            raise SoundFontError(f"{path}: not a SoundFont 2 file")
        f.seek(0, 2)
        size = f.tell()
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    smpl = None
    pdta: dict[bytes, bytes] = {}
    for cid, off, n in _chunks(raw, 12, size):  # memmap slices -> bytes only where needed
        if cid.tobytes() != b"LIST":
            continue
        kind = raw[off : off + 4].tobytes()
        for sub, soff, sn in _chunks(raw, off + 4, off + n):
            sub = sub.tobytes()
            if kind == b"sdta" and sub == b"smpl":
                smpl = (soff, sn)
            elif kind == b"pdta":
                pdta[sub] = raw[soff : soff + sn].tobytes()
    if smpl is None or not {b"phdr", b"pbag", b"pgen", b"inst", b"ibag", b"igen", b"shdr"} <= set(pdta):
        raise SoundFontError(f"{path}: missing sample data or preset tables")
    data = np.memmap(path, dtype="<i2", mode="r", offset=smpl[0], shape=(smpl[1] // 2,))

    def records(key: bytes, fmt: str) -> list[tuple]:
        n = struct.calcsize(fmt)
        return [struct.unpack_from(fmt, pdta[key], i) for i in range(0, len(pdta[key]) - n + 1, n)]

    def name(b: bytes) -> str:
        return b.split(b"\0", 1)[0].decode("latin-1").strip()

    samples = [Sample(name(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in records(b"shdr", "<20sIIIIIBbHH")]
    ibag, igen = records(b"ibag", "<HH"), records(b"igen", "<HH")
    inst = records(b"inst", "<20sH")
    instruments = [
        (name(inst[i][0]), _zones(ibag, igen, inst[i][1], inst[i + 1][1], G_SAMPLE)) for i in range(len(inst) - 1)
    ]
    pbag, pgen = records(b"pbag", "<HH"), records(b"pgen", "<HH")
    phdr = records(b"phdr", "<20sHHHIII")
    presets = {}
    for i in range(len(phdr) - 1):
        presets.setdefault(
            (phdr[i][2], phdr[i][1]), (name(phdr[i][0]), _zones(pbag, pgen, phdr[i][3], phdr[i + 1][3], G_INSTRUMENT))
        )
    return SoundFont(path, data, samples, instruments, presets)


def _in(zone: Zone, op: int, value: int) -> bool:
    lo, hi = zone.get(op, (0, 127))
    return lo <= value <= hi


def _seconds(timecents: int) -> float:
    return 0.0 if timecents <= -12000 else 2.0 ** (timecents / 1200.0)


def _envelope(g: Zone, key: int, n_on: int, n_total: int, sr: int) -> np.ndarray:
    """Volume envelope (amplitude) over n_total samples with note-off at n_on: DAHDSR, decay/release linear in dB."""
    delay, attack = _seconds(g[G_DELAY]), _seconds(g[G_ATTACK])
    hold = _seconds(g[G_HOLD] + g.get(G_KEY_HOLD, 0) * (60 - key))
    decay = _seconds(g[G_DECAY] + g.get(G_KEY_DECAY, 0) * (60 - key))
    sustain_db = -min(max(g[G_SUSTAIN], 0), 1440) / 10.0  # centibels of attenuation
    release = max(_seconds(g[G_RELEASE]), 0.01)
    t = np.arange(n_total) / sr
    db = np.zeros(n_total)
    a0, a1 = delay, delay + attack
    d0 = a1 + hold
    amp = np.ones(n_total)
    amp[t < a0] = 0.0
    ramp = (t >= a0) & (t < a1)
    amp[ramp] = (t[ramp] - a0) / max(attack, 1e-9)
    dec = t >= d0
    db[dec] = np.maximum(-100.0 * (t[dec] - d0) / max(decay, 1e-3), sustain_db) if decay > 0 else sustain_db
    level = amp * 10 ** (db / 20)
    if n_on < n_total:  # release: from the level at note-off down 100 dB over `release` seconds
        off = level[n_on - 1] if n_on > 0 else 0.0
        tr = (np.arange(n_total - n_on) + 1) / sr
        level[n_on:] = off * 10 ** (-100.0 * tr / release / 20)
    return level


def _voice(sf: SoundFont, g: Zone, key: int, velocity: int, n_on: int, n_total: int, sr: int) -> np.ndarray:
    s = sf.samples[g[G_SAMPLE]]
    start = s.start + g.get(G_START, 0) + 32768 * g.get(G_START_COARSE, 0)
    end = s.end + g.get(G_END, 0) + 32768 * g.get(G_END_COARSE, 0)
    loop_start = s.loop_start + g.get(G_STARTLOOP, 0) + 32768 * g.get(G_STARTLOOP_COARSE, 0)
    loop_end = s.loop_end + g.get(G_ENDLOOP, 0) + 32768 * g.get(G_ENDLOOP_COARSE, 0)
    if not 0 <= start < end <= len(sf.data):
        return np.zeros(n_total)
    root = g[G_ROOT] if g[G_ROOT] >= 0 else s.root
    k = g[G_KEYNUM] if g[G_KEYNUM] >= 0 else key
    cents = (k - root) * g[G_SCALE] + 100 * g.get(G_COARSE, 0) + g.get(G_FINE, 0) + s.correction
    step = 2.0 ** (cents / 1200.0) * s.rate / sr  # source samples per output sample
    wave = np.asarray(sf.data[start:end], dtype=np.float64) / 32768.0
    pos = step * np.arange(n_total)
    looped = g.get(G_MODES, 0) & 1 and start <= loop_start < loop_end <= end and loop_end - loop_start > 8
    if looped:
        l0, l1 = loop_start - start, loop_end - start
        over = pos >= l1
        pos[over] = l0 + np.mod(pos[over] - l0, l1 - l0)
    else:
        pos = pos[pos < len(wave) - 1]
    out = np.zeros(n_total)
    out[: len(pos)] = np.interp(pos, np.arange(len(wave)), wave)
    fc = g[G_FILTER_FC]
    if fc < 13500:  # initial low-pass cutoff in absolute cents; a 2-pole (biquad, Q 0.707) low-pass
        hz = min(8.176 * 2.0 ** (fc / 1200.0), 0.45 * sr)
        w = 2 * np.pi * hz / sr
        alpha = np.sin(w) / (2 * 0.7071)
        b = np.array([(1 - np.cos(w)) / 2, 1 - np.cos(w), (1 - np.cos(w)) / 2])
        a = np.array([1 + alpha, -2 * np.cos(w), 1 - alpha])
        out = lfilter(b / a[0], a / a[0], out)
    vel = g[G_VELOCITY] if g[G_VELOCITY] >= 0 else velocity
    gain = 10 ** (-max(g.get(G_ATTENUATION, 0), 0) * 0.4 / 200.0) * (vel / 127.0) ** 2  # EMU-style 0.4 cB scale
    return out * _envelope(g, key, n_on, n_total, sr) * gain


def render_note(
    path: str,
    bank: int,
    program: int,
    key: int,
    velocity: int,
    sr: int,
    hold: float = HOLD_SECONDS,
    max_tail: float = MAX_TAIL_SECONDS,
) -> np.ndarray:
    """One note of a preset -> float32 mono at `sr`, peak-normalised to 0.9 * (velocity / 127) ** 0.5, with its
    release tail cut where it falls 60 dB below the peak. Raises SoundFontError if the preset is missing or silent."""
    sf = load_soundfont(path)
    if (bank, program) not in sf.presets:
        raise SoundFontError(f"{path}: no preset bank {bank} program {program}")
    n_on, n_total = int(hold * sr), int((hold + max_tail) * sr)
    out = np.zeros(n_total)
    for pz in sf.presets[(bank, program)][1]:
        if not (_in(pz, G_KEYRANGE, key) and _in(pz, G_VELRANGE, velocity)):
            continue
        for iz in sf.instruments[pz[G_INSTRUMENT]][1]:
            if not (_in(iz, G_KEYRANGE, key) and _in(iz, G_VELRANGE, velocity)):
                continue
            g = {**_DEFAULTS, **iz}
            for op, amount in pz.items():  # preset generators add to the instrument's (ranges/indices excepted)
                if op not in (
                    G_INSTRUMENT,
                    G_KEYRANGE,
                    G_VELRANGE,
                    G_SAMPLE,
                    G_MODES,
                    G_ROOT,
                    G_KEYNUM,
                    G_VELOCITY,
                    G_START,
                    G_END,
                    G_STARTLOOP,
                    G_ENDLOOP,
                    G_START_COARSE,
                    G_END_COARSE,
                    G_STARTLOOP_COARSE,
                    G_ENDLOOP_COARSE,
                ):
                    g[op] = g.get(op, _DEFAULTS.get(op, 0)) + amount
            out += _voice(sf, g, key, velocity, n_on, n_total, sr)
    peak = float(np.abs(out).max()) if len(out) else 0.0
    if peak < 1e-6:
        raise SoundFontError(f"bank {bank} program {program} key {key} velocity {velocity}: silent")
    loud = np.nonzero(np.abs(out) >= peak * 1e-3)[0]  # -60 dB
    out = out[: max(loud[-1] + 1, int(0.25 * sr))]
    fade = min(len(out), int(0.01 * sr))
    out[-fade:] *= np.linspace(1, 0, fade)
    return (out / peak * 0.9 * (velocity / 127) ** 0.5).astype(np.float32)


# --- what to render ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GMEntry:
    bank: int  # 0 = melodic, 128 = drum kit
    number: int  # program (melodic) or drum key
    name: str  # General MIDI name
    tags: tuple[str, ...]  # AudioSet display names
    pitches: tuple[int, ...]  # MIDI keys to play (melodic); the drum key itself for drums


@lru_cache(maxsize=1)
def gm_table() -> tuple[GMEntry, ...]:
    """data/gm_instruments.csv: kind (program|drum), number, name, tags (;-separated), pitches (space-separated)."""
    from blat.pipeline.tags import parse_tags

    entries = []
    with open(GM_TABLE_PATH, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(ln for ln in f if not ln.startswith("#"))]
    for i, r in enumerate(rows, start=2):
        drum = r["kind"] == "drum"
        number = int(r["number"])
        pitches = (number,) if drum else tuple(int(p) for p in r["pitches"].split())
        entries.append(
            GMEntry(
                DRUM_BANK if drum else 0,
                number,
                r["name"].strip(),
                parse_tags(r["tags"], f"{GM_TABLE_PATH}:{i}"),
                pitches,
            )
        )
    return tuple(entries)


@dataclass(frozen=True)
class NotePlan:
    velocities: tuple[int, ...]  # each melodic pitch at each of these
    pitches: str  # "all": every pitch in the table; "middle": only the middle one
    drum_velocities: tuple[int, ...]
    one_per_tag: bool = False  # only the first program of each distinct tag set (a smaller, balanced set)


PLANS = {"full": NotePlan((70, 112), "all", (64, 112)), "small": NotePlan((100,), "middle", (100,), one_per_tag=True)}


def note_name(key: int) -> str:
    return f"{NOTE_NAMES[key % 12]}{key // 12 - 1}"


@dataclass(frozen=True)
class Note:
    entry: GMEntry
    key: int
    velocity: int

    @property
    def program(self) -> int:  # the preset number within its bank: the kit (0) for drums
        return 0 if self.entry.bank == DRUM_BANK else self.entry.number

    def render(self, soundfont: str, sr: int) -> np.ndarray:
        return render_note(soundfont, self.entry.bank, self.program, self.key, self.velocity, sr)

    @property
    def path(self) -> str:
        """A stable path-like name: "program/000 Acoustic Grand Piano/C4 v112", "drums/038 Acoustic Snare/v64"."""
        e = self.entry
        if e.bank == DRUM_BANK:
            return f"drums/{e.number:03d} {e.name}/v{self.velocity:03d}"
        return f"program/{e.number:03d} {e.name}/{note_name(self.key).replace('#', 's')} v{self.velocity:03d}"


def plan_notes(plan: str) -> list[Note]:
    p = PLANS[plan]
    notes, seen_tags = [], set()
    for e in gm_table():
        if p.one_per_tag:
            if e.tags in seen_tags:
                continue
            seen_tags.add(e.tags)
        if e.bank == DRUM_BANK:
            notes += [Note(e, e.number, v) for v in p.drum_velocities]
        else:
            keys = e.pitches if p.pitches == "all" else (e.pitches[len(e.pitches) // 2],)
            notes += [Note(e, k, v) for k in keys for v in p.velocities]
    return notes
