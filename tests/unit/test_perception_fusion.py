"""Perception fusion (events, utterance summaries, the LLM note) and perception tools, on virtual time."""

from __future__ import annotations

import re
from typing import Any

import pytest

from orchestrator.errors import DuetError
from orchestrator.events import HeadPose, PerceptionEvent, PerceptionToolCall
from orchestrator.perception.fusion import (
    EMOTIONS,
    BadPerceptionInput,
    FaceObservation,
    Fuser,
    PerceptionSnapshot,
    VoiceObservation,
    system_note,
)
from orchestrator.perception.tools import (
    BadPerceptionCondition,
    BadPerceptionTool,
    PerceptionTools,
    UnsupportedPerceptionCondition,
    parse_condition,
    parse_tools,
)

NEUTRAL = {"neutral": 0.85, "happiness": 0.05, "sadness": 0.05, "surprise": 0.05}
HAPPY = {"neutral": 0.15, "happiness": 0.8, "surprise": 0.05}
SLIGHTLY_HAPPY = {"neutral": 0.5, "happiness": 0.45, "surprise": 0.05}
SAD = {"neutral": 0.2, "sadness": 0.7, "fear": 0.1}
FPS = 20
DT = 1.0 / FPS


def face(t: float, faces: int = 1, **kw: Any) -> FaceObservation:
    base: dict[str, Any] = {"emotion": NEUTRAL, "yaw": 2.0, "pitch": -3.0, "roll": 1.0, "gaze": "camera"}
    base.update(kw)
    if faces == 0:
        base = {}
    return FaceObservation(t=t, faces=faces, **base)


def run(fuser: Fuser, t0: float, t1: float, **kw: Any) -> list[PerceptionEvent]:
    """Feed frames at FPS over [t0, t1); returns every event emitted."""
    events: list[PerceptionEvent] = []
    n = round((t1 - t0) * FPS)
    for i in range(n):
        events += fuser.observe_face(face(round(t0 + i * DT, 6), **kw))
    return events


def perception(events: list[PerceptionEvent]) -> list[PerceptionEvent]:
    return [e for e in events if e.type == "perception"]


def one_sentence(text: str) -> bool:
    return text[0].isupper() and text.endswith(".") and text.count(".") == 1 and "  " not in text


CALM_FACE = "The user is in view, is looking at the camera and has a neutral expression."


def arrived(fuser: Fuser) -> list[PerceptionEvent]:
    """A calm user in view for 2 s: exactly one event, the visual baseline."""
    events = run(fuser, 0.0, 2.0)
    assert [e.text for e in events] == [CALM_FACE]
    return events


# ---- events ---------------------------------------------------------------------------------------------


def test_steady_state_emits_nothing_after_arrival() -> None:
    fuser = Fuser()
    arrived(fuser)
    assert run(fuser, 2.0, 30.0) == []  # 560 frames of the same calm face


def test_event_format() -> None:
    fuser = Fuser()
    ev = arrived(fuser)[0]
    assert ev.type == "perception" and ev.modality == "visual" and ev.faces == 1
    assert ev.gaze == "camera" and ev.voice is None
    assert set(ev.emotion) == set(EMOTIONS) and abs(sum(ev.emotion.values()) - 1.0) < 0.01
    assert ev.head_pose == HeadPose(yaw=2.0, pitch=-3.0, roll=1.0)
    # The face count is confirmed at 0.2 s; the baseline waits for the expression's 0.6 s dwell.
    assert ev.t == pytest.approx(0.6) and ev.latency_ms == 0.0
    assert ev.baseline == ("visual",) and ev.expression == "neutral"


def test_latency_from_newest_input_arrival_to_emission() -> None:
    fuser = Fuser()
    events: list[PerceptionEvent] = []
    for i in range(20):
        t = i * DT
        # Frames reach the orchestrator 40 ms after capture; the event is emitted 15 ms after that.
        obs = FaceObservation(t=t, faces=1, emotion=NEUTRAL, gaze="camera", arrival=100.0 + t + 0.04)
        events += fuser.observe_face(obs, now=100.0 + t + 0.055)
    assert len(events) == 1 and events[0].latency_ms == pytest.approx(15.0)


def test_presence_changes_emit_at_once_even_inside_the_rate_limit() -> None:
    fuser = Fuser()
    arrived(fuser)
    second = run(fuser, 2.0, 2.5, faces=2)
    assert [e.text for e in second] == ["A second person has appeared."]
    assert second[0].t - 2.0 <= 0.25 and second[0].faces == 2
    # 0.3 s later (well inside the 1 s rate limit) the second person leaves: reported at once too.
    back_to_one = run(fuser, 2.5, 3.0)
    assert [e.text for e in back_to_one] == ["The other person has left and only the user is in view."]
    gone = run(fuser, 3.0, 3.5, faces=0)
    assert [e.text for e in gone] == ["The user has left the frame."]
    assert gone[0].faces == 0 and gone[0].emotion is None and gone[0].gaze is None
    assert gone[0].head_pose is None
    back = run(fuser, 3.5, 5.0)
    assert [e.text for e in back] == ["The user has come back into view."]


def test_one_missed_detection_is_not_a_departure() -> None:
    fuser = Fuser()
    arrived(fuser)
    events = run(fuser, 2.0, 2.1, faces=0) + run(fuser, 2.1, 4.0)  # two frames without a face
    assert events == []


def test_expression_change_with_hysteresis_and_dwell() -> None:
    fuser = Fuser()
    arrived(fuser)
    # Close to a tie with neutral: never enough margin to switch.
    assert run(fuser, 2.0, 6.0, emotion=SLIGHTLY_HAPPY) == []
    # A smile held for 0.3 s: too short (dwell), nothing.
    assert run(fuser, 6.0, 6.3, emotion=HAPPY) + run(fuser, 6.3, 8.0) == []
    smile = run(fuser, 8.0, 10.0, emotion=HAPPY)
    assert [e.text for e in smile] == ["The user is smiling."]
    assert 8.5 <= smile[0].t <= 9.5 and smile[0].expression == "happiness"
    assert smile[0].emotion["happiness"] > 0.5
    # Flickering back to near-neutral does not undo it: the smile must lose by the margin.
    assert run(fuser, 10.0, 12.0, emotion=SLIGHTLY_HAPPY) == []
    sad = run(fuser, 12.0, 14.0, emotion=SAD)
    assert [e.text for e in sad] == ["The user looks sad."]


def test_gaze_away_for_three_seconds_emits_once_and_back_once() -> None:
    fuser = Fuser()
    arrived(fuser)
    away = run(fuser, 2.0, 5.0, gaze="away")
    assert [e.text for e in away] == ["The user has been looking away for 2 seconds."]
    assert away[0].gaze == "away" and 3.9 <= away[0].t <= 4.1
    back = run(fuser, 5.0, 8.0)
    assert [e.text for e in back] == ["The user looked away for 3 seconds and is looking at the camera again."]
    assert back[0].gaze == "camera"


def test_short_glances_are_silent() -> None:
    fuser = Fuser()
    arrived(fuser)
    events: list[PerceptionEvent] = []
    for k in range(5):
        events += run(fuser, 2.0 + 3 * k, 3.5 + 3 * k, gaze="away") + run(fuser, 3.5 + 3 * k, 5.0 + 3 * k)
    assert events == []


def test_head_turn_and_eyes_closed() -> None:
    fuser = Fuser()
    arrived(fuser)
    turned = run(fuser, 2.0, 4.0, yaw=45.0)
    assert [e.text for e in turned] == ["The user has turned their head away from the camera."]
    # 25 degrees is inside the hysteresis band: still turned, no event.
    assert run(fuser, 4.0, 6.0, yaw=25.0) == []
    assert [e.text for e in run(fuser, 6.0, 8.0)] == ["The user has turned back toward the camera."]
    assert run(fuser, 8.0, 9.0, eyes_closed=True) + run(fuser, 9.0, 10.0, eyes_closed=False) == []  # 1 s: a blink
    closed = run(fuser, 10.0, 13.0, eyes_closed=True)
    assert [e.text for e in closed] == ["The user has had their eyes closed for 2 seconds and may be drowsy."]


def test_rate_limit_defers_a_change_without_losing_it() -> None:
    fuser = Fuser()
    arrived(fuser)
    turned = run(fuser, 2.0, 3.05, yaw=45.0)
    assert [e.text for e in turned] == ["The user has turned their head away from the camera."]
    # The smile is confirmed well within a second of that event, so it waits for the rate limit, then comes.
    later = run(fuser, 3.05, 5.0, yaw=45.0, emotion=HAPPY)
    assert [e.text for e in later] == ["The user is smiling."]
    assert 1.0 <= later[0].t - turned[0].t <= 1.06


def test_voice_band_crossing_with_hysteresis() -> None:
    fuser = Fuser()
    # A moderate, fluent first utterance is the audio baseline; the same again is no change.
    first = fuser.observe_voice(VoiceObservation(0.0, 2.0, arousal=0.5, hesitancy=0.2, pitch_hz=180.0))
    assert [e.text for e in first] == ["The user sounds calm and fluent."]
    assert fuser.observe_voice(VoiceObservation(2.0, 2.9, arousal=0.55, hesitancy=0.25)) == []
    high = fuser.observe_voice(VoiceObservation(3.0, 5.0, arousal=0.8, hesitancy=0.2, pitch_hz=230.0, rate_sps=5.5))
    assert [e.text for e in high] == ["The user sounds animated."]
    ev = high[0]
    assert ev.modality == "audio" and ev.faces is None and ev.emotion is None and ev.gaze is None
    assert ev.voice.arousal == 0.8 and ev.voice.pitch_hz == 230.0 and ev.voice.rate_sps == 5.5
    # 0.62 is below the 0.65 edge but inside the margin: still "high".
    assert fuser.observe_voice(VoiceObservation(6.0, 8.0, arousal=0.62, hesitancy=0.2)) == []
    calmer = fuser.observe_voice(VoiceObservation(9.0, 11.0, arousal=0.5, hesitancy=0.75))
    assert [e.text for e in calmer] == ["The user sounds calmer and hesitant."]


def test_audio_change_with_visual_context_is_fused() -> None:
    fuser = Fuser()
    arrived(fuser)
    run(fuser, 2.0, 5.0, gaze="away")
    events = fuser.observe_voice(VoiceObservation(3.0, 5.0, arousal=0.5, hesitancy=0.8))
    assert [e.text for e in events] == ["The user sounds hesitant and is looking away."]
    assert events[0].modality == "fused" and events[0].faces == 1 and events[0].voice.hesitancy == 0.8


def test_texts_are_single_readable_sentences() -> None:
    fuser = Fuser()
    events = arrived(fuser) + run(fuser, 2.0, 5.0, gaze="away") + run(fuser, 5.0, 7.0, emotion=HAPPY)
    events += run(fuser, 7.0, 8.0, faces=2) + run(fuser, 8.0, 9.0, faces=3) + run(fuser, 9.0, 10.0, faces=0)
    texts = [e.text for e in events]
    assert len(texts) >= 6
    for text in texts:
        assert one_sentence(text), text
        assert "None" not in text and "_" not in text and not re.search(r"\d\.\d", text), text


def test_deterministic() -> None:
    def trace() -> list[PerceptionEvent]:
        fuser = Fuser()
        return arrived(fuser) + run(fuser, 2.0, 6.0, gaze="away", emotion=SAD) + run(fuser, 6.0, 8.0, faces=2)

    assert trace() == trace()


def test_stale_frames_are_ignored() -> None:
    fuser = Fuser()
    arrived(fuser)
    assert fuser.observe_face(face(0.5, faces=0)) == []
    assert fuser.snapshot().faces == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: FaceObservation(t=0.0, faces=-1),
        lambda: FaceObservation(t=0.0, faces=1, emotion={"joy": 1.0}),
        lambda: FaceObservation(t=0.0, faces=1, emotion={"neutral": 1.5}),
        lambda: FaceObservation(t=0.0, faces=1, gaze="left"),
        lambda: FaceObservation(t=float("nan"), faces=1),
        lambda: VoiceObservation(2.0, 1.0),
        lambda: VoiceObservation(0.0, 1.0, arousal=1.2),
        lambda: VoiceObservation(0.0, 1.0, pitch_hz=-5.0),
    ],
)
def test_malformed_observations_raise_typed_errors(make: Any) -> None:
    with pytest.raises(BadPerceptionInput) as err:
        make()
    assert err.value.code == "bad_perception_input" and not err.value.fatal and isinstance(err.value, DuetError)


# ---- utterance summary ----------------------------------------------------------------------------------


def test_utterance_summary_arc() -> None:
    fuser = Fuser()
    run(fuser, 0.0, 10.0)
    # Windowed partials: calm, then tense from 4 s, then hesitant from 7 s.
    fuser.observe_voice(VoiceObservation(0.0, 4.0, arousal=0.4, tension=0.1, hesitancy=0.1))
    fuser.observe_voice(VoiceObservation(4.0, 7.0, arousal=0.8, tension=0.8, hesitancy=0.1))
    fuser.observe_voice(VoiceObservation(7.0, 10.0, arousal=0.4, tension=0.2, hesitancy=0.8))
    summary = fuser.end_turn(0.0, 10.0)
    assert summary.type == "utterance_summary" and summary.start == 0.0 and summary.end == 10.0
    assert [s.state for s in summary.arc] == ["calm", "tense", "hesitant"]
    assert summary.arc[1].from_s == pytest.approx(4.0)
    assert summary.text == "Over this turn the user started calm, grew tense around 4 s and ended hesitant."
    assert summary.disagreement is False and summary.modality == "fused"


def test_summary_uses_only_the_turn() -> None:
    fuser = Fuser()
    run(fuser, 0.0, 5.0, emotion=SAD)
    run(fuser, 5.0, 10.0, emotion=HAPPY)
    summary = fuser.end_turn(6.0, 10.0)
    assert [s.state for s in summary.arc] == ["cheerful"]
    assert summary.text == "Over this turn the user seemed cheerful throughout."
    assert summary.modality == "visual"


def test_fine_with_flat_voice_and_looking_away_is_a_disagreement() -> None:
    fuser = Fuser()
    arrived(fuser)
    run(fuser, 2.0, 6.0, gaze="away")
    fuser.observe_voice(VoiceObservation(2.0, 6.0, arousal=0.2, flatness=0.85, hesitancy=0.3))
    summary = fuser.end_turn(2.0, 6.0, transcript="Yeah, I'm fine.")
    assert summary.disagreement is True
    assert summary.disagreements == ("said 'yeah' but sounded flat and looked away",)
    assert summary.text.endswith("They said 'yeah' but sounded flat and looked away.")
    assert summary.transcript_tone == "positive"
    # The same cues with no transcript, or with words that match them, are no disagreement.
    assert fuser.end_turn(2.0, 6.0).disagreement is False
    assert fuser.end_turn(2.0, 6.0, transcript="I'm not fine at all").disagreement is False


def test_negative_words_with_a_smile_and_face_voice_conflict() -> None:
    fuser = Fuser()
    run(fuser, 0.0, 4.0, emotion=HAPPY)
    summary = fuser.end_turn(0.0, 4.0, transcript="that was terrible")
    assert summary.disagreements == ("said 'terrible' but smiled",)
    fuser.observe_voice(VoiceObservation(0.0, 4.0, tension=0.9))
    summary = fuser.end_turn(0.0, 4.0)
    assert summary.disagreements == ("smiled but sounded tense",)


def test_summary_with_no_cues_and_bad_turns() -> None:
    summary = Fuser().end_turn(0.0, 3.0, transcript="fine")
    assert summary.arc == () and summary.disagreement is False and summary.modality is None
    assert summary.text == "There were no voice or camera cues during this turn."
    with pytest.raises(BadPerceptionInput):
        Fuser().end_turn(3.0, 3.0)


# ---- the system note ------------------------------------------------------------------------------------


def assert_note_shape(note: str) -> None:
    assert note.startswith("[perception] ")
    body = note.removeprefix("[perception] ")
    assert len(re.findall(r"[.!?](?:\s|$)", body)) <= 2 and len(note) <= 240
    assert not re.search(r"\d", note), note  # no raw numbers
    assert "may be wrong" in note


def test_system_note_from_perception_state() -> None:
    fuser = Fuser()
    events = arrived(fuser) + run(fuser, 2.0, 5.0, gaze="away")
    events += fuser.observe_voice(VoiceObservation(3.0, 5.0, arousal=0.5, hesitancy=0.8))
    note = system_note(events)
    assert_note_shape(note)
    assert note == (
        "[perception] The user sounds hesitant and looks away; they may be unsure. "
        "This is an observation from voice and camera cues and may be wrong."
    )


def test_system_note_from_summary_disagreement_and_arc() -> None:
    fuser = Fuser()
    events = arrived(fuser) + run(fuser, 2.0, 6.0, gaze="away")
    fuser.observe_voice(VoiceObservation(2.0, 6.0, flatness=0.9))
    events.append(fuser.end_turn(2.0, 6.0, transcript="fine"))
    note = system_note(events)
    assert_note_shape(note)
    assert "said 'fine' but sounded flat and looked away" in note and "words, voice and camera" in note

    fuser = Fuser()
    run(fuser, 0.0, 10.0)
    fuser.observe_voice(VoiceObservation(0.0, 5.0, arousal=0.4))
    fuser.observe_voice(VoiceObservation(5.0, 10.0, hesitancy=0.9))
    note = system_note([fuser.end_turn(0.0, 10.0)])
    assert_note_shape(note)
    assert "started calm and became hesitant; they may be unsure" in note


def test_system_note_presence_and_nothing() -> None:
    fuser = Fuser()
    events = arrived(fuser) + run(fuser, 2.0, 3.0, faces=0)
    note = system_note(events)
    assert_note_shape(note)
    assert "Nobody is in view" in note
    assert system_note([]) == ""
    assert system_note(arrived(Fuser())) == ""  # a calm user looking at the camera: nothing worth a note


# ---- perception tools -----------------------------------------------------------------------------------


def snap(t: float, **kw: Any) -> PerceptionSnapshot:
    base: dict[str, Any] = {"faces": 1, "emotion": None, "gaze": "camera", "head_pose": None, "voice": None}
    base.update(kw)
    return PerceptionSnapshot(t=t, **base)


def test_conditions_parse() -> None:
    cond = parse_condition("emotion in [sadness, fear] >= 0.6 for 2s and gaze == away")
    assert [c.text for c in cond.clauses] == ["emotion in [sadness, fear] >= 0.6 for 2s", "gaze == away"]
    assert cond.clauses[0].for_s == 2.0 and cond.clauses[0].subject.keys == ("sadness", "fear")
    assert parse_condition("abs(head_pose.yaw) > 30 for 500ms").clauses[0].for_s == 0.5
    assert parse_condition("voice.hesitancy>=0.7 for 1.5 s").clauses[0].for_s == 1.5
    assert parse_condition("head_pose.pitch < -20").clauses[0].value == -20.0


@pytest.mark.parametrize(
    ("condition", "position", "fragment"),
    [
        ("", 0, "empty"),
        ("faces >=", 8, "plain number"),
        ("faces >> 2", 7, "plain number"),
        ("emotion.joy > 0.5", 0, "unknown emotion 'joy'"),
        ("emotion in [sadness, joy] > 0.5", 21, "unknown emotion 'joy'"),
        ("emotion.sadness > 2", 18, "0..1"),
        ("faces > 2 for 3", 14, "unit"),
        ("gaze > away", 5, "only == or !="),
        ("gaze == left", 8, "'camera' or 'away'"),
        ("faces == 0 or gaze == away", 11, "'or' is not supported"),
        ("__import__('os') == 1", 11, "unexpected character"),
        ("__import__ == 1", 0, "unknown subject '__import__'"),
        ("faces == 1; rm", 10, "unexpected character"),
        ("mood == 1", 0, "unknown subject 'mood'"),
    ],
)
def test_bad_conditions_raise_with_position(condition: str, position: int, fragment: str) -> None:
    with pytest.raises(BadPerceptionCondition) as err:
        parse_condition(condition)
    assert err.value.code == "bad_perception_condition" and err.value.position == position
    assert fragment in err.value.message and f"position {position}" in err.value.message


def test_documents_need_an_object_detector() -> None:
    for when in ("holds_up_document", "object == document", "document.visible == 1"):
        with pytest.raises(UnsupportedPerceptionCondition) as err:
            parse_tools([{"name": "holds_up_document", "when": when}])
        assert err.value.code == "unsupported_perception_condition"
        assert "object detector" in err.value.message and "supported: faces, gaze" in err.value.message


@pytest.mark.parametrize(
    "declarations",
    [
        "faces >= 2",
        [{"name": "x"}],
        [{"when": "faces >= 2"}],
        [{"name": "Bad Name", "when": "faces >= 2"}],
        [{"name": "a", "when": "faces >= 2"}, {"name": "a", "when": "faces == 0"}],
        [{"name": "a", "when": "faces >= 2", "then": "call"}],
        [{"name": "a", "when": "faces >= 2", "rearm_s": -1}],
    ],
)
def test_bad_declarations(declarations: object) -> None:
    with pytest.raises(BadPerceptionTool) as err:
        parse_tools(declarations)
    assert err.value.code == "bad_perception_tool"


def test_tool_fires_once_per_onset_with_evidence() -> None:
    tools = PerceptionTools(parse_tools([{"name": "second_person", "when": "faces >= 2"}]))
    calls: list[PerceptionToolCall] = []
    for i in range(100):
        t = i * 0.1
        faces = 2 if 10 <= i < 30 or 31 <= i < 40 or 60 <= i < 70 else 1  # a one-frame dip at i=30
        calls += tools.update(snap(t, faces=faces))
    # The dip at 3.0 s is shorter than the 1 s re-arm: still one onset; 6.0 s is a new one.
    assert [c.t for c in calls] == [1.0, 6.0]
    assert calls[0] == PerceptionToolCall(t=1.0, name="second_person", when="faces >= 2", evidence={"faces": 2})


def test_duration_conditions_and_evidence() -> None:
    tools = PerceptionTools(
        parse_tools(
            [
                {"name": "user_distressed", "when": "emotion in [sadness, fear] >= 0.6 for 2s"},
                {"name": "user_left", "when": "faces == 0 for 3s"},
                {"name": "hesitant_and_away", "when": "voice.hesitancy >= 0.7 and gaze == away for 1s"},
            ]
        )
    )
    calls: list[PerceptionToolCall] = []
    distressed = {e: 0.0 for e in EMOTIONS} | {"sadness": 0.5, "fear": 0.2, "neutral": 0.3}
    for i in range(30):  # 1.5 s of distress (too short), then calm
        calls += tools.update(snap(i * 0.1, emotion=distressed if i < 15 else NEUTRAL))
    assert calls == []
    for i in range(30, 60):
        calls += tools.update(snap(i * 0.1, emotion=distressed))
    assert [(c.name, c.t) for c in calls] == [("user_distressed", 5.0)]
    assert calls[0].evidence == {
        "emotion in [sadness, fear]": 0.7,
        "emotion": {"sadness": 0.5, "fear": 0.2},
        "held_s": {"emotion in [sadness, fear]": 2.0},
    }
    calls = []
    for i in range(60, 100):
        calls += tools.update(snap(i * 0.1, faces=0, emotion=None, gaze=None))
    assert [(c.name, c.t) for c in calls] == [("user_left", 9.0)]
    assert calls[0].evidence == {"faces": 0, "held_s": {"faces": 3.0}}
    calls = []
    for i in range(100, 130):
        voice = {"hesitancy": 0.8, "arousal": 0.4}
        calls += tools.update(snap(i * 0.1, gaze="away", voice=voice))
    assert [(c.name, c.t) for c in calls] == [("hesitant_and_away", 11.0)]
    assert calls[0].evidence == {"voice.hesitancy": 0.8, "gaze": "away", "held_s": {"gaze": 1.0}}


def test_unknown_values_never_satisfy_and_a_brief_gap_is_tolerated() -> None:
    tools = PerceptionTools(parse_tools([{"name": "turned", "when": "abs(head_pose.yaw) > 30 for 1s"}]))
    assert tools.update(snap(0.0)) == [] and tools.update(snap(5.0)) == []  # no head pose: never true
    calls: list[PerceptionToolCall] = []
    for i in range(60, 80):
        yaw = 5.0 if i == 65 else -40.0  # one mis-estimated frame inside the run
        calls += tools.update(snap(i * 0.1, head_pose={"yaw": yaw, "pitch": 0.0, "roll": 0.0}))
    assert [c.t for c in calls] == [7.0]
    assert calls[0].evidence == {"abs(head_pose.yaw)": 40.0, "held_s": {"abs(head_pose.yaw)": 1.0}}


def test_tools_on_the_fuser_snapshot() -> None:
    fuser = Fuser()
    tools = PerceptionTools(parse_tools([{"name": "second_person", "when": "faces >= 2"}]))
    calls: list[PerceptionToolCall] = []
    for i in range(60):
        fuser.observe_face(face(i * DT, faces=2 if i >= 30 else 1))
        calls += tools.update(fuser.snapshot())
    assert [c.name for c in calls] == ["second_person"]
    assert 1.5 < calls[0].t <= 1.8  # confirmed face count: the presence debounce applies


def test_poll_emits_a_deferred_change_when_inputs_pause() -> None:
    fuser = Fuser()
    arrived(fuser)
    assert len(fuser.observe_voice(VoiceObservation(1.5, 2.5, arousal=0.9))) == 1
    # Hesitancy 0.3 s later is held back by the rate limit; no further input arrives.
    assert fuser.observe_voice(VoiceObservation(2.5, 2.8, arousal=0.9, hesitancy=0.9)) == []
    assert fuser.poll(3.0) == []
    deferred = fuser.poll(3.6, now=3.7)
    assert [e.text for e in deferred] == ["The user sounds hesitant."]
    assert deferred[0].latency_ms == pytest.approx(900.0)  # newest input arrived at 2.8
    assert fuser.poll(10.0) == []


def test_repeated_voice_cues_read_naturally() -> None:
    fuser = Fuser()
    fuser.observe_voice(VoiceObservation(0.0, 3.0, flatness=0.8, hesitancy=0.7))
    summary = fuser.end_turn(0.0, 3.0, transcript="all good")
    assert summary.disagreements == ("said 'good' but sounded flat and hesitant",)
    assert summary.modality == "audio"
