"""Objectives without models: parsing (every malformed body refused with its JSON path: unknown or repeated
names, cycles with their path, unreachable objectives), the tracker's state machine on virtual time, the judge's
schema (valid JSON Schema, small, accepted by llama.cpp's grammar converter), and `advance` over a fake judge."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest

from orchestrator.errors import Invalid
from orchestrator.intel.judge import JudgeFailed
from orchestrator.intel.objectives import (
    JUDGE_TURNS,
    Completed,
    ObjectiveGraph,
    ObjectiveTracker,
    advance,
    judge_max_tokens,
    judge_schema,
    parse_objectives,
)
from orchestrator.models.ports import ChatMessage


@dataclass(frozen=True)
class Turn:
    role: str
    text: str


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeJudge:
    def __init__(self, answer: dict[str, Any] | Exception) -> None:
        self.answer = answer
        self.asked: list[tuple[list[ChatMessage], dict[str, Any], int]] = []

    async def complete_json(
        self, messages: list[ChatMessage], schema: dict[str, Any], *, max_tokens: int
    ) -> dict[str, Any]:
        self.asked.append((messages, schema, max_tokens))
        await asyncio.sleep(0)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


SUPPORT: dict[str, Any] = {
    "objectives": [
        {
            "name": "get_name",
            "prompt": "Ask for the caller's full name.",
            "output_variables": ["full_name"],
            "next_required": ["get_issue"],
        },
        {
            "name": "get_issue",
            "prompt": "Find out what went wrong.",
            "output_variables": ["issue"],
            "next_conditional": {"refund": "the user asks for their money back", "escalate": "the user is angry"},
        },
        {
            "name": "refund",
            "prompt": "Take the order number.",
            "confirmation_mode": "manual",
            "output_variables": ["order_number", "email"],
        },
        {"name": "escalate", "prompt": "Offer a call back from a manager.", "confirmation_mode": "auto"},
    ]
}


def graph() -> ObjectiveGraph:
    return parse_objectives(SUPPORT)


# --- parsing -----------------------------------------------------------------------------------------------------


def test_parse_fills_defaults_and_shows_itself_canonically() -> None:
    g = graph()
    assert [o.name for o in g.objectives] == ["get_name", "get_issue", "refund", "escalate"]
    assert g.start.name == "get_name"
    assert g["refund"].manual and not g["get_name"].manual
    assert g["escalate"].output_variables == () and g["escalate"].confirmation_mode == "auto"
    assert g["get_issue"].successors == ("refund", "escalate")
    body = g.body()
    assert body["objectives"][0] == {
        "name": "get_name",
        "prompt": "Ask for the caller's full name.",
        "confirmation_mode": "auto",
        "output_variables": ["full_name"],
        "next_required": ["get_issue"],
        "next_conditional": {},
    }
    assert parse_objectives(body) == g
    with pytest.raises(KeyError):
        g["nope"]


def test_a_single_objective_is_a_graph() -> None:
    g = parse_objectives({"objectives": [{"name": "greet", "prompt": "Say hello."}]})
    assert g.start.name == "greet" and g.start.output_variables == ()


def mutate(path: str, value: Any) -> dict[str, Any]:
    """SUPPORT with one change: `path` like "0.next_required" (index, key); value None deletes the key."""
    body = copy.deepcopy(SUPPORT)
    index, key = path.split(".", 1)
    item = body["objectives"][int(index)]
    if value is None:
        item.pop(key, None)
    else:
        item[key] = value
    return body


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ([], "$", "JSON object"),
        ({"objectives": [], "extra": 1}, "$.extra", "unknown field 'extra'"),
        ({}, "$.objectives", "non-empty list"),
        ({"objectives": []}, "$.objectives", "non-empty list"),
        ({"objectives": {"name": "a"}}, "$.objectives", "non-empty list"),
        ({"objectives": [{"name": f"o{i}", "prompt": "p"} for i in range(51)]}, "$.objectives", "at most 50"),
        ({"objectives": ["get_name"]}, "$.objectives[0]", "must be an object"),
        (mutate("1.name", None), "$.objectives[1].name", "name must be"),
        (mutate("1.name", "get issue"), "$.objectives[1].name", "name must be"),
        (mutate("1.name", "9lives"), "$.objectives[1].name", "name must be"),
        (mutate("1.name", "x" * 65), "$.objectives[1].name", "name must be 1-64"),
        (mutate("2.name", "get_name"), "$.objectives[2].name", "declared twice (first at $.objectives[0])"),
        (mutate("0.prompt", None), "$.objectives[0].prompt", "prompt must be a non-empty string"),
        (mutate("0.prompt", " "), "$.objectives[0].prompt", "prompt must be a non-empty string"),
        (mutate("0.prompt", "p" * 2001), "$.objectives[0].prompt", "longer than 2000"),
        (mutate("0.confirmation_mode", "sometimes"), "$.objectives[0].confirmation_mode", "'auto' or 'manual'"),
        (mutate("0.goal", "x"), "$.objectives[0].goal", "unknown field 'goal'"),
        (mutate("0.output_variables", "full_name"), "$.objectives[0].output_variables", "list of names"),
        (mutate("0.output_variables", ["ok", "full name"]), "$.objectives[0].output_variables[1]", "identifier"),
        (mutate("0.output_variables", ["ok", 3]), "$.objectives[0].output_variables[1]", "identifier"),
        (mutate("0.output_variables", ["a", "a"]), "$.objectives[0].output_variables[1]", "listed twice"),
        (mutate("0.output_variables", [f"v{i}" for i in range(17)]), "$.objectives[0].output_variables", "16"),
        (mutate("0.next_required", "get_issue"), "$.objectives[0].next_required", "list of names"),
        (
            mutate("0.next_required", ["get_issue", "nope"]),
            "$.objectives[0].next_required[1]",
            "no objective is named 'nope'",
        ),
        (mutate("0.next_required", [7]), "$.objectives[0].next_required[0]", "named by a string"),
        (mutate("0.next_required", ["get_name"]), "$.objectives[0].next_required[0]", "cycle: get_name -> get_name"),
        (mutate("0.next_required", ["get_issue", "get_issue"]), "$.objectives[0].next_required[1]", "listed twice"),
        (mutate("1.next_conditional", ["refund"]), "$.objectives[1].next_conditional", "must be an object"),
        (mutate("1.next_conditional", {"nope": "x"}), "$.objectives[1].next_conditional.nope", "no objective is named"),
        (mutate("1.next_conditional", {"refund": ""}), "$.objectives[1].next_conditional.refund", "non-empty string"),
        (mutate("1.next_conditional", {"refund": 1}), "$.objectives[1].next_conditional.refund", "non-empty string"),
        (
            mutate("1.next_conditional", {"refund": "c" * 501, "escalate": "x"}),
            "$.objectives[1].next_conditional.refund",
            "longer than 500",
        ),
        (
            mutate("1.next_conditional", {"escalate": "x"}),  # refund is reached from nowhere now
            "$.objectives[2].name",
            "'refund' is never reached from the first objective 'get_name'",
        ),
    ],
)
def test_malformed_objectives_are_refused_with_their_path(body: Any, field: str, message: str) -> None:
    with pytest.raises(Invalid, match=re.escape(message)) as info:
        parse_objectives(body)
    assert info.value.field == field
    assert info.value.code == "invalid" and not info.value.fatal


def test_required_and_conditional_at_once_is_refused() -> None:
    body = mutate("1.next_required", ["refund"])
    with pytest.raises(Invalid, match="both required and conditional") as info:
        parse_objectives(body)
    assert info.value.field == "$.objectives[1].next_conditional.refund"


def test_a_cycle_is_reported_with_its_path_at_the_edge_that_closes_it() -> None:
    body = copy.deepcopy(SUPPORT)
    body["objectives"][2]["next_required"] = ["get_issue"]  # get_issue -> refund -> get_issue
    with pytest.raises(Invalid, match=re.escape("cycle: get_issue -> refund -> get_issue")) as info:
        parse_objectives(body)
    assert info.value.field == "$.objectives[2].next_required[0]"
    longer = {
        "objectives": [
            {"name": "a", "prompt": "p", "next_required": ["b"]},
            {"name": "b", "prompt": "p", "next_conditional": {"c": "when"}},
            {"name": "c", "prompt": "p", "next_required": ["d", "a"]},
            {"name": "d", "prompt": "p"},
        ]
    }
    with pytest.raises(Invalid, match=re.escape("cycle: a -> b -> c -> a")) as info:
        parse_objectives(longer)
    assert info.value.field == "$.objectives[2].next_required[1]"


def test_a_diamond_is_not_a_cycle() -> None:
    g = parse_objectives(
        {
            "objectives": [
                {"name": "a", "prompt": "p", "next_required": ["b", "c"]},
                {"name": "b", "prompt": "p", "next_required": ["d"]},
                {"name": "c", "prompt": "p", "next_required": ["d"]},
                {"name": "d", "prompt": "p"},
            ]
        }
    )
    assert [o.name for o in g.objectives] == ["a", "b", "c", "d"]


# --- the tracker -------------------------------------------------------------------------------------------------

TALK = [
    Turn("replica", "Hi! Who am I speaking with?"),
    Turn("user", "This is Maria Lopez."),
]


def test_the_tracker_starts_with_the_first_objective_and_steers_towards_it() -> None:
    tracker = ObjectiveTracker(graph(), Clock(5.0))
    assert [o.name for o in tracker.current] == ["get_name"]
    assert tracker.focus is not None and tracker.focus.name == "get_name"
    assert tracker.activated_at == {"get_name": 5.0}
    assert not tracker.done and tracker.completed == () and tracker.outputs() == {}
    assert tracker.steer() == "Current objective: Ask for the caller's full name. Still to find out: full name."


def test_the_judge_request_is_small_and_about_the_focus() -> None:
    tracker = ObjectiveTracker(graph(), Clock())
    messages, schema = tracker.judge_request(TALK)
    assert [m.role for m in messages] == ["system", "user"]
    prompt = messages[1].content
    assert "Objective: Ask for the caller's full name." in prompt
    assert "full_name" in prompt
    assert "Assistant: Hi! Who am I speaking with?\nUser: This is Maria Lopez." in prompt
    assert schema == judge_schema(graph()["get_name"])
    assert list(schema["properties"]) == ["variables", "completed"]  # findings first, then the verdict
    assert len(json.dumps(schema)) < 400
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"variables": {"full_name": "Maria Lopez"}, "completed": True}, schema)
    jsonschema.validate({"variables": {"full_name": None}, "completed": False}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"variables": {}, "completed": True}, schema)
    assert tracker.judge_max_tokens() == judge_max_tokens(graph()["get_name"]) > 40


def test_the_judge_sees_only_the_latest_turns_each_cut() -> None:
    tracker = ObjectiveTracker(graph(), Clock())
    turns = [Turn("user", f"turn {i} " + "word " * 200) for i in range(JUDGE_TURNS + 4)]
    prompt = tracker.judge_request(turns)[0][1].content
    assert "turn 3 " not in prompt and f"turn {JUDGE_TURNS + 3}" not in prompt  # cut from the start: the end stays
    assert prompt.count("User: …") == JUDGE_TURNS
    assert tracker.judge_request([])[0][1].content.endswith("(nothing said yet)")


def test_schema_for_manual_and_conditional_objectives() -> None:
    g = graph()
    manual = judge_schema(g["refund"])
    assert list(manual["properties"]) == ["variables", "confirmed", "completed"]
    assert manual["properties"]["variables"]["required"] == ["order_number", "email"]
    branching = judge_schema(g["get_issue"])
    assert list(branching["properties"]) == ["variables", "conditions", "completed"]
    assert branching["properties"]["conditions"]["required"] == ["refund", "escalate"]
    bare = judge_schema(g["escalate"])
    assert list(bare["properties"]) == ["completed"]
    for schema in (manual, branching, bare):
        jsonschema.Draft202012Validator.check_schema(schema)


def test_partial_values_are_kept_and_completion_needs_every_value() -> None:
    clock = Clock(1.0)
    tracker = ObjectiveTracker(graph(), clock)
    tracker.judge_request(TALK)
    assert tracker.apply({"variables": {"full_name": None}, "completed": True}) == []  # says done, has no value
    assert tracker.apply({"variables": {"full_name": " Maria Lopez "}, "completed": False}) == []
    assert tracker.collected("get_name") == {"full_name": "Maria Lopez"}
    assert tracker.missing("get_name") == ()
    clock.t = 7.5
    done = tracker.apply({"variables": {"full_name": None}, "completed": True})  # the value said earlier counts
    assert done == [Completed("get_name", {"full_name": "Maria Lopez"}, 7.5)]
    assert [o.name for o in tracker.current] == ["get_issue"]
    assert tracker.activated_at["get_issue"] == 7.5
    assert tracker.steer().startswith("Current objective: Find out what went wrong.")


def test_conditional_next_objectives_start_only_when_their_condition_holds() -> None:
    tracker = ObjectiveTracker(graph(), Clock())
    tracker.apply({"variables": {"full_name": "Maria"}, "completed": True}, 1.0, objective="get_name")
    tracker.judge_request(TALK)
    done = tracker.apply(
        {"variables": {"issue": "broken lamp"}, "conditions": {"refund": True, "escalate": False}, "completed": True},
        2.0,
    )
    assert [c.name for c in done] == ["get_issue"]
    assert [o.name for o in tracker.current] == ["refund"]
    # none holds: the conversation's objectives are done
    other = ObjectiveTracker(graph(), Clock())
    other.apply({"variables": {"full_name": "Maria"}, "completed": True}, 1.0, objective="get_name")
    other.apply({"variables": {"issue": "x"}, "conditions": {"refund": False}, "completed": True}, 2.0)
    assert other.done and other.steer() == "" and other.focus is None


def test_manual_objectives_need_the_user_to_confirm_the_values_read_back() -> None:
    tracker = ObjectiveTracker(graph(), Clock())
    tracker.apply({"variables": {"full_name": "Maria"}, "completed": True}, 1.0, objective="get_name")
    tracker.apply({"variables": {"issue": "x"}, "conditions": {"refund": True}, "completed": True}, 2.0)
    assert tracker.steer().endswith("Still to find out: order number, email.")
    values = {"order_number": "A-1234", "email": "maria@example.com"}
    assert tracker.apply({"variables": values, "confirmed": False, "completed": True}, 3.0) == []
    assert tracker.steer() == (
        "Current objective: Take the order number. Read back what you noted (order number: A-1234; email: "
        "maria@example.com) and ask them to confirm it is right."
    )
    assert tracker.apply({"variables": {"order_number": None, "email": None}, "completed": True}, 4.0) == []
    done = tracker.apply({"variables": {}, "confirmed": True, "completed": True}, 5.0)
    assert done == [Completed("refund", values, 5.0)]
    assert tracker.done
    assert tracker.outputs() == {
        "get_name": {"full_name": "Maria"},
        "get_issue": {"issue": "x"},
        "refund": values,
    }


def test_a_newer_value_replaces_an_older_one_and_numbers_become_text() -> None:
    tracker = ObjectiveTracker(graph(), Clock())
    tracker.apply({"variables": {"full_name": "Mara"}, "completed": False}, objective="get_name")
    tracker.apply({"variables": {"full_name": 42}, "completed": False}, objective="get_name")
    assert tracker.collected("get_name") == {"full_name": "42"}
    tracker.apply({"variables": {"full_name": True}, "completed": False}, objective="get_name")
    assert tracker.collected("get_name") == {"full_name": "42"}


def test_stale_answers_complete_nothing() -> None:
    tracker = ObjectiveTracker(graph(), Clock())
    tracker.judge_request(TALK)
    answer = {"variables": {"full_name": "Maria"}, "completed": True}
    assert len(tracker.apply(answer, 1.0)) == 1
    assert tracker.apply(answer, 2.0, objective="get_name") == []  # already complete
    assert tracker.apply({"completed": True}, 2.0, objective="refund") == []  # not active yet
    assert [c.name for c in tracker.completed] == ["get_name"]


def test_an_objective_reached_twice_starts_once() -> None:
    g = parse_objectives(
        {
            "objectives": [
                {"name": "a", "prompt": "A", "next_required": ["b", "c"]},
                {"name": "b", "prompt": "B", "next_required": ["d"]},
                {"name": "c", "prompt": "C", "next_required": ["d"]},
                {"name": "d", "prompt": "D"},
            ]
        }
    )
    tracker = ObjectiveTracker(g, Clock())
    tracker.apply({"completed": True}, 1.0)
    assert [o.name for o in tracker.current] == ["b", "c"]
    tracker.apply({"completed": True}, 2.0, objective="b")
    assert [o.name for o in tracker.current] == ["c", "d"]
    tracker.apply({"completed": True}, 3.0, objective="c")
    assert [o.name for o in tracker.current] == ["d"]
    tracker.apply({"completed": True}, 4.0)
    assert tracker.done and [c.name for c in tracker.completed] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="nothing to judge"):
        tracker.judge_request([])
    assert tracker.judge_max_tokens() == 0


async def test_advance_asks_about_the_focus_and_applies_the_answer() -> None:
    tracker = ObjectiveTracker(graph(), Clock(3.0))
    judge = FakeJudge({"variables": {"full_name": "Maria Lopez"}, "completed": True})
    done = await advance(tracker, judge, TALK)
    assert done == [Completed("get_name", {"full_name": "Maria Lopez"}, 3.0)]
    (messages, schema, max_tokens) = judge.asked[0]
    assert schema == judge_schema(graph()["get_name"]) and max_tokens == judge_max_tokens(graph()["get_name"])
    assert "Maria Lopez" in messages[1].content
    failing = ObjectiveTracker(graph(), Clock())
    assert await advance(failing, FakeJudge(JudgeFailed("garbage")), TALK) == []
    assert [o.name for o in failing.current] == ["get_name"]
    finished = ObjectiveTracker(parse_objectives({"objectives": [{"name": "a", "prompt": "p"}]}), Clock())
    await advance(finished, FakeJudge({"completed": True}), TALK)
    assert finished.done and await advance(finished, FakeJudge({"completed": True}), TALK) == []


def test_judge_schemas_are_accepted_by_the_grammar_converter() -> None:
    """The local model decodes under a grammar llama.cpp builds from the schema: every shape the tracker asks
    must convert (and stay small)."""
    from llama_cpp.llama_grammar import LlamaGrammar

    big = parse_objectives(
        {
            "objectives": [
                {
                    "name": "everything",
                    "prompt": "p",
                    "confirmation_mode": "manual",
                    "output_variables": [f"v{i}" for i in range(16)],
                    "next_conditional": {f"n{i}": "c" for i in range(8)},
                },
                *({"name": f"n{i}", "prompt": "p"} for i in range(8)),
            ]
        }
    )
    for objective in [*graph().objectives, *big.objectives]:
        grammar = LlamaGrammar.from_json_schema(json.dumps(judge_schema(objective)), verbose=False)
        assert "root ::=" in grammar._grammar
        assert len(grammar._grammar) < 60_000
