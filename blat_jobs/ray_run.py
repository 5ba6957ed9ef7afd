"""The engine of the batch jobs (embedding, stage 2 captioning): a job's unfinished shards as a Ray Data pipeline.

    shards left (Job.pending) -> decode: Ray tasks, 1 CPU each -> model: a pool of `workers` actors (num_cpus,
    num_gpus each), each call computes one shard and writes it atomically -> the driver counts shards (progress bar)

Ray schedules, streams with backpressure between the CPU decode and the model stage, places actors on GPUs,
restarts a dead actor (max_restarts=-1) and retries its call (max_task_retries=-1), and moves work off a lost node.

Where decoding runs (`decode`): "tasks" (the default) is the pipeline above, what GPU actors need (a GPU should not
wait on a CPU decode); "actors" decodes in the model actor before its model, which saves a worker process per
decode and a copy of the audio through the object store, for CPU-only actors (on 2 CPU cores it finished 2 % sooner:
BENCHMARKS.md).
What Ray does not keep is kept by blat_jobs.shards: the output is the record, so a rerun after the driver died
computes only the shards not yet written.

Granularity: one dataset row per shard, not per clip. A shard is the unit of output and resumption, so a retried
call recomputes exactly one shard and overwrites it atomically with the same content (each id lands once), and no
groupby (an all-to-all exchange) is needed to put clips back into their shards. The price is that a shard's decoded
audio travels as one object: keep shards to a few hundred clips. Payloads and decoded audio cross the object store
as pickled bytes: ragged per-clip arrays would otherwise go through Arrow conversions for nothing.

Without an address a local Ray starts with this machine's cores (no dashboard, no usage stats); "auto" joins the
cluster this machine is part of, "ray://HOST:10001" one through Ray Client. A process that already called
ray.init (a test session) is used as it is.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from blat_jobs.shards import Job, shard_path, write_atomic

log = logging.getLogger(__name__)
DELAY_ENV = "BLAT_JOBS_SHARD_DELAY_S"  # tests only: seconds each model call waits before computing its shard
DECODE_CPUS = 1.0  # per decode task (Ray's default for a task); with decode tasks, the actors must leave this much
DECODE_WHERE = ("tasks", "actors")
FIT = 1e-9  # float slack when counting how many actors fit on a node


class Unschedulable(RuntimeError):
    """The actors asked for cannot be placed on the cluster: says what was asked and what the cluster has."""


class JobFailed(RuntimeError):
    """A decode task or a model call raised (a bad file, a broken bundle): the first error, as its code raised it."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: $RAY_ADDRESS or a local Ray; "auto" / "ray://HOST:10001": join a cluster
    workers: int = 1  # model actors in the pool
    num_cpus: float | None = None  # per actor; None: 1, or an equal share on a small machine (actor_cpus)
    num_gpus: float = 0.0  # per actor; Ray sets CUDA_VISIBLE_DEVICES, so the actor's GPU is cuda:0 inside it
    wait_s: float | None = None  # for resources to appear (nodes still joining); None: 60 s if joined by address
    progress: bool = True  # a progress bar over clips on stderr
    decode: str = "tasks"  # where decoding runs: Ray tasks apart from the actors, or "actors" (in them)

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if (self.num_cpus is not None and self.num_cpus <= 0) or self.num_gpus < 0:
            raise ValueError(f"num_cpus must be > 0 and num_gpus >= 0, got {self.num_cpus}, {self.num_gpus}")
        if self.decode not in DECODE_WHERE:
            raise ValueError(f"decode must be one of {DECODE_WHERE}, got {self.decode!r}")

    @property
    def decode_tasks(self) -> bool:
        """Decoding as Ray tasks apart from the model actors (else inside them)."""
        return self.decode == "tasks"


@dataclass
class Summary:
    computed: list[int] = field(default_factory=list)  # shards written by this run, in completion order
    found_done: int = 0  # shards finished before it started
    workers: dict[str, int] = field(default_factory=dict)  # actor ("<node id>/<pid>") -> shards it wrote
    startup_s: float = 0.0  # connecting to (or starting) Ray and checking its resources
    first_shard_s: float | None = None  # from the start of the run to the first shard written
    seconds: float = 0.0


def connect(address: str | None) -> bool:
    """Start or join Ray unless this process already did; True when it joined a cluster by address (whose nodes may
    still be joining). Without an address, $RAY_ADDRESS is joined when set (as Ray's own commands do)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # an offline batch job reports nothing home
    kw: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=True)
    if address is None:  # "local": a new instance, even where `ray start` left one on this machine
        kw.update(num_cpus=os.cpu_count(), include_dashboard=False)
    ray.init(address=address or "local", **kw)
    log.info("ray connected", extra={"address": address or "local", "resources": ray.cluster_resources()})
    return address is not None


def actor_cpus(opts: RayOptions, total_cpu: float) -> float:
    """--num-cpus, or 1 per actor when the cluster has room for that (and for a decode task, with decode tasks), else
    an equal share (2 cores, 2 actors, decode tasks: 0.5 each). Actors that hold every CPU while decode tasks wait
    for one starve the pipeline: a hang."""
    if opts.num_cpus is not None:
        return opts.num_cpus
    spare = max(total_cpu - DECODE_CPUS, total_cpu / 2) if opts.decode_tasks else total_cpu
    return round(min(1.0, spare / opts.workers), 4)


def check_resources(opts: RayOptions, cpus: float, wait_s: float) -> None:
    """Raise Unschedulable unless every actor fits on some alive node (and a decode task still fits beside them).
    Ray itself would wait forever for such actors; waits up to wait_s for nodes that are still joining."""
    deadline = time.monotonic() + wait_s
    while True:
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        room = sum(actors_fitting(r, cpus, opts.num_gpus) for r in nodes)
        total_cpu, total_gpu = (sum(r.get(k, 0.0) for r in nodes) for k in ("CPU", "GPU"))
        problem = None
        if room < opts.workers:
            problem = f"room for {room} such actor(s)"
        elif opts.decode_tasks and total_cpu - opts.workers * cpus < DECODE_CPUS - FIT:
            problem = f"no CPU left for the decode tasks ({DECODE_CPUS:g} each): lower --num-cpus or --workers"
        if problem is None:
            return
        if time.monotonic() >= deadline:
            raise Unschedulable(
                f"asked for {opts.workers} model actor(s) with {cpus:g} CPU and {opts.num_gpus:g} GPU each; the "
                f"cluster has {total_cpu:g} CPU and {total_gpu:g} GPU on {len(nodes)} node(s): {problem}"
            )
        time.sleep(1.0)


def actors_fitting(resources: dict, cpus: float, gpus: float) -> int:
    """How many actors of `cpus` CPUs and `gpus` GPUs one node with `resources` ({"CPU": .., "GPU": ..}) holds."""
    n = int(resources.get("CPU", 0.0) / cpus + FIT)
    return min(n, int(resources.get("GPU", 0.0) / gpus + FIT)) if gpus else n


def _decode(row: dict, decode: Callable[[Any], Any]) -> dict:
    """A decode task: one shard's payload (e.g. its manifest rows) -> its decoded inputs."""
    decoded = decode(pickle.loads(row["payload"]))
    return {"shard": row["shard"], "decoded": pickle.dumps(decoded, protocol=pickle.HIGHEST_PROTOCOL)}


class _ModelActor:
    """One actor of the pool: builds the model once (again after a restart), then computes and writes shards."""

    def __init__(self, make_model: Callable[[str, float], Callable], decode, folder, ext: str, write, delay_s: float):
        context = ray.get_runtime_context()
        self.worker = f"{context.get_node_id()}/{os.getpid()}"
        self.model = make_model(self.worker, context.get_assigned_resources().get("CPU", 1.0))
        self.decode = decode  # None: rows arrive decoded by the decode tasks
        self.folder, self.ext, self.write, self.delay_s = folder, ext, write, delay_s

    def __call__(self, row: dict) -> dict:
        k = int(row["shard"])
        if self.delay_s:  # test hook only: a window in which a test kills this actor, its node or the driver
            time.sleep(self.delay_s)
        if self.decode is None:
            decoded = pickle.loads(row["decoded"])
        else:
            decoded = self.decode(pickle.loads(row["payload"]))
        result = self.model(k, decoded)
        write_atomic(shard_path(self.folder, k, self.ext), lambda f: self.write(f, result))
        return {"shard": k, "worker": self.worker}


def run_shards(
    job: Job,
    payload: Callable[[int], Any],
    decode: Callable[[Any], Any],
    make_model: Callable[[str, float], Callable[[int, Any], Any]],
    opts: RayOptions,
    desc: str = "shards",
) -> Summary:
    """Compute the job's unfinished shards. payload(k): what the decode task of shard k gets (small: its rows);
    decode(payload) -> what the model gets; make_model(worker name, the actor's CPUs: its thread budget) -> model,
    called once per actor;
    model(k, decoded) -> the shard's result for job.write. All four must pickle (module-level functions,
    functools.partial of them). Raises Unschedulable, or JobFailed when a task or call raised."""
    started = time.monotonic()
    todo = job.pending()
    summary = Summary(found_done=len(job.shards) - len(todo))
    if not todo:
        return summary
    joined = connect(opts.address)
    total_cpu = ray.cluster_resources().get("CPU", 0.0)
    cpus = actor_cpus(opts, total_cpu)
    check_resources(opts, cpus, opts.wait_s if opts.wait_s is not None else (60.0 if joined else 0.0))
    summary.startup_s = round(time.monotonic() - started, 3)
    log.info(
        "job started",
        extra={
            "job": desc,
            "shards": len(todo),
            "found_done": summary.found_done,
            "workers": opts.workers,
            "actor_cpus": cpus,
            "actor_gpus": opts.num_gpus,
            "decode": "tasks" if opts.decode_tasks else "actors",
            "cluster_cpus": total_cpu,
        },
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts clips; Ray's per-operator bars would interleave with it
    ctx.print_on_execution_start = False
    items = ray.data.from_items(
        [{"shard": k, "payload": pickle.dumps(payload(k), protocol=pickle.HIGHEST_PROTOCOL)} for k in todo],
        override_num_blocks=len(todo),  # a block per shard: each is scheduled as soon as there is room
    )
    if opts.decode_tasks:
        # Where the actors' resources equal a decode task's (1 CPU, no GPU), Ray Data fuses the two stages into the
        # actors (its operator fusion): that is --decode actors, and the resource check above is then conservative.
        items = items.map(_decode, fn_kwargs={"decode": decode}, num_cpus=DECODE_CPUS)
    done = items.map(
        _ModelActor,
        fn_constructor_kwargs=dict(
            make_model=make_model,
            decode=None if opts.decode_tasks else decode,
            folder=job.folder,
            ext=job.ext,
            write=job.write,
            delay_s=float(os.environ.get(DELAY_ENV, "0")),
        ),
        # one shard running and one waiting per actor: fed without gaps, and at most one shard of imbalance at the end
        compute=ray.data.ActorPoolStrategy(size=opts.workers, max_tasks_in_flight_per_actor=2),
        num_cpus=cpus,
        num_gpus=opts.num_gpus or None,
    )
    bar = _bar(job, todo, desc, opts.progress)
    try:
        for row in done.iter_rows():
            k = int(row["shard"])
            if k not in summary.computed:  # Ray hands each row on once; this only guards the count
                summary.computed.append(k)
                summary.workers[row["worker"]] = summary.workers.get(row["worker"], 0) + 1
                bar.update(len(job.shards[k]))
            if summary.first_shard_s is None:
                summary.first_shard_s = round(time.monotonic() - started, 3)
    except ray.exceptions.RayError as e:
        raise JobFailed(_cause(e)) from e
    finally:
        bar.close()
    summary.seconds = round(time.monotonic() - started, 3)
    log.info(
        "job computed",
        extra={
            "job": desc,
            "shards": len(summary.computed),
            "seconds": summary.seconds,
            "startup_s": summary.startup_s,
            "first_shard_s": summary.first_shard_s,
            "workers": summary.workers,
        },
    )
    return summary


def _cause(e: BaseException) -> str:
    """The user code's exception inside Ray's wrappers (RayTaskError -> UserCodeException -> ValueError ...)."""
    while e.__cause__ is not None:
        e = e.__cause__
    inner = getattr(e, "cause", None)
    return str(inner) if isinstance(inner, BaseException) else str(e).strip().splitlines()[-1]


def _bar(job: Job, todo: list[int], desc: str, enabled: bool):
    from tqdm import tqdm

    total = len(job.ids)
    return tqdm(
        total=total, initial=total - sum(len(job.shards[k]) for k in todo), desc=desc, unit="clip", disable=not enabled
    )


# --- command line: the options both jobs take -----------------------------------------------------------------------

CLUSTER_HELP = """\
where it runs (Ray):
  Without --address (or $RAY_ADDRESS) a local Ray starts with this machine's cores and stops with the command.
  --address auto joins the Ray cluster this machine belongs to (started with `ray start`, or a KubeRay pod:
  deploy/ray/); --address ray://HOST:10001 joins one through Ray Client. On a cluster the job folder must be on
  storage every node mounts at the same path. Audio is decoded by Ray tasks (1 CPU each) and streamed to --workers
  model actors with --num-cpus / --num-gpus each. A request the cluster cannot hold fails at once naming what it
  has (after --wait-resources seconds for nodes still joining). Rerun the same command to resume: finished shards
  are kept, the rest computed.
"""


def add_arguments(parser, gpus_from: str | None = None) -> None:
    """--address, --workers, --num-cpus, --num-gpus, --wait-resources, --no-progress."""
    g = parser.add_argument_group("Ray: where and on how many actors ('where it runs' in this help)")
    g.add_argument(
        "--address", help="Ray cluster to join: auto, or ray://HOST:10001 (default: $RAY_ADDRESS, else a local Ray)"
    )
    g.add_argument("--workers", type=int, default=1, help="model actors in the pool (default 1)")
    g.add_argument(
        "--num-cpus",
        type=float,
        help="CPUs per model actor, fractions allowed; its thread count is the whole part, at least 1 (default 1, "
        "or an equal share of the cluster's CPUs, less one for decode tasks when there are decode tasks)",
    )
    g.add_argument(
        "--num-gpus",
        type=float,
        help="GPUs per model actor (default 0" + (f"; 1 with {gpus_from}" if gpus_from else "") + ")",
    )
    g.add_argument(
        "--wait-resources",
        type=float,
        metavar="S",
        help="seconds to wait for the actors' resources to appear (nodes joining) before failing "
        "(default 0 locally, 60 with --address)",
    )
    g.add_argument(
        "--decode",
        choices=DECODE_WHERE,
        default="tasks",
        help="where audio is decoded: Ray tasks apart from the model actors (default), or in the actors before the "
        "model (CPU-only actors: no decode processes, no copy of the audio through the object store)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def options(args, gpus: float = 0.0) -> RayOptions:
    """RayOptions from add_arguments' options; gpus: the default --num-gpus (1 when a GPU device was asked for)."""
    return RayOptions(
        address=args.address,
        workers=args.workers,
        num_cpus=args.num_cpus,
        num_gpus=gpus if args.num_gpus is None else args.num_gpus,
        wait_s=args.wait_resources,
        progress=not args.no_progress,
        decode=args.decode,
    )
