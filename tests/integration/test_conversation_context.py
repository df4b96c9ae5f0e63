"""A context change reaches a live conversation: `ConversationSession.set_context` on real Triton models
(vad, floor, asr, llm, tts) cancels a speculative reply built on the old context, and the reply the user
hears is built on the new one."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from duet.wav import CHUNK_SAMPLES, SAMPLE_RATE, chunks
from orchestrator.config import Settings
from orchestrator.models.ports import LlmRequest
from orchestrator.models.triton import TritonModels
from orchestrator.session.conversation import ConversationSession
from orchestrator.session.persona import load_persona
from orchestrator.turns.replies import Phase
from tests.recording import RecordingOutlet

pytestmark = pytest.mark.integration

CONTEXT = "The caller's name is Alex and their account number is 4471."


class RecordingLLM:
    """The real `llm` model (through TritonModels), with each request kept: which context a reply saw."""

    def __init__(self, models: TritonModels) -> None:
        self.models = models
        self.requests: dict[str, LlmRequest] = {}

    def generate(self, request: LlmRequest) -> AsyncIterator[str]:
        self.requests[request.request_id] = request
        return self.models.generate(request)


async def converse(triton: Any, pcm: npt.NDArray[np.int16]) -> tuple[list[dict[str, Any]], RecordingLLM]:
    settings = Settings()
    # A hair-trigger tentative threshold: every pause starts a speculative reply for the context to cancel; and
    # no commit before 800 ms of pause, so the speculation lasts (the floor now commits as soon as the pause's
    # words arrive, often with its tentative).
    floor = dataclasses.replace(settings.floor, tentative_threshold=0.05, min_commit_pause_ms=800)
    models = TritonModels(triton.grpc_url, timeout_s=30.0)
    llm = RecordingLLM(models)
    out = RecordingOutlet()
    marks: list[tuple[int, dict[str, Any]]] = []  # (events before it, mark)
    session = ConversationSession(
        models,
        llm,
        settings,
        load_persona(settings.conversation.personas_dir, "default"),
        out,
        floor=floor,
        name="ctx-test",
    )
    loop = asyncio.get_running_loop()
    t0, sent, changed = loop.time(), 0, False
    silence = np.zeros(CHUNK_SAMPLES, dtype=np.int16)
    try:
        audio = np.concatenate([pcm, np.tile(silence, 150)])  # 3 s after the user for the last reply
        for c in chunks(audio.tobytes()):
            await asyncio.sleep(max(t0 + sent / SAMPLE_RATE - loop.time(), 0))  # real time, as a live user
            await session.audio(c)
            sent += len(c) // 2
            if not changed and session.machine.phase is Phase.SPECULATING:
                # an `overwrite_context` interaction arrives while a speculative reply is being prepared
                changed = True
                mark = {"type": "test_context_set", "t": session.now, "reply_id": session.machine.active_reply}
                marks.append((len(out.events), mark))
                await session.set_context(CONTEXT)
        await session.finish()
    finally:
        await session.close()
        await models.close()
    events = out.dicts
    for at, mark in reversed(marks):
        events.insert(at, mark)
    return events, llm


def test_context_change_cancels_the_speculative_reply_and_the_heard_one_uses_the_new_context(
    triton: Any, sample_audio: npt.NDArray[np.int16]
) -> None:
    events, llm = asyncio.run(converse(triton, sample_audio))
    mark = next(e for e in events if e["type"] == "test_context_set")
    old, at = mark["reply_id"], events.index(mark)
    after = events[at + 1 :]
    assert after[0] == {
        "type": "reply_cancelled",
        "t": round(mark["t"], 4),
        "reply_id": old,
        "reason": "context_changed",
        "tokens": after[0]["tokens"],
        "generating": after[0]["generating"],
    }
    heard = [e["reply_id"] for e in after if e["type"] == "replica_speaking_start"]
    assert heard and old not in heard
    for rid in heard:  # every reply heard after the change was built on the new context
        system = llm.requests[f"ctx-test-{rid}"].messages[0]
        assert system.role == "system" and CONTEXT in system.content
    cancelled = llm.requests.get(f"ctx-test-{old}")  # (None: cancelled before its request was even sent)
    assert cancelled is None or CONTEXT not in cancelled.messages[0].content
    assert not [e for e in events if e["type"] == "error"]
