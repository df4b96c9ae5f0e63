"""Per-frame voice features, vectorised over a batch of 20 ms frames from any number of sessions.

Every frame is `WINDOW` = 640 samples of PCM16 at 16 kHz: the 320 new samples (the hop) preceded by 320
samples of left context (the previous hop of the same session, zeros at the start of a stream). The pitch
tracker needs the 40 ms window to hold 2.4 periods at the lowest pitch (60 Hz); the level, zero-crossing and
spectral columns look only at the 320 new samples, so consecutive frames never count the same sample twice.
`frame_pcm` cuts a stream into such frames and returns the tail a session keeps for its next chunk.

Columns of `frame_features` (see `FEATURES`):
    0 f0_hz            pitch from the normalised cross-correlation (NCCF), 60-400 Hz; 0 when unvoiced
    1 voicing          the NCCF peak at the chosen lag, clipped to 0..1 (periodicity; noise ~0.25)
    2 voiced           1.0 when voicing >= VOICING_THRESHOLD and the hop is above the silence floor, else 0.0
    3 energy_dbfs      RMS level of the hop, dB re full scale (a full-scale square wave is 0, sine -3)
    4 vowel_dbfs       level of the 300-2500 Hz band (vowel formants), dBFS: syllable nuclei peak here,
                       fricatives (/s/, /f/) do not, so the syllable counter uses it instead of broadband level
    5 zcr              zero crossings per sample of the hop (DC removed), 0..1; noise ~0.5, low voices ~0.01
    6 alpha_ratio_db   energy 50-1000 Hz over 1000-5000 Hz, dB: lower = flatter spectrum (pressed/loud voice)
    7 slope_db_per_khz least-squares slope of the log power spectrum over 100-4000 Hz
    8 clipped          share of the hop's samples at or beyond ±32700: clipped audio is measured but flagged

The float features are only as good as a 20 ms hop lets them be: pitch is one value per hop (intonation and
vibrato are seen, cycle-to-cycle perturbation is not), and the spectrum has 31 Hz bins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import scipy.fft

from orchestrator.errors import DuetError

I16 = npt.NDArray[np.int16]
F32 = npt.NDArray[np.float32]


class BadVoiceInput(DuetError):
    """Audio or features that the voice analysis cannot use (wrong dtype or shape, odd byte count, NaN)."""

    code = "bad_voice_input"
    fatal = False


SAMPLE_RATE: Final = 16_000
HOP: Final = 320  # 20 ms: one frame per session audio chunk
CONTEXT: Final = 320  # left context: the previous hop
WINDOW: Final = HOP + CONTEXT
F0_MIN: Final = 60.0
F0_MAX: Final = 400.0
VOICING_THRESHOLD: Final = 0.6  # NCCF peak above this = periodic; white noise peaks near 0.25 at this width
_OCTAVE_RATIO: Final = 0.95
SILENCE_DBFS: Final = -60.0  # below this a hop is never called voiced (hum and dither are periodic too)
CLIP_LEVEL: Final = 32_700

FEATURES: Final[tuple[str, ...]] = (
    "f0_hz",
    "voicing",
    "voiced",
    "energy_dbfs",
    "vowel_dbfs",
    "zcr",
    "alpha_ratio_db",
    "slope_db_per_khz",
    "clipped",
)
N_FEATURES: Final = len(FEATURES)
F0, VOICING, VOICED, ENERGY, VOWEL, ZCR, ALPHA, SLOPE, CLIPPED = range(N_FEATURES)

_FLOOR_DB: Final = -120.0  # digital silence
_TAU_MIN: Final = int(SAMPLE_RATE // F0_MAX)  # 40
_TAU_MAX: Final = int(np.ceil(SAMPLE_RATE / F0_MIN)) + 1  # 268: one spare lag for the interpolation
_WIDTH: Final = WINDOW - _TAU_MAX  # correlation window: 372 samples, 1.4 periods at 60 Hz
_NFFT_PITCH: Final = 1024  # >= WINDOW + _WIDTH - 1: the circular correlation does not wrap
_NFFT_SPEC: Final = 512
_FREQS: Final = np.fft.rfftfreq(_NFFT_SPEC, 1.0 / SAMPLE_RATE)
_HANN: Final = np.hanning(HOP).astype(np.float32)


def _band(lo: float, hi: float) -> npt.NDArray[np.bool_]:
    return (lo <= _FREQS) & (hi > _FREQS)


_LOW, _HIGH, _VOWEL_BAND, _SLOPE_BAND = _band(50, 1000), _band(1000, 5000), _band(300, 2500), _band(100, 4000)
# Least-squares slope as one dot product: centred frequency (kHz) over its sum of squares.
_SLOPE_X: Final = _FREQS[_SLOPE_BAND] / 1000.0 - float(np.mean(_FREQS[_SLOPE_BAND] / 1000.0))
_SLOPE_W: Final = (_SLOPE_X / float(np.sum(_SLOPE_X**2))).astype(np.float32)


def pcm_from_bytes(data: bytes) -> I16:
    """Little-endian PCM16 bytes -> int16 samples; an odd byte count is a truncated stream."""
    if len(data) % 2:
        raise BadVoiceInput(f"PCM16 needs an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def frame_pcm(pcm: I16, tail: I16 | None = None) -> tuple[I16, I16]:
    """Cut a stream chunk into (T, WINDOW) frames with left context; returns (frames, tail for the next call).

    `pcm` must hold a whole number of hops; `tail` is the previous call's (CONTEXT,) tail, None at stream start.
    """
    _check_int16(pcm, 1)
    if pcm.size % HOP:
        raise BadVoiceInput(f"a chunk must hold whole {HOP}-sample frames, got {pcm.size} samples")
    if tail is None:
        tail = np.zeros(CONTEXT, np.int16)
    _check_int16(tail, 1)
    if tail.size != CONTEXT:
        raise BadVoiceInput(f"the context tail must hold {CONTEXT} samples, got {tail.size}")
    joined = np.concatenate([tail, pcm])
    n = pcm.size // HOP
    idx = np.arange(n)[:, None] * HOP + np.arange(WINDOW)[None, :]
    return joined[idx], joined[joined.size - CONTEXT :].copy()


def _check_int16(x: object, ndim: int) -> None:
    if not isinstance(x, np.ndarray):
        raise BadVoiceInput(f"expected a numpy int16 array, got {type(x).__name__}")
    if x.dtype != np.int16:
        raise BadVoiceInput(f"expected PCM16 (int16) samples, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise BadVoiceInput(f"expected a {ndim}-D array, got shape {x.shape}")


def _check_frames(frames: object) -> None:
    _check_int16(frames, 2)
    assert isinstance(frames, np.ndarray)
    if frames.shape[1] != WINDOW:
        raise BadVoiceInput(f"each frame must be {WINDOW} samples ({CONTEXT} context + {HOP} new), got {frames.shape}")
    if frames.shape[0] == 0:
        raise BadVoiceInput("empty batch: no frames to analyse")


def batch_features(requests: Sequence[object]) -> list[F32 | BadVoiceInput]:
    """Many requests' (T, WINDOW) frames (from many sessions) in one vectorised `frame_features` call; each
    request is checked on its own first, so a bad one gets its own error and the others their features (a
    batch never fails for one request in it)."""
    out: list[F32 | BadVoiceInput] = []
    good: list[tuple[int, I16]] = []
    for i, frames in enumerate(requests):
        try:
            _check_frames(frames)
        except BadVoiceInput as exc:
            out.append(exc)
            continue
        assert isinstance(frames, np.ndarray)
        good.append((i, frames))
        out.append(np.empty((0, N_FEATURES), np.float32))  # its features, below
    if good:
        feats, pos = frame_features(np.concatenate([f for _, f in good])), 0
        for i, frames in good:
            out[i], pos = feats[pos : pos + frames.shape[0]], pos + frames.shape[0]
    return out


def frame_features(frames: I16) -> F32:
    """(B, WINDOW) int16 frames (CONTEXT samples of left context + one HOP) -> (B, N_FEATURES) float32."""
    _check_frames(frames)
    x = frames.astype(np.float32) * np.float32(1.0 / 32768.0)
    hop = x[:, CONTEXT:]
    out = np.empty((x.shape[0], N_FEATURES), np.float32)

    ms = np.einsum("ij,ij->i", hop, hop) / HOP
    energy = 10.0 * np.log10(np.maximum(ms, 1e-12))
    out[:, ENERGY] = energy
    f0, voicing = _pitch(x)
    voiced = (voicing >= VOICING_THRESHOLD) & (energy > SILENCE_DBFS)
    out[:, F0] = np.where(voiced, f0, 0.0)
    out[:, VOICING] = voicing
    out[:, VOICED] = voiced

    centred = hop - hop.mean(axis=1, keepdims=True)
    out[:, ZCR] = np.count_nonzero(np.signbit(centred[:, 1:]) != np.signbit(centred[:, :-1]), axis=1) / (HOP - 1)

    power = np.square(np.abs(scipy.fft.rfft(hop * _HANN, _NFFT_SPEC, axis=1)))
    total = power.sum(axis=1) + 1e-20
    out[:, VOWEL] = np.maximum(energy + 10.0 * np.log10(power[:, _VOWEL_BAND].sum(axis=1) / total + 1e-12), _FLOOR_DB)
    low = power[:, _LOW].sum(axis=1) + 1e-12
    high = power[:, _HIGH].sum(axis=1) + 1e-12
    out[:, ALPHA] = 10.0 * np.log10(low / high)
    out[:, SLOPE] = (10.0 * np.log10(power[:, _SLOPE_BAND] + 1e-12)) @ _SLOPE_W
    out[:, CLIPPED] = np.count_nonzero(np.abs(frames[:, CONTEXT:].astype(np.int32)) >= CLIP_LEVEL, axis=1) / HOP
    return out


def _pitch(x: F32) -> tuple[F32, F32]:
    """Normalised cross-correlation pitch (NCCF, as in RAPT) over the 40 ms window: (f0 Hz, voicing 0..1).

    NCCF rather than YIN's difference function: the window often spans a syllable onset where the level rises
    20 dB, and YIN's d(tau) reads that amplitude change as aperiodicity (half the vowel hops came out
    unvoiced on piper speech); normalising by both segments' energies does not.
    """
    b = x.shape[0]
    spec_full = scipy.fft.rfft(x, _NFFT_PITCH, axis=1)
    spec_head = scipy.fft.rfft(x[:, :_WIDTH], _NFFT_PITCH, axis=1)
    # r[tau] = sum_{j<W} x[j] x[j + tau]: the cross-correlation of the window with its own head.
    r = scipy.fft.irfft(spec_full * np.conj(spec_head), _NFFT_PITCH, axis=1)[:, : _TAU_MAX + 1]
    csum = np.zeros((b, WINDOW + 1), np.float32)
    np.cumsum(np.square(x), axis=1, out=csum[:, 1:])
    e_tau = csum[:, _WIDTH : _WIDTH + _TAU_MAX + 1] - csum[:, : _TAU_MAX + 1]  # sum_{j<W} x[j + tau]^2
    nccf = r / np.sqrt(e_tau[:, :1] * e_tau + 1e-12)
    c = nccf[:, _TAU_MIN - 1 : _TAU_MAX + 1]
    inner = c[:, 1:-1]
    peaks = (inner > c[:, :-2]) & (inner >= c[:, 2:])
    best = np.where(peaks, inner, -1.0).max(axis=1)
    # Multiples of the period correlate almost as well as the period itself: take the shortest lag whose peak
    # is within 5 % of the best one.
    near_best = peaks & (inner >= _OCTAVE_RATIO * best[:, None])
    first = np.where(near_best.any(axis=1), np.argmax(near_best, axis=1), np.argmax(inner, axis=1))
    tau = first + _TAU_MIN  # index into nccf
    rows = np.arange(b)
    left, mid, right = nccf[rows, tau - 1], nccf[rows, tau], nccf[rows, tau + 1]
    # Parabolic interpolation between the neighbouring lags: the lag step is 2.5 % of the period at 400 Hz.
    denom = left - 2.0 * mid + right
    shift = np.where(np.abs(denom) > 1e-9, 0.5 * (left - right) / np.where(denom == 0, 1.0, denom), 0.0)
    period = tau + np.clip(shift, -0.5, 0.5)
    f0 = (SAMPLE_RATE / period).astype(np.float32)
    # Digital silence correlates with nothing: call it aperiodic rather than divide 0 by 0.
    audible = e_tau[:, 0] > _WIDTH * 1e-10
    voicing = np.where(audible, np.clip(mid, 0.0, 1.0), 0.0).astype(np.float32)
    return f0, voicing
