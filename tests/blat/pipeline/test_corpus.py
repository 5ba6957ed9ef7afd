"""blat.pipeline.corpus: audio conversion, ids, the bring-your-own-folder path and a whole build from a .deb."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from blat.pipeline import corpus, sources
from blat.pipeline.corpus import ManifestRow, build_corpus, build_from_folder, load_manifest, to_mono
from blat.pipeline.sources import PackageSpec
from blat.pipeline.tags import TagTableError, parse_tag_table
from blat_contract.audio import SAMPLE_RATE


def sine(freq: float, seconds: float, sr: int, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[spectrum.argmax()]


def test_to_mono_resamples_a_stereo_441_sine_to_32k_mono():
    x = sine(1000.0, 2.0, 44_100, channels=2)  # (N, 2)
    y = to_mono(x, 44_100)
    assert y.ndim == 1 and y.dtype == np.float32
    assert len(y) == 2 * SAMPLE_RATE
    assert abs(peak_hz(y, SAMPLE_RATE) - 1000.0) <= SAMPLE_RATE / len(y)  # within one FFT bin (0.5 Hz)
    middle = y[SAMPLE_RATE // 2 : -SAMPLE_RATE // 2]  # away from the filter's edge transients
    np.testing.assert_allclose(np.abs(middle).max(), 0.5, atol=5e-3)
    np.testing.assert_allclose(middle, sine(1000.0, 2.0, SAMPLE_RATE)[SAMPLE_RATE // 2 : -SAMPLE_RATE // 2], atol=5e-3)


def test_to_mono_downmixes_by_averaging_and_caps_length():
    left, right = sine(500.0, 1.0, 16_000), np.zeros(16_000)
    y = to_mono(np.stack([left, right], axis=1), 16_000)
    np.testing.assert_allclose(np.abs(y[4000:-4000]).max(), 0.25, atol=5e-3)  # (L + R) / 2
    assert len(to_mono(np.zeros(48_000 * 40), 48_000)) == corpus.MAX_SECONDS * SAMPLE_RATE
    assert len(to_mono(np.zeros(100), SAMPLE_RATE)) == 100  # no resampling at the target rate
    assert np.abs(to_mono(np.full(1000, 3.0), SAMPLE_RATE)).max() == 1.0  # clipped to full scale


def test_clip_ids_are_stable_unique_and_readable():
    ids = corpus.clip_ids("pkg", ["a/Mace.ogg", "a/mace.wav", "b/Big Crash!.wav", "c.pk3/sound/x.ogg"])
    assert ids == {
        "a/Mace.ogg": "pkg/a/mace-ogg",
        "a/mace.wav": "pkg/a/mace-wav",
        "b/Big Crash!.wav": "pkg/b/big-crash",
        "c.pk3/sound/x.ogg": "pkg/c-pk3/sound/x",
    }
    assert corpus.clip_ids("pkg", ["a.wav", "A.wav", "a.WAV"]).keys() == {"a.wav", "A.wav", "a.WAV"}
    assert len(set(corpus.clip_ids("pkg", ["a.wav", "A.wav", "a.WAV"]).values())) == 3


def test_recording_group_joins_takes():
    g = corpus.recording_group
    assert g("p", "x/gravel_footstep.1.ogg") == g("p", "x/gravel_footstep.3.ogg") == "p:x/gravel_footstep"
    assert g("p", "x/breakglass01.ogg") == g("p", "x/breakglass07.ogg")
    assert g("p", "x/door.ogg") != g("p", "x/window.ogg")
    assert g("p", "x/anything", group="cat:original:w.wav") == "p:cat:original:w.wav"


def write_folder(tmp_path):
    folder = tmp_path / "my_sounds"
    (folder / "sub").mkdir(parents=True)
    sf.write(folder / "dog.wav", sine(700, 1.5, 44_100, channels=2), 44_100)  # stereo 44.1 kHz
    sf.write(folder / "sub" / "rain.flac", sine(300, 0.8, 16_000), 16_000)
    sf.write(folder / "click.wav", sine(2000, 0.1, 48_000), 48_000)  # too short
    sf.write(folder / "quiet.wav", sine(500, 1.0, 32_000, amp=1e-4), 32_000)  # below -60 dBFS
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "path,tags,caption\n"
        'dog.wav,"Dog;Bark",a dog barks twice|a dog is barking\n'
        "sub/rain.flac,Rain,\n"
        "click.wav,Clicking,a click\n"
        "quiet.wav,,almost nothing\n"
    )
    return folder, csv_path


def test_build_from_folder(tmp_path):
    folder, csv_path = write_folder(tmp_path)
    out = tmp_path / "out"
    report = build_from_folder(folder, csv_path, out)
    stats = report["packages"]["my-sounds"]
    assert (stats["written"], stats["too_short"], stats["silent"], stats["files"]) == (2, 1, 1, 4)
    rows = {r["id"]: r for r in load_manifest(out / "manifest.jsonl")}
    assert set(rows) == {"my-sounds/dog", "my-sounds/sub/rain"}
    dog = rows["my-sounds/dog"]
    assert dog["tags"] == ["Dog", "Bark"] and dog["captions"] == ["a dog barks twice", "a dog is barking"]
    assert dog["split"] == "unassigned" and dog["path"] == "dog.wav" and dog["duration"] == 1.5
    assert set(dog) == set(ManifestRow.__dataclass_fields__)
    info = sf.info(str(out / dog["audio"]))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (SAMPLE_RATE, 1, "PCM_16", "FLAC")
    wave, _ = sf.read(out / dog["audio"])
    assert abs(peak_hz(wave, SAMPLE_RATE) - 700) < 2
    assert rows["my-sounds/sub/rain"]["captions"] == [] and rows["my-sounds/sub/rain"]["duration"] == 0.8
    # a rerun reuses what is there
    again = build_from_folder(folder, csv_path, out)["packages"]["my-sounds"]
    assert (again["written"], again["reused"]) == (0, 2)


@pytest.mark.parametrize(
    "line,error",
    [
        ("dog.wav,Doggo,\n", TagTableError),
        ("dog.wav,,\n", TagTableError),
        ("missing.wav,Dog,\n", FileNotFoundError),
    ],
)
def test_build_from_folder_rejects_bad_rows(tmp_path, line, error):
    folder, _ = write_folder(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,tags,caption\n" + line)
    with pytest.raises(error, match="bad.csv:2"):
        build_from_folder(folder, bad, tmp_path / "out")


def test_main_from_folder_and_help(tmp_path, capsys):
    folder, csv_path = write_folder(tmp_path)
    assert (
        corpus.main(["--from-folder", str(folder), "--csv", str(csv_path), "--out", str(tmp_path / "o"), "--jobs", "1"])
        == 0
    )
    assert "2 clips in" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        corpus.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--size" in text and "0ad-data" in text and "apt-get" in text


def test_main_reports_missing_apt_as_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sources, "APT_GET", "apt-get-that-does-not-exist")
    assert (
        corpus.main(
            ["--packages", "bucklespring-data", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "cache")]
        )
        == 2
    )
    assert "apt-get" in capsys.readouterr().err


FAKE = "blat-fake-sounds"
COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
License: GPL-2+

Files: sounds/glass.wav
License: CC0-1.0
"""


@pytest.fixture
def fake_deb(tmp_path, monkeypatch):
    """A real .deb (built with dpkg-deb) in the download cache, and a package spec plus tag table for it."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not available")
    root = tmp_path / "pkgroot"
    sounds = root / "usr" / "share" / "sounds" / "fake"
    sounds.mkdir(parents=True)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {FAKE}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: Test <t@example.org>\nDescription: test sounds\n"
    )
    doc = root / "usr" / "share" / "doc" / FAKE
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    sf.write(sounds / "dog_bark.1.wav", sine(600, 1.0, 22_050), 22_050)
    sf.write(sounds / "dog_bark.2.wav", sine(650, 1.2, 48_000, channels=2), 48_000)
    sf.write(sounds / "voice.wav", sine(200, 1.0, 16_000), 16_000)
    sf.write(sounds / "mystery.wav", sine(900, 1.0, 16_000), 16_000)
    sf.write(sounds / "blip.wav", sine(900, 0.1, 16_000), 16_000)
    shutil.copyfile(sounds / "dog_bark.1.wav", sounds / "dog_bark_copy.wav")  # one recording under two names
    sf.write(tmp_path / "glass.wav", sine(3000, 0.5, 44_100), 44_100)
    with zipfile.ZipFile(sounds / "more.zip", "w") as z:
        z.write(tmp_path / "glass.wav", "sounds/glass.wav")
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(root), str(cache / "debs" / f"{FAKE}_1.0_all.deb")],
        check=True,
        capture_output=True,
    )
    monkeypatch.setitem(sources.PACKAGES, FAKE, PackageSpec(FAKE, "usr/share/sounds/fake"))
    table = parse_tag_table(
        "package,pattern,tags,caption_hint\n"
        f"{FAKE},voice,,speech\n"
        f'{FAKE},dog_bark,"Dog;Bark",a dog barks\n'
        f"{FAKE},glass,Glass,glass\n"
        f'{FAKE},blip,"Beep, bleep",\n'
    )
    return cache, table


def test_build_corpus_from_a_cached_deb(fake_deb, tmp_path, monkeypatch):
    cache, table = fake_deb
    monkeypatch.setattr(sources, "APT_GET", "apt-get-that-does-not-exist")  # the cached .deb is enough
    out = tmp_path / "out"
    report = build_corpus([FAKE], out, cache, jobs=2, table=table)
    s = report["packages"][FAKE]
    assert (s["files"], s["tagged"], s["excluded"], s["unmatched"], s["duplicates"]) == (7, 5, 1, 1, 1)
    assert (s["written"], s["too_short"], s["clips"]) == (3, 1, 3)
    assert s["unmatched_paths"] == ["mystery.wav"]
    rows = {r["id"]: r for r in load_manifest(out / "manifest.jsonl")}
    assert set(rows) == {f"{FAKE}/dog-bark-1", f"{FAKE}/dog-bark-2", f"{FAKE}/more-zip/sounds/glass"}
    bark = rows[f"{FAKE}/dog-bark-2"]
    assert bark["source"] == rows[f"{FAKE}/dog-bark-1"]["source"]  # takes of one recording share a group
    assert bark["licence"] == "GPL-2+" and rows[f"{FAKE}/more-zip/sounds/glass"]["licence"] == "CC0-1.0"
    assert bark["path"] == "usr/share/sounds/fake/dog_bark.2.wav" and bark["caption_hint"] == "a dog barks"
    assert (out / "licenses" / FAKE / "copyright").read_text() == COPYRIGHT
    assert (cache / "unpacked" / FAKE).is_dir()
    assert json.loads((out / "build_report.json").read_text())["clips"] == 3

    # rerun: nothing decoded again; a rule change that drops a clip removes its file
    again = build_corpus([FAKE], out, cache, jobs=1, table=table)["packages"][FAKE]
    assert (again["written"], again["reused"]) == (0, 3)
    fewer = parse_tag_table(f'package,pattern,tags,caption_hint\n{FAKE},dog_bark\\.1,"Dog;Bark",\n')
    build_corpus([FAKE], out, cache, jobs=1, table=fewer)
    assert [r["id"] for r in load_manifest(out / "manifest.jsonl")] == [f"{FAKE}/dog-bark-1"]
    assert sorted(p.name for p in (out / "audio").rglob("*.flac")) == ["dog-bark-1.flac"]


def test_build_corpus_unknown_package(tmp_path):
    with pytest.raises(ValueError, match="unknown packages"):
        build_corpus(["not-a-package"], tmp_path / "out", tmp_path / "cache")


def test_cache_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("BLAT_CACHE", str(tmp_path / "env"))
    assert corpus.resolve_cache(None) == tmp_path / "env"
    assert corpus.resolve_cache(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("BLAT_CACHE")
    assert str(corpus.resolve_cache(None)).endswith(".cache/blat/corpus")


def test_min_seconds_keeps_short_sounds_and_index_seed_lists_every_clip(fake_deb, tmp_path, monkeypatch):
    from blat.pipeline.corpus import main

    cache, table = fake_deb
    monkeypatch.setattr(sources, "APT_GET", "apt-get-that-does-not-exist")
    report = build_corpus([FAKE], tmp_path / "out", cache, jobs=1, table=table, min_seconds=0.05)
    assert report["packages"][FAKE]["too_short"] == 0 and report["clips"] == 4  # the 0.1 s blip is kept
    rules = tmp_path / "rules.csv"
    rules.write_text(f'package,pattern,tags,caption_hint\n{FAKE},dog_bark,"Dog;Bark",a dog barks\n')
    seed = tmp_path / "seed.jsonl"
    assert (
        main(
            [
                "--packages",
                FAKE,
                "--out",
                str(tmp_path / "out2"),
                "--cache",
                str(cache),
                "--rules",
                str(rules),
                "--index-seed",
                str(seed),
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in seed.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [f"{FAKE}/dog-bark-1", f"{FAKE}/dog-bark-2"]
    assert all(Path(r["audio"]).is_absolute() and Path(r["audio"]).is_file() for r in rows)
    assert all(r["tags"] == ["Dog", "Bark"] and r["caption"] == "a dog barks" for r in rows)
    manifest = {r["id"]: r for r in load_manifest(tmp_path / "out2" / "manifest.jsonl")}
    for r in rows:  # provenance as the item's metadata: what the web page shows as licence and source
        m = manifest[r["id"]]
        assert r["extra"] == {"licence": m["licence"], "package": FAKE, "file": m["path"]} and m["licence"]


def test_seed_size_fits_its_budget():
    assert set(sources.SIZES["ci"]) < set(sources.SIZES["seed"]) <= set(sources.PACKAGES)
    assert "0ad-data" not in sources.SIZES["seed"]  # 1.4 GB alone: the seed set stays under 500 MB
