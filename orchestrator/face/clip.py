"""One rendered clip (`duet render`): speech (TTS, or given audio with its phoneme timings) plus the face
saying it, streamed as audio pieces and runs of JPEG frames on one clock as they are made.

Frames are drawn in windows as soon as the speech they show is known: the face for sentence 1 is rendered
while the TTS is still synthesising sentence 2. Frame `i` is shown at `i / fps`; audio sample `n` plays at
`n / 16000`. A short tail after the speech lets the mouth settle.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from orchestrator.errors import BadTimings, DuetError
from orchestrator.face.emotions import EMOTIONS, EmotionCue
from orchestrator.face.motion import MotionRequest, Phoneme, Sentence
from orchestrator.triton import I16, FaceModels, RenderedFrames, SpeechSynthesizer

SAMPLE_RATE = 16000
TAIL_S = 0.4  # frames after the last sound: the mouth closes, the face settles
WINDOW_FRAMES = 50  # frames per motion+render request (2 s at 25 fps)
MAX_TEXT_CHARS = 2000
MAX_AUDIO_S = 120.0
ANTICIPATION_S = 0.1  # the mouth moves before the sound: a window stops this far short of known speech


class ClipModels(FaceModels, SpeechSynthesizer, Protocol):
    pass


@dataclass(frozen=True)
class ClipSpec:
    text: str = ""
    emotion: str = "neutral"
    intensity: float = 0.6
    width: int = 512
    height: int = 512
    fps: float = 25.0
    face: str = "astronaut"
    voice: str = ""
    quality: int = 80
    seed: int = 0
    audio: I16 | None = None  # with `timings`: lip-sync this instead of speaking `text`
    timings: tuple[Phoneme, ...] = ()


@dataclass(frozen=True)
class AudioPiece:
    pcm: I16
    t: float


@dataclass
class ClipStats:
    frames: int = 0
    speech_s: float = 0.0
    first_frame_ms: float | None = None
    first_audio_ms: float | None = None
    motion_ms: float = 0.0
    render_ms: float = 0.0
    phonemes: list[dict[str, Any]] = field(default_factory=list)  # on the clip clock (for sync checks)


ClipItem = AudioPiece | RenderedFrames | dict[str, Any]


def parse_timings(raw: str, audio_s: float) -> tuple[Phoneme, ...]:
    """`[{"p", "s", "e"}, ...]` as the TTS emits them, checked against the audio they describe."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadTimings(f"timings are not valid JSON: {exc}") from None
    from orchestrator.face.visemes import parse_phonemes

    phonemes = parse_phonemes(data)
    if not phonemes:
        raise BadTimings("timings hold no phonemes")
    if phonemes[-1].e > audio_s + 0.25:
        raise BadTimings(f"timings run to {phonemes[-1].e:.2f} s but the audio lasts {audio_s:.2f} s")
    return phonemes


def check_spec(spec: ClipSpec) -> None:
    if spec.emotion not in EMOTIONS:
        from orchestrator.errors import BadEmotion

        raise BadEmotion(f"unknown emotion {spec.emotion!r} (known: {', '.join(EMOTIONS)})")
    if spec.audio is None:
        if not spec.text.strip():
            raise BadTimings("nothing to say: give text, or audio with its phoneme timings")
        if len(spec.text) > MAX_TEXT_CHARS:
            raise BadTimings(f"text is {len(spec.text)} characters (at most {MAX_TEXT_CHARS})")
    elif spec.audio.shape[0] > MAX_AUDIO_S * SAMPLE_RATE:
        raise BadTimings(f"audio is longer than {MAX_AUDIO_S:.0f} s")


async def render_clip(models: ClipModels, spec: ClipSpec, stats: ClipStats | None = None) -> AsyncIterator[ClipItem]:
    """Audio pieces and frame runs as they are ready (order between the two is not fixed), then one
    `render_done` event."""
    check_spec(spec)
    stats = stats if stats is not None else ClipStats()
    t_start = time.perf_counter()
    emotion = (EmotionCue(0.0, spec.emotion, spec.intensity),)
    speech: list[Sentence] = []
    known = asyncio.Event()  # set whenever `speech` grows or ends
    state = {"speech_end": 0.0, "done": False}
    out: asyncio.Queue[ClipItem | BaseException | None] = asyncio.Queue(maxsize=64)  # None: finished

    def elapsed_ms() -> float:
        return round((time.perf_counter() - t_start) * 1000, 1)

    async def speak() -> None:
        if spec.audio is not None:
            speech.append(Sentence(0.0, spec.timings))
            state["speech_end"] = spec.audio.shape[0] / SAMPLE_RATE
            await out.put(AudioPiece(spec.audio, 0.0))
        else:
            cursor = 0
            async for chunk in models.synthesize(spec.text, spec.voice):
                t0 = cursor / SAMPLE_RATE
                speech.append(Sentence(t0, tuple(Phoneme(p.phoneme, p.start, p.end) for p in chunk.phonemes)))
                cursor += chunk.pcm.shape[0]
                state["speech_end"] = cursor / SAMPLE_RATE
                if stats.first_audio_ms is None:
                    stats.first_audio_ms = elapsed_ms()
                await out.put(AudioPiece(chunk.pcm, t0))
                known.set()
        state["done"] = True
        known.set()

    async def draw() -> None:
        next_frame = 0
        while True:
            await known.wait()
            known.clear()
            done = bool(state["done"])
            horizon = state["speech_end"] + TAIL_S if done else state["speech_end"] - ANTICIPATION_S
            last = int(np.ceil(horizon * spec.fps)) if done else int(np.floor(horizon * spec.fps))
            while next_frame < last:
                n = min(WINDOW_FRAMES, last - next_frame)
                req = MotionRequest(
                    fps=spec.fps,
                    start=next_frame / spec.fps,
                    frames=n,
                    seed=spec.seed,
                    emotion=emotion,
                    speech=tuple(speech),
                )
                t0 = time.perf_counter()
                params = await models.face_motion(req.to_json())
                stats.motion_ms += (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
                async for run in models.render_frames(spec.face, params, spec.width, spec.height, spec.quality):
                    if stats.first_frame_ms is None:
                        stats.first_frame_ms = elapsed_ms()
                    await out.put(RenderedFrames(next_frame + run.first, run.jpegs))
                    stats.frames += len(run.jpegs)
                stats.render_ms += (time.perf_counter() - t0) * 1000
                next_frame += n
            if done:
                return

    async def run() -> None:
        failure: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(speak(), name="clip-speech")
                tg.create_task(draw(), name="clip-face")
        except* DuetError as group:
            failure = group.exceptions[0]
        except* Exception as group:  # a bug reaches the caller as itself, not as a hang
            failure = group.exceptions[0]
        await out.put(failure)

    runner = asyncio.create_task(run(), name="clip")
    try:
        while (item := await out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    stats.speech_s = float(state["speech_end"])
    stats.phonemes = [
        {"p": p.p, "s": round(s.t0 + p.s, 4), "e": round(s.t0 + p.e, 4)} for s in speech for p in s.phonemes
    ]
    yield {
        "type": "render_done",
        "frames": stats.frames,
        "fps": spec.fps,
        "width": spec.width,
        "height": spec.height,
        "emotion": spec.emotion,
        "intensity": spec.intensity,
        "duration_s": round(stats.frames / spec.fps, 3),
        "speech_s": round(stats.speech_s, 3),
        "first_audio_ms": stats.first_audio_ms,
        "first_frame_ms": stats.first_frame_ms,
        "total_ms": elapsed_ms(),
        "motion_ms": round(stats.motion_ms, 1),
        "render_ms": round(stats.render_ms, 1),
        "phonemes": stats.phonemes,
    }
