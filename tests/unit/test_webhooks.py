"""Webhooks: Standard Webhooks signatures (checked by the independent `standardwebhooks` package), the retry
schedule, and the deliverer against real aiohttp receivers on 127.0.0.1, with an in-memory outbox that is the
`WebhookOutbox` protocol's reference behaviour (claims with a lease included)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as SWVerificationError

from orchestrator.control.webhooks import (
    EVENT_TYPES,
    MAX_ATTEMPTS,
    MAX_DELAY_S,
    StaleWebhook,
    WebhookDeliverer,
    WebhookOutbox,
    WebhookVerificationError,
    encode_body,
    event_body,
    headers,
    new_secret,
    next_delay,
    signature,
    utc_now,
    verify,
)
from orchestrator.store.records import DueWebhook, WebhookAttempt

# -- the reference outbox ----------------------------------------------------------------------------------------


@dataclass
class Message:
    id: str
    url: str
    body: str
    secret: str
    next_attempt_at: datetime | None
    status: str = "pending"  # pending | delivered | failed
    delivered_at: datetime | None = None
    attempts: list[WebhookAttempt] = field(default_factory=list)


class MemoryOutbox:
    """`WebhookOutbox` in memory: what the SQL store must do, including the claim's lease."""

    def __init__(self, *, lease_s: float = 30.0) -> None:
        self.lease_s = lease_s
        self.messages: dict[str, Message] = {}

    def add(self, url: str, body: str, *, secret: str, at: datetime | None = None) -> str:
        msg_id = f"msg_{len(self.messages) + 1}"
        self.messages[msg_id] = Message(msg_id, url, body, secret, at or utc_now())
        return msg_id

    async def due_webhooks(self, now: datetime, limit: int) -> list[DueWebhook]:
        waiting = [(m.next_attempt_at, m.id, m) for m in self.messages.values() if m.status == "pending"]
        due = [m for at, _, m in sorted((w for w in waiting if w[0] is not None and w[0] <= now), key=lambda w: w[:2])]
        due = due[:limit]
        for m in due:
            m.next_attempt_at = now + timedelta(seconds=self.lease_s)  # the claim
        return [DueWebhook(m.id, "ten_1", "conv_1", m.url, m.body, len(m.attempts), m.secret) for m in due]

    async def record_webhook_attempt(
        self,
        message_id: str,
        *,
        at: datetime,
        status_code: int | None,
        error: str | None,
        duration_ms: float,
        delivered: bool,
        next_attempt_at: datetime | None,
    ) -> None:
        m = self.messages[message_id]
        m.attempts.append(WebhookAttempt(at, status_code, error, duration_ms))
        if m.status != "pending":
            return  # a late attempt after the lease ran out (a duplicate) never undoes an outcome
        if delivered:
            m.status, m.delivered_at, m.next_attempt_at = "delivered", at, None
        elif next_attempt_at is None:
            m.status, m.next_attempt_at = "failed", None
        else:
            m.next_attempt_at = next_attempt_at

    async def next_webhook_due(self) -> datetime | None:
        pending = [m.next_attempt_at for m in self.messages.values() if m.status == "pending"]
        return min((t for t in pending if t is not None), default=None)


def test_memory_outbox_is_a_webhook_outbox() -> None:
    outbox: WebhookOutbox = MemoryOutbox()  # mypy checks the protocol here
    assert outbox


async def test_outbox_claim_holds_for_the_lease() -> None:
    outbox = MemoryOutbox(lease_s=10)
    t0 = utc_now()
    outbox.add("http://x/", "{}", secret=new_secret(), at=t0)
    assert len(await outbox.due_webhooks(t0, 8)) == 1
    assert await outbox.due_webhooks(t0 + timedelta(seconds=9), 8) == []
    assert await outbox.next_webhook_due() == t0 + timedelta(seconds=10)
    again = await outbox.due_webhooks(t0 + timedelta(seconds=10), 8)
    assert [m.attempts for m in again] == [0]


# -- signing -----------------------------------------------------------------------------------------------------

BODY = json.dumps(
    {"event_type": "conversation.started", "conversation_id": "conv_1", "timestamp": "x", "properties": {"t": "héllo"}},
    ensure_ascii=False,
)


def test_new_secret_is_32_random_bytes() -> None:
    a, b = new_secret(), new_secret()
    assert a.startswith("whsec_") and a != b
    assert len(base64.b64decode(a.removeprefix("whsec_"))) == 32


def test_signature_matches_standardwebhooks() -> None:
    secret = new_secret()
    ts = int(utc_now().timestamp())
    h = headers(secret, "msg_1", ts, BODY)
    assert set(h) == {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type"}
    assert h["content-type"] == "application/json" and h["webhook-timestamp"] == str(ts)
    assert h["webhook-signature"] == Webhook(secret).sign("msg_1", datetime.fromtimestamp(ts, UTC), BODY)
    assert Webhook(secret).verify(BODY.encode(), h) == json.loads(BODY)
    verify(secret, h, BODY.encode(), now=utc_now())
    verify(secret, h, BODY, now=utc_now())


def test_signature_with_an_unpadded_secret() -> None:
    # Secrets written without base64 padding (as some tools print them) sign as the padded ones do.
    padded = "whsec_" + base64.b64encode(b"a 23-byte webhook key!!").decode()
    assert padded.endswith("=")
    unpadded = padded.rstrip("=")
    for secret in (padded, unpadded):
        expected = Webhook(secret).sign("msg_1", datetime.fromtimestamp(1_700_000_000, UTC), BODY)
        assert signature(secret, "msg_1", 1_700_000_000, BODY) == expected


@pytest.mark.parametrize("tamper", ["body", "secret", "id", "timestamp"])
def test_tampering_is_rejected(tamper: str) -> None:
    secret, ts = new_secret(), int(utc_now().timestamp())
    h = headers(secret, "msg_1", ts, BODY)
    body = BODY
    if tamper == "body":
        body = BODY.replace("héllo", "hello")
    elif tamper == "secret":
        secret = new_secret()
    elif tamper == "id":
        h["webhook-id"] = "msg_2"
    else:
        h["webhook-timestamp"] = str(ts - 1)
    with pytest.raises(WebhookVerificationError) as ours:
        verify(secret, h, body, now=utc_now())
    assert not isinstance(ours.value, StaleWebhook)
    with pytest.raises(SWVerificationError):
        Webhook(secret).verify(body, h)


@pytest.mark.parametrize("offset_s", [-301, 301, -3600])
def test_stale_timestamp_is_rejected(offset_s: int) -> None:
    secret, now = new_secret(), utc_now()
    h = headers(secret, "msg_1", int(now.timestamp()) + offset_s, BODY)
    with pytest.raises(StaleWebhook):
        verify(secret, h, BODY, now=now)
    with pytest.raises(SWVerificationError):
        Webhook(secret).verify(BODY, h)
    verify(secret, h, BODY, now=now, tolerance_s=abs(offset_s) + 1)


def test_missing_headers_and_rotation() -> None:
    old, new, ts = new_secret(), new_secret(), int(utc_now().timestamp())
    h = headers(new, "msg_1", ts, BODY)
    with pytest.raises(WebhookVerificationError):
        verify(new, {k: v for k, v in h.items() if k != "webhook-signature"}, BODY, now=utc_now())
    with pytest.raises(WebhookVerificationError):
        verify(new, {**h, "webhook-timestamp": "soon"}, BODY, now=utc_now())
    # While a secret is rotated the header carries both signatures; either secret verifies.
    h["Webhook-Signature"] = f"{signature(old, 'msg_1', ts, BODY)} {h.pop('webhook-signature')}"
    verify(old, h, BODY, now=utc_now())
    verify(new, h, BODY, now=utc_now())


def test_bad_secret() -> None:
    for bad in ("abc", "whsec_", "whsec_!!!"):
        with pytest.raises(ValueError):
            signature(bad, "msg_1", 0, BODY)


# -- payloads ----------------------------------------------------------------------------------------------------


def test_event_body() -> None:
    at = datetime(2026, 12, 5, 22, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    event = event_body("conversation.utterance", "conv_1", at, {"role": "user", "text": "hi"})
    assert event.event_type == "conversation.utterance"
    assert event.payload == {
        "event_type": "conversation.utterance",
        "conversation_id": "conv_1",
        "timestamp": "2026-12-05T21:30:00.123Z",
        "properties": {"role": "user", "text": "hi"},
    }
    assert json.loads(encode_body(event)) == event.payload
    assert len(EVENT_TYPES) == 7 and "conversation.ended" in EVENT_TYPES
    with pytest.raises(ValueError):
        event_body("conversation.exploded", "conv_1", at, {})
    with pytest.raises(ValueError):
        event_body("conversation.started", "conv_1", datetime(2026, 1, 1), {})


# -- the schedule ------------------------------------------------------------------------------------------------


class FixedDraw(random.Random):
    def __init__(self, u: float) -> None:
        super().__init__()
        self.u = u

    def random(self) -> float:
        return self.u


def test_schedule_shape() -> None:
    assert 0.4 <= (next_delay(1) or 0) <= 0.5
    for u in (0.0, 0.5, 0.999):
        delays = [next_delay(n, FixedDraw(u)) for n in range(1, MAX_ATTEMPTS)]
        waits = [d for d in delays if d is not None]
        assert len(waits) == MAX_ATTEMPTS - 1
        assert waits == sorted(waits) and max(waits) <= MAX_DELAY_S
        assert waits[-1] >= 0.8 * MAX_DELAY_S
    assert next_delay(MAX_ATTEMPTS) is None and next_delay(MAX_ATTEMPTS + 5) is None
    with pytest.raises(ValueError):
        next_delay(0)
    rng = random.Random(7)
    for n in range(1, MAX_ATTEMPTS):
        for _ in range(50):
            d = next_delay(n, rng)
            assert d is not None and 0 < d <= MAX_DELAY_S


def test_schedule_span() -> None:
    """From the first failure to giving up: more than an hour at the shortest draws, under 80 minutes at most."""
    shortest = sum(next_delay(n, FixedDraw(1.0)) or 0 for n in range(1, MAX_ATTEMPTS))
    longest = sum(next_delay(n, FixedDraw(0.0)) or 0 for n in range(1, MAX_ATTEMPTS))
    assert 3600 < shortest < longest < 80 * 60
    # A receiver down for 60 s: attempts made within its first minute down are few, and many remain.
    waited, n = 0.0, 1
    while waited < 60:
        waited += next_delay(n, FixedDraw(0.0)) or 0
        n += 1
    assert n < MAX_ATTEMPTS // 2


# -- real receivers ----------------------------------------------------------------------------------------------

Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # loop time


class Receiver:
    """An aiohttp server on 127.0.0.1 whose paths answer as a test scripts them; it verifies every signature."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.behaviours: dict[str, Behaviour] = {}
        self.hits: list[Hit] = []
        self.bad_signatures = 0
        self.release = asyncio.Event()  # ends hanging handlers at teardown
        self.url = ""

    def on(self, path: str, behaviour: Behaviour) -> str:
        self.behaviours[path] = behaviour
        return self.url + path

    def calls(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        hit = Hit(request.path, dict(request.headers), body, asyncio.get_running_loop().time())
        self.hits.append(hit)
        try:
            Webhook(self.secret).verify(body, hit.headers)
        except SWVerificationError:
            self.bad_signatures += 1
            return web.Response(status=400)
        behaviour = self.behaviours.get(request.path)
        if behaviour is None:
            return web.Response(status=404)
        return await behaviour(request, len(self.calls(request.path)))


def answer(status: int, **kw: str) -> Behaviour:
    async def respond(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=status, headers=kw)

    return respond


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(new_secret())
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    rec.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    await web.SockSite(runner, sock).start()
    try:
        yield rec
    finally:
        rec.release.set()
        await runner.cleanup()


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    yield
    leaked = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("webhook")]
    assert not leaked, f"tasks outlived their test: {leaked}"


@contextlib.asynccontextmanager
async def running(deliverer: WebhookDeliverer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(deliverer.run(), name="webhook-deliverer")
    try:
        yield task
    finally:
        await deliverer.close()
        await task


async def until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    # Polls: the state watched is the outbox's and the receiver's, which have no event to wait on.
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def fast(n: int) -> float | None:
    """A test schedule: 20 ms, 40 ms, ... and give up after the 6th attempt."""
    return None if n >= 6 else 0.02 * n


def never_again(n: int) -> float | None:
    """Retry, but not within the test: shows what was scheduled without more attempts."""
    return 3600.0


def statuses(outbox: MemoryOutbox) -> list[str]:
    return [m.status for m in outbox.messages.values()]


class SteppingClock:
    """The real time, one second further on each reading: each attempt of a message gets a later timestamp."""

    def __init__(self) -> None:
        self.readings = 0

    def __call__(self) -> datetime:
        self.readings += 1
        return utc_now() + timedelta(seconds=self.readings)


async def test_delivers_signed(receiver: Receiver) -> None:
    url = receiver.on("/hook", answer(204))
    outbox = MemoryOutbox()
    bodies = [encode_body(event_body("conversation.started", f"conv_{i}", utc_now(), {})) for i in range(5)]
    for body in bodies:
        outbox.add(url, body, secret=receiver.secret)
    deliverer = WebhookDeliverer(outbox, poll_s=0.05)
    async with running(deliverer):
        await until(lambda: statuses(outbox) == ["delivered"] * 5)
    assert receiver.bad_signatures == 0
    assert sorted(h.body.decode() for h in receiver.hits) == sorted(bodies)
    assert sorted(h.headers["webhook-id"] for h in receiver.hits) == sorted(outbox.messages)
    assert all(h.headers["Content-Type"] == "application/json" for h in receiver.hits)
    for m in outbox.messages.values():
        [attempt] = m.attempts
        assert attempt.status_code == 204 and attempt.error is None and attempt.duration_ms > 0
    assert (deliverer.delivered, deliverer.failed_attempts, deliverer.given_up, deliverer.backlog) == (5, 0, 0, 0)


async def test_retries_until_the_receiver_recovers(receiver: Receiver) -> None:
    async def flaky(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=500, text="down for maintenance") if n <= 4 else web.Response(status=200)

    url = receiver.on("/flaky", flaky)
    outbox = MemoryOutbox()
    for i in range(2):
        outbox.add(url, json.dumps({"n": i}), secret=receiver.secret)
    deliverer = WebhookDeliverer(outbox, poll_s=0.05, schedule=fast, clock=SteppingClock())
    async with running(deliverer):
        await until(lambda: statuses(outbox) == ["delivered"] * 2)
    assert receiver.bad_signatures == 0
    assert len(receiver.hits) == 6 and deliverer.failed_attempts == 4 and deliverer.delivered == 2
    for msg_id, m in outbox.messages.items():
        hits = [h for h in receiver.hits if h.headers["webhook-id"] == msg_id]
        assert len(hits) == len(m.attempts) >= 2
        assert {h.body.decode() for h in hits} == {m.body}  # the same body on every attempt
        stamps = [int(h.headers["webhook-timestamp"]) for h in hits]
        assert stamps == sorted(set(stamps))  # re-signed with each attempt's time
        assert [a.status_code for a in m.attempts] == [500] * (len(m.attempts) - 1) + [200]
        assert m.attempts[0].error == "HTTP 500: down for maintenance"


async def test_gives_up_after_the_schedule(receiver: Receiver) -> None:
    url = receiver.on("/broken", answer(503))
    outbox = MemoryOutbox()
    outbox.add(url, "{}", secret=receiver.secret)
    deliverer = WebhookDeliverer(outbox, poll_s=0.05, schedule=fast)
    async with running(deliverer):
        await until(lambda: statuses(outbox) == ["failed"])
    assert len(receiver.hits) == 6 and deliverer.given_up == 1 and deliverer.failed_attempts == 6


async def test_redirects_are_not_followed(receiver: Receiver) -> None:
    target = receiver.on("/elsewhere", answer(200))
    url = receiver.on("/moved", answer(307, Location=target))
    outbox = MemoryOutbox()
    outbox.add(url, "{}", secret=receiver.secret)
    deliverer = WebhookDeliverer(outbox, poll_s=0.05, schedule=never_again)
    async with running(deliverer):
        await until(lambda: bool(outbox.messages["msg_1"].attempts))
    [attempt] = outbox.messages["msg_1"].attempts
    assert attempt.status_code == 307 and "not followed" in (attempt.error or "")
    assert receiver.calls("/elsewhere") == [] and statuses(outbox) == ["pending"]


async def test_410_gone_gives_up_at_once(receiver: Receiver) -> None:
    url = receiver.on("/gone", answer(410))
    outbox = MemoryOutbox()
    outbox.add(url, "{}", secret=receiver.secret)
    deliverer = WebhookDeliverer(outbox, poll_s=0.05, schedule=fast)
    async with running(deliverer):
        await until(lambda: statuses(outbox) == ["failed"])
    assert len(receiver.hits) == 1 and deliverer.given_up == 1
    assert outbox.messages["msg_1"].attempts[0].status_code == 410


async def test_a_hanging_receiver_does_not_hold_up_others(receiver: Receiver) -> None:
    async def hang(request: web.Request, n: int) -> web.StreamResponse:
        await receiver.release.wait()
        return web.Response()

    slow = receiver.on("/slow", hang)
    quick = receiver.on("/quick", answer(200))
    outbox = MemoryOutbox()
    for _ in range(2):
        outbox.add(slow, "{}", secret=receiver.secret)  # first in line
    for _ in range(3):
        outbox.add(quick, "{}", secret=receiver.secret)
    deliverer = WebhookDeliverer(outbox, poll_s=0.05, timeout_s=0.5, concurrency=4, schedule=never_again)
    async with running(deliverer):
        await until(lambda: all(m.attempts for m in outbox.messages.values()))
    quick_hits = receiver.calls("/quick")
    first_slow = min(h.at for h in receiver.calls("/slow"))
    assert len(quick_hits) == 3 and max(h.at for h in quick_hits) - first_slow < 0.25  # long before the timeout
    for m in outbox.messages.values():
        if m.url == slow:
            [attempt] = m.attempts
            assert attempt.status_code is None and attempt.error == "no answer within 0.5 s"
            assert 450 < attempt.duration_ms < 2000 and m.status == "pending"
        else:
            assert m.status == "delivered"


async def test_a_huge_answer_is_not_downloaded(receiver: Receiver) -> None:
    sent = 0

    async def flood(request: web.Request, n: int) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(status=500)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while sent < 500 * 2**20:
                await response.write(b"x" * 2**16)
                sent += 2**16
        return response

    url = receiver.on("/flood", flood)
    outbox = MemoryOutbox()
    outbox.add(url, "{}", secret=receiver.secret)
    deliverer = WebhookDeliverer(outbox, poll_s=0.05, schedule=never_again)
    async with running(deliverer):
        await until(lambda: bool(outbox.messages["msg_1"].attempts))
    [attempt] = outbox.messages["msg_1"].attempts
    assert attempt.status_code == 500 and len(attempt.error or "") <= 300
    assert attempt.duration_ms < 2000 and sent < 500 * 2**20


async def test_unreachable_and_refused_hosts_never_crash_the_loop(receiver: Receiver) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    outbox = MemoryOutbox()
    outbox.add(closed, "{}", secret=receiver.secret)
    outbox.add("ftp://127.0.0.1/hook", "{}", secret=receiver.secret)
    outbox.add("http://metadata.internal/hook", "{}", secret=receiver.secret)
    outbox.add(receiver.on("/ok", answer(200)), "{}", secret=receiver.secret)
    deliverer = WebhookDeliverer(
        outbox, poll_s=0.05, schedule=fast, allow_host=lambda host: not host.endswith(".internal")
    )
    async with running(deliverer) as task:
        await until(lambda: "pending" not in statuses(outbox))
        assert not task.done()
    assert statuses(outbox) == ["failed", "failed", "failed", "delivered"]
    refused, bad_scheme, not_allowed, _ = outbox.messages.values()
    assert len(refused.attempts) == 6 and all(a.status_code is None and a.error for a in refused.attempts)
    assert len(bad_scheme.attempts) == 1 and "http" in (bad_scheme.attempts[0].error or "")
    assert len(not_allowed.attempts) == 1 and "not allowed" in (not_allowed.attempts[0].error or "")
    assert [h.path for h in receiver.hits] == ["/ok"]


async def test_notify_wakes_the_loop(receiver: Receiver) -> None:
    url = receiver.on("/hook", answer(200))
    outbox = MemoryOutbox()
    deliverer = WebhookDeliverer(outbox, poll_s=30)
    async with running(deliverer):
        await asyncio.sleep(0.05)  # the loop is asleep for 30 s
        outbox.add(url, "{}", secret=receiver.secret)
        deliverer.notify()
        await until(lambda: statuses(outbox) == ["delivered"], timeout_s=1)


async def test_a_first_retry_comes_before_the_next_poll(receiver: Receiver) -> None:
    async def once_500(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=500 if n == 1 else 200)

    url = receiver.on("/hook", once_500)
    outbox = MemoryOutbox()
    outbox.add(url, "{}", secret=receiver.secret)
    deliverer = WebhookDeliverer(outbox, poll_s=30, schedule=lambda n: 0.05)
    async with running(deliverer):
        await until(lambda: statuses(outbox) == ["delivered"], timeout_s=1)


class FailingOnce(MemoryOutbox):
    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def due_webhooks(self, now: datetime, limit: int) -> list[DueWebhook]:
        if not self.failed:
            self.failed = True
            raise ConnectionError("database is restarting")
        return await super().due_webhooks(now, limit)


async def test_an_outbox_failure_is_survived(receiver: Receiver) -> None:
    outbox = FailingOnce()
    outbox.add(receiver.on("/hook", answer(200)), "{}", secret=receiver.secret)
    deliverer = WebhookDeliverer(outbox, poll_s=0.05)
    async with running(deliverer):
        await until(lambda: statuses(outbox) == ["delivered"])
    assert outbox.failed


async def test_a_crash_mid_attempt_is_retried_after_the_lease(receiver: Receiver) -> None:
    """The deliverer dies with an attempt in flight (nothing recorded): once the claim's lease runs out another
    deliverer sends the message again, under the same webhook-id."""
    up = asyncio.Event()

    async def hang_until_up(request: web.Request, n: int) -> web.StreamResponse:
        if not up.is_set():
            await receiver.release.wait()
        return web.Response(status=200)

    outbox = MemoryOutbox(lease_s=0.3)
    outbox.add(receiver.on("/hook", hang_until_up), "{}", secret=receiver.secret)
    first = WebhookDeliverer(outbox, poll_s=0.05, timeout_s=5)
    crashed = asyncio.create_task(first.run(), name="webhook-deliverer-1")
    await until(lambda: len(receiver.hits) == 1)
    crashed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await crashed
    assert outbox.messages["msg_1"].attempts == []
    up.set()
    second = WebhookDeliverer(outbox, poll_s=0.05)
    async with running(second):
        await until(lambda: statuses(outbox) == ["delivered"])
    assert [h.headers["webhook-id"] for h in receiver.hits] == ["msg_1", "msg_1"]
    assert receiver.hits[1].at - receiver.hits[0].at >= 0.2


async def test_close_lets_attempts_in_flight_finish(receiver: Receiver) -> None:
    async def slowish(request: web.Request, n: int) -> web.StreamResponse:
        await asyncio.sleep(0.2)
        return web.Response(status=200)

    outbox = MemoryOutbox()
    outbox.add(receiver.on("/hook", slowish), "{}", secret=receiver.secret)
    deliverer = WebhookDeliverer(outbox, poll_s=0.05)
    async with running(deliverer) as task:
        await until(lambda: len(receiver.hits) == 1)
    assert task.done() and statuses(outbox) == ["delivered"]
    await deliverer.close()  # twice is harmless


async def test_backlog_and_lag_while_saturated(receiver: Receiver) -> None:
    async def hang(request: web.Request, n: int) -> web.StreamResponse:
        await receiver.release.wait()
        return web.Response()

    outbox = MemoryOutbox()
    for _ in range(3):
        outbox.add(receiver.on("/slow", hang), "{}", secret=receiver.secret)
    deliverer = WebhookDeliverer(outbox, poll_s=0.05, timeout_s=0.4, concurrency=1, schedule=never_again)
    async with running(deliverer):
        await until(lambda: deliverer.backlog == 1 and deliverer.lag_s > 0.1)
        assert len(receiver.hits) == 1  # one slot: the others wait, late
    assert deliverer.backlog == 0 and deliverer.lag_s >= 0
