"""Two orchestrators on one PostgreSQL store and one Triton, as a cluster runs them: a conversation is steered
and ended through either server (the one that does not run its session passes the request to the one that
does); killing one server ends only its own conversations, with reason `error`, their transcripts kept
and their `conversation.ended` webhooks sent by the survivor; restarting PostgreSQL mid-call loses nothing.
Real `duet serve` processes, real Triton, real PostgreSQL, real sessions over gRPC."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

import duet
from duet.sdk import Session, connect
from orchestrator.models.launcher import free_port
from tests.e2e.conftest import DuetServer, admin, eventually, persona_folder, start_server, webhook_server
from tests.pg import ThrowawayPostgres, postgres_server

pytestmark = pytest.mark.e2e

FAST = {"llm": {"model": "smollm2-135m", "max_tokens": 40}}  # what is said does not matter here
LEASE_S = 3  # the holders' lease: a dead server's conversations end within it (plus a sweep)
SILENCE = np.zeros(320, dtype="<i2").tobytes()


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    yield from postgres_server()


@pytest.fixture
def cluster(
    triton: Any, postgres: ThrowawayPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DuetServer, DuetServer]]:
    personas = persona_folder(tmp_path_factory.mktemp("personas"))
    servers: list[DuetServer] = []
    try:
        for name in ("orch-a", "orch-b"):
            env = {
                "DUET_STORE__URL": postgres.dsn,
                "DUET_API__INSTANCE_ID": f"{name}-{free_port()}",
                "DUET_API__HOLD_LEASE_S": str(LEASE_S),
            }
            servers.append(start_server(triton.grpc_url, free_port(), personas, env))
        yield servers[0], servers[1]
    finally:
        for s in servers:
            s.stop()


class Receiver:
    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.events: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.verifier.verify(body, dict(request.headers))
        self.events.append(json.loads(body))
        return web.Response(status=204)

    def ended(self, conversation_id: str) -> dict[str, Any] | None:
        return next(
            (
                e["properties"]
                for e in self.events
                if e["conversation_id"] == conversation_id and e["event_type"] == "conversation.ended"
            ),
            None,
        )

    def uttered(self, conversation_id: str, text: str) -> bool:
        """Whether the `conversation.utterance` webhook for `text` came: the turn is in the store by then."""
        return any(
            e["conversation_id"] == conversation_id
            and e["event_type"] == "conversation.utterance"
            and e["properties"]["text"] == text
            for e in self.events
        )


class Live:
    """A joined session kept talking (silence at real time), its events collected."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.events: list[dict[str, Any]] = []
        self.tasks = [
            asyncio.create_task(self._speak(), name="test-silence"),
            asyncio.create_task(self._listen(), name="test-listen"),
        ]

    async def _speak(self) -> None:
        while True:
            await self.session.send_audio(SILENCE)
            await asyncio.sleep(0.02)

    async def _listen(self) -> None:
        try:
            async for item in self.session.items():
                if isinstance(item, dict):
                    self.events.append(item)
        except duet.DuetError as err:
            self.events.append({"type": "error", "code": err.code, "fatal": True})

    def said(self, text: str) -> bool:
        return any(e["type"] == "replica_turn" and e["text"] == text for e in self.events)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[str, dict[str, Receiver]]]:
    receivers: dict[str, Receiver] = {}

    async def handle(request: web.Request, tenant: str) -> web.Response:
        return await receivers[tenant].handle(request)

    async with webhook_server(handle) as url:
        yield url, receivers


async def _conversation(api: duet.Client, hook: str | None) -> tuple[str, str]:
    persona = await api.create_persona(name="Quiet", system_prompt="You are a quiet assistant.", layers=FAST)
    conv = await api.create_conversation(persona["persona_id"], callback_url=hook, properties={"max_duration_s": 600})
    return conv["conversation_id"], conv["join"]["token"]


async def _active(api: duet.Client, cid: str) -> None:
    async def active() -> bool:
        return (await api.get_conversation(cid))["status"] == "active"

    await eventually(active, 30, f"conversation {cid} to become active")


async def test_either_server_steers_and_ends_a_conversation_the_other_runs(
    cluster: tuple[DuetServer, DuetServer], hooks: tuple[str, dict[str, Receiver]]
) -> None:
    a, b = cluster
    url, receivers = hooks
    tenant = admin(a, "tenant", "create", "Initech")
    receivers[tenant["tenant_id"]] = Receiver(tenant["webhook_secret"])
    async with duet.Client(b.http_url, tenant["api_key"]) as via_b:
        cid, token = await _conversation(via_b, f"{url}/{tenant['tenant_id']}")
        async with connect(a.address, conversation_id=cid, token=token) as session:  # the session runs on A
            live = Live(session)
            try:
                await _active(via_b, cid)
                await via_b.echo(cid, "Your refund is on its way.")  # sent to B, said by A's session

                async def echoed() -> bool:
                    return live.said("Your refund is on its way.")

                await eventually(echoed, 60, "the echoed line to be said")
                ended = await via_b.end_conversation(cid)
                assert ended["status"] == "ended" and ended["shutdown_reason"] == "ended_by_api", ended
                await asyncio.wait_for(live.tasks[1], 30)  # A's session ends: its stream closes
            finally:
                await live.close()
        errors = [e for e in live.events if e["type"] == "error"]
        assert errors and errors[-1]["code"] == "conversation_ended", errors
        transcript = await via_b.get_transcript(cid)
        assert any(t["text"] == "Your refund is on its way." for t in transcript["turns"]), transcript


async def test_killing_a_server_ends_only_its_conversations_and_the_survivor_reports_them(
    cluster: tuple[DuetServer, DuetServer], hooks: tuple[str, dict[str, Receiver]], tmp_path: Path
) -> None:
    a, b = cluster
    url, receivers = hooks
    tenant = admin(b, "tenant", "create", "Hooli")
    receiver = receivers[tenant["tenant_id"]] = Receiver(tenant["webhook_secret"])
    hook = f"{url}/{tenant['tenant_id']}"
    async with duet.Client(b.http_url, tenant["api_key"]) as api:
        on_a, token_a = await _conversation(api, hook)
        on_b, token_b = await _conversation(api, hook)
        async with (
            connect(a.address, conversation_id=on_a, token=token_a) as session_a,
            connect(b.address, conversation_id=on_b, token=token_b) as session_b,
        ):
            live_a, live_b = Live(session_a), Live(session_b)
            try:
                await _active(api, on_a)
                await _active(api, on_b)
                await api.echo(on_a, "Your order has shipped.")

                async def said_on_a() -> bool:
                    return live_a.said("Your order has shipped.")

                await eventually(said_on_a, 60, "A's session to say its line")

                async def stored_on_a() -> bool:  # the live event comes before the store write; wait for it
                    return receiver.uttered(on_a, "Your order has shipped.")

                await eventually(stored_on_a, 30, "A to record the line")
                a.proc.kill()  # SIGKILL: no drain, no goodbye; its conversations are orphans now
                killed = asyncio.get_running_loop().time()
                a.proc.wait(timeout=15)

                async def orphan_ended() -> bool:
                    return (await api.get_conversation(on_a))["status"] == "ended"

                await eventually(orphan_ended, LEASE_S + 20, "B to end the dead server's conversation")
                view = await api.get_conversation(on_a)
                assert view["shutdown_reason"] == "error", view
                gone_s = asyncio.get_running_loop().time() - killed
                print(f"the dead server's conversation ended {gone_s:.1f} s after the kill (lease {LEASE_S} s)")

                async def reported() -> bool:
                    return receiver.ended(on_a) is not None

                await eventually(reported, 30, "the survivor to send conversation.ended")
                ended = receiver.ended(on_a)
                assert ended is not None and ended["shutdown_reason"] == "error"
                assert any(t["text"] == "Your order has shipped." for t in ended["transcript"]), ended

                # B's own conversation never noticed
                assert (await api.get_conversation(on_b))["status"] == "active"
                await api.echo(on_b, "Still here.")

                async def said_on_b() -> bool:
                    return live_b.said("Still here.")

                await eventually(said_on_b, 60, "B's session to go on")
                assert not any(e["type"] == "error" for e in live_b.events), live_b.events
                await api.end_conversation(on_b)
            finally:
                await live_a.close()
                await live_b.close()
        assert (await api.get_conversation(on_b))["shutdown_reason"] == "ended_by_api"


async def test_restarting_postgresql_mid_call_loses_nothing(
    cluster: tuple[DuetServer, DuetServer], postgres: ThrowawayPostgres
) -> None:
    a, b = cluster
    tenant = admin(a, "tenant", "create", "Umbrella")
    line = "Thanks for waiting. I have checked your account and the refund of forty dollars is on its way."
    async with duet.Client(b.http_url, tenant["api_key"]) as api:
        cid, token = await _conversation(api, None)
        async with connect(a.address, conversation_id=cid, token=token) as session:
            live = Live(session)
            try:
                await _active(api, cid)
                await api.echo(cid, line)  # the replica says it for ~6 s; its turn is recorded at the end
                postgres.pause()  # the store is away while the turn ends
                down = asyncio.get_running_loop().time()
                try:

                    async def said() -> bool:
                        return live.said(line)

                    await eventually(said, 60, "the line to be said while the store is down")
                    await asyncio.sleep(max(LEASE_S + 1 - (asyncio.get_running_loop().time() - down), 0))
                finally:
                    postgres.resume()
                print(f"PostgreSQL was down {asyncio.get_running_loop().time() - down:.1f} s")

                async def recorded() -> bool:
                    turns = (await api.get_transcript(cid))["turns"]
                    return any(t["text"] == line for t in turns)

                await eventually(recorded, 30, "the turn said while the store was down to be recorded")
                await asyncio.sleep(LEASE_S + 2)  # past a lease after the store came back: still A's, still live
                view = await api.get_conversation(cid)
                assert view["status"] == "active", (view, live.events[-5:])
                assert not any(e["type"] == "error" for e in live.events), live.events
                ended = await api.end_conversation(cid)
                assert ended["shutdown_reason"] == "ended_by_api", ended
            finally:
                await live.close()
