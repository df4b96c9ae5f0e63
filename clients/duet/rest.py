"""Async client for Duet's REST control plane (`/v1/...`): personas, faces, conversations, keys.

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
from collections.abc import AsyncIterator, Callable, Mapping
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

Level = Literal["low", "medium", "high"]


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
        deadline = time.monotonic() + timeout_s
        while True:
            face = await self.get_face(face_id)
            if face["status"] == "ready":
                return face
            if face["status"] == "failed":
                raise DuetError("face_failed", f"face {face_id} failed: {face.get('error') or 'no reason given'}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"face {face_id} still {face['status']!r} after {timeout_s:g} s")
            await asyncio.sleep(min(poll_s, left))

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

    # --- transport ---

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
