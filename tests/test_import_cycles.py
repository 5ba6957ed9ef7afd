"""No import cycles among first-party modules.

Every import in every first-party module counts: module-level, function-local, under `if TYPE_CHECKING:`, absolute or
relative. A cycle hidden behind a function-local import is still a cycle (the modules still depend on each other); the
fix is to move code, not to hide the import. Each import becomes an edge to the deepest first-party module that
exists (`from pkg import sub`, where `sub` is a submodule, is an edge to `pkg.sub`); the implicit imports of parent
packages' `__init__` are not edges. The strongly connected components of that graph with more than one module are the
cycles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package name -> the folder holding its source
PACKAGES = {
    "blat": ROOT / "blat",
    "blat_contract": ROOT / "blat_contract",
    "blat_jobs": ROOT / "blat_jobs",
    "blat_wire": ROOT / "blat_wire",
    "blat_cli": ROOT / "blat_cli",
    "blat_export": ROOT / "export" / "blat_export",
    "blat_gateway": ROOT / "server" / "blat_gateway",
    "blat_client": ROOT / "clients" / "blat_client",
}
SKIP_PARTS = {"tests", "bench", "__pycache__"}


def module_name(package: str, source: Path, path: Path) -> str:
    """`server/blat_gateway/index/store.py` -> `blat_gateway.index.store`; a package's `__init__.py` -> the package."""
    parts = [package, *path.relative_to(source).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def first_party_modules() -> dict[str, Path]:
    modules = {}
    for package, source in PACKAGES.items():
        assert (source / "__init__.py").is_file(), f"no package {package} at {source}"
        for path in sorted(source.rglob("*.py")):
            rel = path.relative_to(source)
            if SKIP_PARTS & set(rel.parts[:-1]) or "_pb2" in path.name:
                continue
            modules[module_name(package, source, path)] = path
    return modules


def deepest(name: str, modules) -> str | None:
    """The deepest first-party module that `name` (a dotted module or module.attribute path) lies in, or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules) -> set[str]:
    """The first-party modules that `module` (its source at `path`) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets |= {deepest(alias.name, modules) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                keep = len(package_parts) - (node.level - 1)
                assert keep > 0, f"{path}: relative import beyond the top-level package"
                base = ".".join(package_parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                targets.add(deepest(f"{base}.{alias.name}", modules) if alias.name != "*" else deepest(base, modules))
    targets.discard(None)
    targets.discard(module)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = first_party_modules()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit): the strongly connected components, each sorted."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The components that are cycles: more than one module, or one module importing itself."""
    return sorted(c for c in strongly_connected(graph) if len(c) > 1 or c[0] in graph.get(c[0], ()))


def test_cycle_finder_on_a_synthetic_graph():
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},  # a -> b -> c -> a
        "d": {"e"},
        "e": set(),  # no cycle
        "f": {"g"},
        "g": {"f"},  # f <-> g
        "h": {"h"},  # self-import
        "i": {"a", "f"},  # reaches cycles, in none
    }
    assert cycles(graph) == [["a", "b", "c"], ["f", "g"], ["h"]]
    assert cycles({"x": {"y"}, "y": set()}) == []
    # a long chain closing on itself: the iterative finder has no recursion limit
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(5000)}
    chain["m5000"] = {"m0"}
    assert cycles(chain) == [sorted(chain)]


def test_edges_resolve_to_the_deepest_module(tmp_path):
    modules = {"p": None, "p.sub": None, "p.sub.leaf": None, "p.other": None}
    source = tmp_path / "p" / "sub"
    source.mkdir(parents=True)
    (source / "__init__.py").write_text(
        "from . import leaf\n"  # submodule -> p.sub.leaf
        "from ..other import thing\n"  # attribute of p.other -> p.other
        "def f():\n"
        "    import p.sub.leaf.x\n"  # not a module -> p.sub.leaf
        "    from p import helper\n"  # attribute of p -> p
        "    import os\n"  # not first party
    )
    assert imports_of("p.sub", source / "__init__.py", modules) == {"p.sub.leaf", "p.other", "p"}


def test_module_names_follow_the_package_root():
    modules = first_party_modules()
    assert "blat_gateway.index.store" in modules
    assert "blat_export" in modules and "blat_client" in modules
    assert not any(".tests." in m or "_pb2" in m for m in modules)


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    report = "\n".join(
        f"  cycle {n}: "
        + " <-> ".join(c)
        + "\n    imports: "
        + ", ".join(f"{a} -> {b}" for a in c for b in sorted(graph[a]) if b in c)
        for n, c in enumerate(found, 1)
    )
    assert not found, f"{len(found)} import cycle(s) among first-party modules:\n{report}"
