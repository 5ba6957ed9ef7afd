"""blat.pipeline.sources: apt-get/dpkg-deb wrappers, the opensfx.cat and zip containers, DEP-5 licences."""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile

import numpy as np
import pytest
import soundfile as sf

from blat.pipeline import sources
from blat.pipeline.sources import PackageSpec, SourceError


def wav_bytes(seconds: float = 0.5, sr: int = 22_050, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, 0.5 * np.sin(2 * np.pi * freq * t), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def make_cat(entries: list[tuple[str, bytes]], new_format: bool = True) -> bytes:
    """An OpenTTD sound catalogue: (offset, size) u32 table, then u8 length + description + NUL + RIFF bytes."""
    table, body = [], b""
    start = 8 * len(entries)
    for description, riff in entries:
        name = description.encode() + b"\0"
        offset = start + len(body)
        table.append((offset | (0x8000_0000 if new_format else 0), len(riff)))
        body += bytes([len(name)]) + name + riff
    return b"".join(struct.pack("<II", o, s) for o, s in table) + body


def test_parse_opensfx_cat_round_trips_synthetic_entries():
    a, b = wav_bytes(0.5, freq=440), wav_bytes(1.0, freq=880)
    data = make_cat(
        [
            ('"Cash till". By Someone. License: Creative Commons Zero 1.0.', a),
            ('"Ship horn". Original "horn.aif" by X. Edited by Y. License: CC BY 3.0.', b),
        ]
    )
    entries = sources.parse_opensfx_cat(data)
    assert [e.index for e in entries] == [0, 1]
    assert entries[0].description.startswith('"Cash till"') and not entries[0].description.endswith("\0")
    assert data[entries[1].offset : entries[1].offset + entries[1].size] == b
    wave, sr = sf.read(io.BytesIO(data[entries[1].offset : entries[1].offset + entries[1].size]))
    assert sr == 22_050 and len(wave) == 22_050
    assert sources.parse_opensfx_cat(make_cat([("x", a)], new_format=False))[0].size == len(a)


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"\x01\x00", "shorter"),
        (struct.pack("<II", 12, 4) + b"xxxx", "table length"),
        (struct.pack("<II", 8, 40) + b"\x01aNOTRIFF", "no RIFF"),
    ],
)
def test_parse_opensfx_cat_rejects_garbage(data, needle):
    with pytest.raises(ValueError, match=needle):
        sources.parse_opensfx_cat(data)


def test_split_opensfx_description():
    title, credit = sources.split_opensfx_description(
        '"Ship horn". Original "ship2.aif" by Leon Milo. License: Creative Commons Attribution 3.0 Unported.'
    )
    assert title == "Ship horn"
    assert credit.startswith('Original "ship2.aif" by Leon Milo') and "Attribution 3.0" in credit


@pytest.fixture
def fake_tree(tmp_path):
    """An unpacked package: plain files, a zip/pk3 with audio and non-audio entries, and a sound catalogue."""
    root = tmp_path / "tree" / "usr" / "share" / "games" / "fake"
    (root / "sounds").mkdir(parents=True)
    (root / "sounds" / "door.wav").write_bytes(wav_bytes())
    (root / "sounds" / "readme.txt").write_text("not audio")
    with zipfile.ZipFile(root / "0snd.pk3", "w") as z:
        z.writestr("sound/glass/break1.wav", wav_bytes(0.4))
        z.writestr("sound/", "")
        z.writestr("maps/level.bsp", b"\0" * 10)
    (root / "sfx.cat").write_bytes(make_cat([('"Steam/whistle". Original "w.wav" by A. License: CC0.', wav_bytes())]))
    return tmp_path / "tree", PackageSpec("fake", "usr/share/games/fake")


def test_list_members_walks_files_zips_and_catalogues(fake_tree):
    tree, spec = fake_tree
    members = {m.path: m for m in sources.list_members(spec, tree)}
    assert set(members) == {"0snd.pk3/sound/glass/break1.wav", "sfx.cat/00 Steam-whistle", "sounds/door.wav"}
    z = members["0snd.pk3/sound/glass/break1.wav"]
    assert z.origin == "usr/share/games/fake/0snd.pk3!sound/glass/break1.wav" and z.inner == "sound/glass/break1.wav"
    cat = members["sfx.cat/00 Steam-whistle"]
    assert cat.caption == "Steam/whistle" and "CC0" in cat.credit and cat.group == "sfx.cat:original:w.wav"
    for m in members.values():  # every member reads back as a decodable file image
        wave, sr = sf.read(io.BytesIO(sources.read_member(m)))
        assert sr == 22_050 and len(wave) > 0


def test_read_member_in_a_forked_child_does_not_share_the_zip_handle(fake_tree):
    tree, spec = fake_tree
    m = next(m for m in sources.list_members(spec, tree) if m.inner)
    first = sources.read_member(m)  # the parent now holds an open ZipFile
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        assert all(b == first for b in pool.map(sources.read_member, [m] * 8))


def test_list_members_missing_root(tmp_path):
    with pytest.raises(SourceError, match="expected sounds under"):
        sources.list_members(PackageSpec("fake", "usr/share/nothing"), tmp_path)


def test_no_apt_get_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "APT_GET", "apt-get-that-does-not-exist")
    with pytest.raises(SourceError) as e:
        sources.download_deb("minetest-data", tmp_path / "debs")
    msg = str(e.value)
    assert "minetest-data" in msg and "apt-get" in msg and "apt-get update" in msg and "--from-folder" in msg


def test_no_apt_get_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: neither apt-get nor dpkg-deb
    with pytest.raises(SourceError, match="not found on PATH"):
        sources.fetch_package("ufoai-sound", tmp_path / "cache")


def fake_tool(folder, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_apt_get_failure_is_explained(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "apt-get", 'echo "E: Unable to locate package $2" >&2; exit 100\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SourceError) as e:
        sources.download_deb("no-such-pkg", tmp_path / "debs")
    assert "Unable to locate package no-such-pkg" in str(e.value) and "apt-get update" in str(e.value)


def test_download_runs_in_the_cache_and_is_reused(tmp_path, monkeypatch):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    fake_tool(bin_dir, "apt-get", f'echo "$PWD $@" >> {log}; touch "$2_1.0-1_all.deb"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    debs = tmp_path / "debs"
    first = sources.download_deb("pkg-a", debs)
    again = sources.download_deb("pkg-a", debs)
    assert first == again == debs / "pkg-a_1.0-1_all.deb"
    assert log.read_text().splitlines() == [f"{debs} download pkg-a"]  # called once, with cwd = the cache


DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Files-Excluded: junk/*
 more/*

Files: *
Copyright: 2001 Someone
License: GPL-2+

Files: *.ogg
License: CC-BY-SA-3.0

Files:
 base/sound/ambience/hum.ogg
 data/doors/*
Copyright: A. Person
License: CC0-1.0
 Full text ...
"""


@pytest.mark.parametrize(
    "origin,expected",
    [
        ("usr/share/games/x/base/readme.txt", "GPL-2+"),
        ("usr/share/games/x/base/sound/fire.ogg", "CC-BY-SA-3.0"),
        ("usr/share/games/ufoai/base/0snd.pk3!sound/ambience/hum.ogg", "CC0-1.0"),  # container name dropped
        ("usr/share/games/x/data/doors/open.wav", "CC0-1.0"),
    ],
)
def test_licence_for_uses_the_last_matching_dep5_stanza(origin, expected):
    assert sources.licence_for(DEP5, origin) == expected


def test_licence_for_non_dep5_text():
    assert sources.licence_for("Copyright (C) 2003 by David White. GPL.", "a/b.ogg") == "see copyright"


def test_every_size_lists_known_packages():
    assert set(sources.SIZES) == {"ci", "seed", "demo"}
    for packages in sources.SIZES.values():
        assert set(packages) <= set(sources.PACKAGES)
        assert len(set(packages)) == len(packages)  # a package listed twice would be downloaded twice
    assert set(sources.SIZES["ci"]) < set(sources.SIZES["seed"])
    assert set(sources.SIZES["ci"]) < set(sources.SIZES["demo"]) and "0ad-data" in sources.SIZES["demo"]
