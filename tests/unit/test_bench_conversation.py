"""Scoring of `duet talk` outputs (perf/bench_conversation.py) and the consistency of the conversation set."""

from __future__ import annotations

import itertools
import json
import math
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from perf.bench_conversation import (
    DATA,
    SR,
    Span,
    aggregate,
    failed_file,
    main,
    markdown_table,
    read_events,
    read_reply,
    score_file,
    talk_command,
    talk_spans,
)

# user: turn 1.0-3.0 (hold 1.8-2.3) | turn 10.0-12.0 | interruption 14.5-16.0 | turn 24.0-25.0 | end 32.0
LABEL: dict[str, Any] = {
    "file": "dev/x.wav",
    "duration": 32.0,
    "turns": [
        {"start": 1.0, "end": 3.0, "text": "a", "kind": "turn"},
        {"start": 10.0, "end": 12.0, "text": "b", "kind": "turn"},
        {"start": 14.5, "end": 16.0, "text": "sorry, actually", "kind": "interruption"},
        {"start": 24.0, "end": 25.0, "text": "c", "kind": "turn"},
    ],
    "backchannels": [{"start": 5.5, "end": 5.9, "text": "Mm-hm"}],
    "coughs": [{"start": 26.8, "end": 27.0}],
}
SPLIT = {"floor_ms": 120.0, "asr_final_ms": 80.0, "llm_first_token_ms": 300.0, "tts_first_chunk_ms": 90.0}


def reply_with(*spans: tuple[float, float], duration: float = 32.0) -> np.ndarray[Any, np.dtype[np.int16]]:
    """int16 reply track with a 200 Hz tone (with 20 ms word gaps every 0.5 s) inside each span."""
    x = np.zeros(round(duration * SR), np.int16)
    for a, b in spans:
        i, j = round(a * SR), round(b * SR)
        t = np.arange(j - i) / SR
        tone = 8000 * np.sin(2 * np.pi * 200 * t)
        tone[(t % 0.5) > 0.48] = 0.0  # short pauses between "words" must not split a span
        tone[0] = 4000  # first and last samples audible: span edges are sample-exact
        tone[-1] = 4000
        x[i:j] = tone.astype(np.int16)
    return x


def start(t: float, rid: str, spec: bool = True) -> dict[str, Any]:
    return {"type": "replica_speaking_start", "t": t, "reply_id": rid, "from_speculation": spec, "latency": SPLIT}


def stop(t: float, rid: str, interrupted: bool) -> dict[str, Any]:
    return {"type": "replica_speaking_stop", "t": t, "reply_id": rid, "interrupted": interrupted, "spoken_text": ""}


GOOD_REPLY = reply_with((3.8, 7.0), (12.6, 15.0), (16.9, 20.0), (25.7, 29.0))
GOOD_EVENTS = [
    start(3.8, "r1"),
    stop(7.0, "r1", False),
    start(12.6, "r2", spec=False),
    stop(14.9, "r2", True),
    start(16.9, "r3"),
    stop(20.0, "r3", False),
    start(25.7, "r4"),
    stop(29.0, "r4", False),
    {"type": "reply_cancelled", "t": 2.0, "reply_id": "s1", "reason": "eot_cancel", "tokens": 12},
    {"type": "reply_cancelled", "t": 11.5, "reply_id": "s2", "reason": "transcript_changed", "tokens": 8},
]


def test_talk_spans_merge_word_gaps_and_keep_exact_edges() -> None:
    spans = talk_spans(reply_with((1.0, 2.0), (2.1, 3.0), (4.0, 4.5), duration=6.0))
    assert spans == [Span(1.0, 3.0), Span(4.0, 4.5)]  # 100 ms silence merged, 1 s silence splits
    assert talk_spans(np.zeros(SR, np.int16)) == []
    quiet = np.full(SR, 50, np.int16)  # below the threshold (≈ -50 dBFS): not audible
    assert talk_spans(quiet) == []


def test_well_behaved_replica() -> None:
    s = score_file(LABEL, GOOD_REPLY, GOOD_EVENTS)
    assert [t.latency_ms for t in s.turns] == pytest.approx([800.0, 600.0, 900.0, 700.0])
    assert not any(t.early for t in s.turns)
    assert [b.stop_ms for b in s.barge_ins] == pytest.approx([500.0])  # 14.5 -> 15.0
    assert s.barge_ins[0].stop_event
    agg = aggregate([s])
    assert agg["user_turns"] == 4 and agg["missed"] == 0 and agg["duplicate_replies"] == 0
    assert agg["latency_median_ms"] == pytest.approx(750.0)
    assert agg["split_median_ms"] == pytest.approx(SPLIT)
    assert agg["from_speculation_pct"] == pytest.approx(75.0)
    assert agg["wasted_tokens_per_turn"] == pytest.approx(5.0)  # (12 + 8) / 4 user turns
    assert agg["blips_during_talk"] == 2 and agg["false_stops"] == 0 and agg["spurious_stops"] == 0
    # interruption 14.5-16.0: talk until 15.0 is inside the 300 ms grace only up to 14.8 -> 0.2 s overlap
    assert agg["overlap_s"] == pytest.approx(0.2) and agg["turns_with_overlap"] == 1
    assert agg["never_stopped"] == 0 and agg["interruptions_during_talk"] == 1


def test_missing_reply_is_a_miss_and_late_reply_after_next_turn_too() -> None:
    reply = reply_with((3.8, 7.0), (24.5, 26.0))  # nothing for turn 2 or the interruption; turn 4 gets one early
    s = score_file(LABEL, reply, [start(3.8, "r1"), start(24.5, "r4")])
    assert s.turns[1].latency_ms is None and s.turns[2].latency_ms is None
    agg = aggregate([s])
    assert agg["missed"] == 2 and agg["replied"] == 2
    assert agg["interruptions_during_talk"] == 0  # the replica was quiet when the user cut in
    assert s.turns[3].early and s.turns[3].latency_ms == pytest.approx(-500.0)
    assert s.turns[3].overlap_s == pytest.approx(0.5)  # 24.5-25.0


def test_previous_reply_running_on_is_not_the_answer() -> None:
    # the reply to turn 2 runs through the whole interruption: never stopped; the interruption's own reply
    # starts after a 0.5 s silence at 17.5
    reply = reply_with((3.8, 7.0), (12.6, 17.0), (17.5, 20.0), (25.7, 29.0))
    s = score_file(LABEL, reply, [start(3.8, "a"), start(12.6, "b"), start(17.5, "c"), start(25.7, "d")])
    assert s.turns[2].latency_ms == pytest.approx(1500.0) and not s.turns[2].early
    assert s.barge_ins[0].stop_ms is None and not s.barge_ins[0].stop_event
    agg = aggregate([s])
    assert agg["never_stopped"] == 1 and math.isnan(agg["bargein_stop_median_ms"])
    assert agg["overlap_s"] == pytest.approx(1.2)  # 14.8-16.0


def test_gap_in_a_reply_is_not_a_stop_nor_an_early_answer() -> None:
    # TTS fell behind: the reply to turn 2 goes silent 15.0-15.6 and runs on to 16.5, past the interruption's end
    reply = reply_with((3.8, 7.0), (12.6, 15.0), (15.6, 16.5), (16.9, 20.0), (25.7, 29.0))
    s = score_file(LABEL, reply, GOOD_EVENTS)
    assert s.barge_ins[0].stop_ms is None  # sound until 16.5 >= 16.0: never stopped
    assert not s.turns[2].early and s.turns[2].latency_ms == pytest.approx(900.0)
    no_events = score_file(LABEL, reply, [])  # without events the next reply is the first span after the turn
    assert no_events.barge_ins[0].stop_ms is None


def test_barge_in_stop_is_the_last_sound_before_the_next_reply() -> None:
    reply = reply_with((3.8, 7.0), (12.6, 15.0), (15.5, 15.8), (16.9, 20.0), (25.7, 29.0))  # a last word at 15.5
    assert score_file(LABEL, reply, GOOD_EVENTS).barge_ins[0].stop_ms == pytest.approx(1300.0)
    assert score_file(LABEL, reply, []).barge_ins[0].stop_ms == pytest.approx(1300.0)


def test_false_stop_pause_and_spurious_stop() -> None:
    reply = reply_with((3.8, 6.0), (12.6, 15.0), (16.9, 20.0), (25.7, 29.0))
    events = [
        *GOOD_EVENTS,
        stop(6.0, "r1", True),  # 0.5 s after the backchannel at 5.5: a false stop
        {"type": "replica_paused", "t": 27.0, "reply_id": "r4"},  # the cough paused it ...
        {"type": "replica_resumed", "t": 27.4, "reply_id": "r4"},  # ... and it went on: a pause, not a stop
        stop(19.0, "r3", True),  # nothing the user did explains this one (e.g. its own echo)
    ]
    agg = aggregate([score_file(LABEL, reply, events)])
    assert agg["false_stops"] == 1 and agg["false_stops_backchannel"] == 1 and agg["false_stops_cough"] == 0
    assert agg["pauses"] == 1
    assert agg["spurious_stops"] == 1


def test_blip_while_replica_quiet_is_not_scored() -> None:
    reply = reply_with((3.8, 5.0), (12.6, 15.0), (16.9, 20.0))  # quiet at the backchannel (5.5) and cough (26.8)
    agg = aggregate([score_file(LABEL, reply, GOOD_EVENTS)])
    assert agg["blips_during_talk"] == 0 and agg["false_stops"] == 0


def test_two_starts_for_one_turn_is_a_duplicate_reply() -> None:
    events = [*GOOD_EVENTS, start(5.0, "r1b")]
    agg = aggregate([score_file(LABEL, GOOD_REPLY, events)])
    assert agg["duplicate_replies"] == 1


def test_stalls_inside_replies_are_summed() -> None:
    stalled = {**stop(7.0, "r1", False), "stall_ms": 240.0}
    events = [*GOOD_EVENTS, stalled, {**stop(20.0, "r3", False), "stall_ms": 0.0}]
    agg = aggregate([score_file(LABEL, GOOD_REPLY, events)])
    assert agg["stall_s"] == pytest.approx(0.24) and agg["stalled_replies"] == 1
    assert aggregate([score_file(LABEL, GOOD_REPLY, GOOD_EVENTS)])["stall_s"] == 0.0  # older runs: no field


def test_start_event_far_from_the_audio_is_not_matched() -> None:
    events = [start(4.5, "r1"), start(12.6, "r2"), start(16.9, "r3"), start(25.7, "r4")]  # r1 0.7 s late
    s = score_file(LABEL, GOOD_REPLY, events)
    assert s.turns[0].latency_ms == pytest.approx(800.0)  # the audio decides the latency
    assert s.turns[0].from_speculation is None and s.turns[0].split_ms == {}
    assert aggregate([s])["matched_start_events"] == 3


def test_aggregate_of_a_silent_replica_and_table() -> None:
    agg = aggregate([score_file(LABEL, np.zeros(32 * SR, np.int16), [])])
    assert agg["missed"] == 4 and math.isnan(agg["latency_median_ms"]) and math.isnan(agg["from_speculation_pct"])
    table = markdown_table({"duet": aggregate([score_file(LABEL, GOOD_REPLY, GOOD_EVENTS)]), "silent": agg})
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| duet | 0/1 | 4 | 0 | 0 | 750 |")
    assert "| silent | 0/1 | 4 | 4 |" in lines[3] and "–" in lines[3]


def test_a_failed_run_counts_against_the_system() -> None:
    good = score_file(LABEL, GOOD_REPLY, GOOD_EVENTS)
    agg = aggregate([good, failed_file(LABEL, "duet talk failed (1): model_unavailable")])
    assert agg["files"] == 2 and agg["failed_runs"] == 1
    assert agg["user_turns"] == 8 and agg["replied"] == 4 and agg["missed"] == 4  # its turns are misses
    assert agg["latency_median_ms"] == pytest.approx(750.0)  # latencies are of the answered turns
    assert agg["interruptions"] == 2
    assert markdown_table({"duet": agg}).splitlines()[2].startswith("| duet | 1/2 | 8 | 4 |")


def test_runs_left_without_outputs_are_failed_runs_not_dropped(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    code = main(
        ["--split", "dev", "--systems", "duet", "--limit", "2", "--reuse", "--runs", str(tmp_path), "--out", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    duet = result["systems"]["duet"]
    assert duet["files"] == 2 and duet["failed_runs"] == 2 and duet["replied"] == 0
    assert duet["missed"] == duet["user_turns"] > 0
    assert len(result["notes"]) == 2 and all("failed run" in n for n in result["notes"])


def test_bad_turn_kind_rejected() -> None:
    bad = {**LABEL, "turns": [{"start": 1.0, "end": 2.0, "kind": "yield"}]}
    with pytest.raises(ValueError, match="unknown turn kind"):
        score_file(bad, GOOD_REPLY, [])


def test_reading_talk_outputs(tmp_path: Path) -> None:
    with wave.open(str(tmp_path / "reply.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(GOOD_REPLY.astype("<i2").tobytes())
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in GOOD_EVENTS) + "\nnot json\n")
    s = score_file(LABEL, read_reply(tmp_path / "reply.wav"), read_events(tmp_path / "events.jsonl"))
    assert [t.latency_ms for t in s.turns] == pytest.approx([800.0, 600.0, 900.0, 700.0])
    cmd = talk_command("duet", "127.0.0.1:1", Path("a.wav"), tmp_path, ["speculation=false"], echo=True)
    assert cmd[1:3] == ["talk", "--audio"] and cmd[8:10] == ["--option", "speculation=false"]
    assert cmd[-4:] == ["--echo-gain", "0.3", "--echo-delay-ms", "120"]


# ----------------------------------------------------------------------------------------------- the data set
def _labels(split: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((DATA / split).glob("*.json"))]


@pytest.mark.parametrize("split", ["dev", "check"])
def test_conversation_set_follows_its_timing_rules(split: str) -> None:
    labels = _labels(split)
    assert len(labels) >= 5
    for lab in labels:
        wav = DATA / lab["file"]
        with wave.open(str(wav)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SR, 1, 2)
            assert abs(w.getnframes() - lab["duration"] * SR) <= 2  # labels are rounded to 0.1 ms
            audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32)
        assert 30.0 <= lab["duration"] <= 60.0
        turns = lab["turns"]
        assert 3 <= len(turns) <= 5 and turns[0]["kind"] == "turn"
        for prev, cur in itertools.pairwise(turns):
            gap = cur["start"] - prev["end"]
            if cur["kind"] == "interruption":
                assert 2.0 <= gap <= 3.0 and cur["end"] - cur["start"] >= 1.2
            else:
                assert 6.0 <= gap <= 9.0
        assert 6.0 <= lab["duration"] - turns[-1]["end"] <= 9.0
        for b in lab["backchannels"] + lab["coughs"]:
            after = [b["start"] - t["end"] for t in turns if t["end"] <= b["start"]]
            assert 1.8 <= after[-1] <= 3.0  # placed while the replica answers the latest turn
            limits = (0.25, 0.6) if "text" in b else (0.15, 0.3)
            assert limits[0] <= b["end"] - b["start"] <= limits[1] + 1e-3
            i, j = round(b["start"] * SR), round(b["end"] * SR)
            # the labelled sound is there: louder than the file's quietest second (noise floor) by 10 dB
            floor = min(np.sqrt(np.mean(audio[k : k + SR] ** 2)) for k in range(0, len(audio) - SR, SR // 2))
            assert np.sqrt(np.mean(audio[i:j] ** 2)) > 3.0 * floor + 1.0


def test_check_split_is_held_out() -> None:
    dev, check = _labels("dev"), _labels("check")
    assert not {lab["voice"] for lab in dev} & {lab["voice"] for lab in check}
    dev_text = {t["text"] for lab in dev for t in lab["turns"]}
    assert not dev_text & {t["text"] for lab in check for t in lab["turns"]}
    phenomena = _phenomena(dev + check)
    assert phenomena["interruption"] >= 4 and phenomena["backchannel"] >= 4 and phenomena["cough"] >= 4


def _phenomena(labels: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "interruption": sum(t["kind"] == "interruption" for lab in labels for t in lab["turns"]),
        "backchannel": sum(len(lab["backchannels"]) for lab in labels),
        "cough": sum(len(lab["coughs"]) for lab in labels),
    }


# ----------------------------------------------------------------------------------------------- session load
def test_session_load_counts_unanswered_turns_against_the_level() -> None:
    from perf.session_load import latency_summary, response_latencies, within_target

    label = {"turns": [{"start": 1.0, "end": 2.0}, {"start": 5.0, "end": 6.0}, {"start": 9.0, "end": 10.0}]}
    events = [{"type": "replica_speaking_start", "t": 2.5}, {"type": "replica_speaking_start", "t": 10.8}]
    lat = response_latencies(label, events)
    assert lat == [pytest.approx(0.5), None, pytest.approx(0.8)]  # the second turn went unanswered
    summary = latency_summary(lat)
    assert (summary["turns"], summary["replies"], summary["unanswered"]) == (3, 2, 1)
    assert summary["response_p50_s"] == pytest.approx(0.8) and math.isinf(summary["response_p95_s"])
    row = {"compute_ms_p95": 40.0, "errors": 0, "failed_sessions": 0, **summary}
    assert not within_target(row)
    answered = {**row, **latency_summary([0.5, 0.6, 0.8])}
    assert within_target(answered) and not within_target({**answered, "failed_sessions": 1})
