"""The intelligence layer end to end, as a clinic's team uses it through the API alone: a document, a guardrail,
an objective and a tool on a persona; a spoken call (`duet talk --conversation`, the user's voice synthesised by
the real `tts` model) that is answered from the document, refused what the guardrail forbids, completes its
objective, calls the tool (the team's backend answers over the REST API when the webhook arrives); the end
webhook carries the objective's output; and a second call with the same memory store starts with what the
first one learnt. A real `duet serve`, real Triton and real models throughout."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

import duet
from duet.talk import write_wav
from orchestrator.models.triton import TritonModels
from tests.e2e.conftest import DUET, DuetServer, admin, eventually, webhook_server

pytestmark = pytest.mark.e2e

SR = 16000
CLINIC = """# Riverside Family Clinic: patient policies

## Missed appointments

If you cannot come, call us at least 24 hours ahead. A missed appointment without notice is charged a fee of
40 dollars.

## Parking

Parking is free in the garage on Elm Street; bring your ticket to the front desk.
"""
FALLBACK = "I can't discuss legal matters on this call."
LINES = [  # what the caller says, and the silence after it (the replica answers in it)
    ("Hi, my name is Maria Lopez and I am allergic to penicillin.", 10.0),  # (the objectives' judge runs here)
    ("What is the fee if I miss my appointment without calling?", 10.0),
    ("I am going to file a lawsuit against the clinic.", 6.0),
    ("Please book me an appointment for Tuesday.", 20.0),  # the call, its result and the reply with it
]


class Backend:
    """The team's webhook receiver; on `conversation.tool_call` it answers the call over the REST API."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.events: list[dict[str, Any]] = []
        self.api: duet.Client | None = None
        self.answered: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.verifier.verify(body, dict(request.headers))
        event = json.loads(body)
        self.events.append(event)
        if event["event_type"] == "conversation.tool_call" and self.api is not None:
            props = event["properties"]
            await self.api.tool_result(event["conversation_id"], props["call_id"], '{"booked": "Tuesday 9:30"}')
            self.answered.append(props["call_id"])
        return web.Response(status=204)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event_type"] == kind]


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[str, dict[str, Backend]]]:
    backends: dict[str, Backend] = {}

    async def handle(request: web.Request, tenant: str) -> web.Response:
        return await backends[tenant].handle(request)

    async with webhook_server(handle) as url:
        yield url, backends


async def _voice(triton_url: str, lines: list[tuple[str, float]], lead_s: float) -> np.ndarray:
    """The caller's microphone: `lead_s` of silence (the greeting), then each line and the pause after it."""
    models = TritonModels(triton_url)
    parts = [np.zeros(int(lead_s * SR), np.int16)]
    try:
        for text, pause in lines:
            async for chunk in models.synthesize(text):
                parts.append(chunk.pcm)
            parts.append(np.zeros(int(pause * SR), np.int16))
    finally:
        await models.close()
    return np.concatenate(parts)


async def _talk(server: DuetServer, conv: dict[str, Any], audio: np.ndarray, out: Path) -> list[dict[str, Any]]:
    wav = out.with_suffix(".wav")
    write_wav(wav, audio)
    talk = await asyncio.create_subprocess_exec(
        DUET, "talk", "--conversation", conv["conversation_id"], "--token", conv["join"]["token"],
        "--audio", str(wav), "--out", str(out), "--server", server.address,
        env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(talk.communicate(), 300)
    assert talk.returncode == 0, err.decode()[-3000:]
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


async def test_a_persona_with_documents_guardrails_objectives_and_tools_holds_a_spoken_call(
    duet_server: DuetServer, triton: Any, tmp_path: Path, hooks: tuple[str, dict[str, Backend]]
) -> None:
    server = duet_server
    url, backends = hooks
    tenant = admin(server, "tenant", "create", "Riverside")
    backend = backends[tenant["tenant_id"]] = Backend(tenant["webhook_secret"])
    async with duet.Client(server.http_url, tenant["api_key"]) as api:
        backend.api = api
        doc = await api.create_document("Clinic policies", text=CLINIC)
        assert (await api.wait_document(doc["document_id"], timeout_s=120))["status"] == "ready"
        rail = await api.create_guardrail(
            name="no-legal", applies_to="user", fallback_text=FALLBACK,
            rule={"type": "phrases", "phrases": ["lawsuit", "sue you", "my lawyer"]},
        )  # fmt: skip
        goals = await api.create_objectives(
            [{"name": "get_name", "prompt": "Ask for the caller's full name.", "output_variables": ["full_name"]}]
        )
        persona = await api.create_persona(
            name="Riverside reception",
            system_prompt="You are the receptionist of Riverside Family Clinic. Answer the caller briefly.",
            greeting="Riverside clinic, how can I help?",
            guardrail_ids=[rail["guardrail_id"]],
            objectives_id=goals["objectives_id"],
            layers={"llm": {"max_tokens": 48, "tools": [{
                "name": "book_appointment", "description": "Book a visit for the caller on a given day.",
                "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
            }]}},
        )  # fmt: skip
        conv = await api.create_conversation(
            persona["persona_id"], memory_store="patient-7", callback_url=f"{url}/{tenant['tenant_id']}"
        )
        audio = await _voice(triton.grpc_url, LINES, lead_s=4.0)
        events = await _talk(server, conv, audio, tmp_path / "first")

        def of(kind: str) -> list[dict[str, Any]]:
            return [e for e in events if e["type"] == kind]

        said = [e["text"] for e in of("replica_turn")]
        # answered from the document: the turn about the fee was given the missed-appointment chunk
        knowledge = of("knowledge")
        assert knowledge and all(r["document_id"] == doc["document_id"] for k in knowledge for r in k["results"])
        fee = [k for k in knowledge if "fee" in k["query"].lower()]
        assert fee and fee[0]["results"], knowledge
        # refused what the guardrail forbids: the fallback, word for word, and the event
        triggered = of("guardrail_triggered")
        assert [t["guardrail_id"] for t in triggered] == [rail["guardrail_id"]], triggered
        assert FALLBACK in said, said
        # the tool: called once the floor committed, answered by the backend, and the reply went on with it
        [call] = of("tool_call")
        assert call["name"] == "book_appointment" and "tuesday" in json.dumps(call["arguments"]).lower()
        assert backend.answered == [call["call_id"]]
        [result] = [e for e in events if e["type"] == "interaction" and e["interaction"] == "tool_result"]
        follow_up = [e for e in of("replica_speaking_start") if e["reply_id"] == result["reply_id"]]
        assert follow_up, "the reply with the tool's result was not heard"
        asked = next(e for e in of("user_turn") if "tuesday" in e["text"].lower())
        answered = [e for e in of("replica_speaking_start") if e["t"] >= asked["t"]]
        assert answered[0]["reply_id"] != result["reply_id"]  # the turn was answered first, then the result came
        # the objective: completed with the caller's name, in its event and in the end webhook
        done = of("objective_completed")
        assert done and done[0]["name"] == "get_name" and "maria" in done[0]["output_variables"]["full_name"].lower()

        async def ended() -> bool:
            return bool(backend.of("conversation.ended"))

        await eventually(ended, 60, "the conversation.ended webhook")
        outputs = backend.of("conversation.ended")[0]["properties"]["objective_outputs"]
        assert "maria" in outputs["get_name"]["full_name"].lower(), outputs
        assert backend.of("conversation.guardrail_triggered") and backend.of("conversation.objective_completed")

        # remembered: the call's facts are in the memory store, and the next call starts with them
        async def learnt() -> bool:
            return any("penicillin" in m["text"] for m in (await api.list_memories("patient-7"))["data"])

        await eventually(learnt, 60, "the memories of the first call")
        second = await api.create_conversation(persona["persona_id"], memory_store="patient-7")
        again = await _talk(server, second, np.zeros(3 * SR, np.int16), tmp_path / "second")
        memory = [e for e in again if e["type"] == "memory"]
        assert memory and any("penicillin" in m["text"] for m in memory[0]["memories"]), memory
