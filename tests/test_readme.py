"""The README's examples run against a live gateway, so they cannot rot.

Every ```bash and ```python block in README.md runs, unless the line before it says why not:
`<!-- not run: REASON -->` (a GPU, Docker, the 30-minute training, the server itself...). A new block is
therefore tested by default. They run in order, in one scratch folder holding `clip.wav`, `rain.wav` and a
folder `clips/`, against a gateway on the tiny test bundle whose ingest root is that folder; the README's
`localhost:8080` / `127.0.0.1:8080` and `:50051` become that gateway's ports (and $BLAT_URL names it), and
`.venv/bin/` this interpreter's.

The gateway is a real process, started as the README starts it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.server.conftest import ROOT, running_server, synth_clip, wav

README = ROOT / "README.md"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>bash|python)\n(?P<code>.*?)\n```", re.S)
SKIP = re.compile(r"<!-- not run: (?P<why>[^>]+) -->")


def examples() -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, why not run) for every bash/python block, in order."""
    text = README.read_text()
    out = []
    for m in BLOCK.finditer(text):
        skip = SKIP.search(m.group("before"))
        line = text[: m.start("code")].count("\n") + 1
        out.append((line, m.group("lang"), m.group("code"), skip.group("why").strip() if skip else None))
    return out


def test_readme_has_examples_to_run():
    run = [e for e in examples() if e[3] is None]
    langs = {lang for _, lang, _, _ in run}
    assert len(run) >= 6 and langs == {"bash", "python"}, "the README's API examples are gone"
    for line, _, _, why in examples():
        assert why is None or len(why) > 8, f"README.md:{line}: say why the block is not run"


def localize(code: str, http_url: str, grpc_address: str) -> str:
    port, grpc_port = http_url.rsplit(":", 1)[1], grpc_address.rsplit(":", 1)[1]
    code = re.sub(r"(localhost|127\.0\.0\.1):8080", f"127.0.0.1:{port}", code)
    code = re.sub(r"(localhost|127\.0\.0\.1):50051", f"127.0.0.1:{grpc_port}", code)
    return code.replace(".venv/bin/", f"{Path(sys.executable).parent}/")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, request) -> Path:
    """The folder examples run in: a short clip, a longer 'rain' clip, and clips/ with a few more."""
    folder = tmp_path_factory.mktemp("readme")
    try:
        real = request.getfixturevalue("real_clips")
    except pytest.skip.Exception:
        real = {}
    picks = [s for _, s in sorted(real.items()) if 0.5 <= len(s) / 16000 <= 8][:4]
    while len(picks) < 4:
        picks.append(synth_clip(700 + len(picks), seconds=1.5))
    pcm16 = lambda samples: wav(samples, subtype="PCM_16")  # noqa: E731 (what wav_chunks in the README reads)
    (folder / "clip.wav").write_bytes(pcm16(picks[0]))
    (folder / "rain.wav").write_bytes(pcm16(np.tile(picks[1], 12 * 16000 // len(picks[1]) + 1)[: 16000 * 12]))
    (folder / "clips").mkdir()
    for i, samples in enumerate(picks[2:]):
        (folder / "clips" / f"sound-{i}.wav").write_bytes(pcm16(samples))
    return folder


def test_readme_examples_run(tiny_bundle, scratch, tmp_path):
    blocks = [e for e in examples() if e[3] is None]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    env.pop("BLAT_API_KEY", None)
    with running_server(tiny_bundle, tmp_path / "gw", roots=scratch) as gw:
        env["BLAT_URL"] = gw.http_url  # what `blat` commands without --url reach (their default: 127.0.0.1:8080)
        for line, lang, code, _ in blocks:
            code = localize(code, gw.http_url, gw.grpc_address)
            cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
            out = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, (
                f"README.md:{line} ({lang}) failed with {out.returncode}:\n{code}\n"
                f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}"
            )
            assert out.stdout.strip(), f"README.md:{line}: the example printed nothing"
