"""gRPC `duet.v1.Session/Converse`: one bidirectional stream per conversation.

Per stream: a reader task moves client messages into a bounded inbox (when it is full the reader stops
reading, so gRPC flow control pushes back on the client instead of audio being dropped), a processor task
runs the session pipeline, and the generator below writes events out. Errors are typed `Error` messages;
a failure in one session never touches another. A client that disconnects cancels its tasks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from duet.proto import session_pb2 as pb
from duet.proto import session_pb2_grpc as pb_grpc
from orchestrator.config import FaceSettings, FloorSettings, Settings, coerce_bool, validate, with_floor_options
from orchestrator.conversation import ConversationModels, ConversationSession
from orchestrator.errors import BadAudioFormat, BadOption, BadTimings, DuetError, ProtocolError, ServerBusy
from orchestrator.face.clip import AudioPiece, ClipModels, ClipSpec, check_spec, parse_timings, render_clip
from orchestrator.face.driver import FaceDriver
from orchestrator.face.emotions import EMOTIONS
from orchestrator.face.library import FaceLibrary, check_size
from orchestrator.perception.pipeline import PerceptionModels, PerceptionSession
from orchestrator.persona import load_persona
from orchestrator.session import FloorSession
from orchestrator.triton import FaceModels, FloorModels, LanguageModel, RenderedFrames

log = logging.getLogger("duet.session")

START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class _End:
    """Sentinel in the inbox: the client said END or closed its side."""


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
    )


Session = FloorSession | ConversationSession


class SessionService(pb_grpc.SessionServicer):
    def __init__(self, models: FloorModels, settings: Settings, llm: LanguageModel | None = None) -> None:
        self.models = models
        self.settings = settings
        self.llm = llm
        self.active = 0

    def _check_capacity(self) -> None:
        """Sessions and renders share one limit: each holds Triton streams and a slice of the machine."""
        if self.active >= self.settings.server.max_sessions:
            raise ServerBusy(f"server is at its limit of {self.settings.server.max_sessions} sessions")

    async def Converse(
        self, request_iterator: AsyncIterator[pb.ClientMessage], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ServerMessage]:
        try:
            first = await asyncio.wait_for(anext(request_iterator), START_TIMEOUT_S)
        except (StopAsyncIteration, TimeoutError):
            yield error_message(ProtocolError("the stream must begin with a `start` message"))
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
                persona = load_persona(
                    self.settings.conversation.personas_dir, first.start.persona or self.settings.conversation.persona
                )
            self._check_capacity()
        except DuetError as err:
            yield error_message(err)
            return

        self.active += 1
        outbox: asyncio.Queue[pb.ServerMessage | None] = asyncio.Queue()
        inbox: asyncio.Queue[_Stamped | _End] = asyncio.Queue(maxsize=self.settings.server.inbox_chunks)

        async def emit(event: dict[str, Any]) -> None:
            await outbox.put(event_message(event))

        async def send_audio(pcm: bytes, reply_id: int, t: float) -> None:
            await outbox.put(audio_message(pcm, reply_id, round(t, 4)))

        async def send_video(jpeg: bytes, t: float, index: int) -> None:
            await outbox.put(pb.ServerMessage(video=pb.VideoOut(jpeg=jpeg, t=t, index=index)))

        sid = first.start.conversation_id or f"s{id(outbox):x}"
        session: Session
        face = None
        if opts.video is not None and persona is not None:
            face = FaceDriver(
                typing.cast(FaceModels, self.models),
                opts.video,
                send_video,
                face=persona.face or opts.video.face,
                emotion=persona.emotion or opts.video.emotion,
                name=f"session-{sid}",
            )
        perception = None
        if opts.perception and persona is not None:
            perception = PerceptionSession(
                typing.cast(PerceptionModels, self.models),
                emit,
                tools=persona.perception_tools,
                name=f"session-{sid}",
            )
        if persona is not None:
            session = ConversationSession(
                typing.cast(ConversationModels, self.models),
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
        else:
            session = FloorSession(self.models, opts.floor, emit, max_chunk_ms=self.settings.server.max_audio_chunk_ms)
        reader = asyncio.create_task(self._read(request_iterator, inbox), name=f"session-{sid}-reader")
        worker = asyncio.create_task(self._process(session, inbox, outbox), name=f"session-{sid}-floor")
        log.info("session %s started", sid)
        try:
            await outbox.put(event_message({"type": "session_started", "t": 0.0, "conversation_id": sid}))
            if face is not None:
                v = face.s
                await outbox.put(
                    event_message(
                        {"type": "video_started", "t": 0.0, "fps": v.fps, "width": v.width, "height": v.height}
                    )
                )
                face.start()
            if perception is not None:
                perception.start()
            while True:
                msg = await outbox.get()
                if msg is None:
                    break
                yield msg
        finally:
            for task in (reader, worker):
                task.cancel()
            await asyncio.gather(reader, worker, return_exceptions=True)
            if isinstance(session, ConversationSession):
                await session.close()
            self.active -= 1
            log.info("session %s ended", sid)

    async def _read(self, requests: AsyncIterator[pb.ClientMessage], inbox: asyncio.Queue[_Stamped | _End]) -> None:
        try:
            async for msg in requests:
                await inbox.put(_Stamped(msg, time.perf_counter()))
                if msg.WhichOneof("kind") == "control" and msg.control.kind == pb.Control.END:
                    break
        except Exception:  # the request stream broke: still finish what has arrived
            log.info("request stream ended abruptly", exc_info=True)
        # Not in a `finally`: when the session is torn down (cancellation) nobody reads the inbox any more,
        # and waiting to put into a full one would hang the teardown.
        await inbox.put(_End())

    async def _process(
        self,
        session: Session,
        inbox: asyncio.Queue[_Stamped | _End],
        outbox: asyncio.Queue[pb.ServerMessage | None],
    ) -> None:
        try:
            while True:
                item = await inbox.get()
                if isinstance(item, _End):
                    await session.finish()
                    now = session.now if isinstance(session, ConversationSession) else session.timeline.now
                    await outbox.put(event_message({"type": "session_ended", "t": round(now, 4)}))
                    return
                try:
                    await self._dispatch(session, item)
                except DuetError as err:
                    await outbox.put(error_message(err))
                    if err.fatal:
                        return
        except Exception as exc:  # a bug must end this session with a typed error, not the server
            log.exception("session failed")
            await outbox.put(error_message(DuetError(f"internal error: {type(exc).__name__}: {exc}")))
        finally:
            await outbox.put(None)

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
            yield error_message(err)
            return
        self.active += 1
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
            self.active -= 1
