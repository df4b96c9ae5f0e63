"""The decoupled `llm` model in a real tritonserver: streaming, limits, stop strings, errors, cancellation, and
the models it serves by name."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient

from orchestrator.config import REPO_ROOT, TritonSettings
from orchestrator.errors import BadOption, ModelUnavailable
from orchestrator.inference.llm import parse_model_specs
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


def served_models() -> tuple[list[str], str]:
    """The models the `llm` config lists, and its default."""
    text = (REPO_ROOT / "model_repository" / "llm" / "config.pbtxt").read_text()
    specs, default = parse_model_specs(
        dict(re.findall(r'key:\s*"([^"]+)"\s+value:\s*\{\s*string_value:\s*"([^"]*)"', text))
    )
    return [s.name for s in specs], default


def tokens_by_model(server: EmbeddedTriton) -> dict[str, float]:
    """Generated tokens so far, per served model (the `llm_model` label)."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for labels, value in re.findall(r"^duet_llm_generated_tokens_total\{([^}]*)\} (\S+)$", text, re.M):
        name = re.search(r'llm_model="([^"]*)"', labels)
        if 'model="llm"' in labels and name:
            out[name.group(1)] = out.get(name.group(1), 0.0) + float(value)
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


def test_the_wait_for_a_context_is_counted(llm_server: EmbeddedTriton) -> None:
    """Three replies at once on two contexts: the third waits for one (Triton's own queue metrics do not see
    this wait: the decoupled model takes every request at once)."""

    async def three(models: TritonModels) -> None:
        await asyncio.gather(*(collect(models.generate(ask(f"Tell me a story about {x}.", max_tokens=24)))
                               for x in ("the sea", "a fox", "the moon")))  # fmt: skip

    before = counters(llm_server)
    asyncio.run(with_models(llm_server, three))
    after = counters(llm_server)
    assert after["duet_llm_requests_total"] - before["duet_llm_requests_total"] == 3
    assert after["duet_llm_context_wait_seconds_total"] - before["duet_llm_context_wait_seconds_total"] > 0.05


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


def test_a_reply_that_echoes_the_conversation_is_drafted_from_it(llm_server: EmbeddedTriton) -> None:
    """The default model drafts tokens from the conversation (`lookup` on its model line): a reply that
    repeats the user's words keeps drafts, and the counters show how many were checked and kept."""

    async def echo(models: TritonModels) -> str:
        system = ChatMessage("system", "You repeat what the user says, word for word.")
        user = ChatMessage("user", "Say this back to me: the blue train leaves platform nine at half past seven.")
        return "".join(await collect(models.generate(LlmRequest((system, user), max_tokens=24, temperature=0.0))))

    before = counters(llm_server)
    reply = asyncio.run(with_models(llm_server, echo))
    after = counters(llm_server)
    drafted = after["duet_llm_drafted_tokens_total"] - before["duet_llm_drafted_tokens_total"]
    kept = after["duet_llm_kept_draft_tokens_total"] - before["duet_llm_kept_draft_tokens_total"]
    assert "platform nine" in reply.lower(), reply
    assert 3 <= kept <= drafted, (kept, drafted)


def test_a_request_naming_a_served_model_is_answered_by_that_model(llm_server: EmbeddedTriton) -> None:
    """Each model the config lists answers the requests that name it (its own token counter grows, no other
    model's does); an empty name is the default."""
    names, default = served_models()
    assert len(names) >= 2, names
    for name in [*names, ""]:
        before = tokens_by_model(llm_server)
        request = ask("Say hello in three words.", max_tokens=6, temperature=0.0, model=name)
        text = "".join(asyncio.run(with_models(llm_server, lambda m, r=request: collect(m.generate(r)))))
        after = tokens_by_model(llm_server)
        grew = {n for n in after if after[n] > before.get(n, 0.0)}
        assert text.strip() and grew == {name or default}, (name, text, grew)


def test_an_unknown_model_is_a_typed_error_naming_the_served_ones(llm_server: EmbeddedTriton) -> None:
    names, _ = served_models()
    request = ask("hi", max_tokens=4, model="no-such-model")
    with pytest.raises(BadOption, match="unknown llm model 'no-such-model'") as caught:
        asyncio.run(with_models(llm_server, lambda m: collect(m.generate(request))))
    assert all(n in caught.value.message for n in names)


def test_a_request_without_the_model_input_gets_the_default(llm_server: EmbeddedTriton) -> None:
    """MODEL and PRIORITY are optional: a client that predates them (sending only the four original inputs) is
    served."""
    _, default = served_models()

    async def four_inputs() -> list[str]:
        client = grpcclient.InferenceServerClient(llm_server.grpc_url)
        sent = TritonModels._llm_inputs(ask("Say hi.", max_tokens=4))
        inputs = [i for i in sent if i.name() not in ("MODEL", "PRIORITY")]

        async def one() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": "llm", "inputs": inputs, "parameters": {"triton_enable_empty_final_response": True}}

        texts = []
        try:
            async for result, error in client.stream_infer(inputs_iterator=one()):
                assert error is None, error
                if result.as_numpy("TEXT") is not None:
                    texts.append(result.as_numpy("TEXT").reshape(-1)[0].decode())
                if result.get_response().parameters["triton_final_response"].bool_param:
                    return texts
            return texts
        finally:
            await client.close()

    before = tokens_by_model(llm_server).get(default, 0.0)
    assert "".join(asyncio.run(asyncio.wait_for(four_inputs(), 60))).strip()
    assert tokens_by_model(llm_server)[default] > before


def test_a_warmed_history_leaves_only_the_users_words_to_evaluate(llm_server: EmbeddedTriton) -> None:
    """The session's warm-up (`Dialogue.warm_request`, sent when the replica's turn is committed) has the model
    evaluate the history; the next reply's prompt then finds all of it cached but the user's new words."""
    from orchestrator.session.dialogue import Dialogue
    from orchestrator.session.persona import Persona

    dialogue = Dialogue(Persona(id="t", name="T", system_prompt="You are Ada, a clinic receptionist.", max_tokens=12))
    dialogue.perception_note = "[perception] The user sounds tense."

    async def call(models: TritonModels) -> list[float]:
        uncached = []
        for words in ("Hi, I need to move my appointment.", "It is on Friday at ten.", "Monday would be better."):
            before = counters(llm_server)
            reply = "".join(await collect(models.generate(dialogue.request(words))))
            after = counters(llm_server)
            uncached.append(
                (after["duet_llm_prompt_tokens_total"] - before["duet_llm_prompt_tokens_total"])
                - (after["duet_llm_cached_prompt_tokens_total"] - before["duet_llm_cached_prompt_tokens_total"])
            )
            dialogue.commit_user(words, len(uncached))
            dialogue.commit_replica(reply.strip() or "I see.", len(uncached) + 0.5, interrupted=False)
            warm = dialogue.warm_request()
            assert warm is not None and warm.max_tokens == 0
            await collect(models.generate(warm))
        return uncached

    uncached = asyncio.run(with_models(llm_server, call))
    # The first turn evaluates the system prompt and the note; each later one little more than its words
    # (about 10 tokens, plus the chat template's markers).
    assert uncached[0] > 40 and all(n <= 24 for n in uncached[1:]), uncached


def test_the_users_words_prefilled_while_they_speak_leave_only_the_rest_to_evaluate(llm_server: EmbeddedTriton) -> None:
    """The session's prefill of the user's words (`Dialogue.words_request`, sent with each partial transcript):
    the reply to the whole turn then evaluates only the words the partial lacked and the chat template's
    opener, where without it it evaluates every word of the turn."""
    from orchestrator.session.dialogue import Dialogue
    from orchestrator.session.persona import Persona

    turn = "I was charged twice this month for the same visit, and I would like to know why."

    def uncached(before: dict[str, float], after: dict[str, float]) -> float:
        prompt = after["duet_llm_prompt_tokens_total"] - before["duet_llm_prompt_tokens_total"]
        return prompt - (after["duet_llm_cached_prompt_tokens_total"] - before["duet_llm_cached_prompt_tokens_total"])

    async def call(models: TritonModels, words: str) -> float:
        # a receptionist of its own per run: nothing of one run's prompt is in the cache for the other
        name = "Bea" if words else "Ada"
        dialogue = Dialogue(Persona(id="t", name="T", system_prompt=f"You are {name}, a receptionist.", max_tokens=4))
        dialogue.commit_user("Hello?", 0.0)
        dialogue.commit_replica(f"Hi, this is {name}. How can I help?", 0.5, interrupted=False)
        warm = dialogue.warm_request()
        assert warm is not None
        await collect(models.generate(warm))
        if words:
            prefill = dialogue.words_request(words)
            assert prefill is not None and prefill.max_tokens == 0
            await collect(models.generate(prefill))
        before = counters(llm_server)
        await collect(models.generate(dialogue.request(turn)))
        return uncached(before, counters(llm_server))

    cold = asyncio.run(with_models(llm_server, lambda m: call(m, "")))
    warm = asyncio.run(with_models(llm_server, lambda m: call(m, "I was charged twice this month for the same visit")))
    # the turn is ~20 tokens; with its first words cached only "and I would like to know why." and the opener
    assert cold >= 20 and warm <= cold - 10, (cold, warm)


# --- replies under a JSON schema (JSON_SCHEMA) ---

# The name's length is bounded, as the product's judges bound every free string (objectives, guardrails): an
# unbounded string at a temperature can run past `max_tokens` and leave the JSON unterminated (seen once in CI:
# "Im currently working on a project, which is [project_name]. Im..." at temperature 0.7).
NAME_SCHEMA = {
    "type": "object",
    "properties": {"completed": {"type": "boolean"}, "name": {"type": "string", "maxLength": 40}},
    "required": ["completed", "name"],
}
NAME_JUDGE = (
    ChatMessage("system", "You read a conversation and answer with one JSON object, nothing else."),
    ChatMessage(
        "user",
        "Conversation:\nAgent: Welcome! Before we start, may I have your name?\nUser: Of course, I'm Daniel Brooks.\n\n"
        "Did the user give their name? JSON keys: completed (true if they did), name (their name, or empty).",
    ),
)


def test_a_json_schema_reply_parses_and_validates(llm_server: EmbeddedTriton) -> None:
    """Both served models, at a temperature: the reply is one JSON object the schema accepts."""
    import jsonschema

    names, _ = served_models()
    for name in names:
        for temperature in (0.0, 0.7):
            request = LlmRequest(
                NAME_JUDGE, max_tokens=64, temperature=temperature, model=name, json_schema=json.dumps(NAME_SCHEMA)
            )
            text = "".join(asyncio.run(with_models(llm_server, lambda m, r=request: collect(m.generate(r)))))
            reply = json.loads(text)
            jsonschema.validate(reply, NAME_SCHEMA)
            if name == "qwen2.5-coder-0.5b" and temperature == 0.0:  # the default model gets this one right
                assert reply["completed"] is True and "Daniel" in reply["name"], reply


def test_an_invalid_json_schema_is_a_bad_option_and_the_model_serves_on(llm_server: EmbeddedTriton) -> None:
    for schema, message in (
        ('{"type": "wizard"}', "Unrecognized schema"),
        ("{not json", "not valid JSON"),
        (json.dumps({"type": "string", "maxLength": 100000}), "maxLength 100000 is over"),  # would crash the parser
    ):
        request = ask("Hi", max_tokens=8, json_schema=schema)
        with pytest.raises(BadOption, match=re.escape(message)):
            asyncio.run(with_models(llm_server, lambda m, r=request: collect(m.generate(r))))
    text = "".join(asyncio.run(with_models(llm_server, lambda m: collect(m.generate(ask("Say hi.", max_tokens=6))))))
    assert text.strip()
