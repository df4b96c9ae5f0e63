"""The REST control plane under load, the way to a conversation's first words, and webhook delivery: everything
real (a `duet serve` subprocess in front of a real tritonserver, the real store), on SQLite and on PostgreSQL.

    .venv/bin/python perf/bench_api.py                                  # everything, ~10 min (`make bench-api`)
    .venv/bin/python perf/bench_api.py --backends sqlite --parts load   # one part, one store
    .venv/bin/python perf/bench_api.py --triton-url 127.0.0.1:8001      # a tritonserver already running

Per store backend (SQLite: a file in a temp dir; PostgreSQL: a throwaway cluster from tests/pg.py), one `duet
serve` process (`DUET_API__KEY_REQUESTS_PER_S=100000`, so the per-key rate limit never answers) and one tenant
made with `duet admin tenant create NAME --max-concurrent 1000000`. The parts, in this order:

1. **greeting** — `POST /v1/conversations` for a persona with a `greeting`, then an SDK session joins with the
   token (connect, `start`, silence streamed at real time) until the first chunk of replica audio arrives.
   Split into the POST, the join (connect + start until `session_started`) and join → first audio. One untimed
   warm-up, then `--greetings` repeats, one at a time. Target: POST → first audio ≤ 1.5 s at p90 on CPU.
2. **webhooks** — an aiohttp receiver on loopback that checks every signature (Standard Webhooks) and keeps
   each `webhook-id`'s first acknowledged arrival. Conversations made with a `callback_url` and ended through
   the API give one `conversation.ended` each. (a) healthy: `--webhook-events` events; latency = arrival − the
   event's `timestamp` (the moment the end was recorded), target p99 ≤ 1 s. (b) outage (`--outage-backends`):
   the receiver answers 503 for `--outage-s`, events keep coming during the first part of it, then it answers
   204 again: events lost (must be 0), duplicates (an id acknowledged twice), time from recovery until the last
   one arrived. (c) restart: receiver down (port closed), 100 events made, `duet serve` stopped with SIGTERM and
   started again on the same store, receiver up: all delivered after it, duplicates, time to drain.
3. **load** — `wrk` (Debian's package; installed with apt-get when missing and running as root) at each
   `--concurrency` for `--duration` s a point: `POST /v1/conversations`, `GET /v1/conversations/{id}` (50 ids),
   `GET /v1/conversations?limit=20` and `POST /v1/conversations/{id}/interactions` (`sensitivity`, on one of
   `--sessions` conversations joined by SDK sessions that stream silence at real time for the whole part, so
   sessions are running while the API is loaded). One Lua script per request type sets the bearer key and the
   JSON body and counts non-2xx answers in its `response`/`done` hooks; p50/p99 and requests/s are wrk's own
   (`--latency`). wrk is closed-loop: N connections keep N requests in flight all the time, the hardest reading
   of "N concurrent clients". Targets at 64 clients: p99 ≤ 50 ms for reads, ≤ 150 ms for creates (both POSTs),
   no errors. Server CPU per request (from /proc) says where the ceiling is.

Prints Markdown tables and writes perf/out/bench_api.json. docs/api-bench.md reads the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients"))

import duet  # noqa: E402
from duet.sdk import ReplyAudio, Session, connect  # noqa: E402
from orchestrator.control.webhooks import WebhookVerificationError, verify  # noqa: E402
from orchestrator.models.launcher import free_port  # noqa: E402
from tests.pg import ThrowawayPostgres  # noqa: E402

DUET = str(Path(sys.executable).parent / "duet")
OUT = ROOT / "perf" / "out" / "bench_api.json"
BACKENDS = ("sqlite", "postgresql")
PARTS = ("greeting", "webhooks", "load")
OPS = ("get", "list", "interaction", "create")  # creates last: the rows they add stay open
OP_NAMES = {
    "create": "create conversation",
    "get": "get conversation",
    "list": "list conversations (20)",
    "interaction": "create interaction",
}
READS = ("get", "list")
TARGET_READ_P99_MS = 50.0
TARGET_CREATE_P99_MS = 150.0
TARGET_CLIENTS = 64
TARGET_GREETING_S = 1.5
TARGET_WEBHOOK_P99_S = 1.0
IDLE_S = 3.0
SEED_CONVERSATIONS = 50  # the ids `get` picks from (and rows for `list`)
SILENCE = bytes(640)  # 20 ms of PCM16 mono at 16 kHz
CHUNK_S = 0.02
AUDIBLE = 100  # |sample| above this is sound (about -50 dBFS)
SERVER_START_S = 120.0
LOG_LINES = 5000
TENANT_QUOTA = 1_000_000
# The load sessions' persona: what it says does not matter, only that sessions run. The small LLM keeps the
# start-of-session prefill cheap.
FAST = {"llm": {"model": "smollm2-135m", "max_tokens": 40}}
GREETING = "Hello, this is Ava from Duet. How can I help you today?"
TICK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench_api {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ processes
def ensure_wrk() -> str:
    """The `wrk` binary; installs Debian's package when it is missing and we may (root with apt-get)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(
            "bench_api: the HTTP load generator `wrk` is not installed, and this is not root with apt-get to "
            "install it: run `sudo apt-get install -y wrk` (Debian's package), then again"
        )
    log("wrk is missing: apt-get install -y wrk")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "wrk"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:  # a stale package list: refresh it once
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, check=False, timeout=600)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=600)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit(f"bench_api: `apt-get install -y wrk` failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return found


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


class Triton:
    """The shared tritonserver: perf/triton_up.py (the embedded server, all models), or one given by URL."""

    def __init__(self, url: str | None) -> None:
        self.url = url or ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        if self.url:
            return self.url
        log("starting tritonserver (perf/triton_up.py) ...")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "perf" / "triton_up.py")], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        line = self.proc.stdout.readline() if ready else ""
        if not line.strip():
            self.stop()
            raise RuntimeError("tritonserver did not start (perf/triton_up.py printed nothing)")
        self.url = line.split()[0]
        return self.url

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None


class Server:
    """One `duet serve` child, its output read all the time by a thread (a full pipe would stall its logging)."""

    live: ClassVar[set[Server]] = set()  # stopped on any exit of the bench

    def __init__(self, env: Mapping[str, str], workdir: Path, log_path: Path | None = None) -> None:
        self.env = dict(env)
        self.workdir = workdir
        self.log_path = log_path  # every line of its output, restarts included
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""
        self.http_url = ""
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.errors = 0  # ERROR records in its log
        self.start_s = 0.0

    def start(self) -> Server:
        grpc_port, http_port = free_port(), free_port()
        env = dict(self.env, DUET_API__HTTP_PORT=str(http_port))
        began = time.monotonic()
        self.address = self.http_url = ""
        ready = threading.Event()  # one per process: the last one's reader may still be finishing
        self.proc = subprocess.Popen(
            [DUET, "serve", "--port", str(grpc_port)],
            env=env,
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        Server.live.add(self)
        threading.Thread(target=self._drain, args=(self.proc, ready), daemon=True, name="duet-serve-log").start()
        if not ready.wait(SERVER_START_S) or self.proc.poll() is not None or not self.address:
            tail = "\n".join(list(self.lines)[-40:])
            self.stop()
            raise RuntimeError(f"duet serve did not start:\n{tail}")
        self.start_s = time.monotonic() - began
        return self

    def _drain(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        sink = self.log_path.open("a", encoding="utf-8") if self.log_path else None
        try:
            self._read(proc, ready, sink)
        finally:
            if sink is not None:
                sink.close()
        ready.set()

    def _read(self, proc: subprocess.Popen[str], ready: threading.Event, sink: Any) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            self.lines.append(line)
            if sink is not None:
                sink.write(raw)
                sink.flush()
            if " ERROR " in line:
                self.errors += 1
            if "control plane on " in line:
                self.http_url = line.split("control plane on ", 1)[1].split("/v1", 1)[0].strip()
            if "serving sessions on " in line:
                self.address = line.split("serving sessions on ", 1)[1].split()[0]
                ready.set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid) if self.proc is not None else 0.0

    def stop(self, timeout_s: float = 30.0) -> tuple[float, int | None]:
        """SIGTERM, then SIGKILL after `timeout_s`: (seconds it took, exit code)."""
        began = time.monotonic()
        code: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=30)
            code = self.proc.returncode
        Server.live.discard(self)
        return time.monotonic() - began, code

    def error_lines(self, n: int = 5) -> list[str]:
        return [x for x in self.lines if " ERROR " in x][-n:]


def admin(env: Mapping[str, str], workdir: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [DUET, "admin", *args], env=dict(env), cwd=workdir, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"duet admin {' '.join(args)} failed: {done.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout)
    return out


@contextlib.contextmanager
def store_url(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield str(workdir / "duet.db")
        return
    pg = ThrowawayPostgres()
    log("starting a throwaway PostgreSQL (tests/pg.py) ...")
    with pg:
        yield pg.dsn


# ----------------------------------------------------------------------------------------------- statistics
def pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


# ------------------------------------------------------------------------------------------------- sessions
class LiveSession:
    """A conversation joined by an SDK session that streams silence at real time and reads everything."""

    def __init__(self, address: str, conversation_id: str, token: str) -> None:
        self.address = address
        self.conversation_id = conversation_id
        self.token = token
        self.started = asyncio.Event()
        self.first_audio = asyncio.Event()
        self.t_started = 0.0
        self.t_audio = 0.0
        self.t_audible = 0.0
        self.events = 0
        self.audio_chunks = 0
        self.fatal: str | None = None
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self.session: Session | None = None

    async def open(self) -> LiveSession:
        self.session = await self._stack.enter_async_context(
            connect(self.address, conversation_id=self.conversation_id, token=self.token)
        )
        self._tasks = [
            asyncio.create_task(self._speak(self.session), name=f"silence-{self.conversation_id}"),
            asyncio.create_task(self._listen(self.session), name=f"listen-{self.conversation_id}"),
        ]
        return self

    async def _speak(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        t0, n = loop.time(), 0
        while True:
            wait = t0 + n * CHUNK_S - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await session.send_audio(SILENCE)
            n += 1

    async def _listen(self, session: Session) -> None:
        try:
            async for item in session.items():
                if isinstance(item, ReplyAudio):
                    self.audio_chunks += 1
                    if not self.first_audio.is_set():
                        self.t_audio = time.perf_counter()
                        self.first_audio.set()
                    if not self.t_audible and np.abs(np.frombuffer(item.pcm, dtype="<i2")).max(initial=0) > AUDIBLE:
                        self.t_audible = time.perf_counter()
                elif isinstance(item, dict):
                    self.events += 1
                    if item.get("type") == "session_started" and not self.started.is_set():
                        self.t_started = time.perf_counter()
                        self.started.set()
            self.fatal = self.fatal or "stream ended"
        except duet.DuetError as err:
            self.fatal = f"{err.code}: {err.message}"
        finally:
            self.started.set()
            self.first_audio.set()

    async def close(self) -> None:
        if self.session is not None and self.fatal is None:
            with contextlib.suppress(Exception):
                await self.session.end()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._stack.aclose()


async def wait_active(client: duet.Client, conversation_id: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await client.get_conversation(conversation_id))["status"] != "active":
        if time.monotonic() > deadline:
            raise RuntimeError(f"conversation {conversation_id} did not become active in {timeout_s:.0f} s")
        await asyncio.sleep(0.1)


# ------------------------------------------------------------------------------------------------- greeting
async def greeting_once(client: duet.Client, address: str, persona_id: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    conv = await client.create_conversation(persona_id)
    t_post = time.perf_counter()
    live = LiveSession(address, conv["conversation_id"], conv["join"]["token"])
    try:
        await live.open()
        await asyncio.wait_for(live.started.wait(), 30)
        await asyncio.wait_for(live.first_audio.wait(), 30)
    finally:
        await live.close()
    if live.fatal is not None and not live.t_audio:
        raise RuntimeError(f"greeting session failed: {live.fatal}")
    return {
        "post_ms": (t_post - t0) * 1000,
        "join_ms": (live.t_started - t_post) * 1000,
        "first_audio_after_join_ms": (live.t_audio - live.t_started) * 1000,
        "total_s": live.t_audio - t0,
        "first_audible_s": (live.t_audible - t0) if live.t_audible else None,
    }


async def part_greeting(server: Server, api_key: str, repeats: int) -> dict[str, Any]:
    async with duet.Client(server.http_url, api_key) as client:
        persona = await client.create_persona(
            name="Ava (bench)", system_prompt="You are Ava, a friendly assistant.", greeting=GREETING
        )
        pid = persona["persona_id"]
        await greeting_once(client, server.address, pid)  # warm-up: first session of the process
        await asyncio.sleep(1.0)
        runs = []
        for _ in range(repeats):
            runs.append(await greeting_once(client, server.address, pid))
            await asyncio.sleep(1.0)  # the last session's teardown is not measured with the next
    total = [x["total_s"] for x in runs]
    out = {
        "repeats": repeats,
        "post_ms_p50": r(pct([x["post_ms"] for x in runs], 50)),
        "join_ms_p50": r(pct([x["join_ms"] for x in runs], 50)),
        "first_audio_after_join_ms_p50": r(pct([x["first_audio_after_join_ms"] for x in runs], 50)),
        "total_s_p50": r(pct(total, 50), 3),
        "total_s_p90": r(pct(total, 90), 3),
        "total_s_max": r(max(total), 3),
        "first_audible_s_p50": r(pct([x["first_audible_s"] for x in runs if x["first_audible_s"]], 50), 3),
        "runs": [{k: r(v, 3) for k, v in x.items()} for x in runs],
    }
    out["met"] = out["total_s_p90"] is not None and out["total_s_p90"] <= TARGET_GREETING_S
    return out


# ------------------------------------------------------------------------------------------------- webhooks
def parse_ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Receiver:
    """A team's webhook endpoint on loopback: verifies each signature, keeps each id's first acknowledged
    arrival; `mode` "ok" answers 204, "fail" 503; `stop()` closes the port (the receiver is down)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.mode = "ok"
        self.port = free_port()
        self.first: dict[str, dict[str, Any]] = {}  # webhook-id -> {arrival, conversation_id, event_type, latency}
        self.duplicates = 0  # acknowledged again after a first acknowledgement
        self.refused = 0  # attempts answered 503
        self.bad_signatures = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        arrival = time.time()
        body = await request.read()
        if self.mode == "fail":
            self.refused += 1
            return web.Response(status=503, text="down for maintenance")
        try:
            verify(self.secret, request.headers, body, now=datetime.now(UTC))
        except WebhookVerificationError:
            self.bad_signatures += 1
            return web.Response(status=400)
        wid = request.headers["webhook-id"]
        if wid in self.first:
            self.duplicates += 1
        else:
            payload = json.loads(body)
            self.first[wid] = {
                "arrival": arrival,
                "conversation_id": payload["conversation_id"],
                "event_type": payload["event_type"],
                "latency_s": arrival - parse_ts(payload["timestamp"]),
            }
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def ended(self, conversations: set[str]) -> list[dict[str, Any]]:
        """First acknowledged `conversation.ended` of each of `conversations`."""
        return [
            x
            for x in self.first.values()
            if x["event_type"] == "conversation.ended" and x["conversation_id"] in conversations
        ]


async def make_ended(
    client: duet.Client, persona_id: str, callback: str, n: int, *, workers: int = 4, spacing_s: float = 0.0
) -> set[str]:
    """`n` conversations made with `callback` and ended through the API: one `conversation.ended` each."""
    made: set[str] = set()
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            conv = await client.create_conversation(persona_id, callback_url=callback)
            await client.end_conversation(conv["conversation_id"])
            made.add(conv["conversation_id"])
            if spacing_s:
                await asyncio.sleep(spacing_s)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return made


async def wait_delivered(receiver: Receiver, conversations: set[str], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while len(receiver.ended(conversations)) < len(conversations):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def webhooks_healthy(client: duet.Client, pid: str, receiver: Receiver, n: int) -> dict[str, Any]:
    dup0 = receiver.duplicates
    began = time.monotonic()
    convs = await make_ended(client, pid, receiver.url, n)
    made_s = time.monotonic() - began
    await wait_delivered(receiver, convs, 60)
    await asyncio.sleep(1.0)  # late duplicates
    got = receiver.ended(convs)
    lat = [x["latency_s"] * 1000 for x in got]
    p99 = pct(lat, 99)
    return {
        "events": n,
        "events_per_s": r(n / made_s),
        "delivered": len(got),
        "lost": n - len(got),
        "duplicates": receiver.duplicates - dup0,
        "latency_ms_p50": r(pct(lat, 50)),
        "latency_ms_p90": r(pct(lat, 90)),
        "latency_ms_p99": r(p99),
        "latency_ms_max": r(max(lat) if lat else None),
        "met": p99 is not None and p99 <= TARGET_WEBHOOK_P99_S * 1000 and len(got) == n,
    }


async def webhooks_outage(client: duet.Client, pid: str, receiver: Receiver, n: int, outage_s: float) -> dict[str, Any]:
    dup0, refused0 = receiver.duplicates, receiver.refused
    receiver.mode = "fail"
    began = time.monotonic()
    # the events come during the first ~5/6 of the outage
    spacing = max(0.0, (outage_s * 5 / 6) / n - 0.02)
    convs = await make_ended(client, pid, receiver.url, n, workers=1, spacing_s=spacing)
    await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - began)))
    receiver.mode = "ok"
    recovered = time.time()
    log(f"  outage over after {time.monotonic() - began:.0f} s; waiting for the backlog ...")
    await wait_delivered(receiver, convs, 300)
    await asyncio.sleep(2.0)
    got = receiver.ended(convs)
    after = [x["arrival"] - recovered for x in got]
    return {
        "events": n,
        "outage_s": outage_s,
        "refused_attempts": receiver.refused - refused0,
        "delivered": len(got),
        "lost": n - len(got),
        "duplicates": receiver.duplicates - dup0,
        "drain_s": r(max(after), 2) if after else None,
        "after_recovery_s_p50": r(pct(after, 50), 2),
        "delivered_within_5s_of_recovery": sum(1 for x in after if x <= 5.0),
        "met": len(got) == n and receiver.duplicates == dup0,
    }


async def webhooks_restart(server: Server, api_key: str, pid: str, receiver: Receiver, n: int) -> dict[str, Any]:
    """Receiver down, `n` events made, the server stopped (SIGTERM) and started again on the same store, then
    the receiver up: are all delivered, and how long does it take."""
    dup0 = receiver.duplicates
    await receiver.stop()
    async with duet.Client(server.http_url, api_key) as client:
        convs = await make_ended(client, pid, receiver.url, n)
    await asyncio.sleep(1.0)  # a first attempt for each (refused: connection refused)
    stop_s, code = await asyncio.to_thread(server.stop)
    log(f"  server stopped with SIGTERM in {stop_s:.1f} s (exit {code}); starting it again on the same store ...")
    await asyncio.to_thread(server.start)
    await receiver.start()
    up = time.time()
    ok = await wait_delivered(receiver, convs, 300)
    await asyncio.sleep(2.0)
    got = receiver.ended(convs)
    after = [x["arrival"] - up for x in got]
    return {
        "events": n,
        "undelivered_at_stop": n,
        "stop_s": r(stop_s, 2),
        "exit_code": code,
        "restart_s": r(server.start_s, 1),
        "delivered": len(got),
        "lost": n - len(got),
        "duplicates": receiver.duplicates - dup0,
        "drain_s": r(max(after), 2) if after else None,
        "met": ok and len(got) == n and receiver.duplicates == dup0,
    }


# ----------------------------------------------------------------------------------------------------- load
LUA_COMMON = """\
-- generated by perf/bench_api.py: {op}
wrk.headers["Authorization"] = "Bearer {key}"
local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  non2xx = 0
  first_bad = ""
end
function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if first_bad == "" then
      first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 200)
    end
  end
end
function done(summary, latency, requests)
  local bad, first = 0, ""
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
    local f = t:get("first_bad")
    if first == "" and f ~= nil then first = f end
  end
  local e = summary.errors
  io.write(string.format(
    'DUET_WRK {{"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}}\\n',
    summary.requests, summary.duration, bad, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
  if first ~= "" then io.write("DUET_WRK_FIRST_BAD " .. first .. "\\n") end
end
"""

LUA_REQUEST = {
    "create": """\
wrk.method = "POST"
wrk.path = "/v1/conversations"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{{"persona_id": "{persona_id}"}}'
""",
    "get": """\
local ids = {{{ids}}}
function request()
  return wrk.format("GET", "/v1/conversations/" .. ids[math.random(#ids)])
end
""",
    "list": """\
wrk.method = "GET"
wrk.path = "/v1/conversations?limit=20"
""",
    "interaction": """\
local ids = {{{ids}}}
wrk.headers["Content-Type"] = "application/json"
local body = '{{"type": "sensitivity", "turn_taking_patience": "medium"}}'
function request()
  return wrk.format("POST", "/v1/conversations/" .. ids[math.random(#ids)] .. "/interactions", nil, body)
end
""",
}


def lua_script(op: str, key: str, persona_id: str = "", ids: Sequence[str] = (), think_ms: int = 0) -> str:
    """wrk's script for `op`; `think_ms` > 0 makes each connection wait 0.5-1.5x that between its requests."""
    quoted = ", ".join(f'"{i}"' for i in ids)
    script = LUA_COMMON.format(op=op, key=key) + LUA_REQUEST[op].format(persona_id=persona_id, ids=quoted)
    if think_ms > 0:
        script += f"function delay()\n  return math.random({think_ms // 2}, {think_ms * 3 // 2})\nend\n"
    return script


UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(text: str) -> dict[str, Any]:
    """wrk's `--latency` table (50/75/90/99 %), requests/s, socket errors, and our Lua hook's line."""
    out: dict[str, Any] = {}
    lua: dict[str, Any] = {}
    for line in text.splitlines():
        s = line.strip()
        parts = s.split()
        if len(parts) == 2 and parts[0] in ("50%", "75%", "90%", "99%"):
            value = parts[1]
            unit = value.lstrip("0123456789.")
            out[f"p{parts[0][:-1]}_ms"] = float(value[: len(value) - len(unit)]) * UNIT_MS[unit]
        elif s.startswith("Requests/sec:"):
            out["rps"] = float(parts[1])
        elif s.startswith("Non-2xx or 3xx responses:"):
            out["wrk_non2xx_3xx"] = int(parts[-1])
        elif s.startswith("DUET_WRK_FIRST_BAD "):
            out["first_bad"] = s[len("DUET_WRK_FIRST_BAD ") :][:200]
        elif s.startswith("DUET_WRK "):
            lua = json.loads(s[len("DUET_WRK ") :])
    if not lua or "p99_ms" not in out:
        raise RuntimeError(f"wrk output not understood:\n{text[-3000:]}")
    out["requests"] = lua["requests"]
    out["non2xx"] = lua["non2xx"]
    out["socket_errors"] = lua["connect"] + lua["read"] + lua["write"] + lua["timeout"]
    out["errors"] = out["non2xx"] + out["socket_errors"]
    out["max_ms"] = lua["max_us"] / 1000
    return out


async def run_wrk(wrk: str, base: str, script: Path, clients: int, duration_s: float) -> dict[str, Any]:
    url = base + "/"  # every script names its own path
    cmd = [wrk, "-t", "1", "-c", str(clients), "-d", f"{duration_s:g}s", "--timeout", "10s", "--latency"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, "-s", str(script), url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), duration_s + 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return parse_wrk(out.decode(errors="replace"))


def target_of(op: str) -> float:
    return TARGET_READ_P99_MS if op in READS else TARGET_CREATE_P99_MS


async def part_load(
    server: Server,
    api_key: str,
    wrk: str,
    workdir: Path,
    ops: Sequence[str],
    levels: Sequence[int],
    duration_s: float,
    n_sessions: int,
    think_ms: int = 0,
) -> dict[str, Any]:
    async with duet.Client(server.http_url, api_key) as client:
        persona = await client.create_persona(
            name="Load (bench)", system_prompt="You are a quiet assistant.", greeting="Hi.", layers=FAST
        )
        pid = persona["persona_id"]
        seed = [(await client.create_conversation(pid))["conversation_id"] for _ in range(SEED_CONVERSATIONS)]
        sessions: list[LiveSession] = []
        try:
            for _ in range(n_sessions):
                conv = await client.create_conversation(pid, properties={"max_duration_s": 3600})
                sessions.append(
                    await LiveSession(server.address, conv["conversation_id"], conv["join"]["token"]).open()
                )
            for s in sessions:
                await wait_active(client, s.conversation_id)
            live_ids = [s.conversation_id for s in sessions]
            points = [(c, 0) for c in levels]
            if think_ms > 0:  # the same clients at a human pace: each waits between its requests
                points.append((TARGET_CLIENTS, think_ms))
            scripts: dict[tuple[str, int], Path] = {}
            for op in OPS:
                for think in {t for _, t in points}:
                    path = workdir / f"{op}-{think}.lua"
                    ids = live_ids if op == "interaction" else seed
                    path.write_text(lua_script(op, api_key, pid, ids, think))
                    scripts[op, think] = path
            cpu0 = server.cpu_s()
            await asyncio.sleep(IDLE_S)  # what the sessions alone cost the server
            sessions_cpu_pct = 100 * (server.cpu_s() - cpu0) / IDLE_S
            await run_wrk(wrk, server.http_url, scripts["list", 0], 8, 2)  # warm-up, not recorded
            rows: list[dict[str, Any]] = []
            created = 0
            for op in ops:
                for clients, think in points:
                    cpu0, (busy0, all0) = server.cpu_s(), machine_cpu()
                    row = await run_wrk(wrk, server.http_url, scripts[op, think], clients, duration_s)
                    cpu1, (busy1, all1) = server.cpu_s(), machine_cpu()
                    ok_requests = max(1, row["requests"] - row["non2xx"])
                    if op == "create":
                        created += ok_requests
                    row.update(
                        op=op,
                        clients=clients,
                        think_ms=think,
                        server_cpu_pct=r(100 * (cpu1 - cpu0) / duration_s),
                        # net of what the sessions alone cost meanwhile
                        server_cpu_ms_per_request=r(
                            1000 * max(0.0, cpu1 - cpu0 - sessions_cpu_pct / 100 * duration_s) / ok_requests, 2
                        ),
                        machine_cpu_pct=r(100 * (busy1 - busy0) / max(1.0, all1 - all0)),
                    )
                    rows.append(row)
                    log(
                        f"  {op:<11} c={clients:<3} think {think:<4} p50 {row['p50_ms']:7.1f} ms  "
                        f"p99 {row['p99_ms']:7.1f} ms  {row['rps']:7.1f} req/s  errors {row['errors']}  "
                        f"server CPU {row['server_cpu_pct']} %"
                    )
                    await asyncio.sleep(0.5)
            # the same single-client create once the tenant has many open conversations (the quota counts them)
            after: dict[str, Any] = {}
            if "create" in ops:
                after = await run_wrk(wrk, server.http_url, scripts["create", 0], 1, duration_s)
                after.update(op="create", clients=1, open_before=created + SEED_CONVERSATIONS + n_sessions)
            alive = [s.fatal is None for s in sessions]
            session_info = [{"events": s.events, "audio_chunks": s.audio_chunks, "fatal": s.fatal} for s in sessions]
        finally:
            for s in sessions:
                await s.close()
    return {
        "rows": rows,
        "create_c1_after_open": after,
        "sessions": n_sessions,
        "server_cpu_pct_sessions_alone": r(sessions_cpu_pct),
        "sessions_alive_at_end": sum(alive),
        "session_info": session_info,
    }


def verdicts(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per operation at TARGET_CLIENTS (closed loop: `op`; with think time: `op`+`_paced`): p99 against its
    target, and no errors."""
    out = {}
    for row in rows:
        if row["clients"] != TARGET_CLIENTS:
            continue
        target = target_of(row["op"])
        out[row["op"] + ("_paced" if row["think_ms"] else "")] = {
            "p99_ms": r(row["p99_ms"]),
            "target_p99_ms": target,
            "errors": row["errors"],
            "met": row["p99_ms"] <= target and row["errors"] == 0,
        }
    return out


# --------------------------------------------------------------------------------------------------- report
def fmt_ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def print_report(results: Mapping[str, Any]) -> None:
    backends = results["backends"]
    for name, b in backends.items():
        load = b.get("load")
        if not load:
            continue
        print(f"\n### API latency under load — {name} ({load['sessions']} sessions streaming)\n")
        print(
            "| operation | clients | p50 ms | p99 ms | req/s | errors | server CPU ms/req (net of sessions) "
            "| server CPU % | target |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for row in load["rows"]:
            mark = ""
            if row["clients"] == TARGET_CLIENTS:
                ok = row["p99_ms"] <= target_of(row["op"]) and row["errors"] == 0
                mark = f"p99 ≤ {target_of(row['op']):.0f} ms: {'met' if ok else '**missed**'}"
            clients = f"{row['clients']} ({row['think_ms']} ms think)" if row["think_ms"] else str(row["clients"])
            print(
                f"| {OP_NAMES[row['op']]} | {clients} | {fmt_ms(row['p50_ms'])} | {fmt_ms(row['p99_ms'])} "
                f"| {row['rps']:.0f} | {row['errors']} | {row['server_cpu_ms_per_request']} "
                f"| {row['server_cpu_pct']} | {mark} |"
            )
        a = load["create_c1_after_open"]
        if a:
            print(
                f"\ncreate conversation, 1 client, with {a['open_before']} open conversations in the tenant: "
                f"p50 {fmt_ms(a['p50_ms'])} ms, p99 {fmt_ms(a['p99_ms'])} ms, {a['rps']:.0f} req/s, "
                f"errors {a['errors']}"
            )
        print(
            f"\nserver CPU with the {load['sessions']} sessions alone: {load['server_cpu_pct_sessions_alone']} %; "
            f"sessions still running at the end: {load['sessions_alive_at_end']}/{load['sessions']}"
        )
    with_load = [n for n, b in backends.items() if b.get("load")]
    if len(with_load) > 1:
        print(f"\n### Side by side at {TARGET_CLIENTS} clients\n")
        head = " | ".join(f"{n} p50 / p99 ms | {n} req/s" for n in with_load)
        print(f"| operation | {head} | target p99 |")
        print("|---|" + "---|---|" * len(with_load) + "---|")
        thinks = sorted({x["think_ms"] for n in with_load for x in backends[n]["load"]["rows"]})
        for think in thinks:
            for op in OPS:
                found = [
                    [
                        x
                        for x in backends[n]["load"]["rows"]
                        if x["op"] == op and x["clients"] == TARGET_CLIENTS and x["think_ms"] == think
                    ]
                    for n in with_load
                ]
                if not all(found):
                    continue
                cells = [f"{fmt_ms(x[0]['p50_ms'])} / {fmt_ms(x[0]['p99_ms'])} | {x[0]['rps']:.0f}" for x in found]
                name = OP_NAMES[op] + (f" ({think} ms think)" if think else "")
                print(f"| {name} | {' | '.join(cells)} | {target_of(op):.0f} ms |")
    greet = {n: b["greeting"] for n, b in backends.items() if b.get("greeting")}
    if greet:
        print("\n### POST /v1/conversations → first replica audio of the greeting (join included)\n")
        print(
            "| store | runs | POST p50 ms | join p50 ms | join → first audio p50 ms | total p50 s | total p90 s "
            "| max s | ≤ 1.5 s |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for n, g in greet.items():
            print(
                f"| {n} | {g['repeats']} | {g['post_ms_p50']} | {g['join_ms_p50']} | "
                f"{g['first_audio_after_join_ms_p50']} | {g['total_s_p50']} | {g['total_s_p90']} | {g['total_s_max']} "
                f"| {'met' if g['met'] else '**missed**'} |"
            )
    hooks = {n: b["webhooks"] for n, b in backends.items() if b.get("webhooks")}
    if hooks:
        print("\n### Webhooks to a healthy receiver (conversation.ended, arrival − event timestamp)\n")
        print(
            "| store | events | events/s | delivered | lost | duplicates | p50 ms | p90 ms | p99 ms | max ms "
            "| p99 ≤ 1 s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for n, h in hooks.items():
            x = h["healthy"]
            print(
                f"| {n} | {x['events']} | {x['events_per_s']} | {x['delivered']} | {x['lost']} | {x['duplicates']} "
                f"| {x['latency_ms_p50']} | {x['latency_ms_p90']} | {x['latency_ms_p99']} | {x['latency_ms_max']} "
                f"| {'met' if x['met'] else '**missed**'} |"
            )
        outages = {n: h["outage"] for n, h in hooks.items() if h.get("outage")}
        if outages:
            print("\n### Receiver answering 503, then recovering\n")
            print(
                "| store | outage s | events | 503 answers | delivered | lost | duplicates | last one after "
                "recovery s | p50 after recovery s | within 5 s |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|")
            for n, x in outages.items():
                print(
                    f"| {n} | {x['outage_s']:g} | {x['events']} | {x['refused_attempts']} | {x['delivered']} "
                    f"| {x['lost']} | {x['duplicates']} | {x['drain_s']} | {x['after_recovery_s_p50']} "
                    f"| {x['delivered_within_5s_of_recovery']} |"
                )
        restarts = {n: h["restart"] for n, h in hooks.items() if h.get("restart")}
        if restarts:
            print("\n### Server restart with undelivered events (receiver down, SIGTERM, start, receiver up)\n")
            print(
                "| store | undelivered at stop | stop s (exit) | start s | delivered after | lost | duplicates "
                "| drain s (from receiver up) |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for n, x in restarts.items():
                print(
                    f"| {n} | {x['undelivered_at_stop']} | {x['stop_s']} ({x['exit_code']}) | {x['restart_s']} "
                    f"| {x['delivered']} | {x['lost']} | {x['duplicates']} | {x['drain_s']} |"
                )


# ----------------------------------------------------------------------------------------------------- main
async def run_backend(
    backend: str, server: Server, tenant: Mapping[str, str], wrk: str, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    key = tenant["api_key"]
    if "greeting" in args.parts:
        log(f"{backend}: POST → greeting audio, {args.greetings} runs ...")
        out["greeting"] = await part_greeting(server, key, args.greetings)
    if "webhooks" in args.parts:
        receiver = Receiver(tenant["webhook_secret"])
        await receiver.start()
        try:
            hooks: dict[str, Any] = {}
            async with duet.Client(server.http_url, key) as client:
                persona = await client.create_persona(name="Hooks (bench)", system_prompt="You are quiet.", layers=FAST)
                pid = persona["persona_id"]
                log(f"{backend}: webhooks to a healthy receiver, {args.webhook_events} events ...")
                hooks["healthy"] = await webhooks_healthy(client, pid, receiver, args.webhook_events)
                if backend in args.outage_backends and args.outage_s > 0:
                    log(f"{backend}: webhooks, receiver failing (503) for {args.outage_s:g} s ...")
                    hooks["outage"] = await webhooks_outage(client, pid, receiver, args.outage_events, args.outage_s)
            log(f"{backend}: webhooks across a server restart, {args.restart_events} events ...")
            hooks["restart"] = await webhooks_restart(server, key, pid, receiver, args.restart_events)
            hooks["bad_signatures"] = receiver.bad_signatures
            out["webhooks"] = hooks
        finally:
            await receiver.stop()
    if "load" in args.parts:
        log(f"{backend}: API load with wrk, {args.ops} x {args.concurrency} clients ...")
        out["load"] = await part_load(
            server, key, wrk, workdir, args.ops, args.concurrency, args.duration, args.sessions, args.think_ms
        )
        out["verdicts"] = verdicts(out["load"]["rows"])
    return out


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--ops", default=",".join(OPS), help="request types of the load part")
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per wrk point")
    ap.add_argument(
        "--think-ms", type=int, default=500, help="one more point: 64 clients, each waiting ~this long between requests"
    )
    ap.add_argument("--sessions", type=int, default=4, help="SDK sessions streaming during the load part")
    ap.add_argument("--greetings", type=int, default=10)
    ap.add_argument("--webhook-events", type=int, default=200)
    ap.add_argument("--outage-s", type=float, default=60.0)
    ap.add_argument("--outage-events", type=int, default=100)
    ap.add_argument("--outage-backends", default="sqlite", help="stores the 503 outage runs on (it takes ~2 min)")
    ap.add_argument("--restart-events", type=int, default=100)
    ap.add_argument("--triton-url", default=os.environ.get("DUET_TRITON__URL", ""))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    args.backends = [b for b in args.backends.split(",") if b]
    args.parts = [p for p in args.parts.split(",") if p]
    args.outage_backends = [b for b in args.outage_backends.split(",") if b]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.ops = [o for o in OPS if o in args.ops.split(",")]  # (always in OPS order: creates last)
    if bad := [b for b in args.backends if b not in BACKENDS] + [p for p in args.parts if p not in PARTS]:
        ap.error(f"unknown backend or part: {bad}")
    wrk = ensure_wrk() if "load" in args.parts else ""

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    began = time.monotonic()
    triton = Triton(args.triton_url or None)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version()},
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "targets": {
            "read_p99_ms": TARGET_READ_P99_MS,
            "create_p99_ms": TARGET_CREATE_P99_MS,
            "clients": TARGET_CLIENTS,
            "greeting_p90_s": TARGET_GREETING_S,
            "webhook_p99_s": TARGET_WEBHOOK_P99_S,
        },
        "backends": {},
    }
    try:
        triton_url = triton.start()
        for backend in args.backends:
            with tempfile.TemporaryDirectory(prefix=f"duet-bench-api-{backend}-") as tmp:
                workdir = Path(tmp)
                with store_url(backend, workdir) as url:
                    env = dict(
                        os.environ,
                        DUET_TRITON__URL=triton_url,
                        DUET_STORE__URL=url,
                        DUET_API__KEY_REQUESTS_PER_S="100000",
                    )
                    log(f"{backend}: starting duet serve ...")
                    server_log = Path(args.out).with_name(f"{Path(args.out).stem}_server_{backend}.log")
                    server_log.parent.mkdir(parents=True, exist_ok=True)
                    server_log.unlink(missing_ok=True)
                    server = Server(env, workdir, server_log).start()
                    try:
                        tenant = admin(env, workdir, "tenant", "create", "Bench", "--max-concurrent", str(TENANT_QUOTA))
                        out = asyncio.run(run_backend(backend, server, tenant, wrk, workdir, args))
                        out["server_log"] = str(server_log)
                        out["server_errors_logged"] = server.errors
                        out["server_error_sample"] = server.error_lines()
                        results["backends"][backend] = out
                    finally:
                        server.stop()
    finally:
        for s in list(Server.live):
            s.stop()
        triton.stop()
    results["wall_s"] = round(time.monotonic() - began, 1)
    print_report(results)
    print(f"\n(wall time {results['wall_s']:.0f} s; {results['machine']['cpus']} CPUs: {results['machine']['cpu']})")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
