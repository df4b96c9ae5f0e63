"""The recogniser's prompt: words the user is likely to say, and never the replica's.

Whisper conditions its decoder on earlier text (the `<|startofprev|>` slot; faster-whisper's `initial_prompt`
and its `hotwords` both fill it). It spells what the prompt spells ("Dr. Patel", "Northwind Energy"), and it
also copies from it: prompted with the replica's last reply, as Duet was until 2026-12-05, it began user
turns with the reply's words ("to take care of the payment process ..."; measured in docs/transcripts.md).
So the prompt is built only from what cannot leak the replica's words:

- the persona's vocabulary (`Persona.vocabulary`: names, products, terms), written as a short comma list;
- the user's own earlier turns in this call, if a caller passes them (`user_turns`): words they said, so a
  copy of them is at worst a word they use.

The asr model keeps the last `DecodeOptions.prompt_tokens` (64) tokens of a prompt; `MAX_PROMPT_CHARS` keeps
the whole prompt inside that (English runs ~4 characters a token), the vocabulary first and whole.

Pure.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_PROMPT_CHARS = 220  # ~55 tokens: inside the asr model's 64-token prompt window
MAX_VOCABULARY_CHARS = 160  # the vocabulary's share; terms past it are left out whole


def vocabulary_prompt(terms: Sequence[str], max_chars: int = MAX_VOCABULARY_CHARS) -> str:
    """The terms as one comma list ending in a full stop ("Riverside Family Clinic, Dr. Patel, copay."):
    text in the style of a transcript, spelled as the transcript should spell them. Blank and repeated
    terms are skipped; terms that would pass `max_chars` are left out whole (never cut mid-term)."""
    kept: list[str] = []
    seen: set[str] = set()
    length = 0
    for raw in terms:
        term = " ".join(raw.split()).strip(" ,.;")
        if not term or term.lower() in seen:
            continue
        extra = len(term) + (2 if kept else 0)
        if length + extra + 1 > max_chars:
            continue
        kept.append(term)
        seen.add(term.lower())
        length += extra
    return f"{', '.join(kept)}." if kept else ""


def recent_words(turns: Sequence[str], max_chars: int) -> str:
    """The end of the user's earlier turns, at most `max_chars`, cut at a word boundary (the most recent
    words are the likeliest to come back)."""
    text = " ".join(" ".join(t.split()) for t in turns if t.strip())
    if len(text) <= max_chars:
        return text
    cut = text[len(text) - max_chars :]
    space = cut.find(" ")
    return cut[space + 1 :] if space >= 0 else ""


def decoder_prompt(
    vocabulary: Sequence[str], user_turns: Sequence[str] = (), *, max_chars: int = MAX_PROMPT_CHARS
) -> str:
    """The prompt for a decode of the user's turn: the persona's vocabulary, then (if given) the end of the
    user's own earlier turns in this call. Empty when there is neither (Whisper unprompted)."""
    vocab = vocabulary_prompt(vocabulary, min(MAX_VOCABULARY_CHARS, max_chars))
    room = max_chars - len(vocab) - (1 if vocab else 0)
    said = recent_words(user_turns, room) if room > 0 else ""
    return " ".join(p for p in (vocab, said) if p)
