"""Ids with a type prefix (`per_`, `conv_`, ...) that sort by creation time: 48 bits of milliseconds, then 80
random bits, in lower-case Crockford base32. Lists page on the id alone, and an id says what it names."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
PREFIXES = ("ten", "key", "per", "face", "conv", "msg", "doc", "chk", "mem", "grd", "obj")
_ID = re.compile(r"^(" + "|".join(PREFIXES) + r")_[0-9a-hjkmnp-tv-z]{26}$")


def _b32(value: int, chars: int) -> str:
    out = []
    for _ in range(chars):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(prefix: str, now_ms: int | None = None) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{prefix}_{_b32(ms & ((1 << 50) - 1), 10)}{_b32(secrets.randbits(80), 16)}"


def is_id(value: str, prefix: str) -> bool:
    return bool(_ID.match(value)) and value.startswith(prefix + "_")


def cursor_for(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def id_from_cursor(cursor: str) -> str | None:
    """The id a cursor stands for, or None when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return raw if _ID.match(raw) else None
