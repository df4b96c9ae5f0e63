"""The conversation API end to end, as a team uses it: `duet admin` makes two tenants on the server's store,
the REST API (through the SDK's `duet.Client`) makes a persona and a conversation, the CLI joins it with its
token (`duet talk --conversation`), the backend steers a live call with interactions and ends it, and a
webhook receiver gets every event signed. A real `duet serve` (real Triton, real models) throughout."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

import duet
from duet.sdk import connect
from duet.talk import write_wav
from duet.wav import read_pcm16
from orchestrator.models.launcher import free_port
from tests.conftest import SAMPLE
from tests.e2e.conftest import (
    DUET,
    DuetServer,
    admin,
    eventually,
    persona_folder,
    start_server,
    stop_server,
    webhook_server,
)

pytestmark = pytest.mark.e2e

FAST = {"llm": {"model": "smollm2-135m", "max_tokens": 40}}  # what is said does not matter here; timing does


@pytest.fixture(scope="module")
def api_server(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuetServer]:
    personas = persona_folder(tmp_path_factory.mktemp("personas"))
    server = start_server(triton.grpc_url, free_port(), personas)
    try:
        yield server
    finally:
        stop_server(server)


class Receiver:
    """A team's webhook endpoint: verifies each signature with the `standardwebhooks` package."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.bad = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        try:
            self.verifier.verify(body, dict(request.headers))
        except Exception:
            self.bad += 1
            return web.Response(status=400)
        self.ids.append(request.headers["webhook-id"])
        self.events.append(json.loads(body))
        return web.Response(status=204)

    def types(self, conversation_id: str) -> list[str]:
        return [e["event_type"] for e in self.events if e["conversation_id"] == conversation_id]


@pytest.fixture
async def receiver_url() -> AsyncIterator[tuple[str, dict[str, Receiver]]]:
    receivers: dict[str, Receiver] = {}

    async def handle(request: web.Request, tenant: str) -> web.Response:
        return await receivers[tenant].handle(request)

    async with webhook_server(handle) as url:
        yield url, receivers


async def test_a_team_runs_a_conversation_through_the_api_alone(
    api_server: DuetServer, tmp_path: Path, receiver_url: tuple[str, dict[str, Receiver]]
) -> None:
    hooks, receivers = receiver_url
    a, b = admin(api_server, "tenant", "create", "Acme"), admin(api_server, "tenant", "create", "Globex")
    receivers[a["tenant_id"]] = Receiver(a["webhook_secret"])
    async with (
        duet.Client(api_server.http_url, a["api_key"]) as api,
        duet.Client(api_server.http_url, b["api_key"]) as other,
    ):
        persona = await api.create_persona(
            template="billing", name="Sam (test)", greeting="Hello, this is Sam from the API test.", layers=FAST
        )
        conv = await api.create_conversation(
            persona["persona_id"],
            callback_url=f"{hooks}/{a['tenant_id']}",
            conversational_context="The caller's account number is 4471.",
        )
        cid, token = conv["conversation_id"], conv["join"]["token"]
        assert conv["join"]["grpc"] == api_server.address
        with pytest.raises(duet.ApiError) as foreign:  # the other tenant cannot see it, nor confirm it exists
            await other.get_conversation(cid)
        assert foreign.value.status == 404

        # the user waits for the greeting (4 s of silence first), then says their piece
        user = tmp_path / "user.wav"
        write_wav(user, np.frombuffer(bytes(4 * 32000) + read_pcm16(SAMPLE), dtype="<i2"))
        talk = await asyncio.create_subprocess_exec(
            DUET, "talk", "--conversation", cid, "--token", token, "--audio", str(user),
            "--out", str(tmp_path / "talk"), "--server", api_server.address,
            env=api_server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(talk.communicate(), 180)
        assert talk.returncode == 0, err.decode()[-3000:]
        events = [json.loads(line) for line in (tmp_path / "talk" / "events.jsonl").read_text().splitlines()]
        said = [e["text"] for e in events if e["type"] == "replica_turn"]
        assert said and said[0] == "Hello, this is Sam from the API test.", said  # the persona's greeting

        ended = await api.get_conversation(cid)
        assert ended["status"] == "ended" and ended["shutdown_reason"] == "participant_left"
        assert ended["started_at"] and ended["ended_at"]
        transcript = await api.get_transcript(cid)
        roles = [t["role"] for t in transcript["turns"]]
        assert "user" in roles and "replica" in roles, transcript
        assert [t["text"] for t in transcript["turns"] if t["role"] == "replica"] == [x for x in said if x.strip()]
        users = [e["text"] for e in events if e["type"] == "user_turn"]
        assert [t["text"] for t in transcript["turns"] if t["role"] == "user"] == users

        # a token joins once
        again = await asyncio.create_subprocess_exec(
            DUET, "talk", "--conversation", cid, "--token", token, "--audio", str(SAMPLE),
            "--out", str(tmp_path / "again"), "--server", api_server.address,
            env=api_server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, refused = await asyncio.wait_for(again.communicate(), 60)
        assert again.returncode != 0 and b"conflict" in refused, refused

        receiver = receivers[a["tenant_id"]]

        async def delivered() -> bool:
            return "conversation.ended" in receiver.types(cid)

        await eventually(delivered, 30, "the conversation.ended webhook")
        types = receiver.types(cid)
        assert types[0] == "conversation.started" and types[-1] == "conversation.ended", types
        assert types.count("conversation.utterance") == len(transcript["turns"])
        assert receiver.bad == 0
        final = receiver.events[-1]["properties"]
        assert final["shutdown_reason"] == "participant_left"
        assert [t["text"] for t in final["transcript"]] == [t["text"] for t in transcript["turns"]]
        deliveries = await api.list_webhook_deliveries(cid)
        assert all(d["status"] == "delivered" for d in deliveries["data"])


async def test_the_backend_steers_and_ends_a_live_call(api_server: DuetServer) -> None:
    a = admin(api_server, "tenant", "create", "Initech")
    async with duet.Client(api_server.http_url, a["api_key"]) as api:
        persona = await api.create_persona(name="Quiet", system_prompt="You are a quiet assistant.", layers=FAST)
        conv = await api.create_conversation(persona["persona_id"], properties={"max_duration_s": 600})
        cid, token = conv["conversation_id"], conv["join"]["token"]
        with pytest.raises(duet.ApiError) as early:  # not joined yet: nothing to steer
            await api.echo(cid, "Too early.")
        assert early.value.status == 409

        events: list[dict[str, Any]] = []
        silence = np.zeros(320, dtype="<i2").tobytes()
        async with connect(api_server.address, conversation_id=cid, token=token) as session:

            async def speak() -> None:
                while True:
                    await session.send_audio(silence)
                    await asyncio.sleep(0.02)

            async def listen() -> None:
                try:
                    async for item in session.items():
                        if isinstance(item, dict):
                            events.append(item)
                except duet.DuetError as err:  # the SDK raises a fatal error: the session's end
                    events.append({"type": "error", "code": err.code, "message": err.message, "fatal": True})

            sender = asyncio.create_task(speak(), name="test-silence")
            reader = asyncio.create_task(listen(), name="test-listen")
            try:

                async def active() -> bool:
                    return (await api.get_conversation(cid))["status"] == "active"

                await eventually(active, 30, "the conversation to become active")
                await api.echo(cid, "Your refund is on its way.")

                async def echoed() -> bool:
                    return any(
                        e["type"] == "replica_turn" and e["text"] == "Your refund is on its way." for e in events
                    )

                await eventually(echoed, 60, "the echoed line to be said")
                await api.overwrite_context(cid, "The caller is a premium customer.")
                ended = await api.end_conversation(cid)
                assert ended["status"] == "ended" and ended["shutdown_reason"] == "ended_by_api"
                await asyncio.wait_for(reader, 30)  # the session's stream ends
            finally:
                sender.cancel()
                reader.cancel()
                await asyncio.gather(sender, reader, return_exceptions=True)
        errors = [e for e in events if e["type"] == "error"]
        assert errors and errors[-1]["code"] == "conversation_ended" and errors[-1]["fatal"], errors
        assert any(e["type"] == "interaction" for e in events)
        with pytest.raises(duet.ApiError) as late:
            await api.respond(cid, "Hello?")
        assert late.value.status == 409
        transcript = await api.get_transcript(cid)
        assert any(t["role"] == "replica" and t["text"] == "Your refund is on its way." for t in transcript["turns"])


def test_off_loopback_every_session_needs_a_join_token(triton: Any, tmp_path: Path) -> None:
    """Protected mode: bound to all interfaces, a session that names only a persona is refused."""
    server = start_server(triton.grpc_url, free_port(), args=("--host", "0.0.0.0"))
    try:
        done = subprocess.run(
            [DUET, "turns", str(SAMPLE), "--jsonl", "--speed", "0", "--server", server.address],
            env=server.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode != 0 and "unauthenticated" in done.stderr, done.stderr
    finally:
        stop_server(server)
