"""The soak's memory phase: the gateway's RSS under concurrent requests at the documented maxima, and after them.

    .venv/bin/python bench/soak.py --bundle runs/default/bundle --phases memory

Kinds, one after another, each as `concurrency` (16) requests at once against a fresh `python -m blat_gateway`:
  caption   a 120 s clip (limits.max_audio_seconds) at beam 10 (the largest beam_size);
  windows   /v1/tag over the same clip at the smallest hop (one frame step, or what the 2,000-window cap allows) with
            the widest window the windowed-audio limit allows (8 hops): every window is a model input;
  labels    /v1/tag of the clip with 1,000 custom labels (limits.max_labels), distinct per request, so every one is
            embedded by the text tower;
  upload    /v1/embed/audio of a WAV just under limits.max_upload_bytes (float32 stereo at 44.1 kHz, about 95 s).
The request deadline is raised (`deadline_s`) so that every request's work runs: the figure is the worst case, not
what 504s spared. RSS is polled every 20 ms (and VmHWM read at the end for what fell between polls); after each kind
the phase waits `settle_s` and reads the after-load RSS. Past `abort_mb` the gateway is killed and the phase says so
(a machine shared with others must not be taken down by the measurement), and the next kind runs on a
fresh gateway.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from loadgen import GatewayProcess, wav_bytes

from blat_gateway.services.tagging import MAX_WINDOWS

WAV_HEADER_BYTES = 4096  # room left under the upload cap for the WAV header


def proc_status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssWatch:
    """Polls a process's RSS in a thread: the peak since `reset`, and a kill past `abort_mb`."""

    def __init__(self, gw: GatewayProcess, abort_mb: float, every_s: float = 0.02):
        self.gw, self.abort_mb, self.every_s = gw, abort_mb, every_s
        self.peak_mb, self.aborted = 0.0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        self.peak_mb = 0.0

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                rss = proc_status_mb(self.gw.proc.pid, "VmRSS")
            except (FileNotFoundError, ProcessLookupError):
                return
            self.peak_mb = max(self.peak_mb, rss)
            if rss > self.abort_mb:
                self.aborted = True
                self.gw.stop(kill=True)
                return
            time.sleep(self.every_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def max_upload_wav(max_bytes: int, seconds_cap: float) -> bytes:
    """A float32 stereo 44.1 kHz WAV as close under `max_bytes` as the clip-length cap allows."""
    rate, frame_bytes = 44_100, 8
    frames = min((max_bytes - WAV_HEADER_BYTES) // frame_bytes, int(seconds_cap * rate))
    rng = np.random.default_rng(7)
    x = (0.1 * rng.standard_normal((frames, 2))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def requests_at_maxima(limits: dict, rate: int, frame_s: float) -> dict[str, Callable[[int], tuple[str, dict, bytes]]]:
    """Per kind, a function of the request index -> (path, query params, body)."""
    clip = wav_bytes(limits["max_audio_seconds"], rate, 0)
    upload = max_upload_wav(limits["max_upload_bytes"], limits["max_audio_seconds"])
    hop = max(frame_s, limits["max_audio_seconds"] / MAX_WINDOWS)  # one frame step, unless the window cap says more
    window = {"window_s": 8 * hop, "hop_s": hop}
    return {
        "caption": lambda i: ("/v1/caption", {"beam_size": 10}, clip),
        "windows": lambda i: ("/v1/tag", {"top_k": 5, **window}, clip),
        "labels": lambda i: (
            "/v1/tag",
            {"top_k": 5, "labels": [f"sound {i} {j}" for j in range(limits["max_labels"])]},
            clip,
        ),
        "upload": lambda i: ("/v1/embed/audio", {}, upload),
    }


async def _burst(url: str, make, concurrency: int, timeout_s: float) -> tuple[dict[str, int], float]:
    statuses: dict[str, int] = {}
    async with httpx.AsyncClient(
        base_url=url, timeout=timeout_s, limits=httpx.Limits(max_connections=concurrency)
    ) as c:

        async def one(i: int) -> None:
            path, params, body = make(i)
            try:
                r = await c.post(path, params=params, content=body, headers={"content-type": "audio/wav"})
                key = str(r.status_code)
            except httpx.HTTPError as e:
                key = type(e).__name__
            statuses[key] = statuses.get(key, 0) + 1

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(concurrency)))
        return statuses, time.monotonic() - t0


def phase_memory(
    bundle: Path,
    work: Path,
    concurrency: int = 16,
    deadline_s: float = 600.0,
    settle_s: float = 5.0,
    abort_mb: float = 5500.0,
) -> dict:
    gw = GatewayProcess(bundle, work / "gw-memory", BLAT_SERVER_LIMITS__REQUEST_TIMEOUT_S=str(deadline_s)).start()
    try:
        info = httpx.get(gw.url + "/v1/info", timeout=30).json()
        audio = info["bundle"]["audio"]
        kinds = requests_at_maxima(info["limits"], audio["frontend"]["sample_rate"], audio["frame_seconds"])
        time.sleep(settle_s)  # the index's start-up work done: a quiet baseline
        out: dict = {"concurrency": concurrency, "rss_mb_start": round(gw.rss_mb(), 1), "kinds": {}}
        watch = RssWatch(gw, abort_mb)
        try:
            for name, make in kinds.items():
                watch.reset()
                statuses, wall = asyncio.run(_burst(gw.url, make, concurrency, deadline_s + 30))
                if watch.aborted:  # record it, and go on with the next kind on a fresh gateway
                    out["kinds"][name] = {"statuses": statuses, "rss_mb_peak": f">{abort_mb:g} (gateway killed)"}
                    out.setdefault("aborted", []).append(name)
                    watch.close()
                    watch = RssWatch(gw.start(), abort_mb)
                    continue
                peak = watch.peak_mb
                time.sleep(settle_s)
                out["kinds"][name] = {
                    "statuses": statuses,
                    "wall_s": round(wall, 1),
                    "rss_mb_peak": round(peak, 1),
                    "rss_mb_after": round(gw.rss_mb(), 1),
                }
        finally:
            watch.close()
        if "aborted" not in out:  # VmHWM of a restarted gateway would miss the killed one's peak
            out["rss_mb_peak"] = round(proc_status_mb(gw.proc.pid, "VmHWM"), 1)
            out["rss_mb_after_load"] = round(gw.rss_mb(), 1)
        return out
    finally:
        gw.stop()


def memory_lines(m: dict) -> list[str]:
    lines = [f"{'memory':12s} {m['concurrency']} at once per kind; RSS at start {m['rss_mb_start']} MB"]
    for name, k in m["kinds"].items():
        lines.append(
            f"{'  ' + name:12s} statuses {k['statuses']}, peak {k['rss_mb_peak']} MB, "
            f"after {k.get('rss_mb_after', '-')} MB ({k.get('wall_s', '-')} s)"
        )
    if "aborted" in m:
        lines.append(f"{'':12s} killed past the abort threshold during {', '.join(m['aborted'])}")
    if "rss_mb_peak" in m:
        lines.append(f"{'':12s} peak (VmHWM) {m['rss_mb_peak']} MB, after load {m['rss_mb_after_load']} MB")
    return lines
