"""`embed` in a real tritonserver through `TritonModels.embed`: unit rows, the same vectors batched or alone (and
as the in-process engine gives), paraphrases closer than unrelated text, empty strings and lists, requests past
the batch limit, and bad text refused with a typed error while the model goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient

from orchestrator.config import REPO_ROOT, TritonSettings
from orchestrator.errors import ModelUnavailable
from orchestrator.inference.embed import BadText, SentenceEmbedder
from orchestrator.models.launcher import EmbeddedTriton
from orchestrator.models.ports import EMBED_DIM, Embedder
from orchestrator.models.triton import TritonModels
from tests.conftest import require

pytestmark = pytest.mark.integration

MODEL_DIR = REPO_ROOT / "model_repository" / "embed" / "1"
WORDS = (
    "appointment billing address insurance clinic doctor refund invoice schedule morning evening payment card "
    "account password reset change forgotten email phone number delivery order parcel tracking weekend holiday"
).split()


def chunk_texts(n: int, words: int = 80, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, words)) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def embed_server() -> Iterator[EmbeddedTriton]:
    require(MODEL_DIR / "minilm-l6-v2.onnx", "the exported embedding model")
    with EmbeddedTriton(TritonSettings(models=("embed",))) as server:
        yield server


async def with_models(url: str, job: Any) -> Any:
    models = TritonModels(url, timeout_s=60.0)
    try:
        return await job(models)
    finally:
        await models.close()


async def test_adapter_is_an_embedder() -> None:
    def takes(e: Embedder) -> Embedder:
        return e

    models = TritonModels("127.0.0.1:1")  # (its gRPC channel needs the running loop: an async test)
    try:
        assert takes(models) is models
    finally:
        await models.close()


def test_rows_are_unit_vectors_and_a_batch_equals_single_calls(embed_server: EmbeddedTriton) -> None:
    texts = ["How do I reset my password?", "", "Short.", "word " * 400, *chunk_texts(3)]

    async def job(m: TritonModels) -> tuple[Any, list[Any], Any]:
        batch = await m.embed(texts)
        singles = [await m.embed([t]) for t in texts]
        return batch, singles, await m.embed([])

    batch, singles, empty = asyncio.run(with_models(embed_server.grpc_url, job))
    assert batch.shape == (len(texts), EMBED_DIM) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batch, np.concatenate(singles), atol=1e-5)
    assert empty.shape == (0, EMBED_DIM) and empty.dtype == np.float32
    local = SentenceEmbedder(MODEL_DIR)(texts)  # the same numbers as the engine in-process
    np.testing.assert_allclose(batch, local, atol=1e-5)


def test_paraphrase_is_closer_than_unrelated_text(embed_server: EmbeddedTriton) -> None:
    async def job(m: TritonModels) -> Any:
        return await m.embed(
            ["How do I reset my password?", "Steps to change a forgotten password", "The clinic opens at 8 am"]
        )

    q, para, other = asyncio.run(with_models(embed_server.grpc_url, job))
    assert float(q @ para) > 0.6 and float(q @ other) < 0.3


def test_more_texts_than_one_request_holds(embed_server: EmbeddedTriton) -> None:
    texts = chunk_texts(150, seed=1)

    async def job(m: TritonModels) -> list[Any]:
        # two callers at once: their requests are batched together by Triton, each gets its own rows back
        return list(await asyncio.gather(m.embed(texts), m.embed(texts[:70])))

    many, fewer = asyncio.run(with_models(embed_server.grpc_url, job))
    assert many.shape == (150, EMBED_DIM) and fewer.shape == (70, EMBED_DIM)
    np.testing.assert_allclose(many[:70], fewer, atol=1e-5)
    np.testing.assert_allclose(many, SentenceEmbedder(MODEL_DIR)(texts), atol=1e-5)


def test_bad_text_is_a_typed_error_and_the_model_goes_on(embed_server: EmbeddedTriton) -> None:
    def raw(rows: list[bytes]) -> Any:
        t = grpcclient.InferInput("TEXT", [len(rows), 1], "BYTES")
        t.set_data_from_numpy(np.array(rows, dtype=np.object_).reshape(-1, 1))
        return t

    async def job(m: TritonModels) -> Any:
        with pytest.raises(BadText):  # not UTF-8 encodable: refused before sending
            await m.embed(["fine", "lone surrogate \ud800"])
        # bytes that are not UTF-8 reach the model: it refuses that request alone, naming the row
        bad = m._call("embed", [raw([b"ok", b"\xff\xfe"])], ["EMBEDDING"])
        good = m._call("embed", [raw([b"still fine"])], ["EMBEDDING"])
        results = await asyncio.gather(bad, good, return_exceptions=True)
        assert isinstance(results[0], ModelUnavailable) and "bad_text: TEXT[1] is not valid UTF-8" in str(results[0])
        assert not isinstance(results[1], BaseException)
        return await m.embed(["The model still answers."])

    after = asyncio.run(with_models(embed_server.grpc_url, job))
    assert after.shape == (1, EMBED_DIM)
