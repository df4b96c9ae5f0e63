"""The face renderer on the real astronaut portrait (CPU): framing, rest fidelity, motions, errors, JPEG."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from orchestrator.errors import BadFaceParams
from orchestrator.face import assets as fa
from orchestrator.face import params as fp
from orchestrator.face.render import CONTROL, FaceRenderer, encode_jpeg, render_many


@pytest.fixture(scope="module")
def portrait(tmp_path_factory: pytest.TempPathFactory) -> fa.Portrait:
    root = tmp_path_factory.mktemp("render")
    path = root / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return fa.prepare_portrait(path, root / "cache")


@pytest.fixture(scope="module")
def r512(portrait: fa.Portrait) -> FaceRenderer:
    return FaceRenderer(portrait, 512, 512, device="cpu")


def frame(r: FaceRenderer, **values: float) -> np.ndarray:
    out = r.render(fp.vector(**values)[None])
    return out[0].permute(1, 2, 0).numpy()


def to_out(r: FaceRenderer, xy: np.ndarray) -> np.ndarray:
    f = r.framing
    out: np.ndarray = (np.asarray(xy, np.float64) - [f.x0, f.y0] + 0.5) / f.scale - 0.5
    return out


def reference_crop(r: FaceRenderer) -> np.ndarray:
    """The portrait's crop resampled independently of the renderer (OpenCV, same pixel-centre convention)."""
    f = r.framing
    m = np.array([[f.scale, 0, f.x0 + 0.5 * f.scale - 0.5], [0, f.scale, f.y0 + 0.5 * f.scale - 0.5]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out: np.ndarray = cv2.warpAffine(
        r.portrait.image, m, (r.width, r.height), flags=flags, borderMode=cv2.BORDER_REPLICATE
    )
    return out


def luma(img: np.ndarray) -> np.ndarray:
    out: np.ndarray = img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return out


@pytest.mark.parametrize("size", [(512, 512), (1920, 1080)])
def test_rest_reproduces_the_portrait(portrait: fa.Portrait, size: tuple[int, int]) -> None:
    # A portrait without a smile of its own (here: the astronaut with her smile and lip gap declared away) is
    # shown exactly as it is at rest.
    plain = dataclasses.replace(portrait, rest_smile=0.0, mouth_open=False)
    r = r512_or(plain, size)
    out = r.render(fp.rest(1))
    assert out.shape == (1, 3, size[1], size[0]) and out.dtype == torch.uint8
    got = out[0].permute(1, 2, 0).numpy().astype(np.int16)
    ref = reference_crop(r).astype(np.int16)
    err = np.abs(got - ref)
    assert err.mean() < 1.0 and np.quantile(err, 0.999) <= 3
    # The smiling portrait's rest face is relaxed around the mouth, cheeks and lower lids only: the forehead, brows
    # and upper lids hold.
    relaxed = r512_or(portrait, size).render(fp.rest(1))[0].permute(1, 2, 0).numpy().astype(np.int16)
    lips = to_out(r, portrait.lips_outer)
    below_eyes = int(to_out(r, portrait.iris_centres)[:, 1].min() - 0.1 * r.iod_out)
    far = np.abs(relaxed - ref)
    assert far[:below_eyes].mean() < 1.0 and np.quantile(far[:below_eyes], 0.999) <= 3
    ys = slice(int(lips[:, 1].min()), int(lips[:, 1].max()) + 1)
    xs = slice(int(lips[:, 0].min()), int(lips[:, 0].max()) + 1)
    assert far[ys, xs].mean() > 5
    # The whole face is in the frame, with headroom above the forehead.
    oval = to_out(r, portrait.face_oval)
    assert oval.min() > 0 and oval[:, 0].max() < size[0] and oval[:, 1].max() < size[1]
    assert oval[:, 1].min() > 0.12 * size[1]


def r512_or(portrait: fa.Portrait, size: tuple[int, int]) -> FaceRenderer:
    return FaceRenderer(portrait, size[0], size[1], device="cpu")


def test_batch_and_determinism(r512: FaceRenderer) -> None:
    params = np.stack([fp.vector(jaw_open=0.6, blink=1.0), fp.vector(head_yaw=8, lip_round=0.7), fp.rest(1)[0]])
    a = r512.render(params)
    b = r512.render(params)
    assert a.shape == (3, 3, 512, 512)
    assert torch.equal(a, b)
    alone = r512.render(params[1:2])
    assert (alone[0].int() - a[1].int()).abs().max() <= 1  # batching does not change a frame


def _mouth_box(r: FaceRenderer) -> tuple[slice, slice]:
    lips = to_out(r, r.portrait.lips_outer)
    x0, x1 = int(lips[:, 0].min()), int(lips[:, 0].max())
    y0 = int(lips[:, 1].min())
    y1 = int(lips[:, 1].max() + 0.5 * r.iod_out)
    return slice(y0, y1), slice(x0, x1)


def test_jaw_open_opens_the_mouth(r512: FaceRenderer) -> None:
    ys, xs = _mouth_box(r512)
    dark = [int((luma(frame(r512, jaw_open=j)[ys, xs]) < 70).sum()) for j in (0.0, 0.4, 0.8)]
    assert dark[0] < dark[1] < dark[2]
    assert dark[2] > 8 * max(dark[0], 50)

    # Lips pressed shut hide the teeth the portrait shows at rest.
    def teeth(img: np.ndarray) -> int:
        px = img[ys, xs].astype(np.int16)
        return int(((px.min(-1) > 175) & (np.ptp(px, axis=-1) < 40)).sum())  # bright and unsaturated

    # (Compared with the portrait's own toothy smile: the relaxed rest face already covers most of the teeth.)
    assert teeth(frame(r512, lip_press=1.0)) < 0.35 * teeth(frame(r512, lip_corner_up=1.0))
    assert teeth(frame(r512)) < teeth(frame(r512, lip_corner_up=1.0))


def test_open_mouth_has_teeth_and_no_seam(r512: FaceRenderer) -> None:
    img = frame(r512, jaw_open=0.7).astype(np.float32)
    ys, xs = _mouth_box(r512)
    region = luma(img[ys, xs])
    assert (region > 190).sum() > 100  # the upper teeth band
    # No hard seam: the largest step between neighbouring pixels in the mouth region stays like the portrait's own.
    steps = max(np.abs(np.diff(region, axis=0)).max(), np.abs(np.diff(region, axis=1)).max())
    assert steps < 200


def test_blink_covers_the_iris(r512: FaceRenderer, portrait: fa.Portrait) -> None:
    open_, shut = frame(r512), frame(r512, blink=1.0)
    for e in range(2):
        cx, cy = to_out(r512, portrait.iris_centres[e])
        rad = max(2, int(0.6 * portrait.iris_radius[e] / r512.framing.scale))
        # The iris above its centre: the closed lid lies there (the lash line runs a little lower).
        ys, xs = slice(int(cy) - rad, int(cy)), slice(int(cx) - rad, int(cx) + rad + 1)
        before = open_[ys, xs].reshape(-1, 3).astype(np.float32).mean(0)
        after = shut[ys, xs].reshape(-1, 3).astype(np.float32).mean(0)
        skin = portrait.lid_rgb[e]
        # Lid skin with the lash line across it: much nearer the skin than the dark iris was.
        assert np.abs(after - skin).mean() < 0.75 * np.abs(before - skin).mean()
        assert luma(after[None])[0] > luma(before[None])[0] + 15


def _dark_centroid_x(img: np.ndarray, r: FaceRenderer, e: int) -> float:
    cx, cy = to_out(r, r.portrait.iris_centres[e])
    h = int(0.25 * r.iod_out)
    patch = luma(img[int(cy) - h // 2 : int(cy) + h // 2, int(cx) - h : int(cx) + h])
    w = np.clip(120 - patch, 0, None)
    xs = np.arange(patch.shape[1])[None, :]
    return float((w * xs).sum() / w.sum())


def test_gaze_moves_the_iris_not_the_eye_corners(r512: FaceRenderer) -> None:
    rest, left = frame(r512), frame(r512, gaze_x=-1.0)
    for e in range(2):
        assert _dark_centroid_x(left, r512, e) < _dark_centroid_x(rest, r512, e) - 1.5
    d = r512.displacements(r512.check(fp.vector(gaze_x=-1.0)[None]))[0].numpy()
    k = {idx: i for i, idx in enumerate(CONTROL)}
    for corner in (33, 133, 362, 263):
        assert np.abs(d[k[corner]]).max() < 1e-4


def test_head_turns_move_the_face_not_the_background(r512: FaceRenderer, portrait: fa.Portrait) -> None:
    rest = frame(r512).astype(np.int16)
    nose = to_out(r512, portrait.landmarks[1, :2]).astype(int)
    k = {idx: i for i, idx in enumerate(CONTROL)}
    for values, direction in (
        ({"head_yaw": 10.0}, (1, 0)),
        ({"head_pitch": 10.0}, (0, 1)),
        ({"head_roll": 8.0}, None),
        ({"breath": 1.0}, (0, -1)),
    ):
        img = frame(r512, **values).astype(np.int16)
        for ys, xs in (
            (slice(0, 48), slice(0, 48)),
            (slice(0, 48), slice(-48, None)),
            (slice(-48, None), slice(0, 48)),
        ):
            assert np.abs(img[ys, xs] - rest[ys, xs]).max() <= 1, values
        d = r512.displacements(r512.check(fp.vector(**values)[None]))[0].numpy()
        nd = d[k[1]]
        if direction is not None:
            assert float(np.dot(nd, direction)) > 0.5, (values, nd)
        if "breath" not in values:
            patch = (slice(nose[1] - 12, nose[1] + 12), slice(nose[0] - 12, nose[0] + 12))
            assert np.abs(img[patch] - rest[patch]).mean() > 3, values
    # Roll + is clockwise: the forehead moves toward image right, the chin toward image left.
    d = r512.displacements(r512.check(fp.vector(head_roll=8.0)[None]))[0].numpy()
    assert d[k[10], 0] > 0.5 and d[k[152], 0] < -0.5


def test_expression_directions(r512: FaceRenderer) -> None:
    k = {idx: i for i, idx in enumerate(CONTROL)}

    def disp(**v: float) -> np.ndarray:
        out: np.ndarray = r512.displacements(r512.check(fp.vector(**v)[None]))[0].numpy()
        return out

    smile = disp(lip_corner_up=1.0)
    assert smile[k[61], 1] < -1 and smile[k[291], 1] < -1  # corners up
    assert smile[k[61], 0] < 0 < smile[k[291], 0]  # and out
    rnd = disp(lip_round=1.0)
    assert rnd[k[61], 0] > 1 and rnd[k[291], 0] < -1  # corners in
    sad = disp(brow_inner_up=1.0, lip_corner_down=1.0)
    assert sad[k[107], 1] < -1 and sad[k[336], 1] < -1  # inner brows up
    assert sad[k[61], 1] > 1 and sad[k[291], 1] > 1  # corners down
    jaw = disp(jaw_open=1.0)
    assert jaw[k[152], 1] > 0.3 * r512.portrait.iod and abs(jaw[k[13], 1]) < 2
    pressed = disp(jaw_open=1.0, lip_press=1.0)
    gap = lambda d: (r512.portrait.landmarks[14, 1] + d[k[14], 1]) - (r512.portrait.landmarks[13, 1] + d[k[13], 1])  # noqa: E731
    assert abs(gap(pressed)) < 1.0 < gap(jaw)


def test_bad_params(r512: FaceRenderer) -> None:
    for bad in (np.zeros((2, fp.SIZE + 1), np.float32), np.zeros((fp.SIZE,), np.float32), np.zeros((0, fp.SIZE))):
        with pytest.raises(BadFaceParams):
            r512.render(bad)
    nan = fp.rest(2)
    nan[1, 0] = np.nan
    with pytest.raises(BadFaceParams) as info:
        r512.render(nan)
    assert info.value.code == "bad_face_params"
    with pytest.raises(BadFaceParams):
        r512.render(np.zeros((1, fp.SIZE), np.int64))
    # Out-of-range values are clamped to the declared range.
    wild = fp.vector(jaw_open=5.0, head_yaw=90.0)[None]
    assert torch.equal(r512.render(wild), r512.render(fp.clip(wild)))


def test_render_many_matches_single(r512: FaceRenderer, portrait: fa.Portrait) -> None:
    other = FaceRenderer(portrait, 256, 320)
    pa, pb = fp.vector(jaw_open=0.5)[None], np.stack([fp.vector(blink=1.0), fp.vector(head_roll=-5)])
    outs = render_many([(r512, pa), (other, pb)])
    assert torch.equal(outs[0], r512.render(pa)) and torch.equal(outs[1], other.render(pb))
    with pytest.raises(BadFaceParams):
        render_many([(r512, pa), (other, np.full((1, fp.SIZE), np.nan, np.float32))])


def test_encode_jpeg_round_trip(r512: FaceRenderer) -> None:
    frames = r512.render(np.stack([fp.vector(), fp.vector(jaw_open=0.5)]))
    jpegs = encode_jpeg(frames, quality=85)
    assert len(jpegs) == 2 and all(j[:2] == b"\xff\xd8" for j in jpegs)
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpegs[1], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert back.shape == (512, 512, 3)
    assert np.abs(back.astype(np.int16) - frames[1].permute(1, 2, 0).numpy()).mean() < 4  # colours not swapped
    with pytest.raises(BadFaceParams):
        encode_jpeg(frames.float())


def test_save_frames_for_review(r512: FaceRenderer, tmp_path: Path) -> None:
    """Frames a person looks at (written under pytest's tmp dir); here only that they differ from rest."""
    rest = frame(r512)
    for name, values in {"smile": {"lip_corner_up": 1.0, "cheek_raise": 0.6}, "round": {"lip_round": 1.0}}.items():
        img = frame(r512, **values)
        Image.fromarray(img).save(tmp_path / f"face_{name}.png")
        assert np.abs(img.astype(np.int16) - rest).mean() > 0.2
