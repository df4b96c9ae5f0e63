"""Hostile clients against a real `duet serve` (and the real tritonserver): nothing they do may leak a session,
hold a slot, or get past a documented bound. Every check reads the server's own metrics endpoint or its events.

The server here runs with a small session limit, a short idle timeout and burst, and a fixed metrics port.
"""

from __future__ import annotations

import asyncio
import random
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from duet.proto import session_pb2 as pb
from duet.proto import session_pb2_grpc as pb_grpc
from orchestrator.models.launcher import free_port
from orchestrator.telemetry import metrics_by_key
from tests.e2e.conftest import DuetServer, persona_folder, start_server, stop_server, wait_for

MAX_SESSIONS = 8
IDLE_S = 3.0
BURST_S = 1.0
CHUNK = b"\x00" * 640  # 20 ms of silence
CHURN_SESSIONS = 2000
CHURN_CLIENTS = 4


class Server:
    def __init__(self, proc: DuetServer, metrics_url: str) -> None:
        self.proc = proc
        self.address = proc.address
        self.metrics_url = metrics_url

    def metrics(self) -> dict[str, float]:
        """name{label=value,...} -> value, from the orchestrator's /metrics."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:  # loopback only
            return metrics_by_key(resp.read().decode())

    def open_sessions(self) -> float:
        return self.metrics()["duet_sessions_open"]

    def total(self, prefix: str) -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))


@pytest.fixture(scope="module")
def abuse(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    mport = free_port()
    env = {
        "DUET_SERVER__MAX_SESSIONS": str(MAX_SESSIONS),
        "DUET_SERVER__IDLE_TIMEOUT_S": str(IDLE_S),
        "DUET_SERVER__AUDIO_BURST_S": str(BURST_S),
        "DUET_SERVER__MAX_TEXT_CHARS": "2000",
        "DUET_METRICS__PORT": str(mport),
        # the churn below opens sessions as fast as it can from 4 connections: no start-rate limit here
        "DUET_SERVER__STARTS_PER_S": "1000000",
        "DUET_SERVER__STARTS_PER_CONNECTION_PER_S": "1000000",
    }
    proc = start_server(triton.grpc_url, free_port(), persona_folder(tmp_path_factory.mktemp("personas")), env)
    try:
        yield Server(proc, f"http://127.0.0.1:{mport}/metrics")
    finally:
        stop_server(proc)


def start(**options: str) -> pb.ClientMessage:
    fmt = pb.AudioFormat(sample_rate=16000, channels=1, sample_width=2, encoding="pcm_s16le")
    return pb.ClientMessage(start=pb.Start(audio_format=fmt, options=options))


def audio(pcm: bytes = CHUNK) -> pb.ClientMessage:
    return pb.ClientMessage(audio=pb.AudioChunk(pcm=pcm))


END = pb.ClientMessage(control=pb.Control(kind=pb.Control.END))


async def exchange(server: Server, messages: list[pb.ClientMessage]) -> list[pb.ServerMessage]:
    """Send `messages` as fast as gRPC takes them and read every reply until the server closes the stream."""
    async with grpc.aio.insecure_channel(server.address) as ch:
        stub = pb_grpc.SessionStub(ch)  # type: ignore[no-untyped-call]

        async def requests() -> AsyncIterator[pb.ClientMessage]:
            for m in messages:
                yield m

        call = stub.Converse(requests())
        return [m async for m in call]  # the call's own deadline is the test's timeout below


def errors(out: list[pb.ServerMessage]) -> list[tuple[str, bool]]:
    return [(m.error.code, m.error.fatal) for m in out if m.WhichOneof("kind") == "error"]


def events(out: list[pb.ServerMessage]) -> list[dict[str, Any]]:
    import json

    return [json.loads(m.event.json) for m in out if m.WhichOneof("kind") == "event"]


def wait_all_closed(server: Server, timeout: float = 30.0) -> None:
    wait_for(lambda: server.open_sessions() == 0, timeout, f"every session to end\n{server.proc.log()}")


async def test_open_and_cancel_churn_leaves_no_session(abuse: Server) -> None:
    modes = ("conversation", "perceive", "floor", "acoustic")
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.3) if i % 20 == 0 else rng.uniform(0, 0.03) for i in range(CHURN_SESSIONS)]
    before = abuse.metrics()
    outcomes: dict[str, int] = {}

    async def client(k: int) -> None:
        async with grpc.aio.insecure_channel(abuse.address) as ch:
            stub = pb_grpc.SessionStub(ch)  # type: ignore[no-untyped-call]
            for i in range(k, CHURN_SESSIONS, CHURN_CLIENTS):
                call = stub.Converse()
                try:
                    await call.write(start(mode=modes[i % len(modes)]))
                    for _ in range(i % 6):
                        await call.write(audio())
                    first = await asyncio.wait_for(call.read(), 5.0) if i % 3 == 0 else None
                    await asyncio.sleep(delays[i])
                    kind = first.WhichOneof("kind") if first is not None else "unread"
                    key = first.error.code if first is not None and kind == "error" else kind
                    outcomes[key] = outcomes.get(key, 0) + 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code().name] = outcomes.get(exc.code().name, 0) + 1
                finally:
                    call.cancel()

    await asyncio.wait_for(asyncio.gather(*(client(k) for k in range(CHURN_CLIENTS))), 600)
    wait_all_closed(abuse)
    after = abuse.metrics()
    started = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith("duet_sessions_total"))
    ended = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith("duet_sessions_ended_total"))
    assert started > CHURN_SESSIONS / 2, outcomes  # most were real sessions, not refusals
    assert ended == started and after["duet_sessions_open"] == 0, (started, ended, outcomes)
    assert not abuse.proc.logged("did not stop") and not abuse.proc.logged("did not close"), abuse.proc.log()
    # and the server still serves: a whole session, not `server_busy`
    out = await asyncio.wait_for(exchange(abuse, [start(mode="acoustic"), *[audio()] * 50, END]), 60)
    assert errors(out) == [] and events(out)[-1]["type"] == "session_ended"


async def test_idle_session_ends_with_idle_timeout(abuse: Server) -> None:
    async with grpc.aio.insecure_channel(abuse.address) as ch:
        call = pb_grpc.SessionStub(ch).Converse()  # type: ignore[no-untyped-call]
        await call.write(start(mode="conversation"))
        await call.write(pb.ClientMessage(text=pb.TextInput(text="typing is not talking")))
        out = [m async for m in call]  # the client sends nothing more and never closes: the server ends it
    assert errors(out) == [("idle_timeout", True)]
    wait_all_closed(abuse)
    assert abuse.total("duet_sessions_ended_total{reason=idle_timeout}") >= 1


async def test_audio_faster_than_real_time_is_paced_in_live_modes_only(abuse: Server) -> None:
    seconds = 6
    paced_before = abuse.total("duet_paced_sessions_total")
    delay_before = abuse.total("duet_pacing_delay_seconds_total")
    flood = [*[audio()] * (50 * seconds), END]
    live = await asyncio.wait_for(exchange(abuse, [start(mode="perceive"), *flood]), 120)
    assert ("audio_too_fast", False) in errors(live)
    assert events(live)[-1] == {"type": "session_ended", "t": float(seconds)}  # all of it, on the audio clock
    assert abuse.total("duet_paced_sessions_total") == paced_before + 1
    # the reader waited for the audio beyond the burst (less what reading and analysing took anyway)
    assert abuse.total("duet_pacing_delay_seconds_total") - delay_before >= seconds - BURST_S - 2.0
    fast = await asyncio.wait_for(exchange(abuse, [start(mode="acoustic"), *flood]), 120)
    assert errors(fast) == [] and events(fast)[-1]["t"] == float(seconds)  # `--speed 0` stays unpaced
    assert abuse.total("duet_paced_sessions_total") == paced_before + 1


async def test_session_limit_refuses_with_server_busy(abuse: Server) -> None:
    wait_all_closed(abuse)
    busy_before = abuse.total("duet_refusals_total{reason=server_busy}")
    async with grpc.aio.insecure_channel(abuse.address) as ch:
        stub = pb_grpc.SessionStub(ch)  # type: ignore[no-untyped-call]
        holders = []
        for _ in range(MAX_SESSIONS):
            call = stub.Converse()
            await call.write(start(mode="acoustic"))
            first = await asyncio.wait_for(call.read(), 10)
            assert first.event.type == "session_started"
            holders.append(call)
        refused = await asyncio.wait_for(exchange(abuse, [start(mode="acoustic"), END]), 10)
        assert errors(refused) == [("server_busy", True)]
        for call in holders:
            call.cancel()
    wait_all_closed(abuse)
    assert abuse.total("duet_refusals_total{reason=server_busy}") == busy_before + 1
    out = await asyncio.wait_for(exchange(abuse, [start(mode="acoustic"), audio(), END]), 30)
    assert errors(out) == []  # the slots came back


async def test_second_start_is_a_typed_protocol_error(abuse: Server) -> None:
    out = await asyncio.wait_for(exchange(abuse, [start(mode="floor"), audio(), start(mode="floor"), END]), 30)
    assert errors(out) == [("protocol", True)]
    wait_all_closed(abuse)


async def test_oversized_text_is_refused_and_the_session_goes_on(abuse: Server) -> None:
    huge = pb.ClientMessage(text=pb.TextInput(text="so " * 330_000))  # ~1 MB, under gRPC's message limit
    out = await asyncio.wait_for(exchange(abuse, [start(mode="floor"), huge, *[audio()] * 25, END]), 60)
    assert errors(out) == [("text_too_long", False)]
    assert events(out)[-1] == {"type": "session_ended", "t": 0.5}
    assert abuse.total("duet_drops_total{kind=text}") >= 1


@pytest.mark.parametrize(
    "options",
    [
        {"floor.eval_interval_ms": "-1"},
        {"floor.barge_in_ms": "-1"},
        {"floor.speech_start_ms": "1e20"},
        {"video": "true", "video.face": "../../etc/passwd"},
    ],
)
async def test_out_of_range_options_are_refused(abuse: Server, options: dict[str, str]) -> None:
    out = await asyncio.wait_for(exchange(abuse, [start(mode="conversation", **options), END]), 30)
    assert [code for code, _ in errors(out)] == ["bad_option"] and len(out) == 1


async def test_bad_frame_messages_carry_no_internals(abuse: Server) -> None:
    frames = [pb.ClientMessage(video=pb.VideoFrame(jpeg=b"not an image at all", t=0.1))]
    # audio after the frame keeps the session open while the frame is analysed
    out = await asyncio.wait_for(exchange(abuse, [start(mode="perceive"), *frames, *[audio()] * 100, END]), 60)
    # every error of a session travels as the stream's typed Error message, with the session time it happened at
    bad = [m.error for m in out if m.WhichOneof("kind") == "error" and m.error.code == "bad_frame"]
    assert bad, out
    assert all(not e.fatal and 0.0 <= e.t <= 2.0 for e in bad), bad
    assert all("0x" not in e.message and "object at" not in e.message for e in bad), bad


def test_metrics_endpoint_exports_the_documented_series(abuse: Server) -> None:
    from orchestrator.telemetry import STAGES

    m = abuse.metrics()
    for stage in STAGES:
        assert f"duet_stage_latency_seconds_count{{stage={stage}}}" in m
    for name in ("duet_sessions_open", "duet_paced_sessions_total", "duet_event_loop_lag_seconds_count"):
        assert name in m
    assert m["duet_event_loop_lag_seconds_count"] > 0  # the loop is being timed
