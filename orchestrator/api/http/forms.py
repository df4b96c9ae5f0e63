"""Multipart uploads (`POST /v1/faces`, `POST /v1/documents`): one `file` part and a few short text fields,
read with limits, every malformation a typed answer (400 for a broken form, 413 over the limit, 422 for an
unknown or bad field)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from orchestrator.api.http.server import ApiError

MAX_FIELD_CHARS = 2000


@dataclass
class Upload:
    data: bytes | None = None  # the `file` part
    filename: str = ""  # as the client named it (only its extension is used)
    content_type: str = ""  # the part's Content-Type
    fields: dict[str, str] = field(default_factory=dict)


async def read_upload(request: web.Request, limit: int, fields: dict[str, int], what: str) -> Upload:
    """The `file` part (at most `limit` bytes) and the text `fields` (name → maximum characters) of a
    multipart form; `what` names the file in messages ("the portrait")."""
    if request.content_type != "multipart/form-data":
        raise ApiError("unsupported_media_type", f"upload {what} as multipart/form-data with a `file` field")
    try:
        return await _read_parts(request, limit, fields, what)
    except (ValueError, LookupError, RuntimeError, HttpProcessingError) as err:
        # what aiohttp's multipart parser raises for a malformed body (boundary, part headers, encodings)
        raise ApiError("bad_request", "the body is not a well-formed multipart form") from err


async def _read_parts(request: web.Request, limit: int, fields: dict[str, int], what: str) -> Upload:
    reader = await request.multipart()
    out = Upload()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ApiError("bad_request", "nested multipart bodies are not accepted")
        if part.name == "file":
            data = bytearray()
            while chunk := await part.read_chunk(1 << 16):
                data += chunk
                if len(data) > limit:
                    raise ApiError("too_large", f"{what} is over {limit} bytes")
            out.data = bytes(data)
            out.filename = part.filename or ""
            out.content_type = part.headers.get("Content-Type", "")
        elif part.name in fields:
            value = (await part.text()).strip()
            longest = fields[part.name]
            if len(value) > longest or "\x00" in value:
                raise ApiError("invalid", f"{part.name} is at most {longest} characters, with no NUL", part.name)
            out.fields[part.name] = value
        else:
            known = ", ".join(["file", *fields])
            raise ApiError("invalid", f"unknown form field {part.name!r} ({known})", part.name or "$")
    if out.data is None:
        raise ApiError("invalid", f"the `file` field ({what}) is required", "file")
    return out
