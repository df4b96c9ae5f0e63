"""Face benchmark: renderer speed, A/V sync, expressions and stability, all measured on rendered frames.

    .venv/bin/python perf/bench_face.py                   # CPU, every part (about 4 minutes on a loaded 2-core box)
    .venv/bin/python perf/bench_face.py --quick           # smaller speed grid, shorter clips
    python perf/bench_face.py --device cuda --speed-only  # a GPU box with torch + torchvision (nvJPEG) only
    .venv/bin/python perf/bench_face.py --sync-only       # A/V sync only: parts 2 and 2b (about 2 minutes)

Parts (outputs in --out, default perf/out/face):

1. Speed. `FaceRenderer.render` and `encode_jpeg` timed separately and back to back, ms per frame (median over
   repetitions, after warm-up; `torch.cuda.synchronize()` around every timed call on CUDA), at 512x512 and
   1920x1080, batch 1/4/16 (CUDA: also 48/96/192). On CUDA the big batches run two ways: `one` renderer with the
   whole batch, and `sessions`: `render_many` over B/4 renderers of the same portrait (shallow copies sharing the
   portrait's tensors, as sessions of one replica would), 4 frames each, each session's frames JPEG-encoded on
   their own. Parameters are real motion (`motion.generate` of a talking, smiling timeline, so the mouth
   compositing runs). Alternatives in the same run (CPU): the same thin-plate-spline warp done per frame with
   numpy + OpenCV (`G @ d` from the renderer's own operator, one fixed-point inversion step instead of three
   Newton steps, `cv2.resize` of the coarse map, `cv2.remap`; no mouth/eyelid compositing, so it does less work
   than the renderer), and JPEG (quality 80) via `cv2.imencode` vs PIL.
2. A/V sync. Piper speaks a few sentences (real phoneme timings); `motion.generate` places them at their audio
   times; frames are rendered at 512x512, 25 fps; MediaPipe FaceMesh (static mode, no temporal filter) measures
   the inner-lip gap (landmarks 13-14 / iris distance) on every frame. Offset = time of the measured opening's
   local extremum within +-200 ms of a phoneme's centre minus that centre: minima for p/b/m, maxima for open
   vowels. The extremum time is the centre of the run of frames within 0.01 iod of the extreme (parabolic
   refinement for a single-frame extreme), so it can resolve better than a frame. "Lips close" = gap below a
   threshold a quarter of the way from the measured full press (lip_press=1) to the measured neutral face.
3. Expressions. Each emotion at intensity 0.8, 2 s after its cue (eased in), no speech, blink zeroed, rendered and
   measured against the neutral render at the same instant (same idle state). Geometry in a face frame (x along
   the inner eye corners, y down), in % of the iris distance. Noise floor per measure: the largest change
   between the neutral reference and neutral renders at four other times (idle sway, drift, breathing).
4. Stability at rest. 4 s of neutral idle (blink 0) with head sway on and off; jitter = mean over the 468 mesh
   points of |x[t+1] - 2 x[t] + x[t-1]| in output px, vs 4 s of one identical rendered frame (MediaPipe's own
   floor; tracking mode, where consecutive frames share a region of interest, and static mode).
5. contact_sheet.png (every emotion, labelled with its verdict), talking.mp4 (H.264 + AAC), results.json.

CPU timings on a shared machine are noisy: medians are reported, and torch runs with --threads (default 1:
with 2 OpenMP threads on 2 cores shared with other work, single calls stalled up to 50x).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orchestrator.face import assets as fa  # noqa: E402
from orchestrator.face import params as fp  # noqa: E402
from orchestrator.face.motion import (  # noqa: E402
    EMOTIONS,
    EmotionCue,
    MotionRequest,
    Phoneme,
    Sentence,
    generate,
)
from orchestrator.face.render import FaceRenderer, encode_jpeg, render_many  # noqa: E402

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

PORTRAIT = ROOT / "faces" / "astronaut.png"
CACHE = ROOT / ".cache" / "faces"
VOICE = ROOT / "model_repository" / "tts" / "1" / "voices" / "en_US-joe-medium.onnx"
FPS = 25.0
TARGET_FPS = 25.0
SESSION_FPS = 40.0
JPEG_QUALITY = 80
SIZES = ((512, 512), (1920, 1080))
CPU_BATCHES = (1, 4, 16)
GPU_BATCHES = (1, 4, 16, 48, 96, 192)
FRAMES_PER_SESSION = 4

SYNC_SENTENCES = (
    "Maybe my brother bought a pumpkin pie.",
    "Papa made a big batch of bread by the barn.",
    "I am happy to help; what would you like to talk about?",
    "Bob parked his car by the market at the top of the hill.",
)
SYNC_WINDOW_S = 0.2
SYNC_TARGET_MS = 40.0
BILABIALS = frozenset("pbm")
OPEN_VOWELS = frozenset("aæɑɒɔʌ")  # jaw target >= 0.55 in visemes.py (ɐ, 0.5, is left out)
PLATEAU_IOD = 0.01
EXPRESSION_T = 2.0
NEUTRAL_TIMES = (3.3, 4.7, 6.1, 7.9)
MIN_THRESHOLD = 0.5  # % iod: changes smaller than this are not called a movement even with a quiet floor
REST_S = 4.0

# MediaPipe FaceMesh indices (the subject's right eye is on the image's left).
IRIS_R, IRIS_L = 468, 473
EYE_INNER_R, EYE_INNER_L = 133, 362
BROW_INNER_R, BROW_INNER_L = (107, 55), (336, 285)
BROW_OUTER_R, BROW_OUTER_L = (70, 46), (300, 276)
LID_R, LID_L = (159, 145), (386, 374)
CORNER_R, CORNER_L = 61, 291  # image left, image right
LIP_TOP, LIP_IN_UP, LIP_IN_LO, LIP_BOTTOM = 0, 13, 14, 17
SUBNASALE = 2

MEASURES = (
    "brow_inner",  # inner brow height above the eye-corner line (+ = up)
    "brow_outer",  # outer brow height (+ = up)
    "brow_dist",  # distance between the inner brows (- = drawn together)
    "eye_open",  # upper to lower lid, mean of both eyes
    "corner_up",  # mouth corners above the lip centre, mean of both (+ = corners up)
    "corner_asym",  # image-right corner height minus image-left corner height (one-sided smile)
    "mouth_width",  # corner to corner
    "mouth_open",  # inner-lip gap
    "nose_lip",  # subnasale to the top of the upper lip (- = upper lip pulled up)
)

FLOW_MEASURES = ("brow_dist_flow", "eye_open_flow")

# Expected signature per emotion: measure -> sign of the change (FACS; compounds from their AU mix in emotions.py).
SIGNATURES: dict[str, dict[str, int]] = {
    "happiness": {"corner_up": +1},  # AU12
    "sadness": {"brow_inner": +1, "corner_up": -1},  # AU1 + AU15
    "anger": {"brow_inner": -1, "brow_dist": -1},  # AU4
    "fear": {"brow_inner": +1, "brow_dist": -1, "eye_open": +1, "mouth_width": +1},  # AU1+2+4, AU5, AU20
    "surprise": {"brow_inner": +1, "brow_outer": +1, "eye_open": +1, "mouth_open": +1},  # AU1+2, AU5, AU26
    "disgust": {"nose_lip": -1, "corner_up": -1},  # AU9/10, AU15
    "contempt": {"corner_asym": +1},  # unilateral AU12/14, smirk > 0 lifts the image-right corner
    "empathy": {"brow_inner": +1, "corner_up": +1},  # AU1 with a soft AU12
    "amusement": {"corner_up": +1, "mouth_open": +1, "eye_open": -1},  # AU6+12+25/26
    "thoughtful": {"brow_dist": -1, "mouth_open": -1},  # AU4, pressed lips (AU24)
    "reassuring": {"corner_up": +1},  # AU12 (+6)
    "interested": {"brow_outer": +1, "eye_open": +1},  # AU1+2, AU5
    "happily_surprised": {"brow_outer": +1, "eye_open": +1, "corner_up": +1, "mouth_open": +1},  # AU1+2+5+12+26
    "confused": {"brow_dist": -1},  # AU4 knitting the brows (with AU1)
}


# --------------------------------------------------------------------------------------- pure measurements
def per_frame_ms(rep_seconds: Sequence[float], frames: int) -> float:
    """Median over repetitions of the time per frame, in ms."""
    return 1000.0 * statistics.median(rep_seconds) / frames


def face_axes(lm: F64) -> tuple[F64, F64, F64, float]:
    """(origin, x axis, y axis, iod): origin between the inner eye corners, x toward the image right, y down."""
    xy = lm[:, :2]
    origin = 0.5 * (xy[EYE_INNER_R] + xy[EYE_INNER_L])
    ex = xy[EYE_INNER_L] - xy[EYE_INNER_R]
    ex = ex / np.linalg.norm(ex)
    ey = np.array([-ex[1], ex[0]])
    iod = float(np.linalg.norm(xy[IRIS_L] - xy[IRIS_R]))
    return origin, ex, ey, iod


def lip_gap(lm: F64) -> float:
    """Inner-lip opening at the centre (landmarks 13-14) in iris distances."""
    xy = lm[:, :2]
    return float(np.linalg.norm(xy[LIP_IN_LO] - xy[LIP_IN_UP]) / np.linalg.norm(xy[IRIS_L] - xy[IRIS_R]))


def geometry(lm: F64) -> dict[str, float]:
    """Every measure in `MEASURES`, in % of the iris distance, in the face frame (roll does not count)."""
    origin, ex, ey, iod = face_axes(lm)
    rel = lm[:, :2] - origin
    u, v = rel @ ex, rel @ ey

    def mean_v(idx: Sequence[int]) -> float:
        return float(np.mean(v[list(idx)]))

    lip_centre_v = 0.5 * (v[LIP_TOP] + v[LIP_BOTTOM])
    up_r, up_l = lip_centre_v - v[CORNER_R], lip_centre_v - v[CORNER_L]
    out = {
        "brow_inner": -0.5 * (mean_v(BROW_INNER_R) + mean_v(BROW_INNER_L)),
        "brow_outer": -0.5 * (mean_v(BROW_OUTER_R) + mean_v(BROW_OUTER_L)),
        "brow_dist": float(np.mean(u[list(BROW_INNER_L)]) - np.mean(u[list(BROW_INNER_R)])),
        "eye_open": 0.5 * float(v[LID_R[1]] - v[LID_R[0]] + v[LID_L[1]] - v[LID_L[0]]),
        "corner_up": 0.5 * float(up_r + up_l),
        "corner_asym": float(up_l - up_r),
        "mouth_width": float(u[CORNER_L] - u[CORNER_R]),
        "mouth_open": float(v[LIP_IN_LO] - v[LIP_IN_UP]),
        "nose_lip": float(v[LIP_TOP] - v[SUBNASALE]),
    }
    return {k: 100.0 * val / iod for k, val in out.items()}


def geometry_delta(lm: F64, reference: F64) -> dict[str, float]:
    g, r = geometry(lm), geometry(reference)
    return {k: g[k] - r[k] for k in MEASURES}


def noise_floor(deltas: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per measure, the largest |change| over the changes between neutral frames (% iod)."""
    return {k: max(abs(d[k]) for d in deltas) for k in deltas[0]}


def with_flow(signature: Mapping[str, int]) -> dict[str, int]:
    """The signature with the brow distance and eye opening read from optical flow instead of the mesh."""
    swap = {"brow_dist": "brow_dist_flow", "eye_open": "eye_open_flow"}
    return {swap.get(k, k): v for k, v in signature.items()}


def thresholds(floor: Mapping[str, float], factor: float = 1.5, minimum: float = MIN_THRESHOLD) -> dict[str, float]:
    return {k: max(factor * v, minimum) for k, v in floor.items()}


def verdict(delta: Mapping[str, float], limit: Mapping[str, float], signature: Mapping[str, int]) -> tuple[bool, str]:
    """(every expected change has the right sign beyond its threshold, what failed)."""
    misses = []
    for measure, sign in signature.items():
        if sign * delta[measure] <= limit[measure]:
            misses.append(f"{measure} {delta[measure]:+.1f} (want {'+' if sign > 0 else '-'}>{limit[measure]:.1f})")
    return not misses, "; ".join(misses)


def extremum_time(times: F64, values: F64, centre: float, window: float, kind: str, plateau: float) -> float | None:
    """Time of the local minimum ("min") or maximum ("max") of `values` nearest `centre`, within `window` s of it.

    None when there is no local extreme in the window (the signal only falls or rises there). The nearest one,
    not the deepest: neighbouring p/b/m 150 ms apart each have their own closure. A flat extreme (neighbouring
    frames within `plateau` of it) counts at the centre of its run; a single-frame one is refined by a parabola
    through it and its neighbours.
    """
    if kind not in ("min", "max"):
        raise ValueError(f"kind must be 'min' or 'max', got {kind!r}")
    idx = np.flatnonzero(np.abs(times - centre) <= window + 1e-9)
    if idx.size < 3:
        return None
    y = (1.0 if kind == "min" else -1.0) * values[idx]
    cands = [
        k for k in range(1, y.size - 1) if y[k] <= y[k - 1] and y[k] <= y[k + 1] and min(y[k - 1], y[k + 1]) > y[k]
    ]
    # a flat bottom of equal values: its first frame is the candidate (strictly below the frame before it)
    cands += [k for k in range(1, y.size - 1) if y[k] < y[k - 1] and y[k] == y[k + 1]]
    if not cands:
        return None
    k = min(cands, key=lambda c: (abs(times[idx[c]] - centre), y[c]))
    lo = hi = k
    while lo > 0 and y[lo - 1] <= y[k] + plateau:
        lo -= 1
    while hi < y.size - 1 and y[hi + 1] <= y[k] + plateau:
        hi += 1
    if lo < hi:
        return float(0.5 * (times[idx[lo]] + times[idx[hi]]))
    a, b, c = y[k - 1], y[k], y[k + 1]
    den = a - 2 * b + c
    shift = 0.5 * (a - c) / den if den > 0 else 0.0
    step = float(times[idx[k + 1]] - times[idx[k]])
    return float(times[idx[k]] + float(np.clip(shift, -0.5, 0.5)) * step)


def flow_geometry(flow: F64, lm: F64) -> dict[str, float]:
    """Changes seen by dense optical flow (H, W, 2) at a face's landmarks `lm`, % iod: the brows' horizontal
    distance (- = together) and the eyes' opening (+ = wider). MediaPipe's mesh follows its shape prior there
    and under-reports these movements; the flow reads the pixels."""
    _, ex, ey, iod = face_axes(lm)
    h, w = flow.shape[:2]

    def at(points: Sequence[int]) -> F64:
        vals = []
        for i in points:
            x, y = int(np.rint(lm[i, 0])), int(np.rint(lm[i, 1]))
            patch = flow[max(y - 3, 0) : min(y + 4, h), max(x - 3, 0) : min(x + 4, w)].reshape(-1, 2)
            vals.append(patch.mean(0))
        out: F64 = np.mean(vals, axis=0)
        return out

    brow_dist = (at(BROW_INNER_L) - at(BROW_INNER_R)) @ ex
    eye_open = 0.5 * ((at((LID_R[1],)) - at((LID_R[0],))) @ ey + (at((LID_L[1],)) - at((LID_L[0],))) @ ey)
    return {"brow_dist_flow": 100.0 * float(brow_dist) / iod, "eye_open_flow": 100.0 * float(eye_open) / iod}


def optical_flow(reference: U8, frame: U8) -> F64:
    import cv2

    a = cv2.cvtColor(reference, cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    flow = np.zeros((*a.shape, 2), np.float32)
    out: F64 = np.asarray(cv2.calcOpticalFlowFarneback(a, b, flow, 0.5, 3, 15, 3, 5, 1.2, 0), dtype=np.float64)
    return out


def percentile_abs(offsets_s: Sequence[float], q: float) -> float | None:
    """q-th percentile of |offset|, in ms."""
    if not offsets_s:
        return None
    return float(np.percentile(np.abs(np.asarray(offsets_s)) * 1000.0, q))


def closure_threshold(neutral_gap: float, pressed_gap: float) -> float:
    """Gap below which the lips count as closed: a quarter of the way from a full press to the neutral face."""
    return pressed_gap + 0.25 * (neutral_gap - pressed_gap)


def jitter(tracks: F64) -> F64:
    """(T, N, 2) landmark tracks -> (T-2,) mean over points of |second difference| (px per frame^2)."""
    d2 = tracks[2:] - 2.0 * tracks[1:-1] + tracks[:-2]
    out: F64 = np.linalg.norm(d2, axis=-1).mean(axis=-1)
    return out


def pearson(a: F64, b: F64) -> float | None:
    if a.size < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def base_symbol(p: str) -> str:
    """espeak symbol without stress and length marks: 'ˈaː' -> 'a'."""
    return p.strip("ˈˌːˑ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# --------------------------------------------------------------------------------------- motion helpers
def talking_params(frames: int, seed: int = 0) -> F32:
    """Realistic parameters for the speed runs: a smiling replica speaking a synthetic phoneme string."""
    symbols = "h ə l oʊ m aɪ n eɪ m ɪ z b ɑ b p æ t w ʌ z f ʌ n i".split()
    phonemes, t = [], 0.05
    for i in range(int(frames / FPS / 0.09) + 2):
        p = symbols[i % len(symbols)]
        phonemes.append(Phoneme(p, round(t, 3), round(t + 0.09, 3)))
        t += 0.09
    req = MotionRequest(
        fps=FPS,
        start=0.0,
        frames=frames,
        seed=seed,
        emotion=(EmotionCue(0.0, "happiness", 0.6),),
        speech=(Sentence(0.0, tuple(phonemes)),),
    )
    return generate(req)


def still_params(name: str, t: float, intensity: float = 0.8, seed: int = 0) -> F32:
    req = MotionRequest(fps=FPS, start=t, frames=1, seed=seed, emotion=(EmotionCue(0.0, name, intensity),))
    out = generate(req)
    out[:, fp.INDEX["blink"]] = 0.0
    return out


# --------------------------------------------------------------------------------------- 1. speed
@dataclass
class SpeedRow:
    device: str
    size: str
    batch: int
    mode: str
    reps: int
    render_ms: float
    jpeg_ms: float
    total_ms: float

    def as_row(self) -> list[str]:
        return [
            self.device,
            self.size,
            str(self.batch),
            self.mode,
            fmt(self.render_ms),
            fmt(1000.0 / self.render_ms),
            fmt(self.jpeg_ms),
            fmt(1000.0 / self.jpeg_ms),
            fmt(self.total_ms),
            f"**{1000.0 / self.total_ms:.1f}**",
        ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _runner(renderer: FaceRenderer, x: torch.Tensor, mode: str) -> Callable[[], list[torch.Tensor]]:
    """`one`: the whole batch through one renderer; `sessions`: render_many over one renderer per 4 frames."""
    if mode == "one":
        return lambda: [renderer.render(x)]
    n = FRAMES_PER_SESSION
    jobs = [(copy.copy(renderer), x[i : i + n]) for i in range(0, x.shape[0], n)]
    return lambda: render_many(jobs)


def time_speed(
    portrait: fa.Portrait, device: torch.device, batches: Sequence[int], quick: bool, log: Callable[[str], None]
) -> tuple[list[SpeedRow], list[dict[str, Any]]]:
    pool = talking_params(max(batches))
    rows: list[SpeedRow] = []
    skipped: list[dict[str, Any]] = []
    cuda = device.type == "cuda"
    for w, h in SIZES:
        renderer = FaceRenderer(portrait, w, h, device=device)
        for b in batches:
            for mode in ["one"] + (["sessions"] if cuda and b >= 48 else []):
                run_render = _runner(renderer, torch.from_numpy(pool[:b]).to(device), mode)
                reps = max(2 if quick else 3, math.ceil((12 if quick else 24) / b))
                if cuda:
                    reps = max(5, math.ceil(96 / b))
                warm = 3 if cuda else (1 if w * h * b > 4_000_000 else 2)
                try:
                    r_s, j_s, t_s = _time_pipeline(run_render, device, reps, warm)
                except torch.cuda.OutOfMemoryError as exc:
                    skipped.append({"size": f"{w}x{h}", "batch": b, "mode": mode, "error": str(exc)[:200]})
                    log(f"  {w}x{h} batch {b} {mode}: out of GPU memory, skipped")
                    torch.cuda.empty_cache()
                    continue
                row = SpeedRow(device.type, f"{w}x{h}", b, mode, reps, *(per_frame_ms(t, b) for t in (r_s, j_s, t_s)))
                rows.append(row)
                log(f"  {row.size} batch {b:3d} {mode:8s} render {row.render_ms:8.2f} ms/frame, JPEG {row.jpeg_ms:.2f}")
        if cuda:
            del renderer
            torch.cuda.empty_cache()
    return rows, skipped


def _time_pipeline(
    run_render: Callable[[], list[torch.Tensor]], device: torch.device, reps: int, warm: int
) -> tuple[list[float], list[float], list[float]]:
    """Per repetition: seconds to render, to JPEG-encode those frames, and both (the same repetition's sum)."""
    for _ in range(warm):
        for f in run_render():
            encode_jpeg(f, JPEG_QUALITY)
    _sync(device)
    render_s, jpeg_s, total_s = [], [], []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        frames = run_render()
        _sync(device)
        t1 = time.perf_counter()
        for f in frames:
            encode_jpeg(f, JPEG_QUALITY)
        _sync(device)
        t2 = time.perf_counter()
        render_s.append(t1 - t0)
        jpeg_s.append(t2 - t1)
        total_s.append(t2 - t0)
    return render_s, jpeg_s, total_s


def _alternative_cases(portrait: fa.Portrait, w: int, h: int) -> list[tuple[str, str, Callable[[F32], object]]]:
    import io

    import cv2
    from PIL import Image

    r = FaceRenderer(portrait, w, h, device="cpu")
    g = r.g.cpu().numpy()
    nodes = r.nodes.cpu().numpy().reshape(-1, 2)
    image = np.ascontiguousarray(portrait.image)

    def remap(p: F32) -> U8:
        with torch.inference_mode():
            d = r.displacements(torch.from_numpy(p[None]))[0].numpy()
        src = (nodes - g @ d).reshape(r.gh, r.gw, 2).astype(np.float32)
        full = cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)
        warped = cv2.remap(image, full[..., 0], full[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return np.asarray(warped, dtype=np.uint8)

    def torch_one(p: F32) -> U8:
        out: U8 = r.render(p[None])[0].permute(1, 2, 0).numpy()
        return out

    frame = torch_one(talking_params(1)[0])
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    pil = Image.fromarray(frame)
    chw = torch.from_numpy(frame).permute(2, 0, 1)[None]

    def pil_jpeg(_: F32) -> bytes:
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()

    def cv2_jpeg(_: F32) -> bytes:
        return bytes(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1])

    def duet_jpeg(_: F32) -> bytes:
        return encode_jpeg(chw, JPEG_QUALITY)[0]

    return [
        ("warp", "FaceRenderer.render, batch 1 (torch)", torch_one),
        ("warp", "numpy G@d + cv2.resize + cv2.remap, per frame", remap),
        ("jpeg", "encode_jpeg (cv2 inside, RGB->BGR)", duet_jpeg),
        ("jpeg", "cv2.imencode", cv2_jpeg),
        ("jpeg", "PIL Image.save", pil_jpeg),
    ]


def time_alternatives(portrait: fa.Portrait, quick: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per-frame CPU alternatives: OpenCV remap of the same spline warp, and JPEG via cv2 and PIL."""
    probe = FaceRenderer(portrait, 64, 64, device="cpu")
    needed = ("g", "nodes", "gh", "gw", "displacements")
    if not all(hasattr(probe, n) for n in needed):
        log(f"  the renderer no longer exposes {needed}: the cv2.remap comparison is skipped")
        return []
    out: list[dict[str, Any]] = []
    pool = talking_params(24)
    reps = 8 if quick else 16
    for w, h in SIZES:
        cases = _alternative_cases(portrait, w, h)
        # interleaved: each repetition runs every method once, so load spikes hit them alike
        times: dict[str, list[float]] = {name: [] for _, name, _ in cases}
        for _, _, fn in cases:
            fn(pool[0])
        for i in range(reps):
            p = pool[i % len(pool)]
            for _, name, fn in cases:
                t0 = time.perf_counter()
                fn(p)
                times[name].append(time.perf_counter() - t0)
        for stage, name, _ in cases:
            ms = per_frame_ms(times[name], 1)
            out.append({"size": f"{w}x{h}", "stage": stage, "method": name, "ms": ms, "fps": 1000.0 / ms, "reps": reps})
            log(f"  {w}x{h} {stage} {name}: {ms:.2f} ms")
    return out


# --------------------------------------------------------------------------------------- mediapipe
def render_frames(renderer: FaceRenderer, params: F32, chunk: int = 16) -> list[U8]:
    out: list[U8] = []
    for i in range(0, params.shape[0], chunk):
        frames = renderer.render(params[i : i + chunk]).permute(0, 2, 3, 1).cpu().numpy()
        out.extend(np.ascontiguousarray(f) for f in frames)
    return out


def measure(frames: Sequence[U8], static: bool) -> list[F64 | None]:
    from perf.av_sync import Lips

    mesh = Lips(static)
    try:
        return [mesh(f) for f in frames]
    finally:
        mesh.close()


# --------------------------------------------------------------------------------------- 2. sync
@dataclass
class SyncClip:
    pcm: npt.NDArray[np.int16]
    speech: tuple[Sentence, ...]
    params: F32
    frames: list[U8]
    times: F64


def build_sync_clip(renderer: FaceRenderer, sentences: Sequence[str], log: Callable[[str], None]) -> SyncClip:
    from orchestrator.inference.tts import SAMPLE_RATE, PiperSpeaker

    speaker = PiperSpeaker(VOICE)
    gap = np.zeros(int(0.3 * SAMPLE_RATE), np.int16)
    pcm_parts: list[npt.NDArray[np.int16]] = [gap]
    speech: list[Sentence] = []
    cursor = gap.shape[0]
    for text in sentences:
        spoken = speaker.synthesize(text)
        t0 = cursor / SAMPLE_RATE
        speech.append(Sentence(t0, tuple(Phoneme(p.phoneme, p.start, p.end) for p in spoken.phonemes)))
        pcm_parts += [spoken.pcm, gap]
        cursor += spoken.pcm.shape[0] + gap.shape[0]
    pcm = np.concatenate(pcm_parts)
    frames_n = int(pcm.shape[0] / SAMPLE_RATE * FPS)
    req = MotionRequest(fps=FPS, start=0.0, frames=frames_n, seed=0, speech=tuple(speech))
    params = generate(req)
    t0 = time.perf_counter()
    frames = render_frames(renderer, params)
    log(f"  {len(sentences)} sentences, {pcm.shape[0] / SAMPLE_RATE:.1f} s, {frames_n} frames rendered in "
        f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    return SyncClip(pcm, tuple(speech), params, frames, req.times)


def sync_report(clip: SyncClip, renderer: FaceRenderer) -> dict[str, Any]:
    from perf.av_sync import voice_level

    marks = measure(clip.frames, static=True)
    a_t, level = voice_level(clip.pcm.astype(np.float32) / 32768.0, 16000, 0.0)
    ok = np.array([m is not None for m in marks])
    gap = np.array([lip_gap(m) if m is not None else np.nan for m in marks])
    # reference openings measured the same way: neutral face and a full lip press
    refs = measure(render_frames(renderer, np.stack([fp.vector(), fp.vector(lip_press=1.0)])), static=True)
    if refs[0] is None or refs[1] is None:
        raise RuntimeError("MediaPipe found no face on the neutral or pressed reference render")
    neutral_gap, pressed_gap = lip_gap(refs[0]), lip_gap(refs[1])
    thr = closure_threshold(neutral_gap, pressed_gap)
    times = clip.times[ok]
    g = gap[ok]
    lip_param = clip.params[:, fp.INDEX["jaw_open"]] * (1.0 - clip.params[:, fp.INDEX["lip_press"]])
    press = clip.params[:, fp.INDEX["lip_press"]]

    bil: list[dict[str, Any]] = []
    vow: list[dict[str, Any]] = []
    for s in clip.speech:
        for ph in s.phonemes:
            sym = base_symbol(ph.p)
            centre = s.t0 + 0.5 * (ph.s + ph.e)
            # offsets are against the voice's own event for the phoneme (closure silence, vowel peak), not
            # the span centre: piper's spans sit ~28 ms late on their audio (docs/face.md)
            sound = sound_event(a_t, level, {"p": ph.p, "s": s.t0 + ph.s, "e": s.t0 + ph.e})
            if sym in BILABIALS:
                t_ext = extremum_time(times, g, centre, SYNC_WINDOW_S, "min", PLATEAU_IOD)
                near = np.abs(times - centre) <= max(0.5 * (ph.e - ph.s), 0.5 / FPS) + 1e-9
                closest = int(np.argmin(np.abs(clip.times - centre)))
                window_min = float(g[np.abs(times - centre) <= SYNC_WINDOW_S].min())
                bil.append({
                    "p": ph.p,
                    "centre": round(centre, 4),
                    "dur_ms": round(1000 * (ph.e - ph.s)),
                    "offset_ms": None if t_ext is None or sound is None else round(1000 * (t_ext - sound), 1),
                    "vs_timings_ms": None if t_ext is None else round(1000 * (t_ext - centre), 1),
                    "gap_min_window": round(window_min, 4),
                    "gap_min_during": round(float(g[near].min()), 4) if near.any() else None,
                    "closed": window_min < thr,
                    "param_press_at_centre": round(float(press[closest]), 3),
                })  # fmt: skip
            elif sym in OPEN_VOWELS:
                t_ext = extremum_time(times, g, centre, SYNC_WINDOW_S, "max", PLATEAU_IOD)
                vow.append({
                    "p": ph.p,
                    "centre": round(centre, 4),
                    "dur_ms": round(1000 * (ph.e - ph.s)),
                    "offset_ms": None if t_ext is None or sound is None else round(1000 * (t_ext - sound), 1),
                    "vs_timings_ms": None if t_ext is None else round(1000 * (t_ext - centre), 1),
                })  # fmt: skip

    def summary(items: list[dict[str, Any]]) -> dict[str, Any]:
        offs = [i["offset_ms"] / 1000.0 for i in items if i["offset_ms"] is not None]
        signed = [o * 1000.0 for o in offs]
        return {
            "n": len(items),
            "with_extremum": len(offs),
            "p50_abs_ms": percentile_abs(offs, 50),
            "p95_abs_ms": percentile_abs(offs, 95),
            "median_signed_ms": float(np.median(signed)) if signed else None,
            "within_target": sum(abs(o) <= SYNC_TARGET_MS for o in signed),
        }

    return {
        "frames": len(clip.frames),
        "frames_with_face": int(ok.sum()),
        "neutral_gap_iod": neutral_gap,
        "pressed_gap_iod": pressed_gap,
        "closed_threshold_iod": thr,
        "bilabial": {**summary(bil), "closed": sum(b["closed"] for b in bil)},
        "open_vowel": summary(vow),
        "corr_gap_vs_jaw_x_unpressed": pearson(g, lip_param[ok].astype(np.float64)),
        "bilabials": bil,
        "open_vowels": vow,
        "gap_series": [round(float(v), 4) if np.isfinite(v) else None for v in gap],
    }


# ----------------------------------------------------------------- 2b. sync end to end, off the MP4 file
def sound_event(times: F64, level: F64, phoneme: Mapping[str, Any]) -> float | None:
    """Where the decoded voice shows a phoneme: the quietest moment of a p/b/m (its closure's silence, from 30 ms
    before its span to 10 ms after), the loudest of an open vowel (within its span)."""
    sym = base_symbol(phoneme["p"])
    if sym in BILABIALS:
        m = (times >= phoneme["s"] - 0.03) & (times <= phoneme["e"] + 0.01)
        return float(times[m][np.argmin(level[m])]) if m.any() else None
    if sym in OPEN_VOWELS:
        m = (times >= phoneme["s"]) & (times <= phoneme["e"])
        return float(times[m][np.argmax(level[m])]) if m.any() else None
    return None


def phoneme_sync(
    phonemes: Sequence[Mapping[str, Any]], frame_t: F64, gap: F64, audio_t: F64, level: F64
) -> dict[str, Any]:
    """Per p/b/m and open vowel (the TTS timings only say which phoneme is where): the lip gap's extreme
    nearest the phoneme's centre (minimum / maximum), the voice's own event (`sound_event`), and their
    difference: the A/V offset of that phoneme (ms, > 0: the mouth after the sound)."""
    ok = np.isfinite(gap)
    t_ok, g = frame_t[ok], gap[ok]
    rows: list[dict[str, Any]] = []
    for ph in phonemes:
        sym = base_symbol(ph["p"])
        if sym not in BILABIALS and sym not in OPEN_VOWELS:
            continue
        centre = 0.5 * (ph["s"] + ph["e"])
        kind = "min" if sym in BILABIALS else "max"
        mouth = extremum_time(t_ok, g, centre, SYNC_WINDOW_S, kind, PLATEAU_IOD)
        sound = sound_event(audio_t, level, ph)
        rows.append({
            "p": ph["p"],
            "centre": round(centre, 4),
            "mouth_ms": None if mouth is None else round(1000 * (mouth - centre), 1),
            "sound_ms": None if sound is None else round(1000 * (sound - centre), 1),
            "av_ms": None if mouth is None or sound is None else round(1000 * (mouth - sound), 1),
        })  # fmt: skip

    def median(key: str, kinds: frozenset[str] | None = None) -> float | None:
        vals = [r[key] for r in rows if r[key] is not None and (kinds is None or base_symbol(r["p"]) in kinds)]
        return round(float(np.median(vals)), 1) if vals else None

    av = [r["av_ms"] / 1000.0 for r in rows if r["av_ms"] is not None]
    return {
        "n": len(rows),
        "measured": len(av),
        "av_offset_ms": median("av_ms"),
        "av_p95_abs_ms": percentile_abs(av, 95),
        "bilabial_av_ms": median("av_ms", BILABIALS),
        "open_vowel_av_ms": median("av_ms", OPEN_VOWELS),
        "mouth_vs_timings_ms": median("mouth_ms"),
        "sound_vs_timings_ms": median("sound_ms"),
        "phonemes": rows,
    }


def e2e_sync_report(out_dir: Path, text: str, log: Callable[[str], None]) -> dict[str, Any]:
    """`duet render` through the real stack (TTS timings -> face_motion -> face_render -> JPEG -> client ->
    MP4), then two measurements of the decoded file: per phoneme (mouth extreme minus the voice's own event,
    the timings only naming the phonemes) and `perf/av_sync.py` (voice envelope against lip gap, no timings
    at all). They should agree within a frame."""
    mp4, events = out_dir / "e2e_sync.mp4", out_dir / "e2e_sync.jsonl"
    cmd = [str(Path(sys.executable).parent / "duet"), "render", "--text", text, "--size", "512", "--fps", f"{FPS:g}",
           "--out", str(mp4), "--events", str(events)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        said = [line for line in proc.stderr.splitlines() if line.startswith("duet:")]  # not Triton's log
        raise RuntimeError(f"duet render failed: {' / '.join(said)[:600] or proc.stderr.strip()[-400:]}")
    log(f"  duet render (embedded stack unless DUET_SERVER) took {time.perf_counter() - t0:.1f} s")
    done = next(e for e in map(json.loads, events.read_text().splitlines()) if e.get("type") == "render_done")
    return {
        "mp4": str(mp4.relative_to(ROOT) if mp4.is_relative_to(ROOT) else mp4),
        "first_frame_ms": done.get("first_frame_ms"),
        "render_total_ms": done.get("total_ms"),
        "speech_s": done.get("speech_s"),
        **file_sync(mp4, done["phonemes"]),
    }


def file_sync(mp4: Path, phonemes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Both measurements of one MP4 and whether they agree within a frame."""
    from perf import av_sync

    clip = av_sync.decode_mp4(mp4)
    independent = av_sync.measure(clip)
    a_t, level = av_sync.voice_level(clip.audio, clip.rate, clip.audio_t0)
    gap, _ = av_sync.lip_gaps(clip.frames)
    labelled = phoneme_sync(phonemes, clip.frame_t, gap, a_t, level)
    frame_ms = 1000.0 / (independent["fps"] or FPS)
    a, b = labelled["av_offset_ms"], independent["xcorr_ms"]
    return {
        "frames": independent["frames"],
        "frames_with_face": independent["frames_with_face"],
        "phoneme": labelled,
        "independent": independent,
        "agree_within_frame": None if a is None else abs(a - b) <= frame_ms,
    }


# --------------------------------------------------------------------------------------- 3. expressions
def expression_report(renderer: FaceRenderer) -> tuple[dict[str, Any], dict[str, U8]]:
    names = list(EMOTIONS)
    stills = np.concatenate([still_params(n, EXPRESSION_T) for n in names])
    neutrals = np.concatenate([still_params("neutral", t) for t in NEUTRAL_TIMES])
    frames = render_frames(renderer, np.concatenate([stills, neutrals]))
    marks = measure(frames, static=True)
    ref_i = names.index("neutral")
    reference = marks[ref_i]
    if reference is None or any(m is None for m in marks[len(names) :]):
        raise RuntimeError("MediaPipe found no face on a neutral render")

    def delta(i: int) -> dict[str, float]:
        lm = marks[i]
        assert lm is not None and reference is not None
        return {**geometry_delta(lm, reference), **flow_geometry(optical_flow(frames[ref_i], frames[i]), reference)}

    floor = noise_floor([delta(i) for i in range(len(names), len(frames))])
    limit = thresholds(floor)
    table: dict[str, Any] = {}
    for i, name in enumerate(names):
        if name == "neutral":
            continue
        if marks[i] is None:
            table[name] = {"delta": None, "recognised": False, "recognised_flow": False, "misses": "no face found"}
            continue
        d = delta(i)
        ok, misses = verdict(d, limit, SIGNATURES[name])
        ok_flow, misses_flow = verdict(d, limit, with_flow(SIGNATURES[name]))
        table[name] = {
            "delta": d,
            "signature": SIGNATURES[name],
            "recognised": ok,
            "misses": misses,
            "recognised_flow": ok_flow,
            "misses_flow": misses_flow,
        }
    images = dict(zip(names, frames[: len(names)], strict=True))
    report = {
        "t": EXPRESSION_T,
        "intensity": 0.8,
        "noise_floor": floor,
        "threshold": limit,
        "emotions": table,
        "recognised": sum(v["recognised"] for v in table.values()),
        "recognised_flow": sum(v["recognised_flow"] for v in table.values()),
        "of": len(table),
        "reference_geometry": geometry(reference),
    }
    return report, images


def contact_sheet(images: Mapping[str, U8], report: Mapping[str, Any], reference: U8, path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    from perf.av_sync import Lips

    mesh = Lips(static=True)
    try:
        lm = mesh(reference)
    finally:
        mesh.close()
    h, w = reference.shape[:2]
    if lm is None:
        box = (0, 0, w, h)
    else:
        (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
        cx, cy, half = 0.5 * (x0 + x1), 0.5 * (y0 + y1), 0.68 * max(x1 - x0, y1 - y0)
        box = (max(int(cx - half), 0), max(int(cy - half), 0), min(int(cx + half), w), min(int(cy + half), h))
    tile, label_h, cols = 256, 34, 5
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (cols * tile, rows * (tile + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    try:
        font: Any = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for i, (name, img) in enumerate(images.items()):
        col, row = i % cols, i // cols
        crop = Image.fromarray(img).crop(box).resize((tile, tile), Image.Resampling.LANCZOS)
        sheet.paste(crop, (col * tile, row * (tile + label_h)))
        entry = report["emotions"].get(name)
        mark = "reference" if entry is None else ("pass" if entry["recognised_flow"] else "FAIL")
        colour = (0, 0, 0) if entry is None or entry["recognised_flow"] else (190, 0, 0)
        draw.text((col * tile + 6, row * (tile + label_h) + tile + 8), f"{name}  [{mark}]", fill=colour, font=font)
    sheet.save(path)


# --------------------------------------------------------------------------------------- 4. stability
def stability_report(renderer: FaceRenderer, quick: bool) -> dict[str, Any]:
    n = int((REST_S / 2 if quick else REST_S) * FPS)
    base = generate(MotionRequest(fps=FPS, start=10.0, frames=n, seed=3))
    base[:, fp.INDEX["blink"]] = 0.0
    still = base.copy()
    still[:, fp.INDEX["head_yaw"] : fp.INDEX["head_roll"] + 1] = 0.0
    cases = {"idle, head sway on": base, "idle, head sway off": still}
    frames = {k: render_frames(renderer, v) for k, v in cases.items()}
    rest_frame = render_frames(renderer, fp.rest(1))[0]
    frames["identical still frame (floor)"] = [rest_frame] * n
    rng = np.random.default_rng(0)
    noisy = [np.clip(rest_frame.astype(np.int16) + rng.integers(-1, 2, rest_frame.shape), 0, 255).astype(np.uint8)
             for _ in range(n)]  # fmt: skip
    frames["still frame + ±1 LSB noise (floor)"] = noisy
    out: dict[str, Any] = {"frames": n, "px_per_iod": renderer.iod_out}
    for mode, static in (("tracking", False), ("static", True)):
        for name, fr in frames.items():
            marks = measure(fr, static=static)
            good = [m[:468] for m in marks if m is not None]
            if len(good) < len(marks):
                out[f"{name} [{mode}]"] = {"error": f"face lost on {len(marks) - len(good)} frames"}
                continue
            j = jitter(np.stack(good))
            out[f"{name} [{mode}]"] = {"median_px": float(np.median(j)), "p95_px": float(np.percentile(j, 95))}
    return out


# --------------------------------------------------------------------------------------- 5. video
def write_talking(clip: SyncClip, path: Path, seconds: float) -> dict[str, Any]:
    from duet.sdk import VideoFrame
    from duet.video import write_mp4
    from orchestrator.inference.tts import SAMPLE_RATE

    ends = [s.t0 + s.phonemes[-1].e for s in clip.speech if s.phonemes]
    stop = next((e for e in ends if e >= seconds - 0.5), ends[-1] if ends else seconds) + 0.3
    keep = [i for i, t in enumerate(clip.times) if t < stop]
    jpegs = encode_jpeg(torch.from_numpy(np.stack([clip.frames[i] for i in keep])).permute(0, 3, 1, 2), 90)
    frames = [VideoFrame(j, float(clip.times[i]), i) for i, j in zip(keep, jpegs, strict=True)]
    audio = clip.pcm[: int(stop * SAMPLE_RATE)]
    written = write_mp4(path, frames, FPS, audio)
    return {"path": str(path), "frames": written, "seconds": round(stop, 2)}


# --------------------------------------------------------------------------------------- main
def missing_modules(names: Sequence[str]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Face renderer benchmark: speed, A/V sync, expressions, stability")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="batches 1 and 4 only, fewer repetitions, shorter clips")
    ap.add_argument("--speed-only", action="store_true", help="part 1 only (no mediapipe / piper / PyAV needed)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared 2-core box)")
    ap.add_argument("--out", default=str(ROOT / "perf" / "out" / "face"))
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end sync run (duet render + Triton)")
    ap.add_argument(
        "--sync-only",
        action="store_true",
        help="only A/V sync: rendered frames (part 2), then duet render measured on the decoded MP4 (2b)",
    )
    args = ap.parse_args(argv)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    t_all = time.perf_counter()
    notes: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)

    portrait = fa.prepare_portrait(PORTRAIT, CACHE)  # mediapipe only on a cache miss
    env: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "nvjpeg": device.type == "cuda" and importlib.util.find_spec("torchvision") is not None,
        "portrait": str(PORTRAIT.relative_to(ROOT)),
    }
    if device.type == "cuda" and not env["nvjpeg"]:
        notes.append("torchvision missing: encode_jpeg fell back to OpenCV on the CPU")
    results: dict[str, Any] = {"env": env, "args": vars(args)}
    if args.sync_only:
        log("2. A/V sync (piper + motion.generate, rendered 512x512 at 25 fps, MediaPipe on frames)")
        renderer = FaceRenderer(portrait, 512, 512, device="cpu")
        results["sync"] = sync_report(build_sync_clip(renderer, SYNC_SENTENCES, log), renderer)
        log("2b. A/V sync end to end (duet render through Triton, measured on the MP4's video and audio)")
        results["sync_e2e"] = e2e_sync_report(out_dir, " ".join(SYNC_SENTENCES), log)
        print_sync(results["sync"])
        print_sync_e2e(results["sync_e2e"])
        path = out_dir / "sync.json"
        path.write_text(json.dumps(results, indent=1, default=str, ensure_ascii=False) + "\n")
        return 0

    # 1. speed
    log(f"1. speed ({device.type}, {env['threads']} torch threads)")
    batches: tuple[int, ...] = GPU_BATCHES if device.type == "cuda" else CPU_BATCHES
    if args.quick:
        batches = tuple(b for b in batches if b <= 4) + ((48,) if device.type == "cuda" else ())
    t0 = time.perf_counter()
    rows, skipped = time_speed(portrait, device, batches, args.quick, log)
    results["speed"] = [r.__dict__ for r in rows]
    results["speed_skipped"] = skipped
    alternatives: list[dict[str, Any]] = []
    if missing_modules(["cv2"]):
        notes.append("cv2 missing: the OpenCV/PIL alternatives were not timed")
    else:
        alternatives = time_alternatives(portrait, args.quick, log)
    results["alternatives"] = alternatives
    results["speed_seconds"] = round(time.perf_counter() - t0, 1)

    headline: dict[str, Any] = {}
    cpu_512 = [r for r in rows if r.device == "cpu" and r.size == "512x512" and r.batch == 1]
    if cpu_512:
        fps = 1000.0 / cpu_512[0].total_ms
        headline["cpu_512_b1_fps"] = fps
        headline["cpu_512_b1_meets_25fps"] = fps >= TARGET_FPS
    gpu_1080 = [r for r in rows if r.device == "cuda" and r.size == "1920x1080"]
    if gpu_1080:
        best = min(gpu_1080, key=lambda r: r.total_ms)
        headline["gpu_1080_best"] = {"batch": best.batch, "mode": best.mode, "fps": 1000.0 / best.total_ms}
        headline["gpu_1080_sessions_at_40fps"] = 1000.0 / best.total_ms / SESSION_FPS
    results["headline"] = headline

    need = missing_modules(["mediapipe", "piper", "av", "cv2", "PIL"])
    if args.speed_only or need:
        why = "--speed-only" if args.speed_only else f"missing modules: {', '.join(need)}"
        log(f"parts 2-5 (sync, expressions, stability, contact sheet, talking.mp4) skipped: {why}")
        notes.append(f"parts 2-5 skipped ({why})")
    else:
        size = 384 if args.quick else 512
        renderer = FaceRenderer(portrait, size, size, device="cpu")
        log(f"2. A/V sync (piper + motion.generate, rendered {size}x{size} at {FPS:g} fps, MediaPipe on frames)")
        clip = build_sync_clip(renderer, SYNC_SENTENCES[:2] if args.quick else SYNC_SENTENCES, log)
        results["sync"] = sync_report(clip, renderer)
        if not args.no_e2e:
            log("2b. A/V sync end to end (duet render through Triton, measured on the MP4's video and audio)")
            try:
                spoken = SYNC_SENTENCES[:2] if args.quick else SYNC_SENTENCES
                results["sync_e2e"] = e2e_sync_report(out_dir, " ".join(spoken), log)
            except (RuntimeError, subprocess.TimeoutExpired, StopIteration) as exc:
                notes.append(f"end-to-end sync not measured: {exc}")
        log("3. expressions")
        results["expressions"], images = expression_report(renderer)
        contact_sheet(images, results["expressions"], images["neutral"], out_dir / "contact_sheet.png")
        log("4. stability at rest")
        results["stability"] = stability_report(renderer, args.quick)
        log("5. talking.mp4")
        results["talking"] = write_talking(clip, out_dir / "talking.mp4", 5.0)
    results["notes"] = notes
    results["seconds"] = round(time.perf_counter() - t_all, 1)

    print()
    print_tables(results)
    for n in notes:
        print(f"note: {n}")
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=1, default=str, ensure_ascii=False) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({results['seconds']} s in all)")
    return 0


def print_tables(res: Mapping[str, Any]) -> None:
    env = res["env"]
    print(f"### Renderer speed ({env['device']}, torch {env['torch']}, {env['threads']} threads; median ms per frame)")
    print()
    header = [
        "device",
        "size",
        "batch",
        "mode",
        "render ms",
        "render fps",
        "JPEG ms",
        "JPEG fps",
        "both ms",
        "both fps",
    ]
    print(markdown_table(header, [SpeedRow(**r).as_row() for r in res["speed"]]))
    if res["alternatives"]:
        print()
        print("### Alternatives, one frame at a time (CPU, interleaved repetitions)")
        print()
        alt = [[a["size"], a["stage"], a["method"], fmt(a["ms"]), fmt(a["fps"])] for a in res["alternatives"]]
        print(markdown_table(["size", "stage", "method", "ms/frame", "fps"], alt))
    h = res["headline"]
    if "cpu_512_b1_fps" in h:
        verdict_cpu = "meets" if h["cpu_512_b1_meets_25fps"] else "misses"
        print(f"\nCPU 512x512 batch 1, render + JPEG: {h['cpu_512_b1_fps']:.1f} fps ({verdict_cpu} the 25 fps target)")
    if "gpu_1080_sessions_at_40fps" in h:
        b = h["gpu_1080_best"]
        print(f"GPU 1080p best: {b['fps']:.0f} fps (batch {b['batch']}, {b['mode']}) = "
              f"{h['gpu_1080_sessions_at_40fps']:.1f} sessions at 40 fps")  # fmt: skip

    if "sync" in res:
        print_sync(res["sync"])
    if "sync_e2e" in res:
        print_sync_e2e(res["sync_e2e"])

    if "expressions" in res:
        e = res["expressions"]
        cols = [*MEASURES, *FLOW_MEASURES]
        print()
        print(f"### Expressions at intensity {e['intensity']}: change from neutral, % of iris distance "
              f"(measured on renders; * = part of the expected signature)")  # fmt: skip
        print()
        header = ["emotion", *cols, "mesh verdict", "mesh + flow verdict"]
        rows = [["noise floor", *(fmt(e["noise_floor"][m]) for m in cols), "", ""],
                ["threshold", *(fmt(e["threshold"][m]) for m in cols), "", ""]]  # fmt: skip
        for name, v in e["emotions"].items():
            if v["delta"] is None:
                rows.append([name, *("-" for _ in cols), "no face", "no face"])
                continue
            sig = {**v["signature"], **with_flow(v["signature"])}
            cells = [f"{v['delta'][m]:+.1f}" + ("*" if m in sig else "") for m in cols]
            mesh = "pass" if v["recognised"] else f"FAIL: {v['misses']}"
            flow = "pass" if v["recognised_flow"] else f"FAIL: {v['misses_flow']}"
            rows.append([name, *cells, mesh, flow])
        print(markdown_table(header, rows))
        print(f"\nrecognisable: {e['recognised']} of {e['of']} by MediaPipe geometry alone, "
              f"{e['recognised_flow']} of {e['of']} with brow distance and eye opening read by optical flow "
              "(neutral is the reference)")  # fmt: skip

    if "stability" in res:
        st = res["stability"]
        print()
        print(f"### Stability at rest: landmark jitter, |second difference| px at {st['px_per_iod']:.0f} px/iod "
              f"({st['frames']} frames)")  # fmt: skip
        print()
        rows = []
        for k, v in st.items():
            if isinstance(v, dict):
                rows.append([k, fmt(v.get("median_px"), 3), fmt(v.get("p95_px"), 3), v.get("error", "")])
        print(markdown_table(["frames [mediapipe mode]", "median px", "p95 px", ""], rows))
    if "talking" in res:
        tk = res["talking"]
        print(f"\ntalking clip: {tk['path']} ({tk['frames']} frames, {tk['seconds']} s)")


def print_sync(s: Mapping[str, Any]) -> None:
    print()
    print(f"### A/V sync, measured on rendered frames ({s['frames_with_face']}/{s['frames']} frames with a face; "
          "offsets: the lip gap's extreme minus the voice's own event for the phoneme)")  # fmt: skip
    print()
    rows = []
    for kind, key in (("bilabial p/b/m (minimum)", "bilabial"), ("open vowel (maximum)", "open_vowel")):
        d = s[key]
        closed = f"{d['closed']}/{d['n']}" if "closed" in d else "-"
        rows.append([kind, d["n"], d["with_extremum"], fmt(d["p50_abs_ms"]), fmt(d["p95_abs_ms"]),
                     fmt(d["median_signed_ms"]), f"{d['within_target']}/{d['with_extremum']}", closed])  # fmt: skip
    header = ["phonemes", "n", "local extreme found", "p50 |offset| ms", "p95 |offset| ms", "median signed ms",
              "within ±40 ms", "lips closed"]  # fmt: skip
    print(markdown_table(header, rows))
    print(f"\nlip gap (iod): neutral {s['neutral_gap_iod']:.3f}, full press {s['pressed_gap_iod']:.3f}, "
          f"closed below {s['closed_threshold_iod']:.3f}; correlation of the measured gap with "
          f"jaw_open*(1-lip_press): {fmt(s['corr_gap_vs_jaw_x_unpressed'], 3)}")  # fmt: skip


def print_sync_e2e(e2e: Mapping[str, Any]) -> None:
    ph, ind = e2e["phoneme"], e2e["independent"]
    print(f"\nend to end (`duet render` through Triton, measured on {e2e['mp4']}; ms, > 0: mouth after the voice): "
          f"per phoneme {fmt(ph['av_offset_ms'])} (median of {ph['measured']}, p95 |offset| "
          f"{fmt(ph['av_p95_abs_ms'])}; p/b/m {fmt(ph['bilabial_av_ms'])}, open vowels "
          f"{fmt(ph['open_vowel_av_ms'])}); voice envelope x lip gap {fmt(ind['xcorr_ms'])} "
          f"(r = {ind['xcorr_r']}); voice onsets {fmt(ind['onset_ms'])} ({ind['onsets_matched']}/"
          f"{ind['voice_onsets']}); agree within a frame: {e2e['agree_within_frame']}. Mouth vs the TTS timings "
          f"{fmt(ph['mouth_vs_timings_ms'])}, voice vs the timings {fmt(ph['sound_vs_timings_ms'])}; first frame "
          f"after {e2e['first_frame_ms']} ms")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
