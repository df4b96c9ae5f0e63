"""The perception benchmark's pure scoring helpers (perf/bench_perception.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perf.bench_perception import (
    EXPECTED,
    accuracy,
    confusion,
    count_label,
    count_types,
    db_gain,
    gaze_truth,
    markdown_table,
    median,
    moved,
    perception_stats,
    pose_metrics,
    rising_end,
    scale,
)


def test_confusion_counts_pairs_and_keeps_unknown_labels() -> None:
    table = confusion([("a", "a"), ("a", "b"), ("b", "b"), ("b", "none")], ("a", "b"))
    assert table["a"] == {"a": 1, "b": 1}
    assert table["b"] == {"a": 0, "b": 1, "none": 1}
    assert confusion([], ("x",)) == {"x": {"x": 0}}


def test_accuracy() -> None:
    assert accuracy([("a", "a"), ("a", "b"), ("b", "b"), ("c", "c")]) == 0.75
    assert accuracy([]) is None


def test_median_of_nothing_is_none() -> None:
    assert median([]) is None
    assert median([3.0, 1.0, 2.0]) == 2.0


def test_pose_metrics_subtracts_the_rest_reading() -> None:
    true = [-20.0, -10.0, 0.0, 10.0, 20.0]
    measured = [t * 1.1 + 3.0 for t in true]  # 10 % over-reading and a 3 degree offset at rest
    m = pose_metrics(true, measured, rest=3.0)
    assert m["gain"] == pytest.approx(1.1)
    assert m["mae"] == pytest.approx(np.mean([2.0, 1.0, 0.0, 1.0, 2.0]))
    assert m["max_err"] == pytest.approx(2.0)
    assert m["sign_acc"] == 1.0
    flipped = pose_metrics(true, [-t for t in true], rest=0.0)
    assert flipped["sign_acc"] == 0.0 and flipped["gain"] == pytest.approx(-1.0)
    assert pose_metrics([], [], 0.0)["mae"] is None
    assert pose_metrics([0.0, 0.0], [1.0, -1.0], 0.0)["gain"] is None  # no spread in the truth: no slope


def test_gaze_truth_scores_only_the_clear_cases() -> None:
    assert gaze_truth(0.0, 0.0) == "camera"
    assert gaze_truth(0.8, 0.0) == "away" and gaze_truth(0.0, -0.8) == "away" and gaze_truth(0.4, 0.8) == "away"
    assert gaze_truth(0.4, 0.0) is None and gaze_truth(-0.4, 0.4) is None


def test_count_label_keeps_three_apart_from_four() -> None:
    assert [count_label(n) for n in range(6)] == ["0", "1", "2", "3", "4+", "4+"]


def test_moved_needs_the_right_sign_and_size_and_room() -> None:
    assert moved(0.2, +1) is True
    assert moved(-0.2, +1) is False
    assert moved(0.01, +1) is False  # too small to call a movement
    assert moved(-0.06, -1, reference=0.5) is True
    assert moved(None, +1) is None and moved(0.3, 0) is None
    # a score already at the floor (or ceiling) cannot move further that way: not scored
    assert moved(-0.01, -1, reference=0.02) is None
    assert moved(0.01, +1, reference=0.98) is None
    assert all(sign in (-1, 1) for row in EXPECTED.values() for sign in row.values())


def test_perception_stats_takes_the_last_stats_event() -> None:
    lines = [
        "not json",
        json.dumps({"type": "perception", "t": 0.2}),
        json.dumps({"type": "perception_stats", "audio_ms_p95": 1.0}),
        "{broken",
        json.dumps({"type": "perception_stats", "audio_ms_p95": 2.0, "frames": 3}),
    ]
    stats = perception_stats(lines)
    assert stats is not None and stats["audio_ms_p95"] == 2.0 and stats["frames"] == 3
    assert perception_stats(lines[:2]) is None
    assert count_types(lines) == {"perception": 1, "perception_stats": 2}


def test_gain_and_scale() -> None:
    assert db_gain(-12.0) == pytest.approx(0.2512, abs=1e-4)
    assert db_gain(20.0) == pytest.approx(10.0)
    pcm = np.array([1000, -1000, 32767], np.int16)
    assert scale(pcm, 0.5).tolist() == [500, -500, 16383]
    assert scale(pcm, 4.0).tolist() == [4000, -4000, 32767]  # clipped, not wrapped


def test_rising_end_raises_the_pitch_of_the_tail_only() -> None:
    sr, f0 = 16_000, 100.0
    t = np.arange(sr) / sr  # 1 s of a 100 Hz tone
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * f0 * t)).astype(np.int16)
    out = rising_end(pcm, end=pcm.size, semitones=12.0, window_s=0.4, sr=sr)
    head = int(0.6 * sr)
    assert np.array_equal(out[:head], pcm[:head])
    tail = out[head:].astype(np.float64)
    assert tail.size < int(0.4 * sr)  # played faster, so shorter
    crossings = np.flatnonzero(np.diff(np.signbit(tail)))
    periods = np.diff(crossings[::2])  # samples per cycle, along the glide
    assert periods[-1] < 0.6 * periods[0]  # toward an octave up: the period near halves
    assert np.array_equal(rising_end(pcm, end=0), pcm)  # nothing before the end: unchanged


def test_markdown_table_shape() -> None:
    text = markdown_table(["a", "b"], [[1, 2], ["x", "y"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |", "| x | y |"]
