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


class Draining(DuetError):
    """The server is shutting down (SIGTERM): it takes no new sessions, calls or renders while its live sessions
    finish. Not the client's fault: connect again, and another server takes the session."""

    code = "draining"


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


# ---- the control plane (REST); each maps to one HTTP status (orchestrator/api/http/errors.py) ----------------


class Invalid(DuetError):
    """A field of a request that breaks the API's schema or a rule of its service (HTTP 422 `invalid`); `field`
    is its JSON path (`$` = the whole body)."""

    code = "invalid"
    fatal = False

    def __init__(self, message: str, field: str = "$") -> None:
        super().__init__(message)
        self.field = field


class Unauthenticated(DuetError):
    """A missing, unknown or revoked API key; or a bad, expired or foreign join token."""

    code = "unauthenticated"


class NotFound(DuetError):
    """No such object for this tenant (another tenant's object is not found either: nothing confirms it exists)."""

    code = "not_found"
    fatal = False


class Conflict(DuetError):
    """The object is not in a state that allows this (a conversation already joined, ended, ...)."""

    code = "conflict"
    fatal = False


class QuotaExceeded(DuetError):
    """A tenant's quota (concurrent conversations, minutes per day) or a key's request rate is spent."""

    code = "rate_limited"
    fatal = False

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(DuetError):
    code = "unavailable"


class ConversationEnded(DuetError):
    """The conversation was ended while its session ran (`POST .../end`, its maximum duration): the session ends."""

    code = "conversation_ended"


class BadInteraction(DuetError):
    """An interaction (`echo`, `respond`, ... on the stream's `control` or the REST API) that cannot be carried
    out: an unknown type, missing text, a level not low|medium|high, or a session without replies. It is
    refused and the session goes on."""

    code = "bad_interaction"
    fatal = False

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # the offending key of the interaction object, when one is to blame


class UnknownToolCall(DuetError):
    """A `tool_result` whose `call_id` names no tool call the session is waiting on; refused, the session goes on."""

    code = "unknown_tool_call"
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
