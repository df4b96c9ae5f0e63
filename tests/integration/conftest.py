"""The control plane's fixtures: a real store (SQLite file or a database on a throwaway PostgreSQL server), the
real control stack (`open_control` + `serve_http`) on a free port, tenants, and HTTP clients whose every answer
is checked against the OpenAPI document.

`store_url` (and so `control`) is parametrized over both backends: every test that takes it runs twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import asyncpg
import pytest

from orchestrator.api.http import openapi
from orchestrator.app import ControlStack, open_control
from orchestrator.config import REPO_ROOT, Settings, load_settings
from orchestrator.control.tenants import create_tenant
from tests.conftest import require
from tests.pg import ThrowawayPostgres, postgres_server

BACKENDS = ("sqlite", "postgresql")
PORTRAIT = REPO_ROOT / "faces" / "astronaut.png"


# ---- the store --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL server for the whole run; each test gets its own database on it."""
    yield from postgres_server()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> ThrowawayPostgres | None:
    """The PostgreSQL server for the `postgresql` run (started on first use), None for `sqlite`."""
    if request.param == "postgresql":
        server: ThrowawayPostgres = request.getfixturevalue("postgres")
        return server
    return None


def _admin_dsn(pg: ThrowawayPostgres) -> str:
    return f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"


@contextlib.asynccontextmanager
async def fresh_database(pg: ThrowawayPostgres) -> AsyncIterator[str]:
    """A new, empty database on `pg` (its store URL), dropped afterwards."""
    name = f"d_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(_admin_dsn(pg), timeout=10)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    try:
        yield f"postgresql://postgres@127.0.0.1:{pg.port}/{name}"
    finally:
        conn = await asyncpg.connect(_admin_dsn(pg), timeout=10)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()


@pytest.fixture
async def store_url(backend: ThrowawayPostgres | None, tmp_path: Path) -> AsyncIterator[str]:
    """An empty store: a SQLite file in tmp_path, or a fresh database on the shared PostgreSQL server."""
    if backend is None:
        yield str(tmp_path / "store" / "duet.db")
        return
    async with fresh_database(backend) as url:
        yield url


# ---- the control stack ------------------------------------------------------------------------------------------


class Control(NamedTuple):
    stack: ControlStack
    url: str  # http://127.0.0.1:PORT
    settings: Settings


@pytest.fixture
def faces_dir(tmp_path: Path) -> Path:
    """A faces folder of the test's own (uploads land there, not in the repository's `faces/`), holding the
    built-in portrait the persona templates name."""
    folder = tmp_path / "faces"
    folder.mkdir()
    shutil.copy(require(PORTRAIT, "the default portrait"), folder / PORTRAIT.name)
    return folder


def make_settings(store_url: str, faces_dir: Path, **api: Any) -> Settings:
    base = load_settings(env={})
    return dataclasses.replace(
        base,
        store=dataclasses.replace(base.store, url=store_url),
        face=dataclasses.replace(base.face, faces_dir=str(faces_dir)),
        api=dataclasses.replace(base.api, **{"http_port": 0, **api}),
    )


def stack_settings(models: tuple[str, ...], **triton: Any) -> Settings:
    """Settings for the whole service in this process (`running_stack`): `models` (and any other `triton`
    setting), the session port free, the control plane off."""
    from orchestrator.models.launcher import free_port

    base = Settings()
    return dataclasses.replace(
        base,
        triton=dataclasses.replace(base.triton, models=models, **triton),
        server=dataclasses.replace(base.server, port=free_port()),
        api=dataclasses.replace(base.api, enabled=False),
    )


@pytest.fixture(scope="session")
def embed_url() -> Iterator[str]:
    """A tritonserver with the `embed` model: documents and memories need it (the control plane alone serves
    no models; the knowledge base answers 503 without it)."""
    from orchestrator.config import TritonSettings
    from orchestrator.models.launcher import EmbeddedTriton

    with EmbeddedTriton(TritonSettings(models=("embed",))) as server:
        yield server.grpc_url


@contextlib.asynccontextmanager
async def running_control(settings: Settings, embed_url: str | None = None) -> AsyncIterator[Control]:
    from orchestrator.models.triton import TritonModels

    stack = await open_control(settings)
    models = TritonModels(embed_url) if embed_url else None
    stack.conversations.intel.attach(models, None)
    try:
        url = await stack.serve_http(settings)
        yield Control(stack, url, settings)
    finally:
        await stack.close()
        if models is not None:
            await models.close()


StartControl = Callable[..., Awaitable[Control]]


@pytest.fixture
async def start_control(store_url: str, faces_dir: Path, embed_url: str) -> AsyncIterator[StartControl]:
    """Starts a control stack on the test's store with `api` settings overridden, its knowledge base on the
    `embed` model; all are closed at the end."""
    async with contextlib.AsyncExitStack() as stacks:

        async def start(**api: Any) -> Control:
            settings = make_settings(store_url, faces_dir, **api)
            return await stacks.enter_async_context(running_control(settings, embed_url))

        yield start


@pytest.fixture
async def control(start_control: StartControl) -> Control:
    """The control plane with default settings (on a free port) over a fresh store."""
    return await start_control()


async def new_tenant(stack: ControlStack, settings: Settings, name: str = "Acme", **quotas: Any) -> dict[str, str]:
    """A tenant with its first API key: `{"tenant_id", "api_key", "webhook_secret"}`."""
    return await create_tenant(stack.store, name, settings.api, **quotas)


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


# ---- every answer checked against the document ------------------------------------------------------------------


def _route_pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")


_ROUTES = [(op.method, _route_pattern(op.path), op.operation_id) for op in openapi.operations()]


def operation_for(method: str, path: str) -> str | None:
    """The operationId the server routes `method path` to (None: no such route)."""
    for m, pattern, operation_id in _ROUTES:
        if m == method.upper() and pattern.match(path):
            return operation_id
    return None


class ContractViolation(AssertionError):
    pass


def check_answer(method: str, path: str, status: int, raw: bytes) -> Any:
    """Fails on a 5xx, an undocumented status, or a body that does not match the document; returns the body."""
    where = f"{method} {path} → {status}"
    if status >= 500:
        raise ContractViolation(f"{where}: a server error: {raw[:500]!r}")
    body: Any = None
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError as err:
            raise ContractViolation(f"{where}: the body is not JSON: {raw[:200]!r}") from err
    operation_id = operation_for(method, path)
    if operation_id is None:
        # No route: aiohttp's own answer, mapped by the error middleware to the one error shape.
        assert status in (404, 405), where
        openapi.validate_response("getPersona", 404, body)  # the Error schema
        return body
    try:
        openapi.validate_response(operation_id, status, body)
    except openapi.Invalid as err:
        raise ContractViolation(f"{where} ({operation_id}): {err.message} [{err.field}]") from err
    return body


class CheckedResponse(aiohttp.ClientResponse):
    """A response whose body is checked against the OpenAPI document as soon as it is read."""

    async def read(self) -> bytes:
        raw = await super().read()
        check_answer(self.method, self.url.path, self.status, raw)
        return raw


def checked_session(**kwargs: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(response_class=CheckedResponse, **kwargs)


def checked_client(url: str, api_key: str, **kwargs: Any) -> Any:
    """`duet.Client` whose every answer is checked against the document (its session reads with CheckedResponse)."""
    from duet.rest import Client

    class CheckedClient(Client):
        def _http(self) -> aiohttp.ClientSession:
            if self._session is None:
                self._session = checked_session(timeout=self._timeout)
            return self._session

    return CheckedClient(url, api_key, **kwargs)


class Answer(NamedTuple):
    status: int
    body: Any
    headers: Any


class Http:
    """Raw HTTP against the control plane, with one tenant's key by default; every answer is checked."""

    def __init__(self, session: aiohttp.ClientSession, url: str, api_key: str | None) -> None:
        self.session = session
        self.url = url
        self.api_key = api_key

    async def __call__(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        key: str | None = "default",
    ) -> Answer:
        sent = dict(headers or {})
        api_key = self.api_key if key == "default" else key
        if api_key is not None and "Authorization" not in sent:
            sent.update(bearer(api_key))
        async with self.session.request(
            method, self.url + path, json=json_body, data=data, headers=sent, params=params
        ) as resp:
            raw = await resp.read()
            return Answer(resp.status, json.loads(raw) if raw.strip() else None, resp.headers)


@contextlib.asynccontextmanager
async def http_as(url: str, api_key: str | None) -> AsyncIterator[Http]:
    async with checked_session() as session:
        yield Http(session, url, api_key)
