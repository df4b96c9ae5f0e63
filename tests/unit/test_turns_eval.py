"""Scoring of floor events against turn labels (perf/turns_eval.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from perf.turns_eval import aggregate, markdown_table, quantile, score_file

# speech 0.5-1.5 | hold 1.5-2.1 | speech 2.1-3.0 | yield 3.0-5.5 | speech 5.5-6.2 | yield 6.2-8.5 (file end)
LABEL: dict[str, Any] = {
    "file": "dev/x.wav",
    "duration": 8.5,
    "pauses": [
        {"start": 1.5, "end": 2.1, "kind": "hold", "cat": "clause"},
        {"start": 3.0, "end": 5.5, "kind": "yield"},
        {"start": 6.2, "end": 8.5, "kind": "yield"},
    ],
}


def ev(type_: str, t: float, compute_ms: float = 0.0) -> dict[str, Any]:
    return {"type": type_, "t": t, "compute_ms": compute_ms}


def test_perfect_system_latency_includes_compute() -> None:
    s = score_file(LABEL, [ev("eot_commit", 3.5, 20.0), ev("eot_commit", 6.6, 0.0)])
    assert s.n_yield == 2 and s.n_hold == 1
    assert s.latencies_ms == pytest.approx([520.0, 400.0])
    assert s.interruptions == 0 and s.spurious == 0


def test_first_commit_counts_and_extra_commits_are_duplicates() -> None:
    s = score_file(LABEL, [ev("eot_commit", 4.0), ev("eot_commit", 3.2)])  # order of arrival must not matter
    assert s.latencies_ms == pytest.approx([200.0])
    assert s.duplicate_commits == 1
    assert s.spurious == 0


def test_commit_slightly_before_end_of_speech_is_negative_latency() -> None:
    s = score_file(LABEL, [ev("eot_commit", 2.8)])
    assert s.latencies_ms == pytest.approx([-200.0])


def test_commit_too_early_is_spurious_not_detection() -> None:
    s = score_file(LABEL, [ev("eot_commit", 2.5)])  # 0.5 s before end of speech: inside speech
    assert s.latencies_ms == []
    assert s.spurious == 1 and s.interruptions == 0


def test_commit_in_hold_pause_is_interruption() -> None:
    s = score_file(LABEL, [ev("eot_commit", 1.9), ev("eot_commit", 3.3)])
    assert s.interruptions == 1 and s.holds_interrupted == 1
    assert s.interrupted_cats["clause"] == 1
    assert s.latencies_ms == pytest.approx([300.0])


def test_compute_time_can_push_a_commit_out_of_the_hold_pause() -> None:
    # decided at 1.9 s on audio clock but took 300 ms: effective 2.2 s, after the user resumed -> spurious
    s = score_file(LABEL, [ev("eot_commit", 1.9, 300.0)])
    assert s.interruptions == 0 and s.spurious == 1


def test_commit_after_yield_window_is_missed() -> None:
    s = score_file(LABEL, [ev("eot_commit", 5.45, 100.0)])  # effective 5.55 > pause end 5.5
    assert s.latencies_ms == [] and s.spurious == 1


def test_tentatives_and_cancels() -> None:
    events = [ev("eot_tentative", 1.7), ev("eot_tentative", 1.8), ev("eot_cancel", 2.15), ev("eot_tentative", 3.2)]
    s = score_file(LABEL, events)
    assert s.tentatives_in_holds == 2 and s.holds_with_tentative == 1 and s.cancels == 1


def test_bad_pause_kind_rejected() -> None:
    with pytest.raises(ValueError):
        score_file({"pauses": [{"start": 0.0, "end": 1.0, "kind": "gap"}]}, [])


def test_quantile_matches_numpy_linear() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert quantile([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0], 0.9) == pytest.approx(91.0)
    assert math.isnan(quantile([], 0.5))


def test_aggregate_over_files() -> None:
    a = score_file(LABEL, [ev("eot_commit", 3.5), ev("eot_commit", 1.8)])
    b = score_file(LABEL, [ev("eot_commit", 3.3), ev("eot_commit", 6.5)])
    agg = aggregate([a, b])
    assert agg["n_yield"] == 4 and agg["n_hold"] == 2 and agg["detected"] == 3
    assert agg["recall_pct"] == pytest.approx(75.0)
    assert agg["latency_median_ms"] == pytest.approx(300.0)
    assert agg["interruptions"] == 1 and agg["holds_interrupted_pct"] == pytest.approx(50.0)
    table = markdown_table({"sys": agg})
    assert table.splitlines()[2].startswith("| sys | 4 | 2 | 75.0 | 300 |")


def test_committed_labels_are_consistent() -> None:
    """Every committed label file: pauses tile the gaps between segments; last pause is a yield to file end."""
    root = Path(__file__).resolve().parents[2] / "perf" / "data" / "turns"
    files = sorted(root.glob("*/labels.jsonl"))
    assert files, f"no labels.jsonl under {root} (they are committed: perf/data/turns/*/labels.jsonl)"
    for f in files:
        for line in f.read_text().splitlines():
            lab = json.loads(line)
            segs, pauses = lab["segments"], lab["pauses"]
            assert len(pauses) == len(segs)
            for seg, p in zip(segs, pauses, strict=True):
                assert p["start"] == seg["end"]
            for p, nxt in zip(pauses, segs[1:], strict=False):
                assert p["end"] == nxt["start"]
            assert pauses[-1]["kind"] == "yield" and pauses[-1]["end"] == lab["duration"]
            assert all(p["end"] - p["start"] >= 2.0 for p in pauses if p["kind"] == "yield")
            assert all(0.25 <= p["end"] - p["start"] <= 1.8 + 1e-6 for p in pauses if p["kind"] == "hold")
            assert sum(p["kind"] == "yield" for p in pauses) == len(lab["turns"])
