"""Visual perception of the user: faces, head pose, gaze, blinks, mouth and expression from video frames.

`decode_frame` turns a session's JPEG/PNG bytes into RGB, raising `BadFrame` (code `bad_frame`, not fatal: the
session goes on) for empty, garbage, truncated, oversized (bytes or pixels) or non-JPEG/PNG data.

`FaceAnalyzer` runs MediaPipe FaceMesh (478 landmarks with irises, up to 4 faces) on each frame and, for the main
(largest) face, measures:
- head pose from the mesh's own 3D points (FaceMesh z is scaled like x): x' along the eye corners, y' from the
  forehead top to the chin (less a documented 8 degree forehead lean), z' = x' x y'. Angles use the replica
  renderer's convention (`orchestrator.face.params`): yaw + = the face turns toward image right, pitch + = chin
  down, roll + = the face rotates clockwise in the image (so a photo rotated counter-clockwise reads roll -).
- gaze: each iris's offset from its eye-corner midpoint (fraction of the half eye width) becomes an eye-in-head
  rotation, composed with the head rotation; the angle between that gaze ray and the ray to the camera gives a
  continuous score `gaze_score` (1 = straight at the camera, 0.5 on the `GAZE_TOLERANCE_DEG` ellipse) and the label.
- eye aspect ratio per eye (Soukupova & Cech 2016) -> eyes closed; inner-lip gap / mouth width -> mouth open.
- expression: a roll-corrected 64x64 grayscale crop through the ported mini-Xception (`expression.py`, batched
  over every frame of an `analyze_batch` call), plus the heuristic contempt score from mouth-corner asymmetry.
Static mode (default) treats every frame on its own; tracking mode keeps one MediaPipe tracker per stream key, so
frames of many sessions still go in one `analyze_batch` call. `FaceTrack` adds per-stream smoothing: EMA and
hysteresis on the emotion label, blink counting and rate.

MediaPipe graphs are not thread-safe: use one `FaceAnalyzer` per thread (Triton instance).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from orchestrator.errors import DuetError
from orchestrator.perception.expression import (
    EMOTIONS,
    INPUT_SIDE,
    MODEL_FILE,
    EmotionSmoother,
    ExpressionModel,
    contempt_score,
    to_eight,
)
from orchestrator.signal.imaging import UnreadableImage, decode_rgb


class BadFrame(DuetError):
    """A video frame that cannot be used: empty, not JPEG/PNG, truncated or corrupt, or over the size limits."""

    code = "bad_frame"
    fatal = False


U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

MAX_FRAME_BYTES = 2_000_000
MAX_FRAME_SIDE = 4096
MAX_FACES = 4
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "model_repository" / "perception_face" / "1" / MODEL_FILE

# Landmark indices (MediaPipe FaceMesh; "right" = the subject's right = image left).
NOSE_TIP, CHIN = 1, 152
EYE_R_OUTER, EYE_R_INNER, EYE_L_INNER, EYE_L_OUTER = 33, 133, 362, 263
MOUTH_R, MOUTH_L = 61, 291  # outer mouth corners (image left, image right)
LIP_UPPER_INNER, LIP_LOWER_INNER, LIP_R_INNER, LIP_L_INNER = 13, 14, 78, 308
IRIS_R, IRIS_L = 468, 473  # iris centres
EAR_R = (33, 160, 158, 133, 153, 144)  # p1..p6: corner, upper, upper, corner, lower, lower
EAR_L = (362, 385, 387, 263, 373, 380)
# Head axes from the mesh's own 3D points: across = outer and inner eye corners, down = forehead top -> chin.
_ACROSS = ((EYE_R_OUTER, EYE_L_OUTER), (EYE_R_INNER, EYE_L_INNER))
FOREHEAD = 10
# The forehead-top -> chin line leans back from the vertical in an upright head (the forehead slopes back, soft
# tissue profile); subtracted so that an upright face reads pitch ~0. Set from anthropometry (~8 degrees).
PITCH_OFFSET_DEG = 8.0

EYE_CLOSED_EAR = 0.2  # both eyes' mean EAR below this -> closed (open eyes measure ~0.25-0.35)
MOUTH_OPEN_RATIO = 0.12  # inner-lip gap / inner mouth width above this -> open
# Gaze counts as "camera" inside an ellipse of these half-angles around the camera ray (wider vertically: people
# looking at a screen under the webcam still attend to it); score = logistic in the elliptical radius.
GAZE_TOLERANCE_DEG = (12.0, 18.0)
GAZE_SOFTNESS = 0.25
# sin(eye rotation) per unit iris offset (fraction of half eye width). Geometry alone gives ~1.25 (half width
# ~15 mm over an iris rotation radius ~12 mm); FaceMesh's iris landmarks move less than the iris, so more.
EYE_GAIN = (2.0, 1.0)
IRIS_Y_REST = -0.10  # the iris centre sits ~0.1 half-widths above the eye-corner line when looking straight
CROP_MARGIN = 0.1  # expression crop: landmark box side * (1 + margin), roll-corrected
MESH_CROP_SCALE = 1.8  # FaceMesh runs on a square of this many detector-box sides around the face
TRACK_CROP_SCALE = 1.4  # ... or of this many landmark-box sides around the previous frame's face (tracking)
MESH_CROP_SIDE = 320  # crops are scaled down to at most this side before FaceMesh


def decode_frame(data: bytes, max_bytes: int = MAX_FRAME_BYTES, max_side: int = MAX_FRAME_SIDE) -> U8:
    """JPEG or PNG bytes -> (H, W, 3) RGB uint8. Raises `BadFrame` for anything else, before decoding big data."""
    if not data:
        raise BadFrame("empty video frame; send one JPEG or PNG image per frame")
    if len(data) > max_bytes:
        raise BadFrame(f"video frame is {len(data)} bytes; the limit is {max_bytes}; send smaller JPEG frames")

    def check(fmt: str | None, w: int, h: int) -> None:
        if fmt not in ("JPEG", "PNG"):
            raise BadFrame(f"video frame is {fmt or 'an unknown format'}; send JPEG or PNG")
        if w < 1 or h < 1 or max(w, h) > max_side:
            raise BadFrame(f"video frame is {w}x{h} pixels; each side must be 1..{max_side}")

    try:
        return decode_rgb(data, check)
    except UnreadableImage as exc:
        raise BadFrame(f"video frame cannot be decoded ({exc}); send intact JPEG or PNG frames") from exc


@dataclass(frozen=True)
class HeadPose:
    """Degrees; yaw + = face turns toward image right, pitch + = chin down, roll + = clockwise in the image."""

    yaw: float
    pitch: float
    roll: float

    def as_dict(self) -> dict[str, float]:
        return {"yaw": round(self.yaw, 1), "pitch": round(self.pitch, 1), "roll": round(self.roll, 1)}


@dataclass(frozen=True, eq=False)
class FaceObservation:
    """The main face of one frame."""

    landmarks: F32  # (478, 3) pixels: x right, y down, z MediaPipe depth scaled like x
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 of the landmarks, clipped to the image
    head_pose: HeadPose
    gaze: Literal["camera", "away"]
    gaze_score: float  # 0..1, how directly the gaze ray points at the camera
    gaze_angle: float  # degrees between the gaze ray and the ray to the camera
    gaze_offset: tuple[float, float]  # (yaw, pitch) degrees of the gaze relative to the camera ray, signs as pose
    iris_offset: tuple[float, float]  # mean (x, y) iris offset, fraction of half eye width; + = image right/down
    ear: tuple[float, float]  # eye aspect ratio (image-left eye, image-right eye)
    eyes_closed: bool
    mouth_ratio: float  # inner-lip gap / inner mouth width
    mouth_open: bool
    corner_asymmetry: float  # mouth-corner lift, image-left minus image-right, iod units
    emotion: dict[str, float]  # the eight emotions, sum 1 (contempt heuristic)
    expression_7: tuple[float, ...]  # the model's own seven probabilities (FER order)

    @property
    def top_emotion(self) -> str:
        return max(self.emotion, key=lambda k: self.emotion[k])


@dataclass(frozen=True, eq=False)
class FrameAnalysis:
    """One frame: how many faces, all their boxes (largest first) and the main face's measurements."""

    width: int
    height: int
    faces: int
    boxes: tuple[tuple[float, float, float, float], ...]
    face: FaceObservation | None

    def event_fields(self) -> dict[str, Any]:
        """The visual keys of a DESIGN.md perception event for this single frame (null where no face)."""
        f = self.face
        return {
            "faces": self.faces,
            "emotion": None if f is None else {k: round(v, 3) for k, v in f.emotion.items()},
            "head_pose": None if f is None else f.head_pose.as_dict(),
            "gaze": None if f is None else f.gaze,
        }


def _rotation_to_pose(rmat: F64) -> HeadPose:
    forward = rmat @ np.array([0.0, 0.0, -1.0])  # where the nose points
    right = rmat @ np.array([1.0, 0.0, 0.0])  # the image-right direction of the face
    yaw = math.degrees(math.atan2(forward[0], -forward[2]))
    pitch = math.degrees(math.atan2(forward[1], math.hypot(forward[0], forward[2])))
    roll = math.degrees(math.atan2(right[1], right[0]))
    return HeadPose(yaw, pitch, roll)


def _angles(v: F64) -> tuple[float, float]:
    """(yaw, pitch) degrees of a direction in camera axes, with the pose's signs (-z = toward the camera)."""
    return math.degrees(math.atan2(v[0], -v[2])), math.degrees(math.atan2(v[1], math.hypot(v[0], v[2])))


def head_pose(landmarks: F32) -> tuple[HeadPose, F64]:
    """Head pose of one face from its 3D landmarks (pixels, z scaled like x); also the head-to-camera rotation.

    FaceMesh's landmarks are a weak-perspective 3D reconstruction, so the head's axes are read off the mesh
    itself: x' along the eye corners, y' from the forehead top to the chin made orthogonal to x', z' = x' x y'.
    The pose is relative to the viewing ray (weak perspective: the camera looks along +z).
    """
    p = landmarks.astype(np.float64)
    x = sum((p[b] - p[a] for a, b in _ACROSS), np.zeros(3))
    x /= max(float(np.linalg.norm(x)), 1e-9)
    y = p[CHIN] - p[FOREHEAD]
    y -= (y @ x) * x
    y /= max(float(np.linalg.norm(y)), 1e-9)
    c, s = math.cos(math.radians(PITCH_OFFSET_DEG)), math.sin(math.radians(PITCH_OFFSET_DEG))
    z = np.cross(x, y)
    y, z = c * y - s * z, s * y + c * z  # undo the forehead's lean: rotate about x'
    rmat = np.stack([x, y, z], axis=1)
    return _rotation_to_pose(rmat), rmat


def _ear(lm: F32, idx: Sequence[int]) -> float:
    p = lm[list(idx), :2].astype(np.float64)
    width = float(np.linalg.norm(p[0] - p[3]))
    if width < 1e-6:
        return 0.0
    return float((np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])) / (2.0 * width))


def _iris_offset(lm: F32, corner_a: int, corner_b: int, iris: int) -> tuple[float, float]:
    """Iris centre relative to the eye-corner midpoint, in half eye widths, along/across the corner line."""
    a, b, c = lm[corner_a, :2].astype(np.float64), lm[corner_b, :2].astype(np.float64), lm[iris, :2]
    half = float(np.linalg.norm(b - a)) / 2.0
    if half < 1e-6:
        return 0.0, 0.0
    u = (b - a) / (2.0 * half)  # image-left corner -> image-right corner
    v = np.array([-u[1], u[0]])  # 90 degrees clockwise on screen: "down" across the eye
    d = c - (a + b) / 2.0
    return float(d @ u / half), float(d @ v / half)


def _gaze(
    lm: F32, rmat: F64
) -> tuple[Literal["camera", "away"], float, float, tuple[float, float], tuple[float, float]]:
    rx, ry = _iris_offset(lm, EYE_R_OUTER, EYE_R_INNER, IRIS_R)
    lx, ly = _iris_offset(lm, EYE_L_INNER, EYE_L_OUTER, IRIS_L)
    ix, iy = (rx + lx) / 2.0, (ry + ly) / 2.0  # averaging the eyes cancels the nasal/temporal asymmetry
    ey = math.asin(max(-1.0, min(1.0, EYE_GAIN[0] * ix)))
    ep = math.asin(max(-1.0, min(1.0, EYE_GAIN[1] * (iy - IRIS_Y_REST))))
    d_head = np.array([math.sin(ey) * math.cos(ep), math.sin(ep), -math.cos(ey) * math.cos(ep)])
    g = rmat @ d_head
    to_cam = np.array([0.0, 0.0, -1.0])
    angle = math.degrees(math.acos(max(-1.0, min(1.0, float(g @ to_cam)))))
    gy, gp = _angles(g)
    cy, cp = _angles(to_cam)
    radius = math.hypot((gy - cy) / GAZE_TOLERANCE_DEG[0], (gp - cp) / GAZE_TOLERANCE_DEG[1])
    score = 1.0 / (1.0 + math.exp(min((radius - 1.0) / GAZE_SOFTNESS, 50.0)))
    label: Literal["camera", "away"] = "camera" if score >= 0.5 else "away"
    return label, score, angle, (gy - cy, gp - cp), (ix, iy)


def _face_frame(lm: F32) -> tuple[F64, F64, F64, float]:
    """Eye-line frame of a face: centre between the eyes, unit vectors u (along the eyes) and v (down), iod."""
    er = lm[[EYE_R_OUTER, EYE_R_INNER], :2].mean(0).astype(np.float64)
    el = lm[[EYE_L_INNER, EYE_L_OUTER], :2].mean(0).astype(np.float64)
    iod = max(float(np.linalg.norm(el - er)), 1e-6)
    u = (el - er) / iod
    return (er + el) / 2.0, u, np.array([-u[1], u[0]]), iod


def corner_asymmetry(lm: F32) -> float:
    """Lift of the image-left mouth corner above the lips' meeting line minus the image-right one's, in iod."""
    _, _, v, iod = _face_frame(lm)
    mid = lm[[LIP_UPPER_INNER, LIP_LOWER_INNER], :2].mean(0).astype(np.float64)
    lift_r = -float((lm[MOUTH_R, :2] - mid) @ v) / iod
    lift_l = -float((lm[MOUTH_L, :2] - mid) @ v) / iod
    return lift_r - lift_l


def expression_crop(gray: U8, lm: F32) -> U8:
    """The roll-corrected square 64x64 grayscale crop around the face's landmarks (the model's input)."""
    _, u, v, _ = _face_frame(lm)
    xy = lm[:, :2].astype(np.float64)
    pu, pv = xy @ u, xy @ v  # coordinates in the eye-line frame
    cu, cv_ = (pu.min() + pu.max()) / 2.0, (pv.min() + pv.max()) / 2.0
    side = max(pu.max() - pu.min(), pv.max() - pv.min()) * (1.0 + CROP_MARGIN)
    s = INPUT_SIDE / max(side, 1e-6)
    m = np.array(
        [[s * u[0], s * u[1], INPUT_SIDE / 2.0 - s * cu], [s * v[0], s * v[1], INPUT_SIDE / 2.0 - s * cv_]],
        dtype=np.float64,
    )
    warped = cv2.warpAffine(gray, m, (INPUT_SIDE, INPUT_SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    crop: U8 = np.asarray(warped, dtype=np.uint8)
    return crop


@dataclass
class _Geometry:
    lm: F32
    bbox: tuple[float, float, float, float]
    pose: HeadPose
    gaze: tuple[Literal["camera", "away"], float, float, tuple[float, float], tuple[float, float]]
    ear: tuple[float, float]
    mouth_ratio: float
    asymmetry: float


def measure(lm: F32, width: int, height: int) -> _Geometry:
    """Everything except the expression model, for one face's landmarks."""
    pose, rmat = head_pose(lm)
    gap = float(np.linalg.norm(lm[LIP_UPPER_INNER, :2] - lm[LIP_LOWER_INNER, :2]))
    mouth_w = max(float(np.linalg.norm(lm[LIP_R_INNER, :2] - lm[LIP_L_INNER, :2])), 1e-6)
    return _Geometry(
        lm=lm,
        bbox=measure_box(lm, width, height),
        pose=pose,
        gaze=_gaze(lm, rmat),
        ear=(_ear(lm, EAR_R), _ear(lm, EAR_L)),
        mouth_ratio=gap / mouth_w,
        asymmetry=corner_asymmetry(lm),
    )


class FaceAnalyzer:
    """Face detection + FaceMesh + head pose + gaze + eyes + mouth + expression for frames of many streams.

    Faces are found by MediaPipe's full-range face detector (BlazeFace, 192x192 input: it also finds faces that
    fill only a small part of a wide frame, where FaceMesh's own short-range detector fails); FaceMesh then runs
    on a square crop around the main (largest) face, falling back to the next largest if it finds no mesh there.
    `tracking=False` (default): every frame on its own. `tracking=True`: per stream key, the next frame's mesh
    runs directly on the crop around the previous frame's landmarks and the detector (which gives the face count)
    runs only every `detect_every` frames or when the face is lost; counts in between repeat the last detection.
    """

    def __init__(
        self,
        model_path: str | Path = DEFAULT_MODEL,
        *,
        tracking: bool = False,
        detect_every: int = 5,
        max_faces: int = MAX_FACES,
        min_detection_confidence: float = 0.5,
        device: str = "cpu",
        max_streams: int = 256,
    ) -> None:
        import mediapipe as mp

        self.tracking = tracking
        self.detect_every = max(1, detect_every)
        self.max_faces = max_faces
        self.max_streams = max_streams
        self.expression = ExpressionModel(model_path, device=device)
        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_detection_confidence
        )
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.3
        )
        self._streams: OrderedDict[Hashable, _StreamState] = OrderedDict()

    def detect(self, image: U8) -> list[tuple[float, float, float, float]]:
        """Face boxes (x0, y0, x1, y1 pixels, clipped), largest first, at most `max_faces`."""
        h, w = image.shape[:2]
        result = self._detector.process(image)
        boxes: list[tuple[float, float, float, float]] = []
        for det in result.detections or []:
            b = det.location_data.relative_bounding_box
            x0, y0 = max(b.xmin * w, 0.0), max(b.ymin * h, 0.0)
            x1, y1 = min((b.xmin + b.width) * w, float(w)), min((b.ymin + b.height) * h, float(h))
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1, y1))
        boxes.sort(key=lambda bb: -(bb[2] - bb[0]) * (bb[3] - bb[1]))
        return boxes[: self.max_faces]

    def mesh_in(self, image: U8, box: tuple[float, float, float, float], scale: float = MESH_CROP_SCALE) -> F32 | None:
        """The (478, 3) landmarks (pixels, z scaled like x) of the face in `box`, from a square crop around it."""
        cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        side = max(box[2] - box[0], box[3] - box[1]) * scale
        s = min(1.0, MESH_CROP_SIDE / max(side, 1.0))
        out = max(8, round(side * s))
        m = np.array([[s, 0.0, out / 2.0 - s * cx], [0.0, s, out / 2.0 - s * cy]], dtype=np.float64)
        crop = cv2.warpAffine(image, m, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        result = self._mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        pts = np.array([[p.x, p.y, p.z] for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)
        pts *= out / s  # crop-normalised -> image pixels (z is scaled like x)
        pts[:, 0] += cx - side / 2.0
        pts[:, 1] += cy - side / 2.0
        lm: F32 = pts.astype(np.float32)
        return lm

    def _find(self, image: U8, stream: Hashable) -> tuple[list[tuple[float, float, float, float]], F32 | None]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
            raise BadFrame(f"frame must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        image = np.ascontiguousarray(image)
        h, w = image.shape[:2]
        state = None
        if self.tracking:
            state = self._streams.get(stream)
            if state is None:
                state = self._streams[stream] = _StreamState()
                while len(self._streams) > self.max_streams:
                    self._streams.popitem(last=False)
            self._streams.move_to_end(stream)
            state.frame += 1
            if state.last is not None and state.frame % self.detect_every != 0:
                lm = self.mesh_in(image, measure_box(state.last, w, h), TRACK_CROP_SCALE)
                if lm is not None:
                    state.last = lm
                    boxes = [measure_box(lm, w, h), *state.boxes[1:]]
                    return boxes, lm
        boxes = self.detect(image)
        lm = None
        for box in boxes:
            if (lm := self.mesh_in(image, box)) is not None:
                break
        if state is not None:
            state.boxes, state.last = boxes, lm
        return boxes, lm

    def analyze(self, image: U8, stream: Hashable = None) -> FrameAnalysis:
        """One RGB frame."""
        return self.analyze_batch([image], [stream])[0]

    def analyze_batch(self, images: Sequence[U8], streams: Sequence[Hashable] | None = None) -> list[FrameAnalysis]:
        """Many RGB frames (e.g. one per session); the expression model runs once for all their main faces."""
        keys: Sequence[Hashable] = streams if streams is not None else [None] * len(images)
        if len(keys) != len(images):
            raise ValueError("streams must have one key per image")
        found = [self._find(image, key) for image, key in zip(images, keys, strict=True)]
        geos = [
            None if lm is None else measure(lm, int(img.shape[1]), int(img.shape[0]))
            for img, (_, lm) in zip(images, found, strict=True)
        ]
        crops = [
            expression_crop(np.asarray(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), dtype=np.uint8), g.lm)
            for img, g in zip(images, geos, strict=True)
            if g is not None
        ]
        probs = self.expression.predict(np.stack(crops) if crops else np.zeros((0, INPUT_SIDE, INPUT_SIDE), np.uint8))
        out: list[FrameAnalysis] = []
        k = 0
        for img, (boxes, _), g in zip(images, found, geos, strict=True):
            face = None
            if g is not None:
                p7 = probs[k]
                k += 1
                label, score, angle, offset, iris = g.gaze
                face = FaceObservation(
                    landmarks=g.lm,
                    bbox=g.bbox,
                    head_pose=g.pose,
                    gaze=label,
                    gaze_score=score,
                    gaze_angle=angle,
                    gaze_offset=offset,
                    iris_offset=iris,
                    ear=g.ear,
                    eyes_closed=(g.ear[0] + g.ear[1]) / 2.0 < EYE_CLOSED_EAR,
                    mouth_ratio=g.mouth_ratio,
                    mouth_open=g.mouth_ratio > MOUTH_OPEN_RATIO,
                    corner_asymmetry=g.asymmetry,
                    emotion=to_eight(p7, contempt_score(g.asymmetry)),
                    expression_7=tuple(float(x) for x in p7),
                )
            h, w = img.shape[:2]
            out.append(FrameAnalysis(width=int(w), height=int(h), faces=len(boxes), boxes=tuple(boxes), face=face))
        return out

    def close_stream(self, stream: Hashable) -> None:
        """Forget a stream's tracking state (the session ended)."""
        self._streams.pop(stream, None)

    def close(self) -> None:
        self._detector.close()
        self._mesh.close()
        self._streams.clear()


@dataclass
class _StreamState:
    frame: int = -1
    last: F32 | None = None
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)


def measure_box(lm: F32, width: int, height: int) -> tuple[float, float, float, float]:
    """A face's landmark box clipped to the image."""
    x0, y0 = np.maximum(lm[:, :2].min(0), 0.0)
    x1, y1 = lm[:, 0].max(), lm[:, 1].max()
    return float(x0), float(y0), float(min(x1, width)), float(min(y1, height))


@dataclass
class TrackState:
    """A stream's smoothed visual state after a frame."""

    t: float
    faces: int
    present: bool
    emotion: dict[str, float] | None
    emotion_label: str | None
    head_pose: HeadPose | None
    gaze: Literal["camera", "away"] | None
    gaze_score: float | None
    eyes_closed: bool | None
    blinks: int
    blink_rate_per_min: float | None
    mouth_open: bool | None


@dataclass
class FaceTrack:
    """Per-stream temporal state: emotion EMA + hysteresis, smoothed gaze score, blink counting.

    A blink is an eyes-closed run (EAR below `blink_ratio` x the stream's running open-eye EAR) of at most
    `max_blink_s`; longer closures are "eyes closed", not blinks. The blink rate is over the last `rate_window_s`.
    """

    gaze_alpha: float = 0.4
    blink_ratio: float = 0.65
    max_blink_s: float = 0.5
    rate_window_s: float = 60.0
    smoother: EmotionSmoother = field(default_factory=EmotionSmoother)
    _gaze: float | None = None
    _open_ear: float | None = None
    _closed_since: float | None = None
    _blink_times: list[float] = field(default_factory=list)
    _start: float | None = None
    blinks: int = 0

    def update(self, frame: FrameAnalysis, t: float) -> TrackState:
        """Add the frame taken at `t` seconds; return the smoothed state."""
        if self._start is None:
            self._start = t
        f = frame.face
        if f is None:
            self.smoother.reset()
            self._gaze, self._closed_since = None, None
            return TrackState(t, frame.faces, False, None, None, None, None, None, None, self.blinks, None, None)
        emotion, label = self.smoother.update(f.emotion)
        self._gaze = (
            f.gaze_score
            if self._gaze is None
            else (1 - self.gaze_alpha) * self._gaze + (self.gaze_alpha * f.gaze_score)
        )
        ear = (f.ear[0] + f.ear[1]) / 2.0
        if self._open_ear is None:
            self._open_ear = max(ear, EYE_CLOSED_EAR + 0.05)
        closed = ear < self.blink_ratio * self._open_ear
        if not closed:
            self._open_ear = 0.95 * self._open_ear + 0.05 * ear
            if self._closed_since is not None and t - self._closed_since <= self.max_blink_s:
                self.blinks += 1
                self._blink_times.append(t)
            self._closed_since = None
        elif self._closed_since is None:
            self._closed_since = t
        self._blink_times = [b for b in self._blink_times if t - b <= self.rate_window_s]
        span = min(t - self._start, self.rate_window_s)
        rate = len(self._blink_times) * 60.0 / span if span >= 5.0 else None
        gaze: Literal["camera", "away"] = "camera" if self._gaze >= 0.5 else "away"
        return TrackState(
            t=t,
            faces=frame.faces,
            present=True,
            emotion=emotion,
            emotion_label=label,
            head_pose=f.head_pose,
            gaze=gaze,
            gaze_score=self._gaze,
            eyes_closed=closed,
            blinks=self.blinks,
            blink_rate_per_min=rate,
            mouth_open=f.mouth_open,
        )


__all__ = [
    "EMOTIONS",
    "BadFrame",
    "FaceAnalyzer",
    "FaceObservation",
    "FaceTrack",
    "FrameAnalysis",
    "HeadPose",
    "TrackState",
    "decode_frame",
    "head_pose",
]
