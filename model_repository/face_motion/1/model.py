"""Triton glue for face motion; the logic is orchestrator.face.motion (pure, unit-tested)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from orchestrator.errors import DuetError
from orchestrator.face.motion import MotionRequest, generate


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "REQUEST").as_numpy().reshape(-1)[0]
                req = MotionRequest.from_json(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
                frames = generate(req).astype(np.float32, copy=False)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PARAMS", frames[None])]))
            except (DuetError, ValueError, UnicodeDecodeError) as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"face_motion: {exc}")))
        return responses
