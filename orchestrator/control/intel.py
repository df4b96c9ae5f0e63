"""The intelligence layer as the control plane runs it: the services (knowledge, memories, guardrail and
objective definitions) and, per conversation, the `ReplyLayer` a session asks (`orchestrator/session/
grounding.py`).

A conversation joined through the API gets a `Plan` from its persona and its create body (documents or tags,
a memory store, guardrails, an objective set, tools); a plan with nothing in it gives no layer, and the session
replies from the dialogue alone, exactly as before.

Per reply (`ConversationLayer.ground`, in the reply's own task), at once and side by side:
- the **input rails** on the user's turn (deterministic rules in microseconds, semantic ones through `embed`,
  LLM-judged ones through the JSON judge); a violation makes the reply the guardrail's fallback;
- the **tool choice** (a schema-constrained JSON judgement: one of the persona's tools with valid arguments,
  or none), beside the reply, past an embedding prefilter; a call is sent once the reply is heard;
- **retrieval**: the turn is embedded once; the tenant's index gives the best chunks, the memory store the
  most similar memories; both go into one marked context message. With documents and nothing relevant, the
  message says so, and tells the replica to say it does not know rather than guess.
Retrieval waits at most `intel.retrieval_timeout_ms`; a slower one is left out of that reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.config import Settings
from orchestrator.control.knowledge import KnowledgeBase
from orchestrator.control.memories import MemoryBank
from orchestrator.errors import DuetError, Invalid, NotFound
from orchestrator.events import (
    Event,
    GuardrailTriggered,
    KnowledgeEvent,
    KnowledgeHit,
    MemoryEvent,
    MemoryItem,
    ObjectiveCompleted,
    ToolCall,
)
from orchestrator.intel import tools
from orchestrator.intel.guardrails import Guardrail, GuardrailSet, Side, Trigger, parse_guardrail
from orchestrator.intel.judge import JsonModel, LlmJson
from orchestrator.intel.objectives import ObjectiveGraph, ObjectiveTracker, parse_objectives
from orchestrator.intel.tools import (
    Tool,
    choice_max_tokens,
    parse_llm_tools,
    parse_tool_choice,
    tool_choice_messages,
    tool_choice_schema,
    tool_result_note,
)
from orchestrator.knowledge.index import STRATEGY_MODES, Hit, KnowledgeIndex
from orchestrator.knowledge.retrieve import excerpt
from orchestrator.models.ports import F32, ChatMessage, Embedder, LanguageModel
from orchestrator.session.dialogue import note_line
from orchestrator.session.grounding import Emit, Grounding, RailHit
from orchestrator.store.records import BodyRecord, ConversationRecord, MemoryRecord
from orchestrator.store.store import Store, utc_now

log = logging.getLogger("duet.intel")

KNOWLEDGE_HEADING = (
    "Facts from the organisation's documents for this question. Answer from them, in your own words; if they do "
    "not answer it, say you don't know rather than guess:"
)
NO_KNOWLEDGE = (
    "No document answers this. If it asks about the organisation, its rules or its services, say you don't know "
    "rather than guess."
)
MEMORY_HEADING = "What you remember about them from earlier calls:"
# With a tool choice under way: what the reply may say meanwhile (the call and its result come after it)
TOOL_HINT = (
    "If they ask for something your tools do ({names}), say briefly that you are doing it now; never make up "
    "its result."
)
OPENING_MEMORIES = 5


def _about_them(text: str) -> str:
    return note_line(text).removeprefix("NOTE: ")


@dataclass(frozen=True)
class Plan:
    """What one conversation uses of the intelligence layer (found when it is joined)."""

    tenant_id: str
    conversation_id: str
    documents: bool = False  # answer from the knowledge base
    document_ids: tuple[str, ...] = ()  # only these documents ... (empty: any)
    document_tags: tuple[str, ...] = ()  # ... or documents with one of these tags (empty: any)
    memory_store: str = ""
    guardrails: tuple[Guardrail, ...] = ()
    objectives: ObjectiveGraph | None = None
    tools: tuple[Tool, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.documents or self.memory_store or self.guardrails or self.objectives or self.tools)

    @property
    def grounds_context(self) -> bool:
        """Whether a reply may carry a context message (retrieved chunks or memories, a tool's hint)."""
        return bool(self.documents or self.memory_store or self.tools)


class Intel:
    """The services, and the factory of each conversation's layer."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.knowledge = KnowledgeBase(store, settings.intel)
        self.memories = MemoryBank(store, settings.intel)
        self.embedder: Embedder | None = None
        self.llm: LanguageModel | None = None  # the server's default LLM: memories' extraction

    def attach(self, embedder: Embedder | None, llm: LanguageModel | None) -> None:
        """The models, once they are up (`embed` and the default LLM)."""
        self.embedder = self.knowledge.embedder = self.memories.embedder = embedder
        self.llm = llm
        self.memories.judge = LlmJson(llm) if llm is not None else None

    # ---- definitions (validated, then kept as their bodies) ----------------------------------------------

    async def create_guardrail(self, tenant_id: str, body: Mapping[str, Any]) -> BodyRecord:
        parse_guardrail(body)
        return await self.store.create_body("guardrails", tenant_id, dict(body), utc_now())

    async def create_objectives(self, tenant_id: str, body: Mapping[str, Any]) -> BodyRecord:
        _graph(body)
        return await self.store.create_body("objectives", tenant_id, dict(body), utc_now())

    async def check_persona(self, tenant_id: str, persona: Mapping[str, Any]) -> None:
        """A persona's references are the tenant's own (422 naming the field), and its tools are valid."""
        for i, gid in enumerate(persona.get("guardrail_ids") or ()):
            await self._exists("guardrails", tenant_id, gid, f"$.guardrail_ids[{i}]")
        if oid := persona.get("objectives_id"):
            await self._exists("objectives", tenant_id, oid, "$.objectives_id")
        for i, did in enumerate(persona.get("document_ids") or ()):
            try:
                await self.store.get_document(tenant_id, did)
            except NotFound as err:
                raise Invalid(f"no document {did}", f"$.document_ids[{i}]") from err
        tools = ((persona.get("layers") or {}).get("llm") or {}).get("tools")
        if tools:
            parse_llm_tools(tools)

    async def _exists(self, table: str, tenant_id: str, object_id: str, field: str) -> None:
        try:
            await self.store.get_body(table, tenant_id, object_id)
        except NotFound as err:
            raise Invalid(f"no {table.rstrip('s')} {object_id}", field) from err

    # ---- a conversation ---------------------------------------------------------------------------------

    async def plan(self, conv: ConversationRecord, persona: Mapping[str, Any]) -> Plan:
        """What `conv` uses: its own document ids or tags over its persona's, its memory store, its persona's
        guardrails (those that still exist), objectives and tools."""
        s = conv.settings
        document_ids = tuple(s.get("document_ids") or persona.get("document_ids") or ())
        tags = tuple(s.get("document_tags") or persona.get("document_tags") or ())
        documents = bool(document_ids or tags)
        if not documents:  # no filter named: the tenant's documents, if it has any
            documents = (await self.store.knowledge_version(conv.tenant_id))[0] > 0
        rails = []
        for record in await self.store.bodies("guardrails", conv.tenant_id, persona.get("guardrail_ids") or ()):
            rails.append(parse_guardrail(record.body, guardrail_id=record.id))
        objectives = None
        if oid := persona.get("objectives_id"):
            try:
                objectives = _graph((await self.store.get_body("objectives", conv.tenant_id, oid)).body)
            except NotFound:
                log.warning("conversation %s: objectives %s were deleted", conv.id, oid)
        tools = ((persona.get("layers") or {}).get("llm") or {}).get("tools")
        return Plan(
            tenant_id=conv.tenant_id,
            conversation_id=conv.id,
            documents=documents,
            document_ids=document_ids,
            document_tags=tags,
            memory_store=str(s.get("memory_store") or ""),
            guardrails=tuple(rails),
            objectives=objectives,
            tools=parse_llm_tools(tools) if tools else (),
        )

    def layer(self, plan: Plan, llm: LanguageModel | None, model: str = "") -> ConversationLayer | None:
        """The conversation's reply layer (None when its plan uses nothing); `llm` judges (the persona's)."""
        if plan.empty:
            return None
        return ConversationLayer(plan, self, LlmJson(llm, model) if llm is not None else None)

    async def close(self) -> None:
        await self.knowledge.close()
        await self.memories.close()


class ConversationLayer:
    """One conversation's `ReplyLayer` (see the module's doc)."""

    def __init__(self, plan: Plan, intel: Intel, judge: JsonModel | None) -> None:
        self.plan = plan
        self.intel = intel
        self.s = intel.settings.intel
        self.judge = judge
        self._now: Callable[[], float] = lambda: 0.0
        usable = [g for g in plan.guardrails if _usable(g, intel.embedder, judge, plan.conversation_id)]
        self.rails = GuardrailSet(usable, intel.embedder, judge)
        self.tracker = ObjectiveTracker(plan.objectives, self._clock) if plan.objectives else None
        self._emit: Emit | None = None
        self._calls: dict[str, tools.ToolCall] = {}
        self._turns: list[tuple[str, str]] = []  # the heard exchange, for the objectives' judge
        self._judging: asyncio.Task[None] | None = None
        self._judge_again = False
        self._shown: set[str] = set()  # memories already in the conversation's context
        self._opening: list[MemoryRecord] = []
        self._tool_vectors: F32 | None = None  # each tool's name and description, embedded (the prefilter)
        self._judged_turns = 0  # user turns the objectives' judge has seen

    @property
    def grounds_context(self) -> bool:
        return self.plan.grounds_context

    async def words_context(self, user_text: str) -> str | None:
        if not self.plan.grounds_context:
            return ""
        vector = await self._embed(user_text)
        if vector is None and (self.plan.documents or self.plan.memory_store):
            return None  # (the reply's own embedding may succeed: its context is not known)
        context, _ = await self._retrieve(user_text, vector, 0.0, quiet=True)
        return self._with_tool_hint(context, vector)

    def _with_tool_hint(self, context: str, vector: F32 | None) -> str:
        """The context, and the hint that a tool may answer when the turn may need one (`_may_need_tool`)."""
        if not (self.plan.tools and self._may_need_tool(vector)):
            return context
        names = ", ".join(t.name for t in self.plan.tools)
        return f"{context}\n\n{TOOL_HINT.format(names=names)}".strip()

    def bind(self, emit: Emit, now: Callable[[], float]) -> None:
        self._emit, self._now = emit, now

    def _clock(self) -> float:
        return self._now()  # (the session's clock, once bound)

    async def opening(self) -> Sequence[Event]:
        if self.plan.tools and self.intel.embedder is not None:
            texts = [f"{t.name.replace('_', ' ')}: {t.description}" for t in self.plan.tools]
            try:
                self._tool_vectors = await self.intel.embedder.embed(texts)
            except DuetError as err:  # without them every turn goes to the tool choice
                log.warning("conversation %s: embedding the tools failed: %s", self.plan.conversation_id, err)
        if not self.plan.memory_store:
            return []
        try:
            memories = await self.intel.memories.opening(self.plan.tenant_id, self.plan.memory_store, OPENING_MEMORIES)
        except DuetError as err:
            log.warning("conversation %s: memories unavailable: %s", self.plan.conversation_id, err)
            return []
        self._opening = memories
        self._shown |= {m.id for m in memories}
        if not memories:
            return []
        return [MemoryEvent(round(self._now(), 4), tuple(MemoryItem(m.id, m.text) for m in memories))]

    # ---- a reply ----------------------------------------------------------------------------------------

    async def ground(self, user_text: str, *, speculative: bool) -> Grounding:
        t = round(self._now(), 4)
        rail_task = asyncio.create_task(self._rail(user_text, "user"), name="rails-user")
        vector = await self._embed(user_text)
        retrieved = await self._retrieve(user_text, vector, t)
        trigger = await rail_task
        notes = (self.tracker.steer(),) if self.tracker is not None and not self.tracker.done else ()
        if trigger is not None:
            event = _triggered(trigger, t, user_text)
            return Grounding(script=trigger.fallback_text, events=(event,), notes=notes)
        context, events = retrieved
        tool_choice = None
        if self.plan.tools and self._may_need_tool(vector):
            # beside the reply, not before it: the choice takes seconds here, and most turns near a tool need none
            tool_choice = asyncio.ensure_future(self._choose_tool(user_text))
        context = self._with_tool_hint(context, vector)
        return Grounding(context=context, notes=notes, events=events, tool_choice=tool_choice)

    async def _embed(self, text: str) -> F32 | None:
        """The turn's embedding, shared by retrieval, memories and the tool prefilter (None: none in time)."""
        p = self.plan
        if self.intel.embedder is None or not (p.documents or p.memory_store or p.tools):
            return None
        try:
            async with asyncio.timeout(self.s.retrieval_timeout_ms / 1000):
                vector: F32 = (await self.intel.embedder.embed([text]))[0]
                return vector
        except (DuetError, TimeoutError) as err:
            log.warning("conversation %s: embedding the turn failed (%s)", p.conversation_id, err or "timed out")
            return None

    def _may_need_tool(self, vector: F32 | None) -> bool:
        """The prefilter before the LLM's tool choice (seconds on a CPU): the turn must be about as close to some
        tool's name and description as `intel.tool_prefilter`; without the embedding, every turn is asked."""
        if vector is None:
            return True
        if self._tool_vectors is None:
            return True  # (the tools could not be embedded at the start)
        return bool((self._tool_vectors @ vector).max() >= self.s.tool_prefilter)

    async def _rail(self, text: str, side: Side, previous: str = "") -> Trigger | None:
        if not self.plan.guardrails:
            return None
        try:
            return await asyncio.wait_for(self.rails.check(text, side, context=previous), self.s.judge_timeout_s)
        except (DuetError, TimeoutError) as err:  # a rail that cannot decide lets the text through (logged)
            log.warning("conversation %s: a guardrail could not decide: %s", self.plan.conversation_id, err)
            return None

    async def _choose_tool(self, user_text: str) -> ToolCall | None:
        if self.judge is None:
            return None
        # the last exchange only: every token of the chooser's prompt is evaluated afresh (it shares no prefix
        # with the conversation's cache), and a call's arguments are in the turn that asks for it
        recent = [ChatMessage("user" if role == "user" else "assistant", text) for role, text in self._turns[-2:]]
        messages = tool_choice_messages(self.plan.tools, recent, user_text)
        schema = tool_choice_schema(self.plan.tools)
        try:
            answer = await asyncio.wait_for(
                self.judge.complete_json(messages, schema, max_tokens=choice_max_tokens(self.plan.tools)),
                self.s.judge_timeout_s,
            )
            call = parse_tool_choice(answer, self.plan.tools)
        except (DuetError, TimeoutError) as err:
            log.warning("conversation %s: the tool choice failed: %s", self.plan.conversation_id, err)
            return None
        if call is None:
            return None
        said = user_text + " " + " ".join(text for role, text in self._turns[-2:] if role == "user")
        tool = next(t for t in self.plan.tools if t.name == call.name)
        if not _arguments_said(call.arguments, tool.parameters, said):
            log.info("conversation %s: tool %s dropped: arguments the user never gave (%s)",
                     self.plan.conversation_id, call.name, call.arguments)  # fmt: skip
            return None
        self._calls[call.call_id] = call
        return ToolCall(round(self._now(), 4), call.call_id, call.name, dict(call.arguments))

    async def _retrieve(
        self, text: str, vector: F32 | None, t: float, *, quiet: bool = False
    ) -> tuple[str, tuple[Event, ...]]:
        """The context message and the events for a turn: chunks and memories (within the retrieval timeout).
        `quiet`: the context alone (a prefill's), no event, and the memories shown so far left as they are."""
        p = self.plan
        if not (p.documents or p.memory_store) or vector is None:
            return "", ()
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.s.retrieval_timeout_ms / 1000):
                hits: list[Hit] = []
                index: KnowledgeIndex | None = None
                if p.documents:
                    index = await self.intel.knowledge.index(p.tenant_id)
                    hits = index.search(
                        text,
                        vector,
                        mode=STRATEGY_MODES[self.s.strategy],
                        top_k=self.s.top_k,
                        document_ids=p.document_ids or None,
                        tags=p.document_tags or None,
                    )
                    hits = [h for h in hits if h.similarity >= self.s.min_score]
                memories: list[MemoryRecord] = []
                if p.memory_store:
                    memories = await self.intel.memories.recall(
                        p.tenant_id, p.memory_store, vector, self.s.memories_per_turn
                    )
        except (DuetError, TimeoutError) as err:
            log.warning("conversation %s: retrieval left out (%s)", p.conversation_id, err or "timed out")
            return "", ()
        took = round((time.perf_counter() - t0) * 1000, 2)
        parts: list[str] = []
        events: list[Event] = []
        if p.documents:
            if hits and index is not None:
                lines = [
                    f"[{i + 1}] {' '.join(excerpt(h.text, index.sentence_vectors(h.chunk_id), vector).split())}"
                    for i, h in enumerate(hits)
                ]
                parts.append("\n".join([KNOWLEDGE_HEADING, *lines]))
            else:
                parts.append(NO_KNOWLEDGE)
            results = tuple(KnowledgeHit(h.document_id, h.chunk_id, round(h.score, 4)) for h in hits)
            if not quiet:
                events.append(KnowledgeEvent(t, text, results, took))
        pinned = [m for m in self._opening if m.pinned]
        recalled = list({m.id: m for m in [*pinned, *memories]}.values())
        if recalled:
            parts.append("\n".join([MEMORY_HEADING, *(f"- {_about_them(m.text)}" for m in recalled)]))
            new = [m for m in recalled if m.id not in self._shown]
            if new and not quiet:
                self._shown |= {m.id for m in new}
                events.append(MemoryEvent(t, tuple(MemoryItem(m.id, m.text) for m in new)))
        return "\n\n".join(parts), tuple(events)

    async def check_clause(self, clause: str, previous: str) -> RailHit | None:
        trigger = await self._rail(clause, "replica", previous)
        if trigger is None:
            return None
        return RailHit(trigger.fallback_text, _triggered(trigger, round(self._now(), 4), clause))

    # ---- after a reply was heard: objectives ------------------------------------------------------------

    def turn_heard(self, user_text: str, replica_text: str) -> None:
        if user_text and (not self._turns or self._turns[-2:-1] != [("user", user_text)]):
            self._turns.append(("user", user_text))
        self._turns.append(("replica", replica_text))
        users = sum(role == "user" for role, _ in self._turns)
        if self.tracker is None or self.tracker.done or self.judge is None or users == self._judged_turns:
            return  # (nothing new from the user: nothing new to judge)
        self._judged_turns = users
        if self._judging is not None and not self._judging.done():
            self._judge_again = True  # once it finishes, with this exchange too
            return
        self._judging = asyncio.create_task(self._judge(), name=f"objectives-{self.plan.conversation_id}")

    async def _judge(self) -> None:
        assert self.tracker is not None and self.judge is not None
        while True:
            self._judge_again = False
            messages, schema = self.tracker.judge_request([_Turn(role, text) for role, text in self._turns])
            try:
                answer = await asyncio.wait_for(
                    self.judge.complete_json(messages, schema, max_tokens=self.tracker.judge_max_tokens()),
                    self.s.judge_timeout_s,
                )
            except (DuetError, TimeoutError) as err:
                log.warning("conversation %s: the objectives judge failed: %s", self.plan.conversation_id, err)
                answer = None
            if answer is not None:
                answer = _grounded(answer, " ".join(text for role, text in self._turns if role == "user"))
                for done in self.tracker.apply(answer, self._now()):
                    if self._emit is not None:
                        await self._emit(ObjectiveCompleted(round(done.t, 4), done.name, dict(done.output_variables)))
            if not self._judge_again or self.tracker.done:
                return

    # ---- tools ------------------------------------------------------------------------------------------

    def tool_result(self, call_id: str, output: Any) -> str | None:
        call = self._calls.pop(call_id, None)
        if call is None:
            return None
        return tool_result_note(call, output)

    async def close(self) -> None:
        if self._judging is not None:
            self._judging.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._judging


def _words(text: str) -> set[str]:
    return set(re.findall(r"[^\W_]+", text.casefold()))


def _grounded(answer: dict[str, Any], user_said: str) -> dict[str, Any]:
    """The judge's answer with every extracted value the user did not say taken out (a small judge copies the
    assistant's words, or invents): a value counts when most of its words are the user's."""
    variables = answer.get("variables")
    if not isinstance(variables, Mapping):
        return answer
    said = _words(user_said)
    kept: dict[str, Any] = {}
    for name, value in variables.items():
        words = _words(str(value)) if isinstance(value, str | int | float) and not isinstance(value, bool) else set()
        kept[name] = value if words and len(words & said) >= max(1, (len(words) + 1) // 2) else None
    return {**answer, "variables": kept}


def _arguments_said(arguments: Mapping[str, Any], schema: Mapping[str, Any], said: str) -> bool:
    """Whether every free-text or number argument of a tool call is in what the user said (an enum's value is
    the tool's vocabulary, not theirs). The small local chooser calls a tool for most questions near it and fills
    in arguments nobody gave ("Monday" for "what is the fee if I miss my appointment?"); a call the user did not
    give the arguments for is no call."""
    words = _words(said)
    properties = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
    for name, value in arguments.items():
        spec = properties.get(name) if isinstance(properties, Mapping) else None
        if isinstance(spec, Mapping) and ("enum" in spec or "const" in spec):
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            continue
        mine = _words(str(value))
        if mine and len(mine & words) < max(1, (len(mine) + 1) // 2):
            return False
    return True


def _graph(body: Mapping[str, Any]) -> ObjectiveGraph:
    """The objective graph of an objectives body (its optional `name` labels the set for people)."""
    return parse_objectives({k: v for k, v in body.items() if k != "name"})


def _usable(g: Guardrail, embedder: Embedder | None, judge: JsonModel | None, conversation_id: str) -> bool:
    """Whether the models `g` needs are here (a semantic rule the `embed` model, an llm rule a judge)."""
    kind = g.body()["rule"]["type"]
    if (kind == "semantic" and embedder is None) or (kind == "llm" and judge is None):
        log.error("conversation %s: guardrail %s (%s) cannot run: its model is missing", conversation_id, g.name, kind)
        return False
    return True


@dataclass(frozen=True)
class _Turn:
    role: str
    text: str


def _triggered(trigger: Trigger, t: float, text: str) -> GuardrailTriggered:
    return GuardrailTriggered(
        t, trigger.guardrail_id, trigger.name, trigger.side, trigger.rule_type, text[:500], round(trigger.took_ms, 3)
    )
