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


class BadPortrait(DuetError):
    """A replica portrait that cannot be used: unreadable, too small or large, no face or several faces."""

    code = "bad_portrait"


class BadEmotion(DuetError):
    code = "bad_emotion"


class BadTimings(DuetError):
    """Malformed phoneme/word timings (or audio that does not match them)."""

    code = "bad_timings"


class BadFaceParams(DuetError):
    code = "bad_face_params"
