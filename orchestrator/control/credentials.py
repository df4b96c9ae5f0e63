"""API keys and join tokens: made here, checked here; the store keeps only digests.

An API key reads `duet_<26 characters of its key id>_<secret>`: the id part finds the row in one indexed
lookup, and the secret (256 random bits) is checked against a salted SHA-256 digest in constant time. A slow
password hash would add nothing against guessing a 256-bit secret and would cost every request
milliseconds. A join token is a random secret bound to one conversation; its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "duet_"
_ID_CHARS = 26


@dataclass(frozen=True)
class NewKey:
    key_id: str
    api_key: str  # shown once
    prefix: str  # the first characters, to tell keys apart in a list
    salt: bytes
    digest: bytes


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def new_key(key_id: str) -> NewKey:
    """A key for the id `key_<26 chars>`."""
    suffix = key_id.removeprefix("key_")
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    api_key = f"{KEY_PREFIX}{suffix}_{secret}"
    return NewKey(key_id, api_key, api_key[:13], salt, _digest(salt, secret))


def parse_key(api_key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    if not api_key.startswith(KEY_PREFIX) or len(api_key) > 200:
        return None
    rest = api_key[len(KEY_PREFIX) :]
    suffix, sep, secret = rest[:_ID_CHARS], rest[_ID_CHARS : _ID_CHARS + 1], rest[_ID_CHARS + 1 :]
    if sep != "_" or len(suffix) != _ID_CHARS or not secret:
        return None
    return f"key_{suffix}", secret


def key_matches(salt: bytes, digest: bytes, secret: str) -> bool:
    return hmac.compare_digest(_digest(salt, secret), digest)


def new_join_token() -> tuple[str, bytes]:
    """(token, digest)."""
    token = "jt_" + secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def token_matches(token: str, digest: bytes) -> bool:
    return hmac.compare_digest(token_digest(token), digest)
