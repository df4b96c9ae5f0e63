"""The reply guard (pure): what of a reply may be spoken."""

from __future__ import annotations

import pytest

from orchestrator.speech.guard import ReplyGuard, complete, words

NOTE = "NOTE: They sound hesitant. This is an observation from voice cues and may be wrong."


@pytest.mark.parametrize(
    "clause",
    [
        "The user sounds hesitant.",
        "The caller is uncertain about the correct charge.",
        "The user's voice is not only animated but also read-only.",
        "The customer seems unsure,",
        "This is an observation from voice cues.",
        "Based on my perception,",
        "they sound hesitant. This is an observation from",  # a run copied from the note
    ],
)
def test_narration_is_not_spoken(clause: str) -> None:
    assert ReplyGuard(notes=[NOTE]).check(clause) == "narration"


@pytest.mark.parametrize(
    "clause",
    [
        "You sound a little unsure, and that's okay.",
        "Take your time.",
        "I'll put you through to the customer service team.",
        "Is the appointment for you or for someone else?",
        "I'll make a note of that.",
        "Your account number is 4471.",
    ],
)
def test_talking_to_the_user_is_fine(clause: str) -> None:
    assert ReplyGuard(notes=[NOTE]).check(clause) is None


@pytest.mark.parametrize(
    "clause",
    [
        "Here's an example: `for i in range(3)`",
        "```python",
        "* First, open the app.",
        "1. Open the app.",
        '{"a": 1}',
        "Great 😀",
        "You can connect it by following these steps: 1.",
        "Here is how: 1. Open the app.",
    ],
)
def test_markup_and_code_are_not_spoken(clause: str) -> None:
    assert ReplyGuard().check(clause) == "markup"


def test_a_sentence_said_before_is_not_said_again() -> None:
    g = ReplyGuard(said=["I can help with that. What is your account number?"])
    assert g.check("What is your account number?") == "repetition"
    said = ["I can help with that. What is your account number?"]
    assert ReplyGuard(said=said).check("what is your Account Number") == "repetition"  # case, punctuation
    assert g.check("Could you tell me your account number?") is None
    assert g.check("Could you tell me your account number?") == "repetition"  # nor within the reply
    assert g.check("Okay.") is None and g.check("Okay.") is None  # short acknowledgements may come back
    again = ReplyGuard(said=["You know, Jordan. Packing it the night before works."])
    assert again.check("You know, Jordan.") == "repetition"  # a short sentence said whole, split at its comma


def test_a_near_duplicate_is_a_repetition() -> None:
    g = ReplyGuard(said=["I see that you were charged twice this month for the same bill."])
    assert g.check("I see you were charged twice this month for the same bill.") == "repetition"
    assert g.check("You were charged twice, and I will open a dispute.") is None


def test_the_unfinished_end_of_a_reply_is_cut_once_something_complete_was_said() -> None:
    g = ReplyGuard()
    assert g.check("Sure, I can help.") is None
    assert g.finish("Could you tell me your") == "incomplete"
    lone = ReplyGuard()
    assert lone.finish("Sure") is None  # nothing else to say: better than silence
    assert ReplyGuard().finish("") is None


def test_words_and_sentence_ends() -> None:
    assert words("It's $3.50, Dr. Patel!") == ["it's", "3.50", "dr", "patel"]
    assert complete("Done.") and complete('He said "yes."') and complete("Really?") and not complete("and then")


@pytest.mark.parametrize(
    "clause",
    ["You sound hesitant.", "I know they might be a bit hesitant,", "you're hesitant, which is fine."],
)
def test_saying_the_notes_state_back_is_narration(clause: str) -> None:
    assert ReplyGuard(notes=[NOTE]).check(clause) == "narration"


@pytest.mark.parametrize(
    "clause", ["Are you hesitant about the date?", "Take your time, there is no rush.", "You may be right."]
)
def test_using_the_note_without_reciting_it_is_fine(clause: str) -> None:
    assert ReplyGuard(notes=[NOTE]).check(clause) is None


def test_a_clause_that_is_a_run_of_an_earlier_sentence_repeats_it_however_it_was_split() -> None:
    g = ReplyGuard(said=["Let me know if you have any questions about it."])
    assert g.check("If you have any questions,") == "repetition"  # split at a comma this time
    assert g.check("please call.") == "repetition"  # (the rest of the sentence it started)
    assert g.check("If you have a receipt,") is None
    assert g.check("I can check the charge on your account.") is None
    assert g.check("So I can check the charge on your account.") == "repetition"  # within the reply too
    # A stock opening shared with an earlier question is not a repetition of it.
    g = ReplyGuard(said=["Could you please provide more information about your sleep?"])
    assert g.check("Could you please provide more information about your wake-up time?") is None


HEARD = [
    "Hi. I'm calling about my bill. It looks like I was charged twice this month.",
    "My email is jo at example dot com.",
]


@pytest.mark.parametrize(
    "clause",
    [
        "Hi, I'm calling about my bill.",
        "It looks like I was charged twice this month.",
        "So I was charged twice this month,",
    ],
)
def test_the_replica_does_not_speak_as_the_user(clause: str) -> None:
    assert ReplyGuard(heard=HEARD).check(clause) == "echo"


@pytest.mark.parametrize(
    "clause",
    [
        "You were charged twice this month.",  # the user's words turned round: an answer, not an echo
        "I see you're calling about your bill.",
        "Your email is jo at example dot com.",  # a read-back of what they gave
        "jo at example dot com,",
        "I was charged too, once.",  # the replica's own "I" in a short run
        "I'm calling you back tomorrow about the bill and the refund we discussed.",  # a run of 3 in 13 words
    ],
)
def test_answering_with_the_users_words_is_not_an_echo(clause: str) -> None:
    assert ReplyGuard(heard=HEARD).check(clause) is None


def test_the_rest_of_a_sentence_whose_start_was_dropped_is_dropped_too() -> None:
    g = ReplyGuard(said=["You would need to contact the gym's customer service department."])
    assert g.check("You would need to contact the gym's customer service department") == "repetition"
    assert g.check("or support team to move to a new city next month.") == "repetition"  # a fragment without it
    assert g.check("Is there anything else?") is None  # the next sentence is judged on its own
    assert g.spoken == ["Is there anything else?"]


def test_a_clause_that_goes_on_a_spoken_start_is_judged_with_the_whole_sentence() -> None:
    heard = ["Should I take some cough syrup before I come in?"]
    g = ReplyGuard(heard=heard)
    assert g.check("Yes, you should take some cough syrup") is None
    assert g.check("before you come in.") is None  # the sentence is an answer, not the user's words
    g = ReplyGuard(heard=heard)
    assert g.check("Yes, I should take some cough syrup") is None
    assert g.check("before I come in.") is None  # 8 of its 11 words copied: under 85 %, its start stays whole
    g = ReplyGuard(heard=["It is for my left knee. It swells up every time I go running."])
    assert g.check("It swells up every time") is None  # no "I" in it yet
    assert g.check("I go running.") == "echo"  # the whole sentence is the user's
