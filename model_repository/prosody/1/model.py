"""Triton glue for the end-of-phrase prosody vector; the logic is orchestrator.signal.prosody."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from orchestrator.inference.vad import split_rows
from orchestrator.signal.prosody import N_FEATURES, prosody_batch


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        (output,) = [o for o in config["output"] if o["name"] == "PROSODY"]
        if [int(d) for d in output["dims"]] != [N_FEATURES]:
            raise pb_utils.TritonModelException(
                f"PROSODY dims {output['dims']} in config.pbtxt != [{N_FEATURES}] features in the code"
            )

    def execute(self, requests):
        audios, pauses = [], []
        for r in requests:
            audios.append(pb_utils.get_input_tensor_by_name(r, "AUDIO").as_numpy())
            pauses.append(pb_utils.get_input_tensor_by_name(r, "PAUSE_SAMPLES").as_numpy())
        sizes = [a.shape[0] for a in audios]
        try:
            audio = np.concatenate(audios).astype(np.float32) * np.float32(1.0 / 32768.0)
            features = prosody_batch(audio, np.concatenate(pauses).reshape(-1))
        except ValueError as exc:
            error = pb_utils.TritonError(str(exc))
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PROSODY", f)])
            for f in split_rows(features, sizes)
        ]
