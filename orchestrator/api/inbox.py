"""A client's input waiting for its session, in two bounded lanes: urgent control first, the rest in order.

The reader puts every message it read; the session takes them one at a time. An urgent item (an interrupt,
or a fatal end the reader decided on) overtakes whatever audio is already queued: an interrupt takes effect
at the next chunk boundary instead of behind up to `media` chunks. Everything else keeps the order the client
sent it in: audio, camera frames, text and the marks that sit on the audio clock (the replica speaking), and
END, which means "after everything I sent". Both lanes are bounded; a full lane makes the reader wait, so
gRPC flow control pushes back on the client rather than the server buffering without end.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self, media: int, urgent: int = 32) -> None:
        self.limits = (media, urgent)
        self._media: deque[T] = deque()
        self._urgent: deque[T] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()

    def __len__(self) -> int:
        return len(self._media) + len(self._urgent)

    def full(self, *, urgent: bool = False) -> bool:
        return len(self._urgent) >= self.limits[1] if urgent else len(self._media) >= self.limits[0]

    async def put(self, item: T, *, urgent: bool = False) -> None:
        while not self.put_nowait(item, urgent=urgent):
            self._room.clear()
            await self._room.wait()

    def put_nowait(self, item: T, *, urgent: bool = False) -> bool:
        """`put` without waiting: False (and nothing put) when the lane is full."""
        if self.full(urgent=urgent):
            return False
        (self._urgent if urgent else self._media).append(item)
        self._ready.set()
        return True

    async def get(self) -> T:
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            self._ready.clear()
            await self._ready.wait()

    def get_nowait(self) -> T | None:
        lane = self._urgent or self._media
        if not lane:
            return None
        self._room.set()
        return lane.popleft()
