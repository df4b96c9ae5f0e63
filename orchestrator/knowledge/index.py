"""A tenant's knowledge in memory: keyword (BM25) and vector search over its chunks, alone or together.

Pure and synchronous: the caller embeds the query (`orchestrator.knowledge.retrieve.Retriever` does) and
passes the vector in, so the index is tested without a model and costs no I/O.

Modes (`search(mode=...)`), and the API strategy that uses each (`STRATEGY_MODES`):
* `keyword`: BM25 (k1 1.2, b 0.75) over an inverted index, with a small English tokenizer (lowercase, stop
  words, light stemming); a query costs about as many steps as its terms have postings.
* `vector` (strategy `speed`): cosine of the query and each chunk's vector: one matrix product over the
  tenant's contiguous (n, 384) matrix. Query vectors must be L2-normalised, as the `embed` model's are.
* `rrf`: reciprocal-rank fusion (k 60) of the keyword and vector lists, the textbook hybrid; kept to be
  measured against, not used by a strategy (below).
* `hybrid` (strategies `balanced` and `quality`): each chunk scores the mean of its chunk cosine and its best
  sentence cosine (every sentence of a chunk has its own vector, made at ingestion: a chunk that holds the
  answer in one sentence among others is diluted in its chunk vector, not in that sentence's), plus
  `KEYWORD_WEIGHT` x its keyword share (BM25 over the most the query's terms could score). Exhaustive: every
  chunk is scored, there is no candidate pool to miss from.

Why not RRF for `balanced`, and why `quality` is `hybrid` too (perf/bench_knowledge.py: 68 callers' questions
worded unlike the documents, tenant padded to 1,000 chunks, the served all-MiniLM-L6-v2): recall@5 is 53% with
keyword alone, 79% with the chunk vector, 78% with RRF of the two (recall@1 50%, below the vector's 63%: a
keyword list that is mostly wrong drags good vector ranks down), and 93% with `hybrid` (recall@1 75%; without
the keyword term, 90% while tuning). As re-rankers for `quality`, the rank fusion of three lists (keyword,
chunk, best sentence) over a candidate pool, sentence-pair windows, sentence vectors blended with their
chunk's, and pseudo-relevance feedback each moved recall by one or two questions, up or down, and none gained
at both tenant sizes; so `quality` is `hybrid` until a re-ranker does better (a cross-encoder: a second model).
`speed` skips the sentence product and the keyword pass, about 1 ms at 1,000 chunks; the query's embedding,
which every mode but `keyword` pays, costs several times that.

Every `Hit.score` is in [0, 1], higher is better, and orders the hits; what it measures depends on the mode:
* `keyword`: the keyword share (BM25 over its ceiling for this query);
* `vector`: the cosine, below 0 as 0;
* `hybrid`: the hybrid score above, clipped to [0, 1] (so comparable across queries, unlike a rank fusion);
* `rrf`: the fused reciprocal ranks over their maximum (first in both lists = 1.0).
`Hit.similarity` is a cosine in [-1, 1]: the chunk's, or with `hybrid` the mean of the chunk's and its best
sentence's.

Filters: `document_ids` (any of them) and `tags` (a document with any of the tags).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
Mode = Literal["keyword", "vector", "rrf", "hybrid"]
Strategy = Literal["speed", "balanced", "quality"]
MODES: tuple[Mode, ...] = ("keyword", "vector", "rrf", "hybrid")
STRATEGY_MODES: dict[str, Mode] = {"speed": "vector", "balanced": "hybrid", "quality": "hybrid"}

K1 = 1.2
B = 0.75
RRF_K = 60
RRF_POOL = 50  # how far down each list `rrf` reads
KEYWORD_WEIGHT = 0.1  # of the keyword share in `hybrid` (0.1-0.3 measured alike; RRF's equal say was worse)

_STOP_WORDS = frozenset(
    """a about after all also am an and any are as at be been before being both but by can could did do does
    doing during each for from further had has have having he her here hers him his how i if in into is it its
    itself just let me more most my myself of off on once only or other our ours out over own same she should so
    some such than that the their theirs them then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your yours""".split()
)
_TOKEN = re.compile(r"[a-z0-9]+(?:['’][a-z]+)*")


def _undouble(word: str) -> str:
    """ "stopp" -> "stop"; "bill", "pass", "buzz" keep theirs."""
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz" and word[-1] not in "aeiou":
        return word[:-1]
    return word


def stem(word: str) -> str:
    """Light English stemming: plurals, -ed, -ing and a final e, so charge / charges / charged / charging
    meet ("charg"). Words of three letters or fewer, and numbers, are kept."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses") or word.endswith(("xes", "zes", "ches", "shes", "sses")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if word.endswith("ied") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("ed") and len(word) >= 5:
        word = _undouble(word[:-2])
    elif word.endswith("ing") and len(word) >= 6:
        word = _undouble(word[:-3])
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Search terms of a text: lowercase words and numbers, stop words dropped, stemmed."""
    out = []
    for raw in _TOKEN.findall(text.lower()):
        token = re.sub(r"['’]s$", "", raw).replace("'", "").replace("’", "")
        if token and token not in _STOP_WORDS:
            out.append(stem(token))
    return out


@dataclass(frozen=True)
class IndexedChunk:
    """A chunk as the index takes it: its text and vector, and optionally one vector per sentence."""

    chunk_id: str
    text: str
    vector: F32  # (EMBED_DIM,), L2-normalised
    sentence_vectors: F32 | None = None  # (sentences, EMBED_DIM), L2-normalised; used by `rerank`


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    document_id: str
    text: str
    score: float  # [0, 1], orders the hits; see the module's docstring for each mode
    similarity: float  # query-chunk cosine in [-1, 1]


@dataclass
class _Entry:
    chunk_id: str
    document: int  # index into KnowledgeIndex._documents
    text: str
    terms: dict[str, int]  # term -> frequency in this chunk
    length: int  # terms in the chunk
    vector: F32
    sentence_vectors: F32 | None


@dataclass
class _Document:
    document_id: str
    tags: frozenset[str]
    entries: list[int] = field(default_factory=list)  # entry ids


@dataclass
class _Matrix:
    """The live chunks' vectors as one contiguous matrix, and their sentences' as another."""

    ids: npt.NDArray[np.int64]  # row -> entry id
    documents: npt.NDArray[np.int64]  # row -> document number
    vectors: F32  # (rows, dim)
    sentences: F32  # (sentences, dim): row 0's first, then row 1's, ...
    sentence_rows: npt.NDArray[np.int64]  # the rows that have sentence vectors, ascending
    sentence_starts: npt.NDArray[np.int64]  # where each of those rows' sentences start in `sentences`


class KnowledgeIndex:
    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self._entries: dict[int, _Entry] = {}
        self._next_id = 0
        self._documents: dict[int, _Document] = {}
        self._document_numbers: dict[str, int] = {}
        self._next_document = 0
        self._postings: dict[str, dict[int, int]] = {}  # term -> {entry id: frequency}
        self._total_length = 0
        self._matrix: _Matrix | None = None  # rebuilt on the first vector search after a change
        self._by_chunk: dict[str, int] = {}  # chunk id -> entry id
        self._row_of: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def document_ids(self) -> list[str]:
        return [d.document_id for d in self._documents.values()]

    def add(self, document_id: str, chunks: Sequence[IndexedChunk], tags: Iterable[str] = ()) -> None:
        """Index a document's chunks (replacing any the document had)."""
        for c in chunks:
            if c.vector.shape != (self.dim,):
                raise ValueError(f"chunk {c.chunk_id}: vector shape {c.vector.shape}, expected ({self.dim},)")
            if c.sentence_vectors is not None and (
                c.sentence_vectors.ndim != 2 or c.sentence_vectors.shape[1] != self.dim
            ):
                raise ValueError(f"chunk {c.chunk_id}: sentence vectors shape {c.sentence_vectors.shape}")
        self.remove(document_id)
        number = self._next_document
        self._next_document += 1
        doc = _Document(document_id, frozenset(tags))
        self._documents[number] = doc
        self._document_numbers[document_id] = number
        for c in chunks:
            terms: dict[str, int] = {}
            for term in tokenize(c.text):
                terms[term] = terms.get(term, 0) + 1
            entry_id = self._next_id
            self._next_id += 1
            sentences = None if c.sentence_vectors is None else np.asarray(c.sentence_vectors, np.float32)
            self._entries[entry_id] = _Entry(
                c.chunk_id, number, c.text, terms, sum(terms.values()), np.asarray(c.vector, np.float32), sentences
            )
            for term, tf in terms.items():
                self._postings.setdefault(term, {})[entry_id] = tf
            self._total_length += sum(terms.values())
            doc.entries.append(entry_id)
            self._by_chunk[c.chunk_id] = entry_id
        self._matrix = None

    def remove(self, document_id: str) -> int:
        """Drop a document's chunks; returns how many there were."""
        number = self._document_numbers.pop(document_id, None)
        if number is None:
            return 0
        doc = self._documents.pop(number)
        for entry_id in doc.entries:
            entry = self._entries.pop(entry_id)
            self._by_chunk.pop(entry.chunk_id, None)
            for term in entry.terms:
                postings = self._postings[term]
                del postings[entry_id]
                if not postings:
                    del self._postings[term]
            self._total_length -= entry.length
        self._matrix = None
        return len(doc.entries)

    def sentence_vectors(self, chunk_id: str) -> F32 | None:
        """A chunk's sentences' vectors (None: unknown, or a chunk of one sentence)."""
        entry_id = self._by_chunk.get(chunk_id)
        return None if entry_id is None else self._entries[entry_id].sentence_vectors

    def prepare(self) -> None:
        """Build the vector matrices now (a search after a change does it otherwise): for a caller that builds
        an index in a worker thread and searches it on the event loop."""
        self._matrix_now()

    # ------------------------------------------------------------------------------------------------ search

    def search(
        self,
        query: str,
        vector: F32 | None,
        *,
        mode: Mode = "hybrid",
        top_k: int = 5,
        document_ids: Iterable[str] | None = None,
        tags: Iterable[str] | None = None,
    ) -> list[Hit]:
        """The `top_k` best chunks for a query. `vector` (the query's embedding) may be None in `keyword`
        mode only."""
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}")
        if top_k <= 0 or not self._entries:
            return []
        if vector is None and mode != "keyword":
            raise ValueError(f"{mode} search needs the query's vector")
        allowed = self._allowed(document_ids, tags)
        if allowed is not None and not allowed:
            return []
        if mode == "keyword":
            ranked = self._keyword(query, allowed, top_k)
            ceiling = self._ceiling(set(tokenize(query)))
            sims = self._cosines(vector, [i for i, _ in ranked])
            return [self._hit(i, s / ceiling, c) for (i, s), c in zip(ranked, sims, strict=True)]
        assert vector is not None
        q = np.asarray(vector, np.float32).reshape(-1)
        if q.shape != (self.dim,):
            raise ValueError(f"query vector shape {np.shape(vector)}, expected ({self.dim},)")
        if mode == "vector":
            return [self._hit(i, s, s) for i, s in self._vector(q, allowed, top_k)]
        if mode == "rrf":
            keyword = self._keyword(query, allowed, RRF_POOL)
            dense = self._vector(q, allowed, RRF_POOL)
            fused = _rrf([[i for i, _ in keyword], [i for i, _ in dense]])[:top_k]
            cos = dict(dense)
            missing = [i for i, _ in fused if i not in cos]
            cos.update(zip(missing, self._cosines(q, missing), strict=True))
            return [self._hit(i, s / (2 / (RRF_K + 1)), cos[i]) for i, s in fused]
        return self._hybrid(query, q, allowed, top_k)

    def _hybrid(self, query: str, q: F32, allowed: set[int] | None, top_k: int) -> list[Hit]:
        m = self._matrix_now()
        dense = m.vectors @ q
        if len(m.sentences):
            best = dense.copy()  # a chunk without sentence vectors counts its chunk cosine twice
            best[m.sentence_rows] = np.maximum.reduceat(m.sentences @ q, m.sentence_starts)
            dense = (dense + best) / 2
        scores = dense.copy()
        terms = set(tokenize(query))
        ceiling = self._ceiling(terms)
        for entry_id, bm25 in self._bm25(terms, allowed).items():
            scores[self._row_of[entry_id]] += KEYWORD_WEIGHT * bm25 / ceiling
        top = _top(scores, self._mask(m, allowed), top_k)
        return [self._hit(int(m.ids[r]), float(scores[r]), float(dense[r])) for r in top]

    def _hit(self, entry_id: int, score: float, similarity: float) -> Hit:
        entry = self._entries[entry_id]
        return Hit(
            chunk_id=entry.chunk_id,
            document_id=self._documents[entry.document].document_id,
            text=entry.text,
            score=float(min(max(score, 0.0), 1.0)),
            similarity=float(similarity),
        )

    def _allowed(self, document_ids: Iterable[str] | None, tags: Iterable[str] | None) -> set[int] | None:
        """Document numbers a search may return; None = all."""
        if document_ids is None and tags is None:
            return None
        numbers = set(self._documents)
        if document_ids is not None:
            numbers &= {self._document_numbers[d] for d in document_ids if d in self._document_numbers}
        if tags is not None:
            wanted = set(tags)
            numbers = {n for n in numbers if self._documents[n].tags & wanted}
        return numbers

    # ---------------------------------------------------------------------------------------------- keyword

    def _idf(self, term: str) -> float:
        n = len(self._postings.get(term, ()))
        return math.log(1 + (len(self._entries) - n + 0.5) / (n + 0.5))

    def _ceiling(self, terms: set[str]) -> float:
        """The most BM25 the terms could score (each term's idf x (k1 + 1)): the scale of the keyword share."""
        return sum(self._idf(t) * (K1 + 1) for t in terms if t in self._postings)

    def _bm25(self, terms: set[str], allowed: set[int] | None) -> dict[int, float]:
        """BM25 of every allowed chunk with any of the terms, by entry id."""
        avg = self._total_length / len(self._entries) if self._entries else 1.0
        scores: dict[int, float] = {}
        for term in terms:
            postings = self._postings.get(term)
            if not postings:
                continue
            idf = self._idf(term)
            for entry_id, tf in postings.items():
                entry = self._entries[entry_id]
                if allowed is not None and entry.document not in allowed:
                    continue
                norm = K1 * (1 - B + B * entry.length / avg)
                scores[entry_id] = scores.get(entry_id, 0.0) + idf * tf * (K1 + 1) / (tf + norm)
        return scores

    def _keyword(self, query: str, allowed: set[int] | None, limit: int) -> list[tuple[int, float]]:
        """(entry id, BM25) of the best `limit` chunks with any of the query's terms."""
        scores = self._bm25(set(tokenize(query)), allowed)
        return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]

    # ----------------------------------------------------------------------------------------------- vector

    def _matrix_now(self) -> _Matrix:
        if self._matrix is None:
            ids = list(self._entries)
            entries = [self._entries[i] for i in ids]
            vectors = np.zeros((len(ids), self.dim), np.float32)
            parts: list[F32] = []
            rows: list[int] = []
            starts: list[int] = []
            at = 0
            for row, entry in enumerate(entries):
                vectors[row] = entry.vector
                if entry.sentence_vectors is not None and len(entry.sentence_vectors):
                    rows.append(row)
                    starts.append(at)
                    parts.append(entry.sentence_vectors)
                    at += len(entry.sentence_vectors)
            self._matrix = _Matrix(
                ids=np.asarray(ids, np.int64),
                documents=np.asarray([e.document for e in entries], np.int64),
                vectors=vectors,
                sentences=np.ascontiguousarray(np.concatenate(parts)) if parts else np.zeros((0, self.dim), np.float32),
                sentence_rows=np.asarray(rows, np.int64),
                sentence_starts=np.asarray(starts, np.int64),
            )
            self._row_of = {entry_id: row for row, entry_id in enumerate(ids)}
        return self._matrix

    def _mask(self, m: _Matrix, allowed: set[int] | None) -> npt.NDArray[np.bool_] | None:
        return None if allowed is None else np.isin(m.documents, np.fromiter(allowed, np.int64))

    def _vector(self, q: F32, allowed: set[int] | None, limit: int) -> list[tuple[int, float]]:
        """(entry id, cosine) of the best `limit` chunks."""
        m = self._matrix_now()
        scores = m.vectors @ q
        return [(int(m.ids[r]), float(scores[r])) for r in _top(scores, self._mask(m, allowed), limit)]

    def _cosines(self, q: F32 | None, entry_ids: Sequence[int]) -> list[float]:
        if q is None or not entry_ids:
            return [0.0] * len(entry_ids)
        m = self._matrix_now()
        rows = [self._row_of[i] for i in entry_ids]
        return [float(x) for x in m.vectors[rows] @ np.asarray(q, np.float32).reshape(-1)]


def _top(scores: F32, mask: npt.NDArray[np.bool_] | None, limit: int) -> npt.NDArray[np.intp]:
    """Rows of the `limit` best scores among those `mask` allows, best first; ties by row (stable)."""
    rows = np.arange(len(scores)) if mask is None else np.flatnonzero(mask)
    if limit < len(rows):
        rows = rows[np.argpartition(-scores[rows], limit - 1)[:limit]]
    order: npt.NDArray[np.intp] = rows[np.lexsort((rows, -scores[rows]))]
    return order


def _rrf(lists: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: each item scores the sum of 1 / (k + rank) over the lists it is in (rank from
    1). Best first; ties by first appearance."""
    scores: dict[int, float] = {}
    for ranked in lists:
        for rank, item in enumerate(ranked, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    order = {item: n for n, item in enumerate(dict.fromkeys(i for ranked in lists for i in ranked))}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def rrf(lists: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """`_rrf` over any ids (tests and the benchmark check the fusion's arithmetic with it)."""
    names = list(dict.fromkeys(i for ranked in lists for i in ranked))
    number = {n: i for i, n in enumerate(names)}
    return [(names[i], s) for i, s in _rrf([[number[x] for x in ranked] for ranked in lists], k)]
