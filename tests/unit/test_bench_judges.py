"""The judge benchmark's pure parts: the cases, the prompt, parsing and scoring replies, and the summary
(perf/bench_judges.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perf.bench_judges import (
    DATA,
    KINDS,
    LATENCY_CASE,
    Case,
    Row,
    drop_first,
    judge_messages,
    latency_plan,
    latency_table,
    load_cases,
    make_row,
    parse_reply,
    percentile,
    score_reply,
    summarise,
    table,
    value_matches,
)

TOOL = Case(
    id="t",
    kind="tool",
    material="User: how much is in account 4471-22?",
    question="Call check_balance?",
    schema={
        "type": "object",
        "properties": {"call": {"type": "boolean"}, "account_id": {"type": "string"}},
        "required": ["call", "account_id"],
    },
    expect={"call": True, "account_id": "4471-22"},
)


def test_the_cases_load_and_each_schema_compiles_to_a_grammar() -> None:
    from orchestrator.inference.llm import grammar_from_schema, parse_json_schema

    cases = load_cases(DATA)
    assert len(cases) >= 10 and len({c.id for c in cases}) == len(cases)
    assert {c.kind for c in cases} == set(KINDS)
    for case in [*cases, LATENCY_CASE]:
        grammar_from_schema(parse_json_schema(json.dumps(case.schema)))  # what the server will do with it
        assert set(case.expect) <= set(case.schema["required"])


def test_a_case_with_an_expected_key_outside_its_schema_is_refused(tmp_path: Path) -> None:
    bad = {**TOOL.__dict__, "expect": {"call": True, "amount": 5}}
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="expected keys"):
        load_cases(path)


def test_the_prompt_shows_the_schema_and_asks_the_question() -> None:
    system, user = judge_messages(TOOL)
    assert system.role == "system" and json.dumps(TOOL.schema) in system.content
    assert user.role == "user" and user.content.startswith(TOOL.material) and user.content.endswith(TOOL.question)
    assert judge_messages(TOOL, "Call 12. ")[0].content.startswith("Call 12. You are")


@pytest.mark.parametrize(
    ("text", "data", "strict"),
    [
        ('{"call": true}', {"call": True}, True),
        (' \n{"call": true}\n', {"call": True}, True),
        ('```json\n{"call": true}\n```', {"call": True}, False),
        ('Sure! ```{"call": false}``` Hope that helps.', {"call": False}, False),
        ('{"call": tr', None, False),
        ("[1, 2]", None, False),
        ("", None, False),
    ],
)
def test_parse_reply(text: str, data: dict[str, bool] | None, strict: bool) -> None:
    assert parse_reply(text) == (data, strict)


def test_value_matches() -> None:
    assert value_matches(True, True) and not value_matches(1, True) and not value_matches("true", True)
    assert value_matches(None, None) and not value_matches("", None)
    assert value_matches(3, 3.0) and not value_matches(True, 1)
    assert value_matches("Margaret Okafor.", "margaret  okafor") and not value_matches("Margaret", "Margaret Okafor")
    assert value_matches("4471-22", "4471-22") and not value_matches("447122", "4471-22")
    assert value_matches("", "") and not value_matches(None, "")


def test_score_reply() -> None:
    right = score_reply('{"call": true, "account_id": "4471-22"}', TOOL)
    assert (right.valid, right.parsed, right.correct) == (True, True, True)
    fenced = score_reply('```json\n{"call": true, "account_id": "4471-22"}\n```', TOOL)
    assert (fenced.valid, fenced.correct) == (False, True)  # right, but not the JSON alone
    wrong_type = score_reply('{"call": "yes", "account_id": "4471-22"}', TOOL)
    assert (wrong_type.valid, wrong_type.correct) == (False, False)  # the schema wants a boolean
    missing = score_reply('{"call": true}', TOOL)
    assert (missing.valid, missing.correct) == (False, False)  # account_id is required and expected
    prose = score_reply("Yes, call it.", TOOL)
    assert (prose.valid, prose.parsed, prose.correct) == (False, False, False)


def test_percentile() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0], 0.9) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 1.0) == 4.0


def row(model: str, mode: str, kind: str, correct: bool, latency: float, valid: bool = True, yes: bool = True) -> Row:
    return Row(model, mode, "c", kind, "{}", valid, correct, latency, latency / 2, 300, 20, yes)


def test_make_row_scores_the_reply_and_notes_the_expected_decision() -> None:
    r = make_row("m", "grammar", TOOL, '{"call": true, "account_id": "4471-22"}', 1.5, 0.5, 300, 12)
    assert (r.case, r.kind, r.valid, r.correct, r.decision) == ("t", "tool", True, True, True)
    no = Case(**{**TOOL.__dict__, "expect": {"call": False, "account_id": ""}})
    assert no.decision is False and make_row("m", "free", no, "yes", 1.0, 1.0, 1, 1).correct is False
    assert Case(**{**TOOL.__dict__, "expect": {"account_id": "x"}}).decision is None


def test_summary_and_table() -> None:
    rows = [
        row("m1", "grammar", "tool", True, 1.0),
        row("m1", "grammar", "policy", False, 3.0, yes=False),
        row("m1", "free", "tool", True, 2.0, valid=False),
        row("m2", "grammar", "tool", False, 0.5),
    ]
    summary = summarise(rows)
    assert [(s["model"], s["mode"]) for s in summary] == [("m1", "grammar"), ("m1", "free"), ("m2", "grammar")]
    first = summary[0]
    assert first["n"] == 2 and first["valid"] == 1.0 and first["accuracy"] == 0.5
    assert first["by_kind"] == {"policy": 0.0, "tool": 1.0} and first["p50_s"] == 2.0
    assert (first["on_yes"], first["on_no"]) == (1.0, 0.0) and summary[2]["on_no"] is None
    assert summary[1]["valid"] == 0.0 and summary[1]["by_kind"] == {"tool": 1.0}
    text = table(summary)
    assert text.splitlines()[0].startswith("| model | mode | cases | valid JSON | accuracy | policy | tool | on yes")
    assert "| m1 | grammar | 2 | 100% | 50% | 0% | 100% | 100% / 0% | 2.00 / 2.80 s | 300 / 20 |" in text
    assert "| m2 | grammar | 1 | 100% | 0% | – | 0% | 0% / – |" in text


def test_latency_table() -> None:
    run = {"total_s": 1.0, "first_s": 0.4, "prompt": 300, "cached": 0, "generated": 31}
    text = latency_table(
        {"runs": {"grammar, prompt new": [run, run]}, "compile": {"convert_ms": 0.2, "parse_ms": 0.01}}
    )
    assert "| grammar, prompt new | 2 | 300 (0) | 31 | 1000 ms | 400 ms | 20.0 |" in text
    assert "0.20 ms median" in text


def test_latency_plan_keeps_new_prompts_new_and_cached_ones_identical() -> None:
    plan = latency_plan(2)
    by_setting: dict[str, list[tuple[object, str]]] = {}
    for name, messages, schema in plan:
        by_setting.setdefault(name, []).append((messages, schema))
    assert [len(v) for v in by_setting.values()] == [1, 2, 2, 3, 3, 2, 2]
    new = [m for m, _ in by_setting["free, prompt new"] + by_setting["grammar, prompt new"]]
    assert len({m[0].content for m in new}) == 4  # each system prompt starts differently: nothing cached
    cached = {m for k, v in by_setting.items() if "cached" in k for m, _ in v}
    assert len(cached) == 1  # one prompt, evaluated once
    assert all(s == "" for _, s in by_setting["free, prompt cached"])
    cold = [s for _, s in by_setting["grammar cache cold, prompt cached"]]
    warm = {s for _, s in by_setting["grammar cache warm, prompt cached"]}
    assert len(set(cold)) == 2 and warm == {json.dumps(LATENCY_CASE.schema)} and warm.isdisjoint(cold)


def test_drop_first_leaves_the_runs_that_found_the_prompt_cached() -> None:
    runs = {"warm-up": [{}], "free, prompt cached": [{"a": 1}, {"a": 2}], "free, prompt new": [{"a": 3}]}
    assert drop_first(runs) == {"free, prompt cached": [{"a": 2}], "free, prompt new": [{"a": 3}]}
