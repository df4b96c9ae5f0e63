"""Requests for a conversation another orchestrator runs go to that one (several orchestrators on one store).

A conversation's session lives in the process that joined it; the store names that process and where its API
is reached (`conversations.holder_url`, kept fresh by its lease). `POST .../end` and `POST .../interactions`
need the live session, so a server that does not hold it passes the request on, as it came (the caller's own
API key authenticates it there), and answers with the holder's answer. A forwarded request is marked, and is
never forwarded again: two servers that disagree about the holder answer `409 conflict` instead of looping.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from orchestrator.errors import Conflict, Unavailable

FORWARDED = "Duet-Forwarded"  # the header a forwarded request carries (its value: the forwarding instance)
PASSED = ("Authorization", "Content-Type", "Idempotency-Key", "Accept")
TIMEOUT_S = 10.0  # `end` waits up to ~5 s for the session to record its end


async def forward(request: web.Request, holder_url: str, instance_id: str, body: bytes | None) -> web.Response:
    """Send `request` (with `body`, the JSON it carried) to the orchestrator at `holder_url` and return its
    answer (status, body, media type)."""
    if FORWARDED in request.headers:
        raise Conflict("the conversation's server changed while the request was passed on; try again")
    headers = {k: v for k in PASSED if (v := request.headers.get(k)) is not None}
    headers[FORWARDED] = instance_id
    url = holder_url.rstrip("/") + request.path_qs
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as client,
            client.request(request.method, url, data=body or None, headers=headers, allow_redirects=False) as r,
        ):
            answer = await r.read()
            return web.Response(status=r.status, body=answer, content_type=r.content_type)
    except (aiohttp.ClientError, TimeoutError) as err:
        raise Unavailable(
            "the server running this conversation did not answer; try again (if it stopped, the conversation is "
            f"ended within its hold lease): {type(err).__name__}"
        ) from err
