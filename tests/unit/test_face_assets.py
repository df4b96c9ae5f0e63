"""Portrait preparation on the real astronaut portrait: landmarks, geometry, the cache, and bad portraits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from orchestrator.errors import BadPortrait
from orchestrator.face import assets
from orchestrator.face.assets import Portrait, prepare_portrait


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("portrait") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def portrait(astronaut_png: Path, cache_dir: Path) -> Portrait:
    return prepare_portrait(astronaut_png, cache_dir)


def test_landmarks_and_geometry(portrait: Portrait) -> None:
    assert portrait.image.shape == (512, 512, 3) and portrait.image.dtype == np.uint8
    assert portrait.landmarks.shape == (478, 3) and portrait.landmarks.dtype == np.float32
    x0, y0, x1, y1 = portrait.bbox
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    eyes_y = portrait.iris_centres[:, 1]
    mouth_y = portrait.lips_inner[:, 1].mean()
    assert (eyes_y < mouth_y).all()
    assert (portrait.brows[:, :, 1].mean(1) < eyes_y).all()
    # The subject's right eye is on the image's left.
    assert portrait.iris_centres[0, 0] < portrait.iris_centres[1, 0]
    assert 30 < portrait.iod < 60  # the astronaut's face is about a fifth of the picture wide
    for e in range(2):
        ring = portrait.eyes[e]
        c = portrait.iris_centres[e]
        assert ring[:, 0].min() < c[0] < ring[:, 0].max()
        assert ring[:, 1].min() < c[1] < ring[:, 1].max()
        assert 0.03 * portrait.iod < portrait.iris_radius[e] < 0.2 * portrait.iod
    assert portrait.lips_outer.shape == (20, 2) and portrait.face_oval.shape == (36, 2)


def test_mouth_reference_and_skin(portrait: Portrait) -> None:
    # The astronaut smiles with her upper teeth showing.
    assert portrait.mouth_open and portrait.mouth_gap > 0.06
    assert portrait.teeth_rgb.mean() > 170  # teeth are bright
    assert np.ptp(portrait.teeth_rgb) < 60  # and not saturated
    for lid in portrait.lid_rgb:
        r, g, b = lid
        assert r > g > b and 90 < r < 255  # skin: warm, brighter red than blue


def test_cache_hit_skips_face_mesh(
    astronaut_png: Path, cache_dir: Path, portrait: Portrait, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert any(cache_dir.glob(f"*{portrait.sha256}*.npz"))

    def no_mesh(image: object) -> list[object]:
        raise AssertionError("the face mesh ran on a cache hit")

    monkeypatch.setattr(assets, "_detect_landmarks", no_mesh)
    again = prepare_portrait(astronaut_png, cache_dir)  # no_mesh fails the test if the mesh runs again
    np.testing.assert_array_equal(again.landmarks, portrait.landmarks)
    assert again.iod == portrait.iod and again.mouth_open == portrait.mouth_open
    np.testing.assert_array_equal(again.image, portrait.image)


def test_changed_image_is_not_a_cache_hit(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = skimage.data.astronaut().copy()
    img[0, 0] = 0  # one pixel: a different file, a different key
    path = tmp_path / "edited.png"
    Image.fromarray(img).save(path)
    calls = []
    real = assets._detect_landmarks

    def counting(image: assets.U8) -> list[assets.F32]:
        calls.append(1)
        return real(image)

    monkeypatch.setattr(assets, "_detect_landmarks", counting)
    prepare_portrait(path, cache_dir)
    assert calls == [1]


def _save(tmp_path: Path, name: str, array: np.ndarray) -> Path:
    path = tmp_path / name
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: _save(tmp, "coffee.png", skimage.data.coffee()),
        lambda tmp: _save(tmp, "grey.png", np.full((300, 300, 3), 128, np.uint8)),
        lambda tmp: _save(tmp, "tiny.png", skimage.data.astronaut()[::5, ::5]),
        lambda tmp: _save(tmp, "huge.png", np.zeros((10, 4200, 3), np.uint8)),
    ],
    ids=["no-face", "flat-grey", "tiny", "huge"],
)
def test_bad_images(tmp_path: Path, make: object) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(BadPortrait) as info:
        prepare_portrait(path, tmp_path / "cache")
    assert info.value.code == "bad_portrait"


def test_garbage_truncated_missing_and_two_faces(tmp_path: Path, astronaut_png: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(astronaut_png.read_bytes()[:20000])
    jpeg = tmp_path / "cut.jpg"
    Image.fromarray(skimage.data.astronaut()).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:5000])
    gif = tmp_path / "face.gif"
    Image.fromarray(skimage.data.astronaut()).save(gif)
    for path in (garbage, truncated, jpeg, gif, tmp_path / "missing.png"):
        with pytest.raises(BadPortrait):
            prepare_portrait(path, tmp_path / "cache")
    face = skimage.data.astronaut()[20:260, 120:330]
    two = _save(tmp_path, "two.png", np.concatenate([face, face], axis=1))
    with pytest.raises(BadPortrait, match="2 faces"):
        prepare_portrait(two, tmp_path / "cache")
