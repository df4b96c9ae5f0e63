"""`duet perceive`'s inputs (clients/duet/media.py): a video with no audio track is frames and no voice."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from duet.errors import DuetError
from duet.media import audio_pcm, video_frames


def silent_mp4(path: Path, frames: int = 10, fps: int = 10) -> Path:
    yy, xx = np.mgrid[0:64, 0:96]
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            rgb = np.stack([(xx * 2 + i * 10) % 256, yy * 3 % 256, np.full_like(xx, 128)], -1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_a_video_without_audio_is_its_frames_and_no_voice(tmp_path: Path) -> None:
    clip = silent_mp4(tmp_path / "webcam.mp4")
    assert audio_pcm(clip, required=False) == b""
    frames = list(video_frames(clip, max_fps=10))
    assert len(frames) == 10 and [round(t, 2) for t, _ in frames[:3]] == [0.0, 0.1, 0.2]
    assert all(jpeg[:2] == b"\xff\xd8" for _, jpeg in frames)


def test_a_file_named_as_the_voice_must_have_one(tmp_path: Path) -> None:
    clip = silent_mp4(tmp_path / "webcam.mp4")
    with pytest.raises(DuetError) as err:
        audio_pcm(clip)
    assert err.value.code == "bad_audio_file" and "no audio stream" in err.value.message
