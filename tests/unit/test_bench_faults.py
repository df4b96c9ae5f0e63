"""The fault benchmark's bookkeeping (perf/bench_faults.py): kill moments, the turn hit, turns lost, the table."""

from __future__ import annotations

from typing import Any

import pytest

from perf.bench_faults import Run, hit_turn, kill_time, lost_against, table

LABEL: dict[str, Any] = {
    "file": "dev/x.wav",
    "duration": 30.0,
    "turns": [
        {"start": 1.0, "end": 4.0, "kind": "turn"},
        {"start": 10.0, "end": 14.0, "kind": "turn"},
        {"start": 20.0, "end": 22.0, "kind": "turn"},
    ],
}


def test_each_fault_is_timed_while_its_model_is_at_work() -> None:
    assert kill_time("llm", LABEL, 0.5) == 4.5  # the first reply is being generated
    assert kill_time("tts", LABEL, 0.5) == pytest.approx(4.9)  # ... and spoken
    assert kill_time("asr", LABEL, 0.5) == 11.5  # the second turn is being transcribed
    with pytest.raises(ValueError, match="unknown fault"):
        kill_time("vad", LABEL, 0.5)


def test_the_turn_hit_is_the_last_one_begun() -> None:
    assert hit_turn(LABEL, 4.5) == 0
    assert hit_turn(LABEL, 11.5) == 1
    assert hit_turn(LABEL, 0.2) == 0


def test_turns_lost_count_only_what_the_baseline_answered() -> None:
    baseline = Run("none", "x", answered=[True, False, True])
    assert lost_against(Run("llm", "x", answered=[False, False, True]), baseline) == 1
    assert lost_against(Run("llm", "x", answered=[True, True, True]), baseline) == 0
    assert lost_against(Run("asr", "x", answered=[False, False, False]), baseline) == 2


def test_the_table_says_what_happened() -> None:
    baseline = Run("none", "x", answered=[True, True, True], latency_ms=[900, 800, 700], ended=True)
    healed = Run(
        "llm",
        "x",
        killed_at_s=4.5,
        recovery_s=1.25,
        recovered_by="reload",
        answered=[False, True, True],
        latency_ms=[None, 850, 720],
        hit_turn=0,
        errors=["model_unavailable"],
        ended=True,
        lost=1,
    )
    lost = Run("tts", "x", killed_at_s=4.9, recovery_s=None, answered=[False, False, False], lost=3, hit_turn=0)
    rows = table([baseline, healed, lost]).splitlines()
    assert len(rows) == 5
    assert "| llm | 4.5 | 1.25 | reload | 2/3 | 1 | turn 1: 900 → missed | model_unavailable x1 | yes |" in rows
    assert "not recovered" in rows[4] and "| no |" in rows[4]
