"""The conversation session with fake models: no server, virtual time, milliseconds per test.

The fakes answer like the real models would for the scripted audio: the user's speech is a square wave whose
amplitude says which words it holds (the fake recogniser reads the amplitude back), VAD hears anything loud,
the floor model grows sure of a yield as the pause grows, the LLM streams a fixed reply and the TTS speaks
each clause as a block of samples. Every model can be told to fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from orchestrator.config import FaceSettings, Settings
from orchestrator.errors import ModelUnavailable
from orchestrator.events import (
    ErrorEvent,
    FloorEvent,
    ReplicaCaption,
    ReplicaSpeakingStart,
    ReplicaSpeakingStop,
    ReplicaTurn,
    ReplyCancelled,
    ReplyStarted,
    UserTurn,
)
from orchestrator.face.driver import FaceDriver
from orchestrator.models.ports import (
    F32,
    I16,
    FloorEstimate,
    LlmRequest,
    RenderedFrames,
    SpeechChunk,
    Transcript,
)
from orchestrator.perception.pipeline import PerceptionSession
from orchestrator.perception.prosody_features import N_FEATURES
from orchestrator.session.base import Control
from orchestrator.session.conversation import ConversationSession
from orchestrator.session.persona import Persona
from orchestrator.speech.gate import Heard
from tests.recording import RecordingOutlet

SR = 16000
CHUNK = 320  # 20 ms
WORDS = {3000: "what time is it", 5000: "and tomorrow", 7000: "thanks bye", 2000: "mm hm"}


class FakeModels:
    """Stands in for Triton (every model a session calls); `fail` names the models that raise."""

    def __init__(self, *, reply: str = "Sure, it is noon.", speech_s: float = 0.4) -> None:
        self.reply = reply
        self.speech_s = speech_s  # TTS audio per clause
        self.fail: set[str] = set()
        self.calls: dict[str, int] = {}
        self.llm_requests: list[LlmRequest] = []

    def _call(self, model: str) -> None:
        self.calls[model] = self.calls.get(model, 0) + 1
        if model in self.fail:
            raise ModelUnavailable(f"model {model!r} failed: fake failure")

    async def vad(self, audio: I16, state: F32) -> tuple[float, F32]:
        self._call("vad")
        return (1.0 if np.abs(audio[-512:]).mean() > 500 else 0.0), state

    async def floor(self, audio: I16, pause_samples: int, text: str, context: str) -> FloorEstimate:
        self._call("floor")
        return self._estimate(pause_samples)

    async def fuse(self, acoustics: FloorEstimate, pause_samples: int, text: str, context: str) -> FloorEstimate:
        self._call("floor")
        return self._estimate(pause_samples)

    @staticmethod
    def _estimate(pause_samples: int) -> FloorEstimate:
        # unsure early in a pause (a tentative end: speculation starts), sure after 250 ms (the commit)
        p = 0.5 if pause_samples < 0.25 * SR else 0.95
        return FloorEstimate(p_yield=p, p_turn=p, prosody=np.zeros(8, dtype=np.float32))

    async def transcribe(self, audio: I16, prompt: str = "", *, word_timings: bool = True) -> Transcript:
        self._call("asr")
        await asyncio.sleep(0)
        loudest = int(np.abs(audio.astype(np.int32)).max()) if audio.size else 0
        return Transcript(WORDS.get(loudest, ""))

    async def generate(self, request: LlmRequest) -> AsyncIterator[str]:
        self.llm_requests.append(request)
        self._call("llm")
        for piece in self.reply.split(" "):
            await asyncio.sleep(0)
            yield piece + " "

    async def synthesize(self, text: str, voice: str = "") -> AsyncIterator[SpeechChunk]:
        self._call("tts")
        await asyncio.sleep(0)
        yield SpeechChunk(pcm=np.full(round(self.speech_s * SR), 900, dtype=np.int16), text=text.strip())

    async def face_motion(self, request_json: str) -> F32:
        self._call("face_motion")
        return np.zeros((1, 4), dtype=np.float32)

    async def render_frames(
        self, face: str, params: F32, width: int, height: int, quality: int
    ) -> AsyncIterator[RenderedFrames]:
        self._call("face_render")
        yield RenderedFrames(0, tuple(b"jpeg" for _ in range(params.shape[0])))

    async def voice_features(self, frames: I16) -> F32:
        self._call("perception_audio")
        return np.zeros((frames.shape[0], N_FEATURES), dtype=np.float32)

    async def analyze_frame(self, image: bytes) -> dict[str, Any]:
        self._call("perception_face")
        return {"faces": 0, "width": 64, "height": 64}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def speech(amplitude: int, seconds: float) -> I16:
    n = round(seconds * SR)
    return np.where(np.arange(n) % 2 == 0, amplitude, -amplitude).astype(np.int16)


def silence(seconds: float) -> I16:
    return np.zeros(round(seconds * SR), dtype=np.int16)


def persona(**kw: Any) -> Persona:
    return Persona(id="t", name="T", system_prompt="Be brief.", max_tokens=32, **kw)


def session(
    models: FakeModels, *, speculation: bool = True, settings: Settings | None = None, **kw: Any
) -> tuple[ConversationSession, RecordingOutlet, Clock]:
    out, clock = RecordingOutlet(), Clock()
    s = ConversationSession(
        models,
        models,
        settings or Settings(),
        persona(),
        out,
        speculation=speculation,
        echo_suppression=False,
        name="t",
        clock=clock,
        **kw,
    )
    return s, out, clock


async def play(s: ConversationSession, clock: Clock, audio: I16, *, settle: int = 4) -> None:
    """Send `audio` in 20 ms chunks at (virtual) real time, letting the session's tasks run between chunks."""
    for i in range(0, audio.shape[0], CHUNK):
        clock.t += CHUNK / SR
        await s.audio(audio[i : i + CHUNK].tobytes(), clock())
        for _ in range(settle):
            await asyncio.sleep(0)


def of(out: RecordingOutlet, cls: type[Any]) -> list[Any]:
    return [e for e in out.events if isinstance(e, cls)]


def floor_kinds(out: RecordingOutlet) -> list[str]:
    return [e.kind for e in out.events if isinstance(e, FloorEvent)]


def heard_audio(out: RecordingOutlet, reply_id: int) -> float:
    return sum(len(pcm) // 2 for pcm, rid, _ in out.audio_out if rid == reply_id) / SR


# ---- a turn answered --------------------------------------------------------------------------------------


async def test_a_turn_is_answered_and_both_turns_enter_the_history() -> None:
    models = FakeModels()
    s, out, clock = session(models, speculation=False)
    await play(s, clock, np.concatenate([silence(0.5), speech(3000, 1.0), silence(2.0)]))
    await s.finish()
    assert floor_kinds(out)[:2] == ["speech_start", "speech_end"] and "eot_commit" in floor_kinds(out)
    [user] = of(out, UserTurn)
    assert user.text == "what time is it" and user.turn == 0
    [started] = of(out, ReplyStarted)
    assert not started.speculative and started.transcript == "what time is it"
    [speaking] = of(out, ReplicaSpeakingStart)
    assert speaking.reply_id == started.reply_id and not speaking.from_speculation
    assert speaking.t >= user.t  # released at the commit, never before
    assert speaking.latency.llm_first_token_ms is not None and speaking.latency.tts_first_chunk_ms is not None
    [stop] = of(out, ReplicaSpeakingStop)
    assert not stop.interrupted and stop.spoken_text == "Sure, it is noon."
    [replica] = of(out, ReplicaTurn)
    assert replica.text == "Sure, it is noon." and not replica.interrupted
    assert heard_audio(out, started.reply_id) == pytest.approx(models.speech_s * models.calls["tts"], abs=1e-3)
    first_t = min(t for _, rid, t in out.audio_out if rid == started.reply_id)
    assert first_t == pytest.approx(speaking.t, abs=1e-3)  # the audio sits where the replica started speaking
    assert [(t.role, t.text) for t in s.dialogue.turns] == [
        ("user", "what time is it"),
        ("assistant", "Sure, it is noon."),
    ]
    assert not [e for e in out.events if isinstance(e, ErrorEvent)]


async def test_a_user_who_hangs_up_stops_the_replica_where_it_was_heard() -> None:
    models = FakeModels()
    s, out, clock = session(models, speculation=False)
    await play(s, clock, np.concatenate([silence(0.5), speech(3000, 1.0), silence(0.5)]))
    assert of(out, ReplicaSpeakingStart) and not of(out, ReplicaSpeakingStop)  # the reply is being heard
    calls = dict(models.calls)
    await s.finish(left=True)
    [started] = of(out, ReplyStarted)
    [stop] = of(out, ReplicaSpeakingStop)
    assert stop.interrupted  # stopped where it was, not played out to nobody
    [replica] = of(out, ReplicaTurn)
    assert replica.interrupted and [t.role for t in s.dialogue.turns] == ["user", "assistant"]
    assert models.calls == calls  # nothing more was generated or spoken after the hang-up
    assert out.cuts and out.cuts[-1][0] == started.reply_id  # what had been sent ahead is cut off


async def test_the_fusion_reads_the_words_of_the_pause_only_and_at_once() -> None:
    class Reading(FakeModels):
        def __init__(self) -> None:
            super().__init__()
            self.read: list[tuple[str, int]] = []  # (text, pause samples) of each floor evaluation

        async def floor(self, audio: I16, pause_samples: int, text: str, context: str) -> FloorEstimate:
            self.read.append((text, pause_samples))
            return await super().floor(audio, pause_samples, text, context)

        async def fuse(self, acoustics: FloorEstimate, pause_samples: int, text: str, context: str) -> FloorEstimate:
            self.read.append((text, pause_samples))
            return await super().fuse(acoustics, pause_samples, text, context)

        async def transcribe(self, audio: I16, prompt: str = "", *, word_timings: bool = True) -> Transcript:
            heard = await super().transcribe(audio, prompt, word_timings=word_timings)
            return heard if word_timings else Transcript("what time")  # a partial lacks the last words

    models = Reading()
    s, _, clock = session(models, speculation=False)
    await play(s, clock, np.concatenate([silence(0.3), speech(3000, 2.0), silence(1.0)]))
    await s.finish()
    assert models.calls["asr"] >= 2  # partials were decoded while the user spoke ...
    texts = [text for text, _ in models.read]
    assert set(texts) == {"", "what time is it"}  # ... but the fusion only ever read the pause's own final
    assert texts.index("what time is it") > 0  # the acoustics came first, the words when they arrived


async def test_the_floor_events_reach_the_client_before_anything_they_cause() -> None:
    s, out, clock = session(FakeModels(), speculation=False)
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(2.0)]))
    await s.finish()
    types = out.types()
    assert types.index("eot_commit") < types.index("user_turn") < types.index("reply_started")
    assert types.index("transcript") < types.index("user_turn")  # the words before the turn built on them


# ---- speculation --------------------------------------------------------------------------------------------


async def test_a_speculative_reply_is_released_at_the_commit() -> None:
    s, out, clock = session(FakeModels())
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(2.0)]))
    await s.finish()
    types = out.types()
    [started] = of(out, ReplyStarted)
    assert started.speculative and types.index("eot_tentative") < types.index("reply_started")
    assert types.index("reply_started") < types.index("eot_commit")  # prepared while the floor was undecided
    [speaking] = of(out, ReplicaSpeakingStart)
    assert speaking.reply_id == started.reply_id and speaking.from_speculation
    assert s.machine.released_from_speculation == 1 and s.machine.wasted == 0


async def test_a_speculation_is_cancelled_when_the_user_goes_on() -> None:
    models = FakeModels()
    s, out, clock = session(models)
    audio = np.concatenate([speech(3000, 1.0), silence(0.2), speech(5000, 0.8), silence(2.0)])
    await play(s, clock, audio)
    await s.finish()
    cancelled = of(out, ReplyCancelled)
    assert cancelled and cancelled[0].reason == "user_continued"
    assert "eot_cancel" in floor_kinds(out)
    [user] = of(out, UserTurn)  # one turn: the pause was a hold
    [speaking] = of(out, ReplicaSpeakingStart)
    assert speaking.reply_id not in {c.reply_id for c in cancelled}  # the cancelled reply is never heard
    assert {rid for _, rid, _ in out.audio_out} == {speaking.reply_id}
    assert user.t <= speaking.t


# ---- interruptions ------------------------------------------------------------------------------------------


async def test_a_barge_in_stops_the_replica_and_what_was_heard_is_the_replica_turn() -> None:
    models = FakeModels(speech_s=3.0)  # a long reply, for the user to talk over
    s, out, clock = session(models, speculation=False)
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(1.0)]))
    [speaking] = of(out, ReplicaSpeakingStart)
    await play(s, clock, np.concatenate([speech(7000, 1.2), silence(2.0)]))
    await s.finish()
    stops = of(out, ReplicaSpeakingStop)
    assert stops[0].reply_id == speaking.reply_id and stops[0].interrupted
    assert "barge_in" in floor_kinds(out) and out.types().count("replica_paused") == 1
    turns = of(out, ReplicaTurn)
    assert turns[0].interrupted and turns[0].text == stops[0].spoken_text
    assert turns[0].text != "Sure, it is noon."  # only the part heard
    # the client was told to drop the rest (the outlet's cut) at the pause, where the user started speaking
    assert out.cuts and out.cuts[0][0] == speaking.reply_id
    users = of(out, UserTurn)
    assert [u.text for u in users] == ["what time is it", "thanks bye"]
    assert len(of(out, ReplicaSpeakingStart)) == 2  # and the new turn is answered
    assert [t.role for t in s.dialogue.turns] == ["user", "assistant", "user", "assistant"]


async def test_a_backchannel_pauses_the_replica_which_resumes_after_a_quiet_moment() -> None:
    models = FakeModels(speech_s=2.0)
    s, out, clock = session(models, speculation=False)
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(0.8)]))
    await play(s, clock, np.concatenate([speech(2000, 0.3), silence(3.0)]))  # "mm-hm"
    await s.finish()
    assert "backchannel" in floor_kinds(out)
    types = out.types()
    paused, resumed = types.index("replica_paused"), types.index("replica_resumed")
    assert paused < types.index("backchannel") < resumed
    t_back = next(e.t for e in out.events if isinstance(e, FloorEvent) and e.kind == "backchannel")
    t_resumed = next(e.t for e in out.events if e.type == "replica_resumed")
    assert t_resumed == pytest.approx(t_back + 0.3, abs=0.03)  # after 0.3 s of quiet (the reply machine's rule)
    [turn] = of(out, ReplicaTurn)
    assert not turn.interrupted and turn.text == "Sure, it is noon."
    assert len(of(out, UserTurn)) == 1


async def test_an_interrupt_stops_the_replica_at_once() -> None:
    models = FakeModels(speech_s=3.0)
    s, out, clock = session(models, speculation=False)
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(1.0)]))
    await s.control(Control.INTERRUPT)
    [stop] = of(out, ReplicaSpeakingStop)
    assert stop.interrupted and stop.t == pytest.approx(s.now, abs=1e-3)
    await play(s, clock, silence(1.0))
    await s.finish()
    assert heard_audio(out, stop.reply_id) < 1.0 and of(out, ReplicaTurn)[0].interrupted


# ---- models failing: each is reported, and the session goes on where it can ---------------------------------


@pytest.mark.parametrize("model", ["vad", "floor"])
async def test_a_failing_floor_model_ends_the_session_with_its_typed_error(model: str) -> None:
    models = FakeModels()
    s, _, clock = session(models)
    models.fail.add(model)
    with pytest.raises(ModelUnavailable):  # the transport reports it as the fatal error that ends the session
        await play(s, clock, np.concatenate([speech(3000, 1.0), silence(1.0)]))
    await s.close()


@pytest.mark.parametrize("model", ["asr", "llm", "tts"])
async def test_a_failing_turn_model_is_reported_and_the_next_turn_is_answered(model: str) -> None:
    models = FakeModels()
    s, out, clock = session(models, speculation=False)
    models.fail.add(model)
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(2.0)]))
    errors = of(out, ErrorEvent)
    assert errors and {e.code for e in errors} == {"model_unavailable"}
    assert not any(e.fatal for e in errors) and model in errors[0].message
    assert not of(out, ReplicaSpeakingStart)  # nothing to say for that turn
    if model != "asr":  # (without a transcript there was no turn to answer)
        assert [c.reason for c in of(out, ReplyCancelled)] == ["failed"]
    models.fail.clear()
    await play(s, clock, np.concatenate([speech(5000, 0.8), silence(2.0)]))
    await s.finish()
    assert of(out, ReplicaSpeakingStart), "the session did not recover"
    assert of(out, ReplicaTurn)[-1].text == "Sure, it is noon."


class BrokenFace(FakeModels):
    async def face_motion(self, request_json: str) -> F32:
        self._call("face_motion")
        raise ModelUnavailable("model 'face_motion' failed: fake failure")


async def test_a_failing_face_is_reported_at_once_and_the_conversation_goes_on() -> None:
    models = BrokenFace()
    out, clock = RecordingOutlet(), Clock()
    face_settings = dataclasses.replace(FaceSettings(), fps=25.0)
    face = FaceDriver(models, face_settings, out, face="astronaut", emotion="neutral", name="t")
    s = ConversationSession(
        models, models, Settings(), persona(), out, speculation=False, echo_suppression=False, clock=clock, face=face
    )
    await s.start()
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(2.0)]))
    errors = of(out, ErrorEvent)
    assert [e.code for e in errors] == ["model_unavailable"] and "face_motion" in errors[0].message
    assert errors[0].t < 1.0 and not errors[0].fatal  # reported when it happened, not at the end
    await s.finish()
    assert of(out, ReplicaTurn)[0].text == "Sure, it is noon."  # the voice went on without the face
    assert out.types().count("error") == 1  # and not reported twice


class BrokenCamera(FakeModels):
    async def analyze_frame(self, image: bytes) -> dict[str, Any]:
        self._call("perception_face")
        raise ModelUnavailable("model 'perception_face' failed: fake failure")


async def test_a_failing_camera_is_reported_and_the_conversation_goes_on() -> None:
    models = BrokenCamera()
    out, clock = RecordingOutlet(), Clock()
    perception = PerceptionSession(models, out.event, name="t", clock=clock)
    s = ConversationSession(
        models,
        models,
        Settings(),
        persona(),
        out,
        speculation=False,
        echo_suppression=False,
        clock=clock,
        perception=perception,
    )
    await s.start()
    s.video(b"frame", 0.1, clock())
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(2.0)]))
    await s.finish()
    errors = of(out, ErrorEvent)
    assert errors and errors[0].code == "model_unavailable" and "perception_face" in errors[0].message
    assert of(out, ReplicaTurn)[0].text == "Sure, it is noon."


# ---- the greeting and the reply guard ------------------------------------------------------------------------


async def test_the_greeting_is_spoken_at_once_and_the_user_is_answered_after_it() -> None:
    models = FakeModels()
    out, clock = RecordingOutlet(), Clock()
    s = ConversationSession(
        models,
        models,
        Settings(),
        persona(greeting="Hi, I'm Ava. How can I help?"),
        out,
        speculation=False,
        echo_suppression=False,
        clock=clock,
    )
    await s.start()
    await play(s, clock, np.concatenate([silence(1.0), speech(3000, 1.0), silence(2.0)]))
    await s.finish()
    first = of(out, ReplicaSpeakingStart)[0]
    replies = [r for r in models.llm_requests if r.max_tokens]  # not a prefill
    assert first.t < 0.2 and len(replies) == 1  # spoken without the LLM, right at the start
    # Each replica turn, once committed, has the model evaluate the history (a prefill, while the user speaks):
    # the reply's prompt then starts with what is already in the model's cache.
    warm = [r for r in models.llm_requests if r.request_id.endswith("-warm")]
    assert [w.messages[-1].content for w in warm] == ["Hi, I'm Ava. How can I help?", "Sure, it is noon."]
    assert warm[0].max_tokens == 0 and replies[0].messages[: len(warm[0].messages)] == warm[0].messages
    turns = of(out, ReplicaTurn)
    assert turns[0].text == "Hi, I'm Ava. How can I help?" and turns[1].text == "Sure, it is noon."
    assert [t.role for t in s.dialogue.turns] == ["assistant", "user", "assistant"]


class Narrator(FakeModels):
    """An LLM that reads its notes out and repeats itself."""

    async def generate(self, request: LlmRequest) -> AsyncIterator[str]:
        self.llm_requests.append(request)
        self._call("llm")
        for piece in ["The user sounds hesitant. ", "Sure, it is noon. ", "Sure, it is noon. "]:
            await asyncio.sleep(0)
            yield piece


async def test_narration_and_repetition_are_never_spoken() -> None:
    from orchestrator.events import ReplyClauseDropped

    models = Narrator()
    s, out, clock = session(models, speculation=False)
    s.dialogue.perception_note = "[perception] The user sounds hesitant."
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(2.0)]))
    await s.finish()
    [turn] = of(out, ReplicaTurn)
    assert turn.text == "Sure, it is noon."
    assert [(d.reason, d.text) for d in of(out, ReplyClauseDropped)] == [
        ("narration", "The user sounds hesitant."),
        ("repetition", "Sure, it is noon."),
    ]
    system = models.llm_requests[0].messages
    assert any(m.role == "system" and m.content.startswith("NOTE: They sound hesitant") for m in system)


class Speaker(FakeModels):
    """Records what the voice was asked to say."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.said: list[str] = []

    async def synthesize(self, text: str, voice: str = "") -> AsyncIterator[SpeechChunk]:
        self.said.append(text)
        async for chunk in super().synthesize(text, voice):
            yield chunk


@pytest.mark.parametrize("end", [".", ""])
async def test_a_first_phrase_is_spoken_as_a_clause_that_goes_on_and_written_as_the_model_wrote_it(end: str) -> None:
    """(A reply's end is spoken as an end, even without punctuation.)"""
    models = Speaker(reply=f"You can cancel your gym membership by calling the front desk{end}")
    settings = Settings(tts=dataclasses.replace(Settings().tts, first_phrase_chars=24))
    s, out, clock = session(models, speculation=False, settings=settings)
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(2.0)]))
    await s.finish()
    assert models.said == ["You can cancel your gym membership,", f"by calling the front desk{end}"]
    [turn] = of(out, ReplicaTurn)
    assert turn.text == f"You can cancel your gym membership by calling the front desk{end}"
    assert [c.text for c in of(out, ReplicaCaption)] == [
        "You can cancel your gym membership",
        f"by calling the front desk{end}",
    ]


class SlowStarter(FakeModels):
    """A voice that opens every line with 0.5 s of quiet, as piper's duration model now and then does."""

    async def synthesize(self, text: str, voice: str = "") -> AsyncIterator[SpeechChunk]:
        self._call("tts")
        await asyncio.sleep(0)
        sound = np.full(round(self.speech_s * SR), 900, dtype=np.int16)
        yield SpeechChunk(pcm=np.concatenate([np.zeros(SR // 2, dtype=np.int16), sound]), text=text.strip())


async def test_a_reply_starts_with_its_first_sound_and_later_lines_keep_only_the_usual_quiet() -> None:
    models = SlowStarter(reply="Sure, it is noon. Anything else?")
    s, out, clock = session(models, speculation=False)
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(3.0)]))
    await s.finish()
    [started] = of(out, ReplyStarted)
    sent = np.concatenate(
        [np.frombuffer(pcm, dtype=np.int16) for pcm, rid, _ in out.audio_out if rid == started.reply_id]
    )
    lines = models.calls["tts"]
    assert lines >= 2
    assert int(np.flatnonzero(sent)[0]) == round(0.01 * SR)  # 10 ms before the first sound, not 500
    assert len(sent) == lines * round(models.speech_s * SR) + round(0.01 * SR) + (lines - 1) * round(0.07 * SR)


class Rambler(FakeModels):
    async def generate(self, request: LlmRequest) -> AsyncIterator[str]:
        self._call("llm")
        yield "The caller is confused."


async def test_a_reply_with_nothing_fit_to_say_asks_again_rather_than_stay_silent() -> None:
    s, out, clock = session(Rambler(), speculation=False)
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(2.0)]))
    await s.finish()
    assert of(out, ReplicaTurn)[0].text == "Sorry, could you say that again?"


# ---- without replies: the floor and perceive sessions -----------------------------------------------------


async def test_without_replies_the_client_marks_the_replica_speaking() -> None:
    s, out, clock = session(FakeModels(), replies=False)
    await s.control(Control.REPLICA_SPEAKING_START)
    await play(s, clock, np.concatenate([speech(7000, 1.0), silence(1.5)]))
    await s.control(Control.REPLICA_SPEAKING_STOP)
    await s.finish()
    assert "barge_in" in floor_kinds(out)  # speech over the (client's) replica
    assert not of(out, ReplyStarted) and not out.audio_out  # and nothing of its own
    assert [e.text for e in of(out, UserTurn)] == []  # no history is kept without replies


async def test_the_tests_run_in_milliseconds() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    s, _, clock = session(FakeModels())
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(2.0)]))
    await s.finish()
    assert loop.time() - t0 < 2.0  # a 3 s conversation, in virtual time


# ---- the walk of one audio chunk ----------------------------------------------------------------------------

# The stages a chunk passes through, in order (the session module itself is the hub that executes the actions
# between them; data classes and accessors are not stages).
STAGES = [
    "orchestrator.session.floor",  # VAD and the floor model
    "orchestrator.turns.floor",  # the floor machine decides
    "orchestrator.speech.gate",  # the event waits for its words, or goes on
    "orchestrator.turns.replies",  # the reply machine decides
    "orchestrator.session.dialogue",  # the user's turn is written
    "orchestrator.session.voice",  # the reply goes on the timeline
    "orchestrator.session.playback",  # and its audio out
]


async def test_one_chunk_walks_the_stages_in_order_from_audio_to_floor_event_to_reply_audio() -> None:
    import sys

    s, out, clock = session(FakeModels())
    audio = np.concatenate([speech(3000, 1.0), silence(2.0)])
    entered: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        module = frame.f_globals.get("__name__", "")
        if event == "call" and module in STAGES and module not in entered:
            entered.append(module)

    for i in range(0, audio.shape[0], CHUNK):
        entered.clear()
        before, audio_before = len(out.events), len(out.audio_out)
        clock.t += CHUNK / SR
        sys.setprofile(profile)
        try:
            await s.audio(audio[i : i + CHUNK].tobytes(), clock())
        finally:
            sys.setprofile(None)
        new = out.events[before:]
        if any(isinstance(e, FloorEvent) and e.kind == "eot_commit" for e in new):
            # this chunk's walk: a floor event out, the turn committed, the prepared reply released and heard
            assert [e.type for e in new] == ["eot_commit", "user_turn", "replica_speaking_start", "replica_caption"]
            assert len(out.audio_out) > audio_before
            assert entered == STAGES
            break
        for _ in range(4):
            await asyncio.sleep(0)
    else:
        pytest.fail("no commit")
    await s.close()


def test_the_session_echo_canceller_runs_on_its_own_block_size() -> None:
    from orchestrator.signal.echo import EchoCanceller

    s, _, _ = session(FakeModels(), settings=Settings())
    s2 = ConversationSession(FakeModels(), None, Settings(), persona(), RecordingOutlet(), echo_suppression=True)
    assert s.echo is None and s2.echo is not None
    # not the largest chunk a client may send (200 ms): that made its FFTs 4x larger and its adaptation 7x slower
    assert s2.echo.fft_size == EchoCanceller().fft_size


async def test_the_llm_model_option_overrides_the_personas_model_in_every_request() -> None:
    from orchestrator.session.factory import SessionSpec, build_session

    models = FakeModels()
    settings = Settings()
    spec = SessionSpec(floor=settings.floor, persona=persona(llm_model="qwen"), llm_model="smollm2-135m")
    s = build_session(spec, models, models, settings, RecordingOutlet(), name="t", clock=Clock())
    assert isinstance(s, ConversationSession) and s.dialogue.request("hi").model == "smollm2-135m"
    spec = dataclasses.replace(spec, llm_model="")
    s = build_session(spec, models, models, settings, RecordingOutlet(), name="t", clock=Clock())
    assert isinstance(s, ConversationSession) and s.dialogue.request("hi").model == "qwen"


async def test_without_a_greeting_the_system_prompt_is_warmed_at_the_start() -> None:
    models = FakeModels()
    s, _, _ = session(models, speculation=False)
    await s.start()
    await asyncio.sleep(0.01)  # the warm-up is a task of its own
    warm = [r for r in models.llm_requests if r.request_id.endswith("-warm")]
    assert len(warm) == 1 and warm[0].max_tokens == 0 and [m.role for m in warm[0].messages] == ["system"]
    await s.close()


@pytest.mark.parametrize("warm_words", [True, False])
async def test_the_users_words_are_evaluated_while_they_speak_before_the_reply_asks(warm_words: bool) -> None:
    models = FakeModels()
    s, out, clock = session(models, warm_words=warm_words)
    await play(s, clock, np.concatenate([silence(0.5), speech(3000, 1.0), silence(2.0)]))
    await s.finish()
    [started] = of(out, ReplyStarted)
    ids = [r.request_id for r in models.llm_requests]
    words = [r for r in models.llm_requests if r.request_id == "t-words"]
    reply = ids.index(f"t-{started.reply_id}")
    if not warm_words:
        assert not words
    else:
        # the partial transcript while they spoke, once: the final that followed was the same prompt
        assert len(words) == 1 and ids.index("t-words") < reply
        [w] = words
        assert w.max_tokens == 0 and w.messages[-1].content == "what time is it"
        assert w.messages == models.llm_requests[reply].messages  # the reply found all of it in the cache
    await s.close()


async def test_no_prefill_of_the_words_while_a_reply_is_committed_or_playing() -> None:
    """Words heard while the replica speaks come after its turn, which is not in the history yet: a prefill
    then would not be the next reply's prompt."""
    from orchestrator.turns.replies import Phase

    models = FakeModels(speech_s=2.0)
    s, _, clock = session(models)
    await play(s, clock, np.concatenate([silence(0.3), speech(3000, 1.0), silence(0.6)]))
    assert s.machine.phase is Phase.SPEAKING
    before = len(models.llm_requests)
    await s.heard(Heard("hold on a second", False, s.now))
    await asyncio.sleep(0)
    assert [r.request_id for r in models.llm_requests[before:] if r.request_id.endswith("-words")] == []
    await s.close()


class SlowPrefill(FakeModels):
    """A prefill of the user's words takes until `done` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.done = asyncio.Event()

    async def generate(self, request: LlmRequest) -> AsyncIterator[str]:
        if request.request_id.endswith("-words"):
            self.llm_requests.append(request)
            await self.done.wait()
            return
        async for piece in super().generate(request):
            yield piece


async def test_one_prefill_of_the_words_at_a_time_and_the_newest_words_next() -> None:
    models = SlowPrefill()
    s, _, _ = session(models)
    for text in ("so I", "so I was", "so I was charged", "so I was charged twice"):
        await s.heard(Heard(text, False, 1.0))
        await asyncio.sleep(0)
    assert [r.messages[-1].content for r in models.llm_requests] == ["so I"]  # the others wait for it
    models.done.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert [r.messages[-1].content for r in models.llm_requests] == ["so I", "so I was charged twice"]
    await s.heard(Heard("so I was charged twice", True, 1.2))  # the final: the same prompt, not sent again
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(models.llm_requests) == 2
    await s.close()


async def test_no_prefill_of_a_final_transcript_that_a_floor_decision_waits_for() -> None:
    """The final transcript of a pause whose `eot_tentative` (or commit) waits in the gate is followed at once by
    the reply: the reply evaluates the words itself instead of waiting for a prefill of them."""
    models = SlowPrefill()
    s, _, _ = session(models)
    s.gate.on_floor("speech_start", 0.5)
    s.gate.on_floor("speech_end", 1.5)
    await s.heard(Heard("so I was charged", True, 1.5))  # only the speech end waits: a prefill is worth it
    for _ in range(20):
        await asyncio.sleep(0)
    assert [r.messages[-1].content for r in models.llm_requests] == ["so I was charged"]
    models.done.set()
    for _ in range(20):
        await asyncio.sleep(0)
    s.gate.on_floor("eot_tentative", 1.6)
    await s.heard(Heard("so I was charged twice", True, 1.5))  # a reply is due: no prefill
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(models.llm_requests) == 1
    await s.close()


async def test_a_reply_longer_than_the_echo_horizon_plays_out_at_the_end_of_the_input() -> None:
    """At the end of the input the rest of the reply is sent at once; with the echo canceller on, a reply far
    longer than its horizon (20 s) once failed the session there."""
    animals = "fox owl bear wolf hare deer crow frog mole lynx seal swan toad wren yak boar carp dove eel goat"
    story = " ".join(f"Then the {a} {i} ran home." for i, a in enumerate(animals.split()))
    models = FakeModels(reply=story, speech_s=3.0)  # 20 sentences, 60 s of speech
    out, clock = RecordingOutlet(), Clock()
    long_persona = persona(max_sentences=40)
    s = ConversationSession(models, models, Settings(), long_persona, out, speculation=False, clock=clock)
    assert s.echo is not None
    await s.start()
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(2.0)]))
    await s.finish()
    sent_s = sum(len(pcm) for pcm, _, _ in out.audio_out) / 2 / SR
    assert sent_s >= 59.0 and not of(out, ErrorEvent)
    await s.close()


# ---- an ended session is freed at once ------------------------------------------------------------------------


async def test_an_ended_session_is_freed_by_reference_counting_with_its_buffers() -> None:
    """Every part that calls back into the session (the floor, the transcriber, the reply runner, perception,
    the face) holds it weakly: once the transport lets go of an ended session, it and its buffers (the echo
    canceller's rings alone are 6 MiB) are freed at once. A reference cycle would leave them to the cycle
    collector, whose full passes are minutes apart under load (a 10-minute soak grew ~7 MiB a session)."""
    import gc
    import weakref

    models = FakeModels()
    out, clock = RecordingOutlet(), Clock()
    face = FaceDriver(models, dataclasses.replace(FaceSettings(), fps=25.0), out, face="a", emotion="neutral", name="t")
    perception = PerceptionSession(models, out.event, name="t", clock=clock)
    s = ConversationSession(
        models, models, Settings(), persona(), out, echo_suppression=True, clock=clock, face=face, perception=perception
    )
    gc.collect()
    gc.disable()
    try:
        await s.start()
        s.video(b"frame", 0.1, clock())
        await play(s, clock, np.concatenate([silence(0.5), speech(3000, 1.0), silence(2.0), speech(5000, 0.8)]))
        await play(s, clock, silence(2.0))
        await s.finish()
        assert of(out, ReplicaTurn) and s.echo is not None
        echo = weakref.ref(s.echo)
        session = weakref.ref(s)
        del s, face, perception
        assert session() is None and echo() is None, [type(r).__qualname__ for r in gc.get_referrers(session())]
    finally:
        gc.enable()
