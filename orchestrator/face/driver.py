"""A conversation's live face: video frames on the session clock, in step with the replica's audio.

The session tells the driver what happens on its timeline — floor events, each piece of replica audio it
sends (with where that audio sits in the reply, so its phoneme timings can be placed), pauses and stops —
and advances its clock with every input chunk. The driver's one owned task renders the frames whose time
has come, in chunks (`chunk_s` of session time per `face_motion` + `face_render` round trip), and sends
each with its frame number and time. It never renders ahead of the clock (or of `ahead_s` past it, at most the
playback lead): speech released at `t` is known before any frame at or after `t` is drawn, so lips and audio
share one clock exactly. (Floor events, the nods, come as they happen: a frame rendered ahead misses those.)
If rendering falls more than `max_lag_s` behind, the oldest pending frames are dropped (counted), never queued;
so is a frame whose render came back later than that (a renderer that stalled mid-request).

`place_segment` and `trim` are pure and unit-tested; the task is tested against the real models.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from orchestrator.config import FaceSettings
from orchestrator.errors import DuetError, public_message
from orchestrator.events import ErrorEvent, Event, VideoStats
from orchestrator.face.emotions import EmotionCue
from orchestrator.face.motion import FLOOR_EVENTS, FloorEvent, MotionRequest, Phoneme, Sentence
from orchestrator.models.ports import FaceModels, SpeechChunk

log = logging.getLogger("duet.face")

SAMPLE_RATE = 16000
HISTORY_S = 5.0  # timeline items older than this before the next frame cannot affect it
TAIL_S = 0.4  # after the last audio at the end of a session: the mouth closes


class VideoOut(Protocol):
    """Where the frames go (the session's outlet): `video` never waits; `event` reports a failure."""

    def video(self, jpeg: bytes, t: float, index: int) -> None: ...

    async def event(self, event: Event) -> None: ...


def place_segment(chunks: Sequence[SpeechChunk], first: int, last: int, at: float) -> list[Sentence]:
    """The phonemes of reply samples [first, last) — a segment the session sent to play from `at` seconds
    on its timeline — as sentences on that timeline (one per TTS chunk the segment touches)."""
    out: list[Sentence] = []
    pos = 0
    for chunk in chunks:
        n = chunk.pcm.shape[0]
        lo, hi = max(first, pos), min(last, pos + n)
        if lo < hi and chunk.phonemes:
            t0 = at + (pos - first) / SAMPLE_RATE  # where this chunk's own time 0 falls on the timeline
            a, b = (lo - pos) / SAMPLE_RATE, (hi - pos) / SAMPLE_RATE
            kept = tuple(
                Phoneme(p.phoneme, max(p.start, a), min(p.end, b)) for p in chunk.phonemes if p.end > a and p.start < b
            )
            if kept:
                out.append(Sentence(round(t0, 6), kept))
        pos += n
        if pos >= last:
            break
    return out


def trim(sentences: Sequence[Sentence], at: float) -> list[Sentence]:
    """The replica's audio stopped at `at` (pause or stop): nothing after it is heard, so nothing after it
    may move the lips."""
    out: list[Sentence] = []
    for s in sentences:
        kept = tuple(Phoneme(p.p, p.s, min(p.e, at - s.t0)) for p in s.phonemes if s.t0 + p.s < at)
        if kept:
            out.append(Sentence(s.t0, kept))
    return out


@dataclass
class FaceStats:
    frames: int = 0
    dropped: int = 0
    render_ms: list[float] = field(default_factory=list)  # per chunk: motion + render + send
    # per frame: wall ms from the moment the session clock reached the frame's time to the frame being sent
    # (the video buffer a client needs to show lips in step with the voice)
    lag_ms: list[float] = field(default_factory=list)

    def event(self, t: float) -> VideoStats:
        def pct(xs: list[float], q: float) -> float | None:
            return round(float(np.percentile(xs, q)), 1) if xs else None

        return VideoStats(
            t=round(t, 4),
            frames=self.frames,
            dropped=self.dropped,
            lag_ms_p50=pct(self.lag_ms, 50),
            lag_ms_p95=pct(self.lag_ms, 95),
            chunk_ms_p50=pct(self.render_ms, 50),
        )


class FaceDriver:
    def __init__(
        self,
        models: FaceModels,
        settings: FaceSettings,
        out: VideoOut,
        *,
        face: str,
        emotion: str,
        seed: int = 0,
        name: str = "face",
    ) -> None:
        self.models = models
        self.s = settings
        self.out = out
        self.face = face
        self.seed = seed
        self.name = name
        self.stats = FaceStats()
        self._emotion = (EmotionCue(0.0, emotion, settings.intensity),)
        self._speech: list[Sentence] = []
        self._events: list[FloorEvent] = []
        self._now = 0.0
        self._wall = 0.0  # loop time when the clock last advanced (to time each frame's lag)
        self._end: float | None = None  # set by finish(): render up to here, then stop
        self._next = 0  # next frame index to render
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failure: DuetError | None = None

    # ---- timeline inputs (from the session) --------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-video")

    def advance(self, now: float) -> None:
        self._now = now
        self._wall = asyncio.get_running_loop().time()
        if (math.floor((now + self.s.ahead_s) * self.s.fps) - self._next) >= self.s.chunk_s * self.s.fps:
            self._wake.set()

    def floor_event(self, kind: str, t: float) -> None:
        if kind in FLOOR_EVENTS:
            self._events.append(FloorEvent(t, kind))

    def audio(self, chunks: Sequence[SpeechChunk], first: int, last: int, at: float) -> None:
        self._speech.extend(place_segment(chunks, first, last, at))

    def cut(self, at: float) -> None:
        self._speech = trim(self._speech, at)

    async def finish(self, end: float) -> None:
        """Render every frame up to `end` (+ a short tail), then stop."""
        self._end = max(end, self._now) + TAIL_S
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ---- the render task -----------------------------------------------------------------------------

    def _request(self, first: int, n: int) -> MotionRequest:
        since = first / self.s.fps - HISTORY_S
        self._speech = [s for s in self._speech if not s.phonemes or s.t0 + s.phonemes[-1].e >= since]
        self._events = [e for e in self._events if e.t >= since]
        return MotionRequest(
            fps=self.s.fps,
            start=first / self.s.fps,
            frames=n,
            seed=self.seed,
            emotion=self._emotion,
            speech=tuple(self._speech),
            events=tuple(self._events),
        )

    async def _run(self) -> None:
        chunk = max(math.ceil(self.s.chunk_s * self.s.fps), 1)
        max_lag = math.ceil(self.s.max_lag_s * self.s.fps)
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while True:  # render while frames are due, re-reading the clock after each chunk
                    end = self._end
                    # frames with t <= clock (+ `ahead_s`: speech that far ahead is already released)
                    target = math.floor((end if end is not None else self._now + self.s.ahead_s) * self.s.fps) + 1
                    behind = target - self._next
                    if end is None:
                        if behind > max_lag:  # late: skip to the present rather than queue
                            self.stats.dropped += behind - chunk
                            self._next = target - chunk
                        elif behind < chunk:
                            break
                    elif behind <= 0:
                        return
                    n = min(target - self._next, 50)
                    await self._render(self._next, n)
                    self._next += n
        except DuetError as err:  # the session goes on without video; the client is told at once
            self.failure = err
            log.warning("%s: video stopped: %s", self.name, err.message)
            await self.out.event(ErrorEvent.of(err, self._now))
        except Exception as exc:  # a bug: the session goes on without video, and says so
            self.failure = DuetError(f"the replica's video stopped: {public_message(str(exc))}")
            log.exception("%s: video failed", self.name)
            await self.out.event(ErrorEvent.of(self.failure, self._now))

    async def _render(self, first: int, n: int) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        params = await self.models.face_motion(self._request(first, n).to_json())
        async for run in self.models.render_frames(self.face, params, self.s.width, self.s.height, self.s.quality):
            for i, jpeg in enumerate(run.jpegs):
                index = first + run.first + i
                if self._end is None:  # live: the input clock runs at real time
                    lag = loop.time() - (self._wall - (self._now - index / self.s.fps))
                    if lag > self.s.max_lag_s:  # the render itself came late (a stalled renderer): drop, not send
                        self.stats.dropped += 1
                        continue
                    self.stats.lag_ms.append(round(lag * 1000, 1))
                self.out.video(jpeg, round(index / self.s.fps, 4), index)
                self.stats.frames += 1
        self.stats.render_ms.append((loop.time() - t0) * 1000)
