"""Idle life: blinks, breathing, head sway and micro-saccades, so the face is never frozen.

Everything is a pure function of absolute session time and a seed. Randomness comes from hashing
(seed, stream, slot index) rather than from a stateful generator, so any window of frames is the same no
matter how the timeline is split into chunks, and a session replays identically.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from orchestrator.face.visemes import smoothstep

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_MASK = (1 << 64) - 1

# Blinks: one candidate per slot at a random offset in [_BLINK_LO, _BLINK_HI) of the slot. Candidates in
# neighbouring slots are therefore at least _SLOT - (_BLINK_HI - _BLINK_LO) = 1.2 s apart (the refractory gap);
# each happens with a probability that sets the rate (0.45 -> 13.5/min, 0.6 when speaking -> 18/min).
_BLINK_SLOT_S = 2.0
_BLINK_LO, _BLINK_HI = 0.2, 1.0
_BLINK_P_QUIET, _BLINK_P_SPEAKING = 0.45, 0.6
_DOUBLE_P = 0.1
_CLOSE_S, _OPEN_S, _HOLD_MIN_S = 0.045, 0.075, 0.02


def hash01(seed: int, stream: int, idx: I64) -> F64:
    """Uniform [0, 1) numbers, one per index, fixed by (seed, stream): splitmix64 over the index."""
    key = np.uint64(((seed & _MASK) * 0x9E3779B97F4A7C15 + stream * 0xD1B54A32D192ED03) & _MASK)
    x = idx.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9) + key
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    out: F64 = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return out


def blink_times(seed: int, t0: float, t1: float, speaking: Callable[[F64], F64]) -> F64:
    """Onsets of every blink that touches [t0, t1] (including the second of a double blink)."""
    k = np.arange(int(np.floor(t0 / _BLINK_SLOT_S)) - 1, int(np.floor(t1 / _BLINK_SLOT_S)) + 1, dtype=np.int64)
    k = k[k >= 0]
    base = k * _BLINK_SLOT_S
    onset = base + _BLINK_LO + (_BLINK_HI - _BLINK_LO) * hash01(seed, 1, k)
    p = _BLINK_P_QUIET + (_BLINK_P_SPEAKING - _BLINK_P_QUIET) * speaking(onset)
    first = onset[hash01(seed, 2, k) < p]
    doubled = (hash01(seed, 3, k) < _DOUBLE_P) & (hash01(seed, 2, k) < p)
    second = onset[doubled] + 0.25 + 0.1 * hash01(seed, 4, k[doubled])
    out: F64 = np.sort(np.concatenate([first, second]))
    return out


def blinks(times: F64, seed: int, fps: float, speaking: Callable[[F64], F64]) -> F64:
    """Eyelid closure 0..1: fast close, a hold of at least one frame (so video shows it shut), slower open."""
    if times.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    hold = max(_HOLD_MIN_S, 1.0 / fps + 1e-6)
    onsets = blink_times(seed, float(times[0]) - 1.0, float(times[-1]), speaking)
    if onsets.shape[0] == 0:
        return np.zeros(times.shape[0], dtype=np.float64)
    x = times[:, None] - onsets[None, :]
    closing = smoothstep(x / _CLOSE_S)
    opening = 1.0 - smoothstep((x - _CLOSE_S - hold) / _OPEN_S)
    out: F64 = np.minimum(closing, opening).max(axis=1)
    return out


def _sines(times: F64, seed: int, stream: int, freqs: tuple[float, ...], amps: tuple[float, ...]) -> F64:
    """A smooth aperiodic wobble: incommensurate sinusoids with seeded phases."""
    phases = 2 * np.pi * hash01(seed, stream, np.arange(len(freqs), dtype=np.int64))
    f = np.array(freqs, dtype=np.float64)
    a = np.array(amps, dtype=np.float64)
    out: F64 = (a * np.sin(2 * np.pi * times[:, None] * f + phases)).sum(axis=1)
    return out


def breath(times: F64, seed: int) -> F64:
    """0..1 breathing lift at ~0.25 Hz, its rate drifting a little (a fixed metronome looks mechanical)."""
    phase = 2 * np.pi * 0.25 * times + 1.6 * np.sin(
        2 * np.pi * 0.031 * times + 7 * hash01(seed, 10, np.zeros(1, np.int64))[0]
    )
    out: F64 = 0.5 - 0.5 * np.cos(phase)
    return out


def head_sway(times: F64, seed: int, speaking: F64) -> F64:
    """(N, 3) yaw, pitch, roll in degrees: ±1-2 deg slow drift, livelier while speaking."""
    slow = np.stack(
        [
            _sines(times, seed, 20, (0.071, 0.163, 0.297), (0.9, 0.5, 0.25)),
            _sines(times, seed, 21, (0.083, 0.191, 0.331), (0.6, 0.35, 0.2)),
            _sines(times, seed, 22, (0.059, 0.137, 0.251), (0.6, 0.3, 0.15)),
        ],
        axis=1,
    )
    lively = np.stack(
        [
            _sines(times, seed, 23, (0.43, 0.71, 1.13), (0.7, 0.4, 0.2)),
            _sines(times, seed, 24, (0.53, 0.89, 1.37), (0.8, 0.4, 0.2)),
            _sines(times, seed, 25, (0.37, 0.61, 0.97), (0.5, 0.3, 0.15)),
        ],
        axis=1,
    )
    out: F64 = slow + lively * speaking[:, None]
    return out


_SACCADE_SLOT_S = 0.9
_SACCADE_S = 0.04  # saccades are fast: ~30-50 ms


def micro_saccades(times: F64, seed: int, amplitude: F64) -> F64:
    """(N, 2) gaze offsets: small jumps every ~0.6-1.2 s, fixations in between; scaled by `amplitude`."""
    if times.shape[0] == 0:
        return np.zeros((0, 2), dtype=np.float64)
    k = np.floor(times / _SACCADE_SLOT_S).astype(np.int64)
    # each slot's jump happens at a random point in it; before that point the previous fixation holds
    jump = (k + 0.1 + 0.8 * hash01(seed, 30, k)) * _SACCADE_SLOT_S
    prev_k = np.where(times < jump, k - 1, k)
    prev_jump = (prev_k + 0.1 + 0.8 * hash01(seed, 30, prev_k)) * _SACCADE_SLOT_S
    u = smoothstep((times - prev_jump) / _SACCADE_S)[:, None]
    a = _fixation(seed, prev_k - 1)
    b = _fixation(seed, prev_k)
    out: F64 = (a + (b - a) * u) * amplitude[:, None]
    return out


def _fixation(seed: int, k: I64) -> F64:
    x = hash01(seed, 31, k) * 2 - 1
    y = hash01(seed, 32, k) * 2 - 1
    out: F64 = np.stack([0.07 * x, 0.05 * y], axis=1)
    return out


def drift(times: F64, seed: int, stream: int) -> F64:
    """A slow, tiny (±~0.04) wobble for expression muscles so the resting face is never a still image."""
    return _sines(times, seed, 40 + stream, (0.047, 0.113, 0.211), (0.02, 0.012, 0.008))
