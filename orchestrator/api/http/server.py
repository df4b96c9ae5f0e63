"""The REST control plane on aiohttp: routes come from the OpenAPI document (`openapi.yaml`, the source of
truth), one thin handler per operation (`routes.py`).

Every request passes, in order: the error mapper (typed errors → the JSON error body and its status; an
unexpected exception → 500 with no internals), authentication (`Authorization: Bearer <api key>` → the
tenant), the key's rate limit (429 + `Retry-After`), the body (size → 413, media type → 415, JSON → 400,
schema → 422 naming the field), `Idempotency-Key` on creates, then the handler. Handlers call the services in
`orchestrator/control/`; only `orchestrator/store/` touches the database.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from orchestrator.api.health import CachedProbe, Readiness
from orchestrator.api.http import openapi
from orchestrator.api.http.forward import forward
from orchestrator.api.limits import TokenBucket
from orchestrator.api.webrtc.calls import WebRtcCalls
from orchestrator.config import Settings
from orchestrator.control.conversations import Conversations, HeldElsewhere, request_digest
from orchestrator.control.tenants import KeyChecks, authenticate
from orchestrator.errors import DuetError, QuotaExceeded
from orchestrator.store.records import ApiKey, Tenant
from orchestrator.store.store import BadCursor, Store, utc_now

log = logging.getLogger("duet.api")

STATUS = {
    "bad_request": 400,
    "unauthenticated": 401,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "unsupported_media_type": 415,
    "invalid": 422,
    "bad_option": 422,
    "bad_interaction": 422,
    "rate_limited": 429,
    "unavailable": 503,
    "model_unavailable": 503,
    "server_busy": 503,
    "draining": 503,
}
KEYS_TRACKED = 10_000  # API keys whose request rate is remembered (least recently used first out)
MAX_DEPTH = 64  # JSON nesting a body may have: the validators and the store recurse (no real body nests so deep)
_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins real pairs: what is left is half of one


class ApiError(DuetError):
    """An HTTP-level refusal with its own code (bad_request, too_large, unsupported_media_type, not_found)."""

    fatal = False

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


def error_response(
    code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return web.json_response({"error": body}, status=STATUS.get(code, 500), headers=headers)


@dataclass
class Caller:
    tenant: Tenant
    key: ApiKey


Handler = Callable[[web.Request, Caller, Any], Awaitable[web.StreamResponse]]


class ControlPlane:
    """What the handlers share: the store, the services, the settings."""

    def __init__(self, store: Store, settings: Settings, conversations: Conversations) -> None:
        self.store = store
        self.settings = settings
        self.conversations = conversations
        self.templates = conversations.templates
        self._rates: OrderedDict[str, TokenBucket] = OrderedDict()
        self.keys = KeyChecks(store)
        self.calls: WebRtcCalls | None = None  # browser calls, once the session service exists
        # `GET /v1/health/ready`: the store alone here; `duet serve` gives the whole server's (Triton, drain)
        self.readiness = Readiness({"store": store_probe(store)})

    def admit(self, key_id: str) -> None:
        rate = self.settings.api.key_requests_per_s
        if rate <= 0:
            return
        bucket = self._rates.pop(key_id, None) or TokenBucket(2 * rate, rate)
        self._rates[key_id] = bucket
        while len(self._rates) > KEYS_TRACKED:
            self._rates.popitem(last=False)
        if not bucket.admit(1, time.monotonic()):
            raise QuotaExceeded(f"this API key is over {rate:g} requests per second", retry_after_s=1.0 / rate + 0.5)


def store_probe(store: Store) -> CachedProbe:
    return CachedProbe("store", store.ping, "the store does not answer")


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except DuetError as err:
        headers = None
        if isinstance(err, QuotaExceeded):
            headers = {"Retry-After": str(max(int(err.retry_after_s + 0.999), 1))}
        status = STATUS.get(err.code)
        if status is None:
            log.error("%s %s: %s (%s)", request.method, request.path, err.message, err.code)
            return error_response("unavailable" if err.code.endswith("unavailable") else "internal", err.message)
        return error_response(err.code, err.message, getattr(err, "field", None), headers)
    except BadCursor as err:
        return error_response("invalid", str(err), "cursor")
    except web.HTTPRequestEntityTooLarge:
        return error_response("too_large", "the request body is too large")
    except web.HTTPNotFound:
        return error_response("not_found", f"no route {request.path}")
    except web.HTTPMethodNotAllowed as err:
        return error_response(
            "bad_request",
            f"{request.method} is not allowed on {request.path} (allowed: {', '.join(sorted(err.allowed_methods))})",
        )
    except web.HTTPException:
        raise
    except ConnectionResetError:  # the client hung up mid-request: nobody to answer, nothing went wrong here
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response("internal", "internal error")


async def _json_body(request: web.Request, op: openapi.Operation, limit: int) -> Any:
    if not request.can_read_body:
        if op.request_required:
            raise ApiError("bad_request", "a JSON body is required")
        return None
    ctype = request.content_type
    if ctype not in op.request_content_types:
        raise ApiError("unsupported_media_type", f"the body must be {' or '.join(op.request_content_types)}")
    if request.content_length is not None and request.content_length > limit:
        raise ApiError("too_large", f"the body is over {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise ApiError("too_large", f"the body is over {limit} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ApiError("bad_request", f"the body is not valid JSON: {err}") from err
    # (NUL and surrogates come as \u escapes, or as bytes 00 (UTF-16/32) or ED (surrogatepass); depth as brackets)
    if any(b in raw for b in (b"\\u", b"\x00", b"\xed")) or raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        _check_storable(body)
    return body


def _check_storable(body: Any) -> None:
    """Refuses what a store cannot hold or walk: a NUL or half a surrogate pair in a string or a field name
    (PostgreSQL takes neither), and nesting deeper than MAX_DEPTH."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(body, ())]
    while stack:
        node, parts = stack.pop()
        if len(parts) > MAX_DEPTH:
            raise ApiError("invalid", f"the body nests deeper than {MAX_DEPTH} levels", openapi._path(parts))
        if isinstance(node, dict):
            stack.extend((value, (*parts, key)) for key, value in node.items())
            node = "".join(node)  # the field names
        elif isinstance(node, list):
            stack.extend((value, (*parts, i)) for i, value in enumerate(node))
        if isinstance(node, str) and ("\x00" in node or _SURROGATE.search(node)):
            where = openapi._path(parts)
            raise ApiError("invalid", f"{_subject(where)} holds a NUL character or half a surrogate pair", where)


def _subject(where: str) -> str:
    return "the body" if where == "$" else where


def _wrap(
    plane: ControlPlane, op: openapi.Operation, handler: Handler
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    limit = plane.settings.api.max_body_bytes
    json_op = op.request_schema is not None

    async def run(request: web.Request) -> web.StreamResponse:
        caller: Caller | None = None
        if op.auth:
            tenant, key = await authenticate(plane.store, request.headers.get("Authorization"), checks=plane.keys)
            plane.admit(key.id)
            caller = Caller(tenant, key)
        body: Any = None
        if json_op and not request.content_type.startswith("multipart/"):  # (a form is the handler's to read)
            body = await _json_body(request, op, limit)
            if body is not None or op.request_required:
                openapi.validate_request(op.operation_id, body)
        idem = request.headers.get("Idempotency-Key") if op.idempotent else None
        try:
            if caller is not None and idem is not None:
                return await _idempotent(plane, op, caller, idem, body, request, handler)
            return await handler(request, caller, body)  # type: ignore[arg-type]
        except HeldElsewhere as elsewhere:  # its session runs on another orchestrator: that one answers
            sent = None if body is None else json.dumps(body).encode()  # (the body stream is read already)
            return await forward(request, elsewhere.url, plane.conversations.instance_id, sent)

    return run


async def _idempotent(
    plane: ControlPlane,
    op: openapi.Operation,
    caller: Caller,
    key: str,
    body: Any,
    request: web.Request,
    handler: Handler,
) -> web.StreamResponse:
    """A retried create with the same `Idempotency-Key` gets the first answer; the same key with another body
    is a conflict."""
    if not 1 <= len(key) <= 255:
        raise ApiError("invalid", "Idempotency-Key must be 1..255 characters", "Idempotency-Key")
    digest = request_digest(body)
    kept = await plane.store.idempotent_answer(caller.tenant.id, op.operation_id, key)
    if kept is not None:
        if kept[0] != digest:
            raise ApiError("conflict", "this Idempotency-Key was used with another request body")
        return web.Response(
            status=kept[1], body=kept[2], content_type="application/json", headers={"Idempotent-Replayed": "true"}
        )
    response = await handler(request, caller, body)
    if isinstance(response, web.Response) and 200 <= response.status < 300 and isinstance(response.body, bytes):
        await plane.store.keep_answer(
            caller.tenant.id, op.operation_id, key, digest, response.status, response.body.decode(), utc_now()
        )
    return response


def make_app(plane: ControlPlane, handlers: dict[str, Handler]) -> web.Application:
    """The aiohttp application: one route per operation of the document."""
    # multipart uploads are the largest bodies; JSON bodies are held to `api.max_body_bytes` by `_json_body`
    largest = max(plane.settings.api.max_portrait_bytes, plane.settings.intel.max_document_bytes)
    app = web.Application(middlewares=[_errors], client_max_size=largest + (64 << 10))
    missing = [op.operation_id for op in openapi.operations() if op.operation_id not in handlers]
    if missing:
        raise RuntimeError(f"operations without a handler: {missing}")
    for op in openapi.operations():
        app.router.add_route(op.method, op.aiohttp_path, _wrap(plane, op, handlers[op.operation_id]))
    return app
