"""Shared fixtures: a real embedded tritonserver (started once per test run) and sample audio; `require`
for the assets setup provides."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest

from duet.wav import read_pcm16

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "perf" / "data" / "samples" / "demo_user.wav"
SAMPLE_LABEL = ROOT / "perf" / "data" / "samples" / "demo_user.json"


def require(path: Path, what: str) -> Path:
    """An asset that setup provides. Missing means setup did not run or failed: that fails the tests (with
    how to fix it) rather than skipping them, so a broken setup can never pass as a green run."""
    if not path.exists():
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        pytest.fail(f"{what} is missing ({where}): setup is a prerequisite, run scripts/bootstrap.sh", pytrace=False)
    return path


def require_module(name: str, what: str) -> ModuleType:
    """A package from pyproject.toml's dependencies (or its `dev` extra); missing fails like `require`."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(
            f"{what} cannot be imported ({exc}): setup is a prerequisite, run scripts/bootstrap.sh", pytrace=False
        )


def metric(url: str, name: str, *, missing_ok: bool = False, **labels: str) -> float:
    """A counter or gauge on a Prometheus endpoint (Triton's or the orchestrator's), summed over the samples
    whose labels include `labels`. A series that is not there fails (a missing metric must not read as 0),
    unless `missing_ok`: a labelled counter only appears once it has counted."""
    from orchestrator.telemetry import parse_metrics

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    values = [s.value for s in parse_metrics(text) if s.name == name and labels.items() <= s.labels.items()]
    assert values or missing_ok, f"{url} exports no {name} with {labels}"
    return sum(values)


def triton_and_stub(triton_url: str, model_repository: str, model: str) -> tuple[int, int]:
    """The pids of this process's tritonserver serving gRPC at `triton_url` and of `model`'s Python stub under
    it (found by their command lines), for tests that stop or kill one."""
    from orchestrator.models.launcher import child_pids, process_argv

    def cmdline(pid: int) -> str:
        return " ".join(process_argv(pid))

    port = triton_url.rsplit(":", 1)[1]
    server = next(
        pid
        for pid in child_pids(os.getpid())
        if f"--grpc-port={port}" in cmdline(pid) and "tritonserver" in cmdline(pid)
    )
    model_file = f"{Path(model_repository).resolve()}/{model}/1/model.py"
    return server, next(p for p in child_pids(server) if model_file in cmdline(p))


async def throttle(
    pid: int, stop_s: float, run_s: float, for_s: float, while_stopped: Callable[[], None] | None = None
) -> int:
    """Make process `pid` slow for `for_s` seconds: SIGSTOP for `stop_s` of every `stop_s + run_s` (one stop of
    `for_s` when `run_s` is 0: a hung process), calling `while_stopped` at the end of each stop. A process that
    is gone meanwhile (killed by the healer) is no error. Returns the stops made."""
    began, stops = time.monotonic(), 0
    try:
        while time.monotonic() - began < for_s:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            await asyncio.sleep(min(stop_s, for_s - (time.monotonic() - began)))
            if while_stopped is not None:
                while_stopped()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(run_s)
            stops += 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    return stops


def read_wav(path: Path) -> npt.NDArray[np.int16]:
    return np.frombuffer(read_pcm16(path), dtype="<i2").astype(np.int16)


@pytest.fixture(scope="session")
def sample_audio() -> npt.NDArray[np.int16]:
    return read_wav(SAMPLE)


@pytest.fixture(scope="session")
def sample_label() -> dict[str, object]:
    return dict(json.loads(SAMPLE_LABEL.read_text()))


@pytest.fixture(scope="session")
def triton() -> Iterator[object]:
    """One tritonserver with every model for the session's tests. Triton 2.51 itself has been seen to segfault
    (signal 11 in the server binary, twice in ~40 CI runs, with requests being cancelled): the test that was
    running fails, and the server is started again on the same ports, as `duet serve` does, so one crash does not
    fail every later test as well."""
    import threading

    from orchestrator.config import TritonSettings
    from orchestrator.models.launcher import EmbeddedTriton

    with EmbeddedTriton(TritonSettings()) as server:
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.5):
                if not server.running and not done.is_set():
                    print(f"\n[triton] the session's tritonserver died:\n{server.log_tail()}\n[triton] restarting it")
                    try:
                        server.restart()
                    except Exception as err:  # (the next round tries again)
                        print(f"[triton] restart failed: {err}")

        watcher = threading.Thread(target=watch, name="triton-watch", daemon=True)
        watcher.start()
        try:
            yield server
        finally:
            done.set()
            watcher.join(timeout=5)
