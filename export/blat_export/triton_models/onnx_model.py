"""Triton Python-backend model of the CPU flavour: runs its version directory's model.onnx with ONNX Runtime.

export/blat_export/triton.py copies this file to <repo>/<model>/<version>/model.py. The config (tensor names, dims,
dtypes,
reshape, dynamic batching) is the GPU flavour's, so a client cannot tell this model from the onnxruntime backend's.
Triton applies `reshape` before and after execute(): inputs arrive, and outputs leave, in the ONNX graph's shapes.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", "0"))
        options.inter_op_num_threads = int(params.get("inter_op_thread_count", "0"))
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.input_dtypes = {i["name"]: pb_utils.triton_string_to_numpy(i["data_type"]) for i in config["input"]}

    def execute(self, requests):
        # Triton's dynamic batcher hands over several requests at once. Those whose non-batch shapes are equal run as
        # one ONNX Runtime call (the batcher only groups equal shapes without allow_ragged_batch, as for the
        # onnxruntime backend); padding unequal ones would change `frames`/`memory` (their T follows N).
        responses = [None] * len(requests)
        groups = {}
        for i, request in enumerate(requests):
            feed = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                feed[name] = tensor.as_numpy().astype(self.input_dtypes[name], copy=False)
            key = tuple(feed[name].shape[1:] for name in self.input_names)
            groups.setdefault(key, []).append((i, feed))
        for members in groups.values():
            sizes = [len(feed[self.input_names[0]]) for _, feed in members]
            batch = {name: np.concatenate([feed[name] for _, feed in members]) for name in self.input_names}
            try:
                outputs = self.session.run(self.output_names, batch)
            except Exception as e:
                for i, _ in members:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime: {e}"))
                continue
            start = 0
            for (i, _), size in zip(members, sizes):
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + size]))
                    for name, out in zip(self.output_names, outputs)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return responses
