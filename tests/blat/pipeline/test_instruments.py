"""blat.pipeline.instruments: a pure-numpy SF2 player, checked on a tiny SoundFont written here."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from blat.pipeline import instruments as I
from blat.pipeline.families import family
from blat_contract.audio import SAMPLE_RATE

RATE = 32_000
PERIOD = 80  # samples: 400 Hz at 32 kHz


def chunk(cid: bytes, data: bytes) -> bytes:
    return cid + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def write_sf2(path, root_key: int = 67, loop: bool = True) -> None:
    """One 0.5 s 400 Hz sine sample (root key 67 = G4, 392 Hz, corrected by +34 cents... kept simple: pitch
    correction 0, so key K plays 400 * 2 ** ((K - root) / 12) Hz), one instrument, preset bank 0 program 0."""
    n = RATE // 2
    wave = (0.5 * np.sin(2 * np.pi * np.arange(n) / PERIOD) * 32767).astype("<i2")
    smpl = wave.tobytes() + b"\0" * 92  # 46 zero samples after the sample, as the format asks
    name = lambda s: s.encode().ljust(20, b"\0")  # noqa: E731
    shdr = struct.pack("<20sIIIIIBbHH", name("sine"), 0, n, PERIOD * 10, PERIOD * 190, RATE, root_key, 0, 0, 1)
    shdr += struct.pack("<20sIIIIIBbHH", name("EOS"), 0, 0, 0, 0, 0, 0, 0, 0, 0)
    gen = lambda op, amount: struct.pack("<Hh", op, amount)  # noqa: E731
    igen = gen(I.G_RELEASE, -1200) + gen(I.G_MODES, 1 if loop else 0) + gen(I.G_SAMPLE, 0) + gen(0, 0)
    ibag = struct.pack("<HH", 0, 0) + struct.pack("<HH", 3, 0)
    inst = struct.pack("<20sH", name("inst"), 0) + struct.pack("<20sH", name("EOI"), 1)
    pgen = gen(I.G_INSTRUMENT, 0) + gen(0, 0)
    pbag = struct.pack("<HH", 0, 0) + struct.pack("<HH", 1, 0)
    phdr = struct.pack("<20sHHHIII", name("Sine"), 0, 0, 0, 0, 0, 0) + struct.pack(
        "<20sHHHIII", name("EOP"), 0, 0, 1, 0, 0, 0
    )
    mod = b"\0" * 10
    pdta = b"pdta" + b"".join(
        chunk(c, d)
        for c, d in [
            (b"phdr", phdr),
            (b"pbag", pbag),
            (b"pmod", mod),
            (b"pgen", pgen),
            (b"inst", inst),
            (b"ibag", ibag),
            (b"imod", mod),
            (b"igen", igen),
            (b"shdr", shdr),
        ]
    )
    body = (
        b"sfbk"
        + chunk(b"LIST", b"INFO" + chunk(b"ifil", struct.pack("<HH", 2, 1)))
        + chunk(b"LIST", b"sdta" + chunk(b"smpl", smpl))
        + chunk(b"LIST", pdta)
    )
    path.write_bytes(chunk(b"RIFF", body))


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[spectrum.argmax()])


def test_renders_the_recorded_sample_at_the_note_pitch_with_loop_and_release(tmp_path):
    path = tmp_path / "tiny.sf2"
    write_sf2(path, root_key=67)
    sf = I.load_soundfont(str(path))
    assert set(sf.presets) == {(0, 0)} and sf.samples[0].root == 67
    for key, hz in [(67, 400.0), (79, 800.0), (62, 400.0 * 2 ** (-5 / 12))]:
        wave = I.render_note(str(path), 0, 0, key, 100, SAMPLE_RATE, hold=1.0, max_tail=1.5)
        assert wave.dtype == np.float32 and abs(np.abs(wave).max() - 0.9 * (100 / 127) ** 0.5) < 1e-3
        assert abs(peak_hz(wave[:SAMPLE_RATE]) - hz) < hz * 0.01, key
        # the 0.5 s sample loops through the 1 s hold, then a 0.5 s release (-60 dB cut) follows note-off
        assert np.abs(wave[int(0.9 * SAMPLE_RATE) : SAMPLE_RATE]).max() > 0.5
        assert 1.28 < len(wave) / SAMPLE_RATE < 1.33


def test_unlooped_sample_stops_at_its_end_and_missing_preset_raises(tmp_path):
    path = tmp_path / "oneshot.sf2"
    write_sf2(path, loop=False)
    wave = I.render_note(str(path), 0, 0, 67, 100, SAMPLE_RATE, hold=1.0, max_tail=1.0)
    assert len(wave) / SAMPLE_RATE < 0.52  # the 0.5 s recording, no loop
    with pytest.raises(I.SoundFontError, match="no preset"):
        I.render_note(str(path), 128, 0, 38, 100, SAMPLE_RATE)
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(b"RIFF\0\0\0\0WAVE")
    with pytest.raises(I.SoundFontError, match="not a SoundFont"):
        I.load_soundfont(str(bad))


def test_gm_table_and_plans():
    table = I.gm_table()
    assert all(family(e.tags) == "instruments" for e in table)
    classes = {e.tags[0] for e in table}
    assert {"Piano", "Violin, fiddle", "Trumpet", "Snare drum", "Acoustic guitar", "Flute"} <= classes
    assert len(classes) >= 40
    full, small = I.plan_notes("full"), I.plan_notes("small")
    assert len(full) >= 400 and 40 <= len(small) <= 80
    assert len({n.path for n in full}) == len(full)
    snare = next(n for n in full if n.entry.name == "Acoustic Snare")
    assert (snare.entry.bank, snare.program, snare.key) == (128, 0, 38) and snare.path.startswith("drums/038 ")
    piano = full[0]
    assert piano.path == "program/000 Acoustic Grand Piano/C3 v070"
