"""What of a chunk a reply is given (`orchestrator/knowledge/retrieve.py` `excerpt`): its best sentences for the
query, in order, under its heading; the chunk's start when its sentences have no vectors."""

from __future__ import annotations

import numpy as np

from orchestrator.knowledge.index import IndexedChunk, KnowledgeIndex
from orchestrator.knowledge.retrieve import excerpt

TEXT = "Billing > Late fees: Bills are due on the 1st. A late bill costs $5. Call us to set up autopay."


def unit(i: int, n: int = 4) -> np.ndarray:
    v = np.zeros(n, np.float32)
    v[i] = 1.0
    return v


def test_the_best_sentences_in_order_under_the_heading() -> None:
    vectors = np.stack([unit(0), unit(1), unit(2)])
    query = unit(1) * 0.9 + unit(2) * 0.1
    assert excerpt(TEXT, vectors, query, sentences=1) == "Billing > Late fees: A late bill costs $5."
    assert excerpt(TEXT, vectors, query, sentences=2) == (
        "Billing > Late fees: A late bill costs $5. Call us to set up autopay."
    )


def test_without_matching_vectors_the_chunk_start_is_given() -> None:
    assert excerpt(TEXT, None, unit(0), max_words=6) == "Billing > Late fees: Bills are ..."
    wrong = np.stack([unit(0), unit(1)])  # two vectors for three sentences: not this chunk's any more
    assert excerpt(TEXT, wrong, unit(0), max_words=100) == TEXT


def test_the_index_hands_out_a_chunks_sentence_vectors() -> None:
    index = KnowledgeIndex(dim=4)
    vectors = np.stack([unit(0), unit(1), unit(2)])
    index.add("doc", [IndexedChunk("c1", TEXT, unit(3), vectors), IndexedChunk("c2", "One line.", unit(0))])
    assert np.array_equal(index.sentence_vectors("c1"), vectors)  # type: ignore[arg-type]
    assert index.sentence_vectors("c2") is None and index.sentence_vectors("nope") is None
    index.remove("doc")
    assert index.sentence_vectors("c1") is None
