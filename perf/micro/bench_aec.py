"""Echo canceller per 20 ms chunk (orchestrator/signal/echo.py), with the replica's voice playing.

A conversation session with echo handling on calls `EchoCanceller.process` on every incoming 20 ms chunk (50 per
second of audio) before VAD sees it. The scene: the replica speaks continuously (`play` keeps the far end 1 s
ahead of the mic, outside the timed call); the mic hears it 80 ms later through a small room at -12 dB, plus a
-60 dBFS noise floor. Each canceller first runs 5 s to lock the delay and converge, then every timed call is the
next chunk. The mean includes the GCC-PHAT delay re-check every 500 ms; the median is the plain chunk.

Rows: the canceller as the conversation session builds it (the class default: `max_chunk` 1024, FFTs of 2048),
the same with a 200 ms block (the largest chunk the server accepts: FFTs of 8192; what sessions ran until
2026-12-05, twice the cost and 7x slower adaptation), and the passthrough case (no replica audio near the
chunk: returned unchanged).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SR, room_echo, speech_like, to_pcm

from orchestrator.signal.echo import EchoCanceller

GROUP = "echo canceller: one 20 ms chunk"
CHUNK = 320
BLOCK_200MS = 200 * SR // 1000  # server.max_audio_chunk_ms = 200: the old session setting
ROUNDS = 1000  # 20 s of audio per benchmark
WARM_S = 5.0
DELAY = 80 * SR // 1000  # the scene's echo delay, in samples


@pytest.fixture(scope="module")
def scene():
    far = speech_like(30.0, seed=5, f0=(130.0, 105.0))  # the replica (a lower voice than the user fixtures)
    noise = 10 ** (-60 / 20) * np.random.default_rng(7).standard_normal(far.size)
    mic = room_echo(far, delay_ms=1000.0 * DELAY / SR, seed=6) + noise
    return to_pcm(far), to_pcm(mic.astype(np.float32))


class Stream:
    """Feeds one canceller: the far end played 1 s ahead (in `setup`, untimed), the mic chunk by chunk."""

    def __init__(self, aec: EchoCanceller, far: np.ndarray, mic: np.ndarray, *, replica: bool) -> None:
        self.aec, self.far, self.mic, self.replica = aec, far, mic, replica
        self.pos = 0  # session sample clock
        self.played = 0

    def _chunk(self) -> np.ndarray:
        i = self.pos % (self.mic.size - CHUNK)
        return self.mic[i : i + CHUNK] if self.replica else self.mic[i : i + CHUNK] // 8  # no echo: just a voice

    def setup(self):
        if self.replica:
            while self.played < self.pos + SR:
                i = self.played % (self.far.size - SR)
                self.aec.play(self.played, self.far[i : i + SR])
                self.played += SR
        args = (self.pos, self._chunk())
        self.pos += CHUNK
        return args, {}

    def warm(self, seconds: float) -> None:
        for _ in range(round(seconds * SR / CHUNK)):
            args, _ = self.setup()
            self.aec.process(*args)


def _run(benchmark, stream: Stream):
    stream.warm(WARM_S)
    out = benchmark.pedantic(stream.aec.process, setup=stream.setup, rounds=ROUNDS, warmup_rounds=50)
    assert out.shape == (CHUNK,)
    return stream.aec.stats


@pytest.mark.benchmark(group=GROUP)
def test_aec_session_config_replica_playing(benchmark, scene):
    """As the session builds it (orchestrator/session/conversation.py): the default block, FFTs of 2048."""
    far, mic = scene
    stats = _run(benchmark, Stream(EchoCanceller(SR), far, mic, replica=True))
    benchmark.extra_info["fft_size"] = EchoCanceller(SR).fft_size
    benchmark.extra_info["erle_db"] = round(stats.erle_db, 1)
    assert stats.delay == DELAY and not stats.passthrough  # it locked on the true delay and really cancels


@pytest.mark.benchmark(group=GROUP)
def test_aec_alt_block_200ms_replica_playing(benchmark, scene):
    """The alternative: a block as large as the largest chunk (the old session setting), FFTs of 8192."""
    far, mic = scene
    stats = _run(benchmark, Stream(EchoCanceller(SR, max_chunk=BLOCK_200MS), far, mic, replica=True))
    benchmark.extra_info["fft_size"] = EchoCanceller(SR, max_chunk=BLOCK_200MS).fft_size
    benchmark.extra_info["erle_db"] = round(stats.erle_db, 1)
    assert stats.delay == DELAY and not stats.passthrough


@pytest.mark.benchmark(group=GROUP)
def test_aec_passthrough_no_replica(benchmark, scene):
    """No replica audio near the chunk: the far-end check, then the chunk is returned unchanged."""
    far, mic = scene
    stats = _run(benchmark, Stream(EchoCanceller(SR), far, mic, replica=False))
    assert stats.passthrough
