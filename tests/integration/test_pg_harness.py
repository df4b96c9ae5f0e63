"""The throwaway PostgreSQL server the store tests run against (tests/pg.py): it starts fast, takes
connections and writes, and leaves nothing behind."""

from __future__ import annotations

import time

import asyncpg
import pytest

from tests.pg import ThrowawayPostgres, postgres_server

pytestmark = pytest.mark.integration


async def test_throwaway_postgres_starts_serves_and_cleans_up() -> None:
    began = time.monotonic()
    with ThrowawayPostgres() as pg:
        started_s = time.monotonic() - began
        assert pg.url == f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/duet"
        assert pg.dsn == pg.url.replace("+asyncpg", "")
        folder = pg.dir
        assert folder is not None and folder.is_dir()
        conn = await asyncpg.connect(pg.dsn, timeout=10)
        try:
            version = await conn.fetchval("select version()")
            assert str(version).startswith("PostgreSQL ")
            assert await conn.fetchval("select current_database()") == "duet"
            await conn.execute("create table probe (id serial primary key, name text not null)")
            await conn.execute("insert into probe (name) values ($1), ($2)", "a", "ü")
            assert await conn.fetchval("select string_agg(name, ',' order by id) from probe") == "a,ü"
        finally:
            await conn.close()
    print(f"PostgreSQL: {version}; started in {started_s:.2f} s (start() {pg.start_s:.2f} s)")
    assert not folder.exists()
    assert started_s < 15, f"the throwaway server took {started_s:.1f} s to start"
    with pytest.raises(OSError):  # the server is gone, not merely disowned
        await asyncpg.connect(pg.dsn, timeout=5)


def test_postgres_server_generator_stops_at_teardown() -> None:
    gen = postgres_server()
    pg = next(gen)
    folder = pg.dir
    assert folder is not None and (folder / "data" / "postmaster.pid").exists()
    assert next(gen, None) is None  # what pytest does to finish a generator fixture
    assert not folder.exists()
