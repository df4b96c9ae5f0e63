"""The transcript benchmark's pure parts: the normaliser, the alignment, and the duplicate, leak and
hallucination counts, and how e2e events are matched to labelled turns (perf/bench_asr.py)."""

from __future__ import annotations

import pytest

from perf.bench_asr import (
    Call,
    Errors,
    LabelledTurn,
    align,
    duplicated,
    errors,
    hallucinated_runs,
    leaked,
    normalise,
    score_call_e2e,
    summary,
)


def words(text: str, fillers: bool = True) -> str:
    return " ".join(normalise(text, fillers=fillers))


@pytest.mark.parametrize(
    ("said", "written"),
    [
        ("Hi, I'm seeing Doctor Patel today.", "hi i'm seeing Dr. Patel today"),
        ("My date of birth is July ninth, 1986.", "My date of birth is July 9th, nineteen eighty-six."),
        ("The member ID is 4 0 7, 2 2 1 8.", "The member ID is 407-2218."),
        ("The member ID is four oh seven.", "The member ID is 407."),
        ("The late fee was thirty five dollars.", "The late fee was $35."),
        ("It was two hundred and ten dollars, usually it's ninety.", "It was $210, usually it is 90."),
        ("At ten forty five.", "At 10:45."),
        ("One thousand nine hundred and eighty six.", "1986"),
        ("The bill is two hundred and twelve.", "The bill is 200 and 12."),
        ("The twenty fourth.", "The 24th."),
        ("sam dot lee at blueharbor dot com", "sam.lee@blueharbor.com"),
        ("I can't, I won't.", "I cannot, I will not."),
        ("Okay, alright, e-mail.", "OK, all right, email."),
        (
            "I'd like it, we'll see, they're here, I've paid.",
            "I would like it, we will see, they are here, I have paid.",
        ),
    ],
)
def test_the_normaliser_makes_what_was_said_and_how_whisper_writes_it_the_same_words(said: str, written: str) -> None:
    assert normalise(said) == normalise(written)


def test_numbers_end_as_single_digits_and_two_numbers_said_in_a_row_stay_two() -> None:
    assert words("four four seven") == "4 4 7"
    assert words("twelve thirty") == "1 2 3 0"
    assert words("nineteen eighty six") == "1 9 8 6"
    assert words("a hundred") == "1 0 0"
    assert words("two thousand and five") == "2 0 0 5"
    assert words("five to seven business days") == "5 to 7 business days"
    assert words("oh no") == "oh no"  # "oh" is a zero only between digits


def test_a_wrong_digit_costs_one_word() -> None:
    assert errors(normalise("account 5 5 8"), normalise("account 558")) == Errors(0, 0, 0, 4)
    assert errors(normalise("account 5 5 8"), normalise("account 568")) == Errors(1, 0, 0, 4)


def test_fillers_are_counted_or_removed_but_you_know_is_words() -> None:
    assert words("I want to, um, uh, you know, sleep.") == "i want to um uh you know sleep"
    assert words("I want to, um, uh, you know, sleep.", fillers=False) == "i want to you know sleep"


def test_punctuation_case_and_apostrophes_never_count() -> None:
    assert normalise("THE BILL, came twice!") == normalise("the bill came twice")
    assert normalise("Patel\u2019s office") == normalise("Patel's office") == ["patels", "office"]


def test_alignment_counts_substitutions_deletions_and_insertions() -> None:
    ref, hyp = "a b c d".split(), "a x c d e".split()
    assert errors(ref, hyp) == Errors(sub=1, dele=0, ins=1, ref=4)
    assert [o for o, _, _ in align(ref, hyp)] == ["ok", "sub", "ok", "ok", "ins"]
    assert errors(ref, []) == Errors(0, 4, 0, 4)
    assert errors([], ["a"]).wer != errors([], ["a"]).wer  # no reference words: NaN, never a division error
    assert (Errors(1, 0, 0, 4) + Errors(0, 1, 1, 6)).wer == pytest.approx(0.3)


def test_a_sentence_transcribed_twice_is_a_duplicate_a_repeat_the_user_said_is_not() -> None:
    ref = "Do I need to bring my insurance card, up to the front desk?"
    once = "Do I need to bring my insurance card up to the front desk?"
    twice = f"{once} {once}"
    assert duplicated(twice, ref)
    assert not duplicated("Do I need to bring my insurance card up to the front desk?", ref)
    assert duplicated("the new address, the new address", "the new address")
    looped = "to make phone calls. I don't have the ability to make phone calls. I don't have"
    assert duplicated(looped, "Is there a cancellation fee?")  # the second copy cut by the end
    assert not duplicated("no, no, no", "No, no, no.")  # short, and said
    assert not duplicated("I said the bill the bill the bill", "I said the bill the bill the bill")


def test_the_replicas_words_at_the_start_of_a_user_turn_are_a_leak() -> None:
    reply = "I can help you to take care of the payment process."
    hyp = "to take care of the payment process. I'd like to dispute a late fee."
    ref = "I'd like to, um, dispute a late fee."
    assert leaked(hyp, ref, [reply]) == "to take care of the payment process".split()
    assert leaked("I'd like to dispute a late fee.", ref, [reply]) == []
    # words the user said that the replica also said are not a leak
    assert leaked("the payment process is slow", "the payment process is slow", [reply]) == []
    # one stray word is not a copy; three of the reply's words in a row inside the turn are
    assert leaked("Payment I'd like to dispute a late fee.", ref, [reply]) == []
    assert leaked("I'd like to take care of the dispute a late fee.", ref, [reply]) == ["take", "care", "of", "the"]
    assert leaked(hyp, ref, []) == []


def test_hallucinated_runs_are_three_or_more_inserted_words_in_a_row() -> None:
    assert hallucinated_runs("I paid.", "I paid. Thank you for watching.") == 1
    assert hallucinated_runs("I paid.", "I really paid.") == 0


def turn(k: int, start: float, end: float, text: str) -> LabelledTurn:
    return LabelledTurn("asr-dev/001.wav", k, start, end, text, "turn", "", "clinic_intake")


def test_e2e_events_are_matched_to_the_labelled_turn_whose_window_holds_their_commit() -> None:
    call = Call(
        "asr-dev/001.wav",
        "clinic_intake",
        30.0,
        (turn(0, 1.0, 3.0, "I have a sore knee."), turn(1, 10.0, 12.0, "July ninth."), turn(2, 20.0, 22.0, "Bye.")),
    )
    events = [
        {"type": "transcript", "t": 3.1, "text": "I have a sore knee.", "final": True},
        {"type": "user_turn", "t": 4.2, "turn": 0, "text": "I have a sore knee."},
        {"type": "replica_turn", "t": 8.0, "reply_id": 1, "text": "Sorry to hear that. What is your date of birth?"},
        {"type": "transcript", "t": 12.1, "text": "What is your date of birth? July 9th.", "final": True},
        {"type": "user_turn", "t": 13.0, "turn": 1, "text": "What is your date of birth? July 9th."},
        # turn 2 was committed in two pieces; and nothing else
    ]
    events += [
        {"type": "user_turn", "t": 21.0, "turn": 2, "text": "Bye"},
        {"type": "user_turn", "t": 23.0, "turn": 3, "text": "bye."},
    ]
    scores = score_call_e2e(call, events)
    assert [s.committed for s in scores] == [1, 1, 2]
    assert scores[0].errors.wer == 0.0 and not scores[0].leaked
    assert scores[1].leaked == "what is your date of birth".split()
    assert scores[2].hyp == "Bye bye." and scores[2].errors == Errors(0, 0, 1, 1)
    s = summary(scores)
    assert (s["turns"], s["leaks"], s["split_turns"], s["uncommitted"]) == (3, 1, 1, 0)
    assert score_call_e2e(call, [])[0].committed == 0  # nothing committed: every word deleted
    assert score_call_e2e(call, [])[0].errors == Errors(0, 5, 0, 5)
