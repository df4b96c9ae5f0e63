"""Every event a session can send a client, as a typed, frozen dataclass: the session's vocabulary.

The floor machine, the reply machine, perception and the face make these; nothing inside the orchestrator
builds an event dict. The API edge (`orchestrator.api.wire`) turns an event into its wire form, the one
JSON object per event of DESIGN.md: `{"type": ..., "t": ..., <fields in declaration order>}`. A field
declared with `optional()` is left out of the object while it is None (the floor events' `p_yield`,
`reason`, `duration_ms`, a reply's latency figures not measured); every other field is always present,
null included. `ErrorEvent` is the one event that travels as the stream's typed `Error` message.

Pure: no I/O; it imports only `orchestrator.errors`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from orchestrator.errors import DuetError

FloorKind = Literal[
    "speech_start", "speech_end", "eot_tentative", "eot_cancel", "eot_commit", "backchannel", "barge_in"
]
FLOOR_KINDS: tuple[FloorKind, ...] = (
    "speech_start",
    "speech_end",
    "eot_tentative",
    "eot_cancel",
    "eot_commit",
    "backchannel",
    "barge_in",
)


def optional() -> Any:
    """A field that defaults to None and is left out of the wire object while None."""
    return field(default=None, metadata={"optional": True})


class Event:
    """Base of every event; `type` names it on the wire."""

    type: ClassVar[str] = ""


# ---- the session's life ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionStarted(Event):
    type: ClassVar[str] = "session_started"
    t: float
    conversation_id: str


@dataclass(frozen=True)
class SessionEnded(Event):
    type: ClassVar[str] = "session_ended"
    t: float


@dataclass(frozen=True)
class ErrorEvent(Event):
    """A typed error (`orchestrator.errors`) at session time `t`. Non-fatal ones are reported and the session
    goes on (a model failed for one turn, a camera frame was unreadable); a fatal one ends it."""

    type: ClassVar[str] = "error"
    t: float
    code: str
    message: str
    fatal: bool = False

    @classmethod
    def of(cls, err: DuetError, t: float, *, fatal: bool = False) -> ErrorEvent:
        """The event reporting `err` (its message is already fit for a client) at session time `t`. A session
        that reports an error and goes on reports it as not fatal, whatever the error's own default."""
        return cls(t=round(t, 4), code=err.code, message=err.message, fatal=fatal)


# ---- the floor ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloorEvent(Event):
    """A floor decision (the stable format of DESIGN.md). `t` is the end, on the audio clock, of the last chunk
    the decision used; `compute_ms` the server's wall time from that chunk's arrival to the event (stamped
    by the session: the pure floor machine leaves it None)."""

    kind: FloorKind = field(metadata={"wire": False})  # on the wire as `type`
    t: float
    compute_ms: float | None = None
    reason: str | None = optional()  # eot_commit: "model" | "max_pause" | "end_of_stream"
    p_yield: float | None = optional()  # eot_tentative, eot_commit (by the model)
    duration_ms: float | None = optional()  # backchannel: how long the user spoke

    @property
    def type(self) -> str:  # type: ignore[override]  # (the kind is the wire type)
        return self.kind


# ---- the conversation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TranscriptEvent(Event):
    """The user's current turn as recognised so far (`final` at the end of each stretch of speech)."""

    type: ClassVar[str] = "transcript"
    t: float
    text: str
    final: bool


@dataclass(frozen=True)
class UserTurn(Event):
    type: ClassVar[str] = "user_turn"
    t: float
    turn: int
    text: str


@dataclass(frozen=True)
class ReplicaTurn(Event):
    type: ClassVar[str] = "replica_turn"
    t: float
    reply_id: int
    text: str  # what was heard
    interrupted: bool


@dataclass(frozen=True)
class ReplyStarted(Event):
    type: ClassVar[str] = "reply_started"
    t: float
    reply_id: int
    speculative: bool
    perception_note: str | None  # what the LLM was told of the user
    transcript: str


@dataclass(frozen=True)
class ReplyCancelled(Event):
    type: ClassVar[str] = "reply_cancelled"
    t: float
    reply_id: int
    reason: str
    tokens: int
    generating: bool  # the LLM was still generating: the cancel stopped it in the model


@dataclass(frozen=True)
class ReplyClauseDropped(Event):
    """A clause of a reply that was not spoken: it narrated a note, repeated an earlier sentence, carried
    markup or code, or was the unfinished end of the reply (`orchestrator/speech/guard.py`)."""

    type: ClassVar[str] = "reply_clause_dropped"
    t: float
    reply_id: int
    reason: str  # "narration" | "repetition" | "echo" | "markup" | "incomplete"
    text: str


@dataclass(frozen=True)
class ReplyLatency:
    """Wall milliseconds of a reply's stages (each present once measured)."""

    asr_final_ms: float | None = optional()
    llm_first_token_ms: float | None = optional()
    tts_first_chunk_ms: float | None = optional()
    floor_ms: float | None = optional()
    # preparing the reply's grounding (retrieval, input rails, tool choice), before the LLM starts: counted in
    # llm_first_token_ms, which runs from the reply's start
    grounding_ms: float | None = optional()


@dataclass(frozen=True)
class ReplicaSpeakingStart(Event):
    type: ClassVar[str] = "replica_speaking_start"
    t: float
    reply_id: int
    from_speculation: bool
    latency: ReplyLatency


@dataclass(frozen=True)
class ReplicaCaption(Event):
    """A clause of the reply, at the time on the timeline where its audio starts (live captions)."""

    type: ClassVar[str] = "replica_caption"
    t: float
    reply_id: int
    text: str


@dataclass(frozen=True)
class ReplicaSpeakingStop(Event):
    type: ClassVar[str] = "replica_speaking_stop"
    t: float
    reply_id: int
    interrupted: bool
    spoken_text: str
    stall_ms: float = 0.0  # silence inside the reply while its synthesis caught up with playback


@dataclass(frozen=True)
class ReplicaPaused(Event):
    type: ClassVar[str] = "replica_paused"
    t: float
    reply_id: int


@dataclass(frozen=True)
class ReplicaResumed(Event):
    type: ClassVar[str] = "replica_resumed"
    t: float
    reply_id: int


@dataclass(frozen=True)
class InteractionEvent(Event):
    """An interaction (`echo`, `respond`, `interrupt`, `overwrite_context`, `append_context`, `sensitivity`,
    `tool_result`) was carried out at `t`. For `echo` and `respond`, the reply it started (its `reply_started`,
    audio and `replica_turn` carry the same id); absent when none started."""

    type: ClassVar[str] = "interaction"
    t: float
    interaction: str
    reply_id: int | None = optional()


# ---- the face -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoStarted(Event):
    type: ClassVar[str] = "video_started"
    t: float
    fps: float
    width: int
    height: int


@dataclass(frozen=True)
class VideoStats(Event):
    type: ClassVar[str] = "video_stats"
    t: float
    frames: int
    dropped: int
    lag_ms_p50: float | None
    lag_ms_p95: float | None
    chunk_ms_p50: float | None


@dataclass(frozen=True)
class Emotion:
    name: str
    description: str


@dataclass(frozen=True)
class EmotionList(Event):
    """The answer to `duet render --list-emotions`."""

    type: ClassVar[str] = "emotions"
    emotions: tuple[Emotion, ...]


@dataclass(frozen=True)
class RenderPhoneme:
    p: str
    s: float
    e: float


@dataclass(frozen=True)
class RenderDone(Event):
    """The end of a rendered clip, with what it took (`Render` has no session clock: no `t`)."""

    type: ClassVar[str] = "render_done"
    frames: int
    fps: float
    width: int
    height: int
    emotion: str
    intensity: float
    duration_s: float
    speech_s: float
    idle: bool
    listening: bool
    first_audio_ms: float | None
    first_frame_ms: float | None
    total_ms: float
    motion_ms: float
    render_ms: float
    phonemes: tuple[RenderPhoneme, ...]


# ---- perception -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadPose:
    yaw: float | None
    pitch: float | None
    roll: float | None


@dataclass(frozen=True)
class VoiceReading:
    arousal: float | None
    hesitancy: float | None
    pitch_hz: float | None
    rate_sps: float | None
    uncertainty: float | None
    tension: float | None
    flatness: float | None


@dataclass(frozen=True)
class PerceptionEvent(Event):
    """A change in how the user comes across (or a modality's first confident reading), in one sentence."""

    type: ClassVar[str] = "perception"
    t: float
    modality: str  # "audio" | "visual" | "fused"
    text: str
    faces: int | None
    emotion: Mapping[str, float] | None
    head_pose: HeadPose | None
    gaze: str | None  # "camera" | "away"
    voice: VoiceReading | None
    latency_ms: float
    # extra keys: what changed (or was first read), and the discrete states the sentence was built from
    changes: tuple[str, ...] = ()
    baseline: tuple[str, ...] = ()
    expression: str | None = None
    head_turned: bool | None = None
    eyes_closed_long: bool | None = None
    arousal_band: str | None = None
    hesitancy_band: str | None = None
    mouth_open: float | None = None


@dataclass(frozen=True)
class ArcSegment:
    """A stretch of the user's turn in one state, in seconds from the turn's start."""

    from_s: float
    to_s: float
    state: str


@dataclass(frozen=True)
class UtteranceSummary(Event):
    """The user's turn as a whole (at each `eot_commit`): its emotional arc and cues that disagree."""

    type: ClassVar[str] = "utterance_summary"
    t: float
    start: float
    end: float
    text: str
    arc: tuple[ArcSegment, ...]
    disagreement: bool
    disagreements: tuple[str, ...]
    modality: str | None
    faces: int | None
    emotion: Mapping[str, float] | None
    gaze_away_fraction: float | None
    voice: Mapping[str, float | None] | None
    transcript_tone: str | None
    latency_ms: float


@dataclass(frozen=True)
class PerceptionToolCall(Event):
    """A persona's perception tool fired: its condition held (`evidence` says on what)."""

    type: ClassVar[str] = "perception_tool_call"
    t: float
    name: str
    when: str
    evidence: Mapping[str, Any]


# ---- the intelligence layer: knowledge, memories, guardrails, objectives, tools ------------------------------


@dataclass(frozen=True)
class KnowledgeHit:
    document_id: str
    chunk_id: str
    score: float


@dataclass(frozen=True)
class KnowledgeEvent(Event):
    """The document chunks a reply was given (sent just before the reply is heard)."""

    type: ClassVar[str] = "knowledge"
    t: float
    query: str
    results: tuple[KnowledgeHit, ...]
    took_ms: float
    reply_id: int | None = optional()


@dataclass(frozen=True)
class MemoryItem:
    memory_id: str
    text: str


@dataclass(frozen=True)
class MemoryEvent(Event):
    """Memories of the user (the conversation's `memory_store`) entered the replica's context."""

    type: ClassVar[str] = "memory"
    t: float
    memories: tuple[MemoryItem, ...]


@dataclass(frozen=True)
class GuardrailTriggered(Event):
    """A guardrail held: a user turn answered with its fallback, or a replica clause never spoken."""

    type: ClassVar[str] = "guardrail_triggered"
    t: float
    guardrail_id: str
    name: str
    applies_to: str  # the side it was checked on: "user" | "replica"
    rule: str  # phrases | pattern | topics | semantic | llm
    text: str  # what it caught
    took_ms: float
    reply_id: int | None = optional()


@dataclass(frozen=True)
class ObjectiveCompleted(Event):
    type: ClassVar[str] = "objective_completed"
    t: float
    name: str
    output_variables: Mapping[str, Any]


@dataclass(frozen=True)
class ToolCall(Event):
    """The replica calls one of the persona's tools; the client answers with a `tool_result` interaction."""

    type: ClassVar[str] = "tool_call"
    t: float
    call_id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class PerceptionStats(Event):
    type: ClassVar[str] = "perception_stats"
    t: float
    audio_ms_p50: float | None
    audio_ms_p95: float | None
    visual_ms_p50: float | None
    visual_ms_p95: float | None
    frames: int
    dropped: int
    bad_frames: int


def is_optional(f: dataclasses.Field[Any]) -> bool:
    """Left out of the wire object while None."""
    return bool(f.metadata.get("optional"))


def on_wire(f: dataclasses.Field[Any]) -> bool:
    return bool(f.metadata.get("wire", True))


__all__ = [
    "FLOOR_KINDS",
    "ArcSegment",
    "EmotionList",
    "ErrorEvent",
    "Event",
    "FloorEvent",
    "FloorKind",
    "GuardrailTriggered",
    "HeadPose",
    "InteractionEvent",
    "KnowledgeEvent",
    "KnowledgeHit",
    "MemoryEvent",
    "MemoryItem",
    "ObjectiveCompleted",
    "PerceptionEvent",
    "PerceptionStats",
    "PerceptionToolCall",
    "RenderDone",
    "ReplicaPaused",
    "ReplicaResumed",
    "ReplicaSpeakingStart",
    "ReplicaSpeakingStop",
    "ReplicaTurn",
    "ReplyCancelled",
    "ReplyClauseDropped",
    "ReplyLatency",
    "ReplyStarted",
    "SessionEnded",
    "SessionStarted",
    "ToolCall",
    "TranscriptEvent",
    "UserTurn",
    "UtteranceSummary",
    "VideoStarted",
    "VideoStats",
    "VoiceReading",
]
