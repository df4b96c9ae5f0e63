"""Sections to chunks (orchestrator/knowledge/chunk.py): boundaries, packing, long paragraphs, overlap."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.knowledge.chunk import Chunk, chunk_document, split_sentences
from orchestrator.knowledge.parse import ParsedDocument, Section


def doc(*sections: tuple[tuple[str, ...], str]) -> ParsedDocument:
    return ParsedDocument("text", tuple(Section(path, text) for path, text in sections))


def sentence(n: int, words: int = 10) -> str:
    """A sentence of `words` words, told apart by `n`."""
    return " ".join([f"S{n}"] + [f"w{n}x{i}" for i in range(words - 2)] + [f"end{n}."])


def words(chunk: Chunk) -> int:
    return len(chunk.body.split())


def test_split_sentences() -> None:
    text = "Call Dr. Lee at 9 a.m. on Monday. Fees are $5. Really? Yes! e.g. this stays.\nA line\nAnother line"
    assert split_sentences(text) == [
        "Call Dr. Lee at 9 a.m. on Monday.",
        "Fees are $5.",
        "Really?",
        "Yes! e.g. this stays.",
        "A line",
        "Another line",
    ]
    assert split_sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]


def test_small_sections_are_one_chunk_each_with_their_heading() -> None:
    chunks = chunk_document(
        doc(((), "Intro text."), (("Billing", "Late fees"), "A fee of $5."), (("Billing", "Refunds"), "None."))
    )
    assert [(c.seq, c.heading, c.body) for c in chunks] == [
        (0, "", "Intro text."),
        (1, "Billing > Late fees", "A fee of $5."),
        (2, "Billing > Refunds", "None."),
    ]
    assert chunks[0].text == "Intro text."
    assert chunks[1].text == "Billing > Late fees: A fee of $5."
    assert chunks[1].sentences == ("A fee of $5.",)


def test_paragraphs_are_packed_to_the_target_and_never_cross_sections() -> None:
    paragraphs = "\n\n".join(sentence(i, 30) for i in range(10))  # ten paragraphs of 30 words
    chunks = chunk_document(doc((("A",), paragraphs), (("B",), sentence(99))), target_words=100, overlap_words=0)
    a = [c for c in chunks if c.heading == "A"]
    assert [words(c) for c in a] == [90, 90, 90, 30]  # whole paragraphs up to the target
    assert chunks[-1].heading == "B" and chunks[-1].body == sentence(99)
    assert all("S99" not in c.body for c in a)


def test_a_short_chunk_takes_a_paragraph_up_to_the_limit() -> None:
    text = sentence(1, 20) + "\n\n" + sentence(2, 150)
    chunks = chunk_document(doc((("A",), text)), target_words=100, max_words=200, overlap_words=0)
    assert len(chunks) == 1 and words(chunks[0]) == 170


def test_long_paragraph_is_cut_on_sentences_with_overlap() -> None:
    paragraph = " ".join(sentence(i, 12) for i in range(30))  # 360 words, one paragraph
    chunks = chunk_document(doc((("A",), paragraph)), target_words=120, max_words=200, overlap_words=30)
    assert len(chunks) >= 3
    for c in chunks:
        assert words(c) <= 200
        assert c.body.endswith(".")  # whole sentences only
    for before, after in itertools.pairwise(chunks):
        shared = [s for s in after.sentences if s in before.sentences]
        assert shared == list(before.sentences[-len(shared) :])  # the overlap is the end of the chunk before
        assert after.sentences[: len(shared)] == tuple(shared)  # ... at the start of the next one
        assert 0 < sum(len(s.split()) for s in shared) <= 30
    every = [s for c in chunks for s in c.sentences]
    assert all(sentence(i, 12) in every for i in range(30))  # nothing lost


def test_no_overlap_across_sections() -> None:
    chunks = chunk_document(doc((("A",), sentence(1)), (("B",), sentence(2))), overlap_words=30)
    assert chunks[1].sentences == (sentence(2),)


def test_a_sentence_longer_than_the_limit_is_cut_on_words() -> None:
    chunks = chunk_document(doc((("A",), " ".join(f"w{i}" for i in range(450)))), target_words=100, max_words=200)
    assert [words(c) for c in chunks] == [200, 200, 50]


def test_list_lines_stay_lines() -> None:
    chunks = chunk_document(doc((("Pay",), "Ways to pay:\nBy card\nBy cash in store")))
    assert chunks[0].body == "Ways to pay:\nBy card\nBy cash in store"
    assert chunks[0].sentences == ("Ways to pay:", "By card", "By cash in store")


@pytest.mark.parametrize(("target", "limit", "overlap"), [(0, 10, 0), (20, 10, 0), (10, 10, -1)])
def test_bad_parameters(target: int, limit: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_document(doc(((), "x")), target_words=target, max_words=limit, overlap_words=overlap)
