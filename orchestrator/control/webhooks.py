"""Webhooks: Standard Webhooks signing and durable, at-least-once delivery from the store's outbox.

Events are written to an outbox in the same transaction as the change they report (the store's side); a
`WebhookDeliverer` is the one owned task that takes due messages from it, signs and POSTs them, and records
every attempt, so a crash or a receiver that is down loses nothing: an unrecorded attempt is handed out again
when its claim (lease) runs out. Receivers deduplicate on `webhook-id`, which is the same on every attempt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp
from yarl import URL

from orchestrator.store.records import DueWebhook, WebhookEvent

log = logging.getLogger(__name__)

EVENT_TYPES: tuple[str, ...] = (
    "conversation.started",
    "conversation.utterance",
    "conversation.tool_call",
    "conversation.perception_tool_call",
    "conversation.guardrail_triggered",
    "conversation.objective_completed",
    "conversation.ended",
)

SECRET_PREFIX = "whsec_"

# The retry schedule. Waits double from BASE_DELAY_S up to MAX_DELAY_S, each shortened by up to JITTER (so
# messages that failed together do not come back together), and a message is given up after MAX_ATTEMPTS
# attempts. The 24 waits add up to 3,769-4,712 s (63-79 min): a receiver down for an hour still gets everything.
BASE_DELAY_S = 0.5
MAX_DELAY_S = 300.0
JITTER = 0.2
MAX_ATTEMPTS = 25

# Only a snippet of a receiver's answer is read (for the attempt's error); the rest is never downloaded.
RESPONSE_READ_LIMIT = 1024
ERROR_TEXT_LIMIT = 300
# The shortest sleep of the delivery loop, so a message the store calls due but did not hand out (a race with
# another deliverer's claim) cannot turn the loop into a busy poll of the database.
MIN_WAIT_S = 0.05
USER_AGENT = "duet-webhooks/1"


def utc_now() -> datetime:
    return datetime.now(UTC)


# -- signing ---------------------------------------------------------------------------------------------------


class WebhookVerificationError(Exception):
    """A webhook that must not be trusted: a header is missing or malformed, or the signature does not match."""


class StaleWebhook(WebhookVerificationError):
    """The `webhook-timestamp` is outside the tolerance: a replay, or a clock far off."""


def new_secret() -> str:
    """A tenant's webhook secret: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Secrets written without their base64 padding are still accepted, as other Standard Webhooks libraries do.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError as exc:
        raise ValueError("a webhook secret is whsec_ followed by base64") from exc
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def _sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """`v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`, keyed with the secret's decoded bytes."""
    return _sign(_key(secret), msg_id, timestamp, body.encode())


def headers(secret: str, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The headers of one attempt: `timestamp` is the attempt's Unix time in seconds."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def verify(
    secret: str, headers: Mapping[str, str], body: str | bytes, *, now: datetime, tolerance_s: float = 300
) -> None:
    """What a receiver does: check the signature over the body exactly as received and that the timestamp is
    within `tolerance_s` of `now` either way. Raises `WebhookVerificationError` (`StaleWebhook` for the time)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    raw_timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and raw_timestamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not Unix seconds") from None
    if abs(now.timestamp() - timestamp) > tolerance_s:
        raise StaleWebhook(f"webhook-timestamp is more than {tolerance_s:g} s from now")
    expected = _sign(_key(secret), msg_id, timestamp, body.encode() if isinstance(body, str) else body).encode()
    # The header may carry several space-separated signatures (one per secret while a secret is rotated).
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in signatures.split()):
        raise WebhookVerificationError("no matching signature")


# -- payloads --------------------------------------------------------------------------------------------------


def iso_utc(t: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and `Z`, e.g. `2026-12-05T21:30:00.123Z`."""
    if t.tzinfo is None:
        raise ValueError("timestamps are timezone-aware")
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_body(event_type: str, conversation_id: str, timestamp: datetime, properties: dict[str, Any]) -> WebhookEvent:
    """The event as DESIGN.md's control plane delivers it."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    return WebhookEvent(
        event_type=event_type,
        payload={
            "event_type": event_type,
            "conversation_id": conversation_id,
            "timestamp": iso_utc(timestamp),
            "properties": properties,
        },
    )


def encode_body(event: WebhookEvent) -> str:
    """The JSON text to store as a message's body: written once, then signed and sent byte for byte the same."""
    return json.dumps(event.payload, ensure_ascii=False, separators=(",", ":"))


# -- the retry schedule ----------------------------------------------------------------------------------------


def next_delay(attempts: int, rng: random.Random | None = None) -> float | None:
    """Seconds to wait after `attempts` failed attempts (1 after the first), or None to give up."""
    if attempts < 1:
        raise ValueError("the delay follows at least one attempt")
    if attempts >= MAX_ATTEMPTS:
        return None
    base = min(MAX_DELAY_S, BASE_DELAY_S * 2.0 ** (attempts - 1))
    # Jitter only shortens the wait: the cap stays a cap, and with waits doubling every draw of attempt n+1 is
    # longer than any of attempt n until the cap.
    return base * (1.0 - JITTER * (rng or random).random())


# -- delivery --------------------------------------------------------------------------------------------------


class WebhookOutbox(Protocol):
    """The store's side of delivery (implemented by the SQL store; the unit tests hold the reference in memory)."""

    async def due_webhooks(self, now: datetime, limit: int) -> list[DueWebhook]:
        """Up to `limit` pending messages whose next attempt is at or before `now`, earliest first. Claims them:
        a claimed message is not handed out again until `lease_s` later (another deliverer, or after a crash)."""
        ...

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
        """Record one attempt. delivered=False with next_attempt_at=None means the message failed for good."""
        ...

    async def next_webhook_due(self) -> datetime | None:
        """The earliest next attempt of a pending message (claimed ones count at their lease's end)."""
        ...


@dataclass(frozen=True, slots=True)
class _Outcome:
    status_code: int | None
    error: str | None
    delivered: bool = False
    give_up: bool = False


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 1] + "…"


class WebhookDeliverer:
    """The one owned delivery loop: `run()` until `close()`; `notify()` when new events were written.

    Sends at most `concurrency` messages at a time, each attempt bounded by `timeout_s`, so one slow or dead
    receiver costs a slot for a few seconds, never the loop. Nothing a receiver does raises out of `run()`.
    Counters for telemetry (plain attributes): `delivered` (messages), `failed_attempts` (attempts that did not
    deliver, give-ups included), `given_up` (messages failed for good), `backlog` (messages claimed and not yet
    recorded) and `lag_s` (how late the earliest pending message was at the last look: 0 while keeping up).
    `allow_host`, when given, is asked about each URL's host name; a refused host is given up at once.
    """

    def __init__(
        self,
        outbox: WebhookOutbox,
        *,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = 8,
        timeout_s: float = 5.0,
        clock: Callable[[], datetime] = utc_now,
        poll_s: float = 1.0,
        allow_host: Callable[[str], bool] | None = None,
        schedule: Callable[[int], float | None] = next_delay,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency is at least 1")
        self._outbox = outbox
        self._session = session
        self._owns_session = session is None
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._clock = clock
        self._poll_s = poll_s
        self._allow_host = allow_host
        self._schedule = schedule
        self._sending: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._want_slot = False
        self._sleep_until = 0.0  # loop time the loop's current sleep ends
        self._closing = False
        self._run_task: asyncio.Task[Any] | None = None
        self._stopped = asyncio.Event()
        self._stopped.set()
        self.delivered = 0
        self.failed_attempts = 0
        self.given_up = 0
        self.lag_s = 0.0

    @property
    def backlog(self) -> int:
        return len(self._sending)

    def notify(self) -> None:
        """New messages were written: look for due ones now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        if self._run_task is not None:
            raise RuntimeError("the webhook deliverer is already running")
        if self._closing:
            return
        self._run_task = asyncio.current_task()
        self._stopped.clear()
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                connector=aiohttp.TCPConnector(limit=self._concurrency),
                headers={"user-agent": USER_AGENT},
            )
        try:
            while not self._closing:
                # Cleared before looking, so a notify() that lands while we look makes the next sleep a no-op; and
                # while we look, any retry recorded meanwhile counts as earlier than the sleep we may pick.
                self._wake.clear()
                self._sleep_until = math.inf
                try:
                    wait = await self._step(self._session)
                except Exception:
                    # The store failed (down, a deadlock, ...): claims already made run out and are retried.
                    log.exception("webhook delivery: the outbox failed; retrying in %.1f s", self._poll_s)
                    wait = self._poll_s
                if wait > 0:
                    self._sleep_until = asyncio.get_running_loop().time() + wait
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wake.wait()
        finally:
            await self._drain(grace=self._closing)
            if self._owns_session and self._session is not None:
                await self._session.close()
                self._session = None
            self._run_task = None
            self._stopped.set()

    async def close(self) -> None:
        """Stop taking messages, let attempts in flight finish (up to `timeout_s`), and end `run()`."""
        self._closing = True
        self._wake.set()
        run_task = self._run_task
        if run_task is None:
            return
        if run_task is asyncio.current_task():
            return  # close() from inside run() (a callback): run's own finally does the rest
        try:
            # Bounded: an outbox call that hangs must not hang shutdown; what it had claimed is retried later.
            async with asyncio.timeout(self._timeout_s + 2 * self._poll_s + 1):
                await self._stopped.wait()
        except TimeoutError:
            run_task.cancel()
            await self._stopped.wait()

    async def _step(self, session: aiohttp.ClientSession) -> float:
        """Take what is due into free slots; return how long to sleep (0: look again at once)."""
        free = self._concurrency - len(self._sending)
        if free > 0:
            due = await self._outbox.due_webhooks(self._clock(), free)
            for message in due:
                self._start(session, message)
            if len(due) == free:
                return 0.0  # maybe more are due
        saturated = len(self._sending) >= self._concurrency
        if saturated:
            self._want_slot = True  # a finished send wakes the loop
        earliest = await self._outbox.next_webhook_due()
        until = self._poll_s if earliest is None else (earliest - self._clock()).total_seconds()
        # Read while saturated too: that is when the lag grows and telemetry needs to see it.
        self.lag_s = max(0.0, -until)
        return self._poll_s if saturated else min(self._poll_s, max(MIN_WAIT_S, until))

    def _start(self, session: aiohttp.ClientSession, message: DueWebhook) -> None:
        task = asyncio.create_task(self._deliver(session, message), name=f"webhook-{message.id}")
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("webhook delivery task %s failed", task.get_name(), exc_info=exc)
        if self._want_slot:
            self._want_slot = False
            self._wake.set()

    async def _drain(self, *, grace: bool) -> None:
        """Let sends in flight finish (on close) or cancel them (on cancellation); either way none outlives run."""
        try:
            if grace and self._sending:
                await asyncio.wait(set(self._sending), timeout=self._timeout_s + 1)
        finally:
            pending = set(self._sending)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _deliver(self, session: aiohttp.ClientSession, message: DueWebhook) -> None:
        at = self._clock()
        started = time.monotonic()
        outcome = await self._attempt(session, message, at)
        duration_ms = (time.monotonic() - started) * 1000.0
        next_attempt_at: datetime | None = None
        delay: float | None = None
        if outcome.delivered:
            self.delivered += 1
        else:
            self.failed_attempts += 1
            delay = None if outcome.give_up else self._schedule(message.attempts + 1)
            if delay is None:
                self.given_up += 1
                log.warning(
                    "webhook %s to %s given up after %d attempts: %s",
                    message.id,
                    message.url,
                    message.attempts + 1,
                    outcome.error,
                )
            else:
                # From the attempt's end, so a slow timeout does not eat the first short waits.
                next_attempt_at = self._clock() + timedelta(seconds=delay)
        try:
            await self._outbox.record_webhook_attempt(
                message.id,
                at=at,
                status_code=outcome.status_code,
                error=outcome.error,
                duration_ms=duration_ms,
                delivered=outcome.delivered,
                next_attempt_at=next_attempt_at,
            )
        except Exception:
            # Unrecorded, the claim runs out and the message is sent again: a duplicate, never a loss.
            log.exception("webhook %s: recording the attempt failed", message.id)
            return
        # A retry due before the loop next wakes (the first waits are shorter than `poll_s`) wakes it now.
        if delay is not None and asyncio.get_running_loop().time() + delay < self._sleep_until:
            self._wake.set()

    async def _attempt(self, session: aiohttp.ClientSession, message: DueWebhook, at: datetime) -> _Outcome:
        try:
            url = URL(message.url)
        except ValueError:
            return _Outcome(None, "callback_url is not a URL", give_up=True)
        if url.scheme not in ("http", "https") or not url.host:
            return _Outcome(None, "callback_url is not an http(s) URL", give_up=True)
        if self._allow_host is not None and not self._allow_host(url.host):
            return _Outcome(None, f"host {url.host} is not allowed", give_up=True)
        try:
            # Re-signed per attempt: the timestamp is now, so receivers' replay windows accept late retries.
            signed = headers(message.secret, message.id, math.floor(at.timestamp()), message.body)
        except ValueError as exc:
            return _Outcome(None, f"cannot sign: {exc}", give_up=True)
        try:
            async with asyncio.timeout(self._timeout_s):
                async with session.post(
                    url,
                    data=message.body.encode(),
                    headers=signed,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                ) as response:
                    snippet = await response.content.read(RESPONSE_READ_LIMIT)
                    if not response.content.at_eof():
                        response.close()  # drop the connection rather than download the rest
                    status = response.status
                    location = response.headers.get("location", "")
        except TimeoutError:
            return _Outcome(None, f"no answer within {self._timeout_s:g} s")
        except aiohttp.ClientError as exc:
            return _Outcome(None, _clip(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__))
        except Exception as exc:
            # Anything else a receiver can provoke (a bad URL, an odd TLS failure) is a failed attempt, not a crash.
            return _Outcome(None, _clip(f"{type(exc).__name__}: {exc}"))
        if 200 <= status < 300:
            return _Outcome(status, None, delivered=True)
        if status == 410:  # Gone: the receiver asks us to stop
            return _Outcome(status, "410 Gone: the receiver asked to stop", give_up=True)
        if 300 <= status < 400:
            return _Outcome(status, _clip(f"HTTP {status}: redirect to {location or '?'} not followed"))
        text = snippet.decode("utf-8", errors="replace")
        return _Outcome(status, _clip(f"HTTP {status}: {text}" if text.strip() else f"HTTP {status}"))
