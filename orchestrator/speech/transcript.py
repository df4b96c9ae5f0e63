"""Streaming partial transcripts of the user's turn: when to re-decode, and which words are stable.

Whisper is not a streaming recogniser, so while the user speaks the session re-decodes the whole growing
turn every `partial_interval_ms` (and once more, "final", at each speech end). Successive hypotheses of the
same audio disagree mostly at their ends, where a word is cut mid-way; LocalAgreement-2 (Macháček et al.,
2023, "Turning Whisper into Real-Time Transcription System") commits only the words that two consecutive
hypotheses agree on, and partials never take a committed word back, so the lexical floor cue can rely on them.
A final decode (at a speech end) heard the whole turn so far: its transcript replaces the committed words
(floor events wait for it, so no reply was built from the partial words it replaces).

Pure: times are seconds on the session's audio clock, given by the caller; no I/O, no wall clock.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

_PUNCT = re.compile(r"[^\w']+")


class _Word(Protocol):
    @property
    def text(self) -> str: ...


class Hypothesis(Protocol):
    """What a recogniser returns (orchestrator.models.ports.Transcript fits): text and optionally its words."""

    @property
    def text(self) -> str: ...

    @property
    def words(self) -> Sequence[_Word]: ...


def normalise(word: str) -> str:
    """Compare words without case or punctuation: "Bill," and "bill" agree."""
    return _PUNCT.sub("", word.lower()).strip("'")


def hypothesis_words(hypothesis: Hypothesis) -> list[str]:
    """The hypothesis as display words: its text split on spaces (its word list only when it has no text).

    The text is what was recognised. A word list need not split as the text does ("558-0312." aligned as
    " 558", "-0312."), and one cut to the text's word count dropped the turn's last words (issue 12)."""
    words = hypothesis.text.split() or [w.text.strip() for w in hypothesis.words]
    return [w for w in words if normalise(w)]


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """How many leading words two hypotheses share, compared normalised."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if normalise(x) != normalise(y):
            break
        n += 1
    return n


@dataclass(frozen=True)
class Partial:
    stable: str  # committed words: they never change until the turn is reset
    unstable: str  # the latest hypothesis past the stable words; may still change
    final: bool = False  # a speech-end decode: everything it heard is now stable

    @property
    def text(self) -> str:
        return f"{self.stable} {self.unstable}".strip()


class StreamingTranscript:
    """LocalAgreement-2 over successive decodes of one turn's audio; `reset()` when a new turn starts."""

    def __init__(self) -> None:
        self._stable: list[str] = []
        self._previous_tail: list[str] | None = None  # the last hypothesis past the stable words

    @property
    def stable(self) -> str:
        return " ".join(self._stable)

    def reset(self) -> None:
        self._stable = []
        self._previous_tail = None

    def update(self, hypothesis: Hypothesis) -> Partial:
        """A partial decode of the turn so far: commit what it shares with the previous one."""
        tail = self._tail(hypothesis_words(hypothesis))
        if self._previous_tail is not None:
            agreed = common_prefix(self._previous_tail, tail)
            # The newer spelling wins (casing and punctuation settle as more context arrives).
            self._stable.extend(tail[:agreed])
            tail = tail[agreed:]
        self._previous_tail = tail
        return Partial(self.stable, " ".join(tail))

    def finalize(self, hypothesis: Hypothesis) -> Partial:
        """A speech-end decode: it heard the whole turn so far, so its words become the turn's stable words.

        Partials decode audio cut mid-phrase, and two of them can agree on a wrong word ("the new address. The
        42 ..."): the final decode's transcript replaces what they committed (measured: the turn's WER falls
        to that of one decode of the whole turn; docs/transcripts.md). Only a final that did not hear the
        turn from its start (its first words are not the stable ones: a window past `max_utterance_s`), or
        that heard nothing, keeps the stable words and adds what follows them, as partials do.
        The turn may go on (a hold pause); later decodes are then compared from the new stable point.
        """
        words = hypothesis_words(hypothesis)
        if self._starts_the_turn(words):
            self._stable = words
        else:
            self._stable.extend(self._tail(words))
        self._previous_tail = None
        return Partial(self.stable, "", final=True)

    def _starts_the_turn(self, words: list[str]) -> bool:
        """Whether a full-turn hypothesis begins where the stable words begin (so it covers all of them): one
        of its first two words is one of the first two stable words, or nothing is stable yet."""
        if not self._stable:
            return True
        if not words:
            return False
        head = {normalise(w) for w in self._stable[:2]}
        return any(normalise(w) in head for w in words[:2])

    def _tail(self, words: list[str]) -> list[str]:
        """The words of a full-turn hypothesis after the ones already stable.

        Usually the hypothesis starts with the stable words. When it does not (the decoder changed its
        mind about a committed word, or a long turn's window no longer starts at the turn's start), the
        stable words are aligned to it and whatever follows the last matched word is new.
        """
        k = len(self._stable)
        if k == 0 or common_prefix(self._stable, words) == k:
            return words[k:]
        matcher = difflib.SequenceMatcher(
            None, [normalise(w) for w in self._stable], [normalise(w) for w in words], autojunk=False
        )
        blocks = [b for b in matcher.get_matching_blocks() if b.size > 0]
        if not blocks:
            return words[k:]  # nothing in common: fall back to position
        last = blocks[-1]
        # Stable words after the last match count as substituted: skip as many hypothesis words after it.
        return words[last.b + k - last.a :]


@dataclass(frozen=True)
class DecodeWindow:
    """Decode the session audio in [start_s, end_s); `turn` tells a stale result (from an older turn) apart."""

    start_s: float
    end_s: float
    final: bool
    turn: int


class PartialSchedule:
    """When to re-decode the user's turn, and which audio window to send. One decode's result counts at a time.

    The caller reports speech start/end and decode completions with audio times, and asks `poll(now)` as
    audio arrives. Windows start `pad_s` before the turn's first speech (the VAD fires a little late) and are
    capped to the last `max_utterance_s` (Whisper's window).

    A speech end's final decode starts at once, even with a decode in flight: the floor waits for those words,
    and what was in flight (a partial, or the final of an earlier pause) decoded less of the turn. Its result is
    stale from then on (`is_current`), and no partial starts until the final is back.
    """

    def __init__(self, interval_ms: int, max_utterance_s: float, pad_s: float = 0.2, min_audio_s: float = 0.3):
        self.interval_s = interval_ms / 1000.0
        self.max_utterance_s = max_utterance_s
        self.pad_s = pad_s
        self.min_audio_s = min_audio_s  # too little speech to be worth a partial decode
        self._turn = 0
        self._turn_start: float | None = None
        self._speaking = False
        self._in_flight: DecodeWindow | None = None  # the decode whose result counts
        self._last_end = 0.0  # audio time up to which the last decode reached

    @property
    def in_flight(self) -> DecodeWindow | None:
        return self._in_flight

    def speech_start(self, t: float) -> None:
        """User speech starts at `t` (the first voiced audio); a new turn begins if none is open."""
        if self._turn_start is None:
            self._turn_start = t
            self._last_end = t
        self._speaking = True

    def speech_end(self, t: float) -> DecodeWindow | None:
        """User speech ended at `t`: the final decode, now (None when no turn is open)."""
        self._speaking = False
        if self._turn_start is None:
            return None
        return self._start(t, final=True)

    def poll(self, now: float) -> DecodeWindow | None:
        """A partial decode window if one is due at audio time `now`, else None."""
        if not self._speaking or self._turn_start is None or self._in_flight is not None:
            return None
        if now - self._last_end < self.interval_s or now - self._turn_start < self.min_audio_s:
            return None
        return self._start(now, final=False)

    def decoded(self, window: DecodeWindow) -> None:
        """A decode finished (or failed). A stale one changes nothing."""
        if window == self._in_flight:
            self._in_flight = None

    def is_current(self, window: DecodeWindow) -> bool:
        """Whether a decode's result counts: the decode in flight of the open turn (results of an ended turn, and
        of a decode a final overtook, are dropped)."""
        return window == self._in_flight and window.turn == self._turn and self._turn_start is not None

    def end_turn(self) -> None:
        """The user yielded the floor: the next speech starts a new turn; in-flight results become stale."""
        self._turn += 1
        self._turn_start = None
        self._speaking = False
        self._in_flight = None
        self._last_end = 0.0

    def _start(self, end: float, *, final: bool) -> DecodeWindow:
        assert self._turn_start is not None
        start = max(0.0, self._turn_start - self.pad_s, end - self.max_utterance_s)
        self._in_flight = DecodeWindow(start, end, final, self._turn)
        self._last_end = end
        return self._in_flight
