"""Write a versioned model bundle: ONNX graphs + tokenizer + vocabulary + label bank + bundle.json.

The bundle is assembled in a temporary sibling directory and renamed into place, so a reader sees
either no bundle or a complete one. Every graph is checked against PyTorch before the rename.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from blat.models import DualEncoder, TagGuidedCaptioner
from blat.models.heads import read_head_classes
from blat_contract.bundle import (
    AudioSpec,
    BundleManifest,
    CaptionerSpec,
    GraphInfo,
    LabelBank,
    LabelSpec,
    TaggerSpec,
    TensorInfo,
    TextSpec,
    sha256_file,
    write_manifest,
)
from blat_contract.labels import labels_for_mids
from blat_export.graphs import _WRAPPERS, GRAPH_SPECS, _example_inputs, export_graph, has_tagger
from blat_export.labels import DEFAULT_PROMPT, build_label_bank
from blat_export.staging import staged_directory

log = logging.getLogger(__name__)
PARITY_ATOL = 1e-4  # max |ONNX Runtime - PyTorch| accepted at export time (fp32)


class ExportError(RuntimeError):
    """The exported graphs do not reproduce the PyTorch model."""


def check_parity(
    name: str, model: torch.nn.Module, onnx_path: Path, inputs: tuple[torch.Tensor, ...] | None = None
) -> float:
    """Max abs difference of every output between ONNX Runtime and PyTorch on `inputs` (default: the export example)."""
    inputs = inputs if inputs is not None else _example_inputs(name, model)
    with torch.no_grad():
        ref = _WRAPPERS[name](model).eval()(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {spec.name: x.numpy() for spec, x in zip(GRAPH_SPECS[name][0], inputs)})
    return max(float(np.abs(o.astype(np.float64) - r.numpy().astype(np.float64)).max()) for o, r in zip(out, ref))


def check_label_bank(dual: DualEncoder, bank: LabelBank, prompt: str) -> None:
    """A fitted bank belongs to `dual`: its text embeddings are the model's embeddings of `prompt` per label."""
    with torch.no_grad():
        probe = dual.encode_texts([prompt.format(label=n.lower()) for n in bank.names[:8]]).numpy()
    gap = float(np.abs(probe - bank.embeddings[:8]).max())
    if gap > PARITY_ATOL * 10:
        raise ExportError(f"the label bank was not made with this model and prompt (embeddings differ by {gap:.2e})")


def _graph_info(name: str) -> GraphInfo:
    inputs, outputs = GRAPH_SPECS[name]
    conv = lambda specs: tuple(TensorInfo(s.name, s.dtype, tuple(s.shape)) for s in specs)  # noqa: E731
    return GraphInfo(f"{name}.onnx", conv(inputs), conv(outputs))


def write_bundle(
    out_dir: str | Path,
    dual: DualEncoder,
    captioner: TagGuidedCaptioner | None = None,
    *,
    name: str = "blat",
    version: str | None = None,
    prompt: str = DEFAULT_PROMPT,
    source: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    calibration: tuple[torch.Tensor, torch.Tensor | None, np.ndarray | None] | None = None,
    label_bank: tuple[LabelBank, str] | None = None,
    beam_size: int = 3,
    tagger_zero_shot_weight: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Export `dual` (+ `captioner`) into the bundle directory `out_dir`; returns it.

    calibration: (waveforms (M, N), lengths (M,) or None, 0/1 targets (M, 527) or None) reference clips.
    label_bank: (bank, calibration method) fitted already (a release's); its text embeddings must be `dual`'s.
    tagger_zero_shot_weight: share of the zero-shot score mixed into the supervised head's labels (TaggerSpec).
    """
    out_dir = Path(out_dir)
    dual, captioner = dual.eval(), captioner.eval() if captioner is not None else None
    audio_cfg = dual.cfg.audio
    if captioner is not None and captioner.cfg.audio.frontend != audio_cfg.frontend:
        raise ValueError("the captioner and the dual encoder must share one audio front end (sample rate etc.)")
    version = version or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    with staged_directory(out_dir, overwrite) as tmp:
        graphs = ["audio_encoder", "audio_pool", "text_encoder"] + (["audio_tagger"] if has_tagger(dual) else [])
        owners = {g: dual for g in graphs}
        if captioner is not None:
            graphs += ["captioner_encoder", "captioner_decoder"]
            owners.update(captioner_encoder=captioner, captioner_decoder=captioner)
        parity = {}
        for g in tqdm(graphs, desc="export: ONNX graphs, checked against PyTorch", unit="graph"):
            path = export_graph(g, owners[g], tmp / f"{g}.onnx")
            parity[g] = check_parity(g, owners[g], path)
            if parity[g] > PARITY_ATOL:
                raise ExportError(f"{g}: ONNX Runtime differs from PyTorch by {parity[g]:.2e} > {PARITY_ATOL}")
        log.info("graphs exported", extra={"parity_max_abs": parity})

        dual.text_encoder.tokenizer.save(str(tmp / "tokenizer.json"))
        if captioner is not None:
            (tmp / "vocab.json").write_text(captioner.vocab.to_json())
        if label_bank is not None:
            bank, method = label_bank
            check_label_bank(dual, bank, prompt)
        else:
            audio, lengths, targets = calibration if calibration is not None else (None, None, None)
            bank, method = build_label_bank(dual, prompt, audio=audio, lengths=lengths, targets=targets)
        bank.save(tmp / "labels.npz")

        frontend = audio_cfg.frontend
        manifest = BundleManifest(
            name=name,
            version=version,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            embedding_dim=dual.cfg.embed_dim,
            logit_scale=float(dual.logit_scale.detach().exp()),
            audio=AudioSpec(
                frontend=frontend,
                min_samples=audio_cfg.min_samples,
                frame_seconds=audio_cfg.frame_seconds,
                clip_seconds=10.0,
            ),
            text=TextSpec(tokenizer="tokenizer.json", max_tokens=dual.cfg.text.max_tokens),
            labels=LabelSpec(file="labels.npz", prompt_template=prompt, calibration=method, count=len(bank.names)),
            captioner=None
            if captioner is None
            else CaptionerSpec(
                vocab="vocab.json",
                max_tokens=captioner.cfg.max_tokens,
                beam_size=beam_size,
                use_tags=captioner.cfg.use_tags,
                n_tags=captioner.cfg.n_tags,
            ),
            tagger=tagger_spec(dual, tagger_zero_shot_weight),
            graphs={g: _graph_info(g) for g in graphs},
            files={p.name: sha256_file(p) for p in sorted(tmp.iterdir())},
            source=dict(source or {}),
            metrics={**(metrics or {}), "export_parity_max_abs": parity},
        )
        write_manifest(tmp, manifest)
    log.info(
        "bundle written",
        extra={"bundle": str(out_dir), "id": manifest.id, "files": len(manifest.files), "label_calibration": method},
    )
    return out_dir


def tagger_spec(dual: DualEncoder, zero_shot_weight: float = 0.0) -> TaggerSpec | None:
    """What the bundle says of the audio tower's supervised head, if it has one."""
    if not has_tagger(dual):
        return None
    if not 0.0 <= zero_shot_weight <= 1.0:
        raise ValueError(f"tagger_zero_shot_weight must lie in [0, 1], got {zero_shot_weight}")
    tower = dual.audio_encoder
    return TaggerSpec(
        labels=labels_for_mids(read_head_classes(dual.cfg.audio.head_classes)),
        source=tower.head_source,
        pooling=tower.head_pooling,
        zero_shot_weight=zero_shot_weight,
    )


def checkpoint_source(path: str | Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    path = Path(path)
    return {"path": str(path), "sha256": sha256_file(path), "meta": json.loads(json.dumps(meta or {}, default=str))}
