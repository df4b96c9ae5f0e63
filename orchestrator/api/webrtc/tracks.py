"""The replica's media tracks of a WebRTC call (aiortc pulls a frame at a time with `recv`).

Both are paced on the session clock (`SessionClock`): the voice in 20 ms slots read from the `Playout`, the face
frame by frame, each leaving `delay` after its time. aiortc stamps its RTCP sender reports with the wall time a
packet leaves, so media that leaves on its schedule carries timestamps a browser can line up: voice and face
stay in step at the page. Before the microphone has been heard the voice is silence on a steady 20 ms beat.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction

import av
import cv2
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack

from duet.rtcaudio import opus_frame
from orchestrator.api.webrtc.playout import CATCH_UP_S, SAMPLE_RATE, SLOT, Playout, SessionClock

VIDEO_CLOCK = 90000
MAX_EARLY_S = 1.0  # a frame due further ahead than this is sent now (a clock that jumped; never stall the face)
STALE_S = 0.2  # a frame is skipped when the one after it is already this late (the face catches up)
RECENT_FRAMES = 50  # the face's lateness is judged on this many recent frames (2 s at 25 fps)
FRAMES_KEPT = 50  # replica frames waiting to be sent (2 s at 25 fps); older ones give way


class ReplicaAudio(MediaStreamTrack):
    """The replica's voice. `sync` (the face's recent lateness, seconds) holds the voice back by as much, up to
    `max_sync_s`, so the lips stay with it when the renderer falls behind the clock (a loaded machine). The
    delay changes only while the replica is quiet: a word is never stretched or cut for it."""

    kind = "audio"

    def __init__(
        self,
        playout: Playout,
        clock: SessionClock,
        delay_s: float,
        now: Callable[[], float] = time.monotonic,
        *,
        sync: Callable[[], float] | None = None,
        max_sync_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.playout = playout
        self.clock = clock
        self.base_delay_s = self.delay_s = delay_s
        self.sync = sync
        self.max_sync_s = max_sync_s
        self.waited_max_s = 0.0  # the longest the voice has waited for the face
        self._now = now
        self._next: float | None = None  # wall time the next slot leaves
        self._pts = 0
        self.skipped = 0  # samples passed over because the sender fell behind

    async def recv(self) -> av.AudioFrame:
        now = self._now()
        if self._next is None or now - self._next > CATCH_UP_S:  # first frame, or the loop stalled: re-anchor
            self._next = now
        if (wait := self._next - now) > 0:
            await asyncio.sleep(wait)
        slot_wall = self._next
        self._next += SLOT / SAMPLE_RATE
        frame = opus_frame(self._slot(slot_wall).tobytes(), self._pts)
        self._pts += SLOT
        return frame

    def _slot(self, wall: float) -> npt.NDArray[np.int16]:
        if not self.clock.known:
            return np.zeros(SLOT, dtype=np.int16)
        if self.sync is not None and self.playout.pending == 0:  # quiet: the delay may follow the face
            self.delay_s = self.base_delay_s + min(max(self.sync(), 0.0), self.max_sync_s)
            self.waited_max_s = max(self.waited_max_s, self.delay_s - self.base_delay_s)
        due = round(self.clock.session(wall - self.delay_s) * SAMPLE_RATE)  # the session sample due now
        behind = due - self.playout.cursor
        if behind > CATCH_UP_S * SAMPLE_RATE:
            self.skipped += behind
            self.playout.skip_to(due)
        elif behind < -2 * SLOT:  # ahead of the session clock (it slowed): wait for it in silence
            return np.zeros(SLOT, dtype=np.int16)
        return self.playout.read(SLOT)


class ReplicaVideo(MediaStreamTrack):
    kind = "video"

    def __init__(self, clock: SessionClock, delay_s: float, now: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.delay_s = delay_s
        self._now = now
        self._frames: deque[tuple[bytes, float]] = deque(maxlen=FRAMES_KEPT)
        self._ready = asyncio.Event()
        self.late_ms: list[float] = []  # per frame sent: how long after its due time it left
        self._recent: deque[float] = deque(maxlen=RECENT_FRAMES)
        self.dropped = 0

    def push(self, jpeg: bytes, t: float) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append((jpeg, t))
        self._ready.set()

    async def recv(self) -> av.VideoFrame:
        while True:
            while not self._frames:
                self._ready.clear()
                await self._ready.wait()
            jpeg, t = self._frames.popleft()
            due = self.clock.wall(t) + self.delay_s
            now = self._now()
            if self._frames and self.clock.wall(self._frames[0][1]) + self.delay_s + STALE_S <= now:
                self.dropped += 1  # the next frame is late already: this one would only hold the face back
                continue
            if 0 < due - now <= MAX_EARLY_S:
                await asyncio.sleep(due - now)
            late = self._now() - due
            self.late_ms.append(round(late * 1000, 1))
            self._recent.append(late)
            frame = await asyncio.to_thread(_decode, jpeg)
            if frame is None:
                continue
            frame.pts = round(t * VIDEO_CLOCK)
            frame.time_base = Fraction(1, VIDEO_CLOCK)
            return frame

    def lateness(self) -> float:
        """How late the face's recent frames typically left (seconds, their median; 0 with too few). A median,
        not a high percentile: the voice holds the wait for a whole utterance, so a burst of late frames must
        not set it."""
        return float(np.median(self._recent)) if len(self._recent) >= 5 else 0.0


def _decode(jpeg: bytes) -> av.VideoFrame | None:
    bgr = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return av.VideoFrame.from_ndarray(np.asarray(bgr, dtype=np.uint8), format="bgr24")
