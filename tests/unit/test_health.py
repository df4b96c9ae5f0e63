"""Readiness (cached outside checks, the drain) and the standard gRPC services beside the session service:
`grpc.health.v1.Health` (Check, Watch) and server reflection, on a real gRPC server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from orchestrator.api.drain import Drain
from orchestrator.api.health import (
    DRAINING_MESSAGE,
    CachedProbe,
    Readiness,
    SessionHealth,
    add_standard_services,
)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Outside:
    """Triton or the store, as a probe sees it: counts checks, fails when told to, may be slow."""

    def __init__(self) -> None:
        self.calls = 0
        self.up = True
        self.delay = 0.0

    async def __call__(self) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.up:
            raise ConnectionError("connection refused by 10.0.0.7:8001")


# ---- cached checks (virtual time) ----------------------------------------------------------------------------


async def test_a_check_is_reused_for_its_ttl() -> None:
    clock, outside = Clock(), Outside()
    probe = CachedProbe("triton", outside, "Triton is not ready", clock=clock, ttl_s=1.0)
    for i in range(50):  # 50 probes within the second: one outside check
        clock.t = i * 0.019
        assert (await probe.result()).ok
    assert outside.calls == 1
    clock.t = 1.0
    await probe.result()
    assert outside.calls == 2


async def test_a_failure_is_cached_too_and_says_a_fixed_sentence() -> None:
    clock, outside = Clock(), Outside()
    probe = CachedProbe("triton", outside, "Triton is not ready", clock=clock, ttl_s=1.0)
    outside.up = False
    result = await probe.result()
    assert not result.ok and result.message == "Triton is not ready"  # no internal address
    outside.up = True
    assert not (await probe.result()).ok and outside.calls == 1  # still the cached failure
    clock.t = 1.5
    assert (await probe.result()).ok  # back once the cache expired


async def test_concurrent_probes_share_one_check() -> None:
    outside = Outside()
    outside.delay = 0.05
    probe = CachedProbe("store", outside, "the store does not answer", clock=Clock())
    results = await asyncio.gather(*(probe.result() for _ in range(20)))
    assert all(r.ok for r in results) and outside.calls == 1


async def test_a_check_that_hangs_fails_within_its_timeout() -> None:
    outside = Outside()
    outside.delay = 10.0
    probe = CachedProbe("store", outside, "the store does not answer", clock=Clock(), timeout_s=0.05)
    result = await asyncio.wait_for(probe.result(), 2.0)
    assert not result.ok


async def test_a_prober_that_hangs_up_does_not_cancel_the_shared_check() -> None:
    outside = Outside()
    outside.delay = 0.1
    probe = CachedProbe("store", outside, "x", clock=Clock())
    impatient = asyncio.create_task(probe.result(), name="impatient")
    await asyncio.sleep(0.02)
    impatient.cancel()
    assert (await probe.result()).ok and outside.calls == 1


# ---- readiness ------------------------------------------------------------------------------------------------


def readiness(drain: Drain | None = None) -> tuple[Readiness, Outside, Outside]:
    triton, store = Outside(), Outside()
    clock = Clock()
    checks = {
        "triton": CachedProbe("triton", triton, "Triton or a model this server calls is not ready", clock=clock),
        "store": CachedProbe("store", store, "the store does not answer", clock=clock, ttl_s=0.0),
    }
    return Readiness(checks, drain), triton, store


async def test_readiness_names_every_check() -> None:
    r, _, _ = readiness(Drain(30.0))
    report = await r.report()
    assert report.ready
    checks = {"triton": {"ok": True}, "store": {"ok": True}, "draining": {"ok": True}}
    assert report.body() == {"ready": True, "checks": checks}


async def test_readiness_says_which_check_failed() -> None:
    r, _, store = readiness(Drain(30.0))
    store.up = False
    body = (await r.report()).body()
    assert body["ready"] is False
    assert body["checks"]["store"] == {"ok": False, "message": "the store does not answer"}
    assert body["checks"]["triton"] == {"ok": True} and body["checks"]["draining"] == {"ok": True}


async def test_draining_fails_readiness_at_once() -> None:
    drain = Drain(30.0)
    r, _, _ = readiness(drain)
    assert (await r.report()).ready
    drain.signal(0.0)
    body = (await r.report()).body()
    assert body["ready"] is False and body["checks"]["draining"] == {"ok": False, "message": DRAINING_MESSAGE}


# ---- gRPC health and reflection on a real server ------------------------------------------------------------


@pytest.fixture
async def grpc_server() -> AsyncIterator[tuple[str, Readiness, Drain, Outside]]:
    drain = Drain(30.0)
    r, triton, _ = readiness(drain)
    server = grpc.aio.server()
    add_standard_services(server, SessionHealth(r, poll_s=0.05))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", r, drain, triton
    finally:
        await server.stop(grace=None)
        await r.close()


async def _check(channel: grpc.aio.Channel, service: str) -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


async def test_health_check_follows_readiness(grpc_server: Any) -> None:
    address, r, drain, triton = grpc_server
    async with grpc.aio.insecure_channel(address) as channel:
        for service in ("", "duet.v1.Session"):
            assert await _check(channel, service) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await _check(channel, "no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        triton.up = False
        r.checks["triton"].ttl_s = 0.0  # (this test does not wait for the cache)
        assert await _check(channel, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        triton.up = True
        assert await _check(channel, "duet.v1.Session") == health_pb2.HealthCheckResponse.SERVING

        drain.signal(0.0)
        for service in ("", "duet.v1.Session"):
            assert await _check(channel, service) == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_watch_sees_the_drain_begin(grpc_server: Any) -> None:
    address, r, drain, _ = grpc_server
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        call = stub.Watch(health_pb2.HealthCheckRequest(service="duet.v1.Session"))
        first = await asyncio.wait_for(call.read(), 5.0)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        drain.signal(0.0)
        r.changed()
        second = await asyncio.wait_for(call.read(), 5.0)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        unknown = stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert (await asyncio.wait_for(unknown.read(), 5.0)).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        call.cancel()
        unknown.cancel()


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_the_services_and_describes_them(grpc_server: Any, version: str) -> None:
    address = grpc_server[0]
    async with grpc.aio.insecure_channel(address) as channel:
        # v1's messages are v1alpha's, field for field: only the method's name differs on the wire
        info = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )

        async def ask(request: Any) -> Any:
            call = info()
            await call.write(request)
            answer = await asyncio.wait_for(call.read(), 5.0)
            await call.done_writing()
            return answer

        listed = await ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in listed.list_services_response.service}
        assert names == {
            "duet.v1.Session",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        for service in sorted(names):  # every service listed can be described, for generic clients
            described = await ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=service))
            files = [
                FileDescriptorProto.FromString(f) for f in described.file_descriptor_response.file_descriptor_proto
            ]
            package, _, name = service.rpartition(".")
            assert any(f.package == package and name in [s.name for s in f.service] for f in files), service
