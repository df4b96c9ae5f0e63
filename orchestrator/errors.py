"""Typed errors with stable codes; the session stream reports them as `Error{code, message, fatal}`."""

from __future__ import annotations

import re


class DuetError(Exception):
    """Base class: `code` is stable and machine-readable; the message says what to do about it."""

    code = "internal"
    fatal = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = public_message(message)


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


class RateLimited(DuetError):
    """Sessions are being started faster than `server.starts_per_s` (or per connection); try again shortly."""

    code = "rate_limited"


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


class IdleTimeout(DuetError):
    """The client sent no audio for `server.idle_timeout_s`: its session ends and its slot is free again."""

    code = "idle_timeout"


class AudioTooFast(DuetError):
    """Audio arrives faster than real time beyond the burst allowance; the server reads it at real time."""

    code = "audio_too_fast"
    fatal = False


class TooManyErrors(DuetError):
    """The client kept sending input that had to be refused (`server.max_client_errors`); the session ends."""

    code = "too_many_errors"


class TextTooLong(DuetError):
    """A `text` message over `server.max_text_chars`; it is refused and the session goes on."""

    code = "text_too_long"
    fatal = False


# What never leaves the server in a message: object reprs with heap addresses, bare addresses, tracebacks.
_INTERNALS = (
    (re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>"), "<data>"),
    (re.compile(r"\b0x[0-9a-fA-F]{6,}\b"), "<address>"),
    (re.compile(r"Traceback \(most recent call last\):.*", re.S), ""),
)


def public_message(message: str, limit: int = 1000) -> str:
    """`message` fit for a client: no heap addresses or tracebacks, at most `limit` characters."""
    for pattern, repl in _INTERNALS:
        message = pattern.sub(repl, message)
    return message if len(message) <= limit else message[: limit - 1] + "…"
