"""Triton glue for sentence embeddings; the logic is orchestrator.inference.embed."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from orchestrator.inference.device import ModelDevice, onnx_providers
from orchestrator.inference.embed import EmbedInputError, SentenceEmbedder, decode_texts

REPO_ROOT = Path(__file__).resolve().parents[3]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.embedder = SentenceEmbedder(
            Path(__file__).parent,
            onnx_file=params.get("onnx_file", "minilm-l6-v2.onnx"),
            threads=int(params.get("intra_op_threads", "1")),
            max_tokens=int(params.get("max_tokens", "256")),
            providers=onnx_providers(ModelDevice.from_triton(params, args, REPO_ROOT)),
        )

    def execute(self, requests):
        # Each request carries TEXT [n, 1]; all rows of the dynamic batch are embedded together. A request with a
        # row that is not UTF-8 fails alone, as "<code>: ..." (the client raises the same typed error).
        responses = [None] * len(requests)
        texts, where = [], []
        for i, request in enumerate(requests):
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            try:
                rows = decode_texts(list(raw))
            except EmbedInputError as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{exc.code}: {exc}"))
                continue
            where.append((i, len(texts), len(rows)))
            texts.extend(rows)
        if texts:
            vectors = self.embedder(texts)
            for i, start, n in where:
                out = np.ascontiguousarray(vectors[start : start + n])
                responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("EMBEDDING", out)])
        for i, response in enumerate(responses):
            if response is None:  # a request with no rows at all
                error = pb_utils.TritonError("empty_batch: no texts to embed")
                responses[i] = pb_utils.InferenceResponse(error=error)
        return responses
