"""A model made slow, in a real tritonserver: the `asr` stub is made thirty times slower for 3 s (stopped with
SIGSTOP for 300 ms of every 310) while a user speaks.

The whole service runs in this process (`running_stack`, as `duet serve` wires it) and a recorded user streams
at real time in a floor session (VAD, the floor ensemble and streaming ASR, as `duet turns`). While `asr` is
slow: the session holds at most one decode in Triton (its transcription gate never queues a second), the
floor models go on answering at the audio's pace, and no error reaches the user. Once `asr` runs again, every
turn end the user made is still decided. Checks are on what happened, not on how fast. (A stub stopped
outright is a hung one, which Triton finds "not healthy" and the healer replaces: tests/integration/
test_slow_face.py.)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from duet.sdk import connect
from duet.wav import CHUNK_SAMPLES
from orchestrator.app import running_stack
from orchestrator.models.launcher import child_pids
from tests.conftest import SAMPLE, SAMPLE_LABEL, metric, read_wav, throttle, triton_and_stub
from tests.integration.conftest import stack_settings

pytestmark = pytest.mark.integration

FLOOR_MODELS = ("vad", "turn", "prosody", "floor_fusion", "floor", "asr")
STALL_S = 3.0
STOP_S, RUN_S = 0.3, 0.01  # short stops, each well within the Python backend's health check
STALL_AT_S = 1.5  # into the stream: the user's first turn is being spoken (and decoded)


def test_a_slow_asr_holds_one_request_while_the_floor_models_go_on(tmp_path: Path) -> None:
    import json

    settings = stack_settings(FLOOR_MODELS)
    yields = [p for p in json.loads(SAMPLE_LABEL.read_text())["pauses"] if p["kind"] == "yield"]
    pcm = read_wav(SAMPLE)
    pcm = np.concatenate([pcm, np.zeros(16000, dtype=np.int16)])  # a second of silence: the last turn's end
    seen: dict[str, float] = {}

    async def body() -> list[dict[str, Any]]:
        async with running_stack(settings) as running:
            assert running.metrics_url
            url = running.metrics_url
            server, stub = triton_and_stub(running.triton_url, settings.triton.model_repository, "asr")
            events: list[dict[str, Any]] = []

            async def slow_down() -> None:
                await asyncio.sleep(STALL_AT_S)
                vad_before = metric(url, "nv_inference_count_total", model="vad")
                began = time.monotonic()
                pending: list[float] = []

                def sample() -> None:
                    pending.append(metric(url, "nv_inference_pending_request_count", model="asr"))

                await throttle(stub, STOP_S, RUN_S, STALL_S, while_stopped=sample)
                seen["vad"] = metric(url, "nv_inference_count_total", model="vad") - vad_before
                seen["pending_max"] = max(pending)
                seen["same_stub"] = float(stub in child_pids(server))  # slow, not taken for dead and replaced
                seen["stalled_s"] = time.monotonic() - began

            async with connect(running.address, options={"mode": "floor", "perception": "false"}) as session:

                async def listen() -> None:
                    async for item in session.items():
                        if isinstance(item, dict):
                            events.append(item)

                reader = asyncio.create_task(listen(), name="test-listen")
                slowed = asyncio.create_task(slow_down(), name="test-slow-down")
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                for i in range(0, pcm.shape[0] - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
                    await session.send_audio(pcm[i : i + CHUNK_SAMPLES].tobytes())
                    await asyncio.sleep(max(t0 + (i + CHUNK_SAMPLES) / 16000 - loop.time(), 0))  # real time
                await slowed
                await session.end()
                await asyncio.wait_for(reader, 60)
            return events

    events = asyncio.run(body())
    print(f"[slow model] asr slowed {seen['stalled_s']:.1f} s: {seen}")
    assert seen["vad"] >= 0.5 * STALL_S / 0.032, seen  # the floor's VAD kept pace (a window every 32 ms)
    assert seen["same_stub"] == 1.0, seen  # (the stub was slow, not restarted)
    assert seen["pending_max"] <= 1, seen  # one session, at most one decode waiting: nothing piles up
    assert not [e for e in events if e["type"] == "error"], events
    commits = [float(e["t"]) for e in events if e["type"] == "eot_commit"]
    for y in yields:  # every turn end is still decided, after the stall
        assert any(y["start"] <= t <= y["end"] + 2.0 for t in commits), (y, commits)
