"""`duet talk --check` (and so `make demo`): what counts as a failed spoken exchange."""

from __future__ import annotations

from typing import Any

from duet.talk import session_problems


def _answered() -> list[dict[str, Any]]:
    return [
        {"type": "speech_start", "t": 0.5},
        {"type": "user_turn", "t": 2.3, "text": "Hi, I'm calling about my bill."},
        {"type": "replica_speaking_start", "t": 3.1},
        {"type": "replica_turn", "t": 5.0, "text": "Sure.", "interrupted": False},
        {"type": "user_turn", "t": 8.2, "text": "Can you check that for me?"},
        {"type": "replica_speaking_start", "t": 9.0},
        {"type": "replica_turn", "t": 9.4, "text": "Of", "interrupted": True},
    ]


def test_every_turn_answered_is_no_problem() -> None:
    assert session_problems(_answered()) == []


def test_a_model_error_is_a_problem_even_when_turns_were_answered() -> None:
    events = [*_answered(), {"type": "error", "t": 9.5, "code": "model_unavailable", "message": "model 'llm' failed"}]
    (problem,) = session_problems(events)
    assert "model_unavailable" in problem
    assert "'llm'" in problem


def test_a_user_turn_with_no_replica_speech_before_the_next_is_a_problem() -> None:
    events = [e for e in _answered() if not (e["type"] == "replica_speaking_start" and e["t"] == 3.1)]
    (problem,) = session_problems(events)
    assert "t=2.30s" in problem
    assert "got no spoken reply" in problem


def test_a_turn_the_user_went_on_from_before_the_replica_spoke_is_answered_by_the_next_reply() -> None:
    events = [e for e in _answered() if not (e["type"] == "replica_speaking_start" and e["t"] == 3.1)]
    events.insert(2, {"type": "reply_cancelled", "t": 3.0, "reply_id": 1, "reason": "user_continued"})
    assert session_problems(events) == []
    # ... but not when the reply was dropped for another reason, nor for the last turn
    events[2] = {**events[2], "reason": "context_changed"}
    assert "t=2.30s" in session_problems(events)[0]
    last = [*_answered()[:-2], {"type": "reply_cancelled", "t": 8.9, "reply_id": 2, "reason": "user_continued"}]
    assert "t=8.20s" in session_problems(last)[0]


def test_the_last_turn_unanswered_is_a_problem() -> None:
    events = _answered()[:-2]
    (problem,) = session_problems(events)
    assert "t=8.20s" in problem


def test_a_session_with_no_user_turn_is_a_problem() -> None:
    assert session_problems([{"type": "speech_start", "t": 0.5}]) == ["the session committed no user turn"]
