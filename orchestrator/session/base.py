"""What every session is, to the transports that carry it: the `Session` and `Outlet` protocols.

A transport (the gRPC stream today, WebRTC next) reads a client's input and calls a `Session` (interactions,
`interact`, also come from the REST control plane through the transport's inbox); the session
answers through its `Outlet`: typed events (`orchestrator.events`), the replica's audio on the session
timeline, and the replica's face. The transport decides how those reach the wire; the session never builds a
message. Sessions of every mode (`conversation`, `perceive`, `floor`, `acoustic`) are built by
`orchestrator.session.factory.build_session`, so no transport branches on a session's class.
"""

from __future__ import annotations

import enum
from typing import Protocol

from orchestrator.events import Event
from orchestrator.session.interactions import Interaction


class Control(enum.Enum):
    """A client's control input (END is not one: it is the transport calling `Session.finish`)."""

    INTERRUPT = "interrupt"  # stop the replica now (a button); overtakes audio already queued
    REPLICA_SPEAKING_START = "replica_speaking_start"  # a client that speaks for the replica marks its speech
    REPLICA_SPEAKING_STOP = "replica_speaking_stop"


class Outlet(Protocol):
    """Where a session's output goes (the transport's bounded outbox)."""

    async def event(self, event: Event) -> None:
        """An event; waits while the client is behind on events (they are never dropped)."""
        ...

    async def audio(self, pcm: bytes, reply_id: int, t: float) -> None:
        """PCM16 of reply `reply_id` placed at `t` seconds on the session timeline; waits while the client is
        behind on audio."""
        ...

    def video(self, jpeg: bytes, t: float, index: int) -> None:
        """A frame of the replica's face; never waits: under backpressure the oldest unsent frame gives way."""
        ...

    def cut(self, reply_id: int, t: float) -> None:
        """The replica was paused or stopped at `t`: reply `reply_id`'s audio from `t` on that is still unsent
        is dropped (it was never heard; a resume sends it again)."""
        ...


class Session(Protocol):
    """One client's session, driven by its transport in the order the client sent things (controls first)."""

    name: str

    @property
    def now(self) -> float:
        """Seconds of input audio received so far: the session clock every `t` is on."""
        ...

    async def start(self) -> None:
        """Begin the session's own tasks (face, perception) and say what it will send (`video_started`)."""
        ...

    async def audio(self, pcm: bytes, arrival: float) -> None:
        """One chunk of the user's PCM16 audio; `arrival` is the wall time it reached the server."""
        ...

    def video(self, jpeg: bytes, t: float, arrival: float) -> None:
        """A camera frame of the user taken at `t` (session clock); only the newest is kept."""
        ...

    def text(self, text: str, *, replica: bool) -> None:
        """Text from the client: the user's words from its own ASR, or what the replica said."""
        ...

    async def control(self, kind: Control) -> None: ...

    async def interact(self, interaction: Interaction) -> None:
        """Carry out an interaction (`orchestrator.session.interactions`) and acknowledge it with an
        `interaction` event. One the session cannot carry out (a session without replies, an unknown tool call)
        raises a non-fatal `DuetError`: the transport reports it and the session goes on."""
        ...

    async def finish(self, *, left: bool = False) -> None:
        """The client's input ended: settle the last turn, send what is left, stop the session's tasks.
        `left`: the user hung up, so a reply in flight is stopped rather than played out."""
        ...

    async def close(self) -> None:
        """Cancel everything the session owns (idempotent; after `finish` or instead of it)."""
        ...
