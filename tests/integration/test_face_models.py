"""`face_motion` and `face_render` in a real tritonserver, and a whole clip (tts + face) through them."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from orchestrator.config import TritonSettings
from orchestrator.errors import BadFaceParams, BadPortrait
from orchestrator.events import RenderDone
from orchestrator.face import params as fp
from orchestrator.face.clip import AudioPiece, ClipSpec, render_clip
from orchestrator.face.emotions import EmotionCue
from orchestrator.face.motion import MotionRequest, generate
from orchestrator.models.launcher import EmbeddedTriton
from orchestrator.models.ports import RenderedFrames
from orchestrator.models.triton import TritonModels
from tests.conftest import metric

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def face_server() -> Iterator[EmbeddedTriton]:
    with EmbeddedTriton(TritonSettings(models=("tts", "face_motion", "face_render"))) as server:
        yield server


async def with_models(url: str, job: Any) -> Any:
    models = TritonModels(url, timeout_s=60.0)
    try:
        return await job(models)
    finally:
        await models.close()


def size_of(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as im:
        return im.size


def test_motion_in_triton_is_the_pure_function(face_server: EmbeddedTriton) -> None:
    req = MotionRequest(fps=25.0, start=1.0, frames=30, seed=7, emotion=(EmotionCue(0.0, "happiness", 0.8),))
    got = asyncio.run(with_models(face_server.grpc_url, lambda m: m.face_motion(req.to_json())))
    assert got.shape == (30, fp.SIZE)
    np.testing.assert_allclose(got, generate(req), atol=1e-6)


def test_frames_stream_in_runs_and_are_deterministic(face_server: EmbeddedTriton) -> None:
    params = np.repeat(fp.vector(jaw_open=0.7, lip_corner_up=0.5)[None], 10, axis=0)
    params[::2, fp.INDEX["jaw_open"]] = 0.0

    async def job(m: TritonModels) -> list[list[RenderedFrames]]:
        return [[run async for run in m.render_frames("astronaut", params, 160, 128, 80)] for _ in range(2)]

    first, second = asyncio.run(with_models(face_server.grpc_url, job))
    assert len(first) > 1  # streamed in runs, not one response at the end
    jpegs = [j for run in first for j in run.jpegs]
    assert [run.first for run in first] == sorted(run.first for run in first)
    assert len(jpegs) == 10 and all(size_of(j) == (160, 128) for j in jpegs)
    assert jpegs == [j for run in second for j in run.jpegs]
    assert jpegs[0] != jpegs[1]  # the mouth moved


def test_concurrent_sessions_share_the_renderer(face_server: EmbeddedTriton) -> None:
    a = np.zeros((12, fp.SIZE), dtype=np.float32)
    b = np.repeat(fp.vector(jaw_open=0.8)[None], 12, axis=0)

    async def job(m: TritonModels) -> list[int]:
        async def count(p: Any, w: int) -> int:
            return sum([len(run.jpegs) async for run in m.render_frames("astronaut", p, w, w, 70)])

        return list(await asyncio.gather(count(a, 128), count(b, 128), count(b, 96)))

    assert asyncio.run(with_models(face_server.grpc_url, job)) == [12, 12, 12]


def test_a_cancelled_render_stops_drawing(face_server: EmbeddedTriton) -> None:
    long = np.zeros((400, fp.SIZE), dtype=np.float32)
    small = np.zeros((4, fp.SIZE), dtype=np.float32)
    before = metric(face_server.metrics_url, "duet_face_frames_total", model="face_render")

    async def job(m: TritonModels) -> int:
        stream = m.render_frames("astronaut", long, 256, 256, 80)
        await anext(stream)
        await stream.aclose()  # the client goes away after the first run
        return sum([len(run.jpegs) async for run in m.render_frames("astronaut", small, 256, 256, 80)])

    assert asyncio.run(with_models(face_server.grpc_url, job)) == 4
    # Not cancelled, the 400 frames would all be drawn; cancelled, the model stops within a round or two
    # (4 frames each on CPU) of the client leaving, then draws the 4 of the next request.
    drawn = metric(face_server.metrics_url, "duet_face_frames_total", model="face_render") - before
    assert 4 + 4 <= drawn <= 4 + 40, drawn


def test_a_finished_stream_is_closed_by_triton_not_cancelled(face_server: EmbeddedTriton) -> None:
    """A stream read to its final response ends with Triton's OK status; only one left early is cancelled.
    (Cancelling a stream Triton is still finishing leaks its state in the server: docs/robustness.md.)"""
    calls: list[Any] = []

    async def job(m: TritonModels) -> list[str]:
        client = m._by_url[face_server.grpc_url].client
        open_stream = client.stream_infer

        def recorded(*args: Any, **kwargs: Any) -> Any:
            calls.append(stream := open_stream(*args, **kwargs))
            return stream

        client.stream_infer = recorded
        params = np.zeros((6, fp.SIZE), dtype=np.float32)
        for _ in range(3):
            assert sum([len(run.jpegs) async for run in m.render_frames("astronaut", params, 96, 96, 80)]) == 6
        assert [chunk async for chunk in m.synthesize("Hello there. How are you?")]
        early = m.render_frames("astronaut", np.zeros((200, fp.SIZE), dtype=np.float32), 96, 96, 80)
        await anext(early)
        await early.aclose()
        return [(await c._grpc_call.code()).name for c in calls]

    assert asyncio.run(with_models(face_server.grpc_url, job)) == ["OK"] * 4 + ["CANCELLED"]


def test_bad_render_requests_fail_cleanly_and_the_model_goes_on(face_server: EmbeddedTriton) -> None:
    ok = np.zeros((2, fp.SIZE), dtype=np.float32)

    async def job(m: TritonModels) -> int:
        with pytest.raises(BadPortrait, match="unknown face"):
            async for _ in m.render_frames("nobody", ok, 128, 128, 80):
                pass
        for size in ((100001, 128), (127, 128)):
            with pytest.raises(BadFaceParams, match="size"):
                async for _ in m.render_frames("astronaut", ok, *size, 80):
                    pass
        bad = ok.copy()
        bad[0, 0] = np.nan
        with pytest.raises(BadFaceParams, match="NaN"):
            async for _ in m.render_frames("astronaut", bad, 128, 128, 80):
                pass
        return sum([len(run.jpegs) async for run in m.render_frames("astronaut", ok, 128, 128, 80)])

    assert asyncio.run(with_models(face_server.grpc_url, job)) == 2


def test_a_clip_streams_voice_and_face_on_one_clock(face_server: EmbeddedTriton) -> None:
    spec = ClipSpec(text="Hello there. My name is Ava.", emotion="happiness", width=128, height=128, fps=20.0)

    async def job(m: TritonModels) -> list[Any]:
        return [item async for item in render_clip(m, spec)]

    items = asyncio.run(with_models(face_server.grpc_url, job))
    audio = [i for i in items if isinstance(i, AudioPiece)]
    runs = [i for i in items if isinstance(i, RenderedFrames)]
    done = items[-1]
    assert isinstance(done, RenderDone)
    speech_s = sum(a.pcm.shape[0] for a in audio) / 16000
    assert done.speech_s == pytest.approx(speech_s, abs=1e-3)
    frames = sorted(run.first + k for run in runs for k in range(len(run.jpegs)))
    assert frames == list(range(len(frames)))  # every frame once, none missing
    assert len(frames) == int(np.ceil((speech_s + 0.4) * spec.fps))
    assert any(p.p == "m" for p in done.phonemes)  # timings on the clip clock, for sync checks


def test_an_idle_clip_is_exactly_its_duration_with_silent_audio(face_server: EmbeddedTriton) -> None:
    spec = ClipSpec(text="", duration=1.3, width=128, height=128, fps=20.0, listening=True)

    async def job(m: TritonModels) -> list[Any]:
        return [item async for item in render_clip(m, spec)]

    items = asyncio.run(with_models(face_server.grpc_url, job))
    audio = [i for i in items if isinstance(i, AudioPiece)]
    frames = sorted(i.first + k for i in items if isinstance(i, RenderedFrames) for k in range(len(i.jpegs)))
    done = items[-1]
    assert isinstance(done, RenderDone) and done.idle and done.listening and done.speech_s == 0.0
    assert sum(a.pcm.shape[0] for a in audio) == round(1.3 * 16000) and not any(a.pcm.any() for a in audio)
    assert frames == list(range(26)) and done.phonemes == ()


def test_a_duration_longer_than_the_speech_idles_to_its_end(face_server: EmbeddedTriton) -> None:
    spec = ClipSpec(text="Hi.", duration=2.5, width=128, height=128, fps=20.0)

    async def job(m: TritonModels) -> list[Any]:
        return [item async for item in render_clip(m, spec)]

    items = asyncio.run(with_models(face_server.grpc_url, job))
    done = items[-1]
    assert isinstance(done, RenderDone) and not done.idle and 0.2 < done.speech_s < 1.5
    assert done.frames == 50 and sum(len(i.jpegs) for i in items if isinstance(i, RenderedFrames)) == 50
