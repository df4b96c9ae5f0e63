"""Triton glue for Silero VAD; the logic is orchestrator.inference.vad."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from orchestrator.inference.device import ModelDevice, onnx_providers
from orchestrator.inference.vad import SileroBatch, split_rows

REPO_ROOT = Path(__file__).resolve().parents[3]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(__file__).parent / params.get("onnx_file", "silero_vad.onnx")
        device = ModelDevice.from_triton(params, args, REPO_ROOT)
        self.vad = SileroBatch(path, threads=int(params.get("intra_op_threads", "1")), providers=onnx_providers(device))

    def execute(self, requests):
        audios, states = [], []
        for r in requests:
            audios.append(pb_utils.get_input_tensor_by_name(r, "AUDIO").as_numpy())
            states.append(pb_utils.get_input_tensor_by_name(r, "STATE").as_numpy())
        sizes = [a.shape[0] for a in audios]
        try:
            prob, state = self.vad(np.concatenate(audios), np.concatenate(states))
        except ValueError as exc:
            error = pb_utils.TritonError(str(exc))
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PROB", p), pb_utils.Tensor("STATE_OUT", s)])
            for p, s in zip(split_rows(prob, sizes), split_rows(state, sizes), strict=True)
        ]
