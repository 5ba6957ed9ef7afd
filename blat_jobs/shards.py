"""Sharded, resumable batch jobs: many workers, one job folder, and the filesystem as the only coordinator.

A job is a sorted list of unique ids cut into fixed shards (`plan`). Its folder holds:

    job.json                  {"spec": what the outputs depend on, ...}: another spec there is refused (JobMismatch)
    shard-00000.<ext> ...     one output per shard, written atomically (temp file, fsync, rename, fsync the folder)
    claims/shard-00000.claim  who works on a shard now: JSON {worker, host, pid, time, nonce}; its mtime is a heartbeat
    workers/<worker>.json     per worker, the shards it computed (for people and tests)
    <merged output>           written by `merge` once every shard is present and holds exactly its ids

Workers (`run_worker`) go over the unfinished shards, each starting at an offset set by its rank so they spread
out: claim (O_CREAT|O_EXCL), compute, write, release. While a shard is worked on, a heartbeat thread touches its
claim every lease_s/3; a claim untouched for lease_s belongs to a dead worker and is taken over (`_take_over`). A
claim of a process on this machine that no longer exists is stale at once, so a rerun after a kill resumes without
waiting out the lease. Finished shards need no claim: the output is the record. `run_local_workers` starts
several workers as processes of this machine (the `--workers N` of a job's command line).

Workers may be processes on one machine or on several nodes sharing the job folder (NFS, Lustre, ...): O_EXCL
creates and renames are atomic there. Staleness compares claim mtimes with the local clock, so nodes' clocks must
agree to well within lease_s (NTP). A stalled (not dead) worker whose claim was taken over may still finish its
shard: both write the same content through atomic renames, so the shard is whole either way. Identity comes from
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) when present; no process group is needed.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)
JOB = "job.json"
CLAIMS = "claims"
WORKERS = "workers"
DELAY_ENV = "BLAT_JOBS_SHARD_DELAY_S"  # tests only: seconds each shard waits, claimed, before it is computed
LEASE_S = 60.0  # a claim untouched this long is stale; heartbeats come every third of it


class JobMismatch(ValueError):
    """The folder holds shards of a job with other settings; mixing them would give inconsistent outputs."""


class Incomplete(RuntimeError):
    """A merge found shards missing, damaged or unexpected; `missing` and `invalid` hold their indices."""

    def __init__(self, message: str, missing: list[int], invalid: list[int]):
        super().__init__(message)
        self.missing, self.invalid = missing, invalid


def _host() -> str:
    """This machine and PID namespace: a PID is only meaningful inside its namespace (containers share hostnames)."""
    try:
        return f"{socket.gethostname()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return socket.gethostname()


HOST = _host()


@dataclass(frozen=True)
class Identity:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: dict | None = None) -> Identity:
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, else rank 0 of 1."""
        env = os.environ if environ is None else environ
        world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} outside WORLD_SIZE={world}")
        return cls(rank, world, int(env.get("LOCAL_RANK", str(rank))))

    def device(self, base: str) -> str:
        """'cuda' -> 'cuda:<LOCAL_RANK>' (one GPU per local worker); any other device as given."""
        return f"cuda:{self.local_rank}" if base == "cuda" else base

    @property
    def name(self) -> str:
        """Unique among live workers: separate runs may reuse a rank, not a (host, pid)."""
        return f"rank{self.rank}of{self.world_size}-{socket.gethostname()}-{os.getpid()}"


def plan(ids: Sequence[str], shard_size: int) -> list[list[str]]:
    """Shards fixed by the sorted ids, so every worker and every rerun agrees on them."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ids = sorted(ids)
    dups = sorted({a for a, b in zip(ids, ids[1:]) if a == b})
    if dups:
        raise ValueError(f"duplicate ids: {dups[:5]}{' ...' if len(dups) > 5 else ''}")
    return [ids[i : i + shard_size] for i in range(0, len(ids), shard_size)]


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Readers see all of `path` or none: a temp sibling, fsync'd, renamed over it. A killed writer leaves only the
    temp file (`*.tmp-*`), removed by whoever claims that shard next or by the merge."""
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
    write: Callable[[BinaryIO, Any], None]  # one shard's result (what process_fn returned) -> bytes

    def path(self, k: int) -> Path:
        return self.folder / f"shard-{k:05d}.{self.ext}"

    def claim_path(self, k: int) -> Path:
        return self.folder / CLAIMS / f"shard-{k:05d}.claim"

    @property
    def ids(self) -> list[str]:
        return [i for s in self.shards for i in s]

    def finished(self, k: int) -> bool:
        """Present and holding exactly its ids (atomic writes make a present shard whole, unless damaged later)."""
        try:
            return self.read_ids(self.path(k)) == self.shards[k]
        except Exception:  # a damaged file raises whatever its parser raises
            return False

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
    reset: bool = True,
    wait_s: float = 120.0,
    readonly: bool = False,
) -> Job:
    """Create or reopen the job in `folder`. A folder holding another spec raises JobMismatch; with overwrite its
    shards, claims, ledgers and `outputs` are removed first. Of several workers started together only one may do
    that (reset=True, e.g. rank 0): the others wait up to wait_s for its job.json. readonly: reopen an existing job
    only (to merge it), changing nothing."""
    folder = Path(folder)
    if readonly:
        old = _spec(folder / JOB)
        if old is None:
            raise FileNotFoundError(f"{folder}: no {JOB}, so no job ran there")
        if old != spec:
            raise JobMismatch(f"{folder} holds a job with other settings than these (differs in {_diff(old, spec)})")
        return Job(folder, shards, ext, read_ids, write)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / JOB
    deadline = time.monotonic() + wait_s
    while (old := _spec(path)) is not None and old != spec:
        if not overwrite:
            raise JobMismatch(
                f"{folder} holds a job with other settings (differs in {_diff(old, spec)}); use another "
                "folder or overwrite=True (--overwrite) to start over"
            )
        if reset:
            for p in [
                *folder.glob(f"shard-*.{ext}*"),
                *folder.glob(f"{CLAIMS}/*"),
                *folder.glob(f"{WORKERS}/*"),
                *(folder / o for o in outputs),
            ]:
                p.unlink(missing_ok=True)
            break
        if time.monotonic() > deadline:
            raise JobMismatch(f"{folder}: job.json still holds other settings after {wait_s:g} s (rank 0 resets it)")
        time.sleep(0.2)
    (folder / CLAIMS).mkdir(exist_ok=True)
    (folder / WORKERS).mkdir(exist_ok=True)
    body = json.dumps({"spec": spec, **(info or {})}, indent=1) + "\n"
    write_atomic(path, lambda f: f.write(body.encode()))  # also fails early on an unwritable folder
    return Job(folder, shards, ext, read_ids, write)


def _diff(old: dict, new: dict) -> list[str]:
    return sorted(k for k in {*old, *new} if old.get(k) != new.get(k))


def _spec(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())["spec"]
    except FileNotFoundError:
        return None


# --- claims ---------------------------------------------------------------------------------------------------------


def _read_claim(path: Path) -> tuple[dict, float] | None:
    """(content, mtime) of one and the same claim file (fstat of the open file), or None when there is none. An
    empty or partial claim (its writer died between create and write) reads as {} and goes stale by mtime."""
    try:
        with open(path, "rb") as f:
            raw, mtime = f.read(), os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        info = {}
    return (info if isinstance(info, dict) else {}), mtime


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(info: dict, mtime: float, lease_s: float) -> bool:
    return time.time() - mtime > lease_s or (info.get("host") == HOST and not _alive(info.get("pid")))


class Claim:
    """A held claim; a daemon thread refreshes its mtime every lease_s/3 until `release`."""

    def __init__(self, path: Path, nonce: str, lease_s: float):
        self.path, self.nonce = path, nonce
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(lease_s / 3,), daemon=True, name=f"heartbeat {path.name}"
        )
        self._thread.start()

    def ours(self) -> bool:
        held = _read_claim(self.path)
        return held is not None and held[0].get("nonce") == self.nonce

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            if not self.ours():  # taken over after we stalled: stop keeping the new owner's claim alive
                log.warning("claim lost to another worker", extra={"claim": str(self.path)})
                return
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.ours():  # never remove a claim another worker took over
            self.path.unlink(missing_ok=True)
        for marker in self.path.parent.glob(self.path.name + ".takeover-*"):
            marker.unlink(missing_ok=True)


def claim(path: Path, worker: str, lease_s: float = LEASE_S) -> Claim | None:
    """Claim a shard: create its claim file exclusively, or take over a stale one. None when another holds it.
    Each worker judges staleness by its own lease_s: give all workers of a job the same one."""
    body = {"worker": worker, "host": HOST, "pid": os.getpid(), "time": time.time(), "nonce": uuid.uuid4().hex}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return _take_over(path, body, lease_s)
    with os.fdopen(fd, "wb") as f:
        f.write(json.dumps(body).encode())
        f.flush()
        os.fsync(f.fileno())
    return Claim(path, body["nonce"], lease_s)


def _take_over(path: Path, body: dict, lease_s: float) -> Claim | None:
    """Replace a stale claim with ours, race-safe. Several workers may judge the same claim stale at once; each
    then creates the marker `<claim>.takeover-<stale claim's nonce>` with O_EXCL, and only the one that created
    it renames its own claim over the stale one. A worker that reads the claim after that rename sees a fresh claim
    with another nonce and backs off. (Unlink + O_EXCL retry would not do: a slow worker could unlink the claim
    that a faster one had just created.) Markers are removed when the shard's claim is released."""
    held = _read_claim(path)
    if held is None or not _stale(*held, lease_s):
        return None  # released meanwhile (next pass claims it normally) or alive
    info, mtime = held
    marker = path.with_name(f"{path.name}.takeover-{info.get('nonce') or int(mtime * 1e9)}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return None
    tmp = path.with_name(f"{path.name}.tmp-{body['nonce']}")
    with open(tmp, "wb") as f:
        f.write(json.dumps(body).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    log.warning(
        "took over a stale claim",
        extra={"claim": str(path), "from_worker": info.get("worker"), "age_s": round(time.time() - mtime, 1)},
    )
    return Claim(path, body["nonce"], lease_s)


# --- workers and merge ----------------------------------------------------------------------------------------------


@dataclass
class Summary:
    worker: str
    computed: list[int] = field(default_factory=list)  # shards this worker wrote
    found_done: int = 0  # shards already finished when it started
    unfinished: list[int] = field(default_factory=list)  # held by others when it stopped (wait=False)
    seconds: float = 0.0


def run_worker(
    job: Job,
    process: Callable[[int, list[str]], Any],
    identity: Identity | None = None,
    lease_s: float = LEASE_S,
    wait: bool = True,
    poll_s: float | None = None,
    on_shard: Callable[[int, int], None] | None = None,
) -> Summary:
    """Claim and compute unfinished shards (`process(k, ids)` -> result for `job.write`) until none is left
    unclaimed; with wait, keep polling until every shard is finished, taking over claims that go stale."""
    ident = identity or Identity.from_env()
    n, started = len(job.shards), time.monotonic()
    first = ident.rank * n // ident.world_size
    order = [(first + i) % n for i in range(n)]
    done = {k for k in order if job.finished(k)}
    summary = Summary(ident.name, found_done=len(done))
    poll = poll_s if poll_s is not None else min(2.0, lease_s / 4)
    while True:
        others = []
        for k in order:
            if k in done:
                continue
            held = claim(job.claim_path(k), ident.name, lease_s)
            if held is None:
                (done.add if job.finished(k) else others.append)(k)
                continue
            try:
                if not job.finished(k):  # it may have been finished between our check and the claim
                    for tmp in job.folder.glob(job.path(k).name + ".tmp-*"):  # a killed writer's; we own k now
                        tmp.unlink(missing_ok=True)
                    t0 = time.monotonic()
                    if DELAY_ENV in os.environ:  # test hook only: hold the claim a while, so a test can kill us here
                        time.sleep(float(os.environ[DELAY_ENV]))
                    job.store(k, process(k, job.shards[k]))
                    summary.computed.append(k)
                    _ledger(job, ident, summary)
                    log.info(
                        "shard written",
                        extra={
                            "shard": k,
                            "items": len(job.shards[k]),
                            "worker": ident.name,
                            "seconds": round(time.monotonic() - t0, 2),
                        },
                    )
                    if on_shard:
                        on_shard(k, len(job.shards[k]))
                done.add(k)
            finally:
                held.release()
        if not others or not wait:
            summary.unfinished = others
            break
        time.sleep(poll)
    summary.seconds = round(time.monotonic() - started, 2)
    return summary


def run_local_workers(target: Callable, args: tuple, n: int, name: str, poll: Callable[[], None] | None = None) -> None:
    """Run `target(*args, Identity(i, n, i), log_level)` in n fresh processes (spawned: no forked thread pools or
    held locks) and wait for them, calling `poll` about every 0.5 s. A worker that fails is logged; its shards are
    left to the caller's own pass (a dead process's claims are stale at once on this machine)."""
    ctx = multiprocessing.get_context("spawn")
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    procs = [ctx.Process(target=target, args=(*args, Identity(i, n, i), level), name=f"{name}-{i}") for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        while p.is_alive():
            p.join(0.5)
            if poll:
                poll()
    failed = {p.name: p.exitcode for p in procs if p.exitcode}
    if failed:
        log.warning("local workers failed; what they left is done here", extra={"exit_codes": failed})


def _ledger(job: Job, ident: Identity, summary: Summary) -> None:
    body = json.dumps(
        {
            "worker": ident.name,
            "host": HOST,
            "pid": os.getpid(),
            "rank": ident.rank,
            "world_size": ident.world_size,
            "computed": summary.computed,
            "time": time.time(),
        }
    )
    write_atomic(job.folder / WORKERS / f"{ident.name}.json", lambda f: f.write(body.encode()))


def ledgers(folder: str | Path) -> dict[str, list[int]]:
    """worker -> the shards it computed, from every worker that ran in this job folder."""
    return {p.stem: json.loads(p.read_text())["computed"] for p in sorted(Path(folder, WORKERS).glob("*.json"))}


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
        parts = [f"{job.path(k).name} (missing{_holder(job, k)})" for k in missing]
        parts += [f"{job.path(k).name} (damaged or other ids)" for k in invalid] + [f"{s} (not planned)" for s in stray]
        raise Incomplete(
            f"{job.folder}: {len(missing) + len(invalid)} of {len(job.shards)} shards unfinished"
            f"{' or stray' if stray else ''}: " + ", ".join(parts),
            missing,
            invalid,
        )
    assert seen == job.ids  # plan() partitions the sorted unique ids
    return [job.path(k) for k in range(len(job.shards))]


def _holder(job: Job, k: int) -> str:
    held = _read_claim(job.claim_path(k))
    if held is None:
        return ""
    return f"; claimed by {held[0].get('worker', '?')}, heartbeat {time.time() - held[1]:.0f} s ago"


def merge(job: Job, name: str, combine: Callable[[list[Path], BinaryIO], None]) -> Path:
    """Check completeness, then write `combine(shard paths, file)` atomically to <folder>/<name>."""
    paths = check_complete(job)
    out = job.folder / name
    write_atomic(out, lambda f: combine(paths, f))
    for tmp in job.folder.glob("shard-*.tmp-*"):  # every shard is finished: any temp file is a dead writer's
        tmp.unlink(missing_ok=True)
    return out
