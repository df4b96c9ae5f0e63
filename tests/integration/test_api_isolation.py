"""Tenancy on a real store (SQLite and PostgreSQL): every route that names an object in its path answers another
tenant's id with `404 not_found` (never 403, never 200) and changes nothing; body references to another tenant's
objects are not found either; lists never show another tenant's objects; a join token opens its own
conversation only, once, and not after it expires."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from orchestrator.api.http import openapi
from orchestrator.errors import Conflict, Unauthenticated
from orchestrator.store.store import utc_now
from tests.integration.conftest import Control, StartControl, checked_client, http_as, new_tenant

pytestmark = pytest.mark.integration

# A valid body for each operation that needs one, so that the request gets past validation to the store.
BODIES: dict[str, Any] = {
    "updatePersona": {"name": "Mallory's now"},
    "createInteraction": {"type": "echo", "text": "hello"},
    "joinWebRtc": {"sdp": "v=0\r\n", "type": "offer"},
}
# A memory store's name is the tenant's own namespace, not an object: another tenant's name is simply an empty
# store of this tenant's (checked below), so these two are not walked with B's ids.
NAMESPACED = {"listMemories", "createMemory"}


async def _populate(control: Control, name: str) -> dict[str, Any]:
    """A tenant with one of everything: a second key, a persona, a (ready) face and a conversation."""
    stack, url, settings = control
    tenant = await new_tenant(stack, settings, name)
    async with checked_client(url, tenant["api_key"]) as client:
        key = await client.create_key("second")
        persona = await client.create_persona(name=f"{name}'s", system_prompt="You help.")
        face = await stack.store.create_face(tenant["tenant_id"], f"{name}'s face", utc_now())
        await stack.store.set_face_status(face.id, "ready")  # (a real portrait is prepared in test_api)
        conv = await client.create_conversation(persona["persona_id"], callback_url="http://127.0.0.1:9/hooks")
        doc = await client.create_document(f"{name}'s policies", text=f"{name} opens at eight.")
        memory = await client.add_memory("user-1", f"The user told {name} a secret.")
        rail = await client.create_guardrail(name="r", applies_to="user", fallback_text="No.",
                                             rule={"type": "phrases", "phrases": ["secret"]})  # fmt: skip
        goals = await client.create_objectives([{"name": "a", "prompt": "Ask their name."}])
    return {
        **tenant,
        "key_id": key["key_id"],
        "persona_id": persona["persona_id"],
        "face_id": face.id,
        "conversation_id": conv["conversation_id"],
        "token": conv["join"]["token"],
        "document_id": doc["document_id"],
        "store": "user-1",
        "memory_id": memory["memory_id"],
        "guardrail_id": rail["guardrail_id"],
        "objectives_id": goals["objectives_id"],
    }


async def test_every_route_answers_another_tenants_ids_with_404(control: Control) -> None:
    a = await _populate(control, "A")
    b = await _populate(control, "B")
    walked = []
    async with http_as(control.url, a["api_key"]) as http:
        for op in openapi.operations():
            names = re.findall(r"{(\w+)}", op.path)
            if not names or op.operation_id in JOIN_TOKEN_OPS | NAMESPACED:  # (no API key: tested below)
                continue
            path = op.path.format(**{n: b[n] for n in names})
            body = BODIES.get(op.operation_id)
            assert body is not None or not op.request_required, f"no sample body for {op.operation_id}"
            answer = await http(op.method, path, json_body=body)
            assert answer.status == 404, (op.operation_id, answer.status, answer.body)
            assert answer.body["error"]["code"] == "not_found"
            assert b["tenant_id"] not in str(answer.body)  # nothing says whose it is
            walked.append(op.operation_id)
        assert sorted(walked) == sorted(
            [
                "revokeKey",
                "getPersona",
                "updatePersona",
                "deletePersona",
                "getFace",
                "deleteFace",
                "getConversation",
                "endConversation",
                "getTranscript",
                "createInteraction",
                "listWebhookDeliveries",
                "getDocument",
                "deleteDocument",
                "deleteMemory",
                "getGuardrail",
                "deleteGuardrail",
                "getObjectives",
                "deleteObjectives",
            ]
        )
        # the same memory store name is another store in each tenant
        mine = (await http("GET", "/v1/memory-stores/user-1/memories")).body["data"]
        assert [m["text"] for m in mine] == ["The user told A a secret."]

        # body references to B's objects: createConversation answers 422 naming the field (a body field is not a
        # path: the document gives createConversation no 404), as does a persona naming B's face
        for body, field in (
            ({"persona_id": b["persona_id"]}, "$.persona_id"),
            ({"persona_id": a["persona_id"], "face_id": b["face_id"]}, "$.face_id"),
        ):
            answer = await http("POST", "/v1/conversations", json_body=body)
            assert (answer.status, answer.body["error"]["code"], answer.body["error"]["field"]) == (
                422,
                "invalid",
                field,
            )
        for method, path in (("POST", "/v1/personas"), ("PATCH", f"/v1/personas/{a['persona_id']}")):
            answer = await http(method, path, json_body={"name": "x", "system_prompt": "x", "face_id": b["face_id"]})
            assert (answer.status, answer.body["error"]["field"]) == (422, "$.face_id")

        # A's own objects are there (the walk failed for the right reason)
        for path in (f"/v1/personas/{a['persona_id']}", f"/v1/conversations/{a['conversation_id']}"):
            assert (await http("GET", path)).status == 200

        # A's lists hold A's objects only
        lists = {
            "/v1/keys": "key_id",
            "/v1/personas": "persona_id",
            "/v1/faces": "face_id",
            "/v1/conversations": "conversation_id",
            "/v1/documents": "document_id",
            "/v1/guardrails": "guardrail_id",
            "/v1/objectives": "objectives_id",
        }
        for path, id_name in lists.items():
            listed = {x[id_name] for x in (await http("GET", path, params={"limit": "100"})).body["data"]}
            assert a[id_name] in listed and b[id_name] not in listed, path
        hooks = await http("GET", f"/v1/conversations/{a['conversation_id']}/webhooks")
        assert hooks.status == 200 and hooks.body["data"] == []  # nothing happened to A's yet

    # and B's objects are untouched
    stack = control.stack
    assert (await stack.store.get_persona(b["tenant_id"], b["persona_id"])).body["name"] == "B's"
    assert (await stack.store.get_conversation(b["tenant_id"], b["conversation_id"])).status == "created"
    assert (await stack.store.get_face(b["tenant_id"], b["face_id"])).status == "ready"
    assert all(k.revoked_at is None for k in await stack.store.list_keys(b["tenant_id"]))
    assert await stack.store.transcript(b["tenant_id"], b["conversation_id"]) == []
    assert (await stack.store.get_document(b["tenant_id"], b["document_id"])).name == "B's policies"
    assert [m.text for m in await stack.store.memories(b["tenant_id"], "user-1")] == ["The user told B a secret."]
    assert (await stack.store.get_body("guardrails", b["tenant_id"], b["guardrail_id"])).body["name"] == "r"
    assert (await stack.store.get_body("objectives", b["tenant_id"], b["objectives_id"])).body


JOIN_TOKEN_OPS = {"getWebRtcConfig", "joinWebRtc"}  # a browser holds a conversation's join token, not a key


async def test_every_route_but_the_document_needs_a_key(control: Control) -> None:
    async with http_as(control.url, None) as http:
        for op in openapi.operations():
            path = re.sub(r"{(\w+)}", "x", op.path)
            answer = await http(op.method, path, json_body=BODIES.get(op.operation_id))
            if op.auth or op.operation_id in JOIN_TOKEN_OPS:  # (a join token instead: none is also 401)
                assert answer.status == 401, (op.operation_id, answer.body)
                assert answer.body["error"]["code"] == "unauthenticated"
            else:
                assert answer.status == 200, op.operation_id


async def test_the_browser_routes_take_only_their_conversations_join_token(control: Control) -> None:
    """An API key (even the owner's), another conversation's token or another tenant's token is 401 on the
    join-token routes; the right token gets the ICE configuration, and nothing is joined by asking."""
    a = await _populate(control, "A")
    b = await _populate(control, "B")
    path = f"/v1/conversations/{a['conversation_id']}/webrtc"
    for bearer in (a["api_key"], b["token"], "jt_" + "x" * 43):
        async with http_as(control.url, bearer) as http:
            for method, body in (("GET", None), ("POST", BODIES["joinWebRtc"])):
                answer = await http(method, path, json_body=body)
                assert (answer.status, answer.body["error"]["code"]) == (401, "unauthenticated"), (method, bearer)
    async with http_as(control.url, a["token"]) as http:
        answer = await http("GET", path)
        assert (answer.status, answer.body) == (200, {"ice_servers": []})
    assert (await control.stack.store.get_conversation(a["tenant_id"], a["conversation_id"])).status == "created"


async def test_join_tokens_open_their_own_conversation_once(control: Control) -> None:
    a = await _populate(control, "A")
    b = await _populate(control, "B")
    conversations = control.stack.conversations
    with pytest.raises(Unauthenticated):
        await conversations.join(b["conversation_id"], a["token"])  # A's token on B's conversation
    with pytest.raises(Unauthenticated):
        await conversations.join(a["conversation_id"], "jt_" + "x" * 43)
    with pytest.raises(Unauthenticated):
        await conversations.join("conv_01aaaaaaaaaaaaaaaaaaaaaaaa", a["token"])
    assert (await control.stack.store.get_conversation(b["tenant_id"], b["conversation_id"])).status == "created"

    joined = await conversations.join(a["conversation_id"], a["token"])
    assert joined.tenant.id == a["tenant_id"] and joined.conversation.status == "active"
    assert joined.persona.id == a["persona_id"]
    with pytest.raises(Conflict):
        await conversations.join(a["conversation_id"], a["token"])  # once
    async with checked_client(control.url, a["api_key"]) as client:
        got = await client.get_conversation(a["conversation_id"])
        assert got["status"] == "active" and got["started_at"] is not None
        ended = await client.end_conversation(a["conversation_id"])  # no live session here: ended at once
        assert (ended["status"], ended["shutdown_reason"]) == ("ended", "ended_by_api")
    with pytest.raises(Conflict):
        await conversations.join(a["conversation_id"], a["token"])  # nor after it ended
    # B's own token still works: A's attempts did not spend it
    assert (await conversations.join(b["conversation_id"], b["token"])).tenant.id == b["tenant_id"]


async def test_an_expired_join_token_is_refused(start_control: StartControl) -> None:
    control = await start_control(join_token_ttl_s=0.3)
    a = await _populate(control, "A")
    await asyncio.sleep(0.5)
    with pytest.raises(Unauthenticated, match="expired"):
        await control.stack.conversations.join(a["conversation_id"], a["token"])
    conv = await control.stack.store.get_conversation(a["tenant_id"], a["conversation_id"])
    assert conv.status == "created"
    # an expired, unjoined conversation no longer holds a quota slot
    assert await control.stack.store.open_conversations(a["tenant_id"], utc_now()) == 0
