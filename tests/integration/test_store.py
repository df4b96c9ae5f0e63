"""The store alone, on SQLite and on PostgreSQL: its migrations (empty → head → base → head, and head equals
`tables.metadata`), tenancy in every query, the conversation state machine, the atomic quota check, and the
webhook outbox (claims, attempts, the next due time)."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orchestrator.control.webhooks import event_body
from orchestrator.errors import Conflict, NotFound
from orchestrator.store import migrate
from orchestrator.store import tables as t
from orchestrator.store.records import ConversationRecord, Hold, NewChunk, Tenant
from orchestrator.store.store import QuotaFull, Store, make_engine, open_store, utc_now
from orchestrator.store.tables import metadata

pytestmark = pytest.mark.integration

HOOK_URL = "http://127.0.0.1:9/hooks"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.close()


async def _tenant(store: Store, name: str = "Acme", **kw: Any) -> Tenant:
    return await store.create_tenant(name, webhook_secret="whsec_" + "A" * 43 + "=", **kw)


async def _conversation(
    store: Store, tenant: Tenant, *, callback_url: str | None = HOOK_URL, now: datetime | None = None
) -> ConversationRecord:
    now = now or utc_now()
    persona = await store.create_persona(tenant.id, {"name": "Ada", "system_prompt": "You are Ada."}, now)
    return await store.create_conversation(
        tenant.id,
        persona_id=persona.id,
        settings={"properties": {}},
        callback_url=callback_url,
        token_digest=b"\0" * 32,
        token_expires_at=now + timedelta(hours=1),
        now=now,
        max_concurrent=100,
    )


# ---- migrations -------------------------------------------------------------------------------------------------


def _differences(connection: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _tables(connection: sa.Connection) -> set[str]:
    return set(sa.inspect(connection).get_table_names())


async def test_migrations_upgrade_an_empty_database_to_head_and_back(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        assert await migrate.current(engine) is None
        async with engine.connect() as c:
            assert await c.run_sync(_tables) == set()
        for _ in range(2):  # up, down, and up again: the downgrade leaves nothing that blocks a new upgrade
            await migrate.upgrade(engine)
            assert await migrate.current(engine) == "0003"
            async with engine.connect() as c:
                assert await c.run_sync(_tables) == {*metadata.tables, "alembic_version"}
                differences = await c.run_sync(_differences)
            assert differences == [], differences  # the migrations make exactly tables.py's schema
            await migrate.downgrade(engine)
            assert await migrate.current(engine) is None
            async with engine.connect() as c:
                assert await c.run_sync(_tables) <= {"alembic_version"}
        await migrate.upgrade(engine)
        await migrate.upgrade(engine)  # at head already: a no-op
        assert await migrate.current(engine) == "0003"
    finally:
        await engine.dispose()


async def test_servers_starting_together_migrate_in_turn(store_url: str) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("several orchestrators share a PostgreSQL store; SQLite is one server's")
    engines = [make_engine(store_url) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate.upgrade(e) for e in engines))  # without the lock: duplicate tables
        assert await migrate.current(engines[0]) == "0003"
    finally:
        for e in engines:
            await e.dispose()


async def test_open_store_migrates_and_keeps_data_across_reopen(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        tenant = await _tenant(store)
    finally:
        await store.close()
    store = await open_store(store_url)  # a second start: migrations are a no-op, the data stays
    try:
        assert await store.get_tenant(tenant.id) == tenant
    finally:
        await store.close()


# ---- tenancy ----------------------------------------------------------------------------------------------------

# Store methods whose queries take a tenant id, and how each treats another tenant's object. A new method must be
# listed here (the test fails otherwise), so that nobody adds a query that forgets its tenant.
CREATES = {  # write as the tenant
    "create_persona", "create_face", "create_conversation", "add_key", "keep_answer", "create_document", "add_memory",
    "create_body",
}  # fmt: skip
OWN_ROW = {"get_tenant", "_tenant_exists", "_lock_tenant"}  # the tenant row itself


async def test_every_tenant_scoped_method_treats_another_tenants_ids_as_not_found(store: Store) -> None:
    now = utc_now()
    a, b = await _tenant(store, "A"), await _tenant(store, "B")
    conv = await _conversation(store, b)
    persona = await store.get_persona(b.id, conv.persona_id)
    face = await store.create_face(b.id, "face", now)
    key = await store.add_key(b.id, key_id="key_b", name="k", prefix="duet_b", salt=b"s", digest=b"d", now=now)
    await store.keep_answer(b.id, "createConversation", "idem", "digest", 201, "{}", now)
    doc = await store.create_document(b.id, name="d", tags=["t"], content_type="text", size=3, now=now)
    assert await store.finish_document(doc.id, [NewChunk("H", "text", b"\0" * 8)], now)
    memory = await store.add_memory(b.id, "user-1", "The user has a dog.", b"\0" * 8, now)
    rail = await store.create_body("guardrails", b.id, {"name": "r"}, now)
    goals = await store.create_body("objectives", b.id, {"objectives": []}, now)

    missing: dict[str, Callable[[], Awaitable[Any]]] = {
        "get_persona": lambda: store.get_persona(a.id, persona.id),
        "update_persona": lambda: store.update_persona(a.id, persona.id, {"name": "Mallory"}, now),
        "delete_persona": lambda: store.delete_persona(a.id, persona.id),
        "get_face": lambda: store.get_face(a.id, face.id),
        "delete_face": lambda: store.delete_face(a.id, face.id),
        "get_conversation": lambda: store.get_conversation(a.id, conv.id),
        "end_conversation": lambda: store.end_conversation(conv.id, "ended_by_api", now, tenant_id=a.id),
        "transcript": lambda: store.transcript(a.id, conv.id),
        "list_webhooks": lambda: store.list_webhooks(a.id, conv.id, 10, None),
        "revoke_key": lambda: store.revoke_key(a.id, key.id, now),
        "get_document": lambda: store.get_document(a.id, doc.id),
        "delete_document": lambda: store.delete_document(a.id, doc.id),
        "delete_memory": lambda: store.delete_memory(a.id, "user-1", memory.id),
        "get_body": lambda: store.get_body("guardrails", a.id, rail.id),
        "delete_body": lambda: store.delete_body("objectives", a.id, goals.id),
        "_one": lambda: store._one(t.conversations, a.id, conv.id, "conversation"),  # what the gets share
        "_delete": lambda: store._delete(t.conversations, a.id, conv.id, "conversation"),  # ... and deletes
    }
    for name, call in missing.items():
        with pytest.raises(NotFound):
            await call()
            pytest.fail(f"{name} found another tenant's object")
    empty: dict[str, Callable[[], Awaitable[Any]]] = {
        "list_personas": lambda: store.list_personas(a.id, 100, None),
        "list_faces": lambda: store.list_faces(a.id, 100, None),
        "list_conversations": lambda: store.list_conversations(a.id, 100, None),
        "list_keys": lambda: store.list_keys(a.id),
        "open_conversations": lambda: store.open_conversations(a.id, now),
        "minutes_used": lambda: store.minutes_used(a.id, now - timedelta(days=1), now),
        "idempotent_answer": lambda: store.idempotent_answer(a.id, "createConversation", "idem"),
        "list_documents": lambda: store.list_documents(a.id, 100, None),
        "ready_documents": lambda: store.ready_documents(a.id),
        "chunks_of": lambda: store.chunks_of(a.id),
        "chunks_of_ids": lambda: store.chunks_of(a.id, [doc.id]),
        "knowledge_version": lambda: _count(store.knowledge_version(a.id)),
        "memories": lambda: store.memories(a.id, "user-1"),
        "list_memories": lambda: store.list_memories(a.id, "user-1", 100, None),
        "bodies": lambda: store.bodies("guardrails", a.id, [rail.id]),
        "list_bodies": lambda: store.list_bodies("objectives", a.id, 100, None),
    }
    for name, call in empty.items():
        result = await call()
        assert not (result.data if hasattr(result, "data") else result), name

    scoped = {
        name
        for name, member in inspect.getmembers(Store, inspect.iscoroutinefunction)
        if "tenant_id" in inspect.signature(member).parameters
    }
    # (update_memory writes only where tenant and id match: another tenant's id changes nothing)
    await store.update_memory(a.id, memory.id, "Mallory was here.", b"\0" * 8, now, None)
    assert (await store.memories(b.id, "user-1"))[0].text == "The user has a dog."
    assert scoped == (set(missing) | set(empty) | CREATES | OWN_ROW | {"update_memory"}) - {"chunks_of_ids"}

    # a tenant that does not exist owns nothing and can be given nothing
    with pytest.raises(NotFound):
        await store.get_tenant("ten_nobody")
    with pytest.raises(NotFound):
        await store.add_key("ten_nobody", key_id="key_x", name="k", prefix="p", salt=b"s", digest=b"d", now=now)
    with pytest.raises(NotFound):
        await store.create_conversation(
            "ten_nobody",
            persona_id=persona.id,
            settings={},
            callback_url=None,
            token_digest=b"\0",
            token_expires_at=now,
            now=now,
            max_concurrent=5,
        )

    # and B's objects are untouched
    assert (await store.get_persona(b.id, persona.id)).body["name"] == "Ada"
    assert (await store.get_conversation(b.id, conv.id)).status == "created"
    assert (await store.get_face(b.id, face.id)).name == "face"
    assert (await store.list_keys(b.id))[0].revoked_at is None
    assert [c.text for c in await store.chunks_of(b.id)] == ["text"]
    assert (await store.knowledge_version(b.id))[0] == 1


async def _count(version: Awaitable[tuple[int, str]]) -> int:
    return (await version)[0]


async def test_a_document_becomes_ready_with_its_chunks_in_one_step(store: Store) -> None:
    now = utc_now()
    tenant = await _tenant(store)
    doc = await store.create_document(tenant.id, name="Policies", tags=["clinic"], content_type="markdown", size=10,
                                      now=now)  # fmt: skip
    assert doc.status == "processing" and await store.chunks_of(tenant.id) == []  # nothing searchable yet
    chunks = [NewChunk(f"H{i}", f"chunk {i}", bytes([i]) * 8, b"\1" * 16) for i in range(3)]
    assert await store.finish_document(doc.id, chunks, now)
    done = await store.get_document(tenant.id, doc.id)
    assert done.status == "ready" and done.chunks == 3
    rows = await store.chunks_of(tenant.id)
    assert [(r.seq, r.text, r.tags, r.sentence_vectors) for r in rows] == [
        (i, f"chunk {i}", ("clinic",), b"\1" * 16) for i in range(3)
    ]
    assert not await store.finish_document(doc.id, chunks, now)  # once
    # a document deleted while it was processing stays deleted: its late chunks are not written
    late = await store.create_document(tenant.id, name="Late", tags=[], content_type="text", size=1, now=now)
    await store.delete_document(tenant.id, late.id)
    assert not await store.finish_document(late.id, chunks, now)
    failed = await store.create_document(tenant.id, name="Bad", tags=[], content_type="pdf", size=1, now=now)
    await store.fail_document(failed.id, "embedding failed: model down", now)
    assert (await store.get_document(tenant.id, failed.id)).status == "failed"
    assert (await store.knowledge_version(tenant.id))[0] == 1
    await store.delete_document(tenant.id, doc.id)
    assert await store.chunks_of(tenant.id) == [] and (await store.knowledge_version(tenant.id))[0] == 0


async def test_memories_are_kept_per_store(store: Store) -> None:
    now = utc_now()
    tenant = await _tenant(store)
    a = await store.add_memory(tenant.id, "user-1", "The user has a dog.", b"\0" * 8, now, pinned=True)
    await store.add_memory(tenant.id, "user-2", "The user lives in Lyon.", b"\0" * 8, now, conversation_id="conv_x")
    assert [m.text for m in await store.memories(tenant.id, "user-1")] == ["The user has a dog."]
    assert (await store.memories(tenant.id, "user-1"))[0].pinned
    await store.update_memory(tenant.id, a.id, "The user has two dogs.", b"\1" * 8, now, "conv_y")
    [updated] = await store.memories(tenant.id, "user-1")
    assert updated.text == "The user has two dogs." and updated.conversation_id == "conv_y"
    with pytest.raises(NotFound):  # a memory is deleted from its own store only
        await store.delete_memory(tenant.id, "user-2", a.id)
    await store.delete_memory(tenant.id, "user-1", a.id)
    assert await store.memories(tenant.id, "user-1") == []


# ---- conversations ----------------------------------------------------------------------------------------------


async def test_conversation_states(store: Store) -> None:
    tenant = await _tenant(store)
    conv = await _conversation(store, tenant)
    now = utc_now()
    active = await store.activate_conversation(conv.id, now)
    assert (active.status, active.started_at) == ("active", now)
    with pytest.raises(Conflict):
        await store.activate_conversation(conv.id, now)  # joined once
    with pytest.raises(NotFound):
        await store.activate_conversation("conv_nope", now)
    await store.add_utterance(conv.id, "user", "Hi", 1.0)
    await store.add_utterance(conv.id, "replica", "Hello!", 2.0)
    ended = await store.end_conversation(conv.id, "participant_left", now)
    assert (ended.status, ended.shutdown_reason, ended.ended_at) == ("ended", "participant_left", now)
    with pytest.raises(Conflict):
        await store.end_conversation(conv.id, "ended_by_api", now)  # the first reason stays
    with pytest.raises(Conflict):
        await store.activate_conversation(conv.id, now)
    with pytest.raises(NotFound):
        await store.end_conversation("conv_nope", "ended_by_api", now)
    assert (await store.get_conversation(tenant.id, conv.id)).shutdown_reason == "participant_left"
    turns = await store.transcript(tenant.id, conv.id)
    assert [(u.seq, u.role, u.text, u.t) for u in turns] == [(0, "user", "Hi", 1.0), (1, "replica", "Hello!", 2.0)]


async def test_holds_are_renewed_by_their_holder_and_orphans_found_once_they_lapse(store: Store) -> None:
    tenant = await _tenant(store)
    now = utc_now()
    a, b, c = [await _conversation(store, tenant) for _ in range(3)]
    lease = now + timedelta(seconds=15)
    await store.activate_conversation(a.id, now, hold=Hold("orch-1", "http://10.0.0.1:8080", lease))
    await store.activate_conversation(b.id, now, hold=Hold("orch-2", "http://10.0.0.2:8080", lease))
    await store.activate_conversation(c.id, now)  # no hold (a single server's): never an orphan
    held = await store.get_conversation(tenant.id, a.id)
    assert (held.holder, held.holder_url, held.held_until) == ("orch-1", "http://10.0.0.1:8080", lease)
    assert await store.orphaned(now + timedelta(seconds=10)) == []
    # orch-1 renews both ids it names, but only its own changes
    assert await store.renew_holds("orch-1", [a.id, b.id], now + timedelta(seconds=30)) == 1
    assert await store.renew_holds("orch-1", [], now + timedelta(seconds=30)) == 0
    orphans = await store.orphaned(now + timedelta(seconds=20))
    assert [o.id for o in orphans] == [b.id] and orphans[0].holder == "orch-2"
    await store.end_conversation(b.id, "error", now + timedelta(seconds=20))
    assert await store.renew_holds("orch-2", [b.id], now + timedelta(seconds=60)) == 0  # ended stays ended
    assert await store.orphaned(now + timedelta(seconds=25)) == []
    assert [o.id for o in await store.orphaned(now + timedelta(seconds=31))] == [a.id]


async def test_concurrent_activations_let_exactly_one_through(store: Store) -> None:
    tenant = await _tenant(store)
    conv = await _conversation(store, tenant)
    results = await asyncio.gather(
        *(store.activate_conversation(conv.id, utc_now()) for _ in range(8)), return_exceptions=True
    )
    assert sum(isinstance(r, ConversationRecord) for r in results) == 1, results
    assert all(isinstance(r, (ConversationRecord, Conflict)) for r in results), results


# Found by these tests: on SQLite, Python's driver opens a transaction only at the first write, so a method's
# SELECT and its INSERT/UPDATE were not one transaction (the quota count and the outbox claim raced). The store
# now writes first in those two (`Store._lock_tenant`, `Store.due_webhooks`).


async def test_the_quota_check_is_atomic(store: Store) -> None:
    tenant = await _tenant(store, max_concurrent_conversations=5)
    now = utc_now()
    persona = await store.create_persona(tenant.id, {"name": "Ada"}, now)

    async def create() -> ConversationRecord:
        return await store.create_conversation(
            tenant.id,
            persona_id=persona.id,
            settings={},
            callback_url=None,
            token_digest=b"\0" * 32,
            token_expires_at=now + timedelta(hours=1),
            now=now,
            max_concurrent=5,
        )

    results = await asyncio.gather(*(create() for _ in range(20)), return_exceptions=True)
    made = [r for r in results if isinstance(r, ConversationRecord)]
    refused = [r for r in results if isinstance(r, QuotaFull)]
    assert (len(made), len(refused)) == (5, 15), [type(r).__name__ + ": " + str(r) for r in results]
    assert await store.open_conversations(tenant.id, now) == 5
    assert len((await store.list_conversations(tenant.id, 100, None)).data) == 5

    # ended and expired conversations free their slots
    await store.end_conversation(made[0].id, "ended_by_api", now)
    assert isinstance(await create(), ConversationRecord)
    with pytest.raises(QuotaFull):
        await create()
    later = now + timedelta(hours=2)  # every token has expired: no slot is held
    assert await store.open_conversations(tenant.id, later) == 0


async def test_list_pages(store: Store) -> None:
    tenant = await _tenant(store)
    now = utc_now()
    made = [(await store.create_persona(tenant.id, {"name": f"p{i}"}, now)).id for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_personas(tenant.id, 3, cursor)
        seen += [p.id for p in page.data]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(made)  # by id: creation order to the millisecond (ids made in the same ms: any order)


# ---- the webhook outbox -----------------------------------------------------------------------------------------


async def _events(store: Store, conv: ConversationRecord, n: int, now: datetime) -> None:
    for i in range(n):
        props = {"role": "user", "text": f"u{i}", "t": float(i)}
        event = event_body("conversation.utterance", conv.id, now, props)
        await store.add_utterance(conv.id, "user", f"u{i}", float(i), events=[event], now=now)


async def test_outbox_claims_attempts_and_due_times(store: Store) -> None:
    tenant = await _tenant(store)
    conv = await _conversation(store, tenant)
    quiet = await _conversation(store, tenant, callback_url=None)
    now = utc_now()
    started = event_body("conversation.started", conv.id, now, {"persona_id": conv.persona_id})
    await store.activate_conversation(conv.id, now, [started])
    await store.activate_conversation(quiet.id, now, [started])  # no callback_url: nothing is queued
    await _events(store, conv, 2, now)
    assert await store.webhook_backlog() == 3
    assert await store.next_webhook_due() == now

    due = await store.due_webhooks(now, 2)
    assert len(due) == 2  # the limit holds
    assert due[0].attempts == 0 and due[0].url == HOOK_URL and due[0].secret == tenant.webhook_secret
    assert json.loads(due[0].body)["event_type"] == "conversation.started"  # oldest first
    third = await store.due_webhooks(now, 10)
    assert len(third) == 1 and third[0].id not in {d.id for d in due}
    assert await store.due_webhooks(now, 10) == []  # all claimed: a second call right after gets nothing
    lease_end = await store.next_webhook_due()
    assert lease_end is not None and lease_end > now + timedelta(seconds=10)  # claimed until the lease ends

    # a failed attempt with a retry: pending, due at the retry
    retry_at = now + timedelta(seconds=2)
    await store.record_webhook_attempt(
        due[0].id, at=now, status_code=503, error="HTTP 503", duration_ms=3.5, delivered=False, next_attempt_at=retry_at
    )
    assert await store.next_webhook_due() == retry_at
    assert await store.due_webhooks(now + timedelta(seconds=1), 10) == []
    again = await store.due_webhooks(retry_at, 10)
    assert [(d.id, d.attempts, d.body) for d in again] == [(due[0].id, 1, due[0].body)]  # same id and bytes
    # delivered, given up
    await store.record_webhook_attempt(
        due[0].id, at=retry_at, status_code=204, error=None, duration_ms=2.0, delivered=True, next_attempt_at=None
    )
    await store.record_webhook_attempt(
        due[1].id, at=now, status_code=410, error="gone", duration_ms=1.0, delivered=False, next_attempt_at=None
    )
    # a late attempt on a settled message (its lease ran out and another deliverer took it) changes nothing
    await store.record_webhook_attempt(
        due[0].id, at=retry_at, status_code=500, error="late", duration_ms=1.0, delivered=False, next_attempt_at=now
    )
    assert await store.webhook_backlog() == 1  # third[0], still claimed
    assert await store.next_webhook_due() == lease_end
    page = await store.list_webhooks(tenant.id, conv.id, 10, None)
    by_id = {m.id: m for m in page.data}
    first, gone = by_id[due[0].id], by_id[due[1].id]
    assert (first.status, first.delivered_at, first.next_attempt_at) == ("delivered", retry_at, None)
    assert [a.status_code for a in first.attempts] == [503, 204, 500]  # every attempt is kept
    assert (gone.status, gone.next_attempt_at, [a.status_code for a in gone.attempts]) == ("failed", None, [410])
    assert (await store.list_webhooks(tenant.id, quiet.id, 10, None)).data == []

    await store.record_webhook_attempt(
        third[0].id, at=now, status_code=200, error=None, duration_ms=1.0, delivered=True, next_attempt_at=None
    )
    assert await store.next_webhook_due() is None and await store.webhook_backlog() == 0


async def test_concurrent_claims_never_hand_out_a_message_twice(store: Store) -> None:
    tenant = await _tenant(store)
    conv = await _conversation(store, tenant)
    now = utc_now()
    await _events(store, conv, 30, now)
    claims = await asyncio.gather(*(store.due_webhooks(now, 4) for _ in range(12)))
    ids = [d.id for claim in claims for d in claim]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} messages handed out twice"
    assert len(ids) == 30
