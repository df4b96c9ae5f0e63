"""Lexical completeness of a (partial) transcript: does the text so far read like a finished turn?

A cheap, explainable score in [0, 1] for the floor fusion. It looks at how the text ends: a dangling
conjunction, preposition, article or filler ("and", "to the", "um") means the speaker is mid-thought; a
question, a closing courtesy or a short answer after a replica question reads as complete. Unknown
(no transcript yet) is reported as such, not guessed, so the fusion can ignore it.

The score must hold up on real streaming Whisper text, not only on a clean script. Whisper closes almost
every fragment with a full stop and drops the comma or filler that marks a hold ("Before we start," becomes
"before we start."; "I need eggs, milk," becomes "I need eggs. Milk."), so a final "." is only weak evidence
of a finished turn (and no mark at all means a partial decoded mid-speech: neutral): completeness is judged
from the words. Marks Whisper adds only when they mean something (a
trailing comma, "...", "-", a question mark) are still used. Cues on the words:
- the last word dangles (conjunction, preposition, article, possessive, auxiliary, subject pronoun, filler);
- the turn so far is only a subordinate clause ("before we start", "if I upgrade my plan");
- the last sentence is a short verbless fragment after an earlier one ("I need eggs. Milk.");
- the last sentence is a list still missing its "and" ("We use email, Slack.");
- an identifier read in groups is still short ("My phone number is 555.", "The account number is 447."),
  or a date stops at its month ("My date of birth is March.");
- Whisper loops on audio cut mid-phrase ("I think I think I think I") - a repeated tail is unfinished.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Words after which an English turn almost never ends.
_DANGLING = frozenset(
    """a an the and or but so because since although though if when while whereas unless until than
    to of for from with without into onto about at by in on as like my your our their his her its this
    that these those some any which who whose whom where what how is are was were be been am will would
    can could should shall may might must do does did have has had not very really just also then
    i i'm i'd i'll i've we we're we'll you you're they they're he she it's there's let's whether
    plus nor after before during through between among per""".split()
)
_FILLERS = frozenset("um uh er erm hmm uhm mm well like".split())
_CLOSERS = frozenset("thanks thank please bye goodbye okay ok yes yeah yep no nope sure right exactly".split())
# A turn that opens with one of these and has no comma yet is a subordinate clause still waiting for its
# main clause ("before we start", "if I upgrade my plan").
_SUBORDINATORS = frozenset(
    "before after if when whenever while because since although though unless until once".split()
)
# Enough verbs and verb-like words to tell "Milk." (a list item) from "Nobody got back." (a clause).
_VERBISH = frozenset(
    """is are was were be been being am do does did have has had will would can could should shall may might
    must get got go went gone come came make made take took need want like know think see saw say said tell
    told call called pay paid work works use used help let let's thanks thank please i'm it's that's there's
    we're you're they're he's she's i've i'll i'd don't doesn't didn't can't won't isn't wasn't yes no
    okay ok sure right yeah yep nope bye""".split()
)
_MONTHS = frozenset("january february march april may june july august september october november december".split())
_WORD = re.compile(r"[a-z0-9']+")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s+|$)")
_QUESTION_START = re.compile(
    r"^(what|why|how|when|where|who|which|whose|do|does|did|is|are|was|were|can|could|would|will|should|shall|have|has)\b"
)

INCOMPLETE = 0.1  # explicit trailing marks, fillers, Whisper loops
DANGLING = 0.15
UNFINISHED = 0.3  # a subordinate clause alone, or a verbless fragment after an earlier sentence
QUESTION = 0.9
CLOSER = 0.85
SENTENCE = 0.75  # words that could end a turn, closed by a full stop (Whisper's, so only mild evidence)
PLAIN = 0.5  # no closing mark: on Whisper text, a partial decoded while the user was still speaking


@dataclass(frozen=True)
class Lexical:
    present: float  # 1 if there is a transcript to judge
    complete: float  # 0..1, 0.5 when unknown
    context_question: float  # 1 if the replica's last utterance was a question


def _repeats_tail(words: list[str]) -> bool:
    """True when the text ends in a loop: some phrase of 1-6 words occurs three times in a row, and the text
    ends inside or right after that loop (Whisper decoding audio that stops mid-phrase)."""
    n = len(words)
    for size in range(1, 7):
        for start in range(max(0, n - 4 * size), n - 3 * size + 1):
            unit = words[start : start + size]
            if words[start + size : start + 2 * size] == unit and words[start + 2 * size : start + 3 * size] == unit:
                tail = words[start + 3 * size :]
                if len(tail) < size and tail == unit[: len(tail)]:
                    return True
    return False


def _verbless_fragment(text: str) -> bool:
    """The last sentence is a short fragment without a verb, after an earlier sentence ("I need eggs. Milk.")."""
    sentences = [s for s in _SENTENCE_END.split(text.lower()) if _WORD.search(s)]
    if len(sentences) < 2:
        return False
    last = _WORD.findall(sentences[-1])
    return len(last) <= 3 and not any(_has_verb(w) for w in last)


def _has_verb(word: str) -> bool:
    return word in _VERBISH or word.endswith(("ed", "ing", "n't"))


def _open_list(text: str) -> bool:
    """The last sentence lists short verbless items with no "and"/"or" yet ("We use email, Slack.")."""
    sentence = [s for s in _SENTENCE_END.split(text.lower()) if _WORD.search(s)][-1]
    parts = [_WORD.findall(p) for p in sentence.split(",")]
    parts = [p for p in parts if p]
    if len(parts) < 2 or parts[0][0] in _CLOSERS | _FILLERS or parts[0][-1] in _DANGLING:
        return False  # "No, well, maybe": a reply, not a list; "It was on the, fourteenth": a resumed clause
    last = parts[-1]
    if any(w in ("and", "or") for w in last) or all(w.isdigit() for w in last):
        return False
    return len(last) <= 3 and not any(_has_verb(w) for w in last)


def _short_identifier(words: list[str]) -> bool:
    """A phone number, code or account number that ends in a digit group and is still short: people read
    these in groups of 3-4 with a pause between them."""
    if not words[-1].isdigit() or not any(w in ("number", "numbers", "code", "pin") for w in words):
        return False
    digits = sum(len(w) for w in words if w.isdigit())
    return digits < (10 if "phone" in words else 7 if "number" in words or "numbers" in words else 4)


def _bare_month(words: list[str]) -> bool:
    """A date that stops at the month ("My date of birth is March."), not "the 14th of February"."""
    return words[-1] in _MONTHS and len(words) > 1 and words[-2] not in ("of", "in", "since", "until", "by")


def _subordinate_only(text: str, words: list[str]) -> bool:
    return words[0] in _SUBORDINATORS and len(words) <= 8 and not re.search(r"[,;:?]", text)


def completeness(text: str, asked: bool = False) -> float:
    """Completeness of `text`; `asked`: the replica's last utterance was a question, so a short verbless
    answer ("Friday.", "two people") is a whole turn rather than the start of a list."""
    words = _WORD.findall(text.lower())
    if not words:
        return 0.5
    last = words[-1]
    stripped = text.rstrip()
    if stripped.endswith(("...", "…", ",", "-", ":", ";")):
        return INCOMPLETE
    if last in _FILLERS or _repeats_tail(words):
        return INCOMPLETE
    if last in _DANGLING:
        return DANGLING if len(words) > 1 or last not in {"i", "so", "well"} else 0.3
    if stripped.endswith("?"):
        return QUESTION
    if last in _CLOSERS:
        return CLOSER
    if _subordinate_only(stripped, words) or _verbless_fragment(stripped) or _open_list(stripped):
        return UNFINISHED
    if _short_identifier(words) or _bare_month(words):
        return UNFINISHED
    if not asked and len(words) <= 4 and not any(_has_verb(w) for w in words):
        return UNFINISHED  # "the invoice", "I need bags": the start of a clause, not an answer
    # Whisper writes a full stop after almost any fragment: weak evidence, but more than none.
    return SENTENCE if stripped.endswith((".", "!")) else PLAIN


def lexical(text: str, context: str = "") -> Lexical:
    ctx = context.strip().lower()
    asked = 1.0 if ctx.endswith("?") or bool(_QUESTION_START.match(ctx)) else 0.0
    if not text.strip():
        return Lexical(present=0.0, complete=0.5, context_question=asked)
    return Lexical(present=1.0, complete=completeness(text, asked > 0), context_question=asked)
