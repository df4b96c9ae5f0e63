"""The lip-sync instrument (perf/av_sync.py) on signals and files whose offset is known, and the MP4 writer's
clock as that instrument reads it: a drift anywhere in decode -> envelope -> lip gap -> lag would show here."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from duet.sdk import VideoFrame
from duet.video import write_mp4
from perf.av_sync import (
    decode_mp4,
    lag_search,
    measure,
    mouth_openings,
    onset_offsets,
    voice_level,
    voice_onsets,
)

SR = 16000


def bursts(spans: list[tuple[float, float]], seconds: float) -> np.ndarray:
    """A 200 Hz tone in each (start, end) span, silence elsewhere; float in [-1, 1]."""
    t = np.arange(round(seconds * SR)) / SR
    on = np.zeros_like(t)
    for a, b in spans:
        on[(t >= a) & (t < b)] = 1.0
    out: np.ndarray = (0.5 * np.sin(2 * np.pi * 200 * t) * on).astype(np.float32)
    return out


def test_voice_level_and_onsets_find_the_bursts() -> None:
    audio = bursts([(0.5, 0.9), (1.3, 1.6), (1.65, 2.0)], 2.5)
    t, level = voice_level(audio, SR, 0.0)
    assert level.max() == pytest.approx(0.0, abs=0.5) and level.min() == -50.0
    onsets = voice_onsets(t, level)
    # the 50 ms gap at 1.6 s is not a pause (< 150 ms of quiet): two onsets, each within a window's half-width
    assert onsets == pytest.approx([0.5, 1.3], abs=0.012)
    assert voice_onsets(t + 3.0, level) == pytest.approx([3.5, 4.3], abs=0.012)  # on the file's clock


@pytest.mark.parametrize("shift", [-0.12, 0.0, 0.035, 0.2])
def test_lag_search_recovers_a_known_shift(shift: float) -> None:
    rng = np.random.default_rng(1)
    spans = []
    t = 0.3
    while t < 9.0:
        d = rng.uniform(0.08, 0.3)
        spans.append((t, t + d))
        t += d + rng.uniform(0.05, 0.4)
    audio = bursts(spans, 10.0)
    a_t, level = voice_level(audio, SR, 0.0)
    amp = 10 ** (level / 20)
    frame_t = np.arange(0, 10.0, 1 / 25)
    # a "mouth" that does what the voice did `shift` s earlier, sampled at 25 fps
    mouth = np.interp(frame_t - shift, a_t, amp)
    lag, r, lags, rs = lag_search(frame_t, mouth, a_t, amp)
    assert lag == pytest.approx(shift, abs=0.004) and r > 0.95
    assert lags[0] == pytest.approx(-0.4) and lags[-1] == pytest.approx(0.4) and np.isfinite(rs).all()


def test_openings_and_onset_offsets() -> None:
    frame_t = np.arange(0, 3.0, 0.04)
    gap = np.where(((frame_t >= 0.52) & (frame_t < 1.0)) | ((frame_t >= 2.0) & (frame_t < 2.4)), 0.4, 0.05)
    openings, mid = mouth_openings(frame_t, gap)
    assert mid == pytest.approx(0.225) and openings == pytest.approx([0.50, 1.98], abs=1e-9)
    offsets = onset_offsets(np.array([0.45, 2.0, 2.9]), openings, window=0.4)
    assert offsets[0] == pytest.approx(0.05) and offsets[1] == pytest.approx(-0.02) and offsets[2] is None


def jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_the_mp4_writer_puts_a_flash_and_a_click_at_the_same_time(tmp_path: Path) -> None:
    """Frame i is shown at i / fps and sample n plays at n / 16000 once decoded: the H.264 reordering delay
    and the AAC priming are taken out by the file's edit lists, not left as an offset."""
    fps = 25.0
    dark, bright = np.zeros((48, 64, 3), np.uint8), np.full((48, 64, 3), 255, np.uint8)
    frames = [VideoFrame(jpeg(bright if i in (20, 41) else dark), i / fps, i) for i in range(60)]
    audio = np.zeros(round(60 / fps * SR), np.int16)
    for at in (0.8, 1.64):
        audio[round(at * SR) : round(at * SR) + 80] = 20000
    out = tmp_path / "av.mp4"
    write_mp4(out, frames, fps, audio)
    clip = decode_mp4(out)
    assert clip.frame_t == pytest.approx(np.arange(60) / fps, abs=1e-6)
    flashes = clip.frame_t[[float(f.mean()) > 128 for f in clip.frames]]
    assert flashes == pytest.approx([0.8, 1.64], abs=1e-6)
    t = clip.audio_t0 + np.arange(clip.audio.shape[0]) / clip.rate
    loud = t[np.abs(clip.audio) > 0.3]
    clicks = [float(loud[0]), float(loud[loud > 1.2][0])]
    assert clicks == pytest.approx([0.8, 1.64], abs=0.5e-3)


def test_a_face_rendered_off_the_voice_measures_its_shift(tmp_path: Path) -> None:
    """The whole instrument on a real render: the replica's jaw driven by a piper voice's own envelope,
    `shift` s late, written as an MP4 and measured from the decoded file alone."""
    from orchestrator.config import REPO_ROOT
    from orchestrator.face import params
    from orchestrator.face.assets import prepare_portrait
    from orchestrator.face.render import FaceRenderer, encode_jpeg
    from orchestrator.inference.tts import PiperSpeaker

    voice = REPO_ROOT / "model_repository/tts/1/voices/en_US-joe-medium.onnx"
    pcm = PiperSpeaker(voice).synthesize("Papa made a big batch of bread.").pcm
    a_t, level = voice_level(pcm.astype(np.float32) / 32768, SR, 0.0)
    env = 10 ** (level / 20)
    renderer = FaceRenderer(
        prepare_portrait(REPO_ROOT / "faces" / "astronaut.png", REPO_ROOT / ".cache" / "faces"), 192, 192
    )
    fps, shift = 25.0, 0.08
    times = np.arange(0, a_t[-1], 1 / fps)
    p = np.tile(params.vector(), (times.shape[0], 1)).astype(np.float32)
    p[:, params.INDEX["jaw_open"]] = 0.8 * np.interp(times - shift, a_t, env, left=0.0)
    frames = []
    for i in range(0, times.shape[0], 16):
        jpegs = encode_jpeg(renderer.render(p[i : i + 16]), 85)
        frames += [VideoFrame(j, (i + k) / fps, i + k) for k, j in enumerate(jpegs)]
    out = tmp_path / "shifted.mp4"
    write_mp4(out, frames, fps, pcm)
    res = measure(decode_mp4(out), motion=False)
    assert res["frames_with_face"] == res["frames"]
    # r > 0.8: the jaw parameter really opens the lips MediaPipe measures, and the lag is the one put in
    assert res["xcorr_ms"] == pytest.approx(1000 * shift, abs=10.0) and res["xcorr_r"] > 0.8, res
