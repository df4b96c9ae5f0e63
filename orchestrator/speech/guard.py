"""The reply guard: what of a reply may be spoken, decided clause by clause before the TTS sees it.

A small model does not always follow its prompt. Whatever the prompt says, these never reach the user's ear:
- **narration**: the replica talking *about* the user or reading out its private notes ("The user sounds
  hesitant", "This is an observation from voice cues", a run of five words copied from a note, or saying
  back the state a note names: "you sound hesitant", "they might be unsure");
- **repetition**: a clause the replica already said, in this reply or an earlier one (word for word after
  normalising, or nearly: 85 % of the words of a clause of five or more), or a clause of four or more words
  that is, to 85 % of its words, one run of an earlier sentence (however that sentence was split into
  clauses: "If you have any questions," after "Let me know if you have any questions.");
- **echo**: the replica speaking as the user, a clause of four or more words that is (85 % of its words) one
  run of a user turn the prompt showed and says "I", "me" or "my" in it ("Hi, I'm calling about my bill."
  back to the caller who said it). Saying the user's words back in the second person ("you were charged
  twice"), or reading back what they gave (a name, an email, a number), stays. This rule and the run rule of
  **repetition** judge a clause with the start of its sentence already spoken, so a short tail is not
  dropped alone;
- **markup**: code, markdown, lists, braces or emoji (it is a voice call);
- **incomplete**: the unfinished end of a reply (generation stopped mid-sentence), once something complete
  has been said.

Once a clause is dropped, the rest of its sentence is dropped too, for the same reason: it would be a fragment.

Pure: text in, a reason out. The reply runner (`orchestrator/session/replies.py`) applies it and reports each
dropped clause as a `reply_clause_dropped` event.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable

# Talking about the person on the line in the third person, or about the notes themselves. ("the customer
# service team", "the patient portal" are not about the person.)
NARRATION = re.compile(
    r"\b(the|this|our) (user|caller)\b|\b(user|caller)'s\b"
    r"|\bthe (customer|patient|client)\b(?! (service|support|portal|account|care|center|centre|team|line))"
    r"|\[perception\]|\bperception\b|\bobservations?\b|\b(voice|camera|visual|audio) cues?\b|\bmay be wrong\b",
    re.IGNORECASE,
)
MARKUP = re.compile(
    r"```|`|\{|\}|\[|\]|\*|==|=>|\bdef |\bimport |\bprint\(|^\s*(#+|\d+\.|-|•)\s|:\s*1\.(\s|$)", re.MULTILINE
)  # the last: a list opened after a colon ("follow these steps: 1. Open...") once the lines are joined
_WORD = re.compile(r"\d+(?:[.,:]\d+)*|[^\W\d_]+(?:'[^\W\d_]+)*")
NOTE_RUN = 5  # this many consecutive words copied from a note is reading it out
NEAR_DUPLICATE = 0.85  # share of a clause's words found in an earlier one
MIN_REPEAT_WORDS = 3  # shorter clauses ("Okay.", "Thank you.") may come back
RUN_WORDS = 4  # a clause this long or longer that is (NEAR_DUPLICATE of it) a run of an earlier sentence
FIRST_PERSON = frozenset("i i'm i've i'd i'll me my mine myself".split())  # the user's voice, not the replica's
# Saying a note's state back to the person: "you sound hesitant", "they might be a bit unsure", "you're upset".
_ASCRIBE = re.compile(
    r"\b(?:you|they)(?:'re| are| seem| sound| look| appear| feel| might be| may be| must be| could be)"
    r"((?: [\w']+){1,3})",
    re.IGNORECASE,
)
# Words of a note that are not a state (what is left of "NOTE: They sound hesitant; they may be unsure.").
_NOT_STATE = frozenset(
    "note they them their sound sounds look looks seem seems may be are is and or a an the to of at from over "
    "last turn this that with started grew became away camera voice words face manner not match so observation "
    "cues wrong".split()
)


def words(text: str) -> list[str]:
    """Lower-case words without punctuation ("it's" and "3.5" stay whole)."""
    return _WORD.findall(text.casefold())


def _has_emoji(text: str) -> bool:
    return any(unicodedata.category(c) == "So" or 0x1F000 <= ord(c) <= 0x1FAFF for c in text)


def complete(text: str) -> bool:
    """Whether `text` ends a sentence."""
    return text.rstrip().rstrip("\"')").endswith((".", "!", "?"))


class ReplyGuard:
    """One reply's guard: knows the notes the prompt carried and what the replica already said."""

    def __init__(self, *, notes: Iterable[str] = (), said: Iterable[str] = (), heard: Iterable[str] = ()) -> None:
        self._note_runs: set[tuple[str, ...]] = set()
        self._states: set[str] = set()  # what the notes say the person is ("hesitant", "unsure")
        for note in notes:
            w = words(note)
            self._note_runs |= {tuple(w[i : i + NOTE_RUN]) for i in range(len(w) - NOTE_RUN + 1)}
            self._states |= {x for x in w if len(x) > 3 and x not in _NOT_STATE}
        self._said: list[list[str]] = []  # earlier clauses, as words
        self._sentences: list[list[str]] = []  # earlier sentences, whole, as words
        for text in said:
            self._said += [words(s) for s in re.split(r"(?<=[.!?,;:])\s+", text) if words(s)]
            self._sentences += [w for sentence in re.split(r"(?<=[.!?])\s+", text) if (w := words(sentence))]
        self._heard = [w for text in heard if len(w := words(text)) >= RUN_WORDS]  # the user's turns, as words
        self._sentence: list[str] = []  # this reply's sentence so far (its clauses' words)
        self.spoken: list[str] = []  # the clauses of this reply that passed
        self._broken: str | None = None  # why the current sentence's start was dropped (the rest goes too)

    def check(self, clause: str) -> str | None:
        """Why `clause` must not be spoken (None: it may). A clause that passes is remembered as said. Once a
        clause is dropped, the rest of its sentence is too, for the same reason (what follows would be a
        fragment: "or support team to move next month." without the start it continued)."""
        reason = self._broken or self._reason(clause)
        if reason is not None:
            self._broken = None if complete(clause) else reason
        else:
            self.spoken.append(clause)
            w = words(clause)
            if w:
                self._said.append(w)
            self._sentence += w
            if complete(clause):  # the sentence is whole: later clauses must not say it again
                self._sentences.append(self._sentence)
                self._sentence = []
        return reason

    def finish(self, tail: str) -> str | None:
        """The reply's last, flushed piece: like `check`, and an unfinished sentence is dropped once something
        complete was said (a reply is cut at its last complete sentence)."""
        if not tail.strip():
            return None
        if not complete(tail) and any(complete(c) for c in self.spoken):
            return "incomplete"
        return self.check(tail)

    def _reason(self, clause: str) -> str | None:
        if MARKUP.search(clause) or _has_emoji(clause):
            return "markup"
        if NARRATION.search(clause):
            return "narration"
        w = words(clause)
        if any(tuple(w[i : i + NOTE_RUN]) in self._note_runs for i in range(len(w) - NOTE_RUN + 1)):
            return "narration"
        if self._states and any(set(words(m.group(1))) & self._states for m in _ASCRIBE.finditer(clause)):
            return "narration"
        # A run of an earlier sentence or of a user turn is judged on the sentence so far: a clause that goes on
        # one already spoken ("Yes, I should take some cough syrup" | "before I come in.") is dropped only when
        # the sentence as a whole is the copy (dropping a short tail alone would leave its start a fragment).
        whole = self._sentence + w
        if len(whole) >= RUN_WORDS:
            run = max((_longest_run(whole, s).size for s in self._sentences), default=0)
            if run >= RUN_WORDS and run >= NEAR_DUPLICATE * len(whole):
                return "repetition"
            for user in self._heard:
                m = _longest_run(whole, user)
                copied = whole[m.a : m.a + m.size]
                if m.size >= RUN_WORDS and m.size >= NEAR_DUPLICATE * len(whole) and FIRST_PERSON & set(copied):
                    return "echo"
        if len(w) >= MIN_REPEAT_WORDS:
            for earlier in [*self._said, *self._sentences]:  # clauses, and whole sentences ("You know, Jordan.")
                if w == earlier:
                    return "repetition"
                if len(w) >= 5 and len(earlier) >= 5:
                    earlier_words = set(earlier)
                    shared = sum(1 for x in w if x in earlier_words)
                    if shared / len(w) >= NEAR_DUPLICATE and shared / len(earlier) >= NEAR_DUPLICATE:
                        return "repetition"
        return None


def _longest_run(a: list[str], b: list[str]) -> difflib.Match:
    """The longest run of consecutive words `a` and `b` have in common (`.a`: where it starts in `a`)."""
    return difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
