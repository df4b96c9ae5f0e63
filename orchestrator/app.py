"""The Duet service, wired: Triton (embedded unless configured), the model client and its healer, the LLM
backend, the metrics and the gRPC session server. Wiring only: each part lives in its own module."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from aiohttp import web

from duet.proto import session_pb2_grpc as pb_grpc
from orchestrator.api.drain import Drain, Step
from orchestrator.api.health import CachedProbe, Readiness, SessionHealth, add_standard_services
from orchestrator.api.http.faces import FacePreparer
from orchestrator.api.http.pages import add_pages
from orchestrator.api.http.routes import handlers
from orchestrator.api.http.server import ControlPlane, make_app, store_probe
from orchestrator.api.session_service import SessionService, is_loopback
from orchestrator.api.webrtc.calls import WebRtcCalls
from orchestrator.config import Settings
from orchestrator.control.conversations import Conversations
from orchestrator.control.webhooks import WebhookDeliverer
from orchestrator.errors import BadOption, Draining
from orchestrator.models.discovery import EndpointDiscovery, Membership, initial_endpoints
from orchestrator.models.endpoints import PoolPolicy
from orchestrator.models.launcher import EmbeddedTriton
from orchestrator.models.ports import LanguageModel
from orchestrator.models.triton import ModelHealer, TritonModels
from orchestrator.store.store import Store, open_store, utc_now
from orchestrator.telemetry import Telemetry

log = logging.getLogger("duet")

# what sessions call directly (others are ensemble steps)
SERVED_MODELS = ("vad", "floor", "asr", "llm", "tts", "embed")
DRAIN_TICK_S = 0.2  # while draining, how often the live sessions are counted again
WEBHOOK_FLUSH_S = 5.0  # after a drain, how long the webhooks of the conversations that ended get to go out


def language_model(settings: Settings, models: TritonModels) -> LanguageModel | None:
    """The LLM replies come from: the local `llm` model in Triton, or an OpenAI-compatible endpoint."""
    if settings.llm.backend == "openai":
        from orchestrator.models.openai_llm import OpenAIChat

        return OpenAIChat(settings.llm)
    return models if "llm" in settings.triton.models else None


@dataclass(frozen=True)
class Running:
    address: str  # host:port of the session service
    triton_url: str  # gRPC host:port (comma-separated when several)
    metrics_url: str | None  # Triton's Prometheus endpoint when embedded
    orchestrator_metrics_url: str | None = None  # the orchestrator's own (`metrics.*`; orchestrator/telemetry.py)
    http_url: str | None = None  # the REST control plane (`api.*`), when enabled
    sessions: SessionService | None = None  # the session service (what a drain counts and ends)
    readiness: Readiness | None = None  # what the probes answer (REST readiness, gRPC health)


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

    async def serve_http(
        self, settings: Settings, service: SessionService | None = None, readiness: Readiness | None = None
    ) -> str:
        plane = ControlPlane(self.store, settings, self.conversations)
        if readiness is not None:  # the whole server's (Triton, store, drain), not the store's alone
            plane.readiness = readiness
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
        if not settings.api.internal_url:  # (behind 0.0.0.0, a cluster names the pod's address in internal_url)
            self.conversations.internal_url = self.url
        return self.url

    async def flush_webhooks(self, within_s: float) -> None:
        """Give the deliverer up to `within_s` to make its first attempt at every message already due (the
        conversations a drain just ended); what is left stays in the outbox for the next server to deliver."""
        self.deliverer.notify()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        try:
            while loop.time() < deadline:
                due = await self.store.next_webhook_due()
                if due is None or due > utc_now():
                    return
                await asyncio.sleep(0.1)
        except Exception:  # (the store failing: the messages are in the outbox all the same)
            log.warning("webhooks not flushed before stopping", exc_info=True)

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


class HealerTasks:
    """One `ModelHealer` per Triton server of the set, each running as its own owned task once `start`ed;
    servers found or dropped by discovery come and go (`add`, `remove`). `counts` keeps what the healers of
    servers that left did, so the metrics' counters never go back."""

    def __init__(self, make: Callable[[TritonModels], ModelHealer]) -> None:
        self.make = make
        self._healers: dict[str, ModelHealer] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._gone: Counter[tuple[str, str]] = Counter()
        self._stopping: set[asyncio.Task[None]] = set()
        self._started = False

    def add(self, view: TritonModels) -> None:
        """A healer for the one server of `view` (`models.at(url)`)."""
        healer = self._healers[view.url] = self.make(view)
        if self._started:
            self._run(view.url, healer)

    def start(self) -> None:
        self._started = True
        for url, healer in self._healers.items():
            self._run(url, healer)

    def _run(self, url: str, healer: ModelHealer) -> None:
        self._tasks[url] = asyncio.create_task(healer.run(), name=f"model-healer-{url}")

    def remove(self, url: str) -> None:
        healer = self._healers.pop(url, None)
        if healer is not None:
            self._gone += healer.counts
        if (task := self._tasks.pop(url, None)) is not None:
            task.cancel()  # (`close` still waits for it if it has not ended by then)
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def all(self) -> list[ModelHealer]:
        return list(self._healers.values())

    def counts(self) -> Counter[tuple[str, str]]:
        return sum((h.counts for h in self._healers.values()), Counter(self._gone))

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._stopping]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


@contextlib.asynccontextmanager
async def running_stack(settings: Settings, drain: Drain | None = None) -> AsyncIterator[Running]:
    """Start Triton if needed, then the store and the control plane, then the session server; stop all on exit.
    With `drain` (`serve`'s), new sessions are refused and readiness fails once it drains.

    Protected mode: on a loopback address, sessions that name only a persona (the CLI's way) need no key; bound
    to any other address, every REST call needs a key and every session a conversation's join token, so the
    server refuses to start there without the control plane that issues them."""
    if not is_loopback(settings.server.host) and not settings.api.enabled:
        raise BadOption(
            f"server.host {settings.server.host} is not loopback: sessions there need join tokens, which the "
            "control plane issues; enable api.enabled (and create a tenant with `duet admin tenant create`)"
        )
    embedded: EmbeddedTriton | None = None
    # one Triton, or several that calls are spread over, or DNS names that stand for several (re-resolved)
    if entries := settings.triton.endpoints():
        membership, urls = await initial_endpoints(entries)
    else:
        embedded = EmbeddedTriton(settings.triton)
        await asyncio.to_thread(embedded.start)
        membership, urls = Membership([embedded.grpc_url]), (embedded.grpc_url,)
    url = ",".join(entries) or urls[0]  # as configured (a DNS name as written)
    pool = PoolPolicy(check_interval_s=settings.triton.health_interval_s)
    models = TritonModels(urls, timeout_s=settings.triton.request_timeout_s, policy=pool)
    models.llm_timeout_s = settings.llm.timeout_s
    # a model whose stub died is reloaded (found by a failed request, or by watching the embedded server's stubs),
    # on its own server: each has its healer
    healers = HealerTasks(
        lambda view: ModelHealer(
            view,
            probe=embedded.stubs if embedded else None,
            restart_server=embedded.kill if embedded else None,  # when reloads do not work; `supervise` restarts it
            kill_stubs=embedded.kill_stubs if embedded else None,  # a hung stub must not outlive its reload
        )
    )
    for u in models.urls:
        healers.add(models.at(u))
    background: list[asyncio.Task[None]] = []
    server: grpc.aio.Server | None = None
    service: SessionService | None = None
    lag: asyncio.Task[None] | None = None
    control: ControlStack | None = None
    readiness: Readiness | None = None
    telemetry = Telemetry()
    try:
        if settings.api.enabled:
            control = await open_control(settings)
        served = tuple(m for m in settings.triton.models if m in SERVED_MODELS)
        await models.ready(served)

        async def triton_ready() -> None:
            await models.ready(served)

        checks = {"triton": CachedProbe("triton", triton_ready, "Triton or a model this server calls is not ready")}
        if control is not None:
            checks["store"] = store_probe(control.store)
        readiness = Readiness(checks, drain)
        healers.start()
        # servers that fail leave rotation, and come back when ready
        background.append(asyncio.create_task(models.watch_endpoints(), name="triton-endpoints"))
        if membership.dynamic:  # servers found by DNS join and leave the set, each with its healer
            discovery = EndpointDiscovery(
                models,
                membership,
                interval_s=settings.triton.discovery_interval_s,
                on_added=lambda u: healers.add(models.at(u)),
                on_retired=healers.remove,
            )
            background.append(asyncio.create_task(discovery.run(), name="triton-discovery"))
        if embedded is not None:  # a tritonserver that dies is started again on the same ports

            async def restarted() -> None:
                for healer in healers.all():
                    healer.server_restarted()

            background.append(asyncio.create_task(embedded.supervise(restarted), name="triton-supervisor"))
        restarts = (lambda: embedded.restarts) if embedded is not None else (lambda: 0)
        telemetry.watch_healing(healers.counts, restarts)
        telemetry.watch_endpoints(models.endpoint_states)
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
            drain=drain,
        )
        pb_grpc.add_SessionServicer_to_server(service, server)  # type: ignore[no-untyped-call]
        add_standard_services(server, SessionHealth(readiness))  # grpc.health.v1 and reflection
        port = server.add_insecure_port(f"{settings.server.host}:{settings.server.port}")
        http_url = None
        if control is not None:
            embedder = models if "embed" in settings.triton.models else None
            control.conversations.intel.attach(embedder, language_model(settings, models))
            control.conversations.live = service
            control.conversations.grpc_address = f"{public_host(settings)}:{port}"
            http_url = await control.serve_http(settings, service, readiness)
        own_metrics = telemetry.serve(settings.metrics)
        lag = asyncio.create_task(telemetry.watch_loop(), name="telemetry-loop-lag")
        await server.start()
        yield Running(
            address=f"{settings.server.host}:{port}",
            triton_url=url,
            metrics_url=embedded.metrics_url if embedded else None,
            orchestrator_metrics_url=own_metrics,
            http_url=http_url,
            sessions=service,
            readiness=readiness,
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
            if drain is not None and drain.draining and not drain.forced:
                await control.flush_webhooks(WEBHOOK_FLUSH_S)
            await control.close()
        if readiness is not None:
            await readiness.close()
        if lag is not None:
            lag.cancel()
            await asyncio.gather(lag, return_exceptions=True)
        telemetry.close()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await healers.close()
        await models.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def serve(settings: Settings, on_ready: Callable[[Running], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM, then drain (`drain_sessions`) and stop."""
    signals = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.set)
    drain = Drain(settings.server.drain_timeout_s)
    async with running_stack(settings, drain) as running:
        if running.orchestrator_metrics_url:
            log.info("duet metrics on %s", running.orchestrator_metrics_url)
        if running.http_url:
            log.info(
                "duet control plane (REST) on %s/v1 (OpenAPI: %s/v1/openapi.json)", running.http_url, running.http_url
            )
        log.info("duet serving sessions on %s (triton %s)", running.address, running.triton_url)
        if on_ready:
            on_ready(running)
        await signals.wait()
        await drain_sessions(drain, running, signals, loop.time)
        log.info("shutting down")


async def drain_sessions(
    drain: Drain,
    running: Running,
    signals: asyncio.Event,
    clock: Callable[[], float],
    tick_s: float = DRAIN_TICK_S,
) -> None:
    """A signal came (`signals` is set): refuse new sessions and fail readiness at once, let the live sessions go
    on until they end or the drain time passes, then end the rest (shutdown reason `error`, a fatal `draining`
    error to their clients). Returns when none is left, or at once on the next signal."""
    signals.clear()
    drain.signal(clock())
    if running.readiness is not None:
        running.readiness.changed()  # gRPC health watchers see NOT_SERVING now
    service = running.sessions

    def live() -> int:  # sessions and renders holding a slot (one still starting included)
        return service.active if service is not None else 0

    log.info(
        "draining: no new sessions; %d live may go on for up to %g s (a second signal stops at once)",
        live(),
        drain.timeout_s,
    )
    while True:
        step = drain.step(clock(), live())
        if step is Step.EXIT:
            return
        if step is Step.END_REMAINING and service is not None:
            log.warning("drain time (%g s) passed: ending %d live sessions", drain.timeout_s, live())
            ended = Draining(f"the server is shutting down and its drain time ({drain.timeout_s:g} s) passed")
            await service.end_all("error", ended)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain.wait_s(clock(), tick_s)):
                await signals.wait()
        if signals.is_set():
            signals.clear()
            drain.signal(clock())
            log.warning("a second signal: stopping now (%d live sessions are cancelled)", live())


def run(coro_factory: Callable[[], object]) -> None:
    """Run a coroutine on uvloop (the orchestrator's event loop)."""
    import uvloop

    uvloop.run(coro_factory())  # type: ignore[arg-type]
