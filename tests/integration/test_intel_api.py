"""The intelligence layer's REST side on a real store (SQLite and PostgreSQL) and a real tritonserver (`embed`,
and `llm` for learning memories): documents in every format, searched; bad documents refused with nothing
stored; tenants isolated; memories added, recalled and learnt from a transcript; guardrails and objective
graphs validated. Every answer is checked against the OpenAPI document (`conftest.http_as`)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest

from orchestrator.config import TritonSettings
from orchestrator.models.launcher import EmbeddedTriton
from orchestrator.models.triton import TritonModels
from tests.integration.conftest import Control, Http, http_as, new_tenant

pytestmark = pytest.mark.integration

READY_S = 60.0

CLINIC = """# Riverside Family Clinic: patient policies

## Appointments

Please arrive fifteen minutes before your appointment to complete check-in. If you need to cancel, tell us at
least 24 hours ahead; a missed appointment without notice is charged a $40 fee.

## Prescriptions

Refill requests are processed within two business days. Controlled substances cannot be refilled by phone.

## Parking

Free parking is available in the garage on Elm Street; bring your ticket to the front desk for validation.
"""

BILLING_HTML = """<html><head><title>Billing</title><script>var x = 1;</script></head><body>
<h1>Northwind Mobile billing rules</h1>
<h2>Late payments</h2><p>A bill paid more than 10 days after its due date incurs a late fee of $7.50.</p>
<h2>Roaming</h2><p>Roaming in Canada and Mexico is included in every plan at no extra cost.</p>
</body></html>"""


@pytest.fixture(scope="module")
def triton_url() -> Iterator[str]:
    with EmbeddedTriton(TritonSettings(models=("embed", "llm"))) as server:
        yield server.grpc_url


@pytest.fixture
async def intel_control(control: Control, triton_url: str) -> Control:
    models = TritonModels(triton_url)
    control.stack.conversations.intel.attach(models, models)
    return control


async def _ready(http: Http, document_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + READY_S
    while True:
        doc = (await http("GET", f"/v1/documents/{document_id}")).body
        if doc["status"] != "processing" or time.monotonic() > deadline:
            return dict(doc)
        await asyncio.sleep(0.2)


def _form(data: bytes, filename: str, content_type: str, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(data), filename=filename, content_type=content_type)
    for name, value in fields.items():
        form.add_field(name, value)
    return form


def _pdf(text: str) -> bytes:
    """A one-page PDF with `text` as its text layer (written by hand: no PDF writer is needed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


async def test_documents_in_every_format_become_searchable(intel_control: Control) -> None:
    stack, url, settings = intel_control
    tenant = await new_tenant(stack, settings)
    async with http_as(url, tenant["api_key"]) as http:
        made = await http("POST", "/v1/documents", json_body={"name": "Clinic", "text": CLINIC, "tags": ["clinic"]})
        assert made.status == 202 and made.body["status"] == "processing"
        billing = _form(BILLING_HTML.encode(), "billing.html", "text/html", name="Billing", tags="telecom, billing")
        html = await http("POST", "/v1/documents", data=billing)
        handbook = _pdf("New employees receive their laptop on the first Monday.")
        pdf = await http("POST", "/v1/documents", data=_form(handbook, "handbook.pdf", "application/pdf"))
        assert html.status == 202 and pdf.status == 202, (html.body, pdf.body)
        docs = {name: await _ready(http, a.body["document_id"]) for name, a in
                (("clinic", made), ("billing", html), ("pdf", pdf))}  # fmt: skip
        assert {d["status"] for d in docs.values()} == {"ready"}, docs
        assert docs["clinic"]["content_type"] == "markdown" and docs["clinic"]["chunks"] >= 1
        assert docs["billing"]["content_type"] == "html" and docs["billing"]["tags"] == ["telecom", "billing"]
        assert docs["pdf"]["content_type"] == "pdf" and docs["pdf"]["name"] == "handbook.pdf"

        async def top(query: str, **kw: Any) -> dict[str, Any]:
            answer = await http("POST", "/v1/knowledge/search", json_body={"query": query, **kw})
            assert answer.status == 200, answer.body
            assert answer.body["took_ms"] >= 0
            return dict(answer.body["results"][0]) if answer.body["results"] else {}

        for strategy in ("speed", "balanced", "quality"):
            hit = await top("what happens if I skip my visit without calling?", strategy=strategy)
            assert "$40" in hit["text"] and hit["document_id"] == docs["clinic"]["document_id"], (strategy, hit)
        hit = await top("is there a charge for using my phone in Mexico?")
        assert "Roaming" in hit["text"] and "<script>" not in hit["text"] and "var x" not in hit["text"]
        assert "laptop" in (await top("when do new hires get their computer?"))["text"]
        # filters: by document, by tag
        hit = await top("late fee", document_ids=[docs["billing"]["document_id"]])
        assert hit["document_id"] == docs["billing"]["document_id"]
        hit = await top("late fee", tags=["clinic"])
        assert hit["document_id"] == docs["clinic"]["document_id"]
        listed = await http("GET", "/v1/documents", params={"limit": "2"})
        assert len(listed.body["data"]) == 2 and listed.body["next_cursor"]
        # deleting a document takes its chunks out of search at once
        assert (await http("DELETE", f"/v1/documents/{docs['billing']['document_id']}")).status == 204
        answer = await http("POST", "/v1/knowledge/search", json_body={"query": "roaming in Canada"})
        assert docs["billing"]["document_id"] not in {r["document_id"] for r in answer.body["results"]}


async def test_bad_documents_are_refused_and_nothing_is_stored(intel_control: Control) -> None:
    stack, url, settings = intel_control
    tenant = await new_tenant(stack, settings)
    async with http_as(url, tenant["api_key"]) as http:
        cases = [
            (_form(b"%PDF-1.7\n garbage that is no PDF", "x.pdf", "application/pdf"), 415, "unsupported_media_type"),
            (_form(b"PK\x03\x04 a zip", "x.docx", "application/octet-stream"), 415, "unsupported_media_type"),
            (_form(b"   \n\n  ", "x.txt", "text/plain"), 422, "invalid"),
            (_form(b"<html><script>x()</script></html>", "x.html", "text/html"), 422, "invalid"),
            (_form(bytes(range(256)) * 40, "x.txt", "text/plain"), 415, "unsupported_media_type"),
        ]
        for form, status, code in cases:
            answer = await http("POST", "/v1/documents", data=form)
            assert (answer.status, answer.body["error"]["code"]) == (status, code), answer.body
        big = b"word " * (settings.intel.max_document_bytes // 5 + 10)
        answer = await http("POST", "/v1/documents", data=_form(big, "big.txt", "text/plain"))
        assert answer.status == 413, answer.body
        answer = await http("POST", "/v1/documents", json_body={"name": "x", "text": " "})
        assert answer.status == 422 and answer.body["error"]["field"] == "$.text"
        answer = await http("POST", "/v1/documents", json_body={"name": "x"})
        assert answer.status == 422
        answer = await http("POST", "/v1/documents", data=b"plain", headers={"Content-Type": "text/plain"})
        assert answer.status == 415
        assert (await http("GET", "/v1/documents")).body["data"] == []  # nothing half-stored


async def test_a_tenant_never_searches_another_tenants_documents(intel_control: Control) -> None:
    stack, url, settings = intel_control
    a, b = await new_tenant(stack, settings, "A"), await new_tenant(stack, settings, "B")
    async with http_as(url, a["api_key"]) as http_a, http_as(url, b["api_key"]) as http_b:
        made = await http_a("POST", "/v1/documents", json_body={"name": "Clinic", "text": CLINIC})
        doc_id = made.body["document_id"]
        assert (await _ready(http_a, doc_id))["status"] == "ready"
        answer = await http_b("POST", "/v1/knowledge/search", json_body={"query": "missed appointment fee"})
        assert answer.status == 200 and answer.body["results"] == []
        answer = await http_b("POST", "/v1/knowledge/search", json_body={"query": "fee", "document_ids": [doc_id]})
        assert answer.status == 422 and answer.body["error"]["field"] == "$.document_ids[0]"
        assert (await http_b("GET", f"/v1/documents/{doc_id}")).status == 404
        assert (await http_b("DELETE", f"/v1/documents/{doc_id}")).status == 404
        answer = await http_b("POST", "/v1/personas", json_body={
            "name": "x", "system_prompt": "x", "document_ids": [doc_id]})  # fmt: skip
        assert answer.status == 422 and answer.body["error"]["field"] == "$.document_ids[0]"
        assert (await _ready(http_a, doc_id))["status"] == "ready"  # A's document untouched


async def test_memories_are_added_listed_deleted_and_learnt_from_a_conversation(intel_control: Control) -> None:
    stack, url, settings = intel_control
    tenant = await new_tenant(stack, settings)
    bank = stack.conversations.intel.memories
    async with http_as(url, tenant["api_key"]) as http:
        made = await http("POST", "/v1/memory-stores/user-42/memories", json_body={"text": "Prefers email.",
                                                                                    "pinned": True})  # fmt: skip
        assert made.status == 201 and made.body["pinned"] and made.body["conversation_id"] is None
        listed = await http("GET", "/v1/memory-stores/user-42/memories")
        assert [m["text"] for m in listed.body["data"]] == ["Prefers email."]
        assert (await http("GET", "/v1/memory-stores/user-7/memories")).body["data"] == []
        turns = [
            ("replica", "Hello, how can I help?"),
            ("user", "Hi, my name is Priya and I just moved to Denver with my dog Rex."),
            ("replica", "Welcome! What can I do for you?"),
            ("user", "I need to update my address on the account."),
        ]
        learnt = await bank.learn(tenant["tenant_id"], "user-42", "conv_test", turns)
        texts = " ".join(m.text for m in learnt)
        assert "Denver" in texts or "Rex" in texts or "Priya" in texts, learnt
        assert all(m.conversation_id == "conv_test" for m in learnt)
        # a changed fact updates its memory instead of adding one
        before = len((await http("GET", "/v1/memory-stores/user-42/memories")).body["data"])
        await bank.keep(tenant["tenant_id"], "user-42", "conv_2", ["The user's dog is called Rex and is three."])
        await bank.keep(tenant["tenant_id"], "user-42", "conv_3", ["The user's dog is called Rex and is four."])
        after = (await http("GET", "/v1/memory-stores/user-42/memories")).body["data"]
        assert len(after) <= before + 1
        vector = (await bank.embedder.embed(["what is my dog's name?"]))[0]  # type: ignore[union-attr]
        recalled = await bank.recall(tenant["tenant_id"], "user-42", np.asarray(vector), 3)
        assert any("Rex" in m.text for m in recalled)
        gone = await http("DELETE", f"/v1/memory-stores/user-7/memories/{made.body['memory_id']}")
        assert gone.status == 404  # from its own store only
        gone = await http("DELETE", f"/v1/memory-stores/user-42/memories/{made.body['memory_id']}")
        assert gone.status == 204


async def test_guardrails_and_objectives_are_validated(intel_control: Control) -> None:
    stack, url, settings = intel_control
    tenant = await new_tenant(stack, settings)
    async with http_as(url, tenant["api_key"]) as http:
        good = {"name": "no-diagnosis", "applies_to": "replica", "fallback_text": "I can't say; please ask a doctor.",
                "rule": {"type": "phrases", "phrases": ["you have cancer", "diagnosis is"]}}  # fmt: skip
        made = await http("POST", "/v1/guardrails", json_body=good)
        assert made.status == 201 and made.body["guardrail_id"].startswith("grd_")
        assert (await http("GET", f"/v1/guardrails/{made.body['guardrail_id']}")).body["rule"] == good["rule"]
        bad_rules = [
            ({"type": "pattern", "pattern": "(unclosed"}, "$.rule.pattern"),
            ({"type": "pattern", "pattern": "(a+)+$"}, "$.rule.pattern"),
            ({"type": "phrases", "phrases": []}, "$.rule.phrases"),
            ({"type": "semantic", "examples": ["x"], "threshold": 3}, "$.rule.threshold"),
            ({"type": "llm"}, "$.rule.policy"),
        ]
        for rule, field in bad_rules:
            answer = await http("POST", "/v1/guardrails", json_body={**good, "rule": rule})
            assert answer.status == 422, (rule, answer.body)
            assert answer.body["error"]["field"].startswith(field), (rule, answer.body)
        goals = {"objectives": [
            {"name": "get_name", "prompt": "Ask for their full name.", "output_variables": ["full_name"],
             "next_required": ["get_reason"]},
            {"name": "get_reason", "prompt": "Ask why they are calling.", "output_variables": ["reason"]},
        ]}  # fmt: skip
        made_goals = await http("POST", "/v1/objectives", json_body=goals)
        assert made_goals.status == 201, made_goals.body
        cycle = {"objectives": [{**goals["objectives"][0]}, {**goals["objectives"][1], "next_required": ["get_name"]}]}
        answer = await http("POST", "/v1/objectives", json_body=cycle)
        assert answer.status == 422 and "cycle" in answer.body["error"]["message"], answer.body
        unknown = {"objectives": [{**goals["objectives"][0], "next_required": ["nope"]}]}
        answer = await http("POST", "/v1/objectives", json_body=unknown)
        assert answer.status == 422 and answer.body["error"]["field"] == "$.objectives[0].next_required[0]"
        # a persona names them; unknown ids and bad tool schemas are refused
        persona = {"name": "Nurse", "system_prompt": "You are a clinic nurse.",
                   "guardrail_ids": [made.body["guardrail_id"]], "objectives_id": made_goals.body["objectives_id"],
                   "layers": {"llm": {"tools": [{"name": "book", "description": "Book a visit",
                                                 "parameters": {"type": "object", "properties": {
                                                     "day": {"type": "string"}}, "required": ["day"]}}]}}}  # fmt: skip
        assert (await http("POST", "/v1/personas", json_body=persona)).status == 201
        answer = await http("POST", "/v1/personas", json_body={**persona, "guardrail_ids": ["grd_nope"]})
        assert answer.status == 422 and answer.body["error"]["field"] == "$.guardrail_ids[0]"
        bad_tool = {"llm": {"tools": [{"name": "book", "parameters": {"type": "object", "properties": 5}}]}}
        answer = await http("POST", "/v1/personas", json_body={**persona, "layers": bad_tool})
        assert answer.status == 422 and "tools" in answer.body["error"]["field"], answer.body


class CountingJudge:
    """The real JSON judge (the `llm` model), counting the questions it is asked."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.asked = 0

    async def complete_json(self, messages: Any, schema: Any, *, max_tokens: int) -> dict[str, Any]:
        self.asked += 1
        return dict(await self.inner.complete_json(messages, schema, max_tokens=max_tokens))


async def test_a_conversations_layer_grounds_replies_and_holds_its_rails(intel_control: Control) -> None:
    from orchestrator.control.intel import NO_KNOWLEDGE, TOOL_HINT, ConversationLayer
    from orchestrator.events import Event, KnowledgeEvent, MemoryEvent

    stack, url, settings = intel_control
    tenant = await new_tenant(stack, settings)
    intel = stack.conversations.intel
    async with http_as(url, tenant["api_key"]) as http:
        made = await http("POST", "/v1/documents", json_body={"name": "Clinic", "text": CLINIC})
        assert (await _ready(http, made.body["document_id"]))["status"] == "ready"
        rail = await http("POST", "/v1/guardrails", json_body={
            "name": "no-legal", "applies_to": "both", "fallback_text": "No legal talk, sorry.",
            "rule": {"type": "phrases", "phrases": ["lawsuit"]}})  # fmt: skip
        await http("POST", "/v1/memory-stores/u1/memories", json_body={"text": "The user has a dog named Rex."})
        tool = {
            "name": "book_appointment",
            "description": "Book a visit for the caller on a given day.",
            "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
        }
        persona = {"guardrail_ids": [rail.body["guardrail_id"]], "layers": {"llm": {"tools": [tool]}}}
        conv = await stack.store.create_conversation(
            tenant["tenant_id"], persona_id="per_x", settings={"memory_store": "u1"}, callback_url=None,
            token_digest=b"\0" * 32, token_expires_at=_later(), now=_now(), max_concurrent=10,
        )  # fmt: skip
    plan = await intel.plan(conv, persona)
    assert plan.documents and plan.memory_store == "u1" and len(plan.guardrails) == 1 and len(plan.tools) == 1
    layer = intel.layer(plan, intel.llm)
    assert isinstance(layer, ConversationLayer)
    judge = layer.judge = CountingJudge(layer.judge)
    sent: list[Event] = []

    async def emit(event: Event) -> None:
        sent.append(event)

    layer.bind(emit, lambda: 1.0)
    opening = await layer.opening()
    assert isinstance(opening[0], MemoryEvent) and "Rex" in opening[0].memories[0].text

    # what a prefill of the user's words gets: the reply's own context, found without a trace
    question = "what do I pay if I skip my visit without calling?"
    quiet = await layer.words_context(question)
    g = await layer.ground(question, speculative=True)
    assert "$40" in g.context and g.script is None
    assert quiet == g.context and not sent and judge.asked == 0  # no event, no rail, no tool choice
    knowledge = [e for e in g.events if isinstance(e, KnowledgeEvent)]
    assert knowledge and knowledge[0].results
    g = await layer.ground("what is my dog called?", speculative=False)
    assert "Rex" in g.context  # the memory, recalled by the turn
    asked = judge.asked
    g = await layer.ground("is the weather nice on Mars today?", speculative=False)
    assert NO_KNOWLEDGE in g.context and judge.asked == asked  # far from every tool: the LLM is not asked
    g = await layer.ground("I will file a lawsuit", speculative=False)
    assert g.script == "No legal talk, sorry." and g.events[0].type == "guardrail_triggered"
    g = await layer.ground("Please book me an appointment for Tuesday.", speculative=False)
    assert g.tool_choice is not None and TOOL_HINT.split("(")[0] in g.context and g.script is None
    call = await g.tool_choice  # chosen beside the reply
    assert call is not None and call.name == "book_appointment" and call.arguments == {"day": "Tuesday"}
    assert layer.tool_result("call_unknown", "x") is None
    note = layer.tool_result(call.call_id, {"booked": "Tuesday 9:30"})
    assert note is not None and "9:30" in note
    assert layer.tool_result(call.call_id, "again") is None  # once
    hit = await layer.check_clause("and then the lawsuit", "I see")
    assert hit is not None and hit.fallback == "No legal talk, sorry." and hit.event.applies_to == "replica"
    await layer.close()


def _now() -> Any:
    from orchestrator.store.store import utc_now

    return utc_now()


def _later() -> Any:
    from datetime import timedelta

    return _now() + timedelta(hours=1)
