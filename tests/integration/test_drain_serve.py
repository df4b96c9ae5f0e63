"""Probes and graceful drain of a real `duet serve` process (the CLI, with its control plane on a SQLite store) in
front of a real tritonserver holding the floor models; sessions are `mode=acoustic` over the real gRPC port.

SIGTERM: readiness turns 503 (naming `draining`), gRPC health NOT_SERVING, a new session is refused with
`draining`, while the live session goes on being served; the process exits 0 once it ended. A session still live
when the drain time passes is ended with a fatal `draining` error; a second signal stops at once."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from duet.proto import session_pb2 as pb
from duet.proto import session_pb2_grpc as pb_grpc
from orchestrator.config import TritonSettings
from orchestrator.models.launcher import EmbeddedTriton, free_port
from tests.conftest import SAMPLE, read_wav

pytestmark = pytest.mark.integration

MODELS = ("vad", "turn", "prosody", "floor_fusion", "floor")
DUET = str(Path(sys.executable).parent / "duet")
BOUND_S = 60.0  # how long the outside world may take on a slow, shared CPU (a bound, not a timed assertion)
CHUNK = 320  # 20 ms at 16 kHz


@pytest.fixture(scope="module")
def floor_triton() -> Iterator[EmbeddedTriton]:
    with EmbeddedTriton(TritonSettings(models=MODELS)) as server:
        yield server


class Served:
    """A `duet serve` child process; its output is read all the time (a full pipe would stall it) and kept."""

    def __init__(self, triton_url: str, store: Path, drain_timeout_s: float) -> None:
        self.port = free_port()
        env = dict(
            os.environ,
            DUET_TRITON__URL=triton_url,
            DUET_TRITON__MODELS=",".join(MODELS),
            DUET_API__HTTP_PORT="0",
            DUET_STORE__URL=str(store),
            DUET_SERVER__DRAIN_TIMEOUT_S=str(drain_timeout_s),
        )
        self.proc = subprocess.Popen(
            [DUET, "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: collections.deque[str] = collections.deque(maxlen=10_000)
        self.http_url = ""
        self._ready = threading.Event()
        threading.Thread(target=self._read, name=f"duet-serve-{self.proc.pid}", daemon=True).start()
        if not self._ready.wait(BOUND_S) or self.proc.poll() is not None:
            self.proc.kill()
            raise RuntimeError(f"duet serve did not start:\n{self.log()}")
        self.address = f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "control plane on " in line:
                self.http_url = line.split("control plane on ", 1)[1].split("/v1", 1)[0].strip()
            if line.startswith("duet: serving sessions on"):  # (the CLI's line, after its control plane line)
                self._ready.set()
        self._ready.set()

    def log(self) -> str:
        return "\n".join(list(self.lines)[-80:])

    def signal(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    async def exited(self, within: float = BOUND_S) -> int:
        code = await asyncio.to_thread(self.proc.wait, within)
        return int(code)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def serve(floor_triton: EmbeddedTriton, tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def start(drain_timeout_s: float) -> Served:
        server = Served(floor_triton.grpc_url, tmp_path / f"store-{len(started)}" / "duet.db", drain_timeout_s)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def start_message() -> pb.ClientMessage:
    fmt = pb.AudioFormat(sample_rate=16000, channels=1, sample_width=2, encoding="pcm_s16le")
    return pb.ClientMessage(start=pb.Start(audio_format=fmt, options={"mode": "acoustic"}))


class Session:
    """A raw gRPC session: silence at real time until `speak()`, then the recorded user, then END (or silence
    for ever with `endless`). Every message from the server is kept with the wall time it came."""

    def __init__(self, channel: grpc.aio.Channel, endless: bool = False) -> None:
        self.endless = endless
        self.speaking = asyncio.Event()
        self.messages: list[tuple[float, pb.ServerMessage]] = []
        self.started = asyncio.Event()
        self.call = pb_grpc.SessionStub(channel).Converse(self._requests())
        self.reader = asyncio.create_task(self._read(), name="test-session-reader")

    async def _requests(self) -> AsyncIterator[pb.ClientMessage]:
        yield start_message()
        loop = asyncio.get_running_loop()
        t0, sent = loop.time(), 0
        silence = bytes(2 * CHUNK)
        speech = read_wav(SAMPLE).astype("<i2").tobytes()
        while self.endless or not self.speaking.is_set():
            await asyncio.sleep(max(t0 + sent * 0.02 - loop.time(), 0))
            yield pb.ClientMessage(audio=pb.AudioChunk(pcm=silence))
            sent += 1
        for i in range(0, len(speech), 2 * CHUNK):
            await asyncio.sleep(max(t0 + sent * 0.02 - loop.time(), 0))
            yield pb.ClientMessage(audio=pb.AudioChunk(pcm=speech[i : i + 2 * CHUNK]))
            sent += 1
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))

    async def _read(self) -> None:
        try:
            async for msg in self.call:
                self.messages.append((time.monotonic(), msg))
                if self.events("session_started"):
                    self.started.set()
        except grpc.aio.AioRpcError:
            pass  # the server went away: what came before is kept

    def events(self, kind: str | None = None, after: float = float("-inf")) -> list[dict[str, Any]]:
        found = []
        for at, m in self.messages:
            if m.WhichOneof("kind") == "event" and at > after:
                event = json.loads(m.event.json)
                if kind is None or event["type"] == kind:
                    found.append(event)
        return found

    def errors(self) -> list[tuple[str, bool]]:
        return [(m.error.code, m.error.fatal) for _, m in self.messages if m.WhichOneof("kind") == "error"]

    async def done(self, within: float = BOUND_S) -> None:
        await asyncio.wait_for(self.reader, within)


async def eventually(check: Any, what: str, within: float = BOUND_S) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def health(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int((await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)).status)


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as r:
        return r.status, await r.json()


async def test_sigterm_drains_then_exits_when_the_live_session_ends(serve: Any) -> None:
    server: Served = serve(drain_timeout_s=120.0)
    async with grpc.aio.insecure_channel(server.address) as channel, aiohttp.ClientSession() as http:
        # serving: both probes say so (no key needed), gRPC health too
        status, body = await get(http, f"{server.http_url}/v1/health/ready")
        every_check_ok = {name: {"ok": True} for name in ("triton", "store", "draining")}
        assert (status, body) == (200, {"ready": True, "checks": every_check_ok})
        assert await health(channel, "") == health_pb2.HealthCheckResponse.SERVING
        assert await health(channel, "duet.v1.Session") == health_pb2.HealthCheckResponse.SERVING

        live = Session(channel)
        await asyncio.wait_for(live.started.wait(), BOUND_S)
        server.signal()
        signalled = time.monotonic()

        async def not_ready() -> bool:
            return (await get(http, f"{server.http_url}/v1/health/ready"))[0] == 503

        await eventually(not_ready, "readiness to fail after SIGTERM")
        status, body = await get(http, f"{server.http_url}/v1/health/ready")
        assert body["ready"] is False and body["checks"]["draining"]["ok"] is False
        assert body["checks"]["triton"] == {"ok": True} and body["checks"]["store"] == {"ok": True}
        assert await get(http, f"{server.http_url}/v1/health/live") == (200, {"live": True})
        for service in ("", "duet.v1.Session"):
            assert await health(channel, service) == health_pb2.HealthCheckResponse.NOT_SERVING

        refused = Session(channel)
        await refused.done()
        assert refused.errors() == [("draining", True)] and not refused.events("session_started")

        # the live session is still served: the user speaks now, after SIGTERM, and the floor answers
        assert server.proc.poll() is None
        live.speaking.set()
        await live.done(BOUND_S + 30)
        assert live.errors() == []
        assert live.events("speech_start", after=signalled), live.events()
        assert live.events()[-1]["type"] == "session_ended"
        assert await server.exited() == 0, server.log()
    assert any("draining" in line for line in server.lines)


async def test_a_session_past_the_drain_time_is_ended_with_draining(serve: Any) -> None:
    server: Served = serve(drain_timeout_s=1.0)
    async with grpc.aio.insecure_channel(server.address) as channel:
        live = Session(channel, endless=True)
        await asyncio.wait_for(live.started.wait(), BOUND_S)
        signalled = time.monotonic()
        server.signal()
        await live.done()
        assert live.errors() == [("draining", True)], live.messages[-3:]
        ended_at = max(at for at, m in live.messages if m.WhichOneof("kind") == "error")
        assert ended_at - signalled >= 1.0  # not before the drain time
        assert await server.exited() == 0, server.log()


async def test_a_second_signal_stops_at_once(serve: Any) -> None:
    server: Served = serve(drain_timeout_s=600.0)
    async with grpc.aio.insecure_channel(server.address) as channel:
        live = Session(channel, endless=True)
        await asyncio.wait_for(live.started.wait(), BOUND_S)
        server.signal()

        async def draining() -> bool:
            return await health(channel, "") == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(draining, "gRPC health to say NOT_SERVING")
        server.signal()  # far inside the 600 s drain time
        assert await server.exited(BOUND_S) == 0, server.log()
        await live.done()
    assert any("second signal" in line for line in server.lines), server.log()
