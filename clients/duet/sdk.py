"""Async SDK over the gRPC session stream.

async with duet.connect("127.0.0.1:50051") as session:
    await session.send_audio(pcm_20ms)
    ...
    await session.end()
    async for event in session.events():
        print(event)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from duet.errors import DuetError, ServerUnavailable
from duet.proto import session_pb2 as pb
from duet.proto import session_pb2_grpc as pb_grpc
from duet.wav import CHUNK_SAMPLES, SAMPLE_RATE, chunks, read_pcm16

_CLOSE = object()


@dataclass(frozen=True)
class ReplyAudio:
    """A chunk of the replica's voice: PCM16 mono at `sample_rate`, first sample at `t` on the session clock."""

    pcm: bytes
    reply_id: int
    t: float
    sample_rate: int = SAMPLE_RATE


@dataclass(frozen=True)
class VideoFrame:
    """A frame of the replica's face: JPEG bytes shown from `t` on the session clock (frame `index` at the
    stream's frame rate; a gap in `index` is a frame the server dropped rather than send late)."""

    jpeg: bytes
    t: float
    index: int


Item = dict[str, Any] | ReplyAudio | VideoFrame


class Session:
    """One conversation. Sends are queued (bounded) and written by gRPC; events arrive via `events()`."""

    def __init__(self, call: Any, outgoing: asyncio.Queue[Any]) -> None:
        self._call = call
        self._out = outgoing
        self._seq = 0
        self._ended = False

    async def _send(self, msg: pb.ClientMessage) -> None:
        if self._ended:
            raise DuetError("protocol", "the session was already ended")
        await self._out.put(msg)

    async def send_audio(self, pcm: bytes) -> None:
        await self._send(pb.ClientMessage(audio=pb.AudioChunk(pcm=pcm, seq=self._seq)))
        self._seq += 1

    async def send_video(self, jpeg: bytes, t: float) -> None:
        """A camera frame (JPEG or PNG bytes) taken at `t` seconds on the session's audio clock."""
        await self._send(pb.ClientMessage(video=pb.VideoFrame(jpeg=jpeg, t=t)))

    async def send_text(self, text: str, *, replica: bool = False, final: bool = False, t: float = 0.0) -> None:
        role = (
            pb.TextInput.REPLICA_SAID if replica else (pb.TextInput.USER_FINAL if final else pb.TextInput.USER_PARTIAL)
        )
        await self._send(pb.ClientMessage(text=pb.TextInput(role=role, text=text, t=t)))

    async def mark_replica(self, speaking: bool, t: float = 0.0) -> None:
        """Tell the floor model the replica's audio is playing (until the reply loop produces real audio)."""
        kind = pb.Control.REPLICA_SPEAKING_START if speaking else pb.Control.REPLICA_SPEAKING_STOP
        await self._send(pb.ClientMessage(control=pb.Control(kind=kind, t=t)))

    async def end(self) -> None:
        """No more input: the server flushes its decisions and closes the stream."""
        if not self._ended:
            await self._out.put(pb.ClientMessage(control=pb.Control(kind=pb.Control.END)))
            await self._out.put(_CLOSE)
            self._ended = True

    async def interrupt(self) -> None:
        """Stop the replica now (a barge-in the client decided, e.g. a button)."""
        await self._send(pb.ClientMessage(control=pb.Control(kind=pb.Control.INTERRUPT)))

    # Interactions (DESIGN.md): each is acknowledged by an `interaction` event; one the session cannot carry out
    # arrives as a non-fatal `error` event (`bad_interaction`, `unknown_tool_call`) and the session goes on.

    async def _control(self, control: pb.Control) -> None:
        await self._send(pb.ClientMessage(control=control))

    async def echo(self, text: str) -> None:
        """The replica says `text` verbatim, now (stopping whatever it was saying)."""
        await self._control(pb.Control(kind=pb.Control.ECHO, text=text))

    async def respond(self, text: str) -> None:
        """`text` is the user's turn, as if they had said it: the replica answers it."""
        await self._control(pb.Control(kind=pb.Control.RESPOND, text=text))

    async def overwrite_context(self, text: str) -> None:
        """The conversation's context from now on (an empty text clears it)."""
        await self._control(pb.Control(kind=pb.Control.OVERWRITE_CONTEXT, text=text))

    async def append_context(self, text: str) -> None:
        """Add `text` to the conversation's context."""
        await self._control(pb.Control(kind=pb.Control.APPEND_CONTEXT, text=text))

    async def sensitivity(
        self, turn_taking_patience: str | None = None, replica_interruptibility: str | None = None
    ) -> None:
        """The conversational flow, live: each "low" | "medium" | "high"; None leaves it as it is."""
        control = pb.Control(
            kind=pb.Control.SENSITIVITY,
            turn_taking_patience=turn_taking_patience or "",
            replica_interruptibility=replica_interruptibility or "",
        )
        await self._control(control)

    async def tool_result(self, call_id: str, output: str) -> None:
        """The output of the tool call `call_id` (from a `tool_call` event)."""
        await self._control(pb.Control(kind=pb.Control.TOOL_RESULT, call_id=call_id, output=output))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events as dicts (replica audio is skipped: see `items()`)."""
        async for item in self.items():
            if isinstance(item, dict):
                yield item

    async def items(self) -> AsyncIterator[Item]:
        """Server events as dicts, the replica's audio as `ReplyAudio` and its face as `VideoFrame`, in
        stream order. A fatal server error raises `DuetError` with its code."""
        async for item in _items(self._call):
            yield item


async def _items(call: AsyncIterator[pb.ServerMessage]) -> AsyncIterator[Item]:
    try:
        async for msg in call:
            kind = msg.WhichOneof("kind")
            if kind == "event":
                yield json.loads(msg.event.json)
            elif kind == "audio":
                yield ReplyAudio(
                    msg.audio.pcm,
                    int(msg.audio.utterance_id or 0),
                    msg.audio.t,
                    msg.audio.sample_rate or SAMPLE_RATE,
                )
            elif kind == "video":
                yield VideoFrame(msg.video.jpeg, msg.video.t, msg.video.index)
            elif kind == "error":
                if msg.error.fatal:
                    raise DuetError(msg.error.code, msg.error.message)
                yield {"type": "error", "t": msg.error.t, "code": msg.error.code, "message": msg.error.message}
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            raise ServerUnavailable(f"stream lost: {exc.details()}") from exc
        raise DuetError(exc.code().name.lower(), str(exc.details())) from exc


async def probe(server: str, wait_s: float = 1.0) -> bool:
    """Whether a Duet server answers at host:port."""
    async with grpc.aio.insecure_channel(server) as ch:
        try:
            await asyncio.wait_for(ch.channel_ready(), wait_s)
            return True
        except (TimeoutError, grpc.aio.AioRpcError):
            return False


@contextlib.asynccontextmanager
async def connect(
    server: str,
    *,
    persona: str = "",
    conversation_id: str = "",
    token: str = "",
    options: Mapping[str, str] | None = None,
    sample_rate: int = SAMPLE_RATE,
    channels: int = 1,
    sample_width: int = 2,
    connect_timeout: float = 5.0,
    channel_args: Sequence[tuple[str, Any]] = (),
) -> AsyncIterator[Session]:
    """One session over a new gRPC channel to `server` (host:port). `channel_args`: gRPC channel options; gRPC
    shares one connection between a process's channels to the same server unless given
    `("grpc.use_local_subchannel_pool", 1)`, as a client standing for several users may want."""
    channel = grpc.aio.insecure_channel(server, options=list(channel_args))
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), connect_timeout)
        except TimeoutError as exc:
            raise ServerUnavailable(f"no Duet server at {server}") from exc
        outgoing: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        start = pb.Start(
            persona=persona,
            conversation_id=conversation_id,
            token=token,
            audio_format=pb.AudioFormat(sample_rate=sample_rate, channels=channels, sample_width=sample_width),
            options=dict(options or {}),
        )

        async def requests() -> AsyncGenerator[pb.ClientMessage, None]:
            yield pb.ClientMessage(start=start)
            while (msg := await outgoing.get()) is not _CLOSE:
                yield msg

        stub = pb_grpc.SessionStub(channel)  # type: ignore[no-untyped-call]
        gen = requests()
        call = stub.Converse(gen)
        session = Session(call, outgoing)
        try:
            yield session
        finally:
            call.cancel()
            # Let the request generator finish rather than leave it suspended in Queue.get.
            while not outgoing.empty():
                outgoing.get_nowait()
            outgoing.put_nowait(_CLOSE)
            await asyncio.sleep(0)
            with contextlib.suppress(RuntimeError):
                await gen.aclose()
    finally:
        await channel.close(None)


MicFilter = Callable[[int, bytes], bytes]  # (first sample index, chunk) -> chunk actually sent


async def stream_file(
    path: str | Path,
    server: str,
    *,
    speed: float = 1.0,
    options: Mapping[str, str] | None = None,
    persona: str = "",
    audio: bool = False,
    mic: MicFilter | None = None,
    conversation_id: str = "",
    token: str = "",
) -> AsyncIterator[Any]:
    """Stream a WAV file as 20 ms chunks (at `speed` x real time; 0 = as fast as possible) and yield events,
    and with `audio=True` the replica's audio (`ReplyAudio`) too. `mic` may alter each chunk before it is
    sent (e.g. to add the replica's voice as speaker bleed). With `conversation_id` and `token` it joins that
    conversation (created through the REST API) instead of naming a persona."""
    pcm = read_pcm16(path)
    async with connect(
        server, options=options, persona=persona, conversation_id=conversation_id, token=token
    ) as session:
        events: asyncio.Queue[Item | BaseException | None] = asyncio.Queue()

        async def collect() -> None:
            try:
                async for e in session.items():
                    if audio or isinstance(e, dict):
                        await events.put(e)
            except BaseException as exc:  # handed to the consumer, not lost in the task
                await events.put(exc)
            finally:
                await events.put(None)

        async def send() -> None:
            t0 = time.perf_counter()
            for i, chunk in enumerate(chunks(pcm)):
                if speed > 0:
                    due = t0 + i * CHUNK_SAMPLES / SAMPLE_RATE / speed
                    if (delay := due - time.perf_counter()) > 0:
                        await asyncio.sleep(delay)
                await session.send_audio(mic(i * CHUNK_SAMPLES, chunk) if mic else chunk)
            await session.end()

        tasks = [
            asyncio.create_task(collect(), name="duet-collect-events"),
            asyncio.create_task(send(), name="duet-send-audio"),
        ]
        try:
            while (item := await events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
            if tasks[1].done() and not tasks[1].cancelled():
                tasks[1].result()  # surfaces a send failure
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def render(
    server: str,
    text: str = "",
    *,
    emotion: str = "",
    intensity: float = 0.0,
    width: int = 0,
    height: int = 0,
    fps: float = 0.0,
    face: str = "",
    persona: str = "",
    audio_pcm: bytes = b"",
    timings_json: str = "",
    quality: int = 0,
    seed: int = 0,
    list_emotions: bool = False,
    duration_s: float = 0.0,
    listening: bool = False,
    connect_timeout: float = 5.0,
) -> AsyncIterator[Item]:
    """One rendered clip: the replica says `text` (or lip-syncs `audio_pcm` with `timings_json`) with an
    emotion; with neither, an idle clip of `duration_s` seconds (the rest face, or with `listening` the face
    listening to a user). Yields `ReplyAudio`, `VideoFrame`s and events (last: `render_done`) as the server
    makes them; zeros and empty strings take the server's defaults."""
    async with grpc.aio.insecure_channel(server) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), connect_timeout)
        except TimeoutError as exc:
            raise ServerUnavailable(f"no Duet server at {server}") from exc
        stub = pb_grpc.SessionStub(channel)  # type: ignore[no-untyped-call]
        request = pb.RenderRequest(
            text=text,
            emotion=emotion,
            intensity=intensity,
            width=width,
            height=height,
            fps=fps,
            face=face,
            persona=persona,
            audio_pcm=audio_pcm,
            timings_json=timings_json,
            quality=quality,
            seed=seed,
            list_emotions=list_emotions,
            duration_s=duration_s,
            listening=listening,
        )
        async for item in _items(stub.Render(request)):
            yield item


async def stream_media(
    server: str,
    pcm: bytes,
    frames: Sequence[tuple[float, bytes]],
    *,
    speed: float = 1.0,
    options: Mapping[str, str] | None = None,
    persona: str = "",
) -> AsyncIterator[dict[str, Any]]:
    """A recorded user with a camera: 20 ms audio chunks and (t, jpeg) frames sent in time order (at `speed`
    x real time; 0 = as fast as possible), yielding the session's events."""
    audio = list(chunks(pcm))
    end_t = max(len(audio) * CHUNK_SAMPLES / SAMPLE_RATE, frames[-1][0] if frames else 0.0)
    async with connect(server, options=options, persona=persona) as session:
        events: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()

        async def collect() -> None:
            try:
                async for e in session.events():
                    await events.put(e)
            except BaseException as exc:
                await events.put(exc)
            finally:
                await events.put(None)

        async def send() -> None:
            t0 = time.perf_counter()
            a, v = 0, 0
            silence = bytes(CHUNK_SAMPLES * 2)
            while a * CHUNK_SAMPLES / SAMPLE_RATE < end_t or v < len(frames):
                t_audio = a * CHUNK_SAMPLES / SAMPLE_RATE
                if v < len(frames) and frames[v][0] <= t_audio:
                    await session.send_video(frames[v][1], frames[v][0])
                    v += 1
                    continue
                if speed > 0 and (delay := t0 + t_audio / speed - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                await session.send_audio(audio[a] if a < len(audio) else silence)  # the clock runs on audio
                a += 1
            await session.end()

        tasks = [
            asyncio.create_task(collect(), name="duet-collect-events"),
            asyncio.create_task(send(), name="duet-send-media"),
        ]
        try:
            while (item := await events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
