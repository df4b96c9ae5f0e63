"""Log-mel front end of Smart Turn (orchestrator/signal/logmel.py) on one 8 s floor window.

The turn model's call (orchestrator/inference/turn.py `SmartTurn.__call__`) is `log_mel_batch(pcm_to_float(audio))`
on the [1, 128000] int16 window; it runs once per full floor evaluation. Side by side: the float32 variant of the
same extractor, and a plain `numpy.fft.rfft` STFT + mel matrix written the obvious way (fresh arrays every call).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from orchestrator.inference.turn import pcm_to_float
from orchestrator.signal.logmel import HOP, N_FFT, N_FRAMES, LogMelExtractor, log_mel_batch, slaney_mel_filterbank

F32 = npt.NDArray[np.float32]
GROUP = "log-mel 8 s window"

_HANN = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
_MEL = slaney_mel_filterbank()


def numpy_logmel(x: F32) -> F32:
    """The textbook version: normalise, reflect-pad, frame, window, numpy rfft, |X|^2 @ mel, log10, clamp."""
    x64 = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x64.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = sliding_window_view(padded, N_FFT)[: N_FRAMES * HOP : HOP] * _HANN
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    mel = np.log10(np.maximum(power @ _MEL, 1e-10))
    mel = np.maximum(mel, mel.max() - 8.0)
    out: F32 = ((mel + 4.0) / 4.0).T.astype(np.float32)
    return out


@pytest.mark.benchmark(group=GROUP)
def test_logmel_turn_path_float64(benchmark, voice_8s_pcm):
    """What the turn model runs per window: int16 -> float32, then the float64 extractor (Whisper-exact)."""
    window = voice_8s_pcm[None, :]
    out = benchmark(lambda: log_mel_batch(pcm_to_float(window)))
    assert out.shape == (1, 80, N_FRAMES)


@pytest.mark.benchmark(group=GROUP)
def test_logmel_extractor_float32(benchmark, voice_8s_pcm):
    """The same extractor in float32 (4e-5 from Whisper's features; not used, see the module docstring)."""
    extractor = LogMelExtractor(np.float32)
    window = voice_8s_pcm[None, :]
    out = benchmark(lambda: extractor(pcm_to_float(window)))
    assert np.max(np.abs(out - log_mel_batch(pcm_to_float(window)))) < 1e-3


@pytest.mark.benchmark(group=GROUP)
def test_logmel_alt_numpy_rfft(benchmark, voice_8s_pcm):
    """Alternative: plain numpy.fft.rfft STFT + mel matrix, allocating every temporary."""
    window = voice_8s_pcm
    out = benchmark(lambda: numpy_logmel(pcm_to_float(window)))
    assert np.max(np.abs(out - log_mel_batch(pcm_to_float(window[None, :]))[0])) < 1e-3
