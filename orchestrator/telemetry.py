"""The orchestrator's Prometheus metrics: what a user feels, on the wall clock, for an operator.

One `Telemetry` per service (its own registry, so tests and several servers in one process never mix):
- `duet_sessions_open`: sessions (and renders) holding a slot now; after every client is gone it must read 0;
- `duet_sessions_total{mode}` / `duet_sessions_ended_total{reason}`: how sessions began and ended;
- `duet_refusals_total{reason}`: streams refused before or during a session (`server_busy`, `bad_option`, ...);
- `duet_drops_total{kind}`: input dropped by a bound (`video_frame`, `text`, `audio_chunk`);
- `duet_paced_sessions_total`, `duet_pacing_delay_seconds_total`: audio read at real time instead of faster;
- `duet_stage_latency_seconds{stage}`: wall-clock latency per stage (`floor_decision`, `asr_final`,
  `llm_first_token`, `tts_first_chunk`, `first_audio`);
- `duet_event_loop_lag_seconds`: how late the orchestrator's event loop runs a timer (every session shares it);
- `duet_asyncio_tasks`: asyncio tasks alive on the orchestrator's loop (a soak watches it return to idle);
- `duet_triton_endpoint_up{endpoint}` (1: in rotation), `duet_triton_endpoint_outstanding{endpoint}`,
  `duet_triton_endpoint_calls_total{endpoint}`, `duet_triton_endpoint_drops_total{endpoint}` and
  `duet_triton_endpoint_retries_total{endpoint}` (calls that failed there and went to another): each Triton server.

Served by prometheus-client's own HTTP server thread on `metrics.host:metrics.port` (loopback by default).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from orchestrator.config import MetricsSettings
from orchestrator.events import Event, FloorEvent, ReplicaSpeakingStart
from orchestrator.models.endpoints import EndpointState

log = logging.getLogger("duet.telemetry")

STAGES = ("floor_decision", "asr_final", "llm_first_token", "tts_first_chunk", "first_audio")
# Seconds: from a fast model call to a reply that a loaded machine delivers late.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0)
# Fields (milliseconds) of `replica_speaking_start.latency` that carry a stage's wall-clock latency.
_REPLY_STAGES = {
    "asr_final_ms": "asr_final",
    "llm_first_token_ms": "llm_first_token",
    "tts_first_chunk_ms": "tts_first_chunk",
}


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_open = Gauge("duet_sessions_open", "Sessions and renders holding a slot", registry=r)
        self.sessions = Counter("duet_sessions", "Sessions started, by mode", ["mode"], registry=r)
        self.ended = Counter("duet_sessions_ended", "Sessions ended, by reason", ["reason"], registry=r)
        self.refusals = Counter("duet_refusals", "Streams refused, by error code", ["reason"], registry=r)
        self.drops = Counter("duet_drops", "Client input dropped by a bound, by kind", ["kind"], registry=r)
        self.paced = Counter("duet_paced_sessions", "Sessions whose audio was read at real time", registry=r)
        self.evicted = Counter(
            "duet_evicted_sessions",
            "Sessions in the bulk lane ended at the session limit to make room for a new one",
            registry=r,
        )
        self.pacing_delay = Counter(
            "duet_pacing_delay_seconds", "Total time readers waited to keep audio at real time", registry=r
        )
        self.latency = Histogram(
            "duet_stage_latency_seconds", "Wall-clock latency per stage", ["stage"], buckets=BUCKETS, registry=r
        )
        self.loop_lag = Histogram(
            "duet_event_loop_lag_seconds",
            "How late the orchestrator's event loop runs a timer (all sessions share the loop)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.asyncio_tasks = Gauge(
            "duet_asyncio_tasks", "asyncio tasks alive on the orchestrator's event loop", registry=r
        )
        for stage in STAGES:  # every series exists from the start (a scrape sees zeros, not absences)
            self.latency.labels(stage=stage)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def observe_event(self, event: Event) -> None:
        """Stage latencies from the session's own events (their wall-clock fields)."""
        if isinstance(event, FloorEvent) and event.kind == "eot_commit" and event.compute_ms is not None:
            self.latency.labels(stage="floor_decision").observe(event.compute_ms / 1000)
        elif isinstance(event, ReplicaSpeakingStart):
            for key, stage in _REPLY_STAGES.items():
                value = getattr(event.latency, key)
                if value is not None and value > 0:
                    self.latency.labels(stage=stage).observe(value / 1000)

    def watch_healing(self, counts: Callable[[], Mapping[tuple[str, str], int]], restarts: Callable[[], int]) -> None:
        """Export the model healer's counts (`duet_model_healing_total{event,model}`) and the embedded
        tritonserver's restarts (`duet_triton_restarts_total`), read at scrape time."""
        self.registry.register(_HealingMetrics(counts, restarts))

    def watch_endpoints(self, states: Callable[[], Iterable[EndpointState]]) -> None:
        """Export each Triton server's rotation, outstanding requests and counts (`duet_triton_endpoint_*`),
        read at scrape time."""
        self.registry.register(_EndpointMetrics(states))

    def first_audio(self, seconds: float) -> None:
        self.latency.labels(stage="first_audio").observe(max(seconds, 0.0))

    async def watch_loop(self, period_s: float = 0.25) -> None:
        """Measure the event loop's lag for ever (run it as an owned task): a busy loop delays every session.
        Each tick also counts the loop's live tasks (one pass over a weak set): a task leak shows as a count
        that does not return to its idle value."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + period_s
            await asyncio.sleep(period_s)
            self.loop_lag.observe(max(loop.time() - due, 0.0))
            self.asyncio_tasks.set(len(asyncio.all_tasks(loop)))

    def serve(self, s: MetricsSettings) -> str | None:
        """Start the HTTP endpoint; returns its URL (None when disabled)."""
        if not s.enabled:
            return None
        self._server, self._thread = start_http_server(s.port, addr=s.host, registry=self.registry)
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition (enough for tests and benchmarks to read the endpoint)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metrics_by_key(text: str) -> dict[str, float]:
    """`name{label=value,...}` (labels sorted; bare `name` without labels) -> value, for every sample."""
    out: dict[str, float] = {}
    for s in parse_metrics(text):
        key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
        out[key] = s.value
    return out


__all__ = ["STAGES", "Sample", "Telemetry", "metrics_by_key", "parse_metrics"]


class _HealingMetrics:
    """Prometheus view of the healer's and the supervisor's counts (read at scrape time)."""

    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]], restarts: Callable[[], int]) -> None:
        self.counts, self.restarts = counts, restarts

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "duet_model_healing", "Model healing, by event and model", labels=["event", "model"]
        )
        for (event, model), n in sorted(self.counts().items()):
            events.add_metric([event, model], n)
        yield events
        yield CounterMetricFamily("duet_triton_restarts", "Embedded tritonserver restarts", value=self.restarts())


class _EndpointMetrics:
    """Prometheus view of the Triton endpoints (read at scrape time)."""

    def __init__(self, states: Callable[[], Iterable[EndpointState]]) -> None:
        self.states = states

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "duet_triton_endpoint_up", "1 while the Triton server is in rotation", labels=["endpoint"]
        )
        outstanding = GaugeMetricFamily(
            "duet_triton_endpoint_outstanding", "Requests in flight to the Triton server", labels=["endpoint"]
        )
        calls = CounterMetricFamily(
            "duet_triton_endpoint_calls", "Calls sent to the Triton server", labels=["endpoint"]
        )
        drops = CounterMetricFamily(
            "duet_triton_endpoint_drops", "Times the Triton server left rotation", labels=["endpoint"]
        )
        retries = CounterMetricFamily(
            "duet_triton_endpoint_retries",
            "Calls that failed on the Triton server with a transport error and were sent to another",
            labels=["endpoint"],
        )
        for s in self.states():
            up.add_metric([s.url], 1.0 if s.up else 0.0)
            outstanding.add_metric([s.url], s.outstanding)
            calls.add_metric([s.url], s.calls)
            drops.add_metric([s.url], s.drops)
            retries.add_metric([s.url], s.retries)
        yield from (up, outstanding, calls, drops, retries)
