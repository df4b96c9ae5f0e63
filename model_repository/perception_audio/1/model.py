"""Triton glue for voice features; the logic is orchestrator.perception.prosody_features (pure, tested)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from orchestrator.errors import DuetError
from orchestrator.perception.prosody_features import frame_features


class TritonPythonModel:
    def initialize(self, args):
        pass

    def execute(self, requests):
        # Every request's frames go through one vectorised call (frames from many sessions at once).
        arrays, sizes, responses = [], [], [None] * len(requests)
        for request in requests:
            frames = pb_utils.get_input_tensor_by_name(request, "FRAMES").as_numpy()
            arrays.append(frames.reshape(-1, frames.shape[-1]))
            sizes.append(arrays[-1].shape[0])
        widths = {a.shape[1] for a in arrays}
        try:
            if len(widths) != 1:
                raise ValueError(f"every request needs the same frame width, got {sorted(widths)}")
            feats = frame_features(np.concatenate(arrays).astype(np.int16, copy=False))
        except (DuetError, ValueError) as exc:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad_audio_chunk: {exc}")) for _ in requests]
        pos = 0
        for i, n in enumerate(sizes):
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("FEATURES", feats[pos : pos + n][None].astype(np.float32))]
            )
            pos += n
        return responses
