"""A slow face, in a real tritonserver: the `face_render` stub is made thirty times slower for 4 s (stopped
with SIGSTOP for 300 ms of every 310) while the replica speaks with its video on.

The whole service runs in this process (`running_stack`, as `duet serve` wires it) and a conversation session
with `video=true` streams silence at real time while the replica says a long line (`echo`). While the renderer
is slow: the replica's voice keeps coming at its pace (TTS and playback do not wait for the face), the floor
models go on answering, and no error reaches the user. The frames that fall behind are dropped (gaps in the
frame indices, counted in `video_stats`) rather than queued and sent late in a burst, and once the renderer is
back to speed the face goes on in step with the clock. Checks are on what happened, not on how fast.

(A stub stopped outright for seconds is another fault: Triton's Python backend finds it "not healthy" within
about a second, restarts it, and the healer, seeing its process gone, reloads the model as well; that case is
the healer's, tests/integration/test_healing.py.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from duet.sdk import ReplyAudio, VideoFrame, connect
from duet.wav import CHUNK_SAMPLES
from orchestrator.app import running_stack
from orchestrator.config import Settings
from orchestrator.models.launcher import child_pids, free_port, process_argv
from tests.conftest import metric

pytestmark = pytest.mark.integration

MODELS = ("vad", "turn", "prosody", "floor_fusion", "floor", "asr", "llm", "tts", "face_motion", "face_render")
# (a conversation session needs its LLM, though this one only says a line)
LINE = (
    "Thank you for waiting. I have looked at your account, and the charge from the third of last month was a "
    "duplicate, so I have refunded it in full. You will see the money back on your card within five working days."
)
SECONDS = 16.0  # of input: the line is about ten seconds of speech
ECHO_AT_S = 1.0
FREEZE_AT_S = 3.0  # session time: the face is about a second and a half into the line
STALL_S = 4.0
STOP_S, RUN_S = 0.3, 0.01  # a thirtieth of its speed: short stops, each well within the backend's health check
FPS = 25.0
MAX_LAG_S = 0.5  # FaceSettings.max_lag_s: frames further behind than this are dropped


def _cmdline(pid: int) -> str:
    return " ".join(process_argv(pid))


def test_a_slow_renderer_drops_frames_while_the_voice_and_the_floor_go_on() -> None:
    base = Settings()
    settings = dataclasses.replace(
        base,
        triton=dataclasses.replace(base.triton, models=MODELS),
        server=dataclasses.replace(base.server, port=free_port()),
        api=dataclasses.replace(base.api, enabled=False),
    )
    model_file = f"{Path(settings.triton.model_repository).resolve()}/face_render/1/model.py"
    silence = np.zeros(CHUNK_SAMPLES, dtype=np.int16).tobytes()
    seen: dict[str, Any] = {}
    audio: list[tuple[float, ReplyAudio]] = []  # (wall time received, chunk)
    frames: list[tuple[float, VideoFrame]] = []
    events: list[dict[str, Any]] = []

    async def body() -> None:
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
            options = {"video": "true", "video.fps": f"{FPS:g}", "video.size": "128x128", "perception": "false"}

            async with connect(running.address, options=options) as session:
                speaking = asyncio.Event()  # the face is well into the line

                async def listen() -> None:
                    async for item in session.items():
                        now = time.monotonic()
                        if isinstance(item, ReplyAudio):
                            audio.append((now, item))
                        elif isinstance(item, VideoFrame):
                            frames.append((now, item))
                            if item.t >= FREEZE_AT_S:
                                speaking.set()
                        else:
                            events.append(item)

                async def slow_down() -> None:
                    await speaking.wait()
                    vad_before = metric(url, "nv_inference_count_total", model="vad")
                    began = time.monotonic()
                    cycles = 0
                    try:
                        while time.monotonic() - began < STALL_S:
                            os.kill(stub, signal.SIGSTOP)
                            await asyncio.sleep(STOP_S)
                            os.kill(stub, signal.SIGCONT)
                            await asyncio.sleep(RUN_S)
                            cycles += 1
                        seen["vad"] = metric(url, "nv_inference_count_total", model="vad") - vad_before
                    finally:
                        os.kill(stub, signal.SIGCONT)
                    seen["slow"] = (began, time.monotonic())
                    seen["cycles"] = cycles
                    seen["same_stub"] = stub in child_pids(triton)  # not restarted meanwhile: slow, not dead

                reader = asyncio.create_task(listen(), name="test-listen")
                slowed = asyncio.create_task(slow_down(), name="test-slow-down")
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                seen["clock0"] = time.monotonic()  # session time 0 on the wall clock (input at real time)
                n = int(SECONDS * 16000 / CHUNK_SAMPLES)
                for i in range(n):
                    if i == int(ECHO_AT_S * 16000 / CHUNK_SAMPLES):
                        await session.echo(LINE)
                    await session.send_audio(silence)
                    await asyncio.sleep(max(t0 + (i + 1) * CHUNK_SAMPLES / 16000 - loop.time(), 0))
                await asyncio.wait_for(slowed, 10)
                await session.end()
                await asyncio.wait_for(reader, 60)

    asyncio.run(body())
    began, ended = seen["slow"]
    clock0 = seen["clock0"]
    stats = [e for e in events if e["type"] == "video_stats"]
    print(
        f"[slow face] face_render slowed {ended - began:.1f} s ({seen['cycles']} stops); "
        f"vad calls meanwhile {seen['vad']:.0f}; "
        f"{len(frames)} frames, {len(audio)} audio chunks; last video_stats {stats[-1] if stats else None}"
    )
    assert seen["same_stub"], "the slow stub was restarted: Triton or the healer took it for dead"
    assert not [e for e in events if e["type"] == "error"], events
    assert seen["vad"] >= 0.5 * STALL_S / 0.032, seen  # the floor's VAD kept pace (a window every 32 ms)

    # The voice did not wait for the face: reply audio kept arriving while the face was slow, and the whole line
    # was played (about ten seconds of speech).
    during = [a for w, a in audio if began + 0.5 <= w <= ended]
    assert len(during) >= 10, (len(during), len(audio))
    spoken_s = sum(len(a.pcm) / 2 / a.sample_rate for _, a in audio)
    assert spoken_s >= 6.0, spoken_s

    # What fell behind was dropped, not queued: the first frame after the slow spell is near the session clock,
    # the frame indices have gaps, and `video_stats` counts the drops.
    after = [(w, f) for w, f in frames if w > ended]
    assert after, "the face never came back"
    resumed_at = ended - clock0  # session time when the renderer was back to speed
    first = after[0][1]
    assert first.t >= resumed_at - 1.5, (first.t, resumed_at)  # not a frame from the slow spell's start
    indices = [f.index for _, f in frames]
    assert indices == sorted(indices), "frames out of order"
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(indices) if b > a + 1)
    assert gaps >= int(STALL_S * FPS / 4), (gaps, indices)  # it drew a thirtieth of the time
    assert stats and stats[-1]["dropped"] >= gaps, stats[-1:]
    # and it kept up once back: the frames of the last seconds were sent within the allowed lag
    late = [w - clock0 - f.t for w, f in after if f.t >= resumed_at + 2.0]
    assert late, "no frames in the seconds after the slow spell"
    assert float(np.median(late)) <= MAX_LAG_S + 0.5, late
