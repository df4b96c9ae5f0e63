"""A slow face and a hung one, in a real tritonserver, while the replica speaks with its video on: the
`face_render` stub made thirty times slower for 4 s (stopped with SIGSTOP for 300 ms of every 310), or stopped
outright for 4 s.

The whole service runs in this process (`running_stack`, as `duet serve` wires it) and a conversation session
with `video=true` streams silence at real time while the replica says a long line (`echo`). During the fault:
the replica's voice keeps coming at its pace (TTS and playback do not wait for the face), the floor models go
on answering, and no error reaches the user. The frames that fall behind are dropped (gaps in the frame
indices, counted in `video_stats`) rather than queued and sent late in a burst, and afterwards the face goes on
in step with the clock. A slow stub stays (it is slow, not dead); a hung one is found "not healthy" by Triton's
Python backend, and the healer kills it and reloads the model once. Checks are on what happened, not on how
fast.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from typing import Any

import numpy as np
import pytest

from duet.sdk import ReplyAudio, VideoFrame, connect
from duet.wav import CHUNK_SAMPLES
from orchestrator.app import running_stack
from orchestrator.models.launcher import child_pids
from tests.conftest import metric, throttle, triton_and_stub
from tests.integration.conftest import stack_settings

pytestmark = pytest.mark.integration

MODELS = ("vad", "turn", "prosody", "floor_fusion", "floor", "asr", "llm", "tts", "face_motion", "face_render")
# (a conversation session needs its LLM, though this one only says a line)
LINE = (
    "Thank you for waiting. I have looked at your account, and the charge from the third of last month was a "
    "duplicate, so I have refunded it in full. You will see the money back on your card within five working days."
)
SECONDS = 16.0  # of input: the line is about ten seconds of speech
ECHO_AT_S = 1.0
FREEZE_AT_S = 3.0  # session time of the fault: the face is about a second and a half into the line
STALL_S = 4.0
STOP_S, RUN_S = 0.3, 0.01  # a thirtieth of its speed: short stops, each well within the backend's health check
FPS = 25.0
MAX_LAG_S = 0.5  # FaceSettings.max_lag_s: frames further behind than this are dropped


@dataclasses.dataclass
class Run:
    """What one session saw, with the wall-clock times the fault began and ended."""

    audio: list[tuple[float, ReplyAudio]]  # (wall time received, chunk)
    frames: list[tuple[float, VideoFrame]]
    events: list[dict[str, Any]]
    clock0: float  # session time 0 on the wall clock (input at real time)
    began: float
    ended: float
    vad_calls: float  # `vad` inferences during the fault
    cycles: int  # stops of the stub
    same_stub: bool  # the stub that was stopped still runs (not restarted meanwhile)


def run_session(stop_s: float, run_s: float) -> Run:
    """A conversation session with video while the `face_render` stub is stopped for `stop_s` of every
    `stop_s + run_s` seconds, for STALL_S."""
    settings = stack_settings(MODELS)
    silence = np.zeros(CHUNK_SAMPLES, dtype=np.int16).tobytes()
    seen: dict[str, Any] = {}
    audio: list[tuple[float, ReplyAudio]] = []
    frames: list[tuple[float, VideoFrame]] = []
    events: list[dict[str, Any]] = []

    async def body() -> None:
        async with running_stack(settings) as running:
            assert running.metrics_url
            url = running.metrics_url
            triton, stub = triton_and_stub(running.triton_url, settings.triton.model_repository, "face_render")
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

                async def fault() -> None:
                    await speaking.wait()
                    vad_before = metric(url, "nv_inference_count_total", model="vad")
                    began = time.monotonic()
                    cycles = await throttle(stub, stop_s, run_s, STALL_S)  # (a hung stub may be killed meanwhile)
                    seen["vad"] = metric(url, "nv_inference_count_total", model="vad") - vad_before
                    seen["fault"] = (began, time.monotonic())
                    seen["cycles"] = cycles
                    seen["same_stub"] = stub in child_pids(triton)

                reader = asyncio.create_task(listen(), name="test-listen")
                faulty = asyncio.create_task(fault(), name="test-fault")
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                seen["clock0"] = time.monotonic()
                n = int(SECONDS * 16000 / CHUNK_SAMPLES)
                for i in range(n):
                    if i == int(ECHO_AT_S * 16000 / CHUNK_SAMPLES):
                        await session.echo(LINE)
                    await session.send_audio(silence)
                    await asyncio.sleep(max(t0 + (i + 1) * CHUNK_SAMPLES / 16000 - loop.time(), 0))
                await asyncio.wait_for(faulty, 10)
                await session.end()
                await asyncio.wait_for(reader, 60)

    asyncio.run(body())
    began, ended = seen["fault"]
    run = Run(audio, frames, events, seen["clock0"], began, ended, seen["vad"], seen["cycles"], seen["same_stub"])
    stats = [e for e in events if e["type"] == "video_stats"]
    print(
        f"[face fault] stops of {stop_s:g} s for {ended - began:.1f} s ({run.cycles}); same stub {run.same_stub}; "
        f"vad calls meanwhile {run.vad_calls:.0f}; {len(frames)} frames, {len(audio)} audio chunks; "
        f"last video_stats {stats[-1] if stats else None}"
    )
    return run


def check_voice_floor_and_face(run: Run) -> None:
    """No error; the VAD kept pace; the voice did not wait for the face; what fell behind was dropped, not
    queued; and the face is back in step with the clock after the fault."""
    assert not [e for e in run.events if e["type"] == "error"], run.events
    assert run.vad_calls >= 0.5 * STALL_S / 0.032, run.vad_calls  # a VAD window every 32 ms

    # The voice did not wait for the face: reply audio kept arriving during the fault, and the whole line
    # was played (about ten seconds of speech).
    during = [a for w, a in run.audio if run.began + 0.5 <= w <= run.ended]
    assert len(during) >= 10, (len(during), len(run.audio))
    spoken_s = sum(len(a.pcm) / 2 / a.sample_rate for _, a in run.audio)
    assert spoken_s >= 6.0, spoken_s

    # What fell behind was dropped, not queued: the first frame after the fault is near the session clock, the
    # frame indices have gaps, and `video_stats` counts the drops.
    after = [(w, f) for w, f in run.frames if w > run.ended]
    assert after, "the face never came back"
    resumed_at = run.ended - run.clock0  # session time when the renderer was back
    first = after[0][1]
    assert first.t >= resumed_at - 1.5, (first.t, resumed_at)  # not a frame from the fault's start
    indices = [f.index for _, f in run.frames]
    assert indices == sorted(indices), "frames out of order"
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(indices) if b > a + 1)
    assert gaps >= int(STALL_S * FPS / 4), (gaps, indices)  # it drew a small part of the time at most
    stats = [e for e in run.events if e["type"] == "video_stats"]
    assert stats and stats[-1]["dropped"] >= gaps, stats[-1:]
    # and it kept up once back: the frames of the last seconds were sent within the allowed lag
    late = [w - run.clock0 - f.t for w, f in after if f.t >= resumed_at + 2.0]
    assert late, "no frames in the seconds after the fault"
    assert float(np.median(late)) <= MAX_LAG_S + 0.5, late


def test_a_slow_renderer_drops_frames_while_the_voice_and_the_floor_go_on() -> None:
    run = run_session(STOP_S, RUN_S)
    assert run.same_stub, "the slow stub was restarted: Triton or the healer took it for dead"
    check_voice_floor_and_face(run)


def test_a_hung_renderer_is_replaced_at_most_once_and_the_face_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    """Stopped outright for STALL_S. Whether Triton's backend finds the stub "not healthy" depends on what it
    was asked meanwhile; when it does, the healer kills the stub and reloads the model, once. (A stub left alive
    woke up beside its successor and took it down with it: the face stopped for good, and once a `vad` request
    waited 10 s and ended the session.)"""
    caplog.set_level("INFO", logger="duet.triton")
    run = run_session(STALL_S, 0.0)
    reloads = [r.getMessage() for r in caplog.records if "reloading it (attempt" in r.getMessage()]
    print(f"[face fault] hung stub: {len(reloads)} reload(s): {reloads}")
    assert run.cycles == 1
    check_voice_floor_and_face(run)
    assert len(reloads) <= 1, reloads  # found dead once at most, and healed by one reload
