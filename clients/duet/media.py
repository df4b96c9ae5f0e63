"""Reading a recorded user for `duet perceive`: camera frames (a video file or a still image) as JPEGs with
their times, and the voice as 16 kHz mono PCM16 (a WAV, or the video file's own audio track; a video without
one, like many webcam clips, is perceived from its frames alone)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from duet.errors import DuetError
from duet.wav import SAMPLE_RATE, read_pcm16

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def to_jpeg(rgb: npt.NDArray[np.uint8], quality: int = 85) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def video_frames(path: str | Path, max_fps: float, still_s: float = 3.0) -> Iterator[tuple[float, bytes]]:
    """(t, jpeg) for each frame of a video at most `max_fps` per second, or a still image repeated for
    `still_s` seconds at `max_fps` (a camera pointed at a photo)."""
    path = Path(path)
    if not path.is_file():
        raise DuetError("bad_video_file", f"{path}: no such file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                jpeg = to_jpeg(np.asarray(im.convert("RGB")))
        except (OSError, UnidentifiedImageError) as exc:
            raise DuetError("bad_video_file", f"{path}: not a readable image ({exc})") from exc
        for i in range(max(int(still_s * max_fps), 1)):
            yield i / max_fps, jpeg
        return
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DuetError("bad_video_file", f"{path}: no video stream")
            next_t = 0.0
            for frame in container.decode(video=0):
                t = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else next_t
                if t + 1e-6 < next_t:
                    continue  # over the frame rate asked for
                next_t = t + 1.0 / max_fps
                yield t, to_jpeg(np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8))
    except av.error.FFmpegError as exc:
        raise DuetError("bad_video_file", f"{path}: cannot decode video ({exc})") from exc


def audio_pcm(path: str | Path, *, required: bool = True) -> bytes:
    """16 kHz mono PCM16: a WAV read strictly (duet.wav), or any other file's audio track resampled.

    A file with no audio stream is `bad_audio_file` when `required` (the user named it as the voice), and
    b"" (no voice: the session hears silence) when not (a video's own track, which a silent clip lacks)."""
    path = Path(path)
    if path.suffix.lower() == ".wav":
        return read_pcm16(path)
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                if not required:
                    return b""
                raise DuetError("bad_audio_file", f"{path}: no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            parts = [
                out.to_ndarray().reshape(-1) for frame in container.decode(audio=0) for out in resampler.resample(frame)
            ]
            parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except av.error.FFmpegError as exc:
        raise DuetError("bad_audio_file", f"{path}: cannot decode audio ({exc})") from exc
    return np.concatenate(parts).astype("<i2").tobytes() if parts else b""
