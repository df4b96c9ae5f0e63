"""Clause splitter (orchestrator/speech/clauses.py): streamed LLM text into TTS-sized pieces.

The conversation session feeds every LLM piece to `ClauseSplitter.feed` as it arrives and calls `flush` at the
end of the reply (orchestrator/session/conversation.py). One benchmark call is one whole reply of ~90 pieces (the
LLM's `max_tokens` is 96), fed piece by piece, then flushed; per piece = mean / `units_per_call`. Side by side:
a streaming `re.split` on sentence punctuation (buffer, split, keep the unfinished tail), and the same `re.split`
run once over the finished text (not streaming: the floor of what splitting can cost).
"""

from __future__ import annotations

import re

import pytest
from conftest import per_unit

from orchestrator.config import TtsSettings
from orchestrator.speech.clauses import ClauseSplitter, normalize

GROUP = "clause splitter: one reply"
REPLY = (
    "Sure, I can help with that. Your next appointment is on Friday, March 14th at 10:30 a.m. with Dr. Patel, "
    "at the Main St. clinic. Would you like to move it to the following week, or cancel it altogether? "
    "I can also send you a reminder by e-mail — just let me know which address to use, and I'll take care of "
    "the rest. Is there anything else I can do for you today?"
)
_PIECE = re.compile(r"\s?[\w']+|\s?[^\w\s]+|\s+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def llm_pieces(text: str) -> list[str]:
    """Roughly how a BPE model streams text: a leading space glued to the word, long words in two pieces."""
    out: list[str] = []
    for piece in _PIECE.findall(text):
        if len(piece) > 7:
            cut = len(piece) // 2
            out += [piece[:cut], piece[cut:]]
        else:
            out.append(piece)
    return out


PIECES = llm_pieces(REPLY)


@pytest.mark.benchmark(group=GROUP)
def test_clause_splitter_feed_and_flush(benchmark):
    """`ClauseSplitter` with the session's settings: feed every piece, then flush."""
    tts = TtsSettings()

    def reply():
        splitter = ClauseSplitter.for_settings(tts)
        out = [seg for piece in PIECES for seg in splitter.feed(piece)]
        return out + splitter.flush()

    segments = benchmark(reply)
    per_unit(benchmark, "piece", len(PIECES))
    assert " ".join(segments) == normalize(REPLY) and len(segments) >= 5


def regex_stream(pieces: list[str]) -> list[str]:
    """Alternative: append each piece, split the buffer on sentence punctuation, keep the unfinished tail."""
    out: list[str] = []
    buf = ""
    for piece in pieces:
        buf += piece
        parts = _SENTENCE.split(buf)
        out += parts[:-1]
        buf = parts[-1]
    return [*out, buf.strip()] if buf.strip() else out


@pytest.mark.benchmark(group=GROUP)
def test_clause_alt_regex_streaming(benchmark):
    """Alternative: streaming `re.split` on sentence punctuation (no early first clause, splits "a.m. with")."""
    segments = benchmark(regex_stream, PIECES)
    per_unit(benchmark, "piece", len(PIECES))
    assert len(segments) >= 4


@pytest.mark.benchmark(group=GROUP)
def test_clause_alt_regex_whole_text(benchmark):
    """Alternative: one `re.split` over the finished reply (not streaming: nothing could be spoken early)."""
    segments = benchmark(_SENTENCE.split, REPLY)
    assert len(segments) >= 4
