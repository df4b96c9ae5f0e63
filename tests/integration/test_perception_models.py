"""`perception_audio` and `perception_face` in a real tritonserver: the same numbers as the pure modules,
batched across concurrent requests, bad frames refused with a typed error while the model goes on."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import skimage.data
from PIL import Image

from orchestrator.config import TritonSettings
from orchestrator.models.launcher import EmbeddedTriton
from orchestrator.models.triton import TritonModels
from orchestrator.perception.face import BadFrame
from orchestrator.perception.prosody_features import frame_features, frame_pcm

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def perception_server() -> Iterator[EmbeddedTriton]:
    with EmbeddedTriton(TritonSettings(models=("perception_audio", "perception_face"))) as server:
        yield server


async def with_models(url: str, job: Any) -> Any:
    models = TritonModels(url, timeout_s=60.0)
    try:
        return await job(models)
    finally:
        await models.close()


def jpeg(rgb: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_voice_features_match_the_pure_function_and_batch(perception_server: EmbeddedTriton) -> None:
    t = np.arange(16000) / 16000
    tone = (np.sin(2 * np.pi * 180 * t) * 8000).astype(np.int16)
    noise = (np.random.default_rng(0).normal(0, 3000, 16000)).astype(np.int16)
    frames_a, _ = frame_pcm(tone)
    frames_b, _ = frame_pcm(noise[: 320 * 7])

    async def job(m: TritonModels) -> list[Any]:
        return list(await asyncio.gather(m.voice_features(frames_a), m.voice_features(frames_b)))

    a, b = asyncio.run(with_models(perception_server.grpc_url, job))
    np.testing.assert_allclose(a, frame_features(frames_a), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(b, frame_features(frames_b), rtol=1e-5, atol=1e-4)
    assert abs(float(np.median(a[5:, 0])) - 180.0) < 3.0  # f0 of the tone


def test_a_bad_request_fails_alone_not_the_requests_batched_with_it(perception_server: EmbeddedTriton) -> None:
    """Triton batches concurrent requests (other sessions') into one call of the model: a bad one must not
    fail the rest of its batch."""
    good, _ = frame_pcm((np.random.default_rng(1).normal(0, 3000, 320 * 5)).astype(np.int16))
    bad = np.zeros((3, 600), np.int16)  # frames of the wrong width

    async def job(m: TritonModels) -> list[Any]:
        calls = [m.voice_features(good if i % 2 else bad) for i in range(16)]
        return list(await asyncio.gather(*calls, return_exceptions=True))

    results = asyncio.run(with_models(perception_server.grpc_url, job))
    for i, r in enumerate(results):
        if i % 2:
            assert isinstance(r, np.ndarray), r
            np.testing.assert_allclose(r, frame_features(good), rtol=1e-5, atol=1e-4)
        else:
            assert isinstance(r, Exception) and "640 samples" in str(r), r


def test_camera_frames_are_analysed_and_bad_ones_refused(perception_server: EmbeddedTriton) -> None:
    face = skimage.data.astronaut()
    two = np.concatenate([face, face], axis=1)
    empty = np.full((240, 320, 3), 128, dtype=np.uint8)

    async def job(m: TritonModels) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        results = list(await asyncio.gather(*(m.analyze_frame(jpeg(x)) for x in (face, two, empty))))
        for bad in (b"", b"\xff\xd8\xff garbage", jpeg(face)[:2000]):
            with pytest.raises(BadFrame):
                await m.analyze_frame(bad)
        return results, await m.analyze_frame(jpeg(face))  # the model goes on after bad frames

    (one, both, none), again = asyncio.run(with_models(perception_server.grpc_url, job))
    assert one["faces"] == 1 and both["faces"] == 2 and none["faces"] == 0 and "emotion" not in none
    assert one["gaze"] == "camera" and max(one["emotion"], key=one["emotion"].get) == "happiness"
    assert abs(one["head_pose"]["yaw"]) < 10 and abs(one["head_pose"]["roll"]) < 10
    assert again == one
