"""The conversation layer's checks on what a small judge says (`orchestrator/control/intel.py`): a value the
user never said does not count, and neither does a tool call with arguments nobody gave."""

from __future__ import annotations

from orchestrator.control.intel import _arguments_said, _grounded

DAY = {"type": "object", "properties": {"day": {"type": "string"}, "unit": {"enum": ["c", "f"]}}}


def test_an_extracted_value_counts_only_when_the_user_said_it() -> None:
    said = "Hi, my name is Maria Lopez and my account is 4471."
    answer = {"variables": {"full_name": "Maria Lopez", "clinic": "Riverside Clinic", "account": 4471,
                            "nothing": None, "flag": True}, "completed": True}  # fmt: skip
    assert _grounded(answer, said)["variables"] == {
        "full_name": "Maria Lopez", "clinic": None, "account": 4471, "nothing": None, "flag": None,
    }  # fmt: skip
    assert _grounded(answer, said)["completed"] is True  # (the tracker then finds the missing values)
    assert _grounded({"completed": False}, said) == {"completed": False}


def test_a_tool_call_needs_the_arguments_the_user_gave() -> None:
    assert _arguments_said({"day": "Tuesday"}, DAY, "please book me for tuesday")
    assert not _arguments_said({"day": "Monday"}, DAY, "what is the fee if I miss my appointment?")
    assert _arguments_said({"day": "next Tuesday morning"}, DAY, "can I come next Tuesday")  # most of its words
    assert _arguments_said({"unit": "c"}, DAY, "what's the weather")  # an enum is the tool's word, not theirs
    assert _arguments_said({}, DAY, "anything")
