"""The baseline of each modality: the first confident reading is an event, then only changes (virtual time)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.events import HeadPose, PerceptionEvent
from orchestrator.perception.fusion import FaceObservation, Fuser, FusionSettings, VoiceObservation

NEUTRAL = {"neutral": 0.85, "happiness": 0.05, "sadness": 0.05, "surprise": 0.05}
HAPPY = {"neutral": 0.15, "happiness": 0.8, "surprise": 0.05}
AMBIGUOUS = {e: 0.125 for e in ("neutral", "happiness", "sadness", "anger", "fear", "surprise", "disgust", "contempt")}
FPS = 20


def frames(fuser: Fuser, t0: float, t1: float, faces: int = 1, **kw: Any) -> list[PerceptionEvent]:
    """Frames at FPS over [t0, t1) of a calm user looking at the camera (overridden by `kw`)."""
    base: dict[str, Any] = {"emotion": NEUTRAL, "yaw": 2.0, "pitch": -3.0, "roll": 1.0, "gaze": "camera"}
    base.update(kw)
    events: list[PerceptionEvent] = []
    for i in range(round((t1 - t0) * FPS)):
        obs = FaceObservation(t=round(t0 + i / FPS, 6), faces=faces, **(base if faces else {}))
        events += fuser.observe_face(obs)
    return events


def calm_voice(t0: float, t1: float, final: bool = True, **kw: float) -> VoiceObservation:
    scores = {"arousal": 0.5, "hesitancy": 0.15, "uncertainty": 0.1, "tension": 0.1, "flatness": 0.2}
    scores.update(kw)
    return VoiceObservation(t0, t1, pitch_hz=120.0, rate_sps=4.4, final=final, **scores)


# ---- audio ----------------------------------------------------------------------------------------------


def test_a_calm_voice_gets_one_baseline_event_then_only_changes() -> None:
    fuser = Fuser()
    events = fuser.observe_voice(calm_voice(0.5, 2.2))
    assert [e.text for e in events] == ["The user sounds calm and fluent."]
    ev = events[0]
    assert ev.type == "perception" and ev.modality == "audio" and ev.baseline == ("audio",)
    assert ev.t == 2.2 and ev.faces is None and ev.gaze is None and ev.emotion is None
    assert ev.voice.arousal == 0.5 and ev.voice.pitch_hz == 120.0 and ev.voice.rate_sps == 4.4
    assert ev.arousal_band == "moderate" and ev.hesitancy_band == "fluent"
    # The same calm voice again, for a long time: nothing more.
    quiet = [e for k in range(1, 30) for e in fuser.observe_voice(calm_voice(3.0 * k, 3.0 * k + 2.0))]
    assert quiet == []
    # A change after the baseline is an ordinary change event.
    louder = fuser.observe_voice(calm_voice(95.0, 97.0, arousal=0.85))
    assert [e.text for e in louder] == ["The user sounds animated."] and louder[0].baseline == ()


def test_the_audio_baseline_waits_for_a_confident_reading() -> None:
    fuser = Fuser()
    # Partials over less than a second of speech are not confident: no event, even for a notable reading.
    assert fuser.observe_voice(calm_voice(0.0, 0.3, final=False, arousal=0.9)) == []
    assert fuser.observe_voice(calm_voice(0.0, 0.9, final=False, arousal=0.9)) == []
    # A short final utterance ("mm") is not confident either.
    assert fuser.observe_voice(calm_voice(1.0, 1.4, arousal=0.9)) == []
    events = fuser.observe_voice(calm_voice(2.0, 3.0, final=False, arousal=0.9, hesitancy=0.8))
    assert [e.text for e in events] == ["The user sounds animated and hesitant."]
    assert events[0].baseline == ("audio",) and events[0].changes == ("arousal", "hesitancy")


def test_a_subdued_first_voice_is_said_as_it_is() -> None:
    fuser = Fuser()
    events = fuser.observe_voice(calm_voice(0.0, 1.5, arousal=0.2))
    assert [e.text for e in events] == ["The user sounds subdued."]
    assert events[0].baseline == ("audio",)


def test_the_audio_baseline_is_rate_limited_but_never_lost() -> None:
    fuser = Fuser()
    assert len(frames(fuser, 0.0, 0.65)) == 1  # the visual baseline at 0.6 s
    # A confident voice 0.4 s later is held by the 1 s rate limit, then comes on a poll with no new input.
    assert fuser.observe_voice(calm_voice(0.0, 1.0)) == []
    assert fuser.poll(1.5) == []
    deferred = fuser.poll(1.6)
    assert [e.text for e in deferred] == ["The user sounds calm and fluent."]
    assert deferred[0].baseline == ("audio",) and deferred[0].modality == "audio"
    assert fuser.poll(5.0) == []


# ---- visual ---------------------------------------------------------------------------------------------


def test_a_calm_face_gets_one_baseline_event_once_it_has_settled() -> None:
    fuser = Fuser()
    events = frames(fuser, 0.0, 10.0)
    assert [e.text for e in events] == ["The user is in view, is looking at the camera and has a neutral expression."]
    ev = events[0]
    assert ev.modality == "visual" and ev.baseline == ("visual",) and ev.faces == 1
    # Confirmed face count at 0.2 s, gaze at 0.3 s, the expression after its 0.6 s dwell: the baseline.
    assert ev.t == pytest.approx(0.6)
    assert ev.expression == "neutral" and ev.gaze == "camera" and ev.head_turned is False
    assert ev.head_pose == HeadPose(yaw=2.0, pitch=-3.0, roll=1.0) and ev.voice is None


def test_a_notable_first_look_is_the_baseline() -> None:
    fuser = Fuser()
    smiling = frames(fuser, 0.0, 3.0, emotion=HAPPY)
    assert [e.text for e in smiling] == ["The user is in view and is smiling."]
    fuser = Fuser()
    away = frames(fuser, 0.0, 4.0, gaze="away")
    assert [e.text for e in away] == ["The user is in view and has been looking away for 2 seconds."]
    assert away[0].t == pytest.approx(2.0) and away[0].gaze == "away"


def test_an_unsettled_face_holds_the_baseline_at_most_baseline_wait_s() -> None:
    settings = FusionSettings()
    fuser = Fuser(settings)
    events = frames(fuser, 0.0, 5.0, emotion=AMBIGUOUS)  # no expression ever dominates
    assert [e.text for e in events] == ["The user is in view and is looking at the camera."]
    assert events[0].t == pytest.approx(settings.presence_confirm_s + settings.baseline_wait_s)
    assert events[0].expression is None


def test_nobody_in_view_is_a_baseline_and_the_user_arriving_a_change() -> None:
    fuser = Fuser()
    empty = frames(fuser, 0.0, 3.0, faces=0)
    assert [e.text for e in empty] == ["Nobody is in view."]
    assert empty[0].baseline == ("visual",) and empty[0].faces == 0 and empty[0].t == pytest.approx(0.2)
    arrival = frames(fuser, 3.0, 10.0)
    assert [e.text for e in arrival] == ["The user is in view."] and arrival[0].baseline == ()


def test_each_modality_has_its_own_baseline_and_one_does_not_stand_for_the_other() -> None:
    fuser = Fuser()
    voice = fuser.observe_voice(calm_voice(0.0, 1.2, hesitancy=0.8))
    assert [e.text for e in voice] == ["The user sounds hesitant."] and voice[0].baseline == ("audio",)
    # The face comes 0.2 s later (a presence reading is never held by the rate limit), with its own baseline,
    # and the hesitant voice heard just before as context.
    face = frames(fuser, 1.0, 4.0)
    assert [e.text for e in face] == [
        "The user is in view, is looking at the camera, has a neutral expression and sounds hesitant."
    ]
    assert face[0].baseline == ("visual",) and face[0].modality == "fused"
    assert frames(fuser, 4.0, 8.0) + fuser.observe_voice(calm_voice(5.0, 7.0, hesitancy=0.8)) == []
