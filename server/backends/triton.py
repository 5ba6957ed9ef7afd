"""Triton backend: the bundle's graphs served by a Triton Inference Server, over gRPC with tritonclient.

Every call has a deadline; UNAVAILABLE answers are retried a bounded number of times with backoff; a
circuit breaker fails fast (BackendDown) after repeated failures instead of queueing on a dead server.
A [B] tensor travels as [B, 1] (Triton's batch axis is implicit: the model config reshapes it back).
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from contract.bundle import BundleManifest, read_bundle
from server.backends import BackendError
from server.errors import BackendDown, DeadlineExceeded
from server.settings import TritonSettings

log = logging.getLogger(__name__)
_TRITON_DTYPES = {"float32": "FP32", "int64": "INT64"}


class CircuitBreaker:
    """Closed -> open after `failures` consecutive failures -> half-open (one trial call) after `reset_s`."""

    def __init__(self, failures: int, reset_s: float):
        self.threshold, self.reset_s = failures, reset_s
        self._failures, self._opened_at = 0, None
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            if self._opened_at is None:
                return True
            if time.monotonic() - self._opened_at >= self.reset_s:
                self._opened_at = time.monotonic()  # half-open: let this one call through, hold the rest
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._failures, self._opened_at = 0, None

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self.threshold:
                self._opened_at = time.monotonic()

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None


class TritonBackend:
    def __init__(self, bundle_dir: str | Path, settings: TritonSettings, verify: bool = True):
        self.bundle_dir = Path(bundle_dir)
        self.manifest: BundleManifest = read_bundle(self.bundle_dir, verify=verify)
        self.settings = settings
        self.client = grpcclient.InferenceServerClient(url=settings.url)
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)

    def _inputs(self, graph: str, inputs: dict[str, np.ndarray]) -> list:
        out = []
        for spec in self.manifest.graphs[graph].inputs:
            if spec.name not in inputs:
                raise BackendError(f"{graph}: missing input {spec.name!r}")
            arr = np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype)
            if len(spec.shape) == 1:  # [B] travels as [B, 1]
                arr = arr.reshape(-1, 1)
            tensor = grpcclient.InferInput(spec.name, list(arr.shape), _TRITON_DTYPES[spec.dtype])
            tensor.set_data_from_numpy(arr)
            out.append(tensor)
        return out

    def run(self, graph: str, inputs: dict[str, np.ndarray], timeout_s: float | None = None) -> dict[str, np.ndarray]:
        if graph not in self.manifest.graphs:
            raise BackendError(f"bundle {self.manifest.id} has no graph {graph!r}")
        if not self.breaker.allow():
            raise BackendDown(f"Triton at {self.settings.url} is failing; not retrying for up to "
                              f"{self.settings.breaker_reset_s:g} s (circuit open)")
        spec = self.manifest.graphs[graph]
        tensors = self._inputs(graph, inputs)
        outputs = [grpcclient.InferRequestedOutput(o.name) for o in spec.outputs]
        timeout = timeout_s if timeout_s is not None else self.settings.timeout_s
        deadline = time.monotonic() + timeout
        for attempt in range(self.settings.retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                result = self.client.infer(graph, tensors, outputs=outputs, client_timeout=left,
                                           model_version=self.settings.model_version)
            except InferenceServerException as e:
                status = str(e.status() or "")
                if "DEADLINE_EXCEEDED" in status:
                    self.breaker.failure()
                    raise DeadlineExceeded(f"Triton {graph}: no answer within {timeout:g} s") from None
                if "UNAVAILABLE" in status or "not ready" in str(e.message()).lower():
                    log.warning("triton unavailable", extra={"graph": graph, "attempt": attempt, "error": e.message()})
                    time.sleep(min(0.05 * 2 ** attempt, max(0.0, deadline - time.monotonic())))
                    continue
                self.breaker.failure()
                raise BackendError(f"Triton {graph}: {e.message()}") from None
            self.breaker.success()
            return {o.name: result.as_numpy(o.name).reshape(-1) if len(o.shape) == 1 else result.as_numpy(o.name)
                    for o in spec.outputs}
        self.breaker.failure()
        raise BackendDown(f"Triton at {self.settings.url} is unavailable (graph {graph}, "
                          f"{self.settings.retries + 1} attempts)")

    def ready(self) -> bool:
        try:
            return self.client.is_server_ready(client_timeout=2.0) and all(
                self.client.is_model_ready(g, self.settings.model_version, client_timeout=2.0) for g in self.manifest.graphs)
        except InferenceServerException:
            return False

    def close(self) -> None:
        self.client.close()
