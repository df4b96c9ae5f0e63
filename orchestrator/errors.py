"""Typed errors with stable codes; the session stream reports them as `Error{code, message, fatal}`."""

from __future__ import annotations


class DuetError(Exception):
    """Base class: `code` is stable and machine-readable; the message says what to do about it."""

    code = "internal"
    fatal = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadAudioFormat(DuetError):
    code = "bad_audio_format"


class BadAudioChunk(DuetError):
    code = "bad_audio_chunk"
    fatal = False


class ProtocolError(DuetError):
    code = "protocol"


class MessageTooLarge(DuetError):
    code = "message_too_large"


class BadOption(DuetError):
    code = "bad_option"


class ModelUnavailable(DuetError):
    """Triton is unreachable or a model failed; the session ends, other sessions are unaffected."""

    code = "model_unavailable"


class TritonStartError(DuetError):
    code = "triton_start"


class ServerBusy(DuetError):
    code = "server_busy"
