"""Incremental clause splitter: turns streamed LLM text into pieces the TTS can start speaking early.

Pure and synchronous: `feed()` takes whatever the LLM produced next and returns the segments that are now
complete, `flush()` returns the rest at the end of the reply. The first segment is cut at the first clause
boundary (, ; : – — . ! ? …) once `first_clause_min_chars` are buffered, so the first audio starts after a few
words instead of a whole sentence; later segments are cut at sentence boundaries, or at a clause boundary once
the buffer is over `clause_max_chars` (long sentences would delay audio and make big TTS requests).

With `first_phrase_chars`, a first clause that runs on ("You can cancel your gym membership by calling the front
desk.") is cut earlier still: before a word that opens a phrase (a conjunction, or a preposition that is rarely
a verb's particle: "by", "with", "because", "and") once the text before it has that many characters. The
reply's first audio then waits for a phrase, not the whole first sentence; the reply runner has the voice
speak such a cut as a clause that goes on (see `continues`).

A boundary is a punctuation mark followed by whitespace, so numbers ("3.5", "1,000", "10:30"), emails and URLs
never split; abbreviations ("Dr.", "e.g.", "U.S.", initials) are recognised before a ".". Bare "and"/"but" are
not boundaries: piper speaks every segment as a whole utterance, and a cut with no punctuation would put a
sentence-final fall in the middle of a phrase, where a speaker would not pause (the one exception, the first
phrase below, is spoken with a comma added for the voice).

Text is normalised on the way in: markdown symbols (* # `) and emoji are dropped (TTS would read them or
stumble), whitespace runs become one space. Segments are stripped, and `" ".join(segments) == normalize(text)`
holds for any way the text is cut into pieces.
"""

from __future__ import annotations

import unicodedata
from typing import Final, Literal, Protocol

MARKDOWN: Final = frozenset("*#`")
SENTENCE_END: Final = frozenset(".!?…")
CLAUSE_END: Final = frozenset(",;:–—")  # en/em dash only when spaced ("yes — but"), never inside "10–20"
CLOSERS: Final = frozenset("\"')]}’”»")  # may follow the punctuation: 'He said "no." Then'
# Words that end in "." without ending the sentence. Ambiguous ones that often end a sentence ("etc", "Inc",
# "no") are left out: a missed split only merges two sentences, a wrong one breaks "Dr. | Smith".
ABBREVIATIONS: Final = frozenset(
    "mr mrs ms dr prof st sr jr vs cf al approx fig vol dept mt ft gen gov sen rep capt lt col sgt ave blvd".split()
)
SAFETY_FACTOR: Final = 2  # no boundary at all for this many times clause_max_chars: cut at a word
# Words a first phrase may be cut before. Left out: "to", "of", "that", "for", "in", "on", "up", "out", "about",
# and the like, which often belong to the words before them ("have to", "a lot of", "pay for", "log in").
PHRASE_OPENERS: Final = frozenset(
    "and but or so because if when while although though unless until since whether which where who whose "
    "by with at from during through without before after".split()
)

Boundary = Literal["sentence", "clause", "word"]


def is_dropped(ch: str) -> bool:
    """Characters TTS should not see: markdown symbols, emoji and their joiners/variation selectors."""
    if ch in MARKDOWN:
        return True
    cp = ord(ch)
    if cp in (0x200D, 0xFE0E, 0xFE0F, 0x20E3) or 0xE0020 <= cp <= 0xE007F or 0x1F3FB <= cp <= 0x1F3FF:
        return True
    # "So" from U+2190 on covers arrows, dingbats, pictographs and emoji, but keeps ©, ®, ° that TTS can say.
    return cp >= 0x2190 and unicodedata.category(ch) == "So"


def normalize(text: str) -> str:
    """The text the segments add up to: dropped characters removed, whitespace collapsed, ends stripped."""
    return " ".join("".join(ch for ch in text if not is_dropped(ch)).split())


def _is_abbreviation(word: str) -> bool:
    """`word` is the token before a "." (without it): "Dr", "e.g", "U.S", "J" are; "2024", "example.com" not."""
    word = word.lstrip("\"'([{‘“«").lower()
    if word in ABBREVIATIONS:
        return True
    parts = word.split(".")
    # Initials and dotted abbreviations: every part one or two letters ("j", "e.g", "u.s", "p.m").
    return all(1 <= len(p) <= 2 and p.isalpha() for p in parts) and (len(parts) > 1 or len(word) == 1)


def boundary_before_space(text: str, newline: bool) -> Boundary | None:
    """What kind of boundary the end of `text` (no trailing space) is, if a space (or newline) follows it."""
    if newline:
        return "sentence"  # paragraph or list item: the LLM ended a line
    end = len(text)
    while end > 0 and text[end - 1] in CLOSERS:
        end -= 1
    if end == 0:
        return None
    mark = text[end - 1]
    if mark in "!?…":
        return "sentence"
    if mark == ".":
        word = text[: end - 1].rsplit(" ", 1)[-1]
        if word.endswith(".") or not word:  # "..." (an ellipsis) ends a sentence
            return "sentence"
        return None if _is_abbreviation(word) else "sentence"
    if mark in CLAUSE_END:
        return "clause" if end - 1 > 0 else None
    return None


class ClauseLengths(Protocol):
    """The lengths a reply's splitter is built from: the `tts.*` settings (`orchestrator.config.TtsSettings`)."""

    @property
    def first_clause_min_chars(self) -> int: ...
    @property
    def clause_max_chars(self) -> int: ...
    @property
    def first_phrase_chars(self) -> int: ...  # 0: no cut at a phrase


class ClauseSplitter:
    """Stateful splitter for one reply. Not thread-safe; create one per reply."""

    def __init__(
        self,
        first_clause_min_chars: int | None = 12,
        clause_max_chars: int = 160,
        first_phrase_chars: int | None = None,
    ) -> None:
        """`first_clause_min_chars=None` turns off the early first clause (plain sentence splitting);
        `first_phrase_chars=None` (the default) the cut of a first clause at a phrase."""
        if clause_max_chars < 1:
            raise ValueError("clause_max_chars must be positive")
        if first_phrase_chars is not None and first_phrase_chars < 1:
            raise ValueError("first_phrase_chars must be positive")
        self.first_clause_min_chars = first_clause_min_chars
        self.clause_max_chars = clause_max_chars
        self.first_phrase_chars = first_phrase_chars
        self._buf: list[str] = []  # normalised text not yet emitted; a single " " separates words
        self._emitted = 0
        self._newline = False  # the pending whitespace run contains a line break
        self._space = False  # whitespace seen after the last kept character, not yet written

    @classmethod
    def for_settings(cls, lengths: ClauseLengths) -> ClauseSplitter:
        """The splitter a reply gets under these settings (`settings.tts`)."""
        return cls(lengths.first_clause_min_chars, lengths.clause_max_chars, lengths.first_phrase_chars or None)

    def feed(self, piece: str) -> list[str]:
        """Add the next piece of text; return the segments it completed (possibly none)."""
        out: list[str] = []
        for ch in piece:
            if is_dropped(ch):
                continue
            if ch.isspace():
                self._space = True
                self._newline |= ch in "\n\r\u2028\u2029"
                continue
            if self._space:
                self._on_space(out)
            self._buf.append(ch)
        return out

    def flush(self) -> list[str]:
        """End of the reply: return what is left (nothing if it holds no speakable text)."""
        rest = "".join(self._buf).strip()
        self._buf.clear()
        self._space = self._newline = False
        if not rest:
            return []
        self._emitted += 1
        return [rest]

    def _on_space(self, out: list[str]) -> None:
        """A word just ended and another starts: cut here if the text so far ends at a boundary that counts."""
        text = "".join(self._buf)
        newline, self._space, self._newline = self._newline, False, False
        if not text:
            return  # leading whitespace
        kind = boundary_before_space(text, newline)
        too_long = len(text) >= SAFETY_FACTOR * self.clause_max_chars
        if (kind is not None and self._cut(text, kind)) or (too_long and self._cut(text, "word")):
            out.append(text)
            self._emitted += 1
            self._buf.clear()
            return
        if kind is None and (phrase := self._first_phrase(text)) is not None:
            out.append(phrase)
            self._emitted += 1
            del self._buf[: len(phrase) + 1]  # the opening word stays, to start the next segment
        self._buf.append(" ")

    def _first_phrase(self, text: str) -> str | None:
        """The first segment, cut before the word just completed when that word opens a phrase and the text
        before it is long enough (None: no cut here)."""
        if self._emitted or self.first_phrase_chars is None or " " not in text:
            return None
        head, word = text.rsplit(" ", 1)
        if len(head) < self.first_phrase_chars or not head[-1].isalnum() or word.lower() not in PHRASE_OPENERS:
            return None
        before = head.rsplit(" ", 1)[-1]
        if word.lower() in ("and", "or") and before[0].isupper() and before != "I":
            return None  # names joined ("a Google or Outlook calendar", "Tuesday and Thursday"): one phrase
        return head

    def _cut(self, text: str, kind: Boundary) -> bool:
        if not any(c.isalnum() for c in text):
            return False  # a lone "—" or "..." is no segment of its own
        if kind in ("sentence", "word"):
            return True
        if len(text) >= self.clause_max_chars:
            return True
        return (
            self._emitted == 0 and self.first_clause_min_chars is not None and len(text) >= self.first_clause_min_chars
        )


def continues(segment: str) -> bool:
    """Whether `segment` stops mid-sentence, with no punctuation (a first phrase, or a word cut of a run-on
    clause): the voice should speak it as a clause that goes on, not as a sentence's end."""
    return bool(segment) and segment[-1].isalnum()


def split_text(text: str, first_clause_min_chars: int | None = None, clause_max_chars: int = 160) -> list[str]:
    """Split a whole text at once (the TTS model's sentence split uses the same rules as the streaming one)."""
    splitter = ClauseSplitter(first_clause_min_chars, clause_max_chars)
    return splitter.feed(text) + splitter.flush()
