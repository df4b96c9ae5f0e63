"""`TritonModels` over several endpoints, with fake Triton clients in place of the gRPC channels: where calls go,
which failures are sent again to another endpoint (and which never are), session affinity for LLM streams, the
health checks, and a dead stub on one server sending calls to the other. (tests/integration/test_endpoints.py
does it with real tritonservers.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from orchestrator.errors import ModelUnavailable
from orchestrator.models.endpoints import PoolPolicy
from orchestrator.models.ports import ChatMessage, LlmRequest
from orchestrator.models.triton import EndpointDown, ModelHealer, TritonModels

A, B = "a:8001", "b:8001"
WINDOW = np.zeros(576, np.int16)
STATE = np.zeros((2, 128), np.float32)


def refused() -> InferenceServerException:
    return InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")


class StreamCut(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def __str__(self) -> str:
        return "Stream removed (Socket closed)"


@dataclass
class Param:
    bool_param: bool


@dataclass
class Response:
    parameters: dict[str, Param]


@dataclass
class Result:
    arrays: dict[str, Any]
    final: bool = False

    def as_numpy(self, name: str) -> Any:
        return self.arrays.get(name)

    def get_response(self) -> Response:
        return Response({"triton_final_response": Param(self.final)})


@dataclass
class FakeTriton:
    """What `TritonModels` asks of a tritonclient aio client, scripted."""

    url: str
    down: bool = False  # refuse every call and check
    ready: bool = True
    fail_with: InferenceServerException | None = None  # the next unary call fails so
    pieces: tuple[str, ...] = ("Hel", "lo", "!")
    cut_after: int | None = None  # a stream is cut (UNAVAILABLE) after this many pieces
    hold: asyncio.Event | None = None  # unary calls wait for it (to build up outstanding requests)
    calls: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    checks: int = 0  # ServerReady calls

    async def infer(self, model: str, inputs: list[Any], outputs: Any = None, priority: int = 0) -> Result:
        self.calls.append(model)
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            raise refused()
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc
        return Result({"PROB": np.array([[0.5]], np.float32), "STATE_OUT": np.zeros((1, 2, 128), np.float32)})

    def stream_infer(self, inputs_iterator: AsyncIterator[dict[str, Any]]) -> Any:
        fake = self

        class Stream:
            def __init__(self) -> None:
                self.sent = 0
                self.started = False

            def __aiter__(self) -> Stream:
                return self

            async def __anext__(self) -> tuple[Result, None]:
                if not self.started:
                    self.started = True
                    request = await anext(inputs_iterator)
                    fake.calls.append(request["model_name"])
                    fake.request_ids.append(request["request_id"])
                if self.sent > len(fake.pieces):  # Triton closes the stream after its final response
                    raise StopAsyncIteration
                if fake.down or (fake.cut_after is not None and self.sent >= fake.cut_after):
                    raise StreamCut()
                if self.sent == len(fake.pieces):
                    self.sent += 1
                    return Result({}, final=True), None
                piece = fake.pieces[self.sent]
                self.sent += 1
                return Result({"TEXT": np.array([[piece.encode()]], dtype=np.object_)}), None

            def cancel(self) -> bool:
                return True

        return Stream()

    async def is_server_ready(self, client_timeout: float | None = None) -> bool:
        self.checks += 1
        if self.down:
            raise refused()
        return self.ready

    async def is_model_ready(self, model: str) -> bool:
        return self.ready

    async def get_model_repository_index(self, as_json: bool = False) -> dict[str, Any]:
        return {"models": []}

    async def unload_model(self, model: str) -> None:
        self.calls.append(f"unload {model}")

    async def load_model(self, model: str) -> None:
        self.calls.append(f"load {model}")

    async def close(self) -> None:
        pass


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[TritonModels, FakeTriton, FakeTriton]]:
    models = TritonModels([A, B], timeout_s=5.0, policy=PoolPolicy(check_interval_s=0.02, failed_checks_to_drop=2))
    await models.close()  # the real channels go: fakes take their place
    a, b = FakeTriton(A), FakeTriton(B)
    for e, fake in zip(models._endpoints, (a, b), strict=True):
        e.client = fake
    yield models, a, b


def ask(request_id: str = "") -> LlmRequest:
    return LlmRequest(messages=(ChatMessage("user", "hi"),), request_id=request_id)


async def text(models: TritonModels, request: LlmRequest) -> str:
    return "".join([p async for p in models.generate(request)])


async def test_one_url_or_several(fakes: Any) -> None:
    one = TritonModels("h:8001")
    several = TritonModels("h:8001, i:8001,h:8001")
    try:
        assert one.urls == ("h:8001",) and several.urls == ("h:8001", "i:8001")
        assert several.at("i:8001").urls == ("i:8001",)
        with pytest.raises(ValueError, match="a healer heals one"):
            ModelHealer(several)
    finally:
        await one.close()
        await several.close()


async def test_concurrent_calls_spread_over_the_endpoints(fakes: Any) -> None:
    models, a, b = fakes
    a.hold = b.hold = hold = asyncio.Event()
    calls = [asyncio.create_task(models.vad(WINDOW, STATE)) for _ in range(10)]
    await asyncio.sleep(0.01)
    assert [models.pool.outstanding(u) for u in (A, B)] == [5, 5]
    hold.set()
    await asyncio.gather(*calls)
    assert len(a.calls) == len(b.calls) == 5
    assert [models.pool.outstanding(u) for u in (A, B)] == [0, 0]


async def test_a_unary_call_refused_by_one_endpoint_is_answered_by_the_other(fakes: Any) -> None:
    models, a, b = fakes
    a.down = True
    for _ in range(4):
        p, _ = await models.vad(WINDOW, STATE)
        assert p == 0.5
    assert len(a.calls) == 1  # the first call found it down; it left rotation
    assert len(b.calls) == 4
    assert not models.pool.up(A)
    (sa,) = [s for s in models.endpoint_states() if s.url == A]
    assert (sa.drops, sa.retries) == (1, 1)


async def test_with_one_endpoint_a_transport_error_fails_the_call_and_the_next_is_tried(fakes: Any) -> None:
    models, a, _ = fakes
    one = models.at(A)
    a.down = True
    with pytest.raises(EndpointDown, match="not reachable at a:8001"):
        await one.vad(WINDOW, STATE)
    assert a.calls == ["vad"]  # not sent twice to the same server
    a.down = False
    await one.vad(WINDOW, STATE)  # out of rotation, but the only one: tried, answered, back in rotation
    assert models.pool.up(A)


async def test_other_failures_are_not_sent_elsewhere(fakes: Any) -> None:
    models, a, b = fakes
    bad = InferenceServerException("expected 2 inputs", status="StatusCode.INVALID_ARGUMENT")
    a.fail_with = b.fail_with = bad
    with pytest.raises(ModelUnavailable, match="expected 2 inputs") as caught:
        await models.vad(WINDOW, STATE)
    assert not isinstance(caught.value, EndpointDown)
    assert len(a.calls) + len(b.calls) == 1
    assert models.pool.up(A) and models.pool.up(B)


async def test_both_down_the_call_fails_after_one_retry(fakes: Any) -> None:
    models, a, b = fakes
    a.down = b.down = True
    with pytest.raises(EndpointDown):
        await models.vad(WINDOW, STATE)
    assert len(a.calls) + len(b.calls) == 2
    assert models.pool.in_rotation() == []


async def test_a_stream_that_fails_before_its_first_response_starts_afresh_elsewhere(fakes: Any) -> None:
    models, a, b = fakes
    a.cut_after = 0  # A's socket closes before the first piece
    models.pool.begin(B)  # B busier: the stream goes to A first
    assert await text(models, ask()) == "Hello!"
    assert len(a.calls) == len(b.calls) == 1
    assert not models.pool.up(A)


async def test_a_stream_that_already_yielded_is_never_replayed(fakes: Any) -> None:
    models, a, b = fakes
    a.cut_after = b.cut_after = 1
    got: list[str] = []
    with pytest.raises(EndpointDown, match="Socket closed"):
        async for piece in models.generate(ask()):
            got.append(piece)
    assert got == ["Hel"]  # its caller saw the start: nothing more, and no second start from elsewhere
    assert len(a.calls) + len(b.calls) == 1
    assert [models.pool.outstanding(u) for u in (A, B)] == [0, 0]


async def test_a_sessions_llm_requests_keep_to_one_endpoint_until_it_is_down(fakes: Any) -> None:
    models, a, b = fakes
    for i in range(4):
        assert await text(models, ask(f"session-s1-{i}")) == "Hello!"
    await text(models, ask("session-s1-warm"))
    home, other = (a, b) if a.calls else (b, a)
    assert home.request_ids == [f"session-s1-{i}" for i in range(4)] + ["session-s1-warm"] and other.calls == []
    assert await text(models, ask("session-s2-0")) == "Hello!"  # another session may go elsewhere
    home.down = True
    assert await text(models, ask("session-s1-5")) == "Hello!"  # moved (its first try found home down)
    home.down = False
    models.pool.checked(home.url, ready=True)
    await text(models, ask("session-s1-6"))
    assert other.request_ids[-2:] == ["session-s1-5", "session-s1-6"]  # stays where its cache is now


async def test_health_checks_drop_and_take_back(fakes: Any) -> None:
    models, a, _ = fakes
    watch = asyncio.create_task(models.watch_endpoints(), name="test-endpoint-checks")
    try:
        a.ready = False
        await until(lambda: not models.pool.up(A))  # after two failed checks
        a.ready = True
        await until(lambda: models.pool.up(A))
        a.down = True
        await until(lambda: not models.pool.up(A))  # refused: one check
        a.down = False
        await until(lambda: models.pool.up(A))
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


async def test_ready_needs_one_endpoint_and_drops_the_others(fakes: Any) -> None:
    models, a, b = fakes
    a.down = True
    await models.ready(("vad",))
    assert not models.pool.up(A) and models.pool.up(B)
    b.ready = False
    with pytest.raises(ModelUnavailable, match=r"a:8001 is not reachable.*b:8001 is not ready"):
        await models.ready(("vad",))


async def test_ready_says_what_is_wrong_with_a_server_once_per_change(
    fakes: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Readiness probes call `ready` every second; a server that stays away (a pod of the chart's list that does
    not exist yet) is logged when it goes, when what is wrong changes, and again after it was back."""
    models, a, _ = fakes

    def said() -> int:
        return sum("serving from the other Triton endpoints" in r.getMessage() for r in caplog.records)

    a.down = True
    for _ in range(5):
        await models.ready(("vad",))
    assert said() == 1
    a.down, a.ready = False, False  # reachable now, but not ready: a different problem
    await models.ready(("vad",))
    await models.ready(("vad",))
    assert said() == 2
    a.ready = True
    await models.ready(("vad",))
    a.down = True
    await models.ready(("vad",))
    assert said() == 3


async def test_a_dead_stub_on_one_server_sends_the_call_to_the_other(fakes: Any) -> None:
    models, a, b = fakes
    healer = ModelHealer(models.at(A))
    assert models.at(A).healer is healer and models.at(B).healer is None
    a.fail_with = InferenceServerException("Stub process 'vad_0_0' is not healthy.", status="StatusCode.INTERNAL")
    models.pool.begin(B)  # B busier: the first call goes to A
    p, _ = await models.vad(WINDOW, STATE)
    assert p == 0.5 and a.calls == ["vad"] and b.calls == ["vad"]
    assert not healer.healthy("vad")  # A's vad is being reloaded (by A's healer alone) ...
    assert models.pool.up(A)  # ... while A stays in rotation for its other models
    await models.vad(WINDOW, STATE)
    assert b.calls == ["vad", "vad"]  # calls to vad go where it is healthy meanwhile


async def test_a_stub_found_not_healthy_is_killed_before_its_model_is_reloaded(fakes: Any) -> None:
    """A stub Triton calls "not healthy" may be hung, not gone: the healer kills it (on a server it runs) before
    the reload, so it cannot wake up beside its successor."""
    models, a, _ = fakes

    def kill_stubs(model: str) -> list[int]:
        a.calls.append(f"kill {model}")  # in A's log of calls: the order shows
        return [4242]

    healer = ModelHealer(models.at(A), kill_stubs=kill_stubs)
    task = asyncio.create_task(healer.run(), name="test-healer")
    try:
        a.fail_with = InferenceServerException("Stub process 'vad_0_0' is not healthy.", status="StatusCode.INTERNAL")
        models.pool.begin(B)  # B busier: the call goes to A first
        await models.vad(WINDOW, STATE)
        await until(lambda: healer.healthy("vad"))
        healing = [c for c in a.calls if c.split()[0] in ("kill", "unload", "load")]
        assert healing == ["kill vad", "unload vad", "load vad"]
        assert healer.count("reload") == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(condition: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the pool's state has no event to wait on
            await asyncio.sleep(0.01)


# ---- the set changing: servers added and retired (discovery) ----------------------------------------------------


def fake_at(models: TritonModels, url: str) -> FakeTriton:
    """Put a fake in place of the real channel `add_endpoint` made for `url`."""
    fake = FakeTriton(url)
    models._by_url[url].client = fake
    return fake


async def test_an_added_server_is_checked_at_once_and_then_takes_calls(fakes: Any) -> None:
    models, a, b = fakes
    models.pool.policy = PoolPolicy(check_interval_s=30.0)  # only the added server's check can be due soon
    view = models.with_priority(1)  # made before: it sees the set change too
    watch = asyncio.create_task(models.watch_endpoints())
    try:
        await asyncio.sleep(0.05)  # the first round of checks is over; the next is 30 s away
        c = "c:8001"
        assert models.add_endpoint(c) and not models.add_endpoint(c)
        fake_c = fake_at(models, c)
        fake_c.ready = False
        await asyncio.sleep(0.05)
        assert fake_c.checks == 1 and a.checks == b.checks == 1  # checked at once, not in 30 s
        assert not models.pool.up(c)  # not ready: no calls
        for _ in range(6):
            await view.vad(WINDOW, STATE)
        assert fake_c.calls == [] and models.urls == (A, B, c) and view.urls == (A, B, c)
        fake_c.ready = True
        await models.ready(("vad",))  # a readiness check of every server (what a probe runs) takes it in
        assert models.pool.up(c)
        for _ in range(6):
            await view.vad(WINDOW, STATE)
        assert len(fake_c.calls) == 2  # one call in three
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


async def test_a_retired_server_finishes_its_calls_then_its_channel_is_closed(fakes: Any) -> None:
    models, a, _ = fakes
    closed: list[str] = []

    async def close() -> None:
        closed.append(A)

    a.close = close
    a.hold = hold = asyncio.Event()
    running = [asyncio.create_task(models.vad(WINDOW, STATE)) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert models.pool.outstanding(A) == 1  # one on each server
    assert models.retire_endpoint(A) and not models.retire_endpoint(A)
    with pytest.raises(ValueError, match="last Triton endpoint"):
        models.retire_endpoint(B)
    with pytest.raises(ValueError, match="`at` view"):
        models.at(B).retire_endpoint(B)
    assert models.urls == (B,)
    for _ in range(3):
        await models.vad(WINDOW, STATE)  # new calls: B only
    assert a.calls == ["vad"]
    watch = asyncio.create_task(models.watch_endpoints())
    try:
        await asyncio.sleep(0.05)
        assert closed == []  # its call still runs: the channel stays
        hold.set()
        assert [p for p, _ in await asyncio.gather(*running)] == [0.5, 0.5]  # it finished there
        await asyncio.sleep(0.1)
        assert closed == [A]
        assert [s.url for s in models.endpoint_states()] == [B]
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
