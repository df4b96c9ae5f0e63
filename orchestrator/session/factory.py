"""One factory for every kind of session: a transport says what the client asked for, and gets a `Session`.

Modes:
- `conversation`: floor, streaming ASR, replies (LLM → TTS → playback), perception unless turned off, and the
  replica's face with `video`;
- `perceive`: floor, ASR and perception, no replies (`duet perceive`);
- `floor`: floor events and transcripts, no replies (`duet turns`; clients that run their own dialogue);
- `acoustic`: floor events from audio alone, no ASR: the cheapest, and decisions independent of send speed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.config import FaceSettings, FloorSettings, Settings
from orchestrator.errors import BadOption
from orchestrator.face.driver import FaceDriver
from orchestrator.models.ports import LanguageModel, SessionModels
from orchestrator.perception.pipeline import PerceptionSession
from orchestrator.session.base import Outlet, Session
from orchestrator.session.conversation import ConversationSession
from orchestrator.session.floor import FloorSession
from orchestrator.session.grounding import ReplyLayer
from orchestrator.session.persona import Persona

MODES = ("conversation", "floor", "acoustic", "perceive")
PACED_MODES = ("conversation", "perceive")  # sessions on the live clock; floor/acoustic may run ahead


@dataclass(frozen=True)
class SessionSpec:
    """What a client asked for (validated `Start.options`), and who it talks to."""

    floor: FloorSettings
    mode: str = "conversation"
    persona: Persona | None = None  # none for `acoustic`
    speculation: bool | None = None  # None: the persona's and the server's setting
    warm_words: bool | None = None  # the `warm_words` option (None: the server's `llm.warm_words`)
    echo_suppression: bool | None = None
    video: FaceSettings | None = None  # `video=true`: stream the replica's face
    perception: bool = False  # hear and see the user
    llm_model: str = ""  # the `llm_model` option: which served LLM replies come from ("" = the persona's)
    llm: LanguageModel | None = None  # the persona's own LLM endpoint (a conversation's), instead of the server's
    # the persona's conversational flow: turn_taking_patience, replica_interruptibility (None: medium)
    flow: tuple[str | None, str | None] = (None, None)
    priority: int = 0  # Triton request priority of its models' requests (1: a `priority` tenant; 0: default)
    playback_lead_ms: int | None = None  # the `playback_lead_ms` option (None: the server's setting)
    # a conversation's documents, memories, guardrails, objectives and tools (one per session: not shared)
    layer: ReplyLayer | None = None

    @property
    def paced(self) -> bool:
        """Whether the session runs on the live clock (its audio is read at real time beyond a burst)."""
        return self.mode in PACED_MODES


def build_session(
    spec: SessionSpec,
    models: SessionModels,
    llm: LanguageModel | None,
    settings: Settings,
    outlet: Outlet,
    *,
    name: str,
    clock: Callable[[], float] = time.perf_counter,
) -> Session:
    max_chunk_ms = settings.server.max_audio_chunk_ms
    llm = spec.llm or llm
    if spec.playback_lead_ms is not None:
        conversation = dataclasses.replace(settings.conversation, playback_lead_ms=spec.playback_lead_ms)
        settings = dataclasses.replace(settings, conversation=conversation)
    if spec.mode == "acoustic" or spec.persona is None:
        return FloorSession(models, spec.floor, outlet.event, max_chunk_ms=max_chunk_ms, clock=clock, name=name)
    if spec.mode == "conversation" and llm is None:
        raise BadOption("this server has no LLM configured; use mode=floor")
    persona = spec.persona if not spec.llm_model else dataclasses.replace(spec.persona, llm_model=spec.llm_model)
    face = None
    if spec.video is not None:
        face = FaceDriver(
            models,
            spec.video,
            outlet,
            face=persona.face or spec.video.face,
            emotion=persona.emotion or spec.video.emotion,
            name=name,
        )
    perception = None
    if spec.perception:
        perception = PerceptionSession(models, outlet.event, tools=persona.perception_tools, name=name, clock=clock)
    session = ConversationSession(
        models,
        llm,
        settings,
        persona,
        outlet,
        floor=spec.floor,
        speculation=spec.speculation,
        warm_words=spec.warm_words,
        echo_suppression=spec.echo_suppression,
        replies=spec.mode == "conversation",
        name=name,
        clock=clock,
        face=face,
        perception=perception,
        layer=spec.layer if spec.mode == "conversation" else None,
    )
    if spec.flow != (None, None):
        session.set_flow(*spec.flow)  # type: ignore[arg-type]  # (levels checked by the API's schema)
    return session
