"""The async edge of the knowledge base: embed chunks for the index, embed a query and search.

The embedder is any `orchestrator.models.ports.Embedder` (`TritonModels` serves the `embed` model; tests use
a fake). Everything else is the pure `KnowledgeIndex`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.knowledge.chunk import Chunk, split_sentences
from orchestrator.knowledge.index import F32, STRATEGY_MODES, Hit, IndexedChunk, KnowledgeIndex, Mode
from orchestrator.models.ports import Embedder

EMBED_BATCH = 64  # texts per `embed` request when indexing a document


def sentence_text(chunk: Chunk, sentence: str) -> str:
    """What a sentence vector is made of: the sentence under its heading ("Late fees: A fee of $5 ..."), so
    "it costs $5" still says what costs it."""
    last = chunk.heading.rsplit(" > ", 1)[-1]
    return f"{last}: {sentence}" if last else sentence


async def embed_chunks(
    embedder: Embedder,
    chunks: Sequence[Chunk],
    chunk_ids: Sequence[str],
    *,
    sentence_vectors: bool = True,
    batch: int = EMBED_BATCH,
) -> list[IndexedChunk]:
    """Chunks with their vectors (and, for the `quality` strategy, one vector per sentence), embedded in
    batches of `batch` texts."""
    if len(chunks) != len(chunk_ids):
        raise ValueError("one chunk id per chunk")
    texts = [c.text for c in chunks]
    spans: list[tuple[int, int]] = []
    if sentence_vectors:
        for c in chunks:
            start = len(texts)
            texts.extend(sentence_text(c, s) for s in c.sentences)
            spans.append((start, len(texts)))
    parts = [await embedder.embed(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    vectors = np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, 0), np.float32)
    out = []
    for n, (c, chunk_id) in enumerate(zip(chunks, chunk_ids, strict=True)):
        sentences = vectors[spans[n][0] : spans[n][1]] if sentence_vectors else None
        out.append(IndexedChunk(chunk_id, c.text, vectors[n], sentences))
    return out


@dataclass(frozen=True)
class Retrieval:
    hits: list[Hit]
    took_ms: float  # embedding the query and searching
    embed_ms: float  # of which embedding the query


class Retriever:
    def __init__(
        self, embedder: Embedder, index: KnowledgeIndex, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.embedder = embedder
        self.index = index
        self._clock = clock

    async def search(
        self,
        query: str,
        *,
        strategy: str = "balanced",
        top_k: int = 5,
        document_ids: Iterable[str] | None = None,
        tags: Iterable[str] | None = None,
        mode: Mode | None = None,
    ) -> Retrieval:
        """`strategy` is the API's (speed | balanced | quality); `mode` overrides it with an index mode."""
        if mode is None:
            if strategy not in STRATEGY_MODES:
                raise ValueError(f"unknown strategy {strategy!r} (speed, balanced or quality)")
            mode = STRATEGY_MODES[strategy]
        start = self._clock()
        vector = None
        if mode != "keyword":
            vector = (await self.embedder.embed([query]))[0]
        embedded = self._clock()
        hits = self.index.search(query, vector, mode=mode, top_k=top_k, document_ids=document_ids, tags=tags)
        end = self._clock()
        return Retrieval(hits, took_ms=(end - start) * 1000, embed_ms=(embedded - start) * 1000)


def excerpt(text: str, sentence_vectors: F32 | None, query: F32, *, sentences: int = 2, max_words: int = 60) -> str:
    """What of a chunk a reply is given: its best sentences for the query (by their own vectors), in the
    chunk's order, under the chunk's heading, at most `max_words`. Every word of context costs the LLM's prompt
    evaluation (~65 tokens/s on one CPU thread), and a whole chunk (~150 tokens) to hold one sentence of answer
    costs seconds. Without sentence vectors (or when the chunk's sentences no longer match them), the chunk's
    first `max_words` words."""
    heading, sep, body = text.partition(": ")
    if not sep or len(heading) > 200:
        heading, body = "", text
    parts = split_sentences(body)
    if sentence_vectors is None or len(parts) != len(sentence_vectors) or not parts:
        words = text.split()
        return " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")
    scores = sentence_vectors @ np.asarray(query, np.float32)
    best = sorted(np.argsort(-scores)[:sentences].tolist())
    chosen: list[str] = []
    count = 0
    for i in best:
        n = len(parts[i].split())
        if chosen and count + n > max_words:
            break
        chosen.append(parts[i])
        count += n
    body_text = " ".join(chosen)
    return f"{heading}: {body_text}" if heading else body_text
