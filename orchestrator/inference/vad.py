"""Silero VAD (v6 ONNX) over a batch of sessions, with the recurrent state carried by the caller.

Each request is one 32 ms window (512 samples at 16 kHz) preceded by the 64 samples before it (Silero's
context), plus that session's state [2, 128]. Keeping the state outside the model makes it stateless, so
Triton can batch windows from many sessions into one ONNX call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestrator.inference.device import CPU_EP, Provider

SAMPLE_RATE = 16000
WINDOW = 512
CONTEXT = 64
STATE_SHAPE = (2, 128)

F32 = npt.NDArray[np.float32]


def onnx_session(path: str | Path, threads: int = 1, providers: Sequence[Provider] = (CPU_EP,)) -> Any:
    """An onnxruntime session tuned for a small shared CPU: sequential, `threads` intra-op threads; `providers`
    from `device.onnx_providers` (the CPU's alone by default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=so, providers=list(providers))


class SileroBatch:
    """Runs Silero on stacked windows; state layout is [B, 2, 128] outside, [2, B, 128] inside ONNX."""

    def __init__(self, model_path: str | Path, threads: int = 1, providers: Sequence[Provider] = (CPU_EP,)) -> None:
        self.providers = list(providers)  # asked for; `_session.get_providers()` is what onnxruntime gave
        self._session = onnx_session(model_path, threads, self.providers)
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def __call__(self, audio: npt.NDArray[np.int16] | F32, state: F32) -> tuple[F32, F32]:
        """audio [B, 576] (int16 PCM or float in [-1, 1]), state [B, 2, 128] -> prob [B, 1], state [B, 2, 128]."""
        if audio.ndim != 2 or audio.shape[1] != CONTEXT + WINDOW:
            raise ValueError(f"AUDIO must be [B, {CONTEXT + WINDOW}], got {list(audio.shape)}")
        if state.shape != (audio.shape[0], *STATE_SHAPE):
            raise ValueError(f"STATE must be [B, 2, 128], got {list(state.shape)}")
        x = audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16 else audio.astype(np.float32)
        prob, new_state = self._session.run(
            None, {"input": x, "state": np.ascontiguousarray(state.transpose(1, 0, 2)), "sr": self._sr}
        )
        return prob.astype(np.float32), np.ascontiguousarray(new_state.transpose(1, 0, 2)).astype(np.float32)


def split_rows(arr: npt.NDArray[Any], sizes: Sequence[int]) -> list[npt.NDArray[Any]]:
    """Split a batch back into per-request arrays (each keeps its own leading batch dimension)."""
    return list(np.split(arr, np.cumsum(sizes)[:-1])) if len(sizes) > 1 else [arr]
