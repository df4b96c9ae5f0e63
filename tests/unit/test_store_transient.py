"""Which store failures are worth retrying (the database away) and which are not (the write is wrong)."""

from __future__ import annotations

import sqlalchemy as sa

from orchestrator.store.store import transient


class DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def wrapped(sqlstate: str) -> sa.exc.DBAPIError:
    """How SQLAlchemy's asyncpg adapter reports a driver error: the adapted error, caused by the driver's."""
    adapted = Exception("adapted")
    adapted.__cause__ = DriverError(sqlstate)
    return sa.exc.DBAPIError("INSERT ...", {}, adapted)


def test_the_database_being_away_is_transient() -> None:
    assert transient(ConnectionRefusedError(111, "refused"))
    assert transient(TimeoutError())
    assert transient(sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")))
    assert transient(wrapped("57P03"))  # the database system is starting up
    assert transient(wrapped("57P01"))  # terminating connection due to administrator command
    assert transient(wrapped("08006"))  # connection failure


def test_a_wrong_write_is_not() -> None:
    assert not transient(sa.exc.IntegrityError("INSERT ...", {}, DriverError("23505")))  # unique violation
    assert not transient(wrapped("22001"))  # value too long
    assert not transient(ValueError("naive datetime"))
