"""Fair access to the shared model client: `FairGate` orders unary Triton requests session by session, and
`GatedModels` is one session's view of the models through it. The gate only orders waiters (no clock).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, TypeVar

from orchestrator.models.ports import F32, I16, FloorEstimate, RenderedFrames, SessionModels, SpeechChunk, Transcript

T = TypeVar("T")

BULK_MIN_COST_S = 0.002  # the least a bulk request is charged: its overheads in the client and in Triton
BULK_RECHECK_S = 0.25  # a bulk request waiting for its budget looks again this often (live sessions may leave)


class FairGate:
    """Admission of unary Triton requests: at most `capacity` in flight overall and `per_key` per session.

    When requests must wait, they are granted session by session in rotation (not first come, first served),
    so a session with many requests queued cannot push one with a single request to the back. With free
    capacity a request passes at once.

    Two lanes: a session on the live clock asks in the `live` lane; one running ahead of real time (a floor or
    acoustic session fed as fast as possible: `duet turns --speed 0`, or a flood) asks as `bulk`. Bulk requests
    of all sessions together hold at most `bulk_capacity` slots, and live waiters are granted first, so work
    that is ahead of real time only ever uses what live sessions leave.

    While live sessions are about, the bulk lane as a whole also keeps to a budget of time: `bulk_share` of the
    wall clock, counted in the time its requests take (`bulk_spent`), however many bulk sessions and slots
    share it. A bulk request waits `bulk_delay` before it asks. Alone, bulk work runs at full speed and is not
    charged. The gate keeps no clock: callers pass the time in.
    """

    def __init__(self, capacity: int, per_key: int, bulk_capacity: int | None = None, bulk_share: float = 1.0) -> None:
        if not 0.0 < bulk_share <= 1.0:
            raise ValueError(f"bulk_share must be within (0, 1], got {bulk_share}")
        self.capacity = capacity
        self.per_key = per_key
        self.bulk_capacity = capacity if bulk_capacity is None else bulk_capacity
        self.bulk_share = bulk_share
        self._bulk_next = float("-inf")  # when the bulk lane's budget lets its next request start
        self.inflight = 0
        self.bulk_inflight = 0
        self.live_at = float("-inf")  # loop time of the last live request (bulk yields while live ones are about)
        self._held: dict[Hashable, int] = {}
        self._waiting: OrderedDict[Hashable, deque[tuple[asyncio.Future[None], bool]]] = OrderedDict()

    def held(self, key: Hashable) -> int:
        return self._held.get(key, 0)

    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    @contextlib.asynccontextmanager
    async def slot(self, key: Hashable, bulk: bool = False) -> AsyncIterator[None]:
        await self.acquire(key, bulk)
        try:
            yield
        finally:
            self.release(key, bulk)

    async def acquire(self, key: Hashable, bulk: bool = False) -> None:
        if key not in self._waiting and self._free(key, bulk) and not (bulk and self._live_waiting()):
            self._take(key, bulk)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append((fut, bulk))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(key, bulk)  # granted as we were cancelled: hand it on
            else:
                self._forget(key, fut)
            raise

    def release(self, key: Hashable, bulk: bool = False) -> None:
        self.inflight -= 1
        self.bulk_inflight -= bulk
        n = self._held[key] - 1
        if n:
            self._held[key] = n
        else:
            del self._held[key]
        self._grant()

    def _live_waiting(self) -> bool:
        return any(not bulk for q in self._waiting.values() for fut, bulk in q if not fut.done())

    def _free(self, key: Hashable, bulk: bool) -> bool:
        if bulk and self.bulk_inflight >= self.bulk_capacity:
            return False
        return self.inflight < self.capacity and self.held(key) < self.per_key

    def live_recently(self, now: float, within_s: float = 1.0) -> bool:
        return now - self.live_at < within_s

    def bulk_delay(self, now: float) -> float:
        """Seconds a bulk request must wait before asking, for the lane to keep to its budget (0: go)."""
        return max(0.0, self._bulk_next - now)

    def bulk_spent(self, started: float, ended: float) -> None:
        """Charge the bulk lane for a request that ran from `started` to `ended` (charged at least
        `BULK_MIN_COST_S`). The lane's next start moves on by the cost over `bulk_share`, from no earlier than
        this request's start: idle time is not banked, and requests that ran side by side add up."""
        cost = max(ended - started, BULK_MIN_COST_S)
        self._bulk_next = max(self._bulk_next, started) + cost / self.bulk_share

    def _take(self, key: Hashable, bulk: bool) -> None:
        if not bulk:
            with contextlib.suppress(RuntimeError):  # (no running loop: a test calling it directly)
                self.live_at = asyncio.get_running_loop().time()
        self.inflight += 1
        self.bulk_inflight += bulk
        self._held[key] = self.held(key) + 1

    def _forget(self, key: Hashable, fut: asyncio.Future[None]) -> None:
        q = self._waiting.get(key)
        if q is not None:
            for item in [i for i in q if i[0] is fut]:
                q.remove(item)
            if not q:
                del self._waiting[key]
        self._grant()

    def _grant(self) -> None:
        for key in [k for k, q in self._waiting.items() if not q]:
            del self._waiting[key]
        while self.inflight < self.capacity and self._grant_one(bulk=False):
            pass
        while self.inflight < self.capacity and self._grant_one(bulk=True):
            pass

    def _grant_one(self, bulk: bool) -> bool:
        """Grant the first waiter of the lane in session rotation; False when none can go."""
        for key, q in self._waiting.items():
            while q and q[0][0].done():  # cancelled waiters
                q.popleft()
            if q and q[0][1] == bulk and self._free(key, bulk):
                fut, _ = q.popleft()
                fut.set_result(None)
                self._take(key, bulk)
                self._waiting.move_to_end(key)  # the next grant goes to another session first
                if not q:
                    del self._waiting[key]
                return True
        return False


class GatedModels:
    """One session's view of the shared model client: its unary requests pass the `FairGate` under its own key
    (in the bulk lane while `bulk()` says the session runs ahead of real time); streams (LLM, TTS, face frames)
    go straight through (each session holds at most a few)."""

    def __init__(
        self, models: SessionModels, gate: FairGate, key: Hashable, bulk: Callable[[], bool] = lambda: False
    ) -> None:
        self._models = models
        self._gate = gate
        self._key = key
        self._bulk = bulk

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        bulk = self._bulk()
        loop = asyncio.get_running_loop()
        gate = self._gate
        if bulk:
            await self._bulk_turn(loop)
        async with gate.slot(self._key, bulk):
            t0 = loop.time()
            try:
                return await call()
            finally:
                if bulk and gate.live_recently(t1 := loop.time()):
                    gate.bulk_spent(t0, t1)

    async def _bulk_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the bulk lane's budget lets a request start: while live sessions are about, all bulk work
        together keeps to `bulk_share` of the wall clock (the CPU in Triton and here goes to the live sessions).
        Alone, bulk work runs at full speed."""
        while True:
            now = loop.time()
            wait = self._gate.bulk_delay(now) if self._gate.live_recently(now) else 0.0
            if wait <= 0.0:
                return
            await asyncio.sleep(min(wait, BULK_RECHECK_S))

    # ---- unary: through the gate ---------------------------------------------------------------------------

    async def vad(self, audio: I16, state: F32) -> tuple[float, F32]:
        return await self._call(lambda: self._models.vad(audio, state))

    async def floor(self, audio: I16, pause_samples: int, text: str, context: str) -> FloorEstimate:
        return await self._call(lambda: self._models.floor(audio, pause_samples, text, context))

    async def fuse(self, acoustics: FloorEstimate, pause_samples: int, text: str, context: str) -> FloorEstimate:
        return await self._call(lambda: self._models.fuse(acoustics, pause_samples, text, context))

    async def transcribe(self, audio: I16, prompt: str = "", *, word_timings: bool = True) -> Transcript:
        return await self._call(lambda: self._models.transcribe(audio, prompt, word_timings=word_timings))

    async def face_motion(self, request_json: str) -> F32:
        return await self._call(lambda: self._models.face_motion(request_json))

    async def voice_features(self, frames: I16) -> F32:
        return await self._call(lambda: self._models.voice_features(frames))

    async def analyze_frame(self, image: bytes) -> dict[str, Any]:
        return await self._call(lambda: self._models.analyze_frame(image))

    # ---- streams: straight through ---------------------------------------------------------------------------

    def synthesize(self, text: str, voice: str = "") -> AsyncIterator[SpeechChunk]:
        return self._models.synthesize(text, voice)

    def render_frames(
        self, face: str, params: F32, width: int, height: int, quality: int
    ) -> AsyncIterator[RenderedFrames]:
        return self._models.render_frames(face, params, width, height, quality)


__all__ = ["FairGate", "GatedModels"]
