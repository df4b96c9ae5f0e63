"""One rendered clip (`duet render`): speech (TTS, or given audio with its phoneme timings) plus the face
saying it, streamed as audio pieces and runs of JPEG frames on one clock as they are made. With no speech
and a duration it is an idle clip (the rest face: blinks, breathing, sway; silent audio), or with
`listening` the face listening to a user who talks in phrases with short pauses.

Frames are drawn in windows as soon as the speech they show is known: the face for sentence 1 is rendered
while the TTS is still synthesising sentence 2. Frame `i` is shown at `i / fps`; audio sample `n` plays at
`n / 16000`. A short tail after the speech lets the mouth settle.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from orchestrator.errors import BadOption, BadTimings, DuetError
from orchestrator.events import RenderDone, RenderPhoneme
from orchestrator.face.emotions import EMOTIONS, EmotionCue
from orchestrator.face.idle import hash01
from orchestrator.face.motion import FloorEvent, MotionRequest, Phoneme, Sentence
from orchestrator.face.visemes import LEAD_S
from orchestrator.models.ports import I16, FaceModels, RenderedFrames, SpeechSynthesizer

SAMPLE_RATE = 16000
TAIL_S = 0.4  # frames after the last sound: the mouth closes, the face settles
WINDOW_FRAMES = 50  # frames per motion+render request (2 s at 25 fps)
MAX_TEXT_CHARS = 2000
MAX_AUDIO_S = 120.0
MAX_DURATION_S = MAX_AUDIO_S
PHRASE_S = (1.6, 3.4)  # a listening clip's user talks in phrases this long...
GAP_S = (0.35, 0.8)  # ...with pauses this long between them (the replica nods at some)
# the mouth moves before the sound (and its shapes lead their spans): a window stops this far short of known speech
ANTICIPATION_S = 0.1 + LEAD_S


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
    duration: float = 0.0  # the clip lasts at least this long (s); without speech: an idle clip
    listening: bool = False  # an idle clip listens to a user talking

    @property
    def idle(self) -> bool:
        return self.audio is None and not self.text.strip()


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
    phonemes: list[RenderPhoneme] = field(default_factory=list)  # on the clip clock (for sync checks)


ClipItem = AudioPiece | RenderedFrames | RenderDone


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
    d = spec.duration
    if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or not 0 <= d <= MAX_DURATION_S:
        raise BadOption(f"duration must be a number of seconds in 0..{MAX_DURATION_S:g}, got {d!r:.40}")
    if spec.idle and d <= 0:
        raise BadOption("nothing to say: give text, audio with its phoneme timings, or a duration for an idle clip")
    if spec.listening and not spec.idle:
        raise BadOption("listening is an idle clip: give a duration and no text or audio")
    if spec.audio is None:
        if len(spec.text) > MAX_TEXT_CHARS:
            raise BadTimings(f"text is {len(spec.text)} characters (at most {MAX_TEXT_CHARS})")
    elif spec.audio.shape[0] > MAX_AUDIO_S * SAMPLE_RATE:
        raise BadTimings(f"audio is longer than {MAX_AUDIO_S:.0f} s")


def listening_events(duration: float, seed: int) -> tuple[FloorEvent, ...]:
    """A user talking for `duration` s from time 0, in phrases with short pauses: their floor events
    (speech_start / speech_end), a pure function of the seed."""
    out: list[FloorEvent] = []
    t, k = 0.0, 0
    while t < duration:
        u = hash01(seed, 80, np.array([k, k + 1], dtype=np.int64))
        out.append(FloorEvent(round(t, 4), "speech_start"))
        end = t + PHRASE_S[0] + (PHRASE_S[1] - PHRASE_S[0]) * float(u[0])
        if end >= duration:
            break
        out.append(FloorEvent(round(end, 4), "speech_end"))
        t = end + GAP_S[0] + (GAP_S[1] - GAP_S[0]) * float(u[1])
        k += 2
    return tuple(out)


async def render_clip(models: ClipModels, spec: ClipSpec, stats: ClipStats | None = None) -> AsyncIterator[ClipItem]:
    """Audio pieces and frame runs as they are ready (order between the two is not fixed), then one
    `render_done` event."""
    check_spec(spec)
    stats = stats if stats is not None else ClipStats()
    t_start = time.perf_counter()
    emotion = (EmotionCue(0.0, spec.emotion, spec.intensity),)
    events = listening_events(spec.duration, spec.seed) if spec.listening else ()
    speech: list[Sentence] = []
    known = asyncio.Event()  # set whenever `speech` grows or ends
    state = {"speech_end": 0.0, "done": False}
    out: asyncio.Queue[ClipItem | BaseException | None] = asyncio.Queue(maxsize=64)  # None: finished

    def elapsed_ms() -> float:
        return round((time.perf_counter() - t_start) * 1000, 1)

    async def speak() -> None:
        if spec.idle:  # silence for the whole clip, so the file has a (quiet) audio track like any other
            n = round(spec.duration * SAMPLE_RATE)
            state["speech_end"] = n / SAMPLE_RATE
            for at in range(0, n, SAMPLE_RATE):  # one-second pieces: a long clip stays under message limits
                await out.put(AudioPiece(np.zeros(min(SAMPLE_RATE, n - at), dtype=np.int16), at / SAMPLE_RATE))
        elif spec.audio is not None:
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
            speech_tail = state["speech_end"] + TAIL_S
            if not done:
                last = int(np.floor((state["speech_end"] - ANTICIPATION_S) * spec.fps))
            elif spec.idle or spec.duration > speech_tail:  # the requested duration (an idle clip: exactly it)
                last = int(np.ceil(spec.duration * spec.fps - 1e-6))
            else:  # the speech and a short tail in which the mouth settles
                last = int(np.ceil(speech_tail * spec.fps))
            while next_frame < last:
                n = min(WINDOW_FRAMES, last - next_frame)
                req = MotionRequest(
                    fps=spec.fps,
                    start=next_frame / spec.fps,
                    frames=n,
                    seed=spec.seed,
                    emotion=emotion,
                    speech=tuple(speech),
                    events=events,
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
    stats.speech_s = 0.0 if spec.idle else float(state["speech_end"])
    stats.phonemes = [
        RenderPhoneme(p.p, round(s.t0 + p.s, 4), round(s.t0 + p.e, 4)) for s in speech for p in s.phonemes
    ]
    yield RenderDone(
        frames=stats.frames,
        fps=spec.fps,
        width=spec.width,
        height=spec.height,
        emotion=spec.emotion,
        intensity=spec.intensity,
        duration_s=round(stats.frames / spec.fps, 3),
        speech_s=round(stats.speech_s, 3),
        idle=spec.idle,
        listening=spec.listening,
        first_audio_ms=stats.first_audio_ms,
        first_frame_ms=stats.first_frame_ms,
        total_ms=elapsed_ms(),
        motion_ms=round(stats.motion_ms, 1),
        render_ms=round(stats.render_ms, 1),
        phonemes=tuple(stats.phonemes),
    )
