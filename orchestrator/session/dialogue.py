"""Conversation history and the LLM request built from it.

Only committed turns enter the history: the user's turn at `eot_commit`, the replica's turn when its
reply has played out or, if the user interrupted, the part that was actually heard. A speculative reply
is built from `history + the transcript snapshot` without touching the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.models.ports import ChatMessage, LlmRequest
from orchestrator.session.persona import Persona


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str
    t: float  # session time it was committed
    interrupted: bool = False


@dataclass
class Dialogue:
    persona: Persona
    history_turns: int = 12
    stop: tuple[str, ...] = ()
    turns: list[Turn] = field(default_factory=list)
    # What perception last said about the user ("[perception] ..."), set by the session. It goes in as a system
    # note just before the user's turn: after the history, so the LLM's cached prefix stays valid.
    perception_note: str = ""
    # The conversation's context (what the persona should know for this conversation), after the system
    # prompt. Set through `ConversationSession.set_context`, which also drops replies built on the old one.
    context: str = ""

    def commit_user(self, text: str, t: float) -> None:
        self.turns.append(Turn("user", text, t))

    def commit_replica(self, text: str, t: float, *, interrupted: bool) -> None:
        # An interrupted reply is recorded as heard (no marker in the text: a small model imitates markers).
        self.turns.append(Turn("assistant", text, t, interrupted))

    @property
    def last_replica_text(self) -> str:
        return next((t.text for t in reversed(self.turns) if t.role == "assistant"), "")

    def request(self, user_text: str, *, request_id: str = "") -> LlmRequest:
        """The chat for a reply to `user_text` (the current turn's transcript, committed or not)."""
        system = f"{self.persona.system_prompt}\n\n{self.context}" if self.context else self.persona.system_prompt
        messages = [ChatMessage("system", system)]
        recent = [t for t in self.turns if t.text][-self.history_turns :]
        messages += [ChatMessage(t.role, t.text) for t in recent]
        if not recent or recent[-1].role != "user" or recent[-1].text != user_text:
            messages.append(ChatMessage("user", user_text))
        if self.perception_note:
            messages.insert(len(messages) - 1, ChatMessage("system", self.perception_note))
        return LlmRequest(
            messages=tuple(_merge_same_role(messages)),
            max_tokens=self.persona.max_tokens,
            temperature=self.persona.temperature,
            stop=self.stop,
            request_id=request_id,
        )


def _merge_same_role(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Chat templates expect alternating roles; consecutive user turns (a reply was never given) merge."""
    out: list[ChatMessage] = []
    for m in messages:
        if out and out[-1].role == m.role and m.role != "system":
            out[-1] = ChatMessage(m.role, f"{out[-1].content} {m.content}")
        else:
            out.append(m)
    return out
