"""Triton glue for Smart Turn v3; the logic is orchestrator.inference.turn (features: orchestrator.signal)."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from orchestrator.inference.device import ModelDevice, onnx_providers
from orchestrator.inference.turn import SmartTurn
from orchestrator.inference.vad import split_rows

REPO_ROOT = Path(__file__).resolve().parents[3]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(__file__).parent / params.get("onnx_file", "smart-turn-v3.2-cpu.onnx")
        device = ModelDevice.from_triton(params, args, REPO_ROOT)
        self.turn = SmartTurn(path, threads=int(params.get("intra_op_threads", "1")), providers=onnx_providers(device))

    def execute(self, requests):
        audios = [pb_utils.get_input_tensor_by_name(r, "AUDIO").as_numpy() for r in requests]
        sizes = [a.shape[0] for a in audios]
        try:
            # One feature pass and one ONNX call for every window in the dynamic batch.
            prob = self.turn(np.concatenate(audios))
        except ValueError as exc:
            error = pb_utils.TritonError(str(exc))
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("P_TURN", p)]) for p in split_rows(prob, sizes)
        ]
