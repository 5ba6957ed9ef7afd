"""Inference backends: each runs a bundle's graphs by name. `ort` is in-process; `triton` is remote."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from contract.bundle import BundleManifest
from server.errors import BackendError  # noqa: F401 - re-exported for backends


class Backend(Protocol):
    manifest: BundleManifest

    def run(self, graph: str, inputs: dict[str, np.ndarray], timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Run one graph of the bundle; inputs and outputs by tensor name (see bundle.json `graphs`)."""
        ...

    def ready(self) -> bool:
        ...

    def close(self) -> None:
        ...
