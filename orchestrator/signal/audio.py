"""A session's incoming audio on its own clock: validation, VAD windows and the recent-history window.

Pure and synchronous. Sample 0 is the first sample the client sent; `t` values are seconds on that
clock. Chunks may be any size up to a bound (clients send 20 ms); VAD runs on fixed 32 ms windows, so a
chunk may complete zero, one or several windows, and each window is stamped with the end time of the chunk
that completed it (the "last chunk the decision used").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from orchestrator.errors import BadAudioChunk

SAMPLE_RATE = 16000
VAD_WINDOW = 512
VAD_CONTEXT = 64
HISTORY = 8 * SAMPLE_RATE  # what the floor ensemble sees: the last 8 s

I16 = npt.NDArray[np.int16]


@dataclass(frozen=True)
class VadWindow:
    audio: I16  # [VAD_CONTEXT + VAD_WINDOW]: context then the new window
    end: float  # audio time where the window ends
    t: float  # end time of the chunk that completed it


class AudioTimeline:
    """Holds the recent audio of one session and cuts it into VAD windows."""

    def __init__(self, max_chunk_ms: int = 200, history: int = HISTORY) -> None:
        self.max_chunk_bytes = 2 * SAMPLE_RATE * max_chunk_ms // 1000
        self._hist = np.zeros(history, dtype=np.int16)  # ring: the last `history` samples
        self._n = 0  # total samples received
        self._next_window_end = VAD_WINDOW  # sample index where the next VAD window ends

    @property
    def samples(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        """How many recent samples are kept."""
        return int(self._hist.shape[0])

    @property
    def now(self) -> float:
        return self._n / SAMPLE_RATE

    def push(self, pcm: bytes) -> list[VadWindow]:
        """Append one chunk of PCM16 little-endian mono; return the VAD windows it completes."""
        self.check(pcm)
        x = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        self._write(x)
        t = self._n / SAMPLE_RATE
        out = []
        while self._next_window_end <= self._n:
            end = self._next_window_end
            out.append(VadWindow(audio=self.span(end - VAD_WINDOW - VAD_CONTEXT, end), end=end / SAMPLE_RATE, t=t))
            self._next_window_end += VAD_WINDOW
        return out

    def check(self, pcm: bytes) -> None:
        """Raise `BadAudioChunk` (nothing changes) unless `pcm` is a whole, non-empty chunk within bounds."""
        if len(pcm) == 0:
            raise BadAudioChunk("empty audio chunk")
        if len(pcm) % 2:
            raise BadAudioChunk(f"audio chunk of {len(pcm)} bytes is not whole 16-bit samples")
        if len(pcm) > self.max_chunk_bytes:
            raise BadAudioChunk(
                f"audio chunk of {len(pcm)} bytes exceeds {self.max_chunk_bytes} bytes; send ~20 ms (640 bytes)"
            )

    def _write(self, x: I16) -> None:
        cap = self._hist.shape[0]
        n = x.shape[0]  # the clock advances by the whole chunk, even one longer than the ring keeps
        if n >= cap:
            x = x[-cap:]
        start = (self._n + n - x.shape[0]) % cap
        first = min(cap - start, x.shape[0])
        self._hist[start : start + first] = x[:first]
        self._hist[: x.shape[0] - first] = x[first:]
        self._n += n

    def span(self, start: int, end: int) -> I16:
        """Samples [start, end) of the stream; zeros before sample 0. Must lie within the kept history."""
        cap = self._hist.shape[0]
        if end > self._n or end - start > cap or 0 <= start < self._n - cap:
            raise ValueError(f"samples [{start}, {end}) are not in the kept history")
        out = np.zeros(end - start, dtype=np.int16)
        lo = max(start, 0, self._n - cap)
        if lo < end:  # one or two slices of the ring (an index array of the whole span costs 40x more)
            a, n = lo % cap, end - lo
            first = min(cap - a, n)
            out[lo - start : lo - start + first] = self._hist[a : a + first]
            out[lo - start + first :] = self._hist[: n - first]
        return out

    def window(self, end_t: float, length: int = HISTORY) -> I16:
        """The `length` samples ending at audio time `end_t` (front-padded with zeros near the start)."""
        end = min(round(end_t * SAMPLE_RATE), self._n)
        return self.span(end - length, end)
