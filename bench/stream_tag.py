"""Live tagging under concurrent streams, over gRPC (StreamTag) and over the WebSocket (/v1/tag/stream): real-time
factor, per-window lag and windows/s.

    .venv/bin/python bench/stream_tag.py --bundle runs/default/bundle --streams 1 4 8 --json stream_tag.json
    .venv/bin/python bench/stream_tag.py --bundle runs/default/bundle --fast     # send as fast as the server reads
    .venv/bin/python bench/stream_tag.py --faces ws                              # the WebSocket alone

Against one `python -m blat_gateway` subprocess (default settings: at most 8 streams), for each face and each
--streams K: K concurrent streams (grpc: blat_client's Client.stream_tag over grpc://; ws: the `websockets` client,
one thread sending and one reading), each sending a --seconds clip of its own as f32le PCM at the bundle's rate in
--chunk-s chunks.
  paced (default)  a chunk leaves when its audio would have been recorded, the streams' starts spread evenly over one
                   hop (live sources do not start in step); the figure is each window's lag: from the moment the
                   chunk completing its audio left to its TagWindow's arrival (p50/p95/p99 over all windows);
  --fast           the streams start together and each chunk leaves as soon as the stream takes it; the figure is
                   the real-time factor: a stream's wall time over its audio's duration (mean over the streams). The
                   lag then includes the time a chunk waited in the stream's buffers.
Both report windows/s and cpu_rtf: the server's CPU seconds per second of audio streamed (the machine holds about
cores / cpu_rtf paced streams). Prints one JSON object and a table; exit 1 when a stream failed or a window went
unanswered.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from blat_client import Client, ClientError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import GatewayProcess, percentile_ms, wav_bytes  # noqa: E402

from blat_contract.bundle import read_bundle  # noqa: E402
from blat_gateway.services.tagging import window_spans  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Plan(NamedTuple):
    rate: int  # the bundle's: the server resamples nothing
    chunk: int  # samples per message
    paced: bool
    window_s: float
    hop_s: float


def grpc_windows(gw: GatewayProcess, chunks: Iterator[bytes], plan: Plan, deadline_s: float) -> Iterator[float]:
    """The end_s of each window StreamTag answers, as it arrives."""
    with Client(f"grpc://127.0.0.1:{gw.grpc_port}", timeout=deadline_s) as client:
        for w in client.stream_tag(chunks, plan.rate, "f32le", plan.window_s, plan.hop_s, timeout=deadline_s):
            yield w.end_s


def ws_windows(gw: GatewayProcess, chunks: Iterator[bytes], plan: Plan, deadline_s: float) -> Iterator[float]:
    """The end_s of each window /v1/tag/stream answers, as it arrives (the chunks leave from a thread of their own)."""
    url = f"ws://127.0.0.1:{gw.port}/v1/tag/stream"
    with connect(url, subprotocols=["blat.tag.v1"], open_timeout=30, max_size=None) as ws:
        config = {"encoding": "f32le", "sample_rate": plan.rate, "window_s": plan.window_s, "hop_s": plan.hop_s}
        ws.send(json.dumps(config))

        def send() -> None:
            for c in chunks:
                ws.send(c)
            ws.send(json.dumps({"end": True}))

        threading.Thread(target=send, daemon=True).start()
        for message in ws:  # until the server closes (ConnectionClosedError past a 4xxx close)
            answer = json.loads(message)
            if "error" in answer:
                raise RuntimeError(answer["error"]["message"])
            if "end_s" in answer:
                yield answer["end_s"]


FACES = {"grpc": grpc_windows, "ws": ws_windows}


def one_stream(gw: GatewayProcess, face: str, pcm: np.ndarray, plan: Plan, delay_s: float) -> dict:
    """Stream `pcm` after `delay_s`; per answered window, the seconds from the chunk completing its audio leaving to
    the window's arrival."""
    time.sleep(delay_s)
    rate, chunk = plan.rate, plan.chunk
    sent: list[float] = []  # when chunk i left

    def chunks() -> Iterator[bytes]:
        t0 = time.monotonic()
        for i in range(0, len(pcm), chunk):
            if plan.paced:  # chunk [i, i + chunk) exists once its last sample has been "recorded"
                time.sleep(max(0.0, t0 + min(i + chunk, len(pcm)) / rate - time.monotonic()))
            sent.append(time.monotonic())
            yield pcm[i : i + chunk].tobytes()

    lags, error = [], None
    deadline_s = 3 * len(pcm) / rate + 60
    try:  # a stream is never retried; its deadline is its own
        for end_s in FACES[face](gw, chunks(), plan, deadline_s):
            completing = min(math.ceil(round(end_s * rate) / chunk), len(sent)) - 1
            lags.append(time.monotonic() - sent[completing])
    except (ClientError, RuntimeError, ConnectionClosed) as e:
        error = str(e)
    return {"windows": len(lags), "lags": lags, "wall": time.monotonic() - sent[0] if sent else 0.0, "error": error}


def level(gw: GatewayProcess, face: str, k: int, seconds: float, plan: Plan) -> dict:
    """K streams at once over one face, each its own clip; their figures together."""
    rate = plan.rate
    clips = [sf.read(io.BytesIO(wav_bytes(seconds, rate, seed=s)), dtype="float32")[0] for s in range(k)]
    expected = len(window_spans(len(clips[0]), round(plan.window_s * rate), round(plan.hop_s * rate)))
    delays = [s * plan.hop_s / k if plan.paced else 0.0 for s in range(k)]
    cpu0, t0 = cpu_seconds(gw.proc.pid), time.monotonic()
    with ThreadPoolExecutor(k) as pool:
        streams = list(pool.map(lambda s: one_stream(gw, face, clips[s], plan, delays[s]), range(k)))
    wall, cpu = time.monotonic() - t0, cpu_seconds(gw.proc.pid) - cpu0
    lags = sorted(lag for s in streams for lag in s["lags"])
    windows = sum(s["windows"] for s in streams)
    return {
        "face": face,
        "streams": k,
        "windows": windows,
        "expected_windows": k * expected,
        "errors": [s["error"] for s in streams if s["error"]],
        "windows_per_s": round(windows / wall, 1),
        # paced, a stream lasts its audio's duration whatever the server does: no real-time factor to read
        "rtf": None if plan.paced else round(float(np.mean([s["wall"] for s in streams])) / seconds, 3),
        "cpu_rtf": round(cpu / (k * seconds), 3),
        "lag_p50_ms": percentile_ms(lags, 0.5),
        "lag_p95_ms": percentile_ms(lags, 0.95),
        "lag_p99_ms": percentile_ms(lags, 0.99),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "runs/default/bundle")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8], help="concurrent streams (server cap: 8)")
    p.add_argument("--seconds", type=float, default=60.0, help="audio per stream")
    p.add_argument("--chunk-s", type=float, default=0.5)
    p.add_argument("--window-s", type=float, default=2.0, help="the RPC's default window")
    p.add_argument("--hop-s", type=float, default=1.0, help="the RPC's default hop")
    p.add_argument("--faces", nargs="+", choices=sorted(FACES), default=["grpc", "ws"], help="grpc, ws or both")
    p.add_argument("--fast", action="store_true", help="send as fast as possible instead of at real-time pace")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    manifest = read_bundle(args.bundle, verify=False)
    rate = manifest.audio.sample_rate
    plan = Plan(rate, round(args.chunk_s * rate), not args.fast, args.window_s, args.hop_s)
    out: dict = {
        "bundle": manifest.id,
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "paced": plan.paced,
        "seconds": args.seconds,
        "chunk_s": args.chunk_s,
        "window_s": args.window_s,
        "hop_s": args.hop_s,
    }
    with tempfile.TemporaryDirectory(prefix="stream-tag-") as tmp, GatewayProcess(args.bundle, Path(tmp)) as gw:
        out["levels"] = [level(gw, face, k, args.seconds, plan) for face in args.faces for k in args.streams]
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(
        f"\n{'paced' if plan.paced else 'as fast as possible'}: {args.seconds:g} s per stream in {args.chunk_s:g} "
        f"s chunks, window {args.window_s:g} s, hop {args.hop_s:g} s, bundle {manifest.id}"
    )
    print(
        f"{'face':>4s} {'streams':>7s} {'windows':>9s} {'win/s':>7s} {'RTF':>6s} {'CPU RTF':>8s} {'lag p50':>8s} "
        f"{'p95':>7s} {'p99 ms':>7s} errors"
    )
    for r in out["levels"]:
        print(
            f"{r['face']:>4s} {r['streams']:7d} {r['windows']:4d}/{r['expected_windows']:<4d} "
            f"{r['windows_per_s']:7.1f} {r['rtf']!s:>6s} {r['cpu_rtf']:8.3f} {r['lag_p50_ms']!s:>8s} "
            f"{r['lag_p95_ms']!s:>7s} {r['lag_p99_ms']!s:>7s} {len(r['errors'])}"
        )
    return 0 if all(r["windows"] == r["expected_windows"] and not r["errors"] for r in out["levels"]) else 1


if __name__ == "__main__":
    sys.exit(main())
