"""The web pages the REST server also serves: the conversation page (`conversation_url`, `/c/{id}`), the persona
builder (`/builder`) and their files (`/web/{name}`, from `web/` beside this module).

The pages are plain HTML and ES modules with no build step and nothing fetched from elsewhere; they talk to
this server only, through the public REST API, so a strict Content-Security-Policy holds them to it. They need
no authentication to load: the conversation page joins with the token in its URL's fragment, the builder signs
in with an API key the user types.
"""

from __future__ import annotations

import re
from importlib import resources

from aiohttp import web

from orchestrator.api.http.server import ApiError

TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(html|js|css|svg|png)$")
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "media-src 'self' blob:; connect-src 'self'; worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> web.Response:
    if not _NAME.match(name):
        raise ApiError("not_found", f"no page file {name[:80]!r}")
    path = resources.files(__package__).joinpath("web", name)
    if not path.is_file():
        raise ApiError("not_found", f"no page file {name}")
    suffix = name[name.rindex(".") :]
    body = path.read_bytes()
    return web.Response(body=body, content_type=TYPES[suffix], headers=HEADERS)


async def _call_page(request: web.Request) -> web.StreamResponse:
    return _file("call.html")


async def _builder(request: web.Request) -> web.StreamResponse:
    return _file("builder.html")


async def _asset(request: web.Request) -> web.StreamResponse:
    return _file(request.match_info["name"])


def add_pages(app: web.Application) -> None:
    app.router.add_get("/c/{conversation_id}", _call_page)
    app.router.add_get("/builder", _builder)
    app.router.add_get("/web/{name}", _asset)
