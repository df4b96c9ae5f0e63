"""The user's turn, transcribed while they speak: the transcription gate's decodes, run against the recogniser.

The gate (`orchestrator.speech.gate`, pure) says which window of session audio to decode and when; this runs
each decode as an owned task on the audio the session's timeline still holds, and reports back: what was
heard, that the decode is over (queued floor events may then go on), or that it failed (the turn goes on
without that transcript; the client is told why). Closing cancels the decodes in flight, and with them
their Triton requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from orchestrator.errors import DuetError
from orchestrator.models.ports import I16, Transcript
from orchestrator.signal.audio import SAMPLE_RATE, AudioTimeline
from orchestrator.speech.gate import Decode, Heard, TranscriptGate
from orchestrator.speech.transcript import DecodeWindow


class Recognizer(Protocol):
    async def transcribe(self, audio: I16, prompt: str = "", *, word_timings: bool = True) -> Transcript: ...


class TranscriptListener(Protocol):
    async def heard(self, heard: Heard) -> None:
        """The open turn's transcript changed."""
        ...

    async def settled(self) -> None:
        """A decode is over: floor events waiting for it may go on."""
        ...

    async def failed(self, error: DuetError) -> None: ...


class Transcriber:
    def __init__(
        self,
        asr: Recognizer,
        gate: TranscriptGate,
        timeline: AudioTimeline,
        listener: TranscriptListener,
        *,
        prompt: Callable[[], str] = lambda: "",
        name: str = "session",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.asr = asr
        self.gate = gate
        self.timeline = timeline
        self.listener = listener
        self.prompt = prompt  # text the recogniser is primed with (speech/prompt.py: never the replica's words)
        self.name = name
        self.final_ms = 0.0  # wall time of the last final decode
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def run(self, decodes: Iterable[Decode]) -> None:
        for d in decodes:
            if self._closed:
                return
            task = asyncio.create_task(
                self._decode(d.window), name=f"{self.name}-asr-{'final' if d.window.final else 'partial'}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def poll(self, now: float) -> None:
        """Start a partial decode if one is due at audio time `now`."""
        if not self._closed and (d := self.gate.poll(now)) is not None:
            self.run([d])

    @property
    def busy(self) -> bool:
        return any(not t.done() for t in self._tasks)

    async def idle(self) -> None:
        """Until no decode runs."""
        while pending := [t for t in self._tasks if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _decode(self, window: DecodeWindow) -> None:
        start = max(round(window.start_s * SAMPLE_RATE), 0)
        end = min(round(window.end_s * SAMPLE_RATE), self.timeline.samples)
        audio = self.timeline.span(max(start, end - self.timeline.capacity), end)
        t0 = self._clock()
        result = None
        try:
            # partials only compare words; word timings are worth their alignment pass on the final only
            result = await self.asr.transcribe(audio, prompt=self.prompt(), word_timings=window.final)
        except DuetError as err:
            await self.listener.failed(err)
        if window.final:
            self.final_ms = (self._clock() - t0) * 1000
        heard = self.gate.heard(window, result)
        if heard is not None:
            await self.listener.heard(heard)
        self.gate.settled(window)
        await self.listener.settled()
