"""The store: the only code that touches the database (SQLAlchemy 2 async; SQLite or PostgreSQL, same code).

Every method is one unit of work (one transaction). Methods on a tenant's objects take the tenant id and put
it in the query, so another tenant's id is simply not found. A change that webhooks report writes its outbox
rows in the same transaction (the transactional outbox): nothing is reported that did not happen, and
nothing that happened goes unreported, whatever crashes when.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from orchestrator.errors import Conflict, NotFound
from orchestrator.store import tables as t
from orchestrator.store.ids import cursor_for, id_from_cursor, new_id
from orchestrator.store.records import (
    ApiKey,
    BodyRecord,
    ChunkRecord,
    ConversationRecord,
    DocumentRecord,
    DueWebhook,
    FaceRecord,
    Hold,
    KeyCheck,
    MemoryRecord,
    NewChunk,
    Page,
    PersonaRecord,
    Tenant,
    Utterance,
    WebhookAttempt,
    WebhookEvent,
    WebhookMessage,
)

R = TypeVar("R")
WEBHOOK_LEASE_S = 30.0  # a claimed webhook is handed out again after this long (its deliverer died)


def transient(err: BaseException) -> bool:
    """Whether a store call failed because the database was away (restarting, unreachable, a dropped
    connection), so the same call may succeed later; not for a constraint or a bad statement."""
    if isinstance(err, (sa.exc.OperationalError, sa.exc.InterfaceError)) or (
        isinstance(err, sa.exc.DBAPIError) and err.connection_invalidated
    ):
        return True
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:  # the driver's own error, under SQLAlchemy's wrappers
        seen.add(id(cause))
        code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        # SQLSTATE class 08: connection exception; 57P0x: the server shutting down, crashed or starting up
        if isinstance(code, str) and code.startswith(("08", "57P")):
            return True
        if isinstance(cause, (OSError, ConnectionError, TimeoutError)):
            return True
        orig = getattr(cause, "orig", None)
        cause = orig if isinstance(orig, BaseException) else cause.__cause__
    return False


def utc_now() -> datetime:
    return datetime.now(UTC)


def database_url(url: str) -> str:
    """The SQLAlchemy URL of a store setting: `postgresql://` selects asyncpg, a path or `sqlite:///` aiosqlite."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if "://" not in url:
        return f"sqlite+aiosqlite:///{url}"
    return url


class BadCursor(ValueError):
    pass


def _after(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    last = id_from_cursor(cursor)
    if last is None:
        raise BadCursor("cursor is not one this server handed out")
    return last


def _page(rows: Sequence[R], limit: int, id_of: Any) -> Page[R]:
    more = len(rows) > limit
    data = list(rows[:limit])
    return Page(data, cursor_for(id_of(data[-1])) if more and data else None)


def _tenant(r: Any) -> Tenant:
    return Tenant(
        r.id, r.name, r.tier, r.webhook_secret, r.max_concurrent_conversations, r.max_minutes_per_day, r.created_at
    )


def _key(r: Any) -> ApiKey:
    return ApiKey(r.id, r.tenant_id, r.name, r.prefix, r.created_at, r.revoked_at, r.last_used_at)


def _persona(r: Any) -> PersonaRecord:
    return PersonaRecord(r.id, r.tenant_id, dict(r.body), r.created_at, r.updated_at)


def _face(r: Any) -> FaceRecord:
    return FaceRecord(r.id, r.tenant_id, r.name, r.status, r.error, r.created_at)


def _conversation(r: Any) -> ConversationRecord:
    return ConversationRecord(
        r.id,
        r.tenant_id,
        r.persona_id,
        r.status,
        r.shutdown_reason,
        dict(r.settings),
        r.callback_url,
        r.token_expires_at,
        r.created_at,
        r.started_at,
        r.ended_at,
        r.holder,
        r.holder_url,
        r.held_until,
    )


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.backend = engine.dialect.name  # "sqlite" | "postgresql"
        # SQLite has one writer at a time. Writers of this process queue here, on the event loop, rather than
        # in SQLite's busy handler (which sleeps and retries: 5 of 8 concurrent writers were found asleep in
        # it); other processes on the same file (`duet admin`) still meet the busy timeout.
        self._sqlite_writer = asyncio.Lock() if self.backend == "sqlite" else None

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction (on SQLite, one at a time in this process)."""
        if self._sqlite_writer is None:
            async with self.engine.begin() as c:
                yield c
            return
        async with self._sqlite_writer, self.engine.begin() as c:
            yield c

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> None:
        """One trivial query: raises when the database does not answer (the readiness check)."""
        async with self.engine.connect() as c:
            await c.execute(sa.text("SELECT 1"))

    # ---- tenants and keys -----------------------------------------------------------------------------------

    async def create_tenant(
        self,
        name: str,
        *,
        webhook_secret: str,
        tier: str = "standard",
        max_concurrent_conversations: int = 16,
        max_minutes_per_day: int = 0,
        now: datetime | None = None,
    ) -> Tenant:
        row: dict[str, Any] = {
            "id": new_id("ten"),
            "name": name,
            "tier": tier,
            "webhook_secret": webhook_secret,
            "max_concurrent_conversations": max_concurrent_conversations,
            "max_minutes_per_day": max_minutes_per_day,
            "created_at": now or utc_now(),
        }
        async with self._write() as c:
            await c.execute(t.tenants.insert().values(**row))
        return Tenant(**row)

    async def get_tenant(self, tenant_id: str) -> Tenant:
        async with self.engine.connect() as c:
            r = (await c.execute(t.tenants.select().where(t.tenants.c.id == tenant_id))).first()
        if r is None:
            raise NotFound(f"no tenant {tenant_id}")
        return _tenant(r)

    async def list_tenants(self) -> list[Tenant]:
        async with self.engine.connect() as c:
            rows = (await c.execute(t.tenants.select().order_by(t.tenants.c.id))).all()
        return [_tenant(r) for r in rows]

    async def add_key(
        self, tenant_id: str, *, key_id: str, name: str, prefix: str, salt: bytes, digest: bytes, now: datetime
    ) -> ApiKey:
        row: dict[str, Any] = {"id": key_id, "tenant_id": tenant_id, "name": name, "prefix": prefix, "created_at": now}
        async with self._write() as c:
            await self._tenant_exists(c, tenant_id)
            await c.execute(t.api_keys.insert().values(**row, salt=salt, digest=digest))
        return ApiKey(**row)

    async def key_check(self, key_id: str) -> KeyCheck | None:
        """A key's digest and tenant, for authentication (revoked keys included: the caller refuses them)."""
        k, ten = t.api_keys, t.tenants
        q = sa.select(k, *[c.label(f"t_{c.name}") for c in ten.c]).join(ten, ten.c.id == k.c.tenant_id)
        async with self.engine.connect() as c:
            r = (await c.execute(q.where(k.c.id == key_id))).first()
        if r is None:
            return None
        m = r._mapping
        tenant = Tenant(**{col.name: m[f"t_{col.name}"] for col in ten.c})
        return KeyCheck(_key(r), bytes(r.salt), bytes(r.digest), tenant)

    async def touch_key(self, key_id: str, now: datetime) -> None:
        async with self._write() as c:
            await c.execute(t.api_keys.update().where(t.api_keys.c.id == key_id).values(last_used_at=now))

    async def list_keys(self, tenant_id: str) -> list[ApiKey]:
        async with self.engine.connect() as c:
            q = t.api_keys.select().where(t.api_keys.c.tenant_id == tenant_id).order_by(t.api_keys.c.id)
            rows = (await c.execute(q)).all()
        return [_key(r) for r in rows]

    async def revoke_key(self, tenant_id: str, key_id: str, now: datetime) -> ApiKey:
        k = t.api_keys
        scope = (k.c.id == key_id) & (k.c.tenant_id == tenant_id)
        async with self._write() as c:
            await c.execute(k.update().where(scope & k.c.revoked_at.is_(None)).values(revoked_at=now))
            r = (await c.execute(k.select().where(scope))).first()
        if r is None:
            raise NotFound(f"no API key {key_id}")
        return _key(r)

    async def _tenant_exists(self, c: AsyncConnection, tenant_id: str) -> None:
        if (await c.execute(sa.select(t.tenants.c.id).where(t.tenants.c.id == tenant_id))).first() is None:
            raise NotFound(f"no tenant {tenant_id}")

    # ---- a tenant's objects: one row, one deletion, one page (every query scoped by the tenant) -------------

    async def _one(self, table: sa.Table, tenant_id: str, object_id: str, what: str) -> Any:
        """The row `object_id` of `table` if `tenant_id` owns it; else `NotFound` (another tenant's included)."""
        scope = (table.c.id == object_id) & (table.c.tenant_id == tenant_id)
        async with self.engine.connect() as c:
            r = (await c.execute(table.select().where(scope))).first()
        if r is None:
            raise NotFound(f"no {what} {object_id}")
        return r

    async def _delete(self, table: sa.Table, tenant_id: str, object_id: str, what: str) -> None:
        scope = (table.c.id == object_id) & (table.c.tenant_id == tenant_id)
        async with self._write() as c:
            done = await c.execute(table.delete().where(scope))
        if done.rowcount == 0:
            raise NotFound(f"no {what} {object_id}")

    async def _rows_after(
        self, table: sa.Table, scope: sa.ColumnElement[bool], limit: int, cursor: str | None
    ) -> Sequence[Any]:
        """Up to `limit + 1` rows of `table` in `scope`, oldest first, after the cursor's id (one more than a
        page: `_page` tells from it whether there is a next one)."""
        q = table.select().where(scope)
        if (after := _after(cursor)) is not None:
            q = q.where(table.c.id > after)
        async with self.engine.connect() as c:
            return (await c.execute(q.order_by(table.c.id).limit(limit + 1))).all()

    # ---- personas ---------------------------------------------------------------------------------------------

    async def create_persona(self, tenant_id: str, body: dict[str, Any], now: datetime) -> PersonaRecord:
        row: dict[str, Any] = {
            "id": new_id("per"),
            "tenant_id": tenant_id,
            "body": body,
            "created_at": now,
            "updated_at": now,
        }
        async with self._write() as c:
            await c.execute(t.personas.insert().values(**row))
        return PersonaRecord(**row)

    async def get_persona(self, tenant_id: str, persona_id: str) -> PersonaRecord:
        return _persona(await self._one(t.personas, tenant_id, persona_id, "persona"))

    async def list_personas(self, tenant_id: str, limit: int, cursor: str | None) -> Page[PersonaRecord]:
        rows = await self._rows_after(t.personas, t.personas.c.tenant_id == tenant_id, limit, cursor)
        return _page([_persona(r) for r in rows], limit, lambda x: x.id)

    async def update_persona(
        self, tenant_id: str, persona_id: str, body: dict[str, Any], now: datetime
    ) -> PersonaRecord:
        p = t.personas
        scope = (p.c.id == persona_id) & (p.c.tenant_id == tenant_id)
        async with self._write() as c:
            done = await c.execute(p.update().where(scope).values(body=body, updated_at=now))
            if done.rowcount == 0:
                raise NotFound(f"no persona {persona_id}")
            r = (await c.execute(p.select().where(scope))).one()
        return _persona(r)

    async def delete_persona(self, tenant_id: str, persona_id: str) -> None:
        await self._delete(t.personas, tenant_id, persona_id, "persona")

    # ---- faces --------------------------------------------------------------------------------------------------

    async def create_face(self, tenant_id: str, name: str, now: datetime, face_id: str | None = None) -> FaceRecord:
        row: dict[str, Any] = {
            "id": face_id or new_id("face"),
            "tenant_id": tenant_id,
            "name": name,
            "status": "preparing",
            "error": None,
            "created_at": now,
        }
        async with self._write() as c:
            await c.execute(t.faces.insert().values(**row))
        return FaceRecord(**row)

    async def set_face_status(self, face_id: str, status: str, error: str | None = None) -> None:
        async with self._write() as c:
            await c.execute(t.faces.update().where(t.faces.c.id == face_id).values(status=status, error=error))

    async def get_face(self, tenant_id: str, face_id: str) -> FaceRecord:
        return _face(await self._one(t.faces, tenant_id, face_id, "face"))

    async def list_faces(self, tenant_id: str, limit: int, cursor: str | None) -> Page[FaceRecord]:
        rows = await self._rows_after(t.faces, t.faces.c.tenant_id == tenant_id, limit, cursor)
        return _page([_face(r) for r in rows], limit, lambda x: x.id)

    async def delete_face(self, tenant_id: str, face_id: str) -> None:
        await self._delete(t.faces, tenant_id, face_id, "face")

    # ---- conversations --------------------------------------------------------------------------------------

    async def create_conversation(
        self,
        tenant_id: str,
        *,
        persona_id: str,
        settings: dict[str, Any],
        callback_url: str | None,
        token_digest: bytes,
        token_expires_at: datetime,
        now: datetime,
        max_concurrent: int,
    ) -> ConversationRecord:
        """Creates a conversation unless the tenant already has `max_concurrent` open ones (active, or created
        with a token still valid): then `QuotaFull`. The count and the insert are one transaction."""
        conv = t.conversations
        row: dict[str, Any] = {
            "id": new_id("conv"),
            "tenant_id": tenant_id,
            "persona_id": persona_id,
            "status": "created",
            "shutdown_reason": None,
            "settings": settings,
            "callback_url": callback_url,
            "token_expires_at": token_expires_at,
            "created_at": now,
        }
        async with self._write() as c:
            await self._lock_tenant(c, tenant_id)
            if await _open_count(c, tenant_id, now) >= max_concurrent:
                raise QuotaFull(f"the tenant has {max_concurrent} open conversations, its limit")
            await c.execute(conv.insert().values(**row, token_digest=token_digest))
        return ConversationRecord(**row)

    async def _lock_tenant(self, c: AsyncConnection, tenant_id: str) -> None:
        """Serialise a tenant's quota checks: PostgreSQL locks the tenant's row. SQLite begins a transaction
        at its first write, not at BEGIN (Python's sqlite3 driver), so a count read first would see a state
        another writer is about to change: a write to the tenant's row comes first, taking the database's
        write lock, and the count after it is the latest."""
        if self.backend == "sqlite":
            ten = t.tenants
            touched = await c.execute(ten.update().where(ten.c.id == tenant_id).values(tier=ten.c.tier))
            if touched.rowcount == 0:
                raise NotFound(f"no tenant {tenant_id}")
            return
        q = sa.select(t.tenants.c.id).where(t.tenants.c.id == tenant_id).with_for_update()
        if (await c.execute(q)).first() is None:
            raise NotFound(f"no tenant {tenant_id}")

    async def get_conversation(self, tenant_id: str, conversation_id: str) -> ConversationRecord:
        return _conversation(await self._one(t.conversations, tenant_id, conversation_id, "conversation"))

    async def conversation_for_join(self, conversation_id: str) -> tuple[ConversationRecord, bytes] | None:
        """A conversation and its join token's digest, by id alone: the token is what proves the right to it."""
        conv = t.conversations
        async with self.engine.connect() as c:
            r = (await c.execute(conv.select().where(conv.c.id == conversation_id))).first()
        return None if r is None else (_conversation(r), bytes(r.token_digest))

    async def list_conversations(
        self, tenant_id: str, limit: int, cursor: str | None, status: str | None = None
    ) -> Page[ConversationRecord]:
        conv = t.conversations
        scope = conv.c.tenant_id == tenant_id
        if status is not None:
            scope &= conv.c.status == status
        rows = await self._rows_after(conv, scope, limit, cursor)
        return _page([_conversation(r) for r in rows], limit, lambda x: x.id)

    async def activate_conversation(
        self,
        conversation_id: str,
        now: datetime,
        events: Sequence[WebhookEvent] = (),
        hold: Hold | None = None,
    ) -> ConversationRecord:
        """created → active, once: a second join is a `Conflict` (the row changes only if still `created`).
        `hold`: the orchestrator that runs the session, and its lease (see `renew_holds`)."""
        conv = t.conversations
        held = {} if hold is None else {"holder": hold.holder, "holder_url": hold.url, "held_until": hold.until}
        async with self._write() as c:
            done = await c.execute(
                conv.update()
                .where((conv.c.id == conversation_id) & (conv.c.status == "created"))
                .values(status="active", started_at=now, **held)
            )
            r = (await c.execute(conv.select().where(conv.c.id == conversation_id))).first()
            if r is None:
                raise NotFound(f"no conversation {conversation_id}")
            if done.rowcount == 0:
                raise Conflict(f"conversation {conversation_id} is {r.status}; it can be joined once")
            record = _conversation(r)
            await self._enqueue(c, record, events, now)
        return record

    async def end_conversation(
        self,
        conversation_id: str,
        reason: str,
        now: datetime,
        events: Sequence[WebhookEvent] = (),
        tenant_id: str | None = None,
    ) -> ConversationRecord:
        """created|active → ended with `reason`; ending an ended conversation is a `Conflict`."""
        conv = t.conversations
        scope = conv.c.id == conversation_id
        if tenant_id is not None:
            scope &= conv.c.tenant_id == tenant_id
        async with self._write() as c:
            done = await c.execute(
                conv.update()
                .where(scope & (conv.c.status != "ended"))
                .values(status="ended", shutdown_reason=reason, ended_at=now)
            )
            r = (await c.execute(conv.select().where(scope))).first()
            if r is None:
                raise NotFound(f"no conversation {conversation_id}")
            if done.rowcount == 0:
                raise Conflict(f"conversation {conversation_id} has already ended")
            record = _conversation(r)
            await self._enqueue(c, record, events, now)
        return record

    async def renew_holds(self, holder: str, conversation_ids: Sequence[str], until: datetime) -> int:
        """`holder` still runs these conversations: their leases now last until `until`. Only active ones that
        `holder` holds change (a conversation a sweeper already ended stays ended). Returns how many."""
        if not conversation_ids:
            return 0
        conv = t.conversations
        renewed = 0
        async with self._write() as c:
            for i in range(0, len(conversation_ids), 500):
                ids = list(conversation_ids[i : i + 500])
                done = await c.execute(
                    conv.update()
                    .where(conv.c.id.in_(ids) & (conv.c.holder == holder) & (conv.c.status == "active"))
                    .values(held_until=until)
                )
                renewed += done.rowcount
        return renewed

    async def orphaned(self, now: datetime, limit: int = 500) -> list[ConversationRecord]:
        """Active conversations whose holder's lease ran out before `now`: the orchestrator that ran them is
        gone (crashed, killed, cut off from the store). Conversations activated without a hold never expire."""
        conv = t.conversations
        q = conv.select().where((conv.c.status == "active") & (conv.c.held_until < now))
        async with self.engine.connect() as c:
            rows = (await c.execute(q.order_by(conv.c.held_until).limit(limit))).all()
        return [_conversation(r) for r in rows]

    async def stale_created(
        self, before: datetime, limit: int = 500, after: str | None = None
    ) -> list[ConversationRecord]:
        """Conversations of every tenant still waiting to be joined, created before `before`, by id after
        `after` (the sweeper pages through them)."""
        conv = t.conversations
        q = conv.select().where((conv.c.status == "created") & (conv.c.created_at < before))
        if after is not None:
            q = q.where(conv.c.id > after)
        async with self.engine.connect() as c:
            rows = (await c.execute(q.order_by(conv.c.id).limit(limit))).all()
        return [_conversation(r) for r in rows]

    async def open_conversations(self, tenant_id: str, now: datetime) -> int:
        async with self.engine.connect() as c:
            return await _open_count(c, tenant_id, now)

    async def minutes_used(self, tenant_id: str, since: datetime, now: datetime) -> float:
        """Conversation minutes since `since`: ended ones in full, active ones so far."""
        conv = t.conversations
        q = sa.select(conv.c.started_at, conv.c.ended_at).where(
            (conv.c.tenant_id == tenant_id) & conv.c.started_at.is_not(None) & (conv.c.started_at >= since)
        )
        async with self.engine.connect() as c:
            rows = (await c.execute(q)).all()
        return float(sum(((r.ended_at or now) - r.started_at).total_seconds() for r in rows)) / 60.0

    async def add_utterance(
        self,
        conversation_id: str,
        role: str,
        text: str,
        ts: float,
        perception: dict[str, Any] | None = None,
        events: Sequence[WebhookEvent] = (),
        now: datetime | None = None,
    ) -> Utterance:
        u = t.utterances
        async with self._write() as c:
            q = sa.select(sa.func.coalesce(sa.func.max(u.c.seq), -1)).where(u.c.conversation_id == conversation_id)
            seq = int((await c.execute(q)).scalar_one()) + 1
            row: dict[str, Any] = {"conversation_id": conversation_id, "seq": seq, "role": role, "text": text, "t": ts}
            await c.execute(u.insert().values(**row, perception=perception))
            if events:
                r = (await c.execute(t.conversations.select().where(t.conversations.c.id == conversation_id))).one()
                await self._enqueue(c, _conversation(r), events, now or utc_now())
        return Utterance(**row, perception=perception)

    async def set_utterance_perception(self, conversation_id: str, seq: int, perception: dict[str, Any]) -> None:
        u = t.utterances
        async with self._write() as c:
            await c.execute(
                u.update()
                .where((u.c.conversation_id == conversation_id) & (u.c.seq == seq))
                .values(perception=perception)
            )

    async def transcript(self, tenant_id: str, conversation_id: str) -> list[Utterance]:
        await self.get_conversation(tenant_id, conversation_id)  # scope: another tenant's id is not found
        u = t.utterances
        async with self.engine.connect() as c:
            q = u.select().where(u.c.conversation_id == conversation_id).order_by(u.c.seq)
            rows = (await c.execute(q)).all()
        return [Utterance(r.conversation_id, r.seq, r.role, r.text, r._mapping["t"], r.perception) for r in rows]

    # ---- webhooks: the outbox ---------------------------------------------------------------------------------

    async def _enqueue(
        self, c: AsyncConnection, conv: ConversationRecord, events: Sequence[WebhookEvent], now: datetime
    ) -> None:
        if not events or not conv.callback_url:
            return
        rows = [
            {
                "id": new_id("msg"),
                "tenant_id": conv.tenant_id,
                "conversation_id": conv.id,
                "event_type": e.event_type,
                "url": conv.callback_url,
                "body": json.dumps(e.payload, separators=(",", ":"), ensure_ascii=False),
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "delivered_at": None,
            }
            for e in events
        ]
        await c.execute(t.webhook_messages.insert(), rows)

    async def enqueue_webhooks(self, conversation_id: str, events: Sequence[WebhookEvent], now: datetime) -> None:
        async with self._write() as c:
            r = (await c.execute(t.conversations.select().where(t.conversations.c.id == conversation_id))).first()
            if r is None:
                raise NotFound(f"no conversation {conversation_id}")
            await self._enqueue(c, _conversation(r), events, now)

    async def due_webhooks(self, now: datetime, limit: int) -> list[DueWebhook]:
        """Claims up to `limit` pending messages whose attempt is due (oldest first): their next attempt moves
        `WEBHOOK_LEASE_S` on, so no other deliverer takes them meanwhile, and a deliverer that dies with them
        loses nothing (they are handed out again after the lease)."""
        m, ten = t.webhook_messages, t.tenants
        due = (m.c.status == "pending") & (m.c.next_attempt_at <= now)
        q = (
            sa.select(m.c.id, m.c.tenant_id, m.c.conversation_id, m.c.url, m.c.body, m.c.attempts, ten.c.webhook_secret)
            .join(ten, ten.c.id == m.c.tenant_id)
            .where(due)
            .order_by(m.c.next_attempt_at, m.c.id)
            .limit(limit)
        )
        if self.backend == "postgresql":
            q = q.with_for_update(of=m, skip_locked=True)
        else:  # a look without the write lock first: most polls find nothing due
            async with self.engine.connect() as c:
                if (await c.execute(sa.select(m.c.id).where(due).limit(1))).first() is None:
                    return []
        async with self._write() as c:
            if self.backend == "sqlite":  # take the write lock before reading (see `_lock_tenant`)
                await c.execute(m.update().where(m.c.id == "").values(status=m.c.status))
            rows = (await c.execute(q)).all()
            if rows:
                lease = now + timedelta(seconds=WEBHOOK_LEASE_S)
                ids = [r.id for r in rows]
                await c.execute(m.update().where(m.c.id.in_(ids) & due).values(next_attempt_at=lease))
        return [
            DueWebhook(r.id, r.tenant_id, r.conversation_id, r.url, r.body, r.attempts, r.webhook_secret) for r in rows
        ]

    async def record_webhook_attempt(
        self,
        message_id: str,
        *,
        at: datetime,
        status_code: int | None,
        error: str | None,
        duration_ms: float,
        delivered: bool,
        next_attempt_at: datetime | None,
    ) -> None:
        m = t.webhook_messages
        if delivered:
            values: dict[str, Any] = {"status": "delivered", "delivered_at": at, "next_attempt_at": None}
        elif next_attempt_at is None:
            values = {"status": "failed", "next_attempt_at": None}
        else:
            values = {"next_attempt_at": next_attempt_at}
        async with self._write() as c:
            await c.execute(
                t.webhook_attempts.insert().values(
                    message_id=message_id, at=at, status_code=status_code, error=error, duration_ms=duration_ms
                )
            )
            await c.execute(
                # a late attempt (after its lease ran out and another deliverer took over) changes no settled message
                m.update()
                .where((m.c.id == message_id) & (m.c.status == "pending"))
                .values(**values, attempts=m.c.attempts + 1)
            )

    async def next_webhook_due(self) -> datetime | None:
        m = t.webhook_messages
        async with self.engine.connect() as c:
            q = sa.select(sa.func.min(m.c.next_attempt_at)).where(m.c.status == "pending")
            value = (await c.execute(q)).scalar_one()
        return t.UtcDateTime().process_result_value(value, self.engine.dialect)

    async def webhook_backlog(self) -> int:
        m = t.webhook_messages
        async with self.engine.connect() as c:
            q = sa.select(sa.func.count()).select_from(m).where(m.c.status == "pending")
            return int((await c.execute(q)).scalar_one())

    async def list_webhooks(
        self, tenant_id: str, conversation_id: str, limit: int, cursor: str | None
    ) -> Page[WebhookMessage]:
        await self.get_conversation(tenant_id, conversation_id)
        m, a = t.webhook_messages, t.webhook_attempts
        scope = (m.c.tenant_id == tenant_id) & (m.c.conversation_id == conversation_id)
        rows = await self._rows_after(m, scope, limit, cursor)
        async with self.engine.connect() as c:
            ids = [r.id for r in rows[:limit]]
            tries: dict[str, list[WebhookAttempt]] = {i: [] for i in ids}
            if ids:
                aq = a.select().where(a.c.message_id.in_(ids)).order_by(a.c.id)
                for r in (await c.execute(aq)).all():
                    tries[r.message_id].append(WebhookAttempt(r.at, r.status_code, r.error, r.duration_ms))
        messages = [
            WebhookMessage(
                r.id,
                r.conversation_id,
                r.event_type,
                r.url,
                r.status,
                r.created_at,
                r.delivered_at,
                r.next_attempt_at,
                tuple(tries.get(r.id, ())),
            )
            for r in rows
        ]
        return _page(messages, limit, lambda x: x.id)

    # ---- idempotency keys -------------------------------------------------------------------------------------

    async def idempotent_answer(self, tenant_id: str, operation: str, key: str) -> tuple[str, int, str] | None:
        """(request digest, status, body) of the first request with this key, if any."""
        i = t.idempotency_keys
        scope = (i.c.tenant_id == tenant_id) & (i.c.operation == operation) & (i.c.key == key)
        async with self.engine.connect() as c:
            r = (await c.execute(sa.select(i.c.request_digest, i.c.status, i.c.body).where(scope))).first()
        return None if r is None else (r.request_digest, r.status, r.body)

    async def keep_answer(
        self, tenant_id: str, operation: str, key: str, digest: str, status: int, body: str, now: datetime
    ) -> bool:
        """Remembers an answer; False when another request with the key got there first."""
        row: dict[str, Any] = {
            "tenant_id": tenant_id,
            "operation": operation,
            "key": key,
            "request_digest": digest,
            "status": status,
            "body": body,
            "created_at": now,
        }
        try:
            async with self._write() as c:
                await c.execute(t.idempotency_keys.insert().values(**row))
        except sa.exc.IntegrityError:
            return False
        return True

    # ---- documents and their chunks (the knowledge base) ----------------------------------------------------

    async def create_document(
        self, tenant_id: str, *, name: str, tags: Sequence[str], content_type: str, size: int, now: datetime
    ) -> DocumentRecord:
        row: dict[str, Any] = {
            "id": new_id("doc"),
            "tenant_id": tenant_id,
            "name": name,
            "tags": list(tags),
            "content_type": content_type,
            "size": size,
            "status": "processing",
            "error": None,
            "chunks": 0,
            "created_at": now,
            "updated_at": now,
        }
        async with self._write() as c:
            await c.execute(t.documents.insert().values(**row))
        return _document(row_of(row))

    async def finish_document(self, document_id: str, chunks: Sequence[NewChunk], now: datetime) -> bool:
        """A processed document's chunks, written with its `ready` status in one transaction (all or none).
        False when the document is gone or no longer processing (deleted meanwhile): nothing is written."""
        d = t.documents
        async with self._write() as c:
            r = (await c.execute(sa.select(d.c.tenant_id, d.c.status).where(d.c.id == document_id))).first()
            if r is None or r.status != "processing":
                return False
            if chunks:
                await c.execute(
                    t.chunks.insert(),
                    [
                        {
                            "id": new_id("chk"),
                            "tenant_id": r.tenant_id,
                            "document_id": document_id,
                            "seq": i,
                            "heading": ch.heading,
                            "text": ch.text,
                            "vector": ch.vector,
                            "sentence_vectors": ch.sentence_vectors,
                        }
                        for i, ch in enumerate(chunks)
                    ],
                )
            await c.execute(d.update().where(d.c.id == document_id).values(status="ready", chunks=len(chunks),
                                                                             updated_at=now))  # fmt: skip
        return True

    async def fail_document(self, document_id: str, error: str, now: datetime) -> None:
        d = t.documents
        async with self._write() as c:
            await c.execute(
                d.update()
                .where((d.c.id == document_id) & (d.c.status == "processing"))
                .values(status="failed", error=error[:2000], updated_at=now)
            )

    async def get_document(self, tenant_id: str, document_id: str) -> DocumentRecord:
        return _document(await self._one(t.documents, tenant_id, document_id, "document"))

    async def list_documents(self, tenant_id: str, limit: int, cursor: str | None) -> Page[DocumentRecord]:
        rows = await self._rows_after(t.documents, t.documents.c.tenant_id == tenant_id, limit, cursor)
        return _page([_document(r) for r in rows], limit, lambda x: x.id)

    async def delete_document(self, tenant_id: str, document_id: str) -> None:
        d = t.documents
        scope = (d.c.id == document_id) & (d.c.tenant_id == tenant_id)
        async with self._write() as c:
            await c.execute(t.chunks.delete().where((t.chunks.c.document_id == document_id)
                                                    & (t.chunks.c.tenant_id == tenant_id)))  # fmt: skip
            done = await c.execute(d.delete().where(scope))
            if done.rowcount == 0:
                raise NotFound(f"no document {document_id}")

    async def ready_documents(self, tenant_id: str) -> list[DocumentRecord]:
        d = t.documents
        async with self.engine.connect() as c:
            rows = (await c.execute(d.select().where((d.c.tenant_id == tenant_id) & (d.c.status == "ready")))).all()
        return [_document(r) for r in rows]

    async def knowledge_version(self, tenant_id: str) -> tuple[int, str]:
        """A cheap fingerprint of a tenant's ready documents (their number and the newest id): a search index
        built from an older fingerprint is stale."""
        d = t.documents
        q = sa.select(sa.func.count(d.c.id), sa.func.max(d.c.id)).where(
            (d.c.tenant_id == tenant_id) & (d.c.status == "ready")
        )
        async with self.engine.connect() as c:
            n, newest = (await c.execute(q)).one()
        return int(n or 0), str(newest or "")

    async def chunks_of(self, tenant_id: str, document_ids: Sequence[str] | None = None) -> list[ChunkRecord]:
        """The chunks of a tenant's ready documents (or of those of `document_ids`), with each one's tags."""
        ch, d = t.chunks, t.documents
        q = (
            sa.select(ch, d.c.tags)
            .join(d, d.c.id == ch.c.document_id)
            .where((ch.c.tenant_id == tenant_id) & (d.c.tenant_id == tenant_id) & (d.c.status == "ready"))
        )
        if document_ids is not None:
            q = q.where(ch.c.document_id.in_(list(document_ids)))
        async with self.engine.connect() as c:
            rows = (await c.execute(q.order_by(ch.c.document_id, ch.c.seq))).all()
        return [
            ChunkRecord(
                r.id, r.document_id, r.seq, r.heading, r.text, bytes(r.vector), bytes(r.sentence_vectors), tuple(r.tags)
            )
            for r in rows
        ]

    # ---- memories (per tenant and memory store) ----------------------------------------------------------------

    async def add_memory(
        self,
        tenant_id: str,
        store: str,
        text: str,
        vector: bytes,
        now: datetime,
        *,
        pinned: bool = False,
        conversation_id: str | None = None,
    ) -> MemoryRecord:
        row: dict[str, Any] = {
            "id": new_id("mem"),
            "tenant_id": tenant_id,
            "store": store,
            "text": text,
            "pinned": pinned,
            "conversation_id": conversation_id,
            "vector": vector,
            "created_at": now,
            "updated_at": now,
        }
        async with self._write() as c:
            await self._tenant_exists(c, tenant_id)
            await c.execute(t.memories.insert().values(**row))
        return _memory(row_of(row))

    async def update_memory(
        self, tenant_id: str, memory_id: str, text: str, vector: bytes, now: datetime, conversation_id: str | None
    ) -> None:
        m = t.memories
        async with self._write() as c:
            await c.execute(
                m.update()
                .where((m.c.id == memory_id) & (m.c.tenant_id == tenant_id))
                .values(text=text, vector=vector, updated_at=now, conversation_id=conversation_id)
            )

    async def memories(self, tenant_id: str, store: str) -> list[MemoryRecord]:
        m = t.memories
        async with self.engine.connect() as c:
            rows = (
                await c.execute(m.select().where((m.c.tenant_id == tenant_id) & (m.c.store == store)).order_by(m.c.id))
            ).all()
        return [_memory(r) for r in rows]

    async def list_memories(self, tenant_id: str, store: str, limit: int, cursor: str | None) -> Page[MemoryRecord]:
        m = t.memories
        rows = await self._rows_after(m, (m.c.tenant_id == tenant_id) & (m.c.store == store), limit, cursor)
        return _page([_memory(r) for r in rows], limit, lambda x: x.id)

    async def delete_memory(self, tenant_id: str, store: str, memory_id: str) -> None:
        m = t.memories
        scope = (m.c.id == memory_id) & (m.c.tenant_id == tenant_id) & (m.c.store == store)
        async with self._write() as c:
            done = await c.execute(m.delete().where(scope))
        if done.rowcount == 0:
            raise NotFound(f"no memory {memory_id} in store {store!r}")

    # ---- guardrails and objectives (kept as their validated bodies) ---------------------------------------------

    async def create_body(self, table: str, tenant_id: str, body: dict[str, Any], now: datetime) -> BodyRecord:
        tbl, prefix = _BODY_TABLES[table]
        row: dict[str, Any] = {"id": new_id(prefix), "tenant_id": tenant_id, "body": body, "created_at": now}
        async with self._write() as c:
            await c.execute(tbl.insert().values(**row))
        return BodyRecord(**row)

    async def get_body(self, table: str, tenant_id: str, object_id: str) -> BodyRecord:
        return _body(await self._one(_BODY_TABLES[table][0], tenant_id, object_id, table.rstrip("s")))

    async def bodies(self, table: str, tenant_id: str, ids: Sequence[str]) -> list[BodyRecord]:
        """The tenant's objects of `ids` that exist, in the order of `ids`."""
        tbl = _BODY_TABLES[table][0]
        async with self.engine.connect() as c:
            rows = (await c.execute(tbl.select().where((tbl.c.tenant_id == tenant_id) & tbl.c.id.in_(list(ids))))).all()
        found = {r.id: _body(r) for r in rows}
        return [found[i] for i in ids if i in found]

    async def list_bodies(self, table: str, tenant_id: str, limit: int, cursor: str | None) -> Page[BodyRecord]:
        tbl = _BODY_TABLES[table][0]
        rows = await self._rows_after(tbl, tbl.c.tenant_id == tenant_id, limit, cursor)
        return _page([_body(r) for r in rows], limit, lambda x: x.id)

    async def delete_body(self, table: str, tenant_id: str, object_id: str) -> None:
        await self._delete(_BODY_TABLES[table][0], tenant_id, object_id, table.rstrip("s"))


_BODY_TABLES = {"guardrails": (t.guardrails, "grd"), "objectives": (t.objectives, "obj")}


class _Row:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def row_of(values: dict[str, Any]) -> Any:
    """A dict as a row-like object (attribute access), for the record builders."""
    return _Row(values)


async def _open_count(c: AsyncConnection, tenant_id: str, now: datetime) -> int:
    """A tenant's open conversations: active, or created with a join token still valid (what its quota counts)."""
    conv = t.conversations
    open_ = (conv.c.status == "active") | ((conv.c.status == "created") & (conv.c.token_expires_at > now))
    q = sa.select(sa.func.count()).select_from(conv).where((conv.c.tenant_id == tenant_id) & open_)
    return int((await c.execute(q)).scalar_one())


class QuotaFull(Conflict):
    """A tenant is at its limit of open conversations (the HTTP layer answers 429)."""

    code = "rate_limited"


def _document(r: Any) -> DocumentRecord:
    return DocumentRecord(
        r.id, r.tenant_id, r.name, tuple(r.tags), r.content_type, r.size, r.status, r.error, r.chunks,
        r.created_at, r.updated_at,
    )  # fmt: skip


def _memory(r: Any) -> MemoryRecord:
    return MemoryRecord(
        r.id, r.tenant_id, r.store, r.text, bool(r.pinned), r.conversation_id, bytes(r.vector), r.created_at,
        r.updated_at,
    )  # fmt: skip


def _body(r: Any) -> BodyRecord:
    return BodyRecord(r.id, r.tenant_id, dict(r.body), r.created_at)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash, cheap per commit
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def make_engine(url: str) -> AsyncEngine:
    sa_url = database_url(url)
    if sa_url.startswith("sqlite"):
        path = sa.make_url(sa_url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(sa_url, pool_size=8, max_overflow=8)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(sa_url, pool_size=10, max_overflow=20, pool_pre_ping=True)


async def open_store(url: str, *, migrate: bool = True) -> Store:
    """The store at `url` (a path or `sqlite:///...`, or `postgresql://...`), migrated to the newest schema."""
    from orchestrator.store.migrate import upgrade

    engine = make_engine(url)
    if migrate:
        await upgrade(engine)
    return Store(engine)
