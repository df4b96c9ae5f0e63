"""Sections to chunks: the units the knowledge base embeds, searches and quotes.

* A chunk never spans two sections: its heading path says what all of it is about.
* Paragraphs are packed whole up to `target_words`; a paragraph that does not fit starts the next chunk, and
  one longer than `max_words` is cut on sentence ends (lines of a list or table count as sentences; a
  "sentence" over `max_words` is cut on words).
* Consecutive chunks of one section overlap: the next chunk starts with the last whole sentences of the one
  before, up to `overlap_words`, so a fact on a boundary is whole in one of them.
* `Chunk.text` is the heading path, then the body: "Billing > Late fees: A fee of $5 ...". That one text is
  embedded, keyword-indexed, returned by search and put in a reply's prompt: the heading carries the context a
  body cut from the middle of a section lacks ("it costs $5" — what does?). `Chunk.body` is the document's
  own words alone; `Chunk.sentences` are the body's sentences, for sentence-level vectors
  (`orchestrator.knowledge.retrieve.embed_chunks`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.knowledge.parse import ParsedDocument

HEADING_SEPARATOR = " > "

# Words after which a full stop does not end a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st no nos vs etc approx dept est fig inc ltd co corp jr sr e.g i.e cf al ext tel".split()
)
_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"“'(\[]?[A-Z0-9])")


@dataclass(frozen=True)
class Chunk:
    seq: int  # 0, 1, ... in document order
    text: str  # "heading path: body" (the body alone before the first heading)
    heading: str  # "Billing > Late fees"; "" when the text comes before any heading
    body: str  # the document's words; lines and paragraphs separated by "\n"
    sentences: tuple[str, ...]  # the body's sentences, in order


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`; a line break always ends one (list items, table rows, headings)."""
    out: list[str] = []
    for line in text.split("\n"):
        start = 0
        for m in _END.finditer(line):
            head = line[start : m.start()].rsplit(None, 1)
            last = head[-1].lower().rstrip(".") if head else ""
            if last in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last):  # "Dr. Lee", "J. Smith"
                continue
            out.append(line[start : m.end()].strip())
            start = m.end()
        out.append(line[start:].strip())
    return [s for s in out if s]


def _words(text: str) -> int:
    return len(text.split())


@dataclass
class _Sentence:
    text: str
    words: int
    new_line: bool  # starts a line (a paragraph, list item or table row) rather than following on one


def chunk_document(
    doc: ParsedDocument, *, target_words: int = 120, max_words: int = 200, overlap_words: int = 30
) -> list[Chunk]:
    if not 0 < target_words <= max_words or overlap_words < 0:
        raise ValueError("chunking needs 0 < target_words <= max_words and overlap_words >= 0")
    chunks: list[Chunk] = []
    for section in doc.sections:
        heading = HEADING_SEPARATOR.join(section.heading_path)
        for sentences in _pack(section.text, target_words, max_words, overlap_words):
            body = "".join(("\n" if s.new_line and i else " " if i else "") + s.text for i, s in enumerate(sentences))
            chunks.append(
                Chunk(
                    seq=len(chunks),
                    text=f"{heading}: {body}" if heading else body,
                    heading=heading,
                    body=body,
                    sentences=tuple(s.text for s in sentences),
                )
            )
    return chunks


def _units(text: str, max_words: int) -> list[list[_Sentence]]:
    """Paragraphs as lists of sentences; a sentence over `max_words` is cut into pieces of words."""
    paragraphs = []
    for paragraph in text.split("\n\n"):
        sentences: list[_Sentence] = []
        for line in paragraph.split("\n"):
            for i, sentence in enumerate(split_sentences(line)):
                words = sentence.split()
                for j in range(0, len(words), max_words):
                    piece = words[j : j + max_words]
                    sentences.append(_Sentence(" ".join(piece), len(piece), new_line=i == 0 and j == 0))
        if sentences:
            paragraphs.append(sentences)
    return paragraphs


def _pack(text: str, target: int, limit: int, overlap: int) -> list[list[_Sentence]]:
    out: list[list[_Sentence]] = []
    current: list[_Sentence] = []
    carried = 0  # how many sentences at the start of `current` repeat the previous chunk's end

    def size() -> int:
        return sum(s.words for s in current)

    def close() -> None:
        nonlocal current, carried
        if len(current) <= carried:
            return  # nothing new since the last chunk
        out.append(current)
        tail: list[_Sentence] = []
        for s in reversed(current):
            if sum(t.words for t in tail) + s.words > overlap:
                break
            tail.insert(0, s)
        if len(tail) == len(current):  # a chunk of overlap only would say nothing new
            tail = tail[1:]
        current = [_Sentence(s.text, s.words, new_line=True) if i == 0 else s for i, s in enumerate(tail)]
        carried = len(current)

    for paragraph in _units(text, limit):
        words = sum(s.words for s in paragraph)
        fresh = size() - sum(s.words for s in current[:carried])
        # A paragraph goes whole into the current chunk while it stays near the target; a chunk still under
        # half the target takes a paragraph up to the limit rather than ending short.
        if fresh and size() + words > target and not (fresh < target / 2 and size() + words <= limit):
            close()
        if size() + words <= limit:
            current.extend(paragraph)
            continue
        for sentence in paragraph:  # too long to go whole: sentence by sentence
            if len(current) > carried and size() + sentence.words > target:
                close()
            while current and size() + sentence.words > limit:  # the overlap must give way
                current.pop(0)
                carried = max(0, carried - 1)
            current.append(sentence)
    close()
    return out
