"""The arrows between layers point one way: contract <- blat <- export; contract, wire <- server <- jobs. FAISS is
imported only inside server/index/ (the FAISS engine). The client
(`blat_client`, its own distribution under clients/) depends on none of them: it carries its own copy of the wire."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "contract": {"torch", "blat", "export", "server", "blat_client", "transformers"},
    "server": {"torch", "blat", "export", "transformers", "jobs"},
    "blat_client": {"torch", "blat", "export", "server", "contract", "wire", "transformers", "numpy"},
    "blat": {"export", "server", "blat_client"},
    "export": {"server", "blat_client"},
    "wire": {"torch", "blat", "export", "server", "blat_client", "contract"},
    "jobs": {"torch", "blat", "export", "transformers", "blat_client"},  # jobs/shards.py: stdlib only (its own test)
}
SOURCE = {"blat_client": ROOT / "clients" / "blat_client"}  # a package whose source is not at ROOT/<name>


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
    """server, blat_client, the `blat` command line and contract import in an interpreter where torch cannot be
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
        "for pkg in ('contract', 'wire', 'server', 'blat_client', 'blat_cli', 'jobs'):\n"
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
    """Nothing outside server/index/ imports FAISS: the rest reaches it through the `VectorIndex` protocol."""
    allowed = ROOT / "server" / "index"
    bad = []
    for folder in ("server", "export", "blat", "blat_cli", "contract", "jobs", "wire", "bench", "clients"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if allowed not in path.parents and "faiss" in imported_roots(path):
                bad.append(str(path.relative_to(ROOT)))
    assert not bad, f"FAISS imported outside server/index/: {bad}"
