"""Every test under tests/bench is in the `bench` tier: `make test-bench` (pytest -m bench) runs them, `make test`
(-m "not bench") leaves them out."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m deselects (the mark plugin's own hook)
def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.bench)
