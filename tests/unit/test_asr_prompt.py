"""The recogniser's prompt (orchestrator/speech/prompt.py): the persona's vocabulary and the user's own words,
never the replica's, and always inside the asr model's prompt window."""

from __future__ import annotations

from orchestrator.speech.prompt import MAX_PROMPT_CHARS, decoder_prompt, recent_words, vocabulary_prompt

CLINIC = ("Riverside Family Clinic", "Dr. Patel", "date of birth", "insurance", "copay", "Blue Cross", "Aetna")


def test_the_vocabulary_is_one_comma_list_spelled_as_the_persona_spells_it() -> None:
    assert (
        vocabulary_prompt(CLINIC)
        == "Riverside Family Clinic, Dr. Patel, date of birth, insurance, copay, Blue Cross, Aetna."
    )
    assert vocabulary_prompt(["  Dr.  Patel ", "", "dr. patel", "Aetna,"]) == "Dr. Patel, Aetna."
    assert vocabulary_prompt(()) == ""


def test_terms_past_the_limit_are_left_out_whole() -> None:
    prompt = vocabulary_prompt(["alpha", "beta", "a very long product name indeed", "gamma"], max_chars=20)
    assert prompt == "alpha, beta, gamma."
    assert len(prompt) <= 20


def test_no_vocabulary_and_no_earlier_words_is_no_prompt() -> None:
    assert decoder_prompt((), ()) == ""
    assert decoder_prompt((), ["", "  "]) == ""


def test_the_users_earlier_words_follow_the_vocabulary_and_the_most_recent_are_kept() -> None:
    said = ["I have a sore knee.", "My date of birth is July 9, 1986."]
    prompt = decoder_prompt(CLINIC, said)
    assert prompt.startswith("Riverside Family Clinic, Dr. Patel")
    assert prompt.endswith("My date of birth is July 9, 1986.")
    long = ["word " * 200, "the last thing I said"]
    prompt = decoder_prompt(CLINIC, long)
    assert len(prompt) <= MAX_PROMPT_CHARS
    assert prompt.endswith("the last thing I said")
    assert vocabulary_prompt(CLINIC) in prompt


def test_recent_words_cut_at_a_word_boundary() -> None:
    assert recent_words(["one two three four"], 9) == "four"
    assert recent_words(["one two", "three"], 100) == "one two three"
    assert recent_words(["abcdefghij"], 5) == ""
