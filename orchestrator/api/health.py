"""Is this server ready for new sessions? One answer for every prober: the REST readiness endpoint
(`GET /v1/health/ready`), the gRPC standard health service (`grpc.health.v1.Health`, Check and Watch, for
Kubernetes gRPC probes and generic tools) and server reflection beside it (`grpc.reflection.v1`, which current
tools ask first, and `grpc.reflection.v1alpha`).

Ready means: Triton's models that sessions call are ready, the store answers, and the server is not draining.
Each outside check is answered from its last result for `PROBE_TTL_S` and bounded by `PROBE_TIMEOUT_S`, so probes
from Kubernetes, load balancers and health watchers never turn into a stream of requests to Triton or the
database; concurrent probes share one check in flight. Messages are fixed sentences: the endpoint needs no key,
so it names what failed, never an internal address (the log has the detail).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from duet.proto import session_pb2 as pb
from orchestrator.api.drain import Drain

log = logging.getLogger("duet.health")

PROBE_TTL_S = 1.0  # an outside check's result is reused this long
PROBE_TIMEOUT_S = 2.0  # a check that takes longer has failed
WATCH_POLL_S = 1.0  # a gRPC health Watch looks again this often (and at once when the server starts draining)
SESSION_SERVICE: str = pb.DESCRIPTOR.services_by_name["Session"].full_name  # duet.v1.Session
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name  # grpc.health.v1.Health
DRAINING_MESSAGE = "the server is draining (shutting down): it takes no new sessions"

Probe = Callable[[], Awaitable[object]]  # raises when what it checks is not ready


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str | None = None

    def body(self) -> dict[str, Any]:
        return {"ok": self.ok} if self.message is None else {"ok": self.ok, "message": self.message}


class CachedProbe:
    """One outside check, reused for `ttl_s` after it finished (whatever its result); `failure` is what a failed
    check says publicly."""

    def __init__(
        self,
        name: str,
        probe: Probe,
        failure: str,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = PROBE_TTL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.name = name
        self._probe = probe
        self._failure = failure
        self._clock = clock
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._last: CheckResult | None = None
        self._at = float("-inf")
        self._inflight: asyncio.Task[CheckResult] | None = None
        self.checks = 0  # outside checks made (what the cache saves is visible in tests)

    def fresh(self, now: float) -> bool:
        return self._last is not None and now - self._at < self.ttl_s

    async def result(self) -> CheckResult:
        if self._last is not None and self.fresh(self._clock()):
            return self._last
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._check(), name=f"readiness-{self.name}")
            self._inflight.add_done_callback(self._landed)
        # shielded: a prober that hangs up does not cancel the check the others wait on
        return await asyncio.shield(self._inflight)

    def _landed(self, task: asyncio.Task[CheckResult]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _check(self) -> CheckResult:
        self.checks += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._probe()
            result = CheckResult(True)
        except Exception as err:  # whatever the check raised, it says "not ready"
            if self._last is None or self._last.ok:
                log.warning("readiness: %s is not ready: %s", self.name, err or type(err).__name__)
            result = CheckResult(False, self._failure)
        else:
            if self._last is not None and not self._last.ok:
                log.info("readiness: %s is ready again", self.name)
        self._last, self._at = result, self._clock()
        return result

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@dataclass(frozen=True)
class ReadinessReport:
    checks: Mapping[str, CheckResult]

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks.values())

    def body(self) -> dict[str, Any]:
        return {"ready": self.ready, "checks": {name: c.body() for name, c in self.checks.items()}}


class Readiness:
    """The server's readiness: its outside checks (in order) and its drain."""

    def __init__(self, checks: Mapping[str, CachedProbe], drain: Drain | None = None) -> None:
        self.checks = dict(checks)
        self.drain = drain
        self._changed = asyncio.Event()

    async def report(self) -> ReadinessReport:
        names = list(self.checks)
        results = await asyncio.gather(*(self.checks[n].result() for n in names))
        checks = dict(zip(names, results, strict=True))
        draining = self.drain is not None and self.drain.draining
        checks["draining"] = CheckResult(False, DRAINING_MESSAGE) if draining else CheckResult(True)
        return ReadinessReport(checks)

    def changed(self) -> None:
        """Something watchers should see at once (the drain began)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout_s: float) -> None:
        event = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()

    async def close(self) -> None:
        for check in self.checks.values():
            await check.close()


# `HealthCheckResponse.ServingStatus` values (protobuf enums are ints)
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class SessionHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # (the generated base is untyped)
    """`grpc.health.v1.Health` for the whole server (`""`) and the session service (`duet.v1.Session`): SERVING
    while ready, NOT_SERVING otherwise (and from the moment the server starts draining). Other names: Check is
    NOT_FOUND, Watch says SERVICE_UNKNOWN (and keeps watching), as the protocol asks."""

    SERVICES = ("", SESSION_SERVICE)

    def __init__(self, readiness: Readiness, poll_s: float = WATCH_POLL_S) -> None:
        self.readiness = readiness
        self.poll_s = poll_s

    async def status(self, service: str) -> int:
        if service not in self.SERVICES:
            return SERVICE_UNKNOWN
        return SERVING if (await self.readiness.report()).ready else NOT_SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in self.SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=await self.status(request.service))

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: int | None = None
        while True:
            status = await self.status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await self.readiness.wait_changed(self.poll_s)


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _describe_reflection_v1() -> None:
    """Put `grpc.reflection.v1`'s file in the default descriptor pool, so reflection can describe itself.

    grpcio-reflection ships only v1alpha (to its latest release). v1 is the same protocol under its stable
    name: the same messages, field for field, so v1alpha's file with the package renamed describes it, and
    v1alpha's servicer answers it byte for byte."""
    pool = descriptor_pool.Default()  # type: ignore[no-untyped-call]
    with contextlib.suppress(KeyError):
        pool.FindServiceByName(REFLECTION_V1)
        return
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = "grpc/reflection/v1/reflection.proto"
    file.package = "grpc.reflection.v1"

    def v1(type_name: str) -> str:  # a reference to one of the file's own messages
        return type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")

    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # a message field (setting it on a scalar makes it invalid)
                field.type_name = v1(field.type_name)
    for method in file.service[0].method:
        method.input_type, method.output_type = v1(method.input_type), v1(method.output_type)
    file.options.Clear()
    pool.Add(file)


def add_standard_services(server: grpc.aio.Server, health: SessionHealth) -> None:
    """The health service, and reflection (v1 and v1alpha) over the session service, the health service and
    reflection itself."""
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    _describe_reflection_v1()
    names = (SESSION_SERVICE, HEALTH_SERVICE, REFLECTION_V1, reflection.SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)  # type: ignore[attr-defined]  # its public asyncio servicer
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )
