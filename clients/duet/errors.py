"""Client-side typed errors. `DuetError.code` mirrors the server's stable error codes."""

from __future__ import annotations


class DuetError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AudioFileError(DuetError):
    def __init__(self, message: str) -> None:
        super().__init__("bad_audio_file", message)


class ServerUnavailable(DuetError):
    def __init__(self, message: str) -> None:
        super().__init__("server_unavailable", message)
