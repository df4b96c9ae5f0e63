"""The knowledge benchmark's scoring functions and its data (perf/bench_knowledge.py, perf/data/knowledge/)."""

from __future__ import annotations

import math

import pytest

from orchestrator.knowledge.chunk import chunk_document
from orchestrator.knowledge.parse import parse_document
from perf.bench_knowledge import (
    DATA,
    DOCUMENTS,
    best_threshold,
    distractor_documents,
    first_relevant_rank,
    load_questions,
    mean_reciprocal_rank,
    normalise,
    percentile,
    recall_at,
    relevant_chunks,
    text_pdf,
)

# ------------------------------------------------------------------------------------------------- scoring


def test_normalise_ignores_case_quotes_dashes_and_spacing() -> None:
    assert normalise("Two  weeks’\n notice – Now") == "two weeks' notice - now"


def test_relevant_chunks_hold_the_answer_whole() -> None:
    texts = ["A fee of $7 applies.", "Heading: a FEE of\n$7  applies later", "No fee."]
    assert relevant_chunks(texts, "fee of $7 applies") == {0, 1}
    assert relevant_chunks(texts, ["no fee", "nothing"]) == {2}
    assert relevant_chunks(texts, "fee of $7 applies today") == set()


def test_first_relevant_rank() -> None:
    assert first_relevant_rank(["a", "b", "c"], {"c", "b"}) == 2
    assert first_relevant_rank(["a"], {"z"}) is None
    assert first_relevant_rank([], {"z"}) is None


def test_recall_and_mrr() -> None:
    ranks = [1, 2, None, 5, 7]
    assert recall_at(ranks, 1) == pytest.approx(1 / 5)
    assert recall_at(ranks, 5) == pytest.approx(3 / 5)
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 7) / 5)
    assert recall_at([], 5) == 0.0 and mean_reciprocal_rank([]) == 0.0


def test_percentile_interpolates() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(list(range(101)), 95) == pytest.approx(95)
    assert math.isnan(percentile([], 50))


def test_best_threshold() -> None:
    cut, accuracy = best_threshold([0.6, 0.7, 0.8], [0.2, 0.3, 0.65])
    assert accuracy == pytest.approx(5 / 6) and 0.3 < cut <= 0.6
    cut, accuracy = best_threshold([0.9], [0.1])
    assert accuracy == 1.0 and 0.1 < cut <= 0.9


# ---------------------------------------------------------------------------------------------------- data


def test_questions_are_well_formed() -> None:
    questions = load_questions()
    ids = [q.id for q in questions]
    assert len(ids) == len(set(ids))
    answerable = [q for q in questions if q.answerable]
    assert len(answerable) >= 60 and len(questions) - len(answerable) >= 15
    for q in answerable:
        assert q.document in DOCUMENTS and q.answer and q.fact, q.id
    for q in questions:
        if not q.answerable:
            assert q.document is None and q.answer is None, q.id


def test_every_answer_is_in_its_document_and_in_one_chunk() -> None:
    parsed = {name: parse_document((DATA / name).read_bytes(), filename=name) for name in DOCUMENTS}
    chunks = {name: [c.text for c in chunk_document(doc)] for name, doc in parsed.items()}
    for name, doc in parsed.items():
        assert 1500 <= len(doc.text.split()) <= 3000, name
    for q in load_questions():
        if q.answerable:
            assert q.document is not None and q.answer is not None
            assert normalise(q.answer if isinstance(q.answer, str) else q.answer[0]) in normalise(
                parsed[q.document].text
            ), q.id
            assert relevant_chunks(chunks[q.document], q.answer), q.id


def test_pdf_copy_reads_back() -> None:
    name = "onboarding_handbook.txt"
    text = (DATA / name).read_text()
    from_pdf = parse_document(text_pdf(text), filename="handbook.pdf")
    from_text = parse_document(text.encode(), filename=name)
    assert from_pdf.kind == "pdf" and from_pdf.pages > 1
    assert normalise(from_pdf.text.replace("\n", " ")) == normalise(from_text.text.replace("\n", " "))
    assert [s.heading_path for s in from_pdf.sections] == [s.heading_path for s in from_text.sections]


def test_distractors_are_deterministic_and_answer_nothing() -> None:
    first = list(distractor_documents(30))
    assert first == list(distractor_documents(30))
    assert len({name for name, _ in first}) == 30
    answers = [normalise(q.answer) for q in load_questions() if isinstance(q.answer, str)]
    for name, text in first:
        doc = parse_document(text.encode(), filename=name)
        assert doc.kind == "markdown" and len(doc.sections) >= 3
        assert not any(a in normalise(doc.text) for a in answers)
