"""The intelligence benchmark's scoring functions and its data (perf/bench_intel.py, perf/data/intel/)."""

from __future__ import annotations

import math

import pytest

from orchestrator.intel.guardrails import GuardrailSet
from orchestrator.intel.objectives import parse_objectives
from perf.bench_intel import (
    UNKNOWN,
    answer_in,
    arguments_match,
    call_right,
    compact,
    content_words,
    empty_memory,
    fact_parts,
    load_guardrails,
    load_memories,
    load_questions,
    load_redteam,
    load_scripts,
    load_tools,
    mentions,
    narrates_context,
    normalise,
    percentile,
    pick_questions,
    prefilter_effect,
    rail_counts,
    rule_set,
    says_unknown,
    share,
    states_fact,
    states_fact_loosely,
    stats,
    threshold_sweep,
    value_matches,
)

# ------------------------------------------------------------------------------------------- grounded answers


def test_normalise_and_content_words() -> None:
    assert normalise("It’s  48 hours – Now") == "it's 48 hours - now"
    assert content_words("7:30 a.m.") == ["7", "30"]
    assert content_words("three business days") == ["3", "business", "days"]
    assert content_words("must be in the state") == ["state"]
    assert content_words("$1,200") == ["1", "200"]


def test_a_fact_is_stated_whole_and_not_inside_a_longer_number() -> None:
    assert states_fact("We charge a $40 missed appointment fee.", "$40")
    assert not states_fact("That costs $400.", "$40")
    assert not states_fact("That costs US$40.", "$40")
    assert states_fact("Sick slots open at 7:30 a.m. every day.", "7:30 a.m.")
    assert states_fact("It opens at 7:30 A.M.", "7:30 a.m.")
    assert not states_fact("It opens at 7:30 am.", "7:30 a.m.")
    assert not states_fact("anything", "")


def test_a_fact_of_parts_needs_every_part_in_any_order() -> None:
    assert fact_parts("8:45 a.m., Building B") == ["8:45 a.m", "building b"]
    assert fact_parts("$1,200") == ["$1,200"]
    reply = "Go to the reception desk in Building B at 8:45 a.m. on your first day."
    assert states_fact(reply, "8:45 a.m., Building B")
    assert not states_fact("Go to Building B.", "8:45 a.m., Building B")


def test_the_loose_match_takes_number_words_and_spacing() -> None:
    assert states_fact_loosely("You have thirty days.", "30 days")
    assert states_fact_loosely("It's forty dollars.", "$40")
    assert states_fact_loosely("Slots open at 7:30 am.", "7:30 a.m.")
    assert states_fact_loosely("You need to be physically in the state.", "must be in the state")
    assert not states_fact_loosely("You have three days.", "30 days")
    assert not states_fact_loosely("anything", "the")  # (no content word: never a match)


@pytest.mark.parametrize(
    "reply",
    [
        "I'm sorry, I don't know.",
        "I don’t have that information.",
        "I'm not sure about that one.",
        "There's no information about teeth cleaning.",
        "I can't find anything about a gym.",
        "I'm unable to help with that.",
        "I'm afraid that isn't covered.",
        "That's not mentioned in our documents.",
    ],
)
def test_says_unknown(reply: str) -> None:
    assert says_unknown(reply)


@pytest.mark.parametrize(
    "reply",
    ["Yes, we do teeth cleanings.", "You know what, it's $40.", "Sure, I can find you a slot.", "No, it's free."],
)
def test_an_answer_is_not_unknown(reply: str) -> None:
    assert not says_unknown(reply)
    assert UNKNOWN  # (the set is what the docs list)


def test_narrates_context() -> None:
    assert narrates_context("Based on the information provided, it's $40.")
    assert narrates_context("According to the documents, you have 21 days.")
    assert narrates_context("That isn't in the documents I have.")
    assert not narrates_context("We charge $40 if you miss it; the information is on your bill.")


def test_answer_in_context() -> None:
    context = "Facts:\n[1] We charge a $40 missed  appointment fee."
    assert answer_in(context, "we charge a $40 missed appointment fee")
    assert answer_in(context, ["nothing", "$40 missed"])
    assert not answer_in(context, "$75")


def test_percentile_stats_and_share() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile(list(range(101)), 95) == pytest.approx(95)
    assert math.isnan(percentile([], 50))
    s = stats([1.0, None, 3.0, float("nan")])
    assert s["n"] == 2 and s["p50"] == pytest.approx(2.0) and s["mean"] == pytest.approx(2.0)
    assert math.isnan(stats([])["p95"])
    assert share([True, False, True, True]) == 0.75 and math.isnan(share([]))


def test_pick_questions_spreads_over_the_groups() -> None:
    questions = load_questions()
    picked = pick_questions(questions, 20)
    groups = {str(q["id"]).split("-")[0] for q in picked}
    assert groups == {"clinic", "telecom", "handbook", "none"}
    assert 18 <= len(picked) <= 22 and len({q["id"] for q in picked}) == len(picked)
    assert pick_questions(questions, 0) == questions


# ------------------------------------------------------------------------------------------------ guardrails


def test_rail_counts() -> None:
    outcomes = [
        ("replica", True, True),
        ("replica", True, False),  # spoken
        ("replica", False, True),  # a false trigger
        ("replica", False, False),
        ("user", True, False),  # let through
        ("user", False, False),
    ]
    c = rail_counts(outcomes)
    assert (c["replica_bad"], c["replica_spoken"], c["replica_ok"], c["replica_false"]) == (2, 1, 2, 1)
    assert (c["user_bad"], c["user_missed"], c["user_ok"], c["user_false"]) == (1, 1, 1, 0)


def test_threshold_sweep_combines_the_deterministic_rules() -> None:
    lines = [("replica", True, False, 0.7), ("replica", True, True, 0.2), ("replica", False, False, 0.65)]
    low, high = threshold_sweep(lines, [0.6, 0.8])
    assert (low["semantic_replica_spoken"], low["semantic_replica_false"]) == (1, 1)
    assert (low["all_replica_spoken"], low["all_replica_false"]) == (0, 1)
    assert (high["all_replica_spoken"], high["all_replica_false"]) == (1, 0)


def test_the_teams_guardrails_parse_and_every_rule_type_is_there() -> None:
    rails = [g for _, g in load_guardrails()]
    assert {s: len(rule_set(rails, s)) > 0 for s in ("phrases", "pattern", "semantic")} == dict.fromkeys(
        ("phrases", "pattern", "semantic"), True
    )
    assert len(rule_set(rails, "deterministic")) == len(rule_set(rails, "phrases")) + len(rule_set(rails, "pattern"))
    llm = [g for _, g in load_guardrails("llm_guardrails")]
    assert llm and all(g.body()["rule"]["type"] == "llm" for g in llm)


def test_the_redteam_set_is_labelled_and_the_deterministic_rules_catch_its_direct_cases() -> None:
    lines = load_redteam()
    assert len({x["id"] for x in lines}) == len(lines)
    assert all(x["side"] in ("replica", "user") and isinstance(x["violates"], bool) for x in lines)
    for side in ("replica", "user"):
        assert sum(x["violates"] for x in lines if x["side"] == side) >= 15
        assert sum(not x["violates"] for x in lines if x["side"] == side) >= 15
    rails = GuardrailSet(rule_set([g for _, g in load_guardrails()], "deterministic"))
    for x in lines:  # a straddling violation's earlier clause passes on its own
        if x.get("context"):
            assert rails.check_fast(x["context"], x["side"]) is None, x["id"]
    straddle = next(x for x in lines if x["kind"] == "straddle" and x["policy"] == "legal")
    assert rails.check_fast(straddle["text"], "replica", context=straddle["context"]) is not None
    card = next(x for x in lines if x["id"] == "r-card-bad-01")
    assert rails.check_fast(card["text"], "replica") is not None


# ------------------------------------------------------------------------------------- objectives and tools


def test_values_and_arguments_match_spacing_and_case_aside() -> None:
    assert compact("4 4 7 1-902") == "4471902"
    assert compact("twelve") == "12"
    assert value_matches("4471902", "4 4 7 1 9 0 2")
    assert value_matches("Blue Cross", "blue cross insurance")
    assert not value_matches("Blue Cross", None) and not value_matches("x", "  ")
    assert not value_matches("annual physical", "a rash")
    assert arguments_match({"day": "Tuesday"}, {"day": "Tuesday morning", "time": "9"})
    assert not arguments_match({"day": "Tuesday"}, {"time": "Tuesday"})
    assert arguments_match({}, {"anything": 1})


def test_call_right() -> None:
    expected = {"name": "check_balance", "arguments": {"account_number": "4471902"}}
    assert call_right(None, "none", None)
    assert not call_right(None, "call", {"name": "check_balance", "arguments": {}})
    assert call_right(expected, "call", {"name": "check_balance", "arguments": {"account_number": "4471902"}})
    assert not call_right(expected, "call", {"name": "check_balance", "arguments": {"account_number": "1234567"}})
    assert not call_right(expected, "invalid", {"answer": {}})
    assert not call_right(expected, "none", None)


def test_prefilter_effect() -> None:
    turns = [(True, 0.5), (True, 0.1), (False, 0.05), (False, 0.3), (False, 0.2)]
    e = prefilter_effect(turns, 0.25)
    assert (e["tool_turns"], e["other_turns"], e["spared"], e["wrongly_skipped"]) == (2, 3, 2, 1)
    assert prefilter_effect(turns, 0.0)["spared"] == 0


def test_the_scripts_and_tools_are_consistent() -> None:
    tools = {t.name: t for t in load_tools()}
    for script in load_scripts():
        graph = parse_objectives(script["objectives"])
        names = {o.name for o in graph.objectives}
        variables = {v for o in graph.objectives for v in o.output_variables}
        assert set(script["expect"]["completed"]) <= names, script["id"]
        assert set(script["expect"]["variables"]) <= variables, script["id"]
        for turn in script["turns"]:
            assert turn["user"] and turn["replica"]
            if turn["tool"] is not None:
                tool = tools[turn["tool"]["name"]]
                assert set(turn["tool"]["arguments"]) <= set(tool.parameters["properties"]), script["id"]
                # what a right call carries was said by the user
                assert all(value_matches(v, turn["user"]) for v in turn["tool"]["arguments"].values()), script["id"]
    turns = [t for s in load_scripts() for t in s["turns"]]
    assert sum(t["tool"] is not None for t in turns) >= 4 and sum(t["tool"] is None for t in turns) >= 10


# -------------------------------------------------------------------------------------------------- memories


def test_mentions_and_empty_memories() -> None:
    assert mentions(["The user is allergic to Penicillin."], "penicillin")
    assert not mentions(["The user moved."], "denver")
    assert empty_memory("The user.") and empty_memory("The caller.")
    assert not empty_memory("Tom drives.")


def test_every_planted_fact_is_said_by_the_user_in_the_first_conversation() -> None:
    for conv in load_memories():
        said = " ".join(t["text"] for t in conv["first"] if t["role"] == "user")
        assert conv["facts"], conv["id"]
        for fact in conv["facts"]:
            assert mentions([said], fact["fact"]), (conv["id"], fact["fact"])
            assert not mentions([fact["question"]], fact["fact"]), (conv["id"], fact["fact"])  # no giveaway
