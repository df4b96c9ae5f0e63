"""Duet Python SDK: `async with duet.connect("127.0.0.1:50051") as session: ...`; `duet.render(...)` for a clip."""

from typing import TYPE_CHECKING, Any

from duet.errors import ApiError, AudioFileError, DuetError, ServerUnavailable
from duet.sdk import ReplyAudio, Session, VideoFrame, connect, render, stream_file

if TYPE_CHECKING:
    from duet.rest import Client

__all__ = [
    "ApiError",
    "AudioFileError",
    "Client",
    "DuetError",
    "ReplyAudio",
    "ServerUnavailable",
    "Session",
    "VideoFrame",
    "connect",
    "render",
    "stream_file",
]


def __getattr__(name: str) -> Any:
    # The REST client on first use: aiohttp takes ~0.1 s to import, which the gRPC-only commands need not pay.
    if name == "Client":
        from duet.rest import Client

        return Client
    raise AttributeError(f"module 'duet' has no attribute {name!r}")
