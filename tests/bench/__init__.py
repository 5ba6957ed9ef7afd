"""Tests of the bench/ scripts. bench/ is a folder of scripts, not a package: each test loads its script by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py as a module (its top level runs once per test module)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[2] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
