"""Tenants and their API keys (`duet admin ...` and the `/v1/keys` routes), and authentication."""

from __future__ import annotations

import time
from collections import OrderedDict
from datetime import datetime
from typing import Any

from orchestrator.config import ApiSettings
from orchestrator.control.credentials import key_matches, new_key, parse_key
from orchestrator.control.webhooks import iso_utc, new_secret
from orchestrator.errors import Unauthenticated
from orchestrator.store.ids import new_id
from orchestrator.store.records import TIERS, ApiKey, KeyCheck, Tenant
from orchestrator.store.store import Store, utc_now

KEY_TOUCH_S = 60.0  # `last_used_at` is written at most this often per key (not on every request)


async def create_tenant(
    store: Store,
    name: str,
    settings: ApiSettings,
    *,
    tier: str = "standard",
    max_concurrent_conversations: int | None = None,
    max_minutes_per_day: int | None = None,
) -> dict[str, str]:
    """A tenant with its first API key; the key and the webhook secret are in the answer and nowhere else
    in clear (the store keeps the key's salted digest)."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}")
    if not name.strip() or len(name) > 200:
        raise ValueError("a tenant name is 1..200 characters")
    tenant = await store.create_tenant(
        name.strip(),
        webhook_secret=new_secret(),
        tier=tier,
        max_concurrent_conversations=(
            settings.max_concurrent_conversations
            if max_concurrent_conversations is None
            else max_concurrent_conversations
        ),
        max_minutes_per_day=settings.max_minutes_per_day if max_minutes_per_day is None else max_minutes_per_day,
    )
    _, api_key = await create_key(store, tenant.id, "first key")
    return {"tenant_id": tenant.id, "api_key": api_key, "webhook_secret": tenant.webhook_secret}


async def create_key(store: Store, tenant_id: str, name: str | None = None) -> tuple[ApiKey, str]:
    made = new_key(new_id("key"))
    key = await store.add_key(
        tenant_id,
        key_id=made.key_id,
        name=name or "key",
        prefix=made.prefix,
        salt=made.salt,
        digest=made.digest,
        now=utc_now(),
    )
    return key, made.api_key


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": iso_utc(key.created_at),
        "revoked_at": iso_utc(key.revoked_at) if key.revoked_at else None,
        "last_used_at": iso_utc(key.last_used_at) if key.last_used_at else None,
    }


class KeyChecks:
    """Keys looked up in the last `ttl_s` (the lookup was a quarter of a request's cost under load). Revoking
    through this server forgets the key at once; a revocation by another process (`duet admin key revoke`)
    is seen within `ttl_s`."""

    def __init__(self, store: Store, ttl_s: float = 2.0, size: int = 10_000) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.size = size
        self._checks: OrderedDict[str, tuple[float, KeyCheck | None]] = OrderedDict()
        self.touched: dict[str, datetime] = {}  # when this process last wrote a key's `last_used_at`

    async def get(self, key_id: str) -> KeyCheck | None:
        now = time.monotonic()
        hit = self._checks.get(key_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        check = await self.store.key_check(key_id)
        self._checks[key_id] = (now, check)
        self._checks.move_to_end(key_id)
        while len(self._checks) > self.size:
            gone, _ = self._checks.popitem(last=False)
            self.touched.pop(gone, None)
        return check

    def forget(self, key_id: str) -> None:
        self._checks.pop(key_id, None)


async def authenticate(
    store: Store, authorization: str | None, now: datetime | None = None, checks: KeyChecks | None = None
) -> tuple[Tenant, ApiKey]:
    """The tenant of a `Bearer` API key; one message for every failure, so a probe learns nothing."""
    refused = Unauthenticated("a valid API key is required (Authorization: Bearer <key>)")
    if not authorization or not authorization.startswith("Bearer "):
        raise refused
    parsed = parse_key(authorization[len("Bearer ") :].strip())
    if parsed is None:
        raise refused
    key_id, secret = parsed
    check = await (checks.get(key_id) if checks is not None else store.key_check(key_id))
    if check is None or check.key.revoked_at is not None or not key_matches(check.salt, check.digest, secret):
        raise refused
    now = now or utc_now()
    last = check.key.last_used_at if checks is None else checks.touched.get(key_id, check.key.last_used_at)
    if last is None or (now - last).total_seconds() > KEY_TOUCH_S:
        if checks is not None:
            checks.touched[key_id] = now  # (a looked-up key carries the time it was read, not this write)
        await store.touch_key(key_id, now)
    return check.tenant, check.key
