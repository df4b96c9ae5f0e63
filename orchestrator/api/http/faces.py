"""Portrait uploads (`POST /v1/faces`): checked at once (a PNG or JPEG that decodes), prepared in the
background (face mesh and regions: `orchestrator.face.assets.prepare_portrait`, seconds on a CPU), with the
face's status `preparing → ready | failed` in the store.

An uploaded portrait is written to the faces folder the `face_render` model reads (`<faces_dir>/<face_id>.png`,
re-encoded, so no metadata or trailing bytes of the upload survive), and preparing it here fills the same
cache the renderer reads. A deployment with several hosts needs that folder shared (docs/api.md).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
from aiohttp import web

from orchestrator.api.http.forms import read_upload
from orchestrator.api.http.server import ApiError
from orchestrator.config import REPO_ROOT, Settings
from orchestrator.errors import DuetError
from orchestrator.store.ids import new_id
from orchestrator.store.records import FaceRecord
from orchestrator.store.store import Store, utc_now

log = logging.getLogger("duet.faces")

MAX_SIDE = 4096
PREPARING = 2  # portraits prepared at once (each holds a CPU core for seconds)


async def read_portrait(request: web.Request, limit: int) -> tuple[bytes, str]:
    """The `file` part (PNG or JPEG, at most `limit` bytes) and the optional `name` of a multipart upload."""
    upload = await read_upload(request, limit, {"name": 100}, "a portrait (PNG or JPEG)")
    image = upload.data or b""
    if not (image.startswith(b"\x89PNG\r\n\x1a\n") or image.startswith(b"\xff\xd8\xff")):
        raise ApiError("unsupported_media_type", "the portrait must be a PNG or JPEG image")
    return image, upload.fields.get("name", "")


def _normalised_png(data: bytes) -> bytes:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ApiError("unsupported_media_type", "the portrait does not decode as a PNG or JPEG image")
    h, w = image.shape[:2]
    if max(h, w) > MAX_SIDE or min(h, w) < 128:
        raise ApiError("invalid", f"the portrait is {w}x{h}; sides must be 128..{MAX_SIDE} pixels", "file")
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise ApiError("unsupported_media_type", "the portrait could not be re-encoded")
    return bytes(png.tobytes())


class FacePreparer:
    """Owns the background preparations (named tasks, cancelled on close)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.faces_dir = Path(settings.face.faces_dir)
        self.cache_dir = REPO_ROOT / ".cache" / "faces"  # the face_render model's cache (its config.pbtxt)
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(PREPARING)

    async def add(self, tenant_id: str, image: bytes, name: str) -> FaceRecord:
        png = await asyncio.to_thread(_normalised_png, image)
        face_id = new_id("face")
        path = self.faces_dir / f"{face_id}.png"
        await asyncio.to_thread(path.write_bytes, png)
        try:
            face = await self.store.create_face(tenant_id, name or face_id, utc_now(), face_id=face_id)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        task = asyncio.create_task(self._prepare(face_id, path), name=f"face-{face_id}-prepare")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return face

    async def _prepare(self, face_id: str, path: Path) -> None:
        from orchestrator.face.assets import prepare_portrait

        async with self._slots:
            try:
                await asyncio.to_thread(prepare_portrait, path, self.cache_dir)
            except DuetError as err:
                await self.store.set_face_status(face_id, "failed", err.message.replace(str(path), "the portrait"))
                return
            except Exception:
                log.exception("preparing face %s failed", face_id)
                await self.store.set_face_status(face_id, "failed", "the portrait could not be prepared")
                return
        await self.store.set_face_status(face_id, "ready")

    async def delete(self, tenant_id: str, face_id: str) -> None:
        await self.store.delete_face(tenant_id, face_id)  # scoped: another tenant's face is not found
        (self.faces_dir / f"{face_id}.png").unlink(missing_ok=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
