#!/usr/bin/env python3
"""The GPU bench in one command: perf_analyzer on Triton's graphs, then bench/throughput.py's table through the
gateway over that Triton and over in-process ONNX Runtime on CUDA; everything lands in one results folder.

    .venv/bin/python bench/gpu_bench.py --bundle runs/default/bundle --out runs/gpu-bench   # on a GPU host
    .venv/bin/python bench/gpu_bench.py --bundle B --out R --tensorrt     # TensorRT FP16 inside Triton
    .venv/bin/python bench/gpu_bench.py --bundle B --out R --cpu-check    # the same plumbing without a GPU

1. Checks first: nvidia-smi sees a GPU; a tritonserver (--tritonserver, one on PATH, or docker with the NVIDIA
   runtime running --image); perf_analyzer (on PATH, e.g. `pip install perf-analyzer`, whose wheels need glibc
   >= 2.38, or docker running the -sdk twin of --image).
2. `python -m blat_export triton --flavor gpu [--tensorrt]` writes <out>/repo, and 3. Triton serves it on loopback.
4. perf_analyzer: text_encoder (16 tokens) and audio_encoder (a 10 s clip), one run per concurrency.
5. throughput.py with BLAT_SERVER_BACKEND=triton (Triton's statistics must show the gateway's calls), then with
   the in-process backend on CUDA (skipped, saying why, when onnxruntime-gpu cannot run CUDA here).
6. Every process started here is stopped on exit, Ctrl-C and SIGTERM included.

--cpu-check: the CPU-flavour repository on the nvidia-pytriton wheel's tritonserver, perf_analyzer only if one is
on PATH, throughput.py with tiny settings (text, c = 1,2, 1 s a cell). Exit status 1 when any step failed.
<out>: env.txt (versions, nvidia-smi -q header), repo/, tritonserver.log, perf_*.csv/.log, throughput_*.json/.txt
(the table)/.log, triton_stats.json, results.json (every figure), summary.txt (everything printed).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # the repository's packages, and loadgen
PY = sys.executable
_compose = (ROOT / "deploy/docker-compose.gpu.yml").read_text()  # its Triton image: measure what is deployed
IMAGE = os.environ.get("TRITON_IMAGE") or re.search(r"image:\s*(nvcr\.io/nvidia/tritonserver:\S+)", _compose)[1]
CONTAINER = f"blat-gpu-bench-{os.getpid()}"
children: list[subprocess.Popen] = []


def die(msg: str) -> None:
    sys.exit(f"gpu_bench: {msg}")


def run(cmd: list[str], log: Path, timeout: float, **env: str) -> tuple[int, str]:
    """(exit code, stdout) of cmd, stderr into log; in its own process group, so that what it starts (gateways)
    can be stopped with it. A timeout ends the group and reads as exit code 124: the bench goes on."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, env={**os.environ, **env}, cwd=ROOT, start_new_session=True
        )
        children.append(proc)
        try:
            out = proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, proc.returncode = proc.communicate()[0], 124
    children.remove(proc)  # it has ended; anything it left behind in its group goes now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out.decode(errors="replace")


def stop_children() -> None:
    """Ends the commands that run() was still waiting for when the bench was interrupted, with their groups."""
    for proc in children:  # SIGINT first: throughput.py then leaves its `with gateway:` blocks, stopping them
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    children.clear()


def prerequisites(args) -> tuple[list[str] | None, list[str] | None]:
    """(how to start tritonserver: None for the wheel's, how to run perf_analyzer: None for no run), or exit
    naming what is missing."""
    if not args.cpu_check and (
        not shutil.which("nvidia-smi") or subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode
    ):
        die(
            "no GPU: nvidia-smi is missing or sees no device. This bench is for a GPU host; "
            "--cpu-check runs the same plumbing on the CPU."
        )
    if not (args.bundle / "bundle.json").is_file():
        die(f"{args.bundle} is not a bundle directory (no bundle.json); pass --bundle")
    pa = shutil.which("perf_analyzer", path=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if args.cpu_check:
        from blat_export.triton import TritonUnavailable, pytriton_server_dir

        try:
            pytriton_server_dir()
        except TritonUnavailable as e:
            die(f"--cpu-check needs the nvidia-pytriton wheel's tritonserver: {e}")
        return None, [pa] if pa else None
    info = shutil.which("docker") and subprocess.run(
        ["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True
    )
    docker = bool(info) and info.returncode == 0
    server = args.tritonserver or shutil.which("tritonserver")
    if not server and not (docker and ("nvidia" in info.stdout or shutil.which("nvidia-container-runtime-hook"))):
        die(
            f"no tritonserver: pass --tritonserver PATH, put one on PATH, or set up docker with the NVIDIA runtime "
            f"(nvidia-container-toolkit) to run {args.image}"
            + (f"; docker info: {info.stderr.strip()[-300:]}" if info and info.returncode else "")
        )
    if not pa and not docker:
        die(f"no perf_analyzer: `pip install perf-analyzer` (glibc >= 2.38), or docker to run {args.image}-sdk")
    triton = (
        [server]
        if server
        else [
            "docker",
            "run",
            "--rm",
            "--name",
            CONTAINER,
            "--gpus",
            "all",
            "--net",
            "host",
            "--shm-size",
            "2g",
            "-v",
            f"{args.out / 'repo'}:/models:ro",
            args.image,
            "tritonserver",
        ]
    )
    perf = (
        [pa]
        if pa
        else [
            "docker",
            "run",
            "--rm",
            "--net",
            "host",
            "-u",
            f"{os.getuid()}:{os.getgid()}",
            "-v",
            f"{args.out}:{args.out}",
            f"{args.image}-sdk",
            "perf_analyzer",
        ]
    )
    return triton, perf


def start_triton(args, how: list[str] | None):
    """A ready blat_export.triton.TritonProcess serving <out>/repo on loopback."""
    from loadgen import free_port

    from blat_export.triton import TritonProcess, launch_cpu_server

    log = args.out / "tritonserver.log"
    if how is None:
        return launch_cpu_server(args.out / "repo", log_path=log, timeout_s=args.ready_timeout)
    grpc, http, metrics = (free_port() for _ in range(3))
    flags = [
        f"--model-repository={'/models' if how[0] == 'docker' else args.out / 'repo'}",
        "--disable-auto-complete-config",
        "--exit-timeout-secs=10",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics}",
    ]  # loopback only; with docker --net host these are the host's ports
    with open(log, "wb") as f:  # docker run in the foreground passes our SIGTERM on to the server (sig-proxy)
        proc = subprocess.Popen(
            how + flags, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    triton = TritonProcess(proc, grpc, http, metrics, log_path=log, workdir=Path(tempfile.mkdtemp(prefix="gpu-bench-")))
    deadline = time.monotonic() + args.ready_timeout  # TensorRT builds its engines before the models are ready
    while not triton.ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = triton.log_tail()
            triton.stop()
            die(f"tritonserver did not become ready (exit code {proc.poll()}):\n{tail}")
        time.sleep(1)
    return triton


def perf_inputs(args) -> dict[str, Path]:
    """perf_analyzer's input data (real values, shapes for the dynamic dims): the tokens of a 16-token sentence;
    a 10 s clip at the bundle's rate with its true length (random data would send nonsense lengths)."""
    import numpy as np
    from tokenizers import Tokenizer

    from blat_contract.bundle import read_bundle

    m = read_bundle(args.bundle, verify=False)
    tok, n = Tokenizer.from_file(str(args.bundle / m.text.tokenizer)), min(16, m.text.max_tokens)
    tok.enable_truncation(max_length=n)
    tok.enable_padding(pad_id=m.text.pad_id, length=n)
    enc = tok.encode("a dog barks twice while heavy rain falls on a tin roof and a car passes slowly in the street")
    samples = int(10 * m.audio.sample_rate)
    wave = (0.1 * np.random.default_rng(0).standard_normal(samples)).astype("<f4")  # b64 data is little-endian
    data = {
        "text_encoder": {
            "input_ids": {"content": enc.ids, "shape": [n]},
            "attention_mask": {"content": enc.attention_mask, "shape": [n]},
        },
        "audio_encoder": {
            "waveform": {"content": {"b64": base64.b64encode(wave.tobytes()).decode()}, "shape": [samples]},
            "lengths": {"content": [samples], "shape": [1]},
        },
    }
    for model, inputs in data.items():
        (args.out / f"perf_{model}.json").write_text(json.dumps({"data": [inputs]}))
    return {model: args.out / f"perf_{model}.json" for model in data}


def perf_analyzer(args, perf: list[str], url: str, problems: list[str]) -> tuple[dict, str]:
    """{model@c: infer/s and p50/p95/p99 ms} from one perf_analyzer run per model and concurrency, and its table."""
    rows, lines = {}, [f"{'model':14s} {'c':>3s} | {'infer/s':>9s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s}"]
    # Shared CPU cores seldom give three windows within perf_analyzer's default 10 %: the check only needs figures.
    loose = ["--stability-percentage", "100"] if args.cpu_check else []
    for model, data in perf_inputs(args).items():
        for c in args.concurrency.split(","):
            stem = args.out / f"perf_{model}_c{c}"
            code, out = run(
                [
                    *perf,
                    "-m",
                    model,
                    "-i",
                    "grpc",
                    "-u",
                    url,
                    "--input-data",
                    str(data),
                    "--concurrency-range",
                    f"{c}:{c}",
                    "--measurement-interval",
                    str(int(args.seconds * 1000)),
                    *loose,
                    "-f",
                    f"{stem}.csv",
                ],
                stem.with_suffix(".err"),
                timeout=30 * args.seconds + 300,
            )
            stem.with_suffix(".log").write_text(out)
            row = next(csv.DictReader(open(f"{stem}.csv")), None) if Path(f"{stem}.csv").exists() else None
            if code or not row:
                problems.append(f"perf_analyzer {model} c={c}: exit {code}, see {stem}.log/.err")
                continue
            ms = [round(float(row[f"p{q} latency"]) / 1000, 2) for q in (50, 95, 99)]  # the CSV has microseconds
            rows[f"{model}@{c}"] = {
                "infer_per_s": float(row["Inferences/Second"]),
                "p50_ms": ms[0],
                "p95_ms": ms[1],
                "p99_ms": ms[2],
            }
            lines.append(f"{model:14s} {c:>3s} | {float(row['Inferences/Second']):9.1f} {ms[0]:7} {ms[1]:7} {ms[2]:7}")
    return rows, "\n".join(lines)


def inferences(triton) -> dict[str, int]:
    with urllib.request.urlopen(f"{triton.http_url}/v2/models/stats", timeout=10) as r:
        return {f"{s['name']}/{s['version']}": int(s.get("inference_count", 0)) for s in json.load(r)["model_stats"]}


def throughput(args, name: str, problems: list[str], say, **env: str) -> dict | None:
    """bench/throughput.py with `env`: its JSON (also <out>/throughput_<name>.json), and the table it prints."""
    extra = ["--warmup-s", "0.5", "--items", "200"] if args.cpu_check else []
    code, out = run(
        [
            PY,
            str(ROOT / "bench/throughput.py"),
            "--bundle",
            str(args.bundle),
            "--paths",
            args.paths,
            "--concurrency",
            args.concurrency,
            "--seconds",
            str(args.seconds),
            "--json",
            str(args.out / f"throughput_{name}.json"),
            *extra,
        ],
        args.out / f"throughput_{name}.log",
        timeout=7200,
        **env,
    )
    (args.out / f"throughput_{name}.txt").write_text(out)
    if code:
        problems.append(f"throughput.py ({name}): exit {code}, see {args.out}/throughput_{name}.log")
        return None
    result, end = json.JSONDecoder().raw_decode(out)  # it prints its JSON, then the table
    say(f"\n== throughput.py, {name} ==\n{out[end:].strip()}")
    return result


def cuda_unusable(bundle: Path) -> str | None:
    """None when in-process ONNX Runtime really runs on CUDA here, else why not."""
    import onnxruntime as ort

    from blat_contract.bundle import read_bundle

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu in its place)"
    graph = str(bundle / read_bundle(bundle, verify=False).graphs["text_encoder"].file)
    try:
        session = ort.InferenceSession(graph, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        return f"onnxruntime-gpu cannot open the bundle's graphs on CUDA: {e}"
    if session.get_providers()[0] != "CUDAExecutionProvider":  # no CUDA/cuDNN libraries: it falls back to the CPU
        return "onnxruntime-gpu fell back to the CPU (CUDA or cuDNN libraries missing?)"
    return None


def versions(args, how: list[str] | None, perf: list[str] | None) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def package(name: str) -> str:
        with contextlib.suppress(PackageNotFoundError):
            return f"{name} {version(name)}"
        return f"{name} not installed"

    sh = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()  # noqa: E731
    server = "nvidia-pytriton wheel" if how is None else args.image if how[0] == "docker" else how[0]
    lines = [
        f"date {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
        f"commit {sh('git', 'rev-parse', 'HEAD')}",
        f"python {sys.version.split()[0]}",
        f"cpus {os.cpu_count()}",
        f"tritonserver {server}",
        f"perf_analyzer {' '.join(perf) if perf else 'none'}",
        *(package(p) for p in ("onnxruntime", "onnxruntime-gpu", "tritonclient", "nvidia-pytriton")),
    ]
    return "\n".join(lines + ([] if args.cpu_check else ["", *sh("nvidia-smi", "-q").splitlines()[:40]])) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=ROOT / "runs/default/bundle")
    p.add_argument("--out", type=Path, required=True, help="results folder (created; its files are overwritten)")
    p.add_argument("--cpu-check", action="store_true", help="no GPU: the same steps on the CPU flavour, tiny settings")
    p.add_argument("--tensorrt", action="store_true", help="Triton's onnxruntime backend with TensorRT FP16")
    p.add_argument("--tritonserver", help="a tritonserver binary (default: the one on PATH, else docker --image)")
    p.add_argument(
        "--image",
        default=IMAGE,
        help="Triton image for docker; its -sdk twin runs perf_analyzer when "
        "none is installed (default: $TRITON_IMAGE, else deploy/docker-compose.gpu.yml's: %(default)s)",
    )
    p.add_argument("--paths", help="throughput.py paths (default text,tag,caption; --cpu-check: text)")
    p.add_argument("--concurrency", help="perf_analyzer and throughput.py (default 1,8,32; --cpu-check: 1,2)")
    p.add_argument("--seconds", type=float, help="measured seconds a cell (default 10; --cpu-check: 1)")
    p.add_argument("--ready-timeout", type=float, default=1200.0, help="seconds for Triton to load (TensorRT builds)")
    args = p.parse_args(argv)
    args.paths = args.paths or ("text" if args.cpu_check else "text,tag,caption")
    args.concurrency = args.concurrency or ("1,2" if args.cpu_check else "1,8,32")
    args.seconds = args.seconds or (1.0 if args.cpu_check else 10.0)
    args.bundle, args.out = args.bundle.resolve(), args.out.resolve()
    how, perf = prerequisites(args)

    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that a SIGTERM runs the clean-up below too
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started ignoring it (nohup, `cmd &`):
    # then our children, throughput.py among them, take SIGINT as KeyboardInterrupt and stop their gateways
    summary, problems = open(args.out / "summary.txt", "w"), []
    results: dict = {
        "cpu_check": args.cpu_check,
        "tensorrt": args.tensorrt,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "throughput": {},
    }

    def say(text: str) -> None:
        print(text, flush=True)
        summary.write(text + "\n")

    (args.out / "env.txt").write_text(versions(args, how, perf))
    shutil.rmtree(args.out / "repo", ignore_errors=True)  # a fresh repository: this bundle as version 1 only
    flavor = ["--flavor", "cpu" if args.cpu_check else "gpu", *(["--tensorrt"] if args.tensorrt else [])]
    triton = None
    try:
        if run(
            [
                PY,
                "-m",
                "blat_export",
                "triton",
                "--bundle",
                str(args.bundle),
                "--triton",
                str(args.out / "repo"),
                *flavor,
            ],
            args.out / "blat_export.log",
            timeout=600,
        )[0]:
            die(f"python -m blat_export triton failed, see {args.out / 'blat_export.log'}")
        triton = start_triton(args, how)
        with urllib.request.urlopen(triton.http_url + "/v2", timeout=10) as r, open(args.out / "env.txt", "a") as f:
            f.write(f"triton server {json.load(r).get('version')}\n")
        say(
            f"tritonserver ready on {triton.grpc_url}: {'cpu' if args.cpu_check else 'gpu'} flavour"
            f"{', TensorRT FP16' if args.tensorrt else ''}"
        )
        if perf:
            results["perf_analyzer"], table = perf_analyzer(args, perf, triton.grpc_url, problems)
            say(f"\n== perf_analyzer: gRPC, one item a request (Triton batches them) ==\n{table}")
        else:
            say("\n== perf_analyzer: skipped, none installed (pip install perf-analyzer, or docker for -sdk) ==")
        before = inferences(triton)
        results["throughput"]["triton"] = throughput(
            args, "triton", problems, say, BLAT_SERVER_BACKEND="triton", BLAT_SERVER_TRITON__URL=triton.grpc_url
        )
        after = inferences(triton)
        (args.out / "triton_stats.json").write_text(json.dumps({"before": before, "after": after}, indent=2))
        if results["throughput"]["triton"] and sum(after.values()) <= sum(before.values()):
            problems.append("Triton counted no inferences from the gateway: the triton run did not measure Triton")
    finally:
        stop_children()
        if triton:
            triton.stop()
        if how and how[0] == "docker":
            subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True)
    why_not = cuda_unusable(args.bundle)  # now that Triton is gone, the CUDA run has the GPU to itself
    if why_not:
        say(f"\n== throughput.py, onnxruntime on CUDA: skipped, {why_not} ==")
    else:
        try:
            results["throughput"]["ort_cuda"] = throughput(
                args, "ort_cuda", problems, say, BLAT_SERVER_BACKEND="onnxruntime"
            )
        finally:
            stop_children()
    (args.out / "results.json").write_text(json.dumps({**results, "problems": problems}, indent=2))
    say("\n" + ("\n".join(f"FAILED: {x}" for x in problems) or "all steps passed") + f"; results in {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
