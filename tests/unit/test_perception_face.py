"""Visual perception on real images (CPU): faces, head pose, gaze, eyes, expression, bad frames, batching."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from orchestrator.face import assets as fa
from orchestrator.face import params as fp
from orchestrator.face.render import FaceRenderer
from orchestrator.perception.expression import (
    EMOTIONS,
    FER_CLASSES,
    MODEL_SHA256,
    EmotionSmoother,
    contempt_score,
    load_keras_h5,
    to_eight,
)
from orchestrator.perception.face import DEFAULT_MODEL, BadFrame, FaceAnalyzer, FaceTrack, decode_frame
from tests.conftest import require


@pytest.fixture(scope="module", autouse=True)
def _emotion_model() -> None:
    require(DEFAULT_MODEL, "the expression model")


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut())


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> FaceRenderer:
    root = tmp_path_factory.mktemp("perceive")
    Image.fromarray(astronaut).save(root / "astronaut.png")
    return FaceRenderer(fa.prepare_portrait(root / "astronaut.png", root / "cache"), 640, 480, device="cpu")


def render(r: FaceRenderer, **values: float) -> np.ndarray:
    return np.ascontiguousarray(r.render(fp.vector(**values)[None])[0].permute(1, 2, 0).numpy())


def encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def test_model_file_is_the_pinned_one() -> None:
    import hashlib

    assert hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest() == MODEL_SHA256


def test_port_reads_the_keras_graph() -> None:
    net = load_keras_h5(DEFAULT_MODEL)
    assert net.input_shape == (64, 64, 1)
    kinds = {type(m).__name__ for m in net.layers.values()}
    assert {"_Conv", "_BatchNorm", "_MaxPool", "_Add", "_GlobalAvgPool", "_Activation"} <= kinds
    out = net(torch.zeros(3, 1, 64, 64))
    assert out.shape == (3, 7)
    assert torch.allclose(out.sum(1), torch.ones(3), atol=1e-5)


def test_astronaut_one_frontal_happy_face_looking_at_camera(analyzer: FaceAnalyzer, astronaut: np.ndarray) -> None:
    r = analyzer.analyze(astronaut)
    assert r.faces == 1 and r.face is not None
    f = r.face
    assert f.landmarks.shape == (478, 3)
    assert abs(f.head_pose.yaw) < 6 and abs(f.head_pose.pitch) < 8 and abs(f.head_pose.roll) < 6
    assert f.gaze == "camera" and f.gaze_score > 0.7
    assert not f.eyes_closed and min(f.ear) > 0.25
    assert f.top_emotion == "happiness" and f.emotion["happiness"] > 0.8
    assert abs(sum(f.emotion.values()) - 1) < 1e-6 and set(f.emotion) == set(EMOTIONS)
    assert f.expression_7[FER_CLASSES.index("happiness")] > 0.9
    x0, y0, x1, y1 = f.bbox
    assert 150 < x0 < x1 < 300 and 40 < y0 < y1 < 220  # her face, not the flag or the suit
    ev = r.event_fields()
    assert ev["faces"] == 1 and ev["gaze"] == "camera" and set(ev["head_pose"]) == {"yaw", "pitch", "roll"}


@pytest.mark.parametrize("angle", [15, -15])
def test_rotated_photo_reads_as_roll(analyzer: FaceAnalyzer, astronaut: np.ndarray, angle: float) -> None:
    base = analyzer.analyze(astronaut).face
    h, w = astronaut.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)  # cv2: + = counter-clockwise in the image
    f = analyzer.analyze(cv2.warpAffine(astronaut, m, (w, h), borderMode=cv2.BORDER_REFLECT)).face
    assert base is not None and f is not None
    # roll + = clockwise, so a counter-clockwise rotation by `angle` lowers roll by about `angle`
    assert abs((f.head_pose.roll - base.head_pose.roll) + angle) < 3
    assert abs(f.head_pose.yaw - base.head_pose.yaw) < 6


def test_mirror_flips_roll_and_rendered_yaw(
    analyzer: FaceAnalyzer, astronaut: np.ndarray, renderer: FaceRenderer
) -> None:
    a = analyzer.analyze(astronaut).face
    m = analyzer.analyze(np.ascontiguousarray(astronaut[:, ::-1])).face
    assert a is not None and m is not None
    assert np.sign(a.head_pose.roll) == -np.sign(m.head_pose.roll)
    assert abs(a.head_pose.roll + m.head_pose.roll) < 2 and abs(a.head_pose.yaw + m.head_pose.yaw) < 3
    turned = render(renderer, head_yaw=15)
    y1 = analyzer.analyze(turned).face
    y2 = analyzer.analyze(np.ascontiguousarray(turned[:, ::-1])).face
    assert y1 is not None and y2 is not None
    assert y1.head_pose.yaw > 10 and y2.head_pose.yaw < -10


@pytest.mark.parametrize("image", ["coffee", "flat"])
def test_no_face(analyzer: FaceAnalyzer, image: str) -> None:
    img = skimage.data.coffee() if image == "coffee" else np.full((480, 640, 3), 128, np.uint8)
    r = analyzer.analyze(np.ascontiguousarray(img))
    assert r.faces == 0 and r.face is None
    assert r.event_fields() == {"faces": 0, "emotion": None, "head_pose": None, "gaze": None}


def test_two_faces_side_by_side(analyzer: FaceAnalyzer, astronaut: np.ndarray) -> None:
    r = analyzer.analyze(np.concatenate([astronaut, astronaut], axis=1))
    assert r.faces == 2 and r.face is not None
    centres = sorted((b[0] + b[2]) / 2 for b in r.boxes)
    assert centres[0] < 512 < centres[1]


@pytest.mark.parametrize("yaw", [15.0, -15.0])
def test_rendered_head_yaw(analyzer: FaceAnalyzer, renderer: FaceRenderer, yaw: float) -> None:
    rest = analyzer.analyze(render(renderer)).face
    f = analyzer.analyze(render(renderer, head_yaw=yaw)).face
    assert rest is not None and f is not None
    assert abs((f.head_pose.yaw - rest.head_pose.yaw) - yaw) < 5
    assert abs(f.head_pose.pitch - rest.head_pose.pitch) < 4 and abs(f.head_pose.roll - rest.head_pose.roll) < 4


def test_rendered_pitch_follows(analyzer: FaceAnalyzer, renderer: FaceRenderer) -> None:
    down = analyzer.analyze(render(renderer, head_pitch=10)).face
    up = analyzer.analyze(render(renderer, head_pitch=-10)).face
    assert down is not None and up is not None
    assert 14 < down.head_pose.pitch - up.head_pose.pitch < 26


@pytest.mark.parametrize("gx", [0.8, -0.8])
def test_rendered_gaze_aside_is_away(analyzer: FaceAnalyzer, renderer: FaceRenderer, gx: float) -> None:
    rest = analyzer.analyze(render(renderer)).face
    f = analyzer.analyze(render(renderer, gaze_x=gx)).face
    assert rest is not None and f is not None
    assert rest.gaze == "camera"
    assert f.gaze == "away" and f.gaze_score < rest.gaze_score - 0.4
    assert np.sign(f.iris_offset[0] - rest.iris_offset[0]) == np.sign(gx)
    assert np.sign(f.gaze_offset[0]) == np.sign(gx)


def test_rendered_blink_and_mouth(analyzer: FaceAnalyzer, renderer: FaceRenderer) -> None:
    rest = analyzer.analyze(render(renderer)).face
    shut = analyzer.analyze(render(renderer, blink=1.0)).face
    jaw = analyzer.analyze(render(renderer, jaw_open=0.8)).face
    assert rest is not None and shut is not None and jaw is not None
    assert not rest.eyes_closed and shut.eyes_closed and max(shut.ear) < 0.6 * min(rest.ear)
    assert not rest.mouth_open and jaw.mouth_open


def test_rendered_smirk_reads_as_contempt_and_smile_as_happiness(
    analyzer: FaceAnalyzer, renderer: FaceRenderer
) -> None:
    smirk = analyzer.analyze(render(renderer, smirk=0.75)).face
    smile = analyzer.analyze(render(renderer, lip_corner_up=0.9, cheek_raise=0.7)).face
    assert smirk is not None and smile is not None
    assert smirk.top_emotion == "contempt"
    assert smile.top_emotion == "happiness" and smile.emotion["contempt"] < 0.1


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\x00garbage" * 100, "cannot be decoded"),
        (b"GIF89a" + b"\x00" * 64, r"cannot be decoded|GIF"),
    ],
)
def test_bad_bytes(data: bytes, match: str) -> None:
    with pytest.raises(BadFrame, match=match) as info:
        decode_frame(data)
    assert info.value.code == "bad_frame" and info.value.fatal is False


def test_bad_frames(analyzer: FaceAnalyzer, astronaut: np.ndarray) -> None:
    jpeg = encode(astronaut, "JPEG")
    assert decode_frame(jpeg).shape == (512, 512, 3)
    assert np.abs(decode_frame(encode(astronaut, "PNG")).astype(int) - astronaut).max() == 0
    with pytest.raises(BadFrame, match="cannot be decoded"):
        decode_frame(jpeg[: len(jpeg) // 2])  # truncated
    with pytest.raises(BadFrame, match="bytes"):
        decode_frame(jpeg, max_bytes=len(jpeg) - 1)
    with pytest.raises(BadFrame, match="5000x8"):
        decode_frame(encode(np.zeros((8, 5000, 3), np.uint8), "PNG"))
    with pytest.raises(BadFrame, match=r"BMP|format"):
        decode_frame(encode(astronaut[:64, :64], "BMP"))
    with pytest.raises(BadFrame, match="uint8 RGB"):
        analyzer.analyze(np.zeros((10, 10), np.uint8))


def test_batch_equals_single_frames(analyzer: FaceAnalyzer, astronaut: np.ndarray, renderer: FaceRenderer) -> None:
    frames = [astronaut, np.full((480, 640, 3), 90, np.uint8), render(renderer, head_yaw=-15), astronaut[:, ::-1]]
    batch = analyzer.analyze_batch(frames)
    for frame, b in zip(frames, batch, strict=True):
        s = analyzer.analyze(frame)
        assert s.faces == b.faces
        assert (s.face is None) == (b.face is None)
        if s.face is not None and b.face is not None:
            assert np.allclose(s.face.landmarks, b.face.landmarks)
            for k in EMOTIONS:
                assert abs(s.face.emotion[k] - b.face.emotion[k]) < 1e-4
            assert s.face.head_pose == b.face.head_pose and s.face.gaze == b.face.gaze


def test_tracking_streams_follow_the_face(astronaut: np.ndarray) -> None:
    a = FaceAnalyzer(tracking=True, detect_every=4)
    flat = np.full((512, 512, 3), 60, np.uint8)
    out = [a.analyze_batch([astronaut, flat], ["s1", "s2"]) for _ in range(5)]
    assert all(o[0].faces == 1 and o[0].face is not None for o in out)
    assert all(o[1].faces == 0 and o[1].face is None for o in out)
    yaws = [o[0].face.head_pose.yaw for o in out if o[0].face is not None]
    assert max(yaws) - min(yaws) < 3
    gone = a.analyze(flat, "s1")  # the face leaves: tracking fails, detection says 0
    assert gone.faces == 0 and gone.face is None
    a.close()


def test_track_smoothing_and_blinks(analyzer: FaceAnalyzer, renderer: FaceRenderer) -> None:
    open_ = analyzer.analyze(render(renderer))
    shut = analyzer.analyze(render(renderer, blink=1.0))
    track = FaceTrack()
    t = 0.0
    states = []
    for i in range(200):  # 10 s at 20 fps, a 100 ms blink every 2 s
        t = i * 0.05
        states.append(track.update(shut if i % 40 in (20, 21) else open_, t))
    assert track.blinks == 5
    rate = states[-1].blink_rate_per_min
    assert rate is not None and 25 < rate < 35
    assert states[-1].emotion_label == "happiness" and states[-1].gaze == "camera"
    assert track.update(analyzer.analyze(np.full((64, 64, 3), 0, np.uint8)), t + 0.05).present is False


def test_smoother_hysteresis_and_contempt() -> None:
    s = EmotionSmoother(alpha=0.5, margin=0.1, hold=3)
    happy = to_eight([0, 0, 0, 1, 0, 0, 0], 0.0)
    sad = to_eight([0, 0, 0, 0, 1, 0, 0], 0.0)
    assert s.update(happy)[1] == "happiness"
    labels = [s.update(sad)[1] for _ in range(5)]
    assert labels[0] == "happiness" and labels[-1] == "sadness"  # not on the first sad frame
    flicker = EmotionSmoother()
    flicker.update(happy)
    assert {flicker.update(sad if i % 2 else happy)[1] for i in range(20)} == {"happiness"}
    assert contempt_score(0.0) < 0.01 and contempt_score(0.12) > 0.8 and contempt_score(-0.12) > 0.8
    e = to_eight([0.1, 0, 0, 0.8, 0, 0, 0.1], 0.5)
    assert e["contempt"] == 0.5 and abs(sum(e.values()) - 1) < 1e-9 and abs(e["happiness"] - 0.4) < 1e-9


def test_model_path_must_exist(tmp_path: Path) -> None:
    from orchestrator.perception.expression import ExpressionModelError

    with pytest.raises(ExpressionModelError):
        load_keras_h5(tmp_path / "missing.hdf5")
