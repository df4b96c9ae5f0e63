"""The Duet service, wired: Triton (embedded unless configured), the model client and its healer, the LLM
backend, the metrics and the gRPC session server. Wiring only: each part lives in its own module."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from aiohttp import web

from duet.proto import session_pb2_grpc as pb_grpc
from orchestrator.api.http.faces import FacePreparer
from orchestrator.api.http.pages import add_pages
from orchestrator.api.http.routes import handlers
from orchestrator.api.http.server import ControlPlane, make_app
from orchestrator.api.session_service import SessionService, is_loopback
from orchestrator.api.webrtc.calls import WebRtcCalls
from orchestrator.config import Settings
from orchestrator.control.conversations import Conversations
from orchestrator.control.webhooks import WebhookDeliverer
from orchestrator.errors import BadOption
from orchestrator.models.launcher import EmbeddedTriton
from orchestrator.models.ports import LanguageModel
from orchestrator.models.triton import ModelHealer, TritonModels
from orchestrator.store.store import Store, open_store
from orchestrator.telemetry import Telemetry

log = logging.getLogger("duet")

# what sessions call directly (others are ensemble steps)
SERVED_MODELS = ("vad", "floor", "asr", "llm", "tts", "embed")


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
    http_url: str | None = None  # the REST control plane (`api.*`), when enabled


def public_host(settings: Settings) -> str:
    """The host clients reach this server by: `api.public_url`'s when set (a server bound to 0.0.0.0 cannot
    hand out that address), else the one it is bound to."""
    import urllib.parse

    return (
        urllib.parse.urlsplit(settings.api.public_url).hostname or settings.server.host
        if settings.api.public_url
        else settings.server.host
    )


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """HTTPS for the REST API and the pages when `api.tls_cert_file`/`api.tls_key_file` are set."""
    api = settings.api
    if not api.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(api.tls_cert_file, api.tls_key_file)
    except (OSError, ssl.SSLError) as err:
        raise BadOption(f"api.tls_cert_file/api.tls_key_file cannot be used: {err}") from err
    return context


@dataclass
class ControlStack:
    """The control plane's running parts: the store, the conversation service, webhooks, faces, HTTP."""

    store: Store
    conversations: Conversations
    deliverer: WebhookDeliverer
    faces: FacePreparer
    tasks: list[asyncio.Task[None]]
    runner: web.AppRunner | None = None
    url: str | None = None
    calls: WebRtcCalls | None = None  # browser calls (`POST /v1/conversations/{id}/webrtc`)

    async def serve_http(self, settings: Settings, service: SessionService | None = None) -> str:
        plane = ControlPlane(self.store, settings, self.conversations)
        if service is not None:
            self.calls = plane.calls = WebRtcCalls(service, settings)
        app = make_app(plane, handlers(plane, self.faces))
        add_pages(app)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        tls = tls_context(settings)
        site = web.TCPSite(
            self.runner, settings.server.host, settings.api.http_port, reuse_address=True, ssl_context=tls
        )
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"{'https' if tls else 'http'}://{settings.server.host}:{port}"
        if not settings.api.public_url:
            self.conversations.public_url = self.url
        return self.url

    async def close(self) -> None:
        if self.calls is not None:
            await self.calls.close()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.faces.close()
        await self.conversations.intel.close()
        await self.deliverer.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.store.close()


async def open_control(settings: Settings) -> ControlStack:
    """The store (migrated), the conversation service, the webhook deliverer and the sweeper, started."""
    store = await open_store(settings.store.url)
    deliverer = WebhookDeliverer(store)
    conversations = Conversations(store, settings, notify=deliverer.notify)
    tasks = [
        asyncio.create_task(deliverer.run(), name="webhook-deliverer"),
        asyncio.create_task(conversations.run_sweeper(), name="conversation-sweeper"),
    ]
    return ControlStack(store, conversations, deliverer, FacePreparer(store, settings), tasks)


@contextlib.asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[Running]:
    """Start Triton if needed, then the store and the control plane, then the session server; stop all on exit.

    Protected mode: on a loopback address, sessions that name only a persona (the CLI's way) need no key; bound
    to any other address, every REST call needs a key and every session a conversation's join token, so the
    server refuses to start there without the control plane that issues them."""
    if not is_loopback(settings.server.host) and not settings.api.enabled:
        raise BadOption(
            f"server.host {settings.server.host} is not loopback: sessions there need join tokens, which the "
            "control plane issues; enable api.enabled (and create a tenant with `duet admin tenant create`)"
        )
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
    control: ControlStack | None = None
    telemetry = Telemetry()
    try:
        if settings.api.enabled:
            control = await open_control(settings)
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
        service = SessionService(
            models,
            settings,
            llm=language_model(settings, models),
            telemetry=telemetry,
            conversations=control.conversations if control is not None else None,
        )
        pb_grpc.add_SessionServicer_to_server(service, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port(f"{settings.server.host}:{settings.server.port}")
        http_url = None
        if control is not None:
            embedder = models if "embed" in settings.triton.models else None
            control.conversations.intel.attach(embedder, language_model(settings, models))
            control.conversations.live = service
            control.conversations.grpc_address = f"{public_host(settings)}:{port}"
            http_url = await control.serve_http(settings, service)
        own_metrics = telemetry.serve(settings.metrics)
        lag = asyncio.create_task(telemetry.watch_loop(), name="telemetry-loop-lag")
        await server.start()
        yield Running(
            address=f"{settings.server.host}:{port}",
            triton_url=url,
            metrics_url=embedded.metrics_url if embedded else None,
            orchestrator_metrics_url=own_metrics,
            http_url=http_url,
        )
    finally:
        if control is not None and control.runner is not None:
            await control.runner.cleanup()  # no new API calls while sessions end
            control.runner = None
        if server is not None:
            await server.stop(grace=2.0)
        if service is not None:
            await service.close()
        if control is not None:
            await control.close()
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
        if running.http_url:
            log.info(
                "duet control plane (REST) on %s/v1 (OpenAPI: %s/v1/openapi.json)", running.http_url, running.http_url
            )
        log.info("duet serving sessions on %s (triton %s)", running.address, running.triton_url)
        if on_ready:
            on_ready(running)
        await stop.wait()
        log.info("shutting down")


def run(coro_factory: Callable[[], object]) -> None:
    """Run a coroutine on uvloop (the orchestrator's event loop)."""
    import uvloop

    uvloop.run(coro_factory())  # type: ignore[arg-type]
