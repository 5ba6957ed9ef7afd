"""The wheel as a user installs it: every top-level import name starts with `blat`, and `blat export triton` works
from a venv outside the repository (the Triton templates and model code travel as package data)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the tracked and new files, so no stale build/ output of the working tree can slip in."""
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    files = run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT).stdout.split("\n")
    for name in filter(None, files):
        if (ROOT / name).is_file() and not name.startswith(("tests/", "releases/", "bench/", "clients/")):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", dist, src])
    (found,) = dist.glob("blat_serve-*.whl")
    return found


def test_every_import_name_starts_with_blat(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops and all(t.startswith("blat") for t in tops), sorted(tops)
    assert {"blat", "blat_cli", "blat_contract", "blat_export", "blat_gateway", "blat_jobs", "blat_wire"} <= tops
    # what export triton reads at run time
    assert "blat_export/triton_templates/captioner/config.pbtxt.tmpl" in names
    assert "blat_export/triton_models/captioner.py" in names
    assert "blat_gateway/web/index.html" in names


def test_export_triton_from_a_venv_outside_the_repository(wheel, tiny_bundle, tmp_path):
    """The wheel installed without its dependencies into a fresh venv; the dependencies come from this interpreter's
    site-packages as a plain path (its .pth files, such as the editable install of this checkout, are not run)."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", "--no-deps", wheel])
    python = venv / "bin" / "python"
    where = run(
        [python, "-c", "import blat_export, blat_gateway; print(blat_export.__file__); print(blat_gateway.__file__)"],
        cwd=tmp_path,
    ).stdout.split()
    assert all(str(venv) in w for w in where), where  # the installed copies, not this checkout
    repo = tmp_path / "repo"
    run(
        [venv / "bin" / "blat", "export", "triton", "--bundle", tiny_bundle, "--triton", repo, "--flavor", "cpu"],
        cwd=tmp_path,
    )
    assert (repo / "captioner" / "config.pbtxt").is_file()
    assert (repo / "audio_encoder" / "config.pbtxt").read_text().count("name:") > 1
    assert (repo / "captioner" / "1" / "blat_contract" / "beam.py").is_file()
