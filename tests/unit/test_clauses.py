"""The incremental clause splitter: early first clause, sentence cuts after it, nothing cut where it mustn't be."""

from __future__ import annotations

import itertools
import random

import pytest

from orchestrator.config import TtsSettings
from orchestrator.speech.clauses import ClauseSplitter, continues, normalize, split_text

SETTINGS = TtsSettings()


def stream(text: str, cuts: list[int], **kwargs: int | None) -> list[str]:
    """Feed `text` cut at the given positions, as an LLM would stream it."""
    splitter = ClauseSplitter(**kwargs)  # type: ignore[arg-type]
    out: list[str] = []
    bounds = [0, *sorted(cuts), len(text)]
    for a, b in itertools.pairwise(bounds):
        out += splitter.feed(text[a:b])
    return out + splitter.flush()


def by_token(text: str) -> list[str]:
    """Split like an LLM tokenizer does: each word with its leading space."""
    splitter = ClauseSplitter(SETTINGS.first_clause_min_chars, SETTINGS.clause_max_chars)
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out += splitter.feed(word if i == 0 else " " + word)
    return out + splitter.flush()


def test_first_segment_is_the_first_clause_then_sentences() -> None:
    text = "Well, that depends on the weather, really. If it rains, we stay in, and if not, we go out. Okay?"
    assert by_token(text) == [
        "Well, that depends on the weather,",
        "really.",
        "If it rains, we stay in, and if not, we go out.",
        "Okay?",
    ]


def test_first_clause_waits_for_the_minimum_length() -> None:
    # "Sure," is under 12 characters: the first cut is the next boundary past it.
    assert by_token("Sure, I can do that for you, no problem.") == ["Sure, I can do that for you,", "no problem."]
    assert by_token("Hi. How are you?") == ["Hi.", "How are you?"]  # sentences always end a segment


def phrased(text: str, chars: int | None = 24) -> list[str]:
    splitter = ClauseSplitter(SETTINGS.first_clause_min_chars, SETTINGS.clause_max_chars, chars)
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out += splitter.feed(word if i == 0 else " " + word)
    return out + splitter.flush()


def test_a_first_clause_that_runs_on_is_cut_before_a_phrase() -> None:
    assert phrased("You can cancel your gym membership by calling the front desk. It takes a day.") == [
        "You can cancel your gym membership",
        "by calling the front desk.",
        "It takes a day.",
    ]
    # Only the first segment: later sentences are cut at their ends as before.
    assert phrased("Sure. You can cancel your gym membership by calling the front desk.") == [
        "Sure.",
        "You can cancel your gym membership by calling the front desk.",
    ]
    # Not before the minimum, nor where punctuation cuts anyway, nor after it is turned off.
    assert phrased("You can call us with that.") == ["You can call us with that."]
    assert phrased("Sure, I can do that for you, no problem.") == ["Sure, I can do that for you,", "no problem."]
    text = "You can cancel your gym membership by calling the front desk."
    assert phrased(text, None) == [text]


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("You know how sometimes you have to pay a late fee for it.", None),  # "to", "for": no cut
        ("Sure, let's connect a Google or Outlook calendar for you.", None),  # names joined by "or": one phrase
        ("We are open every Tuesday and Thursday from nine.", "We are open every Tuesday and Thursday"),
    ],
)
def test_no_phrase_cut_inside_what_belongs_together(text: str, first: str | None) -> None:
    assert phrased(text)[0] == (first or text)


def test_a_segment_that_stops_mid_sentence_goes_on() -> None:
    assert continues("You can cancel your gym membership")
    assert not any(continues(s) for s in ["Sure,", "It takes a day.", "Really?", 'He said "no."', ""])


def test_segment_is_released_as_soon_as_the_next_word_starts() -> None:
    splitter = ClauseSplitter(12, 160)
    assert splitter.feed("Of course not,") == []  # a comma ends a clause only if a space follows ("1,000")
    assert splitter.feed(" that") == ["Of course not,"]
    assert splitter.feed(" works.") == []  # could still be "works.com" or "works. Then"
    assert splitter.feed(" Then") == ["that works."]
    assert splitter.flush() == ["Then"]
    assert splitter.flush() == []


@pytest.mark.parametrize(
    "text",
    [
        "It costs 3.5 dollars or 1,000 cents and starts at 10:30 sharp",
        "Dr. Smith and Mrs. Jones met Prof. Lee vs. the board",
        "Bring fruit, e.g. apples, i.e. something sweet",
        "Mail john.doe@example.com or see https://example.com/a.b?x=1,2 now",
        "J. R. R. Tolkien lived in the U.S. for a while",
    ],
)
def test_no_cut_inside_numbers_abbreviations_emails_and_urls(text: str) -> None:
    # No clause split at all after the first segment (clause_max_chars is large), so one segment each.
    assert split_text(text + ".", first_clause_min_chars=None) == [text + "."]


def test_sentence_end_after_a_url_number_or_quote_still_cuts() -> None:
    assert split_text('See example.com. It was 2024. He said "no." Then left.') == [
        "See example.com.",
        "It was 2024.",
        'He said "no."',
        "Then left.",
    ]


def test_markdown_and_emoji_are_dropped() -> None:
    text = "## Plan\n\n**Great** idea 👍🏽! Use `pip` and *relax* 😀👨‍👩‍👧 now."
    assert normalize(text) == "Plan Great idea ! Use pip and relax now."
    assert split_text(text) == ["Plan", "Great idea !", "Use pip and relax now."]


def test_line_breaks_end_segments() -> None:
    assert split_text("Options:\n- tea\n- coffee") == ["Options:", "- tea", "- coffee"]


def test_long_sentences_cut_at_clauses_past_the_maximum() -> None:
    clause = "this part of the sentence is a fairly long clause"  # 49 characters
    text = f"{clause}, {clause}, {clause}, {clause}, {clause}."
    segments = split_text(text, first_clause_min_chars=None, clause_max_chars=100)
    # Each segment ends at the first clause boundary at or past 100 characters (two clauses: 101).
    assert segments == [f"{clause}, {clause},", f"{clause}, {clause},", f"{clause}."]


def test_runaway_text_without_any_boundary_is_cut_at_a_word() -> None:
    text = " ".join(["word"] * 100)  # 499 characters, no punctuation
    segments = split_text(text, clause_max_chars=50)
    assert len(segments) > 1 and all(len(s) <= 2 * 50 + 5 for s in segments)


def test_nothing_speakable_gives_nothing() -> None:
    assert split_text("  **  😀 \n ") == []
    assert split_text("— ... —") == ["— ... —"]  # never dropped silently, but never a segment on its own


TOKENS = [
    "Well,", "Dr.", "Smith", "said", "3.5", "1,000", "e.g.", "U.S.", "okay.", "really?", "yes!", "no;", "maybe:",
    "a.b@c.com", "https://x.io/p.q", "**bold**", "`code`", "#", "😀", "👍🏽", "—", "and", "then", '"quoted."',
    "(aside)", "\n", "\n\n", "  ", "etc.", "J.", "10:30", "word", "another", "thing", "by", "with", "or", "Google",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_segments_add_up_to_the_normalised_text_however_it_is_streamed(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice(TOKENS) + rng.choice([" ", " ", "", "\n", "  "]) for _ in range(rng.randint(1, 60)))
    cuts = [rng.randint(0, len(text)) for _ in range(rng.randint(0, 30))]
    kwargs = {
        "first_clause_min_chars": rng.choice([None, 0, 12, 40]),
        "clause_max_chars": rng.choice([20, 160]),
        "first_phrase_chars": rng.choice([None, 1, 24]),
    }
    segments = stream(text, cuts, **kwargs)
    assert " ".join(segments) == normalize(text)
    assert all(s == s.strip() and s for s in segments)
    # The cut positions never change the result: streaming is the same as splitting the whole text.
    assert segments == stream(text, [], **kwargs)


def test_the_settings_build_the_splitter_and_a_zero_first_phrase_turns_the_cut_off() -> None:
    on = ClauseSplitter.for_settings(TtsSettings(first_clause_min_chars=10, clause_max_chars=90, first_phrase_chars=24))
    assert (on.first_clause_min_chars, on.clause_max_chars, on.first_phrase_chars) == (10, 90, 24)
    assert ClauseSplitter.for_settings(TtsSettings(first_phrase_chars=0)).first_phrase_chars is None
