"""gRPC `duet.v1.Session/Converse`: one bidirectional stream per session, pumped between a client and its session.

Per stream: a reader task moves client messages into a bounded `Inbox` (an interrupt overtakes audio already
queued; when the inbox is full the reader stops reading, so gRPC flow control pushes back on the client
instead of audio being dropped), a processor task hands each to the session (built by
`orchestrator.session.factory`, whatever its mode), and the generator below writes the session's `Outbox`
(events first, then audio, then video, each lane bounded) to the client. The wire form is made in
`orchestrator.api.wire`. Errors are typed `Error` messages; a failure in one session never touches another.

A session holds one of `server.max_sessions` slots from its `start` until its own task has ended, and every
way out releases it: END, a fatal error, the client leaving (the RPC's done callback cancels the task), the
idle timeout, shutdown. Its tasks are cancelled with bounded waits, so one that will not stop is logged, not
left holding the slot. Abuse is bounded per session (docs/robustness.md): conversation and perceive audio is
read at real time beyond a small burst, text and camera frames are capped, and unary Triton requests pass a
`FairGate` that grants waiting requests session by session.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from duet.proto import session_pb2 as pb
from duet.proto import session_pb2_grpc as pb_grpc
from orchestrator.api.drain import Drain
from orchestrator.api.inbox import Inbox
from orchestrator.api.limits import AudioClock, FrameRate, TokenBucket
from orchestrator.api.options import check_audio_format, clip_spec, parse_options
from orchestrator.api.outbox import Outbox
from orchestrator.api.wire import audio_message, error_message, event_message, video_message
from orchestrator.config import Settings
from orchestrator.control.conversations import Conversations, Joined
from orchestrator.errors import (
    AudioTooFast,
    BadOption,
    ConversationEnded,
    Draining,
    DuetError,
    IdleTimeout,
    ProtocolError,
    RateLimited,
    ServerBusy,
    TextTooLong,
    TooManyErrors,
    Unauthenticated,
)
from orchestrator.events import (
    Emotion,
    EmotionList,
    ErrorEvent,
    Event,
    FloorEvent,
    RenderDone,
    SessionEnded,
    SessionStarted,
)
from orchestrator.face.clip import AudioPiece, check_spec, render_clip
from orchestrator.face.emotions import EMOTIONS
from orchestrator.inference.llm import PRIORITY_HIGH
from orchestrator.models.fairness import FairGate, GatedModels
from orchestrator.models.openai_llm import OpenAIChat
from orchestrator.models.ports import LanguageModel, RenderedFrames, SessionModels
from orchestrator.session.base import Control, Session
from orchestrator.session.factory import SessionSpec, build_session
from orchestrator.session.interactions import Interaction, Interrupt, interaction_of
from orchestrator.session.persona import Persona, load_persona
from orchestrator.telemetry import Telemetry

log = logging.getLogger("duet.session")

START_TIMEOUT_S = 10.0
TEARDOWN_S = 5.0  # how long a session's tasks get to stop once cancelled (each round; then it is logged)
OUTBOX_EVENTS = 1024  # events not yet written to a slow client (then the session waits)
OUTBOX_AUDIO = 64  # audio segments likewise (the session sends audio only a small lead ahead of real time)
OUTBOX_VIDEO_S = 2.0  # video frames beyond this much of the face wait for nobody: the oldest give way
PEERS_TRACKED = 4096  # client connections whose start rate is remembered
RATE_LIMITED_DELAY_S = 1.0  # a refused `start` is answered after this long
QUIET_S = 5.0  # a connection that started nothing for this long is not held to the server-wide start rate
CONTROLS = {
    pb.Control.INTERRUPT: Control.INTERRUPT,
    pb.Control.REPLICA_SPEAKING_START: Control.REPLICA_SPEAKING_START,
    pb.Control.REPLICA_SPEAKING_STOP: Control.REPLICA_SPEAKING_STOP,
}
# Control kinds that are interactions (`Session.interact`); INTERRUPT stays a control: on a session without
# replies it ends the replica's speech the client marked.
INTERACTIONS = {
    pb.Control.ECHO: "echo",
    pb.Control.RESPOND: "respond",
    pb.Control.OVERWRITE_CONTEXT: "overwrite_context",
    pb.Control.APPEND_CONTEXT: "append_context",
    pb.Control.SENSITIVITY: "sensitivity",
    pb.Control.TOOL_RESULT: "tool_result",
}
INTERACT_WAIT_S = 5.0  # how long `SessionService.interact` waits for room in a session's inbox


@dataclass(frozen=True)
class _End:
    """In the inbox: the client said END or closed its side (or, with `error`, must be stopped)."""

    error: DuetError | None = None


@dataclass(frozen=True)
class _Stamped:
    msg: pb.ClientMessage
    arrival: float


@dataclass(frozen=True)
class _Interact:
    """In the inbox: an interaction from outside the stream (the REST control plane: `SessionService.interact`)."""

    interaction: Interaction


Inboxed = _Stamped | _End | _Interact


def _urgent(item: Inboxed) -> bool:
    """What overtakes the audio already queued: an interrupt, and an end the reader decided on."""
    if isinstance(item, _End):
        return item.error is not None
    if isinstance(item, _Interact):
        return isinstance(item.interaction, Interrupt)
    return item.msg.WhichOneof("kind") == "control" and item.msg.control.kind == pb.Control.INTERRUPT


def control_interaction(control: pb.Control) -> Interaction:
    """The interaction a `control` message of an interaction kind carries (`BadInteraction` if it is malformed).
    Proto3 cannot tell an empty string from an absent one: a level left empty is unchanged."""
    kind = INTERACTIONS[control.kind]
    fields: dict[str, str] = {}
    if kind == "sensitivity":
        for key in ("turn_taking_patience", "replica_interruptibility"):
            if value := getattr(control, key):
                fields[key] = value
    elif kind == "tool_result":
        fields.update(call_id=control.call_id, output=control.output)
    else:
        fields["text"] = control.text
    return interaction_of(kind, fields)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def shutdown_reason(asked: str | None, ended: str) -> str:
    """A conversation's shutdown reason from how its session ended: what `stop` was asked for, else the client
    leaving (END, hanging up, going quiet) is `participant_left`, and anything else is `error`."""
    if asked is not None:
        return asked
    if ended in ("ended", "client_gone", "idle_timeout"):
        return "participant_left"
    return "error"


def _too_fast(burst_s: float) -> str:
    return (
        f"audio is arriving faster than real time (beyond a {burst_s:g} s burst); the server reads it at real "
        "time, so sending faster gains nothing (mode=floor or mode=acoustic may run ahead)"
    )


def _too_many(limit: int) -> str:
    return f"over {limit} inputs of this session had to be refused (see the earlier errors); the session ended"


def _peer(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:  # (a context without a peer: tests, in-process calls)
        return ""


@dataclass
class _Stream:
    """What the reader knows of one client's stream, for the idle watchdog and the metrics."""

    last_audio: float  # wall time the last audio chunk was read or taken into the inbox (or the session began)
    held: bool = False  # the reader waits for room in the session's inbox
    ended: bool = False  # END or the end of the request stream was read
    left: bool = False  # the user left (a hang-up): nobody hears the rest of a reply (`SessionService.leave`)
    paced: bool = False
    bulk: bool = False  # its audio once ran ahead of real time: not a live feed; its requests stay in the bulk lane
    refused: int = 0  # inputs refused with a non-fatal error (bad chunks, frames, oversized text)
    audio: AudioClock = dataclasses.field(default_factory=lambda: AudioClock(0.0))  # the audio read so far

    def in_bulk(self, now: float, burst_s: float) -> bool:
        """Whether this session's model requests go in the bulk lane (`FairGate`). Once its audio ran more than
        `burst_s` ahead of real time (a floor/acoustic stream fed as fast as it can be), or it was caught sending
        faster than real time (a flood, paced), it is not a live feed, and it keeps only what live sessions
        leave for the rest of its life. (Were it to go back to the live lane whenever it fell behind, each such
        stream would cost what a live user costs.)"""
        if not self.bulk and (self.paced or self.audio.ahead(now) > burst_s):
            self.bulk = True
        return self.bulk


@dataclass(frozen=True)
class _Live:
    """A running session as `SessionService.interact` reaches it: its inbox, and whether its client still sends."""

    inbox: Inbox[Inboxed]
    stream: _Stream


class _Outlet:
    """A session's outlet as the service sees it: its outbox, and the metrics read off what passes through."""

    def __init__(
        self,
        outbox: Outbox,
        telemetry: Telemetry,
        stream: _Stream,
        clock: Callable[[], float],
        record: Callable[[Event], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.telemetry = telemetry
        self.stream = stream
        self._clock = clock
        self._record = record  # a conversation's recorder (transcript, webhooks); never waits
        self._speech_end_wall: float | None = None  # wall arrival of the audio where the user's speech last ended
        self._replies_heard: set[int] = set()

    async def event(self, event: Event) -> None:
        self.telemetry.observe_event(event)
        if self._record is not None:
            self._record(event)
        if isinstance(event, FloorEvent) and event.kind == "speech_end" and event.compute_ms is not None:
            self._speech_end_wall = self._clock() - event.compute_ms / 1000
        elif isinstance(event, ErrorEvent) and event.code == "bad_frame":
            self.stream.refused += 1
        await self.outbox.event(event)

    async def audio(self, pcm: bytes, reply_id: int, t: float) -> None:
        if reply_id not in self._replies_heard:
            self._replies_heard.add(reply_id)
            if self._speech_end_wall is not None:
                self.telemetry.first_audio(self._clock() - self._speech_end_wall)
                self._speech_end_wall = None
        await self.outbox.audio(pcm, reply_id, t)

    def video(self, jpeg: bytes, t: float, index: int) -> None:
        self.outbox.video(jpeg, t, index)

    def cut(self, reply_id: int, t: float) -> None:
        self.outbox.cut(reply_id, t)


class SessionService(pb_grpc.SessionServicer):
    def __init__(
        self,
        models: SessionModels,
        settings: Settings,
        llm: LanguageModel | None = None,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.perf_counter,
        conversations: Conversations | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.models = models
        self.drain = drain  # once it drains (SIGTERM), every new session, call and render is refused
        self.settings = settings
        self.llm = llm
        self.conversations = conversations  # the control plane's conversations (join tokens), when it runs
        # Protected mode: off loopback, every session must join a conversation with its token.
        self.protected = not is_loopback(settings.server.host)
        self._stopping: dict[str, str] = {}  # session id → the shutdown reason `stop` was asked for
        self._endpoints: dict[tuple[str, str, str], OpenAIChat] = {}  # personas' OpenAI-compatible LLMs
        self.telemetry = telemetry or Telemetry()
        sv = settings.server
        self.gate = FairGate(sv.triton_inflight, sv.session_inflight, sv.bulk_inflight, sv.bulk_share)
        self.active = 0
        self._clock = clock
        self._sessions: set[asyncio.Task[None]] = set()  # owned: every session's task, until it has ended
        self._starts = TokenBucket(2 * sv.starts_per_s, sv.starts_per_s)  # server-wide
        # per client connection (LRU): its start rate and when it last started a session
        self._peer_starts: OrderedDict[str, tuple[TokenBucket, float]] = OrderedDict()
        self._personas: dict[str, tuple[int, Persona]] = {}  # loaded personas by name, with the file's mtime
        # The sessions running now, by session id (the start's conversation id when it named one): where
        # `interact` delivers. Registered when a session's task starts, removed in its `finally`.
        self._live: dict[str, _Live] = {}
        self._evicting: set[int] = set()  # the streams (`id`) of sessions being ended to make room (`_make_room`)

    def check_capacity(self) -> None:
        """Sessions and renders share one limit: each holds Triton streams and a slice of the machine. A draining
        server takes none. A session being ended to make room (`_make_room`) no longer counts."""
        if self._draining():
            raise Draining(
                "the server is shutting down: it takes no new sessions (its live ones may finish); connect again"
            )
        if self._at_limit():
            raise ServerBusy(f"server is at its limit of {self.settings.server.max_sessions} sessions")

    def _draining(self) -> bool:
        return self.drain is not None and self.drain.draining

    def _at_limit(self) -> bool:
        """Every slot is held, counting those of sessions being ended to make room as free."""
        return self.active - len(self._evicting) >= self.settings.server.max_sessions

    def _make_room(self) -> None:
        """At its limit, the server ends a session in the bulk lane for a new one: such a session is not a live
        feed (it ran ahead of real time, or was caught flooding; `_Stream.in_bulk`), and live calls come first.
        Its client gets a fatal `server_busy`. Its slot counts as free at once; its teardown releases it. A
        draining server takes no new session, so it ends none for one."""
        if self._draining() or not self._at_limit():
            return
        for live in self._live.values():
            stream = live.stream
            if not stream.bulk or stream.ended or id(stream) in self._evicting:
                continue
            busy = ServerBusy(
                "the server needed this session's slot for a live call: this session was not a live "
                "feed (its audio ran ahead of real time); send at real time, or when the server is "
                "less busy"
            )
            if live.inbox.put_nowait(_End(busy), urgent=True):
                self._evicting.add(id(stream))
                self.telemetry.evicted.inc()
                return

    def _check_start_rate(self, peer: str) -> None:
        """A `start` beyond this connection's rate of new sessions is refused, and so is one beyond the server's
        rate, unless its connection has started nothing for `QUIET_S`: a reconnect loop on some connections
        cannot lock out a client that comes to make one call."""
        sv, now = self.settings.server, self._clock()
        known = self._peer_starts.pop(peer, None)
        bucket, last = known or (
            TokenBucket(2 * sv.starts_per_connection_per_s, sv.starts_per_connection_per_s),
            float("-inf"),
        )
        self._peer_starts[peer] = (bucket, last)
        while len(self._peer_starts) > PEERS_TRACKED:
            self._peer_starts.popitem(last=False)
        if not bucket.admit(1, now):
            raise RateLimited(f"this connection starts sessions faster than {sv.starts_per_connection_per_s:g}/s")
        self._peer_starts[peer] = (bucket, now)
        if not self._starts.admit(1, now) and now - last < QUIET_S:
            raise RateLimited(f"the server is starting sessions at its limit of {sv.starts_per_s:g}/s; retry shortly")

    def _persona(self, name: str) -> Persona:
        """`load_persona`, reading the file again only when it changed (a start must be cheap)."""
        folder = self.settings.conversation.personas_dir
        hit = self._personas.get(name)
        if hit is not None:
            try:
                if (Path(folder) / f"{name}.yaml").stat().st_mtime_ns == hit[0]:
                    return hit[1]
            except OSError:
                pass
        persona = load_persona(folder, name)  # validates the name before any path is built from it
        with contextlib.suppress(OSError):
            self._personas[name] = ((Path(folder) / f"{name}.yaml").stat().st_mtime_ns, persona)
        return persona

    def _take_slot(self) -> None:
        self.active += 1
        self.telemetry.sessions_open.set(self.active)

    def _release_slot(self) -> None:
        self.active -= 1
        self.telemetry.sessions_open.set(self.active)

    def _refuse(self, err: DuetError) -> pb.ServerMessage:
        """A refused `start`: always fatal (the stream ends), whatever the error is elsewhere (a `conflict` is not
        fatal to a REST client)."""
        self.telemetry.refusals.labels(reason=err.code).inc()
        return event_message(ErrorEvent.of(err, 0.0, fatal=True))

    async def close(self) -> None:
        """Cancel every session still running (server shutdown: their conversations end with reason `error`), and
        the personas' LLM clients."""
        for sid in self._live:
            self._stopping.setdefault(sid, "error")
        for llm in self._endpoints.values():
            await llm.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    async def Converse(
        self, request_iterator: AsyncIterator[pb.ClientMessage], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ServerMessage]:
        try:
            # Not `asyncio.wait_for` (on 3.11 it can swallow a cancel that lands with the message).
            async with asyncio.timeout(START_TIMEOUT_S):
                first = await anext(request_iterator)
            # The client may stream audio right behind its `start`, before the session is admitted and built
            # (seconds on a loaded server): its audio is measured against real time from here.
            opened = self._clock()
        except (StopAsyncIteration, TimeoutError):
            yield self._refuse(ProtocolError("the stream must begin with a `start` message"))
            return
        joined: Joined | None = None
        try:
            if first.WhichOneof("kind") != "start":
                raise ProtocolError(f"the stream must begin with `start`, got `{first.WhichOneof('kind')}`")
            check_audio_format(first.start.audio_format)
            spec = parse_options(self.settings, dict(first.start.options))
            token, conversation_id = first.start.token, first.start.conversation_id
            if not token:
                self._check_keyless(conversation_id)
            if spec.mode == "conversation" and self.llm is None:
                raise BadOption("this server has no LLM configured; use mode=floor")
            if spec.mode != "acoustic" and not token:
                name = first.start.persona or self.settings.conversation.persona
                spec = dataclasses.replace(spec, persona=self._persona(name))
            self._check_start_rate(_peer(context))
            self._make_room()
            self.check_capacity()
            if token:  # last: joining makes the conversation active, so nothing may refuse the session after it
                joined = await self._join(conversation_id, token)
                spec = self._joined_spec(spec, joined)
        except RateLimited as err:
            await asyncio.sleep(RATE_LIMITED_DELAY_S)  # a client retrying in a loop waits, at no cost to others
            yield self._refuse(err)
            return
        except DuetError as err:
            yield self._refuse(err)
            return

        # From here on this stream holds a slot. The session runs in its own owned task, which releases the slot
        # in its `finally` whatever ends it (END, an error, the client leaving, an idle timeout, shutdown);
        # this generator only writes its outbox, so nothing depends on how gRPC closes the generator.
        self._take_slot()
        video_frames = max(math.ceil(OUTBOX_VIDEO_S * spec.video.fps), 1) if spec.video is not None else 1
        drops = self.telemetry.drops.labels(kind="video_frame_out")
        outbox = Outbox(events=OUTBOX_EVENTS, audio=OUTBOX_AUDIO, video=video_frames, on_video_drop=drops.inc)
        sid = first.start.conversation_id or f"s{id(outbox):x}"
        try:
            task = asyncio.create_task(
                self._session(sid, spec, request_iterator, outbox, joined, opened), name=f"session-{sid}"
            )
        except BaseException:
            self._release_slot()
            raise
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

        def rpc_done(_ctx: Any) -> None:  # the RPC ended (the client left, or it was cancelled): end the session
            # Once only: a second cancel would land in the session's teardown and abort it, leaving its reply
            # tasks (and their LLM/TTS requests in Triton) running for nobody.
            if not task.cancelling():
                task.cancel()

        context.add_done_callback(rpc_done)  # type: ignore[arg-type]  # the stub wants its DoneCallback class
        finished = False
        try:
            while (msg := await outbox.next()) is not None:
                yield msg
            finished = True
        finally:
            if not finished and not task.cancelling():
                task.cancel()

    async def _session(
        self,
        sid: str,
        spec: SessionSpec,
        requests: AsyncIterator[pb.ClientMessage],
        outbox: Outbox,
        joined: Joined | None = None,
        opened: float | None = None,
    ) -> None:
        """One session from its first event to its slot's release; the slot was taken by the caller. A session
        that joined a conversation records it (`joined.recorder`) and ends it with a shutdown reason. `opened`:
        when its `start` arrived (its audio is measured against real time from then; default: now)."""
        reason = "ended"
        tasks: list[asyncio.Task[Any]] = []
        session: Session | None = None
        live: _Live | None = None
        try:
            self.telemetry.sessions.labels(mode=spec.mode).inc()
            log.info("session %s started (%s)", sid, spec.mode)
            began = self._clock()
            origin = began if opened is None else opened
            stream = _Stream(last_audio=began, audio=AudioClock(self.settings.server.audio_burst_s, start=origin))
            session = self._build(sid, spec, outbox, stream, joined.recorder.event if joined else None)
            if joined is not None:
                joined.recorder.start()
            inbox: Inbox[Inboxed] = Inbox(self.settings.server.inbox_chunks)
            live = self._live[sid] = _Live(inbox, stream)  # (a repeated id: the newest session gets interactions)
            await outbox.event(SessionStarted(0.0, sid))
            await session.start()
            reader = asyncio.create_task(
                self._read(requests, inbox, outbox, stream, pace=spec.paced), name=f"session-{sid}-reader"
            )
            worker = asyncio.create_task(self._process(session, inbox, outbox, stream), name=f"session-{sid}-floor")
            tasks = [reader, worker]
            if joined is not None:
                expiry = self._expire(sid, joined.max_duration_s)
                tasks.append(asyncio.create_task(expiry, name=f"session-{sid}-max-duration"))
            idle_s = self.settings.server.idle_timeout_s
            if idle_s > 0:
                watchdog = asyncio.create_task(self._watch_idle(stream, idle_s), name=f"session-{sid}-idle")
                tasks.append(watchdog)
                done, _ = await asyncio.wait({worker, watchdog}, return_when=asyncio.FIRST_COMPLETED)
                if watchdog in done and worker not in done:
                    reason = "idle_timeout"
                    log.info("session %s sent no audio for %.0f s: ending it", sid, idle_s)
                    idle = IdleTimeout(f"no audio for {idle_s:g} s; the session ended")
                    outbox.urgent(ErrorEvent.of(idle, session.now, fatal=True))
            else:
                await worker
            reason = worker.result() if worker.done() and not worker.cancelled() else reason
        except asyncio.CancelledError:
            reason = "client_gone"
            raise
        except DuetError as err:
            reason = err.code
            outbox.urgent(ErrorEvent.of(err, session.now if session is not None else 0.0, fatal=True))
        except Exception:  # a bug must end this session with a typed error, not the server
            reason = "internal"
            log.exception("session %s failed", sid)
            outbox.urgent(ErrorEvent.of(DuetError("internal error; the session ended"), 0.0, fatal=True))
        finally:
            if live is not None and self._live.get(sid) is live:
                del self._live[sid]
            try:
                await self._teardown(sid, tasks, session)
            finally:
                self.telemetry.ended.labels(reason=reason).inc()
                self._release_slot()
                if live is not None:
                    self._evicting.discard(id(live.stream))
                try:
                    if joined is not None:  # before the stream closes: a client that saw it end finds it ended
                        await joined.recorder.ended(shutdown_reason(self._stopping.pop(sid, None), reason))
                finally:
                    outbox.close()
                    log.info("session %s ended (%s)", sid, reason)

    def _build(
        self,
        sid: str,
        spec: SessionSpec,
        outbox: Outbox,
        stream: _Stream,
        record: Callable[[Event], None] | None = None,
    ) -> Session:
        burst = self.settings.server.audio_burst_s

        def bulk() -> bool:
            return stream.in_bulk(self._clock(), burst)

        # a `priority` tenant's session sends its model requests at a higher Triton priority (docs/api.md)
        base = self.models
        if spec.priority and (with_priority := getattr(base, "with_priority", None)) is not None:
            base = with_priority(spec.priority)
        # the gate's key is this session's own object: a client-chosen conversation id may repeat
        models = GatedModels(base, self.gate, object(), bulk=bulk)
        outlet = _Outlet(outbox, self.telemetry, stream, self._clock, record)
        return build_session(spec, models, self.llm, self.settings, outlet, name=f"session-{sid}")

    async def _teardown(self, sid: str, tasks: list[asyncio.Task[Any]], session: Session | None) -> None:
        """Cancel the session's tasks and close it, each wait bounded: a task that will not stop is logged (by
        name) and left behind rather than holding the slot for ever."""
        pending = {t for t in tasks if not t.done()}
        for _ in range(3):
            if not pending:
                break
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=TEARDOWN_S)
        if pending:
            log.error("session %s: tasks %s did not stop", sid, sorted(t.get_name() for t in pending))
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.error("session %s: task %s failed", sid, t.get_name(), exc_info=t.exception())
        if session is not None:
            try:
                async with asyncio.timeout(TEARDOWN_S):
                    await session.close()
            except TimeoutError:
                log.error("session %s did not close within %.0f s", sid, TEARDOWN_S)

    async def _watch_idle(self, stream: _Stream, idle_s: float) -> None:
        """Returns once the client has sent no audio for `idle_s` (never after it ended its stream). Time the reader
        spends held back by a full inbox (the session behind its audio, e.g. a stream in the bulk lane) is the
        server's, not the client's: it does not count."""
        while True:
            if stream.ended:
                await asyncio.Event().wait()  # the session ends by itself now
            quiet = 0.0 if stream.held else self._clock() - stream.last_audio
            if quiet >= idle_s:
                return
            await asyncio.sleep(min(idle_s - quiet, 1.0) + 0.01)

    async def _read(
        self,
        requests: AsyncIterator[pb.ClientMessage],
        inbox: Inbox[Inboxed],
        outbox: Outbox | None = None,
        stream: _Stream | None = None,
        pace: bool = False,
    ) -> None:
        sv = self.settings.server
        stream = stream or _Stream(last_audio=self._clock(), audio=AudioClock(sv.audio_burst_s))
        frames = FrameRate(sv.max_video_fps)
        max_text = sv.max_text_chars
        volume = TokenBucket(sv.input_bytes_per_s, sv.input_bytes_per_s)
        try:
            async for msg in requests:
                kind = msg.WhichOneof("kind")
                now = self._clock()
                if (wait := volume.take(msg.ByteSize(), now)) > 0:  # any flood of bytes is read at a bounded rate
                    self.telemetry.pacing_delay.inc(wait)
                    await asyncio.sleep(wait)
                    now = self._clock()
                if stream.refused > sv.max_client_errors:
                    end = _End(TooManyErrors(_too_many(sv.max_client_errors)))
                    await inbox.put(end, urgent=True)
                    return
                if kind == "audio":
                    stream.last_audio = now
                    wait = stream.audio.take(len(msg.audio.pcm) / 32000, now)
                    if pace and wait > 0:
                        if not stream.paced:
                            stream.paced = True
                            self.telemetry.paced.inc()
                            await self._notify(outbox, stream, AudioTooFast(_too_fast(sv.audio_burst_s)))
                        self.telemetry.pacing_delay.inc(wait)
                        await asyncio.sleep(wait)  # read at real time: gRPC flow control slows the client
                        now = stream.last_audio = self._clock()
                elif kind == "text" and len(msg.text.text) > max_text:
                    self.telemetry.drops.labels(kind="text").inc()
                    stream.refused += 1
                    too_long = TextTooLong(f"text of {len(msg.text.text)} characters refused; the limit is {max_text}")
                    await self._notify(outbox, stream, too_long)
                    continue
                elif kind == "video" and not frames.admit(now):
                    self.telemetry.drops.labels(kind="video_frame").inc()
                    continue
                item = _Stamped(msg, now)
                stream.held = True  # a full inbox holds the reader back: the server is behind, not the client
                try:
                    await inbox.put(item, urgent=_urgent(item))
                finally:
                    stream.held = False
                if kind == "audio":
                    stream.last_audio = self._clock()
                if kind == "control" and msg.control.kind == pb.Control.END:
                    break
        except Exception:  # the request stream broke: still finish what has arrived
            log.info("request stream ended abruptly", exc_info=True)
        stream.ended = True
        # Not in a `finally`: when the session is torn down (cancellation) nobody reads the inbox any more,
        # and waiting to put into a full one would hang the teardown.
        await inbox.put(_End())

    async def _notify(self, outbox: Outbox | None, stream: _Stream, err: DuetError) -> None:
        """A non-fatal refusal the reader decided on, at the audio time read so far."""
        if outbox is not None:
            await outbox.event(ErrorEvent.of(err, stream.audio.audio_s))

    async def _process(
        self,
        session: Session,
        inbox: Inbox[Inboxed],
        outbox: Outbox,
        stream: _Stream | None = None,
    ) -> str:
        """Runs the session on the inbox; returns how it ended (a code for the metrics)."""
        stream = stream or _Stream(last_audio=self._clock())
        limit = self.settings.server.max_client_errors
        while True:
            item = await inbox.get()
            if isinstance(item, _End) and item.error is None and stream.refused > limit:
                item = _End(TooManyErrors(_too_many(limit)))
            if isinstance(item, _End) and item.error is not None:
                await outbox.event(ErrorEvent.of(item.error, session.now, fatal=True))
                return item.error.code
            if isinstance(item, _End):
                await session.finish(left=stream.left)
                outbox.finale([SessionEnded(round(session.now, 4))])  # the last message, after all the rest
                return "ended"
            try:
                await self._dispatch(session, item)
            except DuetError as err:
                if not err.fatal:
                    self.telemetry.drops.labels(kind=err.code).inc()
                    if not isinstance(item, _Interact):  # (what the control plane sent is not the client's fault)
                        stream.refused += 1
                await outbox.event(ErrorEvent.of(err, session.now, fatal=err.fatal))
                if err.fatal:
                    return err.code
            if stream.refused > limit:
                await outbox.event(ErrorEvent.of(TooManyErrors(_too_many(limit)), session.now, fatal=True))
                return TooManyErrors.code

    def _check_keyless(self, conversation_id: str) -> None:
        """A session without a join token: allowed on loopback (the CLI's way), never for an API conversation."""
        if self.protected:
            raise Unauthenticated(
                "this server is not on a loopback address: a session must join a conversation with its token "
                "(POST /v1/conversations, then start.conversation_id and start.token)"
            )
        if conversation_id.startswith("conv_"):
            raise Unauthenticated(f"conversation {conversation_id} must be joined with its join token")

    async def _join(self, conversation_id: str, token: str) -> Joined:
        if self.conversations is None:
            raise Unauthenticated("this server runs no control plane (api.enabled is off): join tokens are unknown")
        return await self.conversations.join(conversation_id, token)

    def _joined_spec(self, spec: SessionSpec, joined: Joined) -> SessionSpec:
        """The session as the conversation's persona sets it: its flow levels on the floor and barge-in
        settings, and its own LLM endpoint when its LLM layer names one."""
        flow = (joined.persona_body.get("layers") or {}).get("conversational_flow") or {}
        levels = (flow.get("turn_taking_patience"), flow.get("replica_interruptibility"))
        llm: LanguageModel | None = None
        if self.conversations is not None and (endpoint := self.conversations.llm_endpoint(joined.persona_body)):
            llm = self._endpoint(endpoint)
        mode = spec.mode if spec.mode in ("conversation", "perceive") else "conversation"
        priority = PRIORITY_HIGH if joined.tenant.tier == "priority" else 0
        layer = None
        if self.conversations is not None and joined.plan is not None:
            # judged by the persona's own LLM (a judge's prompt is the same kind of request as a reply's)
            layer = self.conversations.intel.layer(joined.plan, llm or self.llm, joined.persona.llm_model)
        return dataclasses.replace(
            spec, mode=mode, persona=joined.persona, llm=llm, flow=levels, priority=priority, layer=layer
        )

    def _endpoint(self, endpoint: dict[str, str]) -> LanguageModel:
        """One client per (endpoint, model, key), shared by the sessions of every persona that names it."""
        key = (endpoint["base_url"], endpoint["model"], endpoint["api_key"])
        if key not in self._endpoints:
            llm = dataclasses.replace(
                self.settings.llm,
                backend="openai",
                openai_base_url=endpoint["base_url"],
                openai_model=endpoint["model"],
                openai_api_key_env="PERSONA_LLM_KEY",
            )
            self._endpoints[key] = OpenAIChat(llm, env={"PERSONA_LLM_KEY": endpoint["api_key"]})
        return self._endpoints[key]

    async def _expire(self, sid: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.stop(sid, "max_duration")

    async def stop(self, conversation_id: str, reason: str, error: DuetError | None = None) -> bool:
        """End the live session of `conversation_id` now, with a shutdown reason (`ended_by_api`,
        `max_duration`, `error`); its client gets `error`, by default a fatal `conversation_ended`. False when
        none is live."""
        live = self._live.get(conversation_id)
        if live is None:
            return False
        self._stopping[conversation_id] = reason
        error = error or ConversationEnded(f"the conversation ended ({reason})")
        await live.inbox.put(_End(error), urgent=True)
        return True

    async def end_all(self, reason: str, error: DuetError) -> int:
        """End every live session now (the drain time passed), each with `reason` and `error`; how many."""
        ended = 0
        for sid in list(self._live):
            # bounded: a session whose inbox stays full is cancelled with the rest when the server stops
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(INTERACT_WAIT_S):
                    ended += await self.stop(sid, reason, error)
        return ended

    def held(self) -> list[str]:
        """The conversations (joined with a token) whose sessions run here: their holds are renewed."""
        return [sid for sid in self._live if sid.startswith("conv_")]

    async def interact(self, conversation_id: str, interaction: Interaction) -> bool:
        """Hand `interaction` to the live session `conversation_id` (how the REST control plane steers a call).
        It goes through the session's inbox, in order with what the stream sent (an interrupt overtakes queued
        audio, as on the stream); its acknowledgement or typed error reaches the client on the stream. False when
        no such session is live: never started, ended, its client finished sending, or its inbox stayed full
        for `INTERACT_WAIT_S`."""
        live = self._live.get(conversation_id)
        if live is None or live.stream.ended:
            return False
        item = _Interact(interaction)
        try:
            async with asyncio.timeout(INTERACT_WAIT_S):  # (a session that ends meanwhile never makes room)
                await live.inbox.put(item, urgent=_urgent(item))
        except TimeoutError:
            return False
        return self._live.get(conversation_id) is live

    def leave(self, conversation_id: str) -> None:
        """The user of the live session `conversation_id` hung up: when its input ends, the session stops the
        replica instead of letting a reply play out and renders no face for it (nobody is there to hear it)."""
        live = self._live.get(conversation_id)
        if live is not None:
            live.stream.left = True

    async def _dispatch(self, session: Session, item: _Stamped | _Interact) -> None:
        if isinstance(item, _Interact):
            await session.interact(item.interaction)
            return
        msg = item.msg
        kind = msg.WhichOneof("kind")
        if kind == "audio":
            await session.audio(msg.audio.pcm, item.arrival)
        elif kind == "text":
            session.text(msg.text.text, replica=msg.text.role == pb.TextInput.REPLICA_SAID)
        elif kind == "control" and msg.control.kind in INTERACTIONS:
            await session.interact(control_interaction(msg.control))
        elif kind == "control":
            control = CONTROLS.get(msg.control.kind)  # (END is not one: the reader ends the inbox with it)
            if control is not None:
                await session.control(control)
        elif kind == "video":
            session.video(msg.video.jpeg, msg.video.t, item.arrival)  # only the newest frame is kept
        elif kind == "start":
            raise ProtocolError("`start` may only be sent once")

    async def Render(
        self, request: pb.RenderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ServerMessage]:
        if request.list_emotions:
            emotions = tuple(Emotion(n, e.description) for n, e in EMOTIONS.items())
            yield event_message(EmotionList(emotions))
            return
        try:
            spec = clip_spec(self.settings, request)
            check_spec(spec)
            self.check_capacity()
        except DuetError as err:
            yield self._refuse(err)
            return
        self._take_slot()
        held = [True]

        def release(_ctx: Any = None) -> None:  # once: when the generator ends or the RPC does, whichever is first
            if held and held.pop():
                self._release_slot()

        context.add_done_callback(release)  # type: ignore[arg-type]  # (a generator left at `yield` ends late)
        try:
            async for item in render_clip(self.models, spec):
                if isinstance(item, AudioPiece):
                    yield audio_message(item.pcm.astype("<i2").tobytes(), 0, round(item.t, 4))
                elif isinstance(item, RenderedFrames):
                    for i, jpeg in enumerate(item.jpegs):
                        index = item.first + i
                        yield video_message(jpeg, round(index / spec.fps, 4), index)
                elif isinstance(item, RenderDone):
                    yield event_message(item)
        except DuetError as err:
            yield error_message(err)
        finally:
            release()
