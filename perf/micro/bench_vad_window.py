"""VAD windowing (orchestrator/signal/audio.py) and the per-batch split of the Triton glue (inference/vad.py).

A session pushes every 20 ms chunk into its `AudioTimeline` (50 calls per second of audio), which cuts 32 ms VAD
windows (31.25 per second); each full floor evaluation reads the last 8 s with `window(t)`. Side by side for the
8 s read: the same ring copied with two slices instead of a modulo index array.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from orchestrator.inference.vad import split_rows
from orchestrator.signal.audio import HISTORY, SAMPLE_RATE, AudioTimeline

CHUNK = 320


def _chunks(pcm: np.ndarray) -> list[bytes]:
    whole = pcm[: pcm.size // CHUNK * CHUNK]
    return [c.astype("<i2").tobytes() for c in whole.reshape(-1, CHUNK)]


@pytest.fixture(scope="module")
def filled(voice_long_pcm):
    """A timeline holding 10 s of audio (the 8 s history ring has wrapped)."""
    tl = AudioTimeline()
    for c in _chunks(voice_long_pcm[: 10 * SAMPLE_RATE]):
        tl.push(c)
    return tl


@pytest.mark.benchmark(group="vad windowing: push 20 ms")
def test_push_20ms_chunk(benchmark, voice_long_pcm):
    """One client chunk in: check, write to the ring, cut the VAD windows it completes (0 or 1, 0.625 on average)."""
    tl = AudioTimeline()
    chunks = itertools.cycle(_chunks(voice_long_pcm))
    windows = benchmark(lambda: tl.push(next(chunks)))
    assert len(windows) <= 1


def ring_window(tl: AudioTimeline, end_t: float, length: int = HISTORY) -> np.ndarray:
    """Alternative for `window`: the same samples from the ring with two slice copies, no index array."""
    ring = tl._hist  # the benchmark reads the private ring on purpose: same data, other copy strategy
    cap = ring.shape[0]
    end = min(round(end_t * SAMPLE_RATE), tl.samples)
    start = end - length
    out = np.zeros(length, dtype=np.int16)
    lo = max(start, 0, tl.samples - cap)
    a, b = lo % cap, end % cap
    if lo >= end:
        return out
    if a < b:
        out[lo - start :] = ring[a:b]
    else:
        first = cap - a
        out[lo - start : lo - start + first] = ring[a:]
        out[lo - start + first :] = ring[:b]
    return out


@pytest.mark.benchmark(group="vad windowing: 8 s floor window")
def test_window_8s(benchmark, filled):
    """`window(t)`: the last 8 s ending at t (the newest chunk's end, as the floor evaluation asks): modulo index
    array + gather."""
    out = benchmark(filled.window, filled.now)
    assert out.shape == (HISTORY,)


@pytest.mark.benchmark(group="vad windowing: 8 s floor window")
def test_window_8s_alt_two_slices(benchmark, filled):
    """Alternative: two slice copies out of the ring."""
    out = benchmark(ring_window, filled, filled.now)
    assert np.array_equal(out, filled.window(filled.now))


@pytest.mark.benchmark(group="vad windowing: split_rows")
@pytest.mark.parametrize("requests", [1, 8])
def test_split_rows(benchmark, requests):
    """The VAD model's batch split back into per-request outputs (once per Triton batch, two arrays each)."""
    prob = np.zeros((requests, 1), np.float32)
    state = np.zeros((requests, 2, 128), np.float32)
    sizes = [1] * requests

    def run():
        return split_rows(prob, sizes), split_rows(state, sizes)

    probs, states = benchmark(run)
    assert len(probs) == len(states) == requests
