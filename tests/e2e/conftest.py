"""A real `duet serve` process (the CLI) in front of the shared real tritonserver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import REPO_ROOT
from orchestrator.launcher import free_port

DUET = str(Path(sys.executable).parent / "duet")


# A persona that talks at length, for tests that need a reply still generating when the user goes on.
STORYTELLER = """\
name: Sam
system_prompt: >-
  You are Sam, a storyteller. Whatever the caller says, answer with a long, detailed story of many sentences.
max_tokens: 200
max_sentences: 12
"""


def start_server(triton_url: str, port: int, personas: Path | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, DUET_TRITON__URL=triton_url)
    if personas is not None:
        env["DUET_CONVERSATION__PERSONAS_DIR"] = str(personas)
    proc = subprocess.Popen(
        [DUET, "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "serving sessions on" in line:
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"duet serve exited: {line}{proc.stdout.read()}")
    proc.kill()
    raise RuntimeError("duet serve did not become ready")


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def server(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    personas = tmp_path_factory.mktemp("personas")
    for shipped in (REPO_ROOT / "personas").glob("*.yaml"):
        shutil.copy(shipped, personas)
    (personas / "storyteller.yaml").write_text(STORYTELLER)
    port = free_port()
    proc = start_server(triton.grpc_url, port, personas)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_server(proc)
