"""The replica's controllable emotions as mixtures of facial action units (EMFACS-like), and their timeline.

Each emotion is a full-intensity face-parameter offset: AU activations plus head and gaze tendencies (sadness
looks down, thoughtful looks up and aside). A cue sets an emotion at an intensity 0..1 from a time on; the
face eases from wherever it is to the new expression over `EASE_S` (a transition that starts mid-way through
another starts from the blended face, so there is never a jump).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestrator.errors import BadEmotion, BadTimings
from orchestrator.face import params

F64 = npt.NDArray[np.float64]

EASE_S = 0.35  # expression changes take ~250-400 ms in natural faces


@dataclass(frozen=True)
class Emotion:
    description: str
    values: Mapping[str, float]  # face parameter name -> value at intensity 1

    def vector(self, intensity: float = 1.0) -> F64:
        v = np.zeros(params.SIZE, dtype=np.float64)
        for name, value in self.values.items():
            v[params.INDEX[name]] = value * intensity
        return v


EMOTIONS: dict[str, Emotion] = {
    "neutral": Emotion("relaxed, no expression", {}),
    "happiness": Emotion(
        "Duchenne smile: cheeks raised, corners up (AU6+12)",
        {"cheek_raise": 0.7, "lip_corner_up": 0.9, "lid_tighten": 0.1, "head_pitch": -1.0},
    ),
    "sadness": Emotion(
        "inner brows up and drawn together, corners down (AU1+4+15); head and gaze drop",
        {
            "brow_inner_up": 0.95,
            "brow_lower": 0.15,
            "lip_corner_down": 0.7,
            "chin_raise": 0.25,
            "head_pitch": 5.0,
            "gaze_y": 0.3,
        },
    ),
    "anger": Emotion(
        "brows lowered, eyes wide and tense, lips tightened (AU4+5+7+23); chin slightly down",
        {"brow_lower": 0.9, "upper_lid_raise": 0.45, "lid_tighten": 0.7, "lip_tighten": 0.75, "head_pitch": 2.0},
    ),
    "fear": Emotion(
        "brows up and together, eyes wide, lips stretched, jaw dropped (AU1+2+4+5+7+20+26); head pulls back",
        {
            "brow_inner_up": 0.85,
            "brow_outer_up": 0.6,
            "brow_lower": 0.35,
            "upper_lid_raise": 1.0,
            "lid_tighten": 0.1,
            "lip_spread": 0.5,
            "jaw_open": 0.25,
            "head_pitch": -2.5,
        },
    ),
    "surprise": Emotion(
        "brows raised, eyes wide, jaw dropped (AU1+2+5+26); head lifts",
        {"brow_inner_up": 0.9, "brow_outer_up": 0.9, "upper_lid_raise": 0.8, "jaw_open": 0.45, "head_pitch": -3.0},
    ),
    "disgust": Emotion(
        "nose wrinkled, upper lip raised, corners down, chin raised (AU9+10+15+17); head turns away",
        {
            "nose_wrinkle": 0.8,
            "upper_lip_raise": 0.5,
            "lip_corner_down": 0.45,
            "chin_raise": 0.5,
            "brow_lower": 0.3,
            "head_yaw": -3.0,
            "head_pitch": -1.5,
        },
    ),
    "contempt": Emotion(
        "one-sided smirk (unilateral AU12+14); chin up, head tilted",
        {"smirk": 0.75, "lid_tighten": 0.15, "head_pitch": -2.5, "head_roll": 2.0, "head_yaw": 2.0},
    ),
    "empathy": Emotion(
        "concern: inner brows up, a soft closed smile, head tilted toward the person",
        {
            "brow_inner_up": 0.8,
            "brow_lower": 0.05,
            "lip_corner_up": 0.3,
            "head_roll": 4.0,
            "head_pitch": 2.0,
        },
    ),
    "amusement": Emotion(
        "laughing-eyed smile with the lips parted (strong AU6+12+25/26); head back",
        {"cheek_raise": 0.85, "lip_corner_up": 1.0, "lid_tighten": 0.3, "jaw_open": 0.18, "head_pitch": -3.0},
    ),
    "thoughtful": Emotion(
        "slight frown and pressed lips, looking up and aside",
        {
            "brow_lower": 0.45,
            "lid_tighten": 0.2,
            "chin_raise": 0.2,
            "lip_press": 0.5,
            "gaze_x": 0.35,
            "gaze_y": -0.3,
            "head_yaw": 4.0,
            "head_roll": 2.5,
        },
    ),
    "reassuring": Emotion(
        "warm, calm smile with soft brows and a gentle head tilt",
        {"lip_corner_up": 0.45, "cheek_raise": 0.3, "brow_inner_up": 0.2, "head_roll": 3.0, "head_pitch": 2.0},
    ),
    "interested": Emotion(
        "attentive: brows a little up, eyes open, a hint of smile, head tilted",
        {
            "brow_inner_up": 0.4,
            "brow_outer_up": 0.5,
            "upper_lid_raise": 0.5,
            "lip_corner_up": 0.15,
            "head_roll": -2.5,
            "head_pitch": 1.0,
        },
    ),
    "happily_surprised": Emotion(
        "raised brows and wide eyes with a broad smile (AU1+2+5+6+12+26)",
        {
            "brow_inner_up": 0.7,
            "brow_outer_up": 0.7,
            "upper_lid_raise": 0.85,
            "cheek_raise": 0.2,
            "lip_corner_up": 0.8,
            "jaw_open": 0.3,
            "head_pitch": -2.0,
        },
    ),
    "confused": Emotion(
        "brows knit and raised in the middle, head tilted (AU1+4)",
        {"brow_lower": 0.5, "brow_inner_up": 0.35, "lid_tighten": 0.2, "lip_corner_down": 0.15, "head_roll": 5.0},
    ),
}

# What the replica shows when it sees the user feel something: the same for warm feelings, concern instead of
# hostility (mirroring anger or contempt back at a user escalates), at a reduced intensity.
MIRROR: dict[str, tuple[str, float]] = {
    "neutral": ("neutral", 0.0),
    "happiness": ("happiness", 0.45),
    "sadness": ("empathy", 0.6),
    "fear": ("empathy", 0.5),
    "surprise": ("surprise", 0.35),
    "anger": ("empathy", 0.35),
    "disgust": ("empathy", 0.3),
    "contempt": ("neutral", 0.0),
}

_MIRROR_DEFAULT = 0.35


def emotion_names() -> list[str]:
    return list(EMOTIONS)


def emotion(name: str) -> Emotion:
    """The named emotion; BadEmotion lists the known ones."""
    try:
        return EMOTIONS[name]
    except (KeyError, TypeError):
        raise BadEmotion(f"unknown emotion {name!r:.40}; known: {', '.join(EMOTIONS)}") from None


def mirrored(name: str, intensity: float) -> tuple[str, float]:
    """The replica's reply expression to a perceived user emotion."""
    target, gain = MIRROR.get(name, (name, _MIRROR_DEFAULT))
    return target, gain * intensity


@dataclass(frozen=True)
class EmotionCue:
    """From time `t` (s, session clock) on, show `name` at `intensity` (0..1)."""

    t: float
    name: str
    intensity: float = 1.0
    vec: F64 = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.t, bool) or not isinstance(self.t, int | float) or not math.isfinite(self.t) or self.t < 0:
            raise BadTimings(f"emotion cue time must be a finite number of seconds >= 0, got {self.t!r:.40}")
        ok = isinstance(self.intensity, int | float) and not isinstance(self.intensity, bool)
        if not ok or not math.isfinite(self.intensity) or not 0.0 <= self.intensity <= 1.0:
            raise BadEmotion(f"emotion intensity must be a number in 0..1, got {self.intensity!r:.40}")
        object.__setattr__(self, "vec", emotion(self.name).vector(float(self.intensity)))

    @staticmethod
    def parse(raw: Any) -> EmotionCue:
        """From {"t": s, "emotion": name, "intensity": 0..1} or a [t, name, intensity] triple."""
        if isinstance(raw, dict) and "t" in raw and "emotion" in raw:
            return EmotionCue(raw["t"], raw["emotion"], raw.get("intensity", 1.0))
        if isinstance(raw, list | tuple) and len(raw) in (2, 3):
            return EmotionCue(*raw)
        raise BadEmotion(f"an emotion cue is {{t, emotion, intensity}}, got {raw!r:.80}")

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t, "emotion": self.name, "intensity": self.intensity}


def expression(cues: Sequence[EmotionCue], times: F64, ease: float = EASE_S) -> F64:
    """(N, SIZE) expression offsets at `times` for cues sorted by time (neutral before the first)."""
    n = times.shape[0]
    if not cues:
        return np.zeros((n, params.SIZE), dtype=np.float64)
    starts = np.array([c.t for c in cues], dtype=np.float64)
    goals = np.stack([c.vec for c in cues])
    # where each transition starts from: the face at the moment of the cue (possibly mid-transition)
    origins = np.zeros_like(goals)
    for k in range(1, len(cues)):
        u = _ease((starts[k] - starts[k - 1]) / ease)
        origins[k] = origins[k - 1] + (goals[k - 1] - origins[k - 1]) * u
    k_at = np.searchsorted(starts, times, side="right") - 1
    active = k_at >= 0
    k_safe = np.maximum(k_at, 0)
    u_t = _ease((times - starts[k_safe]) / ease)[:, None]
    out = origins[k_safe] + (goals[k_safe] - origins[k_safe]) * u_t
    out[~active] = 0.0
    result: F64 = out
    return result


def _ease(x: Any) -> Any:
    c = np.clip(x, 0.0, 1.0)
    return c * c * (3.0 - 2.0 * c)
