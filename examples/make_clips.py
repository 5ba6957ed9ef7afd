"""Rewrite the example clips in this folder from their source: Debian's `minetest-data` package.

    .venv/bin/python examples/make_clips.py             # writes examples/*.wav and examples/clips/*.wav
    .venv/bin/python examples/make_clips.py --out DIR   # somewhere else (tests/test_examples.py compares the two)

The .deb (about 3.6 MB) is fetched with `apt-get download` into .cache/examples/ and unpacked there, never
installed. Each clip is the source recording mixed to mono and resampled to 16 kHz, 16-bit PCM WAV (what
`wav_chunks` in the README reads as a microphone would send it). Authors and licences: examples/LICENSES.md.
"""

from __future__ import annotations

import argparse
import subprocess
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / ".cache" / "examples"
PACKAGE = "minetest-data"
MODS = "usr/share/games/minetest/games/minetest_game/mods"
SAMPLE_RATE = 16_000

# output file -> the recordings it joins, in order (paths below MODS)
CLIPS = {
    "explosion.wav": ["tnt/sounds/tnt_explode.ogg"],
    "water.wav": ["env_sounds/sounds/env_sounds_water.1.ogg", "env_sounds/sounds/env_sounds_water.2.ogg"],
    "clips/door-open.wav": ["doors/sounds/doors_door_open.ogg"],
    "clips/door-close.wav": ["doors/sounds/doors_door_close.ogg"],
    "clips/fire.wav": ["fire/sounds/fire_fire.1.ogg"],
}


def unpacked_package() -> Path:
    """The package's files, fetched and unpacked once into .cache/examples/."""
    root = CACHE / "unpacked"
    if not (root / MODS).is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", PACKAGE], cwd=CACHE, check=True, capture_output=True)
        deb = sorted(CACHE.glob(f"{PACKAGE}_*.deb"))[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def read_mono_16k(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    g = gcd(rate, SAMPLE_RATE)
    return resample_poly(data.mean(axis=1), SAMPLE_RATE // g, rate // g).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE, help="folder to write the clips into (default: examples/)")
    args = p.parse_args()
    mods = unpacked_package() / MODS
    for name, sources in CLIPS.items():
        samples = np.concatenate([read_mono_16k(mods / s) for s in sources])
        out = args.out / name
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(out), np.clip(samples, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
        print(f"{out}  {len(samples) / SAMPLE_RATE:.2f} s  from {', '.join(Path(s).name for s in sources)}")


if __name__ == "__main__":
    main()
