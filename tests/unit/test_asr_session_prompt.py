"""What the session primes the recogniser with: the persona's vocabulary, never the replica's words (issue 12:
prompted with the replica's last reply, Whisper began user turns with it)."""

from __future__ import annotations

import dataclasses

import numpy as np

from orchestrator.config import Settings
from orchestrator.events import ReplicaTurn, UserTurn
from orchestrator.models.ports import I16, Transcript
from orchestrator.session.conversation import ConversationSession
from orchestrator.speech.prompt import decoder_prompt
from tests.recording import RecordingOutlet
from tests.unit.test_conversation_session import Clock, FakeModels, of, persona, play, silence, speech

VOCABULARY = ("Riverside Family Clinic", "Dr. Patel", "Blue Cross")


class PromptedModels(FakeModels):
    def __init__(self) -> None:
        super().__init__(reply="Sure, I can see Dr. Patel is free at noon.")
        self.prompts: list[str] = []

    async def transcribe(self, audio: I16, prompt: str = "", *, word_timings: bool = True) -> Transcript:
        self.prompts.append(prompt)
        return await super().transcribe(audio, prompt, word_timings=word_timings)


async def test_every_decode_is_primed_with_the_vocabulary_and_never_with_the_replicas_reply() -> None:
    models = PromptedModels()
    out, clock = RecordingOutlet(), Clock()
    s = ConversationSession(
        models,
        models,
        Settings(),
        dataclasses.replace(persona(), vocabulary=VOCABULARY),
        out,
        speculation=False,
        echo_suppression=False,
        name="t",
        clock=clock,
    )
    turn = np.concatenate([speech(3000, 1.2), silence(3.0)])
    await play(s, clock, np.concatenate([silence(0.5), turn, turn]))
    await s.finish()
    assert len(of(out, UserTurn)) == 2 and of(out, ReplicaTurn)  # the replica spoke between the two turns
    assert models.prompts and set(models.prompts) == {decoder_prompt(VOCABULARY)}
    assert decoder_prompt(VOCABULARY) == "Riverside Family Clinic, Dr. Patel, Blue Cross."


async def test_a_persona_without_vocabulary_decodes_unprompted() -> None:
    models = PromptedModels()
    out, clock = RecordingOutlet(), Clock()
    s = ConversationSession(
        models, models, Settings(), persona(), out, speculation=False, echo_suppression=False, name="t", clock=clock
    )
    turn = np.concatenate([speech(3000, 1.2), silence(3.0)])
    await play(s, clock, np.concatenate([silence(0.5), turn, turn]))
    await s.finish()
    assert of(out, ReplicaTurn) and set(models.prompts) == {""}
