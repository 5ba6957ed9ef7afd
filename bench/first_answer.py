"""Time from `make run` to the gateway's first useful answer, as a new user meets it.

    git clone -q . /tmp/fresh && python3 bench/first_answer.py --repo /tmp/fresh --cold    # empty caches
    python3 bench/first_answer.py --repo /tmp/fresh                                         # second start

Starts `make run` in --repo (with --cold: an empty Debian-package cache and pip cache of its own), then polls
/readyz and POST /v1/search/text once a second. Prints the seconds to the first 200 from /readyz, to the first
search answer, and to the first answer with results (the index seeded), plus the .deb and pip download volumes; then
stops
the server. Standard library only; it talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, {}


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="a clone of the project")
    p.add_argument("--cold", action="store_true", help="empty package caches of its own (a fresh machine)")
    p.add_argument("--query", default="an explosion")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--timeout", type=float, default=1200.0, help="give up after this many seconds")
    args = p.parse_args(argv)
    env = dict(os.environ)
    cache = None
    if args.cold:
        cache = Path(tempfile.mkdtemp(prefix="first-answer-"))
        env.update(BLAT_CACHE=str(cache / "corpus"), PIP_CACHE_DIR=str(cache / "pip"))
    base = f"http://127.0.0.1:{args.port}"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=args.repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    marks: dict[str, float] = {}
    try:
        while time.monotonic() - t0 < args.timeout and proc.poll() is None:
            if "ready" not in marks and _get(base + "/readyz") == 200:
                marks["ready"] = time.monotonic() - t0
            if "ready" in marks:
                status, body = _post(base + "/v1/search/text", {"query": args.query, "k": 3})
                if status == 200:
                    marks.setdefault("first_answer", time.monotonic() - t0)
                    if body.get("hits"):
                        marks["first_results"] = time.monotonic() - t0
                        print("top hits:", [(h["id"], h["item"].get("tags")) for h in body["hits"]])
                        break
            time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    for name in ("ready", "first_answer", "first_results"):
        print(f"{name:14s} {marks[name]:8.1f} s" if name in marks else f"{name:14s} not reached")
    if cache is not None:
        debs = sum(f.stat().st_size for f in (cache / "corpus").rglob("*.deb"))
        wheels = sum(f.stat().st_size for f in (cache / "pip").rglob("*") if f.is_file())
        print(f"Debian packages downloaded: {debs / 1e6:.0f} MB")
        print(f"Python packages downloaded (pip cache): {wheels / 1e6:.0f} MB")
    return 0 if "first_results" in marks else 1


if __name__ == "__main__":
    sys.exit(main())
