"""The PyTorch face renderer: a portrait animated by per-frame face parameters (`orchestrator.face.params`).

Method. About 230 face-mesh landmarks, a halo of head points around the face oval (hair, ears) and fixed anchors
(a ring around the head and the image border) are control points. Every parameter is a displacement basis on
them in interocular-distance units, built once from the portrait's own geometry; head yaw/pitch/roll rotate the
3D landmarks about a centre behind the face, so the face turns with parallax while the anchors hold the
background. A thin-plate spline fitted on the *source* control points (fixed per portrait) turns point
displacements into a dense field linearly, `field = G @ d`, with G precomputed on a coarse grid of the output
frame. The backward map (output pixel -> source pixel) is `p - field(x)` refined by fixed-point iterations,
upsampled to full resolution and sampled with `grid_sample`. Where the lips part further than in the portrait a
synthesised mouth interior is composited, and closed eyelids are painted over what is left of the eye
(`orchestrator.face.mouth`). Every per-frame step is a batched tensor op: no per-frame Python loop, no host sync
on the GPU path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as nnf
from torch import Tensor

from orchestrator.errors import BadFaceParams
from orchestrator.face import assets as fa
from orchestrator.face import params as fp
from orchestrator.face.mouth import Between, Frame, closed_lid, mouth_interior, smoothstep, synthetic_upper_teeth

F64 = npt.NDArray[np.float64]

# Landmarks that carry the face's motion (in addition to the rings and irises from `assets`).
_NOSE = (1, 2, 4, 5, 6, 19, 94, 98, 327, 168, 197, 195, 48, 278, 129, 358, 64, 294)
_CHEEKS = (50, 280, 101, 330, 205, 425, 187, 411, 123, 352, 116, 345, 117, 346)
_UNDER_EYE = (111, 340, 119, 348, 230, 450, 228, 448)
_CREASE = (27, 28, 29, 30, 56, 257, 258, 259, 260, 286)
_NASOLABIAL = (206, 426, 203, 423, 92, 322, 186, 410)
_MOUTH_RING = (57, 287, 43, 273, 106, 335, 204, 424, 83, 313, 182, 406, 18, 200, 199, 175, 32, 262, 208, 428, 171,
               396)  # fmt: skip
_FOREHEAD = (151, 9, 108, 337, 69, 299)
_HEAD_ANCHOR = (1, 4, 5, 195, 197, 6, 168)  # the nose bridge and tip: rigid with the skull and the upper teeth
_IRISES = fa.IRIS_R + fa.IRIS_L

CONTROL = tuple(
    sorted(
        set(fa.FACE_OVAL + fa.LIPS_OUTER + fa.LIPS_INNER + fa.EYE_R_UPPER + fa.EYE_R_LOWER + fa.EYE_L_UPPER)
        | set(fa.EYE_L_LOWER + fa.BROW_R + fa.BROW_L + _NOSE + _CHEEKS + _UNDER_EYE + _CREASE + _NASOLABIAL)
        | set(_MOUTH_RING + _FOREHEAD + _IRISES)
    )
)
N_FACE = len(CONTROL)
N_HALO = len(fa.FACE_OVAL)
N_RING, N_BORDER_SIDE = 20, 7
N_ANCHOR = N_RING + 4 * (N_BORDER_SIDE - 1)
N_CTRL = N_FACE + N_HALO + N_ANCHOR

# Activations: the parameters made (nearly) linear. lip_press wins over jaw_open for the lips through a product
# term; smirk splits by sign; blink overrides the lid raise.
ACTS = (
    "jaw_open", "lip_round", "lip_spread", "lip_press", "press_x_jaw", "lower_lip_tuck", "upper_lip_raise",
    "tongue_show", "teeth_show", "brow_inner_up", "brow_outer_up", "brow_lower", "upper_lid_raise", "cheek_raise",
    "lid_tighten", "nose_wrinkle", "lip_corner_up", "smirk_pos", "smirk_neg", "lip_corner_down", "chin_raise",
    "lip_tighten", "blink", "gaze_x", "gaze_y", "relax_corners", "relax_lips",
)  # fmt: skip
_A = {n: i for i, n in enumerate(ACTS)}
_P = fp.INDEX

BREATH_LIFT = 0.03  # iod; about a pixel or two at 512x512 for a head-and-shoulders portrait
JAW_DROP = 0.34  # iod at jaw_open = 1
UPPER_TEETH = 0.06  # iod of synthesised upper teeth below the lips' rest line (a portrait with its mouth shut)
RELAXED_GAP = 0.08  # iod: lips at rest just apart; a wider rest gap (a toothy smile) is closed down to this


class _Basis:
    """Builds the (A, K, 2) displacement basis in the face's (u right, v down) frame, iod units."""

    def __init__(self, lm: F64, iod: float) -> None:
        xy = lm[:, :2]
        ex = xy[fa.IRIS_L[0]] - xy[fa.IRIS_R[0]]
        self.ex = ex / np.linalg.norm(ex)
        self.ey = np.array([-self.ex[1], self.ex[0]])
        self.iod = iod
        self.pos = {idx: k for k, idx in enumerate(CONTROL)}
        mc = 0.5 * (xy[13] + xy[14])
        rel = (xy[list(CONTROL)] - mc) / iod
        self.u, self.v = rel @ self.ex, rel @ self.ey  # relative to the mouth centre
        self.face_u = (xy[list(CONTROL)] - 0.5 * (xy[fa.IRIS_R[0]] + xy[fa.IRIS_L[0]])) @ self.ex / iod
        self.mw = max(abs(self.u[self.pos[61]]), abs(self.u[self.pos[291]]), 0.2)
        self.b = np.zeros((len(ACTS), N_CTRL, 2))

    def k(self, idx: Sequence[int]) -> list[int]:
        return [self.pos[i] for i in idx]

    def add(self, act: str, idx: Sequence[int], du: F64 | float, dv: F64 | float) -> None:
        ks = self.k(idx)
        self.b[_A[act], ks, 0] += np.broadcast_to(du, (len(ks),))
        self.b[_A[act], ks, 1] += np.broadcast_to(dv, (len(ks),))

    def sn(self, idx: Sequence[int]) -> F64:
        out: F64 = np.clip(self.u[self.k(idx)] / self.mw, -1.0, 1.0)
        return out

    def pair_gap(self, upper: Sequence[int], lower: Sequence[int]) -> F64:
        out: F64 = self.v[self.k(lower)] - self.v[self.k(upper)]
        return out

    def to_image(self) -> F64:
        """(A, K, 2) in image pixels."""
        out: F64 = (self.b[..., :1] * self.ex + self.b[..., 1:] * self.ey) * self.iod
        return out


def _build_basis(lm: F64, iod: float, eye_half: F64, halo: F64, smile: float = 0.0, close: float = 0.0) -> F64:
    """`smile`: the portrait's own rest smile (iod) and `close`: how much of its rest lip gap to close (iod), both
    taken back by the relax activations so that the rest face (every parameter 0) is a relaxed, neutral face."""
    b = _Basis(lm, iod)
    iu, il = fa.LIP_INNER_UPPER[1:-1], fa.LIP_INNER_LOWER[1:-1]
    ou, ol = fa.LIP_OUTER_UPPER[1:-1], fa.LIP_OUTER_LOWER[1:-1]
    corners = (61, 291, 78, 308)
    lips_up, lips_lo = iu + ou, il + ol
    lips = set(lips_up + lips_lo + corners)
    sign_c = np.sign(b.u[b.k(corners)])
    inner_gap = b.pair_gap(iu, il)  # rest opening per inner-lip pair

    # jaw_open: lower lip, chin and jaw drop; the corners follow halfway; the upper lip lifts a touch.
    s = b.sn(il)
    b.add("jaw_open", il, 0.0, JAW_DROP * (1 - 0.45 * s**2))
    s = b.sn(ol)
    b.add("jaw_open", ol, 0.0, 0.95 * JAW_DROP * (1 - 0.45 * s**2))
    b.add("jaw_open", corners, -0.03 * sign_c, 0.16)
    b.add("jaw_open", lips_up, 0.0, -0.035 * (1 - b.sn(lips_up) ** 2))
    rest = [i for i in CONTROL if i not in lips and i not in _IRISES]
    ks = b.k(rest)
    fade = 1 - smooth_np(np.abs(b.u[ks]), 0.75, 1.35)
    b.b[_A["jaw_open"], ks, 1] += JAW_DROP * smooth_np(b.v[ks], 0.02, 0.4) * fade
    b.b[_A["jaw_open"], ks, 1] += (
        0.12 * JAW_DROP * smooth_np(b.v[ks], -0.25, 0.02) * (1 - smooth_np(b.v[ks], 0.02, 0.4))
    )
    # press_x_jaw undoes the jaw's opening of the lips (not of the chin): p/b/m keep the lips sealed.
    for idx in (il, ol, corners):
        kk = b.k(idx)
        b.b[_A["press_x_jaw"], kk] -= b.b[_A["jaw_open"], kk]
    # The halo under the jaw follows part way, so the chin slides over the neck instead of folding onto it.
    hrel = (halo - 0.5 * (lm[13, :2] + lm[14, :2])) / iod
    hu, hv = hrel @ b.ex, hrel @ b.ey
    halo_drop = 0.6 * JAW_DROP * smooth_np(hv, 0.3, 0.9) * (1 - smooth_np(np.abs(hu), 0.9, 1.6))
    b.b[_A["jaw_open"], N_FACE : N_FACE + N_HALO, 1] = halo_drop
    b.b[_A["press_x_jaw"], ks, 1] -= 0.5 * b.b[_A["jaw_open"], ks, 1]
    b.b[_A["press_x_jaw"], N_FACE : N_FACE + N_HALO, 1] -= 0.5 * halo_drop

    # lip_press / lip_tighten / lower_lip_tuck close the rest gap pair by pair.
    # Slightly past closure: the mesh's inner-lip line sits a little inside the visible teeth edge.
    seal = 0.5 * inner_gap + 0.02 * (1 - b.sn(iu) ** 2)
    b.add("lip_press", iu, 0.0, seal)
    b.add("lip_press", il, 0.0, -seal)
    b.add("lip_press", ou, 0.0, 0.02)
    b.add("lip_press", ol, 0.0, -0.02)
    b.add("lower_lip_tuck", il, 0.0, -inner_gap - 0.05)
    b.add("lower_lip_tuck", ol, 0.0, -0.11 * (1 - 0.5 * b.sn(ol) ** 2))
    b.add("lip_tighten", iu, 0.0, 0.3 * inner_gap)
    b.add("lip_tighten", il, 0.0, -0.3 * inner_gap)
    b.add("lip_tighten", ou, 0.0, 0.03 * (1 - b.sn(ou) ** 2))
    b.add("lip_tighten", ol, 0.0, -0.03 * (1 - b.sn(ol) ** 2))
    b.add("lip_tighten", corners, -0.03 * sign_c, 0.0)

    # lip_round: corners in, lips taller and pushed into a small round opening.
    all_lips = tuple(lips)
    b.add("lip_round", all_lips, -0.17 * b.sn(all_lips), 0.0)
    b.add("lip_round", ou, 0.0, -0.05 * (1 - b.sn(ou) ** 2))
    b.add("lip_round", ol, 0.0, 0.06 * (1 - b.sn(ol) ** 2))
    b.add("lip_round", iu, 0.0, -0.04 * (1 - b.sn(iu) ** 2))
    b.add("lip_round", il, 0.0, 0.05 * (1 - b.sn(il) ** 2))
    near = [i for i in rest if abs(b.u[b.pos[i]]) < 0.9 and abs(b.v[b.pos[i]]) < 0.5]
    b.add("lip_round", near, -0.06 * np.clip(b.u[b.k(near)] / 0.9, -1, 1), 0.0)
    # lip_spread: corners out, lips thinner.
    b.add("lip_spread", all_lips, 0.10 * b.sn(all_lips), 0.0)
    b.add("lip_spread", il, 0.0, -0.02 * (1 - b.sn(il) ** 2))
    b.add("lip_spread", corners, 0.0, -0.01)
    side = [i for i in rest if 0.4 < abs(b.u[b.pos[i]]) < 1.1 and abs(b.v[b.pos[i]]) < 0.45]
    b.add("lip_spread", side, 0.04 * np.sign(b.u[b.k(side)]), 0.0)

    b.add("upper_lip_raise", iu, 0.0, -0.10 * (1 - 0.4 * b.sn(iu) ** 2))
    b.add("upper_lip_raise", ou, 0.0, -0.09 * (1 - 0.4 * b.sn(ou) ** 2))
    b.add("upper_lip_raise", _NASOLABIAL, 0.0, -0.03)
    b.add("teeth_show", iu, 0.0, -0.03 * (1 - b.sn(iu) ** 2))
    b.add("teeth_show", il, 0.0, 0.05 * (1 - b.sn(il) ** 2))
    b.add("tongue_show", il, 0.0, 0.04 * (1 - b.sn(il) ** 2))

    # Smile family: corners up and out, lips follow by their distance from the centre; cheeks rise.
    def corner_pull(act: str, du: float, dv: float, weight: F64 | None = None) -> None:
        idx = tuple(lips)
        s = b.sn(idx)
        w = s**2 if weight is None else weight
        b.add(act, idx, du * s * (1 if weight is None else weight), dv * w)

    corner_pull("lip_corner_up", 0.07, -0.11)
    b.add("lip_corner_up", il, 0.0, 0.02 * (1 - b.sn(il) ** 2))
    b.add("lip_corner_up", _CHEEKS + _NASOLABIAL, 0.02 * np.sign(b.u[b.k(_CHEEKS + _NASOLABIAL)]), -0.05)
    lids_lo = fa.EYE_R_LOWER[1:-1] + fa.EYE_L_LOWER[1:-1]
    b.add("lip_corner_up", lids_lo + _UNDER_EYE, 0.0, -0.02)
    sp = np.clip(b.sn(tuple(lips)), 0, 1) ** 2
    sm = np.clip(-b.sn(tuple(lips)), 0, 1) ** 2
    corner_pull("smirk_pos", 0.09, -0.12, sp)
    corner_pull("smirk_neg", 0.09, -0.12, sm)
    right = [i for i in _CHEEKS + _NASOLABIAL if b.u[b.pos[i]] > 0]
    left = [i for i in _CHEEKS + _NASOLABIAL if b.u[b.pos[i]] < 0]
    b.add("smirk_pos", right, 0.02, -0.04)
    b.add("smirk_neg", left, -0.02, -0.04)
    corner_pull("lip_corner_down", -0.015, 0.13)
    below = [i for i in rest if 0.35 < abs(b.u[b.pos[i]]) < 0.9 and 0.0 < b.v[b.pos[i]] < 0.45]
    b.add("lip_corner_down", below, 0.0, 0.05)
    b.add("chin_raise", ol, 0.0, -0.06)
    b.add("chin_raise", il, 0.0, -np.minimum(0.04, inner_gap * 0.9))
    chin = [i for i in rest if b.v[b.pos[i]] > 0.3 and abs(b.u[b.pos[i]]) < 0.8]
    b.add("chin_raise", chin, 0.0, -0.05)

    # Relaxation of the portrait's own expression. relax_corners brings smiling corners back to the lips' meeting
    # line and in (a smile lifts and widens in about that ratio), the cheeks and folds down with them; relax_lips
    # lets the upper lip down over the teeth and the lower lip up, keeping RELAXED_GAP. Both are 0 for a portrait
    # without a smile / with its lips together, so such a portrait is shown as it is.
    if smile > 0:
        corner_pull("relax_corners", -0.55 * smile, smile)
        cheeks = _CHEEKS + _NASOLABIAL
        b.add("relax_corners", cheeks, -0.15 * smile * np.sign(b.u[b.k(cheeks)]), 0.35 * smile)
        b.add("relax_corners", lids_lo + _UNDER_EYE, 0.0, 0.1 * smile)
    if close > 0:
        frac = np.clip(inner_gap / max(float(inner_gap.max()), 1e-6), 0.0, 1.0) * close
        b.add("relax_lips", iu, 0.0, 0.45 * frac)
        b.add("relax_lips", il, 0.0, -0.55 * frac)
        b.add("relax_lips", ou, 0.0, 0.3 * frac)
        b.add("relax_lips", ol, 0.0, -0.3 * frac)

    # Brows: inner/outer weight by position along each brow.
    for brow in (fa.BROW_R, fa.BROW_L):
        fu = np.abs(b.face_u[b.k(brow)])
        t = np.clip((fu - fu.min()) / max(np.ptp(fu), 1e-6), 0, 1)  # 0 inner .. 1 outer
        sgn = np.sign(b.face_u[b.k(brow)])
        # Full AU1 / AU2 lift the brow by ~15% of the iod, a full AU4 lowers it by ~12% and draws it in.
        b.add("brow_inner_up", brow, -0.025 * sgn * (1 - t), -0.17 * (1 - t) ** 1.3)
        b.add("brow_outer_up", brow, 0.0, -0.15 * (0.25 + 0.75 * t))
        b.add("brow_lower", brow, -0.075 * sgn * (1 - 0.5 * t), 0.13 * (1 - 0.4 * t))
        b.add("nose_wrinkle", brow, -0.02 * sgn * (1 - t), 0.05 * (1 - t))
    b.add("brow_inner_up", _FOREHEAD, 0.0, -0.05)
    b.add("brow_outer_up", _FOREHEAD, 0.0, -0.03)
    b.add("brow_lower", _CREASE, 0.0, 0.05)
    b.add("nose_wrinkle", (48, 278, 129, 358, 64, 294, 98, 327), 0.0, -0.06)
    b.add("nose_wrinkle", ou, 0.0, -0.06 * (1 - 0.5 * b.sn(ou) ** 2))
    b.add("nose_wrinkle", _NASOLABIAL, 0.0, -0.04)
    b.add("nose_wrinkle", _CREASE, 0.0, 0.02)

    # Eyes. Profiles are 0 at the corners and 1 in the middle of each lid.
    prof = np.sin(np.linspace(0, np.pi, 9))[1:-1]
    for e, (upper, lower) in enumerate(((fa.EYE_R_UPPER, fa.EYE_R_LOWER), (fa.EYE_L_UPPER, fa.EYE_L_LOWER))):
        up, lo = upper[1:-1], lower[1:-1]
        gap = b.pair_gap(up, lo)
        b.add("upper_lid_raise", up, 0.0, -0.075 * prof)  # the white shows above the iris
        b.add("cheek_raise", lo, 0.0, -0.035 * prof)
        b.add("lid_tighten", lo, 0.0, -0.04 * prof)
        b.add("lid_tighten", up, 0.0, 0.025 * prof)
        # Blink: everything inside the eye converges on a closing line 80% of the way down.
        b.add("blink", up, 0.0, 0.8 * gap)
        b.add("blink", lo, 0.0, -0.2 * gap)
        iris = fa.IRIS_R if e == 0 else fa.IRIS_L
        mid_up, mid_lo = b.v[b.pos[upper[4]]], b.v[b.pos[lower[4]]]
        close = mid_up + 0.8 * (mid_lo - mid_up)
        b.add("blink", iris, 0.0, 0.97 * (close - b.v[b.k(iris)]))
        b.add("gaze_x", iris, max(eye_half[e, 0] - 0.8 * eye_half[e, 2], 0.02), 0.0)
        b.add("gaze_y", iris, 0.0, 0.45 * eye_half[e, 1])
    b.add("blink", _CREASE, 0.0, 0.02)
    b.add("upper_lid_raise", _CREASE, 0.0, -0.03)
    b.add("cheek_raise", _CHEEKS + _UNDER_EYE, 0.0, -0.05)
    return b.to_image()


def smooth_np(x: F64, lo: float, hi: float) -> F64:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    out: F64 = t * t * (3 - 2 * t)
    return out


def _tps_kernel(q: F64, p: F64) -> F64:
    r2 = ((q[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    out: F64 = 0.5 * r2 * np.log(np.maximum(r2, 1e-12))
    return out


@dataclass(frozen=True)
class Framing:
    """The portrait region shown: source pixel (x0, y0) at the output's top-left, `scale` source px per output px."""

    x0: float
    y0: float
    scale: float

    def to_source(self, out_xy: F64) -> F64:
        out: F64 = np.array([self.x0, self.y0]) + (out_xy + 0.5) * self.scale - 0.5
        return out


def frame_face(portrait: fa.Portrait, width: int, height: int) -> Framing:
    """A crop with the output's aspect holding the whole face with headroom, inside the image when possible."""
    x0, y0, x1, y1 = (float(v) for v in portrait.bbox)
    fh = y1 - y0
    ch = 2.6 * fh
    cw = ch * width / height
    fit = min(portrait.width / cw, portrait.height / ch, 1.0)
    cw, ch = cw * fit, ch * fit
    cx = 0.5 * (x0 + x1)
    cy = 0.5 * (y0 + y1) + 0.18 * fh  # eyes a little above the middle, shoulders in view
    left = min(max(cx - cw / 2, 0.0), max(portrait.width - cw, 0.0))
    top = min(max(cy - ch / 2, 0.0), max(portrait.height - ch, 0.0))
    return Framing(left, top, cw / width)


class FaceRenderer:
    """One portrait at one output size on one device. `render` maps (B, SIZE) parameters to (B, 3, H, W) uint8."""

    def __init__(self, portrait: fa.Portrait, width: int, height: int, device: str | torch.device = "cpu") -> None:
        if width < 16 or height < 16:
            raise BadFaceParams(f"output size {width}x{height} is too small")
        self.portrait, self.width, self.height = portrait, width, height
        self.device = torch.device(device)
        self.framing = frame_face(portrait, width, height)
        lm = portrait.landmarks.astype(np.float64)
        iod = portrait.iod
        self.iod_out = iod / self.framing.scale
        pts3, head_w, breath_w = self._control_points(lm)
        self._src = pts3[:, :2]
        eye_half = self._eye_sizes(lm, iod)
        close = max(portrait.mouth_gap - RELAXED_GAP, 0.0) if portrait.mouth_open else 0.0
        basis = _build_basis(lm, iod, eye_half, pts3[N_FACE : N_FACE + N_HALO, :2], portrait.rest_smile, close)

        dev, f32 = self.device, torch.float32
        self.basis = torch.tensor(basis.reshape(len(ACTS), -1), dtype=f32, device=dev)
        self.pts3 = torch.tensor(pts3, dtype=f32, device=dev)
        face = lm[list(fa.FACE_OVAL), :3]
        face_w = float(np.ptp(face[:, 0]))
        self.pivot = torch.tensor(
            [face[:, 0].mean(), face[:, 1].mean(), float(np.median(face[:, 2])) + 0.35 * face_w], dtype=f32, device=dev
        )
        self.head_w = torch.tensor(head_w, dtype=f32, device=dev)
        self.breath = torch.tensor(breath_w * BREATH_LIFT * iod, dtype=f32, device=dev)
        self.lo = torch.tensor(fp.LOW, device=dev)
        self.hi = torch.tensor(fp.HIGH, device=dev)

        # Coarse grid: about one node per two source pixels, where the warp field can bend.
        step = max(2, min(8, round(2.0 / self.framing.scale)))
        self.gw, self.gh = math.ceil((width - 1) / step) + 1, math.ceil((height - 1) / step) + 1
        gx, gy = np.linspace(0, width - 1, self.gw), np.linspace(0, height - 1, self.gh)
        nodes = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
        src_nodes = self.framing.to_source(nodes)
        g = self._tps_operator(src_nodes, iod) * self._still_background(src_nodes, lm)[:, None]
        self.g = torch.tensor(g, dtype=f32, device=dev)
        self.nodes = torch.tensor(src_nodes.reshape(self.gh, self.gw, 2), dtype=f32, device=dev)
        lo_src, hi_src = src_nodes.min(0), src_nodes.max(0)
        self.coarse_lo = torch.tensor(lo_src, dtype=f32, device=dev)
        self.coarse_span = torch.tensor(np.maximum(hi_src - lo_src, 1e-6), dtype=f32, device=dev)
        self.max_step = 0.25 * iod
        self.step_src = self.coarse_span / torch.tensor([self.gw - 1, self.gh - 1], dtype=f32, device=dev)
        img = torch.from_numpy(np.array(portrait.image)).to(dev).permute(2, 0, 1).float()
        self.image = img[None].contiguous()
        self.src_size = torch.tensor([portrait.width, portrait.height], dtype=f32, device=dev)
        self.out_origin = torch.tensor([self.framing.x0, self.framing.y0], dtype=f32, device=dev)

        self.mouth_box = self._box(0.5 * (lm[13, :2] + lm[14, :2]), (-1.45, 1.45), (-1.1, 1.6))
        self.eye_boxes = [self._box(lm[c, :2], (-0.95, 0.95), (-0.85, 0.85)) for c in (fa.IRIS_R[0], fa.IRIS_L[0])]
        self.gap_rest = (portrait.mouth_gap if portrait.mouth_open else 0.0) * self.iod_out
        self.gap_own = portrait.mouth_gap * self.iod_out  # the lips' gap as the portrait has it
        self.teeth = torch.tensor(portrait.teeth_rgb, dtype=f32, device=dev)
        self.lids = torch.tensor(portrait.lid_rgb, dtype=f32, device=dev)
        lip_pt = 0.5 * (lm[14, :2] + lm[17, :2])  # the middle of the lower lip's red
        lip = fa._patch_median(portrait.image, float(lip_pt[0]), float(lip_pt[1]), max(int(0.02 * iod), 1))
        self.lip_rgb = torch.tensor(lip * 0.92, dtype=f32, device=dev)  # the seam lies a little in shadow
        self.lip_full = torch.tensor(lip, dtype=f32, device=dev)
        k = {idx: i for i, idx in enumerate(CONTROL)}
        # The upper teeth sit on the skull: they are placed in the head's frame (nose and eye corners), so the
        # lips slide over them. The portrait's own teeth are used where it shows them.
        rest_out = (self.pts3[:, :2] - self.out_origin + 0.5) / self.framing.scale - 0.5
        self.k_anchor = torch.tensor([k[i] for i in _HEAD_ANCHOR], device=dev)
        self.k_eye_line = torch.tensor([k[133], k[362]], device=dev)
        self.anchor_rest = rest_out[self.k_anchor].mean(0)
        eye_line = rest_out[k[362]] - rest_out[k[133]]
        self.eye_angle_rest = float(torch.atan2(eye_line[1], eye_line[0]))
        self.teeth_frame = Frame(
            rest_out[[k[i] for i in fa.LIP_INNER_UPPER]], rest_out[[k[i] for i in fa.LIP_INNER_LOWER]]
        )
        self.own_teeth = portrait.teeth_visible
        self.upper_rest = float(rest_out[k[13], 1] - rest_out[self.k_anchor, 1].mean())
        self.k_inner_up = torch.tensor([k[i] for i in fa.LIP_INNER_UPPER], device=dev)
        self.k_inner_lo = torch.tensor([k[i] for i in fa.LIP_INNER_LOWER], device=dev)
        self.k_eyes = [
            (torch.tensor([k[i] for i in u], device=dev), torch.tensor([k[i] for i in lo], device=dev))
            for u, lo in ((fa.EYE_R_UPPER, fa.EYE_R_LOWER), (fa.EYE_L_UPPER, fa.EYE_L_LOWER))
        ]
        self.k_gap = torch.tensor([k[13], k[14]], device=dev)
        self.feather = max(1.0, 0.5 / self.framing.scale)

    # --- per-portrait preparation -----------------------------------------------------------------------------

    def _control_points(self, lm: F64) -> tuple[F64, F64, F64]:
        """(K, 3) source points, per-point head-motion weight and breath weight, in the order face, halo, anchors."""
        p = self.portrait
        face = lm[list(CONTROL), :3]
        oval = lm[list(fa.FACE_OVAL), :3]
        centre = oval[:, :2].mean(0)
        half = 0.5 * np.ptp(oval[:, :2], axis=0)
        rel = oval[:, :2] - centre
        up = rel[:, 1] < 0  # above the face centre: hair, so the halo reaches further
        grow = np.where(up, 1.38, 1.15)[:, None]
        halo_xy = centre + rel * grow
        pivot_z = float(np.median(oval[:, 2])) + 0.35 * 2 * half[0]
        halo = np.concatenate([halo_xy, np.full((N_HALO, 1), pivot_z)], 1)
        halo_w = np.where(up, 1.0, np.where(rel[:, 1] > 0.5 * half[1], 0.35, 0.8))
        ang = np.linspace(0, 2 * np.pi, N_RING, endpoint=False)
        ring = centre + np.stack([np.cos(ang) * 2.2 * half[0], np.sin(ang) * 1.9 * half[1]], 1)
        margin = 2.0
        ring = np.clip(ring, margin, [p.width - 1 - margin, p.height - 1 - margin])
        t = np.linspace(0, 1, N_BORDER_SIDE)[:-1]
        w, h = p.width - 1, p.height - 1
        border = np.concatenate(
            [np.stack([t * w, 0 * t], 1), np.stack([w + 0 * t, t * h], 1), np.stack([w - t * w, h + 0 * t], 1),
             np.stack([0 * t, h - t * h], 1)]
        )  # fmt: skip
        anchors = np.concatenate([ring, border])
        anchors3 = np.concatenate([anchors, np.zeros((N_ANCHOR, 1))], 1)
        # Breath lifts the head and the shoulders (ring points below the chin), not the background.
        chin_y = float(oval[:, 1].max())
        shoulders = (ring[:, 1] > chin_y + 0.2 * half[1]).astype(np.float64)
        breath_w = np.concatenate([np.ones(N_FACE), halo_w, shoulders, np.zeros(len(border))])
        head_w = np.concatenate([np.ones(N_FACE), halo_w, np.zeros(N_ANCHOR)])
        pts = np.concatenate([face, halo, anchors3])
        return pts, head_w, breath_w

    @staticmethod
    def _eye_sizes(lm: F64, iod: float) -> F64:
        """Per eye: half-width, half-height of the opening and iris radius, in iod units."""
        out = []
        for upper, lower, iris in ((fa.EYE_R_UPPER, fa.EYE_R_LOWER, fa.IRIS_R), (fa.EYE_L_UPPER, fa.EYE_L_LOWER,
                                                                                 fa.IRIS_L)):  # fmt: skip
            hw = 0.5 * float(np.linalg.norm(lm[upper[-1], :2] - lm[upper[0], :2]))
            hh = 0.5 * float(np.linalg.norm(lm[lower[4], :2] - lm[upper[4], :2]))
            r = float(np.linalg.norm(lm[list(iris[1:]), :2] - lm[iris[0], :2], axis=1).mean())
            out.append([hw / iod, hh / iod, r / iod])
        return np.array(out)

    @staticmethod
    def _still_background(nodes: F64, lm: F64) -> F64:
        """Per node 1 near the head, 0 far from it: a spline's small ripples never reach the background."""
        oval = lm[list(fa.FACE_OVAL), :2]
        centre, half = oval.mean(0), 0.5 * np.ptp(oval, axis=0)
        rel = (nodes - centre) / half
        rel[:, 1] /= np.where(rel[:, 1] > 0, 1.5, 1.0)  # reaching lower: neck and the top of the shoulders
        out: F64 = 1 - smooth_np(np.sqrt((rel**2).sum(1)), 1.7, 2.15)
        return out

    def _tps_operator(self, query: F64, iod: float) -> F64:
        """G (N, K): the thin-plate-spline field at `query` is G @ (control-point displacements)."""
        c = self._src.mean(0)
        p = (self._src - c) / iod
        q = (query - c) / iod
        k = len(p)
        lmat = np.zeros((k + 3, k + 3))
        lmat[:k, :k] = _tps_kernel(p, p) + 1e-4 * np.eye(k)  # a whisker of smoothing keeps near-duplicates solvable
        lmat[:k, k] = 1.0
        lmat[:k, k + 1 :] = p
        lmat[k, :k] = 1.0
        lmat[k + 1 :, :k] = p.T
        inv = np.linalg.inv(lmat)[:, :k]
        out: F64 = np.empty((len(q), k))
        for a in range(0, len(q), 8192):  # bounded memory at 4K
            qa = q[a : a + 8192]
            feats = np.concatenate([_tps_kernel(qa, p), np.ones((len(qa), 1)), qa], 1)
            out[a : a + 8192] = feats @ inv
        return out

    def _box(self, src_centre: F64, xr: tuple[float, float], yr: tuple[float, float]) -> tuple[int, int, int, int]:
        """A fixed output box (x0, y0, x1, y1) around a feature, wide enough for its motion, clipped to the frame."""
        c = (src_centre - np.array([self.framing.x0, self.framing.y0]) + 0.5) / self.framing.scale - 0.5
        x0 = int(np.clip(np.floor(c[0] + xr[0] * self.iod_out), 0, self.width - 1))
        x1 = int(np.clip(np.ceil(c[0] + xr[1] * self.iod_out), x0 + 1, self.width))
        y0 = int(np.clip(np.floor(c[1] + yr[0] * self.iod_out), 0, self.height - 1))
        y1 = int(np.clip(np.ceil(c[1] + yr[1] * self.iod_out), y0 + 1, self.height))
        return x0, y0, x1, y1

    # --- per frame --------------------------------------------------------------------------------------------

    def check(self, params: Tensor | npt.NDArray[np.float32]) -> Tensor:
        """Parameters as a (B, SIZE) float32 tensor on the device, clamped to range; `BadFaceParams` otherwise."""
        t = torch.as_tensor(params)
        if t.ndim != 2 or t.shape[1] != fp.SIZE or t.shape[0] < 1:
            raise BadFaceParams(f"face parameters must have shape (frames, {fp.SIZE}), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise BadFaceParams(f"face parameters must be floating point, got {t.dtype}")
        t = t.to(device=self.device, dtype=torch.float32)
        if t.device.type == "cpu" and not bool(torch.isfinite(t).all()):
            raise BadFaceParams("face parameters hold NaN or infinity")
        # On the GPU a host check would stall the stream: non-finite values are zeroed instead (rest face).
        t = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
        return torch.clamp(t, self.lo, self.hi)

    def activations(self, p: Tensor) -> Tensor:
        def col(name: str) -> Tensor:
            return p[:, _P[name]]

        a = torch.zeros(p.shape[0], len(ACTS), device=p.device)
        for name in ACTS:
            if name in _P:
                a[:, _A[name]] = col(name)
        a[:, _A["press_x_jaw"]] = col("lip_press") * col("jaw_open")
        a[:, _A["smirk_pos"]] = col("smirk").clamp_min(0)
        a[:, _A["smirk_neg"]] = (-col("smirk")).clamp_min(0)
        a[:, _A["upper_lid_raise"]] = col("upper_lid_raise") * (1 - col("blink"))
        # A closed eye stays closed however tight or wide the lids are asked to be.
        a[:, _A["lid_tighten"]] = col("lid_tighten") * (1 - col("blink"))
        a[:, _A["cheek_raise"]] = col("cheek_raise")
        # The portrait's own smile and lip gap are relaxed at rest; a smile, or a mouth shape that sets the lips
        # itself (pressed, tucked, tightened, teeth bared), takes the relaxation back instead of adding to it.
        a[:, _A["relax_corners"]] = (1 - col("lip_corner_up")).clamp_min(0)
        keep = (1 - col("lip_press")) * (1 - col("lower_lip_tuck")) * (1 - col("lip_tighten"))
        a[:, _A["relax_lips"]] = (
            keep * (1 - col("teeth_show")) * (1 - col("upper_lip_raise")) * a[:, _A["relax_corners"]]
        )
        return a

    def displacements(self, p: Tensor) -> Tensor:
        """(B, K, 2) source-pixel displacement of every control point."""
        b = p.shape[0]
        d_expr = (self.activations(p) @ self.basis).view(b, N_CTRL, 2)
        rad = p[:, [_P["head_pitch"], _P["head_yaw"], _P["head_roll"]]] * (math.pi / 180.0)
        c, s = torch.cos(rad), torch.sin(rad)
        one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
        rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(b, 3, 3)
        ry = torch.stack([c[:, 1], zero, -s[:, 1], zero, one, zero, s[:, 1], zero, c[:, 1]], 1).view(b, 3, 3)
        rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(b, 3, 3)
        rot = rz @ ry @ rx
        moved = self.pts3[None].clone().expand(b, -1, -1).clone()
        moved[..., :2] += d_expr
        turned = (moved - self.pivot) @ rot.transpose(1, 2) + self.pivot
        rigid = (turned[..., :2] - moved[..., :2]) * self.head_w[None, :, None]
        lift = p[:, _P["breath"], None] * self.breath[None, :]
        d = d_expr + rigid
        d[..., 1] -= lift
        return d

    def _source_map(self, d: Tensor, iterations: int = 3) -> Tensor:
        """(B, gh, gw, 2) source pixel for each coarse output node, by fixed-point inversion of the forward field."""
        b = d.shape[0]
        field = torch.matmul(self.g, d).view(b, self.gh, self.gw, 2)
        fimg = field.permute(0, 3, 1, 2)
        # Newton on x + field(x) = y, not plain fixed-point iteration: a closing eyelid or a dropping jaw compresses
        # the field with a slope near -1, where p - field(x) oscillates instead of converging.
        pad = nnf.pad(fimg, (1, 1, 1, 1), mode="replicate")
        dfx = (pad[:, :, 1:-1, 2:] - pad[:, :, 1:-1, :-2]) / (2 * self.step_src[0])
        dfy = (pad[:, :, 2:, 1:-1] - pad[:, :, :-2, 1:-1]) / (2 * self.step_src[1])
        stack = torch.cat([fimg, dfx, dfy], 1)  # field (2), d/dx (2), d/dy (2)
        x = self.nodes - field
        for _ in range(iterations):
            g = (x - self.coarse_lo) / self.coarse_span * 2 - 1
            s = nnf.grid_sample(stack, g, mode="bilinear", padding_mode="border", align_corners=True)
            s = s.permute(0, 2, 3, 1)
            rx, ry = x[..., 0] + s[..., 0] - self.nodes[..., 0], x[..., 1] + s[..., 1] - self.nodes[..., 1]
            a, c = 1 + s[..., 2], s[..., 3]  # J = I + dF: [[a, bb], [c, dd]] with columns d/dx, d/dy
            bb, dd = s[..., 4], 1 + s[..., 5]
            det = a * dd - bb * c
            ok = det > 0.2  # near a fold Newton would leap: take a damped fixed-point step there instead
            safe = torch.where(ok, det, torch.ones_like(det))
            sx = torch.where(ok, (dd * rx - bb * ry) / safe, 0.5 * rx)
            sy = torch.where(ok, (a * ry - c * rx) / safe, 0.5 * ry)
            step = torch.stack([sx, sy], -1)
            norm = step.norm(dim=-1, keepdim=True)
            x = x - step * torch.clamp(self.max_step / norm.clamp_min(1e-6), max=1.0)
        return x

    def render(self, params: Tensor | npt.NDArray[np.float32]) -> Tensor:
        """(B, SIZE) parameters -> (B, 3, H, W) uint8 RGB frames on the renderer's device."""
        p = self.check(params)
        with torch.inference_mode():
            return self._render(p)

    def _render(self, p: Tensor) -> Tensor:
        b = p.shape[0]
        d = self.displacements(p)
        x = self._source_map(d)
        norm = (x + 0.5) / self.src_size * 2 - 1  # grid_sample's align_corners=False convention
        grid = nnf.interpolate(norm.permute(0, 3, 1, 2), size=(self.height, self.width), mode="bilinear",
                               align_corners=True).permute(0, 2, 3, 1)  # fmt: skip
        out = nnf.grid_sample(self.image.expand(b, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                              align_corners=False)  # fmt: skip
        pts = (self._src_t()[None] + d - self.out_origin + 0.5) / self.framing.scale - 0.5  # control points, output px
        self._mouth(out, p, pts)
        self._eyelids(out, p, pts)
        return out.clamp_(0, 255).round_().to(torch.uint8)

    def _src_t(self) -> Tensor:
        return self.pts3[:, :2]

    def _needed(self, weight: Tensor) -> bool:
        # Skipping an idle region saves CPU time; on the GPU the check would sync, so the region is always drawn.
        return self.device.type != "cpu" or bool((weight > 0).any())

    def _pixels(self, box: tuple[int, int, int, int]) -> tuple[Tensor, Tensor]:
        x0, y0, x1, y1 = box
        ys = torch.arange(y0, y1, device=self.device, dtype=torch.float32)
        xs = torch.arange(x0, x1, device=self.device, dtype=torch.float32)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return gx, gy

    def _mouth(self, out: Tensor, p: Tensor, pts: Tensor) -> None:
        gap_now = pts[:, self.k_gap[1], 1] - pts[:, self.k_gap[0], 1]  # signed: a tucked lip goes negative
        iod = self.iod_out
        # Drawn wherever the lips are not where the portrait has them: the upper teeth are the portrait's own (in
        # the head's frame), so fading in over a small change of the gap shows no seam.
        lip_up = pts[:, self.k_gap[0], 1] - pts[:, self.k_anchor, 1].mean(1) - self.upper_rest
        weight = smoothstep((gap_now - self.gap_own).abs() + lip_up.abs(), 0.004 * iod, 0.025 * iod)
        relaxed = min(self.gap_rest, RELAXED_GAP * iod)
        if not self._needed(weight):
            return
        x0, y0, x1, y1 = self.mouth_box
        gx, gy = self._pixels(self.mouth_box)
        m = Between(pts[:, self.k_inner_up], pts[:, self.k_inner_lo], gx, gy)
        colour = mouth_interior(
            m,
            iod,
            self._upper_teeth(m, p, pts, gx, gy),
            self.teeth,
            self.lip_full,
            iod * (0.01 + 0.06 * p[:, _P["jaw_open"]] + 0.06 * p[:, _P["teeth_show"]]),
            p[:, _P["tongue_show"]],
        )
        alpha = m.alpha(self.feather, 0.0) * weight[:, None]
        region = out[:, :, y0:y1, x0:x1]
        a = m.image(alpha)[:, None]
        region.mul_(1 - a).add_(m.image(colour) * a)
        # Lips sealed (tighter than relaxed): the squeezed teeth could still peek through as a bright thread just
        # outside the inner-lip line, so the seam is painted in lip colour with a soft shadow where the lips meet.
        if relaxed <= 0:
            return
        seal = 1.0 - smoothstep(gap_now, 0.2 * relaxed, 0.7 * relaxed)
        if self._needed(seal):
            mid = 0.5 * (m.t_up + m.t_lo)
            line = torch.exp(-(((m.t - mid) / (0.006 * iod + 0.4)) ** 2))
            lip = self.lip_rgb[None, :, None] * (1.0 - 0.35 * line)[:, None, :]
            sa = m.image(m.alpha(self.feather, -1.0 * self.feather - 0.015 * iod) * seal[:, None])[:, None]
            region.mul_(1 - sa).add_(m.image(lip) * sa)

    def _upper_teeth(self, m: Between, p: Tensor, pts: Tensor, gx: Tensor, gy: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha (B, M), colour (B, 3, M)) of the upper teeth, fixed in the head's frame."""
        b = p.shape[0]
        anchor = pts[:, self.k_anchor].mean(1)  # (B, 2)
        eye = pts[:, self.k_eye_line[1]] - pts[:, self.k_eye_line[0]]
        ang = torch.atan2(eye[:, 1], eye[:, 0]) - self.eye_angle_rest
        c, s = torch.cos(ang)[:, None], torch.sin(ang)[:, None]
        dx = gx.reshape(1, -1) - anchor[:, :1]
        dy = gy.reshape(1, -1) - anchor[:, 1:]
        # Back to the rest frame: rotate by -angle about the anchor.
        qx = c * dx + s * dy + self.anchor_rest[0]
        qy = -s * dx + c * dy + self.anchor_rest[1]
        f = self.teeth_frame
        rx, ry = qx - f.mid[0], qy - f.mid[1]
        s_r = rx * f.ux[0] + ry * f.ux[1]
        t_r = rx * f.nx[0] + ry * f.nx[1]
        t_up, t_lo = f.curves(s_r)
        iod = self.iod_out
        if not self.own_teeth:
            edge = t_up + UPPER_TEETH * iod * (1.0 - 0.35 * (s_r / f.half) ** 2)
            return synthetic_upper_teeth(s_r / f.half, t_r, edge, iod, self.teeth)
        # The portrait's own teeth: sample between its rest lips (clamped inside, so a raised lip shows the top of
        # the teeth continued, not the lip), down to the lower lip's rest line.
        inset = 0.6 + 0.01 * iod
        ts = torch.minimum(torch.maximum(t_r, t_up + inset), t_lo - inset)
        ox = f.mid[0] + s_r * f.ux[0] + ts * f.nx[0]
        oy = f.mid[1] + s_r * f.ux[1] + ts * f.nx[1]
        sx = self.framing.x0 + (ox + 0.5) * self.framing.scale - 0.5
        sy = self.framing.y0 + (oy + 0.5) * self.framing.scale - 0.5
        grid = torch.stack([(sx + 0.5) / self.src_size[0] * 2 - 1, (sy + 0.5) / self.src_size[1] * 2 - 1], -1)
        _, bh, bw = m.shape
        col = nnf.grid_sample(self.image.expand(b, -1, -1, -1), grid.view(b, bh, bw, 2), mode="bilinear",
                              padding_mode="border", align_corners=False)  # fmt: skip
        along = torch.minimum(s_r - f.su[0], f.su[-1] - s_r)
        a = smoothstep(t_lo - inset - t_r, -0.7, 0.7) * smoothstep(along, 0.0, 0.02 * iod)
        return a, col.reshape(b, 3, -1)

    def _eyelids(self, out: Tensor, p: Tensor, pts: Tensor) -> None:
        weight = smoothstep(p[:, _P["blink"]], 0.55, 0.92)
        if not self._needed(weight):
            return
        for e, (box, (ku, kl)) in enumerate(zip(self.eye_boxes, self.k_eyes, strict=True)):
            x0, y0, x1, y1 = box
            gx, gy = self._pixels(box)
            eye = Between(pts[:, ku], pts[:, kl], gx, gy)
            colour = closed_lid(eye, self.iod_out, self.lids[e][None].expand(p.shape[0], -1))
            a = eye.image(eye.alpha(self.feather, -0.6 * self.feather) * weight[:, None])[:, None]
            region = out[:, :, y0:y1, x0:x1]
            region.mul_(1 - a).add_(eye.image(colour) * a)


def render_many(jobs: Sequence[tuple[FaceRenderer, Tensor | npt.NDArray[np.float32]]]) -> list[Tensor]:
    """Render several sessions' frames in one call (each renderer's frames batched, no host sync between them)."""
    checked = [(r, r.check(p)) for r, p in jobs]  # validate everything before any work
    with torch.inference_mode():
        return [r._render(p) for r, p in checked]


def encode_jpeg(frames: Tensor, quality: int = 80) -> list[bytes]:
    """(B, 3, H, W) uint8 RGB frames -> JPEG bytes each: nvJPEG on a CUDA tensor (torchvision), OpenCV on CPU."""
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
        raise BadFaceParams(f"frames must be (B, 3, H, W) uint8, got {tuple(frames.shape)} {frames.dtype}")
    if frames.is_cuda:
        try:
            from torchvision.io import encode_jpeg as tv_encode
        except ImportError:
            frames = frames.cpu()
        else:
            encoded = tv_encode(list(frames), quality=quality)
            return [bytes(e.cpu().numpy().tobytes()) for e in encoded]
    import cv2

    hwc = frames.permute(0, 2, 3, 1).contiguous().numpy()
    out = []
    for img in hwc:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise BadFaceParams("JPEG encoding failed")
        out.append(buf.tobytes())
    return out
