"""One spoken conversation: the parts wired together, and the reply machine's actions executed.

A chunk of the user's audio walks through the parts in order:
1. the echo canceller takes the replica's own voice out of it (`signal/echo.py`);
2. `FloorSession` runs VAD and the floor model on it and reports floor events (`session/floor.py`,
   `turns/floor.py`);
3. each floor event is sent to the client, then queued in the transcription gate (`speech/gate.py`), which
   schedules the turn's decodes (`session/transcriber.py`) and lets the event go on only once the words it
   concerns are transcribed;
4. perception and the reply machine (`turns/replies.py`, pure) decide on it; the machine's actions start and
   cancel replies (`session/replies.py`: LLM → clauses → TTS), put the released one on the timeline and
   pause, resume or stop it (`session/voice.py`), and write the history (`session/dialogue.py`);
5. the replica's audio due by the end of the chunk goes out (the outlet), and the face's clock moves on.

This class owns the parts and executes actions; every decision is made in the pure machines. All `t` are
seconds on the session audio clock (the user's input).

Without replies (`replies=False`) it is the `floor` session (floor events and transcripts: `duet turns`) or,
with perception, the `perceive` session (`duet perceive`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast

import numpy as np

from orchestrator.config import FloorSettings, Settings
from orchestrator.errors import BadInteraction, DuetError, UnknownToolCall
from orchestrator.events import (
    ErrorEvent,
    Event,
    FloorEvent,
    InteractionEvent,
    ReplicaTurn,
    ReplyCancelled,
    ReplyClauseDropped,
    ReplyStarted,
    ToolCall,
    TranscriptEvent,
    UserTurn,
    VideoStarted,
)
from orchestrator.face.driver import FaceDriver
from orchestrator.models.ports import ChatMessage, ConversationModels, LanguageModel, LlmRequest
from orchestrator.perception.pipeline import PerceptionSession
from orchestrator.session.base import Control, Outlet
from orchestrator.session.dialogue import Dialogue
from orchestrator.session.floor import FloorSession
from orchestrator.session.grounding import Grounding, RailHit, ReplyLayer
from orchestrator.session.interactions import (
    AppendContext,
    Echo,
    Interaction,
    Interrupt,
    Level,
    OverwriteContext,
    Respond,
    Sensitivity,
    ToolResult,
    flow_settings,
    pauses_at_onset,
)
from orchestrator.session.persona import Persona
from orchestrator.session.replies import ReplyRunner
from orchestrator.session.transcriber import Transcriber
from orchestrator.session.voice import ReplicaVoice
from orchestrator.signal.audio import SAMPLE_RATE
from orchestrator.signal.echo import EchoCanceller
from orchestrator.speech.gate import Heard, TranscriptGate
from orchestrator.speech.guard import ReplyGuard
from orchestrator.speech.prompt import decoder_prompt
from orchestrator.turns import replies as rm

log = logging.getLogger("duet.conversation")

Clock = Callable[[], float]


P = ParamSpec("P")
R = TypeVar("R")


def _weakly(method: Callable[P, R]) -> Callable[P, R]:
    """A bound `method` that does not keep its object alive (a part's callback into the session that owns it).
    Called after the object was freed it raises ReferenceError, as a `weakref.proxy` does."""
    ref = weakref.WeakMethod(method)
    name = method.__qualname__

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        bound = ref()
        if bound is None:
            raise ReferenceError(f"{name}: its session has been freed")
        return bound(*args, **kwargs)

    return call


class ConversationSession:
    def __init__(
        self,
        models: ConversationModels,
        llm: LanguageModel | None,
        settings: Settings,
        persona: Persona,
        outlet: Outlet,
        *,
        floor: FloorSettings | None = None,
        speculation: bool | None = None,
        echo_suppression: bool | None = None,
        replies: bool = True,
        name: str = "session",
        clock: Clock = time.perf_counter,
        face: FaceDriver | None = None,
        perception: PerceptionSession | None = None,
        layer: ReplyLayer | None = None,
        warm_words: bool | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.persona = persona
        self.out = outlet
        self.replying = replies  # False: floor events and transcripts only (`floor` and `perceive` sessions)
        self.face = face  # the replica's video, when the session asked for it
        self.perception = perception  # the user's voice and camera, described for the LLM
        self._clock = clock
        self._closed = False
        self._finishing = False  # the input ended: no later reply needs a warm cache
        history = int((settings.asr.max_utterance_s + 2) * SAMPLE_RATE)
        # The parts below call back into this session: they hold it weakly, so that an ended session is freed
        # by reference counting with all its buffers (the echo canceller's rings alone are 6 MiB), not minutes
        # later by the cycle collector's rare full passes (a soak grew ~7 MiB a session until one came).
        me = cast("ConversationSession", weakref.proxy(self))
        self.floor = FloorSession(
            models,
            floor or settings.floor,
            _weakly(self._on_floor_event),
            max_chunk_ms=settings.server.max_audio_chunk_ms,
            clock=clock,
            history=history,
            name=name,
        )
        use_echo = settings.conversation.echo_suppression if echo_suppression is None else echo_suppression
        # The canceller's own block size, not the largest chunk a client may send (it splits those): its FFT size
        # and adaptation step follow the block, and a 200 ms block made it 2x dearer and 7x slower to converge.
        self.echo = EchoCanceller(SAMPLE_RATE) if use_echo else None
        self.gate = TranscriptGate(
            self.floor.machine.s,
            partial_interval_ms=settings.asr.partial_interval_ms,
            max_utterance_s=settings.asr.max_utterance_s,
        )
        self.dialogue = Dialogue(persona, history_turns=settings.llm.history_turns, stop=settings.llm.stop)
        self.dialogue.context = persona.context
        self._warm_history = settings.llm.warm_history and settings.llm.backend == "triton"
        # The user's words, evaluated while they speak (`llm.warm_words`, the `warm_words` option): a prefill of
        # the next reply's prompt with the latest transcript, one at a time per session, the newest waiting. When
        # the reply layer grounds replies in a context, only with `llm.warm_context`: the prompt then holds the
        # context the layer would retrieve for those words (`words_context`), before them, and the reply finds it
        # evaluated when the final words retrieve the same.
        words = settings.llm.warm_words if warm_words is None else warm_words
        self._grounded = layer is not None and layer.grounds_context
        self._warm_words = self._warm_history and words and (not self._grounded or settings.llm.warm_context)
        self._words_task: asyncio.Task[None] | None = None
        self._words_next = ""  # words heard while a prefill of earlier ones ran
        self._words_sent: tuple[ChatMessage, ...] = ()  # the prompt last prefilled
        self._words_context = ""  # the reply layer's context for the words last heard
        self.transcriber = Transcriber(
            models,
            self.gate,
            self.floor.timeline,
            me,
            prompt=lambda: decoder_prompt(persona.vocabulary),  # never the replica's words (Whisper copies them)
            name=name,
            clock=clock,
        )
        spec = settings.conversation.speculation and persona.speculation if speculation is None else speculation
        self.machine = rm.ReplyMachine(speculation=spec)
        self.runner = ReplyRunner(
            llm,
            models,
            persona,
            me,
            clauses=settings.tts,
            name=name,
            clock=clock,
        )
        lead = settings.conversation.playback_lead_ms * SAMPLE_RATE // 1000
        self.voice = ReplicaVoice(outlet, self.floor, lead=lead, echo=self.echo, face=face)
        self._draining = False  # a task is handing the gate's events to the machines (see `_drain`)
        self._last_speech_end = 0.0  # the user's last voiced audio, and the commit after it: the floor's share
        self._commit_t = 0.0  # of a reply's latency
        if perception is not None:
            perception.on_note = _weakly(self._set_perception_note)
        # The conversational flow (`sensitivity`): levels applied to the floor settings the session began with,
        # never to the current ones, so "medium" always restores them exactly.
        self._floor_base = self.floor.machine.s
        self.patience: Level = "medium"
        self.interruptibility: Level = "medium"
        # The intelligence layer (documents, memories, guardrails, objectives, tools) of a conversation joined
        # through the API; None: replies from the dialogue alone.
        self.layer = layer
        if layer is not None:
            layer.bind(_weakly(self._layer_event), lambda: me.now)
        self._held_events: dict[int, list[Event]] = {}  # a reply's events, sent when it is released
        self._released: set[int] = set()
        # Tool calls waiting for their `tool_result`, by call id (the user turn that asked; the reply layer
        # keeps the call itself).
        self.tool_calls: dict[str, str] = {}
        self._follow_ups: dict[str, str] = {}  # a tool's result, by the user turn its follow-up reply answers
        self._tasks: set[asyncio.Task[None]] = set()  # tool calls waiting for their choice; words prefills

    # ---- the Session protocol ---------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.floor.timeline.now

    @property
    def samples(self) -> int:
        return self.floor.timeline.samples

    async def start(self) -> None:
        if self.face is not None:
            v = self.face.s
            await self.out.event(VideoStarted(0.0, v.fps, v.width, v.height))
            self.face.start()
        if self.perception is not None:
            self.perception.start()
        if self.layer is not None:
            for event in await self.layer.opening():
                await self.out.event(event)
        if self.replying and self.persona.greeting:
            await self._apply(self.machine.greet(self.persona.greeting, self.now))
        elif self.replying:
            self._warm()  # the system prompt, evaluated while the user says hello (~2 s with the 0.5B)

    def _warm(self) -> None:
        """Have the model evaluate the prompt so far (`llm.warm_history`): the next reply finds it cached.
        Not once the input has ended: no reply follows, and closing would wait for the prefill."""
        if not self._warm_history or self._finishing:
            return
        if warm := self.dialogue.warm_request(request_id=f"{self.name}-warm"):
            self.runner.warm(warm)

    def _warm_user_words(self, text: str) -> None:
        """Prefill the next reply's prompt with the user's words so far (`llm.warm_words`): the reply then
        evaluates only the words the transcript has changed or added since (and, with a reply layer, only what
        its context changed). One prefill at a time; words heard meanwhile wait for it, and only the newest are
        sent."""
        if not self._warm_words or self._finishing or self._closed or not self._awaiting_reply:
            return
        if self._words_task is not None and not self._words_task.done():
            self._words_next = text
            return
        self._words_next = ""
        self._words_task = task = asyncio.create_task(self._prefill_words(text), name=f"{self.name}-llm-words")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        session = weakref.ref(self)  # (a prefill outliving a freed session must not call into it)

        def warmed(_: asyncio.Task[None]) -> None:
            if (s := session()) is not None and s._words_next:
                s._warm_user_words(s._words_next)

        task.add_done_callback(warmed)

    @property
    def _awaiting_reply(self) -> bool:
        """No reply is committed or playing: the next reply's prompt ends with the user's words (otherwise the
        replica's turn, not yet in the history, will come before them)."""
        return self.machine.phase in (rm.Phase.LISTENING, rm.Phase.SPECULATING)

    async def _prefill_words(self, text: str) -> None:
        context = await self.layer.words_context(text) if self.layer is not None and self._grounded else ""
        if context is None or self._closed or self._finishing:
            return  # (the layer could not tell what the reply's context would be: nothing worth evaluating)
        if not self._awaiting_reply:
            return  # a reply committed meanwhile (while the context was looked up): it does this work itself
        if context:
            # A retrieved context costs seconds to evaluate on a CPU, and the first words of a question often
            # retrieve something else than the whole: only one that two transcripts in a row retrieved is sent.
            seen, self._words_context = self._words_context, context
            if context != seen:
                return
        request = self.dialogue.words_request(text, request_id=f"{self.name}-words", context=context)
        if request is None or request.messages == self._words_sent:
            return
        self._words_sent = request.messages
        if (warm := self.runner.warm(request)) is not None:
            await asyncio.shield(warm)  # (closing cancels this task, never the prefill: the runner waits for it)

    async def audio(self, pcm: bytes, arrival: float | None = None) -> None:
        if self.echo is not None:
            self.floor.timeline.check(pcm)  # a bad chunk is refused before anything sees it
            mic = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
            pcm = self.echo.process(self.samples, mic).astype("<i2").tobytes()
        await self.floor.audio(pcm, arrival)
        if self.perception is not None:
            self.perception.audio(pcm, self.now, arrival if arrival is not None else self._clock())
        self.transcriber.poll(self.now)
        if self.replying:
            await self._apply(self.machine.tick(self.now))
        await self._advance()
        if self.face is not None:
            self.face.advance(self.now)

    def video(self, jpeg: bytes, t: float, arrival: float) -> None:
        if self.perception is not None:
            self.perception.video(jpeg, t, arrival)

    def text(self, text: str, *, replica: bool = False) -> None:
        """Typed text from the client (a text-only user, or a transcript from the client's own ASR)."""
        self.floor.text(text, replica=replica)

    async def control(self, kind: Control) -> None:
        if not self.replying:  # the client speaks for the replica: it marks the replica's speech itself
            self.floor.replica(kind is Control.REPLICA_SPEAKING_START)
        elif kind is Control.INTERRUPT and self.voice.playback is not None:
            await self._apply(self.machine.on_floor("barge_in", self.now))
        # (with replies, the server knows when the replica speaks: the client's marks are not needed)

    async def finish(self, *, left: bool = False) -> None:
        """End of the client's audio: settle the last turn, let a reply finish generating, and send the rest
        of its audio straight after what was sent (there is no input clock any more to pace it). When the user
        `left` (a hang-up), the last turn still reaches the transcript, but the replica stops where it was
        heard: no reply is generated, spoken or rendered for nobody."""
        self._finishing = True
        await self.floor.finish()
        if self.perception is not None:
            await self.perception.finish()
        while True:  # a decode may chain the final one, and a released commit may start the next turn's
            await self.transcriber.idle()
            self.gate.flush()
            await self._drain()
            if not self.gate.pending and not self.transcriber.busy:
                break
        if left:
            await self._apply(self.machine.finish(self.now, left=True))
        await self.runner.settle()
        await self._apply(self.machine.finish(self.now))
        ended = await self.voice.flush()
        if ended is not None:
            await self._apply(self.machine.on_playback_end(*ended))
        if self.face is not None:
            await self.face.finish(max(self.now, self.voice.end))
            await self.out.event(self.face.stats.event(self.now))
        await self.close()

    async def close(self) -> None:
        """Cancel everything this session owns (idempotent)."""
        self._closed = True
        await self.runner.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.layer is not None:
            await self.layer.close()
        await self.transcriber.close()
        if self.face is not None:
            await self.face.close()
        if self.perception is not None:
            await self.perception.close()

    # ---- interactions -------------------------------------------------------------------------------------

    async def interact(self, interaction: Interaction) -> None:
        """Carry out an interaction (`orchestrator/session/interactions.py`). Its `interaction` event comes first,
        then what it causes (a stop, a cancel, the reply it started). Raises a non-fatal `DuetError` when it
        cannot be carried out; the transport reports it and the session goes on."""
        i = interaction
        if not self.replying:
            mode = "perceive" if self.perception is not None else "floor"
            raise BadInteraction(f"`{i.type}`: a mode={mode} session has no replies to steer")
        if self._closed:
            raise BadInteraction(f"`{i.type}`: the session has ended")
        if isinstance(i, Echo | Respond):
            say = self.machine.say if isinstance(i, Echo) else self.machine.respond
            actions = say(i.text, self.now)
            started = next((a.reply_id for a in actions if isinstance(a, rm.StartReply)), None)
            await self.out.event(InteractionEvent(round(self.now, 4), i.type, started))
            await self._apply(actions)
            return
        if isinstance(i, ToolResult):
            await self._tool_result(i)
            return
        await self.out.event(InteractionEvent(round(self.now, 4), i.type))
        if isinstance(i, Interrupt):
            await self.control(Control.INTERRUPT)
        elif isinstance(i, OverwriteContext):
            await self.set_context(i.text)
        elif isinstance(i, AppendContext):
            await self.append_context(i.text)
        elif isinstance(i, Sensitivity):
            self.set_flow(i.turn_taking_patience, i.replica_interruptibility)

    def set_flow(self, patience: Level | None = None, interruptibility: Level | None = None) -> None:
        """The conversational flow's levels, live (None keeps a level): the floor machine (and the transcript gate,
        which places a barge-in turn's start with the same thresholds) take the new settings from the next
        chunk on, and the reply machine whether the replica pauses at the user's onset."""
        self.patience = patience or self.patience
        self.interruptibility = interruptibility or self.interruptibility
        settings = flow_settings(self._floor_base, self.patience, self.interruptibility)
        self.floor.set_settings(settings)
        self.gate.floor = settings
        self.machine.pause_on_speech = pauses_at_onset(self.interruptibility)

    async def _tool_result(self, result: ToolResult) -> None:
        """A tool's output came back: the replica answers the turn that called it again, with the output in its
        context (a follow-up reply, started at once)."""
        user_text = self.tool_calls.get(result.call_id)
        context = self.layer.tool_result(result.call_id, result.output) if self.layer is not None else None
        if user_text is None or context is None:
            raise UnknownToolCall(f"no tool call {result.call_id[:64]!r} is waiting for a result in this session")
        del self.tool_calls[result.call_id]
        actions = self.machine.follow_up(user_text, self.now)
        started = next((a.reply_id for a in actions if isinstance(a, rm.StartReply)), None)
        await self.out.event(InteractionEvent(round(self.now, 4), result.type, started))
        self._follow_ups[user_text] = context
        await self._apply(actions)

    # ---- context ------------------------------------------------------------------------------------------

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
        if self.replying and not self._closed:
            await self._apply(self.machine.on_context_changed(self.now))

    async def append_context(self, text: str) -> None:
        """Add to the conversation's context (the `append_context` interaction); see `set_context`."""
        if text.strip():
            await self.set_context(f"{self.dialogue.context}\n{text}" if self.dialogue.context else text)

    # ---- floor events, through the transcription gate --------------------------------------------------------

    async def _on_floor_event(self, event: FloorEvent) -> None:
        await self.out.event(event)
        kind, t = event.kind, event.t
        if self.face is not None:
            self.face.floor_event(kind, t)
        if kind == "speech_end":
            self._last_speech_end = t - self.floor.machine.s.speech_end_ms / 1000  # the last voiced audio
        elif kind == "eot_commit":
            self._commit_t = t
        self.transcriber.run(self.gate.on_floor(kind, t, replica_speaking=self.floor.machine.replica_speaking))
        await self._drain()

    async def _drain(self) -> None:
        """Hand the gate's ready floor events to perception and the reply machine, in order. One task at a time:
        an event queued while another task drains is taken by that task's loop, after the ones before it."""
        if self._draining:
            return
        self._draining = True
        try:
            while (ready := self.gate.ready()) is not None:
                kind, t = ready
                if self.perception is not None and kind in ("speech_start", "eot_commit"):
                    # after the final transcript (the gate waits for it): the summary can quote the user's words
                    await self.perception.floor_event(kind, t, self.gate.turn_text or None)
                if self.replying:
                    await self._apply(self.machine.on_floor(kind, t))
                if kind == "eot_commit":
                    self.floor.text("")
                self.transcriber.run(self.gate.delivered())
        finally:
            self._draining = False

    # ---- the transcriber's reports (TranscriptListener) --------------------------------------------------

    async def heard(self, heard: Heard) -> None:
        await self.floor.heard(heard.text, final=heard.final, upto=heard.t)
        await self.out.event(TranscriptEvent(round(heard.t, 4), heard.text, heard.final))
        if self.replying:
            await self._apply(self.machine.on_transcript(heard.text, heard.final, self.now))
            if not (heard.final and self._reply_due()):
                self._warm_user_words(heard.text)

    def _reply_due(self) -> bool:
        """A floor decision that starts a reply waits only for this final transcript: the reply follows at once
        and evaluates the words itself. A prefill of them now would only hold the model's context (on one
        thread: `EnginePool`) while the reply waits for it: ~250 ms of a reply's first token in the
        conversation bench's calls, against ~100-150 ms for the reply to evaluate the same words."""
        return self.gate.queued("eot_commit", *(("eot_tentative",) if self.machine.speculation else ()))

    async def settled(self) -> None:
        await self._drain()

    async def failed(self, error: DuetError) -> None:
        await self.out.event(ErrorEvent.of(error, self.now))  # the turn goes on without this transcript

    # ---- the reply runner's reports (ReplyProgress) -------------------------------------------------------

    async def reply_audio(self, reply_id: int) -> None:
        await self._apply(self.machine.on_reply_audio(reply_id, self.now))

    async def reply_done(self, reply_id: int, text: str) -> None:
        await self._apply(self.machine.on_reply_done(reply_id, text, self.now))

    async def reply_failed(self, reply_id: int, error: DuetError) -> None:
        await self.out.event(ErrorEvent.of(error, self.now))
        await self._apply(self.machine.on_reply_failed(reply_id, error.message, self.now))

    async def clause_dropped(self, reply_id: int, reason: str, text: str) -> None:
        await self.out.event(ReplyClauseDropped(round(self.now, 4), reply_id, reason, text))

    async def reply_event(self, reply_id: int, event: Event) -> None:
        if reply_id in self._released:
            await self.out.event(event)
        else:
            self._held_events.setdefault(reply_id, []).append(event)

    async def _layer_event(self, event: Event) -> None:
        """An event the reply layer found in the background (an objective completed)."""
        if not self._closed:
            await self.out.event(event)

    # ---- the reply machine's actions ------------------------------------------------------------------------

    async def _apply(self, actions: list[rm.Action]) -> None:
        for a in actions:
            if isinstance(a, rm.StartReply):
                await self._start_reply(a)
            elif isinstance(a, rm.CancelReply):
                await self._cancel_reply(a)
            elif isinstance(a, rm.ReleaseReply):
                await self._release(a)
            elif isinstance(a, rm.PausePlayback):
                await self.voice.pause(a.reply_id, self.samples)
            elif isinstance(a, rm.ResumePlayback):
                await self.voice.resume(a.reply_id, self.samples)
            elif isinstance(a, rm.StopPlayback):
                stopped = await self.voice.stop(a.reply_id, self.samples)
                if stopped is not None:
                    await self._apply(self.machine.on_playback_stopped(a.reply_id, *stopped))
            elif isinstance(a, rm.CommitUserTurn):
                self.dialogue.commit_user(a.text, a.t)
                await self.out.event(UserTurn(round(a.t, 4), a.turn, a.text))
            elif isinstance(a, rm.CommitReplicaTurn):
                self._released.discard(a.reply_id)
                if self.layer is not None and a.text:
                    last_user = next((t.text for t in reversed(self.dialogue.turns) if t.role == "user"), "")
                    self.layer.turn_heard(last_user, a.text)
                self.dialogue.commit_replica(a.text, a.t, interrupted=a.interrupted)
                reply = self.runner.get(a.reply_id)
                if reply is not None and reply.grounding is not None and reply.grounding.script is not None:
                    # A turn a guardrail answered leaves the LLM's history, with its fallback: the model neither
                    # goes on with the forbidden topic nor parrots the fallback (the transcript keeps both).
                    self.dialogue.forget_last_exchange()
                self._warm()
                self.floor.text(a.text, replica=True)  # the floor model's context: what the replica last said
                self.runner.forget(a.reply_id)
                await self.out.event(ReplicaTurn(round(a.t, 4), a.reply_id, a.text, a.interrupted))

    async def _start_reply(self, a: rm.StartReply) -> None:
        asr_ms = round(self.transcriber.final_ms, 1)
        if a.script:
            self.runner.start(a.reply_id, None, speculative=False, asr_final_ms=asr_ms, script=a.script)
        elif self.layer is not None:
            reply = self.runner.start(
                a.reply_id,
                None,
                speculative=a.speculative,
                asr_final_ms=asr_ms,
                prepare=lambda: self._prepare(a),
                rails=self._rails,
            )
            reply.user_text = a.snapshot.transcript
        else:
            request = self.dialogue.request(a.snapshot.transcript, request_id=f"{self.name}-{a.reply_id}")
            guard = self.dialogue.guard(a.snapshot.transcript)
            self.runner.start(a.reply_id, request, speculative=a.speculative, asr_final_ms=asr_ms, guard=guard)
        await self.out.event(
            ReplyStarted(
                round(self.now, 4),
                a.reply_id,
                a.speculative,
                self.dialogue.perception_note or None,  # what the LLM was told of the user
                a.snapshot.transcript,
            )
        )

    async def _prepare(self, a: rm.StartReply) -> tuple[LlmRequest | None, Grounding, ReplyGuard]:
        """A reply's grounding (in the reply's task: a speculative reply retrieves while the floor decides), and
        the request built with it."""
        assert self.layer is not None
        text = a.snapshot.transcript
        follow_up = self._follow_ups.pop(text, None)
        if follow_up is not None:  # a tool's result: answer with it, and nothing else to decide
            grounding = Grounding(context=follow_up)
        else:
            grounding = await self.layer.ground(text, speculative=a.speculative)
        self.dialogue.steer = grounding.notes
        guard = self.dialogue.guard(text)
        if grounding.script is not None:
            return None, grounding, guard
        request = self.dialogue.request(
            text, request_id=f"{self.name}-{a.reply_id}", context=grounding.context, follow_up=follow_up is not None
        )
        return request, grounding, guard

    async def _send_tool_call(self, choice: asyncio.Future[ToolCall | None], user_text: str) -> None:
        """Send the turn's tool call, if its choice makes one (after the reply that answered the turn)."""
        try:
            call = await choice
        except (DuetError, asyncio.CancelledError):
            return
        if call is None or self._closed:
            return
        self.tool_calls[call.call_id] = user_text
        await self.out.event(dataclasses.replace(call, t=round(self.now, 4)))

    def _watch(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rails(self, clause: str, previous: str) -> RailHit | None:
        return await self.layer.check_clause(clause, previous) if self.layer is not None else None

    async def _cancel_reply(self, a: rm.CancelReply) -> None:
        cancelled = await self.runner.cancel(a.reply_id)
        self._held_events.pop(a.reply_id, None)
        if cancelled is not None:
            reply, generating = cancelled
            choice = reply.grounding.tool_choice if reply.grounding is not None else None
            if choice is not None and a.reply_id not in self._released:
                choice.cancel()  # a reply never heard asks for nothing (a heard one has: its call goes out)
            await self.out.event(ReplyCancelled(round(self.now, 4), a.reply_id, a.reason, reply.tokens, generating))

    async def _release(self, a: rm.ReleaseReply) -> None:
        reply = self.runner.get(a.reply_id)
        if reply is None:
            return
        self._released.add(a.reply_id)
        g = reply.grounding
        if g is not None:  # what the reply used, said now that it is heard (never for a cancelled speculation)
            for event in g.events:
                await self.out.event(event)
            if g.tool_choice is not None:
                self._watch(self._send_tool_call(g.tool_choice, reply.user_text), f"{self.name}-tool-call")
        for event in self._held_events.pop(a.reply_id, []):
            await self.out.event(event)
        floor_ms = round(max(self._commit_t - self._last_speech_end, 0.0) * 1000, 1)
        await self.voice.release(
            reply.audio, self.samples, from_speculation=reply.speculative, latency=reply.latency(floor_ms)
        )
        await self._advance()

    async def _advance(self) -> None:
        ended = await self.voice.advance(self.samples)
        if ended is not None:
            await self._apply(self.machine.on_playback_end(*ended))
