"""`OpenAIChat`: the `LanguageModel` protocol over any OpenAI-compatible endpoint (hosted or local).

`POST {base_url}/chat/completions` with `stream: true`; the reply arrives as server-sent events, one
`data: {json}` event per delta, ended by `data: [DONE]`. Closing the generator early closes the HTTP
response (and its connection), which is how such servers learn to stop generating.

Errors are typed: an unreachable endpoint, a timeout or an HTTP 5xx is `ModelUnavailable`; an HTTP 4xx
(wrong key, unknown model, bad request) is `BadOption`, because it will not get better by retrying. Both carry
the endpoint's own message.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp

from orchestrator.config import LlmSettings
from orchestrator.errors import BadOption, DuetError, ModelUnavailable
from orchestrator.models.ports import LlmRequest

MAX_EVENT_BYTES = 1 << 20  # one SSE event; a delta is a few hundred bytes


class SseParser:
    """Incremental server-sent-events parser: feed bytes as they arrive, get each event's data when complete."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        events: list[str] = []
        while True:
            cut = self._buffer.find(b"\n")
            if cut < 0:
                if len(self._buffer) > MAX_EVENT_BYTES:
                    raise ModelUnavailable("the LLM endpoint sent an over-long server-sent-events line")
                return events
            line, self._buffer = self._buffer[:cut].rstrip(b"\r"), self._buffer[cut + 1 :]
            if not line:  # a blank line ends the event
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append((value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace"))
            # other fields (event:, id:, retry:) and comments (":" keep-alives) carry nothing we need


def delta_text(event: str) -> str:
    """The text of one streamed chat-completion chunk; an `error` object in the stream raises."""
    try:
        chunk = json.loads(event)
    except json.JSONDecodeError as exc:
        raise ModelUnavailable(f"the LLM endpoint sent an event that is not JSON: {event[:200]!r}") from exc
    if not isinstance(chunk, dict):
        raise ModelUnavailable(f"the LLM endpoint sent an unexpected event: {event[:200]!r}")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise ModelUnavailable(f"the LLM endpoint failed mid-reply: {message}")
    choices = chunk.get("choices") or [{}]
    content = (choices[0].get("delta") or {}).get("content")
    return content if isinstance(content, str) else ""


def json_schema(text: str) -> dict[str, Any]:
    """`LlmRequest.json_schema` parsed for `response_format`; text that is not a JSON object is `BadOption`."""
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadOption(f"the reply's JSON schema is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise BadOption("the reply's JSON schema must be a JSON object (a JSON Schema)")
    return schema


def _endpoint_message(body: str) -> str:
    """The `error.message` of an OpenAI-style error body, or the start of whatever the endpoint sent."""
    try:
        data: Any = json.loads(body)
    except json.JSONDecodeError:
        return body.strip()[:300]
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:500]
    if isinstance(data, dict) and "detail" in data:  # FastAPI-style servers
        return json.dumps(data["detail"])[:300]
    return body.strip()[:300]


class OpenAIChat:
    """A `LanguageModel` backed by `{openai_base_url}/chat/completions`. Share one instance across sessions.

    The request's `model` (a persona's `llm_model`), when set, names the endpoint's model; else
    `llm.openai_model` does (and when both are empty the field is left out: the endpoint's default)."""

    def __init__(
        self, settings: LlmSettings, env: Mapping[str, str] | None = None, extra_body: Mapping[str, Any] | None = None
    ) -> None:
        """`env` defaults to the process environment (only the API key is read from it); `extra_body` adds
        endpoint-specific request fields (e.g. `seed`, `top_p`, `logit_bias`) to every request."""
        if not settings.openai_base_url:
            raise BadOption("llm.openai_base_url is empty; the OpenAI-compatible backend needs an endpoint")
        self.url = settings.openai_base_url.rstrip("/") + "/chat/completions"
        self.model = settings.openai_model
        self.extra_body = dict(extra_body or {})
        # The settings hold the name of the variable, never the key itself, so `duet config` cannot leak it.
        key = (os.environ if env is None else env).get(settings.openai_api_key_env, "")
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        # No total limit: a long reply is fine as long as pieces keep coming.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.timeout_s, sock_connect=settings.timeout_s, sock_read=settings.timeout_s
        )
        self.timeout_s = settings.timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _body(self, request: LlmRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            **self.extra_body,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": True,
        }
        model = request.model or self.model  # a persona's `llm_model` overrides `llm.openai_model`
        if model:
            body["model"] = model
        if request.stop:
            body["stop"] = list(request.stop)
        if request.json_schema:
            # OpenAI's structured outputs (also llama.cpp's llama-server, vLLM); an endpoint that does not know
            # `json_schema` answers with an error, which is better than a free-text reply the caller cannot parse.
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": json_schema(request.json_schema), "strict": True},
            }
        return body

    async def generate(self, request: LlmRequest) -> AsyncGenerator[str, None]:
        """Stream the reply's text pieces; closing the generator early closes the HTTP response. A prefill
        (`max_tokens` 0: the local model's cache warm-up) has no counterpart here: nothing is sent, nothing
        comes back (a persona's own endpoint is called by sessions of a server whose backend is local)."""
        if request.max_tokens == 0:
            return
        if self._session is None:  # created on first use: aiohttp wants a running event loop
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = dict(self._headers)
        if request.request_id:
            headers["X-Request-Id"] = request.request_id
        try:
            async with self._session.post(self.url, json=self._body(request), headers=headers) as response:
                if response.status != 200:
                    message = _endpoint_message(await response.text(errors="replace"))
                    error = BadOption if 400 <= response.status < 500 else ModelUnavailable
                    raise error(f"LLM endpoint {self.url} answered HTTP {response.status}: {message}")
                parser = SseParser()
                try:
                    async for chunk in response.content.iter_any():
                        for event in parser.feed(chunk):
                            if event.strip() == "[DONE]":
                                return
                            text = delta_text(event)
                            if text:
                                yield text
                finally:
                    # Ended early (closed, cancelled, failed): drop the connection so the server stops.
                    if not response.content.at_eof():
                        response.close()
            raise ModelUnavailable(f"LLM endpoint {self.url} ended the stream without [DONE]")
        except DuetError:
            raise
        except TimeoutError as exc:
            raise ModelUnavailable(f"LLM endpoint {self.url} sent nothing for {self.timeout_s:.0f}s") from exc
        except aiohttp.ClientError as exc:
            raise ModelUnavailable(f"LLM endpoint {self.url} is not reachable: {exc}") from exc
