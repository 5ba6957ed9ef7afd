"""What a batch job keeps on disk, whatever engine runs it: the plan, atomic shard outputs, the spec, the merge check.

A job is a sorted list of unique ids cut into fixed shards (`plan`). Its folder holds:

    job.json                  {"spec": what the outputs depend on, ...}: another spec there is refused (JobMismatch)
    shard-00000.<ext> ...     one output per shard, written atomically (temp file, fsync, rename, fsync the folder)
    <merged output>           written by `merge` once every shard is present and holds exactly its ids

The output is the record: a shard counts as finished when it is present and holds exactly its planned ids, so a rerun
computes only the others (`Job.pending`), and a shard computed twice (a retried task) is overwritten atomically with
the same content. Scheduling, retries and placement are the engine's (blat_jobs/ray_run.py); this module stays
stdlib-only so that the job folder can be read and checked anywhere.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

JOB = "job.json"


class JobMismatch(ValueError):
    """The folder holds shards of a job with other settings; mixing them would give inconsistent outputs."""


class Incomplete(RuntimeError):
    """A merge found shards missing, damaged or unexpected; `missing` and `invalid` hold their indices."""

    def __init__(self, message: str, missing: list[int], invalid: list[int]):
        super().__init__(message)
        self.missing, self.invalid = missing, invalid


def plan(ids: Sequence[str], shard_size: int) -> list[list[str]]:
    """Shards fixed by the sorted ids, so every run and every rerun agrees on them."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ids = sorted(ids)
    dups = sorted({a for a, b in zip(ids, ids[1:]) if a == b})
    if dups:
        raise ValueError(f"duplicate ids: {dups[:5]}{' ...' if len(dups) > 5 else ''}")
    return [ids[i : i + shard_size] for i in range(0, len(ids), shard_size)]


def shard_path(folder: Path, k: int, ext: str) -> Path:
    return Path(folder) / f"shard-{k:05d}.{ext}"


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Readers see all of `path` or none: a temp sibling, fsync'd, renamed over it. A killed writer leaves only the
    temp file (`*.tmp-*`), removed by the merge."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@dataclass
class Job:
    folder: Path
    shards: list[list[str]]
    ext: str  # shard-00000.<ext>
    read_ids: Callable[[Path], list[str]]  # the ids a shard file holds; may raise anything on a damaged file
    write: Callable[[BinaryIO, Any], None]  # one shard's result -> bytes

    def path(self, k: int) -> Path:
        return shard_path(self.folder, k, self.ext)

    @property
    def ids(self) -> list[str]:
        return [i for s in self.shards for i in s]

    def finished(self, k: int) -> bool:
        """Present and holding exactly its ids (atomic writes make a present shard whole, unless damaged later)."""
        try:
            return self.read_ids(self.path(k)) == self.shards[k]
        except Exception:  # a damaged file raises whatever its parser raises
            return False

    def pending(self) -> list[int]:
        """The shards a run still has to compute."""
        return [k for k in range(len(self.shards)) if not self.finished(k)]

    def store(self, k: int, result: Any) -> None:
        write_atomic(self.path(k), lambda f: self.write(f, result))


def open_job(
    folder: str | Path,
    spec: dict,
    shards: list[list[str]],
    ext: str,
    read_ids,
    write,
    *,
    overwrite: bool = False,
    info: dict | None = None,
    outputs: Sequence[str] = (),
    readonly: bool = False,
) -> Job:
    """Create or reopen the job in `folder`. A folder holding another spec raises JobMismatch; with overwrite its
    shards and `outputs` are removed first. readonly: reopen an existing job only (to merge it), changing nothing."""
    folder = Path(folder)
    old = _spec(folder / JOB)
    if readonly and old is None:
        raise FileNotFoundError(f"{folder}: no {JOB}, so no job ran there")
    if old is not None and old != spec:
        if readonly or not overwrite:
            hint = "" if readonly else "; use another folder or overwrite=True (--overwrite) to start over"
            raise JobMismatch(f"{folder} holds a job with other settings (differs in {_diff(old, spec)}){hint}")
        for p in [*folder.glob(f"shard-*.{ext}*"), *(folder / o for o in outputs)]:
            p.unlink(missing_ok=True)
    if not readonly:
        folder.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"spec": spec, **(info or {})}, indent=1) + "\n"
        write_atomic(folder / JOB, lambda f: f.write(body.encode()))  # also fails early on an unwritable folder
    return Job(folder, shards, ext, read_ids, write)


def _diff(old: dict, new: dict) -> list[str]:
    return sorted(k for k in {*old, *new} if old.get(k) != new.get(k))


def _spec(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())["spec"]
    except FileNotFoundError:
        return None


def check_complete(job: Job) -> list[Path]:
    """The shard paths in order, when every shard is present and holds exactly its ids (so together exactly the
    job's ids, each once) and no unplanned shard lies there; else Incomplete naming the others."""
    missing, invalid, seen = [], [], []
    for k, ids in enumerate(job.shards):
        if not job.path(k).exists():
            missing.append(k)
            continue
        try:
            got = job.read_ids(job.path(k))
        except Exception:
            got = None
        if got != ids:
            invalid.append(k)
        else:
            seen += got
    planned = {job.path(k).name for k in range(len(job.shards))}
    stray = sorted(p.name for p in job.folder.glob(f"shard-*.{job.ext}") if p.name not in planned)
    if missing or invalid or stray:
        parts = [f"{job.path(k).name} (missing)" for k in missing]
        parts += [f"{job.path(k).name} (damaged or other ids)" for k in invalid] + [f"{s} (not planned)" for s in stray]
        raise Incomplete(
            f"{job.folder}: {len(missing) + len(invalid)} of {len(job.shards)} shards unfinished"
            f"{' or stray' if stray else ''}: " + ", ".join(parts),
            missing,
            invalid,
        )
    assert seen == job.ids  # plan() partitions the sorted unique ids
    return [job.path(k) for k in range(len(job.shards))]


def merge(job: Job, name: str, combine: Callable[[list[Path], BinaryIO], None]) -> Path:
    """Check completeness, then write `combine(shard paths, file)` atomically to <folder>/<name>."""
    paths = check_complete(job)
    out = job.folder / name
    write_atomic(out, lambda f: combine(paths, f))
    for tmp in job.folder.glob("shard-*.tmp-*"):  # every shard is finished: any temp file is a killed writer's
        tmp.unlink(missing_ok=True)
    return out
