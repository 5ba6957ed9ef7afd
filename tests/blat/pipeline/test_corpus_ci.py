"""The real `ci` corpus: five small Debian packages downloaded with apt-get into <repo>/.cache/corpus (kept between
runs, so only the first run downloads ~35 MB), decoded into a temporary folder."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from blat.pipeline import sources
from blat.pipeline.corpus import MIN_SECONDS, build_corpus, load_manifest
from blat_contract.audio import SAMPLE_RATE
from blat_contract.labels import audioset_labels

pytestmark = pytest.mark.bench  # a long pipeline run: `make test-bench`

REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / ".cache" / "corpus"


@pytest.fixture(scope="module")
def ci_corpus(tmp_path_factory):
    cached = all(any((CACHE / "debs").glob(f"{p}_*.deb")) for p in sources.SIZES["ci"])
    if not cached and (shutil.which(sources.APT_GET) is None or shutil.which(sources.DPKG_DEB) is None):
        pytest.skip("needs apt-get and dpkg-deb (or the .debs already in .cache/corpus/debs)")
    out = tmp_path_factory.mktemp("ci")
    report = build_corpus(sources.SIZES["ci"], out, CACHE, jobs=2)
    return out, report, load_manifest(out / "manifest.jsonl")


def test_ci_corpus_has_hundreds_of_valid_clips(ci_corpus):
    out, report, rows = ci_corpus
    assert 400 <= len(rows) == report["clips"] <= 800
    per_package = collections.Counter(r["package"] for r in rows)
    assert set(per_package) == set(sources.SIZES["ci"]) and min(per_package.values()) >= 10
    assert len({r["id"] for r in rows}) == len(rows)
    names = set(audioset_labels())
    for r in rows:
        assert r["tags"] and set(r["tags"]) <= names, r["id"]
        assert r["split"] == "unassigned" and r["source"].startswith(r["package"] + ":") and r["licence"]
        info = sf.info(str(out / r["audio"]))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (SAMPLE_RATE, 1, "FLAC", "PCM_16")
        assert info.frames / SAMPLE_RATE >= MIN_SECONDS and abs(info.frames / SAMPLE_RATE - r["duration"]) < 1e-3


def test_ci_corpus_keeps_every_licence_and_the_opensfx_captions(ci_corpus):
    out, report, rows = ci_corpus
    for package in sources.SIZES["ci"]:
        text = (out / "licenses" / package / "copyright").read_text(errors="replace")
        assert len(text) > 100, package
    opensfx = [r for r in rows if r["package"] == "openttd-opensfx"]
    assert len(opensfx) >= 40 and all(r["captions"] for r in opensfx)
    assert all("Licen" in r["licence"] for r in opensfx)  # per-sound author and licence from opensfx.cat
    assert report["packages"]["ufoai-sound"]["excluded"] > 50  # soldier/civilian voices are left out


def test_ci_corpus_labels_some_known_sounds(ci_corpus):
    _, _, rows = ci_corpus
    by_id = {r["id"]: r for r in rows}
    assert (
        "Walk, footsteps" in by_id["minetest-data/minetest-game/mods/default/sounds/default-grass-footstep-1"]["tags"]
    )
    assert by_id["openttd-opensfx/opensfx-cat/36-sheep"]["tags"] == ["Sheep", "Bleat"]
    assert "Computer keyboard" in by_id["bucklespring-data/1e-0"]["tags"]
