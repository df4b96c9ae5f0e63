"""Interactions on a live conversation through the real stack: the session service (in process, on a real gRPC
port) in front of the shared real tritonserver (vad, floor, asr, llm, tts), driven by the SDK at real time.

One call: a malformed interaction is refused with a typed error and the call goes on; `echo` is heard, word
for word; `overwrite_context` (sent the REST control plane's way, `SessionService.interact`) is accepted
mid-call; `respond` is the user's turn and is answered."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import duet
from duet.proto import session_pb2_grpc as pb_grpc
from duet.wav import CHUNK_SAMPLES, SAMPLE_RATE
from orchestrator.api.session_service import SessionService
from orchestrator.config import Settings
from orchestrator.models.triton import TritonModels
from orchestrator.session.interactions import OverwriteContext

pytestmark = pytest.mark.integration

# Fast and short: what is said does not matter here, only that the interactions steer it (SmolLM2 keeps up
# with the session clock on two cores, as in the e2e tests' personas).
QUICK = """\
name: Quinn
system_prompt: >-
  You are Quinn, on a live voice call. Answer in one short sentence.
max_tokens: 32
max_sentences: 1
speculation: false
llm_model: smollm2-135m
"""
CALL = "itest-interactions"
ECHO = "Hello, this is a scripted announcement."
STEP_S = 90.0  # a bound on how long one step may take on a slow CPU runner (not a timed assertion)


@contextlib.asynccontextmanager
async def serving(triton_url: str, personas: Path) -> AsyncIterator[tuple[str, SessionService]]:
    """The session service on a loopback port, as `orchestrator.app.running_stack` wires it."""
    base = Settings()
    settings = dataclasses.replace(
        base,
        triton=dataclasses.replace(base.triton, url=triton_url),
        conversation=dataclasses.replace(base.conversation, personas_dir=str(personas)),
    )
    models = TritonModels(triton_url, timeout_s=settings.triton.request_timeout_s)
    models.llm_timeout_s = settings.llm.timeout_s
    service = SessionService(models, settings, llm=models)
    server = grpc.aio.server()
    pb_grpc.add_SessionServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    try:
        await models.ready(("vad", "floor", "asr", "llm", "tts"))
        await server.start()
        yield f"127.0.0.1:{port}", service
    finally:
        await server.stop(grace=2.0)
        await service.close()
        await models.close()


class Call:
    """A live SDK session: silence streamed at real time (the session clock runs on it), every item kept."""

    def __init__(self, session: duet.Session) -> None:
        self.session = session
        self.items: list[Any] = []
        self._new = asyncio.Event()
        self._ending = False

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [i for i in self.items if isinstance(i, dict) and (kind is None or i["type"] == kind)]

    async def until(self, what: str, check: Callable[[], Any]) -> Any:
        async def wait() -> Any:
            while not (found := check()):
                self._new.clear()
                await self._new.wait()
            return found

        try:
            return await asyncio.wait_for(wait(), STEP_S)
        except TimeoutError:
            types = [i["type"] if isinstance(i, dict) else type(i).__name__ for i in self.items]
            raise AssertionError(f"no {what} within {STEP_S:.0f} s; got {types[-40:]}") from None

    async def read(self) -> None:
        async for item in self.session.items():
            self.items.append(item)
            self._new.set()

    async def send(self) -> None:
        loop = asyncio.get_running_loop()
        t0, sent = loop.time(), 0
        silence = np.zeros(CHUNK_SAMPLES, dtype=np.int16).tobytes()
        while not self._ending:
            await asyncio.sleep(max(t0 + sent / SAMPLE_RATE - loop.time(), 0))
            await self.session.send_audio(silence)
            sent += CHUNK_SAMPLES
        await self.session.end()

    def end(self) -> None:
        self._ending = True


async def test_interactions_steer_a_live_conversation(triton: Any, tmp_path: Path) -> None:
    (tmp_path / "quick.yaml").write_text(QUICK)
    async with (
        serving(triton.grpc_url, tmp_path) as (address, service),
        duet.connect(address, persona="quick", conversation_id=CALL, options={"perception": "false"}) as session,
    ):
        call = Call(session)
        tasks = [
            asyncio.create_task(call.read(), name="itest-read"),
            asyncio.create_task(call.send(), name="itest-send"),
        ]
        try:
            await call.until("session start", lambda: call.events("session_started"))

            # a malformed interaction: a typed, non-fatal error, and the call goes on
            await session.sensitivity(turn_taking_patience="eager")
            [error] = await call.until("error", lambda: call.events("error"))
            assert error["code"] == "bad_interaction" and "eager" in error["message"]
            await session.sensitivity(turn_taking_patience="high", replica_interruptibility="low")

            # echo: the replica says it, word for word, and it is heard
            await session.echo(ECHO)
            ack = await call.until(
                "echo ack", lambda: [e for e in call.events("interaction") if e["interaction"] == "echo"]
            )
            echo_id = ack[0]["reply_id"]
            turn = await call.until(
                "the echo's replica_turn", lambda: [e for e in call.events("replica_turn") if e["reply_id"] == echo_id]
            )
            assert turn[0]["text"] == ECHO and not turn[0]["interrupted"]
            heard = [i for i in call.items if isinstance(i, duet.ReplyAudio) and i.reply_id == echo_id]
            assert sum(len(i.pcm) for i in heard) // 2 > SAMPLE_RATE // 2  # over half a second of its voice

            # overwrite_context mid-call, the REST control plane's way in
            assert await service.interact(CALL, OverwriteContext("The caller's name is Alex."))
            await call.until(
                "context ack",
                lambda: [e for e in call.events("interaction") if e["interaction"] == "overwrite_context"],
            )

            # respond: the text is the user's turn, and it is answered
            await session.respond("Hi, who am I talking to?")
            ack = await call.until(
                "respond ack", lambda: [e for e in call.events("interaction") if e["interaction"] == "respond"]
            )
            reply_id = ack[0]["reply_id"]
            [user] = await call.until("user_turn", lambda: call.events("user_turn"))
            assert user["text"] == "Hi, who am I talking to?"
            await call.until(
                "the reply's replica_turn",
                lambda: [e for e in call.events("replica_turn") if e["reply_id"] == reply_id],
            )
            assert [e["reply_id"] for e in call.events("reply_started")] == [echo_id, reply_id]
            assert any(isinstance(i, duet.ReplyAudio) and i.reply_id == reply_id for i in call.items)
            call.end()
            await asyncio.wait_for(tasks[0], STEP_S)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert call.events()[-1]["type"] == "session_ended"
    assert len(call.events("error")) == 1  # only the malformed one
    assert not await service.interact(CALL, OverwriteContext("too late"))  # the call is over
