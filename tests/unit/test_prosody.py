"""Prosody features on synthetic voices whose pitch, level and timing are known by construction."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from orchestrator.signal.prosody import (
    N_FEATURES,
    PROSODY_FEATURES,
    pitch_track,
    prosody_batch,
    prosody_features,
)

SR = 16_000
WINDOW = 8 * SR
PAUSE_S = 0.3
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IDX = {name: i for i, name in enumerate(PROSODY_FEATURES)}


def _voice(f0: F64, harmonics: int = 10) -> F64:
    """Harmonic source (1/k spectrum) following a per-sample pitch contour."""
    phase = 2 * np.pi * np.cumsum(f0) / SR
    return np.asarray(sum(np.sin(k * phase) / k for k in range(1, harmonics + 1)))


def _utterance(
    syllables_s: Sequence[float],
    contour: Callable[[F64], F64] = lambda t: np.full_like(t, 140.0),
    gap_s: float = 0.06,
    amp: float = 0.2,
    level_db_per_s: Callable[[F64], F64] | None = None,
) -> F32:
    """Syllable-like voiced bursts (10 ms ramps) with gaps, end-aligned before a PAUSE_S silence."""
    envelope: list[F64] = []
    for dur in syllables_s:
        n = round(dur * SR)
        ramp = min(160, n // 2)
        env = np.ones(n)
        env[:ramp] = env[-ramp:][::-1] = np.linspace(0, 1, ramp)
        envelope += [env, np.zeros(round(gap_s * SR))]
    env_all = np.concatenate(envelope[:-1])
    t = np.arange(env_all.size) / SR
    speech = amp * env_all * _voice(contour(t))
    if level_db_per_s is not None:
        speech *= 10 ** (level_db_per_s(t) / 20)
    out = np.zeros(WINDOW)
    end = WINDOW - round(PAUSE_S * SR)
    out[end - speech.size : end] = speech
    return out.astype(np.float32)


def _features(audio: F32) -> dict[str, float]:
    vec = prosody_features(audio, round(PAUSE_S * SR))
    assert vec.shape == (N_FEATURES,) and vec.dtype == np.float32
    assert np.isfinite(vec).all()
    return {name: float(v) for name, v in zip(PROSODY_FEATURES, vec, strict=True)}


def _glide(st_per_s: float, base: float = 150.0, dur: float = 1.5) -> F32:
    return _utterance([dur], contour=lambda t: base * 2 ** (st_per_s * t / 12))


# --- pitch tracker -----------------------------------------------------------------------------------


@pytest.mark.parametrize("hz", [70.0, 110.0, 180.0, 260.0, 380.0])
@pytest.mark.parametrize("harmonics", [1, 10])
def test_pitch_of_steady_tones_within_two_percent(hz: float, harmonics: int) -> None:
    audio = (0.3 * _voice(np.full(SR, hz), harmonics)).astype(np.float32)
    f0, voiced = pitch_track(audio)
    assert f0.shape == voiced.shape == (SR // 160,)
    assert voiced[3:-3].all(), "every frame fully inside a steady tone is voiced"
    np.testing.assert_allclose(f0[voiced], hz, rtol=0.02)


def test_pitch_follows_a_glide() -> None:
    t = np.arange(2 * SR) / SR
    audio = (0.3 * _voice(100 * 2**t)).astype(np.float32)  # one octave per second
    f0, voiced = pitch_track(audio)
    frames = np.flatnonzero(voiced)
    expected = 100 * 2 ** (frames * 0.01)
    np.testing.assert_allclose(f0[frames], expected, rtol=0.02)


def test_noise_and_silence_are_unvoiced() -> None:
    rng = np.random.default_rng(5)
    _, voiced_noise = pitch_track((0.1 * rng.standard_normal(2 * SR)).astype(np.float32))
    assert voiced_noise.mean() < 0.02
    f0, voiced_silence = pitch_track(np.zeros(2 * SR, np.float32))
    assert not voiced_silence.any() and not f0.any()


def test_pitch_track_marks_quiet_gaps_unvoiced() -> None:
    tone = 0.3 * np.sin(2 * np.pi * 150 * np.arange(SR) / SR)
    audio = np.concatenate([tone, np.zeros(SR), tone]).astype(np.float32)
    _, voiced = pitch_track(audio)
    assert not voiced[110:190].any()
    assert voiced[10:90].all() and voiced[210:290].all()


# --- features ----------------------------------------------------------------------------------------


def test_feature_names_are_stable() -> None:
    assert PROSODY_FEATURES[:2] == ("final_pitch_slope_st_per_s", "final_pitch_rel_st")
    assert len(set(PROSODY_FEATURES)) == N_FEATURES == 11


def test_rising_and_falling_glides() -> None:
    rise, fall = _features(_glide(+6.0)), _features(_glide(-6.0))
    assert rise["final_pitch_slope_st_per_s"] == pytest.approx(6.0, abs=1.0)
    assert fall["final_pitch_slope_st_per_s"] == pytest.approx(-6.0, abs=1.0)
    # The last 100 ms sit ~4 st above/below the median of a 9 st glide.
    assert rise["final_pitch_rel_st"] == pytest.approx(4.2, abs=0.6)
    assert fall["final_pitch_rel_st"] == pytest.approx(-4.2, abs=0.6)
    assert rise["final_pitch_z"] > 1.2 and fall["final_pitch_z"] < -1.2
    assert rise["pitch_range_st"] == pytest.approx(0.8 * 9.0, abs=0.6)
    flat = _features(_glide(0.0))
    assert abs(flat["final_pitch_slope_st_per_s"]) < 0.3 and flat["pitch_range_st"] < 0.3


def test_fall_only_at_the_end() -> None:
    # Flat at 150 Hz, then a 5-semitone drop in the last 250 ms: a typical declarative ending.
    def contour(t: F64) -> F64:
        return 150 * 2 ** (-np.clip(t - 1.75, 0, None) * 20 / 12)

    feats = _features(_utterance([2.0], contour=contour))
    assert feats["final_pitch_slope_st_per_s"] < -12
    assert feats["final_pitch_rel_st"] < -3


def test_energy_decay() -> None:
    steady = _features(_utterance([2.0]))
    fading = _features(_utterance([2.0], level_db_per_s=lambda t: -30.0 * np.clip(t - 1.4, 0, None)))
    assert fading["final_energy_slope_db_per_s"] == pytest.approx(-30.0, abs=8.0)
    assert fading["final_energy_rel_db"] < -4.0
    assert abs(steady["final_energy_slope_db_per_s"]) < 8.0
    assert abs(steady["final_energy_rel_db"]) < 1.5


def test_final_lengthening() -> None:
    even = _features(_utterance([0.15] * 7))
    lengthened = _features(_utterance([0.15] * 6 + [0.4]))
    assert abs(even["final_lengthening_log2"]) < 0.3
    assert lengthened["final_lengthening_log2"] > 0.8  # ratio ~2.7 -> log2 ~1.4


def test_speaking_rate_and_final_slowing() -> None:
    steady = _features(_utterance([0.16] * 12, gap_s=0.08))  # one syllable per 240 ms
    assert steady["speaking_rate_sps"] == pytest.approx(1 / 0.24, rel=0.15)
    assert abs(steady["final_rate_log2"]) < 0.35
    slowing = _features(_utterance([0.12] * 12 + [0.35] * 3, gap_s=0.06))
    assert slowing["final_rate_log2"] < -0.4


def test_timing_features() -> None:
    feats = _features(_utterance([0.2] * 5, gap_s=0.1))
    assert feats["speech_duration_s"] == pytest.approx(1.0, abs=0.12)
    assert feats["final_voiced_fraction"] > 0.9


def test_gain_invariance() -> None:
    audio = _utterance([0.15] * 5 + [0.3], contour=lambda t: 130 * 2 ** (-3 * t / 12))
    np.testing.assert_allclose(
        prosody_features(audio * 0.1, round(PAUSE_S * SR)), prosody_features(audio, round(PAUSE_S * SR)), atol=1e-3
    )


def test_octave_shift_leaves_relative_features_alone() -> None:
    def contour(base: float) -> Callable[[F64], F64]:
        return lambda t: base * 2 ** ((3 * np.sin(2 * np.pi * 0.8 * t) - 4 * t) / 12)

    syllables = [0.15, 0.2, 0.15, 0.25, 0.2, 0.35]
    low, high = _features(_utterance(syllables, contour(100.0))), _features(_utterance(syllables, contour(200.0)))
    for name in ("final_pitch_rel_st", "pitch_range_st", "final_pitch_z"):
        assert low[name] == pytest.approx(high[name], abs=0.25), name
    assert low["final_pitch_slope_st_per_s"] == pytest.approx(high["final_pitch_slope_st_per_s"], abs=1.0)
    # Level and timing barely depend on pitch (only through level ripple and voicing at the edges).
    tolerance = {"final_energy_slope_db_per_s": 3.0, "final_energy_rel_db": 0.5, "speaking_rate_sps": 0.1}
    for name in PROSODY_FEATURES[4:]:
        assert low[name] == pytest.approx(high[name], abs=tolerance.get(name, 0.05)), name


def test_only_speech_before_the_pause_counts() -> None:
    fall = _glide(-6.0)
    # A rising tone inside what the caller says is pause must not change anything.
    polluted = fall.copy()
    tail = np.arange(round(0.2 * SR)) / SR
    polluted[-tail.size :] = 0.2 * np.sin(2 * np.pi * 200 * 2 ** (20 * tail / 12) * tail)
    np.testing.assert_array_equal(
        prosody_features(polluted, round(PAUSE_S * SR)), prosody_features(fall, round(PAUSE_S * SR))
    )
    # With no pause declared, the rising tail is the end of the utterance.
    assert prosody_features(polluted, 0)[IDX["final_pitch_slope_st_per_s"]] > 0


@pytest.mark.parametrize(
    "audio",
    [
        np.zeros(WINDOW, np.float32),
        (0.1 * np.random.default_rng(1).standard_normal(WINDOW)).astype(np.float32),
        np.zeros(0, np.float32),
    ],
    ids=["silence", "noise", "empty"],
)
def test_no_voiced_speech_gives_zeros(audio: F32) -> None:
    np.testing.assert_array_equal(prosody_features(audio, 0), np.zeros(N_FEATURES, np.float32))


def test_everything_inside_the_pause_gives_zeros() -> None:
    np.testing.assert_array_equal(prosody_features(_glide(3.0), WINDOW), 0.0)
    np.testing.assert_array_equal(prosody_features(_glide(3.0), 10 * WINDOW), 0.0)


def test_batch_matches_single() -> None:
    audio = np.stack([_glide(6.0), _glide(-6.0), np.zeros(WINDOW, np.float32)])
    pauses = np.array([4800, 4800, 0], np.int32)
    batch = prosody_batch(audio, pauses)
    assert batch.shape == (3, N_FEATURES) and batch.dtype == np.float32
    for row, a, p in zip(batch, audio, pauses, strict=True):
        np.testing.assert_array_equal(row, prosody_features(a, int(p)))
    with pytest.raises(ValueError):
        prosody_batch(audio, pauses[:2])
    with pytest.raises(ValueError):
        prosody_features(audio, 0)
