"""`duet admin ...`: operator commands on the configured store (run where `duet serve` runs, same folder or
the same `store.url`). Each prints one JSON object."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from orchestrator.store.records import TIERS

if TYPE_CHECKING:  # (the store's modules load only when a command runs: `duet --help` stays quick)
    from orchestrator.config import Settings
    from orchestrator.store.store import Store


def add_parser(sub: Any) -> None:
    a = sub.add_parser("admin", help="operator commands on the store: tenants, API keys, migrations")
    verbs = a.add_subparsers(dest="admin_command", required=True)
    tenant = verbs.add_parser("tenant", help="tenants").add_subparsers(dest="admin_verb", required=True)
    create = tenant.add_parser("create", help="a tenant, with its first API key and webhook secret (shown once)")
    create.add_argument("name")
    create.add_argument("--tier", choices=TIERS, default="standard")
    create.add_argument("--max-concurrent", type=int, default=None, help="open conversations at once")
    create.add_argument("--max-minutes-per-day", type=int, default=None, help="conversation minutes (0: no limit)")
    tenant.add_parser("list", help="every tenant (no secrets)")
    key = verbs.add_parser("key", help="API keys").add_subparsers(dest="admin_verb", required=True)
    for verb, what in (("create", "a new key (shown once)"), ("list", "a tenant's keys"), ("revoke", "revoke one")):
        k = key.add_parser(verb, help=what)
        k.add_argument("--tenant", required=True, help="tenant id (ten_...)")
        if verb == "create":
            k.add_argument("--name", default=None)
        if verb == "revoke":
            k.add_argument("key_id")
    db = verbs.add_parser("db", help="the store's schema").add_subparsers(dest="admin_verb", required=True)
    db.add_parser("upgrade", help="migrate to the newest schema (duet serve does this on start)")
    db.add_parser("current", help="the schema revision")
    down = db.add_parser("downgrade", help="migrate down (destroys data of the removed revisions)")
    down.add_argument("revision", nargs="?", default="base")


def _tenant_view(t: Any) -> dict[str, Any]:
    from orchestrator.control.webhooks import iso_utc

    return {
        "tenant_id": t.id,
        "name": t.name,
        "tier": t.tier,
        "max_concurrent_conversations": t.max_concurrent_conversations,
        "max_minutes_per_day": t.max_minutes_per_day,
        "created_at": iso_utc(t.created_at),
    }


async def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from orchestrator.store import migrate
    from orchestrator.store.store import make_engine, open_store

    if args.admin_command == "db":
        engine = make_engine(settings.store.url)
        try:
            if args.admin_verb == "upgrade":
                await migrate.upgrade(engine)
            elif args.admin_verb == "downgrade":
                await migrate.downgrade(engine, args.revision)
            return {"store": settings.store.url, "revision": await migrate.current(engine)}
        finally:
            await engine.dispose()
    store = await open_store(settings.store.url)
    try:
        return await _run(args, settings, store)
    finally:
        await store.close()


async def _run(args: argparse.Namespace, settings: Settings, store: Store) -> dict[str, Any]:
    from orchestrator.control.tenants import create_key, create_tenant, key_view
    from orchestrator.store.store import utc_now

    if args.admin_command == "tenant" and args.admin_verb == "create":
        return await create_tenant(
            store,
            args.name,
            settings.api,
            tier=args.tier,
            max_concurrent_conversations=args.max_concurrent,
            max_minutes_per_day=args.max_minutes_per_day,
        )
    if args.admin_command == "tenant":
        return {"data": [_tenant_view(t) for t in await store.list_tenants()]}
    await store.get_tenant(args.tenant)  # an unknown tenant is an error, not an empty list
    if args.admin_verb == "create":
        key, api_key = await create_key(store, args.tenant, args.name)
        return {**key_view(key), "api_key": api_key}
    if args.admin_verb == "list":
        return {"data": [key_view(k) for k in await store.list_keys(args.tenant)]}
    return key_view(await store.revoke_key(args.tenant, args.key_id, utc_now()))
