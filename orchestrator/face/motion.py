"""Face motion: what the replica says, feels and hears -> per-frame face parameters (`params.py`).

`generate(MotionRequest)` is the one entry point. The request carries the whole timeline on the session
clock (seconds): the replica's emotion cues, its sentences' phoneme timings, floor events and the user's
perceived emotion; it asks for `frames` frames at `fps` from `start`. Frame i is at (start * fps + i) / fps.
The output is a pure, deterministic function of the request: the same timeline asked in two chunks gives the
same frames as one request over both, so a streaming caller can ask chunk by chunk.

Layers, added in this order: visemes (`visemes.py`) + expression (`emotions.py`, the replica's own cues plus
a reduced mirror of the user's emotion) + listening behaviour (attentive brows and eye contact while the user
speaks, nods at their pauses, occasional backchannel smiles, an inhale-and-part cue on eot_commit, look-aways
while thinking) + idle life (`idle.py`). The bilabial closure is applied last so nothing can hold the lips
open through p, b, m.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestrator.errors import BadOption, BadTimings
from orchestrator.face import params
from orchestrator.face.emotions import EMOTIONS, EmotionCue, emotion_names, expression, mirrored
from orchestrator.face.idle import blinks, breath, drift, hash01, head_sway, micro_saccades
from orchestrator.face.visemes import (
    Phoneme,
    Sentence,
    SpeechTrack,
    interval_envelope,
    parse_phonemes,
    smoothstep,
    viseme,
)

__all__ = [
    "EMOTIONS",
    "FLOOR_EVENTS",
    "BadMotionRequest",
    "EmotionCue",
    "FloorEvent",
    "MotionRequest",
    "Phoneme",
    "Sentence",
    "emotion_names",
    "generate",
    "mouth_openness",
]

F64 = npt.NDArray[np.float64]


class BadMotionRequest(BadOption):
    """A face-motion request out of range or malformed (fps, frames, seed, JSON shape, event types)."""

    code = "bad_motion_request"


FLOOR_EVENTS = frozenset(
    {"speech_start", "speech_end", "eot_tentative", "eot_commit", "eot_cancel", "backchannel", "barge_in"}
)
MAX_FRAMES = 1800
FPS_RANGE = (1.0, 120.0)
MAX_ITEMS = 100_000  # per timeline list: hours of conversation
MAX_TIME_S = 1e6

_I = params.INDEX


@dataclass(frozen=True)
class FloorEvent:
    """A floor event as DESIGN.md's stable format: `type` at `t` seconds on the session clock."""

    t: float
    type: str

    def __post_init__(self) -> None:
        _check_time(self.t, "floor event time")
        if self.type not in FLOOR_EVENTS:
            raise BadMotionRequest(
                f"unknown floor event type {self.type!r:.40}; known: {', '.join(sorted(FLOOR_EVENTS))}"
            )


@dataclass(frozen=True)
class MotionRequest:
    """The timeline and the frames wanted. Lists may come in any order; they are kept sorted by time.

    speech: each sentence's phonemes placed at its audio start `t0`. A barge_in at or after a sentence's t0
    (or `speaking_cut`, when it is at or after t0) cuts it: the mouth is back at rest within ~80 ms.
    """

    fps: float
    start: float
    frames: int
    seed: int = 0
    emotion: tuple[EmotionCue, ...] = ()
    speech: tuple[Sentence, ...] = ()
    events: tuple[FloorEvent, ...] = ()
    user_emotion: tuple[EmotionCue, ...] = ()
    speaking_cut: float | None = None

    def __post_init__(self) -> None:
        ok_fps = isinstance(self.fps, Real) and not isinstance(self.fps, bool) and math.isfinite(self.fps)
        if not ok_fps or not FPS_RANGE[0] <= self.fps <= FPS_RANGE[1]:
            raise BadMotionRequest(f"fps must be a number in {FPS_RANGE[0]:g}..{FPS_RANGE[1]:g}, got {self.fps!r:.40}")
        if isinstance(self.frames, bool) or not isinstance(self.frames, Integral) or not 1 <= self.frames <= MAX_FRAMES:
            raise BadMotionRequest(f"frames must be an integer in 1..{MAX_FRAMES}, got {self.frames!r:.40}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, Integral) or not 0 <= self.seed < 2**63:
            raise BadMotionRequest(f"seed must be an integer in 0..2**63-1, got {self.seed!r:.40}")
        _check_time(self.start, "start")
        if self.speaking_cut is not None:
            _check_time(self.speaking_cut, "speaking_cut")
        # plain Python numbers from here on (numpy scalars are accepted but do not serialise)
        object.__setattr__(self, "fps", float(self.fps))
        object.__setattr__(self, "frames", int(self.frames))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "start", float(self.start))
        for name in ("emotion", "speech", "events", "user_emotion"):
            items = tuple(getattr(self, name))
            if len(items) > MAX_ITEMS:
                raise BadMotionRequest(f"{name}: at most {MAX_ITEMS} entries, got {len(items)}")
            object.__setattr__(self, name, items)
        for kind, items, cls in (
            ("emotion", self.emotion, EmotionCue),
            ("user_emotion", self.user_emotion, EmotionCue),
            ("events", self.events, FloorEvent),
            ("speech", self.speech, Sentence),
        ):
            if any(not isinstance(x, cls) for x in items):
                raise BadMotionRequest(f"{kind} entries must be {cls.__name__} objects")
        for sentence in self.speech:
            _check_time(sentence.t0, "sentence t0")
            parse_phonemes(sentence.phonemes)  # validates directly built sentences too
        object.__setattr__(self, "emotion", tuple(sorted(self.emotion, key=lambda c: c.t)))
        object.__setattr__(self, "user_emotion", tuple(sorted(self.user_emotion, key=lambda c: c.t)))
        object.__setattr__(self, "events", tuple(sorted(self.events, key=lambda e: e.t)))
        object.__setattr__(self, "speech", tuple(sorted(self.speech, key=lambda s: s.t0)))

    @property
    def times(self) -> F64:
        # (start * fps + i) / fps: frames on the same grid agree exactly however the timeline is chunked
        out: F64 = (self.start * self.fps + np.arange(self.frames, dtype=np.float64)) / self.fps
        return out

    @staticmethod
    def from_json(text: str | bytes) -> MotionRequest:
        """Parse and validate; BadMotionRequest / BadTimings / BadEmotion say what is wrong."""
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadMotionRequest(f"motion request is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise BadMotionRequest("motion request must be a JSON object")
        unknown = set(raw) - {
            "fps",
            "start",
            "frames",
            "seed",
            "emotion",
            "speech",
            "events",
            "user_emotion",
            "speaking_cut",
        }
        if unknown:
            raise BadMotionRequest(f"unknown motion request keys: {', '.join(sorted(unknown))}")
        for key in ("fps", "frames"):
            if key not in raw:
                raise BadMotionRequest(f"motion request needs {key!r}")
        lists = {k: raw.get(k, []) for k in ("emotion", "speech", "events", "user_emotion")}
        for key, value in lists.items():
            if not isinstance(value, list):
                raise BadMotionRequest(f"{key} must be a list")
        return MotionRequest(
            fps=raw["fps"],
            start=raw.get("start", 0.0),
            frames=raw["frames"],
            seed=raw.get("seed", 0),
            emotion=tuple(EmotionCue.parse(c) for c in lists["emotion"]),
            speech=tuple(_parse_sentence(s) for s in lists["speech"]),
            events=tuple(_parse_event(e) for e in lists["events"]),
            user_emotion=tuple(EmotionCue.parse(c) for c in lists["user_emotion"]),
            speaking_cut=raw.get("speaking_cut"),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "fps": self.fps,
                "start": self.start,
                "frames": self.frames,
                "seed": self.seed,
                "emotion": [c.to_dict() for c in self.emotion],
                "speech": [
                    {"t": s.t0, "phonemes": [{"p": p.p, "s": p.s, "e": p.e} for p in s.phonemes]} for s in self.speech
                ],
                "events": [{"t": e.t, "type": e.type} for e in self.events],
                "user_emotion": [c.to_dict() for c in self.user_emotion],
                "speaking_cut": self.speaking_cut,
            },
            ensure_ascii=False,
        )


def _check_time(value: Any, what: str) -> None:
    ok = isinstance(value, Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 <= value <= MAX_TIME_S:
        raise BadTimings(f"{what} must be a finite number of seconds in 0..{MAX_TIME_S:g}, got {value!r:.40}")


def _parse_sentence(raw: Any) -> Sentence:
    if not isinstance(raw, dict) or "t" not in raw or "phonemes" not in raw:
        raise BadTimings(f'a speech entry is {{"t": s, "phonemes": [...]}}, got {raw!r:.80}')
    _check_time(raw["t"], "sentence t")
    return Sentence(float(raw["t"]), parse_phonemes(raw["phonemes"]))


def _parse_event(raw: Any) -> FloorEvent:
    # extra keys (compute_ms, ...) are fine: the stable floor-event lines can be passed as they are
    if not isinstance(raw, dict) or "t" not in raw or "type" not in raw:
        raise BadMotionRequest(f'a floor event is {{"t": s, "type": ...}}, got {raw!r:.80}')
    return FloorEvent(raw["t"], raw["type"])


# --- behaviour constants -------------------------------------------------------------------------------------

_MARGIN_S = 4.0  # timeline items this far outside the window cannot affect it
_NOD_DELAY_S, _NOD_S = 0.12, 0.6
_THINK_MAX_S = 2.0
_CUE_S = 0.8  # the eot_commit "about to speak" cue lasts until speech starts, at most this long
_BACKCHANNEL_P = 0.4  # share of user pauses that also get a small smile
_LONG_TURN_NOD_SLOT_S = 4.0  # during long user turns, an occasional slow nod per slot


@dataclass(frozen=True)
class _Floor:
    """Intervals derived from the floor events: who speaks, when the replica thinks."""

    user: F64  # (n, 2) user speaking spans
    thinking: F64  # (n, 2)
    pauses: F64  # times of speech_end / eot_tentative
    commits: F64
    backchannels: F64


def _cuts(req: MotionRequest) -> list[float]:
    barges = np.array([e.t for e in req.events if e.type == "barge_in"], dtype=np.float64)
    out = []
    for s in req.speech:
        cut = math.inf
        later = barges[barges >= s.t0]
        if later.size:
            cut = float(later[0])
        if req.speaking_cut is not None and req.speaking_cut >= s.t0:
            cut = min(cut, req.speaking_cut)
        out.append(cut)
    return out


def _floor(req: MotionRequest, onsets: F64) -> _Floor:
    user: list[tuple[float, float]] = []
    thinking: list[tuple[float, float]] = []
    since: float | None = None
    for e in req.events:
        if e.type in ("speech_start", "barge_in") and since is None:
            since = e.t
        elif e.type in ("speech_end", "eot_commit") and since is not None:
            user.append((since, e.t))
            since = None
        if e.type == "eot_commit":
            nxt = onsets[onsets >= e.t]
            end = min(float(nxt[0]), e.t + _THINK_MAX_S) if nxt.size else e.t + _THINK_MAX_S
            thinking.append((e.t, end))
    if since is not None:
        user.append((since, math.inf))

    def times(*types: str) -> F64:
        return np.array([e.t for e in req.events if e.type in types], dtype=np.float64)

    return _Floor(
        user=np.array(user, dtype=np.float64).reshape(-1, 2),
        thinking=np.array(thinking, dtype=np.float64).reshape(-1, 2),
        pauses=times("speech_end", "eot_tentative"),
        commits=times("eot_commit"),
        backchannels=times("backchannel"),
    )


def _pulse(times: F64, at: F64, delay: float, length: float) -> tuple[F64, F64]:
    """(sin^2 bumps of `length` s starting `delay` after each time, index of the event each frame sees)."""
    if at.size == 0:
        return np.zeros_like(times), np.zeros(times.shape[0], dtype=np.int64)
    x = (times[:, None] - at[None, :] - delay) / length
    bump = np.where((x > 0) & (x < 1), np.sin(np.pi * np.clip(x, 0, 1)) ** 2, 0.0)
    idx = bump.argmax(axis=1)
    return bump.max(axis=1), idx


def _ms(t: F64) -> npt.NDArray[np.int64]:
    # hash events by their time, not their list index, so a growing event list keeps old choices
    out: npt.NDArray[np.int64] = np.round(t * 1000.0).astype(np.int64)
    return out


def generate(req: MotionRequest) -> npt.NDArray[np.float32]:
    """(frames, params.SIZE) float32 face parameters, clipped to their ranges."""
    t = req.times
    t_lo, t_hi = float(t[0]) - _MARGIN_S, float(t[-1]) + _MARGIN_S
    out = np.zeros((t.shape[0], params.SIZE), dtype=np.float64)

    # speech: sentences near the window, each with its cut
    cuts = _cuts(req)
    near = [(s, c) for s, c in zip(req.speech, cuts, strict=True) if s.t0 <= t_hi and s.t0 + _sentence_end(s) >= t_lo]
    track = SpeechTrack.build(near)
    mouth, closure = track.mouth(t, req.fps)
    speaking = track.activity(t)
    onsets = np.array([s.t0 + _first_voiced(s) for s, _ in near], dtype=np.float64)
    floor = _floor(req, onsets)

    # expression: own cues, plus a reduced mirror of the user's, stronger while the user is speaking
    listening = interval_envelope(t, floor.user, 0.3, 0.4) * (1.0 - speaking)
    expr = expression(req.emotion, t)
    if req.user_emotion:
        mirror = [EmotionCue(c.t, *mirrored(c.name, c.intensity)) for c in req.user_emotion]
        expr += expression(mirror, t) * (0.5 + 0.5 * listening)[:, None]

    # listening: attentive brows and eye contact while the user speaks
    expr[:, _I["brow_inner_up"]] += 0.12 * listening
    expr[:, _I["brow_outer_up"]] += 0.1 * listening
    expr[:, _I["upper_lid_raise"]] += 0.08 * listening
    expr[:, _I["head_roll"]] += 1.5 * listening

    # nods at the user's pauses while the replica listens; some also get a small backchannel smile
    quiet = 1.0 - speaking
    nod, which = _pulse(t, floor.pauses, _NOD_DELAY_S, _NOD_S)
    if floor.pauses.size:
        amp = 2.0 + 1.5 * hash01(req.seed, 50, _ms(floor.pauses))
        smiles = hash01(req.seed, 51, _ms(floor.pauses)) < _BACKCHANNEL_P
        expr[:, _I["head_pitch"]] += nod * amp[which] * quiet
        smile, swhich = _pulse(t, floor.pauses, 0.05, 1.2)
        expr[:, _I["lip_corner_up"]] += 0.3 * np.sqrt(smile) * smiles[swhich] * quiet
        expr[:, _I["cheek_raise"]] += 0.15 * np.sqrt(smile) * smiles[swhich] * quiet
    expr[:, _I["head_pitch"]] += _long_turn_nods(t, req.seed, floor.user) * listening
    # the user's "mm-hm" while the replica talks: a brief acknowledging brow flash and smile
    ack, _ = _pulse(t, floor.backchannels, 0.1, 0.7)
    expr[:, _I["brow_outer_up"]] += 0.15 * ack
    expr[:, _I["lip_corner_up"]] += 0.12 * ack

    # eot_commit: "about to speak" - inhale, lips part, brows lift a little, until the voice starts
    cue = np.zeros_like(t)
    for tc in floor.commits[(floor.commits >= t_lo) & (floor.commits <= t_hi)]:
        cue = np.maximum(cue, smoothstep((t - tc) / 0.25) * (1.0 - smoothstep((t - tc - _CUE_S) / 0.3)))
    cue *= 1.0 - speaking
    expr[:, _I["brow_inner_up"]] += 0.08 * cue
    expr[:, _I["brow_outer_up"]] += 0.08 * cue

    # the mouth: visemes first, the expression's mouth part damped while speaking (speech owns the jaw)
    em = expr[:, :8] * (1.0 - 0.6 * speaking)[:, None]
    smile = np.clip(expr[:, _I["lip_corner_up"]] + 0.5 * np.abs(expr[:, _I["smirk"]]), 0.0, 1.0)
    jaw = 1.0 - (1.0 - mouth[:, 0]) * (1.0 - np.clip(em[:, 0], 0.0, 1.0))
    jaw = np.maximum(jaw, 0.12 * cue)
    rnd = mouth[:, 1] * (1.0 - 0.35 * smile)  # a smile pulls the corners out: rounded vowels narrow less
    spread = mouth[:, 2] + 0.3 * smile * speaking * (1.0 - mouth[:, 1])
    out[:, :8] = np.maximum(mouth, em)
    out[:, 0], out[:, 1], out[:, 2] = jaw, np.maximum(rnd, em[:, 1]), np.maximum(spread, em[:, 2])
    # lip_press from an expression (thoughtful) must not seal the mouth while speaking
    out[:, 3] = np.maximum(mouth[:, 3], em[:, 3] * (1.0 - speaking))
    out[:, 8:] = expr[:, 8:]

    # idle life
    out[:, _I["lip_corner_up"]] += drift(t, req.seed, 0)
    out[:, _I["brow_inner_up"]] += drift(t, req.seed, 1)
    out[:, _I["blink"]] = blinks(t, req.seed, req.fps, track.activity)
    out[:, _I["head_yaw"] : _I["head_roll"] + 1] += head_sway(t, req.seed, speaking)
    out[:, _I["breath"]] = 0.15 + 0.55 * breath(t, req.seed) * (1.0 - 0.5 * speaking) + 0.35 * cue

    # gaze: micro-saccades (fewer when holding eye contact) plus look-aways while thinking or starting to speak
    out[:, _I["gaze_x"] : _I["gaze_y"] + 1] += micro_saccades(t, req.seed, 1.0 - 0.5 * listening)
    away, side = _look_away(t, req.seed, floor.thinking, onsets, track)
    away *= 1.0 - listening
    out[:, _I["gaze_x"]] += 0.4 * side * away
    out[:, _I["gaze_y"]] += -0.25 * away
    out[:, _I["head_yaw"]] += 3.0 * side * away

    # bilabials: the lips close at every p, b, m whatever else is going on
    out[:, 3] = np.maximum(out[:, 3], closure)
    keep = 1.0 - closure
    for col in (0, 4, 5, 6, 7):
        out[:, col] *= keep
    return params.clip(out.astype(np.float32))


def _long_turn_nods(times: F64, seed: int, user: F64) -> F64:
    """Occasional slow nods during a long user turn (every ~4-8 s), degrees."""
    if user.shape[0] == 0:
        return np.zeros_like(times)
    k = np.floor(times / _LONG_TURN_NOD_SLOT_S).astype(np.int64)
    out = np.zeros_like(times)
    for dk in (0, -1):
        kk = k + dk
        at = (kk + 0.2 + 0.5 * hash01(seed, 60, kk)) * _LONG_TURN_NOD_SLOT_S
        on = hash01(seed, 61, kk) < 0.5
        x = (times - at) / 0.9
        bump = np.where((x > 0) & (x < 1) & on, np.sin(np.pi * np.clip(x, 0, 1)) ** 2, 0.0)
        out = np.maximum(out, 1.5 * bump)
    return out


def _look_away(times: F64, seed: int, thinking: F64, onsets: F64, track: SpeechTrack) -> tuple[F64, F64]:
    """(0..1 look-away amount, side ±1): while thinking, and at some sentence starts (people look away as they
    begin an utterance and back to the listener as they go on)."""
    spans = [thinking]
    if onsets.size:
        pick = hash01(seed, 70, _ms(onsets)) < 0.4
        starts = onsets[pick]
        spans.append(np.stack([starts, starts + 0.5], axis=1))
    all_spans = np.concatenate(spans, axis=0) if spans else np.zeros((0, 2))
    env = interval_envelope(times, all_spans, 0.12, 0.2)
    if all_spans.shape[0] == 0:
        return env, np.ones_like(times)
    # the side is fixed per span (hash of its start) so the eyes do not flip mid-look
    idx = np.clip(np.searchsorted(np.sort(all_spans[:, 0]), times, side="right") - 1, 0, None)
    side = np.where(hash01(seed, 71, _ms(np.sort(all_spans[:, 0])[idx])) < 0.5, -1.0, 1.0)
    return env, side


def _first_voiced(s: Sentence) -> float:
    for p in s.phonemes:
        if viseme(p.p)[0] != "pause" and p.e > p.s:
            return p.s
    return s.phonemes[-1].e if s.phonemes else 0.0


def _sentence_end(s: Sentence) -> float:
    return s.phonemes[-1].e if s.phonemes else 0.0


def mouth_openness(req: MotionRequest) -> npt.NDArray[np.float32]:
    """(frames,) how open the lips are, 0..1: jaw_open where the lips are not pressed. The sync benchmark's
    "replica's mouth is speaking" signal (above ~0.15 means visibly open)."""
    frames = generate(req)
    out: npt.NDArray[np.float32] = frames[:, _I["jaw_open"]] * (1.0 - frames[:, _I["lip_press"]])
    return out
