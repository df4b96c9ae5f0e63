"""The decoupled `llm` model in a real tritonserver: streaming, limits, stop strings, errors, cancellation."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient

from orchestrator.config import TritonSettings
from orchestrator.errors import ModelUnavailable
from orchestrator.models.launcher import EmbeddedTriton
from orchestrator.models.ports import ChatMessage, LlmRequest
from orchestrator.models.triton import TritonModels

pytestmark = pytest.mark.integration

SYSTEM = ChatMessage("system", "You are a helpful assistant. Answer briefly.")


@pytest.fixture(scope="module")
def llm_server() -> Iterator[EmbeddedTriton]:
    with EmbeddedTriton(TritonSettings(models=("llm",))) as server:
        yield server


def counters(server: EmbeddedTriton) -> dict[str, float]:
    """Our custom counters on Triton's metrics endpoint, summed over the model's instances."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(duet_llm_\w+)\{([^}]*)\} (\S+)$", text, re.M):
        if 'model="llm"' in labels:
            out[name] = out.get(name, 0.0) + float(value)
    return out


async def collect(it: AsyncIterator[str]) -> list[str]:
    return [piece async for piece in it]


async def with_models(server: EmbeddedTriton, fn: Any) -> Any:
    models = TritonModels(server.grpc_url, timeout_s=30.0)
    try:
        return await fn(models)
    finally:
        await models.close()


def ask(question: str, **kwargs: Any) -> LlmRequest:
    return LlmRequest(messages=(SYSTEM, ChatMessage("user", question)), **kwargs)


def test_streams_a_reply_in_pieces(llm_server: EmbeddedTriton) -> None:
    before = counters(llm_server)
    pieces = asyncio.run(
        with_models(llm_server, lambda m: collect(m.generate(ask("What is the capital of France?", max_tokens=48))))
    )
    after = counters(llm_server)
    assert len(pieces) > 1, pieces  # streamed, not one blob
    assert "".join(pieces).strip()
    tokens = after["duet_llm_generated_tokens_total"] - before.get("duet_llm_generated_tokens_total", 0.0)
    assert 1 <= tokens <= 48


def test_max_tokens_is_honoured(llm_server: EmbeddedTriton) -> None:
    before = counters(llm_server)["duet_llm_generated_tokens_total"]
    request = ask("Write a long story about a dragon who learns to bake bread.", max_tokens=5)
    pieces = asyncio.run(with_models(llm_server, lambda m: collect(m.generate(request))))
    assert 1 <= len(pieces) <= 5
    assert counters(llm_server)["duet_llm_generated_tokens_total"] - before == 5


def test_stop_sequences_cut_the_reply_even_across_tokens(llm_server: EmbeddedTriton) -> None:
    question = "List the days of the week, separated by commas."
    free = "".join(asyncio.run(with_models(llm_server, lambda m: collect(m.generate(ask(question, temperature=0.0))))))
    assert len(free) > 12, free
    # A stop string that starts inside one token and ends in a later one (greedy decoding: same reply).
    stop = free[5:11]
    cut = "".join(
        asyncio.run(
            with_models(llm_server, lambda m: collect(m.generate(ask(question, temperature=0.0, stop=(stop,)))))
        )
    )
    assert cut == free[: free.find(stop)]


def test_bad_messages_json_is_a_clear_error(llm_server: EmbeddedTriton) -> None:
    async def raw(messages: bytes) -> str:
        client = grpcclient.InferenceServerClient(llm_server.grpc_url)

        def tensor(name: str, dtype: str, value: Any) -> grpcclient.InferInput:
            t = grpcclient.InferInput(name, [1, 1], dtype)
            t.set_data_from_numpy(np.array([[value]], dtype=np.object_ if dtype == "BYTES" else None))
            return t

        async def one() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": "llm",
                "inputs": [
                    tensor("MESSAGES", "BYTES", messages),
                    tensor("MAX_TOKENS", "INT32", np.int32(8)),
                    tensor("TEMPERATURE", "FP32", np.float32(0.3)),
                    tensor("STOP", "BYTES", b"[]"),
                ],
            }

        try:
            async for _, error in client.stream_infer(inputs_iterator=one()):
                if error is not None:
                    return str(error.message())
            return ""
        finally:
            await client.close()

    assert "MESSAGES is not valid JSON" in asyncio.run(asyncio.wait_for(raw(b'[{"role": "user"'), 30))

    bad_role = LlmRequest(messages=(ChatMessage("wizard", "hi"),))
    with pytest.raises(ModelUnavailable, match="role"):
        asyncio.run(with_models(llm_server, lambda m: collect(m.generate(bad_role))))


def test_closing_the_stream_cancels_generation_in_the_model(llm_server: EmbeddedTriton) -> None:
    """After the first piece the client closes its iterator: Triton cancels, the model stops generating."""
    before = counters(llm_server)
    request = ask("Write a very long story about a dragon who learns to bake bread.", max_tokens=400, temperature=0.8)

    async def first_piece_then_close(models: TritonModels) -> str:
        it = models.generate(request)
        assert isinstance(it, AsyncGenerator)  # closable, as LanguageModel promises
        piece: str = await anext(it)
        await it.aclose()
        return piece

    assert asyncio.run(with_models(llm_server, first_piece_then_close))
    deadline = time.monotonic() + 10
    while counters(llm_server).get("duet_llm_cancelled_requests_total", 0.0) <= before.get(
        "duet_llm_cancelled_requests_total", 0.0
    ):
        assert time.monotonic() < deadline, "the model never saw the cancellation"
        time.sleep(0.1)
    settled = counters(llm_server)["duet_llm_generated_tokens_total"]
    time.sleep(1.0)
    assert counters(llm_server)["duet_llm_generated_tokens_total"] == settled  # no longer growing
    spent = settled - before.get("duet_llm_generated_tokens_total", 0.0)
    assert spent < 60, f"{spent} tokens were generated for a request cancelled after its first piece"


def test_two_sessions_stream_concurrently(llm_server: EmbeddedTriton) -> None:
    async def timed(models: TritonModels, question: str) -> tuple[float, float, str]:
        first, text = 0.0, ""
        async for piece in models.generate(ask(question, max_tokens=40)):
            first = first or time.monotonic()
            text += piece
        return first, time.monotonic(), text

    async def both(models: TritonModels) -> list[tuple[float, float, str]]:
        return list(
            await asyncio.gather(timed(models, "Tell me about the sea."), timed(models, "Tell me about mountains."))
        )

    (a_first, a_end, a_text), (b_first, b_end, b_text) = asyncio.run(with_models(llm_server, both))
    assert a_text.strip() and b_text.strip()
    # Each session's first piece came before the other finished: they were served side by side.
    assert a_first < b_end and b_first < a_end


def test_a_sessions_next_turn_reuses_its_cached_history(llm_server: EmbeddedTriton) -> None:
    """Another session's request in between must not evict this session's KV cache (the pool has 2 contexts)."""

    async def conversation(models: TritonModels) -> list[tuple[float, float]]:
        history = [ChatMessage("system", "You are Ada, a friendly voice companion. Keep answers short.")]
        seen = []
        for question in ("Hi, I went for a walk by the river.", "I saw a heron there.", "What should I bring?"):
            history.append(ChatMessage("user", question))
            before = counters(llm_server)
            reply = "".join(await collect(models.generate(LlmRequest(tuple(history), max_tokens=16))))
            after = counters(llm_server)
            history.append(ChatMessage("assistant", reply))
            seen.append(
                (
                    after["duet_llm_prompt_tokens_total"] - before["duet_llm_prompt_tokens_total"],
                    after["duet_llm_cached_prompt_tokens_total"] - before["duet_llm_cached_prompt_tokens_total"],
                )
            )
            await collect(models.generate(ask(f"An unrelated question number {len(seen)}?", max_tokens=4)))
        return seen

    turns = asyncio.run(with_models(llm_server, conversation))
    for prompt, cached in turns[1:]:
        assert cached >= 0.6 * prompt, turns  # only the newest exchange was evaluated
