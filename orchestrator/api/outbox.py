"""A session's output to one client, in three bounded lanes: events first, then audio, then video.

- **Events** (and errors) are never dropped and never wait behind media: the writer always takes them first.
  When a client falls `events` behind, the session producing them waits (and, through its full inbox, so
  does the client's input: gRPC flow control pushes back).
- **Audio** keeps its order and is never dropped either; the session sends it only a small lead ahead of the
  input clock, so the lane is short. A pause or stop (`cut`) drops the reply's unsent audio from the cut on:
  it was never heard, and since events overtake audio the client must not receive it after the cut.
- **Video** frames have their own lane of `video` frames; under backpressure the oldest unsent frame gives
  way (`dropped_video` counts them). A live face is worth more fresh than complete.

So what a slow or stalled client can make the server hold is bounded: `events` events, `audio` audio
segments and `video` frames. `close` ends the stream after everything queued, with its `finale` last
(`session_ended`). The outbox holds typed items; `orchestrator.api.wire` makes the messages as they leave.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from duet.proto import session_pb2 as pb
from orchestrator.api.wire import audio_message, event_message, video_message
from orchestrator.events import Event

SAMPLE_BYTES = 2
SAMPLE_RATE = 16000


@dataclass
class _Audio:
    pcm: bytes
    reply_id: int
    t: float


@dataclass(frozen=True)
class _Video:
    jpeg: bytes
    t: float
    index: int


class Outbox:
    """Implements `orchestrator.session.base.Outlet` for the session; `next()` is the transport's side."""

    def __init__(
        self,
        *,
        events: int = 1024,
        audio: int = 64,
        video: int = 50,
        on_video_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.limits = (events, audio, video)
        self.dropped_video = 0
        self._on_video_drop = on_video_drop
        self._events: deque[Event] = deque()
        self._audio: deque[_Audio] = deque()
        self._video: deque[_Video] = deque(maxlen=video)
        self._final: list[Event] = []
        self._closed = False
        self._ready = asyncio.Event()  # something to write (or the stream is closed)
        self._room = asyncio.Event()  # the writer took something: a waiting producer may look again

    # ---- the session's side (the Outlet protocol) -------------------------------------------------------

    async def event(self, event: Event) -> None:
        if await self._wait_for_room(lambda: len(self._events) < self.limits[0]):
            self._events.append(event)
        self._ready.set()

    def urgent(self, event: Event) -> None:
        """An event that must not wait (a fatal error): queued first, even beyond the bound."""
        self._events.appendleft(event)
        self._ready.set()

    async def audio(self, pcm: bytes, reply_id: int, t: float) -> None:
        if await self._wait_for_room(lambda: len(self._audio) < self.limits[1]):
            self._audio.append(_Audio(pcm, reply_id, t))
        self._ready.set()

    def video(self, jpeg: bytes, t: float, index: int) -> None:
        if len(self._video) == self._video.maxlen:
            self.dropped_video += 1
            if self._on_video_drop is not None:
                self._on_video_drop(1)
        self._video.append(_Video(jpeg, t, index))  # (a full deque drops its oldest)
        self._ready.set()

    def cut(self, reply_id: int, t: float) -> None:
        cut_at = round(t * SAMPLE_RATE)
        kept: deque[_Audio] = deque()
        for a in self._audio:
            if a.reply_id != reply_id:
                kept.append(a)
                continue
            start = round(a.t * SAMPLE_RATE)
            if start >= cut_at:
                continue  # wholly after the cut: never heard
            keep = (cut_at - start) * SAMPLE_BYTES
            if keep < len(a.pcm):
                a.pcm = a.pcm[:keep]
            kept.append(a)
        self._audio = kept
        self._room.set()

    def finale(self, events: Sequence[Event]) -> None:
        """The stream's last events (`session_ended`), written after everything else once it is closed."""
        self._final = list(events)

    def close(self) -> None:
        """No more input: the stream ends once everything queued is written, the finale last."""
        if not self._closed:
            self._closed = True
            self._ready.set()
            self._room.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> tuple[int, int, int]:
        """Queued events, audio segments and video frames."""
        return len(self._events), len(self._audio), len(self._video)

    # ---- the transport's side -------------------------------------------------------------------------

    async def next(self) -> pb.ServerMessage | None:
        """The next message to write (events, then audio, then video); None once closed and drained."""
        while True:
            msg = self._take()
            if msg is not None:
                self._room.set()
                return msg
            if self._closed:
                if self._final:
                    return event_message(self._final.pop(0))
                return None
            self._ready.clear()
            await self._ready.wait()

    def _take(self) -> pb.ServerMessage | None:
        if self._events:
            return event_message(self._events.popleft())
        if self._audio:
            a = self._audio.popleft()
            return audio_message(a.pcm, a.reply_id, round(a.t, 4))
        if self._video:
            v = self._video.popleft()
            return video_message(v.jpeg, v.t, v.index)
        return None

    async def _wait_for_room(self, has_room: Callable[[], bool]) -> bool:
        """Wait until the lane has room; False when it never will (closed and full: the item is dropped)."""
        while not has_room():
            if self._closed:
                await asyncio.sleep(0)  # (still a suspension point: a producer in a loop never spins)
                return False
            self._room.clear()
            await self._room.wait()
        return True
