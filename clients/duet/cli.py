"""The `duet` command line: `duet serve`, `duet turns FILE.wav --jsonl`, `duet talk --audio IN.wav`,
`duet call --conversation ID --token T --audio IN.wav` (the same over WebRTC),
`duet render --text T --emotion E --out out.mp4`, `duet perceive --video V --audio A --jsonl`, `duet config`;
the REST control plane: `duet personas|conversations|faces|keys|documents|memories|guardrails|objectives VERB ...`
and `duet search QUERY` (`--api-url`, `--api-key`).

Client commands take `--server HOST:PORT` (or `DUET_SERVER`); with no server reachable they start the
embedded stack (a real tritonserver on loopback plus the session service) for the duration of the call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from duet.errors import ApiError, DuetError
from duet.sdk import probe, stream_file

DOCUMENT_WAIT_S = 300.0  # `documents add --wait`: at least this long (embedding a large document takes a while)

if TYPE_CHECKING:
    from duet.rest import Client

DEFAULT_SERVER = "127.0.0.1:50051"
FLOOR_TYPES = frozenset(
    {"speech_start", "speech_end", "eot_tentative", "eot_cancel", "eot_commit", "backchannel", "barge_in"}
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="duet", description="Duet real-time conversational engine")
    p.add_argument("--config", help="YAML settings file (default: $DUET_CONFIG)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the whole stack in the foreground (embedded Triton unless configured)")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--http-port", type=int, default=None, help="the REST control plane's port (default 8080; 0: any)")

    t = sub.add_parser("turns", help="stream a WAV file and print floor events")
    t.add_argument("file")
    t.add_argument("--jsonl", action="store_true", help="one JSON object per line (the stable floor-event format)")
    t.add_argument("--server", default=None, help="HOST:PORT of a Duet server (default $DUET_SERVER)")
    t.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = as fast as possible")
    t.add_argument("--all-events", action="store_true", help="also print session/error events")
    t.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="session option, e.g. floor.commit_threshold=0.8",
    )

    k = sub.add_parser(
        "talk", help="a recorded user talks to the replica; writes reply.wav, events.jsonl, transcript.json"
    )
    k.add_argument("--audio", required=True, help="the user's recording (16 kHz mono PCM16 WAV)")
    k.add_argument("--persona", default="", help="persona name (default: the server's)")
    k.add_argument("--conversation", default="", help="join this conversation (from `duet conversations create`)")
    k.add_argument("--token", default="", help="the conversation's join token (with --conversation)")
    k.add_argument("--out", default="talk-out", help="output folder (default: ./talk-out)")
    k.add_argument("--server", default=None, help="HOST:PORT of a Duet server (default $DUET_SERVER)")
    k.add_argument("--speed", type=float, default=1.0, help="x real time (1 = a live user; 0 = as fast as possible)")
    k.add_argument("--jsonl", action="store_true", help="print every event as JSON lines while talking")
    k.add_argument("--echo-gain", type=float, default=0.0, help="simulate speaker bleed at this gain (e.g. 0.3)")
    k.add_argument("--echo-delay-ms", type=float, default=120.0, help="speaker-to-mic delay of the bleed")
    k.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="session option")
    k.add_argument(
        "--video",
        action="store_true",
        help="also stream the replica's face and write reply.mp4 (video.fps, video.size)",
    )
    k.add_argument(
        "--check",
        action="store_true",
        help="exit 1, naming each problem, when a model failed or a user turn got no spoken reply",
    )

    w = sub.add_parser(
        "call", help="a recorded user joins a conversation over WebRTC; writes the same outputs as `duet talk`"
    )
    w.add_argument("--conversation", required=True, help="the conversation id (from `duet conversations create`)")
    w.add_argument("--token", required=True, help="the conversation's join token")
    w.add_argument("--audio", required=True, help="the user's microphone (16 kHz mono PCM16 WAV, or any audio file)")
    w.add_argument(
        "--video", default="", help="the user's camera (a video file); without it no camera (the face still comes back)"
    )
    w.add_argument("--out", default="call-out", help="output folder (default: ./call-out)")
    w.add_argument("--api-url", default=None, help=f"the server (default $DUET_API_URL or {DEFAULT_API_URL})")
    w.add_argument(
        "--tail",
        type=float,
        default=0.0,
        metavar="S",
        help="keep listening S seconds after the recording before hanging up (default 0: hang up at its end)",
    )
    w.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="session option")
    w.add_argument("--jsonl", action="store_true", help="print every event as JSON lines during the call")
    w.add_argument(
        "--check",
        action="store_true",
        help="exit 1, naming each problem, when a model failed or a user turn got no spoken reply",
    )

    r = sub.add_parser("render", help="the replica says a text (or lip-syncs audio) with an emotion: an MP4")
    r.add_argument("--text", default="", help='what the replica says (spoken by the TTS voice); "" = idle')
    r.add_argument("--emotion", default="", help="one of --list-emotions (default: the persona's, else neutral)")
    r.add_argument("--intensity", type=float, default=0.0, help="0..1 (default: the server's, 0.6)")
    r.add_argument("--size", default="512", help="512 (512x512), 1080 (1920x1080) or WxH")
    r.add_argument("--fps", type=float, default=0.0, help="frames per second (default: the server's, 25)")
    r.add_argument("--face", default="", help="portrait name in faces/ (default: the persona's)")
    r.add_argument("--persona", default="", help="persona whose voice and face to use")
    r.add_argument("--timings", default="", help="phoneme timings JSON ([{p, s, e}, ...]) for --audio")
    r.add_argument("--audio", default="", help="16 kHz mono PCM16 WAV to lip-sync (with --timings)")
    r.add_argument("--seed", type=int, default=0, help="idle motion seed (blinks, sway)")
    r.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="seconds: the clip lasts at least this long; with no text or audio, an idle clip (rest face)",
    )
    r.add_argument("--listening", action="store_true", help="an idle clip of the face listening to a user")
    r.add_argument("--out", default="render.mp4", help="output MP4 (default: ./render.mp4)")
    r.add_argument("--events", default="", help="also write the events (render_done has phoneme timings) as JSONL")
    r.add_argument("--list-emotions", action="store_true", help="print the emotions the face can show")
    r.add_argument("--server", default=None, help="HOST:PORT of a Duet server (default $DUET_SERVER)")

    c = sub.add_parser("perceive", help="what the replica sees and hears of a recorded user: perception events")
    c.add_argument(
        "--video", default="", help="a video file (its audio track, if any, is used unless --audio) or an image"
    )
    c.add_argument("--audio", default="", help="the user's voice (16 kHz mono PCM16 WAV, or any file with audio)")
    c.add_argument("--jsonl", action="store_true", help="one JSON object per line (the stable perception format)")
    c.add_argument("--fps", type=float, default=10.0, help="camera frames per second sent (default 10)")
    c.add_argument("--speed", type=float, default=1.0, help="x real time (1 = a live user; 0 = as fast as possible)")
    c.add_argument("--persona", default="", help="persona whose perception tools apply")
    c.add_argument("--all-events", action="store_true", help="also print floor, transcript and session events")
    c.add_argument("--server", default=None, help="HOST:PORT of a Duet server (default $DUET_SERVER)")
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="session option")

    sub.add_parser("config", help="print the effective settings")
    from orchestrator.control.admin import add_parser as add_admin

    add_admin(sub)
    _add_rest_commands(sub)
    return p


# --- the REST control plane: `duet personas|conversations|faces|keys|... VERB`, `duet search` (one JSON object
# on stdout) ---

REST_COMMANDS = (
    "personas",
    "conversations",
    "faces",
    "keys",
    "documents",
    "search",
    "memories",
    "guardrails",
    "objectives",
)
BODY_FILES = ("personas", "guardrails", "objectives")  # `-f FILE`: the request body, read before any request
DEFAULT_API_URL = "http://127.0.0.1:8080"
INTERACTION_TYPES = (
    "echo",
    "respond",
    "interrupt",
    "overwrite_context",
    "append_context",
    "sensitivity",
    "tool_result",
)
LEVELS = ("low", "medium", "high")
RestCall = Callable[["Client", argparse.Namespace], Awaitable[Any]]


def _add_rest_commands(sub: Any) -> None:
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--api-url", default=None, help=f"the control plane (default $DUET_API_URL or {DEFAULT_API_URL})")
    api.add_argument("--api-key", default=None, help="API key (default $DUET_API_KEY)")
    api.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")

    def verb(group: Any, name: str, call: RestCall, what: str) -> argparse.ArgumentParser:
        leaf: argparse.ArgumentParser = group.add_parser(name, parents=[api], help=what)
        leaf.set_defaults(rest=call)
        return leaf

    def paged(leaf: argparse.ArgumentParser) -> None:
        leaf.add_argument("--limit", type=int, default=None, help="at most this many per page")
        leaf.add_argument("--cursor", default=None, help="the previous page's next_cursor")

    per = sub.add_parser("personas", help="create, list, get, update and delete personas (REST)")
    g = per.add_subparsers(dest="verb", required=True)
    x = verb(g, "create", lambda c, a: c.create_persona(a.body, idempotency_key=a.idempotency_key), "a new persona")
    x.add_argument("-f", "--file", required=True, help="the persona body as YAML or JSON")
    x.add_argument("--idempotency-key", default=None)
    paged(verb(g, "list", lambda c, a: c.list_personas(a.limit, a.cursor), "one page of personas"))
    verb(g, "get", lambda c, a: c.get_persona(a.id), "one persona").add_argument("id")
    x = verb(g, "update", lambda c, a: c.update_persona(a.id, a.body), "change the fields the file gives")
    x.add_argument("id")
    x.add_argument("-f", "--file", required=True, help="the fields to change, as YAML or JSON")
    verb(g, "delete", lambda c, a: _deleted(c.delete_persona(a.id), persona_id=a.id), "delete").add_argument("id")
    verb(g, "templates", lambda c, a: c.list_persona_templates(), "the persona templates")

    conv = sub.add_parser("conversations", help="create, inspect, steer and end conversations (REST)")
    g = conv.add_subparsers(dest="verb", required=True)
    x = verb(g, "create", _create_conversation, "a conversation to join (prints its join token and URL)")
    x.add_argument("--persona", required=True, help="persona id")
    x.add_argument("--face", default=None, help="face id (default: the persona's)")
    x.add_argument("--context", default=None, help="conversational context for this conversation")
    x.add_argument("--greeting", default=None, help="what the replica says first")
    x.add_argument("--callback-url", default=None, help="webhook URL for this conversation's events")
    x.add_argument("--max-duration", type=float, default=None, metavar="S", help="end it after S seconds")
    x.add_argument("--memory-store", default=None, help="memory store name")
    x.add_argument("--document-id", action="append", default=None, help="a document to use (repeatable)")
    x.add_argument("--document-tag", action="append", default=None, help="use documents with this tag (repeatable)")
    x.add_argument("--idempotency-key", default=None, help="a retried create with the same key makes no second one")
    verb(g, "get", lambda c, a: c.get_conversation(a.id), "one conversation").add_argument("id")
    x = verb(g, "list", lambda c, a: c.list_conversations(a.status, a.limit, a.cursor), "one page of conversations")
    x.add_argument("--status", choices=("created", "active", "ended"), default=None)
    paged(x)
    verb(g, "end", lambda c, a: c.end_conversation(a.id), "end it").add_argument("id")
    verb(g, "transcript", lambda c, a: c.get_transcript(a.id), "its transcript").add_argument("id")
    verb(g, "webhooks", lambda c, a: c.list_webhook_deliveries(a.id), "its webhook deliveries").add_argument("id")
    x = verb(g, "interact", _interact, "send an interaction to an active conversation")
    x.add_argument("id")
    x.add_argument("--type", required=True, choices=INTERACTION_TYPES)
    x.add_argument("--text", default=None, help="echo, respond, overwrite_context, append_context")
    x.add_argument("--patience", choices=LEVELS, default=None, help="sensitivity: turn_taking_patience")
    x.add_argument("--interruptibility", choices=LEVELS, default=None, help="sensitivity: replica_interruptibility")
    x.add_argument("--call-id", default=None, help="tool_result: the tool call's call_id")
    x.add_argument("--output", default=None, help="tool_result: the tool's output (sent as a string)")

    faces = sub.add_parser("faces", help="upload, list, get and delete replica faces (REST)")
    g = faces.add_subparsers(dest="verb", required=True)
    x = verb(g, "create", _create_face, "upload a portrait (PNG or JPEG)")
    x.add_argument("file")
    x.add_argument("--name", default=None)
    x.add_argument("--wait", action="store_true", help="wait until the face is ready (or failed)")
    x.add_argument("--idempotency-key", default=None)
    paged(verb(g, "list", lambda c, a: c.list_faces(a.limit, a.cursor), "one page of faces"))
    verb(g, "get", lambda c, a: c.get_face(a.id), "one face").add_argument("id")
    verb(g, "delete", lambda c, a: _deleted(c.delete_face(a.id), face_id=a.id), "delete").add_argument("id")

    keys = sub.add_parser("keys", help="this tenant's API keys (REST)")
    g = keys.add_subparsers(dest="verb", required=True)
    verb(g, "list", lambda c, a: c.list_keys(), "the keys (never the secrets)")
    verb(g, "create", lambda c, a: c.create_key(a.name), "a new key (its secret is shown once)").add_argument(
        "--name", default=None
    )
    verb(g, "revoke", lambda c, a: _deleted(c.revoke_key(a.id), key_id=a.id), "revoke a key").add_argument("id")

    docs = sub.add_parser("documents", help="add, list, get and delete knowledge-base documents (REST)")
    g = docs.add_subparsers(dest="verb", required=True)
    x = verb(g, "add", _add_document, "add a file (txt, md, html, pdf) or --text; prints its id (status processing)")
    x.add_argument("file", nargs="?", default=None, help="the document's file (or give --text)")
    x.add_argument("--text", default=None, help="the document's text instead of a file (needs --name)")
    x.add_argument("--name", default=None, help="its name (default for a file: the file's name)")
    x.add_argument(
        "--content-type", choices=("text", "markdown", "html"), default=None, help="how to read it (default: guessed)"
    )
    x.add_argument("--tags", default=None, metavar="A,B", help="comma-separated tags")
    x.add_argument("--wait", action="store_true", help="wait until the document is ready (or failed)")
    x.add_argument("--idempotency-key", default=None)
    paged(verb(g, "list", lambda c, a: c.list_documents(a.limit, a.cursor), "one page of documents"))
    verb(g, "get", lambda c, a: c.get_document(a.id), "one document and its status").add_argument("id")
    x = verb(g, "delete", lambda c, a: _deleted(c.delete_document(a.id), document_id=a.id), "delete it and its chunks")
    x.add_argument("id")

    x = verb(sub, "search", _search, "search the knowledge base (what a replica would be given) (REST)")
    x.add_argument("query")
    x.add_argument("--strategy", choices=("speed", "balanced", "quality"), default=None, help="default balanced")
    x.add_argument("--top-k", type=int, default=None, help="how many chunks (default 5)")
    x.add_argument("--tag", action="append", default=None, help="only documents with this tag (repeatable)")
    x.add_argument("--document", action="append", default=None, help="only this document id (repeatable)")

    mem = sub.add_parser("memories", help="list, add and delete what the replica remembers in a store (REST)")
    g = mem.add_subparsers(dest="verb", required=True)
    x = verb(g, "list", lambda c, a: c.list_memories(a.store, a.limit, a.cursor), "one page of a store's memories")
    x.add_argument("--store", required=True, help="the memory store (a conversation's memory_store)")
    paged(x)
    x = verb(g, "add", lambda c, a: c.add_memory(a.store, a.text, a.pinned, idempotency_key=a.idempotency_key), "add")
    x.add_argument("text")
    x.add_argument("--store", required=True, help="the memory store")
    x.add_argument("--pinned", action="store_true", help="it enters every conversation of the store")
    x.add_argument("--idempotency-key", default=None)
    x = verb(g, "delete", _delete_memory, "forget a memory")
    x.add_argument("id")
    x.add_argument("--store", required=True, help="the memory store")

    grd = sub.add_parser("guardrails", help="create, list, get and delete guardrails (REST)")
    g = grd.add_subparsers(dest="verb", required=True)
    x = verb(g, "create", lambda c, a: c.create_guardrail(a.body, idempotency_key=a.idempotency_key), "a guardrail")
    x.add_argument("-f", "--file", required=True, help="{name, applies_to, rule, fallback_text} as YAML or JSON")
    x.add_argument("--idempotency-key", default=None)
    paged(verb(g, "list", lambda c, a: c.list_guardrails(a.limit, a.cursor), "one page of guardrails"))
    verb(g, "get", lambda c, a: c.get_guardrail(a.id), "one guardrail").add_argument("id")
    x = verb(g, "delete", lambda c, a: _deleted(c.delete_guardrail(a.id), guardrail_id=a.id), "delete")
    x.add_argument("id")

    obj = sub.add_parser("objectives", help="create, list, get and delete objective sets (REST)")
    g = obj.add_subparsers(dest="verb", required=True)
    x = verb(g, "create", lambda c, a: c.create_objectives(a.body, idempotency_key=a.idempotency_key), "a set")
    x.add_argument("-f", "--file", required=True, help="{objectives: [...]} or the list alone, as YAML or JSON")
    x.add_argument("--idempotency-key", default=None)
    paged(verb(g, "list", lambda c, a: c.list_objectives(a.limit, a.cursor), "one page of objective sets"))
    verb(g, "get", lambda c, a: c.get_objectives(a.id), "one objective set").add_argument("id")
    x = verb(g, "delete", lambda c, a: _deleted(c.delete_objectives(a.id), objectives_id=a.id), "delete")
    x.add_argument("id")


async def _deleted(answer: Awaitable[dict[str, Any]], **ident: str) -> dict[str, Any]:
    # A delete may answer 204: still print one JSON object saying what went.
    return await answer or {**ident, "deleted": True}


async def _create_conversation(client: Client, args: argparse.Namespace) -> Any:
    properties = {"max_duration_s": args.max_duration} if args.max_duration is not None else None
    return await client.create_conversation(
        args.persona,
        face_id=args.face,
        conversational_context=args.context,
        custom_greeting=args.greeting,
        memory_store=args.memory_store,
        document_ids=args.document_id,
        document_tags=args.document_tag,
        callback_url=args.callback_url,
        properties=properties,
        idempotency_key=args.idempotency_key,
    )


def _interaction(args: argparse.Namespace) -> dict[str, Any]:
    """The interaction's fields, checked here so that a missing flag is named as a flag."""
    need = {
        "echo": ["text"],
        "respond": ["text"],
        "overwrite_context": ["text"],
        "append_context": ["text"],
        "tool_result": ["call_id", "output"],
    }.get(args.type, [])
    missing = [f"--{n.replace('_', '-')}" for n in need if getattr(args, n) is None]
    if missing:
        raise DuetError("bad_option", f"--type {args.type} needs {' and '.join(missing)}")
    if args.type == "sensitivity" and args.patience is None and args.interruptibility is None:
        raise DuetError("bad_option", "--type sensitivity needs --patience and/or --interruptibility")
    fields = {
        "text": args.text,
        "turn_taking_patience": args.patience,
        "replica_interruptibility": args.interruptibility,
        "call_id": args.call_id,
        "output": args.output,
    }
    allowed = {
        "echo": {"text"},
        "respond": {"text"},
        "overwrite_context": {"text"},
        "append_context": {"text"},
        "interrupt": set(),
        "sensitivity": {"turn_taking_patience", "replica_interruptibility"},
        "tool_result": {"call_id", "output"},
    }[args.type]
    stray = sorted(k for k, v in fields.items() if v is not None and k not in allowed)
    if stray:
        raise DuetError("bad_option", f"--type {args.type} takes no {', '.join(stray)}")
    return {k: v for k, v in fields.items() if v is not None}


async def _interact(client: Client, args: argparse.Namespace) -> Any:
    fields = _interaction(args)
    answer = await client.interact(args.id, args.type, **fields)
    return answer or {"conversation_id": args.id, "type": args.type, "accepted": True}


async def _create_face(client: Client, args: argparse.Namespace) -> Any:
    face = await client.create_face(args.file, args.name, idempotency_key=args.idempotency_key)
    if args.wait:
        return await client.wait_face_ready(face["face_id"], timeout_s=max(args.timeout, 60.0))
    return face


async def _add_document(client: Client, args: argparse.Namespace) -> Any:
    document = await client.create_document(
        args.name,
        text=args.text,
        path=args.file,
        content_type=args.content_type,
        tags=_split_tags(args.tags),
        idempotency_key=args.idempotency_key,
    )
    if args.wait:
        return await client.wait_document(document["document_id"], timeout_s=max(args.timeout, DOCUMENT_WAIT_S))
    return document


def _split_tags(raw: str | None) -> list[str] | None:
    return [t.strip() for t in raw.split(",") if t.strip()] if raw is not None else None


def _check_document(args: argparse.Namespace) -> None:
    if (args.file is None) == (args.text is None):
        raise DuetError("bad_option", "give the document's FILE or --text, one of them")
    if args.text is not None and not args.name:
        raise DuetError("bad_option", "--text needs --name")
    if args.file is not None and not os.path.isfile(args.file):
        raise DuetError("bad_file", f"no such file: {args.file}")


async def _search(client: Client, args: argparse.Namespace) -> Any:
    return await client.search(
        args.query, document_ids=args.document, tags=args.tag, top_k=args.top_k, strategy=args.strategy
    )


async def _delete_memory(client: Client, args: argparse.Namespace) -> Any:
    return await _deleted(client.delete_memory(args.store, args.id), store=args.store, memory_id=args.id)


def _load_body(path: str, *, allow_list: bool = False) -> Any:
    """A request body from a YAML or JSON file (JSON is YAML): one object, or with `allow_list` a list."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            body = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DuetError("bad_file", f"cannot read {path}: {exc}") from exc
    if not isinstance(body, dict) and not (allow_list and isinstance(body, list)):
        shape = "one object (a mapping) or a list" if allow_list else "one object (a mapping)"
        raise DuetError("bad_file", f"{path} must hold {shape}, not {type(body).__name__}")
    return body


def _rest(args: argparse.Namespace) -> int:
    import uvloop

    # Files are read before the event loop starts, so a bad one fails before any request.
    if getattr(args, "file", None) and args.command in BODY_FILES:
        args.body = _load_body(args.file, allow_list=args.command == "objectives")
    if args.command == "faces" and args.verb == "create" and not os.path.isfile(args.file):
        raise DuetError("bad_file", f"no such file: {args.file}")
    if args.command == "documents" and args.verb == "add":
        _check_document(args)
    if args.command == "conversations" and args.verb == "interact":
        _interaction(args)
    url = args.api_url or os.environ.get("DUET_API_URL") or DEFAULT_API_URL
    key = args.api_key or os.environ.get("DUET_API_KEY")
    if not key:
        raise DuetError("unauthenticated", "give --api-key or set DUET_API_KEY")

    async def call() -> Any:
        from duet.rest import Client

        async with Client(url, key, timeout_s=args.timeout) as client:
            try:
                return await args.rest(client, args)
            except TimeoutError as exc:  # a `--wait` that ran out (a request's own timeout is ServerUnavailable)
                raise DuetError("timeout", str(exc)) from exc

    print(json.dumps(uvloop.run(call())), flush=True)
    return 0


def _settings(args: argparse.Namespace) -> Any:
    from orchestrator.config import load_settings

    return load_settings(args.config)


@contextlib.asynccontextmanager
async def _server_for(args: argparse.Namespace) -> AsyncIterator[str]:
    """The requested/configured server if it answers, else an embedded stack for this call."""
    explicit = args.server or os.environ.get("DUET_SERVER")
    target = explicit or DEFAULT_SERVER
    if await probe(target):
        yield target
        return
    if explicit:
        print(f"duet: no server at {target}; starting the embedded stack for this call", file=sys.stderr)
    import dataclasses

    from orchestrator.app import running_stack

    settings = _settings(args)
    settings = dataclasses.replace(
        settings,
        server=dataclasses.replace(settings.server, port=0),
        api=dataclasses.replace(settings.api, enabled=False),  # a stack for one call: no control plane, no store
    )
    async with running_stack(settings) as running:
        yield running.address


@contextlib.asynccontextmanager
async def _joined_server(args: argparse.Namespace) -> AsyncIterator[str]:
    target = args.server or os.environ.get("DUET_SERVER") or DEFAULT_SERVER
    if not await probe(target):
        raise DuetError("server_unavailable", f"no Duet server at {target} (the one that created the conversation)")
    yield target


async def _turns(args: argparse.Namespace) -> int:
    from duet.wav import read_pcm16

    read_pcm16(args.file)  # fail fast on a bad file, before starting anything
    options = {"mode": "floor", **_options(args.option)}
    async with _server_for(args) as server:
        async for event in stream_file(args.file, server, speed=args.speed, options=options):
            if not args.all_events and event.get("type") not in FLOOR_TYPES:
                if event.get("type") == "error":
                    print(f"duet: {event.get('code')}: {event.get('message')}", file=sys.stderr)
                continue
            if args.jsonl:
                print(json.dumps(event), flush=True)
            else:
                extra = {k: v for k, v in event.items() if k not in ("type", "t", "compute_ms")}
                print(f"{event['t']:8.3f}s  {event['type']:<14} {event.get('compute_ms', 0):7.1f} ms  {extra or ''}")
    return 0


def _options(raw: list[str]) -> dict[str, str]:
    bad = [o for o in raw if "=" not in o]
    if bad:
        raise DuetError("bad_option", f"options must be KEY=VALUE, got {bad}")
    return dict(o.split("=", 1) for o in raw)


def _shown(events: list[dict[str, Any]], jsonl: bool) -> Callable[[dict[str, Any]], None]:
    """The `on_event` of `duet talk` and `duet call`: keeps each event in `events` and prints it (every one as
    JSON with `jsonl`, else the turns, and non-fatal errors on stderr)."""

    def keep(event: dict[str, Any]) -> None:
        events.append(event)
        if jsonl:
            print(json.dumps(event), flush=True)
        elif event.get("type") in ("user_turn", "replica_turn"):
            who = "user   " if event["type"] == "user_turn" else "replica"
            cut = " [interrupted]" if event.get("interrupted") else ""
            print(f"{event['t']:8.2f}s  {who}  {event['text']}{cut}", flush=True)
        elif event.get("type") == "error" and not event.get("fatal"):  # a fatal one is raised, and printed then
            print(f"duet: {event.get('code')}: {event.get('message')}", file=sys.stderr)

    return keep


def _checked(events: list[dict[str, Any]], check: bool) -> int:
    """`--check`: 1, naming each problem on stderr, when the session had one."""
    from duet.talk import session_problems

    problems = session_problems(events) if check else []
    for problem in problems:
        print(f"duet: check failed: {problem}", file=sys.stderr)
    return 1 if problems else 0


async def _talk(args: argparse.Namespace) -> int:
    from duet.talk import talk
    from duet.wav import read_pcm16

    read_pcm16(args.audio)  # fail fast on a bad file, before starting anything
    options = _options(args.option)
    events: list[dict[str, Any]] = []
    keep = _shown(events, args.jsonl)

    if bool(args.conversation) != bool(args.token):
        raise DuetError("bad_option", "--conversation and --token go together")
    # a conversation lives on the server that created it: never an embedded stack for the call
    servers = _joined_server(args) if args.conversation else _server_for(args)
    async with servers as server:
        await talk(
            args.audio,
            server,
            args.out,
            persona=args.persona,
            conversation_id=args.conversation,
            token=args.token,
            options=options,
            speed=args.speed,
            echo_gain=args.echo_gain,
            echo_delay_ms=args.echo_delay_ms,
            on_event=keep,
            video=args.video,
        )
    if not args.jsonl:
        extra = ", reply.mp4" if args.video else ""
        print(f"duet: wrote {args.out}/reply.wav, events.jsonl, transcript.json{extra}", file=sys.stderr)
    return _checked(events, args.check)


async def _call(args: argparse.Namespace) -> int:
    from duet.call import call
    from duet.media import audio_pcm

    audio_pcm(args.audio)  # fail fast on a bad file, before joining (a bad --video fails before the offer)
    if not (math.isfinite(args.tail) and args.tail >= 0):
        raise DuetError("bad_option", f"--tail must be a number of seconds >= 0, got {args.tail:g}")
    events: list[dict[str, Any]] = []
    await call(
        args.conversation,
        args.token,
        args.audio,
        args.out,
        api_url=args.api_url or os.environ.get("DUET_API_URL") or DEFAULT_API_URL,
        video=args.video or None,
        options=_options(args.option),
        tail_s=args.tail,
        on_event=_shown(events, args.jsonl),
    )
    if not args.jsonl:
        face = await asyncio.to_thread(os.path.isfile, os.path.join(args.out, "reply.mp4"))
        extra = ", reply.mp4" if face else ""
        print(f"duet: wrote {args.out}/reply.wav, events.jsonl, transcript.json{extra}", file=sys.stderr)
    return _checked(events, args.check)


def _size(raw: str) -> tuple[int, int]:
    named = {"512": (512, 512), "1080": (1920, 1080), "720": (1280, 720)}
    if raw in named:
        return named[raw]
    try:
        w, h = (int(v) for v in raw.lower().split("x"))
    except ValueError:
        raise DuetError("bad_option", f"--size must be 512, 720, 1080 or WxH, not {raw!r}") from None
    return w, h


def _write_jsonl(path: str, events: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(e) + "\n" for e in events)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DuetError("bad_timings", f"cannot read {path}: {exc}") from exc


async def _render(args: argparse.Namespace) -> int:
    from duet.sdk import ReplyAudio, VideoFrame, render
    from duet.talk import Speaker
    from duet.video import write_mp4
    from duet.wav import read_pcm16

    width, height = _size(args.size)
    audio_pcm, timings = b"", ""
    if args.audio or args.timings:
        if not (args.audio and args.timings):
            raise DuetError("bad_timings", "--audio and --timings go together")
        audio_pcm = read_pcm16(args.audio)
        timings = _read_text(args.timings)
    idle = not args.text.strip() and not args.audio
    if not math.isfinite(args.duration) or args.duration < 0:
        raise DuetError("bad_option", f"--duration must be a number of seconds >= 0, got {args.duration:g}")
    if args.listening and not (idle and args.duration > 0):
        raise DuetError("bad_option", "--listening renders an idle clip: give --duration and no --text or --audio")
    if idle and args.duration <= 0 and not args.list_emotions:
        raise DuetError(
            "bad_option", "give --text, --audio with --timings, or --duration for an idle clip (or --list-emotions)"
        )
    frames: list[VideoFrame] = []
    speaker = Speaker()
    done: dict[str, Any] = {}
    events: list[dict[str, Any]] = []
    async with _server_for(args) as server:
        async for item in render(
            server,
            args.text,
            emotion=args.emotion,
            intensity=args.intensity,
            width=width,
            height=height,
            fps=args.fps,
            face=args.face,
            persona=args.persona,
            audio_pcm=audio_pcm,
            timings_json=timings,
            seed=args.seed,
            list_emotions=args.list_emotions,
            duration_s=args.duration,
            listening=args.listening,
        ):
            if isinstance(item, VideoFrame):
                frames.append(item)
                continue
            if isinstance(item, ReplyAudio):
                speaker.place(item.t, item.pcm)
                continue
            events.append(item)
            if item.get("type") == "emotions":
                for e in item["emotions"]:
                    print(f"{e['name']:<18} {e['description']}")
                return 0
            elif item.get("type") == "error":  # the server refused the clip or failed making it: no file
                print(f"duet: {item.get('code')}: {item.get('message')}", file=sys.stderr)
                return 2
            elif item.get("type") == "render_done":
                done = item
    fps = float(done.get("fps") or args.fps or 25.0)
    n = write_mp4(args.out, frames, fps, speaker.window(0, speaker.end))
    if args.events:
        _write_jsonl(args.events, events)
    print(
        f"duet: wrote {args.out} ({n} frames at {fps:g} fps, {width}x{height}, "
        f"{_what(done)}; first frame after {done.get('first_frame_ms')} ms, "
        f"all in {done.get('total_ms')} ms)",
        file=sys.stderr,
    )
    return 0


def _what(done: dict[str, Any]) -> str:
    if done.get("listening"):
        return "listening"
    if done.get("idle"):
        return "idle"
    return f"{done.get('speech_s', 0):.2f} s of speech"


PERCEPTION_TYPES = frozenset({"perception", "utterance_summary", "perception_tool_call"})


async def _perceive(args: argparse.Namespace) -> int:
    from duet.media import audio_pcm, video_frames
    from duet.sdk import stream_media

    if not args.video and not args.audio:
        raise DuetError("bad_option", "give --video (a video or an image) and/or --audio")
    if not 0.5 <= args.fps <= 30:
        raise DuetError("bad_option", "--fps must be within 0.5..30")
    if args.audio:
        pcm = audio_pcm(args.audio)
    elif _is_image(args.video):
        pcm = b""  # a still image alone: visual only
    elif not (pcm := audio_pcm(args.video, required=False)):
        print(f"duet: {args.video} has no audio track: perceiving its frames only", file=sys.stderr)
    frames = list(video_frames(args.video, args.fps, still_s=max(len(pcm) / 32000, 3.0))) if args.video else []
    options = {"mode": "perceive", **_options(args.option)}
    async with _server_for(args) as server:
        async for event in stream_media(server, pcm, frames, speed=args.speed, options=options, persona=args.persona):
            kind = event.get("type")
            if kind == "error":
                print(f"duet: {event.get('code')}: {event.get('message')}", file=sys.stderr)
                continue
            if kind not in PERCEPTION_TYPES and not args.all_events:
                continue
            if args.jsonl:
                print(json.dumps(event), flush=True)
            else:
                what = event.get("modality") or event.get("name") or kind
                print(f"{event.get('t', 0):8.2f}s  {what:<22} {event.get('text', event.get('evidence', ''))}")
    return 0


def _is_image(path: str) -> bool:
    from duet.media import IMAGE_SUFFIXES

    return path.lower().endswith(IMAGE_SUFFIXES)


def _serve(args: argparse.Namespace) -> int:
    import dataclasses

    from orchestrator.app import Running, run, serve

    settings = _settings(args)
    server = dataclasses.replace(
        settings.server,
        host=args.host or settings.server.host,
        port=settings.server.port if args.port is None else args.port,
    )
    api = settings.api if args.http_port is None else dataclasses.replace(settings.api, http_port=args.http_port)
    settings = dataclasses.replace(settings, server=server, api=api)

    def ready(r: Running) -> None:
        if r.http_url:
            print(f"duet: control plane on {r.http_url}/v1 (store {settings.store.url})", flush=True)
        print(f"duet: serving sessions on {r.address} (triton {r.triton_url})", flush=True)

    run(lambda: serve(settings, ready))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "serve" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "config":
            from orchestrator.config import as_dict

            print(json.dumps(as_dict(_settings(args)), indent=2))
            return 0
        if args.command in ("turns", "talk", "call", "render", "perceive"):
            import uvloop

            commands = {"turns": _turns, "talk": _talk, "call": _call, "render": _render, "perceive": _perceive}
            run = commands[args.command]
            return uvloop.run(run(args))
        if args.command in REST_COMMANDS:
            return _rest(args)
        if args.command == "admin":
            from orchestrator.control import admin

            print(json.dumps(asyncio.run(admin.run(args, _settings(args)))))
            return 0
    except ApiError as err:
        where = f" (field: {err.field})" if err.field else ""
        print(f"error: {err.code}: {err.message}{where}", file=sys.stderr)
        return 2
    except DuetError as err:
        print(f"duet: {err.code}: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        code = getattr(err, "code", None)
        if isinstance(code, str):  # orchestrator-side typed errors (embedded stack)
            print(f"duet: {code}: {err}", file=sys.stderr)
            return 2
        raise
    return 2


if __name__ == "__main__":
    sys.exit(main())
