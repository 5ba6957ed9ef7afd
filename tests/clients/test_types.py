"""The client's types hold: the package passes `mypy --strict` (its settings: clients/pyproject.toml), and so does
every ```python example in README.md that uses it, so `await c.search_text(...)` on an AsyncClient type-checks.
Snippets that get the types wrong (a missing await, an await on the blocking client) must fail, so the check is
not vacuous. One mypy run covers all of it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "blat_client"
CONFIG = ROOT / "clients" / "pyproject.toml"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>bash|python)\n(?P<code>.*?)\n```", re.S)  # tests/test_readme.py
USES_CLIENT = re.compile(r"^\s*(from blat_client\b|import blat_client\b)", re.M)
ERROR = re.compile(r"^(?P<path>.+?):(?P<line>\d+): error: (?P<message>.*)$", re.M)

# Typed uses of both clients beyond the README's: each line must type-check as written.
TYPED_USES = """
import asyncio
from blat_client import AddReport, AsyncClient, Client, Item, SearchResult, TagWindow


async def main() -> None:
    async with AsyncClient("grpc://127.0.0.1:50051") as c:
        found: SearchResult = await c.search_text("rain", k=3, filter={"tags_any": ["Rain"]})
        pages: list[SearchResult] = await asyncio.gather(*(c.search_text(q) for q in ["rain", "a door"]))
        report: AddReport = await c.add_items([{"id": "a", "audio": b"RIFF"}], concurrency=2, upsert=True)
        items: list[Item] = [it async for it in c.iter_items(page_size=10)]
        windows: list[TagWindow] = [w async for w in c.stream_tag([b"\\0\\0"], 16000)]
        print(found.ids, pages, report.added, items, windows)


with Client("http://127.0.0.1:8080") as s:
    hit: SearchResult = s.search_text("rain")
    stored: Item = s.add_item("b", path="clips/b.wav", tags=["Door"])
    print(hit.ids, stored.id, s.add_items([{"id": "c", "path": "clips/c.wav"}]).skipped)
asyncio.run(main())
"""

# Wrong on purpose: mypy must report an error on each line marked `# error`, and nowhere else.
WRONG = """
from blat_client import AsyncClient, Client, SearchResult


async def main() -> None:
    async with AsyncClient("http://127.0.0.1:8080") as c:
        r: SearchResult = c.search_text("x")  # error: a coroutine, not awaited
        print(r.ids)
    with Client("http://127.0.0.1:8080") as s:
        print((await s.search_text("x")).ids)  # error: the blocking client's answer is not awaitable
"""


READMES = {"readme": ROOT / "README.md", "clients-readme": ROOT / "clients" / "README.md"}


def readme_examples() -> list[tuple[str, str]]:
    """(name, code) of every ```python block that imports blat_client in README.md ("readme:LINE") and in the
    client distribution's own clients/README.md ("clients-readme:LINE")."""
    out = []
    for prefix, path in READMES.items():
        text = path.read_text()
        out += [
            (f"{prefix}:{text[: m.start('code')].count(chr(10)) + 1}", m.group("code"))
            for m in BLOCK.finditer(text)
            if m.group("lang") == "python" and USES_CLIENT.search(m.group("code"))
        ]
    return out


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> dict[str, list[tuple[int, str]]]:
    """mypy --strict over the package, the README's examples, TYPED_USES and WRONG at once: {name: [(line, error)]}
    with name "package", "readme:LINE" / "clients-readme:LINE" (a block's first line), "typed_uses" or "wrong"."""
    folder = tmp_path_factory.mktemp("types")
    files = {
        name: (folder / f"{name.replace(':', '_').replace('-', '_')}.py", code) for name, code in readme_examples()
    }
    assert sum(n.startswith("readme:") for n in files) >= 2, "README.md's blat_client examples are gone"
    assert any(n.startswith("clients-readme:") for n in files), "clients/README.md's examples are gone"
    files["typed_uses"] = (folder / "typed_uses.py", TYPED_USES)
    files["wrong"] = (folder / "wrong.py", WRONG)
    for path, code in files.values():
        path.write_text(code)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", str(CONFIG), "--cache-dir", str(folder / "cache")]
        + ["--show-absolute-path", "--no-pretty", "--no-color-output", str(PACKAGE)]
        + [str(path) for path, _ in files.values()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = re.search(r"^(Success: no issues found|Found \d+ errors?) in", out.stdout, re.M)
    assert out.returncode in (0, 1) and summary, f"mypy did not run:\n{out.stdout}{out.stderr}"  # 1: errors found
    names = {str(path): name for name, (path, _) in files.items()}
    errors: dict[str, list[tuple[int, str]]] = {name: [] for name in [*files, "package"]}
    for m in ERROR.finditer(out.stdout):
        name = names.get(m.group("path"), "package" if m.group("path").startswith(str(PACKAGE)) else m.group("path"))
        errors.setdefault(name, []).append((int(m.group("line")), m.group("message")))
    assert set(errors) == {*files, "package"}, f"errors outside the checked files:\n{out.stdout}"
    return errors


def test_client_package_passes_mypy_strict(checked):
    assert checked["package"] == [], "\n".join(f"{line}: {msg}" for line, msg in checked["package"])


def test_readme_examples_pass_mypy_strict(checked):
    for name, errors in checked.items():
        if name.startswith(("readme:", "clients-readme:")):
            assert errors == [], f"{name} (the block's first line):\n" + "\n".join(
                f"  +{line}: {msg}" for line, msg in errors
            )
    assert checked["typed_uses"] == [], checked["typed_uses"]


def test_wrong_types_fail_mypy_strict(checked):
    expected = [i for i, text in enumerate(WRONG.splitlines(), 1) if "# error" in text]
    assert sorted({line for line, _ in checked["wrong"]}) == expected, checked["wrong"]
    missing_await, awaited_sync = (msg for line, msg in checked["wrong"] if line in expected)
    assert '"Coroutine[Any, Any, SearchResult]"' in missing_await and '"SearchResult"' in missing_await
    assert 'Incompatible types in "await"' in awaited_sync
