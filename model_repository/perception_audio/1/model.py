"""Triton glue for voice features; the logic is orchestrator.perception.prosody_features (pure, tested)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from orchestrator.perception.prosody_features import BadVoiceInput, batch_features


class TritonPythonModel:
    def initialize(self, args):
        pass

    def execute(self, requests):
        # Every request's frames go through one vectorised call (frames from many sessions at once); a bad
        # request gets its own error, never the others in its batch.
        arrays = []
        for request in requests:
            frames = pb_utils.get_input_tensor_by_name(request, "FRAMES").as_numpy()
            try:
                arrays.append(frames.reshape(-1, frames.shape[-1]))
            except (ValueError, IndexError):  # (no frames of any width: refused by batch_features as it is)
                arrays.append(frames)
        responses = []
        for result in batch_features(arrays):
            if isinstance(result, BadVoiceInput):
                error = pb_utils.TritonError(f"bad_audio_chunk: {result.message}")
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                out = pb_utils.Tensor("FEATURES", result[None].astype(np.float32, copy=False))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
