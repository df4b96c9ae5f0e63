"""The `asr` model in a real tritonserver: real speech in, the spoken words out, batched or alone."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as syncclient
from tritonclient.utils import InferenceServerException

from orchestrator.config import REPO_ROOT, TritonSettings
from orchestrator.errors import ModelUnavailable
from orchestrator.models.launcher import EmbeddedTriton
from orchestrator.models.ports import Transcript
from orchestrator.models.triton import TritonModels
from tests.conftest import read_wav

pytestmark = pytest.mark.integration
I16 = npt.NDArray[np.int16]
SR = 16000
DEV = REPO_ROOT / "perf" / "data" / "turns" / "dev"


@pytest.fixture(scope="module")
def asr_server() -> Iterator[EmbeddedTriton]:
    with EmbeddedTriton(TritonSettings(models=("asr",))) as server:
        yield server


def words_of(text: str) -> list[str]:
    """Lower case, no punctuation, digits one by one ("447" and "4 4 7" are the same words)."""
    out: list[str] = []
    for w in re.sub(r"[^\w\s']", " ", text.lower().replace("-", " ")).split():
        out.extend(list(w) if w.isdigit() else [w])
    return out


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = words_of(reference), words_of(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row = row, [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return row[-1] / max(1, len(ref))


def clip(audio: I16, start: float, end: float, pad: float = 0.2) -> I16:
    return audio[max(0, round((start - pad) * SR)) : round((end + pad) * SR)]


def dev_turns(n: int) -> list[tuple[I16, str]]:
    """The first `n` turns of the dev set (synthetic voices, some with noise): audio and the words spoken."""
    out: list[tuple[I16, str]] = []
    for line in (DEV / "labels.jsonl").read_text().splitlines():
        label = json.loads(line)
        audio = read_wav(DEV.parent / label["file"])
        out.extend((clip(audio, t["start"], t["end"]), t["text"]) for t in label["turns"])
        if len(out) >= n:
            break
    return out[:n]


async def with_models(server: EmbeddedTriton, fn: Any) -> Any:
    models = TritonModels(server.grpc_url)
    try:
        return await fn(models)
    finally:
        await models.close()


async def test_transcribes_the_demo_turns_with_word_timings(
    asr_server: EmbeddedTriton, sample_audio: I16, sample_label: dict[str, Any]
) -> None:
    turns = sample_label["turns"]
    clips = [clip(sample_audio, t["start"], t["end"]) for t in turns]
    results: list[Transcript] = await with_models(
        asr_server, lambda m: asyncio.gather(*(m.transcribe(c) for c in clips))
    )
    for turn, audio, result in zip(turns, clips, results, strict=True):
        assert word_error_rate(turn["text"], result.text) <= 0.15, (turn["text"], result.text)
        assert words_of(" ".join(w.text for w in result.words)) == words_of(result.text)
        duration = audio.shape[0] / SR
        for w in result.words:
            assert 0.0 <= w.start <= w.end <= duration + 0.1
            assert 0.0 <= w.probability <= 1.0
        starts = [w.start for w in result.words]
        assert starts == sorted(starts)
        # The first word starts near where the speech does (the clip has 0.2 s of lead-in).
        assert result.words[0].start < 0.6


async def test_dev_turns_word_error_rate(asr_server: EmbeddedTriton) -> None:
    """Noisy synthetic voices: Whisper base on the full 30 s window gets ~18 % here; we allow a little more."""
    turns = dev_turns(16)
    results = await with_models(asr_server, lambda m: asyncio.gather(*(m.transcribe(a) for a, _ in turns)))
    errors = sum(word_error_rate(ref, r.text) * len(words_of(ref)) for (_, ref), r in zip(turns, results, strict=True))
    assert errors / sum(len(words_of(ref)) for _, ref in turns) < 0.3


async def test_concurrent_requests_give_the_same_as_one_by_one(asr_server: EmbeddedTriton) -> None:
    turns = dev_turns(8)
    prompts = ["", "We were talking about your bill.", "", "Earlier: my account number changed.", "", "", "x", ""]

    async def both(m: TritonModels) -> tuple[list[Transcript], list[Transcript]]:
        alone = [await m.transcribe(a, p) for (a, _), p in zip(turns, prompts, strict=True)]
        together = await asyncio.gather(*(m.transcribe(a, p) for (a, _), p in zip(turns, prompts, strict=True)))
        return alone, list(together)

    alone, together = await with_models(asr_server, both)
    assert [t.text for t in together] == [t.text for t in alone]
    assert [[w.text for w in t.words] for t in together] == [[w.text for w in t.words] for t in alone]
    for a, b in zip(alone, together, strict=True):
        assert np.allclose([w.start for w in a.words], [w.start for w in b.words], atol=0.05)


async def test_text_only_requests_skip_word_timings(asr_server: EmbeddedTriton, sample_audio: I16) -> None:
    audio = clip(sample_audio, 7.0471, 8.1171)
    full, text_only = await with_models(
        asr_server, lambda m: asyncio.gather(m.transcribe(audio), m.transcribe(audio, word_timings=False))
    )
    assert text_only.text == full.text and full.words and text_only.words == ()


async def test_silence_short_and_empty_audio_give_empty_text(asr_server: EmbeddedTriton) -> None:
    rng = np.random.default_rng(0)
    cases = [
        np.zeros(SR, np.int16),  # one second of digital silence
        np.zeros(10, np.int16),  # shorter than any word
        np.zeros(0, np.int16),  # nothing at all
        rng.normal(0, 2, 2 * SR).astype(np.int16),  # two seconds of very faint noise
    ]
    results = await with_models(asr_server, lambda m: asyncio.gather(*(m.transcribe(c) for c in cases)))
    assert [r.text for r in results] == [""] * len(cases)
    assert all(r.words == () for r in results)


async def test_bad_input_gives_a_clear_error(asr_server: EmbeddedTriton, sample_audio: I16) -> None:
    too_long = np.tile(sample_audio, 3)[: 29 * SR]

    async def check(m: TritonModels) -> None:
        with pytest.raises(ModelUnavailable, match="at most 28 s"):
            await m.transcribe(too_long)
        with pytest.raises(ValueError, match="int16"):
            await m.transcribe(sample_audio.astype(np.float32))  # type: ignore[arg-type]
        # The server still answers the next request normally.
        assert (await m.transcribe(clip(sample_audio, 7.0471, 8.1171))).text

    await with_models(asr_server, check)
    # A client that bypasses the adapter and sends floats is refused by Triton with the reason.
    client = syncclient.InferenceServerClient(asr_server.grpc_url)
    a = syncclient.InferInput("AUDIO", [1, 1600], "FP32")
    a.set_data_from_numpy(np.zeros((1, 1600), np.float32))
    p = syncclient.InferInput("PROMPT", [1, 1], "BYTES")
    p.set_data_from_numpy(np.array([[b""]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"(?i)data.?type|INT16"):
        client.infer("asr", [a, p])
    client.close()
