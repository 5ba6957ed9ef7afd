"""The client is its own distribution: built from clients/ alone, installed into an empty virtualenv, and its own
test suite (clients/tests) passes there against a real gateway over REST and gRPC.

The gateway is a real process: the client's own suite runs against what a user would run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.server.conftest import ROOT, running_server

CLIENTS = ROOT / "clients"


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A new virtualenv holding blat-client (installed from a wheel built out of clients/) and pytest, nothing else."""
    tmp = tmp_path_factory.mktemp("client-venv")
    venv, wheels = tmp / "venv", tmp / "wheels"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheels, CLIENTS], timeout=600)
    wheel = next(wheels.glob("blat_client-*.whl"))
    run([python, "-m", "pip", "install", "--quiet", wheel, "pytest>=8"], timeout=600)
    return venv


def test_the_wheel_holds_the_client_and_its_stubs_only(client_venv):
    wheel = next((client_venv.parent / "wheels").glob("blat_client-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"blat_client"}, tops
    for stub in ("blat_pb2.py", "blat_pb2_grpc.py", "blat.proto"):
        assert f"blat_client/_wire/{stub}" in names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = sorted(
        line.split(":", 1)[1].strip().split(">")[0].split("=")[0].split("<")[0]
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:")
    )
    assert requires == ["grpcio", "httpx", "protobuf"]


def test_the_venv_has_no_server_side(client_venv):
    python = client_venv / "bin" / "python"
    code = (
        "import importlib.util, json, blat_client; print(json.dumps({m: importlib.util.find_spec(m) is not None "
        "for m in ('blat_gateway', 'blat_wire', 'blat_contract', 'blat', 'numpy', 'torch', 'blat_client')}))"
    )
    found = json.loads(run([python, "-c", code], cwd="/").stdout)
    assert found == {
        "blat_gateway": False,
        "blat_wire": False,
        "blat_contract": False,
        "blat": False,
        "numpy": False,
        "torch": False,
        "blat_client": True,
    }


def test_client_suite_in_the_clean_venv(client_venv, tiny_bundle, tmp_path):
    """clients/tests, run by the clean venv's interpreter from a copy outside the repository (so nothing of the
    repository can be imported by accident), against a gateway on the tiny bundle."""
    suite = tmp_path / "suite"
    shutil.copytree(CLIENTS / "tests", suite, ignore=shutil.ignore_patterns("__pycache__"))
    with running_server(tiny_bundle, tmp_path / "gw") as gw:
        env = {
            "BLAT_TEST_URL": gw.http_url,
            "BLAT_TEST_GRPC": gw.grpc_address,
            "BLAT_TEST_ROOT": str(gw.roots),
            "PATH": f"{client_venv / 'bin'}:/usr/bin:/bin",
            "HOME": str(tmp_path),
        }
        out = subprocess.run(
            [client_venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


def test_build_refuses_stubs_that_do_not_match_the_proto(client_venv, tmp_path):
    copy = tmp_path / "clients"
    shutil.copytree(CLIENTS, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "tests"))
    proto = copy / "blat_client" / "_wire" / "blat.proto"
    proto.write_text(proto.read_text() + "\nmessage Extra { string x = 1; }\n")
    out = subprocess.run(
        [client_venv / "bin" / "python", "-m", "pip", "wheel", "--no-deps", "--wheel-dir", tmp_path / "w", copy],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode != 0 and "blat_client/_wire is stale" in out.stdout + out.stderr


def test_committed_stubs_match_the_proto():
    """Both generated copies (wire/ for the server, clients/blat_client/_wire/ for the client) are what
    blat_wire/blat.proto generates today."""
    out = subprocess.run(
        [sys.executable, "-m", "blat_wire.generate", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
