"""Published models by name: download a released checkpoint once, check it on every later use, export its bundle.

    python -m blat_export fetch blat-cnn14-bertm              # -> runs/models/blat-cnn14-bertm/bundle
    blat fetch blat-cnn14-bertm ; make run MODEL=blat-cnn14-bertm

The names and their published URLs are data (pretrained.json, beside this file). No hash is published for them, so
the first complete download records the file's size and sha256 in `<cache>/fetch.lock.json`, and every later fetch
(and every use of a file already there) checks the file against it: a file that changed is refused, never used.
A download resumes where it stopped (an HTTP Range request on `<file>.part`). Offline, or when the URL cannot be
reached, it fails at once and says where to put the file by hand (a file put there is checked like a download).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

PUBLISHED = Path(__file__).with_name("pretrained.json")
LOCK = "fetch.lock.json"
CHUNK = 1 << 20
CONNECT_TIMEOUT_S = 15.0  # also the most a stalled read waits
log = logging.getLogger(__name__)


class FetchError(Exception):
    """A fetch that cannot go on: the message says why and what to do."""


@dataclass(frozen=True)
class Published:
    name: str
    url: str
    file: str  # the file name it is stored under
    format: str  # "blat-release": the authors' torch checkpoint (blat_export bundle --blat-release)
    about: str


def published_models() -> dict[str, Published]:
    return {name: Published(name, **fields) for name, fields in json.loads(PUBLISHED.read_text()).items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_lock(cache: Path) -> dict:
    path = cache / LOCK
    return json.loads(path.read_text()) if path.exists() else {}


def _write_lock(cache: Path, lock: dict) -> None:
    tmp = cache / (LOCK + ".tmp")
    tmp.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, cache / LOCK)


def _check(model: Published, path: Path, cache: Path) -> dict:
    """The file against the lock (recorded now if this is the first complete copy); FetchError if it differs."""
    lock = _read_lock(cache)
    got = {"size": path.stat().st_size, "sha256": _sha256(path)}
    known = lock.get(model.name)
    if known is None:
        lock[model.name] = {
            **got,
            "url": model.url,
            "file": model.file,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        _write_lock(cache, lock)
        log.info("recorded %s in %s: %d bytes, sha256 %s", model.file, cache / LOCK, got["size"], got["sha256"])
        return lock[model.name]
    if (known["size"], known["sha256"]) != (got["size"], got["sha256"]):
        raise FetchError(
            f"{path} ({got['size']} bytes, sha256 {got['sha256']}) is not the file recorded in {cache / LOCK} "
            f"({known['size']} bytes, sha256 {known['sha256']}) on its first download: it was changed or the "
            f"published file was replaced. Remove it to download it again, or its entry in the lock to accept it"
        )
    return known


def _download(model: Published, url: str, path: Path) -> None:
    """To `path`, through `path.part`, resuming a partial one."""
    part = path.with_name(path.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part already holds the whole file
            os.replace(part, path)
            return
        raise FetchError(f"{url} answered {e.code} {e.reason}; {_by_hand(model, path)}") from None
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"cannot reach {url} ({getattr(e, 'reason', e)}); {_by_hand(model, path)}") from None
    with response:
        resumed = response.status == 206
        if have and not resumed:
            log.info("%s does not resume downloads: starting again", url)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=model.file) as bar,
        ):
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (OSError, urllib.error.URLError) as e:
                raise FetchError(
                    f"the download of {url} broke after {f.tell()} bytes ({e}): run the same command again to resume it"
                ) from None
    if total is not None and part.stat().st_size != total:
        raise FetchError(
            f"the download of {url} ended at {part.stat().st_size} of {total} bytes: run the same command again to "
            "resume it"
        )
    os.replace(part, path)


def _by_hand(model: Published, path: Path) -> str:
    return (
        f"to fetch {model.name} without this machine downloading it, get {model.url} elsewhere and put it at "
        f"{path} (it is checked against {path.parent / LOCK} where one exists)"
    )


def fetch(name: str, cache: Path, url: str | None = None) -> Path:
    """The checked checkpoint file of a published model, downloaded into `cache` unless it is there already.
    `url` overrides the published address (a mirror)."""
    models = published_models()
    if name not in models:
        raise FetchError(f"no published model {name!r}; known: {', '.join(sorted(models))}")
    model = models[name]
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / model.file
    if not path.exists():
        _download(model, url or model.url, path)
    _check(model, path, cache)
    return path


def fetch_bundle(
    name: str, cache: Path, export: Callable[[list[str]], int], url: str | None = None, trusted: bool = False
) -> Path:
    """`fetch`, then the model's bundle in `cache/<name>/bundle` (exported once; reused while the file is unchanged).
    `export` runs `python -m blat_export` with the arguments it is given (blat_export.__main__.export_argv)."""
    path = fetch(name, cache, url)
    model = published_models()[name]
    out = cache / name / "bundle"
    if (out / "bundle.json").exists() and (out / "bundle.json").stat().st_mtime >= path.stat().st_mtime:
        log.info("%s: the bundle in %s is up to date", name, out)
        return out
    if model.format != "blat-release":
        raise FetchError(f"{name}: unknown checkpoint format {model.format!r}")
    argv = ["bundle", "--blat-release", str(path), "--out", str(out), "--name", name, "--overwrite"]
    if export(argv + (["--trusted"] if trusted else [])) != 0:
        raise FetchError(f"{name}: exporting the bundle failed (see the log above)")
    return out
