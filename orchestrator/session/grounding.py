"""What a reply is grounded in beyond the dialogue: the session's view of the intelligence layer.

A conversation joined through the API may have documents, memories, guardrails, objectives and tools. The
session does not know how any of them work; it asks a `ReplyLayer` (built per conversation by
`orchestrator/control/intel.py`) at four points:

- **a reply starts** (`ground`, inside the reply's own task, so a speculative reply started at
  `eot_tentative` retrieves while the floor is still deciding): the input rails check the user's turn (a
  violation makes the reply the guardrail's fallback), the documents and memories relevant to the turn come
  back as a marked context message, with the events that say what was used, and a tool choice may start
  beside the reply (it takes seconds on a CPU: the reply does not wait for it);
- **a clause is ready** (`check_clause`, before the TTS sees it): the output rails; a violating clause is
  replaced by the fallback, and the rest of the reply is not generated;
- **a reply was heard** (`turn_heard`): the objectives' judge looks at the exchange in the background and
  reports completions through the `emit` it was bound with;
- **a tool's result comes back** (`tool_result`): it becomes the context of the follow-up reply.

Events a reply produced wait until the reply is released (heard): a speculative reply that is cancelled
leaves no `knowledge` event and, above all, makes no tool call before the floor commits. A tool call is sent
once its reply is released and the choice is made, whichever comes last; its result brings a follow-up reply.

Pure: types and the protocol only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.events import Event, GuardrailTriggered, ToolCall


@dataclass(frozen=True)
class Grounding:
    """What `ReplyLayer.ground` gives one reply."""

    context: str = ""  # a marked context message for this reply only (documents, memories)
    notes: tuple[str, ...] = ()  # private guidance lines (the current objective), kept from being read out
    script: str | None = None  # say exactly this instead of generating (a guardrail's fallback, a tool's wait)
    events: tuple[Event, ...] = ()  # sent when the reply is released (knowledge, memory, guardrail_triggered)
    # the tool choice for the turn, running beside the reply: a call is sent once the reply is released
    tool_choice: asyncio.Future[ToolCall | None] | None = None


@dataclass(frozen=True)
class RailHit:
    """An output rail held on a clause: `fallback` is said instead, and `event` reports it."""

    fallback: str
    event: GuardrailTriggered


Emit = Callable[[Event], Awaitable[None]]


class ReplyLayer(Protocol):
    @property
    def grounds_context(self) -> bool:
        """Whether `ground` may give a reply a context (documents, memories, a tool's hint): it goes in the
        prompt before the user's words (see `words_context`)."""
        ...

    async def words_context(self, user_text: str) -> str | None:
        """The context `ground` would give a reply to `user_text` (documents, memories, a tool's hint; "" for
        none), found with no side effect: no event, no rail, no tool choice. The session prefills it with the
        user's words while they speak, since it goes in the prompt before them. None: it cannot tell now."""
        ...

    def bind(self, emit: Emit, now: Callable[[], float]) -> None:
        """Where events found in the background go (objective completions), and the session clock."""
        ...

    async def opening(self) -> Sequence[Event]:
        """Events at the start of the session (the memories the conversation starts with)."""
        ...

    async def ground(self, user_text: str, *, speculative: bool) -> Grounding:
        """Everything a reply to `user_text` needs besides the dialogue. Never raises: a part that fails or
        is too slow is left out of this reply (and logged)."""
        ...

    async def check_clause(self, clause: str, previous: str) -> RailHit | None:
        """The output rails on `clause` (`previous`: what the reply said before it)."""
        ...

    def turn_heard(self, user_text: str, replica_text: str) -> None:
        """An exchange was heard: the objectives' judge may run (in the background)."""
        ...

    def tool_result(self, call_id: str, output: Any) -> str | None:
        """The context for the follow-up reply of a tool's result; None when `call_id` is not waiting."""
        ...

    async def close(self) -> None: ...
