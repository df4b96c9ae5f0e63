"""Memories from what the user said about themselves (`orchestrator/intel/facts.py`): first-person statements
that last, put in the third person; questions, small talk and the replica's words never become facts."""

from __future__ import annotations

import pytest

from orchestrator.intel.facts import first_person_facts, third_person


def test_statements_about_themselves_become_facts_one_per_clause() -> None:
    turns = [
        ("replica", "Hello, my name is Sam. How can I help?"),
        ("user", "Hi, my name is Priya and I just moved to Denver with my dog Rex."),
        ("user", "Yes hello, I'm allergic to penicillin, and I'd like a checkup next week."),
        ("user", "I prefer text messages to calls."),
    ]
    assert first_person_facts(turns, 10) == [
        "The user's name is Priya.",
        "The user just moved to Denver with the user's dog Rex.",
        "The user is allergic to penicillin.",
        "The user would like a checkup next week.",
        "The user prefers text messages to calls.",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "What's my balance?",  # a question
        "I'm fine, thanks.",  # small talk
        "OK thanks, bye.",
        "I see.",
        "It is raining today.",  # not about them
        "I want it.",  # about nothing that lasts
    ],
)
def test_what_is_not_a_lasting_fact_about_them_is_left_out(text: str) -> None:
    assert first_person_facts([("user", text)], 10) == []


def test_the_replicas_words_and_repeats_are_never_facts_and_the_limit_holds() -> None:
    turns = [("replica", "I live in Paris and my name is Ada.")] + [("user", "My daughter is called Maya.")] * 3
    assert first_person_facts(turns, 10) == ["The user's daughter is called Maya."]
    many = [("user", f"My number {i} is {i}.") for i in range(20)]
    assert len(first_person_facts(many, 8)) == 8


@pytest.mark.parametrize(
    ("first", "third"),
    [
        ("I need to update my address", "The user needs to update the user's address"),
        ("I live in Lyon", "The user lives in Lyon"),
        ("I worked nights for years", "The user worked nights for years"),
        ("I have two cats", "The user has two cats"),
        ("I usually pay by card", "The user usually pays by card"),
        ("I watch football with my brother", "The user watches football with the user's brother"),
        ("I don't eat meat", "The user doesn't eat meat"),
    ],
)
def test_third_person(first: str, third: str) -> None:
    assert third_person(first) == third
