"""Our Smart Turn log-mel against the reference numpy port of the Whisper feature extractor."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest

from orchestrator.signal.logmel import (
    N_FRAMES,
    N_MELS,
    WINDOW_SAMPLES,
    LogMelExtractor,
    log_mel,
    log_mel_batch,
    slaney_mel_filterbank,
    turn_window,
)
from tests.conftest import require, require_module

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / ".cache" / "reference" / "smart_turn_whisper_features.py"
TURN_ONNX = ROOT / "model_repository" / "turn" / "1" / "smart-turn-v3.2-cpu.onnx"
SR = 16_000
F32 = npt.NDArray[np.float32]


def _load_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smart_turn_whisper_features", REFERENCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference() -> Callable[[F32], F32]:
    require(REFERENCE, "the reference log-mel code (from the pipecat-ai wheel)")
    fn: Callable[[F32], F32] = _load_reference().compute_whisper_log_mel_features
    return fn


def _f32(x: npt.ArrayLike) -> F32:
    return np.asarray(x, dtype=np.float32)


def _t(n: int = WINDOW_SAMPLES) -> npt.NDArray[np.float64]:
    return np.arange(n) / SR


def _chirp() -> F32:
    t = _t()
    # Linear sweep 100 Hz -> 3 kHz over 8 s.
    return _f32(0.3 * np.sin(2 * np.pi * (100 * t + (2900 / 16) * t**2)))


def _voiced() -> F32:
    # Harmonic-rich "vowel" with vibrato and a 3 Hz syllable-like envelope.
    t = _t()
    f0 = 140 * (1 + 0.08 * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    wave = sum(np.sin(k * phase) / k for k in range(1, 25))
    return _f32(0.1 * wave * (0.55 + 0.45 * np.sin(2 * np.pi * 3 * t)))


def _noise() -> F32:
    return (0.05 * np.random.default_rng(7).standard_normal(WINDOW_SAMPLES)).astype(np.float32)


def _silence_then_tone() -> F32:
    t = _t()
    return np.where(t > 5.0, 0.5 * np.sin(2 * np.pi * 220 * t), 0.0).astype(np.float32)


def _short_clip_front_padded() -> F32:
    # 1.25 s of int16 speech-like audio, end-aligned into the 8 s window.
    t = _t(20_000)
    clip = 6000 * np.sin(2 * np.pi * 180 * t) * np.hanning(t.size) + 800 * np.sin(2 * np.pi * 2300 * t)
    return turn_window(clip.astype(np.int16))


def _dc_offset_quiet() -> F32:
    return (0.4 + 1e-3 * np.random.default_rng(3).standard_normal(WINDOW_SAMPLES)).astype(np.float32)


SIGNALS: dict[str, Callable[[], F32]] = {
    "chirp": _chirp,
    "voiced": _voiced,
    "noise": _noise,
    "silence_then_tone": _silence_then_tone,
    "short_clip_front_padded": _short_clip_front_padded,
    "dc_offset_quiet": _dc_offset_quiet,
    "digital_silence": lambda: np.zeros(WINDOW_SAMPLES, np.float32),
}


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_matches_reference(name: str, reference: Callable[[F32], F32]) -> None:
    audio = SIGNALS[name]()
    expected = reference(audio)
    got = log_mel(audio)
    assert got.shape == expected.shape == (N_MELS, N_FRAMES)
    assert got.dtype == np.float32
    # float64 spectrum: equal up to the last float32 bit (bit-identical on every signal here).
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_float32_variant_is_close_to_reference(name: str, reference: Callable[[F32], F32]) -> None:
    audio = SIGNALS[name]()
    got = LogMelExtractor(np.float32)(audio[None])[0]
    np.testing.assert_allclose(got, reference(audio), atol=2e-4, rtol=0)


def test_batch_equals_single_and_is_order_independent() -> None:
    batch = np.stack([SIGNALS[n]() for n in sorted(SIGNALS)])
    feats = log_mel_batch(batch)
    assert feats.shape == (len(SIGNALS), N_MELS, N_FRAMES) and feats.dtype == np.float32
    assert feats.flags.c_contiguous
    for i, audio in enumerate(batch):
        np.testing.assert_array_equal(feats[i], log_mel(audio))
    np.testing.assert_array_equal(log_mel_batch(batch[::-1]), feats[::-1])


def test_known_values() -> None:
    # Digital silence: normalisation leaves zeros, every mel hits the 1e-10 floor: (-10 + 4) / 4.
    np.testing.assert_allclose(log_mel(np.zeros(WINDOW_SAMPLES, np.float32)), -1.5, atol=1e-6)
    # A 1 kHz tone: its loudest mel band is the one whose filter is centred nearest 1 kHz, and the
    # output spans at most 8 decades (2.0 after the /4 scaling).
    feats = log_mel(np.sin(2 * np.pi * 1000 * _t()).astype(np.float32))
    bank = slaney_mel_filterbank()
    centre_hz = np.argmax(bank, axis=0) * SR / 400
    assert abs(centre_hz[int(np.argmax(feats[:, 400]))] - 1000) <= 40
    assert feats.max() - feats.min() <= 2.0 + 1e-6


def test_gain_invariant_above_the_variance_epsilon() -> None:
    audio = _voiced()  # variance ~1e-2; the 1e-7 epsilon only matters for near-silent windows
    np.testing.assert_allclose(log_mel(audio * 0.25), log_mel(audio), atol=1e-4)
    np.testing.assert_allclose(log_mel(audio * 8.0), log_mel(audio), atol=1e-4)


def test_filterbank_is_area_normalised() -> None:
    bank = slaney_mel_filterbank()
    assert bank.shape == (201, 80)
    assert (bank >= 0).all()
    # Slaney normalisation: each triangle has unit area in Hz, up to the 40 Hz FFT-bin sampling.
    area = bank.sum(axis=0) * (SR / 400)
    np.testing.assert_allclose(area[10:], 1.0, rtol=0.1)


def test_bad_shapes_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        log_mel_batch(np.zeros((2, 1000), np.float32))
    with pytest.raises(ValueError, match="shape"):
        log_mel(np.zeros((1, WINDOW_SAMPLES), np.float32))
    with pytest.raises(ValueError, match="out"):
        LogMelExtractor()(np.zeros((1, WINDOW_SAMPLES)), out=np.empty((2, N_MELS, N_FRAMES), np.float32))
    assert log_mel_batch(np.zeros((0, WINDOW_SAMPLES), np.float32)).shape == (0, N_MELS, N_FRAMES)


def test_turn_window_front_pads_and_scales_int16() -> None:
    pcm = np.array([32767, -32768, 16384], np.int16)
    win = turn_window(pcm, n=5)
    assert win.dtype == np.float32
    np.testing.assert_array_equal(win, np.array([0, 0, 32767 / 32768, -1.0, 0.5], np.float32))


def test_turn_window_keeps_the_last_n_samples() -> None:
    audio = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(turn_window(audio, n=4), [6, 7, 8, 9])
    assert turn_window(np.zeros(0, np.int16), n=3).tolist() == [0, 0, 0]
    with pytest.raises(TypeError):
        turn_window(np.zeros(4, np.int32))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        turn_window(np.zeros((2, 2), np.int16))


def test_smart_turn_probability_matches_reference_features(reference: Callable[[F32], F32]) -> None:
    require(TURN_ONNX, "the Smart Turn model")
    ort = require_module("onnxruntime", "onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(TURN_ONNX), sess_options=opts, providers=["CPUExecutionProvider"])
    names = ["voiced", "silence_then_tone", "short_clip_front_padded", "noise"]
    audio = np.stack([SIGNALS[n]() for n in names])
    ours = session.run(None, {"input_features": log_mel_batch(audio)})[0]
    theirs = session.run(None, {"input_features": np.stack([reference(a) for a in audio])})[0]
    assert ours.shape == (len(names), 1)
    assert ((ours >= 0) & (ours <= 1)).all()
    np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)
