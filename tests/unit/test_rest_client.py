"""`duet.Client`'s HTTP shape against a small aiohttp server in the test: paths, methods, headers, bodies,
query strings, multipart, pagination and error parsing. The server stands in for nothing of ours; the real
control plane's tests check the server side."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import BodyPartReader, web

import duet
from duet import ApiError, Client, DuetError, ServerUnavailable
from duet.rest import image_type

KEY = "sk_test_123"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16


@dataclass
class Seen:
    method: str
    path: str  # raw (still quoted)
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)  # multipart: name -> (filename, content type, bytes) or text


Reply = Callable[[Seen], web.Response]


class FakeApi:
    """Records every request; answers with `reply` (per test), by default a 200 with an empty page."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.reply: Reply = lambda _: web.json_response({"data": [], "next_cursor": None})
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        seen = Seen(request.method, request.raw_path.split("?")[0], dict(request.query), dict(request.headers))
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                assert isinstance(part, BodyPartReader)
                data = await part.read()
                if part.filename is not None:
                    seen.form[part.name or ""] = (part.filename, part.headers.get("Content-Type"), bytes(data))
                else:
                    seen.form[part.name or ""] = data.decode()
        elif request.can_read_body:
            seen.json = await request.json()
        self.seen.append(seen)
        return self.reply(seen)


@pytest.fixture
async def api() -> AsyncIterator[FakeApi]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    headers = extra.pop("headers", None)
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status, headers=headers)


Call = Callable[[Client], Awaitable[Any]]

# (call, method, path, query, JSON body) for every route
ROUTES: list[tuple[str, Call, str, str, dict[str, str], Any]] = [
    ("list_keys", lambda c: c.list_keys(), "GET", "/v1/keys", {}, None),
    ("create_key", lambda c: c.create_key("ci"), "POST", "/v1/keys", {}, {"name": "ci"}),
    ("create_key_unnamed", lambda c: c.create_key(), "POST", "/v1/keys", {}, {}),
    ("revoke_key", lambda c: c.revoke_key("key_1"), "DELETE", "/v1/keys/key_1", {}, None),
    ("templates", lambda c: c.list_persona_templates(), "GET", "/v1/persona-templates", {}, None),
    (
        "create_persona",
        lambda c: c.create_persona({"name": "Ada", "voice": "x"}, voice="y"),
        "POST",
        "/v1/personas",
        {},
        {"name": "Ada", "voice": "y"},
    ),
    ("create_persona_kw", lambda c: c.create_persona(name="Ada"), "POST", "/v1/personas", {}, {"name": "Ada"}),
    ("get_persona", lambda c: c.get_persona("per_1"), "GET", "/v1/personas/per_1", {}, None),
    ("list_personas", lambda c: c.list_personas(), "GET", "/v1/personas", {}, None),
    (
        "list_personas_paged",
        lambda c: c.list_personas(limit=5, cursor="abc"),
        "GET",
        "/v1/personas",
        {"limit": "5", "cursor": "abc"},
        None,
    ),
    (
        "update_persona",
        lambda c: c.update_persona("per_1", context="new"),
        "PATCH",
        "/v1/personas/per_1",
        {},
        {"context": "new"},
    ),
    ("delete_persona", lambda c: c.delete_persona("per_1"), "DELETE", "/v1/personas/per_1", {}, None),
    ("get_face", lambda c: c.get_face("face_1"), "GET", "/v1/faces/face_1", {}, None),
    ("list_faces", lambda c: c.list_faces(limit=2), "GET", "/v1/faces", {"limit": "2"}, None),
    ("delete_face", lambda c: c.delete_face("face_1"), "DELETE", "/v1/faces/face_1", {}, None),
    (
        "create_conversation",
        lambda c: c.create_conversation("per_1"),
        "POST",
        "/v1/conversations",
        {},
        {"persona_id": "per_1"},
    ),
    (
        "create_conversation_full",
        lambda c: c.create_conversation(
            "per_1",
            face_id="face_1",
            conversational_context="ctx",
            custom_greeting="Hi",
            memory_store="user-7",
            document_ids=["doc_1"],
            document_tags=["faq"],
            callback_url="http://hook",
            properties={"max_duration_s": 60},
        ),
        "POST",
        "/v1/conversations",
        {},
        {
            "persona_id": "per_1",
            "face_id": "face_1",
            "conversational_context": "ctx",
            "custom_greeting": "Hi",
            "memory_store": "user-7",
            "document_ids": ["doc_1"],
            "document_tags": ["faq"],
            "callback_url": "http://hook",
            "properties": {"max_duration_s": 60},
        },
    ),
    ("get_conversation", lambda c: c.get_conversation("conv_1"), "GET", "/v1/conversations/conv_1", {}, None),
    (
        "list_conversations",
        lambda c: c.list_conversations(status="active", limit=3),
        "GET",
        "/v1/conversations",
        {"status": "active", "limit": "3"},
        None,
    ),
    ("end", lambda c: c.end_conversation("conv_1"), "POST", "/v1/conversations/conv_1/end", {}, None),
    ("transcript", lambda c: c.get_transcript("conv_1"), "GET", "/v1/conversations/conv_1/transcript", {}, None),
    ("webhooks", lambda c: c.list_webhook_deliveries("conv_1"), "GET", "/v1/conversations/conv_1/webhooks", {}, None),
    (
        "create_document_text",
        lambda c: c.create_document("FAQ", text="# Hours\nNine to five."),
        "POST",
        "/v1/documents",
        {},
        {"name": "FAQ", "text": "# Hours\nNine to five."},
    ),
    (
        "create_document_text_full",
        lambda c: c.create_document("FAQ", text="<p>Hi</p>", content_type="html", tags=["faq", "en"]),
        "POST",
        "/v1/documents",
        {},
        {"name": "FAQ", "text": "<p>Hi</p>", "content_type": "html", "tags": ["faq", "en"]},
    ),
    ("get_document", lambda c: c.get_document("doc_1"), "GET", "/v1/documents/doc_1", {}, None),
    (
        "list_documents",
        lambda c: c.list_documents(limit=4, cursor="c"),
        "GET",
        "/v1/documents",
        {"limit": "4", "cursor": "c"},
        None,
    ),
    ("delete_document", lambda c: c.delete_document("doc_1"), "DELETE", "/v1/documents/doc_1", {}, None),
    ("search", lambda c: c.search("opening hours"), "POST", "/v1/knowledge/search", {}, {"query": "opening hours"}),
    (
        "search_full",
        lambda c: c.search("hours", document_ids=["doc_1"], tags=["faq"], top_k=3, strategy="quality"),
        "POST",
        "/v1/knowledge/search",
        {},
        {"query": "hours", "document_ids": ["doc_1"], "tags": ["faq"], "top_k": 3, "strategy": "quality"},
    ),
    ("list_memories", lambda c: c.list_memories("user-7"), "GET", "/v1/memory-stores/user-7/memories", {}, None),
    (
        "list_memories_paged",
        lambda c: c.list_memories("user-7", limit=10, cursor="m"),
        "GET",
        "/v1/memory-stores/user-7/memories",
        {"limit": "10", "cursor": "m"},
        None,
    ),
    (
        "add_memory",
        lambda c: c.add_memory("user-7", "Likes tea"),
        "POST",
        "/v1/memory-stores/user-7/memories",
        {},
        {"text": "Likes tea", "pinned": False},
    ),
    (
        "add_memory_pinned",
        lambda c: c.add_memory("user-7", "Is called Sam", pinned=True),
        "POST",
        "/v1/memory-stores/user-7/memories",
        {},
        {"text": "Is called Sam", "pinned": True},
    ),
    (
        "delete_memory",
        lambda c: c.delete_memory("user-7", "mem_1"),
        "DELETE",
        "/v1/memory-stores/user-7/memories/mem_1",
        {},
        None,
    ),
    (
        "create_guardrail",
        lambda c: c.create_guardrail(
            {"name": "no-prices", "applies_to": "replica", "rule": {"type": "phrases", "phrases": ["$"]}},
            fallback_text="I can't say.",
        ),
        "POST",
        "/v1/guardrails",
        {},
        {
            "name": "no-prices",
            "applies_to": "replica",
            "rule": {"type": "phrases", "phrases": ["$"]},
            "fallback_text": "I can't say.",
        },
    ),
    ("get_guardrail", lambda c: c.get_guardrail("grd_1"), "GET", "/v1/guardrails/grd_1", {}, None),
    ("list_guardrails", lambda c: c.list_guardrails(limit=1), "GET", "/v1/guardrails", {"limit": "1"}, None),
    ("delete_guardrail", lambda c: c.delete_guardrail("grd_1"), "DELETE", "/v1/guardrails/grd_1", {}, None),
    (
        "create_objectives_body",
        lambda c: c.create_objectives({"name": "intake", "objectives": [{"name": "greet", "prompt": "Say hi"}]}),
        "POST",
        "/v1/objectives",
        {},
        {"name": "intake", "objectives": [{"name": "greet", "prompt": "Say hi"}]},
    ),
    (
        "create_objectives_list",
        lambda c: c.create_objectives([{"name": "greet", "prompt": "Say hi"}], name="intake"),
        "POST",
        "/v1/objectives",
        {},
        {"objectives": [{"name": "greet", "prompt": "Say hi"}], "name": "intake"},
    ),
    ("get_objectives", lambda c: c.get_objectives("obj_1"), "GET", "/v1/objectives/obj_1", {}, None),
    ("list_objectives", lambda c: c.list_objectives(), "GET", "/v1/objectives", {}, None),
    ("delete_objectives", lambda c: c.delete_objectives("obj_1"), "DELETE", "/v1/objectives/obj_1", {}, None),
]

INTERACTIONS: list[tuple[Call, dict[str, Any]]] = [
    (lambda c: c.interact("conv_1", "echo", text="hi", extra=None), {"type": "echo", "text": "hi"}),
    (lambda c: c.echo("conv_1", "Hello"), {"type": "echo", "text": "Hello"}),
    (lambda c: c.respond("conv_1", "What?"), {"type": "respond", "text": "What?"}),
    (lambda c: c.interrupt("conv_1"), {"type": "interrupt"}),
    (lambda c: c.overwrite_context("conv_1", "A"), {"type": "overwrite_context", "text": "A"}),
    (lambda c: c.append_context("conv_1", "B"), {"type": "append_context", "text": "B"}),
    (
        lambda c: c.sensitivity("conv_1", turn_taking_patience="high"),
        {"type": "sensitivity", "turn_taking_patience": "high"},
    ),
    (
        lambda c: c.sensitivity("conv_1", "low", "medium"),
        {"type": "sensitivity", "turn_taking_patience": "low", "replica_interruptibility": "medium"},
    ),
    (
        lambda c: c.tool_result("conv_1", "call_9", {"temp_c": 21}),
        {"type": "tool_result", "call_id": "call_9", "output": {"temp_c": 21}},
    ),
]


@pytest.mark.parametrize(
    ("call", "method", "path", "query", "body"), [r[1:] for r in ROUTES], ids=[r[0] for r in ROUTES]
)
async def test_every_route_has_its_method_path_auth_and_body(
    api: FakeApi, call: Call, method: str, path: str, query: dict[str, str], body: Any
) -> None:
    async with Client(api.url + "/", KEY) as client:  # a trailing slash on the base URL is fine
        await call(client)
    [seen] = api.seen
    assert (seen.method, seen.path, seen.query) == (method, path, query)
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert "Idempotency-Key" not in seen.headers
    assert seen.json == body
    if body is not None:
        assert seen.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize(("call", "body"), INTERACTIONS)
async def test_interactions_post_their_typed_bodies(api: FakeApi, call: Call, body: dict[str, Any]) -> None:
    api.reply = lambda _: web.json_response({}, status=202)
    async with Client(api.url, KEY) as client:
        assert await call(client) == {}
    [seen] = api.seen
    assert (seen.method, seen.path, seen.json) == ("POST", "/v1/conversations/conv_1/interactions", body)


async def test_responses_come_back_as_dicts(api: FakeApi) -> None:
    created = {
        "conversation_id": "conv_1",
        "status": "created",
        "join": {"grpc": "127.0.0.1:50051", "token": "tok"},
        "conversation_url": "http://127.0.0.1:8080/c/conv_1",
    }
    api.reply = lambda _: web.json_response(created, status=201)
    async with Client(api.url, KEY) as client:
        conv = await client.create_conversation("per_1")
    assert conv == created
    assert conv["join"]["token"] == "tok"


async def test_empty_answers_are_empty_dicts(api: FakeApi) -> None:
    api.reply = lambda _: web.Response(status=204)
    async with Client(api.url, KEY) as client:
        assert await client.delete_persona("per_1") == {}


async def test_creates_send_the_idempotency_key(api: FakeApi) -> None:
    api.reply = lambda _: web.json_response({"persona_id": "per_1"}, status=201)
    async with Client(api.url, KEY) as client:
        await client.create_conversation("per_1", idempotency_key="k-conv")
        await client.create_persona(name="A", idempotency_key="k-per")
        await client.create_key("n", idempotency_key="k-key")
        await client.create_face(PNG, idempotency_key="k-face")
    assert [s.headers.get("Idempotency-Key") for s in api.seen] == ["k-conv", "k-per", "k-key", "k-face"]
    assert api.seen[1].json == {"name": "A"}  # the key is a header, never a body field


async def test_the_new_creates_send_the_idempotency_key(api: FakeApi, tmp_path: Path) -> None:
    api.reply = lambda _: web.json_response({"document_id": "doc_1", "status": "processing"}, status=202)
    (tmp_path / "faq.md").write_text("# FAQ\n")
    async with Client(api.url, KEY) as client:
        await client.create_document("FAQ", text="x", idempotency_key="k-doc")
        await client.create_document(path=tmp_path / "faq.md", idempotency_key="k-file")
        await client.add_memory("s", "x", idempotency_key="k-mem")
        await client.create_guardrail(name="g", idempotency_key="k-grd")
        await client.create_objectives([{"name": "a", "prompt": "p"}], idempotency_key="k-obj")
        await client.search("q")  # a search creates nothing: no key
    keys = [s.headers.get("Idempotency-Key") for s in api.seen]
    assert keys == ["k-doc", "k-file", "k-mem", "k-grd", "k-obj", None]
    assert api.seen[3].json == {"name": "g"}


async def test_create_document_uploads_a_file_as_multipart(api: FakeApi, tmp_path: Path) -> None:
    api.reply = lambda _: web.json_response({"document_id": "doc_1", "status": "processing"}, status=202)
    page = tmp_path / "hours.html"
    page.write_bytes(b"<html><body>Open 9-5</body></html>")
    async with Client(api.url, KEY) as client:
        doc = await client.create_document("Hours", path=page, tags=["faq", "hours"])
        await client.create_document(path=str(page))
        await client.create_document(path=page, content_type="text")
    assert doc == {"document_id": "doc_1", "status": "processing"}
    first, second, third = api.seen
    assert (first.method, first.path, first.json) == ("POST", "/v1/documents", None)
    assert first.headers["Content-Type"].startswith("multipart/form-data")
    html = page.read_bytes()
    assert first.form == {
        "file": ("hours.html", "application/octet-stream", html),  # the server reads the kind off bytes and name
        "name": "Hours",
        "tags": "faq,hours",
    }
    assert second.form == {"file": ("hours.html", "application/octet-stream", html)}  # no name: the file's
    assert third.form["file"] == ("hours.html", "text/plain", html)  # an explicit kind is the part's type


async def test_create_document_takes_text_or_path_and_comma_free_file_tags(api: FakeApi, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    async with Client(api.url, KEY) as client:
        with pytest.raises(DuetError, match="exactly one") as both:
            await client.create_document("A", text="a", path=tmp_path / "a.txt")
        assert both.value.code == "bad_option"
        with pytest.raises(DuetError, match="exactly one"):
            await client.create_document("A")
        with pytest.raises(DuetError, match="comma"):
            await client.create_document(path=tmp_path / "a.txt", tags=["a,b"])
        with pytest.raises(FileNotFoundError):
            await client.create_document(path=tmp_path / "missing.txt")
    assert api.seen == []


async def test_wait_document_polls_until_ready(api: FakeApi) -> None:
    states = iter(["processing", "processing", "ready"])
    api.reply = lambda _: web.json_response({"document_id": "doc_1", "status": next(states), "chunks": 3})
    async with Client(api.url, KEY) as client:
        doc = await client.wait_document("doc_1", timeout_s=5, poll_s=0.01)
    assert (doc["status"], doc["chunks"]) == ("ready", 3)
    assert [s.path for s in api.seen] == ["/v1/documents/doc_1"] * 3


async def test_wait_document_raises_on_failed_and_on_timeout(api: FakeApi) -> None:
    api.reply = lambda _: web.json_response({"document_id": "doc_1", "status": "failed", "error": "embedding failed"})
    async with Client(api.url, KEY) as client:
        with pytest.raises(DuetError, match="embedding failed") as failed:
            await client.wait_document("doc_1", poll_s=0.01)
        assert failed.value.code == "document_failed"
        api.reply = lambda _: web.json_response({"document_id": "doc_1", "status": "processing"})
        with pytest.raises(TimeoutError, match="doc_1"):
            await client.wait_document("doc_1", timeout_s=0.05, poll_s=0.01)


async def test_search_returns_the_results(api: FakeApi) -> None:
    found = {
        "results": [{"document_id": "doc_1", "chunk_id": "chk_1", "text": "Open 9-5", "score": 0.91}],
        "took_ms": 4.2,
    }
    api.reply = lambda _: web.json_response(found)
    async with Client(api.url, KEY) as client:
        results = await client.search("hours", strategy="speed")
    assert results == found
    assert results["results"][0]["chunk_id"] == "chk_1"


async def test_memory_store_names_are_quoted_into_one_path_segment(api: FakeApi) -> None:
    async with Client(api.url, KEY) as client:
        await client.list_memories("../keys")
        await client.delete_memory("a/b", "../x")
    assert [s.path for s in api.seen] == [
        "/v1/memory-stores/..%2Fkeys/memories",
        "/v1/memory-stores/a%2Fb/memories/..%2Fx",
    ]


async def test_ids_are_quoted_into_one_path_segment(api: FakeApi) -> None:
    async with Client(api.url, KEY) as client:
        await client.get_persona("../keys")
    assert api.seen[0].path == "/v1/personas/..%2Fkeys"


async def test_a_base_url_with_a_path_prefix_is_kept(api: FakeApi) -> None:
    async with Client(api.url + "/duet", KEY) as client:
        await client.list_keys()
    assert api.seen[0].path == "/duet/v1/keys"


async def test_create_face_uploads_multipart_with_the_type_from_magic(api: FakeApi, tmp_path: Path) -> None:
    api.reply = lambda _: web.json_response({"face_id": "face_1", "status": "preparing"}, status=202)
    portrait = tmp_path / "me.jpg"
    portrait.write_bytes(JPEG)
    async with Client(api.url, KEY) as client:
        face = await client.create_face(portrait, name="Me")
        await client.create_face(PNG)
        await client.create_face(str(portrait))
    assert face == {"face_id": "face_1", "status": "preparing"}
    first, second, third = api.seen
    assert (first.method, first.path) == ("POST", "/v1/faces")
    assert first.headers["Content-Type"].startswith("multipart/form-data")
    assert first.form == {"file": ("me.jpg", "image/jpeg", JPEG), "name": "Me"}
    assert second.form == {"file": ("face.png", "image/png", PNG)}
    assert third.form["file"] == ("me.jpg", "image/jpeg", JPEG)


def test_image_type_reads_magic_bytes() -> None:
    assert image_type(PNG) == "image/png"
    assert image_type(JPEG) == "image/jpeg"
    assert image_type(b"GIF89a....") == "application/octet-stream"  # the server decides: 415


async def test_wait_face_ready_polls_until_ready(api: FakeApi) -> None:
    states = iter(["preparing", "preparing", "ready"])
    api.reply = lambda _: web.json_response({"face_id": "face_1", "status": next(states)})
    async with Client(api.url, KEY) as client:
        face = await client.wait_face_ready("face_1", timeout_s=5, poll_s=0.01)
    assert face["status"] == "ready"
    assert len(api.seen) == 3


async def test_wait_face_ready_raises_on_failed_and_on_timeout(api: FakeApi) -> None:
    api.reply = lambda _: web.json_response({"face_id": "face_1", "status": "failed", "error": "no face found"})
    async with Client(api.url, KEY) as client:
        with pytest.raises(DuetError, match="no face found") as failed:
            await client.wait_face_ready("face_1", poll_s=0.01)
        assert failed.value.code == "face_failed"
        api.reply = lambda _: web.json_response({"face_id": "face_1", "status": "preparing"})
        with pytest.raises(TimeoutError):
            await client.wait_face_ready("face_1", timeout_s=0.05, poll_s=0.01)


async def test_iterators_follow_next_cursor(api: FakeApi) -> None:
    pages = {
        None: {"data": [{"persona_id": "per_1"}, {"persona_id": "per_2"}], "next_cursor": "c1"},
        "c1": {"data": [{"persona_id": "per_3"}], "next_cursor": "c2"},
        "c2": {"data": [], "next_cursor": None},
    }
    api.reply = lambda seen: web.json_response(pages[seen.query.get("cursor")])
    async with Client(api.url, KEY) as client:
        ids = [p["persona_id"] async for p in client.iter_personas(page_size=2)]
    assert ids == ["per_1", "per_2", "per_3"]
    assert [s.query for s in api.seen] == [
        {"limit": "2"},
        {"limit": "2", "cursor": "c1"},
        {"limit": "2", "cursor": "c2"},
    ]


@pytest.mark.parametrize(
    ("iterate", "path"),
    [
        (lambda c: c.iter_documents(page_size=1), "/v1/documents"),
        (lambda c: c.iter_memories("user-7", page_size=1), "/v1/memory-stores/user-7/memories"),
        (lambda c: c.iter_guardrails(page_size=1), "/v1/guardrails"),
        (lambda c: c.iter_objectives(page_size=1), "/v1/objectives"),
    ],
    ids=["documents", "memories", "guardrails", "objectives"],
)
async def test_the_new_iterators_follow_next_cursor(
    api: FakeApi, iterate: Callable[[Client], AsyncIterator[Any]], path: str
) -> None:
    pages = {None: {"data": [{"n": 1}], "next_cursor": "c1"}, "c1": {"data": [{"n": 2}], "next_cursor": None}}
    api.reply = lambda seen: web.json_response(pages[seen.query.get("cursor")])
    async with Client(api.url, KEY) as client:
        items = [i async for i in iterate(client)]
    assert items == [{"n": 1}, {"n": 2}]
    assert [(s.path, s.query) for s in api.seen] == [(path, {"limit": "1"}), (path, {"limit": "1", "cursor": "c1"})]


async def test_iter_conversations_passes_the_status_filter(api: FakeApi) -> None:
    api.reply = lambda _: web.json_response({"data": [{"conversation_id": "conv_1"}], "next_cursor": None})
    async with Client(api.url, KEY) as client:
        convs = [c async for c in client.iter_conversations("ended")]
    assert convs == [{"conversation_id": "conv_1"}]
    assert api.seen[0].query == {"status": "ended"}


async def test_errors_carry_status_code_message_and_field(api: FakeApi) -> None:
    api.reply = lambda _: error(422, "invalid", "must be low, medium or high", field="layers.conversational_flow")
    async with Client(api.url, KEY) as client:
        with pytest.raises(ApiError) as raised:
            await client.create_persona(name="A")
    err = raised.value
    assert (err.status, err.code, err.message, err.field, err.retry_after) == (
        422,
        "invalid",
        "must be low, medium or high",
        "layers.conversational_flow",
        None,
    )
    assert isinstance(err, DuetError)  # one `except DuetError` catches every client error


@pytest.mark.parametrize(
    ("status", "body", "content_type", "message"),
    [
        (502, b"<html>Bad Gateway</html>", "text/html", "<html>Bad Gateway</html>"),
        (500, b"", "text/plain", "HTTP 500"),
        (404, json.dumps({"detail": "nope"}).encode(), "application/json", '{"detail": "nope"}'),
        (400, json.dumps({"error": "flat string"}).encode(), "application/json", '{"error": "flat string"}'),
        (409, json.dumps([1, 2]).encode(), "application/json", "[1, 2]"),
    ],
)
async def test_an_error_body_of_another_shape_is_http_status(
    api: FakeApi, status: int, body: bytes, content_type: str, message: str
) -> None:
    api.reply = lambda _: web.Response(status=status, body=body, content_type=content_type)
    async with Client(api.url, KEY) as client:
        with pytest.raises(ApiError) as raised:
            await client.list_keys()
    assert (raised.value.status, raised.value.code, raised.value.message) == (status, f"http_{status}", message)
    assert raised.value.field is None


async def test_429_is_not_retried_by_default(api: FakeApi) -> None:
    api.reply = lambda _: error(429, "rate_limited", "slow down", headers={"Retry-After": "2"})
    async with Client(api.url, KEY) as client:
        with pytest.raises(ApiError) as raised:
            await client.create_conversation("per_1")
    assert (raised.value.code, raised.value.retry_after) == ("rate_limited", 2.0)
    assert len(api.seen) == 1


async def test_429_retries_honour_retry_after_when_asked(api: FakeApi) -> None:
    answers = iter(
        [
            error(429, "rate_limited", "slow down", headers={"Retry-After": "0.2"}),
            error(429, "rate_limited", "slow down", headers={"Retry-After": "0.1"}),
            web.json_response({"conversation_id": "conv_1", "status": "created"}, status=201),
        ]
    )
    api.reply = lambda _: next(answers)
    began = time.monotonic()
    async with Client(api.url, KEY, retries=3) as client:
        conv = await client.create_conversation("per_1", idempotency_key="same")
    assert conv["conversation_id"] == "conv_1"
    assert time.monotonic() - began >= 0.3
    assert [s.headers["Idempotency-Key"] for s in api.seen] == ["same"] * 3


async def test_429_retries_are_bounded(api: FakeApi) -> None:
    api.reply = lambda _: error(429, "rate_limited", "slow down", headers={"Retry-After": "3600"})
    began = time.monotonic()
    async with Client(api.url, KEY, retries=2, max_retry_wait_s=0.05) as client:
        with pytest.raises(ApiError, match="rate_limited"):
            await client.list_keys()
    assert len(api.seen) == 3
    assert time.monotonic() - began < 5


async def test_a_retried_upload_sends_the_file_again(api: FakeApi) -> None:
    answers = iter(
        [
            error(429, "rate_limited", "slow down", headers={"Retry-After": "0"}),
            web.json_response({"face_id": "face_1", "status": "preparing"}, status=202),
        ]
    )
    api.reply = lambda _: next(answers)
    async with Client(api.url, KEY, retries=1) as client:
        await client.create_face(PNG, name="x")
    assert [s.form for s in api.seen] == [{"file": ("face.png", "image/png", PNG), "name": "x"}] * 2


async def test_other_errors_are_never_retried(api: FakeApi) -> None:
    api.reply = lambda _: error(503, "unavailable", "draining", headers={"Retry-After": "0"})
    async with Client(api.url, KEY, retries=3) as client:
        with pytest.raises(ApiError, match="unavailable"):
            await client.list_keys()
    assert len(api.seen) == 1


async def test_retry_after_as_an_http_date(api: FakeApi) -> None:
    api.reply = lambda _: error(429, "rate_limited", "later", headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    async with Client(api.url, KEY) as client:
        with pytest.raises(ApiError) as raised:
            await client.list_keys()
    assert raised.value.retry_after == 0.0  # a date in the past: retry now


async def test_an_unreachable_server_is_server_unavailable() -> None:
    from tests.pg import free_port

    async with Client(f"http://127.0.0.1:{free_port()}", KEY, timeout_s=5) as client:
        with pytest.raises(ServerUnavailable):
            await client.list_keys()


async def test_a_2xx_that_is_not_json_is_a_bad_response(api: FakeApi) -> None:
    api.reply = lambda _: web.Response(status=200, text="<html>proxy login</html>", content_type="text/html")
    async with Client(api.url, KEY) as client:
        with pytest.raises(DuetError) as raised:
            await client.list_keys()
    assert raised.value.code == "bad_response"


def test_a_key_is_required() -> None:
    with pytest.raises(DuetError, match="API key"):
        Client("http://127.0.0.1:8080", "")


def test_the_package_exports_the_client() -> None:
    assert duet.Client is Client
    assert {"Client", "ApiError"} <= set(duet.__all__)
