"""Writing the replica's face and voice into one MP4 (H.264 + AAC, PyAV), on one clock.

Frames arrive as JPEGs with a frame number at a fixed rate (`index / fps` is the time they are shown);
audio is the session timeline (sample 0 = time 0). A frame the server dropped (a gap in the numbers) is
filled by holding the one before, so the video stays continuous and every frame keeps its time.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
from PIL import Image

from duet.errors import DuetError
from duet.sdk import VideoFrame
from duet.wav import SAMPLE_RATE


def decode_jpeg(jpeg: bytes) -> npt.NDArray[np.uint8]:
    try:
        with Image.open(io.BytesIO(jpeg)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DuetError("bad_frame", f"a video frame is not a readable JPEG: {exc}") from exc


def write_mp4(
    path: str | Path,
    frames: Iterable[VideoFrame],
    fps: float,
    audio: npt.NDArray[np.int16] | None = None,
    sample_rate: int = SAMPLE_RATE,
    crf: int = 20,
) -> int:
    """Write `frames` (any order; duplicates keep the last) and `audio` to `path`; returns frames written."""
    by_index = {f.index: f for f in frames}
    if not by_index:
        raise DuetError("no_video", "no video frames to write")
    rate = Fraction(fps).limit_denominator(1001)
    last = max(by_index)
    with av.open(str(path), mode="w", format="mp4") as container:
        first = decode_jpeg(by_index[min(by_index)].jpeg)
        height, width = first.shape[:2]
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height = width - width % 2, height - height % 2
        video.pix_fmt = "yuv420p"
        video.options = {"crf": str(crf), "preset": "veryfast"}
        sound = None
        if audio is not None and audio.size:
            sound = container.add_stream("aac", rate=sample_rate)
            sound.layout = "mono"
        held = first
        written = 0
        for index in range(min(by_index), last + 1):
            if index in by_index:
                held = decode_jpeg(by_index[index].jpeg)
            frame = av.VideoFrame.from_ndarray(held[: video.height, : video.width], format="rgb24")
            frame.pts = index
            frame.time_base = 1 / rate
            container.mux(video.encode(frame))
            written += 1
        container.mux(video.encode())
        if sound is not None and audio is not None:
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
            step = 1024
            for start in range(0, audio.shape[0], step):
                block = audio[start : start + step].reshape(1, -1)
                aframe = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(block.astype("<i2")), format="s16", layout="mono"
                )
                aframe.sample_rate = sample_rate
                aframe.pts = start
                aframe.time_base = Fraction(1, sample_rate)
                for out in resampler.resample(aframe):
                    container.mux(sound.encode(out))
            for out in resampler.resample(None):
                container.mux(sound.encode(out))
            container.mux(sound.encode())
    return written
