"""The arrows between layers point one way: blat_contract <- blat <- blat_export; blat_contract, blat_wire <-
blat_gateway <- blat_jobs. FAISS is imported only inside server/blat_gateway/index/ (the FAISS engine). The client
(`blat_client`, its own distribution under clients/) depends on none of them: it carries its own copy of the wire."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "blat_contract": {"torch", "blat", "blat_export", "blat_gateway", "blat_client", "transformers"},
    "blat_gateway": {"torch", "blat", "blat_export", "transformers", "blat_jobs", "ray"},  # ray: the jobs extra
    "blat_client": {
        "torch",
        "blat",
        "blat_export",
        "blat_gateway",
        "blat_contract",
        "blat_wire",
        "transformers",
        "numpy",
    },
    "blat": {"blat_export", "blat_gateway", "blat_client"},
    "blat_export": {"blat_gateway", "blat_client"},
    "blat_wire": {"torch", "blat", "blat_export", "blat_gateway", "blat_client", "blat_contract"},
    "blat_jobs": {
        "torch",
        "blat",
        "blat_export",
        "transformers",
        "blat_client",
    },  # shards.py: stdlib (test_shards.py); ray_run.py: ray
}
SOURCE = {  # packages whose source is not at ROOT/<name>
    "blat_client": ROOT / "clients" / "blat_client",
    "blat_gateway": ROOT / "server" / "blat_gateway",
    "blat_export": ROOT / "export" / "blat_export",
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    bad = {}
    source = SOURCE.get(package, ROOT / package)
    paths = sorted(source.rglob("*.py"))
    assert paths, f"no source found for {package} at {source}"
    for path in paths:
        hits = imported_roots(path) & FORBIDDEN[package]
        if hits:
            bad[str(path.relative_to(ROOT))] = sorted(hits)
    assert not bad, f"{package}/ imports layers it must not: {bad}"


def test_imports_with_torch_absent():
    """blat_gateway, blat_client, the `blat` command line and blat_contract import in an interpreter where torch cannot
    be
    imported at all; so does building `blat`'s parser (what `blat --help` and every remote command run).

    `__main__` modules are scripts (blat_client's and blat_cli's run their command line when imported); they import
    only the CLI modules checked here."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'blat', 'transformers'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pkgutil, importlib\n"
        "for pkg in ('blat_contract', 'blat_wire', 'blat_gateway', 'blat_client', 'blat_cli', 'blat_jobs'):\n"
        "    mod = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
        "        if info.name.rsplit('.', 1)[-1] != '__main__' or pkg not in ('blat_client', 'blat_cli'):\n"
        "            importlib.import_module(info.name)\n"
        "import blat_cli.main\n"
        "blat_cli.main.build_parser()\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_faiss_only_inside_the_index_engine():
    """Nothing outside server/blat_gateway/index/ imports FAISS: the rest reaches it through `VectorIndex`."""
    allowed = ROOT / "server" / "blat_gateway" / "index"
    bad = []
    for folder in (
        "server",
        "export",
        "blat",
        "blat_cli",
        "blat_contract",
        "blat_jobs",
        "blat_wire",
        "bench",
        "clients",
    ):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if allowed not in path.parents and "faiss" in imported_roots(path):
                bad.append(str(path.relative_to(ROOT)))
    assert not bad, f"FAISS imported outside server/blat_gateway/index/: {bad}"


JOBS_MAY_NOT_IMPORT = (
    "blat_gateway.service",
    "blat_gateway.services",
    "blat_gateway.rest",
    "blat_gateway.grpc_service",
    "blat_gateway.front_door",
    "blat_gateway.web",
)


def imported_modules(path: Path) -> set[str]:
    """Full names of the modules `path` imports (absolute imports; `from a import b` counts as a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_jobs_use_the_inference_layer_not_the_gateway():
    """blat_jobs reach the gateway's model path through blat_gateway.inference (and the runtime, decoder, index
    formats), never through its composition root, its services or its faces."""
    bad = {}
    for path in sorted((ROOT / "blat_jobs").rglob("*.py")):
        hits = {m for m in imported_modules(path) if any(m == p or m.startswith(p + ".") for p in JOBS_MAY_NOT_IMPORT)}
        if hits:
            bad[str(path.relative_to(ROOT))] = sorted(hits)
    assert not bad, f"blat_jobs/ imports the gateway's server side: {bad}"


def test_the_inference_layer_imports_no_service_or_face():
    path = ROOT / "server" / "blat_gateway" / "inference.py"
    hits = {m for m in imported_modules(path) if any(m == p or m.startswith(p + ".") for p in JOBS_MAY_NOT_IMPORT)}
    assert not hits, f"server/blat_gateway/inference.py imports {sorted(hits)}"
