"""A real `duet serve` process (the CLI) in front of the shared real tritonserver."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import REPO_ROOT
from orchestrator.models.launcher import free_port

DUET = str(Path(sys.executable).parent / "duet")
LOG_LINES = 100_000  # the server's lines kept (for checks and failure messages); a test run logs far fewer


# A persona that talks at length, for tests that need a reply still generating when the user goes on.
STORYTELLER = """\
name: Sam
system_prompt: >-
  You are Sam, a storyteller. Whatever the caller says, answer with a long, detailed story of many sentences.
max_tokens: 200
max_sentences: 12
llm_model: smollm2-135m
"""
# A storyteller with far more to say: its reply is still generating long after it is first heard.
MARATHON = """\
name: Max
system_prompt: >-
  You are Max, a storyteller. Whatever the caller says, answer with a very long, detailed story of many sentences.
max_tokens: 1000
max_sentences: 60
llm_model: smollm2-135m
"""
# Max's prompt on the default model (Qwen2.5 0.5B), which tells a story when asked (SmolLM2 often answers it in a
# sentence, over before a speculation on it is cancelled or before the user's next words cut it): ~20 tokens/s on
# two cores, so a reply is still generating a second or more after it starts, the more so on a loaded machine.
RACONTEUR = """\
name: Rae
system_prompt: >-
  You are Max, a storyteller. Whatever the caller says, answer with a very long, detailed story of many sentences.
max_tokens: 160
max_sentences: 4
"""
# A persona whose voice the tts model does not have: every reply fails in TTS while the LLM is generating
# (Max's prompt: Sam's can be answered in a dozen tokens, over before the TTS fails).
VOICELESS = """\
name: Val
system_prompt: >-
  You are Max, a storyteller. Whatever the caller says, answer with a very long, detailed story of many sentences.
voice: no-such-voice
max_tokens: 300
max_sentences: 12
speculation: false
llm_model: smollm2-135m
"""
# The test personas exercise timing (long replies to interrupt, pause, cancel), not what is said: they use the
# fast SmolLM2, so the two cores keep up with the session clock; the shipped personas use the default model.
TEST_PERSONAS = {"storyteller": STORYTELLER, "marathon": MARATHON, "raconteur": RACONTEUR, "voiceless": VOICELESS}


class DuetServer:
    """A `duet serve` child process whose output is read all the time by a thread (a full pipe would stall
    the server's logging, and so the server) and kept, its last lines, for failure messages."""

    def __init__(self, proc: subprocess.Popen[str], address: str, env: Mapping[str, str] | None = None) -> None:
        self.proc = proc
        self.address = address
        self.env = dict(env or {})  # the server's environment (its store: `DUET_STORE__URL`)
        self.http_url = ""  # the control plane, read off the server's log
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, name=f"duet-serve-{proc.pid}-log", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line.rstrip("\n"))
            if "control plane on " in line:
                self.http_url = line.split("control plane on ", 1)[1].split("/v1", 1)[0].strip()
            if "serving sessions on" in line:
                self._ready.set()
        self._ready.set()  # the pipe closed: the process is gone (wait_ready tells which)

    def wait_ready(self, timeout: float) -> None:
        if not self._ready.wait(timeout):
            self.proc.kill()
            raise RuntimeError(f"duet serve did not become ready in {timeout:.0f} s:\n{self.log()}")
        if self.proc.poll() is not None and not any("serving sessions on" in x for x in self._lines):
            raise RuntimeError(f"duet serve exited ({self.proc.returncode}):\n{self.log()}")

    def poll(self) -> int | None:
        return self.proc.poll()

    def log(self, n: int = 60) -> str:
        """The server's last `n` lines of output."""
        return "\n".join(list(self._lines)[-n:])

    def logged(self, text: str) -> bool:
        """Whether any line of the server's output so far contains `text`."""
        return any(text in line for line in list(self._lines))

    def wait_logged(self, text: str, timeout: float) -> None:
        wait_for(lambda: self.logged(text), timeout, f"the server to log {text!r}\n{self.log()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self._reader.join(timeout=5)


def start_server(
    triton_url: str,
    port: int,
    personas: Path | None = None,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> DuetServer:
    """`duet serve` on 127.0.0.1:`port` against the Triton at `triton_url`; `env` adds DUET_* settings."""
    # the control plane on a free port, with a store of its own (several servers may run at once)
    store = Path(tempfile.mkdtemp(prefix="duet-store-")) / "duet.db"
    full = dict(os.environ, DUET_TRITON__URL=triton_url, DUET_API__HTTP_PORT="0", DUET_STORE__URL=str(store))
    full.update(env or {})
    if personas is not None:
        full["DUET_CONVERSATION__PERSONAS_DIR"] = str(personas)
    proc = subprocess.Popen(
        [DUET, "serve", "--port", str(port), *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = DuetServer(proc, f"127.0.0.1:{port}", full)
    server.wait_ready(60)
    return server


def stop_server(server: DuetServer) -> None:
    server.stop()


def persona_folder(folder: Path) -> Path:
    """The shipped personas plus the test ones, in `folder`."""
    for shipped in (REPO_ROOT / "personas").glob("*.yaml"):
        shutil.copy(shipped, folder)
    for name, text in TEST_PERSONAS.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


@pytest.fixture(scope="session")
def duet_server(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuetServer]:
    personas = persona_folder(tmp_path_factory.mktemp("personas"))
    server = start_server(triton.grpc_url, free_port(), personas)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def server(duet_server: DuetServer) -> str:
    return duet_server.address


def wait_for(check: Any, timeout: float, what: str) -> None:
    """Poll `check()` until true (a bound on how long the outside world may take, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@contextlib.asynccontextmanager
async def webhook_server(handle: Callable[[Any, str], Awaitable[Any]]) -> AsyncIterator[str]:
    """A team's webhook endpoint on loopback: `POST <url>/<tenant>` goes to `handle(request, tenant)`; yields
    the URL to which a conversation's `callback_url` adds `/<tenant_id>`."""
    from aiohttp import web

    async def route(request: web.Request) -> web.StreamResponse:
        response: web.StreamResponse = await handle(request, request.match_info["tenant"])
        return response

    app = web.Application()
    app.router.add_post("/hooks/{tenant}", route)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hooks"
    finally:
        await runner.cleanup()


def admin(server: DuetServer, *args: str) -> dict[str, Any]:
    """`duet admin ...` on the server's store, as an operator runs it beside the server."""
    import json

    done = subprocess.run(
        [DUET, "admin", *args], env=server.env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll `check()` until true (a bound on how long the outside world may take, not a timed assertion)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)
