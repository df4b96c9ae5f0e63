"""The session stream's wire form: typed events, audio and video become `ServerMessage`s here, and only here.

An event is one JSON object (`event_dict`): `type`, then its fields in declaration order, nested dataclasses
as objects, tuples as lists; a field declared optional is left out while None. Errors travel one way: every
`ErrorEvent` (and every `DuetError` the service reports) is the stream's typed `Error` message, with the
session time it happened at.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from duet.proto import session_pb2 as pb
from orchestrator.errors import DuetError
from orchestrator.events import ErrorEvent, Event, is_optional, on_wire


def event_dict(event: Event) -> dict[str, Any]:
    """The event as its JSON object (DESIGN.md's event formats)."""
    return {"type": event.type, **_fields(event)}


def _fields(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not on_wire(f):
            continue
        value = getattr(obj, f.name)
        if value is None and is_optional(f):
            continue
        out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def event_message(event: Event) -> pb.ServerMessage:
    if isinstance(event, ErrorEvent):
        return pb.ServerMessage(error=pb.Error(code=event.code, message=event.message, fatal=event.fatal, t=event.t))
    return pb.ServerMessage(event=pb.Event(type=event.type, json=json.dumps(event_dict(event))))


def error_message(err: DuetError, t: float = 0.0) -> pb.ServerMessage:
    """A `DuetError` the service reports: fatal or not as the error says."""
    return event_message(ErrorEvent.of(err, t, fatal=err.fatal))


def audio_message(pcm: bytes, reply_id: int, t: float) -> pb.ServerMessage:
    return pb.ServerMessage(audio=pb.AudioOut(pcm=pcm, utterance_id=str(reply_id), t=t, sample_rate=16000))


def video_message(jpeg: bytes, t: float, index: int) -> pb.ServerMessage:
    return pb.ServerMessage(video=pb.VideoOut(jpeg=jpeg, t=t, index=index))
