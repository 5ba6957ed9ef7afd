"""Server fixtures: the real gateway (`python -m blat_gateway`) as a subprocess on free loopback ports, over ONNX
Runtime
or over a real tritonserver (the nvidia-pytriton wheel's, serving the CPU-flavour repository of the tiny bundle).

`server` is module-scoped and parametrised over both backends: a module that uses it runs once per backend. It is an
in-process gateway (`inproc_gateway`): the same app, middleware, uvicorn protocol and gRPC server that
`python -m blat_gateway` runs, built by blat_gateway.__main__.start_gateway inside the test process, serving on free
loopback ports from threads. Starting one costs a fraction of a second; a gateway process costs seconds of imports.
`inproc_gateway` / `running_inproc` start extra in-process gateways with their own settings (limits, keys, queues).

`start_server` / `running_server` start real gateway processes. Use them only where the process itself is what is
tested: kill -9 and signals, exit codes and start-up failures, process memory (RSS), several gateways sharing an
index or a Milvus server, the installed client or CLI against a separate server, the README's examples.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ["onnxruntime", "triton"]
RATE = 32_000  # the tiny bundle's sample rate


# ------------------------------------------------------------------------------------------------------------ audio


def wav(samples: np.ndarray, rate: int = RATE, subtype: str = "FLOAT") -> bytes:
    """A WAV file of mono float samples (FLOAT keeps them exactly: the server decodes the same values)."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, np.float32), rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def synth_clip(seed: int, seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    """A distinct synthetic sound per seed: one to three chirps with tremolo over coloured noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = np.zeros_like(t)
    for _ in range(int(rng.integers(1, 4))):
        f0 = rng.uniform(60, 6000)
        f1 = f0 * rng.uniform(0.5, 2.0)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
        tremolo = 1 + rng.uniform(0, 1) * np.sin(2 * np.pi * rng.uniform(0.5, 12) * t)
        x += rng.uniform(0.05, 0.4) * tremolo * np.sin(phase)
    width = int(rng.integers(1, 64))
    x += rng.uniform(0, 0.3) * np.convolve(rng.standard_normal(len(t)), np.ones(width) / width, "same")
    return (x / max(1e-3, float(np.abs(x).max())) * rng.uniform(0.2, 0.9)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The gateway starts through this trampoline: it asks for SIGKILL when the test process dies (Linux
# PR_SET_PDEATHSIG, kept across exec), so a killed test run leaves no gateway behind, then execs `python -m
# blat_gateway`.
# Not a preexec_fn: with one, subprocess must fork() and run the pthread_atfork handlers of grpcio, which deadlock
# while gRPC channels of the test process are busy; without one it uses vfork() and no handler runs.
_TRAMPOLINE = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform == "linux":
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
if os.getppid() != parent:  # the test process is already gone
    sys.exit(1)
os.execv(sys.executable, [sys.executable, "-m", "blat_gateway", *sys.argv[2:]])
"""


@dataclass
class ServerProcess:
    """A gateway subprocess: `python -m blat_gateway` on 127.0.0.1 with its own index directory and ingest root."""

    proc: subprocess.Popen
    http_url: str
    grpc_address: str
    index_dir: Path
    roots: Path  # the ingest root (a folder the server may read)
    bundle: Path
    log_path: Path
    backend: str
    env: dict[str, str] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_text(self) -> str:
        """Everything the process wrote to stdout and stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the gateway exited with code {self.proc.returncode} before it was ready:\n{self.log_tail()}"
                    )
                try:
                    if http.get(f"{self.http_url}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"the gateway was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")
                time.sleep(0.1)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def restart(self, ready_timeout_s: float = 90.0) -> ServerProcess:
        """A new gateway process with the same settings, index directory and roots (new ports)."""
        self.stop()
        return _spawn(
            self.bundle, self.index_dir, self.roots, self.backend, self.env, self.log_path.parent, ready_timeout_s
        )


def server_env(
    roots: Path, backend: str = "onnxruntime", triton_url: str | None = None, env: dict[str, str] | None = None
) -> dict[str, str]:
    """The gateway's environment: this one without BLAT_SERVER_* settings, plus the test's."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("BLAT_SERVER_")}
    out.update(PYTHONUNBUFFERED="1", BLAT_SERVER_INGEST_ROOTS=f'["{roots}"]', BLAT_SERVER_BACKEND=backend)
    if backend == "triton":
        if not triton_url:
            raise ValueError("the triton backend needs triton_url")
        out["BLAT_SERVER_TRITON__URL"] = triton_url
    out.update(env or {})
    return out


def _spawn(
    bundle: Path, index_dir: Path, roots: Path, backend: str, env: dict[str, str], log_dir: Path, ready_timeout_s: float
) -> ServerProcess:
    for attempt in range(3):  # a free port can be taken by someone else before the server binds it
        http_port, grpc_port = free_port(), free_port()
        log_path = log_dir / f"gateway-{http_port}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _TRAMPOLINE,
                    str(os.getpid()),
                    "--bundle",
                    str(bundle),
                    "--index-dir",
                    str(index_dir),
                    "--http-port",
                    str(http_port),
                    "--grpc-port",
                    str(grpc_port),
                ],
                cwd=ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        server = ServerProcess(
            proc,
            f"http://127.0.0.1:{http_port}",
            f"127.0.0.1:{grpc_port}",
            Path(index_dir),
            Path(roots),
            Path(bundle),
            log_path,
            backend,
            env,
        )
        try:
            server.wait_ready(ready_timeout_s)
            return server
        except RuntimeError:
            tail = server.log_tail().lower()
            if attempt < 2 and ("address already in use" in tail or "failed to bind" in tail):
                continue
            raise
    raise AssertionError("unreachable")


def start_server(
    bundle: Path,
    tmp: Path,
    *,
    backend: str = "onnxruntime",
    triton_url: str | None = None,
    env: dict[str, str] | None = None,
    index_dir: Path | None = None,
    roots: Path | None = None,
    ready_timeout_s: float = 90.0,
) -> ServerProcess:
    """Start a gateway under `tmp` (index/, roots/, logs) and wait until /readyz answers 200."""
    tmp = Path(tmp)
    index_dir = Path(index_dir or tmp / "index")
    roots = Path(roots or tmp / "roots")
    index_dir.mkdir(parents=True, exist_ok=True)
    roots.mkdir(parents=True, exist_ok=True)
    return _spawn(
        Path(bundle), index_dir, roots, backend, server_env(roots, backend, triton_url, env), tmp, ready_timeout_s
    )


@contextlib.contextmanager
def running_server(bundle: Path, tmp: Path, **kwargs):
    server = start_server(bundle, tmp, **kwargs)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------- in-process


@dataclass
class InProcessGateway:
    """A gateway inside the test process: the app `python -m blat_gateway` serves (FrontDoor middleware and the
    guarded h11 protocol included), on a uvicorn server in a thread, and its gRPC server, both on free loopback ports.
    Same attributes as ServerProcess where they make sense (http_url, grpc_address, index_dir, roots, stop, ...);
    `gateway` and `app` give tests the objects themselves (metrics, counters)."""

    gateway: object = field(repr=False)
    app: object = field(repr=False)
    http_url: str
    grpc_address: str
    index_dir: Path
    roots: Path
    bundle: Path
    backend: str
    settings: object = field(repr=False)
    _uvicorn: object = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _grpc: object = field(repr=False)
    _env: dict = field(default_factory=dict, repr=False)  # inproc_gateway's own arguments, for restart
    _log: _LogRecorder | None = field(default=None, repr=False)
    _stopped: bool = False

    @property
    def pid(self) -> int:
        return os.getpid()

    def alive(self) -> bool:
        return not self._stopped and self._thread.is_alive()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_text(self) -> str:
        """The warnings and errors logged in this process while the gateway ran, tracebacks included (the log of an
        in-process gateway is the test process's)."""
        return self._log.text() if self._log else ""

    def http(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.http_url, timeout=timeout)

    def stop(self, timeout_s: float = 15.0) -> int:
        """The clean shutdown `python -m blat_gateway` runs on SIGTERM; returns 0 as its exit code would be."""
        if self._stopped:
            return 0
        self._stopped = True
        from blat_gateway.__main__ import stop_gateway

        if self._log:
            self._log.detach()
        self._uvicorn.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._uvicorn.force_exit = True
            self._thread.join(timeout_s)
        stop_gateway(self.gateway, self._grpc)
        return 1 if self._thread.is_alive() else 0

    kill = stop

    def restart(self, ready_timeout_s: float = 90.0) -> InProcessGateway:
        """A new in-process gateway with the same settings, index directory and roots (new ports)."""
        self.stop()
        return inproc_gateway(
            self.bundle,
            self.index_dir.parent,
            index_dir=self.index_dir,
            roots=self.roots,
            ready_timeout_s=ready_timeout_s,
            **self._env,
        )


class _LogRecorder(logging.Handler):
    """Keeps the formatted WARNING+ records of the whole process (the gateway's and uvicorn's loggers), as a
    process's log would hold them."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []
        logging.getLogger().addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self)


def inproc_gateway(
    bundle: Path,
    tmp: Path,
    *,
    backend: str = "onnxruntime",
    triton_url: str | None = None,
    env: dict[str, str] | None = None,
    index_dir: Path | None = None,
    roots: Path | None = None,
    ready_timeout_s: float = 90.0,
) -> InProcessGateway:
    """Start an in-process gateway under `tmp` with the settings `start_server` would give a process (the same
    BLAT_SERVER_* `env`, read by load_settings from a dict, not from os.environ) and wait until /readyz answers 200."""
    import uvicorn

    from blat_gateway.__main__ import start_gateway, uvicorn_options
    from blat_gateway.settings import load_settings

    tmp = Path(tmp)
    index_dir = Path(index_dir or tmp / "index")
    roots = Path(roots or tmp / "roots")
    index_dir.mkdir(parents=True, exist_ok=True)
    roots.mkdir(parents=True, exist_ok=True)
    environ = {k: v for k, v in server_env(roots, backend, triton_url, env).items() if k.startswith("BLAT_SERVER_")}
    settings = load_settings(
        None, environ=environ, bundle=str(bundle), index_dir=str(index_dir), host="127.0.0.1", http_port=0, grpc_port=0
    )
    recorder = _LogRecorder()
    gateway, grpc_server, grpc_port, app = start_gateway(settings)
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        http_port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings)))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{http_port}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + ready_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process gateway's uvicorn did not start")
            time.sleep(0.01)
    except BaseException:
        from blat_gateway.__main__ import stop_gateway

        recorder.detach()
        sock.close()  # on success uvicorn listens on it, and closes it when it stops
        stop_gateway(gateway, grpc_server, grace_s=0)
        raise
    gw = InProcessGateway(
        gateway,
        app,
        f"http://127.0.0.1:{http_port}",
        f"127.0.0.1:{grpc_port}",
        index_dir,
        roots,
        Path(bundle),
        backend,
        settings,
        server,
        thread,
        grpc_server,
        dict(backend=backend, triton_url=triton_url, env=env),
        recorder,
    )
    with httpx.Client(base_url=gw.http_url, timeout=2.0) as http:
        while http.get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                gw.stop()
                raise RuntimeError(f"the in-process gateway was not ready after {ready_timeout_s:.0f} s")
            time.sleep(0.05)
    return gw


@contextlib.contextmanager
def running_inproc(bundle: Path, tmp: Path, **kwargs):
    gateway = inproc_gateway(bundle, tmp, **kwargs)
    try:
        yield gateway
    finally:
        gateway.stop()


# ------------------------------------------------------------------------------------------------------- triton


def launch_triton(repo: Path, **kwargs):
    """A ready tritonserver on `repo`. Skips when the binary cannot run on this machine (TritonUnavailable); any
    other failure to start fails the test with Triton's log tail."""
    from blat_export.triton import TritonStartError, TritonUnavailable, launch_cpu_server

    kwargs.setdefault("timeout_s", 120)
    # die_with_parent=False: its preexec_fn would make subprocess fork() and run grpcio's atfork handlers, which
    # can deadlock the test process while it holds gRPC channels (seen here: a hang inside Popen).
    kwargs.setdefault("die_with_parent", False)
    try:
        return launch_cpu_server(repo, **kwargs)
    except TritonUnavailable as e:
        pytest.skip(f"the nvidia-pytriton tritonserver cannot run here: {e}")
    except TritonStartError as e:
        pytest.fail(f"tritonserver did not start: {e}", pytrace=False)


@pytest.fixture(scope="session")
def triton_repo(tiny_bundle, tmp_path_factory) -> Path:
    """The CPU-flavour Triton repository of the tiny bundle (one ONNX Runtime thread per model instance)."""
    from blat_export.triton import write_repository

    return write_repository(tiny_bundle, tmp_path_factory.mktemp("triton") / "repo", flavor="cpu", intra_op_threads=1)


@pytest.fixture(scope="session")
def triton(triton_repo):
    """A tritonserver shared by the tests that do not stop it."""
    process = launch_triton(triton_repo)
    with process:
        yield process


# ------------------------------------------------------------------------------------------------------ gateway


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tiny_bundle, tmp_path_factory) -> InProcessGateway:
    """The gateway over each backend in turn (module-scoped: one in-process start per backend and module)."""
    backend = request.param
    triton_url = request.getfixturevalue("triton").grpc_url if backend == "triton" else None
    tmp = tmp_path_factory.mktemp(f"gateway-{backend}")
    try:
        gateway = inproc_gateway(tiny_bundle, tmp, backend=backend, triton_url=triton_url)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield gateway
    code = gateway.stop()
    assert code == 0, "the in-process gateway did not stop cleanly"
