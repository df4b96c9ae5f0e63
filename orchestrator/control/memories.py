"""Memories: what the replica remembers of one user (a tenant's `memory_store`) across conversations.

- **Learnt after a conversation ends** (`learn`, in the background): the durable facts the user stated about
  themselves, at most `max_memories_per_conversation`: by default their first-person statements put in the
  third person (`orchestrator/intel/facts.py`: "The user is allergic to penicillin."), or with
  `intel.memory_extractor: llm`, the LLM's schema-constrained answer. Each fact is embedded; one as similar as
  `memory_dedup_score` to a memory already kept is the same fact, said again or changed: that memory takes the
  new wording (so "lives in Denver" replaces "lives in Boston") instead of a second one being added.
- **Added through the API** (`add`), pinned or not: a pinned memory enters every conversation of its store.
- **Recalled** at the start of a conversation (pinned ones and the most recent) and per turn (the most similar
  to what the user just said, above `memory_min_score`).

Only a heard, committed conversation is learnt from: a speculative reply never writes a memory, because
nothing here runs before the conversation has ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from orchestrator.config import IntelSettings
from orchestrator.control.knowledge import vector_bytes, vector_of
from orchestrator.errors import DuetError, Unavailable
from orchestrator.intel.facts import first_person_facts
from orchestrator.intel.judge import JsonModel
from orchestrator.models.ports import F32, ChatMessage, Embedder
from orchestrator.store.records import MemoryRecord
from orchestrator.store.store import Store, utc_now

log = logging.getLogger("duet.memories")

FRESH_S = 2.0  # a store's memories are read again at most this often
MAX_FACT_CHARS = 200

EXTRACT_PROMPT = (
    "You keep notes about a caller for the next time they call. Read the conversation and list the facts about "
    "the caller that will still be true and useful in a later call: their name, family, where they live, their "
    "plans, preferences, accounts, conditions, problems they reported. Write each fact as one short sentence "
    'that starts with "The user". Only facts the caller said themselves; nothing the assistant said, no '
    "greetings or small talk. If there is nothing worth keeping, give an empty list."
)


def extract_schema(limit: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "facts": {
                "type": "array",
                "items": {"type": "string", "minLength": 8, "maxLength": MAX_FACT_CHARS},
                "maxItems": limit,
            }
        },
        "required": ["facts"],
    }


def transcript_text(turns: Sequence[tuple[str, str]], max_chars: int = 6000) -> str:
    """The conversation as the extractor reads it (the end, when it is long: the latest facts matter most)."""
    lines = [f"{'Caller' if role == 'user' else 'Assistant'}: {text}" for role, text in turns if text.strip()]
    text = "\n".join(lines)
    return text[-max_chars:]


def clean_fact(fact: str) -> str:
    fact = " ".join(fact.split()).strip(" -•")
    if fact and fact[-1] not in ".!?":
        fact += "."
    return fact[:MAX_FACT_CHARS]


@dataclass
class _Cached:
    memories: list[MemoryRecord]
    vectors: F32  # (n, 384)
    read: float


class MemoryBank:
    def __init__(self, store: Store, settings: IntelSettings, clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.s = settings
        self.clock = clock
        self.embedder: Embedder | None = None
        self.judge: JsonModel | None = None  # extracts facts (the server's default LLM)
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._tasks: set[asyncio.Task[list[MemoryRecord]]] = set()

    def _embedder(self) -> Embedder:
        if self.embedder is None:
            raise Unavailable("memories need the `embed` model, which is not up")
        return self.embedder

    async def add(
        self, tenant_id: str, store: str, text: str, *, pinned: bool = False, conversation_id: str | None = None
    ) -> MemoryRecord:
        vector = (await self._embedder().embed([text]))[0]
        memory = await self.store.add_memory(
            tenant_id, store, text, vector_bytes(vector), self.clock(), pinned=pinned, conversation_id=conversation_id
        )
        self._cache.pop((tenant_id, store), None)
        return memory

    async def _memories(self, tenant_id: str, store: str) -> _Cached:
        key = (tenant_id, store)
        cached = self._cache.get(key)
        if cached is None or time.monotonic() - cached.read >= FRESH_S:
            memories = await self.store.memories(tenant_id, store)
            vectors = np.stack([vector_of(m.vector) for m in memories]) if memories else np.zeros((0, 384), np.float32)
            cached = self._cache[key] = _Cached(memories, vectors, time.monotonic())
        return cached

    async def opening(self, tenant_id: str, store: str, limit: int) -> list[MemoryRecord]:
        """What a conversation starts with: the pinned memories, then the most recent others, `limit` of those."""
        cached = await self._memories(tenant_id, store)
        pinned = [m for m in cached.memories if m.pinned]
        recent = sorted((m for m in cached.memories if not m.pinned), key=lambda m: m.updated_at)[-limit:]
        return pinned + recent

    async def recall(self, tenant_id: str, store: str, query: F32, limit: int) -> list[MemoryRecord]:
        """The memories most similar to `query` (an embedded user turn), at least `memory_min_score`."""
        cached = await self._memories(tenant_id, store)
        if not cached.memories:
            return []
        scores = cached.vectors @ query
        order = np.argsort(-scores)[:limit]
        return [cached.memories[i] for i in order if scores[i] >= self.s.memory_min_score]

    # ---- learning after a conversation --------------------------------------------------------------------

    def learn_later(self, tenant_id: str, store: str, conversation_id: str, turns: list[tuple[str, str]]) -> None:
        """`learn` in an owned background task (the conversation's end does not wait for the LLM)."""
        task = asyncio.create_task(
            self.learn(tenant_id, store, conversation_id, turns), name=f"memories-learn-{conversation_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def learn(
        self, tenant_id: str, store: str, conversation_id: str, turns: list[tuple[str, str]]
    ) -> list[MemoryRecord]:
        """Extract the conversation's durable facts and keep them (see the module's doc). Returns what was added
        or updated. Failures are logged: a conversation that teaches nothing loses nothing."""
        if not any(role == "user" and text.strip() for role, text in turns):
            return []
        limit = self.s.max_memories_per_conversation
        if self.s.memory_extractor == "rules" or self.judge is None:
            try:
                return await self.keep(tenant_id, store, conversation_id, first_person_facts(turns, limit))
            except DuetError as err:
                log.warning("conversation %s: keeping memories failed: %s", conversation_id, err)
                return []
        try:
            answer = await asyncio.wait_for(
                self.judge.complete_json(
                    [
                        ChatMessage("system", EXTRACT_PROMPT),
                        ChatMessage("user", transcript_text(turns)),
                    ],
                    extract_schema(limit),
                    max_tokens=320,
                ),
                timeout=self.s.judge_timeout_s * 3,
            )
            facts = [f for f in (clean_fact(str(x)) for x in answer.get("facts", [])) if len(f) >= 8]
            return await self.keep(tenant_id, store, conversation_id, facts)
        except (DuetError, TimeoutError) as err:
            log.warning("conversation %s: learning memories failed: %s", conversation_id, err)
            return []

    async def keep(
        self, tenant_id: str, store: str, conversation_id: str | None, facts: Sequence[str]
    ) -> list[MemoryRecord]:
        """Store `facts`: each new one added, each one like a kept memory (`memory_dedup_score`) updating it."""
        facts = list(dict.fromkeys(facts))
        if not facts:
            return []
        vectors = await self._embedder().embed(facts)
        self._cache.pop((tenant_id, store), None)
        cached = await self._memories(tenant_id, store)
        kept: list[MemoryRecord] = []
        known = list(cached.memories)
        known_vectors = cached.vectors
        for fact, vector in zip(facts, vectors, strict=True):
            now = self.clock()
            scores = known_vectors @ vector if known else np.zeros(0, np.float32)
            best = int(np.argmax(scores)) if len(scores) else -1
            if best >= 0 and scores[best] >= self.s.memory_dedup_score:
                old = known[best]
                if old.text != fact and not old.pinned:  # pinned memories are the team's: never rewritten
                    await self.store.update_memory(tenant_id, old.id, fact, vector_bytes(vector), now, conversation_id)
                    kept.append(MemoryRecord(old.id, tenant_id, store, fact, False, conversation_id,
                                             vector_bytes(vector), old.created_at, now))  # fmt: skip
                continue
            memory = await self.store.add_memory(
                tenant_id, store, fact, vector_bytes(vector), now, conversation_id=conversation_id
            )
            kept.append(memory)
            known.append(memory)
            known_vectors = np.vstack([known_vectors, vector[None, :]])
        self._cache.pop((tenant_id, store), None)
        return kept

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
