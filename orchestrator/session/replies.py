"""The reply runner: each reply the reply machine starts runs as one owned task, LLM → clauses → guard → TTS.

The LLM's tokens go through the clause splitter; each clause passes the reply guard (`speech/guard.py`: no
narration of notes, no repetition, no speaking as the user, no markup, no unfinished last sentence) and is
synthesised as soon as it is complete, its audio appended to the reply's `ReplyAudio` (which playback reads
once the reply is released). A spoken reply is short: generation stops after the persona's `max_sentences`
spoken sentences. If the guard drops everything, the replica asks the user to say it again rather than stay
silent. A scripted reply (the greeting) skips the LLM. `warm` has the model evaluate the history while the
user speaks, so the next reply's prompt is mostly in the model's cache already. The runner reports progress
(first audio, done, failed) to its owner, which feeds the reply machine. Cancelling a reply cancels its task;
that closes the model streams, which cancels the requests in Triton (or the HTTP stream of an
OpenAI-compatible endpoint).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.errors import DuetError
from orchestrator.events import Event, ReplyLatency
from orchestrator.models.ports import LanguageModel, LlmRequest, SpeechSynthesizer
from orchestrator.session.grounding import Grounding, RailHit
from orchestrator.session.persona import Persona
from orchestrator.session.playback import ReplyAudio
from orchestrator.speech.clauses import ClauseLengths, ClauseSplitter, continues
from orchestrator.speech.guard import ReplyGuard, complete
from orchestrator.speech.onset import GAP_S, KEEP_S, trim_lead

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# A reply's preparation, run first in its own task: the request built with the grounding (None: say the
# grounding's script), the grounding, and the guard that knows the request's notes. Rails check a clause before
# the TTS (None: it may be spoken).
Prepare = Callable[[], Awaitable[tuple[LlmRequest | None, Grounding, ReplyGuard]]]
Rails = Callable[[str, str], Awaitable[RailHit | None]]
# What the voice is asked to say: a clause, and whether it stops mid-sentence (spoken as a clause that goes on)
Segment = tuple[str, bool]
FALLBACK = "Sorry, could you say that again?"  # when the guard let nothing of a reply through
WARM_CLOSE_WAIT_S = 10.0  # how long closing waits for a warm-up (a prefill) still in the model
END_OF_STREAM_WAIT_S = 60.0  # at the end of the input, how long a reply still generating may take to finish


async def aclose(stream: AsyncIterator[Any]) -> None:
    """Close an async generator early (closing it cancels the model request behind it)."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


@dataclass
class Reply:
    """One reply in flight: its audio as it is synthesised, and what it cost so far."""

    audio: ReplyAudio
    speculative: bool
    started_wall: float
    task: asyncio.Task[None] | None = None
    tokens: int = 0
    generating: bool = False  # the LLM stream is open (a cancel now stops it in the model)
    asr_final_ms: float | None = None
    llm_first_token_ms: float | None = None
    tts_first_chunk_ms: float | None = None
    user_text: str = ""  # the user's turn it answers
    grounding: Grounding | None = None  # what the reply layer gave it (sent on when the reply is released)
    grounding_ms: float | None = None  # how long preparing it took (retrieval, input rails, tool choice)

    @property
    def reply_id(self) -> int:
        return self.audio.reply_id

    def latency(self, floor_ms: float | None = None) -> ReplyLatency:
        return ReplyLatency(
            self.asr_final_ms, self.llm_first_token_ms, self.tts_first_chunk_ms, floor_ms, self.grounding_ms
        )


class ReplyProgress(Protocol):
    """What the runner tells its owner (the conversation session feeds each to the reply machine)."""

    async def reply_audio(self, reply_id: int) -> None:
        """The reply's first audio is buffered: it is playable."""
        ...

    async def reply_done(self, reply_id: int, text: str) -> None:
        """Generation finished; `text` is what will be said."""
        ...

    async def reply_failed(self, reply_id: int, error: DuetError) -> None: ...

    async def clause_dropped(self, reply_id: int, reason: str, text: str) -> None:
        """The guard kept a clause from being spoken."""
        ...

    async def reply_event(self, reply_id: int, event: Event) -> None:
        """Something the reply found while generating (an output rail held); sent once the reply is heard."""
        ...


class ReplyRunner:
    def __init__(
        self,
        llm: LanguageModel | None,
        tts: SpeechSynthesizer,
        persona: Persona,
        progress: ReplyProgress,
        *,
        clauses: ClauseLengths,
        name: str = "session",
        clock: Clock = time.perf_counter,
    ) -> None:
        self.llm = llm
        self.tts = tts
        self.persona = persona
        self.progress = progress
        self.name = name
        self._clock = clock
        self._clauses = clauses
        self._replies: dict[int, Reply] = {}
        self._warming: set[asyncio.Task[None]] = set()

    def warm(self, request: LlmRequest) -> asyncio.Task[None] | None:
        """Send `request` (a prefill: `max_tokens` 0, nothing generated; the history, or the history and the
        user's words so far): the model evaluates the prompt now, not when the next reply needs it. Returns the
        request's task (None without an LLM). Best effort: a failure is logged, never reported
        (the reply that follows meets the same failure and reports it). A warm-up is never cancelled: it
        cannot stop mid-evaluation anyway, and cancelling the many short requests of sessions opened and
        closed at once crashed tritonserver (a segfault in one CI run of the churn e2e test); `close` waits
        for it instead."""
        if self.llm is None:
            return None
        task = asyncio.create_task(self._warm(request), name=f"{self.name}-llm-warm")
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)
        return task

    async def _warm(self, request: LlmRequest) -> None:
        assert self.llm is not None
        stream = self.llm.generate(request)
        try:
            async for _ in stream:
                pass
        except DuetError as exc:
            log.warning("%s: warming the LLM's cache failed: %s", self.name, exc)
        finally:
            await aclose(stream)

    def get(self, reply_id: int) -> Reply | None:
        return self._replies.get(reply_id)

    def start(
        self,
        reply_id: int,
        request: LlmRequest | None,
        *,
        speculative: bool,
        asr_final_ms: float,
        guard: ReplyGuard | None = None,
        script: str = "",
        prepare: Prepare | None = None,
        rails: Rails | None = None,
    ) -> Reply:
        """Start a reply: generated from `request`, or the `script` spoken as it is (then `request` is None).
        With `prepare`, the request (or a script) comes from it, first thing in the reply's task; `rails` check
        each clause before it is spoken."""
        reply = Reply(ReplyAudio(reply_id), speculative, self._clock(), asr_final_ms=asr_final_ms)
        self._replies[reply_id] = reply
        guard = guard or ReplyGuard()
        reply.task = asyncio.create_task(
            self._run(reply, request, guard, script, prepare, rails), name=f"{self.name}-reply-{reply_id}"
        )
        return reply

    async def cancel(self, reply_id: int) -> tuple[Reply, bool] | None:
        """Stop a reply end to end and forget it. Returns it, and whether the cancel stopped the model while it
        was generating (None if the reply is unknown)."""
        reply = self._replies.pop(reply_id, None)
        if reply is None:
            return None
        generating = reply.generating
        task = reply.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return reply, generating

    def forget(self, reply_id: int) -> None:
        """The reply has been heard (its turn is written): nothing of it is needed any more."""
        self._replies.pop(reply_id, None)

    async def settle(self, wait_s: float = END_OF_STREAM_WAIT_S) -> None:
        """Let the replies still generating finish (at the end of the input), at most `wait_s`."""
        deadline = self._clock() + wait_s
        while self._clock() < deadline:
            pending = [r.task for r in self._replies.values() if r.task is not None and not r.task.done()]
            if not pending:
                return
            await asyncio.wait(pending, timeout=max(deadline - self._clock(), 0.01))

    async def close(self) -> None:
        tasks = [r.task for r in self._replies.values() if r.task is not None and not r.task.done()]
        if self._warming:  # let the warm-ups finish (see `warm`); cancelled only if the model hangs
            _, late = await asyncio.wait(set(self._warming), timeout=WARM_CLOSE_WAIT_S)
            tasks += late
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- one reply ---------------------------------------------------------------------------------------

    async def _run(
        self,
        reply: Reply,
        request: LlmRequest | None,
        guard: ReplyGuard,
        script: str,
        prepare: Prepare | None = None,
        rails: Rails | None = None,
    ) -> None:
        rid = reply.reply_id
        clauses: asyncio.Queue[Segment | None] = asyncio.Queue(maxsize=64)
        failure: DuetError | None = None
        if prepare is not None:
            t0 = self._clock()
            request, reply.grounding, guard = await prepare()
            reply.grounding_ms = round((self._clock() - t0) * 1000, 1)
            if request is None:
                script = reply.grounding.script or ""
        think = self._recite(script, clauses) if request is None else self._think(reply, request, guard, clauses, rails)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(think, name=f"{self.name}-reply-{rid}-llm")
                tg.create_task(self._speak(reply, clauses), name=f"{self.name}-reply-{rid}-tts")
        except* DuetError as group:
            first = group.exceptions[0]
            failure = first if isinstance(first, DuetError) else DuetError(str(first))
        if failure is not None:
            await self.progress.reply_failed(rid, failure)
            return
        # What will be said: the spoken clauses (generation may have run a few tokens past the last one).
        reply.audio.text = " ".join(" ".join(c.text for c in reply.audio.chunks).split())
        reply.audio.done = True
        await self.progress.reply_done(rid, reply.audio.text)

    async def _think(
        self,
        reply: Reply,
        request: LlmRequest,
        guard: ReplyGuard,
        clauses: asyncio.Queue[Segment | None],
        rails: Rails | None = None,
    ) -> None:
        if self.llm is None:
            raise DuetError("no LLM is configured for replies")
        splitter = ClauseSplitter.for_settings(self._clauses)
        reply.generating = True
        dropped = False
        sentences = 0
        said: list[str] = []  # the clauses passed on, for the rails' context

        async def offer(clause: str, *, last: bool) -> bool:
            """Pass `clause` on if the guard and the rails let it; False when a rail held (stop generating)."""
            nonlocal dropped, sentences
            if not await self._passes(reply, guard, clause, last=last):
                dropped = True
                return True
            hit = await rails(clause, " ".join(said)) if rails is not None else None
            if hit is not None:
                await self.progress.reply_event(reply.reply_id, hit.event)
                await clauses.put((hit.fallback, False))
                return False
            said.append(clause)
            sentences += complete(clause)
            await clauses.put((clause, not last and continues(clause)))
            return True

        try:
            stream = self.llm.generate(request)
            held = False
            async for piece in stream:
                if reply.tokens == 0:
                    reply.llm_first_token_ms = round((self._clock() - reply.started_wall) * 1000, 1)
                reply.tokens += 1
                for clause in splitter.feed(piece):
                    if not await offer(clause, last=False):
                        held = True
                        break
                if held or sentences >= self.persona.max_sentences:
                    # A spoken reply is short, and nothing follows a guardrail's fallback: stop generating
                    # (this cancels the request in the model).
                    await aclose(stream)
                    break
            else:
                rest = splitter.flush()
                for i, clause in enumerate(rest):
                    if not await offer(clause, last=i == len(rest) - 1):
                        held = True
                        break
            if dropped and not guard.spoken and not held:  # nothing fit to say: better to ask than stay silent
                await clauses.put((FALLBACK, False))
        finally:
            reply.generating = False
            await clauses.put(None)

    async def _passes(self, reply: Reply, guard: ReplyGuard, clause: str, *, last: bool) -> bool:
        reason = guard.finish(clause) if last else guard.check(clause)
        if reason is not None:
            await self.progress.clause_dropped(reply.reply_id, reason, clause)
        return reason is None

    async def _recite(self, script: str, clauses: asyncio.Queue[Segment | None]) -> None:
        splitter = ClauseSplitter.for_settings(self._clauses)
        try:
            for clause in splitter.feed(script):
                await clauses.put((clause, continues(clause)))
            for clause in splitter.flush():
                await clauses.put((clause, False))
        finally:
            await clauses.put(None)

    async def _speak(self, reply: Reply, clauses: asyncio.Queue[Segment | None]) -> None:
        first = True
        while (segment := await clauses.get()) is not None:
            clause, goes_on = segment
            t0 = self._clock()
            # A segment cut mid-sentence is spoken as a clause that goes on (a level end and a short pause),
            # not with a sentence's fall; its text stays as the model wrote it.
            async for spoken in self.tts.synthesize(f"{clause}," if goes_on else clause, self.persona.voice):
                cut = goes_on and spoken.text.endswith(",")
                chunk = dataclasses.replace(spoken, text=spoken.text[:-1]) if cut else spoken
                # the reply's first sound starts now, not after the voice's leading quiet; later lines keep
                # the usual quiet before them, not an outlier's
                reply.audio.chunks.append(trim_lead(chunk, keep_s=KEEP_S if first else GAP_S))
                if first:
                    first = False
                    reply.tts_first_chunk_ms = round((self._clock() - t0) * 1000, 1)
                    await self.progress.reply_audio(reply.reply_id)
