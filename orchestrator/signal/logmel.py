"""Whisper-style log-mel features for Smart Turn v3 (8 s at 16 kHz -> [80, 800]).

Same maths as the Whisper feature extractor with ``do_normalize=True``: per-window zero-mean/unit-variance
(in float32, as Whisper does), centred reflect-padded STFT (n_fft 400, hop 160, periodic Hann), power
spectrum, 80 Slaney mels over 0-8000 Hz, log10 with a 1e-10 floor, last frame dropped, dynamic range
clamped to 8 decades below the window's maximum, then (x + 4) / 4.

The spectrum runs in float64 by default. Smart Turn v3.2 is a statically quantised (QDQ) graph: a
feature that moves by 1e-6 can cross a quantisation step and move the probability by ~1e-2 (7e-3 seen), so
matching Whisper's float64 maths to the last float32 bit is worth ~1.5 ms more per window (the
model itself takes ~50 ms). ``LogMelExtractor(np.float32)`` is the faster, 4e-5-accurate variant.

Constants are built once at import, and the per-window temporaries live in a reusable workspace.
"""

from __future__ import annotations

import threading
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

SAMPLE_RATE: Final = 16_000
WINDOW_SAMPLES: Final = 8 * SAMPLE_RATE  # Smart Turn looks at exactly the last 8 s
N_FFT: Final = 400
HOP: Final = 160
N_MELS: Final = 80
N_FRAMES: Final = WINDOW_SAMPLES // HOP  # 800: the centred STFT has 801 frames, the last is dropped

_N_BINS: Final = N_FFT // 2 + 1
_LOG_FLOOR: Final = 1e-10
_VAR_EPS: Final = 1e-7
_DYNAMIC_RANGE: Final = 8.0  # decades of power kept below the window's peak

F32 = npt.NDArray[np.float32]


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
    log_step = np.log(6.4) / 27.0
    linear = hz * 3.0 / 200.0
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) / log_step
    return np.where(hz < 1000.0, linear, logarithmic)


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    log_step = np.log(6.4) / 27.0
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp((mel - 15.0) * log_step))


def slaney_mel_filterbank(
    n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE, f_min: float = 0.0, f_max: float | None = None
) -> npt.NDArray[np.float64]:
    """Triangular mel filters, area-normalised (Slaney), shape [n_fft // 2 + 1, n_mels]."""
    top = sr / 2.0 if f_max is None else f_max
    edges_mel = np.linspace(_hz_to_mel(np.array(f_min)), _hz_to_mel(np.array(top)), n_mels + 2)
    edges = _mel_to_hz(edges_mel)  # lower edge, centre, upper edge of every filter
    bin_hz = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)[:, None]
    lower, centre, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    tri = np.clip(np.minimum(rising, falling), 0.0, None)
    # Equal area per filter, so wide high-frequency filters don't dominate the energy.
    bank: npt.NDArray[np.float64] = tri * (2.0 / (upper - lower))
    return bank


_WINDOW: Final = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
_MEL: Final = slaney_mel_filterbank()


class LogMelExtractor:
    """Log-mel front end with a reusable workspace; one instance per thread (it is not thread-safe).

    Windows are processed one at a time through buffers allocated once: a fresh set of ~10 MB temporaries
    per call costs more in page faults than the FFT itself, and a whole batch at once falls out of cache.
    ``dtype`` is the working precision of the spectrum (see the module docstring); output is float32.
    """

    def __init__(self, dtype: type[np.float32] | type[np.float64] = np.float64) -> None:
        pad = N_FFT // 2
        self._normed = np.empty(WINDOW_SAMPLES, np.float32)
        self._padded = np.empty(WINDOW_SAMPLES + 2 * pad, dtype)
        self._frames = np.empty((N_FRAMES, N_FFT), dtype)
        self._power = np.empty((N_FRAMES, _N_BINS), dtype)
        self._imag2 = np.empty((N_FRAMES, _N_BINS), dtype)
        self._mel = np.empty((N_FRAMES, N_MELS), dtype)
        self._window = _WINDOW.astype(dtype)
        self._bank = _MEL.astype(dtype)
        # Only the 800 kept frames are computed: the dropped last frame never influences the output.
        self._frame_view = sliding_window_view(self._padded, N_FFT)[: N_FRAMES * HOP : HOP]

    def __call__(self, audio: npt.ArrayLike, out: F32 | None = None) -> F32:
        """[B, 128000] float -> [B, 80, 800] float32 (written into ``out`` when given)."""
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != WINDOW_SAMPLES:
            raise ValueError(f"expected audio of shape [B, {WINDOW_SAMPLES}], got {list(x.shape)}")
        if out is None:
            out = np.empty((x.shape[0], N_MELS, N_FRAMES), np.float32)
        elif out.shape != (x.shape[0], N_MELS, N_FRAMES) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 [{x.shape[0]}, {N_MELS}, {N_FRAMES}]")
        for row, dest in zip(x, out, strict=True):
            self._one(row, dest)
        return out

    def _one(self, x: F32, dest: F32) -> None:
        pad = N_FFT // 2
        padded, mel, normed = self._padded, self._mel, self._normed
        # Normalise in float32 exactly as Whisper does (its rounding is part of the features).
        std = np.float32(np.sqrt(np.float64(x.var(dtype=np.float32)) + _VAR_EPS))
        np.subtract(x, x.mean(dtype=np.float32), out=normed)
        np.divide(normed, std, out=normed)
        padded[pad:-pad] = normed
        padded[:pad] = padded[2 * pad : pad : -1]  # reflect without repeating the edge sample
        padded[-pad:] = padded[-pad - 2 : -2 * pad - 2 : -1]

        np.multiply(self._frame_view, self._window, out=self._frames)
        spec = scipy.fft.rfft(self._frames, axis=-1, overwrite_x=True)  # [800, 201]
        np.square(spec.real, out=self._power)
        np.square(spec.imag, out=self._imag2)
        np.add(self._power, self._imag2, out=self._power)
        np.matmul(self._power, self._bank, out=mel)

        np.maximum(mel, _LOG_FLOOR, out=mel)
        np.log10(mel, out=mel)
        np.maximum(mel, mel.max() - _DYNAMIC_RANGE, out=mel)
        np.add(mel, 4.0, out=mel)
        np.multiply(mel, 0.25, out=mel)
        dest[...] = mel.T


_local = threading.local()


def log_mel_batch(audio: npt.ArrayLike) -> F32:
    """Log-mel features for a batch of 8 s windows: [B, 128000] float -> [B, 80, 800] float32."""
    extractor: LogMelExtractor | None = getattr(_local, "extractor", None)
    if extractor is None:
        extractor = _local.extractor = LogMelExtractor()
    return extractor(audio)


def log_mel(audio: npt.ArrayLike) -> F32:
    """Log-mel features of one 8 s window: [128000] -> [80, 800] float32."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D audio, got shape {list(x.shape)}")
    out: F32 = log_mel_batch(x[None, :])[0]
    return out


def turn_window(samples: npt.NDArray[np.int16] | npt.NDArray[np.floating[Any]], n: int = WINDOW_SAMPLES) -> F32:
    """The last ``n`` samples as float32 in [-1, 1), zero-padded at the front so the end stays aligned.

    int16 PCM is scaled by 1/32768; float input is taken as already scaled.
    """
    if samples.ndim != 1:
        raise ValueError(f"expected 1-D samples, got shape {list(samples.shape)}")
    if samples.dtype == np.int16:
        scale = np.float32(1.0 / 32768.0)
    elif np.issubdtype(samples.dtype, np.floating):
        scale = np.float32(1.0)
    else:
        raise TypeError(f"expected int16 or float samples, got {samples.dtype}")
    out = np.zeros(n, np.float32)
    tail = samples[-n:] if n > 0 else samples[:0]
    if tail.size:
        np.multiply(tail, scale, out=out[n - tail.size :], casting="unsafe")
    return out
