"""The models in the real tritonserver: VAD, Smart Turn, prosody and the floor ensemble."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from orchestrator.config import REPO_ROOT
from orchestrator.errors import ModelUnavailable
from orchestrator.inference.turn import SmartTurn, pcm_to_float
from orchestrator.inference.vad import SileroBatch
from orchestrator.models.triton import TritonModels
from orchestrator.signal.audio import HISTORY, SAMPLE_RATE, VAD_CONTEXT, VAD_WINDOW
from orchestrator.signal.prosody import prosody_features
from orchestrator.turns.fusion import FusionWeights, feature_vector

pytestmark = pytest.mark.integration
I16 = npt.NDArray[np.int16]


def vad_windows(audio: I16) -> list[I16]:
    padded = np.concatenate([np.zeros(VAD_CONTEXT, np.int16), audio])
    return [padded[i : i + VAD_CONTEXT + VAD_WINDOW] for i in range(0, audio.shape[0] - VAD_WINDOW, VAD_WINDOW)]


async def vad_track(models: TritonModels, audio: I16) -> list[float]:
    state = np.zeros((2, 128), np.float32)
    probs = []
    for w in vad_windows(audio):
        p, state = await models.vad(w, state)
        probs.append(p)
    return probs


def end_window(audio: I16, end_s: float) -> I16:
    end = round(end_s * SAMPLE_RATE)
    x = audio[max(0, end - HISTORY) : end]
    return np.concatenate([np.zeros(HISTORY - x.shape[0], np.int16), x])


async def test_vad_tracks_speech_and_matches_in_process(
    triton: Any, sample_audio: I16, sample_label: dict[str, Any]
) -> None:
    models = TritonModels(triton.grpc_url)
    try:
        probs = np.asarray(await vad_track(models, sample_audio))
    finally:
        await models.close()
    # Same numbers as the model run in-process (the state really goes in and out).
    local = SileroBatch(REPO_ROOT / "model_repository/vad/1/silero_vad.onnx")
    state = np.zeros((1, 2, 128), np.float32)
    ref = []
    for w in vad_windows(sample_audio):
        p, state = local(w[None, :], state)
        ref.append(float(p[0, 0]))
    assert np.allclose(probs, ref, atol=1e-4)
    t = (np.arange(probs.shape[0]) + 1) * VAD_WINDOW / SAMPLE_RATE
    seg = sample_label["segments"][0]
    inside = probs[(t > seg["start"] + 0.2) & (t < seg["end"] - 0.1)]
    before = probs[t < seg["start"] - 0.1]
    assert inside.mean() > 0.7 and before.mean() < 0.2


async def test_sessions_interleaved_get_the_same_vad_as_alone(triton: Any, sample_audio: I16) -> None:
    """State passed as tensors: 8 concurrent streams batched together each see only their own state."""
    models = TritonModels(triton.grpc_url)
    try:
        alone = await vad_track(models, sample_audio[: SAMPLE_RATE * 3])
        clips = [np.roll(sample_audio, -i * 4000)[: SAMPLE_RATE * 3] for i in range(8)]
        together = await asyncio.gather(*(vad_track(models, c) for c in clips))
    finally:
        await models.close()
    assert np.allclose(together[0], alone, atol=1e-4)
    assert not np.allclose(together[0], together[1], atol=1e-2)


async def test_floor_ensemble_equals_its_parts(triton: Any, sample_audio: I16, sample_label: dict[str, Any]) -> None:
    models = TritonModels(triton.grpc_url)
    yield_pause = next(p for p in sample_label["pauses"] if p["kind"] == "yield")
    t = yield_pause["start"] + 0.2
    window = end_window(sample_audio, t)
    pause = round(0.2 * SAMPLE_RATE)
    try:
        est = await models.floor(window, pause, "", "")
    finally:
        await models.close()
    p_turn = float(SmartTurn(REPO_ROOT / "model_repository/turn/1/smart-turn-v3.2-cpu.onnx")(window[None, :])[0, 0])
    assert est.p_turn == pytest.approx(p_turn, abs=1e-3)
    weights = FusionWeights.load(REPO_ROOT / "model_repository/floor_fusion/1/weights.json")
    x = feature_vector(p_turn, prosody_features(pcm_to_float(window), pause).tolist(), 200.0)
    assert est.p_yield == pytest.approx(float(weights.predict(x[None, :])[0]), abs=1e-3)
    assert 0.0 <= est.p_yield <= 1.0


async def test_dynamic_batching_batches_concurrent_sessions(triton: Any, sample_audio: I16) -> None:
    import tritonclient.grpc as grpcclient

    stats_client = grpcclient.InferenceServerClient(triton.grpc_url)

    def counts() -> tuple[int, int]:
        s = stats_client.get_inference_statistics("vad").model_stats[0]
        return int(s.inference_count), int(s.execution_count)

    before = counts()
    models = TritonModels(triton.grpc_url)
    try:
        clips = [np.roll(sample_audio, -i * 1000)[: SAMPLE_RATE * 2] for i in range(16)]
        await asyncio.gather(*(vad_track(models, c) for c in clips))
    finally:
        await models.close()
    expected = 16 * len(vad_windows(clips[0]))
    for _ in range(50):  # Triton counts an execution after its responses are sent: the last may lag a moment
        after = counts()
        if after[0] - before[0] >= expected:
            break
        await asyncio.sleep(0.05)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == expected
    assert executions < inferences  # several sessions' windows ran in one execution


async def test_bad_tensor_is_a_typed_error_and_the_model_keeps_serving(triton: Any, sample_audio: I16) -> None:
    models = TritonModels(triton.grpc_url)
    try:
        with pytest.raises(ModelUnavailable, match="vad"):
            await models.vad(np.zeros(100, np.int16), np.zeros((2, 128), np.float32))
        p, _ = await models.vad(vad_windows(sample_audio)[40], np.zeros((2, 128), np.float32))
        assert 0.0 <= p <= 1.0
    finally:
        await models.close()


async def test_unreachable_triton_is_a_typed_error() -> None:
    from orchestrator.models.launcher import free_port

    models = TritonModels(f"127.0.0.1:{free_port()}", timeout_s=2.0)
    try:
        with pytest.raises(ModelUnavailable):
            await models.ready()
    finally:
        await models.close()
