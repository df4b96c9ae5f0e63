"""The replica's side of a WebRTC call, pure: where the session clock is on the wall clock, and the reply audio
waiting for its time.

The session's clock is the user's microphone: session time `t` is the audio received so far. A gRPC client
places the replica's audio by its `t`; a WebRTC peer plays what it receives as it arrives, so the server must
send each piece when the session clock reaches it. `SessionClock` maps session time to wall time from the
arrivals of the microphone's chunks (the earliest arrival in a sliding window: network jitter only ever makes
a chunk late, and the window follows the two clocks' drift over a long call). `Playout` holds the reply audio
placed on the session timeline and hands it out slot by slot; a cut (the replica paused or stopped) drops
what was placed beyond it and not yet played.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000
SLOT = 320  # 20 ms
WINDOW_S = 10.0  # the arrivals the offset is taken over
CATCH_UP_S = 0.1  # a sender this far behind its schedule skips ahead instead of playing late audio


class SessionClock:
    """Session time ↔ wall time, learnt from the microphone: `heard(t, wall)` for each chunk handed to the
    session (`t`: session time at its start), `wall(t)` where session time `t` falls on the wall clock."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._offsets: deque[tuple[float, float]] = deque()  # (wall, wall − t), increasing offsets kept
        self.known = False

    def heard(self, t: float, wall: float) -> None:
        offset = wall - t
        # a monotone deque: the front is the window's minimum
        while self._offsets and self._offsets[-1][1] >= offset:
            self._offsets.pop()
        self._offsets.append((wall, offset))
        while self._offsets[0][0] < wall - self.window_s:
            self._offsets.popleft()
        self.known = True

    @property
    def offset(self) -> float:
        return self._offsets[0][1] if self._offsets else 0.0

    def wall(self, t: float) -> float:
        return self.offset + t

    def session(self, wall: float) -> float:
        return wall - self.offset


@dataclass
class _Piece:
    start: int  # session sample
    pcm: npt.NDArray[np.int16]

    @property
    def end(self) -> int:
        return self.start + self.pcm.shape[0]


@dataclass
class Playout:
    """Reply audio on the session timeline (16 kHz samples), read in order from `cursor`.

    Audio that arrives after its time (a loaded server; a reply flushed once the session has ended and its
    clock has stopped) is played from now rather than lost: its reply is shifted by the delay, and the rest of
    that reply keeps the shift, so no word is dropped or doubled."""

    cursor: int = 0  # the next session sample to play
    _pieces: list[_Piece] = field(default_factory=list)
    _shift: dict[int, int] = field(default_factory=dict)  # per reply: samples it plays after its time

    def place(self, t: float, pcm: bytes, reply_id: int = 0) -> None:
        start = round(t * SAMPLE_RATE) + self._shift.get(reply_id, 0)
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        if start < self.cursor:
            self._shift[reply_id] = self._shift.get(reply_id, 0) + self.cursor - start
            start = self.cursor
        if samples.shape[0]:
            self._pieces.append(_Piece(start, samples))

    def cut(self, t: float, reply_id: int | None = None) -> None:
        """Nothing placed at or after session time `t` (of `reply_id`, as shifted) plays (from the cursor on)."""
        shift = self._shift.get(reply_id, 0) if reply_id is not None else 0
        at = max(round(t * SAMPLE_RATE) + shift, self.cursor)
        kept = []
        for p in self._pieces:
            if p.start >= at:
                continue
            kept.append(_Piece(p.start, p.pcm[: at - p.start]) if p.end > at else p)
        self._pieces = kept

    def read(self, n: int = SLOT) -> npt.NDArray[np.int16]:
        """The next `n` samples from the cursor (silence where nothing was placed); the cursor moves on."""
        lo, hi = self.cursor, self.cursor + n
        out = np.zeros(n, dtype=np.int16)
        kept = []
        for p in self._pieces:
            a, b = max(p.start, lo), min(p.end, hi)
            if a < b:
                out[a - lo : b - lo] = p.pcm[a - p.start : b - p.start]
            if p.end > hi:
                kept.append(p)
        self._pieces = kept
        self.cursor = hi
        return out

    def skip_to(self, sample: int) -> None:
        """Jump the cursor ahead (the sender fell behind its schedule); what it passes over is never played."""
        if sample > self.cursor:
            self.cursor = sample
            self._pieces = [p for p in self._pieces if p.end > sample]

    @property
    def pending(self) -> int:
        """Samples placed ahead of the cursor."""
        return sum(max(p.end - max(p.start, self.cursor), 0) for p in self._pieces)
