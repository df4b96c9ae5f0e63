"""The client's MP4 writer: H.264 + AAC on one clock, dropped frames held, bad frames refused."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from duet.errors import DuetError
from duet.sdk import VideoFrame
from duet.video import write_mp4


def jpeg(value: int, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_frames_and_audio_share_one_clock(tmp_path: Path) -> None:
    fps = 25.0
    # frame 3 was dropped by the server: the writer holds frame 2 in its place
    frames = [VideoFrame(jpeg(20 * i), i / fps, i) for i in range(10) if i != 3]
    audio = (np.sin(np.arange(16000 * 10 // 25) * 0.05) * 8000).astype(np.int16)  # 0.4 s = 10 frames
    out = tmp_path / "clip.mp4"
    assert write_mp4(out, frames, fps, audio) == 10
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        decoded = [f for f in c.decode(video=0)]
        assert len(decoded) == 10
        times = [float(f.pts * f.time_base) for f in decoded]
        assert times == pytest.approx([i / fps for i in range(10)], abs=1e-3)
        level = [float(f.to_ndarray(format="rgb24").mean()) for f in decoded]
        assert level[3] == pytest.approx(level[2], abs=3)  # the held frame
        assert level[9] == pytest.approx(180, abs=6)


def test_garbage_frame_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(DuetError) as err:
        write_mp4(tmp_path / "x.mp4", [VideoFrame(b"not a jpeg", 0.0, 0)], 25.0)
    assert err.value.code == "bad_frame"


def test_no_frames_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(DuetError):
        write_mp4(tmp_path / "x.mp4", [], 25.0)
