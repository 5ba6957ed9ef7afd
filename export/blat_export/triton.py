"""A Triton model repository from a bundle, and a launcher for the tritonserver inside the nvidia-pytriton wheel.

Two flavours share model names, tensor names, dims and dtypes. "gpu": the graphs run on the onnxruntime backend
(KIND_GPU, optional TensorRT FP16 with explicit shape profiles). "cpu": each graph is a Python-backend model that
runs the same model.onnx with onnxruntime, for the tritonserver that ships in the nvidia-pytriton wheel (Python
backend only). Both add `captioner`, a Python BLS model running blat_contract/beam.py over the two captioner graphs.

Layout: <repo>/<model>/config.pbtxt rendered from the packaged triton_templates/<model>/config.pbtxt.tmpl,
<repo>/<model>/warmup/ (warm-up inputs), and <repo>/<model>/<version>/ with the model files and version_info.json.
Versions are integers shared by all models of one bundle; `version_policy` keeps the newest `keep_versions`.
This module is torch-free (onnx is imported only to read axis sizes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

import blat_contract
from blat_contract.bundle import MANIFEST, BundleManifest, GraphInfo, read_bundle, sha256_file
from blat_contract.vocab import START

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "triton_templates"  # <model>/config.pbtxt.tmpl, package data
MODEL_CODE = Path(__file__).resolve().parent / "triton_models"  # model.py sources copied into version dirs
GRAPHS = ("audio_encoder", "audio_pool", "audio_tagger", "text_encoder", "captioner_encoder", "captioner_decoder")
CAPTIONER = "captioner"
VERSION_INFO = "version_info.json"
DYNAMIC_AXES = frozenset("BSNTL")  # batch, steps, samples, frames, tokens; other symbolic axes are model sizes
TRITON_DTYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}


class RepositoryError(ValueError):
    """The repository cannot take this bundle as written (conflicting version, tensor signature or flavour)."""


@dataclass(frozen=True)
class TritonSettings:
    flavor: str = "gpu"  # "gpu": onnxruntime backend on KIND_GPU; "cpu": Python-backend twins on KIND_CPU
    max_batch_size: int = 32  # largest batch Triton forms; also the decoder's live hypotheses per BLS call
    max_queue_delay_us: int = 2000  # dynamic batching: how long a request waits for others to join it
    instance_count: int = 1  # model instances (per GPU with KIND_GPU)
    keep_versions: int = 2  # version_policy latest N: a new bundle is served beside the previous one
    tensorrt: bool = False  # gpu only: TensorRT execution accelerator, FP16, explicit min/opt/max shapes
    trt_workspace_bytes: int = 1 << 30  # TensorRT builder workspace
    trt_cache_dir: str | None = None  # engine cache on the Triton host; None rebuilds engines at every load
    max_audio_seconds: float = 30.0  # longest clip of the TensorRT shape profile
    warmup: bool = True  # model_warmup: one zero clip / one text per graph before the model reports ready
    intra_op_threads: int = 0  # ONNX Runtime threads per instance; 0 is ONNX Runtime's default (all cores)

    def __post_init__(self):
        if self.flavor not in ("gpu", "cpu"):
            raise ValueError(f"flavor must be 'gpu' or 'cpu', got {self.flavor!r}")
        if self.tensorrt and self.flavor != "gpu":
            raise ValueError("tensorrt needs the gpu flavour (the onnxruntime backend)")
        if min(self.max_batch_size, self.instance_count, self.keep_versions) < 1 or self.max_queue_delay_us < 0:
            raise ValueError("max_batch_size, instance_count and keep_versions must be >= 1, max_queue_delay_us >= 0")


# ---------------------------------------------------------------------------------------------------- axis sizes


def _axis_sizes(bundle_dir: Path, manifest: BundleManifest) -> dict[str, int]:
    """Sizes of the fixed symbolic axes (D, C, d, V) as the ONNX graphs declare them."""
    import onnx

    sizes: dict[str, int] = {}
    for name, info in manifest.graphs.items():
        graph = onnx.load(str(bundle_dir / info.file), load_external_data=False).graph
        declared = {
            v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.output]
        }
        for spec in (*info.inputs, *info.outputs):
            for axis, size in zip(spec.shape, declared.get(spec.name, [])):
                if isinstance(axis, str) and axis not in DYNAMIC_AXES and size:
                    if sizes.setdefault(axis, size) != size:
                        raise RepositoryError(f"{name}.{spec.name}: axis {axis} is {size}, elsewhere {sizes[axis]}")
    needed = {
        a
        for info in manifest.graphs.values()
        for s in (*info.inputs, *info.outputs)
        for a in s.shape
        if isinstance(a, str) and a not in DYNAMIC_AXES
    }
    if needed - set(sizes):
        raise RepositoryError(f"{bundle_dir}: no graph declares a size for axes {sorted(needed - set(sizes))}")
    return sizes


def _axis_ranges(graph: str, manifest: BundleManifest, settings: TritonSettings) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of each dynamic axis of `graph`: the TensorRT profile; opt is also the warm-up shape."""
    audio, sr = manifest.audio, manifest.audio.sample_rate
    n = (audio.min_samples, int(audio.clip_seconds * sr), int(max(settings.max_audio_seconds, audio.clip_seconds) * sr))
    frames = lambda samples: int(samples / sr / audio.frame_seconds) + 2  # noqa: E731 - an upper bound on T
    batch = (1, settings.max_batch_size, settings.max_batch_size)  # opt = max: tuned for full batches
    tokens = (1, manifest.text.max_tokens, manifest.text.max_tokens)
    if graph == "captioner_decoder":  # <start> + up to max_tokens words
        cap = manifest.captioner.max_tokens + 1
        tokens = (1, max(1, cap // 2), cap)
    return {"B": batch, "S": batch, "N": n, "T": (1, frames(n[1]), frames(n[2])), "L": tokens}


# -------------------------------------------------------------------------------------------------------- config


def _config_dims(shape: Sequence[str | int], sizes: dict[str, int]) -> tuple[list[int], bool]:
    """Bundle shape (batch axis first) -> Triton dims without the batch axis, and whether it needs a reshape."""
    dims = [-1 if a in DYNAMIC_AXES else sizes[a] if isinstance(a, str) else int(a) for a in shape[1:]]
    return (dims, False) if dims else ([1], True)  # a (B,) tensor is dims [1] reshaped to []


def _tensor_entry(name: str, dtype: str, dims: list[int], reshape: bool) -> str:
    entry = f'{{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ]'
    return entry + (" reshape: { shape: [ ] } }" if reshape else " }")


def _signature(graph: GraphInfo, sizes: dict[str, int]) -> list[str]:
    """The config tensor entries a graph's bundle specs call for (what a template must contain)."""
    return [
        _tensor_entry(s.name, TRITON_DTYPES[s.dtype], *_config_dims(s.shape, sizes))
        for s in (*graph.inputs, *graph.outputs)
    ]


def _warmup(graph: str, info: GraphInfo, sizes: dict[str, int], ranges: dict) -> tuple[str, dict[str, np.ndarray]]:
    """A model_warmup block with one sample at the opt shape, and the files of its integer inputs (<model>/warmup/)."""
    opt = {axis: r[1] for axis, r in ranges.items()}
    values = {
        "lengths": opt["N"],
        "frame_lengths": opt["T"],
        "memory_lengths": opt["T"],
        "attention_mask": 1,
        "input_ids": 0,
        "tokens": START,
    }
    inputs, files = [], {}
    for spec in info.inputs:
        dims, _ = _config_dims(spec.shape, sizes)
        dims = [opt[a] if isinstance(a, str) and a in DYNAMIC_AXES else d for a, d in zip(spec.shape[1:], dims)] or [1]
        if spec.dtype == "float32":
            source = "zero_data: true"
        else:
            files[spec.name] = np.full(dims, values[spec.name], dtype="<i8")
            source = f'input_data_file: "{spec.name}"'
        inputs.append(
            f'    inputs {{ key: "{spec.name}" value: {{ data_type: {TRITON_DTYPES[spec.dtype]} '
            f"dims: [ {', '.join(map(str, dims))} ] {source} }} }}"
        )
    block = "model_warmup [ {\n" + f'    name: "{graph}_opt_shape" batch_size: 1\n' + "\n".join(inputs) + "\n} ]"
    return block, files


def _tensorrt(info: GraphInfo, sizes: dict[str, int], ranges: dict, settings: TritonSettings) -> str:
    """The onnxruntime backend's TensorRT accelerator (FP16) with one explicit shape profile."""

    def profile(i: int) -> str:
        return ",".join(
            f"{s.name}:"
            + "x".join(
                str(ranges[a][i] if a in DYNAMIC_AXES else sizes[a] if isinstance(a, str) else a) for a in s.shape
            )
            for s in info.inputs
        )

    params = {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(settings.trt_workspace_bytes),
        "trt_profile_min_shapes": profile(0),
        "trt_profile_opt_shapes": profile(1),
        "trt_profile_max_shapes": profile(2),
    }
    if settings.trt_cache_dir:
        params.update(trt_engine_cache_enable="1", trt_engine_cache_path=settings.trt_cache_dir)
    lines = "\n".join(f'      parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items())
    return (
        "optimization { execution_accelerators { gpu_execution_accelerator: [ {\n"
        f'      name: "tensorrt"\n{lines}\n}} ] }} }}'
    )


def render_config(
    model: str, manifest: BundleManifest, sizes: dict[str, int], settings: TritonSettings
) -> tuple[str, dict[str, np.ndarray]]:
    """config.pbtxt of `model` from its template, and the warm-up input files it names (for <model>/warmup/)."""
    template = string.Template((TEMPLATES / model / "config.pbtxt.tmpl").read_text())
    gpu = settings.flavor == "gpu"
    values: dict[str, Any] = {**sizes, **dataclasses.asdict(settings)}
    values.update(backend="onnxruntime" if gpu else "python", instance_kind="KIND_GPU" if gpu else "KIND_CPU")
    if model == CAPTIONER:
        values.update(beam_size=manifest.captioner.beam_size, max_tokens=manifest.captioner.max_tokens)
        return template.substitute(values), {}
    info, ranges = manifest.graphs[model], _axis_ranges(model, manifest, settings)
    flat = " ".join(template.substitute(values, deployment="").split())
    missing = [e for e in _signature(info, sizes) if e not in flat]
    if missing or flat.count("{ name: ") != len(info.inputs) + len(info.outputs):
        raise RepositoryError(
            f"{TEMPLATES / model}/config.pbtxt.tmpl does not match the bundle's {model} graph: "
            f"its tensors must be exactly {_signature(info, sizes)}"
        )
    blocks, files = [], {}
    if settings.intra_op_threads:
        blocks.append(
            f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{settings.intra_op_threads}" }} }}'
        )
    if settings.tensorrt:
        blocks.append(_tensorrt(info, sizes, ranges, settings))
    if settings.warmup:
        block, files = _warmup(model, info, sizes, ranges)
        blocks.append(block)
    return template.substitute(values, deployment="\n".join(blocks)), files


# ---------------------------------------------------------------------------------------------------- repository


def read_repository(repo_dir: str | Path) -> dict[int, dict[str, dict[str, Any]]]:
    """version -> model -> its version_info.json, for every version directory in the repository."""
    found: dict[int, dict[str, dict[str, Any]]] = {}
    for info in sorted(Path(repo_dir).glob(f"*/[0-9]*/{VERSION_INFO}")):
        if info.parent.name.isdigit():
            found.setdefault(int(info.parent.name), {})[info.parent.parent.name] = json.loads(info.read_text())
    return dict(sorted(found.items()))


def _fill_version(model: str, bundle_dir: Path, manifest: BundleManifest, settings: TritonSettings, out: Path) -> None:
    if model == CAPTIONER:
        shutil.copy(MODEL_CODE / "captioner.py", out / "model.py")
        shutil.copy(bundle_dir / manifest.captioner.vocab, out / "vocab.json")
        (out / "blat_contract").mkdir()
        for name in ("__init__.py", "beam.py", "vocab.py"):  # the same beam search as the gateway and torch side
            shutil.copy(Path(blat_contract.__file__).parent / name, out / "blat_contract" / name)
        return
    shutil.copy(bundle_dir / manifest.graphs[model].file, out / "model.onnx")
    if settings.flavor == "cpu":
        shutil.copy(MODEL_CODE / "onnx_model.py", out / "model.py")


def _check_compatible(existing: dict, signatures: dict[str, list[str]], flavor: str, bundle_id: str) -> None:
    """All versions of a model share one config.pbtxt: same flavour, same tensor entries."""
    for v, infos in existing.items():
        for m, info in infos.items():
            if m in signatures and (info["flavor"], info["io"]) != (flavor, signatures[m]):
                raise RepositoryError(
                    f"version {v} of {m} is a {info['flavor']} model of {info['bundle']} with "
                    f"other tensors than {bundle_id}; one config.pbtxt cannot serve both: pass "
                    "replace=True to remove the old versions"
                )


def write_repository(
    bundle_dir: str | Path,
    repo_dir: str | Path,
    settings: TritonSettings | None = None,
    *,
    version: int | None = None,
    replace: bool = False,
    **overrides: Any,
) -> Path:
    """Add `bundle_dir` to the Triton repository `repo_dir` as integer `version` (default: the next free one).

    `overrides` are TritonSettings fields (flavor="cpu", tensorrt=True, ...). Older versions stay and are served
    beside the new one (version_policy latest `keep_versions`) when their flavour and tensors match; otherwise a
    RepositoryError, unless `replace` removes them. If the newest version already holds this bundle, only the
    configs are rewritten (new settings apply to every version). Returns `repo_dir`.
    """
    settings = dataclasses.replace(settings or TritonSettings(), **overrides)
    bundle_dir, repo_dir = Path(bundle_dir), Path(repo_dir)
    manifest = read_bundle(bundle_dir)
    bundle_sha = sha256_file(bundle_dir / MANIFEST)
    models = [g for g in GRAPHS if g in manifest.graphs]
    if manifest.captioner and {"captioner_encoder", "captioner_decoder"} <= set(models):
        models.append(CAPTIONER)
    sizes = _axis_sizes(bundle_dir, manifest)
    signatures = {m: _signature(manifest.graphs[m], sizes) if m != CAPTIONER else [] for m in models}

    existing = read_repository(repo_dir)
    if not replace:
        _check_compatible(existing, signatures, settings.flavor, manifest.id)
    newest = max(existing, default=0)  # numbers keep rising after a replace: a version never names two bundles
    already = (
        not replace
        and bool(existing)
        and version in (None, newest)
        and all(existing[newest].get(m, {}).get("bundle_sha256") == bundle_sha for m in models)
    )
    version = newest if already else version if version is not None else newest + 1
    if not already and (version < 1 or (version in existing and not replace)):
        raise RepositoryError(f"{repo_dir}: version {version} exists or is invalid (versions are integers >= 1)")

    configs = {m: render_config(m, manifest, sizes, settings) for m in models}  # fails before any write
    repo_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repo_dir.name}.staging-", dir=repo_dir.parent))
    try:
        for m in [] if already else models:  # stage every version directory before touching the repository
            (staging / m).mkdir()
            _fill_version(m, bundle_dir, manifest, settings, staging / m)
            info = {
                "model": m,
                "version": version,
                "flavor": settings.flavor,
                "bundle": manifest.id,
                "bundle_sha256": bundle_sha,
                "io": signatures[m],
                "graph_sha256": manifest.files[manifest.graphs[m].file] if m in manifest.graphs else None,
                "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (staging / m / VERSION_INFO).write_text(json.dumps(info, indent=2) + "\n")
        for m in models:  # the config first: a polling Triton never sees a version without its config
            model_dir = repo_dir / m
            if replace:
                for old in [*model_dir.glob("[0-9]*"), model_dir / "warmup"]:
                    if old.is_dir() and (old.name.isdigit() or old.name == "warmup"):
                        shutil.rmtree(old)
            model_dir.mkdir(exist_ok=True)
            config, warmup = configs[m]
            for name, data in warmup.items():
                (model_dir / "warmup").mkdir(exist_ok=True)
                data.tofile(model_dir / "warmup" / name)
            (model_dir / "config.pbtxt.tmp").write_text(config)
            (model_dir / "config.pbtxt.tmp").replace(model_dir / "config.pbtxt")
            if not already:
                (staging / m).rename(model_dir / str(version))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "triton repository written",
        extra={
            "repo": str(repo_dir),
            "version": version,
            "bundle": manifest.id,
            "flavor": settings.flavor,
            "new_version": not already,
        },
    )
    return repo_dir


# -------------------------------------------------------------------------------------------------------- server


class TritonUnavailable(RuntimeError):
    """The tritonserver binary (nvidia-pytriton wheel) is missing or cannot run on this machine."""


class TritonStartError(RuntimeError):
    """tritonserver ran but did not become ready (a model failed to load, or the timeout passed)."""


# Signs in the log that the binary itself cannot run on this machine (rather than a bad repository or option).
_UNRUNNABLE = (
    "error while loading shared libraries",
    "cannot open shared object",
    "GLIBC_",
    "version `",
    "Illegal instruction",
    "Exec format error",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TritonProcess:
    """A running tritonserver on loopback; a context manager that stops it on exit."""

    process: subprocess.Popen
    grpc_port: int
    http_port: int
    metrics_port: int
    log_path: Path
    workdir: Path  # the backend directory, and the log unless one was given; stop() removes it

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log_tail(self, lines: int = 25) -> str:
        """Triton's error lines (E...), then the last `lines` lines of its log."""
        text = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        errors = [
            line
            for line in text
            if line[:1] == "E"
            and line[1:5].isdigit()
            or any(w in line.lower() for w in ("error:", "unrecognized", "failed to", "unavailable:"))
        ][:20]
        return "\n".join([*errors, "...", *text[-lines:]] if errors else text[-lines:])

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # Triton unloads its models and ends their stub processes
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):  # its own session: the server and its stubs only
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> TritonProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def pytriton_server_dir() -> Path:
    """pytriton/tritonserver inside the installed nvidia-pytriton wheel (bin/, backends/, python_backend_stubs/)."""
    spec = find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonUnavailable("nvidia-pytriton is not installed (pip install nvidia-pytriton)")
    server = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (server / "bin" / "tritonserver").is_file():
        raise TritonUnavailable(f"{server}/bin/tritonserver is missing")
    return server


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launching thread ends (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def launch_cpu_server(
    repo_dir: str | Path,
    *,
    grpc_port: int = 0,
    http_port: int = 0,
    metrics_port: int = 0,
    timeout_s: float = 120.0,
    log_path: str | Path | None = None,
    extra_args: Sequence[str] = (),
    die_with_parent: bool = False,
) -> TritonProcess:
    """Start the wheel's tritonserver on `repo_dir` (a CPU-flavour repository) and wait until it is ready.

    Ports 0 pick free ones. The Python backend's stub embeds the libpython of *this* interpreter and, finding
    `python3` first on PATH, adopts this interpreter's environment (a venv's site-packages: numpy < 2, onnxruntime).
    `die_with_parent` (Linux) stops the server if the launching thread dies without stop(). It needs a
    preexec_fn, which forces fork(): with a gRPC channel open in this process, grpcio's fork handlers can
    deadlock, so it is off by default; launch from a thread that outlives the server when you turn it on. Raises
    TritonUnavailable when the binary cannot run here,
    TritonStartError when it runs but does not become ready.
    """
    server = pytriton_server_dir()
    stub = (
        server
        / "python_backend_stubs"
        / f"{sys.version_info.major}.{sys.version_info.minor}"
        / "triton_python_backend_stub"
    )
    if not stub.is_file():
        raise TritonUnavailable(f"nvidia-pytriton has no Python-backend stub for Python {sys.version.split()[0]}")
    workdir = Path(tempfile.mkdtemp(prefix="tritonserver-"))
    shutil.copytree(
        server / "backends" / "python", workdir / "backends" / "python", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(stub, workdir / "backends" / "python" / "triton_python_backend_stub")
    log_path = Path(log_path) if log_path else workdir / "tritonserver.log"

    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR"), str(server.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ inside the repository's version directories
    ports = [p or _free_port() for p in (grpc_port, http_port, metrics_port)]
    cmd = [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={Path(repo_dir).resolve()}",
        f"--backend-directory={workdir / 'backends'}",
        "--disable-auto-complete-config",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={ports[0]}",
        "--http-address=127.0.0.1",
        f"--http-port={ports[1]}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={ports[2]}",
        "--exit-timeout-secs=5",
        *extra_args,
    ]
    log.info("starting tritonserver", extra={"repo": str(repo_dir), "grpc_port": ports[0], "log": str(log_path)})
    try:
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                cmd,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
    except OSError as e:
        shutil.rmtree(workdir, ignore_errors=True)
        raise TritonUnavailable(f"cannot execute {cmd[0]}: {e}") from None
    triton = TritonProcess(process, *ports, log_path=log_path, workdir=workdir)

    deadline = time.monotonic() + timeout_s
    while not triton.ready():
        if process.poll() is not None or time.monotonic() > deadline:
            code = process.poll()
            tail = triton.log_tail()
            triton.stop()
            if code is not None and (code < 0 or code in (126, 127) or any(m in tail for m in _UNRUNNABLE)):
                raise TritonUnavailable(f"tritonserver cannot run here (exit code {code}):\n{tail}")
            why = f"exited with code {code}" if code is not None else f"was not ready after {timeout_s:.0f} s"
            raise TritonStartError(f"tritonserver {why}:\n{tail}")
        time.sleep(0.2)
    return triton
