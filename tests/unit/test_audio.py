"""AudioTimeline: chunk validation, VAD window cutting and the end-aligned history window."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.errors import BadAudioChunk
from orchestrator.signal.audio import HISTORY, VAD_CONTEXT, VAD_WINDOW, AudioTimeline


def pcm(values: np.ndarray) -> bytes:
    return values.astype("<i2").tobytes()


def test_windows_are_cut_every_512_samples_with_context() -> None:
    tl = AudioTimeline()
    ramp = np.arange(2000, dtype=np.int16)
    windows = []
    for i in range(0, 2000, 320):
        windows += tl.push(pcm(ramp[i : i + 320]))
    assert [round(w.end * 16000) for w in windows] == [512, 1024, 1536]
    first, second = windows[0], windows[1]
    assert first.audio.shape == (VAD_CONTEXT + VAD_WINDOW,)
    assert np.all(first.audio[:VAD_CONTEXT] == 0)  # before sample 0
    assert np.array_equal(second.audio, ramp[512 - VAD_CONTEXT : 1024])
    # Stamped with the end of the chunk that completed the window: 640 samples for the first window.
    assert round(first.t * 16000) == 640


def test_history_window_is_end_aligned_and_front_padded() -> None:
    tl = AudioTimeline()
    x = (np.arange(16000) % 1000).astype(np.int16)
    for i in range(0, 16000, 320):
        tl.push(pcm(x[i : i + 320]))
    w = tl.window(0.5)
    assert w.shape == (HISTORY,)
    assert np.all(w[: HISTORY - 8000] == 0)
    assert np.array_equal(w[-8000:], x[:8000])


def test_ring_wraps_after_more_than_history() -> None:
    tl = AudioTimeline()
    x = (np.arange(10 * 16000) % 30000).astype(np.int16)
    for i in range(0, x.shape[0], 3200):
        tl.push(pcm(x[i : i + 3200]))
    assert np.array_equal(tl.window(tl.now), x[-HISTORY:])
    with pytest.raises(ValueError):
        tl.span(0, 100)  # long gone


@pytest.mark.parametrize(
    ("chunk", "needle"),
    [(b"", "empty"), (b"\x00\x01\x02", "16-bit"), (b"\x00" * 20000, "exceeds")],
)
def test_bad_chunks_are_refused_without_changing_state(chunk: bytes, needle: str) -> None:
    tl = AudioTimeline()
    tl.push(b"\x00" * 640)
    with pytest.raises(BadAudioChunk, match=needle):
        tl.push(chunk)
    assert tl.samples == 320


def test_span_matches_the_stream_at_every_wrap() -> None:
    rng = np.random.default_rng(3)
    tl = AudioTimeline(max_chunk_ms=200, history=4000)  # (a ring a little over a chunk: it wraps often)
    stream: list[int] = []
    for _ in range(300):
        chunk = rng.integers(-3000, 3000, int(rng.integers(1, 3200)), dtype=np.int16)
        tl.push(chunk.astype("<i2").tobytes())
        stream += chunk.tolist()
        n = len(stream)
        for length in (1, 17, 512, 4000):
            if length > n:
                continue
            end = int(rng.integers(max(n - 4000 + length, length), n + 1))
            assert tl.span(end - length, end).tolist() == stream[end - length : end]
    assert tl.window(0.01, 400)[:240].tolist() == [0] * 240  # before sample 0: zeros
