"""Graceful drain: the pure state machine on virtual time, the session service refusing new sessions and ending
the rest, and `drain_sessions` driving both as `duet serve` does on SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from duet.proto import session_pb2 as pb
from orchestrator.api.drain import ENDING_S, Drain, Phase, Step
from orchestrator.api.session_service import SessionService
from orchestrator.app import Running, drain_sessions
from orchestrator.config import Settings, load_settings
from orchestrator.errors import BadOption, Draining
from tests.unit.test_session_service import codes, converse, service, start_message

# ---- the state machine (virtual time) ----------------------------------------------------------------------


def test_serving_until_the_first_signal() -> None:
    d = Drain(timeout_s=30.0)
    assert not d.draining and d.phase is Phase.SERVING
    assert d.step(100.0, live=5) is Step.WAIT  # nothing to do while serving, however many sessions
    assert d.signal(100.0) is Step.WAIT
    assert d.draining and d.phase is Phase.DRAINING and d.began == 100.0


def test_exits_as_soon_as_the_last_session_ended() -> None:
    d = Drain(timeout_s=30.0)
    d.signal(0.0)
    assert [d.step(t, live) for t, live in ((1.0, 3), (5.0, 2), (9.0, 1))] == [Step.WAIT] * 3
    assert d.step(12.5, live=0) is Step.EXIT
    assert d.phase is Phase.STOPPED and not d.forced
    assert d.step(13.0, live=0) is Step.EXIT  # and stays stopped


def test_no_live_session_exits_at_once() -> None:
    d = Drain(timeout_s=30.0)
    d.signal(7.0)
    assert d.step(7.0, live=0) is Step.EXIT


def test_the_rest_are_ended_once_when_the_drain_time_passes() -> None:
    d = Drain(timeout_s=30.0)
    d.signal(10.0)
    assert d.step(39.99, live=2) is Step.WAIT
    assert d.step(40.0, live=2) is Step.END_REMAINING
    assert d.phase is Phase.ENDING
    # told once: later steps wait for them to end (they release their slots as they go)
    assert d.step(40.5, live=2) is Step.WAIT
    assert d.step(41.0, live=1) is Step.WAIT
    assert d.step(41.2, live=0) is Step.EXIT


def test_a_session_that_will_not_end_does_not_hold_the_process() -> None:
    d = Drain(timeout_s=1.0)
    d.signal(0.0)
    assert d.step(1.0, live=1) is Step.END_REMAINING
    assert d.step(1.0 + ENDING_S - 0.01, live=1) is Step.WAIT
    assert d.step(1.0 + ENDING_S, live=1) is Step.EXIT


def test_zero_drain_time_ends_live_sessions_at_once() -> None:
    d = Drain(timeout_s=0.0)
    d.signal(3.0)
    assert d.step(3.0, live=1) is Step.END_REMAINING


@pytest.mark.parametrize("when", ["draining", "ending"])
def test_a_second_signal_stops_at_once(when: str) -> None:
    d = Drain(timeout_s=30.0)
    d.signal(0.0)
    if when == "ending":
        assert d.step(30.0, live=4) is Step.END_REMAINING
    assert d.signal(31.0) is Step.EXIT
    assert d.forced and d.phase is Phase.STOPPED
    assert d.step(31.0, live=4) is Step.EXIT  # whatever is still live


def test_wait_never_sleeps_past_the_deadline() -> None:
    d = Drain(timeout_s=1.0)
    assert d.wait_s(0.0, 0.2) == 0.2  # serving
    d.signal(0.0)
    assert d.wait_s(0.0, 0.2) == 0.2
    assert d.wait_s(0.9, 0.2) == pytest.approx(0.1)
    assert d.wait_s(5.0, 0.2) == 0.0


def test_drain_timeout_setting() -> None:
    assert Settings().server.drain_timeout_s == 30.0
    settings = load_settings(env={"DUET_SERVER__DRAIN_TIMEOUT_S": "120"})
    assert settings.server.drain_timeout_s == 120.0
    with pytest.raises(BadOption, match="drain_timeout_s"):
        load_settings(env={"DUET_SERVER__DRAIN_TIMEOUT_S": "-1"})


# ---- the session service while draining --------------------------------------------------------------------


async def held_open(started: asyncio.Event, go_on: asyncio.Event) -> AsyncIterator[pb.ClientMessage]:
    """A client that starts, sends audio until told to stop, then ends its stream."""
    yield start_message()
    started.set()
    while not go_on.is_set():
        yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
        await asyncio.sleep(0.02)
    yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))


def _events(out: list[pb.ServerMessage]) -> list[str]:
    import json

    return [json.loads(m.event.json)["type"] for m in out if m.WhichOneof("kind") == "event"]


async def test_draining_refuses_new_sessions_and_lets_live_ones_finish() -> None:
    svc = service()
    svc.drain = Drain(timeout_s=30.0)
    started, go_on = asyncio.Event(), asyncio.Event()
    live = asyncio.create_task(converse(svc, held_open(started, go_on)), name="live-client")
    await asyncio.wait_for(started.wait(), 5.0)
    await asyncio.sleep(0.1)
    assert svc.active == 1

    svc.drain.signal(0.0)
    assert codes(await converse(svc, _one_start())) == ["draining"]  # fatal, before any slot is taken
    with pytest.raises(Draining):
        svc.check_capacity()  # (browser calls and renders ask the same question)
    assert svc.active == 1 and not live.done()  # the live session goes on

    go_on.set()  # ... until its client ends it, as usual
    out = await asyncio.wait_for(live, 5.0)
    assert codes(out) == [] and _events(out)[-1] == "session_ended"
    assert svc.active == 0


async def _one_start() -> AsyncIterator[pb.ClientMessage]:
    yield start_message()


async def test_end_all_ends_each_live_session_with_a_typed_error() -> None:
    svc = service()
    started, never = asyncio.Event(), asyncio.Event()
    live = asyncio.create_task(converse(svc, held_open(started, never)), name="live-client")
    await asyncio.wait_for(started.wait(), 5.0)
    await asyncio.sleep(0.1)
    assert await svc.end_all("error", Draining("the drain time passed")) == 1
    out = await asyncio.wait_for(live, 5.0)
    fatal = [m.error for m in out if m.WhichOneof("kind") == "error"]
    assert [(e.code, e.fatal) for e in fatal] == [("draining", True)]
    assert svc.active == 0


# ---- `drain_sessions`, as `duet serve` runs it after SIGTERM -------------------------------------------------


def _running(svc: object) -> Running:
    return Running(address="127.0.0.1:0", triton_url="", metrics_url=None, sessions=svc)  # type: ignore[arg-type]


async def test_drain_waits_for_live_sessions_then_returns() -> None:
    svc = service()
    drain = svc.drain = Drain(timeout_s=30.0)
    started, go_on = asyncio.Event(), asyncio.Event()
    live = asyncio.create_task(converse(svc, held_open(started, go_on)), name="live-client")
    await asyncio.wait_for(started.wait(), 5.0)
    await asyncio.sleep(0.1)
    signals = asyncio.Event()
    signals.set()  # SIGTERM
    loop = asyncio.get_running_loop()
    draining = asyncio.create_task(drain_sessions(drain, _running(svc), signals, loop.time, 0.05), name="drain")
    await asyncio.sleep(0.3)
    assert drain.draining and not draining.done() and not live.done()
    go_on.set()
    await asyncio.wait_for(draining, 5.0)
    out = await asyncio.wait_for(live, 5.0)
    assert codes(out) == [] and svc.active == 0 and not drain.forced


async def test_drain_ends_the_rest_after_the_drain_time() -> None:
    svc = service()
    drain = svc.drain = Drain(timeout_s=0.3)
    started, never = asyncio.Event(), asyncio.Event()
    live = asyncio.create_task(converse(svc, held_open(started, never)), name="live-client")
    await asyncio.wait_for(started.wait(), 5.0)
    signals = asyncio.Event()
    signals.set()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(drain_sessions(drain, _running(svc), signals, loop.time, 0.05), 10.0)
    assert loop.time() - began >= 0.3  # not before the drain time
    out = await asyncio.wait_for(live, 5.0)
    assert codes(out) == ["draining"] and svc.active == 0


async def test_a_second_signal_ends_the_drain_at_once() -> None:
    svc = service()
    drain = svc.drain = Drain(timeout_s=30.0)
    started, never = asyncio.Event(), asyncio.Event()
    live = asyncio.create_task(converse(svc, held_open(started, never)), name="live-client")
    await asyncio.wait_for(started.wait(), 5.0)
    signals = asyncio.Event()
    signals.set()
    loop = asyncio.get_running_loop()
    draining = asyncio.create_task(drain_sessions(drain, _running(svc), signals, loop.time, 0.05), name="drain")
    await asyncio.sleep(0.2)
    assert not draining.done()
    signals.set()  # SIGTERM again (or Ctrl-C twice)
    await asyncio.wait_for(draining, 1.0)
    assert drain.forced and svc.active == 1  # the live one is left to the server's stop, which cancels it
    await svc.close()
    await asyncio.wait_for(live, 5.0)
    assert svc.active == 0


# ---- the conversation's shutdown reason when the server ends its session -------------------------------------


class FakeRecorder:
    """What a joined conversation records: here only how it ended."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def start(self) -> None:
        pass

    def event(self, event: object) -> None:
        pass

    async def ended(self, reason: str) -> None:
        self.reasons.append(reason)


@dataclasses.dataclass
class FakeJoined:
    recorder: FakeRecorder
    max_duration_s: float = 600.0


async def _joined_session(svc: SessionService) -> tuple[asyncio.Task[None], FakeRecorder]:
    from orchestrator.api.options import parse_options
    from orchestrator.api.outbox import Outbox

    recorder = FakeRecorder()
    started, never = asyncio.Event(), asyncio.Event()
    requests = held_open(started, never)
    await anext(requests)  # (the start message: the service has read it before `_session`)
    spec = parse_options(svc.settings, {"mode": "acoustic"})
    outbox = Outbox(events=64, audio=8, video=1)
    joined: Any = FakeJoined(recorder)
    svc._take_slot()
    task = asyncio.create_task(svc._session("conv_1", spec, requests, outbox, joined), name="joined-session")
    svc._sessions.add(task)  # (as `Converse` does: the server's stop cancels what it owns)
    task.add_done_callback(svc._sessions.discard)
    for _ in range(100):
        if "conv_1" in svc._live:
            break
        await asyncio.sleep(0.01)
    assert "conv_1" in svc._live
    return task, recorder


@pytest.mark.parametrize("how", ["drain_time_passed", "server_stopped"])
async def test_a_conversation_the_server_ends_has_shutdown_reason_error(how: str) -> None:
    svc = service()
    task, recorder = await _joined_session(svc)
    if how == "drain_time_passed":
        assert await svc.end_all("error", Draining("the drain time passed")) == 1
        await asyncio.wait_for(task, 5.0)
    else:  # a second signal: the server's stop cancels what is left (not the participant leaving)
        await svc.close()
    assert recorder.reasons == ["error"] and svc.active == 0
