"""Interactions: how a client (or the REST control plane) steers a live conversation, and what the
conversational-flow levels mean for the floor.

An interaction arrives as a JSON-like object (`POST /v1/conversations/{id}/interactions`, the WebRTC data
channel) or as a `control` message of the session stream, and becomes one of the typed values below
(`parse_interaction`); `ConversationSession.interact` carries it out:
- `echo`: the replica says `text` verbatim, now (a speaking replica is stopped, a reply in preparation dropped);
- `respond`: `text` is the user's turn: committed as such and answered;
- `interrupt`: the replica stops now (as the stream's INTERRUPT control);
- `overwrite_context` / `append_context`: the conversation's context for the rest of the call;
- `sensitivity`: the conversational flow's levels, applied live (`flow_settings` below);
- `tool_result`: the output of a tool call the session is waiting on.

Conversational flow (`sensitivity`, and a persona's `layers.conversational_flow`): each level is `low`,
`medium` or `high`; `medium` is the server's floor settings as they are, so a session that never names a level
behaves exactly as before. The levels move the settings relative to the session's own (a client that tuned
`floor.*` options keeps its tuning, shifted):

turn_taking_patience (when the replica takes the turn):

| level  | commit_threshold | max_pause_ms | min_commit_pause_ms |
|--------|------------------|--------------|---------------------|
| low    | 0.80 -> 0.6425   | 1800 -> 1200 | 0                   |
| medium | 0.80             | 1800         | 0                   |
| high   | 0.80 -> 0.899    | 1800 -> 2700 | 0 -> 300            |

replica_interruptibility (what it takes to stop the replica):

| level  | barge_in_ms | the replica at the user's onset          |
|--------|-------------|------------------------------------------|
| low    | 640 -> 960  | talks on (stops only for a barge-in)     |
| medium | 640         | pauses (resumes after a backchannel)     |
| high   | 640 -> 384  | pauses                                   |

Why these numbers
- The commit threshold moves by `PATIENCE_LOGIT` (0.8) in log-odds, not by a fixed probability: the fusion's
  pause hazard adds 4.0 log-odds per second of pause (model_repository/floor_fusion/1/weights.json), so 0.8 is
  about 200 ms of pause wherever the base threshold sits: a step a caller notices, small next to the ~1.2 s
  median the floor takes today (docs/floor.md). 0.80 becomes 0.6425 or 0.899.
- The safety net (`max_pause_ms`) scales by 2/3 or 3/2: 1.2 s is still longer than the 800 ms silence timeout
  that cut off 14 % of held-out holds, and 2.7 s lets a slow speaker search for a word.
- A patient replica also never answers before 300 ms of silence (`min_commit_pause_ms`): the pause a slow
  speaker takes between phrases, however sure the model is.
- The replica already pauses at the user's onset, so `barge_in_ms` alone only decides between "drop the rest"
  and "resume" (orchestrator/config.py). Low interruptibility therefore also keeps the replica talking through
  the onset (`pauses_at_onset`), so a cough or an "mm-hm" does not even stall it, and asks for 1.5x the speech
  to stop it; high asks for 0.6x (a short "wait" stops it; a quick "mm-hm", about 300 ms, still does not).
  Both are rounded to whole 32 ms VAD windows, the unit the floor machine counts speech in.

Pure: no I/O; unit tests cover parsing and every mapping.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from orchestrator.config import FLOOR_RANGES_MS, FloorSettings
from orchestrator.errors import BadInteraction

Level = Literal["low", "medium", "high"]
LEVELS: tuple[Level, ...] = ("low", "medium", "high")
MAX_TEXT_CHARS = 16_000  # an interaction's text (a context may be a page; longer belongs in documents)


@dataclass(frozen=True)
class Echo:
    """The replica says `text` verbatim."""

    type: ClassVar[str] = "echo"
    text: str


@dataclass(frozen=True)
class Respond:
    """`text` is the user's utterance: committed as their turn and answered."""

    type: ClassVar[str] = "respond"
    text: str


@dataclass(frozen=True)
class Interrupt:
    """The replica stops speaking now."""

    type: ClassVar[str] = "interrupt"


@dataclass(frozen=True)
class OverwriteContext:
    type: ClassVar[str] = "overwrite_context"
    text: str


@dataclass(frozen=True)
class AppendContext:
    type: ClassVar[str] = "append_context"
    text: str


@dataclass(frozen=True)
class Sensitivity:
    """The conversational flow's levels; None leaves that one as it is."""

    type: ClassVar[str] = "sensitivity"
    turn_taking_patience: Level | None = None
    replica_interruptibility: Level | None = None


@dataclass(frozen=True)
class ToolResult:
    """The output of tool call `call_id` (the LLM asked for it with a `tool_call` event)."""

    type: ClassVar[str] = "tool_result"
    call_id: str
    output: str


Interaction = Echo | Respond | Interrupt | OverwriteContext | AppendContext | Sensitivity | ToolResult
KINDS: dict[str, type[Interaction]] = {
    k.type: k for k in (Echo, Respond, Interrupt, OverwriteContext, AppendContext, Sensitivity, ToolResult)
}


# ---- parsing ----------------------------------------------------------------------------------------------


def parse_interaction(obj: Mapping[str, Any], *, max_chars: int = MAX_TEXT_CHARS) -> Interaction:
    """The interaction `obj` describes (`{"type": "echo", "text": "..."}`, DESIGN.md). Anything else is a
    `BadInteraction` naming the offending key: an unknown type or key, missing or empty text, a level that
    is not low|medium|high, text over `max_chars`."""
    if not isinstance(obj, Mapping):  # (a JSON body may be anything)
        raise BadInteraction(f"an interaction is an object with a `type`, not {type(obj).__name__}", field="type")
    return interaction_of(obj.get("type"), {k: v for k, v in obj.items() if k != "type"}, max_chars=max_chars)


def interaction_of(kind: object, obj: Mapping[str, Any], *, max_chars: int = MAX_TEXT_CHARS) -> Interaction:
    """The interaction of type `kind` with the fields `obj` (`parse_interaction` without the `type` key)."""
    if not isinstance(kind, str) or kind not in KINDS:
        known = ", ".join(KINDS)
        raise BadInteraction(f"unknown interaction type {kind!r} (known: {known})", field="type")
    cls = KINDS[kind]
    allowed = {f.name for f in dataclasses.fields(cls)}
    for key in obj:
        if key not in allowed:
            takes = f"it takes {', '.join(sorted(allowed))}" if allowed else "it takes nothing but its type"
            raise BadInteraction(f"`{kind}` takes no {key!r} ({takes})", field=str(key))
    if cls is Interrupt:
        return Interrupt()
    if cls is Sensitivity:
        patience = _level(obj, "turn_taking_patience")
        interruptibility = _level(obj, "replica_interruptibility")
        if patience is None and interruptibility is None:
            raise BadInteraction(
                "`sensitivity` needs turn_taking_patience or replica_interruptibility", field="turn_taking_patience"
            )
        return Sensitivity(patience, interruptibility)
    if cls is ToolResult:
        call_id = _text(obj, "call_id", kind, max_chars, words=True)
        return ToolResult(call_id, _text(obj, "output", kind, max_chars, words=False))  # (a tool may return "")
    # echo, respond and append_context need words; an empty overwrite_context clears the context
    text = _text(obj, "text", kind, max_chars, words=cls is not OverwriteContext)
    if cls is Echo:
        return Echo(text)
    if cls is Respond:
        return Respond(text)
    return OverwriteContext(text) if cls is OverwriteContext else AppendContext(text)


def _text(obj: Mapping[str, Any], key: str, kind: str, max_chars: int, *, words: bool) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise BadInteraction(f"`{kind}` needs {key!r} as text", field=key)
    if words and not value.strip():
        raise BadInteraction(f"`{kind}` needs a non-empty {key!r}", field=key)
    if len(value) > max_chars:
        raise BadInteraction(f"`{kind}`: {key!r} of {len(value)} characters; the limit is {max_chars}", field=key)
    return value


def _level(obj: Mapping[str, Any], key: str) -> Level | None:
    value = obj.get(key)
    if value is None:
        return None
    for level in LEVELS:
        if value == level:
            return level
    raise BadInteraction(f"{key} must be one of {', '.join(LEVELS)}, not {value!r}", field=key)


# ---- conversational flow -> floor settings ----------------------------------------------------------------

PATIENCE_LOGIT = 0.8  # commit-threshold shift per level, in log-odds (~200 ms of pause on the fusion's hazard)
PATIENCE_MAX_PAUSE = {"low": 2 / 3, "high": 3 / 2}  # the safety net's scale
PATIENT_MIN_PAUSE_MS = 300  # high patience: never commit on less silence than this
BARGE_IN_SCALE = {"low": 1.5, "high": 0.6}  # speech over the replica needed to stop it
VAD_WINDOW_MS = 32  # what the floor machine counts speech in


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _clamp_ms(name: str, value: float) -> int:
    lo, hi = FLOOR_RANGES_MS[name]
    return int(min(max(round(value), lo), hi))


def flow_floor(floor: FloorSettings, patience: str | None) -> FloorSettings:
    """`floor` with the turn-taking patience applied: `low` commits sooner, `high` waits longer; `medium`
    (and None) returns `floor` itself. The result is always within the settings' documented ranges."""
    if patience not in ("low", "high"):
        return floor
    sign = -1.0 if patience == "low" else 1.0
    commit = floor.commit_threshold
    if 0.0 < commit < 1.0:  # (1.0 means "only the safety net commits": no level changes that)
        logit = math.log(commit / (1.0 - commit)) + sign * PATIENCE_LOGIT
        commit = round(_sigmoid(logit), 4)
    max_pause = _clamp_ms("max_pause_ms", floor.max_pause_ms * PATIENCE_MAX_PAUSE[patience])
    min_pause = floor.min_commit_pause_ms
    if patience == "high":
        min_pause = max(min_pause, PATIENT_MIN_PAUSE_MS)
    return dataclasses.replace(
        floor,
        commit_threshold=commit,
        tentative_threshold=min(floor.tentative_threshold, commit),  # speculation still starts before a commit
        max_pause_ms=max_pause,
        min_commit_pause_ms=min(min_pause, max_pause),
    )


def flow_barge_in(floor: FloorSettings, interruptibility: str | None) -> FloorSettings:
    """`floor` with the replica's interruptibility applied to `barge_in_ms` (how long the user must speak over
    the replica to stop it): `low` longer, `high` shorter, in whole VAD windows; `medium` (and None) returns
    `floor` itself."""
    if interruptibility not in ("low", "high"):
        return floor
    windows = round(floor.barge_in_ms * BARGE_IN_SCALE[interruptibility] / VAD_WINDOW_MS)
    return dataclasses.replace(floor, barge_in_ms=_clamp_ms("barge_in_ms", windows * VAD_WINDOW_MS))


def pauses_at_onset(interruptibility: str | None) -> bool:
    """Whether the replica goes quiet as soon as the user starts speaking over it (until it is known to be a
    barge-in or a backchannel). A replica of low interruptibility talks on until the user has barged in."""
    return interruptibility != "low"


def flow_settings(floor: FloorSettings, patience: str | None, interruptibility: str | None) -> FloorSettings:
    """The session's floor settings `floor` with both levels applied (`medium`/None: unchanged)."""
    return flow_barge_in(flow_floor(floor, patience), interruptibility)
