"""Portrait assets: everything the renderer needs from a portrait, measured once and cached by content.

`prepare_portrait` reads a PNG/JPEG, finds exactly one face with MediaPipe FaceMesh (478 landmarks with irises)
and derives the regions the renderer animates: lip rings, eye rings, irises, brows, face oval, the mouth's own
state at rest (open with teeth showing, or closed) and the skin colour of the eyelids. All lengths the renderer
uses are in units of the interocular distance (`iod`, pixels between the iris centres) so one parameter value
means the same movement on any face at any resolution. The result is cached as `.npz` keyed by the image's
sha256, so a restart does not run the face mesh again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestrator.errors import BadPortrait
from orchestrator.signal.imaging import UnreadableImage, decode_rgb

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

CACHE_VERSION = 2  # bump when the derived arrays change meaning
MIN_SIDE, MAX_SIDE = 128, 4096
N_LANDMARKS = 478

# MediaPipe FaceMesh topology. "Right" is the subject's right eye, i.e. the one on the image's left.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
             149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)  # fmt: skip
# Rings run corner -> along the upper lip -> other corner -> back along the lower lip.
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
LIPS_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
# Upper and lower inner lip from the image-left corner to the image-right corner (shared corners).
LIP_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIP_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
LIP_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIP_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
# Eyelids from the image-left corner to the image-right corner, upper and lower paired point by point.
EYE_R_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
EYE_R_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
EYE_L_UPPER = (362, 398, 384, 385, 386, 387, 388, 466, 263)
EYE_L_LOWER = (362, 382, 381, 380, 374, 373, 390, 249, 263)
IRIS_R = (468, 469, 470, 471, 472)  # centre first
IRIS_L = (473, 474, 475, 476, 477)
BROW_R = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55)  # upper edge outer -> inner, then lower edge
BROW_L = (300, 293, 334, 296, 336, 276, 283, 282, 295, 285)

# A relaxed closed mouth has its corners about level with the line where the lips meet (within ~2% of the iod
# either way); only a lift beyond that counts as the portrait's own smile.
SMILE_DEAD_ZONE = 0.02


@dataclass(frozen=True, eq=False)
class Portrait:
    """A prepared portrait. Coordinates are image pixels (x right, y down); z is MediaPipe depth in pixels."""

    image: U8  # (H, W, 3) RGB
    sha256: str
    landmarks: F32  # (478, 3)
    bbox: F32  # (4,) x0, y0, x1, y1 of the face oval
    face_oval: F32  # (36, 2)
    lips_outer: F32  # (20, 2) ring
    lips_inner: F32  # (20, 2) ring
    eyes: F32  # (2, 16, 2): [right, left] rings, upper lid then lower lid (corners shared), image-left first
    iris_centres: F32  # (2, 2)
    iris_radius: F32  # (2,)
    brows: F32  # (2, 10, 2)
    iod: float  # interocular distance in pixels: the unit of every displacement
    mouth_gap: float  # inner-lip gap at the centre at rest, in iod units
    mouth_open: bool  # the rest mouth shows its interior (teeth) between the lips
    teeth_rgb: F32  # (3,) colour of the portrait's own teeth, or a lit off-white estimate if the mouth is shut
    teeth_visible: bool  # the rest mouth shows teeth (bright pixels between the lips), not a dark opening
    rest_smile: float  # how far the mouth corners sit above the lips' meeting line at rest, iod, 0 = no smile
    lid_rgb: F32  # (2, 3) upper-eyelid skin colour per eye

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def _read_image(data: bytes, name: str) -> U8:
    def check(fmt: str | None, w: int, h: int) -> None:
        if fmt not in ("PNG", "JPEG"):
            raise BadPortrait(f"portrait {name} is {fmt or 'not an image'}; use a PNG or JPEG file")
        if min(w, h) < MIN_SIDE or max(w, h) > MAX_SIDE:
            raise BadPortrait(f"portrait {name} is {w}x{h}; each side must be {MIN_SIDE}..{MAX_SIDE} pixels")

    try:
        return decode_rgb(data, check)
    except UnreadableImage as exc:
        raise BadPortrait(f"portrait {name} cannot be read ({exc}); use an intact PNG or JPEG file") from exc


def _detect_landmarks(image: U8) -> list[F32]:
    """Every face's 478 landmarks in pixels (z scaled like x). Separate so the cache test can prove it is skipped."""
    import mediapipe as mp

    h, w = image.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, refine_landmarks=True, max_num_faces=2, min_detection_confidence=0.5
    ) as mesh:
        result = mesh.process(image)
    faces: list[F32] = []
    for face in result.multi_face_landmarks or []:
        pts = np.array([[p.x * w, p.y * h, p.z * w] for p in face.landmark], dtype=np.float32)
        faces.append(pts)
    return faces


def _patch_median(image: U8, x: float, y: float, r: int) -> F32:
    h, w = image.shape[:2]
    xi, yi = round(x), round(y)
    patch = image[max(yi - r, 0) : min(yi + r + 1, h), max(xi - r, 0) : min(xi + r + 1, w)].reshape(-1, 3)
    out: F32 = np.median(patch, axis=0).astype(np.float32)
    return out


def _inside_polygon(poly: F32, xs: F32, ys: F32) -> npt.NDArray[np.bool_]:
    """Even-odd rule, vectorised over points (small polygons only)."""
    inside = np.zeros(xs.shape, dtype=bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
        crosses = (ay > ys) != (by > ys)
        xcross = ax + (ys - ay) * (bx - ax) / np.where(by == ay, 1e-9, by - ay)
        inside ^= crosses & (xs < xcross)
    return inside


def _teeth_colour(image: U8, inner: F32, iod: float, open_: bool) -> tuple[F32, bool]:
    """The portrait's own teeth (the brightest pixels between the lips) and True, else an off-white lit like the
    skin and False."""
    if open_:
        x0, y0 = np.floor(inner.min(0)).astype(int)
        x1, y1 = np.ceil(inner.max(0)).astype(int)
        ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1].astype(np.float32)
        mask = _inside_polygon(inner, xs + 0.5, ys + 0.5)
        h, w = image.shape[:2]
        mask &= (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        if mask.sum() >= 6:
            pix = image[ys[mask].astype(int), xs[mask].astype(int)].astype(np.float32)
            lum = pix.mean(1)
            bright = pix[lum >= np.quantile(lum, 0.6)]
            col: F32 = np.median(bright, axis=0).astype(np.float32)
            if col.mean() > 90:  # otherwise the "open" mouth showed a dark cavity, not teeth
                return col, True
    centre = inner.mean(0)
    skin = _patch_median(image, centre[0], centre[1] - 0.45 * iod, max(int(0.05 * iod), 1))
    # Teeth are about as bright as the lit skin around them but far less saturated.
    lum = float(skin.max())
    base: F32 = np.array([0.93, 0.9, 0.84], dtype=np.float32) * min(max(lum, 150.0), 245.0)
    return base, False


def rest_smile(xy: F32, iod: float) -> float:
    """The portrait's own smile: mean height of the mouth corners (61, 291) above the middle of the inner-lip
    gap (13, 14), measured across the face (perpendicular to the eye line), in iod, less the dead zone."""
    ex = xy[IRIS_L[0]] - xy[IRIS_R[0]]
    ex = ex / max(float(np.linalg.norm(ex)), 1e-6)
    ey = np.array([-ex[1], ex[0]])
    v = xy.astype(np.float64) @ ey / iod
    lift = 0.5 * (v[13] + v[14]) - 0.5 * (v[61] + v[291])
    return float(np.clip(lift - SMILE_DEAD_ZONE, 0.0, 0.3))


def _derive(image: U8, lm: F32, sha: str) -> Portrait:
    xy = lm[:, :2]
    iris_c = np.stack([xy[IRIS_R[0]], xy[IRIS_L[0]]]).astype(np.float32)
    iris_r = np.array(
        [np.linalg.norm(xy[list(ring[1:])] - xy[ring[0]], axis=1).mean() for ring in (IRIS_R, IRIS_L)],
        dtype=np.float32,
    )
    iod = float(np.linalg.norm(iris_c[1] - iris_c[0]))
    oval = xy[list(FACE_OVAL)]
    bbox = np.concatenate([oval.min(0), oval.max(0)]).astype(np.float32)
    eyes = np.stack(
        [np.concatenate([xy[list(u)], xy[list(lo[1:-1])][::-1]]) for u, lo in ((EYE_R_UPPER, EYE_R_LOWER),
                                                                               (EYE_L_UPPER, EYE_L_LOWER))]
    ).astype(np.float32)  # fmt: skip
    inner = xy[list(LIPS_INNER)].astype(np.float32)
    gap = float(np.linalg.norm(xy[14] - xy[13])) / iod
    mouth_open = gap > 0.06
    teeth_rgb, teeth_visible = _teeth_colour(image, inner, iod, mouth_open)
    lid = []
    for upper, brow in ((EYE_R_UPPER, BROW_R), (EYE_L_UPPER, BROW_L)):
        lid_pt = xy[upper[4]]
        brow_pt = xy[list(brow[5:])].mean(0)
        p = lid_pt + 0.35 * (brow_pt - lid_pt)  # on the lid skin, below the crease and clear of the lashes
        lid.append(_patch_median(image, p[0], p[1], max(int(0.03 * iod), 1)))
    return Portrait(
        image=image,
        sha256=sha,
        landmarks=lm.astype(np.float32),
        bbox=bbox,
        face_oval=oval.astype(np.float32),
        lips_outer=xy[list(LIPS_OUTER)].astype(np.float32),
        lips_inner=inner,
        eyes=eyes,
        iris_centres=iris_c,
        iris_radius=iris_r,
        brows=np.stack([xy[list(BROW_R)], xy[list(BROW_L)]]).astype(np.float32),
        iod=iod,
        mouth_gap=gap,
        mouth_open=mouth_open,
        teeth_rgb=teeth_rgb,
        teeth_visible=teeth_visible,
        rest_smile=rest_smile(xy, iod),
        lid_rgb=np.stack(lid).astype(np.float32),
    )


def _check_geometry(lm: F32, w: int, h: int, name: str) -> None:
    xy = lm[:, :2]
    iod = float(np.linalg.norm(xy[IRIS_L[0]] - xy[IRIS_R[0]]))
    if iod < 12:
        raise BadPortrait(f"the face in portrait {name} is too small ({iod:.0f} px between the eyes; need 12+)")
    lo, hi = xy.min(0), xy.max(0)
    if lo[0] < -0.05 * w or lo[1] < -0.05 * h or hi[0] > 1.05 * w or hi[1] > 1.05 * h:
        raise BadPortrait(f"the face in portrait {name} is cut off by the image border")


def _cache_path(cache_dir: Path, sha: str) -> Path:
    return cache_dir / f"portrait-v{CACHE_VERSION}-{sha}.npz"


def _save(path: Path, p: Portrait) -> None:
    arrays: dict[str, Any] = {f.name: getattr(p, f.name) for f in fields(p) if f.name not in ("image", "sha256")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file


def _load(path: Path, image: U8, sha: str) -> Portrait | None:
    try:
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
        return Portrait(
            image=image,
            sha256=sha,
            landmarks=data["landmarks"].astype(np.float32),
            bbox=data["bbox"].astype(np.float32),
            face_oval=data["face_oval"].astype(np.float32),
            lips_outer=data["lips_outer"].astype(np.float32),
            lips_inner=data["lips_inner"].astype(np.float32),
            eyes=data["eyes"].astype(np.float32),
            iris_centres=data["iris_centres"].astype(np.float32),
            iris_radius=data["iris_radius"].astype(np.float32),
            brows=data["brows"].astype(np.float32),
            iod=float(data["iod"]),
            mouth_gap=float(data["mouth_gap"]),
            mouth_open=bool(data["mouth_open"]),
            teeth_rgb=data["teeth_rgb"].astype(np.float32),
            teeth_visible=bool(data["teeth_visible"]),
            rest_smile=float(data["rest_smile"]),
            lid_rgb=data["lid_rgb"].astype(np.float32),
        )
    except (OSError, KeyError, ValueError):
        return None  # a stale or damaged cache entry is simply recomputed


def prepare_portrait(image_path: str | Path, cache_dir: str | Path) -> Portrait:
    """Read a portrait, find its single face and derive the renderer's regions (cached by the file's sha256).

    Raises `BadPortrait` for a missing, unreadable or truncated file, a side under 128 or over 4096 pixels, no
    face, several faces, or a face too small or cut off by the border.
    """
    path = Path(image_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadPortrait(f"portrait {path} cannot be read ({exc.strerror or exc})") from exc
    sha = hashlib.sha256(data).hexdigest()
    image = _read_image(data, str(path))
    cached = _cache_path(Path(cache_dir), sha)
    if cached.is_file() and (portrait := _load(cached, image, sha)) is not None:
        return portrait
    faces = _detect_landmarks(image)
    if not faces:
        raise BadPortrait(f"no face found in portrait {path}; use a frontal photo with one clearly visible face")
    if len(faces) > 1:
        raise BadPortrait(f"portrait {path} shows {len(faces)} faces; it must show exactly one")
    h, w = image.shape[:2]
    _check_geometry(faces[0], w, h, str(path))
    portrait = _derive(image, faces[0], sha)
    _save(cached, portrait)
    return portrait
