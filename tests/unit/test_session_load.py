"""The pure parts of the capacity benchmark (perf/session_load.py): a level's row from its sessions, the face
video's frame accounting, the server's drop counters, Triton's per-model split, and the cost model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from perf.session_load import (
    MACHINES,
    SessionLog,
    camera_frames,
    cost_per_session_hour,
    cost_rows,
    counter_delta,
    drops_by_kind,
    level_row,
    main,
    parse_pairs,
    session_options,
    triton_breakdown,
    video_accounting,
    video_summary,
    within_target,
)

LABEL = {"turns": [{"start": 1.0, "end": 2.0}, {"start": 5.0, "end": 6.0}]}


def _events(starts: list[float], *, fps: float = 0.0, skipped: int | None = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [{"type": "replica_speaking_start", "t": t} for t in starts]
    if fps:
        events.insert(0, {"type": "video_started", "t": 0.0, "fps": fps, "width": 512, "height": 512})
    if skipped is not None:
        events.append({"type": "video_stats", "t": 9.9, "frames": 1, "dropped": skipped})
    return events


# --------------------------------------------------------------------------------------------- face frames
def test_video_accounting_counts_distinct_frames_the_clock_called_for() -> None:
    # 1 s at 10 fps: frames 0..9; 3 and 7 missing, 5 sent twice, 10 and 11 beyond the session's end
    frames = [(i / 10, i) for i in (0, 1, 2, 4, 5, 5, 6, 8, 9, 10, 11)]
    assert video_accounting(frames, 10.0, 1.0) == {"expected": 10, "received": 8, "missing": 2}
    assert video_accounting([], 25.0, 2.0) == {"expected": 50, "received": 0, "missing": 50}
    assert video_accounting([(0.0, 0)], 0.0, 2.0) == {"expected": 0, "received": 0, "missing": 0}  # no video


def test_video_summary_adds_sessions_and_reports_the_rate_achieved() -> None:
    full = SessionLog(2.0, _events([], fps=10.0, skipped=0), [(i / 10, i) for i in range(20)])
    half = SessionLog(2.0, _events([], fps=10.0, skipped=4), [(i / 10, i) for i in range(0, 20, 2)])
    v = video_summary([full, half])
    assert (v["fps"], v["expected"], v["received"], v["missing"]) == (10.0, 40, 30, 10)
    assert v["fps_achieved"] == pytest.approx(7.5) and v["received_ratio"] == pytest.approx(0.75)
    assert v["renderer_skipped"] == 4
    # a session whose video never started: every frame it should have had is missing
    dead = SessionLog(2.0, [], [])
    assert video_summary([dead])["fps"] is None and video_summary([dead])["received_ratio"] is None


# ----------------------------------------------------------------------------------------- a level's row
def test_level_row_aggregates_sessions_and_counts_failures_as_unanswered() -> None:
    ok = SessionLog(
        10.0,
        [
            *_events([2.4, 6.6], fps=10.0, skipped=1),
            {"type": "eot_commit", "t": 2.0, "compute_ms": 80.0},
            {"type": "eot_commit", "t": 6.0, "compute_ms": 120.0},
            {"type": "knowledge", "t": 2.1, "query": "q", "results": [], "took_ms": 3.0},
            {"type": "perception", "t": 1.0, "modality": "visual"},
            {"type": "perception", "t": 1.0, "modality": "audio"},
        ],
        [(i / 10, i) for i in range(100)],
    )
    failed = SessionLog(10.0, [{"type": "error", "t": 0.5, "code": "x"}], [], failure="DuetError: boom")
    one_turn = {"turns": LABEL["turns"][:1]}
    row = level_row(2, 12.34, [ok, failed], [LABEL, one_turn], video=True)
    assert (row["sessions"], row["wall_s"], row["turns"], row["replies"], row["unanswered"]) == (2, 12.3, 3, 2, 1)
    assert row["response_p50_s"] == pytest.approx(0.6) and math.isinf(row["response_p95_s"])
    assert row["compute_ms_p95"] == pytest.approx(118.0)
    assert (row["errors"], row["failed_sessions"], row["failures"]) == (1, 1, ["DuetError: boom"])
    assert (row["video"]["expected"], row["video"]["received"], row["video"]["renderer_skipped"]) == (200, 100, 1)
    assert (row["knowledge_events"], row["visual_perception_events"]) == (1, 1)
    assert not within_target(row)
    assert "video" not in level_row(1, 1.0, [ok], [LABEL], video=False)


def test_within_target_needs_the_face_to_keep_up_with_video_on() -> None:
    row: dict[str, Any] = {
        "compute_ms_p95": 90.0,
        "response_p95_s": 0.8,
        "unanswered": 0,
        "failed_sessions": 0,
        "errors": 0,
    }
    assert within_target(row)  # the audio mix has no video to judge
    assert within_target({**row, "video": {"received_ratio": 0.95}})
    assert not within_target({**row, "video": {"received_ratio": 0.5}})
    assert not within_target({**row, "video": {"received_ratio": None}})
    assert not within_target({**row, "response_p95_s": 1.2})
    assert not within_target({**row, "compute_ms_p95": 300.0})


# -------------------------------------------------------------------------------------- server counters
def test_drops_come_from_the_orchestrator_metrics_per_kind_and_per_level() -> None:
    before = drops_by_kind(
        "# HELP duet_drops_total Client input dropped by a bound, by kind\n"
        "# TYPE duet_drops_total counter\n"
        'duet_drops_total{kind="video_frame"} 3.0\n'
        'duet_drops_created{kind="video_frame"} 1.7e9\n'
    )
    after = drops_by_kind(
        'duet_drops_total{kind="video_frame"} 10.0\n'
        'duet_drops_total{kind="video_frame_out"} 2.0\n'
        "duet_sessions_open 1\n"
    )
    assert before == {"video_frame": 3.0}
    assert counter_delta(before, after) == {"video_frame": 7, "video_frame_out": 2}
    assert counter_delta(after, after) == {}


def test_triton_breakdown_is_the_level_difference_per_model() -> None:
    before = {("asr", "nv_inference_request_success"): 5.0, ("asr", "nv_inference_queue_duration_us"): 1000.0}
    after = {
        ("asr", "nv_inference_request_success"): 9.0,
        ("asr", "nv_inference_queue_duration_us"): 5500.0,
        ("asr", "nv_inference_compute_infer_duration_us"): 80000.0,
        ("idle", "nv_inference_request_success"): 0.0,
    }
    assert triton_breakdown(before, after) == {"asr": {"requests": 4, "queue_ms": 4.5, "compute_ms": 80.0}}


# -------------------------------------------------------------------------------------------- cost model
def test_cost_per_session_hour_shares_the_price_and_refuses_zero_sessions() -> None:
    assert cost_per_session_hour(3.0, 4) == pytest.approx(0.75)
    assert cost_per_session_hour(0.10, 1) == pytest.approx(0.10)
    assert cost_per_session_hour(0.10, 0) is None
    with pytest.raises(ValueError, match="negative"):
        cost_per_session_hour(-1.0, 2)


def test_cost_rows_label_measured_given_and_assumed() -> None:
    cpu, gpu = MACHINES[0].name, MACHINES[1].name
    rows = {r["machine"]: r for r in cost_rows(MACHINES, {gpu: 4.0}, {cpu: 0, gpu: 40}, measured=cpu)}
    assert rows[cpu]["usd_per_session_hour"] is None and "0 sessions within target" in rows[cpu]["note"]
    assert rows[cpu]["sessions"] == "measured" and rows[cpu]["price"].startswith("assumed (")
    assert rows[gpu]["usd_per_session_hour"] == pytest.approx(0.1) and rows[gpu]["price"] == "given"
    assert rows[gpu]["sessions"] == "given"
    unknown = {r["machine"]: r for r in cost_rows(MACHINES, {}, {cpu: 2}, measured=cpu)}
    assert unknown[cpu]["usd_per_session_hour"] == pytest.approx(MACHINES[0].usd_per_hour / 2)
    assert unknown[gpu]["sessions"] == "not measured" and unknown[gpu]["usd_per_session_hour"] is None


def test_machine_and_session_options_are_checked() -> None:
    assert parse_pairs(["a=1.5"], float, ["a", "b"]) == {"a": 1.5}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_pairs(["c=1"], float, ["a"])
    with pytest.raises(ValueError):
        parse_pairs(["a=x"], float, ["a"])
    assert session_options(["video.size=256x256", "x=a=b"]) == {"video.size": "256x256", "x": "a=b"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        session_options(["novalue"])


def test_report_of_a_saved_run_says_when_no_session_is_within_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = {
        "sessions": 1, "wall_s": 31.0, "compute_ms_p95": 300.0, "turns": 3, "replies": 3, "unanswered": 0,
        "response_p50_s": 1.1, "response_p95_s": 1.4, "errors": 0, "failed_sessions": 0, "failures": [],
        "video": {"fps": 25.0, "expected": 750, "received": 600, "missing": 150, "fps_achieved": 20.0,
                  "received_ratio": 0.8, "renderer_skipped": 150},
        "knowledge_events": 3, "visual_perception_events": 40, "drops": {"video_frame": 5},
        "triton": {"asr": {"requests": 10, "queue_ms": 1.0, "compute_ms": 2.0}}, "ok": False,
    }  # fmt: skip
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps({"mix": "full", "machine": MACHINES[0].name, "levels": [row], "largest_n": 0}))
    assert (
        main(["--report", str(saved), "--price", f"{MACHINES[1].name}=2.5", "--sessions", f"{MACHINES[1].name}=10"])
        == 0
    )
    out = capsys.readouterr().out
    assert "600/750 (20.0 of 25.0 fps)" in out and "video_frame 5" in out
    assert "0 sessions within target" in out and "| 0.2500 |" in out
    header, rule = out.split("mix: full\n\n", 1)[1].splitlines()[:2]
    assert header.count("|") == rule.count("|")


# ---------------------------------------------------------------------------------------------- the camera
def test_camera_frames_are_deterministic_and_move() -> None:
    portrait = np.zeros((64, 64, 3), np.uint8)
    portrait[16:48, 16:48] = 200  # a bright square is enough to see the motion
    a = camera_frames(0.5, 10.0, portrait)
    b = camera_frames(0.5, 10.0, portrait)
    assert [t for t, _ in a] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert a == b
    assert len({jpeg for _, jpeg in a}) == len(a)
    assert all(jpeg[:2] == b"\xff\xd8" for _, jpeg in a)
