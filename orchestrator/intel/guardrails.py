"""Guardrails: what the user may not say without a scripted answer, and what the replica may never say.

A guardrail is the API body of `POST /v1/guardrails`::

    {"name": "no_diagnosis", "applies_to": "replica", "fallback_text": "I can't advise on that.",
     "rule": {"type": "phrases", "phrases": ["your diagnosis", "you have cancer"]}}

and `parse_guardrail` turns it into a `Guardrail` (or raises `Invalid` with the JSON path of the problem).
Rule types, cheapest first (the order `GuardrailSet.check` tries them in):

- `phrases` `{phrases: [str], match?: "word"|"substring"}`: any phrase appears. Text and phrases are compared
  as word sequences after normalising (NFKC, casefolded, curly quotes straightened, whitespace collapsed,
  punctuation dropped between words, symbols kept: "C++" is "c + +"). `word` (the default) matches whole
  words ("ass" is not in "class"), `substring` matches inside words too ("darn" in "darned");
- `pattern` `{pattern: <Python regex>, flags?: "i"|"m"|"s" (any of them)}`: the regex matches somewhere in the
  last 2,000 characters of the raw text. Refused at parse: over 500 characters, a pattern that matches empty
  text (every utterance would trigger), and patterns that make a backtracking engine slow (below);
- `topics` `{topics: {topic: [keywords]}}`: like `phrases` (whole words) with many lists; reports the topic;
- `semantic` `{examples: [utterances], threshold?: 0..1}`: the text's cosine similarity to an example reaches
  the threshold (default `SEMANTIC_THRESHOLD`). Example vectors are embedded once, on first use, and kept on
  the `Guardrail`;
- `llm` `{policy: "<natural language>"}`: a JSON judge answers `{"violates": bool, "reason": str}`.

**Checking a reply clause by clause.** The replica's reply is checked one clause at a time before it is
spoken, but a violation may straddle clauses: "I can tell you," + "your diagnosis is cancer." So `check`
takes `context`, the clauses of this reply already spoken, and the deterministic rules (phrases, pattern,
topics) look at the clause alone and at the last clause of `context` joined to it; a match counts only if it
reaches into the new clause (what lay wholly in earlier clauses was checked when they were). Semantic rules
embed the clause and the joined pair (one embedding call) and take the higher similarity; the `llm` judge is
shown the context as what came before. A user turn is checked whole, usually without context.

**Pattern cost.** Python's `re` backtracks: `(a+)+` takes exponential time on "aaaa…!", and even `.*a.*b` or
`\\w+\\w+x` take seconds on 2,000 adversarial characters. The static check refuses (conservatively, as
star-height checkers do): a repeated group whose content can itself match in several ways (a variable
quantifier inside: `(a+)+`, `(a*)*`, `(.*)*`, `(ab?){5}`, `\\d+(,\\d+)*`; or an alternation that is not a
prefix-free set of plain words: `(a|aa)+`); more than one unbounded quantifier over a catch-all atom (`.`,
`\\S`, `\\W`, `\\D`, `[^…]`); and two adjacent unbounded quantifiers whose atoms overlap (`\\w+\\d+`).
Accepted patterns still cost up to ~60 ms on 2,000 hostile characters (`\\w+\\s+\\w+\\s+\\w+x`); replica
clauses are short, so in practice this is microseconds. A linear-time engine (RE2) would remove the issue.

**Cost.** `check_fast` (phrases, pattern, topics) is pure Python on one normalised copy of the text: a few
microseconds per rule for a clause (`tests/unit/test_guardrails.py` prints a measurement).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import string
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from orchestrator.errors import Invalid
from orchestrator.intel.judge import JsonModel, JudgeFailed
from orchestrator.models.ports import F32, ChatMessage, Embedder

Side = Literal["user", "replica"]
AppliesTo = Literal["user", "replica", "both"]
RuleType = Literal["phrases", "pattern", "topics", "semantic", "llm"]
RULE_TYPES: tuple[RuleType, ...] = ("phrases", "pattern", "topics", "semantic", "llm")

# A first calibration on the exported all-MiniLM-L6-v2, on a small hand-made set (3 rules of 2-3 examples):
# paraphrases of an example scored 0.32-0.89 (7 of 11 at 0.6 or more), harmless questions on the same topic
# 0.0-0.59 ("I forgot my own password" against "What is your admin password?": 0.59), unrelated chat 0.0-0.22.
# So 0.6 lets harmless neighbours through and misses loose paraphrases (more examples catch them). Recalibrate
# on real conversations.
SEMANTIC_THRESHOLD = 0.6
PATTERN_MAX_CHARS = 500
MATCH_WINDOW = 2000  # a pattern sees at most the last this many characters of the text
MAX_PHRASES = 500
MAX_PHRASE_CHARS = 200
MAX_TOPICS = 50
MAX_EXAMPLES = 64
MAX_EXAMPLE_CHARS = 500
MAX_POLICY_CHARS = 2000
MAX_NAME_CHARS = 100
MAX_FALLBACK_CHARS = 1000
JUDGE_MAX_TOKENS = 64  # {"violates": false, "reason": "..."} with a reason of at most REASON_CHARS
REASON_CHARS = 100
_BODY_KEYS = frozenset({"name", "applies_to", "rule", "fallback_text"})
_RULE_KEYS: Mapping[str, frozenset[str]] = {
    "phrases": frozenset({"type", "phrases", "match"}),
    "pattern": frozenset({"type", "pattern", "flags"}),
    "topics": frozenset({"type", "topics"}),
    "semantic": frozenset({"type", "examples", "threshold"}),
    "llm": frozenset({"type", "policy"}),
}

# ---- text normalisation ----------------------------------------------------------------------------------

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201b": "'", "\u2032": "'", "\u201c": '"', "\u201d": '"'})
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")  # words ("don't" whole), and single non-word characters
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, casefolded, curly quotes straightened, whitespace collapsed to single spaces."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    return " ".join(text.casefold().split())


# ASCII text (nearly every clause) is split without a regex: punctuation becomes a space, a symbol a word of its
# own; the apostrophe stays (inside "don't"; stripped at a word's edges below).
_ASCII_SPLIT = str.maketrans(
    {c: " " if unicodedata.category(c).startswith("P") else f" {c} " for c in string.punctuation if c != "'"}
)


def tokens(text: str) -> tuple[str, ...]:
    """The words and symbols of `text` after `normalize`; punctuation is dropped ("kill-switch" is "kill switch",
    "c++," is "c + +")."""
    if text.isascii():
        text = text.casefold().translate(_ASCII_SPLIT)
        if "'" in text:  # quotes, not apostrophes: at a word's edges
            text = f" {text} ".replace(" '", " ").replace("' ", " ")
        return tuple(text.split())
    return tuple(
        t
        for t in _TOKEN.findall(normalize(text))
        if len(t) > 1 or t.isalnum() or not unicodedata.category(t).startswith("P")
    )


# ---- rules -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WordIndex:
    """Word sequences to look for, each with what to report when found."""

    entries: Mapping[tuple[str, ...], str]
    lengths: tuple[int, ...]  # the distinct lengths of the entries, longest first
    first: frozenset[str]  # the words entries start with (most positions of a text are skipped on one lookup)

    @classmethod
    def build(cls, entries: Mapping[tuple[str, ...], str]) -> WordIndex:
        return cls(entries, tuple(sorted({len(w) for w in entries}, reverse=True)), frozenset(w[0] for w in entries))

    def find(self, words: Sequence[str], split: int = 0) -> str | None:
        """The report of the first entry (longest at its position) found as a run of `words` ending past `split`."""
        longest = self.lengths[0] if self.lengths else 0
        for start in range(max(0, split - longest + 1), len(words)):
            if words[start] not in self.first:
                continue
            for length in self.lengths:
                end = start + length
                if split < end <= len(words):
                    hit = self.entries.get(tuple(words[start:end]))
                    if hit is not None:
                        return hit
        return None


@dataclass(frozen=True)
class PhrasesRule:
    phrases: tuple[str, ...]  # as given, stripped
    index: WordIndex = field(repr=False, compare=False)
    match: Literal["word", "substring"] = "word"
    needles: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)  # substring: (words, phrase)

    type: Literal["phrases"] = "phrases"


@dataclass(frozen=True)
class PatternRule:
    pattern: str
    regex: re.Pattern[str] = field(repr=False, compare=False)
    flags: str = ""

    type: Literal["pattern"] = "pattern"


@dataclass(frozen=True)
class TopicsRule:
    topics: Mapping[str, tuple[str, ...]]
    index: WordIndex = field(repr=False, compare=False)

    type: Literal["topics"] = "topics"


@dataclass(frozen=True)
class SemanticRule:
    examples: tuple[str, ...]
    threshold: float = SEMANTIC_THRESHOLD

    type: Literal["semantic"] = "semantic"


@dataclass(frozen=True)
class LlmRule:
    policy: str

    type: Literal["llm"] = "llm"


Rule = PhrasesRule | PatternRule | TopicsRule | SemanticRule | LlmRule


@dataclass(eq=False)
class Guardrail:
    """One parsed guardrail. `example_vectors` is the semantic rule's embedded examples, filled on first use."""

    name: str
    applies_to: AppliesTo
    rule: Rule
    fallback_text: str
    guardrail_id: str = ""
    example_vectors: F32 | None = field(default=None, repr=False)

    def applies(self, side: Side) -> bool:
        return self.applies_to in (side, "both")

    def body(self) -> dict[str, Any]:
        """The guardrail as the API shows it (canonical: defaults filled in)."""
        rule: dict[str, Any]
        r = self.rule
        if isinstance(r, PhrasesRule):
            rule = {"type": r.type, "phrases": list(r.phrases), "match": r.match}
        elif isinstance(r, PatternRule):
            rule = {"type": r.type, "pattern": r.pattern, "flags": r.flags}
        elif isinstance(r, TopicsRule):
            rule = {"type": r.type, "topics": {k: list(v) for k, v in r.topics.items()}}
        elif isinstance(r, SemanticRule):
            rule = {"type": r.type, "examples": list(r.examples), "threshold": r.threshold}
        else:
            rule = {"type": r.type, "policy": r.policy}
        return {"name": self.name, "applies_to": self.applies_to, "rule": rule, "fallback_text": self.fallback_text}


@dataclass(frozen=True)
class Trigger:
    """A guardrail held. `side` is the side checked; `detail` says on what (a phrase, a topic, a similarity)."""

    guardrail_id: str
    name: str
    applies_to: AppliesTo
    rule_type: RuleType
    detail: str
    fallback_text: str
    took_ms: float
    side: Side = "user"


# ---- parsing ---------------------------------------------------------------------------------------------


def _key(base: str, key: str) -> str:
    """`base.key`, or `base["key"]` where the key is not a plain identifier."""
    return f"{base}.{key}" if key.isidentifier() else f'{base}["{key}"]'


def _text(value: object, field_path: str, *, limit: int, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{what} must be a non-empty string", field_path)
    if len(value) > limit:
        raise Invalid(f"{what} is longer than {limit} characters", field_path)
    return value.strip()


def _string_list(value: object, field_path: str, *, limit: int, item_limit: int, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise Invalid(f"{what} must be a non-empty list of strings", field_path)
    if len(value) > limit:
        raise Invalid(f"{what} has more than {limit} entries", field_path)
    return tuple(_text(v, f"{field_path}[{i}]", limit=item_limit, what=f"{what}[{i}]") for i, v in enumerate(value))


def _phrase_words(phrase: str, field_path: str) -> tuple[str, ...]:
    words = tokens(phrase)
    if not any(any(c.isalnum() for c in w) for w in words):
        raise Invalid("a phrase needs at least one letter or digit", field_path)
    return words


def _check_keys(body: Mapping[str, Any], allowed: frozenset[str], base: str, what: str) -> None:
    for key in body:
        if key not in allowed:
            raise Invalid(f"unknown field {key!r} in {what} (allowed: {', '.join(sorted(allowed))})", _key(base, key))


def parse_guardrail(body: Mapping[str, Any], *, guardrail_id: str = "") -> Guardrail:
    """Validate an API body (or a stored one); raises `Invalid(message, json_path)`."""
    if not isinstance(body, Mapping):
        raise Invalid("a guardrail must be a JSON object", "$")
    _check_keys(body, _BODY_KEYS, "$", "a guardrail")
    name = _text(body.get("name"), "$.name", limit=MAX_NAME_CHARS, what="name")
    applies_to = body.get("applies_to")
    if applies_to not in ("user", "replica", "both"):
        raise Invalid("applies_to must be 'user', 'replica' or 'both'", "$.applies_to")
    fallback = _text(body.get("fallback_text"), "$.fallback_text", limit=MAX_FALLBACK_CHARS, what="fallback_text")
    rule = parse_rule(body.get("rule"))
    return Guardrail(name, applies_to, rule, fallback, guardrail_id)


def parse_rule(rule: object, base: str = "$.rule") -> Rule:
    if not isinstance(rule, Mapping):
        raise Invalid("rule must be an object with a 'type'", base)
    kind = rule.get("type")
    if not isinstance(kind, str) or kind not in _RULE_KEYS:
        raise Invalid(f"rule.type must be one of {', '.join(RULE_TYPES)}", f"{base}.type")
    _check_keys(rule, _RULE_KEYS[kind], base, f"a {kind} rule")
    if kind == "phrases":
        return _parse_phrases(rule, base)
    if kind == "pattern":
        return _parse_pattern(rule, base)
    if kind == "topics":
        return _parse_topics(rule, base)
    if kind == "semantic":
        examples = _string_list(
            rule.get("examples"), f"{base}.examples", limit=MAX_EXAMPLES, item_limit=MAX_EXAMPLE_CHARS, what="examples"
        )
        threshold = rule.get("threshold", SEMANTIC_THRESHOLD)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise Invalid("threshold must be a number from 0 to 1", f"{base}.threshold")
        return SemanticRule(examples, float(threshold))
    return LlmRule(_text(rule.get("policy"), f"{base}.policy", limit=MAX_POLICY_CHARS, what="policy"))


def _parse_phrases(rule: Mapping[str, Any], base: str) -> PhrasesRule:
    phrases = _string_list(
        rule.get("phrases"), f"{base}.phrases", limit=MAX_PHRASES, item_limit=MAX_PHRASE_CHARS, what="phrases"
    )
    match = rule.get("match", "word")
    if match not in ("word", "substring"):
        raise Invalid("match must be 'word' or 'substring'", f"{base}.match")
    words: dict[tuple[str, ...], str] = {}
    for i, phrase in enumerate(phrases):
        words.setdefault(_phrase_words(phrase, f"{base}.phrases[{i}]"), f"phrase {phrase!r}")
    needles = tuple((" ".join(w), report) for w, report in words.items()) if match == "substring" else ()
    return PhrasesRule(phrases, WordIndex.build(words), match, needles)


def _parse_topics(rule: Mapping[str, Any], base: str) -> TopicsRule:
    topics = rule.get("topics")
    if not isinstance(topics, Mapping) or not topics:
        raise Invalid("topics must be a non-empty object of {topic: [keywords]}", f"{base}.topics")
    if len(topics) > MAX_TOPICS:
        raise Invalid(f"topics has more than {MAX_TOPICS} topics", f"{base}.topics")
    parsed: dict[str, tuple[str, ...]] = {}
    words: dict[tuple[str, ...], str] = {}
    for topic, keywords in topics.items():
        path = _key(f"{base}.topics", str(topic))
        if not isinstance(topic, str) or not topic.strip() or len(topic) > 64:
            raise Invalid("a topic name must be a non-empty string of at most 64 characters", path)
        parsed[topic] = _string_list(keywords, path, limit=MAX_PHRASES, item_limit=MAX_PHRASE_CHARS, what="keywords")
        for i, keyword in enumerate(parsed[topic]):
            words.setdefault(_phrase_words(keyword, f"{path}[{i}]"), f"topic {topic!r}: {keyword!r}")
    return TopicsRule(parsed, WordIndex.build(words))


def _parse_pattern(rule: Mapping[str, Any], base: str) -> PatternRule:
    path = f"{base}.pattern"
    pattern = rule.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise Invalid("pattern must be a non-empty regular expression", path)
    if len(pattern) > PATTERN_MAX_CHARS:
        raise Invalid(f"pattern is longer than {PATTERN_MAX_CHARS} characters", path)
    flags_text = rule.get("flags", "")
    if (
        not isinstance(flags_text, str)
        or any(f not in "ims" for f in flags_text)
        or len(set(flags_text)) != len(flags_text)
    ):
        raise Invalid("flags must be made of the letters i, m, s (each at most once)", f"{base}.flags")
    flags = 0
    for f in flags_text:
        flags |= {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}[f]
    try:
        regex = re.compile(pattern, flags)
    except re.error as e:
        where = f" at position {e.pos}" if e.pos is not None else ""
        raise Invalid(f"pattern is not a valid regular expression: {e.msg}{where}", path) from None
    slow = slow_pattern(pattern)
    if slow is not None:
        raise Invalid(f"pattern {slow}", path)
    if regex.search("") is not None:
        raise Invalid("pattern matches empty text, so it would trigger on everything", path)
    return PatternRule(pattern, regex, "".join(sorted(flags_text)))


# ---- the static check for slow patterns ------------------------------------------------------------------

# Characters standing for what text holds: letters (also accented), digits, underscore, space, punctuation.
_PROBE = "aZé0_ \t.,-'!@"
_QUANT = re.compile(r"\*|\+|\?|\{(\d*)(,?)(\d*)\}")


@dataclass
class _Frame:
    variable: bool = False  # something inside may match the same text in more than one way
    branches: list[str | None] = field(default_factory=list)  # finished alternatives: plain text, or None
    literal: str | None = ""  # the current alternative, while it is plain text


def _quantifier(pattern: str, i: int) -> tuple[int, int, int | None] | None:
    """(end, min, max) of a quantifier at `i` (max None: unbounded), skipping a lazy/possessive suffix."""
    m = _QUANT.match(pattern, i)
    if m is None:
        return None
    text = m.group(0)
    if text == "*":
        low, high = 0, None
    elif text == "+":
        low, high = 1, None
    elif text == "?":
        low, high = 0, 1
    else:
        lo, comma, hi = m.group(1), m.group(2), m.group(3)
        if not lo and not hi:
            return None  # "{}" or "{,}": literal braces
        low = int(lo or 0)
        high = (int(hi) if hi else None) if comma else low
    end = m.end()
    if end < len(pattern) and pattern[end] in "?+":
        end += 1
    return end, low, high


def _overlap(a: str, b: str) -> bool:
    """Whether two atoms (a character, an escape, a class, `.`) can match the same character."""
    try:
        ra, rb = re.compile(a), re.compile(b)
    except re.error:
        return True
    return any(ra.fullmatch(c) and rb.fullmatch(c) for c in _PROBE)


def _catch_all(atom: str) -> bool:
    return atom == "." or atom in ("\\S", "\\W", "\\D") or atom.startswith("[^")


def slow_pattern(pattern: str) -> str | None:
    """Why a (compiled, valid) pattern risks slow backtracking, or None. Conservative (module docstring)."""
    stack = [_Frame()]
    atom: str | None = None  # the atom just read, not yet quantified ("(group)" for a group)
    atom_variable = False  # for a group: its content may match the same text in several ways
    unbounded_before: str | None = None  # the atom right before `atom`, if it was repeated without bound
    catch_alls = 0
    i, n = 0, len(pattern)
    while i < n:
        q = _quantifier(pattern, i) if atom is not None else None
        if q is not None and atom is not None:
            end, low, high = q
            frame = stack[-1]
            if (high is None or high > 1) and atom == "(group)" and atom_variable:
                return (
                    f"repeats a group that itself repeats or branches ambiguously (position {i}), which can take "
                    "exponential time; rewrite it without nested repetition (e.g. [\\d,]+ instead of \\d+(,\\d+)*)"
                )
            if low != high:
                frame.variable = True
            if (low, high) != (1, 1):
                frame.literal = None
            if high is None and atom != "(group)":
                if _catch_all(atom):
                    catch_alls += 1
                    if catch_alls > 1:
                        return (
                            f"has more than one unbounded repetition of a catch-all like .* (position {i}), which "
                            "can take seconds on a long text; keep one"
                        )
                if unbounded_before is not None and _overlap(unbounded_before, atom):
                    return (
                        f"repeats two overlapping atoms back to back without bound (position {i}), which can take "
                        "seconds on a long text; merge them into one"
                    )
                unbounded_before = atom
            else:
                unbounded_before = None
            atom = None
            i = end
            continue
        if atom is not None:  # the atom before this one was not repeated: nothing runs back to back
            unbounded_before = None
        frame = stack[-1]
        c = pattern[i]
        if c == "\\":
            esc = pattern[i + 1 : i + 2]
            if esc.isalnum():  # a class (\\d, \\w, ...), an anchor, a backreference or a code: not plain text
                atom = "\\" + esc
                frame.literal = None
            else:
                atom = re.escape(esc)
                if frame.literal is not None:
                    frame.literal += esc
            i += 2
        elif c == "[":
            end = _class_end(pattern, i)
            atom = pattern[i:end]
            frame.literal = None
            i = end
        elif c == "(":
            i, opened = _group_start(pattern, i)
            if opened:
                stack.append(_Frame())
            else:  # an inline flag, a comment or a backreference
                frame.literal = None
            atom, unbounded_before = None, None
        elif c == ")":
            inner = stack.pop() if len(stack) > 1 else _Frame()
            inner.branches.append(inner.literal)
            atom, atom_variable = "(group)", inner.variable or _ambiguous(inner.branches)
            frame = stack[-1]
            frame.variable = frame.variable or atom_variable
            frame.literal = None
            i += 1
        elif c == "|":
            frame.branches.append(frame.literal)
            frame.literal = ""
            atom, unbounded_before = None, None
            i += 1
        else:
            atom = "." if c == "." else re.escape(c)
            if c in "^$.":
                frame.literal = None
            elif frame.literal is not None:
                frame.literal += c
            i += 1
    return None


def _ambiguous(branches: Sequence[str | None]) -> bool:
    """An alternation that can match the same text in two ways: not all plain text, or one branch a prefix of
    another ((a|ab), (a|a)). A single branch is not an alternation."""
    if len(branches) < 2:
        return False
    if any(b is None for b in branches):
        return True
    texts = sorted(b for b in branches if b is not None)
    return any(b.startswith(a) for a, b in itertools.pairwise(texts))


def _class_end(pattern: str, i: int) -> int:
    """The index just past the character class opening at `i`."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return min(j + 1, len(pattern))


def _group_start(pattern: str, i: int) -> tuple[int, bool]:
    """Past a group's opening at `i`: (index, whether a group opened). Inline flags `(?i)`, comments `(?#...)`
    and backreferences `(?P=name)` open none and are skipped whole."""
    if pattern[i + 1 : i + 2] != "?":
        return i + 1, True
    rest = pattern[i + 2 :]
    if rest[:1] in (":", "=", "!", ">"):
        return i + 3, True
    if rest[:2] in ("<=", "<!"):
        return i + 4, True
    if rest[:2] in ("P<",) or rest[:1] == "<":
        return pattern.index(">", i) + 1, True
    if rest[:2] == "P=" or rest[:1] in ("#", "("):
        if rest[:1] == "(":  # a conditional (?(1)yes|no): its condition is skipped, its branches form a group
            return pattern.index(")", i) + 1, True
        return pattern.index(")", i) + 1, False
    j = i + 2
    while j < len(pattern) and pattern[j] not in ":)":
        j += 1
    return (j + 1, pattern[j : j + 1] == ":")


# ---- matching --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    """One check's text, normalised once for every deterministic rule: the clause's tokens, with the previous
    clause's tokens before them (`split`: where the clause starts)."""

    raw: str
    raw_split: int
    words: tuple[str, ...]
    split: int

    @classmethod
    def of(cls, text: str, context: str) -> _Prepared:
        previous = last_clause(context)
        words = tokens(text)
        if not previous:
            return cls(text[-MATCH_WINDOW:], 0, words, 0)
        before = tokens(previous)
        raw = f"{previous} {text}"[-MATCH_WINDOW:]
        return cls(raw, max(0, len(raw) - len(text)), before + words, len(before))


_UP_TO_LAST_MARK = re.compile(r".*[,;:.!?—–]", re.DOTALL)
_MARKS = ",;:.!?—– "


def last_clause(context: str) -> str:
    """The last clause of `context` (after its last , ; : . ! ? or dash), the neighbour a new clause joins."""
    context = context.strip()
    m = _UP_TO_LAST_MARK.match(context.rstrip(_MARKS))
    return context[m.end() :].strip() if m else context


def _match_phrases(rule: PhrasesRule, text: _Prepared) -> str | None:
    if rule.match == "word":
        return rule.index.find(text.words, text.split)
    joined = " ".join(text.words)
    clause_at = len(" ".join(text.words[: text.split])) + 1 if text.split else 0
    for needle, report in rule.needles:
        at = joined.find(needle)
        while at >= 0:
            if at + len(needle) > clause_at:
                return report
            at = joined.find(needle, at + 1)
    return None


def _match_topics(rule: TopicsRule, text: _Prepared) -> str | None:
    return rule.index.find(text.words, text.split)


def _match_pattern(rule: PatternRule, text: _Prepared) -> str | None:
    # one scan of the joined text: the first match that reaches into the clause
    m = next((m for m in rule.regex.finditer(text.raw) if m.end() > text.raw_split), None)
    return None if m is None else f"pattern matched {m.group(0)[:80]!r}"


# ---- the set a conversation checks -----------------------------------------------------------------------


@dataclass(frozen=True)
class _SideRules:
    fast: tuple[Guardrail, ...]
    semantic: tuple[Guardrail, ...]
    llm: tuple[Guardrail, ...]


def _judge_messages(rule: LlmRule, text: str, side: Side, context: str) -> list[ChatMessage]:
    speaker = "the user" if side == "user" else "the assistant"
    before = f"Just before, {speaker} said: {context.strip()[-600:]}\n" if context.strip() else ""
    return [
        ChatMessage(
            "system",
            "You check one message of a conversation against a policy. Answer in JSON: violates is true only if "
            "the message clearly breaks the policy; reason says why in a few words.",
        ),
        ChatMessage("user", f"Policy: {rule.policy}\n{before}Message from {speaker}: {text.strip()}"),
    ]


JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"violates": {"type": "boolean"}, "reason": {"type": "string", "maxLength": REASON_CHARS}},
    "required": ["violates", "reason"],
    "additionalProperties": False,
}


class GuardrailSet:
    """A persona's guardrails, checked in a fixed order: deterministic rules (in the order given), then
    semantic, then llm. The first that holds wins.

    `embedder` and `judge` are needed only by semantic and llm rules. A rule whose model is missing cannot be
    enforced: it is skipped, and listed in `unenforced` (names) so the session can say so once. A judge that
    fails (`JudgeFailed`) lets the text pass unless `judge_fails_closed` (then the rule holds); failures are
    counted in `judge_failures`. Other errors (a model that is down) propagate."""

    def __init__(
        self,
        guardrails: Iterable[Guardrail],
        embedder: Embedder | None = None,
        judge: JsonModel | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
        judge_fails_closed: bool = False,
    ) -> None:
        self.guardrails = tuple(guardrails)
        self.embedder = embedder
        self.judge = judge
        self.clock = clock
        self.judge_fails_closed = judge_fails_closed
        self.judge_failures = 0
        self.unenforced = tuple(
            g.name
            for g in self.guardrails
            if (isinstance(g.rule, SemanticRule) and embedder is None)
            or (isinstance(g.rule, LlmRule) and judge is None)
        )
        self._sides: dict[str, _SideRules] = {}
        for side in ("user", "replica"):
            mine = [g for g in self.guardrails if g.applies_to in (side, "both")]
            self._sides[side] = _SideRules(
                tuple(g for g in mine if isinstance(g.rule, (PhrasesRule, PatternRule, TopicsRule))),
                tuple(g for g in mine if isinstance(g.rule, SemanticRule) and embedder is not None),
                tuple(g for g in mine if isinstance(g.rule, LlmRule) and judge is not None),
            )

    def applies(self, side: Side) -> bool:
        """Whether any guardrail applies to `side` (no guardrails: nothing to check)."""
        rules = self._sides[side]
        return bool(rules.fast or rules.semantic or rules.llm)

    def needs_models(self, side: Side) -> bool:
        """Whether `check` may do more than `check_fast` for `side` (a semantic or llm rule applies)."""
        rules = self._sides[side]
        return bool(rules.semantic or rules.llm)

    def check_fast(self, text: str, side: Side, *, context: str = "") -> Trigger | None:
        """The deterministic rules only (phrases, pattern, topics): microseconds, no models."""
        start = self.clock()
        rules = self._sides[side].fast
        if not rules or not text.strip():
            return None
        prepared = _Prepared.of(text, context)
        for g in rules:
            detail = _match_fast(g.rule, prepared)
            if detail is not None:
                return self._trigger(g, side, detail, start)
        return None

    async def check(self, text: str, side: Side, *, context: str = "") -> Trigger | None:
        """Every rule for `side`, cheapest first. `context`: the clauses of this reply spoken so far (see the
        module docstring); a violation straddling the last of them and `text` counts."""
        start = self.clock()
        found = self.check_fast(text, side, context=context)
        if found is not None or not text.strip():
            return found
        rules = self._sides[side]
        if rules.semantic:
            found = await self._check_semantic(rules.semantic, text, side, context, start)
            if found is not None:
                return found
        if rules.llm:
            return await self._check_llm(rules.llm, text, side, context, start)
        return None

    async def _check_semantic(
        self, rules: Sequence[Guardrail], text: str, side: Side, context: str, start: float
    ) -> Trigger | None:
        assert self.embedder is not None
        previous = last_clause(context)
        queries = [text] if not previous else [text, f"{previous} {text}"]
        pending = [g for g in rules if g.example_vectors is None]
        examples = [e for g in pending for e in _examples(g)]
        vectors = await self.embedder.embed([*examples, *queries])  # one call: examples (first use) and the text
        at = 0
        for g in pending:
            count = len(_examples(g))
            g.example_vectors = np.ascontiguousarray(vectors[at : at + count], dtype=np.float32)
            at += count
        query = vectors[at:]
        for g in rules:
            assert g.example_vectors is not None and isinstance(g.rule, SemanticRule)
            similarities = (g.example_vectors @ query.T).max(axis=1)  # each example's best over the queries
            best = int(similarities.argmax())
            if float(similarities[best]) >= g.rule.threshold:
                return self._trigger(g, side, f"similarity {float(similarities[best]):.2f} to example {best}", start)
        return None

    async def _check_llm(
        self, rules: Sequence[Guardrail], text: str, side: Side, context: str, start: float
    ) -> Trigger | None:
        assert self.judge is not None
        judge = self.judge

        async def ask(g: Guardrail) -> str | None:
            assert isinstance(g.rule, LlmRule)
            try:
                answer = await judge.complete_json(
                    _judge_messages(g.rule, text, side, context), JUDGE_SCHEMA, max_tokens=JUDGE_MAX_TOKENS
                )
            except JudgeFailed as e:
                self.judge_failures += 1
                return f"judge failed: {e.message}" if self.judge_fails_closed else None
            if answer.get("violates") is True:
                return f"judge: {str(answer.get('reason', '')).strip()[:REASON_CHARS]}"
            return None

        # The policies are asked at once (the latency of one judgement); the first in order that holds wins.
        if len(rules) == 1:
            details = [await ask(rules[0])]
        else:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(ask(g), name=f"guardrail-judge-{g.name}") for g in rules]
            except ExceptionGroup as eg:  # the first failure as itself (a model that is down), not as a group
                raise eg.exceptions[0] from None
            details = [task.result() for task in tasks]
        for g, detail in zip(rules, details, strict=True):
            if detail is not None:
                return self._trigger(g, side, detail, start)
        return None

    def _trigger(self, g: Guardrail, side: Side, detail: str, start: float) -> Trigger:
        took_ms = round((self.clock() - start) * 1000.0, 3)
        return Trigger(g.guardrail_id, g.name, g.applies_to, g.rule.type, detail, g.fallback_text, took_ms, side)


def _examples(g: Guardrail) -> tuple[str, ...]:
    return g.rule.examples if isinstance(g.rule, SemanticRule) else ()


def _match_fast(rule: Rule, text: _Prepared) -> str | None:
    if isinstance(rule, PhrasesRule):
        return _match_phrases(rule, text)
    if isinstance(rule, PatternRule):
        return _match_pattern(rule, text)
    if isinstance(rule, TopicsRule):
        return _match_topics(rule, text)
    return None
