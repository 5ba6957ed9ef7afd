"""Reliability soak against real gateway processes: load held, overload shed, faults survived, items lost.

    make soak                                            # the default bundle (runs/default/bundle)
    .venv/bin/python bench/soak.py --bundle runs/default/bundle --sustain-s 60 --json soak.json

Phases, each against a `python -m server` subprocess on loopback (clients: asyncio + httpx):
  1. capacity   closed loop of text searches (80 %) and 2 s tag requests (20 %) at --concurrency for 10 s: the rps
                the gateway sustains on this machine;
  2. sustained  the same closed loop for --sustain-s: errors (must be 0) and the server's RSS, first and last;
  3. overload   open loop at 3x the capacity rps for 15 s: 200s, 429s (and how fast they came), p99 of the accepted
                against the deadline, then recovery (every request of a closing probe answers 200);
  4. backend    with --triton: the gateway over a real tritonserver under load; Triton is killed (503s, fast), then
                started again on the same ports (the gateway recovers on its own);
  5. kill -9    items added concurrently, the gateway SIGKILLed mid-stream, restarted: every acknowledged item must
                be there; then again with a rebuild running.
Prints one JSON object and a table. Figures go into BENCHMARKS.md with this command.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.bundle import read_bundle  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """`python -m server` as a subprocess with its own ports, index and ingest root."""

    def __init__(self, bundle: Path, work: Path, **env: str):
        self.bundle, self.work, self.extra = bundle, work, env
        self.index, self.roots = work / "index", work / "roots"
        self.index.mkdir(parents=True, exist_ok=True)
        self.roots.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> "Gateway":
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLAT_SERVER_")}
        env.update(BLAT_SERVER_INGEST_ROOTS=json.dumps([str(self.roots)]), PYTHONUNBUFFERED="1", **self.extra)
        log = open(self.work / f"gateway-{self.port}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "server", "--bundle", str(self.bundle), "--index-dir",
                                      str(self.index), "--http-port", str(self.port), "--grpc-port", str(free_port())],
                                     cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
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


def wav_bytes(seconds: float, rate: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(len(t))
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def mixed_request(i: int, clip: bytes):
    if i % 5 == 4:
        return "POST", "/v1/tag", {"content": clip, "params": {"top_k": 5}}
    return "POST", "/v1/search/text", {"json": {"query": f"a recording of sound number {i % 97}", "k": 10}}


async def one(client: httpx.AsyncClient, i: int, clip: bytes) -> tuple[int, float]:
    method, path, kwargs = mixed_request(i, clip)
    t0 = time.monotonic()
    try:
        r = await client.request(method, path, **kwargs)
        status = r.status_code
    except httpx.HTTPError:
        status = 0
    return status, time.monotonic() - t0


async def closed_loop(url: str, clip: bytes, concurrency: int, seconds: float) -> list[tuple[int, float]]:
    results: list[tuple[int, float]] = []
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as c:
        async def worker(w: int):
            i = w
            while time.monotonic() < stop:
                results.append(await one(c, i, clip))
                i += concurrency
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return results


class RawHttp:
    """A lean HTTP/1.1 client for the open loop: a free-list of kept-alive loopback connections (O(1) to take one, at
    most `cap` open), hand-written requests, Content-Length answers. httpx's pool slows down badly with thousands of
    connections in one process, and on shared cores that slowness would be measured as the server's latency."""

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

    async def request(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, float]:
        """(status, seconds from the request's first byte on the wire to its answer's last byte); 0 = no answer."""
        conn = await self._take()
        reader, writer = conn
        head = (f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        t0 = time.monotonic()
        try:
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
            status = int(status_line.split()[1])
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
            return 0, time.monotonic() - t0
        await self._give(conn, not close)
        return status, time.monotonic() - t0


async def open_loop(url: str, clip: bytes, rps: float, seconds: float) -> tuple[list[tuple[int, float]], float, float]:
    """Requests started on a fixed schedule whatever the answers; (results, seconds until the last answer, p99 of
    how late the generator itself started requests: on shared cores the client can fall behind too)."""
    client = RawHttp(url, cap=1024)

    async def send(i: int) -> tuple[int, float]:
        method, path, kwargs = mixed_request(i, clip)
        if "json" in kwargs:
            return await client.request(method, path, json.dumps(kwargs["json"]).encode(), "application/json")
        return await client.request(method, path + "?top_k=5", kwargs["content"], "audio/wav")

    tasks, lags, t0, i = [], [], time.monotonic(), 0
    while (now := time.monotonic()) < t0 + seconds:
        due = t0 + i / rps
        if due > now:
            await asyncio.sleep(due - now)
        lags.append(time.monotonic() - due)
        tasks.append(asyncio.create_task(send(i)))
        i += 1
    results = list(await asyncio.gather(*tasks))
    for conn in client.idle:
        conn[1].close()
    lags.sort()
    return results, time.monotonic() - t0, lags[int(0.99 * (len(lags) - 1))]


def summary(results: list[tuple[int, float]], seconds: float) -> dict:
    statuses: dict[str, int] = {}
    for s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    ok = sorted(t for s, t in results if s == 200)
    pct = (lambda q: round(ok[min(len(ok) - 1, int(q * len(ok)))] * 1000, 1) if ok else None)
    return {"requests": len(results), "rps_ok": round(len(ok) / seconds, 1), "statuses": statuses,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


def phase_load(gw: Gateway, clip: bytes, concurrency: int, sustain_s: float, deadline_s: float) -> dict:
    capacity = summary(asyncio.run(closed_loop(gw.url, clip, concurrency, 10.0)), 10.0)
    rss0 = gw.rss_mb()
    sustained = summary(asyncio.run(closed_loop(gw.url, clip, concurrency, sustain_s)), sustain_s)
    sustained.update(rss_mb_start=round(rss0, 1), rss_mb_end=round(gw.rss_mb(), 1))
    rate = 3 * capacity["rps_ok"]
    over, wall, lag = asyncio.run(open_loop(gw.url, clip, rate, 15.0))
    overload = summary(over, wall)
    shed = sorted(t for s, t in over if s == 429)
    overload.update(offered_rps=round(rate, 1), deadline_ms=deadline_s * 1000, wall_s=round(wall, 1),
                    generator_lag_p99_ms=round(lag * 1000, 1),
                    accepted_within_deadline=bool(overload["p99_ms"] is not None and overload["p99_ms"] < deadline_s * 1000),
                    p99_429_ms=round(shed[int(0.99 * (len(shed) - 1))] * 1000, 1) if shed else None)
    time.sleep(2)
    probe = asyncio.run(closed_loop(gw.url, clip, 4, 5.0))
    overload["recovered"] = all(s == 200 for s, _ in probe) and bool(probe)
    return {"capacity": capacity, "sustained": sustained, "overload": overload}


def phase_triton(bundle: Path, work: Path, clip: bytes) -> dict:
    from export.triton import launch_cpu_server, write_repository

    repo = write_repository(bundle, work / "triton-repo", flavor="cpu", intra_op_threads=1)
    ports = dict(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    triton = launch_cpu_server(repo, timeout_s=300, **ports)
    gw = Gateway(bundle, work / "gw-triton", BLAT_SERVER_BACKEND="triton",
                 BLAT_SERVER_TRITON__URL=triton.grpc_url).start()
    try:
        before = summary(asyncio.run(closed_loop(gw.url, clip, 4, 5.0)), 5.0)
        triton.process.kill()
        triton.process.wait(30)
        down = asyncio.run(closed_loop(gw.url, clip, 4, 5.0))
        t_restart = time.monotonic()
        triton = launch_cpu_server(repo, timeout_s=300, **ports)
        restart_s = time.monotonic() - t_restart
        t0, recovered_after = time.monotonic(), None
        while time.monotonic() - t0 < 60:
            if all(s == 200 for s, _ in asyncio.run(closed_loop(gw.url, clip, 2, 1.0))):
                recovered_after = round(time.monotonic() - t0, 1)
                break
        down_sorted = sorted(t for _, t in down)
        return {"before": before, "down": summary(down, 5.0),
                "down_p99_ms": round(down_sorted[int(0.99 * (len(down_sorted) - 1))] * 1000, 1) if down else None,
                "triton_restart_s": round(restart_s, 1), "recovered_s_after_restart": recovered_after}
    finally:
        gw.stop()
        triton.stop()


async def add_items(url: str, clips: list[bytes], acknowledged: list[str], prefix: str, stop_after_s: float):
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        async def worker(w: int):
            for i in range(w, len(clips), 4):
                item = f"{prefix}-{i}"
                try:
                    r = await c.post("/v1/items", params={"id": item}, content=clips[i])
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 201:
                    acknowledged.append(item)
        try:
            await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(4))), stop_after_s)
        except asyncio.TimeoutError:
            pass


def phase_kill9(bundle: Path, work: Path, rate: int, cycles: int) -> dict:
    gw = Gateway(bundle, work / "gw-kill").start()
    clips = [wav_bytes(0.5, rate, seed) for seed in range(400)]
    folder = gw.roots / "rebuild"  # long enough (300 clips of 2 s) that the kill comes in the middle of it
    folder.mkdir()
    for i in range(300):
        (folder / f"clip{i}.wav").write_bytes(wav_bytes(2.0, rate, 1000 + i))
    acknowledged: list[str] = []
    lost, killed_during_rebuild, swapped = 0, 0, 0
    try:
        for cycle in range(cycles):
            version = httpx.get(gw.url + "/v1/index/stats", timeout=30).json()["version"]
            if cycle % 2 == 1:  # every other cycle: kill while a rebuild runs
                httpx.post(gw.url + "/v1/index/rebuild", json={"folder": str(folder)}, timeout=30)
                killed_during_rebuild += 1
            per = clips[cycle * 40:(cycle + 1) * 40]
            asyncio.run(kill_during(gw, per, acknowledged, f"c{cycle}"))
            gw.start()
            with httpx.Client(base_url=gw.url, timeout=30) as c:
                swapped += c.get("/v1/index/stats").json()["version"] != version  # the rebuild finished first
                lost = sum(c.get(f"/v1/items/{item}").status_code != 200 for item in acknowledged)
            if lost:
                break
    finally:
        gw.stop()
    return {"cycles": cycles, "during_rebuild": killed_during_rebuild, "rebuilds_finished_before_the_kill": swapped,
            "acknowledged": len(acknowledged), "lost": lost}


async def kill_during(gw: Gateway, clips: list[bytes], acknowledged: list[str], prefix: str) -> None:
    adder = asyncio.create_task(add_items(gw.url, clips, acknowledged, prefix, 30.0))
    await asyncio.sleep(1.5)  # writes in flight
    gw.stop(kill=True)
    await adder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "runs/default/bundle")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--sustain-s", type=float, default=60.0)
    p.add_argument("--kill-cycles", type=int, default=6)
    p.add_argument("--triton", action=argparse.BooleanOptionalAction, default=True,
                   help="run the backend-fault phase over a real tritonserver (the nvidia-pytriton wheel's)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--phases", default="load,triton,kill9", help="comma-separated subset of load, triton, kill9")
    args = p.parse_args(argv)
    manifest = read_bundle(args.bundle, verify=False)
    rate = manifest.audio.sample_rate
    clip = wav_bytes(2.0, rate, 0)
    out: dict = {"bundle": manifest.id, "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        phases = set(args.phases.split(","))
        if "load" in phases:
            gw = Gateway(args.bundle, work / "gw-load").start()
            try:
                out.update(phase_load(gw, clip, args.concurrency, args.sustain_s, 30.0))
            finally:
                gw.stop()
        if args.triton and "triton" in phases:
            out["backend_fault"] = phase_triton(args.bundle, work, clip)
        if "kill9" in phases:
            out["kill9"] = phase_kill9(args.bundle, work, rate, args.kill_cycles)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(f"\n{'phase':12s} figure")
    if "capacity" in out:
        c, s, o = out["capacity"], out["sustained"], out["overload"]
        print(f"{'capacity':12s} {c['rps_ok']} rps at c={args.concurrency} (p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms)")
        print(f"{'sustained':12s} {s['rps_ok']} rps for {args.sustain_s:g} s, statuses {s['statuses']}, "
              f"RSS {s['rss_mb_start']} -> {s['rss_mb_end']} MB")
        print(f"{'overload':12s} offered {o['offered_rps']} rps: statuses {o['statuses']}, accepted p99 {o['p99_ms']} "
              f"ms (deadline {o['deadline_ms']:g}), 429 p99 {o['p99_429_ms']} ms, generator lag p99 "
              f"{o['generator_lag_p99_ms']} ms, recovered {o['recovered']}")
    if "backend_fault" in out:
        b = out["backend_fault"]
        print(f"{'backend':12s} Triton killed: statuses {b['down']['statuses']} (p99 {b['down_p99_ms']} ms); "
              f"recovered {b['recovered_s_after_restart']} s after Triton was back")
    if "kill9" in out:
        k = out["kill9"]
        print(f"{'kill -9':12s} {k['cycles']} kills ({k['during_rebuild']} during a rebuild), {k['acknowledged']} "
              f"acknowledged writes, {k['lost']} lost")
    failed = ("sustained" in out and (out["sustained"]["statuses"].keys() - {"200"} or not out["overload"]["recovered"])
              or out.get("kill9", {}).get("lost"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
