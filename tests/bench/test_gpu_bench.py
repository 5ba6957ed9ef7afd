"""bench/gpu_bench.py: its --help, its refusals (no GPU without --cpu-check, no bundle), and --cpu-check end to end
on the tiny bundle: the CPU-flavour repository on the nvidia-pytriton wheel's tritonserver, throughput.py through a
gateway that really calls it, every process stopped at the end. The GPU run itself needs a GPU host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "gpu_bench.py"


def gpu_bench(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}
    )


def test_help():
    got = gpu_bench("--help")
    assert got.returncode == 0, got.stderr
    assert all(word in got.stdout for word in ("--cpu-check", "--tensorrt", "perf_analyzer", "tritonserver:"))


def test_refuses_without_gpu_or_bundle(tmp_path):
    # PATH holds only the interpreter's directory: no nvidia-smi, whatever this machine has.
    got = gpu_bench("--bundle", str(tmp_path), "--out", str(tmp_path / "out"), PATH=str(Path(sys.executable).parent))
    assert got.returncode == 1 and "no GPU" in got.stderr and "--cpu-check" in got.stderr, got.stderr
    got = gpu_bench("--bundle", str(tmp_path), "--out", str(tmp_path / "out"), "--cpu-check")
    assert got.returncode == 1 and "not a bundle directory" in got.stderr, got.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written or started


def running_with(text: str) -> list[str]:
    """Command lines of the processes whose arguments mention `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


@pytest.mark.slow
def test_cpu_check(tiny_bundle, tmp_path):
    from blat_export.triton import TritonUnavailable, pytriton_server_dir

    try:
        pytriton_server_dir()
    except TritonUnavailable as e:
        pytest.skip(str(e))
    out = tmp_path / "results"
    got = gpu_bench("--bundle", str(tiny_bundle), "--out", str(out), "--cpu-check", timeout=900)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]

    result = json.loads((out / "throughput_triton.json").read_text())
    cells = [cell for mode in ("batched", "unbatched") for key, cell in result[mode].items() if key.startswith("text@")]
    assert len(cells) == 4 and all(c["requests"] > 0 and set(c["statuses"]) == {"200"} for c in cells), cells
    stats = json.loads((out / "triton_stats.json").read_text())  # the gateway called Triton, not ONNX Runtime
    assert stats["after"]["text_encoder/1"] > stats["before"]["text_encoder/1"]
    summary = (out / "summary.txt").read_text()
    assert "== throughput.py, triton ==" in summary and "batched rps" in summary and "all steps passed" in summary
    assert "== perf_analyzer" in summary and "onnxruntime on CUDA" in summary  # run, or skipped saying why
    assert "triton server 2." in (out / "env.txt").read_text()
    assert json.loads((out / "results.json").read_text())["problems"] == []
    assert running_with(str(out)) == []  # the tritonserver serving <out>/repo is gone
