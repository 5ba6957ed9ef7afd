"""In-process ONNX Runtime backend: one InferenceSession per graph of the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from blat_contract.bundle import BundleManifest, read_bundle
from blat_gateway.backends import BackendError


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it (onnxruntime-gpu), else CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeBackend:
    def __init__(
        self,
        bundle_dir: str | Path,
        threads: int = 0,
        providers: list[str] | None = None,
        verify: bool = True,
        spinning: bool = False,
        memory_arena: bool = False,
    ):
        self.bundle_dir = Path(bundle_dir)
        self.manifest: BundleManifest = read_bundle(self.bundle_dir, verify=verify)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0: onnxruntime's default (all cores)
        # Between ops (and after a run) ONNX Runtime's pool threads busy-wait for more work by default. In the gateway
        # they share the cores with the HTTP, JSON and index threads, whose CPU that spinning would take.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.log_severity_level = 3
        # The CPU arena keeps every block it ever took (grown in powers of two) for the life of the session, one
        # arena per graph: with the gateway's dynamic shapes it held the peak of the largest batch of each graph
        # forever (a 120 s clip: 360 MB kept after one call, 850 MB after a batch of two; without it 100 MB,
        # returned). Memory patterns are planned per input shape, which never repeat here. Both off by default.
        opts.enable_cpu_mem_arena = memory_arena
        opts.enable_mem_pattern = memory_arena
        providers = providers or default_providers()
        self.sessions = {
            name: ort.InferenceSession(str(self.bundle_dir / g.file), opts, providers=providers)
            for name, g in self.manifest.graphs.items()
        }

    def run(self, graph: str, inputs: dict[str, np.ndarray], timeout_s: float | None = None) -> dict[str, np.ndarray]:
        if graph not in self.sessions:
            raise BackendError(f"bundle {self.manifest.id} has no graph {graph!r} (has {sorted(self.sessions)})")
        spec = self.manifest.graphs[graph]
        # timeout_s is not enforced in-process: a run cannot be interrupted; callers check deadlines between runs.
        try:
            out = self.sessions[graph].run(
                [o.name for o in spec.outputs], {t.name: inputs[t.name] for t in spec.inputs}
            )
        except KeyError as e:
            raise BackendError(f"{graph}: missing input {e}") from None
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"{graph}: {e}") from None
        return {o.name: v for o, v in zip(spec.outputs, out)}

    def ready(self) -> bool:
        return bool(self.sessions)

    def close(self) -> None:
        self.sessions.clear()
