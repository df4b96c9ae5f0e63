"""`duet call`: a recorded user joins a conversation over WebRTC, as a browser would, and the session's outputs
are written like `duet talk`'s, so the two transports can be compared on the same recording.

This client is the offerer (aiortc): a microphone track that plays the recording in real time and then keeps
sending silence, a camera track from a video file (or a receive-only video transceiver, so the replica's face
still comes back), and the `events` data channel. The offer is POSTed, with every ICE candidate gathered (no
trickle), to `/v1/conversations/{id}/webrtc` with the join token.

The timeline (DESIGN.md's session outputs: sample 0 = the first input sample) is the MICROPHONE's: time 0 is
when the first 20 ms frame was handed to WebRTC, frame k goes out at 0 + k * 20 ms (as `duet talk` streams
chunk k at k * 20 ms). The replica's voice and face are placed on it at the time they ARRIVED, i.e. when the
user could hear and see them. So `reply.wav` reads like `duet talk`'s (whose audio sits at its time on the
session clock), plus what WebRTC adds: the microphone's way to the session (which runs the session clock
behind this one), the server's playout delay and the way back. Each event keeps its server `t` and gains
`recv_t`, its arrival on this timeline. An interrupted stop cuts only what was placed beyond the stop's own
arrival, which is seldom anything: the server stops sending a stopped reply, and what arrived was heard.

The call hangs up like `duet talk` ends its stream: `{"type": "end"}` on the data channel once the recording
has been sent (`tail_s` later, to keep listening), then it waits for `session_ended` and for the server to
close the connection after the reply audio still due has played out.

Outputs: `reply.wav`, `events.jsonl`, `transcript.json` (as `duet talk`), and `reply.mp4` when video frames
arrived (the face as received, with the reply audio, on the same timeline).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import quote

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from duet.errors import ApiError, DuetError, ServerUnavailable
from duet.media import to_jpeg
from duet.rtcaudio import RECEIVER_HOLD_FRAMES, Framer, opus_frame, prompt_audio
from duet.sdk import VideoFrame
from duet.talk import Speaker, write_outputs
from duet.wav import CHUNK_SAMPLES, SAMPLE_RATE

log = logging.getLogger("duet.call")

FRAME_S = CHUNK_SAMPLES / SAMPLE_RATE  # 20 ms: one microphone frame
VIDEO_CLOCK = 90000  # RTP's video clock: camera frames are stamped in it
PLAYOUT_TOLERANCE_S = 0.06  # arrivals this close to the running playout stay contiguous (no clicks)
CONNECT_TIMEOUT_S = 20.0  # the answer, ICE and DTLS together
END_WAIT_S = 30.0  # after `end`, how long the session may take to send `session_ended`
# After `session_ended` the server still plays out the reply audio that is due (at most 60 s) and then closes
# the connection: the call listens until it does, at most this long.
CLOSE_WAIT_S = 65.0
DEFAULT_FPS = 25.0  # the replica's frame rate when no `video_started` said it
# aiortc's audio receiver (made prompt by `rtcaudio.prompt_audio`) hands a frame on once the next one has
# arrived: a frame `recv` returns came in one frame-length earlier. Its voice is placed at that arrival, not at
# the hand-over, so this client's own buffering is not counted as the transport's (and the face, which is not
# held, stays in sync with it).
AUDIO_RECEIVER_HOLD_FRAMES = RECEIVER_HOLD_FRAMES

EventCallback = Callable[[dict[str, Any]], None]


# --- the microphone timeline -------------------------------------------------------------------------------


@dataclass
class MicClock:
    """The call's timeline: seconds since the microphone's first frame was due (`anchor`, monotonic).

    Whatever happens first starts it (normally the microphone's first `recv`, which aiortc makes once DTLS
    is up); every frame is then due at `anchor + k * FRAME_S`, computed from the one anchor, never by adding
    up sleeps, so a late event loop delays a frame without shifting the ones after it."""

    now: Callable[[], float] = time.monotonic
    anchor: float | None = None

    def start(self) -> float:
        if self.anchor is None:
            self.anchor = self.now()
        return self.anchor

    def due(self, k: int, period: float = FRAME_S) -> float:
        """Monotonic time at which frame `k` (of `period` seconds) is due."""
        return self.start() + k * period

    def at(self, monotonic: float | None = None) -> float:
        """`monotonic` (default: now) as seconds on the timeline."""
        anchor = self.start()
        return (self.now() if monotonic is None else monotonic) - anchor


def mic_chunk(pcm: bytes, k: int) -> bytes:
    """The `k`-th 20 ms frame of the recording, zero-padded at its end; silence after it (a live
    microphone keeps sending)."""
    step = 2 * CHUNK_SAMPLES
    chunk = pcm[k * step : (k + 1) * step]
    return chunk + bytes(step - len(chunk))


def frames_in(pcm: bytes) -> int:
    """How many 20 ms frames carry the recording (the last one padded)."""
    return -(-len(pcm) // (2 * CHUNK_SAMPLES))


# --- what the user hears -------------------------------------------------------------------------------------


@dataclass
class Playout:
    """The replica's voice (16 kHz chunks from a `Framer`) placed on the microphone timeline at arrival.

    The framer's sample counter runs on the sender's clock (lost packets are filled with silence), so
    `offset` (timeline sample index - framer sample index) is set by an arriving frame and kept while later
    arrivals agree with it within `tolerance` samples: the audio stays contiguous through network jitter, as a
    loudspeaker behind a jitter buffer plays it. An arrival outside the tolerance (the server went quiet and
    resumed, a burst after a stall) re-anchors the offset there."""

    speaker: Speaker = field(default_factory=Speaker)
    tolerance: int = round(PLAYOUT_TOLERANCE_S * SAMPLE_RATE)
    offset: int | None = None
    placed: int = 0  # framer samples handed to the speaker so far

    def push(self, arrival: float, first: int, chunks: Sequence[bytes]) -> None:
        """`chunks` came out of the framer when a frame arrived at `arrival` (timeline seconds); `first` is
        the framer's index of that frame's first sample."""
        offset = round(arrival * SAMPLE_RATE) - first
        if self.offset is None or abs(offset - self.offset) > self.tolerance:
            self.offset = offset
        for chunk in chunks:
            start = self.placed + self.offset
            self.placed += len(chunk) // 2
            skip = max(-start, 0)  # heard before the microphone started: before sample 0, off the timeline
            if 2 * skip < len(chunk):
                self.speaker.place((start + skip) / SAMPLE_RATE, chunk[2 * skip :])

    def drop_after(self, t: float) -> None:
        """The replica was stopped (heard at `t`): what this client holds beyond it is never played."""
        self.speaker.drop_after(t)


def hear(framer: Framer, playout: Playout, frame: av.AudioFrame, arrival: float) -> None:
    """One decoded frame of the replica's voice, arrived at `arrival` (timeline seconds), onto the speaker."""
    before, filled = framer.samples_out, framer.filled
    chunks = framer.push(frame)
    playout.push(arrival, before + framer.filled - filled, chunks)


def face_frames(arrivals: Sequence[tuple[float, bytes]], fps: float) -> list[VideoFrame]:
    """The replica's received frames (arrival time, JPEG) as `write_mp4` frames: each shown from the frame
    slot of its arrival (a later arrival in the same slot wins; an empty slot holds the frame before)."""
    return [VideoFrame(jpeg, t, max(round(t * fps), 0)) for t, jpeg in arrivals]


def turns_of(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The committed conversation, as `duet talk` writes it in transcript.json."""
    turns: list[dict[str, Any]] = []
    for e in events:
        if e.get("type") == "user_turn":
            turns.append({"role": "user", "t": e["t"], "text": e["text"]})
        elif e.get("type") == "replica_turn":
            turns.append({"role": "replica", "t": e["t"], "text": e["text"], "interrupted": e["interrupted"]})
    return turns


def offer_body(sdp: str, options: Mapping[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"sdp": sdp, "type": "offer"}
    if options:
        body["options"] = dict(options)
    return body


def webrtc_url(api_url: str, conversation_id: str) -> str:
    return f"{api_url.rstrip('/')}/v1/conversations/{quote(conversation_id, safe='')}/webrtc"


# --- the user's devices, played from files -------------------------------------------------------------------

Sleep = Callable[[float], Awaitable[None]]


class Microphone(MediaStreamTrack):
    """The recording as a live microphone: 20 ms frames of 16 kHz mono, frame k due at `clock.due(k)`, then
    silence for as long as the call lasts. `file_sent` is set once the recording's last frame went out."""

    kind = "audio"

    def __init__(self, pcm: bytes, clock: MicClock, sleep: Sleep = asyncio.sleep) -> None:
        super().__init__()
        self.pcm = pcm
        self.clock = clock
        self.sleep = sleep
        self.frames = frames_in(pcm)
        self.sent = 0  # frames handed out
        self.file_sent = asyncio.Event()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        k = self.sent
        if (delay := self.clock.due(k) - self.clock.now()) > 0:
            await self.sleep(delay)
        self.sent = k + 1
        if self.sent >= self.frames:
            self.file_sent.set()
        return opus_frame(mic_chunk(self.pcm, k), k * CHUNK_SAMPLES)  # stereo: Opus keeps the level


def open_video(path: str | Path) -> tuple[av.container.InputContainer, av.VideoStream]:
    p = Path(path)
    if not p.is_file():
        raise DuetError("bad_video_file", f"{p}: no such file")
    try:
        container = av.open(str(p))
    except av.error.FFmpegError as exc:
        raise DuetError("bad_video_file", f"{p}: cannot open video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise DuetError("bad_video_file", f"{p}: no video stream")
    return container, container.streams.video[0]


def decoded(container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[tuple[float, av.VideoFrame]]:
    """(t from the first frame, frame) for each frame of the file, in order."""
    first: float | None = None
    last = 0.0
    for frame in container.decode(stream):
        t = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else last
        first = t if first is None else first
        last = max(t - first, last)
        yield last, frame


class Camera(MediaStreamTrack):
    """A video file as a live camera: each frame due at `clock` time t (its time in the file), on the
    microphone's timeline; after the file, the last frame again at the file's frame rate (a camera keeps
    sending). Decoding runs in a thread so the microphone's pacing never waits on it."""

    kind = "video"

    def __init__(self, path: str | Path, clock: MicClock, sleep: Sleep = asyncio.sleep) -> None:
        super().__init__()
        self.container, stream = open_video(path)
        rate = stream.average_rate or stream.guessed_rate
        self.period = 1.0 / float(rate) if rate else 1.0 / DEFAULT_FPS
        self.frames = decoded(self.container, stream)
        self.clock = clock
        self.sleep = sleep
        self.held: tuple[float, av.VideoFrame] | None = None
        self.ended = False
        self._lock = threading.Lock()  # a decode in its thread and closing the file never overlap
        self._closed = False

    def _decode(self) -> tuple[float, av.VideoFrame] | None:
        with self._lock:
            if self._closed:
                return None
            try:
                t, frame = next(self.frames)
            except (StopIteration, av.error.FFmpegError):  # a damaged tail ends the file like its end
                return None
            return t, frame.reformat(format="yuv420p")

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self.clock.start()
        nxt = None if self.ended else await asyncio.to_thread(self._decode)
        if nxt is None:
            if self.held is None:
                raise MediaStreamError  # a file with no decodable frame: the camera sends nothing
            self.ended = True
            nxt = (self.held[0] + self.period, self.held[1])
        t, frame = self.held = nxt
        if (delay := self.clock.due(0) + t - self.clock.now()) > 0:
            await self.sleep(delay)
        # (the held frame is stamped again: the sender has encoded it before it asks for the next)
        frame.pts = round(t * VIDEO_CLOCK)
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        return frame

    def stop(self) -> None:
        super().stop()
        with self._lock:
            if not self._closed:
                self._closed = True
                self.container.close()


def jpeg_of(frame: av.VideoFrame, quality: int = 90) -> bytes:
    return to_jpeg(np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8), quality)


# --- the call ----------------------------------------------------------------------------------------------


@dataclass
class _Received:
    """What came back: events in arrival order, the replica's face with arrival times, the speaker."""

    clock: MicClock
    on_event: EventCallback | None
    playout: Playout = field(default_factory=Playout)
    framer: Framer = field(default_factory=Framer)
    events: list[dict[str, Any]] = field(default_factory=list)
    faces: list[tuple[float, bytes]] = field(default_factory=list)
    fps: float = 0.0
    fatal: dict[str, Any] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # session_ended, a fatal error, or gone

    def event(self, raw: str | bytes) -> None:
        recv_t = self.clock.at()
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            event = {"type": "error", "code": "bad_event", "message": f"not a JSON object: {raw[:200]!r}"}
        event["recv_t"] = round(recv_t, 4)
        self.events.append(event)
        kind = event.get("type")
        if kind in ("replica_paused", "replica_speaking_stop") and event.get("interrupted", True):
            # Audio is placed as it arrives, so after a stop there is rarely anything held beyond its
            # arrival; what there is (audio the playout ran ahead with), a real client flushes.
            self.playout.drop_after(recv_t)
        elif kind == "video_started" and event.get("fps"):
            self.fps = float(event["fps"])
        elif kind == "error" and event.get("fatal"):
            self.fatal = event
            self.ended.set()
        elif kind == "session_ended":
            self.ended.set()
        if self.on_event is not None:
            self.on_event(event)

    async def hear(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.AudioFrame):
                held = AUDIO_RECEIVER_HOLD_FRAMES * frame.samples / frame.sample_rate
                hear(self.framer, self.playout, frame, self.clock.at() - held)

    async def watch(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            arrival = self.clock.at()
            if isinstance(frame, av.VideoFrame):
                self.faces.append((arrival, await asyncio.to_thread(jpeg_of, frame)))


async def _signal(method: str, url: str, token: str, body: Any, timeout_s: float) -> dict[str, Any]:
    """One request of the call's signalling, authorised by the join token; a refusal raises `ApiError`."""
    import aiohttp

    from duet.rest import _api_error, _body

    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.request(method, url, json=body, headers=headers) as resp,
        ):
            status, raw, retry_after = resp.status, await resp.read(), resp.headers.get("Retry-After")
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise ServerUnavailable(f"{method} {url}: {exc or type(exc).__name__}") from exc
    if not 200 <= status < 300:
        raise _api_error(status, raw, retry_after)
    return _body(status, raw)


def ice_config(config: Mapping[str, Any]) -> list[RTCIceServer]:
    """The ICE servers of `GET …/webrtc` (`{"ice_servers": [{"urls", "username"?, "credential"?}]}`)."""
    servers = config.get("ice_servers")
    if not isinstance(servers, list):
        raise DuetError("bad_response", "the server's WebRTC configuration has no `ice_servers` list")
    return [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in servers
        if isinstance(s, dict) and s.get("urls")
    ]


async def _ice_servers(url: str, token: str, timeout_s: float) -> list[RTCIceServer]:
    """The STUN/TURN servers the server hands its callers (none on loopback and LAN, the default)."""
    try:
        return ice_config(await _signal("GET", url, token, None, timeout_s))
    except ApiError as err:
        if err.status in (404, 405):  # a server that does not hand any out: host candidates only
            return []
        raise


def answer_of(body: Mapping[str, Any]) -> RTCSessionDescription:
    sdp, kind = body.get("sdp"), body.get("type")
    if not isinstance(sdp, str) or kind != "answer":
        raise DuetError("bad_response", f"the server's reply is not an SDP answer {{sdp, type: answer}}: {body!r:.200}")
    return RTCSessionDescription(sdp=sdp, type=kind)


async def _connected(pc: RTCPeerConnection, timeout_s: float) -> None:
    changed = asyncio.Event()
    pc.on("connectionstatechange", changed.set)
    async with asyncio.timeout(timeout_s):
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed"):
                raise DuetError("call_failed", f"the WebRTC connection {pc.connectionState} before it connected")
            changed.clear()
            await changed.wait()


async def _hang_up(channel: RTCDataChannel, mic: Microphone, tail_s: float, received: _Received) -> None:
    """After the recording (and `tail_s` more of listening), say `end` and give the session END_WAIT_S."""
    await mic.file_sent.wait()
    await asyncio.sleep(tail_s)
    if channel.readyState != "open":  # no way to say it, and no way to hear `session_ended`
        received.ended.set()
        return
    channel.send(json.dumps({"type": "end"}))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(received.ended.wait(), END_WAIT_S)
    received.ended.set()  # waited long enough: the call is over either way


async def _cancelled(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def call(
    conversation_id: str,
    token: str,
    audio: str | Path,
    out: str | Path,
    *,
    api_url: str,
    video: str | Path | None = None,
    options: Mapping[str, str] | None = None,
    tail_s: float = 0.0,
    on_event: EventCallback | None = None,
    ice_servers: Sequence[RTCIceServer] | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> dict[str, Any]:
    """Join `conversation_id` over WebRTC with its join `token`, play `audio` (and `video`) as the user's
    microphone (and camera), hang up after the recording (plus `tail_s`), write the session outputs to `out`
    and return the transcript. A refused offer raises `ApiError`; a fatal error event raises `DuetError` with
    its code (the outputs received until then are written first)."""
    from duet.media import audio_pcm

    pcm = audio_pcm(audio)
    clock = MicClock()
    mic = Microphone(pcm, clock)
    received = _Received(clock, on_event)
    url = webrtc_url(api_url, conversation_id)
    tasks: list[asyncio.Task[None]] = []
    gone = asyncio.Event()  # the connection failed or was closed (by the server, after the session)
    async with contextlib.AsyncExitStack() as stack:  # (closed in reverse: the connection, the tasks, the file)
        camera = Camera(video, clock) if video else None
        if camera is not None:
            stack.callback(camera.stop)
        stack.push_async_callback(_cancelled, tasks)
        if ice_servers is None:
            ice_servers = await _ice_servers(url, token, connect_timeout_s)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers)))
        stack.push_async_callback(pc.close)

        def on_track(track: MediaStreamTrack) -> None:
            work = received.hear(track) if track.kind == "audio" else received.watch(track)
            tasks.append(asyncio.create_task(work, name=f"duet-call-{track.kind}-in"))

        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                gone.set()
                received.ended.set()

        pc.on("track", on_track)
        pc.on("connectionstatechange", on_state)
        pc.addTransceiver(mic, direction="sendrecv")
        prompt_audio(pc)
        if camera is not None:
            pc.addTransceiver(camera, direction="sendrecv")
        else:
            pc.addTransceiver("video", direction="recvonly")
        channel = pc.createDataChannel("events", ordered=True)
        channel.on("message", received.event)
        channel.on("close", received.ended.set)
        await pc.setLocalDescription(await pc.createOffer())  # gathers every ICE candidate first (no trickle)
        answer = await _signal("POST", url, token, offer_body(pc.localDescription.sdp, options), connect_timeout_s)
        await pc.setRemoteDescription(answer_of(answer))
        try:
            await _connected(pc, connect_timeout_s)
        except TimeoutError:
            raise DuetError("call_failed", f"no WebRTC connection after {connect_timeout_s:g} s") from None
        tasks.append(asyncio.create_task(_hang_up(channel, mic, tail_s, received), name="duet-call-hang-up"))
        await received.ended.wait()
        if received.fatal is None and any(e.get("type") == "session_ended" for e in received.events):
            with contextlib.suppress(TimeoutError):  # the reply audio still due, until the server closes
                await asyncio.wait_for(gone.wait(), CLOSE_WAIT_S)
    log.info(
        "call %s: %.2f s of the replica's voice received (%.2f s of it lost in transit), %d face frames, %d events; %s",
        conversation_id,
        received.framer.samples_out / SAMPLE_RATE,
        received.framer.filled / SAMPLE_RATE,
        len(received.faces),
        len(received.events),
        "ended by the session" if any(e.get("type") == "session_ended" for e in received.events) else "hung up",
    )
    transcript = _write(Path(out), audio, conversation_id, len(pcm) // 2, received)
    if received.fatal is not None:
        raise DuetError(str(received.fatal.get("code", "error")), str(received.fatal.get("message", "")))
    return transcript


def _write(out: Path, audio: str | Path, conversation_id: str, n_in: int, received: _Received) -> dict[str, Any]:
    speaker = received.playout.speaker
    reply = speaker.window(0, max(n_in, speaker.end))
    transcript = {
        "audio": str(audio),
        "persona": "default",
        "turns": turns_of(received.events),
        "conversation_id": conversation_id,
    }
    write_outputs(out, reply, received.events, transcript)
    if received.faces:
        from duet.video import write_mp4

        fps = received.fps or DEFAULT_FPS
        write_mp4(out / "reply.mp4", face_frames(received.faces, fps), fps, reply)
    return transcript
