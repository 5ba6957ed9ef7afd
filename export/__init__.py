"""ONNX export: turns a model-side checkpoint into a versioned bundle and a Triton model repository."""
