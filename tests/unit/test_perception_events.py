"""Perception's typed events: their wire form, and how a session's owned loops report what goes wrong.

The wire form (`orchestrator.api.wire.event_dict`) must stay the JSON perception sent before its events were
typed (DESIGN.md's perception event contract, read by `duet perceive --jsonl` and outside tools): the key lists
below are written out from the dicts perception used to build. A model failure in an owned loop is a non-fatal
`ErrorEvent` and the loop goes on; a bug is an `internal` one, logged with its traceback, and the loop stops;
cancellation passes through untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from orchestrator.api.wire import event_dict
from orchestrator.errors import ModelUnavailable
from orchestrator.events import (
    ErrorEvent,
    Event,
    PerceptionEvent,
    PerceptionStats,
    PerceptionToolCall,
    UtteranceSummary,
)
from orchestrator.perception.fusion import FaceObservation, Fuser, VoiceObservation
from orchestrator.perception.pipeline import PerceptionCounters, PerceptionSession
from orchestrator.perception.prosody_features import frame_features
from orchestrator.perception.tools import PerceptionTools, parse_tools

PERCEPTION_KEYS = [
    "type",
    "t",
    "modality",
    "text",
    "faces",
    "emotion",
    "head_pose",
    "gaze",
    "voice",
    "latency_ms",
    "changes",
    "baseline",
    "expression",
    "head_turned",
    "eyes_closed_long",
    "arousal_band",
    "hesitancy_band",
    "mouth_open",
]
HEAD_POSE_KEYS = ["yaw", "pitch", "roll"]
VOICE_KEYS = ["arousal", "hesitancy", "pitch_hz", "rate_sps", "uncertainty", "tension", "flatness"]
SUMMARY_KEYS = [
    "type",
    "t",
    "start",
    "end",
    "text",
    "arc",
    "disagreement",
    "disagreements",
    "modality",
    "faces",
    "emotion",
    "gaze_away_fraction",
    "voice",
    "transcript_tone",
    "latency_ms",
]
ARC_KEYS = ["from_s", "to_s", "state"]
TOOL_CALL_KEYS = ["type", "t", "name", "when", "evidence"]
STATS_KEYS = [
    "type",
    "t",
    "audio_ms_p50",
    "audio_ms_p95",
    "visual_ms_p50",
    "visual_ms_p95",
    "frames",
    "dropped",
    "bad_frames",
]

HAPPY = {"neutral": 0.15, "happiness": 0.8, "surprise": 0.05}
FPS = 20


def wire(event: Event) -> dict[str, Any]:
    """The event's JSON object, checked to survive `json.dumps` unchanged."""
    out = event_dict(event)
    assert json.loads(json.dumps(out)) == out
    return out


def scripted() -> tuple[list[PerceptionEvent], UtteranceSummary, list[PerceptionToolCall]]:
    """A hesitant voice, then a smiling face with its head pose for 3 s; the turn's summary; a persona tool."""
    fuser = Fuser()
    tools = PerceptionTools(parse_tools([{"name": "smiling", "when": "emotion.happiness >= 0.5 for 1s"}]))
    scores = {"arousal": 0.5, "hesitancy": 0.8, "uncertainty": 0.4, "tension": 0.2, "flatness": 0.1}
    events = fuser.observe_voice(VoiceObservation(0.0, 1.5, pitch_hz=150.04, rate_sps=4.216, **scores))
    calls: list[PerceptionToolCall] = []
    for i in range(3 * FPS):
        t = round(1.0 + i / FPS, 6)
        obs = FaceObservation(t, 1, HAPPY, yaw=5.04, pitch=-2.0, roll=1.0, gaze="camera", mouth_open=0.2)
        events += fuser.observe_face(obs)
        calls += tools.update(fuser.snapshot())
    return events, fuser.end_turn(0.0, 4.0, transcript="I'm fine, really"), calls


def test_a_perception_event_has_the_keys_of_the_old_dict_in_order() -> None:
    events, _, _ = scripted()
    # The audio baseline, exactly as perception sent it before its events were typed (rounding included).
    assert json.dumps(event_dict(events[0])) == (
        '{"type": "perception", "t": 1.5, "modality": "audio", "text": "The user sounds hesitant.", "faces": null, '
        '"emotion": null, "head_pose": null, "gaze": null, "voice": {"arousal": 0.5, "hesitancy": 0.8, '
        '"pitch_hz": 150.0, "rate_sps": 4.22, "uncertainty": 0.4, "tension": 0.2, "flatness": 0.1}, '
        '"latency_ms": 0.0, "changes": ["arousal", "hesitancy"], "baseline": ["audio"], "expression": null, '
        '"head_turned": null, "eyes_closed_long": null, "arousal_band": "moderate", "hesitancy_band": "hesitant", '
        '"mouth_open": null}'
    )
    full = [e for e in events if e.head_pose is not None and e.voice is not None]
    assert full, [e.text for e in events]
    out = wire(full[0])
    assert list(out) == PERCEPTION_KEYS
    assert list(out["head_pose"]) == HEAD_POSE_KEYS and out["head_pose"]["yaw"] == 5.0
    assert list(out["voice"]) == VOICE_KEYS
    assert isinstance(out["changes"], list) and isinstance(out["baseline"], list)
    assert isinstance(out["emotion"], dict) and out["modality"] == "fused" and out["faces"] == 1
    assert out["mouth_open"] == 0.2 and out["gaze"] == "camera"


def test_an_utterance_summary_has_the_keys_of_the_old_dict_in_order() -> None:
    _, summary, _ = scripted()
    out = wire(summary)
    assert list(out) == SUMMARY_KEYS
    assert out["type"] == "utterance_summary" and out["modality"] == "fused"
    assert isinstance(out["arc"], list) and out["arc"] and all(list(seg) == ARC_KEYS for seg in out["arc"])
    assert isinstance(out["disagreements"], list) and out["disagreement"] is bool(out["disagreements"])
    assert out["transcript_tone"] == "positive" and isinstance(out["voice"], dict)


def test_a_perception_tool_call_has_the_keys_of_the_old_dict_in_order() -> None:
    _, _, calls = scripted()
    assert [c.name for c in calls] == ["smiling"]
    out = wire(calls[0])
    assert list(out) == TOOL_CALL_KEYS
    assert out["type"] == "perception_tool_call" and out["when"] == "emotion.happiness >= 0.5 for 1s"
    assert list(out["evidence"]) == ["emotion.happiness", "held_s"]
    assert out["evidence"]["held_s"] == {"emotion.happiness": 1.0}


def test_perception_stats_have_the_keys_of_the_old_dict_in_order() -> None:
    counters = PerceptionCounters(audio_ms=[1.0, 2.0, 9.0], frames=3, dropped=1, bad_frames=2)
    stats = counters.event(12.345678)
    assert isinstance(stats, PerceptionStats)
    out = wire(stats)
    assert list(out) == STATS_KEYS
    assert out["t"] == 12.3457 and out["audio_ms_p50"] == 2.0 and out["visual_ms_p50"] is None
    assert (out["frames"], out["dropped"], out["bad_frames"]) == (3, 1, 2)


# ---- the session's owned loops --------------------------------------------------------------------------

NOBODY: dict[str, Any] = {"faces": 0, "width": 640, "height": 480}
BLOCK = object()  # a call that never returns


class FakeModels:
    """`PerceptionModels` following a script: each call takes the next step; an exception step is raised."""

    def __init__(self, frames: list[object] | None = None, voice: list[object] | None = None) -> None:
        self.frames, self.voice = list(frames or []), list(voice or [])
        self.frame_calls = self.voice_calls = 0

    async def voice_features(self, frames: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
        self.voice_calls += 1
        await self._step(self.voice.pop(0) if self.voice else None)
        return frame_features(frames)

    async def analyze_frame(self, image: bytes) -> dict[str, Any]:
        self.frame_calls += 1
        step = self.frames.pop(0) if self.frames else NOBODY
        await self._step(step)
        assert isinstance(step, dict)
        return step

    @staticmethod
    async def _step(step: object) -> None:
        if step is BLOCK:
            await asyncio.Event().wait()
        if isinstance(step, asyncio.Event):  # held until the test sets it
            await step.wait()
        if isinstance(step, Exception):
            raise step


async def until(cond: Callable[[], bool], passes: int = 10_000) -> None:
    """Let the session's tasks run until `cond` holds (they do no real I/O: a pass of the event loop each)."""
    for _ in range(passes):
        if cond():
            return
        await asyncio.sleep(0)
    pytest.fail(f"still not so after {passes} passes of the event loop")


def task(name: str) -> asyncio.Task[Any]:
    return next(t for t in asyncio.all_tasks() if t.get_name() == name)


def errors(sent: list[Event]) -> list[ErrorEvent]:
    return [e for e in sent if isinstance(e, ErrorEvent)]


def session(models: FakeModels, sent: list[Event], notes: list[str] | None = None) -> PerceptionSession:
    async def emit(event: Event) -> None:
        sent.append(event)

    s = PerceptionSession(models, emit, name="s", clock=lambda: 0.0)
    if notes is not None:
        s.on_note = notes.append
    s.start()
    return s


SILENCE = np.zeros(3 * 320, np.int16).tobytes()  # three 20 ms hops: one call to `perception_audio`


async def test_a_model_failure_in_the_camera_loop_is_a_non_fatal_error_and_the_loop_goes_on() -> None:
    failure = ModelUnavailable("perception_face failed: the model is not ready")
    models = FakeModels(frames=[failure])  # then nobody in view
    sent: list[Event] = []
    notes: list[str] = []
    s = session(models, sent, notes)
    try:
        s.video(b"frame", 0.05, 0.0)
        await until(lambda: len(errors(sent)) == 1)
        for i in range(2, 8):  # nobody in view for 0.3 s: the visual baseline
            s.video(b"frame", i * 0.05, 0.0)
            await until(lambda i=i: s.stats.frames == i - 1)
        assert not task("s-camera").done()
    finally:
        await s.close()
    assert errors(sent) == [ErrorEvent(t=0.05, code="model_unavailable", message=failure.message, fatal=False)]
    assert s.stats.bad_frames == 0 and models.frame_calls == 7
    assert [e.text for e in sent if isinstance(e, PerceptionEvent)] == ["Nobody is in view."]
    assert notes and notes[-1].startswith("[perception] Nobody is in view")


async def test_a_bug_in_the_camera_loop_is_an_internal_error_and_the_camera_loop_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bug = RuntimeError("bad index in <Track object at 0x7f3a2b1c4d50>")
    models, sent = FakeModels(frames=[bug]), []
    s = session(models, sent)
    camera = task("s-camera")
    try:
        with caplog.at_level(logging.ERROR, logger="duet.perception"):
            s.video(b"frame", 0.25, 0.0)
            await until(camera.done)
        assert not camera.cancelled() and camera.exception() is None  # reported, not left to die unheard
        s.video(b"frame", 0.3, 0.0)
        await asyncio.sleep(0.05)
        assert models.frame_calls == 1  # no camera loop left to analyse it
        s.audio(SILENCE, 0.06, 0.0)  # the voice side goes on
        await until(lambda: models.voice_calls == 1)
        assert not task("s-voice").done()
    finally:
        await s.close()
    [error] = errors(sent)
    assert error.code == "internal" and error.fatal is False and error.t == 0.25
    assert "0x" not in error.message and "Track" not in error.message and "bad index" not in error.message
    [record] = [r for r in caplog.records if r.name == "duet.perception" and r.levelno == logging.ERROR]
    assert record.exc_info is not None and record.exc_info[1] is bug


async def test_a_model_failure_in_the_voice_loop_is_a_non_fatal_error_and_the_loop_goes_on() -> None:
    failure = ModelUnavailable("perception_audio failed: the model is not ready")
    models, sent = FakeModels(voice=[failure, None]), []
    s = session(models, sent)
    try:
        s.audio(SILENCE, 0.06, 0.0)
        await until(lambda: len(errors(sent)) == 1)
        s.audio(SILENCE, 0.12, 0.0)
        await until(lambda: models.voice_calls == 2 and len(s.stats.audio_ms) == 1)
        assert not task("s-voice").done()
    finally:
        await s.close()
    assert errors(sent) == [ErrorEvent(t=0.06, code="model_unavailable", message=failure.message, fatal=False)]


async def test_a_bug_in_the_voice_loop_is_an_internal_error_and_the_voice_loop_stops() -> None:
    models, sent = FakeModels(voice=[KeyError("row")]), []
    s = session(models, sent)
    voice = task("s-voice")
    try:
        s.audio(SILENCE, 0.06, 0.0)
        await until(voice.done)
        assert not voice.cancelled() and voice.exception() is None
        s.video(b"frame", 0.1, 0.0)  # the camera side goes on
        await until(lambda: s.stats.frames == 1)
    finally:
        await s.close()
    [error] = errors(sent)
    assert error.code == "internal" and error.fatal is False and error.t == 0.06


async def test_cancellation_passes_through_the_owned_loops() -> None:
    models, sent = FakeModels(frames=[BLOCK], voice=[BLOCK]), []
    s = session(models, sent)
    loops = [task("s-voice"), task("s-camera")]
    s.video(b"frame", 0.1, 0.0)
    s.audio(SILENCE, 0.06, 0.0)
    await until(lambda: models.frame_calls == 1 and models.voice_calls == 1)  # both loops inside a model call
    await s.close()
    assert all(t.cancelled() for t in loops)
    assert sent == []


async def test_a_turn_end_flushes_the_voice_after_the_flush_in_flight_not_beside_it() -> None:
    """The voice loop's request can be slow (a loaded server) when the turn ends: the turn end's flush of the
    later audio must not overtake it, or the earlier rows arrive after the later ones (time going backwards)."""
    slow = asyncio.Event()
    models, sent = FakeModels(voice=[slow, None]), []
    s = session(models, sent)
    try:
        await s.floor_event("speech_start", 0.0)
        s.audio(SILENCE, 0.06, 0.0)
        await until(lambda: models.voice_calls == 1)  # the loop's request, held in the model
        s.audio(SILENCE, 0.12, 0.0)
        commit = asyncio.create_task(s.floor_event("eot_commit", 0.12), name="commit")
        await asyncio.sleep(0.01)
        slow.set()
        await asyncio.wait_for(commit, 1.0)
        await until(lambda: models.voice_calls == 2)
    finally:
        await s.close()
    assert errors(sent) == []
    assert s.tracker.state.t_last == pytest.approx(0.12)
