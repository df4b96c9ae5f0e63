"""`duet call`'s pure parts, without a server: the microphone's pacing (drift-free, on a virtual clock), the
frames it sends, where the replica's voice lands on the microphone timeline, what the data channel's events
do, the face's frame slots, and the command's arguments."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from duet import call as rtc
from duet.call import (
    MicClock,
    Microphone,
    Playout,
    answer_of,
    face_frames,
    frames_in,
    hear,
    ice_config,
    mic_chunk,
    offer_body,
    turns_of,
    webrtc_url,
)
from duet.cli import _parser, main
from duet.errors import DuetError
from duet.rtcaudio import Framer
from duet.talk import write_wav

SR = 16000


class VirtualTime:
    """A monotonic clock that only moves when slept on; `late` makes every sleep overshoot (a busy loop)."""

    def __init__(self, start: float = 100.0, late: float = 0.0) -> None:
        self.t = start
        self.late = late
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds + self.late


def pcm(n: int, value: int = 1000) -> bytes:
    return (np.arange(n) % 200 + value).astype("<i2").tobytes()


# --- the microphone ------------------------------------------------------------------------------------------


async def test_microphone_frames_are_due_on_one_anchor_without_drift() -> None:
    vt = VirtualTime(late=0.007)  # every sleep wakes 7 ms late
    clock = MicClock(now=vt.now)
    mic = Microphone(pcm(SR), clock, sleep=vt.sleep)
    sent_at = []
    for _ in range(200):
        await mic.recv()
        sent_at.append(vt.t - 100.0)
    assert clock.anchor == 100.0
    # frame k never goes out before k * 20 ms, and lateness does not pile up: at most one sleep's overshoot
    for k, t in enumerate(sent_at):
        assert k * 0.02 - 1e-9 <= t <= k * 0.02 + 0.007 + 1e-9
    # the schedule comes from the anchor, never from adding up sleeps: after 4 s it is still within 7 ms
    assert sent_at[-1] == pytest.approx(199 * 0.02, abs=0.0071)


async def test_a_stalled_loop_catches_up_without_shifting_the_schedule() -> None:
    vt = VirtualTime()
    clock = MicClock(now=vt.now)
    mic = Microphone(pcm(SR), clock, sleep=vt.sleep)
    await mic.recv()
    vt.t += 0.1  # the loop stalls 100 ms: five frames are overdue
    n_sleeps = len(vt.sleeps)
    for _ in range(5):
        await mic.recv()
    assert len(vt.sleeps) == n_sleeps  # overdue frames go at once
    await mic.recv()  # frame 6 is due at 120 ms
    assert vt.t - 100.0 == pytest.approx(0.12)


async def test_microphone_sends_the_file_then_silence_and_says_when_the_file_went() -> None:
    vt = VirtualTime()
    audio = pcm(320 * 3 + 100)  # 3 full frames and a partial one
    mic = Microphone(audio, MicClock(now=vt.now), sleep=vt.sleep)
    assert frames_in(audio) == 4
    got = []
    for k in range(6):
        assert mic.file_sent.is_set() == (k >= 4)
        frame = await mic.recv()
        assert frame.pts == k * 320 and frame.sample_rate == SR and frame.time_base == Fraction(1, SR)
        both = frame.to_ndarray().reshape(-1, 2)  # the samples in both channels: aiortc's Opus keeps their level
        assert (both[:, 0] == both[:, 1]).all()
        got.append(both[:, 0])
    assert mic.file_sent.is_set()
    sent = np.concatenate(got)
    assert sent[: 320 * 3 + 100].tobytes() == audio
    assert not sent[320 * 3 + 100 :].any()  # padding, then silence: a live microphone keeps sending


def test_mic_chunk_pads_and_goes_silent() -> None:
    audio = pcm(500)
    assert mic_chunk(audio, 0) == audio[:640]
    assert mic_chunk(audio, 1) == audio[640:] + bytes(640 - (1000 - 640))
    assert mic_chunk(audio, 9) == bytes(640)


def test_mic_clock_is_started_by_whatever_comes_first() -> None:
    vt = VirtualTime(start=5.0)
    clock = MicClock(now=vt.now)
    assert clock.at(7.5) == 2.5  # the first reading starts it, at 5.0
    assert clock.due(3) == pytest.approx(5.06)
    vt.t = 9.0
    assert clock.at() == pytest.approx(4.0)


# --- the replica's voice on the microphone timeline ----------------------------------------------------------


def chunks_of(n: int, value: int = 3000) -> list[bytes]:
    return [np.full(320, value, dtype="<i2").tobytes() for _ in range(n)]


def test_playout_places_at_arrival_and_stays_contiguous_through_jitter() -> None:
    p = Playout()
    p.push(1.0, 0, chunks_of(1, 100))  # the first frame's arrival anchors it
    p.push(1.02 + 0.004, 320, chunks_of(1, 200))  # 4 ms late: within tolerance, placed right after
    p.push(1.04 - 0.003, 640, chunks_of(1, 300))  # 3 ms early: the same
    s = p.speaker.samples
    assert p.speaker.end == 16000 + 3 * 320
    assert not s[:16000].any()
    assert (s[16000:16320] == 100).all() and (s[16320:16640] == 200).all() and (s[16640:16960] == 300).all()


def test_playout_reanchors_when_the_voice_resumes_later() -> None:
    p = Playout()
    p.push(1.0, 0, chunks_of(1))
    p.push(3.0, 320, chunks_of(1, 500))  # the server went quiet for 2 s and did not stamp the gap
    s = p.speaker.samples
    assert (s[48000:48320] == 500).all()
    assert not s[16320:48000].any()


def test_playout_keeps_the_framers_silence_for_lost_packets_on_the_senders_clock() -> None:
    p = Playout()
    p.push(1.0, 0, chunks_of(1, 100))
    # 5 packets lost: the framer filled 1600 samples of silence, the next frame's first sample is 1920
    p.push(1.12, 1920, [bytes(640)] * 5 + chunks_of(1, 700))
    s = p.speaker.samples
    assert (s[16000 + 1920 : 16000 + 2240] == 700).all()


def test_playout_clips_what_came_before_the_microphone_started() -> None:
    p = Playout()
    p.push(-0.01, 0, chunks_of(2, 900))  # 160 samples before time 0
    assert p.speaker.end == 480
    assert (p.speaker.samples[:480] == 900).all()


def test_playout_drops_what_it_holds_beyond_a_stop() -> None:
    p = Playout()
    p.push(1.0, 0, chunks_of(10))  # 200 ms placed from 1.0 s
    p.drop_after(1.1)
    assert p.speaker.end == 17600
    assert not p.speaker.samples[17600:20000].any()


def opus_like_frame(values: np.ndarray, pts: int) -> av.AudioFrame:
    """A decoded WebRTC frame: 48 kHz stereo s16, pts in 1/48000."""
    stereo = np.repeat(values.astype("<i2"), 2).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    frame.sample_rate = 48000
    frame.pts = pts
    frame.time_base = Fraction(1, 48000)
    return frame


def test_hear_resamples_and_places_each_frame_where_it_arrived() -> None:
    framer, p = Framer(), Playout()
    tone = (np.sin(np.arange(960 * 50) * 2 * np.pi * 440 / 48000) * 8000).astype(np.int16)
    for k in range(50):  # 1 s of 20 ms frames arriving from 2.0 s
        hear(framer, p, opus_like_frame(tone[k * 960 : (k + 1) * 960], k * 960), 2.0 + k * 0.02)
    s = p.speaker.samples.astype(np.float64)
    assert not s[:32000].any()
    assert np.abs(s[32000 + 200 : 32000 + 15000]).max() == pytest.approx(8000, rel=0.05)  # full level
    # on the 16 kHz timeline the tone's phase continues exactly: one placement, no gaps or overlaps
    ref = np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 8000
    seg = s[32000 + 1000 : 32000 + 15000]
    assert np.corrcoef(seg, ref[1000:15000])[0, 1] > 0.99


def test_hear_a_pts_gap_stays_on_the_senders_clock() -> None:
    framer, p = Framer(), Playout()
    one = np.full(960, 4000, dtype=np.int16)
    hear(framer, p, opus_like_frame(one, 0), 1.0)
    hear(framer, p, opus_like_frame(one, 960), 1.02)
    # frames 2..4 lost; frame 5 (pts 4800) arrives on time at 1.10 s
    hear(framer, p, opus_like_frame(one, 4800), 1.10)
    hear(framer, p, opus_like_frame(one, 5760), 1.12)
    s = p.speaker.samples
    assert abs(int(s[16000 + 320 * 5 + 100])) > 3000  # frame 5's audio at 1.10 s
    assert not s[16000 + 320 * 2 + 40 : 16000 + 320 * 5 - 40].any()  # the loss: silence


# --- events, the face, the transcript -----------------------------------------------------------------------


def received(now: list[float]) -> tuple[Any, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    clock = MicClock(now=lambda: now[0], anchor=10.0)
    return rtc._Received(clock, seen.append), seen


async def test_events_get_their_arrival_and_end_the_call_when_they_should() -> None:
    now = [10.5]
    r, seen = received(now)
    r.event(json.dumps({"type": "session_started", "t": 0.0, "conversation_id": "conv_1"}))
    assert seen[0]["recv_t"] == 0.5 and seen[0]["t"] == 0.0
    r.event(json.dumps({"type": "video_started", "t": 0.1, "fps": 30}))
    assert r.fps == 30.0
    assert not r.ended.is_set()
    r.event(json.dumps({"type": "error", "t": 1.0, "code": "llm_failed", "message": "x", "fatal": False}))
    assert not r.ended.is_set() and r.fatal is None
    now[0] = 13.0
    r.event(json.dumps({"type": "session_ended", "t": 2.9}))
    assert r.ended.is_set() and r.fatal is None and seen[-1]["recv_t"] == 3.0
    assert r.events == seen


async def test_a_fatal_error_ends_the_call_and_is_kept() -> None:
    r, _ = received([11.0])
    r.event(json.dumps({"type": "error", "t": 1.0, "code": "unauthenticated", "message": "bad", "fatal": True}))
    assert r.ended.is_set() and r.fatal is not None and r.fatal["code"] == "unauthenticated"


async def test_a_message_that_is_not_an_event_is_recorded_as_an_error() -> None:
    r, seen = received([11.0])
    r.event("not json")
    r.event("[1, 2]")
    assert [e["code"] for e in seen] == ["bad_event", "bad_event"] and not r.ended.is_set()


async def test_an_interrupted_stop_drops_held_audio_beyond_its_arrival() -> None:
    now = [11.0]
    r, _ = received(now)
    r.playout.push(0.9, 0, chunks_of(10))  # placed up to 1.1 s
    r.event(json.dumps({"type": "replica_speaking_stop", "t": 0.95, "reply_id": 1, "interrupted": False}))
    assert r.playout.speaker.end == 17600
    r.event(json.dumps({"type": "replica_speaking_stop", "t": 0.97, "reply_id": 1, "interrupted": True}))
    assert r.playout.speaker.end == 16000  # heard at 1.0 s: the rest is never played


def test_face_frames_take_the_slot_of_their_arrival() -> None:
    frames = face_frames([(0.0, b"a"), (0.041, b"b"), (0.13, b"c"), (-0.01, b"z")], 25.0)
    assert [(f.index, f.jpeg) for f in frames] == [(0, b"a"), (1, b"b"), (3, b"c"), (0, b"z")]


def test_turns_are_written_like_duet_talks() -> None:
    events = [
        {"type": "speech_start", "t": 0.3},
        {"type": "user_turn", "t": 1.0, "turn": 1, "text": "hello", "recv_t": 1.1},
        {"type": "replica_turn", "t": 2.0, "reply_id": 1, "text": "hi", "interrupted": True, "recv_t": 2.1},
    ]
    assert turns_of(events) == [
        {"role": "user", "t": 1.0, "text": "hello"},
        {"role": "replica", "t": 2.0, "text": "hi", "interrupted": True},
    ]


def test_offer_and_url() -> None:
    assert offer_body("v=0") == {"sdp": "v=0", "type": "offer"}
    assert offer_body("v=0", {"video": "true"}) == {"sdp": "v=0", "type": "offer", "options": {"video": "true"}}
    assert webrtc_url("http://h:8080/", "conv_1") == "http://h:8080/v1/conversations/conv_1/webrtc"
    assert webrtc_url("http://h", "../keys") == "http://h/v1/conversations/..%2Fkeys/webrtc"


def test_ice_servers_from_the_servers_configuration() -> None:
    assert ice_config({"ice_servers": []}) == []
    servers = ice_config(
        {
            "ice_servers": [
                {"urls": ["stun:stun.example:3478"]},
                {"urls": ["turn:turn.example:3478"], "username": "123:conv_1", "credential": "c2VjcmV0"},
            ]
        }
    )
    assert [(s.urls, s.username, s.credential) for s in servers] == [
        (["stun:stun.example:3478"], None, None),
        (["turn:turn.example:3478"], "123:conv_1", "c2VjcmV0"),
    ]
    with pytest.raises(DuetError) as exc:
        ice_config({"servers": []})
    assert exc.value.code == "bad_response"


def test_the_answer_must_be_an_sdp_answer() -> None:
    answer = answer_of({"sdp": "v=0\r\n", "type": "answer"})
    assert (answer.sdp, answer.type) == ("v=0\r\n", "answer")
    for bad in ({"sdp": "v=0", "type": "offer"}, {"type": "answer"}, {"sdp": 3, "type": "answer"}):
        with pytest.raises(DuetError) as exc:
            answer_of(bad)
        assert exc.value.code == "bad_response"


# --- the command ----------------------------------------------------------------------------------------------


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "user.wav"
    write_wav(path, np.zeros(1600, dtype=np.int16))
    return path


def test_call_arguments() -> None:
    args = _parser().parse_args(["call", "--conversation", "conv_1", "--token", "tok", "--audio", "u.wav"])
    assert (args.conversation, args.token, args.audio, args.video, args.out, args.tail) == (
        "conv_1",
        "tok",
        "u.wav",
        "",
        "call-out",
        0.0,
    )
    assert args.api_url is None and not args.check and args.option == []


@pytest.mark.parametrize("missing", ["--conversation", "--token", "--audio"])
def test_call_needs_conversation_token_and_audio(missing: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = {"--conversation": "c", "--token": "t", "--audio": "u.wav"}
    del argv[missing]
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["call", *[x for kv in argv.items() for x in kv]])
    assert exc.value.code == 2 and missing in capsys.readouterr().err


def run_call(monkeypatch: pytest.MonkeyPatch, argv: list[str], events: list[dict[str, Any]]) -> dict[str, Any]:
    """`duet call ...` with the WebRTC call replaced by one that replays `events`; returns what it was given."""
    given: dict[str, Any] = {}

    async def fake_call(*args: Any, **kwargs: Any) -> dict[str, Any]:
        given.update(args=args, **kwargs)
        for e in events:
            kwargs["on_event"](e)
        return {"turns": []}

    monkeypatch.setattr(rtc, "call", fake_call)
    given["rc"] = main(["call", *argv])
    return given


def test_call_passes_its_arguments_and_takes_the_api_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, wav: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("DUET_API_URL", "http://api.example:9000")
    argv = ["--conversation", "conv_1", "--token", "tok", "--audio", str(wav), "--out", str(tmp_path / "o")]
    given = run_call(monkeypatch, [*argv, "--tail", "1.5", "--option", "video=true"], [])
    assert given["rc"] == 0
    assert given["args"] == ("conv_1", "tok", str(wav), str(tmp_path / "o"))
    assert given["api_url"] == "http://api.example:9000"
    assert given["tail_s"] == 1.5 and given["options"] == {"video": "true"} and given["video"] is None
    given = run_call(monkeypatch, [*argv, "--api-url", "http://other:1"], [])
    assert given["api_url"] == "http://other:1"
    monkeypatch.delenv("DUET_API_URL")
    assert run_call(monkeypatch, argv, [])["api_url"] == "http://127.0.0.1:8080"


def test_call_check_fails_a_session_with_an_unanswered_turn(
    monkeypatch: pytest.MonkeyPatch, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--conversation", "c", "--token", "t", "--audio", str(wav), "--check"]
    unanswered = [{"type": "user_turn", "t": 1.0, "turn": 1, "text": "hello?"}]
    assert run_call(monkeypatch, argv, unanswered)["rc"] == 1
    assert "got no spoken reply" in capsys.readouterr().err
    answered = [*unanswered, {"type": "replica_speaking_start", "t": 1.5, "reply_id": 1}]
    assert run_call(monkeypatch, argv, answered)["rc"] == 0


@pytest.mark.parametrize(
    ("extra", "code"),
    [(["--tail", "-1"], "bad_option"), (["--tail", "nan"], "bad_option"), (["--option", "oops"], "bad_option")],
)
def test_call_refuses_bad_arguments_before_joining(
    monkeypatch: pytest.MonkeyPatch, wav: Path, capsys: pytest.CaptureFixture[str], extra: list[str], code: str
) -> None:
    given = run_call(monkeypatch, ["--conversation", "c", "--token", "t", "--audio", str(wav), *extra], [])
    assert given["rc"] == 2 and "args" not in given
    assert f"duet: {code}:" in capsys.readouterr().err


def test_call_refuses_a_bad_audio_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "u.wav"
    bad.write_bytes(b"RIFF nonsense")
    given = run_call(monkeypatch, ["--conversation", "c", "--token", "t", "--audio", str(bad)], [])
    assert given["rc"] == 2 and "args" not in given
    assert "bad_audio_file" in capsys.readouterr().err
