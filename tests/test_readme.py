"""The README's examples run against a live gateway seeded as `make run` seeds it, so they cannot rot.

Every ```bash and ```python block in README.md runs, unless the line before it says why not:
`<!-- not run: REASON -->` (a GPU, Docker, the 30-minute training, the server itself...). A new block is
therefore tested by default. They run in order, in a copy of `examples/` (the clips the README uses ship there),
against a gateway on the tiny test bundle started as `make run` starts it: its index is seeded at start-up from a
seed manifest (BLAT_SERVER_SEED_MANIFEST), and the examples run once the seeding is done. Like the default index,
which holds the recordings of the Debian packages the example clips come from, the seed holds the example clips
themselves under other ids, beside the freedesktop sounds: the examples must pass with their audio already stored.
The README's `localhost:8080` / `127.0.0.1:8080` and `:50051` become that gateway's ports (and $BLAT_URL names
it), and `.venv/bin/` this interpreter's.

What this cannot run is the full default index (1,000 recordings, 450 MB of downloads): the seed here is that
index's shape on a few clips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ROOT, running_server

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
    return re.sub(r"(\.\./)?\.venv/bin/", f"{Path(sys.executable).parent}/", code)


EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def roots(tmp_path_factory, request) -> Path:
    """The gateway's ingest root: examples/ (where the examples run) and seed/ with index_seed.jsonl."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copytree(EXAMPLES, folder / "examples", ignore=shutil.ignore_patterns("*.py", "*.md"))
    seed = folder / "seed"
    seed.mkdir()
    rows = []
    for clip in sorted(EXAMPLES.rglob("*.wav")):  # the same audio under the ids the default index would use
        copy = seed / f"minetest-{clip.name}"
        shutil.copyfile(clip, copy)
        rows.append({"id": f"minetest-data/{clip.stem}", "audio": str(copy), "tags": [], "caption": ""})
    try:
        real = request.getfixturevalue("freedesktop_sounds")
    except pytest.skip.Exception:
        real = []
    for path in real:
        rows.append({"id": f"sound-theme-freedesktop/{path.stem}", "audio": str(path), "tags": [], "caption": ""})
    (seed / "index_seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def seeded(url: str, n: int, timeout_s: float = 120.0) -> None:
    """Wait until the start-up seeding has stored all n items."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = httpx.get(f"{url}/v1/index/stats", timeout=10).json()
        if stats["items"] >= n and (stats.get("rebuild") or {}).get("state") not in ("queued", "running"):
            return
        time.sleep(0.5)
    raise AssertionError(f"the seed index did not fill in {timeout_s} s: {stats}")


def test_readme_examples_run(tiny_bundle, roots, tmp_path):
    blocks = [e for e in examples() if e[3] is None]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    env.pop("BLAT_API_KEY", None)
    manifest = roots / "seed" / "index_seed.jsonl"
    seed_env = {"BLAT_SERVER_SEED_MANIFEST": str(manifest)}
    with running_server(tiny_bundle, tmp_path / "gw", roots=roots, env=seed_env) as gw:
        seeded(gw.http_url, len(manifest.read_text().splitlines()))
        env["BLAT_URL"] = gw.http_url  # what `blat` commands without --url reach (their default: 127.0.0.1:8080)
        for line, lang, code, _ in blocks:
            code = localize(code, gw.http_url, gw.grpc_address)
            cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
            out = subprocess.run(cmd, cwd=roots / "examples", env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, (
                f"README.md:{line} ({lang}) failed with {out.returncode}:\n{code}\n"
                f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}"
            )
            assert out.stdout.strip(), f"README.md:{line}: the example printed nothing"
