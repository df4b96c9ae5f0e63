"""The REST control plane on a real store (SQLite and PostgreSQL) through the SDK (`duet.Client`) and raw HTTP:
the happy paths, quotas and rate limits, faces, and refused input. Every answer, 2xx or 4xx, is checked against
the OpenAPI document as it is read (`conftest.CheckedResponse`); a 5xx fails the test."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

import duet
from duet.errors import ApiError
from orchestrator.control.tenants import create_key
from tests.integration.conftest import (
    PORTRAIT,
    Control,
    StartControl,
    bearer,
    checked_client,
    http_as,
    new_tenant,
)

pytestmark = pytest.mark.integration

FACE_READY_S = 120.0  # preparing runs mediapipe on a CPU; the first run in a process loads it


async def _refused(call: Any, status: int, code: str, field: str | None = None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call
    err = caught.value
    assert (err.status, err.code) == (status, code), repr(err)
    if field is not None:
        assert err.field == field, repr(err)
    return err


# ---- keys -------------------------------------------------------------------------------------------------------


async def test_keys_create_list_revoke(control: Control) -> None:
    stack, url, settings = control
    tenant = await new_tenant(stack, settings)
    async with checked_client(url, tenant["api_key"]) as client:
        made = await client.create_key("ci")
        assert made["key_id"].startswith("key_") and made["api_key"].startswith("duet_")
        assert made["api_key"].startswith(made["prefix"])
        listed = await client.list_keys()
        assert made["key_id"] in {k["key_id"] for k in listed["data"]} and len(listed["data"]) == 2
        assert listed["next_cursor"] is None
        assert all("api_key" not in k for k in listed["data"])  # the secret is shown once
        async with checked_client(url, made["api_key"]) as second:
            assert len((await second.list_keys())["data"]) == 2  # the new key works at once
            revoked = await client.revoke_key(made["key_id"])
            assert revoked["revoked_at"] is not None
            await _refused(second.list_keys(), 401, "unauthenticated")  # and stops at once
        again = await client.revoke_key(made["key_id"])  # revoking twice is harmless, keeps the first time
        assert again["revoked_at"] == revoked["revoked_at"]
        revoked_now = {k["key_id"]: k["revoked_at"] is not None for k in (await client.list_keys())["data"]}
        assert sorted(revoked_now.values()) == [False, True] and revoked_now[made["key_id"]]
        await _refused(client.revoke_key("key_01aaaaaaaaaaaaaaaaaaaaaaaa"), 404, "not_found")


# ---- personas ---------------------------------------------------------------------------------------------------


async def test_persona_templates_and_crud(control: Control) -> None:
    stack, url, settings = control
    tenant = await new_tenant(stack, settings)
    async with checked_client(url, tenant["api_key"]) as client:
        templates = (await client.list_persona_templates())["data"]
        by_name = {t["template"]: t for t in templates}
        assert "billing" in by_name and all(t["system_prompt"] for t in templates)

        sam = await client.create_persona(template="billing", name="Sam at Acme", context="Acme's customers.")
        assert sam["persona_id"].startswith("per_")
        assert sam["name"] == "Sam at Acme" and sam["context"] == "Acme's customers."
        assert sam["system_prompt"] == by_name["billing"]["system_prompt"]  # the template's defaults
        assert sam["template"] == "billing"
        assert await client.get_persona(sam["persona_id"]) == sam

        ada = await client.create_persona(
            name="Ada",
            system_prompt="You are Ada.",
            layers={
                "llm": {
                    "backend": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "model": "gpt-x",
                    "api_key": "sk-very-secret",
                    "temperature": 0.3,
                },
                "tts": {"voice": "en_US-joe-medium"},
            },
        )
        assert ada["template"] is None
        assert ada["layers"]["llm"]["api_key_set"] is True and "api_key" not in ada["layers"]["llm"]
        patched = await client.update_persona(
            ada["persona_id"],
            name="Ada L.",
            layers={"llm": {"temperature": 0.7}, "conversational_flow": {"turn_taking_patience": "high"}},
        )
        llm = patched["layers"]["llm"]
        assert patched["name"] == "Ada L." and patched["system_prompt"] == "You are Ada."
        assert (llm["temperature"], llm["base_url"], llm["model"], llm["api_key_set"]) == (
            0.7,
            "http://127.0.0.1:9/v1",
            "gpt-x",
            True,
        )
        assert patched["layers"]["tts"] == {"voice": "en_US-joe-medium"}  # a layer the patch leaves out is kept
        assert patched["layers"]["conversational_flow"] == {"turn_taking_patience": "high"}
        assert patched["updated_at"] >= patched["created_at"]
        stored = await stack.store.get_persona(tenant["tenant_id"], ada["persona_id"])
        assert stored.body["layers"]["llm"]["api_key"] == "sk-very-secret"  # kept, never shown

        # the key never leaves, in any answer
        async with http_as(url, tenant["api_key"]) as http:
            for path in ("/v1/personas", f"/v1/personas/{ada['persona_id']}"):
                answer = await http("GET", path)
                assert answer.status == 200 and "sk-very-secret" not in str(answer.body)

        await _refused(client.update_persona(ada["persona_id"], template="coach"), 422, "invalid", "$.template")
        await _refused(client.create_persona(name="x"), 422, "invalid", "$.system_prompt")
        await _refused(client.create_persona(template="nope", name="x"), 422, "invalid", "$.template")
        await client.delete_persona(sam["persona_id"])
        await _refused(client.get_persona(sam["persona_id"]), 404, "not_found")
        await _refused(client.delete_persona(sam["persona_id"]), 404, "not_found")
        await _refused(client.update_persona(sam["persona_id"], name="y"), 404, "not_found")
        assert [p["persona_id"] for p in (await client.list_personas())["data"]] == [ada["persona_id"]]


async def test_persona_list_pages_without_gaps_or_duplicates(control: Control) -> None:
    stack, url, settings = control
    tenant = await new_tenant(stack, settings)
    async with checked_client(url, tenant["api_key"]) as client:
        made = [(await client.create_persona(name=f"p{i}", system_prompt="You help."))["persona_id"] for i in range(25)]
        for limit, pages in ((7, 4), (24, 2), (25, 1), (100, 1)):
            seen: list[str] = []
            cursor = None
            for n in range(pages):
                page = await client.list_personas(limit=limit, cursor=cursor)
                assert len(page["data"]) == min(limit, 25 - n * limit)
                seen += [p["persona_id"] for p in page["data"]]
                cursor = page["next_cursor"]
                assert (cursor is None) == (n == pages - 1), (limit, n)
            # each once, in id order (creation order to the millisecond)
            assert seen == sorted(made)
        assert [p["persona_id"] async for p in client.iter_personas(page_size=10)] == sorted(made)
        default = await client.list_personas()
        assert len(default["data"]) == 20 and default["next_cursor"] is not None


# ---- conversations ----------------------------------------------------------------------------------------------


async def _persona(client: Any) -> str:
    return str((await client.create_persona(name="Ada", system_prompt="You are Ada."))["persona_id"])


async def test_conversation_lifecycle(control: Control) -> None:
    stack, url, settings = control
    tenant = await new_tenant(stack, settings)
    async with checked_client(url, tenant["api_key"]) as client:
        pid = await _persona(client)
        conv = await client.create_conversation(
            pid, conversational_context="Order 42.", properties={"max_duration_s": 600}
        )
        cid = conv["conversation_id"]
        assert cid.startswith("conv_") and conv["status"] == "created" and conv["persona_id"] == pid
        assert conv["join"]["token"] and conv["join"]["grpc"].endswith(f":{settings.server.port}")
        assert conv["conversation_url"] == f"{url}/c/{cid}#token={conv['join']['token']}"  # the token: a fragment

        got = await client.get_conversation(cid)
        assert (got["status"], got["shutdown_reason"], got["started_at"], got["ended_at"]) == (
            "created",
            None,
            None,
            None,
        )
        assert got["conversational_context"] == "Order 42."
        assert got["properties"] == {
            "max_duration_s": 600,
            "participant_absent_timeout_s": settings.api.default_absent_timeout_s,
            "participant_left_timeout_s": 10,
        }
        other = await client.create_conversation(pid)

        def ids(page: Any) -> list[str]:
            listed = [c["conversation_id"] for c in page["data"]]
            assert listed == sorted(listed)
            return sorted(listed)

        both = sorted([cid, other["conversation_id"]])
        assert ids(await client.list_conversations()) == both
        assert ids(await client.list_conversations(status="created")) == both
        assert ids(await client.list_conversations(status="ended")) == []

        ended = await client.end_conversation(cid)
        assert (ended["status"], ended["shutdown_reason"]) == ("ended", "ended_by_api")
        assert ended["ended_at"] is not None and ended["started_at"] is None
        assert (await client.get_conversation(cid))["status"] == "ended"
        await _refused(client.end_conversation(cid), 409, "conflict")
        assert await client.get_transcript(cid) == {"conversation_id": cid, "turns": []}
        assert ids(await client.list_conversations(status="ended")) == [cid]
        assert ids(await client.list_conversations(status="created")) == [other["conversation_id"]]
        assert (await client.list_webhook_deliveries(cid))["data"] == []  # no callback_url, no webhooks

        await _refused(client.list_conversations(status="gone"), 422, "invalid")
        await _refused(client.get_conversation("conv_01aaaaaaaaaaaaaaaaaaaaaaaa"), 404, "not_found")
        missing = client.create_conversation("per_01aaaaaaaaaaaaaaaaaaaaaaaa")
        await _refused(missing, 422, "invalid", "$.persona_id")  # a body field: 422 (createConversation has no 404)


async def test_interactions_need_an_active_conversation(control: Control) -> None:
    stack, url, settings = control
    tenant = await new_tenant(stack, settings)
    async with checked_client(url, tenant["api_key"]) as client:
        cid = (await client.create_conversation(await _persona(client)))["conversation_id"]
        await _refused(client.echo(cid, "Hello"), 409, "conflict")
        await _refused(client.sensitivity(cid, turn_taking_patience="low"), 409, "conflict")
        await _refused(client.interrupt(cid), 409, "conflict")
        await client.end_conversation(cid)
        await _refused(client.respond(cid, "Hi"), 409, "conflict")
        await _refused(client.echo("conv_01aaaaaaaaaaaaaaaaaaaaaaaa", "Hello"), 404, "not_found")
        # a bad interaction is refused before the state is looked at
        await _refused(client.interact(cid, "dance"), 422, "invalid", "$.type")
        await _refused(client.interact(cid, "sensitivity"), 422, "invalid")


async def test_idempotency_key_replays_the_first_answer(control: Control) -> None:
    stack, url, settings = control
    tenant = await new_tenant(stack, settings)
    async with checked_client(url, tenant["api_key"]) as client, http_as(url, tenant["api_key"]) as http:
        pid = await _persona(client)
        first = await client.create_conversation(pid, idempotency_key="order-42")
        again = await http(
            "POST", "/v1/conversations", json_body={"persona_id": pid}, headers={"Idempotency-Key": "order-42"}
        )
        assert again.status == 201 and again.body == first  # the same conversation, the same token
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert len((await client.list_conversations())["data"]) == 1  # and no second one

        other_body = await http(
            "POST",
            "/v1/conversations",
            json_body={"persona_id": pid, "custom_greeting": "Hi"},
            headers={"Idempotency-Key": "order-42"},
        )
        assert other_body.status == 409 and other_body.body["error"]["code"] == "conflict"
        assert len((await client.list_conversations())["data"]) == 1

        # keys are per operation and per tenant
        p1 = await client.create_persona(name="A", system_prompt="a", idempotency_key="order-42")
        p2 = await client.create_persona(name="A", system_prompt="a", idempotency_key="order-42")
        assert p1 == p2 and p1["persona_id"] != pid
        b = await new_tenant(stack, settings, "Other")
        async with checked_client(url, b["api_key"]) as b_client:
            b_conv = await b_client.create_conversation(await _persona(b_client), idempotency_key="order-42")
            assert b_conv["conversation_id"] != first["conversation_id"]

        too_long = await http("POST", "/v1/keys", json_body={}, headers={"Idempotency-Key": "k" * 256})
        assert too_long.status == 422


async def test_concurrent_conversation_quota(control: Control) -> None:
    stack, url, settings = control
    tenant = await new_tenant(stack, settings, max_concurrent_conversations=2)
    async with checked_client(url, tenant["api_key"]) as client, http_as(url, tenant["api_key"]) as http:
        pid = await _persona(client)
        first = await client.create_conversation(pid)
        await client.create_conversation(pid)
        full = await http("POST", "/v1/conversations", json_body={"persona_id": pid})
        assert full.status == 429 and full.body["error"]["code"] == "rate_limited"
        assert int(full.headers["Retry-After"]) >= 1
        assert len((await client.list_conversations())["data"]) == 2  # nothing half-written
        await client.end_conversation(first["conversation_id"])  # frees a slot
        third = await client.create_conversation(pid)
        assert third["status"] == "created"
        await _refused(client.create_conversation(pid), 429, "rate_limited")


async def test_per_key_rate_limit(start_control: StartControl) -> None:
    stack, url, settings = await start_control(key_requests_per_s=2.0)  # a burst of 4, then 2 per second
    tenant = await new_tenant(stack, settings)
    _, other_key = await create_key(stack.store, tenant["tenant_id"], "other")
    async with http_as(url, tenant["api_key"]) as http:
        answers = [await http("GET", "/v1/keys") for _ in range(8)]
        statuses = [a.status for a in answers]
        assert statuses.count(200) >= 4 and 429 in statuses, statuses
        limited = next(a for a in answers if a.status == 429)
        assert limited.body["error"]["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        fine = await http("GET", "/v1/keys", key=other_key)  # another key of the same tenant is unaffected
        assert fine.status == 200
        await asyncio.sleep(1.0)  # the bucket refills
        assert (await http("GET", "/v1/keys")).status == 200
    async with checked_client(url, tenant["api_key"], retries=3) as client:  # the SDK's retry honours Retry-After
        began = time.monotonic()
        for _ in range(5):
            await client.list_keys()
        assert time.monotonic() - began >= 1.0


# ---- faces ------------------------------------------------------------------------------------------------------


def _grey_png() -> bytes:
    import cv2

    ok, png = cv2.imencode(".png", np.full((256, 256, 3), 128, np.uint8))
    assert ok
    return bytes(png.tobytes())


async def _settled(client: Any, face_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + FACE_READY_S
    while True:
        face = await client.get_face(face_id)
        if face["status"] != "preparing" or time.monotonic() > deadline:
            return dict(face)
        await asyncio.sleep(0.2)


async def test_faces_upload_prepare_use_and_delete(start_control: StartControl, tmp_path: Path) -> None:
    limit = 1 << 20  # PORTRAIT is about 0.8 MB
    stack, url, settings = await start_control(max_portrait_bytes=limit)
    tenant = await new_tenant(stack, settings)
    async with checked_client(url, tenant["api_key"]) as client, http_as(url, tenant["api_key"]) as http:
        face = await client.create_face(PORTRAIT, name="Astronaut")
        grey = await client.create_face(_grey_png())  # preparing both at once
        assert (face["status"], face["name"]) == ("preparing", "Astronaut")
        assert face["face_id"].startswith("face_") and grey["name"] == grey["face_id"]

        ready = await _settled(client, face["face_id"])
        assert (ready["status"], ready["error"]) == ("ready", None), ready
        failed = await _settled(client, grey["face_id"])
        assert failed["status"] == "failed" and "no face" in failed["error"], failed
        assert str(settings.face.faces_dir) not in failed["error"]  # no server paths in answers
        listed = await client.list_faces()
        assert [f["face_id"] for f in listed["data"]] == sorted([face["face_id"], grey["face_id"]])

        persona = await client.create_persona(name="Ada", system_prompt="You are Ada.", face_id=face["face_id"])
        assert persona["face_id"] == face["face_id"]
        conv = await client.create_conversation(persona["persona_id"], face_id=face["face_id"])
        assert (await client.get_conversation(conv["conversation_id"]))["face_id"] == face["face_id"]
        # a face that failed (or is not ready) cannot be used
        await _refused(
            client.create_conversation(persona["persona_id"], face_id=grey["face_id"]), 422, "invalid", "$.face_id"
        )
        await _refused(
            client.create_persona(name="B", system_prompt="b", face_id=grey["face_id"]), 422, "invalid", "$.face_id"
        )
        await _refused(client.create_persona(name="B", system_prompt="b", face_id="nobody"), 422, "invalid")

        # refused uploads
        text = tmp_path / "portrait.txt"
        text.write_text("not an image\n")
        await _refused(client.create_face(text), 415, "unsupported_media_type")
        await _refused(client.create_face(b"\x89PNG\r\n\x1a\n" + b"\0" * 100), 415, "unsupported_media_type")
        await _refused(client.create_face(b"\x89PNG\r\n\x1a\n" + b"\0" * (limit + 1)), 413, "too_large")
        as_json = await http("POST", "/v1/faces", json_body={"file": "x"})
        assert as_json.status == 415
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("name", "no file")
        assert (await http("POST", "/v1/faces", data=form)).status == 422
        form = aiohttp.FormData()
        form.add_field("file", PORTRAIT.read_bytes(), filename="a.png", content_type="image/png")
        form.add_field("name", "nul\x00name")
        assert (await http("POST", "/v1/faces", data=form)).status == 422
        assert len((await client.list_faces())["data"]) == 2  # nothing half-written

        await client.delete_face(grey["face_id"])
        await _refused(client.get_face(grey["face_id"]), 404, "not_found")
        await _refused(client.delete_face(grey["face_id"]), 404, "not_found")
        assert not (Path(settings.face.faces_dir) / f"{grey['face_id']}.png").exists()
        assert (Path(settings.face.faces_dir) / f"{face['face_id']}.png").exists()


# ---- refused input ----------------------------------------------------------------------------------------------


async def test_refused_requests(control: Control) -> None:
    stack, url, settings = control
    tenant = await new_tenant(stack, settings)
    json_type = {"Content-Type": "application/json"}
    async with http_as(url, tenant["api_key"]) as http:
        persona = await http("POST", "/v1/personas", json_body={"name": "Ada", "system_prompt": "You are Ada."})
        pid = persona.body["persona_id"]

        async def refused(status: int, code: str, field: str | None, method: str, path: str, **kw: Any) -> None:
            answer = await http(method, path, **kw)
            assert answer.status == status, (method, path, answer.body)
            assert answer.body["error"]["code"] == code, answer.body
            assert answer.body["error"]["message"]
            if field is not None:
                assert answer.body["error"].get("field") == field, answer.body

        await refused(400, "bad_request", None, "POST", "/v1/personas", data=b'{"name": ', headers=json_type)
        await refused(400, "bad_request", None, "POST", "/v1/personas", data=b"\xff\xfe", headers=json_type)
        await refused(422, "invalid", "$.bogus", "POST", "/v1/personas", json_body={"name": "x", "bogus": 1})
        await refused(422, "invalid", "$.name", "POST", "/v1/personas", json_body={"name": 5, "system_prompt": "s"})
        await refused(
            422,
            "invalid",
            "$.layers.llm.temperature",
            "POST",
            "/v1/personas",
            json_body={"name": "x", "system_prompt": "s", "layers": {"llm": {"temperature": 9}}},
        )
        await refused(422, "invalid", "$", "POST", "/v1/personas", json_body=[1, 2])
        # what no store can hold (PostgreSQL refuses NUL and unpaired surrogates) or walk (deep nesting)
        for raw, field in (
            (rb'{"name": "a\u0000b", "system_prompt": "s"}', "$.name"),
            (rb'{"name": "a", "system_prompt": "s", "context": "\udc00"}', "$.context"),
            (rb'{"name": "a", "system_prompt": "s", "vocabulary": ["ok", "\ud800x"]}', "$.vocabulary[1]"),
            (rb'{"name": "a", "system_prompt": "s", "a\u0000": 1}', "$"),
            (b'{"name": "a\xed\xa0\x80", "system_prompt": "s"}', "$.name"),  # a surrogate as UTF-8 bytes
            ('{"name": "a", "system_prompt": "\\u0000"}'.encode("utf-16"), "$.system_prompt"),
        ):
            await refused(422, "invalid", field, "POST", "/v1/personas", data=raw, headers=json_type)
        deep: Any = {"x": 1}
        for _ in range(100):
            deep = {"d": deep}
        tool = {"name": "t", "parameters": deep}
        body = {"name": "a", "system_prompt": "s", "layers": {"llm": {"tools": [tool]}}}
        await refused(422, "invalid", None, "POST", "/v1/personas", json_body=body)
        nested = b"[" * 5000 + b"]" * 5000  # too deep for the parser itself
        await refused(400, "bad_request", None, "POST", "/v1/personas", data=nested, headers=json_type)
        await refused(400, "bad_request", None, "POST", "/v1/personas", data=b"", headers=json_type)
        await refused(401, "unauthenticated", None, "GET", "/v1/personas", key=None)
        await refused(401, "unauthenticated", None, "GET", "/v1/personas", key="duet_" + "a" * 26 + "_secret")
        await refused(401, "unauthenticated", None, "GET", "/v1/personas", headers={"Authorization": "Basic eDp5"})
        await refused(401, "unauthenticated", None, "POST", "/v1/personas", json_body={}, key="nonsense")
        big = {"name": "x", "system_prompt": "s", "context": "x" * settings.api.max_body_bytes}
        await refused(413, "too_large", None, "POST", "/v1/personas", json_body=big)
        await refused(
            415,
            "unsupported_media_type",
            None,
            "POST",
            "/v1/personas",
            data=b'{"name": "x"}',
            headers={"Content-Type": "text/plain"},
        )
        await refused(
            422,
            "invalid",
            "$.callback_url",
            "POST",
            "/v1/conversations",
            json_body={"persona_id": pid, "callback_url": "ftp://x"},
        )
        await refused(
            422,
            "invalid",
            "$.callback_url",
            "POST",
            "/v1/conversations",
            json_body={"persona_id": pid, "callback_url": "not a url"},
        )
        await refused(
            422,
            "invalid",
            "$.properties.max_duration_s",
            "POST",
            "/v1/conversations",
            json_body={"persona_id": pid, "properties": {"max_duration_s": 1}},
        )
        for limit in ("0", "101", "x", "-1", "1.5"):
            await refused(422, "invalid", None, "GET", "/v1/personas", params={"limit": limit})
        for cursor in ("zzz", "cGVyX25vcGU", "%%%"):
            await refused(422, "invalid", None, "GET", "/v1/conversations", params={"cursor": cursor})
        await refused(404, "not_found", None, "GET", "/v1/nothing")
        await refused(404, "not_found", None, "GET", "/v2/personas")

        # nothing half-written by any refused create
        assert [p["persona_id"] for p in (await http("GET", "/v1/personas")).body["data"]] == [pid]
        assert (await http("GET", "/v1/conversations")).body["data"] == []
        assert len((await http("GET", "/v1/keys")).body["data"]) == 1


async def test_openapi_document_is_served_without_a_key(control: Control) -> None:
    async with http_as(control.url, None) as http:
        doc = await http("GET", "/v1/openapi.json")
        assert doc.status == 200 and doc.body["openapi"].startswith("3.1")
        assert "/v1/conversations" in doc.body["paths"]
    headers = bearer("duet_x")
    async with aiohttp.ClientSession() as raw, raw.get(control.url + "/v1/openapi.json", headers=headers) as resp:
        assert resp.status == 200  # a bad key on an open route is ignored


async def test_a_conversation_nobody_joins_ends_participant_absent(control: Control) -> None:
    """The sweeper ends a conversation nobody joined within its absent timeout, and only that one; the end is
    a webhook like any other."""
    from datetime import timedelta

    stack, url, settings = control
    tenant = await new_tenant(stack, settings)
    async with checked_client(url, tenant["api_key"]) as client:
        persona = await client.create_persona(name="Nobody", system_prompt="Hi.")
        soon = await client.create_conversation(
            persona["persona_id"], properties={"participant_absent_timeout_s": 5}, callback_url="http://127.0.0.1:9/h"
        )
        later = await client.create_conversation(persona["persona_id"], properties={"participant_absent_timeout_s": 60})
        real = stack.conversations.clock
        stack.conversations.clock = lambda: real() + timedelta(seconds=10)
        try:
            assert await stack.conversations.sweep(page=1) == 1  # page by page, every waiting one looked at
        finally:
            stack.conversations.clock = real
        gone = await client.get_conversation(soon["conversation_id"])
        assert gone["status"] == "ended" and gone["shutdown_reason"] == "participant_absent"
        assert (await client.get_conversation(later["conversation_id"]))["status"] == "created"
        hooks = await client.list_webhook_deliveries(soon["conversation_id"])
        assert [h["event_type"] for h in hooks["data"]] == ["conversation.ended"]


async def test_a_tenant_over_its_daily_minutes_gets_429_until_tomorrow(control: Control) -> None:
    """Conversation minutes per UTC day: ended calls count in full; past the quota a create is refused with
    `Retry-After` (the seconds to the next UTC day), and another tenant is unaffected."""
    from datetime import UTC, datetime, timedelta

    stack, url, settings = control
    noon = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)  # the service's clock, fixed: no day boundary in the way
    stack.conversations.clock = lambda: noon
    capped = await new_tenant(stack, settings, "Capped", max_minutes_per_day=1)
    other = await new_tenant(stack, settings, "Other", max_minutes_per_day=1)
    async with checked_client(url, capped["api_key"]) as client, checked_client(url, other["api_key"]) as second:
        persona = await client.create_persona(name="Timed", system_prompt="Hi.")
        conv = await client.create_conversation(persona["persona_id"])
        await stack.store.activate_conversation(conv["conversation_id"], noon - timedelta(minutes=2))
        await stack.store.end_conversation(conv["conversation_id"], "participant_left", noon)
        with pytest.raises(duet.ApiError) as refused:
            await client.create_conversation(persona["persona_id"])
        assert refused.value.status == 429 and refused.value.code == "rate_limited"
        assert refused.value.retry_after == 12 * 3600  # until midnight UTC
        theirs = await second.create_persona(name="Fresh", system_prompt="Hi.")
        assert (await second.create_conversation(theirs["persona_id"]))["status"] == "created"


async def test_a_persona_with_a_voice_the_tts_model_lacks_is_refused(control: Control) -> None:
    """A voice the `tts` model does not have would fail every reply of every call: it is a 422 at create."""
    stack, url, settings = control
    tenant = await new_tenant(stack, settings)
    async with checked_client(url, tenant["api_key"]) as client:
        for fields, where in (
            ({"voice": "no-such-voice"}, "$.voice"),
            ({"layers": {"tts": {"voice": "no-such-voice"}}}, "$.layers.tts.voice"),
        ):
            with pytest.raises(duet.ApiError) as refused:
                await client.create_persona(name="Mute", system_prompt="Hi.", **fields)
            assert refused.value.status == 422 and refused.value.field == where, refused.value
            assert "en_US-joe-medium" in refused.value.message  # it says which voices there are
        made = await client.create_persona(name="Joe", system_prompt="Hi.", voice="en_US-joe-medium")
        with pytest.raises(duet.ApiError) as patched:
            await client.update_persona(made["persona_id"], voice="no-such-voice")
        assert patched.value.status == 422
        assert (await client.list_personas())["data"] == [made]  # nothing half-written
