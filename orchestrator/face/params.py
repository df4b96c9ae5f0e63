"""The per-frame face parameter vector: the contract between face motion and the renderer.

One frame is a float32 vector of `len(PARAMS)` values in this order. Mouth and expression values are
activations (0 = rest, 1 = the full movement; the renderer scales each to the portrait's own face size),
loosely modelled on FACS action units so emotions can be written as AU mixtures. `smirk` is signed (+ lifts
the replica's left mouth corner, i.e. the image's right side, - the other) for the one-sided contempt
expression. Gaze is a fraction of the eye's half-width/half-height (+x = image right, +y = down). Head angles
are degrees (yaw + = the face turns toward image right, pitch + = chin down, roll + = clockwise in the image).
`breath` is the breathing phase's lift, 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Param:
    name: str
    low: float
    high: float
    doc: str


PARAMS: tuple[Param, ...] = (
    # mouth shapes (visemes)
    Param("jaw_open", 0.0, 1.0, "jaw drop; the lips part and the mouth interior shows (AU26/27)"),
    Param("lip_round", 0.0, 1.0, "lips pushed forward and rounded, corners in (AU18/22: oo, w, sh)"),
    Param("lip_spread", 0.0, 1.0, "lips stretched wide, corners out (AU20-like: ee, s)"),
    Param("lip_press", 0.0, 1.0, "lips pressed shut; wins over jaw_open for the lips (AU24: p, b, m)"),
    Param("lower_lip_tuck", 0.0, 1.0, "lower lip raised under the upper teeth (f, v)"),
    Param("upper_lip_raise", 0.0, 1.0, "upper lip raised, upper teeth show (AU10)"),
    Param("tongue_show", 0.0, 1.0, "tongue tip visible between the teeth (th, l)"),
    Param("teeth_show", 0.0, 1.0, "teeth visible in the open mouth (s, z, ee)"),
    # expression (action units)
    Param("brow_inner_up", 0.0, 1.0, "inner brows raised (AU1)"),
    Param("brow_outer_up", 0.0, 1.0, "outer brows raised (AU2)"),
    Param("brow_lower", 0.0, 1.0, "brows lowered and drawn together (AU4)"),
    Param("upper_lid_raise", 0.0, 1.0, "eyes widened (AU5)"),
    Param("cheek_raise", 0.0, 1.0, "cheeks raised, lower lids pushed up (AU6)"),
    Param("lid_tighten", 0.0, 1.0, "lids tightened, eyes narrowed (AU7)"),
    Param("nose_wrinkle", 0.0, 1.0, "nose wrinkled, upper lip pulled up (AU9)"),
    Param("lip_corner_up", 0.0, 1.0, "both mouth corners pulled up and out: smile (AU12)"),
    Param("smirk", -1.0, 1.0, "one mouth corner up and tightened (AU12+14 one-sided); sign picks the side"),
    Param("lip_corner_down", 0.0, 1.0, "mouth corners pulled down (AU15)"),
    Param("chin_raise", 0.0, 1.0, "chin boss raised, lower lip pushed up (AU17)"),
    Param("lip_tighten", 0.0, 1.0, "lips tightened and narrowed (AU23)"),
    # eyes
    Param("blink", 0.0, 1.0, "eyelid closure (1 = shut)"),
    Param("gaze_x", -1.0, 1.0, "iris offset, fraction of the eye's half-width (+ = image right)"),
    Param("gaze_y", -1.0, 1.0, "iris offset, fraction of the eye's half-height (+ = down)"),
    # head and body
    Param("head_yaw", -20.0, 20.0, "degrees, + turns the face toward image right"),
    Param("head_pitch", -20.0, 20.0, "degrees, + tilts the chin down (a nod goes + then back)"),
    Param("head_roll", -20.0, 20.0, "degrees, + rotates clockwise in the image"),
    Param("breath", 0.0, 1.0, "breathing lift of head and shoulders"),
)

NAMES: tuple[str, ...] = tuple(p.name for p in PARAMS)
INDEX: dict[str, int] = {n: i for i, n in enumerate(NAMES)}
SIZE = len(PARAMS)
LOW = np.array([p.low for p in PARAMS], dtype=np.float32)
HIGH = np.array([p.high for p in PARAMS], dtype=np.float32)

F32 = npt.NDArray[np.float32]


def rest(frames: int = 1) -> F32:
    """`frames` copies of the rest face (every parameter 0: neutral, eyes open, looking at the camera)."""
    return np.zeros((frames, SIZE), dtype=np.float32)


def clip(params: F32) -> F32:
    """Clamp each column to its declared range (the renderer's inputs are always in range)."""
    out: F32 = np.clip(params, LOW, HIGH).astype(np.float32, copy=False)
    return out


def vector(**values: float) -> F32:
    """One frame from named values (the rest are 0), e.g. `vector(jaw_open=0.6, lip_round=0.3)`."""
    v: F32 = rest(1)[0]
    for name, value in values.items():
        if name not in INDEX:
            raise KeyError(f"unknown face parameter {name!r} (known: {', '.join(NAMES)})")
        v[INDEX[name]] = value
    return v
