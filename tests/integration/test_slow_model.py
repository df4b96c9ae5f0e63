"""A model made slow, in a real tritonserver: the `asr` stub is frozen (SIGSTOP) for 3 s while a user speaks.

The whole service runs in this process (`running_stack`, as `duet serve` wires it) and a recorded user streams
at real time in a floor session (VAD, the floor ensemble and streaming ASR, as `duet turns`). While `asr` is
frozen: the session holds at most one decode in Triton (its transcription gate never queues a second), the
floor models go on answering at the audio's pace, and no error reaches the user. Once `asr` runs again, every
turn end the user made is still decided. Checks are on what happened, not on how fast.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from duet.sdk import connect
from duet.wav import CHUNK_SAMPLES
from orchestrator.app import running_stack
from orchestrator.config import Settings
from orchestrator.models.launcher import child_pids, free_port, process_argv
from tests.conftest import SAMPLE, SAMPLE_LABEL, metric, read_wav

pytestmark = pytest.mark.integration

FLOOR_MODELS = ("vad", "turn", "prosody", "floor_fusion", "floor", "asr")
STALL_S = 3.0
STALL_AT_S = 1.5  # into the stream: the user's first turn is being spoken (and decoded)


def _cmdline(pid: int) -> str:
    return " ".join(process_argv(pid))


def test_a_frozen_asr_holds_one_request_while_the_floor_models_go_on(tmp_path: Path) -> None:
    import json

    base = Settings()
    settings = dataclasses.replace(
        base,
        triton=dataclasses.replace(base.triton, models=FLOOR_MODELS),
        server=dataclasses.replace(base.server, port=free_port()),
        api=dataclasses.replace(base.api, enabled=False),
    )
    yields = [p for p in json.loads(SAMPLE_LABEL.read_text())["pauses"] if p["kind"] == "yield"]
    pcm = read_wav(SAMPLE)
    pcm = np.concatenate([pcm, np.zeros(16000, dtype=np.int16)])  # a second of silence: the last turn's end
    seen: dict[str, float] = {}
    model_file = f"{Path(settings.triton.model_repository).resolve()}/asr/1/model.py"

    async def body() -> list[dict[str, Any]]:
        async with running_stack(settings) as running:
            assert running.metrics_url
            url = running.metrics_url
            grpc_port = running.triton_url.rsplit(":", 1)[1]
            triton = next(
                pid
                for pid in child_pids(os.getpid())
                if f"--grpc-port={grpc_port}" in _cmdline(pid) and "tritonserver" in _cmdline(pid)
            )
            stub = next(p for p in child_pids(triton) if model_file in _cmdline(p))
            events: list[dict[str, Any]] = []

            async def freeze() -> None:
                await asyncio.sleep(STALL_AT_S)
                vad_before = metric(url, "nv_inference_count_total", model="vad")
                os.kill(stub, signal.SIGSTOP)
                began = time.monotonic()
                pending = []
                states: set[str] = set()
                try:
                    while time.monotonic() - began < STALL_S:
                        await asyncio.sleep(0.25)
                        pending.append(metric(url, "nv_inference_pending_request_count", model="asr"))
                        states.add(Path(f"/proc/{stub}/stat").read_text().split()[2])  # noqa: ASYNC240 (procfs)
                    seen["vad"] = metric(url, "nv_inference_count_total", model="vad") - vad_before
                finally:
                    os.kill(stub, signal.SIGCONT)
                seen["pending_max"] = max(pending)
                seen["frozen"] = float(states == {"T"})  # the stub stayed stopped throughout
                seen["stalled_s"] = time.monotonic() - began

            async with connect(running.address, options={"mode": "floor", "perception": "false"}) as session:

                async def listen() -> None:
                    async for item in session.items():
                        if isinstance(item, dict):
                            events.append(item)

                reader = asyncio.create_task(listen(), name="test-listen")
                frozen = asyncio.create_task(freeze(), name="test-freeze")
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                for i in range(0, pcm.shape[0] - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
                    await session.send_audio(pcm[i : i + CHUNK_SAMPLES].tobytes())
                    await asyncio.sleep(max(t0 + (i + CHUNK_SAMPLES) / 16000 - loop.time(), 0))  # real time
                await frozen
                await session.end()
                await asyncio.wait_for(reader, 60)
            return events

    events = asyncio.run(body())
    print(f"[slow model] asr frozen {seen['stalled_s']:.1f} s: {seen}")
    assert seen["vad"] >= 0.5 * STALL_S / 0.032, seen  # the floor's VAD kept pace (a window every 32 ms)
    assert seen["frozen"] == 1.0, seen  # (the stub really was stopped)
    assert seen["pending_max"] <= 1, seen  # one session, at most one decode waiting: nothing piles up
    assert not [e for e in events if e["type"] == "error"], events
    commits = [float(e["t"]) for e in events if e["type"] == "eot_commit"]
    for y in yields:  # every turn end is still decided, after the stall
        assert any(y["start"] <= t <= y["end"] + 2.0 for t in commits), (y, commits)
