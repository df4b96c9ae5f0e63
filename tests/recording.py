"""A session outlet that keeps everything (the `Outlet` protocol without a transport): for tests that drive a
session directly. `dicts` are the events as a client receives them (`orchestrator.api.wire.event_dict`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.api.wire import event_dict
from orchestrator.events import Event


@dataclass
class RecordingOutlet:
    events: list[Event] = field(default_factory=list)
    audio_out: list[tuple[bytes, int, float]] = field(default_factory=list)  # pcm, reply id, t
    video_out: list[tuple[bytes, float, int]] = field(default_factory=list)
    cuts: list[tuple[int, float]] = field(default_factory=list)

    async def event(self, event: Event) -> None:
        self.events.append(event)

    async def audio(self, pcm: bytes, reply_id: int, t: float) -> None:
        self.audio_out.append((pcm, reply_id, t))

    def video(self, jpeg: bytes, t: float, index: int) -> None:
        self.video_out.append((jpeg, t, index))

    def cut(self, reply_id: int, t: float) -> None:
        self.cuts.append((reply_id, t))

    @property
    def dicts(self) -> list[dict[str, Any]]:
        return [event_dict(e) for e in self.events]

    def types(self) -> list[str]:
        return [e.type for e in self.events]
