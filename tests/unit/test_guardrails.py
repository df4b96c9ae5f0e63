"""Guardrails without models: parsing (every malformed body refused with its JSON path), the deterministic rules
and their normalisation, clause joins, the slow-pattern check, semantic rules over a fake embedder (examples
embedded once), llm rules over a fake judge, and `LlmJson` (the JSON judge) over a fake streaming LLM."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import timeit
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest

from orchestrator.errors import Invalid
from orchestrator.intel.guardrails import (
    JUDGE_SCHEMA,
    MATCH_WINDOW,
    SEMANTIC_THRESHOLD,
    Guardrail,
    GuardrailSet,
    LlmRule,
    PatternRule,
    PhrasesRule,
    SemanticRule,
    Side,
    TopicsRule,
    Trigger,
    last_clause,
    normalize,
    parse_guardrail,
    slow_pattern,
    tokens,
)
from orchestrator.intel.judge import JudgeFailed, LlmJson, parse_json_object
from orchestrator.models.ports import EMBED_DIM, F32, ChatMessage, LlmRequest
from tests.conftest import require

# --- fakes -------------------------------------------------------------------------------------------------------


class BagOfWords:
    """A fake `Embedder`: hashed bag of words, L2-normalised (cosine = word overlap). Counts its calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def embed(self, texts: list[str]) -> F32:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), EMBED_DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z']+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % EMBED_DIM] += 1.0
            norm = float(np.linalg.norm(out[i]))
            if norm:
                out[i] /= norm
        return out


class FakeJudge:
    """A fake `JsonModel`: answers from a function of the prompt; records every question."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[tuple[list[ChatMessage], dict[str, Any], int]] = []

    async def complete_json(
        self, messages: list[ChatMessage], schema: dict[str, Any], *, max_tokens: int
    ) -> dict[str, Any]:
        self.asked.append((messages, schema, max_tokens))
        await asyncio.sleep(0)
        result = self.answer(messages[-1].content) if callable(self.answer) else self.answer
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, dict)
        return result


class FakeLlm:
    """A fake streaming `LanguageModel`: yields `text` in `pieces` chunks; records requests and closes."""

    def __init__(self, text: str, pieces: int = 3) -> None:
        self.text = text
        self.pieces = pieces
        self.requests: list[LlmRequest] = []
        self.closed = 0

    async def generate(self, request: LlmRequest) -> AsyncIterator[str]:
        self.requests.append(request)
        size = max(1, len(self.text) // self.pieces + 1)
        try:
            for i in range(0, len(self.text), size):
                await asyncio.sleep(0)
                yield self.text[i : i + size]
        finally:
            self.closed += 1


def rail(rule: dict[str, Any], applies_to: str = "both", name: str = "rail", gid: str = "") -> Guardrail:
    return parse_guardrail(
        {"name": name, "applies_to": applies_to, "rule": rule, "fallback_text": f"fallback of {name}"},
        guardrail_id=gid or f"gr_{name}",
    )


# --- parsing -----------------------------------------------------------------------------------------------------


def test_parse_a_phrases_guardrail_and_show_it_canonically() -> None:
    g = parse_guardrail(
        {
            "name": "no diagnosis",
            "applies_to": "replica",
            "rule": {"type": "phrases", "phrases": [" your diagnosis ", "You have cancer"]},
            "fallback_text": "I can't advise on that.",
        },
        guardrail_id="gr_1",
    )
    assert (g.guardrail_id, g.name, g.applies_to, g.fallback_text) == (
        "gr_1",
        "no diagnosis",
        "replica",
        "I can't advise on that.",
    )
    assert isinstance(g.rule, PhrasesRule) and g.rule.match == "word"
    assert g.body()["rule"] == {"type": "phrases", "phrases": ["your diagnosis", "You have cancer"], "match": "word"}
    assert parse_guardrail(g.body()).body() == g.body()  # the canonical body parses to itself


@pytest.mark.parametrize(
    "rule",
    [
        {"type": "pattern", "pattern": r"\b\d{3}-\d{2}-\d{4}\b", "flags": "i"},
        {"type": "topics", "topics": {"medical": ["diagnosis", "prescription"], "legal advice": ["lawsuit"]}},
        {"type": "semantic", "examples": ["what is your password"], "threshold": 0.7},
        {"type": "llm", "policy": "Never give medical advice."},
    ],
)
def test_every_rule_type_round_trips(rule: dict[str, Any]) -> None:
    g = rail(rule)
    assert g.rule.type == rule["type"]
    again = parse_guardrail(g.body())
    assert again.body() == g.body()
    assert {k: v for k, v in g.body()["rule"].items() if k in rule} == rule


def test_semantic_threshold_defaults() -> None:
    g = rail({"type": "semantic", "examples": ["x y"]})
    assert isinstance(g.rule, SemanticRule) and g.rule.threshold == SEMANTIC_THRESHOLD


BODY: dict[str, Any] = {
    "name": "r",
    "applies_to": "both",
    "rule": {"type": "phrases", "phrases": ["a b"]},
    "fallback_text": "No.",
}


def with_(**changes: Any) -> dict[str, Any]:
    body = dict(BODY)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ([1, 2], "$", "JSON object"),
        (with_(extra=1), "$.extra", "unknown field 'extra'"),
        (with_(name=None), "$.name", "name must be a non-empty string"),
        (with_(name="  "), "$.name", "non-empty"),
        (with_(name="n" * 101), "$.name", "longer than 100"),
        (with_(applies_to="assistant"), "$.applies_to", "'user', 'replica' or 'both'"),
        (with_(fallback_text=None), "$.fallback_text", "fallback_text"),
        (with_(fallback_text=3), "$.fallback_text", "fallback_text"),
        (with_(rule=None), "$.rule", "rule must be an object"),
        (with_(rule="phrases"), "$.rule", "rule must be an object"),
        (with_(rule={"phrases": ["a"]}), "$.rule.type", "rule.type must be one of"),
        (with_(rule={"type": "regex", "pattern": "a"}), "$.rule.type", "rule.type must be one of"),
        (with_(rule={"type": ["phrases"]}), "$.rule.type", "rule.type must be one of"),
        (with_(rule={"type": "phrases", "phrase": ["a"]}), "$.rule.phrase", "unknown field 'phrase'"),
        (with_(rule={"type": "phrases"}), "$.rule.phrases", "non-empty list"),
        (with_(rule={"type": "phrases", "phrases": []}), "$.rule.phrases", "non-empty list"),
        (with_(rule={"type": "phrases", "phrases": "a b"}), "$.rule.phrases", "non-empty list"),
        (with_(rule={"type": "phrases", "phrases": ["ok", 3]}), "$.rule.phrases[1]", "phrases[1]"),
        (with_(rule={"type": "phrases", "phrases": ["ok", ""]}), "$.rule.phrases[1]", "non-empty"),
        (with_(rule={"type": "phrases", "phrases": ["?!"]}), "$.rule.phrases[0]", "letter or digit"),
        (with_(rule={"type": "phrases", "phrases": ["x" * 201]}), "$.rule.phrases[0]", "longer than 200"),
        (with_(rule={"type": "phrases", "phrases": ["a"] * 501}), "$.rule.phrases", "more than 500"),
        (with_(rule={"type": "phrases", "phrases": ["a"], "match": "exact"}), "$.rule.match", "'word' or 'substring'"),
        (with_(rule={"type": "pattern"}), "$.rule.pattern", "non-empty regular expression"),
        (with_(rule={"type": "pattern", "pattern": ""}), "$.rule.pattern", "non-empty regular expression"),
        (with_(rule={"type": "pattern", "pattern": "a" * 501}), "$.rule.pattern", "longer than 500"),
        (with_(rule={"type": "pattern", "pattern": "(ab"}), "$.rule.pattern", "not a valid regular expression"),
        (with_(rule={"type": "pattern", "pattern": "a**"}), "$.rule.pattern", "not a valid regular expression"),
        (with_(rule={"type": "pattern", "pattern": "(a+)+$"}), "$.rule.pattern", "exponential"),
        (with_(rule={"type": "pattern", "pattern": "(a*)*b"}), "$.rule.pattern", "exponential"),
        (with_(rule={"type": "pattern", "pattern": "x(.*)*y"}), "$.rule.pattern", "exponential"),
        (with_(rule={"type": "pattern", "pattern": "(?:a|aa)+b"}), "$.rule.pattern", "exponential"),
        (with_(rule={"type": "pattern", "pattern": "(ab?){8}c"}), "$.rule.pattern", "exponential"),
        (with_(rule={"type": "pattern", "pattern": "a.*b.*c"}), "$.rule.pattern", "catch-all"),
        (with_(rule={"type": "pattern", "pattern": r"\w+\d+x"}), "$.rule.pattern", "overlapping"),
        (with_(rule={"type": "pattern", "pattern": "a*"}), "$.rule.pattern", "matches empty text"),
        (with_(rule={"type": "pattern", "pattern": "x|"}), "$.rule.pattern", "matches empty text"),
        (with_(rule={"type": "pattern", "pattern": "a", "flags": "g"}), "$.rule.flags", "letters i, m, s"),
        (with_(rule={"type": "pattern", "pattern": "a", "flags": "ii"}), "$.rule.flags", "at most once"),
        (with_(rule={"type": "pattern", "pattern": "a", "flags": 1}), "$.rule.flags", "letters i, m, s"),
        (with_(rule={"type": "topics"}), "$.rule.topics", "non-empty object"),
        (with_(rule={"type": "topics", "topics": ["medical"]}), "$.rule.topics", "non-empty object"),
        (with_(rule={"type": "topics", "topics": {"medical": []}}), "$.rule.topics.medical", "non-empty list"),
        (with_(rule={"type": "topics", "topics": {"medical": [7]}}), "$.rule.topics.medical[0]", "keywords[0]"),
        (
            with_(rule={"type": "topics", "topics": {"legal advice": ["-"]}}),
            '$.rule.topics["legal advice"][0]',
            "letter or digit",
        ),
        (with_(rule={"type": "topics", "topics": {" ": ["x"]}}), '$.rule.topics[" "]', "topic name"),
        (with_(rule={"type": "topics", "topics": {f"t{i}": ["x"] for i in range(51)}}), "$.rule.topics", "50"),
        (with_(rule={"type": "semantic"}), "$.rule.examples", "non-empty list"),
        (with_(rule={"type": "semantic", "examples": ["x" * 501]}), "$.rule.examples[0]", "longer than 500"),
        (with_(rule={"type": "semantic", "examples": ["x"] * 65}), "$.rule.examples", "more than 64"),
        (with_(rule={"type": "semantic", "examples": ["x"], "threshold": 1.5}), "$.rule.threshold", "0 to 1"),
        (with_(rule={"type": "semantic", "examples": ["x"], "threshold": -0.1}), "$.rule.threshold", "0 to 1"),
        (with_(rule={"type": "semantic", "examples": ["x"], "threshold": True}), "$.rule.threshold", "0 to 1"),
        (with_(rule={"type": "semantic", "examples": ["x"], "threshold": "high"}), "$.rule.threshold", "0 to 1"),
        (with_(rule={"type": "llm"}), "$.rule.policy", "policy must be a non-empty string"),
        (with_(rule={"type": "llm", "policy": "p" * 2001}), "$.rule.policy", "longer than 2000"),
        (with_(rule={"type": "llm", "policy": "p", "model": "x"}), "$.rule.model", "unknown field 'model'"),
    ],
)
def test_malformed_guardrails_are_refused_with_their_path(body: Any, field: str, message: str) -> None:
    with pytest.raises(Invalid, match=re.escape(message)) as info:
        parse_guardrail(body)
    assert info.value.field == field
    assert info.value.code == "invalid" and not info.value.fatal


# --- the slow-pattern check --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        r"\b(ssn|social security)\b",
        r"(\d{3}-){2}\d{4}",
        r"\b\d{3}-\d{2}-\d{4}\b",
        r"foo.*bar",
        r"\w+\s+\w+",
        r"(?:foo|bar)+",
        r"(?i)\bcredit\s+card\b",
        r"[a-z]+[0-9]+",
        r"\bdiagnos\w*",
        r"(?P<w>x)(?P=w)",
        r"[(+*]+",  # quantifier characters inside a class are characters
        r"\(a+\)+",  # escaped parentheses are characters, not a group
        r"(?#a comment)x+",
    ],
)
def test_common_patterns_pass_the_slow_pattern_check(pattern: str) -> None:
    re.compile(pattern)
    assert slow_pattern(pattern) is None


@pytest.mark.parametrize(
    "pattern", [r"(a+)+", r"(a*)*", r"(.*)*", r"((ab)*)+", r"\d+(,\d+)*", r"(a|ab)*", r"(\s|x)+", r"(a{1,3}){2,}"]
)
def test_nested_repetition_is_refused(pattern: str) -> None:
    assert "exponential" in (slow_pattern(pattern) or "")


def test_refused_patterns_really_are_slow_and_accepted_ones_are_not() -> None:
    """What the check is for, measured at a small size (the refused one doubles per character)."""
    hostile = "a" * 22 + "!"
    t0 = time.perf_counter()
    re.search(r"(a+)+$", hostile)
    slow = time.perf_counter() - t0
    t0 = time.perf_counter()
    re.search(r"(?:foo|bar)+$", hostile * 80)
    fast = time.perf_counter() - t0
    assert slow > 10 * fast


# --- normalisation and the deterministic rules -------------------------------------------------------------------


def test_normalize_and_tokens() -> None:
    assert normalize("  ＤＩＡＧＮＯＳＩＳ\n\tis   Here ") == "diagnosis is here"
    assert normalize("Straße") == "strasse"
    assert tokens("Don’t flip the kill-switch, C++ fans!") == (
        "don't",
        "flip",
        "the",
        "kill",
        "switch",
        "c",
        "+",
        "+",
        "fans",
    )


def fast(g: Guardrail, text: str, side: Side = "replica", context: str = "") -> Trigger | None:
    return GuardrailSet([g]).check_fast(text, side, context=context)


def test_phrases_match_whole_words_case_and_unicode_insensitively() -> None:
    g = rail({"type": "phrases", "phrases": ["your diagnosis", "ass", "don't", "kill switch", "C++"]})
    for text in [
        "Well, YOUR   Diagnosis is clear.",
        "Ｙｏｕｒ ｄｉａｇｎｏｓｉｓ",  # full-width
        "your\ndiagnosis",
        "Your... diagnosis",  # punctuation between the words
        "You’re an ass!",
        "Don’t do that",  # a curly apostrophe
        "flip the kill-switch",
        "I love c++.",
    ]:
        hit = fast(g, text)
        assert hit is not None, text
        assert hit.rule_type == "phrases"
    for text in ["first class", "a diagnosis of yours", "passing", "dont", "c programming"]:
        assert fast(g, text) is None, text
    hit = fast(g, "what is your diagnosis")
    assert hit is not None and hit.detail == "phrase 'your diagnosis'"


def test_substring_phrases_match_inside_words() -> None:
    g = rail({"type": "phrases", "phrases": ["darn"], "match": "substring"})
    assert fast(g, "Darned thing") is not None
    assert fast(g, "it's a DARN shame") is not None
    assert fast(g, "d a r n") is None
    assert fast(rail({"type": "phrases", "phrases": ["darn"]}), "Darned thing") is None


def test_patterns_match_raw_text_within_the_window() -> None:
    g = rail({"type": "pattern", "pattern": r"\b\d{3}-\d{2}-\d{4}\b"})
    hit = fast(g, "my number is 123-45-6789 ok", side="user")
    assert hit is not None and hit.rule_type == "pattern" and "123-45-6789" in hit.detail
    assert fast(g, "call 123-456-7890") is None
    early = "123-45-6789 " + "x" * MATCH_WINDOW  # the match lies before the last 2,000 characters
    assert fast(g, early) is None
    assert fast(g, "x" * MATCH_WINDOW + " 123-45-6789") is not None
    flagged = rail({"type": "pattern", "pattern": "secret", "flags": "i"})
    assert fast(flagged, "The SECRET is") is not None
    assert fast(rail({"type": "pattern", "pattern": "secret"}), "The SECRET is") is None


def test_topics_report_the_topic() -> None:
    g = rail({"type": "topics", "topics": {"medical": ["diagnosis", "side effects"], "legal": ["lawsuit", "sue"]}})
    hit = fast(g, "Could I sue them?")
    assert hit is not None and hit.rule_type == "topics" and hit.detail == "topic 'legal': 'sue'"
    hit = fast(g, "What are the Side-Effects?")
    assert hit is not None and hit.detail == "topic 'medical': 'side effects'"
    assert fast(g, "pursue your dreams") is None  # whole words


def test_guardrails_apply_to_their_side_only() -> None:
    user_only = rail({"type": "phrases", "phrases": ["password"]}, applies_to="user", name="u")
    replica_only = rail({"type": "phrases", "phrases": ["password"]}, applies_to="replica", name="r")
    both = rail({"type": "phrases", "phrases": ["secret"]}, applies_to="both", name="b")
    rails = GuardrailSet([user_only, replica_only, both])
    user_hit = rails.check_fast("my password", "user")
    replica_hit = rails.check_fast("my password", "replica")
    assert user_hit is not None and user_hit.name == "u" and user_hit.side == "user"
    assert replica_hit is not None and replica_hit.name == "r" and replica_hit.side == "replica"
    sides: tuple[Side, ...] = ("user", "replica")
    assert {t.name for t in (rails.check_fast("a secret", s) for s in sides) if t} == {"b"}
    assert GuardrailSet([user_only]).applies("replica") is False and GuardrailSet([user_only]).applies("user")


def test_a_trigger_carries_the_guardrail_and_its_timing() -> None:
    ticks = iter([10.0, 10.0025])
    rails = GuardrailSet(
        [rail({"type": "phrases", "phrases": ["nope"]}, name="n", gid="gr_9")], clock=lambda: next(ticks)
    )
    hit = rails.check_fast("nope", "user")
    assert hit == Trigger("gr_9", "n", "both", "phrases", "phrase 'nope'", "fallback of n", 2.5, "user")


def test_empty_text_triggers_nothing() -> None:
    rails = GuardrailSet([rail({"type": "pattern", "pattern": r"\s"})])
    assert rails.check_fast("", "user") is None
    assert rails.check_fast("   ", "user") is None


# --- clauses joined with their neighbour ---------------------------------------------------------------------------


def test_last_clause() -> None:
    assert last_clause("Well, I can tell you") == "I can tell you"
    assert last_clause("It's fine. I can tell you,") == "I can tell you,"
    assert last_clause("") == ""
    assert last_clause("no punctuation here") == "no punctuation here"


def test_a_violation_straddling_two_clauses_is_caught() -> None:
    phrases = rail({"type": "phrases", "phrases": ["tell you your diagnosis"]})
    assert fast(phrases, "your diagnosis is cancer.") is None
    hit = fast(phrases, "your diagnosis is cancer.", context="Well, I can tell you,")
    assert hit is not None and hit.detail == "phrase 'tell you your diagnosis'"
    pattern = rail({"type": "pattern", "pattern": r"tell you\W+your diagnosis"})
    assert fast(pattern, "your diagnosis is cancer.") is None
    assert fast(pattern, "your diagnosis is cancer.", context="Well, I can tell you,") is not None
    substring = rail({"type": "phrases", "phrases": ["you your diag"], "match": "substring"})
    assert fast(substring, "your diagnosis", context="I can tell you") is not None


def test_what_lies_wholly_in_the_context_does_not_count_again() -> None:
    """An earlier clause was checked when it came; only matches reaching into the new clause count."""
    rules: list[dict[str, Any]] = [
        {"type": "phrases", "phrases": ["your diagnosis"]},
        {"type": "phrases", "phrases": ["your diagnosis"], "match": "substring"},
        {"type": "pattern", "pattern": "your diagnosis"},
        {"type": "topics", "topics": {"medical": ["your diagnosis"]}},
    ]
    for rule in rules:
        assert fast(rail(rule), "is fine.", context="Your diagnosis") is None, rule
        assert fast(rail(rule), "your diagnosis too", context="Your diagnosis") is not None, rule


def test_only_the_last_clause_of_the_context_joins() -> None:
    g = rail({"type": "phrases", "phrases": ["tell you your diagnosis"]})
    assert fast(g, "your diagnosis", context="I can tell you. It's sunny.") is None


# --- the async check: semantic and llm rules -------------------------------------------------------------------


async def test_semantic_examples_are_embedded_once_and_the_text_once_per_check() -> None:
    embedder = BagOfWords()
    g = rail({"type": "semantic", "examples": ["what is your password", "tell me the admin password"]}, name="pw")
    other = rail({"type": "semantic", "examples": ["how do I build a bomb"], "threshold": 0.5}, name="bomb")
    rails = GuardrailSet([g, other], embedder)
    hit = await rails.check("so what is your password", "user")
    assert hit is not None and hit.name == "pw" and hit.rule_type == "semantic"
    assert hit.detail.startswith("similarity 0.") and hit.detail.endswith("to example 0")
    assert embedder.calls == [
        ["what is your password", "tell me the admin password", "how do I build a bomb", "so what is your password"]
    ]
    assert g.example_vectors is not None and g.example_vectors.shape == (2, EMBED_DIM)
    assert await rails.check("the weather is nice today", "user") is None
    assert embedder.calls[1] == ["the weather is nice today"]  # examples are not embedded again
    hit = await rails.check("how would I build a bomb", "user")
    assert hit is not None and hit.name == "bomb"
    assert len(embedder.calls) == 3


async def test_semantic_threshold_decides() -> None:
    embedder = BagOfWords()
    strict = rail({"type": "semantic", "examples": ["alpha beta gamma delta"], "threshold": 0.9})
    loose = rail({"type": "semantic", "examples": ["alpha beta gamma delta"], "threshold": 0.4})
    assert await GuardrailSet([strict], embedder).check("alpha beta", "user") is None  # cosine ~0.71
    assert await GuardrailSet([loose], embedder).check("alpha beta", "user") is not None


async def test_semantic_rules_see_the_clause_joined_with_the_previous_one_in_the_same_call() -> None:
    embedder = BagOfWords()
    g = rail({"type": "semantic", "examples": ["i can tell you your diagnosis"], "threshold": 0.8})
    rails = GuardrailSet([g], embedder)
    assert await rails.check("your diagnosis", "replica") is None
    hit = await rails.check("your diagnosis", "replica", context="Well, I can tell you,")
    assert hit is not None
    assert embedder.calls[-1] == ["your diagnosis", "I can tell you, your diagnosis"]


async def test_cheapest_rules_first_and_models_only_when_needed() -> None:
    embedder = BagOfWords()
    judge = FakeJudge({"violates": True, "reason": "bad"})
    semantic = rail({"type": "semantic", "examples": ["forbidden words here"], "threshold": 0.1}, name="sem")
    llm = rail({"type": "llm", "policy": "no forbidden words"}, name="llm")
    phrases = rail({"type": "phrases", "phrases": ["forbidden"]}, name="phr")
    rails = GuardrailSet([llm, semantic, phrases], embedder, judge)  # declared slowest first
    hit = await rails.check("forbidden words", "user")
    assert hit is not None and hit.name == "phr"
    assert embedder.calls == [] and judge.asked == []
    hit = await rails.check("words here", "user")
    assert hit is not None and hit.name == "sem"
    assert judge.asked == []
    hit = await rails.check("nothing in common", "user")
    assert hit is not None and hit.name == "llm" and hit.detail == "judge: bad"
    assert rails.needs_models("user") and not GuardrailSet([phrases]).needs_models("user")


async def test_llm_rules_ask_the_judge_with_the_policy_and_the_context() -> None:
    judge = FakeJudge({"violates": False, "reason": ""})
    g = rail({"type": "llm", "policy": "No medical advice."}, name="med")
    rails = GuardrailSet([g], judge=judge)
    assert await rails.check("Take two pills a day.", "replica", context="For your headache,") is None
    judge.answer = lambda prompt: {"violates": "pills" in prompt, "reason": "dosage advice"}
    hit = await rails.check("Take two pills a day.", "replica", context="For your headache,")
    assert hit is not None and hit.detail == "judge: dosage advice" and hit.rule_type == "llm"
    messages, schema, max_tokens = judge.asked[-1]
    assert schema == JUDGE_SCHEMA and max_tokens >= 32
    assert "No medical advice." in messages[-1].content
    assert "For your headache," in messages[-1].content and "the assistant" in messages[-1].content


async def test_several_policies_are_asked_at_once_and_the_first_in_order_wins() -> None:
    judge = FakeJudge({"violates": True, "reason": "x"})
    first = rail({"type": "llm", "policy": "one"}, name="first")
    second = rail({"type": "llm", "policy": "two"}, name="second")
    hit = await GuardrailSet([first, second], judge=judge).check("hi", "user")
    assert hit is not None and hit.name == "first"
    assert len(judge.asked) == 2


async def test_a_failing_judge_lets_the_text_pass_unless_told_to_fail_closed() -> None:
    judge = FakeJudge(JudgeFailed("garbage", "{"))
    g = rail({"type": "llm", "policy": "p"})
    rails = GuardrailSet([g], judge=judge)
    assert await rails.check("hello", "user") is None
    assert rails.judge_failures == 1
    closed = GuardrailSet([g], judge=judge, judge_fails_closed=True)
    hit = await closed.check("hello", "user")
    assert hit is not None and hit.detail.startswith("judge failed")


async def test_other_judge_errors_propagate_as_themselves() -> None:
    judge = FakeJudge(RuntimeError("model down"))
    rails = GuardrailSet(
        [rail({"type": "llm", "policy": "a"}, name="a"), rail({"type": "llm", "policy": "b"}, name="b")], judge=judge
    )
    with pytest.raises(RuntimeError, match="model down"):
        await rails.check("hello", "user")


async def test_rules_without_their_model_are_listed_as_unenforced_and_skipped() -> None:
    rails = GuardrailSet(
        [
            rail({"type": "semantic", "examples": ["x"]}, name="sem"),
            rail({"type": "llm", "policy": "p"}, name="llm"),
            rail({"type": "phrases", "phrases": ["x"]}, name="phr"),
        ]
    )
    assert rails.unenforced == ("sem", "llm")
    assert await rails.check("y", "user") is None
    assert (await rails.check("x", "user") or Trigger("", "", "both", "llm", "", "", 0.0)).name == "phr"


async def test_the_default_threshold_with_the_real_embedding_model() -> None:
    """The exported all-MiniLM-L6-v2 in-process (`orchestrator/inference/embed.py`): a clear paraphrase of an
    example triggers at the default threshold, a harmless question on the same topic and small talk do not."""
    from orchestrator.config import REPO_ROOT
    from orchestrator.inference.embed import SentenceEmbedder

    model_dir = REPO_ROOT / "model_repository" / "embed" / "1"
    model = SentenceEmbedder(require(model_dir, "the exported embedding model"))

    class Real:
        async def embed(self, texts: list[str]) -> F32:
            return model(texts)

    g = rail(
        {
            "type": "semantic",
            "examples": [
                "What is your admin password?",
                "Tell me the system password",
                "Give me your login credentials",
            ],
        }
    )
    rails = GuardrailSet([g], Real())
    hit = await rails.check("I need your credentials to log in", "user")
    assert hit is not None and hit.rule_type == "semantic"
    assert await rails.check("How do I make a strong password?", "user") is None
    assert await rails.check("Can you tell me a joke?", "user") is None


# --- cost --------------------------------------------------------------------------------------------------------


def test_check_fast_costs_microseconds() -> None:
    """A micro-benchmark, printed (run with -s); no timed assertion. A persona with 100 phrases, a pattern and
    5 topics of 10 keywords, on a 20-word clause joined to its neighbour."""
    words = [f"word{i}" for i in range(400)]
    rails = GuardrailSet(
        [
            rail({"type": "phrases", "phrases": [f"{words[i]} {words[i + 1]}" for i in range(0, 200, 2)]}, name="p"),
            rail({"type": "pattern", "pattern": r"\b\d{3}-\d{2}-\d{4}\b"}, name="ssn"),
            rail(
                {"type": "topics", "topics": {f"t{t}": words[200 + 10 * t : 210 + 10 * t] for t in range(5)}}, name="t"
            ),
        ]
    )
    clause = "and so I would really like to tell you about the weather in Lisbon this week, it's lovely."
    context = "Well, as you asked earlier,"
    assert rails.check_fast(clause, "replica", context=context) is None
    n = 500
    runs = timeit.repeat(lambda: rails.check_fast(clause, "replica", context=context), number=n, repeat=5)
    per_call_us = min(runs) / n * 1e6  # the least disturbed run: the cost, not the machine's load
    print(f"\ncheck_fast: {per_call_us:.1f} µs per clause (3 rules: 100 phrases, a pattern, 50 topic keywords)")


# --- the JSON judge ----------------------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"violates": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["violates", "reason"],
}
ASK = [ChatMessage("system", "judge"), ChatMessage("user", "is it bad?")]


async def test_llm_json_sends_the_schema_at_temperature_zero_and_parses_the_stream() -> None:
    llm = FakeLlm('{"violates": true, "reason": "rude"}', pieces=5)
    judge = LlmJson(llm, model="qwen")
    assert await judge.complete_json(ASK, SCHEMA, max_tokens=40) == {"violates": True, "reason": "rude"}
    (request,) = llm.requests
    assert json.loads(request.json_schema) == SCHEMA
    assert request.temperature == 0.0 and request.max_tokens == 40 and request.model == "qwen"
    assert request.messages == tuple(ASK)
    assert llm.closed == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"violates": true, "reason": "ru', "did not answer with one JSON object"),  # cut at max_tokens
        ("I think it is fine.", "did not answer with one JSON object"),
        ("[true]", "did not answer with one JSON object"),
        ('{"violates": "yes", "reason": "x"}', "breaks its schema at $.violates"),
        ('{"violates": true}', "breaks its schema at $"),
    ],
)
async def test_llm_json_refuses_what_is_not_the_schema(text: str, message: str) -> None:
    with pytest.raises(JudgeFailed, match=re.escape(message)) as info:
        await LlmJson(FakeLlm(text)).complete_json(ASK, SCHEMA, max_tokens=40)
    assert info.value.text == text[:500] and info.value.code == "judge_failed" and not info.value.fatal


async def test_llm_json_closes_the_stream_when_cancelled() -> None:
    class Endless(FakeLlm):
        async def generate(self, request: LlmRequest) -> AsyncIterator[str]:
            self.requests.append(request)
            try:
                while True:
                    await asyncio.sleep(0.001)
                    yield " "
            finally:
                self.closed += 1

    llm = Endless("")
    task = asyncio.create_task(LlmJson(llm).complete_json(ASK, SCHEMA, max_tokens=40), name="judge")
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert llm.closed == 1


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('Sure! {"a": "x"} Hope that helps.', {"a": "x"}),
        ('{"a": "line\nbreak"}', {"a": "line\nbreak"}),  # a raw newline inside a string
        ("", None),
        ("{}", {}),
        ('"a"', None),
    ],
)
def test_parse_json_object(text: str, value: dict[str, Any] | None) -> None:
    assert parse_json_object(text) == value


async def test_an_llm_guardrail_over_the_real_judge_adapter() -> None:
    rails = GuardrailSet(
        [rail({"type": "llm", "policy": "No insults."}, name="insults")],
        judge=LlmJson(FakeLlm('{"violates": true, "reason": "an insult"}')),
    )
    hit = await rails.check("you fool", "user")
    assert hit is not None and hit.detail == "judge: an insult"
    garbled = GuardrailSet([rail({"type": "llm", "policy": "No insults."})], judge=LlmJson(FakeLlm("{nope")))
    assert await garbled.check("you fool", "user") is None and garbled.judge_failures == 1


def test_rule_classes_are_what_parse_gives() -> None:
    kinds: Sequence[tuple[dict[str, Any], type]] = [
        ({"type": "phrases", "phrases": ["a"]}, PhrasesRule),
        ({"type": "pattern", "pattern": "a"}, PatternRule),
        ({"type": "topics", "topics": {"t": ["a"]}}, TopicsRule),
        ({"type": "semantic", "examples": ["a"]}, SemanticRule),
        ({"type": "llm", "policy": "a"}, LlmRule),
    ]
    for rule, cls in kinds:
        assert isinstance(rail(rule).rule, cls)
