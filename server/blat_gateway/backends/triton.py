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

from blat_contract.beam import DecodingOptions
from blat_contract.bundle import BundleManifest, read_bundle
from blat_gateway.backends import BackendError
from blat_gateway.errors import BackendDown, DeadlineExceeded
from blat_gateway.settings import TritonSettings

log = logging.getLogger(__name__)
_TRITON_DTYPES = {"float32": "FP32", "int64": "INT64"}
CAPTIONER_MODEL = "captioner"  # the BLS model export/blat_export/triton.py adds to every repository with a captioner


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


def channel_args(settings: TritonSettings) -> list[tuple]:
    """tritonclient's own defaults (unbounded messages, its keepalive), plus the load-balancing policy."""
    keepalive = grpcclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_receive_message_length", 2**31 - 1),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.lb_policy_name", settings.load_balancing),
    ]


class TritonBackend:
    def __init__(self, bundle_dir: str | Path, settings: TritonSettings, verify: bool = True):
        self.bundle_dir = Path(bundle_dir)
        self.manifest: BundleManifest = read_bundle(self.bundle_dir, verify=verify)
        self.settings = settings
        self.client = grpcclient.InferenceServerClient(url=settings.url, channel_args=channel_args(settings))
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
            raise BackendDown(
                f"Triton at {self.settings.url} is failing; not retrying for up to "
                f"{self.settings.breaker_reset_s:g} s (circuit open)"
            )
        spec = self.manifest.graphs[graph]
        result = self._infer(graph, self._inputs(graph, inputs), [o.name for o in spec.outputs], timeout_s)
        return {
            o.name: result.as_numpy(o.name).reshape(-1) if len(o.shape) == 1 else result.as_numpy(o.name)
            for o in spec.outputs
        }

    def captions(
        self,
        waveform: np.ndarray,
        lengths: np.ndarray,
        tags: np.ndarray,
        options: DecodingOptions,
        timeout_s: float | None = None,
    ) -> list[list[tuple[str, float]]]:
        """The repository's BLS `captioner` model (export/blat_export/triton_models/captioner.py): the whole beam
        search inside
        Triton, one round trip for the batch instead of one per decoding step."""
        if not self.breaker.allow():
            raise BackendDown(
                f"Triton at {self.settings.url} is failing; not retrying for up to "
                f"{self.settings.breaker_reset_s:g} s (circuit open)"
            )
        tensors = []
        for name, arr, dtype in (
            ("waveform", waveform.astype(np.float32), "FP32"),
            ("lengths", lengths.astype(np.int64).reshape(-1, 1), "INT64"),
            ("tags", tags.astype(np.float32), "FP32"),
        ):
            tensor = grpcclient.InferInput(name, list(arr.shape), dtype)
            tensor.set_data_from_numpy(np.ascontiguousarray(arr))
            tensors.append(tensor)
        params = {
            "beam_size": options.beam_size,
            "n_best": options.n_best,
            "max_tokens": options.max_tokens,
            "length_penalty": options.length_penalty,
        }
        result = self._infer(CAPTIONER_MODEL, tensors, ["captions", "scores"], timeout_s, parameters=params)
        return [
            [(c.decode(), float(s)) for c, s in zip(row, scores) if np.isfinite(s)]  # -inf: fewer finished
            for row, scores in zip(result.as_numpy("captions"), result.as_numpy("scores"))
        ]

    def _infer(self, model: str, tensors: list, outputs: list[str], timeout_s: float | None, **kwargs):
        """One Triton inference with the deadline, bounded retries on UNAVAILABLE and the circuit breaker."""
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        timeout = timeout_s if timeout_s is not None else self.settings.timeout_s
        deadline = time.monotonic() + timeout
        for attempt in range(self.settings.retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                result = self.client.infer(
                    model,
                    tensors,
                    outputs=requested,
                    client_timeout=left,
                    model_version=self.settings.model_version,
                    **kwargs,
                )
            except InferenceServerException as e:
                status = str(e.status() or "")
                if "DEADLINE_EXCEEDED" in status:
                    self.breaker.failure()
                    raise DeadlineExceeded(f"Triton {model}: no answer within {timeout:g} s") from None
                if "UNAVAILABLE" in status or "not ready" in str(e.message()).lower():
                    log.warning("triton unavailable", extra={"graph": model, "attempt": attempt, "error": e.message()})
                    time.sleep(min(0.05 * 2**attempt, max(0.0, deadline - time.monotonic())))
                    continue
                self.breaker.failure()
                raise BackendError(f"Triton {model}: {e.message()}") from None
            self.breaker.success()
            return result
        self.breaker.failure()
        raise BackendDown(
            f"Triton at {self.settings.url} is unavailable (model {model}, {self.settings.retries + 1} attempts)"
        )

    def ready(self) -> bool:
        try:
            models = [*self.manifest.graphs, *([CAPTIONER_MODEL] if self.manifest.captioner else [])]
            return self.client.is_server_ready(client_timeout=2.0) and all(
                self.client.is_model_ready(m, self.settings.model_version, client_timeout=2.0) for m in models
            )
        except InferenceServerException:
            return False

    def close(self) -> None:
        self.client.close()
