"""The soak's slow-client phase: connections that drip their request bodies, while legitimate requests keep coming.

    .venv/bin/python bench/soak.py --bundle runs/default/bundle --phases slow --slow-drips 128

`drips` raw connections (half to /v1/tag, half to /v1/search/text) each declare a body and send one byte of it every
`drip_every_s`; each is reopened when the gateway ends it (408 at the request's deadline). Meanwhile a closed loop
of legitimate requests (text searches and 1 s tag requests, 4 at once) runs for `seconds`: every answer must be 200
and their p99 under 1 s. The gateway admits a request only once its body is in (server/blat_gateway/front_door.py), so
the drips
hold connections, never admission places.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from loadgen import GatewayProcess, wav_bytes

P99_LIMIT_S = 1.0


def _drip(port: int, path: str, stop: threading.Event, every_s: float, ended: list[int]) -> None:
    """One dripping connection after another until `stop`; counts the answers (status) the gateway ended them with."""
    ctype = "audio/wav" if path == "/v1/tag" else "application/json"
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=every_s) as s:
                s.sendall(
                    f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {ctype}\r\n"
                    f"content-length: 1000000\r\n\r\n".encode()
                )
                answer = b""
                while not stop.is_set():
                    try:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        answer += chunk
                    except TimeoutError:
                        s.sendall(b"{")
                ended.append(int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0)
        except OSError:
            ended.append(0)
            time.sleep(every_s)


def phase_slow_clients(
    bundle: Path,
    work: Path,
    rate: int,
    drips: int = 128,
    seconds: float = 30.0,
    drip_every_s: float = 1.0,
    deadline_s: float = 10.0,
) -> dict:
    """`rate`: the bundle's sample rate (of the legitimate tag requests' clip)."""
    gw = GatewayProcess(bundle, work / "slow", BLAT_SERVER_LIMITS__REQUEST_TIMEOUT_S=str(deadline_s)).start()
    port = int(gw.url.rsplit(":", 1)[1])
    stop, ended = threading.Event(), []
    threads = [
        threading.Thread(
            target=_drip, args=(port, "/v1/tag" if i % 2 else "/v1/search/text", stop, drip_every_s, ended), daemon=True
        )
        for i in range(drips)
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(2 * drip_every_s)  # every drip is in
        clip, times, statuses = wav_bytes(1.0, rate, 1), [], {}
        ends_at = time.monotonic() + seconds

        def legit(worker: int) -> None:
            with httpx.Client(base_url=gw.url, timeout=30) as c:
                i = worker
                while time.monotonic() < ends_at:
                    t0 = time.monotonic()
                    r = (
                        c.post("/v1/tag", content=clip, params={"top_k": 5})
                        if i % 5 == 4
                        else c.post("/v1/search/text", json={"query": f"sound number {i % 97}", "k": 10})
                    )
                    times.append(time.monotonic() - t0)
                    statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                    i += 4

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(legit, range(4)))
        rss = gw.rss_mb()
    finally:
        stop.set()
        for t in threads:
            t.join(drip_every_s + 5)
        gw.stop()
    times.sort()
    p99 = times[int(0.99 * (len(times) - 1))] if times else float("nan")
    return {
        "drips": drips,
        "drip_every_s": drip_every_s,
        "deadline_s": deadline_s,
        "seconds": seconds,
        "legit_requests": len(times),
        "legit_statuses": statuses,
        "legit_p50_ms": round(times[len(times) // 2] * 1000, 1),
        "legit_p99_ms": round(p99 * 1000, 1),
        "drips_ended": {str(s): ended.count(s) for s in set(ended)},
        "rss_mb": round(rss, 1),
        "ok": set(statuses) == {"200"} and p99 < P99_LIMIT_S,
    }


def slow_lines(r: dict) -> list[str]:
    return [
        f"{'slow clients':12s} {r['drips']} drips (1 byte / {r['drip_every_s']:g} s): {r['legit_requests']} "
        f"legitimate requests {r['legit_statuses']}, p50 {r['legit_p50_ms']} ms, p99 {r['legit_p99_ms']} ms "
        f"(limit {P99_LIMIT_S * 1000:.0f}); drips ended {r['drips_ended']}"
    ]
