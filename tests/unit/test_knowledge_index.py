"""The search index (orchestrator/knowledge/index.py) and the async retriever (retrieve.py), on a deterministic
fake embedder: hashed bag-of-words vectors, so that texts sharing words are near and others are not."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from orchestrator.knowledge.chunk import Chunk, chunk_document
from orchestrator.knowledge.index import (
    K1,
    KEYWORD_WEIGHT,
    MODES,
    RRF_K,
    B,
    IndexedChunk,
    KnowledgeIndex,
    Mode,
    rrf,
    stem,
    tokenize,
)
from orchestrator.knowledge.parse import parse_document
from orchestrator.knowledge.retrieve import Retriever, embed_chunks

F32 = npt.NDArray[np.float32]
DIM = 384


def hashed(text: str) -> F32:
    """A unit bag-of-words vector: each search term adds 1 at a hashed position."""
    v = np.zeros(DIM, np.float32)
    for term in tokenize(text):
        v[zlib.crc32(term.encode()) % DIM] += 1.0
    norm = float(np.linalg.norm(v))
    return v / norm if norm else v


class FakeEmbedder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def embed(self, texts: list[str]) -> F32:
        self.calls.append(list(texts))
        return np.stack([hashed(t) for t in texts]) if texts else np.zeros((0, DIM), np.float32)


def chunk(chunk_id: str, text: str, sentences: Sequence[str] = ()) -> IndexedChunk:
    vectors = np.stack([hashed(s) for s in sentences]) if sentences else None
    return IndexedChunk(chunk_id, text, hashed(text), vectors)


CORPUS = {
    "billing": [
        ("late", "Late fees: a late fee of $7 is charged when a payment is late."),
        ("autopay", "AutoPay: pay automatically each month and save $5 per line."),
        ("roaming", "Roaming: a travel pass costs $12 per day abroad."),
    ],
    "clinic": [
        ("cancel", "Cancellations: cancel at least 48 hours ahead or pay a missed appointment fee."),
        ("parking", "Parking: the garage is free for two hours with a validated ticket."),
    ],
}


def index_of(
    corpus: dict[str, list[tuple[str, str]]] = CORPUS, tags: dict[str, list[str]] | None = None
) -> KnowledgeIndex:
    index = KnowledgeIndex(DIM)
    for doc, rows in corpus.items():
        index.add(doc, [chunk(cid, text) for cid, text in rows], tags=(tags or {}).get(doc, ()))
    return index


# --------------------------------------------------------------------------------------------- the tokenizer


def test_stemming_meets_the_forms_of_a_word() -> None:
    assert len({stem(w) for w in ("charge", "charges", "charged", "charging")}) == 1
    assert stem("policies") == stem("policy")
    assert stem("stopped") == stem("stop")
    assert stem("fees") == stem("fee")
    assert stem("boxes") == stem("box")
    assert stem("bus") == "bus" and stem("pass") == "pass" and stem("this") == "this"
    assert stem("2024") == "2024"


def test_tokenize_drops_stop_words_and_punctuation() -> None:
    assert tokenize("What's the patient's late-fee, in 2024?") == ["patient", "lat", "fee", "2024"]
    assert tokenize("Can I do it?") == []


# ----------------------------------------------------------------------------------------------------- BM25


def test_bm25_matches_the_formula() -> None:
    docs = {"d": [("a", "apple apple banana"), ("b", "banana cherry"), ("c", "cherry date elder fig")]}
    index = index_of(docs)
    hits = index.search("apple banana", None, mode="keyword", top_k=3)
    lengths = {"a": 3, "b": 2, "c": 4}
    avg = sum(lengths.values()) / 3

    def idf(n: int) -> float:
        return math.log(1 + (3 - n + 0.5) / (n + 0.5))

    def term(tf: int, length: int, n: int) -> float:
        return idf(n) * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / avg))

    expected = {"a": term(2, 3, 1) + term(1, 3, 2), "b": term(1, 2, 2)}
    ceiling = (idf(1) + idf(2)) * (K1 + 1)
    assert [h.chunk_id for h in hits] == ["a", "b"]  # "c" has neither term
    for h in hits:
        assert h.score == pytest.approx(expected[h.chunk_id] / ceiling)
        assert 0 < h.score < 1


def test_bm25_prefers_rarer_terms_and_shorter_chunks() -> None:
    docs = {
        "d": [
            ("common", "fee fee policy"),
            ("rare", "fee suspension"),
            ("long", "suspension " + " ".join(f"filler{i}" for i in range(40))),
            *[(f"x{i}", f"fee note {i}") for i in range(5)],
        ]
    }
    index = index_of(docs)
    ranked = [h.chunk_id for h in index.search("fee suspension", None, mode="keyword", top_k=3)]
    assert ranked[0] == "rare"  # both terms
    assert ranked.index("long") < 3  # "suspension" is rare: it outweighs a common term...
    short = index.search("suspension", None, mode="keyword", top_k=2)
    assert [h.chunk_id for h in short] == ["rare", "long"]  # ... and a short chunk beats a long one


# ----------------------------------------------------------------------------------------------- the modes


def test_rrf_arithmetic() -> None:
    fused = dict(rrf([["a", "b", "c"], ["b", "c"]]))
    assert fused["a"] == pytest.approx(1 / (RRF_K + 1))
    assert fused["b"] == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 1))
    assert fused["c"] == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 2))
    assert [k for k, _ in rrf([["a", "b", "c"], ["b", "c"]])] == ["b", "c", "a"]
    assert [k for k, _ in rrf([["x"], ["y"]])] == ["x", "y"]  # ties: first seen first
    assert rrf([["a"], ["b"]], k=0) == [("a", 1.0), ("b", 1.0)]


def test_vector_mode_is_cosine() -> None:
    index = index_of()
    q = hashed("travel pass abroad")
    hits = index.search("", q, mode="vector", top_k=2)
    assert hits[0].chunk_id == "roaming"
    assert hits[0].similarity == pytest.approx(float(hashed(CORPUS["billing"][2][1]) @ q), abs=1e-6)
    assert hits[0].score == pytest.approx(hits[0].similarity)


def test_rrf_mode_scores_are_normalised() -> None:
    index = index_of()
    hits = index.search("late fee", hashed("late fee"), mode="rrf", top_k=5)
    assert hits[0].chunk_id == "late" and hits[0].score == pytest.approx(1.0)  # first in both lists
    assert all(0 < h.score <= 1 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hybrid_uses_the_best_sentence() -> None:
    # The answer is one sentence among unrelated ones: diluted in the chunk vector, whole in its own.
    answer = "The garage validates tickets."
    noise = [f"Topic {w} covers {w} and more {w}." for w in ("alpha", "beta", "gamma", "delta", "epsilon")]
    index = KnowledgeIndex(DIM)
    index.add("d", [chunk("mixed", " ".join([*noise, answer]), [*noise, answer]),
                    chunk("near", "Garage opening hours vary.", ["Garage opening hours vary."])])  # fmt: skip
    q = hashed("does the garage validate tickets")
    assert index.search("x", q, mode="vector", top_k=1)[0].chunk_id == "near"
    top = index.search("x", q, mode="hybrid", top_k=2)
    assert top[0].chunk_id == "mixed"
    chunk_cos = float(hashed(" ".join([*noise, answer])) @ q)
    sentence_cos = float(hashed(answer) @ q)
    assert top[0].similarity == pytest.approx((chunk_cos + sentence_cos) / 2, abs=1e-6)


def test_hybrid_score_adds_the_keyword_share() -> None:
    index = index_of()
    q = hashed("missed appointment")
    hit = index.search("missed appointment", q, mode="hybrid", top_k=1)[0]
    keyword = index.search("missed appointment", None, mode="keyword", top_k=1)[0]
    assert hit.chunk_id == keyword.chunk_id == "cancel"
    # no sentence vectors: the chunk cosine stands for the best sentence too
    assert hit.score == pytest.approx(hit.similarity + KEYWORD_WEIGHT * keyword.score, abs=1e-6)
    assert 0 <= hit.score <= 1


@pytest.mark.parametrize("mode", MODES)
def test_top_k_and_order(mode: Mode) -> None:
    index = index_of()
    q = hashed("fee")
    hits = index.search("fee", q, mode=mode, top_k=2)
    assert len(hits) <= 2
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert index.search("fee", q, mode=mode, top_k=0) == []
    again = index.search("fee", q, mode=mode, top_k=2)
    assert again == hits  # deterministic


# -------------------------------------------------------------------------------------------------- filters


def test_filters_by_document_and_tags() -> None:
    index = index_of(tags={"billing": ["mobile", "money"], "clinic": ["health"]})
    q = hashed("fee")
    only_clinic = index.search("fee", q, document_ids=["clinic"], top_k=10)
    assert {h.document_id for h in only_clinic} == {"clinic"}
    assert {h.document_id for h in index.search("fee", q, tags=["money"], top_k=10)} == {"billing"}
    assert {h.document_id for h in index.search("fee", q, tags=["health", "mobile"], top_k=10)} == {
        "billing",
        "clinic",
    }  # any of the tags
    assert index.search("fee", q, document_ids=["clinic"], tags=["money"]) == []  # both filters apply
    assert index.search("fee", q, document_ids=["nope"]) == []
    assert index.search("fee", q, tags=[]) == []
    modes: tuple[Mode, ...] = ("keyword", "vector", "rrf")
    for mode in modes:
        hits = index.search("fee", q, mode=mode, document_ids=["billing"], top_k=10)
        assert hits and {h.document_id for h in hits} == {"billing"}


# -------------------------------------------------------------------------------------------------- changes


def test_remove_and_replace_documents() -> None:
    index = index_of()
    assert len(index) == 5 and sorted(index.document_ids) == ["billing", "clinic"]
    assert index.search("garage", hashed("garage"), top_k=1)[0].chunk_id == "parking"  # builds the matrix
    assert index.remove("clinic") == 2
    assert index.remove("clinic") == 0
    assert len(index) == 3 and index.document_ids == ["billing"]
    assert all(h.document_id == "billing" for h in index.search("garage", hashed("garage"), top_k=5))
    assert index.search("garage", None, mode="keyword") == []
    assert "garag" not in index._postings  # no posting left behind
    index.add("billing", [chunk("new", "Paper bills cost $2.")])  # replaces the document's chunks
    assert len(index) == 1
    assert [h.chunk_id for h in index.search("paper bills", hashed("paper bills"))] == ["new"]


def test_prepare_builds_the_matrices_ahead_of_a_search() -> None:
    index = index_of()
    assert index._matrix is None
    index.prepare()
    assert index._matrix is not None and index._matrix.vectors.shape == (5, DIM)
    assert index._matrix.vectors.flags["C_CONTIGUOUS"]
    index.remove("clinic")
    assert index._matrix is None  # a change drops them; the next search (or prepare) builds them again


def test_empty_index_and_bad_input() -> None:
    index = KnowledgeIndex(DIM)
    assert index.search("anything", hashed("anything")) == []
    index = index_of()
    with pytest.raises(ValueError, match="vector"):
        index.search("fee", None, mode="hybrid")
    with pytest.raises(ValueError, match="mode"):
        index.search("fee", hashed("fee"), mode="fancy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        index.search("fee", np.zeros(10, np.float32), mode="vector")
    with pytest.raises(ValueError, match="shape"):
        index.add("x", [IndexedChunk("c", "t", np.zeros(10, np.float32))])
    with pytest.raises(ValueError, match="sentence"):
        index.add("x", [IndexedChunk("c", "t", hashed("t"), np.zeros((2, 10), np.float32))])


# ------------------------------------------------------------------------------------------------ retrieval

MARKDOWN = b"""# Billing

## Late fees

A late fee of $7 is charged when a payment arrives after the due date. Reminders go out three days before.

## Roaming

A travel pass costs $12 per day in other countries.
"""


def chunks_of(data: bytes) -> list[Chunk]:
    return chunk_document(parse_document(data, filename="billing.md"))


async def test_embed_chunks_batches_and_sentence_vectors() -> None:
    embedder = FakeEmbedder()
    chunks = chunks_of(MARKDOWN)
    indexed = await embed_chunks(embedder, chunks, [f"c{c.seq}" for c in chunks], batch=2)
    total = len(chunks) + sum(len(c.sentences) for c in chunks)
    assert [len(call) for call in embedder.calls] == [2] * (total // 2) + ([total % 2] if total % 2 else [])
    for c, ic in zip(chunks, indexed, strict=True):
        assert ic.text == c.text
        assert ic.vector.shape == (DIM,)
        assert ic.sentence_vectors is not None and ic.sentence_vectors.shape == (len(c.sentences), DIM)
    late = indexed[0]
    assert late.sentence_vectors is not None
    # a sentence's vector is made with its heading: "Late fees: A late fee of $7 ..."
    assert np.allclose(late.sentence_vectors[0], hashed(f"Late fees: {chunks[0].sentences[0]}"))
    plain = await embed_chunks(embedder, chunks, ["a", "b"], sentence_vectors=False)
    assert all(ic.sentence_vectors is None for ic in plain)
    with pytest.raises(ValueError):
        await embed_chunks(embedder, chunks, ["only one"])


async def test_retriever_embeds_the_query_and_times_it() -> None:
    embedder = FakeEmbedder()
    chunks = chunks_of(MARKDOWN)
    index = KnowledgeIndex(DIM)
    index.add("doc", await embed_chunks(embedder, chunks, [f"c{c.seq}" for c in chunks]))
    ticks = iter([1.0, 1.004, 1.005])
    retriever = Retriever(embedder, index, clock=lambda: next(ticks))
    embedder.calls.clear()
    found = await retriever.search("what if I pay late", strategy="balanced", top_k=1)
    assert embedder.calls == [["what if I pay late"]]
    assert [h.chunk_id for h in found.hits] == ["c0"]
    assert found.hits[0].text.startswith("Billing > Late fees: A late fee of $7")
    assert found.took_ms == pytest.approx(5.0) and found.embed_ms == pytest.approx(4.0)


async def test_retriever_strategies_and_keyword_mode() -> None:
    embedder = FakeEmbedder()
    index = index_of()
    retriever = Retriever(embedder, index)
    for strategy in ("speed", "balanced", "quality"):
        found = await retriever.search("travel pass", strategy=strategy)
        assert found.hits[0].chunk_id == "roaming"
    embedder.calls.clear()
    found = await retriever.search("travel pass", mode="keyword")
    assert embedder.calls == [] and found.embed_ms == pytest.approx(0.0, abs=1.0)
    assert found.hits[0].chunk_id == "roaming"
    with pytest.raises(ValueError, match="strategy"):
        await retriever.search("x", strategy="fastest")
