"""Conversation history and the LLM request built from it: the prompt architecture.

Only committed turns enter the history: the user's turn at `eot_commit`, the replica's turn when its
reply has played out or, if the user interrupted, the part that was actually heard. A speculative reply
is built from `history + the transcript snapshot` without touching the history.

The request, in order (what a small model cannot misread, and what keeps the LLM's prefix cache):
1. one system message: the persona's prompt, then the house rules of a spoken call (talk to the user as
   "you", answer what they just said in short complete sentences, never repeat, no markup, NOTE lines are
   private), then the conversation's context under a heading of its own. It changes only when the context
   does, so the model's cached prefix survives every turn;
2. the committed history, user and replica turns alternating, each user turn after the notes it was answered
   with: the prompt only ever grows at its end, so the cached prefix of a turn's prompt reaches to the end of
   the previous reply (dropping a turn's note from the history made every later turn evaluate the previous
   user turn and reply again: 83 new prompt tokens instead of about 45, docs/replies.md). When the history
   outgrows `history_turns`, its oldest half goes at once, not one turn per turn (which would move the start
   of the history, and so miss the cache, on every turn);
3. the notes about this turn (what perception makes of the user; later knowledge and memories), in one
   system message, each line marked NOTE and written as guidance, not as a line to say; only when they
   differ from the last notes the prompt shows (an unchanged note is not repeated on every turn);
4. the user's turn.
The prompt asks; `orchestrator/speech/guard.py` enforces: a clause that narrates a note or repeats an earlier
one is never spoken.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from orchestrator.models.ports import ChatMessage, LlmRequest
from orchestrator.session.persona import Persona
from orchestrator.speech.guard import ReplyGuard

# The house rules of a spoken call, after the persona's own prompt (kept short: every token is evaluated).
SPEAKING_RULES = (
    'You are on a live voice call. Speak to the person directly, as "you". {length} Never repeat something you '
    "already said. No lists, markdown, code or emoji. Lines marked NOTE are private notes for you: use them, but "
    "never read them out or mention them."
)


def speaking_rules(max_sentences: int) -> str:
    """The rules, with the reply length the persona allows (a storyteller may take more than two sentences)."""
    if max_sentences <= 2:
        length = "Answer what they just said in one or two short, complete sentences, then stop."
    else:
        length = "Answer what they just said in complete sentences."
    return SPEAKING_RULES.format(length=length)


CONTEXT_HEADING = "What you know for this call:"


_SUBJECT = re.compile(r"\b([Tt])he (?:user|caller)\b('s)?")
_PLURAL = {"is": "are", "has": "have", "was": "were", "does": "do", "looks": "look", "sounds": "sound",
           "seems": "seem", "appears": "appear", "keeps": "keep", "smiles": "smile", "frowns": "frown",
           "speaks": "speak"}  # fmt: skip


def _about_them(sentence: str) -> str:
    """ "The user sounds tense and looks away" -> "They sound tense and look away" (one clause)."""
    if not _SUBJECT.search(sentence):
        return sentence
    out = _SUBJECT.sub(lambda m: ("T" if m.group(1) == "T" else "t") + ("heir" if m.group(2) else "hey"), sentence)
    return re.sub(r"[a-z]+", lambda m: _PLURAL.get(m.group(0), m.group(0)), out)


def note_line(note: str) -> str:
    """A note as the model sees it: marked NOTE, about "them" (the person it talks to; a third-person "the user"
    is what a small model copies into its reply), without the producer's tag."""
    text = note.strip()
    if text.startswith("[") and "]" in text:
        text = text[text.index("]") + 1 :].strip()
    parts = re.split(r"(?<=[.;!?])(\s+)", text)
    return "NOTE: " + "".join(_about_them(p) for p in parts)


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str
    t: float  # session time it was committed
    interrupted: bool = False
    notes: tuple[str, ...] = ()  # a user turn: the notes in force when it was committed (stay in the prompt)


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
    # The current objective's guidance (the reply layer's notes), shown with the user's turn like a perception
    # note and kept with it in the history.
    steer: tuple[str, ...] = ()
    # The user's words the last reply was asked for before they were committed, and the notes it was built with.
    _answered: tuple[str, tuple[str, ...]] | None = field(default=None, repr=False)

    def commit_user(self, text: str, t: float) -> None:
        """The user's turn enters the history with the notes it was answered with: those of the reply already
        asked for these words (a speculative one, kept at the commit), else the notes in force now. A note that
        changed between the two would otherwise differ from the reply's prompt in the middle of the history, and
        every later prompt would miss the model's cache from there (the warm-up after each such reply
        re-evaluated the turn and the reply: ~60-130 tokens, 0.5-0.9 s of a core)."""
        answered, self._answered = self._answered, None
        notes = answered[1] if answered is not None and answered[0] == text else tuple(self.notes)
        self.turns.append(Turn("user", text, t, notes=notes))

    def forget_last_exchange(self) -> None:
        """Take the last user turn and the replica's answer to it out of the history (the prompt keeps its prefix:
        only its end goes)."""
        if self.turns and self.turns[-1].role == "assistant":
            self.turns.pop()
        if self.turns and self.turns[-1].role == "user":
            self.turns.pop()

    def commit_replica(self, text: str, t: float, *, interrupted: bool) -> None:
        # An interrupted reply is recorded as heard (no marker in the text: a small model imitates markers).
        self.turns.append(Turn("assistant", text, t, interrupted))

    @property
    def system_prompt(self) -> str:
        prompt = f"{self.persona.system_prompt}\n\n{speaking_rules(self.persona.max_sentences)}"
        return f"{prompt}\n\n{CONTEXT_HEADING}\n{self.context}" if self.context else prompt

    @property
    def notes(self) -> list[str]:
        """This turn's notes, as the model sees them (the reply guard keeps them from being read out)."""
        return [note_line(n) for n in (self.perception_note, *self.steer) if n.strip()]

    def prompt_notes(self, user_text: str) -> list[str]:
        """Every note the prompt for `user_text` shows (the history's and this turn's), once each: what the
        guard must keep from being read out."""
        recent, current = self._parts(user_text)
        lines = [n for t in recent for n in t.notes] + list(current[1] if current else ())
        return list(dict.fromkeys(lines))

    def _parts(
        self, user_text: str, *, follow_up: bool = False
    ) -> tuple[list[Turn], tuple[str, tuple[str, ...]] | None]:
        """The history a reply to `user_text` carries, and the user's turn with its notes when it is not
        committed yet (None when it is the history's last turn). A `follow_up` answers the last user turn
        again (a tool's result came back): the replica's turns after it are left out."""
        turns = self.turns
        if follow_up:
            last = max((i for i, t in enumerate(turns) if t.role == "user"), default=-1)
            if last >= 0 and turns[last].text == user_text:
                turns = turns[: last + 1]
        committed = bool(turns) and turns[-1].role == "user" and turns[-1].text == user_text
        recent = self._window(pending=0 if committed else 1, turns=turns)
        return recent, None if committed and recent else (user_text, tuple(self.notes))

    def _window(self, pending: int, turns: list[Turn] | None = None) -> list[Turn]:
        """The history the prompt carries: with the `pending` user turn not committed yet, at most
        `history_turns` messages; trimmed in steps of half of that, starting with a user turn where it can."""
        turns = [t for t in (self.turns if turns is None else turns) if t.text]
        limit = max(1, self.history_turns)
        if len(turns) + pending <= limit:
            return turns
        step = max(1, limit // 2)
        start = min(-(-(len(turns) + pending - limit) // step) * step, len(turns))  # excess, in whole steps
        while start < len(turns) - 1 and turns[start].role != "user":
            start += 1
        return turns[start:]

    def _messages(
        self, recent: list[Turn], current: tuple[str, tuple[str, ...]] | None, context: str = ""
    ) -> list[ChatMessage]:
        messages = [ChatMessage("system", self.system_prompt)]
        shown: tuple[str, ...] = ()  # a note goes in where it first holds, not again on every later turn

        def user_turn(text: str, notes: tuple[str, ...]) -> None:
            nonlocal shown
            if notes and notes != shown:
                messages.append(ChatMessage("system", "\n".join(notes)))
            shown = notes
            messages.append(ChatMessage("user", text))

        for i, turn in enumerate(recent):
            if turn.role == "user":
                if context and current is None and i == len(recent) - 1:
                    messages.append(ChatMessage("system", context))
                user_turn(turn.text, turn.notes)
            else:
                messages.append(ChatMessage(turn.role, turn.text))
        if current is not None:
            if context:
                messages.append(ChatMessage("system", context))
            user_turn(*current)
        return _merge_same_role(messages)

    def guard(self, user_text: str) -> ReplyGuard:
        """The guard of a reply to `user_text`: the notes its prompt shows, what the replica said, and the user
        turns the prompt shows (the replica must not speak as the user)."""
        recent, current = self._parts(user_text)
        heard = [t.text for t in recent if t.role == "user"] + ([current[0]] if current else [])
        return ReplyGuard(notes=self.prompt_notes(user_text), said=self.said(), heard=heard)

    def said(self) -> list[str]:
        """What the replica said so far (the guard keeps it from saying it again)."""
        return [t.text for t in self.turns if t.role == "assistant" and t.text]

    def request(
        self,
        user_text: str,
        *,
        request_id: str = "",
        context: str = "",
        follow_up: bool = False,
        answering: bool = True,
    ) -> LlmRequest:
        """The chat for a reply to `user_text` (the current turn's transcript, committed or not). `context` (the
        documents and memories for this turn, already marked) goes in as a system message just before the
        user's turn, for this reply only: the history keeps no context, so the cached prefix stays valid.
        `answering`: the request is a reply's (its notes go into the history with the turn, `commit_user`); a
        prefill's is not."""
        recent, current = self._parts(user_text, follow_up=follow_up)
        if current is not None and answering:
            self._answered = current
        return LlmRequest(
            messages=tuple(self._messages(recent, current, context)),
            max_tokens=self.persona.max_tokens,
            temperature=self.persona.temperature,
            stop=self.stop,
            request_id=request_id,
            model=self.persona.llm_model,
        )

    def warm_request(self, *, request_id: str = "") -> LlmRequest | None:
        """The history as the next reply's prompt will start, to evaluate (a prefill: `max_tokens` 0, nothing
        generated) as soon as the replica's turn is committed: the model's cache then holds it while the user
        speaks, and the next reply evaluates only the user's new words (and a changed note). Before anything
        is said, the system prompt alone; None while a user turn waits for its reply."""
        recent = self._window(pending=1)
        if recent and recent[-1].role != "assistant":
            return None
        return LlmRequest(
            messages=tuple(self._messages(recent, None)),
            max_tokens=0,
            temperature=0.0,
            request_id=request_id,
            model=self.persona.llm_model,
        )

    def words_request(self, user_text: str, *, request_id: str = "", context: str = "") -> LlmRequest | None:
        """The prompt of a reply to the user's words so far (a partial transcript while they speak, or the
        pause's final one before the floor decides), to evaluate as a prefill (`max_tokens` 0): the reply that
        follows then starts with those words in the model's cache and evaluates only what they left out.
        Exactly the reply's prompt (`request`), so it shares every token up to the first word that changed;
        after a user turn whose reply never came (cancelled: the user went on), the two turns merged, as the
        reply will have them. The caller asks only while no reply is committed or playing: the replica's turn,
        not yet in the history, would otherwise come before these words. `context`: what the reply layer would
        retrieve for these words (it goes before them, as in the reply's). None for no words."""
        if not user_text.strip():
            return None
        reply = self.request(user_text, request_id=request_id, context=context, answering=False)
        return dataclasses.replace(reply, max_tokens=0, temperature=0.0, stop=())


def _merge_same_role(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Chat templates expect alternating roles; consecutive user turns (a reply was never given) merge."""
    out: list[ChatMessage] = []
    for m in messages:
        if out and out[-1].role == m.role and m.role != "system":
            out[-1] = ChatMessage(m.role, f"{out[-1].content} {m.content}")
        else:
            out.append(m)
    return out
