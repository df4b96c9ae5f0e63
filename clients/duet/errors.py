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


class ApiError(DuetError):
    """A non-2xx answer from the REST control plane: the HTTP `status` and the error body's stable `code`,
    `message` and `field` (a JSON path, when one field is at fault); `retry_after` in seconds on a 429."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(code, message)
        self.status = status
        self.field = field
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ApiError(status={self.status}, code={self.code!r}, message={self.message!r}, field={self.field!r})"
