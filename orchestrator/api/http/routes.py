"""One thin handler per operation of `openapi.yaml`: parse, call one service, shape the answer."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator.api.http import openapi
from orchestrator.api.http.faces import FacePreparer, read_portrait
from orchestrator.api.http.forms import read_upload
from orchestrator.api.http.server import ApiError, Caller, ControlPlane, Handler
from orchestrator.api.webrtc.calls import ice_servers
from orchestrator.control import personas as pz
from orchestrator.control.tenants import create_key, key_view
from orchestrator.control.webhooks import iso_utc
from orchestrator.errors import Unauthenticated, Unavailable
from orchestrator.session.interactions import parse_interaction
from orchestrator.store.records import (
    BodyRecord,
    DocumentRecord,
    FaceRecord,
    MemoryRecord,
    Page,
    PersonaRecord,
    WebhookMessage,
)
from orchestrator.store.store import utc_now

DEFAULT_LIMIT = 20


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _paging(request: web.Request) -> tuple[int, str | None]:
    raw = request.query.get("limit")
    if raw is None:
        limit = DEFAULT_LIMIT
    else:
        try:
            limit = int(raw)
        except ValueError:
            raise ApiError("invalid", "limit must be an integer 1..100", "limit") from None
        if not 1 <= limit <= 100:
            raise ApiError("invalid", "limit must be an integer 1..100", "limit")
    return limit, request.query.get("cursor") or None


def _list(page: Page[Any], shape: Any) -> web.Response:
    return _json({"data": [shape(x) for x in page.data], "next_cursor": page.next_cursor})


def _persona(p: PersonaRecord) -> dict[str, Any]:
    return pz.public(p.id, p.body, iso_utc(p.created_at), iso_utc(p.updated_at))


def _face(f: FaceRecord) -> dict[str, Any]:
    return {"face_id": f.id, "name": f.name, "status": f.status, "error": f.error, "created_at": iso_utc(f.created_at)}


def _document(d: DocumentRecord) -> dict[str, Any]:
    return {
        "document_id": d.id,
        "name": d.name,
        "tags": list(d.tags),
        "content_type": d.content_type,
        "size": d.size,
        "status": d.status,
        "error": d.error,
        "chunks": d.chunks,
        "created_at": iso_utc(d.created_at),
        "updated_at": iso_utc(d.updated_at),
    }


def _memory(m: MemoryRecord) -> dict[str, Any]:
    return {
        "memory_id": m.id,
        "text": m.text,
        "pinned": m.pinned,
        "conversation_id": m.conversation_id,
        "created_at": iso_utc(m.created_at),
        "updated_at": iso_utc(m.updated_at),
    }


def _guardrail(g: BodyRecord) -> dict[str, Any]:
    return {"guardrail_id": g.id, **g.body, "created_at": iso_utc(g.created_at)}


def _objectives(o: BodyRecord) -> dict[str, Any]:
    return {"objectives_id": o.id, "name": o.body.get("name"), "objectives": o.body["objectives"],
            "created_at": iso_utc(o.created_at)}  # fmt: skip


def _tags(raw: str) -> list[str]:
    tags = [t.strip() for t in raw.split(",") if t.strip()]
    if len(tags) > 100 or any(len(t) > 100 for t in tags):
        raise ApiError("invalid", "tags: at most 100, each at most 100 characters", "tags")
    return tags


def _webhook(m: WebhookMessage) -> dict[str, Any]:
    return {
        "webhook_id": m.id,
        "event_type": m.event_type,
        "url": m.url,
        "status": m.status,
        "created_at": iso_utc(m.created_at),
        "delivered_at": iso_utc(m.delivered_at) if m.delivered_at else None,
        "next_attempt_at": iso_utc(m.next_attempt_at) if m.next_attempt_at else None,
        "attempts": [
            {
                "at": iso_utc(a.at),
                "status_code": a.status_code,
                "error": a.error,
                "duration_ms": round(a.duration_ms, 1),
            }
            for a in m.attempts
        ],
    }


def join_token(request: web.Request) -> str:
    """The join token of `Authorization: Bearer <token>` (one message for every failure)."""
    header = request.headers.get("Authorization") or ""
    token = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
    if not token:
        raise Unauthenticated("a conversation's join token is required (Authorization: Bearer <join token>)")
    return token


def handlers(plane: ControlPlane, faces: FacePreparer) -> dict[str, Handler]:
    store, convs = plane.store, plane.conversations
    allowed_hosts = plane.settings.api.allowed_llm_hosts
    voices = pz.installed_voices(plane.settings.triton.model_repository)

    async def get_openapi(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return web.Response(body=openapi.document_json(), content_type="application/json")

    # ---- probes (no key) ----
    async def get_liveness(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _json({"live": True})  # answered at all: the event loop runs

    async def get_readiness(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        report = await plane.readiness.report()
        return _json(report.body(), 200 if report.ready else 503)

    # ---- keys ----
    async def list_keys(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        keys = await store.list_keys(caller.tenant.id)
        return _json({"data": [key_view(k) for k in keys], "next_cursor": None})

    async def create_key_(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        key, api_key = await create_key(store, caller.tenant.id, (body or {}).get("name"))
        view = {k: v for k, v in key_view(key).items() if k not in ("revoked_at", "last_used_at")}  # ApiKeyCreated
        return _json({**view, "api_key": api_key}, 201)

    async def revoke_key(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        key = await store.revoke_key(caller.tenant.id, request.match_info["key_id"], utc_now())
        plane.keys.forget(key.id)  # refused from the next request on
        return _json(key_view(key))

    # ---- personas ----
    async def list_templates(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _json({"data": plane.templates.listing()})

    async def _checked(caller: Caller, persona: dict[str, Any]) -> dict[str, Any]:
        pz.check_body(persona, allowed_llm_hosts=allowed_hosts, voices=voices)
        await convs.check_persona_face(caller.tenant.id, persona.get("face_id"))
        await convs.intel.check_persona(caller.tenant.id, persona)
        return persona

    async def create_persona(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        fields = dict(body)
        template = fields.get("template")  # kept in the body: the persona says which template it came from
        base = plane.templates.body(template) if template else {}
        persona = await _checked(caller, pz.merge(base, fields))
        return _json(_persona(await store.create_persona(caller.tenant.id, persona, utc_now())), 201)

    async def list_personas(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _list(await store.list_personas(caller.tenant.id, *_paging(request)), _persona)

    async def get_persona(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _json(_persona(await store.get_persona(caller.tenant.id, request.match_info["persona_id"])))

    async def update_persona(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        pid = request.match_info["persona_id"]
        current = await store.get_persona(caller.tenant.id, pid)
        fields = dict(body or {})
        if "template" in fields:
            raise ApiError("invalid", "a template is chosen when the persona is created", "$.template")
        persona = await _checked(caller, pz.merge(current.body, fields))
        return _json(_persona(await store.update_persona(caller.tenant.id, pid, persona, utc_now())))

    async def delete_persona(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        await store.delete_persona(caller.tenant.id, request.match_info["persona_id"])
        return web.Response(status=204)

    # ---- faces ----
    async def create_face(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        image, name = await read_portrait(request, plane.settings.api.max_portrait_bytes)
        face = await faces.add(caller.tenant.id, image, name)
        return _json({k: v for k, v in _face(face).items() if k != "error"}, 202)  # FaceCreated: no error yet

    async def get_face(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _json(_face(await store.get_face(caller.tenant.id, request.match_info["face_id"])))

    async def list_faces(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _list(await store.list_faces(caller.tenant.id, *_paging(request)), _face)

    async def delete_face(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        await faces.delete(caller.tenant.id, request.match_info["face_id"])
        return web.Response(status=204)

    # ---- conversations ----
    async def create_conversation(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _json(await convs.create(caller.tenant, body), 201)

    async def get_conversation(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        conv = await store.get_conversation(caller.tenant.id, request.match_info["conversation_id"])
        return _json(convs.view(conv))

    async def list_conversations(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        status = request.query.get("status")
        if status is not None and status not in ("created", "active", "ended"):
            raise ApiError("invalid", "status must be created, active or ended", "status")
        page = await store.list_conversations(caller.tenant.id, *_paging(request), status=status)
        return _list(page, convs.view)

    async def end_conversation(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _json(await convs.end(caller.tenant, request.match_info["conversation_id"]))

    async def get_transcript(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _json(await convs.transcript(caller.tenant, request.match_info["conversation_id"]))

    async def create_interaction(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        cid = request.match_info["conversation_id"]
        interaction = parse_interaction(body)
        await convs.interact(caller.tenant, cid, interaction)
        return _json({"conversation_id": cid, "type": body["type"], "status": "accepted"}, 202)

    # ---- browser calls (authorised by the conversation's join token) ----
    async def get_webrtc_config(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        cid = request.match_info["conversation_id"]
        await convs.check_token(cid, join_token(request))
        return _json({"ice_servers": ice_servers(plane.settings, cid)})

    async def join_webrtc(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        cid, token = request.match_info["conversation_id"], join_token(request)
        await convs.check_token(cid, token)  # before any SDP is read: a stranger costs one lookup
        if plane.calls is None:
            raise Unavailable("this server takes no browser calls (no session service)")
        return _json(await plane.calls.answer(cid, token, body, peer=request.remote or ""))

    # ---- the knowledge base ----
    intel = convs.intel

    async def create_document(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        limit = plane.settings.intel.max_document_bytes
        if body is not None:  # JSON: the text itself
            kind = body.get("content_type", "markdown")
            doc = await intel.knowledge.add(
                caller.tenant.id,
                name=body["name"],
                data=body["text"].encode(),
                content_type=kind,
                tags=body.get("tags") or [],
                field="$.text",
            )
        else:
            upload = await read_upload(request, limit, {"name": 200, "tags": 2000}, "a document")
            doc = await intel.knowledge.add(
                caller.tenant.id,
                name=upload.fields.get("name") or upload.filename or "document",
                data=upload.data or b"",
                filename=upload.filename,
                content_type=upload.content_type,
                tags=_tags(upload.fields.get("tags", "")),
                field="$.file",
            )
        return _json({"document_id": doc.id, "status": doc.status}, 202)

    async def list_documents(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _list(await store.list_documents(caller.tenant.id, *_paging(request)), _document)

    async def get_document(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _json(_document(await store.get_document(caller.tenant.id, request.match_info["document_id"])))

    async def delete_document(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        await intel.knowledge.delete(caller.tenant.id, request.match_info["document_id"])
        return web.Response(status=204)

    async def search_knowledge(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        result = await intel.knowledge.search(
            caller.tenant.id,
            body["query"],
            document_ids=body.get("document_ids"),
            tags=body.get("tags"),
            top_k=body.get("top_k", 5),
            strategy=body.get("strategy", "balanced"),
        )
        hits = [
            {"document_id": h.document_id, "chunk_id": h.chunk_id, "text": h.text, "score": round(h.score, 4)}
            for h in result.hits
        ]
        return _json({"results": hits, "took_ms": round(result.took_ms, 2)})

    # ---- memories ----
    async def list_memories(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        page = await store.list_memories(caller.tenant.id, request.match_info["store"], *_paging(request))
        return _list(page, _memory)

    async def create_memory(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        memory = await intel.memories.add(
            caller.tenant.id, request.match_info["store"], body["text"], pinned=bool(body.get("pinned", False))
        )
        return _json(_memory(memory), 201)

    async def delete_memory(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        m = request.match_info
        await store.delete_memory(caller.tenant.id, m["store"], m["memory_id"])
        return web.Response(status=204)

    # ---- guardrails and objectives ----
    async def create_guardrail(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _json(_guardrail(await intel.create_guardrail(caller.tenant.id, body)), 201)

    async def list_guardrails(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _list(await store.list_bodies("guardrails", caller.tenant.id, *_paging(request)), _guardrail)

    async def get_guardrail(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        gid = request.match_info["guardrail_id"]
        return _json(_guardrail(await store.get_body("guardrails", caller.tenant.id, gid)))

    async def delete_guardrail(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        await store.delete_body("guardrails", caller.tenant.id, request.match_info["guardrail_id"])
        return web.Response(status=204)

    async def create_objectives(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _json(_objectives(await intel.create_objectives(caller.tenant.id, body)), 201)

    async def list_objectives(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        return _list(await store.list_bodies("objectives", caller.tenant.id, *_paging(request)), _objectives)

    async def get_objectives(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        oid = request.match_info["objectives_id"]
        return _json(_objectives(await store.get_body("objectives", caller.tenant.id, oid)))

    async def delete_objectives(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        await store.delete_body("objectives", caller.tenant.id, request.match_info["objectives_id"])
        return web.Response(status=204)

    async def list_webhooks(request: web.Request, caller: Caller, body: Any) -> web.StreamResponse:
        cid = request.match_info["conversation_id"]
        return _list(await store.list_webhooks(caller.tenant.id, cid, *_paging(request)), _webhook)

    return {
        "getOpenApi": get_openapi,
        "getLiveness": get_liveness,
        "getReadiness": get_readiness,
        "listKeys": list_keys,
        "createKey": create_key_,
        "revokeKey": revoke_key,
        "listPersonaTemplates": list_templates,
        "createPersona": create_persona,
        "listPersonas": list_personas,
        "getPersona": get_persona,
        "updatePersona": update_persona,
        "deletePersona": delete_persona,
        "createFace": create_face,
        "getFace": get_face,
        "listFaces": list_faces,
        "deleteFace": delete_face,
        "createConversation": create_conversation,
        "getConversation": get_conversation,
        "listConversations": list_conversations,
        "endConversation": end_conversation,
        "getTranscript": get_transcript,
        "createInteraction": create_interaction,
        "getWebRtcConfig": get_webrtc_config,
        "joinWebRtc": join_webrtc,
        "listWebhookDeliveries": list_webhooks,
        "createDocument": create_document,
        "listDocuments": list_documents,
        "getDocument": get_document,
        "deleteDocument": delete_document,
        "searchKnowledge": search_knowledge,
        "listMemories": list_memories,
        "createMemory": create_memory,
        "deleteMemory": delete_memory,
        "createGuardrail": create_guardrail,
        "listGuardrails": list_guardrails,
        "getGuardrail": get_guardrail,
        "deleteGuardrail": delete_guardrail,
        "createObjectives": create_objectives,
        "listObjectives": list_objectives,
        "getObjectives": get_objectives,
        "deleteObjectives": delete_objectives,
    }
