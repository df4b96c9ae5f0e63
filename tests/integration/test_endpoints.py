"""Model calls spread over two real tritonservers on loopback; one is killed (SIGKILL) under load and restarted.

The orchestrator's own adapter (`TritonModels` over both endpoints, its health checks running as `duet serve`
runs them) carries a steady load of `vad` and `floor` calls from several workers. The checks are on what
happened: both servers served calls (each Triton's own statistics); after the kill every call started past a
short recovery succeeded, on the survivor; the restarted server was taken back into rotation and served again.
How long each step took is printed (run with `-s`); the bounds are far above what is seen (a broken failover,
not a slow machine, fails them).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from orchestrator.config import TritonSettings
from orchestrator.errors import ModelUnavailable
from orchestrator.models.endpoints import PoolPolicy
from orchestrator.models.launcher import EmbeddedTriton
from orchestrator.models.triton import TritonModels

pytestmark = pytest.mark.integration

MODELS = ("vad", "turn", "prosody", "floor_fusion", "floor")
WORKERS = 4
PACE_S = 0.02  # each worker's pause between calls: a steady load that leaves the 2-core machine room
RECOVERY_BOUND_S = 3.0  # calls started this long after the kill must all succeed (seen: none fails at all)
BACK_BOUND_S = 20.0  # the restarted server back in rotation within this (seen: under a second after it is ready)
WINDOW = np.concatenate([np.zeros(64, np.int16), (np.sin(np.arange(512) / 5) * 3000).astype(np.int16)])
STATE = np.zeros((2, 128), np.float32)
FLOOR_AUDIO = np.zeros(128000, np.int16)  # the floor window: 8 s


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[EmbeddedTriton, EmbeddedTriton]]:
    pair = (EmbeddedTriton(TritonSettings(models=MODELS)), EmbeddedTriton(TritonSettings(models=MODELS)))
    errors: list[Exception] = []

    def start(server: EmbeddedTriton) -> None:
        try:
            server.start()
        except Exception as exc:  # raised by the fixture, once both starts are over
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,), name=f"start-triton-{i}") for i, s in enumerate(pair)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        yield pair
    finally:
        for s in pair:
            s.stop()


def vad_count(server: EmbeddedTriton) -> int:
    """How many `vad` inferences this server ran (Triton's own statistics)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return int(client.get_inference_statistics("vad").model_stats[0].inference_count)
    finally:
        client.close()


@dataclass
class Call:
    start: float
    end: float
    error: str | None


async def load(models: TritonModels, calls: list[Call], stop: asyncio.Event, worker: int) -> None:
    """Calls until `stop`: `vad` mostly, the `floor` ensemble every fifth time; every outcome recorded."""
    n = 0
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            if (n + worker) % 5 == 0:
                est = await models.floor(FLOOR_AUDIO, 8000, "hello", "")
                assert 0.0 <= est.p_yield <= 1.0
            else:
                p, _ = await models.vad(WINDOW, STATE)
                assert 0.0 <= p <= 1.0
            calls.append(Call(t0, time.monotonic(), None))
        except ModelUnavailable as exc:
            calls.append(Call(t0, time.monotonic(), exc.message))
        n += 1
        await asyncio.sleep(PACE_S)


def pool_calls(models: TritonModels, url: str) -> int:
    return next(s.calls for s in models.endpoint_states() if s.url == url)


async def wait_for(condition: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until `condition()` holds (fails after `timeout_s`)."""
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"not within {timeout_s:.0f} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def test_duet_serve_spreads_a_sessions_calls_over_the_configured_servers(
    servers: tuple[EmbeddedTriton, EmbeddedTriton],
) -> None:
    """Wired as `duet serve` wires it (`triton.urls`): a floor session's calls reach both servers, and the
    orchestrator's metrics show each server in rotation with its calls."""

    from duet.sdk import stream_file
    from orchestrator.app import running_stack
    from tests.conftest import SAMPLE, metric
    from tests.integration.conftest import stack_settings

    a, b = servers
    settings = stack_settings(MODELS, urls=(a.grpc_url, b.grpc_url))
    before = (vad_count(a), vad_count(b))
    async with asyncio.timeout(60), running_stack(settings) as running:
        assert running.triton_url == f"{a.grpc_url},{b.grpc_url}" and running.orchestrator_metrics_url
        events = [e async for e in stream_file(SAMPLE, running.address, speed=0, options={"mode": "floor"})]
        assert any(e.get("type") == "eot_commit" for e in events), events[:5]
        url = running.orchestrator_metrics_url
        calls = [metric(url, "duet_triton_endpoint_calls_total", endpoint=s.grpc_url) for s in (a, b)]
        up = [metric(url, "duet_triton_endpoint_up", endpoint=s.grpc_url) for s in (a, b)]
    served = (vad_count(a) - before[0], vad_count(b) - before[1])
    print(f"[endpoints] duet serve over two servers: calls {calls}; vad inferences {served}; in rotation {up}")
    assert up == [1.0, 1.0]
    assert min(calls) > 0 and min(served) > 0


async def test_duet_serve_finds_its_server_by_dns_name(servers: tuple[EmbeddedTriton, EmbeddedTriton]) -> None:
    """`triton.url: dns:///localhost:PORT`, resolved by the system resolver as `duet serve` does: the server
    behind the name serves a floor session, and the metrics name it by address."""
    from duet.sdk import stream_file
    from orchestrator.app import running_stack
    from tests.conftest import SAMPLE, metric
    from tests.integration.conftest import stack_settings

    a, _ = servers
    port = a.grpc_url.rsplit(":", 1)[1]
    settings = stack_settings(MODELS, urls=(f"dns:///localhost:{port}",))
    before = vad_count(a)
    async with asyncio.timeout(60), running_stack(settings) as running:
        assert running.triton_url == f"dns:///localhost:{port}" and running.orchestrator_metrics_url
        events = [e async for e in stream_file(SAMPLE, running.address, speed=0, options={"mode": "floor"})]
        assert any(e.get("type") == "eot_commit" for e in events), events[:5]
        up = metric(running.orchestrator_metrics_url, "duet_triton_endpoint_up", endpoint=f"127.0.0.1:{port}")
    assert up == 1.0 and vad_count(a) > before


async def test_servers_join_and_leave_as_the_name_resolves_under_load(
    servers: tuple[EmbeddedTriton, EmbeddedTriton],
) -> None:
    """A name that first stands for A, then for A and B (scaled out), then for B alone (A's pod replaced),
    re-resolved every 0.2 s while four workers call: B takes calls once its ready check passed, A finishes the
    calls it had and gets no new one, its channel is closed, and no call fails. The answers come from a
    stand-in resolver (DNS is the outside system; the servers are real)."""
    from orchestrator.models.discovery import EndpointDiscovery, initial_endpoints

    a, b = servers
    answer = [a.grpc_url]

    async def resolve(host: str, port: int) -> list[str]:
        assert (host, port) == ("triton-pods", 8001)
        return list(answer)

    membership, urls = await initial_endpoints(["dns:///triton-pods:8001"], resolve)
    models = TritonModels(urls, timeout_s=15.0, policy=PoolPolicy(check_interval_s=0.25))
    joined: list[tuple[str, float]] = []
    left: list[tuple[str, float]] = []
    discovery = EndpointDiscovery(
        models,
        membership,
        interval_s=0.2,
        resolve=resolve,
        on_added=lambda u: joined.append((u, time.monotonic())),
        on_retired=lambda u: left.append((u, time.monotonic())),
    )
    calls: list[Call] = []
    stop = asyncio.Event()
    async with asyncio.timeout(60):
        try:
            await models.ready(("vad", "floor"))
            tasks = [
                asyncio.create_task(models.watch_endpoints(), name="test-endpoint-checks"),
                asyncio.create_task(discovery.run(), name="test-discovery"),
            ]
            workers = [asyncio.create_task(load(models, calls, stop, i), name=f"test-load-{i}") for i in range(WORKERS)]
            try:
                await asyncio.sleep(1.0)
                assert models.urls == (a.grpc_url,) and pool_calls(models, a.grpc_url) > 0
                # scaled out: B found, checked, then served
                t_out = time.monotonic()
                answer[:] = [a.grpc_url, b.grpc_url]
                found_s = await wait_for(lambda: b.grpc_url in models.urls, 5.0)
                up_s = await wait_for(lambda: models.pool.up(b.grpc_url), 5.0)
                on_b = vad_count(b)
                await asyncio.sleep(1.5)
                assert vad_count(b) > on_b  # B serves
                # A's pod replaced: A leaves the set, its calls finish, no new one goes there
                t_in = time.monotonic()
                answer[:] = [b.grpc_url]
                gone_s = await wait_for(lambda: models.urls == (b.grpc_url,), 5.0)
                closed_s = await wait_for(lambda: not models._retiring, 5.0)
                on_a = vad_count(a)
                await asyncio.sleep(1.0)
                assert vad_count(a) == on_a  # no call reached A after it left
                print(
                    f"[endpoints] discovery: B found {found_s:.2f} s after the answer changed, in rotation "
                    f"{up_s:.2f} s after that; A left the set {gone_s:.2f} s after it left the answer, its "
                    f"channel closed {closed_s:.2f} s later; {len(calls)} calls"
                )
                assert [u for u, _ in joined] == [b.grpc_url] and joined[0][1] > t_out
                assert [u for u, _ in left] == [a.grpc_url] and left[0][1] > t_in
            finally:
                stop.set()
                await asyncio.gather(*workers, return_exceptions=True)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await models.close()
    assert calls and not [c for c in calls if c.error], [c.error for c in calls if c.error][:3]


async def test_calls_survive_a_killed_tritonserver_and_return_to_it(
    servers: tuple[EmbeddedTriton, EmbeddedTriton],
) -> None:
    a, b = servers
    models = TritonModels([a.grpc_url, b.grpc_url], timeout_s=15.0, policy=PoolPolicy(check_interval_s=0.25))
    calls: list[Call] = []
    stop = asyncio.Event()
    async with asyncio.timeout(80):
        try:
            await models.ready(("vad", "floor"))
            watch = asyncio.create_task(models.watch_endpoints(), name="test-endpoint-checks")
            workers = [asyncio.create_task(load(models, calls, stop, i), name=f"test-load-{i}") for i in range(WORKERS)]
            try:
                # 1. spread: both servers serve
                before = (vad_count(a), vad_count(b))
                await asyncio.sleep(3.0)
                served = (vad_count(a) - before[0], vad_count(b) - before[1])
                print(f"[endpoints] spread: {served[0]} vad calls on A, {served[1]} on B; {len(calls)} calls in all")
                assert min(served) > 0.1 * max(served), served  # (least outstanding: the faster takes more)
                assert not [c for c in calls if c.error], [c.error for c in calls if c.error][:3]

                # 2. A killed mid-load
                pid = a._proc.pid if a._proc is not None else None
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                t_kill = time.monotonic()
                dropped_s = await wait_for(lambda: not models.pool.up(a.grpc_url), 10.0)
                await asyncio.sleep(3.0 + RECOVERY_BOUND_S)
                after_kill = [c for c in calls if c.end > t_kill]
                failed = [c for c in after_kill if c.error]
                # recovery: from the kill until the server is out of rotation, every call that was in flight at
                # the kill has its answer (sent again to B), and the last call to fail has failed
                in_flight = [c.end - t_kill for c in after_kill if c.start <= t_kill]
                recovery = max([dropped_s, *in_flight, *(c.end - t_kill for c in failed)])
                print(
                    f"[endpoints] A killed: recovery {recovery:.2f} s (out of rotation after {dropped_s:.2f} s; "
                    f"{len(in_flight)} calls in flight at the kill, the last answered after "
                    f"{max(in_flight, default=0):.2f} s); {len(failed)} of {len(after_kill)} later calls failed"
                )
                late = [c for c in failed if c.start > t_kill + RECOVERY_BOUND_S]
                assert not late, [c.error for c in late][:3]
                # and none failed at all: each call the kill hit was sent again to B (gRPC UNAVAILABLE is safe to
                # send again for these pure models)
                assert not failed, [c.error for c in failed][:3]
                # every call now goes to the survivor
                on_a, on_b = pool_calls(models, a.grpc_url), vad_count(b)
                await asyncio.sleep(1.0)
                assert pool_calls(models, a.grpc_url) == on_a
                assert vad_count(b) > on_b

                # 3. A restarted: taken back into rotation, and serving again
                t_restart = time.monotonic()
                await asyncio.to_thread(a.restart)
                ready_s = time.monotonic() - t_restart
                back_s = await wait_for(lambda: models.pool.up(a.grpc_url), BACK_BOUND_S)
                print(f"[endpoints] A restarted: ready after {ready_s:.2f} s, back in rotation {back_s:.2f} s later")
                await asyncio.sleep(2.0)
                assert vad_count(a) > 0  # the fresh server's own count: it took calls
                assert not [c for c in calls if c.start > t_kill + RECOVERY_BOUND_S and c.error]
            finally:
                stop.set()
                await asyncio.gather(*workers, return_exceptions=True)
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
        finally:
            await models.close()
    states = {s.url: s for s in models.endpoint_states()}
    print(
        f"[endpoints] {len(calls)} calls: {states[a.grpc_url].calls} sent to A, {states[b.grpc_url].calls} to B; "
        f"A left rotation {states[a.grpc_url].drops}x, {states[a.grpc_url].retries} calls sent again to B"
    )
    assert states[a.grpc_url].drops == 1 and states[b.grpc_url].drops == 0
