"""Duet Python SDK: `async with duet.connect("127.0.0.1:50051") as session: ...`."""

from duet.errors import AudioFileError, DuetError, ServerUnavailable
from duet.sdk import Session, connect, stream_file

__all__ = ["AudioFileError", "DuetError", "ServerUnavailable", "Session", "connect", "stream_file"]
