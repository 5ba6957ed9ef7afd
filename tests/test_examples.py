"""The example clips in examples/ are what examples/make_clips.py makes from Debian's minetest-data, and every one
of them is credited in examples/LICENSES.md."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.server.conftest import ROOT

EXAMPLES = ROOT / "examples"


def shipped() -> list[str]:
    return sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.wav"))


def test_every_clip_is_credited():
    licences = (EXAMPLES / "LICENSES.md").read_text()
    assert len(shipped()) >= 4
    for name in shipped():
        assert f"`{name}`" in licences, f"examples/{name} has no line in examples/LICENSES.md"


def test_make_clips_rewrites_the_shipped_clips(tmp_path):
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is not available to fetch minetest-data")
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_clips.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.wav"))
    assert made == shipped()
    for name in made:
        a, rate_a = sf.read(str(tmp_path / name), dtype="int16")
        b, rate_b = sf.read(str(EXAMPLES / name), dtype="int16")
        assert rate_a == rate_b == 16000 and a.shape == b.shape, name
        # one step of 16-bit rounding apart at most: a Vorbis decoder may differ in the last float bit
        assert np.abs(a.astype(np.int32) - b).max() <= 1, name
