"""A session's perception: the user's voice and camera through Triton, fused into events and an LLM note.

- Voice: the session's input audio is framed into 20 ms hops (with the previous hop as context) and sent to
  `perception_audio` in runs of a few hops by one owned task; the feature rows feed the speaker's
  `VoiceTracker` (running baseline, utterance states). While the user speaks, a snapshot of the open
  utterance is fused every `partial_s`; each closed utterance is fused as final.
- Camera: a session keeps only its newest frame. One owned task sends it to `perception_face`; a frame that
  arrives while another is in flight replaces the waiting one (counted as dropped), so nothing queues.
- The `Fuser` turns both into `perception` events: each modality's first confident reading (its baseline,
  so a calm voice or a neutral face is still heard of), then changes of state; an `utterance_summary` at each
  `eot_commit`, and persona tools into `perception_tool_call`s. `system_note` of the recent events becomes the
  dialogue's perception note (a marked system message before the user's turn).

`frame_result`/`face_observation` are the wire format of `perception_face` and its mapping into the fuser.

Everything the session sends its client goes through `emit` as a typed event (`orchestrator.events`). Nothing
here ends the session: a model failure (voice or camera) or an unusable frame is a non-fatal `ErrorEvent` and
the owned loop goes on; a bug in an owned loop is logged with its traceback, reported as a non-fatal
`ErrorEvent` with code `internal`, and stops that loop only (the session goes on without the modality).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestrator.errors import DuetError, public_message
from orchestrator.events import ErrorEvent, Event, PerceptionEvent, PerceptionStats, UtteranceSummary
from orchestrator.models.ports import PerceptionModels
from orchestrator.perception import fusion
from orchestrator.perception.prosody_features import frame_pcm
from orchestrator.perception.tools import PerceptionTool, PerceptionTools
from orchestrator.perception.voice import UtteranceSummary as VoiceSummary
from orchestrator.perception.voice import VoiceTracker

log = logging.getLogger("duet.perception")

EventSink = Callable[[Event], Awaitable[None]]
HOP = 320
NOTE_WINDOW_S = 20.0  # events older than this (stream time) no longer shape the LLM note


def frame_result(analysis: Any) -> dict[str, Any]:
    """What `perception_face` returns for one frame (`orchestrator.perception.face.FrameAnalysis`), as JSON."""
    f = analysis.face
    out: dict[str, Any] = {"faces": int(analysis.faces), "width": int(analysis.width), "height": int(analysis.height)}
    if f is not None:
        out.update(
            {
                "emotion": {k: round(float(v), 4) for k, v in f.emotion.items()},
                "head_pose": f.head_pose.as_dict(),
                "gaze": f.gaze,
                "gaze_score": round(float(f.gaze_score), 3),
                "eyes_closed": bool(f.eyes_closed),
                "ear": [round(float(e), 3) for e in f.ear],
                "mouth_ratio": round(float(f.mouth_ratio), 3),
                "mouth_open": bool(f.mouth_open),
                "bbox": [round(float(v), 1) for v in f.bbox],
            }
        )
    return out


def face_observation(result: dict[str, Any], t: float, arrival: float) -> fusion.FaceObservation:
    pose = result.get("head_pose") or {}
    return fusion.FaceObservation(
        t=t,
        faces=int(result.get("faces", 0)),
        emotion=result.get("emotion"),
        yaw=pose.get("yaw"),
        pitch=pose.get("pitch"),
        roll=pose.get("roll"),
        gaze=result.get("gaze"),
        gaze_score=result.get("gaze_score"),
        eyes_closed=result.get("eyes_closed"),
        mouth_open=result.get("mouth_ratio"),
        arrival=arrival,
    )


def voice_observation(summary: VoiceSummary, final: bool, arrival: float) -> fusion.VoiceObservation:
    s, v = summary.stats, summary.states
    return fusion.VoiceObservation(
        t_start=s.t_start,
        t_end=s.t_end,
        arousal=v.arousal,
        hesitancy=v.hesitancy,
        uncertainty=v.uncertainty,
        tension=v.tension,
        flatness=v.flatness,
        pitch_hz=s.pitch_hz,
        rate_sps=s.articulation_rate_sps,
        emotion=v.emotion,
        final=final,
        arrival=arrival,
    )


@dataclass
class PerceptionCounters:
    """What a session's perception measured and counted, for its closing `PerceptionStats` event."""

    audio_ms: list[float] = field(default_factory=list)  # newest hop's arrival -> its features in the tracker
    visual_ms: list[float] = field(default_factory=list)  # frame arrival -> its observation fused
    frames: int = 0
    dropped: int = 0
    bad_frames: int = 0

    def event(self, t: float) -> PerceptionStats:
        def pct(xs: list[float], q: float) -> float | None:
            return round(float(np.percentile(xs, q)), 1) if xs else None

        return PerceptionStats(
            t=round(t, 4),
            audio_ms_p50=pct(self.audio_ms, 50),
            audio_ms_p95=pct(self.audio_ms, 95),
            visual_ms_p50=pct(self.visual_ms, 50),
            visual_ms_p95=pct(self.visual_ms, 95),
            frames=self.frames,
            dropped=self.dropped,
            bad_frames=self.bad_frames,
        )


class PerceptionSession:
    def __init__(
        self,
        models: PerceptionModels,
        emit: EventSink,
        *,
        tools: Sequence[PerceptionTool] = (),
        on_note: Callable[[str], None] | None = None,
        hops_per_call: int = 3,
        partial_s: float = 1.0,
        name: str = "perception",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.models = models
        self._emit = emit
        self.on_note = on_note  # receives the LLM note whenever it changes
        self.fuser = fusion.Fuser()
        self.tracker = VoiceTracker()
        self.tools = PerceptionTools(tools)
        self.stats = PerceptionCounters()
        self.name = name
        self._clock = clock
        self._hops_per_call = hops_per_call
        self._partial_s = partial_s
        self._last_partial = 0.0
        self._pcm: list[npt.NDArray[np.int16]] = []  # audio not yet framed
        self._tail: npt.NDArray[np.int16] | None = None
        self._t_audio = 0.0  # session time at the end of the audio received
        self._audio_arrival = 0.0
        self._audio_wake = asyncio.Event()
        # One flush at a time: the voice loop's and a turn end's (`floor_event`) would otherwise both await the
        # model, and the later audio's rows could come back first (the tracker refuses time going backwards).
        self._flushing = asyncio.Lock()
        self._frame: tuple[bytes, float, float] | None = None  # newest camera frame waiting: (data, t, arrival)
        self._frame_wake = asyncio.Event()
        self._recent: deque[PerceptionEvent | UtteranceSummary] = deque(maxlen=32)
        self._turn_start: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # ---- inputs -----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._voice_loop(), name=f"{self.name}-voice"),
            asyncio.create_task(self._camera_loop(), name=f"{self.name}-camera"),
        ]

    def audio(self, pcm: bytes, t_end: float, arrival: float) -> None:
        self._pcm.append(np.frombuffer(pcm, dtype="<i2").astype(np.int16))
        self._t_audio, self._audio_arrival = t_end, arrival
        if sum(p.shape[0] for p in self._pcm) >= self._hops_per_call * HOP:
            self._audio_wake.set()

    def video(self, data: bytes, t: float, arrival: float) -> None:
        if self._frame is not None:
            self.stats.dropped += 1  # never analysed: a newer frame replaces it
        self._frame = (data, t, arrival)
        self._frame_wake.set()

    async def floor_event(self, kind: str, t: float, transcript: str | None = None) -> None:
        if kind == "speech_start" and self._turn_start is None:
            self._turn_start = t
        elif kind == "eot_commit" and self._turn_start is not None:
            await self._flush_voice()
            summary = self.tracker.end(t)
            if summary is not None:
                await self._publish(self.fuser.observe_voice(voice_observation(summary, True, self._clock())))
            event = self.fuser.end_turn(self._turn_start, t, transcript, now=self._clock())
            self._turn_start = None
            await self._publish([event])

    async def finish(self) -> None:
        await self._flush_voice()
        await self.close()
        await self._emit(self.stats.event(self._t_audio))

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # ---- voice --------------------------------------------------------------------------------------------

    async def _voice_loop(self) -> None:
        while True:
            await self._audio_wake.wait()
            self._audio_wake.clear()
            try:
                await self._flush_voice()
            except DuetError as err:  # a model failure or a rejected reading: reported; the next audio is tried
                await self._emit(ErrorEvent.of(err, self._t_audio))  # not fatal: the session goes on
            except Exception as exc:  # a bug: reported, and the voice side stops (cancellation passes through)
                await self._report_bug("voice", exc, self._t_audio)
                return

    async def _flush_voice(self) -> None:
        async with self._flushing:
            await self._flush_voice_now()

    async def _flush_voice_now(self) -> None:
        if not self._pcm:
            return
        pcm = np.concatenate(self._pcm)
        whole = pcm.shape[0] // HOP * HOP
        if whole == 0:
            return
        self._pcm = [pcm[whole:]] if whole < pcm.shape[0] else []
        t_end, arrival = self._t_audio - (pcm.shape[0] - whole) / 16000, self._audio_arrival
        frames, self._tail = frame_pcm(pcm[:whole], self._tail)
        feats = await self.models.voice_features(frames)
        n = feats.shape[0]
        for i, row in enumerate(feats):
            t = t_end - (n - 1 - i) * HOP / 16000
            summary = self.tracker.push(t, row)
            if summary is not None:
                await self._publish(self.fuser.observe_voice(voice_observation(summary, True, arrival)))
        self.stats.audio_ms.append(round((self._clock() - arrival) * 1000, 1))
        if self.tracker.state.in_utterance and t_end - self._last_partial >= self._partial_s:
            self._last_partial = t_end
            live = self.tracker.snapshot(t_end)
            if live is not None:
                await self._publish(self.fuser.observe_voice(voice_observation(live, False, arrival)))
        await self._publish(self.fuser.poll(t_end, now=self._clock()))

    # ---- camera -------------------------------------------------------------------------------------------

    async def _camera_loop(self) -> None:
        while True:
            await self._frame_wake.wait()
            self._frame_wake.clear()
            if self._frame is None:
                continue
            data, t, arrival = self._frame
            self._frame = None
            try:
                await self._analyze_frame(data, t, arrival)
            except DuetError as err:  # an unusable frame or a model failure: reported, and the next frame is tried
                if err.code == "bad_frame":
                    self.stats.bad_frames += 1
                await self._emit(ErrorEvent.of(err, t))
            except Exception as exc:  # a bug: reported, and the camera side stops (cancellation passes through)
                await self._report_bug("camera", exc, t)
                return

    async def _analyze_frame(self, data: bytes, t: float, arrival: float) -> None:
        result = await self.models.analyze_frame(data)
        self.stats.frames += 1
        events = self.fuser.observe_face(face_observation(result, t, arrival), now=self._clock())
        self.stats.visual_ms.append(round((self._clock() - arrival) * 1000, 1))
        await self._publish(events)
        await self._publish(self.tools.update(self.fuser.snapshot()))

    # ---- out ------------------------------------------------------------------------------------------------

    async def _publish(self, events: Sequence[Event]) -> None:
        for event in events:
            await self._emit(event)
            if isinstance(event, PerceptionEvent | UtteranceSummary):
                self._recent.append(event)
        if events and self.on_note is not None:
            newest = max(e.t for e in self._recent) if self._recent else 0.0
            self.on_note(fusion.system_note([e for e in self._recent if e.t >= newest - NOTE_WINDOW_S]))

    async def _report_bug(self, side: str, exc: Exception, t: float) -> None:
        """A bug in an owned loop: logged with its traceback; the client hears an `internal` error, no internals."""
        log.error("%s: the %s loop failed and stops", self.name, side, exc_info=exc)
        message = f"{side} perception stopped after an internal error ({type(exc).__name__}); the session goes on"
        await self._emit(ErrorEvent(t=round(t, 4), code="internal", message=public_message(message), fatal=False))
