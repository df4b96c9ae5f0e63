"""Lexical completeness of a (partial) transcript: does the text so far read like a finished turn?

A cheap, explainable score in [0, 1] for the floor fusion. It looks at how the text ends: a dangling
conjunction, preposition, article or filler ("and", "to the", "um") means the speaker is mid-thought; a
question, a closing courtesy or a short answer after a replica question reads as complete. Unknown
(no transcript yet) is reported as such, not guessed, so the fusion can ignore it.
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
    i i'm i'd i'll we you they he she it's there's let's""".split()
)
_FILLERS = frozenset("um uh er erm hmm uhm mm well like".split())
_CLOSERS = frozenset("thanks thank please bye goodbye okay ok yes yeah yep no nope sure right exactly".split())
_WORD = re.compile(r"[a-z0-9']+")
_QUESTION_START = re.compile(
    r"^(what|why|how|when|where|who|which|whose|do|does|did|is|are|was|were|can|could|would|will|should|shall|have|has)\b"
)


@dataclass(frozen=True)
class Lexical:
    present: float  # 1 if there is a transcript to judge
    complete: float  # 0..1, 0.5 when unknown
    context_question: float  # 1 if the replica's last utterance was a question


def completeness(text: str) -> float:
    words = _WORD.findall(text.lower())
    if not words:
        return 0.5
    last = words[-1]
    stripped = text.rstrip()
    if stripped.endswith(("...", "…", ",", "-", ":", ";")):
        return 0.1
    if last in _FILLERS:
        return 0.1
    if last in _DANGLING:
        return 0.15 if len(words) > 1 or last not in {"i", "so", "well"} else 0.3
    if stripped.endswith(("?", ".", "!")):
        return 0.9
    if last in _CLOSERS:
        return 0.85
    return 0.65


def lexical(text: str, context: str = "") -> Lexical:
    ctx = context.strip().lower()
    asked = 1.0 if ctx.endswith("?") or bool(_QUESTION_START.match(ctx)) else 0.0
    if not text.strip():
        return Lexical(present=0.0, complete=0.5, context_question=asked)
    return Lexical(present=1.0, complete=completeness(text), context_question=asked)
