"""Replica faces on disk and the renderers a process keeps for them.

A face is a portrait file `<faces_dir>/<name>.png|.jpg|.jpeg` (users add their own); preparing it (face mesh,
regions) runs once and is cached by content in `cache_dir`. `RenderPool` holds one renderer per (face,
output size) on one device, least recently used first out, and is what the `face_render` model serves from.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestrator.errors import BadFaceParams, BadPortrait
from orchestrator.face import params as fp

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_FRAMES = 1800  # one request: 60 s at 30 fps
MIN_SIDE, MAX_WIDTH, MAX_HEIGHT = 64, 3840, 2160


def check_size(width: int, height: int) -> None:
    if not (MIN_SIDE <= width <= MAX_WIDTH and MIN_SIDE <= height <= MAX_HEIGHT) or width % 2 or height % 2:
        raise BadFaceParams(
            f"output size {width}x{height} is not supported "
            f"(even sides, {MIN_SIDE}..{MAX_WIDTH} x {MIN_SIDE}..{MAX_HEIGHT})"
        )


def check_params(params: npt.NDArray[Any]) -> None:
    """Per-frame parameters as the renderer takes them: (frames, SIZE) finite float32, 1..MAX_FRAMES frames."""
    if params.ndim != 2 or params.shape[1] != fp.SIZE:
        raise BadFaceParams(f"face parameters must have shape (frames, {fp.SIZE}), got {tuple(params.shape)}")
    if not 1 <= params.shape[0] <= MAX_FRAMES:
        raise BadFaceParams(f"{params.shape[0]} frames in one request (1..{MAX_FRAMES})")
    if not np.isfinite(params).all():
        raise BadFaceParams("face parameters hold NaN or infinity")


class FaceLibrary:
    def __init__(self, faces_dir: str | Path, cache_dir: str | Path) -> None:
        self.faces_dir = Path(faces_dir)
        self.cache_dir = Path(cache_dir)
        self._portraits: dict[str, Any] = {}

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.faces_dir.glob("*") if p.suffix.lower() in SUFFIXES)

    def path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise BadPortrait(f"face name {name!r} is invalid (letters, digits, '-' and '_' only)")
        for suffix in SUFFIXES:
            if (candidate := self.faces_dir / f"{name}{suffix}").is_file():
                return candidate
        raise BadPortrait(f"unknown face {name!r} (known: {', '.join(self.names()) or 'none'})")

    def portrait(self, name: str) -> Any:
        """The prepared portrait (`orchestrator.face.assets.Portrait`), prepared once per process."""
        if name not in self._portraits:
            from orchestrator.face.assets import prepare_portrait

            self._portraits[name] = prepare_portrait(self.path(name), self.cache_dir)
        return self._portraits[name]


class RenderPool:
    """Renderers by (face, width, height) on one device; frames in, uint8 frames and JPEG bytes out."""

    def __init__(
        self, faces_dir: str | Path, cache_dir: str | Path, device: str = "auto", threads: int = 2, keep: int = 16
    ) -> None:
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(threads, 1))
        self.device = torch.device(device)
        self.library = FaceLibrary(faces_dir, cache_dir)
        self.keep = keep
        self._renderers: OrderedDict[tuple[str, int, int], Any] = OrderedDict()

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def renderer(self, face: str, width: int, height: int) -> Any:
        key = (face, width, height)
        if key in self._renderers:
            self._renderers.move_to_end(key)
            return self._renderers[key]
        check_size(width, height)
        from orchestrator.face.render import FaceRenderer

        renderer = FaceRenderer(self.library.portrait(face), width, height, device=self.device)
        self._renderers[key] = renderer
        while len(self._renderers) > self.keep:
            self._renderers.popitem(last=False)
        return renderer

    check_params = staticmethod(check_params)

    def render(self, key: tuple[str, int, int], params: npt.NDArray[np.float32]) -> Any:
        return self.renderer(*key).render(params)

    def encode(self, frames: Any, quality: int) -> list[bytes]:
        from orchestrator.face.render import encode_jpeg

        if not 1 <= quality <= 100:
            raise BadFaceParams(f"JPEG quality {quality} is out of range (1..100)")
        out: list[bytes] = encode_jpeg(frames, quality)
        return out
