"""Faults and controls in live conversations, through the whole stack: `duet serve` on a real Triton, the SDK
as a live client (real-time audio), checked on the session's audio clock and on Triton's own counters.

- a model failing mid-reply (a persona whose voice tts does not have: it fails while the LLM generates);
- ASR failing mid-turn (the `asr` model unloaded from a Triton of this test's own while the user speaks);
- a client leaving while its reply plays (its LLM request is cancelled in Triton, the session ends);
- two conversations at once; the client's `interrupt`; a backchannel that pauses and resumes the replica.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import duet
from duet.sdk import ReplyAudio, Session
from duet.wav import CHUNK_SAMPLES, SAMPLE_RATE, chunks
from orchestrator.config import Settings, TritonSettings
from orchestrator.models.launcher import EmbeddedTriton, free_port
from tests.conftest import metric, read_wav
from tests.e2e.conftest import DuetServer, start_server, stop_server, wait_for

pytestmark = pytest.mark.e2e

CONVERSATIONS = Path(__file__).resolve().parents[2] / "perf" / "data" / "conversations"
SILENCE = np.zeros(CHUNK_SAMPLES, dtype=np.int16).tobytes()
LEAD_S = Settings().conversation.playback_lead_ms / 1000  # how far ahead of the input clock reply audio is sent
FLOOR_ASR_MODELS = ("vad", "turn", "prosody", "floor_fusion", "floor", "asr")
Event = dict[str, Any]


# ---- a live client ------------------------------------------------------------------------------------


class Call:
    """One SDK session driven as a live user: audio paced at real time, everything received kept in order.
    `sent_s` is the session clock: the audio the server has from us (it processes messages in order)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.items: list[Event | ReplyAudio] = []
        self.sent = 0
        self.closed = asyncio.Event()  # the server closed the stream
        self.failure: duet.DuetError | None = None
        self._t0: float | None = None

    @property
    def sent_s(self) -> float:
        return self.sent / SAMPLE_RATE

    @property
    def events(self) -> list[Event]:
        return [i for i in self.items if isinstance(i, dict)]

    def audio(self, reply_id: int) -> list[ReplyAudio]:
        return [i for i in self.items if isinstance(i, ReplyAudio) and i.reply_id == reply_id]

    async def receive(self) -> None:
        try:
            async for item in self.session.items():
                self.items.append(item)
        except duet.DuetError as err:  # a fatal error ends the stream: `finish` raises it
            self.failure = err
        finally:
            self.closed.set()

    async def send(self, pcm: bytes, stop: Callable[[Event], bool] | None = None) -> Event | None:
        """Send `pcm` at real time; with `stop`, only until an event matches (returned)."""
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        for c in chunks(pcm):
            await asyncio.sleep(max(self._t0 + self.sent / SAMPLE_RATE - loop.time(), 0))
            await self.session.send_audio(c)
            self.sent += len(c) // 2
            if stop is not None and (found := self.find(stop)) is not None:
                return found
        return None

    def find(self, match: Callable[[Event], bool]) -> Event | None:
        return next((e for e in self.events if match(e)), None)

    async def until(self, match: Callable[[Event], bool], max_s: float, what: str) -> Event:
        """Stream silence (a live microphone) until an event matches; at most `max_s` of audio."""
        limit = self.sent + round(max_s * SAMPLE_RATE)
        while (found := self.find(match)) is None:
            if self.sent >= limit:
                raise AssertionError(f"no {what} within {max_s:.0f} s of audio: {[e['type'] for e in self.events]}")
            await self.send(SILENCE)
        return found

    async def finish(self) -> None:
        """END, then wait for the server to settle and close the stream."""
        await self.session.end()
        await asyncio.wait_for(self.closed.wait(), 120)
        if self.failure is not None:
            raise self.failure


@asynccontextmanager
async def call(server: str, **kw: Any) -> AsyncIterator[Call]:
    async with duet.connect(server, **kw) as session:
        c = Call(session)
        task = asyncio.create_task(c.receive(), name="test-call-receive")
        try:
            yield c
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def of(kind: str, **fields: Any) -> Callable[[Event], bool]:
    return lambda e: e["type"] == kind and all(e.get(k) == v for k, v in fields.items())


def segment(audio: npt.NDArray[np.int16], start: float, end: float) -> bytes:
    return audio[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)].tobytes()


def first_turn(sample: npt.NDArray[np.int16], label: dict[str, Any]) -> bytes:
    return segment(sample, 0.0, float(label["turns"][0]["end"]) + 0.1)


def no_internals(message: str) -> None:
    assert not re.search(r"0x[0-9a-f]{6,}|Traceback|object at", message), message


# ---- a model failing mid-reply ------------------------------------------------------------------------


async def test_tts_failing_mid_reply_is_a_typed_error_the_llm_request_is_cancelled_and_the_session_goes_on(
    server: str, triton: Any, sample_audio: npt.NDArray[np.int16], sample_label: dict[str, Any]
) -> None:
    """The voiceless persona's first clause fails in tts while the LLM is still generating its long story:
    the turn gets a typed, non-fatal error, its LLM request stops in Triton, and the next turn is tried."""
    before = metric(triton.metrics_url, "duet_llm_cancelled_requests_total", model="llm")
    async with call(server, persona="voiceless") as c:
        await c.send(sample_audio.tobytes())
        await c.send(SILENCE * 100)
        await c.finish()
    events = c.events
    kinds = [e["type"] for e in events]
    assert events[-1]["type"] == "session_ended", kinds
    users = [e for e in events if e["type"] == "user_turn"]
    started = [e for e in events if e["type"] == "reply_started"]
    errors = [e for e in events if e["type"] == "error"]
    assert len(users) >= 2 and started and errors, kinds
    for e in errors:
        assert e["code"] == "model_unavailable" and "tts" in e["message"] and "unknown voice" in e["message"]
        no_internals(e["message"])
    cancelled = {e["reply_id"]: e["reason"] for e in events if e["type"] == "reply_cancelled"}
    assert {e["reply_id"] for e in started} <= set(cancelled), (started, cancelled)
    assert set(cancelled.values()) <= {"failed", "ended", "superseded", "user_continued", "stale_transcript"}
    assert "failed" in cancelled.values()
    assert "replica_speaking_start" not in kinds and not [i for i in c.items if isinstance(i, ReplyAudio)]
    # each failed reply's LLM stream was closed while it generated: Triton's model saw the cancellations (a
    # request cancelled before it streamed a token may have been dropped from Triton's queue, unseen by the model)
    streamed = [e for e in events if e["type"] == "reply_cancelled" and e["reason"] == "failed" and e["tokens"]]
    assert streamed, [e for e in events if e["type"] == "reply_cancelled"]
    await asyncio.to_thread(
        wait_for,
        lambda: metric(triton.metrics_url, "duet_llm_cancelled_requests_total", model="llm") >= before + len(streamed),
        15,
        f"{len(streamed)} cancelled llm requests",
    )


# ---- ASR failing mid-turn -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def floor_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedTriton, DuetServer]]:
    """A Triton of this module's own (its models are unloaded here) with the floor and ASR models, and a
    `duet serve` in front of it for `mode=floor` sessions."""
    triton = EmbeddedTriton(TritonSettings(models=FLOOR_ASR_MODELS)).start()
    try:
        server = start_server(triton.grpc_url, free_port(), env={"DUET_TRITON__MODELS": ",".join(FLOOR_ASR_MODELS)})
        try:
            yield triton, server
        finally:
            stop_server(server)
    finally:
        triton.stop()


def repository(triton: EmbeddedTriton, model: str, action: str) -> None:
    """Triton's model repository API (the server runs in explicit model-control mode)."""
    url = f"http://{triton.http_url}/v2/repository/models/{model}/{action}"
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200


def model_ready(triton: EmbeddedTriton, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{triton.http_url}/v2/models/{model}/ready", timeout=5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def test_asr_failing_mid_turn_is_a_typed_error_and_the_turn_still_ends(
    floor_stack: tuple[EmbeddedTriton, DuetServer], sample_audio: npt.NDArray[np.int16], sample_label: dict[str, Any]
) -> None:
    triton, server = floor_stack
    options = {"mode": "floor"}
    try:
        async with call(server.address, options=options) as c:
            # the user speaks; at the first partial transcript of their turn, asr goes away (while they go on)
            partial = await c.send(sample_audio.tobytes(), stop=of("transcript", final=False))
            assert partial is not None and partial["t"] < float(sample_label["turns"][0]["end"]), partial
            gone_at = c.sent_s
            unload = asyncio.create_task(asyncio.to_thread(repository, triton, "asr", "unload"), name="test-unload")
            await c.send(segment(sample_audio, gone_at, float(sample_label["duration"])))
            await unload
            await c.send(SILENCE * 50)
            await c.finish()
    finally:
        if not model_ready(triton, "asr"):
            await asyncio.to_thread(repository, triton, "asr", "load")
    events = c.events
    kinds = [e["type"] for e in events]
    assert events[-1]["type"] == "session_ended", kinds
    errors = [e for e in events if e["type"] == "error"]
    assert errors, kinds
    for e in errors:
        assert e["code"] == "model_unavailable" and "asr" in e["message"], e
        no_internals(e["message"])
    # the floor went on deciding without transcripts: both yield pauses after the failure were committed
    commits = [e["t"] for e in events if e["type"] == "eot_commit" and e["t"] > gone_at]
    yields = [p for p in sample_label["pauses"] if p["kind"] == "yield" and p["end"] > gone_at]
    assert len(commits) >= len(yields), (commits, yields)
    # and once asr is back, the same server transcribes the next session
    async with call(server.address, options=options) as c2:
        await c2.send(sample_audio.tobytes())
        await c2.send(SILENCE * 50)
        await c2.finish()
    finals = [e["text"] for e in c2.events if e["type"] == "transcript" and e["final"]]
    assert not [e for e in c2.events if e["type"] == "error"]
    assert "bill" in " ".join(finals).lower(), finals


# ---- a client leaving during a reply -------------------------------------------------------------------


async def leave(
    server: DuetServer, audio: bytes, at: Callable[[Call], Awaitable[bool]], what: str, snapshot: Callable[[], Any]
) -> tuple[Call, Any]:
    """A client that says its turn, streams silence until `at(call)` holds, and vanishes; its session must end.
    Returns the call and `snapshot()` taken the moment it left."""
    cid = f"leaver-{uuid.uuid4().hex[:8]}"
    async with call(server.address, persona="storyteller", conversation_id=cid, options={"speculation": "false"}) as c:
        await c.send(audio)
        limit = c.sent + 30 * SAMPLE_RATE
        while not await at(c):
            assert c.sent < limit, f"no {what} within 30 s of audio: {[e['type'] for e in c.events]}"
            await c.send(SILENCE)
    at_leave = snapshot()
    await asyncio.to_thread(server.wait_logged, f"session {cid} ended", 30)
    return c, at_leave


async def test_client_leaving_during_a_reply_cancels_its_model_requests_and_ends_the_session(
    duet_server: DuetServer, triton: Any, sample_audio: npt.NDArray[np.int16], sample_label: dict[str, Any]
) -> None:
    """No speculation, so the only cancel can be the leave's."""
    url = triton.metrics_url
    turn = first_turn(sample_audio, sample_label)

    def llm(name: str) -> float:
        return metric(url, f"duet_llm_{name}_total", model="llm")

    # 1. the client leaves while its reply is being generated (Triton's llm counts its tokens going up)
    before, tokens = llm("cancelled_requests"), llm("generated_tokens")

    async def generating(c: Call) -> bool:
        return c.find(of("reply_started")) is not None and await asyncio.to_thread(llm, "generated_tokens") > tokens

    c, _ = await leave(duet_server, turn, generating, "LLM tokens for the reply", lambda: None)
    assert not c.find(of("reply_cancelled")) and not c.find(of("replica_turn"))
    await asyncio.to_thread(wait_for, lambda: llm("cancelled_requests") >= before + 1, 15, "llm to see the cancel")
    tokens = llm("generated_tokens")
    await asyncio.sleep(1.0)
    assert llm("generated_tokens") == tokens  # nothing generates for nobody

    # 2. the client leaves while its reply is heard: nothing of that session stays in Triton
    async def heard(c: Call) -> bool:
        start = c.find(of("replica_speaking_start"))
        return start is not None and bool(c.audio(start["reply_id"]))

    def work() -> tuple[float, ...]:  # llm tokens, tts sentences: what the reply would go on costing
        return llm("generated_tokens"), metric(url, "duet_tts_sentences_total", model="tts")

    c, at_leave = await leave(duet_server, turn, heard, "reply", work)
    rid = c.find(of("replica_speaking_start"))["reply_id"]  # type: ignore[index]
    assert c.audio(rid) and c.find(of("replica_turn", reply_id=rid)) is None  # left before the reply ended
    # what was in flight at the leave finishes (the llm stops at its next token, tts after its sentence) ...
    # Settled = unchanged for 2 s: one long sentence takes over a second to synthesise on a loaded CI machine
    # (a 0.3 s window once called the work settled while a sentence begun before the leave was still drawn).
    last, settled, still = work(), None, 0
    for _ in range(100):
        await asyncio.sleep(0.3)
        now = work()
        still = still + 1 if now == last else 0
        if still * 0.3 >= 2.0:
            settled = now
            break
        last = now
    assert settled is not None, "llm/tts kept working after the client left"
    await asyncio.sleep(2.0)
    assert work() == settled  # ... and the rest of the reply is neither generated nor synthesised for nobody
    tokens_after, tts_after = (a - b for a, b in zip(settled, at_leave, strict=True))
    assert tokens_after <= 3 and tts_after <= 1, (settled, at_leave)  # tts: one sentence at a time
    await asyncio.to_thread(
        wait_for,
        lambda: (
            metric(url, "nv_inference_pending_request_count", model="tts") == 0
            and metric(url, "nv_inference_pending_request_count", model="llm") == 0
        ),
        15,
        "no pending tts/llm requests",
    )


# ---- two conversations at once -------------------------------------------------------------------------


async def test_two_conversations_at_once_are_each_answered_on_their_own(
    server: str, sample_audio: npt.NDArray[np.int16], sample_label: dict[str, Any]
) -> None:
    async def one(i: int) -> Call:
        await asyncio.sleep(0.37 * i)  # not on the same sample
        async with call(server, conversation_id=f"pair-{i}-{uuid.uuid4().hex[:6]}") as c:
            await c.send(sample_audio.tobytes())
            await c.until(of("replica_speaking_start"), 20, "reply")  # (already there if the last turn answered)
            await c.send(SILENCE * 100)
            await c.finish()
        return c

    calls = await asyncio.gather(one(0), one(1))
    ids = set()
    for c in calls:
        events = c.events
        kinds = [e["type"] for e in events]
        assert events[0]["type"] == "session_started" and events[-1]["type"] == "session_ended", kinds
        ids.add(events[0]["conversation_id"])
        assert not [e for e in events if e["type"] == "error"], kinds
        users = [e["text"] for e in events if e["type"] == "user_turn"]
        seen = [(e["type"], e.get("t"), e.get("reply_id"), e.get("text")) for e in events if e["type"] != "transcript"]
        assert len(users) >= 2 and "bill" in " ".join(users).lower(), seen
        released = {e["reply_id"] for e in events if e["type"] == "replica_speaking_start"}
        assert released, kinds
        turns = [e for e in events if e["type"] == "replica_turn"]
        assert any(t["text"].strip() for t in turns), turns
        # every audio chunk belongs to a reply this session released, at or after its release on its clock
        audio = [i for i in c.items if isinstance(i, ReplyAudio)]
        assert audio and {a.reply_id for a in audio} <= released
        first = {e["reply_id"]: e["t"] for e in events if e["type"] == "replica_speaking_start"}
        assert all(a.t >= first[a.reply_id] - 1e-3 for a in audio)
    assert len(ids) == 2


# ---- the client's interrupt ----------------------------------------------------------------------------


async def test_interrupt_stops_the_replica_at_once_and_the_next_turn_is_answered(
    server: str, sample_audio: npt.NDArray[np.int16], sample_label: dict[str, Any]
) -> None:
    second = sample_label["turns"][1]
    async with call(server, persona="storyteller") as c:
        await c.send(first_turn(sample_audio, sample_label))
        start = await c.until(of("replica_speaking_start"), 30, "reply")
        rid = start["reply_id"]
        await c.send(SILENCE * 25)  # heard for half a second
        assert c.find(of("replica_speaking_stop", reply_id=rid)) is None, "the story ended before the interrupt"
        at = c.sent_s
        await c.session.interrupt()
        stop = await c.until(of("replica_speaking_stop", reply_id=rid), 5, "stop after the interrupt")
        await c.send(SILENCE * 50)
        await c.send(segment(sample_audio, float(second["start"]) - 0.3, float(second["end"]) + 0.1))
        await c.until(lambda e: e["type"] == "replica_speaking_start" and e["reply_id"] != rid, 20, "next reply")
        await c.finish()
    events = c.events
    # on the session clock, the replica stops exactly where the interrupt came in the input
    assert stop["interrupted"] and stop["t"] == pytest.approx(at, abs=1e-3)
    # and nothing of that reply was sent beyond the playback lead at that point
    end = max(a.t + len(a.pcm) / 2 / SAMPLE_RATE for a in c.audio(rid))
    assert end <= at + LEAD_S + 0.021, (end, at)
    turn = next(e for e in events if e["type"] == "replica_turn" and e["reply_id"] == rid)
    assert turn["interrupted"] and turn["text"] == stop["spoken_text"]
    cancelled = [e for e in events if e["type"] == "reply_cancelled" and e["reply_id"] == rid]
    assert all(e["reason"] == "barge_in" for e in cancelled)  # still generating: stopped too
    later = [e for e in events if e["type"] == "user_turn" and e["t"] > at]
    assert later and later[-1]["text"].strip()
    assert not [e for e in events if e["type"] == "error"]


# ---- a backchannel pauses the replica and it resumes --------------------------------------------------


def backchannel_clip() -> bytes:
    """A short "Yeah" from the conversation set (shorter than barge_in_ms: a backchannel, not a turn)."""
    label = json.loads((CONVERSATIONS / "dev" / "007.json").read_text())
    (b,) = label["backchannels"]
    audio = read_wav(CONVERSATIONS / "dev" / "007.wav")
    return segment(audio, float(b["start"]) - 0.05, float(b["end"]) + 0.05)


async def test_backchannel_pauses_the_replica_and_it_resumes_where_it_was(
    server: str, sample_audio: npt.NDArray[np.int16], sample_label: dict[str, Any]
) -> None:
    clip = backchannel_clip()
    assert len(clip) / 2 / SAMPLE_RATE < Settings().floor.barge_in_ms / 1000
    async with call(server, persona="storyteller") as c:
        await c.send(first_turn(sample_audio, sample_label))
        start = await c.until(of("replica_speaking_start"), 30, "reply")
        rid = start["reply_id"]
        await c.send(SILENCE * 30)
        onset = c.sent_s
        await c.send(clip)
        resumed = await c.until(of("replica_resumed", reply_id=rid), 3, "resume after the backchannel")
        await c.send(SILENCE * 25)
        await c.finish()  # the rest of the reply plays out
    events = c.events
    paused = c.find(of("replica_paused", reply_id=rid))
    seen = [(e["type"], e.get("t"), e.get("reply_id")) for e in events]
    assert paused is not None and onset <= paused["t"] < onset + 0.35, (paused, onset, seen)
    assert c.find(of("backchannel")) is not None
    assert resumed["t"] > paused["t"]
    assert c.find(of("barge_in")) is None and c.find(of("replica_speaking_stop", interrupted=True)) is None
    turn = c.find(of("replica_turn", reply_id=rid))
    assert turn is not None and not turn["interrupted"] and turn["text"].strip(), seen
    # on the session clock: quiet from the pause to the resume, the reply's audio again after it
    audio = c.audio(rid)
    assert any(a.t >= resumed["t"] - 1e-3 for a in audio)
    assert not [a for a in audio if paused["t"] + LEAD_S + 0.021 < a.t < resumed["t"] - 1e-3]
    assert not [e for e in events if e["type"] == "error"]
