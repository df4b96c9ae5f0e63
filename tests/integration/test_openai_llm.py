"""`OpenAIChat` against a real OpenAI-compatible server: llama-cpp-python's own, serving the same GGUF."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest

from orchestrator.config import REPO_ROOT, LlmSettings
from orchestrator.errors import BadOption, ModelUnavailable
from orchestrator.models.launcher import free_port
from orchestrator.models.openai_llm import OpenAIChat
from orchestrator.models.ports import ChatMessage, LlmRequest
from tests.conftest import require_module

pytestmark = pytest.mark.integration

GGUF = REPO_ROOT / "model_repository" / "llm" / "1" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = ChatMessage("system", "You are a helpful assistant. Answer briefly.")
EOS_TOKEN = "2"  # SmolLM2's <|im_end|>: biased away when a test needs a reply that would run to max_tokens


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """`python -m llama_cpp.server` on a free loopback port; yields its OpenAI base URL."""
    require_module("llama_cpp.server.app", "llama-cpp-python[server] (the dev extra: fastapi, uvicorn, ...)")
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(GGUF), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--verbose", "false"]
    # By default a new request interrupts the running one, which would hide a stream we failed to close.
    cmd += ["--interrupt_requests", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else "server exited"
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "llama_cpp.server did not start within 60 s"
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ask(question: str, **kwargs: Any) -> LlmRequest:
    return LlmRequest(messages=(SYSTEM, ChatMessage("user", question)), **kwargs)


async def reply(chat: OpenAIChat, request: LlmRequest) -> list[str]:
    try:
        return [piece async for piece in chat.generate(request)]
    finally:
        await chat.close()


def test_streams_a_reply(endpoint: str) -> None:
    chat = OpenAIChat(LlmSettings(backend="openai", openai_base_url=endpoint))
    pieces = asyncio.run(reply(chat, ask("What is the capital of France?", max_tokens=48)))
    assert len(pieces) > 1 and "".join(pieces).strip()


def test_max_tokens_and_stop_are_honoured(endpoint: str) -> None:
    settings = LlmSettings(backend="openai", openai_base_url=endpoint)
    long = ask("Write a long story about a dragon who learns to bake bread.", max_tokens=6)
    assert 1 <= len(asyncio.run(reply(OpenAIChat(settings), long))) <= 6

    question = "List the days of the week, separated by commas."
    free = "".join(asyncio.run(reply(OpenAIChat(settings), ask(question, temperature=0.0))))
    assert len(free) > 12, free
    stop = free[5:11]
    cut = "".join(asyncio.run(reply(OpenAIChat(settings), ask(question, temperature=0.0, stop=(stop,)))))
    assert cut == free[: free.find(stop)]


def test_closing_early_closes_the_response_and_frees_the_server(endpoint: str) -> None:
    """The server serves one completion at a time (no interrupts). A reply forced to run to 1500 tokens (end
    of turn biased away) is closed after its first piece; the next request must not wait for those tokens.
    Checked the other way by hand: with the first stream left open, the next request waited over 15 s."""
    settings = LlmSettings(backend="openai", openai_base_url=endpoint)

    async def close_then_ask() -> tuple[str, float, list[str]]:
        endless = OpenAIChat(settings, extra_body={"logit_bias": {EOS_TOKEN: -100.0}})
        try:
            it = endless.generate(ask("Tell me a story.", max_tokens=1500, temperature=0.8))
            assert isinstance(it, AsyncGenerator)
            first: str = await anext(it)
            await it.aclose()
        finally:
            await endless.close()
        t0 = time.monotonic()
        short = await reply(OpenAIChat(settings), ask("Say hello.", max_tokens=8))
        return first, time.monotonic() - t0, short

    first, waited, short = asyncio.run(close_then_ask())
    assert first and short
    # 1500 tokens take well over 10 s here (about 40 tokens/s on this CPU, slower under load).
    assert waited < 10.0, f"the next request waited {waited:.1f} s: the closed one kept generating"


def test_cancelling_the_consuming_task_closes_the_stream(endpoint: str) -> None:
    settings = LlmSettings(backend="openai", openai_base_url=endpoint)

    async def cancel_midway() -> float:
        chat = OpenAIChat(settings, extra_body={"logit_bias": {EOS_TOKEN: -100.0}})
        got = asyncio.Event()

        async def consume() -> None:
            async for _ in chat.generate(ask("Tell me a story.", max_tokens=1500)):
                got.set()

        task = asyncio.create_task(consume(), name="llm-consumer")
        await asyncio.wait_for(got.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await chat.close()
        t0 = time.monotonic()
        assert await reply(OpenAIChat(settings), ask("Say hello.", max_tokens=8))
        return time.monotonic() - t0

    assert asyncio.run(cancel_midway()) < 10.0


def test_errors_are_typed_with_the_endpoint_message(endpoint: str) -> None:
    bad_role = LlmRequest(messages=(ChatMessage("wizard", "hi"),))
    chat = OpenAIChat(LlmSettings(backend="openai", openai_base_url=endpoint))
    # llama-cpp-python's server answers a request it cannot validate with HTTP 500 and pydantic's message.
    with pytest.raises(ModelUnavailable, match=r"(?s)HTTP 500: .*wizard"):
        asyncio.run(reply(chat, bad_role))

    wrong_path = OpenAIChat(LlmSettings(backend="openai", openai_base_url=endpoint.removesuffix("/v1")))
    with pytest.raises(BadOption, match="HTTP 404"):
        asyncio.run(reply(wrong_path, ask("hi")))

    nowhere = OpenAIChat(LlmSettings(backend="openai", openai_base_url=f"http://127.0.0.1:{free_port()}/v1"))
    with pytest.raises(ModelUnavailable, match="not reachable"):
        asyncio.run(reply(nowhere, ask("hi")))


def test_a_json_schema_is_sent_as_structured_output_and_refused_loudly_here(endpoint: str) -> None:
    """`json_schema` goes as OpenAI's `response_format: {"type": "json_schema", ...}`. llama-cpp-python's
    server (0.3.x) knows only "text" and "json_object" there, so it refuses the request; the caller gets an
    error naming the field, never a free-text reply it would then fail to parse. (llama.cpp's own
    llama-server, vLLM and OpenAI accept it.)"""
    schema = '{"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}'
    chat = OpenAIChat(LlmSettings(backend="openai", openai_base_url=endpoint))
    with pytest.raises((ModelUnavailable, BadOption), match=r"(?s)HTTP \d+: .*json_schema"):
        asyncio.run(reply(chat, ask("Is the sky blue?", max_tokens=16, json_schema=schema)))
    assert asyncio.run(reply(OpenAIChat(LlmSettings(backend="openai", openai_base_url=endpoint)), ask("Say hi.")))


def test_the_api_key_comes_from_the_named_variable_only() -> None:
    settings = LlmSettings(backend="openai", openai_base_url="http://127.0.0.1:1/v1", openai_api_key_env="DUET_T_KEY")
    assert OpenAIChat(settings, env={"DUET_T_KEY": "sk-test"})._headers["Authorization"] == "Bearer sk-test"
    assert "Authorization" not in OpenAIChat(settings, env={"OPENAI_API_KEY": "sk-other"})._headers
    with pytest.raises(BadOption, match="openai_base_url"):
        OpenAIChat(LlmSettings())
