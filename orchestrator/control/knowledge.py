"""The knowledge base as a service: documents in, chunks embedded and stored, searches answered.

`add` reads and splits a document at once, in a worker thread (a type it cannot read, a file without text, a
file over the limit: a typed error, and nothing is stored); the document is then `processing` while its
chunks are embedded by the `embed` model in the background (named, owned tasks), and becomes `ready` when
its chunks are written with it in one transaction (`Store.finish_document`): a search never sees half a
document. A failure leaves it `failed` with the reason and no chunks.

Searches run on an in-memory index per tenant (`orchestrator/knowledge/index.py`), built from the store's
chunks and rebuilt when the tenant's ready documents change: a cheap fingerprint query (their count and the
newest id) is checked at most every `FRESH_S`, so every orchestrator sharing the store sees a new or deleted
document within that time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from orchestrator.config import IntelSettings
from orchestrator.errors import Conflict, DuetError, Invalid, Unavailable
from orchestrator.knowledge.chunk import Chunk, chunk_document
from orchestrator.knowledge.errors import DocumentTooLarge, EmptyDocument
from orchestrator.knowledge.index import Hit, IndexedChunk, KnowledgeIndex
from orchestrator.knowledge.parse import parse_document
from orchestrator.knowledge.retrieve import Retriever, embed_chunks
from orchestrator.models.ports import EMBED_DIM, F32, Embedder
from orchestrator.store.records import ChunkRecord, DocumentRecord, NewChunk
from orchestrator.store.store import Store, utc_now

log = logging.getLogger("duet.knowledge")

FRESH_S = 2.0  # a tenant's index is checked against the store at most this often
INGESTING = 1  # documents embedded at once (a second would hold the other `embed` instance: queries would wait)
_JSON_KINDS = {"text": "text/plain", "markdown": "text/markdown", "html": "text/html"}


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    took_ms: float  # embedding the query and searching


@dataclass
class _Cached:
    version: tuple[int, str]
    index: KnowledgeIndex
    checked: float  # monotonic time of the last fingerprint check


def vector_bytes(v: F32) -> bytes:
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def vector_of(raw: bytes) -> F32:
    return np.frombuffer(raw, dtype="<f4")


class KnowledgeBase:
    def __init__(self, store: Store, settings: IntelSettings, clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self.s = settings
        self.clock = clock
        self.embedder: Embedder | None = None  # the `embed` model, once the models are up (`attach`)
        self._indexes: dict[str, _Cached] = {}
        self._building: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(INGESTING)

    # ---- documents ----------------------------------------------------------------------------------------

    async def add(
        self,
        tenant_id: str,
        *,
        name: str,
        data: bytes,
        content_type: str = "",
        filename: str = "",
        tags: Sequence[str] = (),
        field: str = "$.file",
    ) -> DocumentRecord:
        """Read and split the document now (typed errors), then embed its chunks in the background."""
        if len(data) > self.s.max_document_bytes:
            raise DocumentTooLarge(f"the document is {len(data)} bytes; the limit is {self.s.max_document_bytes}")
        if self.embedder is None:
            raise Unavailable("the knowledge base has no embedding model yet (the `embed` model is not up)")
        ctype = _JSON_KINDS.get(content_type, content_type)
        parsed = await asyncio.to_thread(parse_document, data, filename=filename, content_type=ctype, field=field)
        chunks = chunk_document(parsed)
        if not chunks:
            raise EmptyDocument("the document has no text to search", field)
        doc = await self.store.create_document(
            tenant_id, name=name, tags=list(dict.fromkeys(tags)), content_type=parsed.kind, size=len(data),
            now=self.clock(),
        )  # fmt: skip
        task = asyncio.create_task(self._ingest(doc.id, chunks), name=f"knowledge-ingest-{doc.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return doc

    async def _ingest(self, document_id: str, chunks: list[Chunk]) -> None:
        try:
            async with self._slots:
                rows = await self._embed_chunks(chunks)
            written = await self.store.finish_document(document_id, rows, self.clock())
            log.info("document %s: %d chunks %s", document_id, len(rows), "ready" if written else "(deleted)")
        except asyncio.CancelledError:
            await asyncio.shield(self.store.fail_document(document_id, "the server stopped", self.clock()))
            raise
        except Exception as err:
            message = err.message if isinstance(err, DuetError) else f"{type(err).__name__}: {err}"
            log.warning("document %s failed: %s", document_id, message)
            await self.store.fail_document(document_id, f"embedding failed: {message}", self.clock())

    async def _embed_chunks(self, chunks: list[Chunk]) -> list[NewChunk]:
        assert self.embedder is not None
        embedded = await embed_chunks(self.embedder, chunks, [""] * len(chunks), sentence_vectors=True)
        return [
            NewChunk(
                c.heading,
                c.text,
                vector_bytes(e.vector),
                vector_bytes(e.sentence_vectors) if e.sentence_vectors is not None else b"",
            )
            for c, e in zip(chunks, embedded, strict=True)
        ]

    async def delete(self, tenant_id: str, document_id: str) -> None:
        await self.store.delete_document(tenant_id, document_id)
        self._indexes.pop(tenant_id, None)  # (this process sees it at once; others within FRESH_S)

    # ---- search ---------------------------------------------------------------------------------------------

    async def search(
        self,
        tenant_id: str,
        query: str,
        *,
        document_ids: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
        top_k: int = 5,
        strategy: str = "balanced",
        check_ids: bool = True,
    ) -> SearchResult:
        """The best chunks for `query` among the tenant's ready documents (those of `document_ids` and with one
        of `tags`, when given). An id that is not one of the tenant's documents is `Invalid`, one still
        processing a `Conflict` (with `check_ids`; a conversation's retrieval skips the check)."""
        t0 = time.perf_counter()
        if self.embedder is None:
            raise Unavailable("the knowledge base has no embedding model yet (the `embed` model is not up)")
        index = await self.index(tenant_id)
        if check_ids and document_ids:
            await self._check_ids(tenant_id, index, document_ids)
        found = await Retriever(self.embedder, index).search(
            query, strategy=strategy, top_k=top_k, document_ids=document_ids or None, tags=tags or None
        )
        hits = found.hits
        return SearchResult(hits, (time.perf_counter() - t0) * 1000)

    async def _check_ids(self, tenant_id: str, index: KnowledgeIndex, document_ids: Sequence[str]) -> None:
        known = set(index.document_ids)
        for i, doc_id in enumerate(document_ids):
            if doc_id in known:
                continue
            try:
                doc = await self.store.get_document(tenant_id, doc_id)
            except DuetError as err:  # another tenant's, or none
                raise Invalid(f"no document {doc_id}", f"$.document_ids[{i}]") from err
            if doc.status == "processing":
                raise Conflict(f"document {doc_id} is still processing; search it once it is ready")
            if doc.status == "failed":
                raise Invalid(f"document {doc_id} failed to process ({doc.error})", f"$.document_ids[{i}]")

    async def index(self, tenant_id: str) -> KnowledgeIndex:
        """The tenant's search index, fresh within `FRESH_S`."""
        cached = self._indexes.get(tenant_id)
        now = time.monotonic()
        if cached is not None and now - cached.checked < FRESH_S:
            return cached.index
        lock = self._building.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            cached = self._indexes.get(tenant_id)
            if cached is not None and time.monotonic() - cached.checked < FRESH_S:
                return cached.index
            version = await self.store.knowledge_version(tenant_id)
            if cached is not None and cached.version == version:
                cached.checked = time.monotonic()
                return cached.index
            chunks = await self.store.chunks_of(tenant_id)
            index = await asyncio.to_thread(build_index, chunks)
            self._indexes[tenant_id] = _Cached(version, index, time.monotonic())
            return index

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def build_index(chunks: Sequence[ChunkRecord]) -> KnowledgeIndex:
    """A tenant's index from its stored chunks (in document order, as `Store.chunks_of` gives them)."""
    index = KnowledgeIndex(EMBED_DIM)
    documents: dict[str, list[ChunkRecord]] = {}
    for c in chunks:
        documents.setdefault(c.document_id, []).append(c)
    for document_id, rows in documents.items():
        index.add(
            document_id,
            [
                IndexedChunk(
                    c.id,
                    c.text,
                    vector_of(c.vector),
                    vector_of(c.sentence_vectors).reshape(-1, EMBED_DIM) if c.sentence_vectors else None,
                )
                for c in rows
            ],
            tags=rows[0].tags,
        )
    index.prepare()  # (the vector matrix built here, in the worker thread, not on the first search)
    return index
