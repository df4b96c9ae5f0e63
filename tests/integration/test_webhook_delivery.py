"""Webhooks end to end on a real store (SQLite and PostgreSQL): the real deliverer (`WebhookDeliverer`) sends a
conversation's events to a real receiver on 127.0.0.1 that checks every signature with the `standardwebhooks`
package; a receiver that fails for a while loses nothing; and the outbox survives a restart of the control
stack. Attempts are visible at `GET /v1/conversations/{id}/webhooks`."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from orchestrator.api.http.faces import FacePreparer
from orchestrator.app import ControlStack, open_control
from orchestrator.config import Settings
from orchestrator.control.conversations import Conversations
from orchestrator.control.webhooks import WebhookDeliverer
from orchestrator.events import ReplicaTurn, UserTurn
from orchestrator.store.store import open_store
from tests.integration.conftest import checked_client, make_settings, new_tenant
from tests.pg import free_port

pytestmark = pytest.mark.integration

EVENT_KEYS = {"event_type", "conversation_id", "timestamp", "properties"}


def fast_schedule(attempts: int) -> float | None:
    """Retries after 0.1, 0.2, 0.4, 0.5, 0.5, ... s; given up after 60 attempts."""
    return None if attempts >= 60 else min(0.1 * 2 ** (attempts - 1), 0.5)


@dataclass
class Receiver:
    """A webhook receiver: verifies each request with standardwebhooks, answers 503 until `fail_until`."""

    secret: str
    port: int = field(default_factory=free_port)
    fail_until: float = 0.0  # time.monotonic()
    delivered: list[tuple[str, dict[str, Any], bytes]] = field(default_factory=list)  # answered 2xx
    refused: int = 0
    bad_signatures: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as err:
            self.bad_signatures.append(f"{request.headers.get('webhook-id')}: {err}")
            return web.Response(status=400)
        if time.monotonic() < self.fail_until:
            self.refused += 1
            return web.Response(status=503, text="down for maintenance")
        self.delivered.append((request.headers["webhook-id"], payload, body))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def ids(self) -> set[str]:
        return {msg_id for msg_id, _, _ in self.delivered}

    def duplicates(self) -> dict[str, int]:
        return {k: n for k, n in Counter(m for m, _, _ in self.delivered).items() if n > 1}

    async def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.ids()) < count:
            assert time.monotonic() < deadline, f"{len(self.ids())} of {count} webhooks after {timeout_s} s"
            await asyncio.sleep(0.05)


async def open_stack(settings: Settings, schedule: Callable[[int], float | None]) -> ControlStack:
    """`open_control`'s wiring with the deliverer on a fast retry schedule (and no sweeper)."""
    store = await open_store(settings.store.url)
    deliverer = WebhookDeliverer(store, schedule=schedule, poll_s=0.2)
    conversations = Conversations(store, settings, notify=deliverer.notify)
    task = asyncio.create_task(deliverer.run(), name="webhook-deliverer")
    return ControlStack(store, conversations, deliverer, FacePreparer(store, settings), [task])


@pytest.fixture
def settings(store_url: str, faces_dir: Path) -> Settings:
    return make_settings(store_url, faces_dir)


@pytest.fixture
async def fast_stack(settings: Settings) -> AsyncIterator[ControlStack]:
    stack = await open_stack(settings, fast_schedule)
    try:
        await stack.serve_http(settings)
        yield stack
    finally:
        await stack.close()


async def _conversation(stack: ControlStack, settings: Settings, callback_url: str) -> tuple[dict[str, str], str, str]:
    """A tenant and a conversation with `callback_url`, made through the API: (tenant, conversation id, token)."""
    tenant = await new_tenant(stack, settings)
    assert stack.url is not None
    async with checked_client(stack.url, tenant["api_key"]) as client:
        persona = await client.create_persona(name="Ada", system_prompt="You are Ada.")
        conv = await client.create_conversation(persona["persona_id"], callback_url=callback_url)
    return tenant, conv["conversation_id"], conv["join"]["token"]


TURNS = [
    UserTurn(t=1.0, turn=1, text="Hello there."),
    ReplicaTurn(t=2.0, reply_id=1, text="Hi! How can I help?", interrupted=False),
    UserTurn(t=3.5, turn=2, text="   "),  # nothing said: not recorded
    UserTurn(t=4.0, turn=3, text="What do I owe?"),
    ReplicaTurn(t=5.0, reply_id=2, text="Forty-two euros.", interrupted=True),
]
SPOKEN = [e for e in TURNS if e.text.strip()]


async def test_a_conversation_reports_its_life_signed(fast_stack: ControlStack, settings: Settings) -> None:
    stack = fast_stack
    receiver = Receiver(secret="")
    await receiver.start()
    try:
        tenant, cid, token = await _conversation(stack, settings, receiver.url)
        receiver.secret = tenant["webhook_secret"]
        joined = await stack.conversations.join(cid, token)
        joined.recorder.start()
        for event in TURNS:
            joined.recorder.event(event)
        await joined.recorder.ended("ended_by_api")
        expected = 1 + len(SPOKEN) + 1  # started, the utterances, ended
        await receiver.wait_for(expected, 20)
        await asyncio.sleep(0.3)  # anything more (there should be nothing) arrives
    finally:
        await receiver.stop()

    assert receiver.bad_signatures == []
    assert len(receiver.ids()) == expected and receiver.duplicates() == {}
    payloads = {msg_id: payload for msg_id, payload, _ in receiver.delivered}
    for msg_id, payload, body in receiver.delivered:
        assert set(payload) == EVENT_KEYS, payload
        assert payload["conversation_id"] == cid and payload["timestamp"].endswith("Z")
        assert json.loads(body) == payload
        assert msg_id.startswith("msg_")
    by_type: dict[str, list[dict[str, Any]]] = {}
    for payload in payloads.values():
        by_type.setdefault(payload["event_type"], []).append(payload)
    assert {k: len(v) for k, v in by_type.items()} == {
        "conversation.started": 1,
        "conversation.utterance": len(SPOKEN),
        "conversation.ended": 1,
    }
    started, ended = by_type["conversation.started"][0], by_type["conversation.ended"][0]
    utterances = sorted(by_type["conversation.utterance"], key=lambda p: p["properties"]["t"])
    assert started["properties"] == {"persona_id": joined.conversation.persona_id}
    turns = [{"role": "user" if isinstance(e, UserTurn) else "replica", "text": e.text, "t": e.t} for e in SPOKEN]
    assert [u["properties"] for u in utterances] == turns
    # the order: started, then the utterances, then ended (by the events' own timestamps)
    times = [started["timestamp"], *(u["timestamp"] for u in utterances), ended["timestamp"]]
    assert times == sorted(times)
    props = ended["properties"]
    assert set(props) >= {"shutdown_reason", "transcript", "perception_summary", "objective_outputs"}
    assert props["shutdown_reason"] == "ended_by_api"
    assert [{k: t[k] for k in ("role", "text", "t")} for t in props["transcript"]] == turns
    assert (props["perception_summary"], props["objective_outputs"]) == ([], {})
    arrival = [payloads[m]["event_type"] for m, _, _ in receiver.delivered]
    print(f"[{stack.store.backend}] arrival order: {arrival}")

    assert stack.url is not None
    async with checked_client(stack.url, tenant["api_key"]) as client:
        conv = await client.get_conversation(cid)
        assert (conv["status"], conv["shutdown_reason"]) == ("ended", "ended_by_api")
        assert [{k: t[k] for k in ("role", "text", "t")} for t in (await client.get_transcript(cid))["turns"]] == turns
        deliveries = (await client.list_webhook_deliveries(cid))["data"]
    assert {d["webhook_id"] for d in deliveries} == receiver.ids()
    for d in deliveries:
        assert d["status"] == "delivered" and d["url"] == receiver.url and d["next_attempt_at"] is None
        assert [a["status_code"] for a in d["attempts"]] == [204]
        assert d["event_type"] == payloads[d["webhook_id"]]["event_type"]


async def test_a_receiver_that_fails_for_a_while_loses_nothing(fast_stack: ControlStack, settings: Settings) -> None:
    stack = fast_stack
    receiver = Receiver(secret="", fail_until=time.monotonic() + 3.0)
    await receiver.start()
    try:
        tenant, cid, token = await _conversation(stack, settings, receiver.url)
        receiver.secret = tenant["webhook_secret"]
        joined = await stack.conversations.join(cid, token)
        joined.recorder.start()
        for i in range(10):
            joined.recorder.event(UserTurn(t=float(i), turn=i, text=f"line {i}"))
        await joined.recorder.ended("participant_left")
        await receiver.wait_for(12, 30)
        await asyncio.sleep(0.3)
    finally:
        await receiver.stop()
    assert receiver.bad_signatures == []
    assert receiver.refused > 0 and time.monotonic() >= receiver.fail_until
    duplicates = receiver.duplicates()
    print(f"[{stack.store.backend}] 503s: {receiver.refused}; duplicates by webhook-id: {duplicates}")
    assert duplicates == {}  # every 2xx was recorded, so nothing was sent again
    assert stack.url is not None
    async with checked_client(stack.url, tenant["api_key"]) as client:
        deliveries = (await client.list_webhook_deliveries(cid))["data"]
    assert {d["webhook_id"] for d in deliveries} == receiver.ids()  # nothing lost
    for d in deliveries:
        assert d["status"] == "delivered"
        codes = [a["status_code"] for a in d["attempts"]]
        assert codes[-1] == 204 and set(codes[:-1]) <= {503}, codes
        assert all("503" in (a["error"] or "") for a in d["attempts"][:-1])
    assert max(len(d["attempts"]) for d in deliveries) > 3  # retried through the outage


async def test_the_outbox_survives_a_restart(store_url: str, settings: Settings) -> None:
    receiver = Receiver(secret="")  # its port is chosen; nothing listens there yet
    first = await open_control(settings)
    try:
        await first.serve_http(settings)
        tenant, cid, token = await _conversation(first, settings, receiver.url)
        receiver.secret = tenant["webhook_secret"]
        joined = await first.conversations.join(cid, token)
        joined.recorder.start()
        for i in range(98):
            joined.recorder.event(UserTurn(t=float(i), turn=i, text=f"line {i}"))
        await joined.recorder.ended("participant_left")  # started + 98 utterances + ended: 100 events
        await asyncio.sleep(1.0)  # the deliverer tries, and fails: nobody is listening
        failed_attempts = first.deliverer.failed_attempts
    finally:
        await first.close()
    assert failed_attempts > 0
    pending = await _pending(store_url)
    print(f"[{first.store.backend}] before the restart: {pending} pending, {failed_attempts} failed attempts")
    assert pending == 100

    second = await open_control(settings)
    try:
        await receiver.start()
        await receiver.wait_for(pending, 30)
        await asyncio.sleep(0.5)
        assert await second.store.webhook_backlog() == 0
    finally:
        await second.close()
        await receiver.stop()
    duplicates = receiver.duplicates()
    print(f"[{second.store.backend}] after the restart: {len(receiver.ids())} delivered, duplicates: {duplicates}")
    assert receiver.bad_signatures == []
    assert len(receiver.ids()) == pending
    for msg_id, payload, _ in receiver.delivered:
        assert payload["conversation_id"] == cid and msg_id.startswith("msg_")


async def _pending(store_url: str) -> int:
    store = await open_store(store_url)
    try:
        return await store.webhook_backlog()
    finally:
        await store.close()
