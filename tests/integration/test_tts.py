"""The `tts` model in a real tritonserver: streamed sentence by sentence, cancellable, strict about its input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest

from orchestrator.config import REPO_ROOT, TritonSettings
from orchestrator.errors import ModelUnavailable
from orchestrator.inference.tts import SAMPLE_RATE, VoiceLibrary, sentences
from orchestrator.models.launcher import EmbeddedTriton
from orchestrator.models.ports import SpeechChunk
from orchestrator.models.triton import TritonModels
from tests.conftest import metric

pytestmark = pytest.mark.integration

VOICES = REPO_ROOT / "model_repository/tts/1/voices"
REPLY = (
    "Sure, I can help you with that. The meeting moved to Thursday at 3.30 in the afternoon. "
    "Dr. Patel will join us as well. Does that still work for you?"
)
LONG = " ".join(f"This is sentence number {n}, and it goes on for a little while longer." for n in range(1, 13))


@pytest.fixture(scope="module")
def tts_server() -> Iterator[EmbeddedTriton]:
    with EmbeddedTriton(TritonSettings(models=("tts",))) as server:
        yield server


async def collect(stream: AsyncIterator[SpeechChunk]) -> list[tuple[float, SpeechChunk]]:
    """(seconds since the call, chunk) for every chunk of the stream."""
    t0 = time.perf_counter()
    return [(time.perf_counter() - t0, chunk) async for chunk in stream]


async def with_models(url: str, job: Any) -> Any:
    models = TritonModels(url, timeout_s=30.0)
    try:
        return await job(models)
    finally:
        await models.close()


def test_streams_one_chunk_per_sentence_same_audio_as_in_process(tts_server: EmbeddedTriton) -> None:
    timed = asyncio.run(with_models(tts_server.grpc_url, lambda m: collect(m.synthesize(REPLY))))
    chunks = [c for _, c in timed]
    expected = sentences(REPLY)
    assert len(expected) == 4
    assert [c.text for c in chunks] == expected
    # Streamed: the first sentence arrives well before the whole reply is done.
    first, total = timed[0][0], timed[-1][0]
    assert first < 0.6 * total, f"first chunk at {first:.2f}s of {total:.2f}s"
    speaker = VoiceLibrary(VOICES, "en_US-joe-medium").get()
    for chunk in chunks:
        duration = chunk.pcm.shape[0] / SAMPLE_RATE
        assert chunk.pcm.dtype == np.int16
        assert 0.04 < duration / len(chunk.text) < 0.15  # ~12 characters per second of speech
        assert chunk.phonemes[0].start == 0.0
        assert abs(chunk.phonemes[-1].end - duration) < 2e-3
        # Deterministic synthesis: the server's audio is exactly what the module makes in-process.
        assert np.array_equal(chunk.pcm, speaker.synthesize(chunk.text).pcm)


def test_cancelling_after_the_first_chunk_stops_synthesis(tts_server: EmbeddedTriton) -> None:
    spoken, cancelled = "duet_tts_sentences_total", "duet_tts_cancelled_requests_total"
    before = metric(tts_server.metrics_url, spoken), metric(tts_server.metrics_url, cancelled)

    async def job(models: TritonModels) -> int:
        stream = models.synthesize(LONG)
        first = await anext(stream)
        assert first.text.startswith("This is sentence number 1,")
        await stream.aclose()  # cancels the request in Triton
        # One instance: a new request is served once the model has let go of the cancelled one.
        return len(await collect(models.synthesize("Okay.")))

    assert asyncio.run(with_models(tts_server.grpc_url, job)) == 1
    assert len(sentences(LONG)) == 12
    # Without cancellation all 12 sentences would be synthesised; with it the model stops after at most the
    # sentence it was working on when the cancel came: the first, perhaps the second, then "Okay.".
    assert metric(tts_server.metrics_url, spoken) - before[0] <= 3
    assert metric(tts_server.metrics_url, cancelled) - before[1] == 1


@pytest.mark.parametrize(
    ("text", "voice", "message"),
    [
        ("", "", "TEXT is empty"),
        ("** 😀 **", "", "TEXT is empty"),
        ("Hello there.", "no_such_voice", "unknown voice 'no_such_voice'"),
        ("Hello there.", "../voices/en_US-joe-medium", "unknown voice"),
        ("word " * 500, "", "at most 2000 are allowed"),
    ],
)
def test_bad_input_gives_a_clear_error(tts_server: EmbeddedTriton, text: str, voice: str, message: str) -> None:
    with pytest.raises(ModelUnavailable, match=message):
        asyncio.run(with_models(tts_server.grpc_url, lambda m: collect(m.synthesize(text, voice))))


def test_named_default_voice_and_concurrent_requests(tts_server: EmbeddedTriton) -> None:
    async def job(models: TritonModels) -> list[list[tuple[float, SpeechChunk]]]:
        return list(
            await asyncio.gather(
                collect(models.synthesize("Hello there. How are you?", "en_US-joe-medium")),
                collect(models.synthesize("Fine, thanks. And you?")),
            )
        )

    a, b = asyncio.run(with_models(tts_server.grpc_url, job))
    assert [c.text for _, c in a] == ["Hello there.", "How are you?"]
    assert [c.text for _, c in b] == ["Fine, thanks.", "And you?"]
