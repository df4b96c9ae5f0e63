"""One spoken conversation: the floor model, streaming ASR, speculative replies, playback and barge-in.

The pieces and who owns what:
- `FloorSession` runs VAD and the floor model on the (echo-reduced) user audio and reports floor events.
- Streaming ASR re-decodes the user's current turn while they speak (partials feed the floor model's
  lexical input) and once more at each speech end (the transcript replies are built from).
- `ReplyMachine` (pure, `turns/replies.py`) decides when to start, release, cancel, pause, resume and
  stop replies and when history is written; this class only executes its actions.
- Each reply runs as one owned task: LLM tokens → clause splitter → TTS, its audio buffered in a
  `ReplyAudio`. Cancelling the task closes the model streams, which cancels the Triton requests.
- `Playback` puts the released reply on the session timeline; audio is sent a small lead ahead of the
  input clock, so the timeline (and `reply.wav` on the client) is the session's own clock.

All `t` values are seconds on the session audio clock (the user's input). Floor events reach the reply
machine in order; while the final transcript of a turn is being decoded, later floor events wait for it,
so a reply is never built from a stale transcript by accident (and if it was started from a partial one,
the machine cancels it when the final one differs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.config import Settings
from orchestrator.errors import DuetError
from orchestrator.face.driver import FaceDriver
from orchestrator.models.ports import ConversationModels, LanguageModel
from orchestrator.perception.pipeline import PerceptionSession
from orchestrator.session.dialogue import Dialogue
from orchestrator.session.floor import FloorSession
from orchestrator.session.persona import Persona
from orchestrator.session.playback import Playback, ReplyAudio, Segment
from orchestrator.signal.audio import SAMPLE_RATE
from orchestrator.signal.echo import EchoCanceller
from orchestrator.speech.clauses import ClauseSplitter
from orchestrator.speech.transcript import DecodeWindow, PartialSchedule, StreamingTranscript
from orchestrator.turns import replies as sp

log = logging.getLogger("duet.conversation")

EventSink = Callable[[dict[str, Any]], Awaitable[None]]
AudioSink = Callable[[bytes, int, float], Awaitable[None]]  # pcm, reply id, t (timeline seconds)
Clock = Callable[[], float]

TURN_PAD_S = 0.25  # audio kept before the detected speech start (VAD confirms speech ~64 ms late)
FINAL_PAD_S = 0.10  # and after speech end, for the final decode
RESUME_AFTER_S = 0.3  # quiet needed after a backchannel before the replica resumes
PARTIAL_MIN_AUDIO_S = 0.8  # no partial decode of less speech than this: short windows make Whisper loop
END_OF_STREAM_WAIT_S = 60.0  # at END, how long a reply still generating may take to finish


async def aclose(stream: Any) -> None:
    """Close an async generator early (closing it cancels the model request behind it)."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


@dataclass
class _Reply:
    audio: ReplyAudio
    task: asyncio.Task[None] | None = None
    started_wall: float = 0.0
    speculative: bool = False
    tokens: int = 0
    generating: bool = False  # the LLM stream is open (a cancel now stops it in the model)
    latency: dict[str, float] = field(default_factory=dict)


class ConversationSession:
    def __init__(
        self,
        models: ConversationModels,
        llm: LanguageModel | None,
        settings: Settings,
        persona: Persona,
        emit: EventSink,
        send_audio: AudioSink,
        *,
        floor: Any = None,
        speculation: bool | None = None,
        echo_suppression: bool | None = None,
        replies: bool = True,
        name: str = "session",
        clock: Clock = time.perf_counter,
        face: FaceDriver | None = None,
        perception: PerceptionSession | None = None,
    ) -> None:
        self.models = models
        self.llm = llm
        self.settings = settings
        self.persona = persona
        self.name = name
        self.replies = replies  # False: floor events and transcripts only (`mode=floor`)
        self._emit = emit
        self._send_audio = send_audio
        self._clock = clock
        history = int((settings.asr.max_utterance_s + 2) * SAMPLE_RATE)
        self.floor = FloorSession(
            models,
            floor or settings.floor,
            self._on_floor_event,
            max_chunk_ms=settings.server.max_audio_chunk_ms,
            clock=clock,
            history=history,
        )
        spec = settings.conversation.speculation and persona.speculation if speculation is None else speculation
        self.machine = sp.ReplyMachine(speculation=spec)
        self.dialogue = Dialogue(persona, history_turns=settings.llm.history_turns, stop=settings.llm.stop)
        use_echo = settings.conversation.echo_suppression if echo_suppression is None else echo_suppression
        max_chunk = settings.server.max_audio_chunk_ms * SAMPLE_RATE // 1000
        self.echo = EchoCanceller(SAMPLE_RATE, max_chunk=max_chunk) if use_echo else None
        self._lead = settings.conversation.playback_lead_ms * SAMPLE_RATE // 1000
        self._replies: dict[int, _Reply] = {}
        self._playback: Playback | None = None
        self._resume_at: int | None = None  # sample at which a paused reply resumes (after a backchannel)
        # streaming ASR of the current user turn (schedule and agreement are pure, in speech/transcript.py)
        self._schedule = PartialSchedule(
            settings.asr.partial_interval_ms,
            settings.asr.max_utterance_s,
            pad_s=TURN_PAD_S,
            min_audio_s=PARTIAL_MIN_AUDIO_S,
        )
        self._transcript = StreamingTranscript()
        self._asr_task: asyncio.Task[None] | None = None
        self._awaiting_final = False  # a speech-end decode is due: floor events wait for its transcript
        self._asr_final_ms = 0.0
        self._held: list[tuple[str, float]] = []  # floor events waiting for the final transcript
        # Speech that began after a held eot_commit belongs to the next turn, whose ASR can only start once that
        # commit has ended the current one: its schedule calls ("start"/"end", audio time) wait here.
        self._next_turn: list[tuple[str, float]] = []
        self._releasing = asyncio.Lock()
        self._last_speech_end = 0.0
        self._commit_t = 0.0
        self._closed = False
        self.face = face  # the replica's video, when the session asked for it
        self.perception = perception  # the user's voice and camera, described for the LLM
        self._turn_text = ""  # the current user turn's latest transcript (for the utterance summary)
        if perception is not None:
            perception.on_note = self._set_perception_note

    # ---- clock ----------------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.floor.timeline.now

    @property
    def samples(self) -> int:
        return self.floor.timeline.samples

    # ---- inputs ---------------------------------------------------------------------------------------

    async def audio(self, pcm: bytes, arrival: float | None = None) -> None:
        if self.echo is not None:
            self.floor.timeline.check(pcm)  # a bad chunk is refused before anything sees it
            mic = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
            pcm = self.echo.process(self.samples, mic).astype("<i2").tobytes()
        await self.floor.audio(pcm, arrival)
        if self.perception is not None:
            self.perception.audio(pcm, self.now, arrival if arrival is not None else self._clock())
        self._maybe_partial()
        await self._advance_playback()
        if self.face is not None:
            self.face.advance(self.now)

    def _set_perception_note(self, note: str) -> None:
        # Not a context change: perception describes the user many times a second, and a speculative reply
        # cancelled on each new note would never be released. The note goes into the next request built.
        self.dialogue.perception_note = note

    async def set_context(self, text: str) -> None:
        """Overwrite the conversation's context (the `overwrite_context` interaction). A reply not yet
        released was built on the old context: it is cancelled ("context_changed") and, if its turn still
        needs an answer, started again on the new one. A reply already playing is left alone: it is being
        heard."""
        if text == self.dialogue.context:
            return
        self.dialogue.context = text
        if self.replies and not self._closed:
            await self._apply(self.machine.on_context_changed(self.now))

    async def append_context(self, text: str) -> None:
        """Add to the conversation's context (the `append_context` interaction); see `set_context`."""
        if text.strip():
            await self.set_context(f"{self.dialogue.context}\n{text}" if self.dialogue.context else text)

    def video(self, data: bytes, t: float, arrival: float | None = None) -> None:
        """A camera frame of the user (JPEG/PNG) taken at `t` on the session clock; only the newest is kept."""
        if self.perception is not None:
            self.perception.video(data, t, arrival if arrival is not None else self._clock())

    def text(self, text: str, *, replica: bool = False) -> None:
        """Typed text from the client (a text-only user, or a transcript from the client's own ASR)."""
        self.floor.text(text, replica=replica)

    async def interrupt(self) -> None:
        """The client asked the replica to stop now (e.g. a push-to-talk button)."""
        if self._playback is not None:
            await self._apply(self.machine.on_floor("barge_in", self.now))

    async def finish(self) -> None:
        """End of the client's audio: settle the last turn, let a reply finish generating, and send the rest
        of its audio straight after what was sent (there is no input clock any more to pace it)."""
        await self.floor.finish()
        if self.perception is not None:
            await self.perception.finish()
        while True:  # a decode may chain the final one, and a released commit may start the next turn's
            while self._asr_task is not None and not self._asr_task.done():
                await asyncio.gather(self._asr_task, return_exceptions=True)
            self._awaiting_final = False
            await self._release_held()
            if not self._held:
                break
        deadline = self._clock() + END_OF_STREAM_WAIT_S
        while self._clock() < deadline:
            pending = [r.task for r in self._replies.values() if r.task is not None and not r.task.done()]
            if not pending:
                break
            await asyncio.wait(pending, timeout=max(deadline - self._clock(), 0.01))
        await self._apply(self.machine.finish(self.now))
        self._resume_at = None
        if self._playback is not None:
            for seg in self._playback.flush():
                await self._send(seg)
            pb = self._playback
            if pb.reply.done:
                await self._apply(self.machine.on_playback_end(pb.reply.reply_id, pb.end / SAMPLE_RATE))
        if self.face is not None:
            end = max(self.now, self._playback.end / SAMPLE_RATE if self._playback is not None else 0.0)
            await self.face.finish(end)
            await self._emit({"type": "video_stats", "t": round(self.now, 4), **self.face.stats.summary()})
            if self.face.failure is not None:
                err = self.face.failure
                await self._emit({"type": "error", "t": round(self.now, 4), "code": err.code, "message": err.message})
        await self.close()

    async def close(self) -> None:
        """Cancel everything this session owns (idempotent)."""
        self._closed = True
        tasks = [r.task for r in self._replies.values() if r.task is not None and not r.task.done()]
        if self._asr_task is not None and not self._asr_task.done():
            tasks.append(self._asr_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.face is not None:
            await self.face.close()
        if self.perception is not None:
            await self.perception.close()

    # ---- floor events -----------------------------------------------------------------------------------

    async def _on_floor_event(self, event: dict[str, Any]) -> None:
        await self._emit(event)
        kind, t = str(event["type"]), float(event["t"])
        if self.face is not None:
            self.face.floor_event(kind, t)
        onset = t - self.floor.machine.s.speech_start_ms / 1000  # speech_start is confirmed this late
        next_turn = any(k == "eot_commit" for k, _ in self._held)  # (a slow final decode: the user went on)
        if kind == "speech_start" and not self.floor.machine.replica_speaking:
            self._speech_start(onset, next_turn)
        elif kind == "barge_in":  # speech over the replica became a real turn: transcribe from its onset
            self._speech_start(t - self.floor.machine.s.barge_in_ms / 1000, next_turn)
        elif kind == "speech_end":
            self._last_speech_end = t - self.floor.machine.s.speech_end_ms / 1000  # the last voiced audio
            if next_turn:
                self._next_turn.append(("end", t + FINAL_PAD_S))
            else:
                self._speech_end(t + FINAL_PAD_S)
        elif kind == "eot_commit":
            self._commit_t = t
        if self._awaiting_final or self._held:
            self._held.append((kind, t))  # wait for the final transcript, keep the order
            return
        await self._floor_to_machine(kind, t)

    async def _floor_to_machine(self, kind: str, t: float, *, held: bool = False) -> None:
        if self.perception is not None and kind in ("speech_start", "eot_commit"):
            # after the final transcript (held events wait for it): the summary can quote the user's words
            await self.perception.floor_event(kind, t, self._turn_text or None)
        if self.replies:
            await self._apply(self.machine.on_floor(kind, t))
        if kind == "eot_commit":
            self._turn_text = ""
            self._schedule.end_turn()
            self._transcript.reset()
            self._awaiting_final = False
            self.floor.text("")
            later = self._held[1:] if held else self._held
            if not any(k == "eot_commit" for k, _ in later):  # the user's next turn may begin now
                calls, self._next_turn = self._next_turn, []
                for call, at in calls:
                    if call == "start":
                        self._speech_start(at, False)
                    else:
                        self._speech_end(at)

    def _speech_start(self, onset: float, next_turn: bool) -> None:
        if next_turn:
            self._next_turn.append(("start", onset))
        else:
            self._schedule.speech_start(onset)

    def _speech_end(self, at: float) -> None:
        window = self._schedule.speech_end(at)
        self._awaiting_final = window is not None or self._schedule.in_flight is not None
        if window is not None:
            self._decode_window(window)

    # ---- streaming ASR ----------------------------------------------------------------------------------

    def _maybe_partial(self) -> None:
        if not self._closed and (window := self._schedule.poll(self.now)) is not None:
            self._decode_window(window)

    def _decode_window(self, window: DecodeWindow) -> None:
        start = max(round(window.start_s * SAMPLE_RATE), 0)
        end = min(round(window.end_s * SAMPLE_RATE), self.samples)
        audio = self.floor.timeline.span(max(start, end - self.floor.timeline.capacity), end)
        name = f"{self.name}-asr-{'final' if window.final else 'partial'}"
        self._asr_task = asyncio.create_task(self._decode(window, audio), name=name)

    async def _decode(self, window: DecodeWindow, audio: Any) -> None:
        t0 = self._clock()
        result = None
        try:
            # partials only compare words; word timings are worth their alignment pass on the final only
            result = await self.models.transcribe(
                audio, prompt=self.dialogue.last_replica_text, word_timings=window.final
            )
        except DuetError as err:  # the turn goes on without this transcript; the client is told why
            await self._emit({"type": "error", "t": round(self.now, 4), "code": err.code, "message": err.message})
        if window.final:
            self._asr_final_ms = (self._clock() - t0) * 1000
        if result is not None and self._schedule.is_current(window):
            part = self._transcript.finalize(result) if window.final else self._transcript.update(result)
            self.floor.text(part.text)
            self._turn_text = part.text
            await self._emit(
                {"type": "transcript", "t": round(window.end_s, 4), "text": part.text, "final": window.final}
            )
            if self.replies:
                await self._apply(self.machine.on_transcript(part.text, window.final, self.now))
        nxt = self._schedule.decoded(window)
        if nxt is not None and not self._closed:
            self._decode_window(nxt)
        elif self._schedule.in_flight is None:
            self._awaiting_final = False
            await self._release_held()

    async def _release_held(self) -> None:
        async with self._releasing:  # the ASR task and `finish` both release; one at a time, in order
            while self._held and not self._awaiting_final:
                kind, t = self._held[0]  # still held while handled: events arriving meanwhile queue behind it
                await self._floor_to_machine(kind, t, held=True)
                self._held.pop(0)

    # ---- actions ----------------------------------------------------------------------------------------

    async def _apply(self, actions: list[sp.Action]) -> None:
        for a in actions:
            if isinstance(a, sp.StartReply):
                await self._start_reply(a)
            elif isinstance(a, sp.CancelReply):
                await self._cancel_reply(a)
            elif isinstance(a, sp.ReleaseReply):
                await self._release(a)
            elif isinstance(a, sp.PausePlayback):
                await self._pause(a)
            elif isinstance(a, sp.ResumePlayback):
                if self._playback is not None and self._playback.reply.reply_id == a.reply_id:
                    # Not at once: "Sorry, | actually..." starts with a short burst too. Resume only if the user
                    # stays quiet a moment; speech before then keeps the replica paused (see `_pause`).
                    self._resume_at = self.samples + int(RESUME_AFTER_S * SAMPLE_RATE)
            elif isinstance(a, sp.StopPlayback):
                await self._stop(a)
            elif isinstance(a, sp.CommitUserTurn):
                self.dialogue.commit_user(a.text, a.t)
                await self._emit({"type": "user_turn", "t": round(a.t, 4), "turn": a.turn, "text": a.text})
            elif isinstance(a, sp.CommitReplicaTurn):
                self.dialogue.commit_replica(a.text, a.t, interrupted=a.interrupted)
                self.floor.text(a.text, replica=True)  # the floor model's context: what the replica last said
                self._replies.pop(a.reply_id, None)
                await self._emit(
                    {
                        "type": "replica_turn",
                        "t": round(a.t, 4),
                        "reply_id": a.reply_id,
                        "text": a.text,
                        "interrupted": a.interrupted,
                    }
                )

    async def _start_reply(self, a: sp.StartReply) -> None:
        reply = _Reply(ReplyAudio(a.reply_id), started_wall=self._clock(), speculative=a.speculative)
        reply.latency["asr_final_ms"] = round(self._asr_final_ms, 1)
        self._replies[a.reply_id] = reply
        request = self.dialogue.request(a.snapshot.transcript, request_id=f"{self.name}-{a.reply_id}")
        reply.task = asyncio.create_task(self._generate(reply, request), name=f"{self.name}-reply-{a.reply_id}")
        await self._emit(
            {
                "type": "reply_started",
                "t": round(self.now, 4),
                "reply_id": a.reply_id,
                "speculative": a.speculative,
                "perception_note": self.dialogue.perception_note or None,  # what the LLM was told of the user
                "transcript": a.snapshot.transcript,
            }
        )

    async def _generate(self, reply: _Reply, request: Any) -> None:
        rid = reply.audio.reply_id
        splitter = ClauseSplitter(
            first_clause_min_chars=self.settings.tts.first_clause_min_chars,
            clause_max_chars=self.settings.tts.clause_max_chars,
        )
        clauses: asyncio.Queue[str | None] = asyncio.Queue(maxsize=64)

        async def think() -> None:
            if self.llm is None:
                raise DuetError("no LLM is configured for replies")
            reply.generating = True
            try:
                sentences = 0
                stream = self.llm.generate(request)
                async for piece in stream:
                    if reply.tokens == 0:
                        reply.latency["llm_first_token_ms"] = round((self._clock() - reply.started_wall) * 1000, 1)
                    reply.tokens += 1
                    for clause in splitter.feed(piece):
                        await clauses.put(clause)
                        sentences += clause.rstrip().endswith((".", "!", "?"))
                    if sentences >= self.persona.max_sentences:
                        # A spoken reply is short: stop generating (this cancels the request in Triton).
                        await aclose(stream)
                        break
                else:
                    for clause in splitter.flush():
                        await clauses.put(clause)
            finally:
                reply.generating = False
                await clauses.put(None)

        async def speak() -> None:
            first = True
            while (clause := await clauses.get()) is not None:
                t0 = self._clock()
                async for chunk in self.models.synthesize(clause, self.persona.voice):
                    reply.audio.chunks.append(chunk)
                    if first:
                        first = False
                        reply.latency["tts_first_chunk_ms"] = round((self._clock() - t0) * 1000, 1)
                        await self._apply(self.machine.on_reply_audio(rid, self.now))

        failure: DuetError | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(think(), name=f"{self.name}-reply-{rid}-llm")
                tg.create_task(speak(), name=f"{self.name}-reply-{rid}-tts")
        except* DuetError as group:
            first = group.exceptions[0]
            failure = first if isinstance(first, DuetError) else DuetError(str(first))
        if failure is not None:
            await self._emit(
                {"type": "error", "t": round(self.now, 4), "code": failure.code, "message": failure.message}
            )
            await self._apply(self.machine.on_reply_failed(rid, failure.message, self.now))
            return
        # What will be said: the spoken clauses (generation may have run a few tokens past the last one).
        reply.audio.text = " ".join(" ".join(c.text for c in reply.audio.chunks).split())
        reply.audio.done = True
        await self._apply(self.machine.on_reply_done(rid, reply.audio.text, self.now))

    async def _cancel_reply(self, a: sp.CancelReply) -> None:
        reply = self._replies.pop(a.reply_id, None)
        if reply is None:
            return
        generating = reply.generating
        if reply.task is not None and not reply.task.done() and reply.task is not asyncio.current_task():
            reply.task.cancel()
            await asyncio.gather(reply.task, return_exceptions=True)
        await self._emit(
            {
                "type": "reply_cancelled",
                "t": round(self.now, 4),
                "reply_id": a.reply_id,
                "reason": a.reason,
                "tokens": reply.tokens,
                "generating": generating,
            }
        )

    async def _release(self, a: sp.ReleaseReply) -> None:
        reply = self._replies.get(a.reply_id)
        if reply is None:
            return
        self._playback = Playback(reply.audio, self.samples, self._lead)
        self.floor.replica(True)
        latency = dict(reply.latency)
        latency["floor_ms"] = round(max(self._commit_t - self._last_speech_end, 0.0) * 1000, 1)
        await self._emit(
            {
                "type": "replica_speaking_start",
                "t": round(self.now, 4),
                "reply_id": a.reply_id,
                "from_speculation": reply.speculative,
                "latency": latency,
            }
        )
        await self._advance_playback()

    async def _pause(self, a: sp.PausePlayback) -> None:
        pb = self._playback
        if pb is None or pb.reply.reply_id != a.reply_id:
            return
        if self._resume_at is not None:  # still paused: the resume simply does not happen
            self._resume_at = None
            return
        at = pb.pause(self.samples)
        if self.echo is not None:
            self.echo.play(at, np.zeros(self._lead + SAMPLE_RATE // 10, dtype=np.int16))
        if self.face is not None:
            self.face.cut(at / SAMPLE_RATE)
        await self._emit({"type": "replica_paused", "t": round(at / SAMPLE_RATE, 4), "reply_id": a.reply_id})

    async def _stop(self, a: sp.StopPlayback) -> None:
        pb = self._playback
        if pb is None or pb.reply.reply_id != a.reply_id:
            return
        at = pb.pause(self.samples)
        spoken = pb.stop(at)
        self._playback = None
        self._resume_at = None
        self.floor.replica(False)
        if self.echo is not None:
            self.echo.play(at, np.zeros(self._lead + SAMPLE_RATE // 10, dtype=np.int16))
        if self.face is not None:
            self.face.cut(at / SAMPLE_RATE)
        await self._emit(
            {
                "type": "replica_speaking_stop",
                "t": round(at / SAMPLE_RATE, 4),
                "reply_id": a.reply_id,
                "interrupted": True,
                "spoken_text": spoken,
            }
        )
        await self._apply(self.machine.on_playback_stopped(a.reply_id, spoken, at / SAMPLE_RATE))

    async def _advance_playback(self) -> None:
        pb = self._playback
        if pb is None:
            return
        if self._resume_at is not None and self.samples >= self._resume_at:
            self._resume_at = None
            pb.resume(self.samples)
            await self._emit({"type": "replica_resumed", "t": round(self.now, 4), "reply_id": pb.reply.reply_id})
        for seg in pb.due(self.samples):
            await self._send(seg)
        if pb.finished(self.samples):
            self._playback = None
            self.floor.replica(False)
            t_end = pb.end / SAMPLE_RATE
            await self._emit(
                {
                    "type": "replica_speaking_stop",
                    "t": round(t_end, 4),
                    "reply_id": pb.reply.reply_id,
                    "interrupted": False,
                    "spoken_text": pb.reply.text,
                }
            )
            await self._apply(self.machine.on_playback_end(pb.reply.reply_id, t_end))

    async def _send(self, seg: Segment) -> None:
        if self.echo is not None:
            self.echo.play(seg.start, seg.pcm)
        assert self._playback is not None
        if self.face is not None:
            first = self._playback.sent - seg.pcm.shape[0]  # the reply offset of the segment's first sample
            self.face.audio(self._playback.reply.chunks, first, first + seg.pcm.shape[0], seg.start / SAMPLE_RATE)
        await self._send_audio(seg.pcm.astype("<i2").tobytes(), self._playback.reply.reply_id, seg.start / SAMPLE_RATE)
