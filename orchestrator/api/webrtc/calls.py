"""Browser calls: WebRTC in and out of the same session core as the gRPC stream (the only module driving aiortc).

`WebRtcCalls.answer` takes a conversation's SDP offer with its join token and starts the call: the session is
`SessionService.Converse` itself, fed by a request stream this module writes (the `start` that joins the
conversation, then the microphone as 20 ms chunks of 16 kHz PCM, camera frames as JPEGs, `end`) and read
message by message (events to the `events` data channel, audio into the `Playout`, frames to the face track).
One session model, two transports: what a `duet talk` client and a browser get differ only in how they travel.

A call ends when the session does (`end` on the data channel, a fatal error, `POST …/end`), when the peer closes
its connection, or when ICE loses the peer for `webrtc.ice_timeout_s` (a tab closed without a goodbye): the
request stream ends, the session finishes, the conversation ends `participant_left`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import av
import cv2
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from duet.proto import session_pb2 as pb
from duet.rtcaudio import Framer, prompt_audio
from orchestrator.api.session_service import SessionService
from orchestrator.api.webrtc.playout import SAMPLE_RATE, Playout, SessionClock
from orchestrator.api.webrtc.tracks import ReplicaAudio, ReplicaVideo
from orchestrator.api.wire import event_dict
from orchestrator.config import Settings
from orchestrator.errors import Conflict, DuetError, Invalid, Unavailable
from orchestrator.events import ErrorEvent, Event
from orchestrator.session.interactions import parse_interaction

log = logging.getLogger("duet.webrtc")

EVENTS_LABEL = "events"
REQUESTS_QUEUED = 250  # microphone chunks (5 s) waiting for the session's reader
EVENTS_HELD = 512  # events kept for a data channel that is not open yet
CLOSE_GRACE_S = 2.0  # after the session ends: time for the last events to leave before the connection closes
END_DRAIN_S = 0.25  # after `end` on the data channel, microphone audio still taken this long
PLAY_OUT_MAX_S = 60.0  # the longest reply audio still played once the session has ended
FINISH_S = 10.0  # after the request stream ended: how long the session gets to finish before it is cancelled
CAMERA_MAX_SIDE = 640  # camera frames are scaled down to this before JPEG (perception needs no more)
MAX_SDP_CHARS = 64 << 10
_END = object()
_CUT_EVENTS = ("replica_paused", "replica_speaking_stop")


def ice_servers(settings: Settings, user: str, now: float | None = None) -> list[dict[str, Any]]:
    """The STUN/TURN servers of `webrtc.ice_servers` as RTCIceServer dicts. TURN servers get short-lived
    credentials from the shared secret (coturn's `use-auth-secret`: username `<expiry>:<user>`, credential
    base64(HMAC-SHA1(secret, username))) when `webrtc.turn_secret_env` names one."""
    w = settings.webrtc
    secret = os.environ.get(w.turn_secret_env, "") if w.turn_secret_env else ""
    out: list[dict[str, Any]] = []
    for url in w.ice_servers:
        server: dict[str, Any] = {"urls": [url]}
        if url.startswith(("turn:", "turns:")) and secret:
            username = f"{int((now if now is not None else time.time()) + w.turn_ttl_s)}:{user}"
            digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
            server.update(username=username, credential=base64.b64encode(digest).decode())
        out.append(server)
    return out


def check_offer(body: Any) -> str:
    """The SDP of an offer body, or `Invalid` naming what is wrong."""
    if not isinstance(body, dict) or body.get("type") != "offer":
        raise Invalid('the body must be an SDP offer: {"sdp": "...", "type": "offer"}', "$.type")
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP_CHARS:
        raise Invalid(f"$.sdp must be a session description (starting v=0, under {MAX_SDP_CHARS} characters)", "$.sdp")
    return sdp


class Refused(DuetError):
    """The session refused the call: the code it gave (`unauthenticated`, `conflict`, `server_busy`, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Context:
    """What `Converse` needs of a gRPC context: who is calling, and a callback when the call is over."""

    def __init__(self, peer: str) -> None:
        self._peer = peer
        self._callbacks: list[Callable[[Any], None]] = []

    def peer(self) -> str:
        return self._peer

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)

    def done(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)


@dataclass
class CallStats:
    """What a call measured, logged at its end (and read by tests and benchmarks)."""

    mic_chunks: int = 0
    mic_filled_s: float = 0.0
    camera_frames: int = 0
    events_sent: int = 0
    events_dropped: int = 0
    video: dict[str, float] = field(default_factory=dict)


class Call:
    """One browser call: its peer connection, the session's request stream and the pumps between them."""

    def __init__(self, calls: WebRtcCalls, pc: RTCPeerConnection, conversation_id: str, peer: str) -> None:
        self.calls = calls
        self.pc = pc
        self.conversation_id = conversation_id
        self.context = _Context(peer)
        s = calls.settings.webrtc
        self.clock = SessionClock()
        self.playout = Playout()
        delay = s.playout_delay_ms / 1000
        self.face = ReplicaVideo(self.clock, delay)
        self.voice = ReplicaAudio(
            self.playout, self.clock, delay, sync=self.face.lateness, max_sync_s=s.max_sync_delay_ms / 1000
        )
        self.requests: asyncio.Queue[Any] = asyncio.Queue(REQUESTS_QUEUED)
        self.channel: RTCDataChannel | None = None
        self._held: list[str] = []
        self.stats = CallStats()
        self.framer = Framer()
        self._mic_samples = 0  # session samples handed to the session so far (its clock)
        self._tasks: list[asyncio.Task[Any]] = []
        self._ended = asyncio.Event()
        self._input_closed = False
        self._lost_since: float | None = None
        self._last_media = time.monotonic()  # when the peer's microphone last delivered a frame
        self.reason = ""

    # ---- the request stream (what `Converse` reads) -------------------------------------------------------

    async def _requests(self, start: pb.ClientMessage) -> AsyncIterator[pb.ClientMessage]:
        yield start
        while True:
            item = await self.requests.get()
            if item is _END:
                return
            yield item

    def close_input(self, *, left: bool = False) -> None:
        """No more input: the session finishes what it has and ends (once). `left`: the user has gone (a
        hang-up, a lost peer), so the session stops the replica instead of playing a reply out to nobody."""
        if left:
            self.calls.service.leave(self.conversation_id)
        if not self._input_closed:
            self._input_closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self.requests.put_nowait(_END)
            if self.requests.full():  # (a full queue: make room for the end; the last 20 ms are not missed)
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.requests.get_nowait()
                self.requests.put_nowait(_END)

    async def _send_request(self, msg: pb.ClientMessage) -> None:
        if not self._input_closed:
            await self.requests.put(msg)

    # ---- media in ---------------------------------------------------------------------------------------

    async def _microphone(self, track: MediaStreamTrack) -> None:
        seq = 0
        try:
            while True:
                frame = await track.recv()
                self._last_media = time.monotonic()
                if not isinstance(frame, av.AudioFrame):
                    continue
                for chunk in self.framer.push(frame):
                    self.clock.heard(self._mic_samples / SAMPLE_RATE, time.monotonic())
                    self._mic_samples += len(chunk) // 2
                    await self._send_request(pb.ClientMessage(audio=pb.AudioChunk(pcm=chunk, seq=seq)))
                    seq += 1
                    self.stats.mic_chunks += 1
        except MediaStreamError:
            pass  # the peer's track ended
        finally:
            self.stats.mic_filled_s = self.framer.filled / SAMPLE_RATE

    async def _camera(self, track: MediaStreamTrack) -> None:
        fps = self.calls.settings.webrtc.camera_fps
        if fps <= 0:
            return
        next_at = 0.0
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if now < next_at:
                    continue
                next_at = now + 1.0 / fps
                jpeg = await asyncio.to_thread(_jpeg, frame)
                t = self._mic_samples / SAMPLE_RATE
                await self._send_request(pb.ClientMessage(video=pb.VideoFrame(jpeg=jpeg, t=t)))
                self.stats.camera_frames += 1
        except MediaStreamError:
            pass

    # ---- the session's output ----------------------------------------------------------------------------

    async def _pump(self, messages: AsyncIterator[pb.ServerMessage]) -> None:
        try:
            async for msg in messages:
                kind = msg.WhichOneof("kind")
                if kind == "audio":
                    self.playout.place(msg.audio.t, msg.audio.pcm, _reply(msg.audio.utterance_id))
                elif kind == "video":
                    self.face.push(msg.video.jpeg, msg.video.t)
                elif kind == "event":
                    self._on_event(msg.event.type, msg.event.json)
                elif kind == "error":
                    e = msg.error
                    self.send_event(ErrorEvent(t=e.t, code=e.code, message=e.message, fatal=e.fatal))
                    if e.fatal:
                        self.reason = self.reason or e.code
        finally:
            self._ended.set()

    def _on_event(self, kind: str, raw: str) -> None:
        if kind in _CUT_EVENTS:  # (the stream names each event's type: only these are parsed)
            event = json.loads(raw)
            if event.get("interrupted", True):
                self.playout.cut(float(event["t"]), event.get("reply_id"))
        self._send_raw(raw)

    def send_event(self, event: Event) -> None:
        self._send_raw(json.dumps(event_dict(event)))

    def _send_raw(self, text: str) -> None:
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            ch.send(text)
            self.stats.events_sent += 1
        elif len(self._held) < EVENTS_HELD:
            self._held.append(text)
        else:
            self.stats.events_dropped += 1

    # ---- the data channel in ------------------------------------------------------------------------------

    def attach_channel(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_LABEL or self.channel is not None:
            return
        self.channel = channel

        @channel.on("open")
        def _open() -> None:
            held, self._held = self._held, []
            for text in held:
                self._send_raw(text)

        @channel.on("message")
        def _message(message: Any) -> None:
            self._spawn(self._client_message(message), "message")

        if channel.readyState == "open":
            _open()

    async def _client_message(self, message: Any) -> None:
        """One interaction (the REST body's form), or `{"type": "end"}`; a bad one is a non-fatal error event."""
        try:
            if not isinstance(message, str) or len(message) > 64 << 10:
                raise Invalid("a data channel message must be one JSON object (text, under 64 KiB)")
            try:
                body = json.loads(message)
            except ValueError as err:
                raise Invalid(f"not JSON: {err}") from err
            if isinstance(body, dict) and body.get("type") == "end":
                # the microphone's last frames may still be on their way (the channel and the media are not
                # ordered with each other): the user's last word is heard before the input closes
                await asyncio.sleep(END_DRAIN_S)
                self.close_input(left=True)
                return
            interaction = parse_interaction(body)
            if not await self.calls.service.interact(self.conversation_id, interaction):
                raise Conflict("the session is not taking interactions (it is ending)")
        except DuetError as err:
            code = "bad_interaction" if err.code == "invalid" else err.code
            self.send_event(ErrorEvent(round(self._mic_samples / SAMPLE_RATE, 4), code, err.message, fatal=False))

    # ---- lifetime --------------------------------------------------------------------------------------------

    def _spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"webrtc-{self.conversation_id}-{what}")
        self._tasks.append(task)
        task.add_done_callback(_log_failure)
        return task

    def on_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            self.reason = self.reason or f"peer_{state}"
            self.close_input(left=True)
        elif state == "disconnected":
            self._lost_since = time.monotonic()
            self._spawn(self._watch_lost(self._lost_since), "ice-watch")
        elif state == "connected":
            self._lost_since = None

    async def _watch_media(self) -> None:
        """A browser's microphone sends all the time (silence too, when muted): a peer whose audio stops for
        `ice_timeout_s` has gone without a goodbye (a closed tab, a dropped network, a killed process), long
        before ICE's own consent checks (30 s) would say so."""
        limit = self.calls.settings.webrtc.ice_timeout_s
        while not self._input_closed:
            quiet = time.monotonic() - self._last_media
            if quiet >= limit:
                self.reason = self.reason or "peer_gone"
                log.info("call %s: no media from the peer for %.0f s; it has left", self.conversation_id, quiet)
                self.close_input(left=True)
                return
            await asyncio.sleep(min(limit - quiet, 1.0) + 0.01)

    async def _watch_lost(self, since: float) -> None:
        """A peer whose connection stays lost `ice_timeout_s` has gone (a closed tab, a dropped network)."""
        await asyncio.sleep(self.calls.settings.webrtc.ice_timeout_s)
        if self._lost_since == since:
            self.reason = self.reason or "ice_timeout"
            self.close_input(left=True)

    async def run(self, messages: AsyncIterator[pb.ServerMessage]) -> None:
        """The call from its first answer to the closed connection."""
        pump = self._spawn(self._pump(messages), "session")
        self._last_media = time.monotonic()  # (the peer has until then to connect and start sending)
        self._spawn(self._watch_media(), "media-watch")
        try:
            await self._ended.wait()
        finally:
            self.close_input()
            if not pump.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FINISH_S):
                        await asyncio.shield(pump)
            self.context.done()  # the session's task is cancelled if it is still running
            await self._play_out()
            await self._drain_channel()
            await self.pc.close()
            _unhook(self.pc)
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            await asyncio.gather(*(t for t in self._tasks if t is not pump), return_exceptions=True)
            self._tasks.clear()  # (a cancelled task's traceback holds its frame, and the frame this call)
            self.stats.video = {
                "late_ms_p50": round(_p50(self.face.late_ms), 1),
                "dropped": float(self.face.dropped),
                "voice_waited_ms_max": round(self.voice.waited_max_s * 1000, 1),
            }
            log.info(
                "call %s ended (%s): %s",
                self.conversation_id,
                self.reason or "session ended",
                json.dumps(dataclasses.asdict(self.stats)),
            )

    async def _play_out(self) -> None:
        """The session has ended: the replica's voice it sent still plays to the end (a goodbye is heard)."""
        if self.pc.connectionState != "connected":
            return
        left = self.playout.pending / SAMPLE_RATE + self.calls.settings.webrtc.playout_delay_ms / 1000
        deadline = time.monotonic() + min(left + 0.5, PLAY_OUT_MAX_S)
        while self.playout.pending > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 (the track reads it)
            await asyncio.sleep(0.05)

    async def _drain_channel(self) -> None:
        ch = self.channel
        if ch is None or ch.readyState != "open":
            return
        deadline = time.monotonic() + CLOSE_GRACE_S
        while ch.bufferedAmount > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 (aiortc has no event for it)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # (bufferedAmount counts what SCTP took, not what the peer acknowledged)


def _unhook(pc: RTCPeerConnection) -> None:
    """Drop the listeners a closed connection's transports keep on it. aiortc clears the connection's own
    listeners at close, not its transports' (each holds a bound method of the connection), so the closed
    connection, its transports and their buffers would wait for the cycle collector instead of going at once."""
    transports = [x for t in pc.getTransceivers() for x in (t.receiver.transport, t.sender.transport)]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for dtls in transports:
        dtls.remove_all_listeners()
        dtls.transport.remove_all_listeners()  # (the ICE transport under it)


def _reply(utterance_id: str) -> int:
    return int(utterance_id) if utterance_id.isdigit() else 0


def _p50(xs: list[float]) -> float:
    return float(np.percentile(xs, 50)) if xs else 0.0


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", task.get_name(), exc_info=exc)


def _jpeg(frame: Any) -> bytes:
    bgr = frame.to_ndarray(format="bgr24")
    h, w = bgr.shape[:2]
    if max(h, w) > CAMERA_MAX_SIDE:
        scale = CAMERA_MAX_SIDE / max(h, w)
        bgr = cv2.resize(bgr, (round(w * scale) // 2 * 2, round(h * scale) // 2 * 2), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return bytes(buf) if ok else b""


class WebRtcCalls:
    """Every browser call of this server (`POST /v1/conversations/{id}/webrtc`)."""

    def __init__(self, service: SessionService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.calls: set[Call] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def answer(self, conversation_id: str, token: str, body: Any, peer: str = "webrtc") -> dict[str, str]:
        """The SDP answer to a conversation's offer; the call then runs on its own. The token is checked by the
        session's join (a wrong one is `unauthenticated`, a second join `conflict`), after the offer itself."""
        if not self.settings.webrtc.enabled:
            raise Unavailable("browser calls are turned off on this server (webrtc.enabled)")
        self.service.check_capacity()  # (again at the join: this spares a full server the offer's work)
        sdp = check_offer(body)
        options = body.get("options") or {}
        ice = [RTCIceServer(**s) for s in ice_servers(self.settings, conversation_id)]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        call = Call(self, pc, conversation_id, f"webrtc:{peer}")
        self._wire(call, pc)  # before the offer is read: its tracks are announced while it is
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except (ValueError, AssertionError) as err:  # aiortc's SDP parser: a malformed description
                raise Invalid(f"the SDP offer cannot be used: {err}", "$.sdp") from err
            kinds = {t.kind for t in pc.getTransceivers()}
            if "audio" not in kinds:
                raise Invalid("the offer must carry an audio m-line (the microphone and the replica's voice)", "$.sdp")
            if not any(ch for ch in _offered_channels(sdp)):
                raise Invalid("the offer must carry a data channel (`events`)", "$.sdp")
            prompt_audio(pc)  # the microphone reaches the session one frame after it arrives, not four
            pc.addTrack(call.voice)
            video = "video" in kinds
            if video:
                pc.addTrack(call.face)
            start = self._start(conversation_id, token, options, video)
            messages = self.service.Converse(call._requests(start), call.context)  # type: ignore[arg-type]
            first = await anext(messages)
            if first.WhichOneof("kind") == "error":  # refused: wrong token, joined already, server full, bad option
                raise Refused(first.error.code, first.error.message)
        except BaseException:
            await pc.close()
            for task in call._tasks:
                task.cancel()
            raise
        # The session runs from here: the call owns it, and whatever happens next ends it through the call.
        call._send_raw(first.event.json)  # session_started, kept until the channel opens
        self.calls.add(call)
        task = asyncio.create_task(call.run(messages), name=f"webrtc-{conversation_id}")
        self._tasks.add(task)

        def gone(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self.calls.discard(call)

        task.add_done_callback(gone)
        try:
            await pc.setLocalDescription(await pc.createAnswer())  # (aiortc gathers every candidate: no trickle)
        except BaseException:
            call.reason = "answer_failed"
            call.close_input()  # the session ends at once, and the call with it
            raise
        return {"sdp": pc.localDescription.sdp, "type": "answer"}

    def _start(self, conversation_id: str, token: str, options: dict[str, str], video: bool) -> pb.ClientMessage:
        opts = {str(k): str(v) for k, v in options.items()}
        if video:
            opts.setdefault("video", "true")
        opts.setdefault("playback_lead_ms", str(self.settings.webrtc.playback_lead_ms))
        if opts.get("video", "").strip().lower() in ("1", "true", "yes", "on"):
            opts.setdefault("video.ahead_ms", str(self.settings.webrtc.face_ahead_ms))
        return pb.ClientMessage(
            start=pb.Start(
                conversation_id=conversation_id,
                token=token,
                options=opts,
                audio_format=pb.AudioFormat(sample_rate=SAMPLE_RATE, channels=1, sample_width=2),
            )
        )

    def _wire(self, call: Call, pc: RTCPeerConnection) -> None:
        @pc.on("datachannel")
        def _channel(channel: RTCDataChannel) -> None:
            call.attach_channel(channel)

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                call._spawn(call._microphone(track), "microphone")
            elif track.kind == "video":
                call._spawn(call._camera(track), "camera")

        @pc.on("connectionstatechange")
        def _state() -> None:
            call.on_state()

    async def close(self) -> None:
        for call in list(self.calls):
            call.close_input()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _offered_channels(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("m=application")]
