"""Learned text end-of-turn model: from the user's transcript so far, is the turn complete or mid-thought?

A small logistic model over hashed features of the words, trained by perf/train_text_turn.py on
permissively licensed dialogue text (chatterbot-corpus, BSD-3) and the turn texts of our own development
set; weights live next to the Triton floor fusion as JSON (model_repository/floor_fusion/1/text_turn.json),
so retraining never touches code. It complements the hand-written rules of orchestrator/turns/lexical.py,
which only know the endings someone thought of; this one weighs every ending, opening and length it saw.

Text is normalised the way streaming Whisper text arrives: Whisper closes almost any fragment with a full
stop and drops the commas and fillers that mark a hold, so all punctuation is ignored (lower case, marks
become spaces; digits become one token per digit, so "4521" and "4 5 2 1" read the same). Only a final "?"
may be kept, as a token, when the weights file says the model was trained with it. Features:
- the last one, two and three words, the first one and two words, a bag of words;
- the word count (bucketed), alone and crossed with the first and the last word;
- the class of the last word (function word, filler, digit, month, weekday, number word), a repeated last
  word ("the the"), the length of a trailing digit run ("is 5 5 5" is short of a phone number);
- the replica's previous utterance, as a few flags (it asks a question, a yes/no question, a wh-question,
  asks to tell/describe/explain, or there is none), crossed with the word count: a bare "Tuesday" after
  "What day works for you?" is an answer, not the start of a list.

Inference is pure Python: a sum of the weights at a few dozen hashed indices (zlib.crc32, so indices are the
same in every process), about 15 microseconds a call. Empty text is unknown: 0.5.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "model_repository" / "floor_fusion" / "1" / "text_turn.json"
FEATURE_VERSION = 1
QUESTION_TOKEN = "<q>"
DIGIT_TOKEN = "<d>"

# Words after which an English turn rarely ends (conjunctions, prepositions, articles, possessives,
# auxiliaries, subject-only pronouns). Words that also end turns as objects or answers ("thank you", "I like
# that", "definitely not", "not really") are left out: the model learns them one by one. Part of the feature
# definition: changing it needs retraining.
FUNCTION_WORDS = frozenset(
    """a an the and or but so because since although though if when while whereas unless until than
    to of for from with without into onto about at by in on as like my your our their his her its
    some any which who whose whom where what how is are was were be been am will would
    can could should shall may might must do does did have has had very just also
    i i'm i'd i'll i've we we're we'll you're they they're he she it's there's let's whether
    plus nor after before during through between among per""".split()
)
FILLERS = frozenset("um uh er erm hmm uhm mm ah eh".split())
_MONTHS = frozenset("january february march april may june july august september october november december".split())
_WEEKDAYS = frozenset("monday tuesday wednesday thursday friday saturday sunday".split())
_NUMBER_WORDS = frozenset(
    """zero oh one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
    seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million
    first second third fourth fifth sixth seventh eighth ninth tenth""".split()
)
_YES_NO = frozenset("do does did is are was were can could would will should have has shall may".split())
_WH = frozenset("what when where which who whom whose why how".split())
_TELL = re.compile(r"\b(tell me|describe|explain|walk me through|talk me through|say more|go on)\b")
_TOKEN = re.compile(r"[a-z0-9']+")
_SENTENCES = re.compile(r"[.!?]+\s+")


def normalise(text: str, question_token: bool = False) -> list[str]:
    """Lower-case word tokens with punctuation ignored; digits one token each; with `question_token`, a final
    "?" becomes the token "<q>"."""
    low = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    tokens: list[str] = []
    for raw in _TOKEN.findall(low):
        word = raw.strip("'")
        if not word:
            continue
        if any(c.isdigit() for c in word):
            for part in re.findall(r"\d|[a-z']+", word):
                tokens.append(DIGIT_TOKEN if part.isdigit() else part)
        else:
            tokens.append(word)
    if question_token and tokens and low.rstrip().endswith("?"):
        tokens.append(QUESTION_TOKEN)
    return tokens


def _bucket(n: int) -> str:
    if n <= 4:
        return str(n)
    if n <= 6:
        return "5-6"
    if n <= 9:
        return "7-9"
    if n <= 14:
        return "10-14"
    return "15+"


def _word_class(word: str) -> str:
    if word in FILLERS:
        return "filler"
    if word == DIGIT_TOKEN:
        return "digit"
    if word in _MONTHS:
        return "month"
    if word in _WEEKDAYS:
        return "weekday"
    if word in _NUMBER_WORDS:
        return "numword"
    if word in FUNCTION_WORDS:
        return "func"
    return "other"


def context_flags(context: str) -> list[str]:
    """What the replica's previous utterance was: "none", or any of "q" (ends with "?"), "yn" (a yes/no
    question), "wh" (a wh-question), "tell" (asks to tell, describe or explain); "stmt" when none apply."""
    ctx = context.strip().lower()
    if not _TOKEN.search(ctx):
        return ["none"]
    last = [s for s in _SENTENCES.split(ctx) if _TOKEN.search(s)][-1]
    words = _TOKEN.findall(last)
    flags: list[str] = []
    if ctx.endswith("?"):
        flags.append("q")
    if words[0] in _YES_NO:
        flags.append("yn")
    if words[0] in _WH or (len(words) > 1 and words[0] in ("and", "so") and words[1] in _WH):
        flags.append("wh")
    if _TELL.search(ctx):
        flags.append("tell")
    return flags or ["stmt"]


def feature_strings(text: str, context: str = "", question_token: bool = False) -> list[str]:
    """The model's features of (`text`, `context`) as strings, before hashing; empty for empty text."""
    words = normalise(text, question_token)
    if not words:
        return []
    asked = words[-1] == QUESTION_TOKEN
    core = words[:-1] if asked else words
    if not core:
        return []
    n = len(core)
    nb = _bucket(n)
    last = core[-1]
    lc = _word_class(last)
    padded = ["<s>", "<s>", *core]
    feats = [
        f"w1={last}",
        f"w2={padded[-2]} {padded[-1]}",
        f"w3={padded[-3]} {padded[-2]} {padded[-1]}",
        f"f1={core[0]}",
        f"f2={core[0]} {core[1] if n > 1 else '</s>'}",
        f"n={nb}",
        f"f1n={core[0]}|{nb}",
        f"w1n={last}|{nb}",
        f"lc={lc}",
        f"q={int(asked)}",
    ]
    feats.extend(f"u={w}" for w in sorted(set(core)))
    if n > 1 and last == core[-2]:
        feats.append("rep")
    run = 0
    for w in reversed(core):
        if w != DIGIT_TOKEN:
            break
        run += 1
    if run:
        feats.append(f"digits={min(run, 11)}")
    feats.extend(f"cn={flag}|{nb}" for flag in context_flags(context))
    return feats


def hash_index(feature: str, size: int) -> int:
    """Deterministic bucket of a feature string (the same in every process, unlike hash())."""
    return zlib.crc32(feature.encode("utf-8")) % size


def features(text: str, context: str = "", size: int = 1 << 15, question_token: bool = False) -> list[int]:
    """Hashed feature indices of (`text`, `context`) (with repeats: colliding features add up)."""
    return [hash_index(f, size) for f in feature_strings(text, context, question_token)]


@dataclass(frozen=True)
class TextTurnModel:
    """Logistic model over hashed features: P(the user's turn is complete | text so far, replica context)."""

    size: int
    bias: float
    coef: tuple[float, ...]
    question_token: bool = False
    note: str = ""

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> TextTurnModel:
        """The model stored at `path` (read once per resolved path)."""
        return _load(str(Path(path).resolve()))

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> TextTurnModel:
        if d.get("feature_version") != FEATURE_VERSION:
            raise ValueError(
                f"text turn weights have feature_version {d.get('feature_version')}, need {FEATURE_VERSION}"
            )
        size = int(str(d["size"]))
        coef = [0.0] * size
        raw = d["coef"]
        if isinstance(raw, dict):  # sparse: {"index": weight}
            for k, v in raw.items():
                coef[int(k)] = float(v)
        elif isinstance(raw, list):
            if len(raw) != size:
                raise ValueError(f"text turn weights: {len(raw)} coefficients for size {size}")
            coef = [float(v) for v in raw]
        else:
            raise ValueError("text turn weights: coef must be a list or a mapping")
        return cls(
            size=size,
            bias=float(str(d["bias"])),
            coef=tuple(coef),
            question_token=bool(d.get("question_token", False)),
            note=str(d.get("note", "")),
        )

    def logit(self, text: str, context: str = "") -> float:
        """Log-odds that the turn is complete; 0.0 (unknown) for empty text."""
        idx = features(text, context, self.size, self.question_token)
        if not idx:
            return 0.0
        coef = self.coef
        return self.bias + sum(coef[i] for i in idx)

    def p_complete(self, text: str, context: str = "") -> float:
        """P(the turn is complete) in (0, 1); 0.5 for empty text."""
        z = self.logit(text, context)
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)


@lru_cache(maxsize=8)
def _load(path: str) -> TextTurnModel:
    with open(path, encoding="utf-8") as f:
        return TextTurnModel.from_dict(json.load(f))
