"""Async client for Duet's REST control plane (`/v1/...`): personas, faces, conversations, keys, and what
replicas know and must do (documents and knowledge search, memories, guardrails, objectives).

async with duet.Client("http://127.0.0.1:8080", api_key) as client:
    persona = await client.create_persona(name="Ada", system_prompt="You are Ada.")
    conv = await client.create_conversation(persona["persona_id"], idempotency_key="order-42")
    await client.echo(conv["conversation_id"], "Hello!")

Every method returns the response body as a plain dict (typed with the TypedDicts below); a non-2xx answer
raises `duet.ApiError`, an unreachable server `duet.ServerUnavailable`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, Required, TypedDict, TypeVar, cast
from urllib.parse import quote

import aiohttp

from duet.errors import ApiError, DuetError, ServerUnavailable

T = TypeVar("T")

DEFAULT_RETRY_WAIT_S = 1.0  # a 429 without Retry-After
MAX_RETRY_WAIT_S = 30.0  # the longest one retry waits, whatever Retry-After says
FACE_POLL_S = 0.5
DOCUMENT_POLL_S = 0.5
DOCUMENT_WAIT_S = 300.0  # embedding a large document on CPU takes a while

Level = Literal["low", "medium", "high"]
Strategy = Literal["speed", "balanced", "quality"]
# `create_document(content_type=...)`: how to read the text; for a file, the part's Content-Type it becomes
DOCUMENT_TYPES = {"text": "text/plain", "markdown": "text/markdown", "html": "text/html", "pdf": "application/pdf"}


class Page(TypedDict, Generic[T]):
    """One page of a list; pass `next_cursor` back as `cursor` for the next (None on the last page)."""

    data: list[T]
    next_cursor: str | None


class ApiKey(TypedDict, total=False):
    key_id: str
    name: str | None
    prefix: str
    api_key: str  # the secret itself: only in the answer to a create
    created_at: str
    revoked_at: str | None
    last_used_at: str | None


class Persona(TypedDict, total=False):
    persona_id: Required[str]
    name: str
    system_prompt: str
    context: str
    face_id: str | None
    voice: str
    emotion: str
    layers: dict[str, Any]
    document_ids: list[str]
    document_tags: list[str]
    guardrail_ids: list[str]
    objectives_id: str | None
    created_at: str
    updated_at: str


class Face(TypedDict, total=False):
    face_id: Required[str]
    status: Required[str]  # preparing | ready | failed
    name: str | None
    error: str | None
    created_at: str


class Join(TypedDict):
    grpc: str  # HOST:PORT of the session service
    token: str  # the join token the session's `start` names


class Conversation(TypedDict, total=False):
    conversation_id: Required[str]
    status: Required[str]  # created | active | ended
    persona_id: str
    face_id: str | None
    join: Join
    conversation_url: str
    shutdown_reason: str | None
    callback_url: str | None
    created_at: str
    started_at: str | None
    ended_at: str | None


class Turn(TypedDict):
    role: str  # user | replica
    text: str
    t: float  # seconds on the session clock


class Transcript(TypedDict):
    turns: list[Turn]


class ConversationProperties(TypedDict, total=False):
    max_duration_s: float
    participant_absent_timeout_s: float
    participant_left_timeout_s: float


class Document(TypedDict, total=False):
    document_id: Required[str]
    status: Required[str]  # processing | ready | failed (only ready documents are searched)
    name: str
    tags: list[str]
    content_type: str  # text | markdown | html | pdf
    size: int  # bytes
    error: str | None
    chunks: int
    created_at: str
    updated_at: str


class KnowledgeResult(TypedDict):
    document_id: str
    chunk_id: str
    text: str
    score: float


class KnowledgeResults(TypedDict):
    results: list[KnowledgeResult]  # best first
    took_ms: float


class Memory(TypedDict, total=False):
    memory_id: Required[str]
    text: str
    pinned: bool  # a pinned memory enters every conversation of the store
    conversation_id: str | None  # the conversation it was learnt from; None if added through the API
    created_at: str
    updated_at: str


class Guardrail(TypedDict, total=False):
    guardrail_id: Required[str]
    name: str
    applies_to: str  # user | replica | both
    rule: dict[str, Any]  # {"type": "phrases"|"pattern"|"topics"|"semantic"|"llm", ...}
    fallback_text: str
    created_at: str


class Objective(TypedDict, total=False):
    name: Required[str]
    prompt: Required[str]
    confirmation_mode: str  # auto | manual
    output_variables: list[str]
    next_required: list[str]
    next_conditional: dict[str, str]  # objective name -> condition


class Objectives(TypedDict, total=False):
    objectives_id: Required[str]
    name: str | None
    objectives: list[Objective]
    created_at: str


class Client:
    """One API key's view of a Duet server. `retries` > 0 retries a 429 that many times, waiting as its
    `Retry-After` says (at most `max_retry_wait_s` a time); other errors are never retried."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 0,
        max_retry_wait_s: float = MAX_RETRY_WAIT_S,
    ) -> None:
        if not api_key:
            raise DuetError("unauthenticated", "an API key is required (DUET_API_KEY or --api-key)")
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retries = max(0, retries)
        self._max_retry_wait_s = max_retry_wait_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- keys ---

    async def list_keys(self) -> Page[ApiKey]:
        return cast(Page[ApiKey], await self._request("GET", "/v1/keys"))

    async def create_key(self, name: str | None = None, *, idempotency_key: str | None = None) -> ApiKey:
        body = _present(name=name)
        return cast(ApiKey, await self._request("POST", "/v1/keys", body=body, idempotency_key=idempotency_key))

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        return await self._request("DELETE", f"/v1/keys/{_id(key_id)}")

    # --- personas ---

    async def list_persona_templates(self) -> Page[dict[str, Any]]:
        return cast(Page[dict[str, Any]], await self._request("GET", "/v1/persona-templates"))

    async def create_persona(
        self, body: Mapping[str, Any] | None = None, /, *, idempotency_key: str | None = None, **fields: Any
    ) -> Persona:
        """`create_persona({"name": ...})` or `create_persona(name=...)`; keywords override the mapping."""
        merged = {**(body or {}), **fields}
        return cast(Persona, await self._request("POST", "/v1/personas", body=merged, idempotency_key=idempotency_key))

    async def get_persona(self, persona_id: str) -> Persona:
        return cast(Persona, await self._request("GET", f"/v1/personas/{_id(persona_id)}"))

    async def list_personas(self, limit: int | None = None, cursor: str | None = None) -> Page[Persona]:
        params = _present(limit=limit, cursor=cursor)
        return cast(Page[Persona], await self._request("GET", "/v1/personas", params=params))

    def iter_personas(self, *, page_size: int | None = None) -> AsyncIterator[Persona]:
        return cast(AsyncIterator[Persona], self._iterate("/v1/personas", _present(limit=page_size)))

    async def update_persona(self, persona_id: str, body: Mapping[str, Any] | None = None, /, **fields: Any) -> Persona:
        """A partial update (PATCH): only the fields given change."""
        merged = {**(body or {}), **fields}
        return cast(Persona, await self._request("PATCH", f"/v1/personas/{_id(persona_id)}", body=merged))

    async def delete_persona(self, persona_id: str) -> dict[str, Any]:
        return await self._request("DELETE", f"/v1/personas/{_id(persona_id)}")

    # --- faces ---

    async def create_face(
        self, image: str | Path | bytes, name: str | None = None, *, idempotency_key: str | None = None
    ) -> Face:
        """Upload a portrait (PNG or JPEG, a path or the bytes); the answer's `status` is `preparing`."""
        if isinstance(image, bytes):
            data, filename = image, None
        else:
            data, filename = await asyncio.to_thread(Path(image).read_bytes), Path(image).name
        content_type = image_type(data)
        if filename is None:
            filename = "face.png" if content_type == "image/png" else "face.jpg"

        def form() -> aiohttp.FormData:  # built per attempt: aiohttp consumes a FormData when sending it
            f = aiohttp.FormData()
            f.add_field("file", data, filename=filename, content_type=content_type)
            if name is not None:
                f.add_field("name", name)
            return f

        return cast(Face, await self._request("POST", "/v1/faces", form=form, idempotency_key=idempotency_key))

    async def get_face(self, face_id: str) -> Face:
        return cast(Face, await self._request("GET", f"/v1/faces/{_id(face_id)}"))

    async def list_faces(self, limit: int | None = None, cursor: str | None = None) -> Page[Face]:
        return cast(Page[Face], await self._request("GET", "/v1/faces", params=_present(limit=limit, cursor=cursor)))

    def iter_faces(self, *, page_size: int | None = None) -> AsyncIterator[Face]:
        return cast(AsyncIterator[Face], self._iterate("/v1/faces", _present(limit=page_size)))

    async def delete_face(self, face_id: str) -> dict[str, Any]:
        return await self._request("DELETE", f"/v1/faces/{_id(face_id)}")

    async def wait_face_ready(self, face_id: str, timeout_s: float = 60.0, *, poll_s: float = FACE_POLL_S) -> Face:
        """Poll until the face is `ready`; a `failed` face raises DuetError("face_failed"), a slow one
        TimeoutError."""
        face = await self._wait("face", face_id, self.get_face, timeout_s, poll_s)
        return cast(Face, face)

    # --- conversations ---

    async def create_conversation(
        self,
        persona_id: str,
        *,
        face_id: str | None = None,
        conversational_context: str | None = None,
        custom_greeting: str | None = None,
        memory_store: str | None = None,
        document_ids: list[str] | None = None,
        document_tags: list[str] | None = None,
        callback_url: str | None = None,
        properties: ConversationProperties | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Conversation:
        """A conversation to join: the answer carries `join` (gRPC address and token) and `conversation_url`.
        The same `idempotency_key` again returns the first answer instead of making a second conversation."""
        body = _present(
            persona_id=persona_id,
            face_id=face_id,
            conversational_context=conversational_context,
            custom_greeting=custom_greeting,
            memory_store=memory_store,
            document_ids=document_ids,
            document_tags=document_tags,
            callback_url=callback_url,
            properties=dict(properties) if properties is not None else None,
        )
        created = await self._request("POST", "/v1/conversations", body=body, idempotency_key=idempotency_key)
        return cast(Conversation, created)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        return cast(Conversation, await self._request("GET", f"/v1/conversations/{_id(conversation_id)}"))

    async def list_conversations(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page[Conversation]:
        params = _present(status=status, limit=limit, cursor=cursor)
        return cast(Page[Conversation], await self._request("GET", "/v1/conversations", params=params))

    def iter_conversations(
        self, status: str | None = None, *, page_size: int | None = None
    ) -> AsyncIterator[Conversation]:
        params = _present(status=status, limit=page_size)
        return cast(AsyncIterator[Conversation], self._iterate("/v1/conversations", params))

    async def end_conversation(self, conversation_id: str) -> Conversation:
        return cast(Conversation, await self._request("POST", f"/v1/conversations/{_id(conversation_id)}/end"))

    async def get_transcript(self, conversation_id: str) -> Transcript:
        path = f"/v1/conversations/{_id(conversation_id)}/transcript"
        return cast(Transcript, await self._request("GET", path))

    async def list_webhook_deliveries(self, conversation_id: str) -> Page[dict[str, Any]]:
        path = f"/v1/conversations/{_id(conversation_id)}/webhooks"
        return cast(Page[dict[str, Any]], await self._request("GET", path))

    # --- interactions (202 when accepted; 409 conflict when the conversation is not active) ---

    async def interact(self, conversation_id: str, type: str, **fields: Any) -> dict[str, Any]:
        """Any interaction: `interact(id, "echo", text="Hi")`. None-valued fields are left out."""
        body = {"type": type, **_present(**fields)}
        return await self._request("POST", f"/v1/conversations/{_id(conversation_id)}/interactions", body=body)

    async def echo(self, conversation_id: str, text: str) -> dict[str, Any]:
        """The replica says exactly `text`."""
        return await self.interact(conversation_id, "echo", text=text)

    async def respond(self, conversation_id: str, text: str) -> dict[str, Any]:
        """`text` as if the user had said it: the replica answers it."""
        return await self.interact(conversation_id, "respond", text=text)

    async def interrupt(self, conversation_id: str) -> dict[str, Any]:
        return await self.interact(conversation_id, "interrupt")

    async def overwrite_context(self, conversation_id: str, text: str) -> dict[str, Any]:
        return await self.interact(conversation_id, "overwrite_context", text=text)

    async def append_context(self, conversation_id: str, text: str) -> dict[str, Any]:
        return await self.interact(conversation_id, "append_context", text=text)

    async def sensitivity(
        self,
        conversation_id: str,
        turn_taking_patience: Level | None = None,
        replica_interruptibility: Level | None = None,
    ) -> dict[str, Any]:
        return await self.interact(
            conversation_id,
            "sensitivity",
            turn_taking_patience=turn_taking_patience,
            replica_interruptibility=replica_interruptibility,
        )

    async def tool_result(self, conversation_id: str, call_id: str, output: Any) -> dict[str, Any]:
        """The result of the replica's `tool_call` `call_id` (any JSON value)."""
        return await self.interact(conversation_id, "tool_result", call_id=call_id, output=output)

    # --- knowledge: documents and search ---

    async def create_document(
        self,
        name: str | None = None,
        *,
        text: str | None = None,
        path: str | Path | None = None,
        content_type: str | None = None,
        tags: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Document:
        """Add a document: `text` (sent as JSON; `name` required) or the file at `path` (uploaded as multipart:
        txt, md, html or pdf; `name` defaults to the file's name). `content_type` (text | markdown | html, and pdf
        for a file) says how to read it; by default the server decides (Markdown for text; for a file its
        bytes and extension). A JSON body is held to the server's body limit (1 MiB by default): upload a longer
        text as a file. The answer's `status` is `processing`: `wait_document` for `ready`."""
        if (text is None) == (path is None):
            raise DuetError("bad_option", "create_document takes text= or path=, exactly one")
        if text is not None:
            body = _present(name=name, text=text, content_type=content_type, tags=tags)
            created = await self._request("POST", "/v1/documents", body=body, idempotency_key=idempotency_key)
            return cast(Document, created)
        assert path is not None
        if tags and any("," in t for t in tags):
            raise DuetError("bad_option", "an uploaded file's tags travel comma-separated: no tag may hold a comma")
        data, filename = await asyncio.to_thread(Path(path).read_bytes), Path(path).name
        part_type = DOCUMENT_TYPES.get(content_type, content_type) if content_type else "application/octet-stream"

        def form() -> aiohttp.FormData:  # built per attempt: aiohttp consumes a FormData when sending it
            f = aiohttp.FormData()
            f.add_field("file", data, filename=filename, content_type=part_type)
            if name is not None:
                f.add_field("name", name)
            if tags:
                f.add_field("tags", ",".join(tags))
            return f

        return cast(Document, await self._request("POST", "/v1/documents", form=form, idempotency_key=idempotency_key))

    async def get_document(self, document_id: str) -> Document:
        return cast(Document, await self._request("GET", f"/v1/documents/{_id(document_id)}"))

    async def list_documents(self, limit: int | None = None, cursor: str | None = None) -> Page[Document]:
        params = _present(limit=limit, cursor=cursor)
        return cast(Page[Document], await self._request("GET", "/v1/documents", params=params))

    def iter_documents(self, *, page_size: int | None = None) -> AsyncIterator[Document]:
        return cast(AsyncIterator[Document], self._iterate("/v1/documents", _present(limit=page_size)))

    async def delete_document(self, document_id: str) -> dict[str, Any]:
        return await self._request("DELETE", f"/v1/documents/{_id(document_id)}")

    async def wait_document(
        self, document_id: str, timeout_s: float = DOCUMENT_WAIT_S, *, poll_s: float = DOCUMENT_POLL_S
    ) -> Document:
        """Poll until the document is `ready`; a `failed` one raises DuetError("document_failed"), a slow one
        TimeoutError."""
        document = await self._wait("document", document_id, self.get_document, timeout_s, poll_s)
        return cast(Document, document)

    async def search(
        self,
        query: str,
        *,
        document_ids: list[str] | None = None,
        tags: list[str] | None = None,
        top_k: int | None = None,
        strategy: Strategy | None = None,
    ) -> KnowledgeResults:
        """The knowledge base's best chunks for `query` (what a replica would be given), among the ready
        documents, narrowed to `document_ids` and/or `tags`; the server's defaults are top_k 5, `balanced`."""
        body = _present(query=query, document_ids=document_ids, tags=tags, top_k=top_k, strategy=strategy)
        return cast(KnowledgeResults, await self._request("POST", "/v1/knowledge/search", body=body))

    # --- memories (per memory store: the name a conversation gives as `memory_store`) ---

    async def list_memories(self, store: str, limit: int | None = None, cursor: str | None = None) -> Page[Memory]:
        params = _present(limit=limit, cursor=cursor)
        return cast(Page[Memory], await self._request("GET", _memories(store), params=params))

    def iter_memories(self, store: str, *, page_size: int | None = None) -> AsyncIterator[Memory]:
        return cast(AsyncIterator[Memory], self._iterate(_memories(store), _present(limit=page_size)))

    async def add_memory(
        self, store: str, text: str, pinned: bool = False, *, idempotency_key: str | None = None
    ) -> Memory:
        """Remember `text` in `store`; a pinned memory enters every conversation of the store."""
        body = {"text": text, "pinned": pinned}
        return cast(Memory, await self._request("POST", _memories(store), body=body, idempotency_key=idempotency_key))

    async def delete_memory(self, store: str, memory_id: str) -> dict[str, Any]:
        return await self._request("DELETE", f"{_memories(store)}/{_id(memory_id)}")

    # --- guardrails ---

    async def create_guardrail(
        self, body: Mapping[str, Any] | None = None, /, *, idempotency_key: str | None = None, **fields: Any
    ) -> Guardrail:
        """`{name, applies_to: user|replica|both, rule: {type, ...}, fallback_text}`, as a mapping and/or keywords
        (keywords override the mapping). Personas name it in `guardrail_ids`."""
        merged = {**(body or {}), **fields}
        created = await self._request("POST", "/v1/guardrails", body=merged, idempotency_key=idempotency_key)
        return cast(Guardrail, created)

    async def get_guardrail(self, guardrail_id: str) -> Guardrail:
        return cast(Guardrail, await self._request("GET", f"/v1/guardrails/{_id(guardrail_id)}"))

    async def list_guardrails(self, limit: int | None = None, cursor: str | None = None) -> Page[Guardrail]:
        params = _present(limit=limit, cursor=cursor)
        return cast(Page[Guardrail], await self._request("GET", "/v1/guardrails", params=params))

    def iter_guardrails(self, *, page_size: int | None = None) -> AsyncIterator[Guardrail]:
        return cast(AsyncIterator[Guardrail], self._iterate("/v1/guardrails", _present(limit=page_size)))

    async def delete_guardrail(self, guardrail_id: str) -> dict[str, Any]:
        return await self._request("DELETE", f"/v1/guardrails/{_id(guardrail_id)}")

    # --- objectives ---

    async def create_objectives(
        self,
        objectives: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        /,
        *,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Objectives:
        """An objective set: the whole body (`{"objectives": [...], "name"?}`) or just the list of objectives
        (`[{name, prompt, confirmation_mode?, output_variables?, next_required?, next_conditional?}]`, the first
        is where a conversation starts); `name` overrides the body's. Personas name it in `objectives_id`."""
        if isinstance(objectives, Mapping):
            body: dict[str, Any] = dict(objectives)
        else:
            body = {"objectives": [dict(o) for o in objectives]}
        body.update(_present(name=name))
        created = await self._request("POST", "/v1/objectives", body=body, idempotency_key=idempotency_key)
        return cast(Objectives, created)

    async def get_objectives(self, objectives_id: str) -> Objectives:
        return cast(Objectives, await self._request("GET", f"/v1/objectives/{_id(objectives_id)}"))

    async def list_objectives(self, limit: int | None = None, cursor: str | None = None) -> Page[Objectives]:
        params = _present(limit=limit, cursor=cursor)
        return cast(Page[Objectives], await self._request("GET", "/v1/objectives", params=params))

    def iter_objectives(self, *, page_size: int | None = None) -> AsyncIterator[Objectives]:
        return cast(AsyncIterator[Objectives], self._iterate("/v1/objectives", _present(limit=page_size)))

    async def delete_objectives(self, objectives_id: str) -> dict[str, Any]:
        return await self._request("DELETE", f"/v1/objectives/{_id(objectives_id)}")

    # --- transport ---

    async def _wait(
        self,
        what: str,
        object_id: str,
        get: Callable[[str], Awaitable[Mapping[str, Any]]],
        timeout_s: float,
        poll_s: float,
    ) -> Mapping[str, Any]:
        """Poll `get(object_id)` until its `status` is `ready`; `failed` raises DuetError("<what>_failed"), the
        deadline TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while True:
            item = await get(object_id)
            if item["status"] == "ready":
                return item
            if item["status"] == "failed":
                reason = item.get("error") or "no reason given"
                raise DuetError(f"{what}_failed", f"{what} {object_id} failed: {reason}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} {object_id} still {item['status']!r} after {timeout_s:g} s")
            await asyncio.sleep(min(poll_s, left))

    async def _iterate(self, path: str, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            page = await self._request("GET", path, params={**params, **_present(cursor=cursor)})
            for item in page.get("data") or []:
                yield item
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = dict(self._headers)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        query = {k: str(v) for k, v in (params or {}).items()}
        url = self.url + path
        for attempt in range(self._retries + 1):
            try:
                async with self._http().request(
                    method,
                    url,
                    headers=headers,
                    params=query,
                    json=body if form is None and body is not None else None,
                    data=form() if form is not None else None,
                ) as resp:
                    raw = await resp.read()
                    if 200 <= resp.status < 300:
                        return _body(resp.status, raw)
                    error = _api_error(resp.status, raw, resp.headers.get("Retry-After"))
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise ServerUnavailable(f"{method} {url}: {exc or type(exc).__name__}") from exc
            if error.status != 429 or attempt >= self._retries:
                raise error
            wait = error.retry_after if error.retry_after is not None else DEFAULT_RETRY_WAIT_S * 2**attempt
            await asyncio.sleep(min(wait, self._max_retry_wait_s))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use: aiohttp wants a running event loop
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session


def image_type(data: bytes) -> str:
    """The portrait's content type from its magic bytes; anything else goes as octet-stream and the server
    answers 415, the one place that decides what it accepts."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return "application/octet-stream"


def _id(value: str) -> str:
    # Quoted so that an id can never reach another route (`../keys`).
    return quote(value, safe="")


def _memories(store: str) -> str:
    return f"/v1/memory-stores/{_id(store)}/memories"


def _present(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _body(status: int, raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}  # 202/204 with no body
    try:
        data = json.loads(raw)
    except ValueError:
        raise DuetError("bad_response", f"the server answered {status} with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise DuetError("bad_response", f"the server answered {status} with JSON that is not an object")
    return data


def _api_error(status: int, raw: bytes, retry_after: str | None) -> ApiError:
    wait = _retry_after_s(retry_after)
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str):
        field = error.get("field")
        return ApiError(status, error["code"], error["message"], field if isinstance(field, str) else None, wait)
    text = raw.decode("utf-8", errors="replace").strip()[:200]
    return ApiError(status, f"http_{status}", text or f"HTTP {status}", None, wait)


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None
