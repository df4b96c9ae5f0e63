"""The Duet service, wired: Triton (embedded unless configured), the model client and its healer, the LLM
backend, the metrics and the gRPC session server. Wiring only: each part lives in its own module."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from duet.proto import session_pb2_grpc as pb_grpc
from orchestrator.api.session_service import SessionService
from orchestrator.config import Settings
from orchestrator.models.launcher import EmbeddedTriton
from orchestrator.models.ports import LanguageModel
from orchestrator.models.triton import ModelHealer, TritonModels
from orchestrator.telemetry import Telemetry

log = logging.getLogger("duet")

SERVED_MODELS = ("vad", "floor", "asr", "llm", "tts")  # what sessions call directly (others are ensemble steps)


def language_model(settings: Settings, models: TritonModels) -> LanguageModel | None:
    """The LLM replies come from: the local `llm` model in Triton, or an OpenAI-compatible endpoint."""
    if settings.llm.backend == "openai":
        from orchestrator.models.openai_llm import OpenAIChat

        return OpenAIChat(settings.llm)
    return models if "llm" in settings.triton.models else None


@dataclass(frozen=True)
class Running:
    address: str  # host:port of the session service
    triton_url: str
    metrics_url: str | None  # Triton's Prometheus endpoint when embedded
    orchestrator_metrics_url: str | None = None  # the orchestrator's own (`metrics.*`; orchestrator/telemetry.py)


@contextlib.asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[Running]:
    """Start Triton if needed, then the session server; stop both on exit."""
    embedded: EmbeddedTriton | None = None
    url = settings.triton.url
    if not url:
        embedded = EmbeddedTriton(settings.triton)
        await asyncio.to_thread(embedded.start)
        url = embedded.grpc_url
    models = TritonModels(url, timeout_s=settings.triton.request_timeout_s)
    models.llm_timeout_s = settings.llm.timeout_s
    # a model whose stub died is reloaded (found by a failed request, or by watching the embedded server's stubs)
    healer = ModelHealer(
        models,
        probe=embedded.stubs if embedded else None,
        restart_server=embedded.kill if embedded else None,  # when reloads do not work; `supervise` restarts it
    )
    background: list[asyncio.Task[None]] = []
    server: grpc.aio.Server | None = None
    service: SessionService | None = None
    lag: asyncio.Task[None] | None = None
    telemetry = Telemetry()
    try:
        await models.ready(tuple(m for m in settings.triton.models if m in SERVED_MODELS))
        background.append(asyncio.create_task(healer.run(), name="model-healer"))
        if embedded is not None:  # a tritonserver that dies is started again on the same ports

            async def restarted() -> None:
                healer.server_restarted()

            background.append(asyncio.create_task(embedded.supervise(restarted), name="triton-supervisor"))
        restarts = (lambda: embedded.restarts) if embedded is not None else (lambda: 0)
        telemetry.watch_healing(lambda: healer.counts, restarts)
        limit = settings.server.max_message_bytes
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", 4 * limit)]
        )
        service = SessionService(models, settings, llm=language_model(settings, models), telemetry=telemetry)
        pb_grpc.add_SessionServicer_to_server(service, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port(f"{settings.server.host}:{settings.server.port}")
        own_metrics = telemetry.serve(settings.metrics)
        lag = asyncio.create_task(telemetry.watch_loop(), name="telemetry-loop-lag")
        await server.start()
        yield Running(
            address=f"{settings.server.host}:{port}",
            triton_url=url,
            metrics_url=embedded.metrics_url if embedded else None,
            orchestrator_metrics_url=own_metrics,
        )
    finally:
        if server is not None:
            await server.stop(grace=2.0)
        if service is not None:
            await service.close()
        if lag is not None:
            lag.cancel()
            await asyncio.gather(lag, return_exceptions=True)
        telemetry.close()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await models.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def serve(settings: Settings, on_ready: Callable[[Running], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_stack(settings) as running:
        if running.orchestrator_metrics_url:
            log.info("duet metrics on %s", running.orchestrator_metrics_url)
        log.info("duet serving sessions on %s (triton %s)", running.address, running.triton_url)
        if on_ready:
            on_ready(running)
        await stop.wait()
        log.info("shutting down")


def run(coro_factory: Callable[[], object]) -> None:
    """Run a coroutine on uvloop (the orchestrator's event loop)."""
    import uvloop

    uvloop.run(coro_factory())  # type: ignore[arg-type]
