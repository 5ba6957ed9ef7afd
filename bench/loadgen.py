"""What the load benches share: the gateway as a subprocess, a lean asyncio HTTP/1.1 client, closed and open loops,
and latency summaries.

Why not httpx or locust for the load: the client runs on the same 2 cores as the gateway, so every microsecond it
spends per request is taken from the server being measured. httpx's pool slowed down badly with thousands of
connections in one process (its own delays read as 38 s server latencies in the first soak), and locust's gevent
workers cost several times more CPU per request than these ~60 lines of asyncio. `RawHttp` writes each request by
hand on kept-alive loopback connections and reads Content-Length answers; nothing else.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
Result = tuple[int, float]  # (HTTP status, 0 when no answer; seconds from the first byte sent to the last received)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    """`python -m blat_gateway` as a subprocess with its own ports, index and ingest root; `env` adds BLAT_SERVER_*."""

    def __init__(self, bundle: Path, work: Path, **env: str):
        self.bundle, self.work, self.extra = bundle, work, env
        self.index, self.roots = work / "index", work / "roots"
        self.index.mkdir(parents=True, exist_ok=True)
        self.roots.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> GatewayProcess:
        import httpx

        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLAT_SERVER_")}
        env.update(BLAT_SERVER_INGEST_ROOTS=json.dumps([str(self.roots)]), PYTHONUNBUFFERED="1", **self.extra)
        log = open(self.work / f"gateway-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "blat_gateway",
                "--bundle",
                str(self.bundle),
                "--index-dir",
                str(self.index),
                "--http-port",
                str(self.port),
                "--grpc-port",
                str(self.grpc_port),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}; see {log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("gateway not ready in time")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(30)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wav_bytes(seconds: float, rate: int, seed: int) -> bytes:
    """A tone plus noise as a float WAV: decodes exactly, different per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(len(t))
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


class RawHttp:
    """A lean HTTP/1.1 client: a free-list of kept-alive loopback connections (at most `cap` open), hand-written
    requests, Content-Length answers."""

    def __init__(self, url: str, cap: int):
        self.host, self.port = url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1])
        self.idle: list = []
        self.open, self.cap = 0, cap
        self.freed = asyncio.Condition()

    async def _take(self):
        async with self.freed:
            while not self.idle and self.open >= self.cap:
                await self.freed.wait()
            if self.idle:
                return self.idle.pop()
            self.open += 1
        return await asyncio.open_connection(self.host, self.port)

    async def _give(self, conn, reusable: bool) -> None:
        async with self.freed:
            if reusable:
                self.idle.append(conn)
            else:
                self.open -= 1
                conn[1].close()
            self.freed.notify()

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> Result:
        """(status, seconds from the request's first byte on the wire to its answer's last byte); status 0 = no
        answer."""
        conn = await self._take()
        reader, writer = conn
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        t0 = time.monotonic()
        try:
            writer.write(head + body)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and "close" in value.lower():
                    close = True
            await reader.readexactly(length)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            await self._give(conn, False)
            status = 0
        else:
            await self._give(conn, not close)
        return status, time.monotonic() - t0

    def close(self) -> None:
        for conn in self.idle:
            conn[1].close()
        self.idle.clear()


Send = Callable[[RawHttp, int], Awaitable[Result]]  # (client, request number) -> result


async def closed_loop(url: str, send: Send, concurrency: int, seconds: float, warmup_s: float = 0.0) -> list[Result]:
    """`concurrency` workers, each sending its next request when the last one is answered, for `seconds` (after
    `warmup_s` whose results are dropped). Request numbers are unique across workers."""
    client = RawHttp(url, cap=concurrency)
    results: list[Result] = []
    start = time.monotonic()
    counted, stop = start + warmup_s, start + warmup_s + seconds
    counter = iter(range(1 << 62))

    async def worker() -> None:
        while (now := time.monotonic()) < stop:
            got = await send(client, next(counter))
            if now >= counted:
                results.append(got)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    client.close()
    return results


async def open_loop(url: str, send: Send, rps: float, seconds: float) -> tuple[list[Result], float, float]:
    """Requests started on a fixed schedule whatever the answers; (results, seconds until the last answer, p99 of
    how late the generator itself started requests: on shared cores the client can fall behind too)."""
    client = RawHttp(url, cap=1024)
    tasks, lags, t0, i = [], [], time.monotonic(), 0
    while (now := time.monotonic()) < t0 + seconds:
        due = t0 + i / rps
        if due > now:
            await asyncio.sleep(due - now)
        lags.append(time.monotonic() - due)
        tasks.append(asyncio.create_task(send(client, i)))
        i += 1
    results = list(await asyncio.gather(*tasks))
    client.close()
    lags.sort()
    return results, time.monotonic() - t0, lags[int(0.99 * (len(lags) - 1))]


def percentile_ms(sorted_s: list[float], q: float) -> float | None:
    return round(sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000, 1) if sorted_s else None


def summary(results: list[Result], seconds: float) -> dict:
    """rps of 200 answers, statuses, error rate (anything but 200), and latency percentiles of the 200s."""
    statuses: dict[str, int] = {}
    for s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    ok = sorted(t for s, t in results if s == 200)
    return {
        "requests": len(results),
        "rps_ok": round(len(ok) / seconds, 1),
        "statuses": statuses,
        "error_rate": round(1 - len(ok) / len(results), 4) if results else None,
        "p50_ms": percentile_ms(ok, 0.5),
        "p95_ms": percentile_ms(ok, 0.95),
        "p99_ms": percentile_ms(ok, 0.99),
    }
