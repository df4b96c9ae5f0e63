"""A session's way in and out: the bounded inbox (control first), the bounded outbox (events first, audio,
video dropping the oldest, cuts), the wire form of every event, and the service pumping them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from duet.proto import session_pb2 as pb
from orchestrator.api import session_service as service_module
from orchestrator.api.inbox import Inbox
from orchestrator.api.outbox import Outbox
from orchestrator.api.session_service import SessionService
from orchestrator.api.wire import event_dict, event_message
from orchestrator.config import Settings
from orchestrator.events import (
    ErrorEvent,
    FloorEvent,
    ReplicaSpeakingStart,
    ReplyLatency,
    SessionEnded,
    SessionStarted,
    TranscriptEvent,
)
from orchestrator.session.base import Control
from tests.unit.test_conversation_session import FakeModels, silence, speech


def drain(outbox: Outbox) -> list[pb.ServerMessage]:
    out = []
    while (msg := outbox._take()) is not None:
        out.append(msg)
    return out


def kinds(messages: list[pb.ServerMessage]) -> list[str]:
    return [m.event.type if m.WhichOneof("kind") == "event" else str(m.WhichOneof("kind")) for m in messages]


# ---- the wire form --------------------------------------------------------------------------------------


def test_floor_events_keep_their_stable_format() -> None:
    commit = FloorEvent("eot_commit", 5.184, compute_ms=71.3, reason="model", p_yield=0.83)
    assert json.loads(event_message(commit).event.json) == {
        "type": "eot_commit",
        "t": 5.184,
        "compute_ms": 71.3,
        "reason": "model",
        "p_yield": 0.83,
    }
    assert list(event_dict(commit)) == ["type", "t", "compute_ms", "reason", "p_yield"]
    assert event_dict(FloorEvent("speech_start", 1.0, compute_ms=3.0)) == {
        "type": "speech_start",
        "t": 1.0,
        "compute_ms": 3.0,
    }
    assert event_dict(FloorEvent("backchannel", 2.0, compute_ms=1.0, duration_ms=310.0))["duration_ms"] == 310.0


def test_nested_and_optional_fields() -> None:
    start = ReplicaSpeakingStart(3.2, 1, True, ReplyLatency(asr_final_ms=0.0, llm_first_token_ms=80.5, floor_ms=400.0))
    assert event_dict(start) == {
        "type": "replica_speaking_start",
        "t": 3.2,
        "reply_id": 1,
        "from_speculation": True,
        "latency": {"asr_final_ms": 0.0, "llm_first_token_ms": 80.5, "floor_ms": 400.0},  # unmeasured: absent
    }
    assert event_dict(SessionStarted(0.0, "c1")) == {"type": "session_started", "t": 0.0, "conversation_id": "c1"}


def test_errors_travel_as_the_typed_error_message_with_their_time() -> None:
    msg = event_message(ErrorEvent(1.25, "model_unavailable", "model 'asr' failed", fatal=False))
    assert msg.WhichOneof("kind") == "error"
    assert (msg.error.code, msg.error.message, msg.error.fatal, msg.error.t) == (
        "model_unavailable",
        "model 'asr' failed",
        False,
        1.25,
    )


# ---- the outbox ------------------------------------------------------------------------------------------


async def test_events_overtake_media_and_the_finale_comes_last() -> None:
    box = Outbox()
    await box.audio(b"\x00\x00" * 320, 1, 1.0)
    box.video(b"jpeg", 1.0, 25)
    await box.event(TranscriptEvent(1.0, "hi", True))
    box.finale([SessionEnded(2.0)])
    box.close()
    order = []
    while (msg := await box.next()) is not None:
        order.append(msg)
    assert kinds(order) == ["transcript", "audio", "video", "session_ended"]


async def test_a_cut_drops_the_unsent_audio_of_that_reply_from_the_cut_on() -> None:
    box = Outbox()
    for i in range(5):  # reply 1: 5 segments of 0.1 s from t=1.0
        await box.audio(b"\x01\x00" * 1600, 1, 1.0 + i / 10)
    await box.audio(b"\x02\x00" * 1600, 2, 1.25)
    box.cut(1, 1.25)
    sent = [(int(m.audio.utterance_id), round(m.audio.t, 2), len(m.audio.pcm) // 2) for m in drain(box)]
    assert sent == [(1, 1.0, 1600), (1, 1.1, 1600), (1, 1.2, 800), (2, 1.25, 1600)]  # up to the cut, exactly


async def test_video_drops_the_oldest_frames_when_the_client_falls_behind() -> None:
    dropped: list[int] = []
    box = Outbox(video=10, on_video_drop=dropped.append)
    for i in range(100):
        box.video(b"jpeg", i / 25, i)
    frames = [m.video.index for m in drain(box)]
    assert frames == list(range(90, 100)) and box.dropped_video == 90 and sum(dropped) == 90


async def test_a_client_that_reads_nothing_cannot_grow_the_outbox() -> None:
    box = Outbox(events=8, audio=4, video=5)
    produced = {"events": 0, "audio": 0}

    async def producer() -> None:
        while True:
            await box.event(TranscriptEvent(0.0, "x" * 100, False))
            produced["events"] += 1
            await box.audio(b"\x00\x00" * 320, 1, 0.0)
            produced["audio"] += 1
            box.video(b"x" * 10_000, 0.0, 0)

    task = asyncio.create_task(producer(), name="producer")
    await asyncio.sleep(0.05)
    assert box.pending() == (5, 4, 5) or box.pending()[0] <= 8
    assert box.pending()[1] <= 4 and box.pending()[2] <= 5 and not task.done()  # the producer waits
    await box.next()  # the client reads one message: the producer makes one more, no more
    await asyncio.sleep(0.01)
    assert box.pending()[0] <= 8 and box.pending()[1] <= 4
    box.close()  # the stream ends: a waiting producer is let go, and what it would add is dropped
    await asyncio.sleep(0.01)
    assert box.pending()[0] <= 8
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# ---- the inbox -------------------------------------------------------------------------------------------


async def test_urgent_items_overtake_queued_media_in_order() -> None:
    box: Inbox[str] = Inbox(10)
    for i in range(5):
        await box.put(f"audio{i}")
    await box.put("interrupt", urgent=True)
    await box.put("audio5")
    assert [await box.get() for _ in range(7)] == ["interrupt", *(f"audio{i}" for i in range(6))]


async def test_a_full_inbox_makes_the_reader_wait() -> None:
    box: Inbox[int] = Inbox(3)
    for i in range(3):
        await box.put(i)
    blocked = asyncio.create_task(box.put(3), name="put")
    await asyncio.sleep(0.01)
    assert not blocked.done() and box.full()
    assert await box.get() == 0
    await asyncio.wait_for(blocked, 1.0)
    assert len(box) == 3


# ---- the service pumping a session ---------------------------------------------------------------------------


class Recorder:
    """A `Session` that records what the service hands it, slowly (each audio chunk takes 5 ms)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.name = "rec"

    @property
    def now(self) -> float:
        return 0.02 * self.calls.count("audio")

    async def start(self) -> None:
        self.calls.append("start")

    async def audio(self, pcm: bytes, arrival: float) -> None:
        self.calls.append("audio")
        await asyncio.sleep(0.005)

    def video(self, jpeg: bytes, t: float, arrival: float) -> None:
        self.calls.append("video")

    def text(self, text: str, *, replica: bool) -> None:
        self.calls.append("text")

    async def control(self, kind: Control) -> None:
        self.calls.append(kind.value)

    async def finish(self, *, left: bool = False) -> None:
        self.calls.append("finish (left)" if left else "finish")

    async def close(self) -> None:
        self.calls.append("close")


def start_message(**options: str) -> pb.ClientMessage:
    fmt = pb.AudioFormat(sample_rate=16000, channels=1, sample_width=2, encoding="pcm_s16le")
    return pb.ClientMessage(start=pb.Start(audio_format=fmt, options={"mode": "acoustic", **options}))


class Context:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def add_done_callback(self, cb: Any) -> None:
        self.callbacks.append(cb)


def service(**server: Any) -> SessionService:
    server = {"starts_per_s": 1e6, "starts_per_connection_per_s": 1e6, **server}
    settings = Settings(server=dataclasses.replace(Settings().server, **server))
    return SessionService(models=FakeModels(), settings=settings, llm=FakeModels())


async def test_an_interrupt_overtakes_the_audio_already_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(service_module, "build_session", lambda *a, **k: rec)

    async def client() -> AsyncIterator[pb.ClientMessage]:
        yield start_message()
        for _ in range(40):
            yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.INTERRUPT))
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))

    out = [m async for m in service().Converse(client(), Context())]  # type: ignore[arg-type]
    audio_before = rec.calls.index("interrupt") - 1  # (after "start")
    assert audio_before < 40, "the interrupt waited behind all the audio"
    assert rec.calls.count("audio") == 40 and rec.calls[-2:] == ["finish", "close"]  # nothing lost, END last
    assert kinds(out)[0] == "session_started" and kinds(out)[-1] == "session_ended"


async def test_a_user_who_left_makes_the_session_stop_rather_than_play_out(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(service_module, "build_session", lambda *a, **k: rec)
    svc = service()

    async def client(leave: bool) -> AsyncIterator[pb.ClientMessage]:
        yield start_message()
        yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
        if leave:  # a hang-up (the WebRTC bridge's `end`), then the end of the input
            for sid in list(svc._live):
                svc.leave(sid)
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))

    [m async for m in svc.Converse(client(False), Context())]  # type: ignore[arg-type]
    assert rec.calls[-2:] == ["finish", "close"]
    svc.leave("no-such-session")  # (nothing live by that id: nothing happens)
    rec.calls.clear()
    [m async for m in svc.Converse(client(True), Context())]  # type: ignore[arg-type]
    assert rec.calls[-2:] == ["finish (left)", "close"]


async def test_a_conversation_whose_client_reads_nothing_holds_bounded_output(monkeypatch: pytest.MonkeyPatch) -> None:
    boxes: list[Outbox] = []

    class Recorded(Outbox):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            boxes.append(self)

    monkeypatch.setattr(service_module, "Outbox", Recorded)
    monkeypatch.setattr(service_module, "OUTBOX_EVENTS", 6)
    monkeypatch.setattr(service_module, "OUTBOX_AUDIO", 3)
    sent = 0

    async def client() -> AsyncIterator[pb.ClientMessage]:
        nonlocal sent
        yield start_message(mode="conversation", perception="false", echo_suppression="false")
        for _ in range(6):  # six spoken turns, each answered, as fast as the server takes them
            for audio in (speech(3000, 1.0), silence(1.5)):
                for i in range(0, audio.shape[0], 320):
                    sent += 1
                    yield pb.ClientMessage(audio=pb.AudioChunk(pcm=audio[i : i + 320].tobytes()))
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))

    svc = service(inbox_chunks=16, audio_burst_s=1000.0)
    stream = svc.Converse(client(), Context())  # type: ignore[arg-type]
    first = await anext(stream)
    assert first.event.type == "session_started"
    await asyncio.sleep(0.5)  # the client reads nothing for a while
    box = boxes[0]
    events, audio, video = box.pending()
    assert events <= 6 and audio <= 3 and video <= 50
    assert sent < 6 * 125, "the server kept reading a client that reads nothing"  # flow control held it back
    rest = [m async for m in stream]  # the client reads again: the session goes on and ends normally
    assert kinds(rest)[-1] == "session_ended" and sent == 6 * 125
    assert sum(k == "replica_turn" for k in kinds(rest)) >= 1


async def test_audio_sent_while_a_slow_start_admits_the_session_is_not_taken_for_a_flood(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client streams at real time right behind its `start`; on a loaded server the session may be admitted
    and built seconds later. That audio is not ahead of real time: the session must stay live (not paced,
    and so not in the bulk lane for good)."""
    monkeypatch.setattr(service_module, "build_session", lambda *a, **k: Recorder())
    now = [0.0]
    server = dataclasses.replace(Settings().server, starts_per_s=1e6, starts_per_connection_per_s=1e6)
    svc = SessionService(models=FakeModels(), settings=Settings(server=server), llm=FakeModels(), clock=lambda: now[0])
    check = svc.check_capacity

    def slow_admission() -> None:
        now[0] += 3.0  # the start took 3 s; meanwhile the client sent 2.5 s of audio (the burst is 2 s)
        check()

    monkeypatch.setattr(svc, "check_capacity", slow_admission)

    async def client() -> AsyncIterator[pb.ClientMessage]:
        yield start_message(mode="perceive")  # a live mode: paced beyond the burst
        for _ in range(125):
            yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))

    out = [m async for m in svc.Converse(client(), Context())]  # type: ignore[arg-type]
    codes = [m.error.code for m in out if m.WhichOneof("kind") == "error"]
    assert "audio_too_fast" not in codes and svc.telemetry.paced._value.get() == 0
