"""Models heal by themselves in a real tritonserver: a killed stub is reloaded and the next request answered.

Each test kills a real Python-backend stub (found among tritonserver's children by its command line, which
holds `<repo>/<model>/1/model.py`) and drives the orchestrator's own adapter and healer (`TritonModels` +
`ModelHealer`), the way `duet serve` wires them. Time to recovery is printed (run with `-s` to see it);
the checks are on what happened (answers, heal counts), not on how fast.

Killing a stub while Triton's Python backend talks to it can, now and then, abort tritonserver itself
(`boost::interprocess::lock_exception` in libtriton_python.so). That is the supervisor's case: the tests
run `EmbeddedTriton.supervise` too, and accept a restart in place of a heal.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.config import TritonSettings
from orchestrator.errors import ModelUnavailable
from orchestrator.models.launcher import EmbeddedTriton, child_pids, process_argv
from orchestrator.models.ports import ChatMessage, LlmRequest
from orchestrator.models.triton import ModelHealer, TritonModels

pytestmark = pytest.mark.integration

MODELS = ("turn", "prosody", "floor_fusion", "floor", "llm")
ASK = LlmRequest(messages=(ChatMessage("user", "Say hello."),), max_tokens=4, temperature=0.0)
STORY = LlmRequest(messages=(ChatMessage("user", "Tell me a long story about a dragon."),), max_tokens=200)
RECOVERY_BOUND_S = 60.0  # far above any recovery seen (1-3 s; a whole-server restart ~10 s): a broken heal


SPOKEN_MODELS = ("vad", "turn", "prosody", "floor_fusion", "floor", "asr", "llm", "tts")


def test_a_spoken_session_goes_on_after_the_llm_stub_is_killed_mid_reply(tmp_path: Path) -> None:
    """The whole service in this process (`running_stack`, healing wired as `duet serve` does) and a recorded
    user streamed at real time. The `llm` stub is killed the moment the reply to the user's first turn starts;
    the user's next turn must be answered."""
    import dataclasses

    from duet.talk import talk
    from orchestrator.app import running_stack
    from orchestrator.config import Settings
    from orchestrator.models.launcher import free_port
    from tests.conftest import SAMPLE, SAMPLE_LABEL, metric

    base = Settings()
    settings = dataclasses.replace(
        base,
        triton=dataclasses.replace(base.triton, models=SPOKEN_MODELS),
        server=dataclasses.replace(base.server, port=free_port()),
    )
    turns = json.loads(SAMPLE_LABEL.read_text())["turns"]
    first_turn, last_turn = turns[0], turns[-1]
    model_file = f"{Path(settings.triton.model_repository).resolve()}/llm/1/model.py"
    killed: dict[str, float] = {}

    async def body() -> list[dict[str, Any]]:
        async with running_stack(settings) as running:
            assert running.orchestrator_metrics_url
            grpc_port = running.triton_url.rsplit(":", 1)[1]
            triton = next(
                pid
                for pid in child_pids(os.getpid())
                if f"--grpc-port={grpc_port}" in _cmdline(pid) and "tritonserver" in _cmdline(pid)
            )
            events: list[dict[str, Any]] = []

            def on_event(event: dict[str, Any]) -> None:
                events.append(event)
                # the reply to the first turn (not a speculation inside it): the LLM is at work on it
                if event.get("type") == "reply_started" and float(event["t"]) >= first_turn["end"] and not killed:
                    pid = next(p for p in child_pids(triton) if model_file in _cmdline(p))
                    os.kill(pid, signal.SIGKILL)
                    killed["t"] = float(event["t"])
                    killed["wall"] = time.monotonic()

            # perception off: its models are not loaded here (they are not what this test is about)
            await talk(SAMPLE, running.address, tmp_path, on_event=on_event, options={"perception": "false"})
            url = running.orchestrator_metrics_url
            healed = metric(url, "duet_model_healing_total", missing_ok=True, event="healed", model="llm")
            restarts = metric(url, "duet_triton_restarts_total", missing_ok=True)
            print(
                f"[healing] spoken session: llm killed at t={killed.get('t')}; healed {healed:.0f}x, "
                f"tritonserver restarts {restarts:.0f}"
            )
            assert healed >= 1 or restarts >= 1
            return events

    events = asyncio.run(body())
    assert killed, "no reply started: the kill never happened"
    answers = [e for e in events if e["type"] == "replica_speaking_start" and float(e["t"]) > last_turn["end"]]
    errors = [e for e in events if e["type"] == "error"]
    starts = [e["t"] for e in events if e["type"] == "replica_speaking_start"]
    print(f"[healing] replica spoke at t={starts} (user turns end at {[t['end'] for t in turns]}); errors: {errors}")
    assert answers, f"the user's last turn was not answered after the llm stub died: {events}"
    assert all(e.get("code") == "model_unavailable" for e in errors), errors
    assert any(e["type"] == "session_ended" for e in events)


def _cmdline(pid: int) -> str:
    return " ".join(process_argv(pid))


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedTriton]:
    with EmbeddedTriton(TritonSettings(models=MODELS)) as s:
        yield s


def stub_pid(server: EmbeddedTriton, model: str) -> int:
    """The pid of `model`'s stub: the child of tritonserver whose command line holds its model file."""
    model_file = f"{Path(server.settings.model_repository).resolve()}/{model}/1/model.py"
    for pid in server.child_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if model_file in cmdline:
            return pid
    raise AssertionError(f"no stub process for {model!r} among tritonserver's children {server.child_pids()}")


def wait_for_stub(server: EmbeddedTriton, model: str, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return stub_pid(server, model)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def text(models: TritonModels, request: LlmRequest = ASK) -> str:
    return "".join([piece async for piece in models.generate(request)])


async def healing(
    server: EmbeddedTriton,
    body: Callable[[TritonModels, ModelHealer], Awaitable[Any]],
    *,
    probe: bool = True,
    timeout_s: float = 10.0,
    **healer_options: Any,
) -> Any:
    """Run `body` with an adapter and its healer (probing the server's stubs when `probe`) and a supervisor."""
    models = TritonModels(server.grpc_url, timeout_s=timeout_s)
    models.llm_timeout_s = 20.0
    healer = ModelHealer(models, probe=server.stubs if probe else None, **healer_options)

    async def restarted() -> None:
        healer.server_restarted()

    tasks = [
        asyncio.create_task(healer.run(), name="test-healer"),
        asyncio.create_task(server.supervise(restarted), name="test-supervisor"),
    ]
    try:
        return await body(models, healer)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await models.close()


async def answered_after(fn: Callable[[], Awaitable[Any]]) -> tuple[Any, float, int]:
    """Call `fn` until it answers: its answer, seconds since the call began, and how many calls failed."""
    t0 = time.monotonic()
    failures = 0
    while True:
        try:
            return await fn(), time.monotonic() - t0, failures
        except ModelUnavailable:
            failures += 1
            if time.monotonic() - t0 > RECOVERY_BOUND_S:
                raise
            await asyncio.sleep(0.1)


def healed_or_restarted(healer: ModelHealer, server: EmbeddedTriton, restarts_before: int, model: str) -> None:
    if server.restarts > restarts_before:
        print(f"[healing] tritonserver itself died and was restarted ({server.restarts - restarts_before}x)")
        return
    assert healer.counts["healed", model] == 1, healer.counts
    assert healer.count("reload_failed") == 0, healer.counts


def test_a_killed_llm_stub_is_found_by_the_probe_and_the_next_request_answered(server: EmbeddedTriton) -> None:
    restarts = server.restarts

    async def body(models: TritonModels, healer: ModelHealer) -> None:
        assert await text(models)
        await asyncio.sleep(1.0)  # the probe has seen the stub
        pid = stub_pid(server, "llm")
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        # no request yet: only the probe can notice (polling the healer's state is the point here)
        while healer.healthy("llm") and server.restarts == restarts and time.monotonic() - t_kill < 10:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        reply, _, failures = await answered_after(lambda: text(models))
        recovery = time.monotonic() - t_kill
        print(f"[healing] llm stub {pid} killed: next request answered {recovery:.2f} s later ({failures} failed)")
        assert reply
        healed_or_restarted(healer, server, restarts, "llm")
        if server.restarts == restarts:
            assert healer.counts["found_by_probe", "llm"] == 1, healer.counts
            assert failures == 0  # the request waited for the reload instead of failing
            assert wait_for_stub(server, "llm") != pid

    asyncio.run(healing(server, body))


def test_a_request_to_a_dead_stub_heals_it_and_is_answered_without_a_probe(server: EmbeddedTriton) -> None:
    """As with an external Triton (`DUET_TRITON__URL`): only the failed request shows the stub is dead."""
    restarts = server.restarts

    async def body(models: TritonModels, healer: ModelHealer) -> None:
        assert await text(models)
        pid = stub_pid(server, "llm")
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        await asyncio.sleep(0.5)
        reply, took, failures = await answered_after(lambda: text(models))
        print(
            f"[healing] llm stub {pid} killed, no probe: the next request was answered after {took:.2f} s "
            f"({time.monotonic() - t_kill:.2f} s after the kill; {failures} failed)"
        )
        assert reply
        healed_or_restarted(healer, server, restarts, "llm")
        if server.restarts == restarts:
            assert healer.counts["found_by_request", "llm"] == 1, healer.counts
            assert failures == 0  # the adapter sent it again once the model was back

    asyncio.run(healing(server, body, probe=False))


def test_a_reply_cut_by_the_stubs_death_fails_typed_and_the_next_one_is_answered(server: EmbeddedTriton) -> None:
    restarts = server.restarts

    async def body(models: TritonModels, healer: ModelHealer) -> None:
        await asyncio.sleep(1.0)
        pieces = 0
        failure: ModelUnavailable | None = None
        t_kill = 0.0
        try:
            async for _ in models.generate(STORY):
                pieces += 1
                if pieces == 3:
                    pid = stub_pid(server, "llm")
                    os.kill(pid, signal.SIGKILL)
                    t_kill = time.monotonic()
        except ModelUnavailable as exc:
            failure = exc
        assert failure is not None, f"the reply went on after its stub died ({pieces} pieces)"
        cut = time.monotonic() - t_kill
        reply, _, failures = await answered_after(lambda: text(models))
        recovery = time.monotonic() - t_kill
        print(f"[healing] llm killed mid-reply: cut after {cut:.2f} s ({failure.code}), next reply {recovery:.2f} s")
        assert failure.code == "model_unavailable"
        assert reply
        healed_or_restarted(healer, server, restarts, "llm")
        if server.restarts == restarts:
            # the healer ended the wait when it found the stub dead, not the 20 s reply timeout
            assert "stub died" in failure.message, failure.message
            assert failures == 0

    asyncio.run(healing(server, body))


def test_an_ensemble_heals_through_its_member(server: EmbeddedTriton) -> None:
    """`floor` runs `turn`: a dead `turn` stub fails `floor`, the healer reloads `turn`, `floor` answers."""
    restarts = server.restarts
    audio = np.zeros(128000, dtype=np.int16)  # the floor window: 8 s

    async def body(models: TritonModels, healer: ModelHealer) -> None:
        await models.floor(audio, 8000, "", "")
        pid = stub_pid(server, "turn")
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        est, took, failures = await answered_after(lambda: models.floor(audio, 8000, "hello", ""))
        print(f"[healing] turn stub {pid} killed: the floor ensemble answered after {took:.2f} s ({failures} failed)")
        assert 0.0 <= est.p_yield <= 1.0
        healed_or_restarted(healer, server, restarts, "turn")
        if server.restarts == restarts:
            assert healer.healer.members["floor"] == ("turn", "prosody", "floor_fusion")
            assert healer.counts["reload", "turn"] == 1 and healer.count("reload") == 1, healer.counts
            assert failures == 0

    asyncio.run(healing(server, body, probe=False))


@pytest.fixture()
def lone_llm() -> Iterator[EmbeddedTriton]:
    with EmbeddedTriton(TritonSettings(models=("llm",))) as s:
        yield s


def test_a_dead_tritonserver_is_restarted_and_the_client_reconnects(lone_llm: EmbeddedTriton) -> None:
    server = lone_llm

    async def body(models: TritonModels, healer: ModelHealer) -> None:
        assert await text(models)
        proc = server._proc
        assert proc is not None
        proc.kill()
        t_kill = time.monotonic()
        reply, _, failures = await answered_after(lambda: text(models))
        print(
            f"[healing] tritonserver killed: restarted and answering {time.monotonic() - t_kill:.2f} s later "
            f"({failures} requests failed meanwhile)"
        )
        assert reply
        assert server.restarts == 1
        assert server._proc is not proc and server.running
        assert healer.count("healed") == 0  # a fresh server needs no model reloads
        assert healer.healer.unhealthy() == []

    asyncio.run(healing(server, body))


def test_a_reload_that_hangs_restarts_the_server(lone_llm: EmbeddedTriton) -> None:
    """When reloading does not work (here: every reload "hangs", its time limit being 1 ms), the healer
    restarts tritonserver through the launcher, and the model comes back with the fresh server."""
    server = lone_llm

    async def body(models: TritonModels, healer: ModelHealer) -> None:
        assert await text(models)
        await asyncio.sleep(1.0)  # the probe has seen the stub
        os.kill(stub_pid(server, "llm"), signal.SIGKILL)
        t_kill = time.monotonic()
        reply, _, failures = await answered_after(lambda: text(models))
        print(
            f"[healing] llm stub killed, reloads hung: server restarted, answering {time.monotonic() - t_kill:.2f} s "
            f"later ({failures} requests failed meanwhile)"
        )
        assert reply
        assert healer.counts["server_restart", "llm"] == 1, healer.counts
        assert server.restarts == 1
        assert healer.healer.unhealthy() == []

    asyncio.run(healing(server, body, restart_server=server.kill, reload_timeout_s=0.001))


# The real `tts` model with one fault added: the first request for "<stall>" after `stall-once` appears in its
# folder blocks inside `execute` for good, as a deadlocked model does. The stub's health thread runs on, so
# Triton keeps the model READY and queues every later request behind it; nothing fails, nothing is answered.
STALLING_TTS = """
import importlib.util
import threading
from pathlib import Path

_spec = importlib.util.spec_from_file_location("real_tts", {real!r})
real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real)
ONCE = Path(__file__).parent / "stall-once"


class TritonPythonModel(real.TritonPythonModel):
    def execute(self, requests):
        if ONCE.exists() and any(real._string(r, "TEXT") == "<stall>" for r in requests):
            ONCE.unlink()
            threading.Event().wait()
        return super().execute(requests)
"""


@pytest.fixture()
def stalling_tts(tmp_path: Path) -> Iterator[EmbeddedTriton]:
    real = Path(TritonSettings().model_repository) / "tts"
    version = tmp_path / "repo" / "tts" / "1"
    version.mkdir(parents=True)
    (version.parent / "config.pbtxt").write_text((real / "config.pbtxt").read_text())
    (version / "model.py").write_text(STALLING_TTS.format(real=str(real / "1" / "model.py")))
    with EmbeddedTriton(TritonSettings(models=("tts",), model_repository=str(tmp_path / "repo"))) as s:
        yield s
    if s.restarts == 0:  # a server that never died leaves nothing behind (its folder held the log)
        assert not s.log_path.parent.exists()


def test_a_hung_tts_stub_is_taken_for_hung_killed_and_reloaded_and_its_requests_answered(
    stalling_tts: EmbeddedTriton,
) -> None:
    """A stub blocked in its model, not dead: Triton never calls it "not healthy". The request that waited its
    whole timeout while the model answered nobody marks it hung; the stub is killed and the model reloaded; that
    request and the one queued behind it are sent again and answered."""
    server = stalling_tts
    once = Path(server.settings.model_repository) / "tts" / "1" / "stall-once"

    async def speak(models: TritonModels, text: str) -> int:
        return len([chunk async for chunk in models.synthesize(text)])

    async def body(models: TritonModels, healer: ModelHealer) -> None:
        assert await speak(models, "Hello there.") == 1
        pid = stub_pid(server, "tts")
        once.touch()
        t0 = time.monotonic()
        stalled = asyncio.create_task(speak(models, "<stall>"))
        await asyncio.sleep(0.5)
        queued = asyncio.create_task(speak(models, "Are you still there?"))
        answers = await asyncio.gather(stalled, queued)
        took = time.monotonic() - t0
        print(f"[healing] tts stub hung: both requests answered {took:.2f} s after the stall began ({healer.counts})")
        assert answers == [1, 1]
        assert not once.exists()  # the stall happened
        assert healer.counts["found_by_silence", "tts"] == 1, healer.counts
        assert healer.counts["healed", "tts"] == 1, healer.counts
        assert wait_for_stub(server, "tts") != pid  # killed and replaced, not left to wake up
        assert await speak(models, "Goodbye.") == 1

    asyncio.run(healing(server, body, timeout_s=3.0, kill_stubs=server.kill_stubs))
