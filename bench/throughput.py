"""Gateway throughput against the models' own rate: text search, tagging and captioning at several concurrencies,
micro-batching on and off, all in one run on the same machine.

    .venv/bin/python bench/throughput.py                       # runs/default/bundle, c = 1, 8, 32, 10 s a cell
    .venv/bin/python bench/throughput.py --paths text --concurrency 32 --seconds 20 --json text.json

For each mode (`batched`: the settings' max_batch, 16; `unbatched`: max_batch 1) a fresh `python -m blat_gateway` runs
on
loopback over an index of --items stored items (random unit vectors with tags and captions, so every search returns
real hits with their metadata); a closed loop of --concurrency workers (bench/loadgen.py's lean asyncio client, on
the same cores) sends, per path:
  text     POST /v1/search/text, k 10, every query a different sentence (no cache can answer it);
  tag      POST /v1/tag?top_k=5 with a 10 s clip;
  caption  POST /v1/caption with a 5 s clip (the bundle's beam size).
`model alone` is the limit: the same graphs in this process through blat_gateway.runtime.ModelRuntime over ONNX Runtime
with the server's thread setting, at batch 1 and at the batcher's max_batch, with no gateway running. Extra
BLAT_SERVER_* variables in the environment reach both gateways (e.g. BLAT_SERVER_BACKEND=triton with
BLAT_SERVER_TRITON__URL to measure a Triton backend; bench/gpu_bench.py does that on a GPU host).

Prints one JSON object and a table; the figures go into BENCHMARKS.md with this command.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import loadgen  # noqa: E402

from blat_contract.bundle import read_bundle  # noqa: E402
from blat_contract.labels import audioset_labels  # noqa: E402

PATHS = ("text", "tag", "caption")
CLIP_SECONDS = {"tag": 10.0, "caption": 5.0}
PLACES = (
    "in a small room",
    "outdoors",
    "far away",
    "close to the microphone",
    "in a hall",
    "at night",
    "in the rain",
    "on a street",
    "in a forest",
    "underwater",
)


def query(i: int) -> str:
    """A different sentence per request number: a label, a place and the number itself."""
    labels = audioset_labels()
    return f"{labels[i % len(labels)].lower()} {PLACES[(i // len(labels)) % len(PLACES)]}, take {i}"


def seed_index(index_dir: Path, dim: int, bundle_id: str, n: int) -> None:
    """n items with random unit embeddings, a few AudioSet tags and a caption each, written through the store."""
    from blat_gateway.index import IndexStore, ItemRecord

    rng = np.random.default_rng(0)
    labels = audioset_labels()
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    with IndexStore(index_dir, dim=dim, bundle_id=bundle_id) as store:
        for start in range(0, n, 1000):
            store.add_many(
                [
                    (
                        ItemRecord(
                            id=f"seed/{i}",
                            tags=tuple(labels[j] for j in rng.integers(0, len(labels), 3)),
                            caption=query(i),
                            duration_s=float(rng.uniform(0.5, 10)),
                            content_hash=f"{i:064x}",
                        ),
                        vecs[i],
                    )
                    for i in range(start, min(n, start + 1000))
                ]
            )


def sender(path: str, clip: bytes):
    async def send(client: loadgen.RawHttp, i: int) -> loadgen.Result:
        if path == "text":
            body = json.dumps({"query": query(i), "k": 10}).encode()
            return await client.request("POST", "/v1/search/text", body, "application/json")
        route = "/v1/tag?top_k=5" if path == "tag" else "/v1/caption"
        return await client.request("POST", route, clip, "audio/wav")

    return send


def run_gateway(
    bundle: Path,
    work: Path,
    index_src: Path,
    max_batch: int,
    paths: list[str],
    levels: list[int],
    seconds: float,
    warmup_s: float,
    clips: dict[str, bytes],
    profile: Path | None,
) -> dict:
    passed = {k: v for k, v in os.environ.items() if k.startswith("BLAT_SERVER_")}  # e.g. a Triton backend
    gw = loadgen.GatewayProcess(bundle, work, **{**passed, "BLAT_SERVER_BATCHING__MAX_BATCH": str(max_batch)})
    shutil.copytree(index_src, gw.index, dirs_exist_ok=True)
    out: dict = {}
    with gw:
        for path in paths:
            for c in levels:
                results = asyncio.run(
                    loadgen.closed_loop(gw.url, sender(path, clips.get(path, b"")), c, seconds, warmup_s)
                )
                out[f"{path}@{c}"] = loadgen.summary(results, seconds)
                print(f"  max_batch {max_batch:2d} {path:8s} c={c:<3d} {out[f'{path}@{c}']}", file=sys.stderr)
            if profile is not None and path == "text":
                out["profile_text_gil_pct"] = py_spy(gw, profile, path, clips, levels[-1], seconds)
        out["rss_mb"] = round(gw.rss_mb(), 1)
    return out


# Where the gateway's GIL time goes, by the innermost frame that belongs to a known part (py-spy file paths).
PROFILE_PARTS = (
    ("model: ONNX Runtime call", ("onnxruntime/",)),
    ("tokenisation", ("tokenizers/",)),
    ("index: FAISS", ("faiss/",)),
    ("index: SQLite and records", ("server/blat_gateway/index/", "sqlite3/")),
    ("JSON encoding", ("fastapi/encoders.py", "json/", "starlette/responses.py")),
    ("request parsing and validation", ("pydantic", "fastapi/dependencies/", "starlette/requests.py")),
    ("HTTP protocol (uvicorn h11)", ("h11/", "uvicorn/protocols/", "server/blat_gateway/http_protocol.py")),
    (
        "middleware (FrontDoor, metrics)",
        (
            "server/blat_gateway/front_door.py",
            "starlette/middleware/base.py",
            "server/blat_gateway/metrics.py",
            "prometheus_client/",
        ),
    ),
    ("FastAPI/Starlette routing", ("fastapi/", "starlette/")),
    (
        "batcher and thread hand-offs",
        ("server/blat_gateway/batching.py", "concurrent/futures/", "queue.py", "threading.py", "anyio/"),
    ),
    ("gateway code", ("server/",)),
    ("event loop (asyncio)", ("asyncio/",)),
)
PROFILE_RATE = 200  # samples per second


def py_spy(gw: loadgen.GatewayProcess, out: Path, path: str, clips: dict, c: int, seconds: float) -> dict:
    """A py-spy profile (`--gil`: only the thread holding the GIL is sampled) of the gateway under the closed loop,
    and its breakdown: the share of wall-clock time each part of the gateway holds the GIL. ONNX Runtime releases
    the GIL while it computes, so what is left is the Python work that one process can do at a time."""
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(gw.proc.pid),
            "--duration",
            str(int(seconds)),
            "--format",
            "raw",
            "--output",
            str(out),
            "--rate",
            str(PROFILE_RATE),
            "--gil",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    asyncio.run(loadgen.closed_loop(gw.url, sender(path, clips.get(path, b"")), c, seconds + 1))
    proc.wait(60)
    return breakdown(out, PROFILE_RATE * int(seconds))


def breakdown(raw: Path, possible: int) -> dict:
    """{part: % of wall-clock samples} from py-spy's raw output (one "frame;frame;... count" line per stack)."""
    parts: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        part = "other"
        for frame in reversed(stack.split(";")[1:]):
            where = frame.rpartition("(")[2]
            part = next((name for name, marks in PROFILE_PARTS if any(m in where for m in marks)), None)
            if part:
                break
        parts[part or "other"] = parts.get(part or "other", 0) + int(count)
    shares = {k: round(100 * v / possible, 1) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])}
    shares["GIL held, total"] = round(100 * sum(parts.values()) / possible, 1)
    return shares


def model_alone(
    bundle: Path, threads: int, batch: int, paths: list[str], clips: dict[str, np.ndarray], seconds: float
) -> dict:
    """Items per second through the runtime alone, at batch 1 and `batch`, for each path's graph; with ONNX Runtime's
    idle threads sleeping (the gateway's default) and spinning: the limit is the faster of the two."""
    from blat_contract.beam import DecodingOptions
    from blat_gateway.backends.ort import OnnxRuntimeBackend
    from blat_gateway.runtime import ModelRuntime

    out = {}
    for spinning in (False, True):
        runtime = ModelRuntime(bundle, OnnxRuntimeBackend(bundle, threads=threads, spinning=spinning))
        spec = runtime.manifest.captioner
        calls = {
            "text": lambda b, i: runtime.encode_text([query(i + j) for j in range(b)]),
            "tag": lambda b, i: runtime.encode_audio([clips["tag"]] * b),
            "caption": lambda b, i: runtime.captions(
                [clips["caption"]] * b, None, DecodingOptions(beam_size=spec.beam_size, max_tokens=spec.max_tokens)
            ),
        }
        for path in paths:
            for b in sorted({1, batch}):
                calls[path](b, 0)  # warm-up
                done, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds or done == 0:
                    calls[path](b, 10_000 + done)
                    done += b
                out[f"{path}@batch{b}{' spinning' if spinning else ''}"] = round(done / (time.perf_counter() - t0), 1)
    return out


def limit(model: dict, path: str, batch: int) -> float:
    return max(model.get(f"{path}@batch{batch}", 0.0), model.get(f"{path}@batch{batch} spinning", 0.0))


def ratios(out: dict, paths: list[str], levels: list[int], batch: int) -> dict:
    top, r = max(levels), {}
    for path in paths:
        cell = f"{path}@{top}"
        b = out.get("batched", {}).get(cell, {}).get("rps_ok")
        u = out.get("unbatched", {}).get(cell, {}).get("rps_ok")
        if b is not None and limit(out["model_alone"], path, batch):
            r[f"{path} c={top} batched / model alone at batch {batch}"] = round(
                b / limit(out["model_alone"], path, batch), 3
            )
        if b is not None and u:
            r[f"{path} c={top} batched / unbatched"] = round(b / u, 3)
    return r


def table(out: dict, paths: list[str], levels: list[int], batch: int) -> str:
    lines = [
        f"{'path':8s} {'c':>3s} | {'batched rps':>11s} {'p50':>7s} {'p95':>7s} {'p99':>7s} {'err':>6s} | "
        f"{'unbatched rps':>13s} {'p50':>7s} {'p95':>7s} {'p99':>7s} {'err':>6s}"
    ]
    for path in paths:
        for c in levels:
            cells = []
            for mode in ("batched", "unbatched"):
                s = out.get(mode, {}).get(f"{path}@{c}")
                cells.append(
                    " ".join(
                        f"{v if v is not None else '-':>{w}}"
                        for v, w in zip(
                            (s["rps_ok"], s["p50_ms"], s["p95_ms"], s["p99_ms"], s["error_rate"]),
                            (11 if mode == "batched" else 13, 7, 7, 7, 6),
                        )
                    )
                    if s
                    else "-"
                )
            lines.append(f"{path:8s} {c:3d} | {cells[0]} | {cells[1]}")
    lines.append("model alone (items/s): " + ", ".join(f"{k} {v}" for k, v in out["model_alone"].items()))
    lines += [f"{k}: {v}" for k, v in out["ratios"].items()]
    if "profile_text_gil_pct" in out.get("batched", {}):
        lines.append(
            f"text c={max(levels)}, batched: % of wall time each part holds the GIL: "
            + ", ".join(f"{k} {v}" for k, v in out["batched"]["profile_text_gil_pct"].items())
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "runs/default/bundle")
    p.add_argument("--paths", default="text,tag,caption", help=f"comma-separated subset of {', '.join(PATHS)}")
    p.add_argument("--concurrency", default="1,8,32", help="closed-loop workers, comma-separated")
    p.add_argument("--modes", default="batched,unbatched")
    p.add_argument("--max-batch", type=int, default=16, help="the batched mode's batching.max_batch")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell")
    p.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured seconds before each cell")
    p.add_argument("--items", type=int, default=1000, help="items in the index searched")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime threads for `model alone` (0: all cores, the server's default)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="also record a py-spy profile of the batched gateway's text path at "
        "the top concurrency (raw collapsed stacks, for flamegraph tools) into this file",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    paths = [x for x in args.paths.split(",") if x]
    levels = [int(x) for x in args.concurrency.split(",")]
    modes = [x for x in args.modes.split(",") if x]
    if set(paths) - set(PATHS) or set(modes) - {"batched", "unbatched"}:
        p.error(f"paths are {PATHS}, modes batched and unbatched")
    manifest = read_bundle(args.bundle, verify=False)
    if "caption" in paths and manifest.captioner is None:
        paths.remove("caption")
    rate = manifest.audio.sample_rate
    wavs = {k: loadgen.wav_bytes(s, rate, 1) for k, s in CLIP_SECONDS.items()}
    waves = {k: sf.read(io.BytesIO(v), dtype="float32")[0] for k, v in wavs.items()}
    out: dict = {
        "bundle": manifest.id,
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "seconds_per_cell": args.seconds,
        "items": args.items,
        "max_batch": args.max_batch,
    }
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        work = Path(tmp)
        seed_index(work / "index", manifest.embedding_dim, manifest.id, args.items)
        for mode in modes:
            out[mode] = run_gateway(
                args.bundle,
                work / mode,
                work / "index",
                args.max_batch if mode == "batched" else 1,
                paths,
                levels,
                args.seconds,
                args.warmup_s,
                wavs,
                args.profile if mode == "batched" else None,
            )
    out["model_alone"] = model_alone(args.bundle, args.threads, args.max_batch, paths, waves, min(args.seconds, 5.0))
    out["ratios"] = ratios(out, paths, levels, args.max_batch)
    print(json.dumps(out, indent=2))
    print()
    print(table(out, paths, levels, args.max_batch))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
