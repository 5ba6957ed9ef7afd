"""Inference backends: each runs a bundle's graphs by name. `ort` is in-process; `triton` is remote."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from blat_contract.bundle import BundleManifest
from blat_gateway.errors import BackendError  # noqa: F401 - re-exported for backends


class Backend(Protocol):
    manifest: BundleManifest

    def run(self, graph: str, inputs: dict[str, np.ndarray], timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Run one graph of the bundle; inputs and outputs by tensor name (see bundle.json `graphs`)."""
        ...

    # Optional: `captions(waveform (B, N), lengths (B,), tags (B, n_tags), options) -> per clip [(text, log_prob)]`,
    # the whole beam search in one call (Triton's BLS captioner). Without it the runtime runs the search itself,
    # one decoder call per step.

    def ready(self) -> bool: ...

    def close(self) -> None: ...
