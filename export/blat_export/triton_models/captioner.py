"""Triton Python-backend (BLS) captioner: beam search over the captioner_encoder and captioner_decoder models.

export/blat_export/triton.py copies this file to <repo>/captioner/<version>/model.py, with blat_contract/beam.py and
blat_contract/vocab.py beside it (the very code the torch captioner and the gateway run) and the bundle's vocab.json,
so the repository needs nothing from this project. It serves both flavours: the beam search is numpy on the CPU,
the two graphs run wherever their own configs put them. Version v calls version v of both graphs, so versions
served side by side never mix a vocabulary with another bundle's decoder.

Requests are batched: every clip of every request in one execute() call with the same decoding options is
decoded in one lock-step beam search, one decoder call per step (split at the decoder's max_batch_size).
Per-request options travel as request parameters: beam_size, n_best, max_tokens, length_penalty.
"""

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

VERSION_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(VERSION_DIR))  # the vendored blat_contract/ package wins over any installed one
from blat_contract.beam import DecodingOptions, beam_search  # noqa: E402
from blat_contract.vocab import Vocabulary  # noqa: E402

OPTION_TYPES = {"beam_size": int, "n_best": int, "max_tokens": int, "length_penalty": float}


class RequestError(ValueError):
    """A request the captioner rejects (bad options or inputs); only that request fails."""


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.vocab = Vocabulary.from_json((VERSION_DIR / "vocab.json").read_text())
        self.defaults = {k: tp(params[k]) for k, tp in OPTION_TYPES.items() if k in params}
        self.encoder = params.get("encoder_model", "captioner_encoder")
        self.decoder = params.get("decoder_model", "captioner_decoder")
        self.decoder_batch = int(params.get("decoder_max_batch_size", "64"))
        self.n_tags = int(params.get("n_tags", "527"))
        self.version = int(args["model_version"])
        memory = getattr(pb_utils, "PreferredMemory", None)  # BLS outputs in host memory, also on GPU
        self.bls_kwargs = {"preferred_memory": memory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)} if memory else {}

    def _options(self, request) -> DecodingOptions:
        raw = json.loads(request.parameters() or "{}")
        unknown = sorted(set(raw) - set(OPTION_TYPES))
        if unknown:
            raise RequestError(f"unknown parameters {unknown}; known: {sorted(OPTION_TYPES)}")
        try:
            options = DecodingOptions(**{**self.defaults, **{k: OPTION_TYPES[k](v) for k, v in raw.items()}})
        except (TypeError, ValueError) as e:
            raise RequestError(str(e)) from None
        if options.max_tokens > self.defaults.get("max_tokens", options.max_tokens):
            raise RequestError(
                f"max_tokens must be <= {self.defaults['max_tokens']}, the bundle's caption length "
                "(the decoder's shape profile ends there)"
            )
        return options

    def _call(self, model, inputs, outputs):
        """One BLS request to version `self.version` of `model`; numpy in, numpy out."""
        request = pb_utils.InferenceRequest(
            model_name=model,
            model_version=self.version,
            requested_output_names=list(outputs),
            inputs=[pb_utils.Tensor(name, np.ascontiguousarray(x)) for name, x in inputs.items()],
            **self.bls_kwargs,
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model} v{self.version}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]

    def _encode(self, request):
        """(memory (B, T, d), memory_lengths (B,), tag_vector (B, d)) of one request's clips."""
        wave = pb_utils.get_input_tensor_by_name(request, "waveform").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "lengths").as_numpy().reshape(-1)
        tags = pb_utils.get_input_tensor_by_name(request, "tags")
        tags = np.zeros((len(wave), self.n_tags), np.float32) if tags is None else tags.as_numpy()
        if not (len(wave) == len(lengths) == len(tags)):
            raise RequestError(
                f"waveform, lengths and tags disagree on the batch size: {len(wave)}, {len(lengths)}, {len(tags)}"
            )
        memory, memory_lengths, tag_vector = self._call(
            self.encoder,
            {"waveform": wave, "lengths": lengths[:, None], "tags": tags},
            ("memory", "memory_lengths", "tag_vector"),
        )
        return memory, memory_lengths.reshape(-1), tag_vector

    def _decode(self, encoded, options):
        """Captions of all clips of `encoded` (a list of per-request encoder outputs) in one beam search."""
        t_max = max(m.shape[1] for m, _, _ in encoded)
        # Requests of unequal lengths: zero-pad memory in time; memory_lengths masks the padding in the decoder.
        memory = np.concatenate([np.pad(m, ((0, 0), (0, t_max - m.shape[1]), (0, 0))) for m, _, _ in encoded])
        memory_lengths = np.concatenate([ml for _, ml, _ in encoded])
        tag_vector = np.concatenate([tv for _, _, tv in encoded])

        def step(tokens, origin):  # (N, t), (N,) -> (N, V)
            chunks = []
            for s in range(0, len(tokens), self.decoder_batch):
                o = origin[s : s + self.decoder_batch]
                chunks += self._call(
                    self.decoder,
                    {
                        "tokens": tokens[s : s + self.decoder_batch],
                        "memory": memory[o],
                        "memory_lengths": memory_lengths[o][:, None],
                        "tag_vector": tag_vector[o],
                    },
                    ("log_probs",),
                )
            return np.concatenate(chunks)

        return beam_search(step, len(memory), options)

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}  # decoding options -> [(request index, encoder outputs)]
        for i, request in enumerate(requests):
            try:
                options = self._options(request)
                groups.setdefault(options, []).append((i, self._encode(request)))
            except Exception as e:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
        for options, members in groups.items():
            try:
                hypotheses = self._decode([enc for _, enc in members], options)
            except Exception as e:
                for i, _ in members:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
                continue
            start = 0
            for i, (memory, _, _) in members:
                clips = hypotheses[start : start + len(memory)]
                start += len(memory)
                captions = np.full((len(clips), options.n_best), b"", dtype=np.object_)
                scores = np.full((len(clips), options.n_best), -np.inf, dtype=np.float32)  # if fewer finished
                for row, hyps in enumerate(clips):
                    for k, h in enumerate(hyps):
                        captions[row, k], scores[row, k] = self.vocab.decode(h.tokens).encode(), h.log_prob
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("captions", captions), pb_utils.Tensor("scores", scores)]
                )
        return responses
