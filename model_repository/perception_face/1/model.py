"""Triton glue for the user's camera; the logic is orchestrator.perception.face (and .expression)."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from orchestrator.errors import DuetError
from orchestrator.inference.device import ModelDevice
from orchestrator.perception.face import FaceAnalyzer, decode_frame
from orchestrator.perception.pipeline import frame_result

REPO_ROOT = Path(__file__).resolve().parents[3]


class TritonPythonModel:
    def initialize(self, args):
        import torch

        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(p.get("torch_threads", "1")))
        # device gpu puts the expression network on the instance's GPU; face detection (mediapipe) stays on the CPU.
        device = ModelDevice.from_triton(p, args, REPO_ROOT)
        self.analyzer = FaceAnalyzer(
            Path(__file__).parent / p.get("emotion_model", "emotion_model.hdf5"), device=device.torch
        )

    def execute(self, requests):
        responses = [None] * len(requests)
        images, where = [], []
        for i, request in enumerate(requests):
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)[0]
                images.append(decode_frame(bytes(raw)))
                where.append(i)
            except DuetError as exc:  # "<code>: ...": the client re-raises it as the same typed error
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{exc.code}: {exc}"))
        if images:
            for i, analysis in zip(where, self.analyzer.analyze_batch(images), strict=True):
                out = np.array([[json.dumps(frame_result(analysis)).encode()]], dtype=np.object_)
                responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("RESULT", out)])
        return responses

    def finalize(self):
        self.analyzer.close()
