"""Session service: teardown, slots on every exit path, idle timeout, pacing, bounds; the pure limits."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from duet.proto import session_pb2 as pb
from orchestrator.api.drain import Drain
from orchestrator.api.inbox import Inbox
from orchestrator.api.limits import AudioClock, FrameRate, TokenBucket
from orchestrator.api.outbox import Outbox
from orchestrator.api.session_service import Inboxed, SessionService, _Stream
from orchestrator.config import Settings
from orchestrator.errors import DuetError, public_message
from orchestrator.models.fairness import BULK_MIN_COST_S, FairGate, GatedModels
from orchestrator.session.floor import MAX_FLOOR_CONTEXT_CHARS, MAX_FLOOR_TEXT_CHARS, bounded_context, bounded_text


def drain(outbox: Outbox) -> list[pb.ServerMessage]:
    """What the outbox would write now (without waiting)."""
    out = []
    while (msg := outbox._take()) is not None:
        out.append(msg)
    return out


async def endless() -> AsyncIterator[pb.ClientMessage]:
    while True:
        yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
        await asyncio.sleep(0)


async def test_reader_blocked_on_full_inbox_ends_on_cancel() -> None:
    service = SessionService(models=None, settings=Settings())  # type: ignore[arg-type]
    inbox: Inbox[Inboxed] = Inbox(2)
    reader = asyncio.create_task(service._read(endless(), inbox), name="test-reader")
    await asyncio.sleep(0.05)  # the reader fills the inbox and blocks on the next put
    assert inbox.full() and not reader.done()
    reader.cancel()
    done, _ = await asyncio.wait({reader}, timeout=2.0)
    assert done, "the reader hung on the full inbox after cancellation"


async def test_reader_marks_end_after_client_end() -> None:
    async def messages() -> AsyncIterator[pb.ClientMessage]:
        yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))
        yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))  # after END: not read

    service = SessionService(models=None, settings=Settings())  # type: ignore[arg-type]
    inbox: Inbox[Inboxed] = Inbox(8)
    await service._read(messages(), inbox)
    items = [inbox.get_nowait() for _ in range(len(inbox))]
    assert [type(i).__name__ for i in items] == ["_Stamped", "_Stamped", "_End"]


# ---- limits (pure: virtual time) ---------------------------------------------------------------------------


def test_audio_clock_allows_a_burst_then_holds_real_time() -> None:
    p = AudioClock(burst_s=1.0)
    waits = [p.take(0.02, 0.0) for _ in range(50)]  # 1 s of audio at once: the burst
    assert waits == [0.0] * 50
    t, total = 0.0, 0.0
    for _ in range(500):  # 10 s more, sent as fast as possible: each chunk waits its own duration
        w = p.take(0.02, t)
        t += w
        total += w
    assert abs(t - 10.0) < 1e-6 and abs(total - 10.0) < 1e-6


def test_audio_clock_never_slows_a_real_time_stream() -> None:
    p = AudioClock(burst_s=0.5)
    assert all(p.take(0.02, i * 0.02 + (0.015 if i % 7 == 0 else 0.0)) == 0.0 for i in range(5000))


def test_audio_clock_lets_a_stream_that_fell_behind_catch_up() -> None:
    p = AudioClock(burst_s=1.0)
    p.take(0.02, 0.0)
    assert p.take(9.0, 10.0) == 0.0  # the server stalled (or the client paused): reading the backlog is free
    assert p.take(3.0, 10.0) == pytest.approx(1.02)  # running ahead of the wall clock is not


def test_byte_bucket_credit_does_not_pile_up_while_quiet() -> None:
    p = TokenBucket(capacity=1.0)
    p.take(0.02, 0.0)
    assert p.take(1.0, 100.0) == 0.0  # a long silence earns one burst, not 100
    assert p.take(0.5, 100.0) == pytest.approx(0.5)


def test_a_refused_admission_takes_nothing() -> None:
    b = TokenBucket(capacity=2.0, rate=1.0)
    assert b.admit(1, 0.0) and b.admit(1, 0.0)
    assert not any(b.admit(1, 0.1 * i) for i in range(1, 10))  # retried in a loop: refused, nothing borrowed
    assert b.admit(1, 1.0) and not b.admit(1, 1.0)  # one second refilled one start


def test_frame_rate_drops_frames_beyond_the_limit() -> None:
    f = FrameRate(10.0)
    admitted = sum(f.admit(i / 100) for i in range(100))  # 100 fps for 1 s
    assert 9 <= admitted <= 11
    g = FrameRate(30.0)
    assert all(g.admit(i / 25) for i in range(100))  # 25 fps passes untouched


async def test_fair_gate_grants_waiters_session_by_session() -> None:
    gate = FairGate(capacity=1, per_key=4)
    order: list[str] = []
    await gate.acquire("hog")  # the one slot is taken

    async def request(key: str) -> None:
        async with gate.slot(key):
            order.append(key)
            await asyncio.sleep(0)

    hog = [asyncio.create_task(request("hog"), name=f"hog-{i}") for i in range(5)]
    await asyncio.sleep(0)
    calm = asyncio.create_task(request("calm"), name="calm")
    await asyncio.sleep(0)
    gate.release("hog")
    await asyncio.gather(*hog, calm)
    assert order.index("calm") <= 1, order  # not behind the hog's five queued requests
    assert gate.inflight == 0 and gate.waiting() == 0


async def test_fair_gate_caps_one_session_and_survives_cancellation() -> None:
    gate = FairGate(capacity=10, per_key=2)
    await gate.acquire("a")
    await gate.acquire("a")
    third = asyncio.create_task(gate.acquire("a"), name="third")
    await asyncio.sleep(0)
    assert not third.done() and gate.held("a") == 2
    await gate.acquire("b")  # another session is not held up by a's cap
    third.cancel()
    await asyncio.gather(third, return_exceptions=True)
    gate.release("a")
    gate.release("a")
    gate.release("b")
    assert gate.inflight == 0 and gate.waiting() == 0


def test_public_messages_carry_no_internals() -> None:
    raw = "video frame cannot be decoded (cannot identify image file <_io.BytesIO object at 0x7f3a2c1b2e80>)"
    assert "0x" not in public_message(raw) and "BytesIO" not in public_message(raw)
    assert "0x" not in DuetError("bad pointer 0x7ffd5e8c1a40 seen").message
    assert len(public_message("x" * 100_000)) <= 1000


def test_floor_text_and_context_are_bounded() -> None:
    long = "word " * 200_000
    assert len(bounded_text(long)) <= MAX_FLOOR_TEXT_CHARS
    assert bounded_text("I want to") == "I want to"
    ctx = bounded_context("What would you like " + "very " * 10_000 + "to drink?")
    assert len(ctx) <= MAX_FLOOR_CONTEXT_CHARS + 3
    assert ctx.startswith("What would") and ctx.endswith("to drink?")


# ---- the service with a stand-in for Triton (the outside system): slots, idle, pacing, bounds ----------------


class FakeTriton:
    """Answers `vad` like the model would for silence, after a moment (so cancels land mid-request)."""

    def __init__(self) -> None:
        self.calls = 0

    async def vad(self, audio: Any, state: Any) -> tuple[float, Any]:
        self.calls += 1
        await asyncio.sleep(0.001)
        return 0.0, state

    async def floor(self, *args: Any) -> Any:
        raise AssertionError("silence never reaches the floor model")

    fuse = floor


class FakeContext:
    _callbacks: list[Any]

    def __init__(self, peer: str = "ipv4:127.0.0.1:40000") -> None:
        self._callbacks = []
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def add_done_callback(self, cb: Any) -> None:
        self._callbacks.append(cb)

    def done(self) -> None:  # what grpc does when the RPC terminates
        for cb in self._callbacks:
            cb(self)


def start_message(**options: str) -> pb.ClientMessage:
    fmt = pb.AudioFormat(sample_rate=16000, channels=1, sample_width=2, encoding="pcm_s16le")
    return pb.ClientMessage(start=pb.Start(audio_format=fmt, options={"mode": "acoustic", **options}))


def service(clock: Any = None, **server: Any) -> SessionService:
    server = {"starts_per_s": 1e6, "starts_per_connection_per_s": 1e6, **server}
    s = Settings(server=dataclasses.replace(Settings().server, **server))
    if clock is None:
        return SessionService(models=FakeTriton(), settings=s)  # type: ignore[arg-type]
    return SessionService(models=FakeTriton(), settings=s, clock=clock)  # type: ignore[arg-type]


async def converse(
    svc: SessionService, messages: AsyncIterator[pb.ClientMessage], peer: str = "ipv4:127.0.0.1:40000"
) -> list[pb.ServerMessage]:
    ctx = FakeContext(peer)
    out: list[pb.ServerMessage] = []
    try:
        async for m in svc.Converse(messages, ctx):  # type: ignore[arg-type]
            out.append(m)
    finally:
        ctx.done()
    return out


def codes(out: list[pb.ServerMessage]) -> list[str]:
    return [m.error.code for m in out if m.WhichOneof("kind") == "error"]


async def test_cancelled_sessions_release_their_slots() -> None:
    svc = service(max_sessions=4)

    async def client(n: int) -> AsyncIterator[pb.ClientMessage]:
        yield start_message()
        for _ in range(n):
            yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
            await asyncio.sleep(0)
        await asyncio.Event().wait()  # then the client just hangs on

    for i in range(300):  # open and cancel at many different points of the session's life
        task = asyncio.create_task(converse(svc, client(i % 7)), name=f"churn-{i}")
        for _ in range(i % 11):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    for _ in range(50):
        if svc.active == 0 and not svc._sessions:
            break
        await asyncio.sleep(0.01)
    assert svc.active == 0 and not svc._sessions
    assert svc.telemetry.sessions_open._value.get() == 0
    out = await converse(svc, one_second_then_end())
    assert "server_busy" not in codes(out) and out[-1].event.type == "session_ended"


async def one_second_then_end() -> AsyncIterator[pb.ClientMessage]:
    yield start_message()
    for _ in range(50):
        yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
    yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))


async def test_idle_session_ends_with_typed_error_and_frees_its_slot() -> None:
    svc = service(max_sessions=1, idle_timeout_s=0.2)

    async def silent() -> AsyncIterator[pb.ClientMessage]:
        yield start_message()
        yield pb.ClientMessage(text=pb.TextInput(text="text is not audio"))
        await asyncio.Event().wait()

    out = await asyncio.wait_for(converse(svc, silent()), 5.0)
    assert codes(out) == ["idle_timeout"] and svc.active == 0
    assert [m.error.fatal for m in out if m.WhichOneof("kind") == "error"] == [True]


async def test_session_limit_and_second_start() -> None:
    svc = service(max_sessions=1)

    go_on = asyncio.Event()

    async def second_start() -> AsyncIterator[pb.ClientMessage]:
        yield start_message()
        await go_on.wait()
        yield start_message()
        await asyncio.Event().wait()

    holder = asyncio.create_task(converse(svc, second_start()), name="holder")
    await asyncio.sleep(0.05)
    assert codes(await converse(svc, one_second_then_end())) == ["server_busy"]
    go_on.set()
    out = await asyncio.wait_for(holder, 5.0)
    assert codes(out) == ["protocol"] and svc.active == 0


async def test_at_the_limit_a_session_in_the_bulk_lane_makes_room_for_a_new_one() -> None:
    svc = service(max_sessions=1, audio_burst_s=0.5)

    async def fast_then_quiet() -> AsyncIterator[pb.ClientMessage]:
        yield start_message()
        for _ in range(100):  # 2 s of audio at once: ahead of real time, so in the bulk lane for good
            yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
        await asyncio.Event().wait()

    fast = asyncio.create_task(converse(svc, fast_then_quiet()), name="fast")
    for _ in range(200):
        if any(live.stream.bulk for live in svc._live.values()):
            break
        await asyncio.sleep(0.01)
    out = await asyncio.wait_for(converse(svc, one_second_then_end()), 10.0)  # admitted: the bulk one made room
    assert codes(out) == [] and out[-1].event.type == "session_ended"
    ended = await asyncio.wait_for(fast, 5.0)
    assert codes(ended) == ["server_busy"] and [m.error.fatal for m in ended if m.WhichOneof("kind") == "error"] == [
        True
    ]
    assert svc.telemetry.evicted._value.get() == 1 and svc.active == 0 and not svc._evicting

    # a draining server refuses the new session and ends nothing for it
    fast = asyncio.create_task(converse(svc, fast_then_quiet()), name="fast-2")
    for _ in range(200):
        if any(live.stream.bulk for live in svc._live.values()):
            break
        await asyncio.sleep(0.01)
    svc.drain = Drain(timeout_s=30.0)
    svc.drain.signal(0.0)
    assert codes(await asyncio.wait_for(converse(svc, one_second_then_end()), 10.0)) == ["draining"]
    assert svc.telemetry.evicted._value.get() == 1 and not fast.done()
    fast.cancel()
    await asyncio.gather(fast, return_exceptions=True)


async def test_oversized_text_is_refused_and_the_session_goes_on() -> None:
    svc = service(max_text_chars=100)

    async def client() -> AsyncIterator[pb.ClientMessage]:
        yield start_message()
        yield pb.ClientMessage(text=pb.TextInput(text="x" * 1_000_000))
        yield pb.ClientMessage(text=pb.TextInput(text="fine"))
        yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))

    out = await converse(svc, client())
    assert codes(out) == ["text_too_long"] and out[-1].event.type == "session_ended"


async def test_fast_audio_is_read_at_real_time_beyond_the_burst() -> None:
    svc = service(audio_burst_s=0.2)

    async def flood() -> AsyncIterator[pb.ClientMessage]:
        for _ in range(50):  # 1 s of audio, as fast as possible
            yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))

    inbox: Inbox[Inboxed] = Inbox(100)
    outbox = Outbox()
    await svc._read(flood(), inbox, outbox, pace=True)
    notices = drain(outbox)
    assert [m.error.code for m in notices] == ["audio_too_fast"] and not notices[0].error.fatal
    assert svc.telemetry.pacing_delay._value.get() >= 0.7  # the 0.8 s beyond the burst, less read time
    assert svc.telemetry.paced._value.get() == 1
    # floor/acoustic sessions are not paced: `duet turns --speed 0` stays as fast as the server can go
    await svc._read(flood(), Inbox(100), outbox, pace=False)
    assert drain(outbox) == [] and svc.telemetry.paced._value.get() == 1


async def test_camera_frames_beyond_the_rate_are_dropped_before_the_inbox() -> None:
    svc = service(max_video_fps=10.0)

    async def frames() -> AsyncIterator[pb.ClientMessage]:
        for i in range(200):
            yield pb.ClientMessage(video=pb.VideoFrame(jpeg=b"x", t=i / 1000))

    inbox: Inbox[Inboxed] = Inbox(300)
    await svc._read(frames(), inbox)
    assert len(inbox) <= 5  # 200 frames in a few ms: one or two pass, then _End


async def test_a_client_that_keeps_sending_garbage_is_ended() -> None:
    svc = service(max_client_errors=5)

    async def garbage() -> AsyncIterator[pb.ClientMessage]:
        yield start_message()
        for _ in range(1000):
            yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00"))  # odd length: refused, not fatal
        await asyncio.Event().wait()

    out = await asyncio.wait_for(converse(svc, garbage()), 5.0)
    assert codes(out) == ["bad_audio_chunk"] * 6 + ["too_many_errors"] and svc.active == 0


async def test_a_byte_flood_is_read_at_a_bounded_rate() -> None:
    svc = service(input_bytes_per_s=200_000, max_text_chars=10)

    async def flood() -> AsyncIterator[pb.ClientMessage]:
        for _ in range(3):
            yield pb.ClientMessage(text=pb.TextInput(text="x" * 100_000))

    outbox = Outbox()
    await svc._read(flood(), Inbox(10), outbox)
    assert svc.telemetry.pacing_delay._value.get() >= 0.45  # 300 kB at 200 kB/s beyond a 200 kB burst


async def test_fair_gate_bulk_lane_takes_only_what_live_sessions_leave() -> None:
    gate = FairGate(capacity=10, per_key=4, bulk_capacity=1)
    await gate.acquire("flood-1", bulk=True)
    second = asyncio.create_task(gate.acquire("flood-2", bulk=True), name="flood-2")
    await asyncio.sleep(0)
    assert not second.done()  # all bulk work together holds one slot
    await gate.acquire("live")  # a live session passes at once
    gate.release("flood-1", bulk=True)
    await asyncio.wait_for(second, 1.0)
    gate.release("flood-2", bulk=True)
    gate.release("live")

    full = FairGate(capacity=1, per_key=4, bulk_capacity=1)
    await full.acquire("x")
    order: list[str] = []

    async def ask(key: str, bulk: bool) -> None:
        async with full.slot(key, bulk):
            order.append(key)

    tasks = [asyncio.create_task(ask("flood", True), name="b"), asyncio.create_task(ask("live", False), name="l")]
    await asyncio.sleep(0)
    full.release("x")
    await asyncio.gather(*tasks)
    assert order == ["live", "flood"]  # the live waiter came later and still went first
    assert full.inflight == 0 and full.bulk_inflight == 0 and full.waiting() == 0


def test_a_stream_that_ran_ahead_of_real_time_stays_in_the_bulk_lane() -> None:
    live = _Stream(last_audio=0.0, audio=AudioClock(2.0, start=0.0))
    live.audio.take(1.0, 0.5)
    assert not live.in_bulk(0.5, 2.0)  # a live feed: at most its burst ahead
    live.audio.take(3.0, 10.0)  # late chunks caught up after a stall: behind, not ahead
    assert not live.in_bulk(10.0, 2.0)

    fast = _Stream(last_audio=0.0, audio=AudioClock(2.0, start=0.0))
    fast.audio.take(5.0, 1.0)  # 5 s of audio in 1 s
    assert fast.in_bulk(1.0, 2.0)
    assert fast.in_bulk(60.0, 2.0)  # fallen behind since (its requests waited): still bulk, for good

    flood = _Stream(last_audio=0.0, paced=True)
    assert flood.in_bulk(0.0, 2.0)


def test_fair_gate_bulk_budget_charges_time_over_the_share_without_banking_idle_time() -> None:
    gate = FairGate(capacity=10, per_key=4, bulk_capacity=2, bulk_share=0.1)
    assert gate.bulk_delay(0.0) == 0.0
    gate.bulk_spent(0.0, 0.05)  # 50 ms of bulk work buys 500 ms of the lane
    assert gate.bulk_delay(0.1) == pytest.approx(0.4)
    gate.bulk_spent(0.0, 0.05)  # a second request that ran beside it adds up
    assert gate.bulk_delay(0.1) == pytest.approx(0.9)
    gate.bulk_spent(5.0, 5.0)  # long idle: nothing banked; a request is charged its overheads at least
    assert gate.bulk_delay(5.0) == pytest.approx(BULK_MIN_COST_S / 0.1)
    with pytest.raises(ValueError, match="bulk_share"):
        FairGate(capacity=10, per_key=4, bulk_share=0.0)


class _SlowVad:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    async def vad(self, audio: Any, state: Any) -> tuple[float, Any]:
        self.calls += 1
        await asyncio.sleep(self.seconds)
        return 0.0, state


async def test_gated_bulk_requests_keep_to_their_share_while_live_sessions_are_about() -> None:
    gate = FairGate(capacity=10, per_key=4, bulk_capacity=2, bulk_share=0.1)
    models = _SlowVad(0.02)
    bulk = GatedModels(models, gate, "flood", bulk=lambda: True)  # type: ignore[arg-type]
    live = GatedModels(models, gate, "live")  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()

    for _ in range(3):  # alone: full speed, nothing charged
        await bulk.vad(None, None)
    assert gate.bulk_delay(loop.time()) == 0.0

    await live.vad(None, None)  # a live session is about
    t0 = loop.time()
    for _ in range(3):
        await bulk.vad(None, None)
    # each request (>= 20 ms) held the lane >= 200 ms: the third could not start before 400 ms
    assert loop.time() - t0 >= 0.4
    assert gate.bulk_delay(loop.time()) > 0.0  # and the next one waits too


async def test_a_reader_held_back_by_a_full_inbox_is_not_idle() -> None:
    svc = service(idle_timeout_s=0.1)
    stream = _Stream(last_audio=0.0)
    inbox: Inbox[Inboxed] = Inbox(1)  # nobody drains it: the session is behind its audio

    async def audio() -> AsyncIterator[pb.ClientMessage]:
        for _ in range(3):
            yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
        await asyncio.Event().wait()  # then the client goes quiet, its stream open

    reader = asyncio.create_task(svc._read(audio(), inbox, Outbox(), stream), name="reader")
    watch = asyncio.create_task(svc._watch_idle(stream, 0.1), name="watch")
    await asyncio.sleep(0.4)  # four idle timeouts, all of them with the reader waiting for room
    assert stream.held and not watch.done()
    await inbox.get()  # the session takes a chunk: the reader goes on, and the wait did not count as quiet
    await asyncio.sleep(0.02)
    assert not watch.done()
    await inbox.get()  # the rest; then the client is quiet for real
    await asyncio.wait_for(watch, 1.0)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)


async def test_starts_beyond_the_rate_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.api.session_service as service_module

    monkeypatch.setattr(service_module, "RATE_LIMITED_DELAY_S", 0.0)
    svc = service(clock=lambda: 100.0, starts_per_connection_per_s=1.0, starts_per_s=3.0)  # time stands still
    first = [codes(await converse(svc, one_second_then_end())) for _ in range(3)]
    assert first == [[], [], ["rate_limited"]]  # a burst of 2 s worth, then refused
    other = [codes(await converse(svc, one_second_then_end(), peer=f"ipv4:127.0.0.1:{p}")) for p in range(5)]
    assert other == [[]] * 5  # the server-wide bucket is empty now, but a quiet connection still gets in
    again = [codes(await converse(svc, one_second_then_end(), peer=f"ipv4:127.0.0.1:{p}")) for p in range(2)]
    assert again == [["rate_limited"]] * 2  # ... once: they are not quiet any more
    assert svc.telemetry.refusals.labels(reason="rate_limited")._value.get() == 3
    assert svc.active == 0
