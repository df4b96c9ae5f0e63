"""gRPC `duet.v1.Session/Converse`: one bidirectional stream per conversation.

Per stream: a reader task moves client messages into a bounded inbox (when it is full the reader stops
reading, so gRPC flow control pushes back on the client instead of audio being dropped), a processor task
runs the session pipeline, and the generator below writes events out. Errors are typed `Error` messages;
a failure in one session never touches another.

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
import json
import logging
import time
import typing
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from duet.proto import session_pb2 as pb
from duet.proto import session_pb2_grpc as pb_grpc
from orchestrator.api.limits import AudioClock, FrameRate, TokenBucket
from orchestrator.config import FaceSettings, FloorSettings, Settings, coerce_bool, validate, with_floor_options
from orchestrator.errors import (
    AudioTooFast,
    BadAudioFormat,
    BadOption,
    BadTimings,
    DuetError,
    IdleTimeout,
    ProtocolError,
    RateLimited,
    ServerBusy,
    TextTooLong,
    TooManyErrors,
    public_message,
)
from orchestrator.face.clip import AudioPiece, ClipModels, ClipSpec, check_spec, parse_timings, render_clip
from orchestrator.face.driver import FaceDriver
from orchestrator.face.emotions import EMOTIONS
from orchestrator.face.library import FaceLibrary, check_size
from orchestrator.models.fairness import FairGate, GatedModels
from orchestrator.models.ports import (
    ConversationModels,
    FaceModels,
    FloorModels,
    LanguageModel,
    PerceptionModels,
    RenderedFrames,
)
from orchestrator.perception.pipeline import PerceptionSession
from orchestrator.session.conversation import ConversationSession
from orchestrator.session.floor import FloorSession
from orchestrator.session.persona import Persona, load_persona
from orchestrator.telemetry import Telemetry

log = logging.getLogger("duet.session")

START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class _End:
    """Sentinel in the inbox: the client said END or closed its side (or, with `error`, must be stopped)."""

    error: DuetError | None = None


@dataclass(frozen=True)
class _Stamped:
    msg: pb.ClientMessage
    arrival: float


def check_audio_format(fmt: pb.AudioFormat) -> None:
    problems = []
    if fmt.sample_rate != 16000:
        problems.append(f"sample_rate {fmt.sample_rate} Hz (need 16000)")
    if fmt.channels != 1:
        problems.append(f"{fmt.channels} channels (need mono)")
    if fmt.sample_width != 2:
        problems.append(f"sample width {fmt.sample_width} bytes (need 2, PCM16)")
    if fmt.encoding not in ("", "pcm_s16le"):
        problems.append(f"encoding {fmt.encoding!r} (need pcm_s16le)")
    if problems:
        raise BadAudioFormat("unsupported audio format: " + "; ".join(problems))


MODES = ("conversation", "floor", "acoustic", "perceive")


@dataclass(frozen=True)
class SessionOptions:
    """`Start.options`, validated. `mode`: "conversation" (default: ASR, replies, playback, perception), "perceive"
    (floor, ASR and perception: `duet perceive`), "floor" (floor
    events and transcripts, no replies: `duet turns`, clients that run their own dialogue) or "acoustic"
    (floor events from audio alone, no ASR: the cheapest, and decisions independent of send speed)."""

    floor: FloorSettings
    mode: str = "conversation"
    speculation: bool | None = None  # None: the persona's and the server's setting
    echo_suppression: bool | None = None
    video: FaceSettings | None = None  # `video=true`: stream the replica's face (`video.fps`, `video.size=WxH`)
    perception: bool = False  # hear and see the user (conversation: on unless `perception=false`; perceive: on)


def parse_options(settings: Settings, options: dict[str, str]) -> SessionOptions:
    floor_opts = {k: v for k, v in options.items() if k.startswith("floor.")}
    rest = {k: v for k, v in options.items() if not k.startswith("floor.")}
    floor = with_floor_options(settings.floor, floor_opts)
    mode = rest.pop("mode", "conversation")
    if mode not in MODES:
        raise BadOption(f"option mode must be one of {', '.join(MODES)}; not {mode!r}")
    spec = coerce_bool(rest.pop("speculation"), "speculation") if "speculation" in rest else None
    echo = coerce_bool(rest.pop("echo_suppression"), "echo_suppression") if "echo_suppression" in rest else None
    video = parse_video(settings.face, rest) if coerce_bool(rest.pop("video", "false"), "video") else None
    perceive = coerce_bool(rest.pop("perception", "true"), "perception") and mode in ("conversation", "perceive")
    if rest:
        raise BadOption(f"unknown session option(s) {sorted(rest)}")
    if video is not None and mode != "conversation":
        raise BadOption("video needs mode=conversation (the face speaks the replies)")
    return SessionOptions(
        floor=floor, mode=mode, speculation=spec, echo_suppression=echo, video=video, perception=perceive
    )


def parse_video(face: FaceSettings, options: dict[str, str]) -> FaceSettings:
    """`video.fps`, `video.size` (WxH), `video.quality` and `video.face` on top of the server's face settings."""
    updates: dict[str, Any] = {}
    try:
        if "video.fps" in options:
            updates["fps"] = float(options.pop("video.fps"))
        if "video.quality" in options:
            updates["quality"] = int(options.pop("video.quality"))
        if "video.size" in options:
            w, h = options.pop("video.size").lower().split("x")
            updates["width"], updates["height"] = int(w), int(h)
    except ValueError as exc:
        raise BadOption(f"video options: {exc} (video.fps=25, video.size=512x512, video.quality=80)") from None
    if "video.face" in options:
        updates["face"] = options.pop("video.face")
    out = dataclasses.replace(face, **updates)
    validate(Settings(face=out))
    return out


def _too_fast(burst_s: float) -> str:
    return (
        f"audio is arriving faster than real time (beyond a {burst_s:g} s burst); the server reads it at real "
        "time, so sending faster gains nothing (mode=floor or mode=acoustic may run ahead)"
    )


def _too_many(limit: int) -> str:
    return f"over {limit} inputs of this session had to be refused (see the earlier errors); the session ended"


def _force_put(queue: asyncio.Queue[pb.ServerMessage | None], item: pb.ServerMessage | None) -> None:
    """Put without waiting: when a client reads nothing, the oldest unsent message gives way to this one."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


def audio_message(pcm: bytes, reply_id: int, t: float) -> pb.ServerMessage:
    return pb.ServerMessage(audio=pb.AudioOut(pcm=pcm, utterance_id=str(reply_id), t=t, sample_rate=16000))


def error_message(err: DuetError) -> pb.ServerMessage:
    return pb.ServerMessage(error=pb.Error(code=err.code, message=err.message, fatal=err.fatal))


def event_message(event: dict[str, Any]) -> pb.ServerMessage:
    return pb.ServerMessage(event=pb.Event(type=str(event["type"]), json=json.dumps(event)))


def video_messages(run: RenderedFrames, fps: float) -> list[pb.ServerMessage]:
    return [
        pb.ServerMessage(video=pb.VideoOut(jpeg=jpeg, t=round((run.first + i) / fps, 4), index=run.first + i))
        for i, jpeg in enumerate(run.jpegs)
    ]


def clip_spec(settings: Settings, req: pb.RenderRequest) -> ClipSpec:
    """A `RenderRequest` with the server's (and the persona's) defaults filled in; bad fields are typed errors."""
    f = settings.face
    persona = load_persona(settings.conversation.personas_dir, req.persona or settings.conversation.persona)
    width, height = (req.width or f.width), (req.height or f.height)
    check_size(width, height)
    fps = req.fps or f.fps
    if not 1.0 <= fps <= 60.0:
        raise BadOption(f"fps {fps:g} is out of range (1..60)")
    if not 0.0 <= req.intensity <= 1.0:
        raise BadOption(f"intensity {req.intensity:g} is out of range (0..1)")
    if req.quality > 100:
        raise BadOption(f"JPEG quality {req.quality} is out of range (1..100)")
    audio = None
    timings: tuple[Any, ...] = ()
    if req.audio_pcm or req.timings_json:
        if not (req.audio_pcm and req.timings_json):
            raise BadTimings("lip-syncing given audio needs both audio_pcm and timings_json")
        if len(req.audio_pcm) % 2:
            raise BadAudioFormat("audio_pcm must be PCM16 (an even number of bytes)")
        audio = np.frombuffer(req.audio_pcm, dtype="<i2").astype(np.int16)
        timings = parse_timings(req.timings_json, audio.shape[0] / 16000)
    face = req.face or persona.face or f.face
    if Path(f.faces_dir).is_dir():  # a local model repository: name a missing face before any work
        FaceLibrary(f.faces_dir, f.faces_dir).path(face)
    return ClipSpec(
        text=req.text,
        emotion=req.emotion or persona.emotion or f.emotion,
        intensity=req.intensity or f.intensity,
        width=width,
        height=height,
        fps=fps,
        face=face,
        voice=persona.voice,
        quality=req.quality or f.quality,
        seed=req.seed,
        audio=audio,
        timings=timings,
        duration=req.duration_s,
        listening=req.listening,
    )


Session = FloorSession | ConversationSession

TEARDOWN_S = 5.0  # how long a session's tasks get to stop once cancelled (each round; then it is logged)
OUTBOX_MESSAGES = 2048  # events and audio not yet written to a slow client (then the session waits)
PACED_MODES = ("conversation", "perceive")  # sessions on the live clock; floor/acoustic may run ahead
PEERS_TRACKED = 4096  # client connections whose start rate is remembered
RATE_LIMITED_DELAY_S = 1.0  # a refused `start` is answered after this long
QUIET_S = 5.0  # a connection that started nothing for this long is not held to the server-wide start rate


def _peer(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:  # (a context without a peer: tests, in-process calls)
        return ""


@dataclass
class _Stream:
    """What the reader knows of one client's stream, for the idle watchdog and the metrics."""

    last_audio: float  # wall time the last audio chunk was read (or the session began)
    ended: bool = False  # END or the end of the request stream was read
    paced: bool = False
    refused: int = 0  # inputs refused with a non-fatal error (bad chunks, frames, oversized text)
    audio: AudioClock = dataclasses.field(default_factory=lambda: AudioClock(0.0))  # the audio read so far


class SessionService(pb_grpc.SessionServicer):
    def __init__(
        self,
        models: FloorModels,
        settings: Settings,
        llm: LanguageModel | None = None,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.models = models
        self.settings = settings
        self.llm = llm
        self.telemetry = telemetry or Telemetry()
        sv = settings.server
        self.gate = FairGate(sv.triton_inflight, sv.session_inflight, sv.bulk_inflight)
        self.active = 0
        self._clock = clock
        self._sessions: set[asyncio.Task[None]] = set()  # owned: every session's task, until it has ended
        self._starts = TokenBucket(2 * sv.starts_per_s, sv.starts_per_s)  # server-wide
        # per client connection (LRU): its start rate and when it last started a session
        self._peer_starts: OrderedDict[str, tuple[TokenBucket, float]] = OrderedDict()
        self._personas: dict[str, tuple[int, Persona]] = {}  # loaded personas by name, with the file's mtime

    def _check_capacity(self) -> None:
        """Sessions and renders share one limit: each holds Triton streams and a slice of the machine."""
        if self.active >= self.settings.server.max_sessions:
            raise ServerBusy(f"server is at its limit of {self.settings.server.max_sessions} sessions")

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
        self.telemetry.refusals.labels(reason=err.code).inc()
        return error_message(err)

    async def close(self) -> None:
        """Cancel every session still running (server shutdown)."""
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
        except (StopAsyncIteration, TimeoutError):
            yield self._refuse(ProtocolError("the stream must begin with a `start` message"))
            return
        try:
            if first.WhichOneof("kind") != "start":
                raise ProtocolError(f"the stream must begin with `start`, got `{first.WhichOneof('kind')}`")
            check_audio_format(first.start.audio_format)
            opts = parse_options(self.settings, dict(first.start.options))
            persona = None
            if opts.mode == "conversation" and self.llm is None:
                raise BadOption("this server has no LLM configured; use mode=floor")
            if opts.mode != "acoustic":
                persona = self._persona(first.start.persona or self.settings.conversation.persona)
            self._check_start_rate(_peer(context))
            self._check_capacity()
        except RateLimited as err:
            await asyncio.sleep(RATE_LIMITED_DELAY_S)  # a client retrying in a loop waits, at no cost to others
            yield self._refuse(err)
            return
        except DuetError as err:
            yield self._refuse(err)
            return

        # From here on this stream holds a slot. The session runs in its own owned task, which releases the slot
        # in its `finally` whatever ends it (END, an error, the client leaving, an idle timeout, shutdown);
        # this generator only forwards its messages, so nothing depends on how gRPC closes the generator.
        self._take_slot()
        outbox: asyncio.Queue[pb.ServerMessage | None] = asyncio.Queue(maxsize=OUTBOX_MESSAGES)
        sid = first.start.conversation_id or f"s{id(outbox):x}"
        try:
            task = asyncio.create_task(
                self._session(sid, opts, persona, request_iterator, outbox), name=f"session-{sid}"
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
            while True:
                msg = await outbox.get()
                if msg is None:
                    finished = True
                    break
                yield msg
        finally:
            if not finished and not task.cancelling():
                task.cancel()

    async def _session(
        self,
        sid: str,
        opts: SessionOptions,
        persona: Persona | None,
        requests: AsyncIterator[pb.ClientMessage],
        outbox: asyncio.Queue[pb.ServerMessage | None],
    ) -> None:
        """One session from its first event to its slot's release; the slot was taken by the caller."""
        reason = "ended"
        tasks: list[asyncio.Task[Any]] = []
        session: Session | None = None
        try:
            self.telemetry.sessions.labels(mode=opts.mode).inc()
            log.info("session %s started (%s)", sid, opts.mode)
            began = self._clock()
            stream = _Stream(last_audio=began, audio=AudioClock(self.settings.server.audio_burst_s, start=began))
            session = self._build(sid, opts, persona, outbox, stream)
            inbox: asyncio.Queue[_Stamped | _End] = asyncio.Queue(maxsize=self.settings.server.inbox_chunks)
            await outbox.put(event_message({"type": "session_started", "t": 0.0, "conversation_id": sid}))
            if isinstance(session, ConversationSession):
                if session.face is not None:
                    v = session.face.s
                    await outbox.put(
                        event_message(
                            {"type": "video_started", "t": 0.0, "fps": v.fps, "width": v.width, "height": v.height}
                        )
                    )
                    session.face.start()
                if session.perception is not None:
                    session.perception.start()
            reader = asyncio.create_task(
                self._read(requests, inbox, outbox, stream, pace=opts.mode in PACED_MODES), name=f"session-{sid}-reader"
            )
            worker = asyncio.create_task(self._process(session, inbox, outbox, stream), name=f"session-{sid}-floor")
            tasks = [reader, worker]
            idle_s = self.settings.server.idle_timeout_s
            if idle_s > 0:
                watchdog = asyncio.create_task(self._watch_idle(stream, idle_s), name=f"session-{sid}-idle")
                tasks.append(watchdog)
                done, _ = await asyncio.wait({worker, watchdog}, return_when=asyncio.FIRST_COMPLETED)
                if watchdog in done and worker not in done:
                    reason = "idle_timeout"
                    log.info("session %s sent no audio for %.0f s: ending it", sid, idle_s)
                    _force_put(outbox, error_message(IdleTimeout(f"no audio for {idle_s:g} s; the session ended")))
            else:
                await worker
            reason = worker.result() if worker.done() and not worker.cancelled() else reason
        except asyncio.CancelledError:
            reason = "client_gone"
            raise
        except DuetError as err:
            reason = err.code
            _force_put(outbox, error_message(err))
        except Exception:  # a bug must end this session with a typed error, not the server
            reason = "internal"
            log.exception("session %s failed", sid)
            _force_put(outbox, error_message(DuetError("internal error; the session ended")))
        finally:
            try:
                await self._teardown(sid, tasks, session)
            finally:
                self.telemetry.ended.labels(reason=reason).inc()
                self._release_slot()
                _force_put(outbox, None)
                log.info("session %s ended (%s)", sid, reason)

    def _build(
        self,
        sid: str,
        opts: SessionOptions,
        persona: Persona | None,
        outbox: asyncio.Queue[pb.ServerMessage | None],
        stream: _Stream,
    ) -> Session:
        burst = self.settings.server.audio_burst_s

        def bulk() -> bool:
            # Ahead of real time now, or caught sending faster than real time once (a flood): such a session
            # keeps only what live sessions leave, for the rest of its life.
            return stream.paced or stream.audio.ahead(self._clock()) > burst

        # the gate's key is this session's own object: a client-chosen conversation id may repeat
        models = GatedModels(self.models, self.gate, object(), bulk=bulk)
        speech_end_wall: list[float] = []  # wall arrival of the audio where the user's speech last ended
        replies_heard: set[int] = set()

        async def emit(event: dict[str, Any]) -> None:
            self.telemetry.observe_event(event)
            if event.get("type") == "speech_end" and isinstance(event.get("compute_ms"), int | float):
                speech_end_wall[:] = [self._clock() - float(event["compute_ms"]) / 1000]
            if event.get("type") == "error":
                event = {**event, "message": public_message(str(event.get("message", "")))}
                if event.get("code") == "bad_frame":
                    stream.refused += 1
            await outbox.put(event_message(event))

        async def send_audio(pcm: bytes, reply_id: int, t: float) -> None:
            if reply_id not in replies_heard:
                replies_heard.add(reply_id)
                if speech_end_wall:
                    self.telemetry.first_audio(self._clock() - speech_end_wall.pop())
            await outbox.put(audio_message(pcm, reply_id, round(t, 4)))

        async def send_video(jpeg: bytes, t: float, index: int) -> None:
            await outbox.put(pb.ServerMessage(video=pb.VideoOut(jpeg=jpeg, t=t, index=index)))

        if persona is None:
            return FloorSession(models, opts.floor, emit, max_chunk_ms=self.settings.server.max_audio_chunk_ms)
        face = None
        if opts.video is not None:
            face = FaceDriver(
                typing.cast(FaceModels, models),
                opts.video,
                send_video,
                face=persona.face or opts.video.face,
                emotion=persona.emotion or opts.video.emotion,
                name=f"session-{sid}",
            )
        perception = None
        if opts.perception:
            perception = PerceptionSession(
                typing.cast(PerceptionModels, models),
                emit,
                tools=persona.perception_tools,
                name=f"session-{sid}",
            )
        return ConversationSession(
            typing.cast(ConversationModels, models),
            self.llm,
            self.settings,
            persona,
            emit,
            send_audio,
            floor=opts.floor,
            speculation=opts.speculation,
            echo_suppression=opts.echo_suppression,
            replies=opts.mode == "conversation",
            name=f"session-{sid}",
            face=face,
            perception=perception,
        )

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
        if isinstance(session, ConversationSession):
            try:
                async with asyncio.timeout(TEARDOWN_S):
                    await session.close()
            except TimeoutError:
                log.error("session %s did not close within %.0f s", sid, TEARDOWN_S)

    async def _watch_idle(self, stream: _Stream, idle_s: float) -> None:
        """Returns once the client has sent no audio for `idle_s` (never after it ended its stream)."""
        while True:
            if stream.ended:
                await asyncio.Event().wait()  # the session ends by itself now
            quiet = self._clock() - stream.last_audio
            if quiet >= idle_s:
                return
            await asyncio.sleep(min(idle_s - quiet, 1.0) + 0.01)

    async def _read(
        self,
        requests: AsyncIterator[pb.ClientMessage],
        inbox: asyncio.Queue[_Stamped | _End],
        outbox: asyncio.Queue[pb.ServerMessage | None] | None = None,
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
                    await inbox.put(_End(TooManyErrors(_too_many(sv.max_client_errors))))
                    return
                if kind == "audio":
                    stream.last_audio = now
                    wait = stream.audio.take(len(msg.audio.pcm) / 32000, now)
                    if pace and wait > 0:
                        if not stream.paced:
                            stream.paced = True
                            self.telemetry.paced.inc()
                            await self._notify(outbox, AudioTooFast(_too_fast(self.settings.server.audio_burst_s)))
                        self.telemetry.pacing_delay.inc(wait)
                        await asyncio.sleep(wait)  # read at real time: gRPC flow control slows the client
                        now = stream.last_audio = self._clock()
                elif kind == "text" and len(msg.text.text) > max_text:
                    self.telemetry.drops.labels(kind="text").inc()
                    stream.refused += 1
                    await self._notify(
                        outbox, TextTooLong(f"text of {len(msg.text.text)} characters refused; the limit is {max_text}")
                    )
                    continue
                elif kind == "video" and not frames.admit(now):
                    self.telemetry.drops.labels(kind="video_frame").inc()
                    continue
                await inbox.put(_Stamped(msg, now))
                if kind == "control" and msg.control.kind == pb.Control.END:
                    break
        except Exception:  # the request stream broke: still finish what has arrived
            log.info("request stream ended abruptly", exc_info=True)
        stream.ended = True
        # Not in a `finally`: when the session is torn down (cancellation) nobody reads the inbox any more,
        # and waiting to put into a full one would hang the teardown.
        await inbox.put(_End())

    async def _notify(self, outbox: asyncio.Queue[pb.ServerMessage | None] | None, err: DuetError) -> None:
        if outbox is not None:
            await outbox.put(error_message(err))

    async def _process(
        self,
        session: Session,
        inbox: asyncio.Queue[_Stamped | _End],
        outbox: asyncio.Queue[pb.ServerMessage | None],
        stream: _Stream | None = None,
    ) -> str:
        """Runs the session's pipeline on the inbox; returns how it ended (a code for the metrics)."""
        stream = stream or _Stream(last_audio=self._clock())
        limit = self.settings.server.max_client_errors
        while True:
            item = await inbox.get()
            if isinstance(item, _End) and item.error is None and stream.refused > limit:
                item = _End(TooManyErrors(_too_many(limit)))
            if isinstance(item, _End) and item.error is not None:
                await outbox.put(error_message(item.error))
                return item.error.code
            if isinstance(item, _End):
                await session.finish()
                now = session.now if isinstance(session, ConversationSession) else session.timeline.now
                await outbox.put(event_message({"type": "session_ended", "t": round(now, 4)}))
                return "ended"
            try:
                await self._dispatch(session, item)
            except DuetError as err:
                if not err.fatal:
                    self.telemetry.drops.labels(kind=err.code).inc()
                    stream.refused += 1
                await outbox.put(error_message(err))
                if err.fatal:
                    return err.code
            if stream.refused > limit:
                await outbox.put(error_message(TooManyErrors(_too_many(limit))))
                return TooManyErrors.code

    async def _dispatch(self, session: Session, item: _Stamped) -> None:
        msg = item.msg
        kind = msg.WhichOneof("kind")
        if kind == "audio":
            await session.audio(msg.audio.pcm, item.arrival)
        elif kind == "text":
            session.text(msg.text.text, replica=msg.text.role == pb.TextInput.REPLICA_SAID)
        elif kind == "control":
            c = msg.control.kind
            if isinstance(session, ConversationSession):
                if c == pb.Control.INTERRUPT:
                    await session.interrupt()
                # replica-speaking marks are for floor-only sessions: here the server knows when it speaks
            elif c in (pb.Control.REPLICA_SPEAKING_START, pb.Control.REPLICA_SPEAKING_STOP):
                session.replica(c == pb.Control.REPLICA_SPEAKING_START)
            elif c == pb.Control.INTERRUPT:
                session.replica(False)
        elif kind == "video":
            if isinstance(session, ConversationSession):
                session.video(msg.video.jpeg, msg.video.t, item.arrival)  # only the newest frame is kept
        elif kind == "start":
            raise ProtocolError("`start` may only be sent once")

    async def Render(
        self, request: pb.RenderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ServerMessage]:
        if request.list_emotions:
            yield event_message(
                {
                    "type": "emotions",
                    "emotions": [{"name": n, "description": e.description} for n, e in EMOTIONS.items()],
                }
            )
            return
        try:
            spec = clip_spec(self.settings, request)
            check_spec(spec)
            self._check_capacity()
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
            async for item in render_clip(typing.cast(ClipModels, self.models), spec):
                if isinstance(item, AudioPiece):
                    yield audio_message(item.pcm.astype("<i2").tobytes(), 0, round(item.t, 4))
                elif isinstance(item, RenderedFrames):
                    for msg in video_messages(item, spec.fps):
                        yield msg
                else:
                    yield event_message(item)
        except DuetError as err:
            yield error_message(err)
        finally:
            release()
