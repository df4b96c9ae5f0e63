"""Triton glue for the floor fusion; the logic is orchestrator.turns.fusion."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from orchestrator.turns.fusion import FusionWeights, feature_vector
from orchestrator.turns.textturn import TextTurnModel

SAMPLE_RATE = 16000


def _text(arr, i):
    v = arr[i].reshape(-1)[0] if arr is not None else b""
    return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = Path(__file__).parent
        self.weights = FusionWeights.load(here / params.get("weights_file", "weights.json"))
        self.text_model = TextTurnModel.load(here / params.get("text_turn_file", "text_turn.json"))

    def execute(self, requests):
        responses = []
        for r in requests:
            p_turn = pb_utils.get_input_tensor_by_name(r, "P_TURN").as_numpy()
            prosody = pb_utils.get_input_tensor_by_name(r, "PROSODY").as_numpy()
            pause = pb_utils.get_input_tensor_by_name(r, "PAUSE_SAMPLES").as_numpy()
            text = pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy()
            context = pb_utils.get_input_tensor_by_name(r, "CONTEXT").as_numpy()
            try:
                rows = np.stack(
                    [
                        feature_vector(
                            float(p_turn[i, 0]),
                            prosody[i],
                            1000.0 * float(pause[i, 0]) / SAMPLE_RATE,
                            _text(text, i),
                            _text(context, i),
                            self.text_model,
                        )
                        for i in range(p_turn.shape[0])
                    ]
                )
                p = self.weights.predict(rows).astype(np.float32).reshape(-1, 1)
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("P_YIELD", p)]))
        return responses
