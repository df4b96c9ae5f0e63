"""The REST verbs of the `duet` CLI: their arguments (argparse level), the requests they make against a small
aiohttp server in the test, one JSON object on stdout, and `error: <code>: <message>` + exit 2 on an API error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from duet.cli import _parser, main

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


class Recorder:
    """Records (method, path, query, JSON body, Authorization); answers with `reply`."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.reply: Callable[[web.Request], web.Response] = lambda _: web.json_response({"ok": True})
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body: Any = None
        if request.content_type == "application/json":
            body = await request.json()
        elif request.content_type == "multipart/form-data":
            body = {
                k: v if isinstance(v, str) else getattr(v, "filename", None) for k, v in (await request.post()).items()
            }
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "body": body,
                "auth": request.headers.get("Authorization"),
                "idempotency_key": request.headers.get("Idempotency-Key"),
            }
        )
        return self.reply(request)


@pytest.fixture
async def api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    monkeypatch.setenv("DUET_API_URL", rec.url)
    monkeypatch.setenv("DUET_API_KEY", "sk_env")
    try:
        yield rec
    finally:
        await runner.cleanup()


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # main() runs its own event loop; the test server lives on this one, so the CLI goes to a thread.
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- argparse level ---


def parse(*argv: str) -> Any:
    return _parser().parse_args(list(argv))


def test_personas_verbs_parse() -> None:
    a = parse("personas", "create", "-f", "p.yaml", "--api-url", "http://h:1", "--api-key", "k")
    assert (a.command, a.verb, a.file, a.api_url, a.api_key, a.idempotency_key) == (
        "personas",
        "create",
        "p.yaml",
        "http://h:1",
        "k",
        None,
    )
    assert (parse("personas", "get", "per_1").id, parse("personas", "delete", "per_2").id) == ("per_1", "per_2")
    a = parse("personas", "list", "--limit", "5", "--cursor", "c")
    assert (a.verb, a.limit, a.cursor, a.api_url, a.api_key, a.timeout) == ("list", 5, "c", None, None, 30.0)
    with pytest.raises(SystemExit):
        parse("personas", "create")  # -f is required
    with pytest.raises(SystemExit):
        parse("personas")  # a verb is required


def test_conversations_verbs_parse() -> None:
    a = parse(
        "conversations",
        "create",
        "--persona",
        "per_1",
        "--face",
        "face_1",
        "--context",
        "ctx",
        "--greeting",
        "Hi",
        "--callback-url",
        "http://hook",
        "--max-duration",
        "90",
        "--document-id",
        "d1",
        "--document-id",
        "d2",
    )
    assert (a.persona, a.face, a.context, a.greeting, a.callback_url, a.max_duration, a.document_id) == (
        "per_1",
        "face_1",
        "ctx",
        "Hi",
        "http://hook",
        90.0,
        ["d1", "d2"],
    )
    with pytest.raises(SystemExit):
        parse("conversations", "create")  # --persona is required
    for verb in ("get", "end", "transcript", "webhooks"):
        assert parse("conversations", verb, "conv_1").id == "conv_1"
    assert parse("conversations", "list", "--status", "active").status == "active"
    a = parse("conversations", "interact", "conv_1", "--type", "echo", "--text", "Hello")
    assert (a.id, a.type, a.text) == ("conv_1", "echo", "Hello")
    a = parse("conversations", "interact", "c", "--type", "sensitivity", "--patience", "high")
    assert (a.patience, a.interruptibility) == ("high", None)
    a = parse("conversations", "interact", "c", "--type", "tool_result", "--call-id", "call_1", "--output", "21 C")
    assert (a.call_id, a.output) == ("call_1", "21 C")
    with pytest.raises(SystemExit):
        parse("conversations", "interact", "c", "--type", "dance")
    with pytest.raises(SystemExit):
        parse("conversations", "interact", "c", "--type", "sensitivity", "--patience", "extreme")


def test_faces_and_keys_verbs_parse() -> None:
    a = parse("faces", "create", "me.png", "--name", "Me", "--wait")
    assert (a.file, a.name, a.wait) == ("me.png", "Me", True)
    assert parse("faces", "get", "face_1").id == "face_1"
    assert parse("faces", "delete", "face_1").id == "face_1"
    assert parse("faces", "list").verb == "list"
    assert parse("keys", "create", "--name", "ci").name == "ci"
    assert parse("keys", "create").name is None
    assert parse("keys", "revoke", "key_1").id == "key_1"
    assert parse("keys", "list").verb == "list"


def test_knowledge_memory_guardrail_and_objective_verbs_parse() -> None:
    a = parse("documents", "add", "faq.md", "--name", "FAQ", "--tags", "a,b", "--wait")
    assert (a.command, a.verb, a.file, a.text, a.name, a.tags, a.wait) == (
        "documents",
        "add",
        "faq.md",
        None,
        "FAQ",
        "a,b",
        True,
    )
    a = parse("documents", "add", "--text", "Hello", "--name", "N", "--content-type", "markdown")
    assert (a.file, a.text, a.content_type, a.wait) == (None, "Hello", "markdown", False)
    with pytest.raises(SystemExit):
        parse("documents", "add", "--text", "x", "--content-type", "docx")
    assert parse("documents", "list", "--limit", "3").limit == 3
    assert parse("documents", "get", "doc_1").id == "doc_1"
    assert parse("documents", "delete", "doc_1").id == "doc_1"
    a = parse("search", "opening hours", "--strategy", "quality", "--top-k", "3", "--tag", "faq", "--tag", "en")
    assert (a.command, a.query, a.strategy, a.top_k, a.tag, a.document) == (
        "search",
        "opening hours",
        "quality",
        3,
        ["faq", "en"],
        None,
    )
    with pytest.raises(SystemExit):
        parse("search", "q", "--strategy", "fastest")
    a = parse("memories", "add", "Likes tea", "--store", "user-7", "--pinned")
    assert (a.verb, a.text, a.store, a.pinned) == ("add", "Likes tea", "user-7", True)
    assert parse("memories", "list", "--store", "s").store == "s"
    assert (
        parse("memories", "delete", "mem_1", "--store", "s").id,
        parse("memories", "add", "t", "--store", "s").pinned,
    ) == (
        "mem_1",
        False,
    )
    with pytest.raises(SystemExit):
        parse("memories", "list")  # --store is required
    for group in ("guardrails", "objectives"):
        a = parse(group, "create", "--file", "x.json", "--idempotency-key", "k")
        assert (a.command, a.verb, a.file, a.idempotency_key) == (group, "create", "x.json", "k")
        assert parse(group, "get", "id_1").id == "id_1"
        assert parse(group, "delete", "id_1").id == "id_1"
        assert parse(group, "list").verb == "list"
        with pytest.raises(SystemExit):
            parse(group, "create")  # --file is required


# --- against a server ---


async def test_an_api_error_prints_code_and_message_and_exits_2(
    api: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    api.reply = lambda _: web.json_response({"error": {"code": "not_found", "message": "no persona per_x"}}, status=404)
    code, out, err = await run_cli(capsys, "personas", "get", "per_x")
    assert code == 2
    assert out == ""
    assert err.strip() == "error: not_found: no persona per_x"


async def test_an_api_error_names_the_field(api: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    api.reply = lambda _: web.json_response(
        {"error": {"code": "invalid", "message": "unknown persona", "field": "persona_id"}}, status=422
    )
    code, _, err = await run_cli(capsys, "conversations", "create", "--persona", "per_x")
    assert code == 2
    assert err.strip() == "error: invalid: unknown persona (field: persona_id)"


async def test_a_non_json_error_is_http_status(api: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    api.reply = lambda _: web.Response(status=502, text="Bad Gateway")
    code, _, err = await run_cli(capsys, "keys", "list")
    assert code == 2
    assert err.strip() == "error: http_502: Bad Gateway"


async def test_success_prints_one_json_object(api: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    created = {
        "conversation_id": "conv_1",
        "status": "created",
        "join": {"grpc": "127.0.0.1:50051", "token": "tok"},
        "conversation_url": "http://127.0.0.1:8080/c/conv_1",
    }
    api.reply = lambda _: web.json_response(created, status=201)
    code, out, _ = await run_cli(
        capsys,
        "conversations",
        "create",
        "--persona",
        "per_1",
        "--greeting",
        "Hi",
        "--max-duration",
        "60",
        "--idempotency-key",
        "once",
        "--api-key",
        "sk_flag",
    )
    assert code == 0
    assert json.loads(out) == created
    assert len(out.strip().splitlines()) == 1
    [seen] = api.seen
    assert seen["auth"] == "Bearer sk_flag"  # the flag beats $DUET_API_KEY
    assert seen["idempotency_key"] == "once"
    assert (seen["method"], seen["path"]) == ("POST", "/v1/conversations")
    assert seen["body"] == {"persona_id": "per_1", "custom_greeting": "Hi", "properties": {"max_duration_s": 60.0}}


async def test_persona_create_sends_the_yaml_file(
    api: Recorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "p.yaml").write_text(
        "name: Ada\nsystem_prompt: You are Ada.\nlayers:\n  conversational_flow:\n    turn_taking_patience: high\n"
    )
    (tmp_path / "p.json").write_text(json.dumps({"name": "Bo"}))
    api.reply = lambda _: web.json_response({"persona_id": "per_1"}, status=201)
    assert (await run_cli(capsys, "personas", "create", "-f", str(tmp_path / "p.yaml")))[:2] == (
        0,
        '{"persona_id": "per_1"}\n',
    )
    assert (await run_cli(capsys, "personas", "create", "-f", str(tmp_path / "p.json")))[0] == 0
    assert [s["body"] for s in api.seen] == [
        {
            "name": "Ada",
            "system_prompt": "You are Ada.",
            "layers": {"conversational_flow": {"turn_taking_patience": "high"}},
        },
        {"name": "Bo"},
    ]
    assert api.seen[0]["auth"] == "Bearer sk_env"


async def test_bad_input_fails_before_any_request(
    api: Recorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    code, _, err = await run_cli(capsys, "personas", "create", "-f", str(tmp_path / "list.yaml"))
    assert (code, "bad_file" in err) == (2, True)
    code, _, err = await run_cli(capsys, "personas", "create", "-f", str(tmp_path / "missing.yaml"))
    assert (code, "bad_file" in err) == (2, True)
    code, _, err = await run_cli(capsys, "faces", "create", str(tmp_path / "missing.png"))
    assert (code, "bad_file" in err) == (2, True)
    code, _, err = await run_cli(capsys, "conversations", "interact", "conv_1", "--type", "echo")
    assert (code, "--text" in err) == (2, True)
    code, _, err = await run_cli(capsys, "conversations", "interact", "conv_1", "--type", "interrupt", "--text", "x")
    assert (code, "takes no text" in err) == (2, True)
    assert api.seen == []


async def test_no_api_key_is_an_error(
    api: Recorder, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DUET_API_KEY")
    code, _, err = await run_cli(capsys, "keys", "list")
    assert code == 2
    assert "DUET_API_KEY" in err
    assert api.seen == []


async def test_interact_sends_the_typed_fields(api: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    api.reply = lambda _: web.Response(status=202)
    cases = [
        (["--type", "echo", "--text", "Hello"], {"type": "echo", "text": "Hello"}),
        (["--type", "interrupt"], {"type": "interrupt"}),
        (
            ["--type", "sensitivity", "--patience", "low", "--interruptibility", "high"],
            {"type": "sensitivity", "turn_taking_patience": "low", "replica_interruptibility": "high"},
        ),
        (
            ["--type", "tool_result", "--call-id", "call_1", "--output", "21 C"],
            {"type": "tool_result", "call_id": "call_1", "output": "21 C"},
        ),
    ]
    for flags, body in cases:
        code, out, _ = await run_cli(capsys, "conversations", "interact", "conv_1", *flags)
        assert code == 0
        assert json.loads(out) == {"conversation_id": "conv_1", "type": body["type"], "accepted": True}
        assert api.seen[-1]["path"] == "/v1/conversations/conv_1/interactions"
        assert api.seen[-1]["body"] == body


async def test_the_other_verbs_hit_their_routes(
    api: Recorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    portrait = tmp_path / "me.png"
    portrait.write_bytes(PNG)
    runs: list[tuple[list[str], str, str]] = [
        (["personas", "list", "--limit", "2"], "GET", "/v1/personas"),
        (["personas", "get", "per_1"], "GET", "/v1/personas/per_1"),
        (["personas", "delete", "per_1"], "DELETE", "/v1/personas/per_1"),
        (["conversations", "get", "conv_1"], "GET", "/v1/conversations/conv_1"),
        (["conversations", "list", "--status", "ended"], "GET", "/v1/conversations"),
        (["conversations", "end", "conv_1"], "POST", "/v1/conversations/conv_1/end"),
        (["conversations", "transcript", "conv_1"], "GET", "/v1/conversations/conv_1/transcript"),
        (["faces", "create", str(portrait), "--name", "Me"], "POST", "/v1/faces"),
        (["faces", "get", "face_1"], "GET", "/v1/faces/face_1"),
        (["faces", "list"], "GET", "/v1/faces"),
        (["faces", "delete", "face_1"], "DELETE", "/v1/faces/face_1"),
        (["keys", "list"], "GET", "/v1/keys"),
        (["keys", "create", "--name", "ci"], "POST", "/v1/keys"),
        (["keys", "revoke", "key_1"], "DELETE", "/v1/keys/key_1"),
    ]
    for argv, method, path in runs:
        code, out, err = await run_cli(capsys, *argv)
        assert code == 0, (argv, err)
        assert json.loads(out) == {"ok": True}
        assert (api.seen[-1]["method"], api.seen[-1]["path"]) == (method, path), argv
    assert api.seen[0]["query"] == {"limit": "2"}
    assert api.seen[4]["query"] == {"status": "ended"}
    assert api.seen[7]["body"] == {"file": "me.png", "name": "Me"}
    assert api.seen[12]["body"] == {"name": "ci"}


async def test_a_delete_with_no_body_still_prints_an_object(api: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    api.reply = lambda _: web.Response(status=204)
    code, out, _ = await run_cli(capsys, "personas", "delete", "per_1")
    assert (code, json.loads(out)) == (0, {"persona_id": "per_1", "deleted": True})


async def test_the_knowledge_verbs_hit_their_routes(
    api: Recorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    faq = tmp_path / "faq.md"
    faq.write_text("# Hours\nNine to five.\n")
    runs: list[tuple[list[str], str, str]] = [
        (["documents", "add", str(faq), "--tags", "faq, en"], "POST", "/v1/documents"),
        (["documents", "add", "--text", "Hi", "--name", "N", "--content-type", "text"], "POST", "/v1/documents"),
        (["documents", "list", "--limit", "2"], "GET", "/v1/documents"),
        (["documents", "get", "doc_1"], "GET", "/v1/documents/doc_1"),
        (["documents", "delete", "doc_1"], "DELETE", "/v1/documents/doc_1"),
        (
            ["search", "hours", "--top-k", "2", "--document", "doc_1", "--strategy", "speed"],
            "POST",
            "/v1/knowledge/search",
        ),
        (["memories", "list", "--store", "user-7"], "GET", "/v1/memory-stores/user-7/memories"),
        (
            ["memories", "add", "Likes tea", "--store", "user-7", "--pinned"],
            "POST",
            "/v1/memory-stores/user-7/memories",
        ),
        (["memories", "delete", "mem_1", "--store", "user-7"], "DELETE", "/v1/memory-stores/user-7/memories/mem_1"),
        (["guardrails", "list"], "GET", "/v1/guardrails"),
        (["guardrails", "get", "grd_1"], "GET", "/v1/guardrails/grd_1"),
        (["guardrails", "delete", "grd_1"], "DELETE", "/v1/guardrails/grd_1"),
        (["objectives", "list", "--cursor", "c"], "GET", "/v1/objectives"),
        (["objectives", "get", "obj_1"], "GET", "/v1/objectives/obj_1"),
        (["objectives", "delete", "obj_1"], "DELETE", "/v1/objectives/obj_1"),
    ]
    for argv, method, path in runs:
        code, out, err = await run_cli(capsys, *argv)
        assert code == 0, (argv, err)
        assert json.loads(out) == {"ok": True}
        assert (api.seen[-1]["method"], api.seen[-1]["path"]) == (method, path), argv
    bodies = [s["body"] for s in api.seen]
    assert bodies[0] == {"file": "faq.md", "tags": "faq,en"}
    assert bodies[1] == {"name": "N", "text": "Hi", "content_type": "text"}
    assert api.seen[2]["query"] == {"limit": "2"}
    assert bodies[5] == {"query": "hours", "document_ids": ["doc_1"], "top_k": 2, "strategy": "speed"}
    assert bodies[7] == {"text": "Likes tea", "pinned": True}
    assert api.seen[12]["query"] == {"cursor": "c"}


async def test_guardrail_and_objectives_create_send_their_files(
    api: Recorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rule = {
        "name": "no-prices",
        "applies_to": "replica",
        "rule": {"type": "pattern", "pattern": "\\$\\d+"},
        "fallback_text": "I can't discuss prices.",
    }
    (tmp_path / "rule.json").write_text(json.dumps(rule))
    goals = [{"name": "greet", "prompt": "Greet the user", "next_required": ["ask"]}, {"name": "ask", "prompt": "Ask"}]
    (tmp_path / "goals.json").write_text(json.dumps({"name": "intake", "objectives": goals}))
    (tmp_path / "goals.yaml").write_text("- name: greet\n  prompt: Greet the user\n")
    api.reply = lambda _: web.json_response({"id": "x"}, status=201)
    code, out, _ = await run_cli(capsys, "guardrails", "create", "--file", str(tmp_path / "rule.json"))
    assert (code, json.loads(out)) == (0, {"id": "x"})
    assert (
        await run_cli(capsys, "objectives", "create", "-f", str(tmp_path / "goals.json"), "--idempotency-key", "o")
    )[0] == 0
    assert (await run_cli(capsys, "objectives", "create", "-f", str(tmp_path / "goals.yaml")))[0] == 0
    assert [(s["path"], s["body"]) for s in api.seen] == [
        ("/v1/guardrails", rule),
        ("/v1/objectives", {"name": "intake", "objectives": goals}),
        ("/v1/objectives", {"objectives": [{"name": "greet", "prompt": "Greet the user"}]}),  # a bare list is the set
    ]
    assert api.seen[1]["idempotency_key"] == "o"


async def test_documents_add_wait_polls_until_ready(api: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    states = iter(["processing", "ready"])

    def reply(request: web.Request) -> web.Response:
        if request.method == "POST":
            return web.json_response({"document_id": "doc_1", "status": "processing"}, status=202)
        return web.json_response({"document_id": "doc_1", "status": next(states), "chunks": 2})

    api.reply = reply
    code, out, err = await run_cli(capsys, "documents", "add", "--text", "Hello", "--name", "N", "--wait")
    assert code == 0, err
    assert json.loads(out) == {"document_id": "doc_1", "status": "ready", "chunks": 2}
    assert [(s["method"], s["path"]) for s in api.seen] == [
        ("POST", "/v1/documents"),
        ("GET", "/v1/documents/doc_1"),
        ("GET", "/v1/documents/doc_1"),
    ]


async def test_bad_knowledge_input_fails_before_any_request(
    api: Recorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "a.md").write_text("# A\n")
    (tmp_path / "scalar.json").write_text("42")
    (tmp_path / "list.json").write_text("[1, 2]")
    cases: list[tuple[list[str], str]] = [
        (["documents", "add"], "FILE or --text"),
        (["documents", "add", str(tmp_path / "a.md"), "--text", "x"], "FILE or --text"),
        (["documents", "add", "--text", "x"], "--text needs --name"),
        (["documents", "add", str(tmp_path / "missing.md")], "bad_file"),
        (["guardrails", "create", "-f", str(tmp_path / "missing.json")], "bad_file"),
        (["guardrails", "create", "-f", str(tmp_path / "list.json")], "bad_file"),  # a guardrail is one object
        (["objectives", "create", "-f", str(tmp_path / "scalar.json")], "bad_file"),
    ]
    for argv, expected in cases:
        code, out, err = await run_cli(capsys, *argv)
        assert (code, out) == (2, ""), argv
        assert expected in err, (argv, err)
    assert api.seen == []


async def test_a_memory_delete_with_no_body_still_prints_an_object(
    api: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    api.reply = lambda _: web.Response(status=204)
    code, out, _ = await run_cli(capsys, "memories", "delete", "mem_1", "--store", "s")
    assert (code, json.loads(out)) == (0, {"store": "s", "memory_id": "mem_1", "deleted": True})
    code, out, _ = await run_cli(capsys, "documents", "delete", "doc_1")
    assert (code, json.loads(out)) == (0, {"document_id": "doc_1", "deleted": True})


async def test_a_wait_that_runs_out_is_a_typed_error(
    api: Recorder, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import duet.cli

    monkeypatch.setattr(duet.cli, "DOCUMENT_WAIT_S", 0.05)
    api.reply = lambda _: web.json_response({"document_id": "doc_1", "status": "processing"}, status=202)
    code, out, err = await run_cli(
        capsys, "documents", "add", "--text", "x", "--name", "N", "--wait", "--timeout", "0.05"
    )
    assert (code, out) == (2, "")
    assert err.startswith("duet: timeout: document doc_1 still 'processing'"), err
