"""The replica's voice on the session timeline: the playback actions of the reply machine, executed.

The released reply's audio is sent a small lead ahead of the input clock (`Playback`, pure), so a pause or a
stop takes effect at once: the client is told the position, and the outlet drops whatever of the reply it
has not sent yet beyond it. Every piece sent is also played into the echo canceller (so the replica's own
voice, coming back through the user's microphone, is not taken for the user) and handed to the face (so the
lips move with it).
"""

from __future__ import annotations

import numpy as np

from orchestrator.events import (
    ReplicaCaption,
    ReplicaPaused,
    ReplicaResumed,
    ReplicaSpeakingStart,
    ReplicaSpeakingStop,
    ReplyLatency,
)
from orchestrator.face.driver import FaceDriver
from orchestrator.session.base import Outlet
from orchestrator.session.floor import FloorSession
from orchestrator.session.playback import Playback, ReplyAudio, Segment
from orchestrator.signal.audio import SAMPLE_RATE
from orchestrator.signal.echo import EchoCanceller


def _t(sample: int) -> float:
    return round(sample / SAMPLE_RATE, 4)


def _ms(samples: int) -> float:
    return round(samples * 1000 / SAMPLE_RATE, 1)


class ReplicaVoice:
    def __init__(
        self,
        outlet: Outlet,
        floor: FloorSession,
        *,
        lead: int,
        echo: EchoCanceller | None = None,
        face: FaceDriver | None = None,
    ) -> None:
        self.out = outlet
        self.floor = floor  # told when the replica speaks (its barge-in and backchannel logic depend on it)
        self.lead = lead
        self.echo = echo
        self.face = face
        self.playback: Playback | None = None

    def _current(self, reply_id: int) -> Playback | None:
        pb = self.playback
        return pb if pb is not None and pb.reply.reply_id == reply_id else None

    async def release(self, reply: ReplyAudio, at: int, *, from_speculation: bool, latency: ReplyLatency) -> None:
        """Put the reply on the timeline at sample `at` (its audio then goes out as `advance` reaches it)."""
        self.playback = Playback(reply, at, self.lead)
        self.floor.replica(True)
        await self.out.event(ReplicaSpeakingStart(_t(at), reply.reply_id, from_speculation, latency))

    async def pause(self, reply_id: int, now: int) -> None:
        pb = self._current(reply_id)
        if pb is None:
            return
        at = pb.pause(now)
        self._silence(reply_id, at)
        await self.out.event(ReplicaPaused(_t(at), reply_id))

    async def resume(self, reply_id: int, now: int) -> None:
        pb = self._current(reply_id)
        if pb is None:
            return
        pb.resume(now)
        await self.out.event(ReplicaResumed(_t(now), reply_id))

    async def stop(self, reply_id: int, now: int) -> tuple[str, float] | None:
        """Cut the reply at `now`; returns what was heard and when it stopped (None: not playing)."""
        pb = self._current(reply_id)
        if pb is None:
            return None
        at = pb.pause(now)
        spoken = pb.stop(at)
        self.playback = None
        self.floor.replica(False)
        self._silence(reply_id, at)
        await self.out.event(ReplicaSpeakingStop(_t(at), reply_id, True, spoken, _ms(pb.underrun)))
        return spoken, at / SAMPLE_RATE

    async def advance(self, now: int) -> tuple[int, float] | None:
        """Send what is due at sample `now`. Returns the reply that has played out and when, if one has."""
        pb = self.playback
        if pb is None:
            return None
        for seg in pb.due(now):
            await self._send(pb, seg)
        if not pb.finished(now):
            return None
        self.playback = None
        self.floor.replica(False)
        end = pb.end / SAMPLE_RATE
        await self.out.event(ReplicaSpeakingStop(_t(pb.end), pb.reply.reply_id, False, pb.reply.text, _ms(pb.underrun)))
        return pb.reply.reply_id, end

    async def flush(self) -> tuple[int, float] | None:
        """End of the input: send the rest straight after what was sent. Returns the reply and where it ends, if
        its generation is done (it has then played out)."""
        pb = self.playback
        if pb is None:
            return None
        for seg in pb.flush():
            # No microphone audio follows, so the echo canceller needs none of it (a long reply can reach far
            # past its horizon: a storyteller's 50 s).
            await self._send(pb, seg, echo=False)
        return (pb.reply.reply_id, pb.end / SAMPLE_RATE) if pb.reply.done else None

    @property
    def end(self) -> float:
        """Where the replica's audio on the timeline ends (seconds; 0 if none was released)."""
        return self.playback.end / SAMPLE_RATE if self.playback is not None else 0.0

    def _silence(self, reply_id: int, at: int) -> None:
        """Nothing of the reply is heard after `at`: not by the client, the echo canceller or the face."""
        self.out.cut(reply_id, at / SAMPLE_RATE)
        if self.echo is not None:
            self.echo.play(at, np.zeros(self.lead + SAMPLE_RATE // 10, dtype=np.int16))
        if self.face is not None:
            self.face.cut(at / SAMPLE_RATE)

    async def _send(self, pb: Playback, seg: Segment, *, echo: bool = True) -> None:
        if self.echo is not None and echo:
            self.echo.play(seg.start, seg.pcm)
        first = pb.sent - seg.pcm.shape[0]  # the reply offset of the segment's first sample
        if self.face is not None:
            self.face.audio(pb.reply.chunks, first, first + seg.pcm.shape[0], seg.start / SAMPLE_RATE)
        for offset, text in clauses_starting(pb.reply, first, first + seg.pcm.shape[0]):
            await self.out.event(ReplicaCaption(_t(seg.start + offset - first), pb.reply.reply_id, text))
        await self.out.audio(seg.pcm.astype("<i2").tobytes(), pb.reply.reply_id, seg.start / SAMPLE_RATE)


def clauses_starting(reply: ReplyAudio, first: int, last: int) -> list[tuple[int, str]]:
    """(reply offset, text) of each chunk of `reply` whose audio starts within reply samples [first, last)."""
    out, pos = [], 0
    for chunk in reply.chunks:
        if pos >= last:
            break
        if pos >= first and chunk.text.strip():
            out.append((pos, chunk.text.strip()))
        pos += chunk.pcm.shape[0]
    return out
