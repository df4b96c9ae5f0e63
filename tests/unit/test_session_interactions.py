"""Interactions carried out by a conversation session (fake models, virtual time) and delivered by the session
service: on the stream's `control` and through `SessionService.interact` (the REST control plane's way in)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from duet.proto import session_pb2 as pb
from orchestrator.api.session_service import SessionService, control_interaction
from orchestrator.api.wire import event_dict
from orchestrator.config import Settings
from orchestrator.errors import BadInteraction, UnknownToolCall
from orchestrator.events import (
    InteractionEvent,
    ReplicaSpeakingStart,
    ReplicaSpeakingStop,
    ReplicaTurn,
    ReplyCancelled,
    ReplyStarted,
    UserTurn,
)
from orchestrator.session.floor import FloorSession
from orchestrator.session.interactions import (
    AppendContext,
    Echo,
    Interrupt,
    OverwriteContext,
    Respond,
    Sensitivity,
    ToolResult,
)
from tests.recording import RecordingOutlet
from tests.unit.test_conversation_session import FakeModels, of, play, session, silence, speech

# ---- the conversation session -----------------------------------------------------------------------------


async def test_echo_is_said_verbatim_without_the_llm_and_becomes_the_replicas_turn() -> None:
    models = FakeModels()
    s, out, clock = session(models, speculation=False)
    await play(s, clock, silence(0.5))
    await s.interact(Echo("Hello there. This is an announcement."))
    [ack] = of(out, InteractionEvent)
    [started] = of(out, ReplyStarted)
    assert (ack.interaction, ack.reply_id) == ("echo", started.reply_id) and not started.speculative
    assert out.types().index("interaction") < out.types().index("reply_started")  # the ack first
    await play(s, clock, silence(2.0))
    await s.finish()
    [turn] = of(out, ReplicaTurn)
    assert turn.reply_id == started.reply_id and turn.text == "Hello there. This is an announcement."
    assert not [r for r in models.llm_requests if r.max_tokens]  # no LLM reply
    assert [(t.role, t.text) for t in s.dialogue.turns] == [("assistant", "Hello there. This is an announcement.")]


async def test_echo_stops_the_speaking_replica_first() -> None:
    s, out, clock = session(FakeModels(speech_s=3.0), speculation=False)
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(1.0)]))
    [first] = of(out, ReplicaSpeakingStart)
    await s.interact(Echo("Sorry, one correction."))
    [stop] = of(out, ReplicaSpeakingStop)
    assert stop.reply_id == first.reply_id and stop.interrupted
    await play(s, clock, silence(2.0))
    await s.finish()
    turns = of(out, ReplicaTurn)
    assert [(t.interrupted, t.text == "Sorry, one correction.") for t in turns] == [(True, False), (False, True)]
    assert not of(out, ReplyCancelled)  # (it had finished generating: only its playback is stopped)


async def test_respond_commits_the_users_turn_and_answers_it() -> None:
    models = FakeModels()
    s, out, clock = session(models)
    await play(s, clock, silence(0.3))
    await s.interact(Respond("What time is it in Oslo?"))
    [ack] = of(out, InteractionEvent)
    [user] = of(out, UserTurn)
    [started] = of(out, ReplyStarted)
    assert (user.turn, user.text) == (0, "What time is it in Oslo?")
    assert ack.reply_id == started.reply_id and not started.speculative
    assert started.transcript == "What time is it in Oslo?"
    await play(s, clock, silence(1.5))
    await s.finish()
    assert of(out, ReplicaTurn)[0].text == "Sure, it is noon."
    [request] = [r for r in models.llm_requests if r.max_tokens]
    assert request.messages[-1].role == "user" and request.messages[-1].content == "What time is it in Oslo?"
    assert [(t.role, t.text) for t in s.dialogue.turns] == [
        ("user", "What time is it in Oslo?"),
        ("assistant", "Sure, it is noon."),
    ]


async def test_interrupt_and_context_interactions_are_acknowledged_and_carried_out() -> None:
    s, out, clock = session(FakeModels(speech_s=3.0), speculation=False)
    await s.interact(OverwriteContext("The caller is Alex."))
    await s.interact(AppendContext("They are in Oslo."))
    assert s.dialogue.context == "The caller is Alex.\nThey are in Oslo."
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(1.0)]))
    await s.interact(Interrupt())
    [stop] = of(out, ReplicaSpeakingStop)
    assert stop.interrupted
    await s.interact(OverwriteContext(""))
    assert s.dialogue.context == ""
    acks = [e.interaction for e in of(out, InteractionEvent)]
    assert acks == ["overwrite_context", "append_context", "interrupt", "overwrite_context"]
    await s.finish()


async def test_sensitivity_swaps_the_floor_settings_live_and_medium_restores_them() -> None:
    s, out, _ = session(FakeModels())
    base = s.floor.machine.s
    await s.interact(Sensitivity("high", "low"))
    now = s.floor.machine.s
    assert (now.commit_threshold, now.max_pause_ms, now.barge_in_ms) == (0.899, 2700, 960)
    assert s.gate.floor is now and not s.machine.pause_on_speech
    await s.interact(Sensitivity(None, "high"))  # patience stays high
    assert (s.floor.machine.s.commit_threshold, s.floor.machine.s.barge_in_ms) == (0.899, 384)
    assert s.machine.pause_on_speech
    await s.interact(Sensitivity("medium", "medium"))
    assert s.floor.machine.s == base and s.gate.floor == base
    assert [e.interaction for e in of(out, InteractionEvent)] == ["sensitivity"] * 3
    await s.close()


async def test_a_replica_of_low_interruptibility_talks_on_over_a_backchannel() -> None:
    s, out, clock = session(FakeModels(speech_s=2.0), speculation=False)
    await s.interact(Sensitivity(replica_interruptibility="low"))
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(0.8)]))
    await play(s, clock, np.concatenate([speech(2000, 0.3), silence(3.0)]))  # "mm-hm"
    await s.finish()
    assert "replica_paused" not in out.types()  # (the default pauses it: test_conversation_session)
    [turn] = of(out, ReplicaTurn)
    assert not turn.interrupted and turn.text == "Sure, it is noon."


async def test_an_unknown_tool_call_is_a_typed_error_and_the_session_goes_on() -> None:
    s, out, clock = session(FakeModels(), speculation=False)
    with pytest.raises(UnknownToolCall) as caught:
        await s.interact(ToolResult("call_404", "42"))
    assert caught.value.code == "unknown_tool_call" and not caught.value.fatal
    assert not of(out, InteractionEvent)  # not acknowledged
    await play(s, clock, np.concatenate([speech(3000, 1.0), silence(2.0)]))
    await s.finish()
    assert of(out, ReplicaTurn)[0].text == "Sure, it is noon."


async def test_a_session_without_replies_refuses_interactions() -> None:
    models = FakeModels()
    s, out, _ = session(models, replies=False)
    for interaction in (Echo("hi"), Respond("hi"), Interrupt(), Sensitivity("low", None)):
        with pytest.raises(BadInteraction, match="mode=floor session has no replies"):
            await s.interact(interaction)
    floor = FloorSession(models, Settings().floor, RecordingOutlet().event)
    with pytest.raises(BadInteraction, match="mode=acoustic"):
        await floor.interact(Echo("hi"))
    assert not of(out, InteractionEvent)
    await s.close()


def test_the_acknowledgement_on_the_wire() -> None:
    assert event_dict(InteractionEvent(1.5, "echo", 3)) == {
        "type": "interaction",
        "t": 1.5,
        "interaction": "echo",
        "reply_id": 3,
    }
    assert event_dict(InteractionEvent(2.0, "sensitivity")) == {
        "type": "interaction",
        "t": 2.0,
        "interaction": "sensitivity",
    }


# ---- the session service --------------------------------------------------------------------------------------


def test_stream_controls_become_interactions() -> None:
    echo = pb.Control(kind=pb.Control.ECHO, text="Hi.")
    assert control_interaction(echo) == Echo("Hi.")
    sens = pb.Control(kind=pb.Control.SENSITIVITY, replica_interruptibility="high")
    assert control_interaction(sens) == Sensitivity(None, "high")  # (an empty level: unchanged)
    tool = pb.Control(kind=pb.Control.TOOL_RESULT, call_id="c1", output="")
    assert control_interaction(tool) == ToolResult("c1", "")
    with pytest.raises(BadInteraction):
        control_interaction(pb.Control(kind=pb.Control.RESPOND))
    assert (pb.Control.INTERRUPT, pb.Control.REPLICA_SPEAKING_STOP, pb.Control.ECHO, pb.Control.TOOL_RESULT) == (
        1,
        3,
        4,
        9,
    )  # (the wire's numbers are a contract)


class Context:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def add_done_callback(self, cb: Any) -> None:
        pass


def start(conversation_id: str) -> pb.ClientMessage:
    fmt = pb.AudioFormat(sample_rate=16000, channels=1, sample_width=2, encoding="pcm_s16le")
    options = {"mode": "conversation", "perception": "false", "echo_suppression": "false", "speculation": "false"}
    return pb.ClientMessage(start=pb.Start(audio_format=fmt, conversation_id=conversation_id, options=options))


def chunks(audio: Any) -> list[pb.ClientMessage]:
    return [pb.ClientMessage(audio=pb.AudioChunk(pcm=audio[i : i + 320].tobytes())) for i in range(0, len(audio), 320)]


def service() -> SessionService:
    server = dataclasses.replace(Settings().server, audio_burst_s=1000.0)  # (read as fast as it comes)
    return SessionService(models=FakeModels(), settings=Settings(server=server), llm=FakeModels())  # type: ignore[arg-type]


class Client:
    """A stream's client: `script` yields its messages; the events it reads are kept, and `seen` waits for one."""

    def __init__(self, svc: SessionService, script: AsyncIterator[pb.ClientMessage]) -> None:
        self.messages: list[pb.ServerMessage] = []
        self._types: set[str] = set()
        self._new = asyncio.Event()
        self.task = asyncio.create_task(self._read(svc, script), name="test-client")

    async def _read(self, svc: SessionService, script: AsyncIterator[pb.ClientMessage]) -> None:
        async for m in svc.Converse(script, Context()):  # type: ignore[arg-type]
            self.messages.append(m)
            if m.WhichOneof("kind") == "event":
                self._types.add(m.event.type)
            self._new.set()

    def saw(self, kind: str) -> bool:
        return kind in self._types

    def count(self, kind: str) -> int:
        return sum(e["type"] == kind for e in self.events())

    async def until(self, check: Callable[[], bool]) -> None:
        """Returns once `check()` holds, looking again at each message the client reads."""
        while not check():
            self._new.clear()
            await self._new.wait()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(m.event.json) for m in self.messages if m.WhichOneof("kind") == "event"]

    def errors(self) -> list[pb.Error]:
        return [m.error for m in self.messages if m.WhichOneof("kind") == "error"]


async def quiet_until(done: Callable[[], bool], limit_s: float = 10.0) -> AsyncIterator[pb.ClientMessage]:
    """Silence, 20 ms at a time, until `done()` (the session clock runs on the audio: a reply plays out on it)."""
    for _ in range(round(limit_s / 0.02)):
        if done():
            return
        yield chunks(silence(0.02))[0]
        await asyncio.sleep(0.001)
    raise AssertionError("the session never got there")


async def test_interactions_reach_a_live_session_from_the_stream_and_from_the_service() -> None:
    svc = service()
    assert await svc.interact("call-1", Echo("nobody is here")) is False
    responded = asyncio.Event()

    async def script() -> AsyncIterator[pb.ClientMessage]:
        yield start("call-1")
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.SENSITIVITY, turn_taking_patience="eager"))
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.ECHO, text="Welcome to the call."))
        async for m in quiet_until(lambda: client.saw("replica_turn")):
            yield m
        await responded.wait()
        async for m in quiet_until(lambda: client.count("replica_turn") > 1):
            yield m
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))

    client = Client(svc, script())
    await asyncio.wait_for(client.until(lambda: client.saw("replica_turn")), 10)
    assert await svc.interact("call-1", Respond("What time is it?")) is True  # (the REST control plane's way)
    assert await svc.interact("call-2", Respond("What time is it?")) is False
    responded.set()
    await asyncio.wait_for(client.task, 30)
    assert await svc.interact("call-1", Echo("too late")) is False  # ended: not live any more
    assert not svc._live  # unregistered once ended

    assert [(e.code, e.fatal) for e in client.errors()] == [("bad_interaction", False)]  # and the session went on
    assert "eager" in client.errors()[0].message
    events = client.events()
    acks = [(e["interaction"], e.get("reply_id")) for e in events if e["type"] == "interaction"]
    turns = [(e["type"], e["text"]) for e in events if e["type"] in ("user_turn", "replica_turn")]
    assert turns == [
        ("replica_turn", "Welcome to the call."),
        ("user_turn", "What time is it?"),
        ("replica_turn", "Sure, it is noon."),
    ]
    replies = [e["reply_id"] for e in events if e["type"] == "replica_turn"]
    assert acks == [("echo", replies[0]), ("respond", replies[1])]
    assert events[-1]["type"] == "session_ended"


async def test_an_error_from_a_control_plane_interaction_is_not_counted_against_the_client() -> None:
    svc = service()
    go_on = asyncio.Event()

    async def script() -> AsyncIterator[pb.ClientMessage]:
        yield start("call-9")
        yield chunks(silence(0.02))[0]
        await go_on.wait()
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))

    client = Client(svc, script())
    await asyncio.wait_for(client.until(lambda: client.saw("session_started")), 10)
    limit = svc.settings.server.max_client_errors
    for i in range(limit + 2):  # more unknown tool calls than a client may send bad inputs
        assert await svc.interact("call-9", ToolResult(f"c{i}", "x"))
    await asyncio.wait_for(client.until(lambda: len(client.errors()) == limit + 2), 10)
    go_on.set()
    await asyncio.wait_for(client.task, 30)
    assert {(e.code, e.fatal) for e in client.errors()} == {("unknown_tool_call", False)}
    assert client.events()[-1]["type"] == "session_ended"  # ended by its END, not by too_many_errors


def test_a_conversations_persona_sets_the_sessions_flow_priority_and_llm() -> None:
    """What a joined conversation makes of the session: the persona's flow levels (applied by the session, so
    `medium` later means the server's own), the tier's Triton priority, and the persona's own LLM endpoint."""
    import dataclasses
    from datetime import UTC, datetime

    from orchestrator.api.options import parse_options
    from orchestrator.control.conversations import Joined, Recorder
    from orchestrator.models.openai_llm import OpenAIChat
    from orchestrator.session.persona import Persona
    from orchestrator.store.records import ConversationRecord, Tenant

    now = datetime.now(UTC)
    body = {
        "layers": {
            "conversational_flow": {"turn_taking_patience": "high", "replica_interruptibility": "low"},
            "llm": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": "k"},
        }
    }

    class Directory:  # what `_joined_spec` asks of the conversation service
        def llm_endpoint(self, persona_body: dict[str, Any]) -> dict[str, str] | None:
            llm = persona_body["layers"]["llm"]
            return {"base_url": llm["base_url"], "model": llm["model"], "api_key": llm["api_key"]}

    conv = ConversationRecord("conv_x", "ten_x", "per_x", "active", None, {}, None, now, now)
    svc = service()
    svc.conversations = Directory()  # type: ignore[assignment]
    for tier, priority in (("standard", 0), ("priority", 1)):
        tenant = Tenant("ten_x", "T", tier, "whsec_x", 4, 0, now)
        joined = Joined(conv, tenant, Persona("per_x", "P", "Be brief."), body, 60.0, Recorder(None, conv))  # type: ignore[arg-type]
        spec = svc._joined_spec(parse_options(svc.settings, {}), joined)
        assert spec.flow == ("high", "low") and spec.priority == priority
        assert spec.floor == parse_options(svc.settings, {}).floor  # the session applies the levels itself
        assert isinstance(spec.llm, OpenAIChat) and spec.llm.url == "http://127.0.0.1:9/v1/chat/completions"
        assert dataclasses.replace(spec, llm=None).persona is joined.persona
