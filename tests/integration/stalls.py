"""One conversation session while a model's Python stub is made slow or hung: the harness the slow-face and
slow-voice fault tests share.

The whole service runs in this process (`running_stack`, as `duet serve` wires it). A conversation session
streams silence at real time while the replica says a long line (`echo`, at 1 s). Once the replica is at
`stall_at_s` (by the session time of what it sent: a video frame with video on, else its voice), the model's
stub is stopped with SIGSTOP for `stop_s` of every `stop_s + run_s`
seconds, for `stall_s` (`tests.conftest.throttle`). What the client received is kept with its wall-clock
arrival, with the fault's wall-clock span and the `vad` inferences made meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import numpy as np

from duet.sdk import ReplyAudio, VideoFrame, connect
from duet.wav import CHUNK_SAMPLES
from orchestrator.app import running_stack
from orchestrator.models.launcher import child_pids
from tests.conftest import metric, throttle, triton_and_stub
from tests.integration.conftest import stack_settings

MODELS = ("vad", "turn", "prosody", "floor_fusion", "floor", "asr", "llm", "tts", "face_motion", "face_render")
# (a conversation session needs its LLM, though this one only says a line)
LINE = (
    "Thank you for waiting. I have looked at your account, and the charge from the third of last month was a "
    "duplicate, so I have refunded it in full. You will see the money back on your card within five working days."
)
ECHO_AT_S = 1.0
VAD_WINDOW_S = 0.032


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

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "error"]

    def vad_kept_pace(self) -> bool:
        """The VAD answered at least half of the windows the fault lasted (one every 32 ms)."""
        return self.vad_calls >= 0.5 * (self.ended - self.began) / VAD_WINDOW_S

    def spoken_s(self) -> float:
        return sum(duration_s(a) for _, a in self.audio)


def duration_s(chunk: ReplyAudio) -> float:
    """Seconds of speech in a chunk of the replica's voice (PCM16 mono)."""
    return len(chunk.pcm) / 2 / chunk.sample_rate


def run_session(
    model: str,
    stop_s: float,
    run_s: float,
    *,
    stall_s: float,
    stall_at_s: float,
    seconds: float,
    video_fps: float | None = None,
) -> Run:
    """A conversation session (video at `video_fps` when given) whose input lasts `seconds`, while `model`'s stub
    is throttled as the module docstring says."""
    settings = stack_settings(MODELS)
    silence = np.zeros(CHUNK_SAMPLES, dtype=np.int16).tobytes()
    seen: dict[str, Any] = {}
    audio: list[tuple[float, ReplyAudio]] = []
    frames: list[tuple[float, VideoFrame]] = []
    events: list[dict[str, Any]] = []
    options = {"perception": "false"}
    if video_fps is not None:
        options |= {"video": "true", "video.fps": f"{video_fps:g}", "video.size": "128x128"}

    async def body() -> None:
        async with running_stack(settings) as running:
            assert running.metrics_url
            url = running.metrics_url
            triton, stub = triton_and_stub(running.triton_url, settings.triton.model_repository, model)

            async with connect(running.address, options=options) as session:
                into_line = asyncio.Event()  # the replica is well into the line
                clocked = VideoFrame if video_fps is not None else ReplyAudio  # what says how far it is

                async def listen() -> None:
                    async for item in session.items():
                        now = time.monotonic()
                        if isinstance(item, ReplyAudio):
                            audio.append((now, item))
                        elif isinstance(item, VideoFrame):
                            frames.append((now, item))
                        else:
                            events.append(item)
                        if isinstance(item, clocked) and item.t >= stall_at_s:
                            into_line.set()

                async def fault() -> None:
                    await into_line.wait()
                    vad_before = metric(url, "nv_inference_count_total", model="vad")
                    began = time.monotonic()
                    cycles = await throttle(stub, stop_s, run_s, stall_s)  # (a hung stub may be killed meanwhile)
                    seen["vad"] = metric(url, "nv_inference_count_total", model="vad") - vad_before
                    seen["fault"] = (began, time.monotonic())
                    seen["cycles"] = cycles
                    seen["same_stub"] = stub in child_pids(triton)

                reader = asyncio.create_task(listen(), name="test-listen")
                faulty = asyncio.create_task(fault(), name="test-fault")
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                seen["clock0"] = time.monotonic()
                n = int(seconds * 16000 / CHUNK_SAMPLES)
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
    return Run(audio, frames, events, seen["clock0"], began, ended, seen["vad"], seen["cycles"], seen["same_stub"])
