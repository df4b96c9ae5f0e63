"""The conversation session with a reply layer (documents, memories, guardrails, objectives, tools): what the
session does with what the layer says, on fake models and a fake layer, in virtual time.

The layer's own logic is tested in test_guardrails.py, test_objectives.py, test_tools.py and the knowledge
tests; here: when its events go out (only with a reply that is heard), that a held clause is never spoken, that
an input rail's fallback is what is said, that a tool call waits for the floor and its result brings a
follow-up reply with the result in the LLM's context.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from orchestrator.config import Settings
from orchestrator.errors import UnknownToolCall
from orchestrator.events import (
    Event,
    GuardrailTriggered,
    InteractionEvent,
    KnowledgeEvent,
    KnowledgeHit,
    MemoryEvent,
    MemoryItem,
    ObjectiveCompleted,
    ReplicaTurn,
    ReplyCancelled,
    ToolCall,
)
from orchestrator.session.grounding import Emit, Grounding, RailHit
from orchestrator.session.interactions import Respond, ToolResult
from orchestrator.speech.gate import Heard
from tests.unit.test_conversation_session import FakeModels, of, play, session, silence, speech


class FakeLayer:
    """Grounds every reply in one chunk; `forbid` holds clauses containing it; `block_user` answers turns
    containing it with a fallback; `tool` makes every reply call it."""

    def __init__(self, *, forbid: str = "", block_user: str = "", tool: str = "") -> None:
        self.forbid, self.block_user, self.tool = forbid, block_user, tool
        self.grounded: list[tuple[str, bool]] = []
        self.heard: list[tuple[str, str]] = []
        self.results: dict[str, Any] = {}
        self.emit: Emit | None = None
        self.now: Callable[[], float] = lambda: 0.0
        self.closed = False
        self._calls = 0
        self.choices: list[asyncio.Future[ToolCall | None]] = []
        self.asked: list[str] = []  # the words `words_context` was asked about

    grounds_context = True  # (its replies carry a context: the user's words are evaluated early only with it)
    unsure = False  # `words_context` cannot tell (the prefill of the user's words is skipped)

    async def words_context(self, user_text: str) -> str | None:
        self.asked.append(user_text)
        return None if self.unsure else ("DOCS: tools may help." if self.tool else "DOCS: the clinic opens at 8.")

    def bind(self, emit: Emit, now: Callable[[], float]) -> None:
        self.emit, self.now = emit, now

    async def opening(self) -> Sequence[Event]:
        return [MemoryEvent(0.0, (MemoryItem("mem_1", "The user has a dog."),))]

    async def ground(self, user_text: str, *, speculative: bool) -> Grounding:
        self.grounded.append((user_text, speculative))
        t = self.now()
        knowledge = KnowledgeEvent(t, user_text, (KnowledgeHit("doc_1", "chk_1", 0.9),), 1.0)
        if self.block_user and self.block_user in user_text:
            rail = GuardrailTriggered(t, "grd_1", "no-talk", "user", "phrases", user_text, 0.01)
            return Grounding(script="I can't help with that.", events=(rail,))
        if self.tool:
            self._calls += 1
            choice: asyncio.Future[ToolCall | None] = asyncio.get_running_loop().create_future()
            choice.set_result(ToolCall(t, f"call_{self._calls}", self.tool, {"city": "Paris"}))
            self.choices.append(choice)
            return Grounding(context="DOCS: tools may help.", tool_choice=choice, events=(knowledge,))
        return Grounding(context="DOCS: the clinic opens at 8.", notes=("Goal: get their name.",), events=(knowledge,))

    async def check_clause(self, clause: str, previous: str) -> RailHit | None:
        if self.forbid and self.forbid in clause.lower():
            event = GuardrailTriggered(self.now(), "grd_2", "no-noon", "replica", "phrases", clause, 0.01)
            return RailHit("Let's talk about something else.", event)
        return None

    def turn_heard(self, user_text: str, replica_text: str) -> None:
        self.heard.append((user_text, replica_text))

    def tool_result(self, call_id: str, output: Any) -> str | None:
        if not call_id.startswith("call_"):
            return None
        self.results[call_id] = output
        return f"RESULT of {call_id}: {output}"

    async def close(self) -> None:
        self.closed = True


TURN = np.concatenate([silence(0.3), speech(3000, 1.0), silence(2.0)])


WARM_CONTEXT = dataclasses.replace(Settings(), llm=dataclasses.replace(Settings().llm, warm_context=True))


@pytest.mark.parametrize("grounds_context", [True, False])
async def test_by_default_the_users_words_are_evaluated_early_only_when_no_context_goes_before_them(
    grounds_context: bool,
) -> None:
    """A layer with guardrails and objectives only adds nothing before the user's words: they can be
    evaluated while the user speaks. One that retrieves documents or memories puts them there (`warm_context`
    is off by default)."""
    models, layer = FakeModels(), FakeLayer()
    layer.grounds_context = grounds_context
    s, _, clock = session(models, layer=layer)
    await s.start()
    await play(s, clock, TURN)
    await s.finish()
    words = [r for r in models.llm_requests if r.request_id.endswith("-words")]
    assert bool(words) is not grounds_context
    assert not layer.asked  # (a layer without a context is not asked for one)
    await s.close()


@pytest.mark.parametrize("unsure", [False, True])
async def test_the_users_words_are_evaluated_early_after_the_context_the_layer_would_give_them(unsure: bool) -> None:
    """With `warm_context`, the words prefill holds the context the layer would retrieve for the words so far,
    where the reply's prompt has it: before the user's words. A layer that cannot tell gets no prefill. (A turn
    long enough for two partials: a context is prefilled once two transcripts in a row retrieve it, and the
    pause's final is not prefilled when the floor's decision already waits for it.)"""
    models, layer = FakeModels(), FakeLayer()
    layer.unsure = unsure
    s, out, clock = session(models, layer=layer, settings=WARM_CONTEXT)
    await s.start()
    await play(s, clock, np.concatenate([silence(0.3), speech(3000, 1.8), silence(2.0)]))
    await s.finish()
    words = [r for r in models.llm_requests if r.request_id.endswith("-words")]
    [reply] = [r for r in models.llm_requests if r.max_tokens > 0]
    assert layer.asked and not of(out, KnowledgeEvent)[1:]  # asked quietly: only the reply's own retrieval reports
    assert bool(words) is not unsure
    if words:
        prefill = words[-1].messages
        assert prefill[-2] == reply.messages[1] and prefill[-2].content == "DOCS: the clinic opens at 8."
        assert prefill[:-1] == reply.messages[: len(prefill) - 1]  # the reply's prompt up to the words
        assert prefill[-1].role == "user" and prefill[-1].content in reply.messages[-1].content
    await s.close()


class ShiftingLayer(FakeLayer):
    """The context the first words retrieve changes as the question goes on, then settles."""

    async def words_context(self, user_text: str) -> str | None:
        self.asked.append(user_text)
        return (
            "DOCS: the clinic opens at 8." if "open" in user_text else f"DOCS: about {user_text.rsplit(maxsplit=1)[-1]}"
        )


async def test_a_context_is_prefilled_only_once_two_transcripts_in_a_row_retrieve_it() -> None:
    """Evaluating a context costs seconds on a CPU: one the next words no longer retrieve is not worth it."""
    models, layer = FakeModels(), ShiftingLayer()
    s, _, _ = session(models, layer=layer, settings=WARM_CONTEXT)
    for text in ("when does", "when does the", "when does the clinic open", "when does the clinic open on"):
        await s.heard(Heard(text, False, 1.0))
        for _ in range(20):
            await asyncio.sleep(0)
    words = [r.messages for r in models.llm_requests if r.request_id.endswith("-words")]
    assert layer.asked == ["when does", "when does the", "when does the clinic open", "when does the clinic open on"]
    assert [m[-1].content for m in words] == ["when does the clinic open on"]  # its context, retrieved twice
    assert words[0][-2].content == "DOCS: the clinic opens at 8."
    await s.close()


class SlowLayer(FakeLayer):
    """Its context for the words takes until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def words_context(self, user_text: str) -> str | None:
        await self.release.wait()
        return await super().words_context(user_text)


async def test_no_words_prefill_once_a_reply_was_committed_while_the_context_was_looked_up() -> None:
    models, layer = FakeModels(), SlowLayer()
    s, _, _ = session(models, layer=layer, settings=WARM_CONTEXT)
    s._words_context = "DOCS: the clinic opens at 8."  # (retrieved for the words before: it would be sent)
    await s.heard(Heard("when does the clinic open", False, 1.0))
    await asyncio.sleep(0)
    await s.interact(Respond("when does the clinic open"))  # the reply's turn is committed meanwhile
    layer.release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert layer.asked == ["when does the clinic open"]
    assert not [r for r in models.llm_requests if r.request_id.endswith("-words")]
    await s.close()


async def test_grounding_goes_into_the_request_and_its_events_go_out_with_the_heard_reply() -> None:
    models, layer = FakeModels(), FakeLayer()
    s, out, clock = session(models, layer=layer)
    await s.start()
    assert isinstance(out.events[0], MemoryEvent)  # the memories the conversation starts with
    await play(s, clock, TURN)
    await s.finish()
    [request] = [r for r in models.llm_requests if r.max_tokens > 0]  # (not the warm-up)
    contents = [m.content for m in request.messages]
    assert "DOCS: the clinic opens at 8." in contents  # the marked context, just before the user's turn
    assert contents.index("DOCS: the clinic opens at 8.") < len(contents) - 1
    assert request.messages[-1].content == "what time is it"
    assert any("Goal: get their name." in c for c in contents)  # the objective's steer, a private note
    [knowledge] = of(out, KnowledgeEvent)
    types = out.types()
    assert types.index("knowledge") < types.index("replica_speaking_start")
    assert knowledge.results[0].chunk_id == "chk_1"
    assert layer.grounded[0][1] is True  # retrieval ran in the speculative path
    assert layer.heard == [("what time is it", "Sure, it is noon.")]
    assert layer.closed


async def test_a_cancelled_speculation_sends_none_of_its_events() -> None:
    models, layer = FakeModels(), FakeLayer()
    s, out, clock = session(models, layer=layer)
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(0.2), speech(5000, 0.8), silence(2.0)]))
    await s.finish()
    assert of(out, ReplyCancelled)
    assert len(layer.grounded) >= 2  # the cancelled speculation was grounded too
    assert len(of(out, KnowledgeEvent)) == 1  # but only the heard reply's event went out


async def test_an_output_rail_replaces_the_clause_and_nothing_after_it_is_generated() -> None:
    models = FakeModels(reply="Sure, it is noon. And it is sunny today.")
    layer = FakeLayer(forbid="noon")
    s, out, clock = session(models, layer=layer, speculation=False)
    await play(s, clock, TURN)
    await s.finish()
    [turn] = of(out, ReplicaTurn)
    assert "noon" not in turn.text and "Let's talk about something else." in turn.text
    assert "sunny" not in turn.text
    spoken = " ".join(getattr(c, "text", "") for c in out.events if getattr(c, "type", "") == "replica_caption")
    assert "noon" not in spoken
    [rail] = of(out, GuardrailTriggered)
    assert rail.applies_to == "replica" and "noon" in rail.text


async def test_an_input_rail_answers_with_its_fallback_without_the_llm() -> None:
    models, layer = FakeModels(), FakeLayer(block_user="time")
    s, out, clock = session(models, layer=layer, speculation=False)
    await play(s, clock, TURN)
    await s.finish()
    assert not [r for r in models.llm_requests if r.max_tokens > 0]
    [turn] = of(out, ReplicaTurn)
    assert turn.text == "I can't help with that."
    [rail] = of(out, GuardrailTriggered)
    assert rail.applies_to == "user"
    assert s.dialogue.turns == []  # the forbidden turn and its fallback are not the LLM's to go on with


async def test_a_tool_call_goes_out_after_its_reply_and_its_result_brings_a_follow_up() -> None:
    models, layer = FakeModels(), FakeLayer(tool="weather")
    s, out, clock = session(models, layer=layer)
    await play(s, clock, TURN)
    [call] = of(out, ToolCall)
    types = out.types()
    # never before the floor commits, and after the reply that answered the turn started to be heard
    assert types.index("eot_commit") < types.index("replica_speaking_start") < types.index("tool_call")
    layer.tool, models.reply = "", "It is 21 degrees."  # the follow-up is an ordinary reply
    await s.interact(ToolResult(call.call_id, '{"temp": 21}'))
    with pytest.raises(UnknownToolCall):  # a result comes back once
        await s.interact(ToolResult(call.call_id, "again"))
    await play(s, clock, silence(2.0))
    await s.finish()
    [interaction] = [e for e in of(out, InteractionEvent) if e.interaction == "tool_result"]
    assert interaction.reply_id is not None
    request = [r for r in models.llm_requests if r.max_tokens > 0][-1]
    assert any(f"RESULT of {call.call_id}" in m.content for m in request.messages)
    assert [m.content for m in request.messages if m.role == "user"][-1] == "what time is it"
    turns = of(out, ReplicaTurn)
    assert [t.text for t in turns] == ["Sure, it is noon.", "It is 21 degrees."]  # the first heard whole
    assert not turns[0].interrupted


async def test_a_cancelled_speculation_cancels_its_tool_choice_and_calls_nothing() -> None:
    models, layer = FakeModels(), FakeLayer(tool="weather")
    s, out, clock = session(models, layer=layer)
    real = asyncio.get_running_loop().create_future

    def pending() -> asyncio.Future[Any]:
        return real()  # a choice that never finishes by itself

    layer_ground = layer.ground

    async def slow_ground(user_text: str, *, speculative: bool) -> Grounding:
        g = await layer_ground(user_text, speculative=speculative)
        choice: asyncio.Future[ToolCall | None] = pending()
        layer.choices[-1] = choice
        return Grounding(context=g.context, tool_choice=choice, events=g.events)

    layer.ground = slow_ground  # type: ignore[method-assign]
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(0.2), speech(5000, 0.8), silence(2.0)]))
    await s.finish()
    assert of(out, ReplyCancelled) and layer.choices[0].cancelled()
    assert not of(out, ToolCall)


async def test_an_unknown_tool_result_is_refused_and_the_session_goes_on() -> None:
    models, layer = FakeModels(), FakeLayer()
    s, out, clock = session(models, layer=layer)
    with pytest.raises(UnknownToolCall):
        await s.interact(ToolResult("call_nope", "x"))
    await play(s, clock, TURN)
    await s.finish()
    assert of(out, ReplicaTurn)


async def test_objective_completions_found_in_the_background_are_sent() -> None:
    models, layer = FakeModels(), FakeLayer()
    s, out, _ = session(models, layer=layer)
    assert layer.emit is not None
    await layer.emit(ObjectiveCompleted(1.0, "get_name", {"name": "Ann"}))
    [done] = of(out, ObjectiveCompleted)
    assert done.output_variables == {"name": "Ann"}
    await s.close()


def test_the_context_message_sits_just_before_the_users_turn_and_never_enters_the_history() -> None:
    from orchestrator.session.dialogue import Dialogue
    from tests.unit.test_conversation_session import persona

    d = Dialogue(persona())
    d.commit_user("hello", 1.0)
    d.commit_replica("Hi there.", 2.0, interrupted=False)
    first = d.request("when do you open?", context="DOCS: 8 am.")
    roles = [(m.role, m.content) for m in first.messages]
    assert roles[-2:] == [("system", "DOCS: 8 am."), ("user", "when do you open?")]
    d.commit_user("when do you open?", 3.0)  # committed: the same request, the context still right before it
    assert [(m.role, m.content) for m in d.request("when do you open?", context="DOCS: 8 am.").messages] == roles
    d.commit_replica("At eight.", 4.0, interrupted=False)
    later = [m.content for m in d.request("thanks").messages]
    assert "DOCS: 8 am." not in later  # for its own reply only: the cached prefix holds


def test_a_follow_up_answers_the_last_user_turn_without_the_replicas_wait_line() -> None:
    from orchestrator.session.dialogue import Dialogue
    from tests.unit.test_conversation_session import persona

    d = Dialogue(persona())
    d.commit_user("what's the weather in Paris?", 1.0)
    d.commit_replica("One moment.", 2.0, interrupted=False)
    request = d.request("what's the weather in Paris?", context="RESULT: 21 C", follow_up=True)
    contents = [(m.role, m.content) for m in request.messages]
    assert contents[-2:] == [("system", "RESULT: 21 C"), ("user", "what's the weather in Paris?")]
    assert ("assistant", "One moment.") not in contents
