"""Smart Turn v3 (ONNX) on our own log-mel features, batched: P(turn complete) per 8 s window."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from orchestrator.inference.device import CPU_EP, Provider
from orchestrator.inference.vad import onnx_session
from orchestrator.signal.logmel import WINDOW_SAMPLES, log_mel_batch

F32 = npt.NDArray[np.float32]


def pcm_to_float(audio: npt.NDArray[np.int16] | F32) -> F32:
    """int16 PCM -> float32 in [-1, 1); float input is taken as already scaled."""
    if audio.dtype == np.int16:
        return audio.astype(np.float32) * np.float32(1.0 / 32768.0)
    return np.asarray(audio, dtype=np.float32)


class SmartTurn:
    def __init__(self, model_path: str | Path, threads: int = 1, providers: Sequence[Provider] = (CPU_EP,)) -> None:
        self.providers = list(providers)  # asked for; `_session.get_providers()` is what onnxruntime gave
        self._session = onnx_session(model_path, threads, self.providers)
        self._input = self._session.get_inputs()[0].name

    def __call__(self, audio: npt.NDArray[np.int16] | F32) -> F32:
        """[B, 128000] end-aligned windows (int16 PCM or float) -> [B, 1] probability the turn is complete."""
        if audio.ndim != 2 or audio.shape[1] != WINDOW_SAMPLES:
            raise ValueError(f"AUDIO must be [B, {WINDOW_SAMPLES}], got {list(audio.shape)}")
        feats = log_mel_batch(pcm_to_float(audio))
        (prob,) = self._session.run(None, {self._input: feats})
        return np.asarray(prob, dtype=np.float32).reshape(-1, 1)
