"""Where a released reply's audio sits on the session timeline, and what of it has been heard.

Pure and synchronous; positions are sample indices on the session clock (the user's input audio, 16 kHz).
The session sends replica audio only a small `lead` ahead of the input clock, so a pause or a stop takes
effect at once: the client is told the position, drops what it holds beyond it, and the server rewinds
its cursor there (a resume re-sends from that point). That also tells us exactly what was heard, which is
what enters the conversation history when the user interrupts.

If synthesis falls behind real time the timeline has a gap: the next audio is placed at the current
input position rather than in the past.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from orchestrator.models.ports import I16, SpeechChunk


@dataclass
class ReplyAudio:
    """A reply's audio as it is generated (chunks appended by the reply task)."""

    reply_id: int
    chunks: list[SpeechChunk] = field(default_factory=list)
    done: bool = False  # generation finished: no more chunks will come
    text: str = ""  # the full reply text, set when done

    @property
    def samples(self) -> int:
        return sum(c.pcm.shape[0] for c in self.chunks)

    def audio(self, start: int, end: int) -> I16:
        """Reply samples [start, end) (offsets into the reply's own audio)."""
        parts, pos = [], 0
        for c in self.chunks:
            n = c.pcm.shape[0]
            lo, hi = max(start - pos, 0), min(end - pos, n)
            if lo < hi:
                parts.append(c.pcm[lo:hi])
            pos += n
            if pos >= end:
                break
        return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, dtype=np.int16)

    def text_heard(self, offset: int) -> str:
        """The reply text up to audio offset `offset`: whole chunks, then the share of the next chunk's
        words proportional to how much of its audio was heard (chunks are clauses, so this is close)."""
        said, pos = [], 0
        for c in self.chunks:
            n = c.pcm.shape[0]
            if offset >= pos + n:
                said.append(c.text)
            elif offset > pos:
                words = c.text.split()
                k = int(len(words) * (offset - pos) / max(n, 1))
                if k:
                    said.append(" ".join(words[:k]))
                break
            pos += n
        return " ".join(s.strip() for s in said if s.strip())


@dataclass(frozen=True)
class Segment:
    start: int  # timeline sample of its first sample
    pcm: I16


class Playback:
    """The one reply currently on the timeline (released), with a send cursor."""

    def __init__(self, reply: ReplyAudio, at: int, lead: int) -> None:
        self.reply = reply
        self.lead = lead
        self.paused = False
        self._anchor = at  # timeline position of reply offset `_anchor_offset`
        self._anchor_offset = 0
        self.sent = 0  # reply offset sent to the client so far
        self._starved = False  # the last send stopped short because synthesis had not caught up
        self.underrun = 0  # samples of silence inside the reply while synthesis caught up (a stall the user hears)

    def position(self, offset: int) -> int:
        return self._anchor + (offset - self._anchor_offset)

    def due(self, now: int) -> list[Segment]:
        """Audio to send now: everything available up to `now + lead` on the timeline."""
        if self.paused:
            return []
        avail = self.reply.samples
        if self._starved and self.sent < avail and self.position(self.sent) < now:
            # Underrun (synthesis was slower than real time): continue from the present, not the past.
            self.underrun += now - self.position(self.sent)
            self._anchor, self._anchor_offset = now, self.sent
        target = self._anchor_offset + (now + self.lead - self._anchor)
        want = min(avail, target)
        self._starved = avail < target and not self.reply.done
        if want <= self.sent:
            return []
        seg = Segment(self.position(self.sent), self.reply.audio(self.sent, want))
        self.sent = want
        return [seg]

    def heard_offset(self, at: int) -> int:
        return int(min(max(self._anchor_offset + (at - self._anchor), 0), self.sent))

    def pause(self, at: int) -> int:
        """Hold at timeline position `at`; returns it (the client drops this reply's audio after it)."""
        if not self.paused:
            self.sent = self.heard_offset(at)
            self._anchor, self._anchor_offset = at, self.sent
            self.paused = True
            self._starved = False
        return self._anchor

    def resume(self, at: int) -> None:
        if self.paused:
            self.paused = False
            self._anchor, self._anchor_offset = at, self.sent
            self._starved = False

    def stop(self, at: int) -> str:
        """Cut at `at`; returns the text that was heard."""
        if not self.paused:
            self.pause(at)
        return self.reply.text_heard(self.sent)

    def finished(self, now: int) -> bool:
        return self.reply.done and not self.paused and self.sent >= self.reply.samples and self.end <= now

    @property
    def end(self) -> int:
        return self.position(self.sent)

    def flush(self) -> list[Segment]:
        """Everything left, placed straight after what was sent (end of stream: no more input clock)."""
        self.paused = False
        total = self.reply.samples
        if total <= self.sent:
            return []
        seg = Segment(self.position(self.sent), self.reply.audio(self.sent, total))
        self.sent = total
        return [seg]
