"""Voice perception against known signals: tones, noise, silence, clipping, glides, and real piper speech."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from orchestrator.errors import DuetError
from orchestrator.perception.prosody_features import (
    CLIPPED,
    ENERGY,
    F0,
    HOP,
    N_FEATURES,
    VOICED,
    WINDOW,
    ZCR,
    BadVoiceInput,
    batch_features,
    frame_features,
    frame_pcm,
    pcm_from_bytes,
)
from orchestrator.perception.voice import (
    EMOTIONS,
    FRAME_S,
    Baseline,
    UtteranceSummary,
    VoiceTracker,
    utterance_stats,
)
from tests.conftest import require

SR = 16_000
VOICE = Path(__file__).resolve().parents[2] / "model_repository/tts/1/voices/en_US-joe-medium.onnx"
I16 = npt.NDArray[np.int16]
F32 = npt.NDArray[np.float32]


def _pad(pcm: I16) -> I16:
    padded: I16 = np.concatenate([pcm, np.zeros((-pcm.size) % HOP, np.int16)])
    return padded


def _features(pcm: I16) -> F32:
    frames, _ = frame_pcm(_pad(pcm))
    return frame_features(frames)


def _to_pcm(x: npt.NDArray[np.float64]) -> I16:
    pcm: I16 = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    return pcm


def _harmonic(f0: npt.NDArray[np.float64], amp: float = 0.3) -> npt.NDArray[np.float64]:
    """A voiced-like source: 8 harmonics at 1/k amplitude following the instantaneous pitch f0 (per sample)."""
    phase = 2 * np.pi * np.cumsum(f0) / SR
    out: npt.NDArray[np.float64] = amp * sum(np.sin(k * phase) / k for k in range(1, 9)) / 1.5
    return out


def _vowel_train(pitches: list[tuple[float, float]], on_s: float = 0.18, off_s: float = 0.07) -> I16:
    """Syllable-like bursts (raised-cosine envelope), each gliding from pitch a to b, separated by silence."""
    parts = [np.zeros(int(0.1 * SR))]
    n_on = int(on_s * SR)
    env = np.sin(np.linspace(0, np.pi, n_on)) ** 0.5
    for a, b in pitches:
        parts.append(_harmonic(np.linspace(a, b, n_on)) * env)
        parts.append(np.zeros(int(off_s * SR)))
    parts.append(np.zeros(int(0.1 * SR)))
    return _to_pcm(np.concatenate(parts))


def _summarise(tracker: VoiceTracker, pcm: I16, t0: float = 0.0) -> UtteranceSummary:
    """Feed one utterance with floor-model boundaries (speech=True throughout), then close it."""
    feats = _features(pcm)
    for i, row in enumerate(feats):
        assert tracker.push(t0 + (i + 1) * FRAME_S, row, speech=True) is None
    summary = tracker.end(t0 + feats.shape[0] * FRAME_S)
    assert summary is not None
    return summary


# ---------------------------------------------------------------------------------------------------------
# Frame features


@pytest.mark.parametrize("f0", [60.0, 100.0, 103.0, 215.0, 220.0, 226.0, 400.0])
def test_tone_pitch_within_one_percent(f0: float) -> None:
    feats = _features(_to_pcm(_harmonic(np.full(SR, f0))))[2:]  # the first hops still hold the zero context
    assert feats[:, VOICED].mean() == 1.0
    error = abs(float(np.median(feats[:, F0])) / f0 - 1)
    assert error < 0.01
    assert np.abs(feats[:, F0] / f0 - 1).max() < 0.02


def test_silence_and_white_noise_are_unvoiced() -> None:
    silent = _features(np.zeros(SR, np.int16))
    assert silent[:, VOICED].sum() == 0
    assert silent[:, ENERGY].max() == pytest.approx(-120.0)
    noise = _features(_to_pcm(np.random.default_rng(3).normal(0, 0.1, SR)))
    assert noise[:, VOICED].mean() < 0.05
    assert noise[:, ZCR].mean() > 0.4  # white noise crosses zero every other sample
    assert noise[:, ENERGY].mean() == pytest.approx(-20.0, abs=1.0)  # RMS 0.1 = -20 dBFS


def test_batch_and_stream_chunking_give_the_same_features() -> None:
    pcm = _vowel_train([(120, 150), (150, 110)])
    whole = _features(pcm)
    tail = None
    rows: list[F32] = []
    padded = _pad(pcm)
    for lo in range(0, padded.size, 3 * HOP):  # 60 ms chunks, as a session would deliver them
        frames, tail = frame_pcm(padded[lo : lo + 3 * HOP], tail)
        rows.extend(frame_features(frame[None, :])[0] for frame in frames)  # one frame per call
    np.testing.assert_allclose(np.stack(rows), whole, rtol=1e-4, atol=1e-3)


def test_clipped_audio_is_measured_and_flagged() -> None:
    pcm = _to_pcm(np.clip(4.0 * _harmonic(np.full(2 * SR, 150.0)), -1, 1))
    feats = _features(pcm)
    assert feats[5:, CLIPPED].mean() > 0.05  # 13 % of the samples sit at the rails
    assert np.median(feats[5:, F0]) == pytest.approx(150.0, rel=0.02)
    tracker = VoiceTracker()
    summary = _summarise(tracker, pcm)
    assert summary.stats.clipped
    assert "clipping" in summary.states.text
    assert tracker.baseline == Baseline()  # clipped audio says nothing about the speaker's usual level


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((2, WINDOW), np.float32), "int16"),
        (np.zeros((2, WINDOW - 1), np.int16), "640"),
        (np.zeros(WINDOW, np.int16), "2-D"),
        (np.zeros((0, WINDOW), np.int16), "empty"),
        ([[0] * WINDOW], "numpy"),
    ],
)
def test_malformed_frames_raise_a_typed_error(bad: object, match: str) -> None:
    with pytest.raises(BadVoiceInput, match=match) as info:
        frame_features(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, DuetError)
    assert info.value.code == "bad_voice_input"
    assert not info.value.fatal


def test_malformed_streams_and_features_raise_typed_errors() -> None:
    with pytest.raises(BadVoiceInput, match="even"):
        pcm_from_bytes(b"\x00\x01\x02")
    assert pcm_from_bytes(b"\x01\x00\xff\xff").tolist() == [1, -1]
    with pytest.raises(BadVoiceInput, match="whole"):
        frame_pcm(np.zeros(HOP + 1, np.int16))
    tracker = VoiceTracker()
    row = np.zeros(N_FEATURES, np.float32)
    with pytest.raises(BadVoiceInput, match="finite"):
        tracker.push(0.02, np.full(N_FEATURES, np.nan, np.float32))
    with pytest.raises(BadVoiceInput, match="feature matrix"):
        tracker.push(0.02, np.zeros(N_FEATURES - 1, np.float32))
    tracker.push(1.0, row)
    with pytest.raises(BadVoiceInput, match="backwards"):
        tracker.push(0.5, row)
    with pytest.raises(BadVoiceInput, match="no frames"):
        utterance_stats(np.zeros((0, N_FEATURES), np.float32), np.zeros(0, bool), 1.0)


# ---------------------------------------------------------------------------------------------------------
# Utterance states on synthetic signals


def test_rising_end_reads_as_uncertain_and_falling_end_does_not() -> None:
    level = [(120.0, 122.0), (122.0, 118.0), (118.0, 120.0), (120.0, 119.0)]
    rising = _summarise(VoiceTracker(), _vowel_train([*level, (120.0, 125.0), (130.0, 175.0)], on_s=0.25))
    falling = _summarise(VoiceTracker(), _vowel_train([*level, (118.0, 112.0), (110.0, 95.0)], on_s=0.25))
    assert rising.stats.final_slope_st_per_s is not None and rising.stats.final_slope_st_per_s > 10
    assert rising.states.uncertainty > 0.7
    assert falling.states.uncertainty < 0.1
    assert "rising pitch" in rising.states.text
    assert rising.states.emotion["surprise"] > falling.states.emotion["surprise"]


def test_monotone_sounds_flat_and_lively_does_not() -> None:
    monotone = _summarise(VoiceTracker(), _vowel_train([(120.0, 120.0)] * 12))
    lively = _summarise(VoiceTracker(), _vowel_train([(100, 130), (150, 170), (110, 100), (170, 140)] * 3))
    assert monotone.stats.pitch_range_st is not None and monotone.stats.pitch_range_st < 0.5
    assert monotone.states.flatness > 0.8
    assert lively.states.flatness < 0.1
    assert "flat" in monotone.states.text
    assert monotone.states.emotion["sadness"] > lively.states.emotion["sadness"]
    assert sum(monotone.states.emotion.values()) == pytest.approx(1.0)
    assert set(monotone.states.emotion) == set(EMOTIONS)


def test_synthetic_rate_matches_the_syllable_count() -> None:
    summary = _summarise(VoiceTracker(), _vowel_train([(120, 130), (130, 115)] * 6))  # 12 bursts, 4 per second
    assert summary.stats.syllables == 12
    assert summary.stats.articulation_rate_sps == pytest.approx(12 / summary.stats.phonation_s, rel=1e-6)


def test_own_vad_splits_utterances_at_long_silence() -> None:
    pcm = np.concatenate(
        [
            _vowel_train([(120, 130)] * 6),
            np.zeros(int(1.5 * SR), np.int16),
            _vowel_train([(140, 150)] * 4),
            np.zeros(int(1.2 * SR), np.int16),
        ]
    )
    tracker = VoiceTracker()
    summaries = [s for i, row in enumerate(_features(pcm)) if (s := tracker.push((i + 1) * FRAME_S, row)) is not None]
    assert len(summaries) == 2
    first, second = summaries
    assert first.stats.syllables == 6 and second.stats.syllables == 4
    assert second.stats.t_start > first.stats.t_end + 1.0
    assert first.stats.pitch_hz is not None and first.stats.pitch_hz == pytest.approx(125, rel=0.05)


# ---------------------------------------------------------------------------------------------------------
# Real speech from the piper voice


@pytest.fixture(scope="module")
def speak() -> Callable[..., I16]:
    require(VOICE, "the piper voice")
    from orchestrator.inference.tts import PiperSpeaker

    speaker = PiperSpeaker(VOICE)
    cache: dict[tuple[str, float], I16] = {}

    def say(text: str, length_scale: float = 1.0) -> I16:
        if (text, length_scale) not in cache:
            speaker.syn_config.length_scale = length_scale
            cache[text, length_scale] = speaker.synthesize(text).pcm
        return cache[text, length_scale]

    return say


# Syllables counted by hand.
SENTENCES = [
    ("I would like to book a table for two people tonight.", 14),
    ("The weather has been wonderful all week long.", 11),
    ("Can you tell me where the nearest station is?", 11),
    ("My appointment was moved to Thursday afternoon.", 12),
    ("Please send the documents before the end of the month.", 13),
    ("Yesterday I walked to the market and bought some apples.", 15),
]
BASELINE_TEXTS = [
    "Thanks for calling me back so quickly.",
    "I wanted to ask about the order I placed last week.",
    "It was supposed to arrive on Monday but nothing came.",
    "Could you check what happened with the delivery?",
    "I have the order number here if you need it.",
]


@pytest.mark.parametrize(("text", "syllables"), SENTENCES)
def test_speaking_rate_counts_syllables_within_25_percent(speak: Callable[..., I16], text: str, syllables: int) -> None:
    summary = _summarise(VoiceTracker(), speak(text))
    assert abs(summary.stats.syllables / syllables - 1) <= 0.25
    assert summary.stats.pitch_hz is not None and 70 < summary.stats.pitch_hz < 130  # a low male voice


def _warm(speak: Callable[..., I16], gain: float = 1.0) -> VoiceTracker:
    tracker = VoiceTracker()
    for i, text in enumerate(BASELINE_TEXTS * 2):
        _summarise(tracker, _to_pcm(speak(text) / 32768.0 * gain), t0=10.0 * i)
    return tracker


def test_warmup_is_flagged_until_enough_speech(speak: Callable[..., I16]) -> None:
    tracker = VoiceTracker()
    first = _summarise(tracker, speak(BASELINE_TEXTS[0]))
    assert first.states.warmup and first.states.confidence == 0.0
    assert "still learning" in first.states.text
    warm = _warm(speak)
    assert warm.baseline.speech_s >= 10.0
    later = _summarise(warm, speak(SENTENCES[0][0]), t0=200.0)
    assert not later.states.warmup and later.states.confidence > 0.6


def test_quiet_and_loud_are_relative_to_the_speakers_baseline(speak: Callable[..., I16]) -> None:
    text = SENTENCES[1][0]
    results = {}
    for name, gain in (("quiet", 0.0625), ("usual", 0.25), ("loud", 1.0)):
        tracker = _warm(speak, gain=0.25)  # this speaker's usual level is -12 dB below piper's full level
        results[name] = _summarise(tracker, _to_pcm(speak(text) / 32768.0 * gain), t0=200.0)
    rel = {k: v.states.relative["energy_db"] for k, v in results.items()}
    assert rel["quiet"] == pytest.approx(-12.0, abs=2.0)
    assert rel["loud"] == pytest.approx(12.0, abs=2.0)
    assert results["loud"].states.arousal > 0.75
    # Another sentence at the usual level stays inside the band that is not worth mentioning (0.35-0.65).
    assert 0.35 < results["usual"].states.arousal < 0.65
    assert "arousal" not in results["usual"].states.phrases
    assert results["quiet"].states.arousal < 0.3
    assert "louder" in results["loud"].states.text and "quieter" in results["quiet"].states.text
    # The same loud level is the usual for a speaker whose baseline is loud: "loud" is personal.
    loud_speaker = _warm(speak, gain=1.0)
    same = _summarise(loud_speaker, _to_pcm(speak(text) / 32768.0), t0=200.0)
    assert 0.35 < same.states.arousal < 0.65


def test_slow_and_fast_speech(speak: Callable[..., I16]) -> None:
    from scipy.signal import resample_poly

    text, syllables = SENTENCES[0]
    normal = speak(text)
    slow_pcm = speak(text, length_scale=1.6)  # piper stretches it 1.4x (not linearly with length_scale)
    fast_pcm = _to_pcm(resample_poly(normal / 32768.0, 5, 7))  # played 1.4x fast: pitch up 5.8 semitones too
    slow = _summarise(_warm(speak), slow_pcm, t0=200.0)
    fast = _summarise(_warm(speak), fast_pcm, t0=200.0)
    usual = _summarise(_warm(speak), normal, t0=200.0)
    for summary in (slow, fast, usual):
        assert abs(summary.stats.syllables - syllables) <= 2
    # The rate follows the audio's real stretch.
    for summary, pcm in ((slow, slow_pcm), (fast, fast_pcm)):
        measured = summary.stats.articulation_rate_sps / usual.stats.articulation_rate_sps
        assert measured == pytest.approx(normal.size / pcm.size, rel=0.15)
    assert slow.states.arousal < usual.states.arousal < fast.states.arousal
    assert fast.states.arousal > 0.7
    assert "faster" in fast.states.text
    assert slow.states.hesitancy > fast.states.hesitancy


def test_long_pauses_raise_hesitancy(speak: Callable[..., I16]) -> None:
    gap = np.zeros(int(0.9 * SR), np.int16)
    parts = [speak("I think we should"), gap, speak("maybe go"), gap, speak("tomorrow instead.")]
    fluent = _summarise(_warm(speak), speak("I think we should maybe go tomorrow instead."), t0=200.0)
    halting = _summarise(_warm(speak), np.concatenate(parts), t0=200.0)
    assert halting.stats.long_pauses == 2
    assert fluent.stats.long_pauses == 0
    assert halting.states.hesitancy > 0.6
    assert fluent.states.hesitancy < 0.2
    assert "two long pauses" in halting.states.phrases["hesitancy"]
    assert "hesitancy" not in fluent.states.phrases


def test_a_summary_has_what_the_events_are_built_from(speak: Callable[..., I16]) -> None:
    summary = _summarise(VoiceTracker(), speak(SENTENCES[2][0]), t0=3.0)
    assert summary.stats.t_end > 3.0
    assert set(summary.voice()) >= {"arousal", "hesitancy", "pitch_hz", "rate_sps"}
    assert all(0.0 <= p <= 1.0 for p in summary.states.emotion.values())
    assert summary.states.text.startswith("The user ") and summary.states.text.endswith(".")


def test_a_batch_of_requests_fails_only_the_bad_ones() -> None:
    """Triton batches many sessions' requests into one call: a bad request must get its own error, never the
    others' (it failed them all before 2026-12-07)."""
    rng = np.random.default_rng(3)
    a, _ = frame_pcm(_to_pcm(0.3 * np.sin(2 * np.pi * 150 * np.arange(3 * HOP) / SR)))
    b, _ = frame_pcm(rng.integers(-3000, 3000, 2 * HOP).astype(np.int16))
    wrong_width = np.zeros((2, WINDOW - 1), np.int16)
    empty = np.zeros((0, WINDOW), np.int16)
    out = batch_features([a, wrong_width, b, empty, np.zeros((0,), np.int16)])
    assert isinstance(out[1], BadVoiceInput) and "640 samples" in out[1].message
    assert isinstance(out[3], BadVoiceInput) and isinstance(out[4], BadVoiceInput)
    fa, fb = out[0], out[2]
    assert isinstance(fa, np.ndarray) and isinstance(fb, np.ndarray)
    np.testing.assert_allclose(fa, frame_features(a), rtol=1e-5, atol=1e-5)  # as if each had been sent alone
    np.testing.assert_allclose(fb, frame_features(b), rtol=1e-5, atol=1e-5)
    assert batch_features([]) == []
