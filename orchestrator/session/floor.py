"""One conversation's pipeline: audio in, VAD and floor evaluations through Triton, floor events out.

Processing is sequential per session and in audio-time order: a floor evaluation is awaited before later
audio is analysed. Decisions therefore depend only on the audio, never on how fast the client sends it
(a file streamed at 10x real time gets the same events as a live microphone), and each event's
`compute_ms` honestly includes any queueing behind an evaluation. Sessions run concurrently with each
other; Triton batches their requests.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

from orchestrator.config import FloorSettings
from orchestrator.errors import BadInteraction
from orchestrator.events import FloorEvent
from orchestrator.models.ports import F32, FloorEstimate, FloorModels
from orchestrator.session.base import Control
from orchestrator.session.interactions import Interaction
from orchestrator.signal.audio import HISTORY, SAMPLE_RATE, VAD_WINDOW, AudioTimeline
from orchestrator.turns.floor import Action, Evaluate, FloorMachine

FloorSink = Callable[[FloorEvent], Awaitable[None]]
Clock = Callable[[], float]

WINDOW_MS = 1000.0 * VAD_WINDOW / SAMPLE_RATE


MAX_FLOOR_TEXT_CHARS = 1000  # the user's words the fusion sees: the last sentences of a long turn
MAX_FLOOR_CONTEXT_CHARS = 1000  # the replica's: its opening (a question word) and its end (a question mark)


def bounded_text(text: str, limit: int = MAX_FLOOR_TEXT_CHARS) -> str:
    """The end of `text`, at most `limit` characters, cut at a word boundary."""
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    cut = tail.find(" ")
    return tail[cut + 1 :] if 0 <= cut < limit // 2 else tail


def bounded_context(text: str, limit: int = MAX_FLOOR_CONTEXT_CHARS) -> str:
    """The start and the end of `text`, at most `limit` characters together."""
    if len(text) <= limit:
        return text
    head = limit * 3 // 10
    return f"{text[:head]} … {bounded_text(text, limit - head - 3)}"


class FloorSession:
    """Feeds one user's audio through VAD and the floor model and reports floor events to `emit`.

    On its own it is the `acoustic` session (floor events from audio alone); a `ConversationSession` runs one
    inside it and gives it the user's transcript and the replica's last words."""

    def __init__(
        self,
        models: FloorModels,
        floor: FloorSettings,
        emit: FloorSink,
        *,
        max_chunk_ms: int = 200,
        clock: Clock = time.perf_counter,
        history: int = HISTORY,
        name: str = "floor",
    ) -> None:
        self.name = name
        self.models = models
        self.machine = FloorMachine(floor)
        self.timeline = AudioTimeline(max_chunk_ms=max_chunk_ms, history=max(history, HISTORY))
        self._emit = emit
        self._clock = clock
        self._vad_state: F32 = np.zeros((2, 128), dtype=np.float32)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=4096)  # (chunk end sample, wall arrival)
        self.user_text = ""  # latest user transcript of the current turn (partial or final)
        self._text_upto: float | None = None  # the audio `user_text` covers, when it is a final decode
        self.context = ""  # what the replica said last
        self._acoustics: FloorEstimate | None = None  # last full evaluation (Smart Turn + prosody)

    @property
    def now(self) -> float:
        return self.timeline.now

    async def start(self) -> None:
        pass  # nothing of its own runs between chunks

    def video(self, jpeg: bytes, t: float, arrival: float) -> None:
        pass  # the floor is decided from audio (and text) alone

    async def control(self, kind: Control) -> None:
        # The client speaks for the replica here: it marks the replica's speech, and an interrupt ends it.
        self.replica(kind is Control.REPLICA_SPEAKING_START)

    async def interact(self, interaction: Interaction) -> None:
        # No replica speaks here (the client speaks for it): nothing an interaction steers exists.
        raise BadInteraction(f"`{interaction.type}`: a mode=acoustic session has no replies to steer")

    def set_settings(self, floor: FloorSettings) -> None:
        """New floor thresholds, live (see `FloorMachine.set_settings`)."""
        self.machine.set_settings(floor)

    async def close(self) -> None:
        pass

    async def audio(self, pcm: bytes, arrival: float | None = None) -> None:
        """One audio chunk; `arrival` is the wall time it reached the server (defaults to now)."""
        windows = self.timeline.push(pcm)  # raises BadAudioChunk before anything changes
        self._arrivals.append((self.timeline.samples, self._clock() if arrival is None else arrival))
        for w in windows:
            prob, self._vad_state = await self.models.vad(w.audio, self._vad_state)
            await self._run(self.machine.on_vad(w.end, prob, WINDOW_MS, w.t))

    def text(self, text: str, *, replica: bool = False) -> None:
        # Every floor evaluation carries these to `floor_fusion`: keep what the lexical cue reads (the end of the
        # user's words; the start and end of the replica's), never an unbounded string.
        if replica:
            self.context = bounded_context(text)
        else:
            self.user_text = bounded_text(text)
            self._text_upto = None

    async def heard(self, text: str, *, final: bool, upto: float) -> None:
        """The user's turn so far, decoded up to audio time `upto`. A final decode that reaches into the
        current pause is evaluated at once (`FloorMachine.on_text`): the words are the strongest cue, and
        they arrive a few hundred milliseconds into the pause."""
        self.text(text)
        if final:
            self._text_upto = upto
            if self._fresh_text():
                await self._run(self.machine.on_text())

    def _fresh_text(self) -> bool:
        """Whether `user_text` is the final decode of the current pause (its words up to the pause)."""
        return self._text_upto is not None and self._text_upto >= self.machine.pause_start - 1e-6

    @property
    def _fusion_text(self) -> str:
        # Only the pause's own final transcript: a partial decoded mid-speech lacks the last words, and what the
        # fusion would read in it (a dangling "to the", a finished-looking clause) is about other words.
        return self.user_text if self._fresh_text() else ""

    def replica(self, speaking: bool) -> None:
        self.machine.on_replica(speaking)

    async def finish(self, *, left: bool = False) -> None:
        del left  # (no replies here: the same either way)
        await self._run(self.machine.finish(self.timeline.now))

    async def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, FloorEvent):
                await self._send(action)
            elif isinstance(action, Evaluate):
                await self._evaluate(action)

    async def _evaluate(self, ev: Evaluate) -> None:
        pause_samples = round(ev.pause_ms * SAMPLE_RATE / 1000)
        if ev.reuse_acoustics and self._acoustics is not None:
            est = await self.models.fuse(self._acoustics, pause_samples, self._fusion_text, self.context)
        else:
            est = await self.models.floor(self.timeline.window(ev.t), pause_samples, self._fusion_text, self.context)
            self._acoustics = est
        await self._run(self.machine.on_estimate(ev.request_id, est.p_yield))

    def _arrival_of(self, t: float) -> float:
        """Wall arrival time of the latest chunk ending at or before audio time `t` (events are stamped with
        chunk ends, so this is the chunk whose arrival the decision waited for)."""
        sample = round(t * SAMPLE_RATE)
        for end, arrived in reversed(self._arrivals):
            if end <= sample:
                return arrived
        return self._arrivals[0][1] if self._arrivals else self._clock()

    async def _send(self, e: FloorEvent) -> None:
        if e.kind == "eot_commit":
            self.user_text, self._text_upto = "", None
        compute_ms = (self._clock() - self._arrival_of(e.t)) * 1000.0
        await self._emit(dataclasses.replace(e, t=round(e.t, 4), compute_ms=round(compute_ms, 2)))
