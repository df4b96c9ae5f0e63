"""A throwaway PostgreSQL server for the store tests: a fresh cluster in a temp dir, on a free loopback port,
run from the binaries of Debian's `postgresql` package and deleted on exit.

    with ThrowawayPostgres() as pg:
        engine = create_async_engine(pg.url)  # postgresql+asyncpg://postgres@127.0.0.1:PORT/duet

Missing binaries raise `PostgresMissing` (the tests fail rather than skip: setup installs the package).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

DEBIAN_ROOT = Path("/usr/lib/postgresql")  # Debian installs each major version's binaries in <version>/bin
SERVER_USER = "postgres"  # the system user the Debian package creates; initdb and postgres refuse to run as root
SUPERUSER = "postgres"
DATABASE = "duet"
STOP_TIMEOUT_S = 30
PORT_ATTEMPTS = 3  # the free port is found before the server binds it: another process may take it meanwhile

# Durability is worthless for a cluster deleted after the tests; skipping it makes start and writes fast.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "listen_addresses": "127.0.0.1",
}


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


class PostgresFailed(RuntimeError):
    """A server binary failed; the message carries its output and the server log's tail."""


def find_bin_dir() -> Path:
    """The newest installed PostgreSQL's binary folder: Debian's layout first, else `initdb` on PATH."""
    found = [p.parent for p in DEBIAN_ROOT.glob("*/bin/pg_ctl") if (p.parent / "initdb").exists()]
    if found:
        return max(found, key=lambda b: _version_key(b.parent.name))
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    raise PostgresMissing(
        f"no PostgreSQL server binaries (looked in {DEBIAN_ROOT}/<version>/bin and PATH): install Debian's "
        "`postgresql` package (apt-get install postgresql; scripts/bootstrap.sh does)"
    )


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (-1,)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayPostgres:
    """A PostgreSQL cluster for one test session: `initdb` in a temp dir, `pg_ctl start` on a free loopback
    port, database `duet` created; stopped (`pg_ctl stop -m fast`) and deleted on exit. As root the server
    binaries run as the `postgres` system user, on a temp dir handed to it."""

    def __init__(self, *, database: str = DATABASE, start_timeout_s: float = 30.0) -> None:
        self.database = database
        self.start_timeout_s = start_timeout_s
        self.bin_dir = find_bin_dir()
        self.dir: Path | None = None
        self.port = 0
        self.start_s = 0.0  # how long start() took, for the record
        self._as_server: list[str] = _server_user_prefix()

    @property
    def url(self) -> str:
        """SQLAlchemy's URL (asyncpg driver)."""
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """The same server as a libpq/asyncpg URL (no `+driver`)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{self.database}"

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "the server was not started"
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "the server was not started"
        return self.dir / "server.log"

    def start(self) -> ThrowawayPostgres:
        began = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="duet-pg-"))
        try:
            if self._as_server:
                account = pwd.getpwnam(SERVER_USER)
                os.chown(self.dir, account.pw_uid, account.pw_gid)
            self._run_server_bin(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",  # the C locale: always present, and the same sort order on every machine
                "--no-sync",
            )
            self._configure()
            self._start_on_free_port()
            self._run_client_bin("createdb", self.database)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the server (if it runs) and delete its folder; safe to call twice."""
        try:
            # postmaster.pid, not a flag: a start that timed out may still have left a server running.
            if self.dir is not None and (self.data_dir / "postmaster.pid").exists():
                try:
                    self._pg_ctl_stop("fast")
                except (PostgresFailed, subprocess.TimeoutExpired):
                    self._pg_ctl_stop("immediate")  # a stuck backend must not leave a server behind
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def pause(self) -> None:
        """Stop the server, keeping its data and port (a restart or failover, as clients see it): `resume`."""
        self._pg_ctl_stop("fast")

    def resume(self) -> None:
        """Start the paused server again on the same port."""
        self._run_server_bin(
            "pg_ctl", "start", "-w", "-t", str(round(self.start_timeout_s)), "-D", str(self.data_dir),
            "-l", str(self.log_path), "-o", f"-p {self.port}", timeout_s=self.start_timeout_s + 10,
        )  # fmt: skip

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _configure(self) -> None:
        assert self.dir is not None
        settings = {**FAST_SETTINGS, "unix_socket_directories": str(self.dir)}
        lines = [f"{key} = '{value.replace(chr(39), chr(39) * 2)}'" for key, value in settings.items()]
        # Appended: the last setting in postgresql.conf wins. The file is the server user's; we may be root.
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# tests/pg.py\n" + "\n".join(lines) + "\n")

    def _start_on_free_port(self) -> None:
        for attempt in range(PORT_ATTEMPTS):
            self.port = free_port()
            try:
                self._run_server_bin(
                    "pg_ctl",
                    "start",
                    "-w",
                    "-t",
                    str(round(self.start_timeout_s)),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    f"-p {self.port}",
                    timeout_s=self.start_timeout_s + 10,
                )
            except PostgresFailed:
                if attempt + 1 < PORT_ATTEMPTS and "already in use" in self._log_tail():
                    continue
                raise
            return

    def _pg_ctl_stop(self, mode: str) -> None:
        stop = ["stop", "-w", "-t", str(STOP_TIMEOUT_S), "-D", str(self.data_dir), "-m", mode]
        self._run_server_bin("pg_ctl", *stop, timeout_s=STOP_TIMEOUT_S + 10)

    def _run_server_bin(self, name: str, *args: str, timeout_s: float = 120.0) -> None:
        self._run([*self._as_server, str(self.bin_dir / name), *args], timeout_s)

    def _run_client_bin(self, name: str, *args: str) -> None:
        # Clients do not mind root; they reach the server over TCP like the tests do.
        self._run([str(self.bin_dir / name), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, *args], 30.0)

    def _run(self, cmd: list[str], timeout_s: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no stray PGDATA/PGHOST/...
        env["LC_ALL"] = "C"
        # cwd: the server user may not be allowed into ours, and initdb/pg_ctl look it up.
        done = subprocess.run(
            cmd, cwd=self.dir, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if done.returncode != 0:
            raise PostgresFailed(
                f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout}{done.stderr}"
                f"--- server log (tail) ---\n{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no server log)"


def _server_user_prefix() -> list[str]:
    """How to run initdb/pg_ctl: directly, or as root through the `postgres` system user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresMissing(
            f"running as root, and there is no `{SERVER_USER}` system user to run the server as: install "
            "Debian's `postgresql` package (it creates the user)"
        ) from None
    if shutil.which("runuser"):
        return ["runuser", "-u", SERVER_USER, "--"]
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--init-groups", "--"]
    raise PostgresMissing("running as root, and neither runuser nor setpriv (util-linux) is there to drop to postgres")


def postgres_server() -> Iterator[ThrowawayPostgres]:
    """For a session-scoped fixture: `yield from postgres_server()`."""
    with ThrowawayPostgres() as server:
        yield server
