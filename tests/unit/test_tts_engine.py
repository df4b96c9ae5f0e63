"""Piper synthesis in-process with the real voice: level, length, rate and phoneme timings are sane."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import welch

from orchestrator.config import REPO_ROOT, TtsSettings
from orchestrator.inference.tts import (
    SAMPLE_RATE,
    PiperSpeaker,
    VoiceLibrary,
    add_alignment_output,
    phoneme_timings,
    resample_to_16k,
    sentences,
)
from tests.conftest import require

VOICES = REPO_ROOT / "model_repository/tts/1/voices"
VOICE = TtsSettings().voice


@pytest.fixture(scope="module")
def library() -> VoiceLibrary:
    require(VOICES / f"{VOICE}.onnx", f"the piper voice {VOICE}")
    return VoiceLibrary(VOICES, VOICE)


@pytest.fixture(scope="module")
def speaker(library: VoiceLibrary) -> PiperSpeaker:
    return library.get()


@pytest.mark.parametrize("text", ["Sure, I can help.", "The meeting moved to Thursday afternoon, at three thirty."])
def test_audio_is_speech_length_and_level(speaker: PiperSpeaker, text: str) -> None:
    spoken = speaker.synthesize(text)
    assert spoken.text == text and spoken.pcm.dtype == np.int16
    assert 0.04 < spoken.duration / len(text) < 0.15  # English TTS speaks ~8-20 characters per second
    x = spoken.pcm.astype(np.float64) / 32768.0
    assert 0.85 < np.abs(x).max() <= 0.95  # normalised to the 0.9 peak with a little resampler overshoot
    rms_db = 20 * np.log10(np.sqrt(np.mean(x**2)))
    assert -30 < rms_db < -10


def test_phoneme_timings_tile_the_audio(speaker: PiperSpeaker) -> None:
    spoken = speaker.synthesize("Three cheese pizzas, please. Thank you!")
    ph = spoken.phonemes
    assert ph[0].start == 0.0 and abs(ph[-1].end - spoken.duration) < 1 / SAMPLE_RATE + 1e-6
    assert all(p.end > p.start for p in ph)
    assert all(a.end == b.start for a, b in itertools.pairwise(ph))  # monotonic, no gaps, no overlap
    symbols = [p.phoneme for p in ph]
    assert "ˈ" not in symbols and "ː" not in symbols  # stress/length marks merged into real sounds
    assert "iː" in symbols and "θ" in symbols  # "three", "cheese"
    assert symbols.count("^") == 2  # piper speaks the two sentences as two utterances inside this chunk
    # No phoneme is implausibly long, except pauses and edges.
    assert all(p.end - p.start < 0.35 for p in ph if p.phoneme not in "^$ ,.!?")
    decoded = json.loads(spoken.phonemes_json())
    assert [d["p"] for d in decoded] == symbols and decoded[-1]["e"] == round(ph[-1].end, 4)


def test_synthesis_is_deterministic(speaker: PiperSpeaker) -> None:
    a, b = speaker.synthesize("Same words, same sound."), speaker.synthesize("Same words, same sound.")
    assert np.array_equal(a.pcm, b.pcm) and a.phonemes == b.phonemes


def test_resampler_keeps_pitch_and_length() -> None:
    rate = 22_050
    t = np.arange(rate) / rate  # one second
    out = resample_to_16k((0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), rate)
    assert out.shape == (SAMPLE_RATE,)
    f, p = welch(out.astype(np.float64), fs=SAMPLE_RATE, nperseg=4096)
    assert abs(f[np.argmax(p)] - 440.0) < 4.0
    # Content above the new Nyquist is filtered out, not folded back as an alias.
    high = resample_to_16k((0.5 * np.sin(2 * np.pi * 10_000.0 * t)).astype(np.float32), rate)
    assert np.abs(high[1000:-1000]).max() < 0.01 * 32768


def test_phoneme_timings_from_ids() -> None:
    # ^ _ h _ ˈ _ a _ ɪ _ $ with piper's pad after every symbol; durations in samples at rate 100.
    id_map = {1: "^", 0: "_", 20: "h", 120: "ˈ", 14: "a", 74: "ɪ", 122: "ː", 2: "$"}
    ids = [1, 0, 20, 0, 120, 0, 14, 122, 0, 74, 0, 2]
    samples = np.array([5, 5, 10, 0, 3, 2, 10, 4, 1, 10, 5, 5])
    spans = phoneme_timings(ids, samples, id_map, pad_id=0, rate=100)
    assert [(p.phoneme, round(p.start * 100), round(p.end * 100)) for p in spans] == [
        ("^", 0, 10),
        ("h", 10, 20),
        ("aː", 20, 40),  # the stress mark (and its pad) is the vowel's onset; the length mark its tail
        ("ɪ", 40, 55),
        ("$", 55, 60),
    ]


def test_alignment_patch_adds_one_output_and_is_idempotent(speaker: PiperSpeaker) -> None:
    model = (VOICES / f"{VOICE}.onnx").read_bytes()
    patched = add_alignment_output(model)
    assert len(patched) > len(model) and add_alignment_output(patched) == patched
    # The speaker's session runs the patched bytes: the durations are its second output.
    assert [o.name for o in speaker.voice.session.get_outputs()] == ["output", "/Ceil_output_0"]
    with pytest.raises(ValueError, match="no graph"):
        add_alignment_output(b"\x08\x07")  # a ModelProto holding only ir_version


def test_sentences_validate_the_request_text() -> None:
    assert sentences("Hello there. How are you?") == ["Hello there.", "How are you?"]
    with pytest.raises(ValueError, match="empty"):
        sentences(" 😀 ")
    with pytest.raises(ValueError, match="at most"):
        sentences("a" * 2001)


def test_unknown_voice_names_what_exists(library: VoiceLibrary, tmp_path: Path) -> None:
    assert library.get("") is library.get(VOICE)
    with pytest.raises(ValueError, match=f"unknown voice 'nope'; available: {VOICE}"):
        library.get("nope")
    with pytest.raises(ValueError, match="unknown voice"):
        library.get("../1/voices/" + VOICE)
    with pytest.raises(ValueError, match="unknown voice"):
        VoiceLibrary(tmp_path, VOICE)
