"""ONNX export: turns a model-side checkpoint into a versioned bundle and a Triton model repository."""

import logging

logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # its per-initializer INFO lines drown the export log
logging.getLogger("onnxscript").setLevel(logging.WARNING)
