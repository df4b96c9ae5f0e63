"""WebRTC media, pure: the microphone's framing (48 kHz Opus frames → 16 kHz 20 ms chunks), the session clock on
the wall clock, the replica's voice waiting for its time, the checks on an offer; and a finished call (over a
loopback connection to a local aiortc peer) freed at once."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import hmac
import weakref
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import av
import cv2
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from duet.proto import session_pb2 as pb
from duet.rtcaudio import PTS_MODULO, RECEIVER_HOLD_FRAMES, Framer, pcm_frame, prompt_audio
from orchestrator.api.webrtc.calls import WebRtcCalls, check_offer, ice_servers
from orchestrator.api.webrtc.playout import SLOT, Playout, SessionClock
from orchestrator.api.webrtc.tracks import ReplicaAudio
from orchestrator.config import Settings, WebRtcSettings, validate
from orchestrator.errors import BadOption, Invalid

OPUS_FRAME = 960  # 20 ms at 48 kHz


def opus_like(i: int, origin: int = 0, samples: int = OPUS_FRAME) -> av.AudioFrame:
    """A decoded Opus frame as aiortc hands it over: 48 kHz stereo s16, pts = the RTP timestamp."""
    t = (np.arange(samples) + i * samples) / 48000
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = 48000
    frame.pts = (origin + i * samples) % PTS_MODULO
    frame.time_base = Fraction(1, 48000)
    return frame


def test_thirty_minutes_of_48k_frames_are_exactly_a_third_as_many_16k_samples() -> None:
    framer = Framer()
    frames = 30 * 60 * 50  # 30 minutes of 20 ms frames
    chunks = 0
    for i in range(frames):
        chunks += len(framer.push(opus_like(i, origin=PTS_MODULO - 4800)))  # the RTP clock wraps on the way
    # the resampler holds back a few samples (its filter), never more, never a drift
    assert 0 <= frames * 320 - framer.samples_out < 64
    assert chunks == framer.samples_out // 320
    assert framer.filled == 0


def test_lost_packets_are_filled_with_silence_so_the_clock_stays_on_the_senders() -> None:
    framer = Framer()
    out = b""
    for i in range(200):
        if 50 <= i < 150:  # two seconds lost on the network
            continue
        out += b"".join(framer.push(opus_like(i)))
    assert framer.filled == 100 * 320
    x = np.frombuffer(out, dtype="<i2")
    assert abs(framer.samples_out - 200 * 320) < 64
    gap = x[50 * 320 + 100 : 150 * 320 - 100]
    assert np.abs(gap).max() == 0
    assert np.abs(x[: 50 * 320 - 100]).max() > 1000


def test_a_reordered_frame_and_a_reset_sender_add_no_silence() -> None:
    framer = Framer()
    framer.push(opus_like(10))
    framer.push(opus_like(9))  # late and out of order: nothing was lost
    framer.push(opus_like(10_000_000))  # a jump of hours: a new timeline, not a loss to fill
    assert framer.filled == 0


def test_unstamped_frames_follow_on_from_the_last() -> None:
    framer = Framer()
    framer.push(opus_like(0))
    f = opus_like(1)
    f.pts = None
    framer.push(f)
    framer.push(opus_like(2))
    assert framer.filled == 0


def test_16k_mono_frames_pass_through_unchanged() -> None:
    framer = Framer()
    pcm = (np.arange(320 * 50) % 200 - 100).astype("<i2").tobytes()
    out = b"".join(b"".join(framer.push(pcm_frame(pcm[i : i + 640], i // 2))) for i in range(0, len(pcm), 640))
    assert framer.filled == 0 and len(out) == len(pcm)
    assert out == pcm


def test_the_session_clock_follows_the_earliest_arrivals_and_drifting_senders() -> None:
    clock = SessionClock(window_s=10.0)
    rng = np.random.default_rng(0)
    # a sender whose clock runs 100 ppm fast, chunks arriving with up to 80 ms of jitter, for 30 minutes
    for k in range(0, 90_000):
        t = k * 0.02
        wall = 5.0 + t / 1.0001 + float(rng.uniform(0, 0.08))
        clock.heard(t, wall)
    t_end = 89_999 * 0.02
    true_offset = 5.0 + t_end / 1.0001 - t_end
    assert abs(clock.offset - true_offset) < 0.01  # the drift (180 ms by now) is followed, the jitter ignored
    assert clock.session(clock.wall(12.0)) == pytest.approx(12.0)


def test_playout_places_reads_and_cuts_on_the_session_timeline() -> None:
    p = Playout()
    p.place(0.05, np.full(800, 7, dtype="<i2").tobytes())  # 50..100 ms
    first = p.read(SLOT)  # 0..20 ms: silence
    assert not first.any()
    p.skip_to(640)  # 40 ms
    x = p.read(SLOT)  # 40..60 ms: silence then the piece from 50 ms
    assert not x[:160].any() and (x[160:] == 7).all()
    p.cut(0.07)
    y = p.read(SLOT)  # 60..80 ms: 10 ms of the piece, then nothing (cut at 70 ms)
    assert (y[:160] == 7).all() and not y[160:].any()
    assert p.pending == 0


def test_late_audio_plays_from_the_cursor_whole_and_its_reply_keeps_the_shift() -> None:
    p = Playout()
    p.read(SLOT * 5)  # 100 ms played
    p.place(0.08, np.full(640, 3, dtype="<i2").tobytes(), reply_id=2)  # due at 80 ms: 20 ms late
    p.place(0.12, np.full(320, 4, dtype="<i2").tobytes(), reply_id=2)  # its next piece follows on, not over it
    p.place(0.14, np.full(320, 5, dtype="<i2").tobytes(), reply_id=3)  # another reply, on time
    assert p.pending == 640 + 320 + 320 - 0  # nothing dropped
    assert (p.read(SLOT * 2) == 3).all()  # 100..140 ms: the late piece, whole
    x = p.read(SLOT)  # 140..160 ms: reply 2's next piece (shifted by 20 ms) and reply 3's on time, mixed order
    assert set(np.unique(x)) <= {4, 5}
    p.cut(0.14, reply_id=2)  # a stop at reply 2's 140 ms is at 160 ms on the shifted timeline
    assert p.pending == 0


async def test_the_voice_waits_for_its_time_and_catches_up_when_behind() -> None:
    clock = SessionClock()
    now = [100.0]
    p = Playout()
    voice = ReplicaAudio(p, clock, delay_s=0.1, now=lambda: now[0])
    frame = await voice.recv()  # before the microphone is heard: silence on the beat
    assert frame.samples == SLOT and not frame.to_ndarray().any()
    clock.heard(0.0, 100.0)  # session time 0 is wall 100.0
    p.place(0.0, np.full(SLOT, 9, dtype="<i2").tobytes())
    # the next slot leaves at 100.02: session time 100.02 − 0.1 − 100 < 0: not due yet, silence
    now[0] = 100.02
    assert not (await voice.recv()).to_ndarray().any()
    assert p.cursor == 0
    now[0] = 100.1
    voice._next = 100.1
    assert ((await voice.recv()).to_ndarray() == 9).all()  # due now: the reply's first slot
    now[0] = 101.0  # the sender stalled for a second: it skips to what is due instead of playing late audio
    voice._next = 101.0
    await voice.recv()
    assert p.cursor == round((101.0 - 0.1 - 100.0) * 16000) + SLOT
    assert voice.skipped > 0


def test_an_offer_body_is_checked_before_any_sdp_is_parsed() -> None:
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    assert check_offer({"sdp": sdp, "type": "offer"}) == sdp
    for body, field in (
        ({"sdp": sdp, "type": "answer"}, "$.type"),
        ({"sdp": "hello", "type": "offer"}, "$.sdp"),
        ({"sdp": "v=0" + "x" * 70_000, "type": "offer"}, "$.sdp"),
        ([], "$.type"),
    ):
        with pytest.raises(Invalid) as err:
            check_offer(body)
        assert err.value.field == field


def test_turn_servers_get_short_lived_credentials_from_the_shared_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURN_SECRET", "s3cret")
    settings = Settings(
        webrtc=WebRtcSettings(
            ice_servers=("stun:stun.example.org:3478", "turn:turn.example.org:3478"),
            turn_secret_env="TURN_SECRET",
            turn_ttl_s=600,
        )
    )
    stun, turn = ice_servers(settings, "conv_1", now=1000.0)
    assert stun == {"urls": ["stun:stun.example.org:3478"]}
    assert turn["username"] == "1600:conv_1"
    expected = base64.b64encode(hmac.new(b"s3cret", b"1600:conv_1", hashlib.sha1).digest()).decode()
    assert turn["credential"] == expected
    monkeypatch.delenv("TURN_SECRET")
    assert ice_servers(settings, "conv_1", now=1000.0)[1] == {"urls": ["turn:turn.example.org:3478"]}


def test_webrtc_settings_are_checked() -> None:
    validate(Settings())
    for bad in (
        WebRtcSettings(ice_servers=("http://example.org",)),
        WebRtcSettings(playout_delay_ms=-1),
        WebRtcSettings(face_ahead_ms=500),  # beyond the call's playback lead: that speech is not released yet
        WebRtcSettings(camera_fps=100.0),
    ):
        with pytest.raises(BadOption):
            validate(Settings(webrtc=bad))


async def test_audio_receivers_hand_frames_on_after_one_frame_not_four() -> None:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        pc.addTransceiver("video")
        prompt_audio(pc)  # (fails loudly if an aiortc release renames the buffer it replaces)
        audio, video = (t.receiver._RTCRtpReceiver__jitter_buffer for t in pc.getTransceivers())  # type: ignore[attr-defined]
        assert audio._prefetch == RECEIVER_HOLD_FRAMES == 1
        assert video._is_video  # the video receiver keeps its own
    finally:
        await pc.close()


async def test_the_voice_waits_for_a_late_face_but_only_between_words() -> None:
    clock = SessionClock()
    clock.heard(0.0, 100.0)
    now = [100.0]
    p = Playout()
    late = [0.2]
    voice = ReplicaAudio(p, clock, delay_s=0.06, now=lambda: now[0], sync=lambda: late[0], max_sync_s=0.15)
    await voice.recv()  # quiet: the delay follows the face, capped
    assert voice.delay_s == pytest.approx(0.06 + 0.15)
    p.place(1.0, np.full(SLOT * 10, 5, dtype="<i2").tobytes())
    late[0] = 0.0
    now[0] = voice._next = 101.2  # speaking now: the delay holds until the replica is quiet again
    await voice.recv()
    assert voice.delay_s == pytest.approx(0.21)


class _ScriptedSession:
    """The session side of `WebRtcCalls` as `SessionService` shows it to a call (join, then a stream of messages):
    here it answers `session_started`, sends the replica's voice and face now and then, and ends after `chunks`
    microphone chunks. What is under test is the call's own lifetime, not a session's."""

    def __init__(self, chunks: int = 75) -> None:
        self.chunks = chunks
        self.jpeg = bytes(cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))[1])

    def check_capacity(self) -> None:
        pass

    def leave(self, conversation_id: str) -> None:
        pass

    async def Converse(self, requests: Any, context: Any) -> AsyncIterator[pb.ServerMessage]:
        it = requests.__aiter__()
        await anext(it)  # the `start`
        yield pb.ServerMessage(event=pb.Event(type="session_started", json='{"type": "session_started", "t": 0}'))
        n = 0
        async for _ in it:
            n += 1
            if n % 25 == 5:
                yield pb.ServerMessage(audio=pb.AudioOut(pcm=bytes(SLOT * 2 * 10), t=n * 0.02, utterance_id="1"))
                yield pb.ServerMessage(video=pb.VideoOut(jpeg=self.jpeg, t=n * 0.02))
            if n >= self.chunks:
                return


async def test_a_finished_call_and_its_connection_are_freed_at_once_without_the_cycle_collector() -> None:
    # A cancelled task's traceback held its frame and so the call, and aiortc's transports keep a bound method of
    # their closed connection: each finished call (its connection, buffers, codecs) waited for a full collection.
    calls = WebRtcCalls(_ScriptedSession(), Settings())  # type: ignore[arg-type]
    browser = RTCPeerConnection()
    browser.createDataChannel("events")
    browser.addTrack(AudioStreamTrack())
    browser.addTrack(VideoStreamTrack())
    gc.collect()
    gc.disable()
    try:
        await browser.setLocalDescription(await browser.createOffer())
        offer = {"sdp": browser.localDescription.sdp, "type": "offer"}
        answer = await calls.answer("conv_1", "token", offer)
        await browser.setRemoteDescription(RTCSessionDescription(**answer))
        (call,) = calls.calls
        (task,) = calls._tasks
        async with asyncio.timeout(30):
            await task
        assert call.stats.mic_chunks >= 50 and call.stats.camera_frames >= 1 and call.stats.events_sent >= 1
        refs = [weakref.ref(call), weakref.ref(call.pc), weakref.ref(call.playout), weakref.ref(call.face)]
        del call, task
        assert [r() is None for r in refs] == [True] * len(refs)
    finally:
        gc.enable()
        await browser.close()
