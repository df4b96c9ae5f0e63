"""Duet Python SDK: `async with duet.connect("127.0.0.1:50051") as session: ...`; `duet.render(...)` for a clip."""

from duet.errors import AudioFileError, DuetError, ServerUnavailable
from duet.sdk import ReplyAudio, Session, VideoFrame, connect, render, stream_file

__all__ = [
    "AudioFileError",
    "DuetError",
    "ReplyAudio",
    "ServerUnavailable",
    "Session",
    "VideoFrame",
    "connect",
    "render",
    "stream_file",
]
