"""The reply-quality suite's scorer and data (perf/bench_replies.py, perf/data/replies): each check does what
docs/replies.md says it does, and the splits are well formed and disjoint."""

from __future__ import annotations

from pathlib import Path

import pytest

import perf.bench_replies as br

ROOT = Path(__file__).resolve().parents[2]
NOTE = (
    "[perception] The user sounds hesitant; they may be unsure. "
    "This is an observation from voice cues and may be wrong."
)


def fails(text: str, turn: br.TurnSpec | None = None, notes: list[str] | None = None, earlier: list[str] | None = None):
    return br.score_reply(text, turn or br.TurnSpec("hi"), notes or [], earlier or []).failures


def test_key_terms_every_group_needs_one_term_at_a_word_start() -> None:
    turn = br.TurnSpec("q", expect=(("refund", "credit"), ("7", "seven")))
    assert fails("You'll be refunded for 7 days.", turn) == []
    assert fails("It will be credited; seven days.", turn) == []
    assert fails("A refund within 70 days.", turn) == ["missed_point"]  # a number ends where the term ends
    assert fails("Prefund seven.", turn) == ["missed_point"]  # at the start of a word only
    assert fails("", turn) == ["missed_point"]


def test_the_fact_and_forbidden_words() -> None:
    turn = br.TurnSpec("q", fact=("10:30", "ten thirty"), forbid=("mg",))
    score = br.score_reply("It's at ten thirty on Thursday.", turn, [], [])
    assert score.on_point and score.fact_used is True
    score = br.score_reply("Take 200 mg at ten thirty.", turn, [], [])
    assert score.failures == ["forbidden"]
    score = br.score_reply("It's on Thursday.", turn, [], [])
    assert score.failures == ["no_fact"] and score.fact_used is False
    assert br.score_reply("Fine.", br.TurnSpec("q"), [], []).fact_used is None


@pytest.mark.parametrize(
    "reply",
    [
        "The user sounds hesitant, so I will go slowly.",  # copies the note (and third person)
        "Based on my notes, you may be unsure.",
        "This is an observation from voice cues.",
        "You sound hesitant. Take your time.",  # the state the note names, said back
        "They may be unsure about the date.",  # four words of the note
    ],
)
def test_narration_of_the_note(reply: str) -> None:
    assert "narration" in fails(reply, notes=[NOTE])


@pytest.mark.parametrize(
    "reply",
    ["No rush, take your time.", "It's important to note that refunds take a week.", "Please stay calm and call 911."],
)
def test_using_a_note_without_narrating_it(reply: str) -> None:
    assert "narration" not in fails(reply, notes=[NOTE])


def test_third_person_talk_about_the_person_on_the_line() -> None:
    assert "third_person" in fails("The user wants a refund.")
    assert "third_person" in fails("I think the caller's account is fine.")
    assert "third_person" in fails("The patient has a cough.")
    assert "third_person" not in fails("You can use the patient portal.")
    assert "third_person" not in fails("Our customer service team will call.")


def test_repetition_within_a_reply_and_across_replies() -> None:
    earlier = ["Hi, I'm Sam. How can I help with your bill today?"]
    assert "repetition" in fails("Sure. How can I help with your bill today?", earlier=earlier)
    assert "repetition" in fails("I can open a dispute. I can open a dispute now.")  # near (Jaccard 0.8)
    assert "repetition" not in fails("Okay. Okay.")  # too short to count
    assert "repetition" not in fails("Refunds take five to seven business days.", earlier=earlier)


def test_incomplete_and_markup() -> None:
    assert "incomplete" in fails("Sure, I can help with that and")
    assert "incomplete" not in fails('He said "done."')
    for reply in (
        "Here is how:\n1. Open settings.",
        "Consider: 1.",
        "Use `print(x)`.",
        "**Great** idea.",
        "Great 😀.",
        "{ok}.",
    ):
        assert "markup" in fails(reply), reply
    assert "markup" not in fails("It's 42 Elm Street. Step 1 is done.")


def test_json_scoring() -> None:
    expect = {"name": "Dana Brooks", "amount": 86.4, "ok": True}
    good = '{"name": "dana brooks", "amount": 86.40, "ok": true}'
    assert br.score_json(good, expect) == {"valid": True, "fenced": True, "correct": True}
    assert br.score_json(f"```json\n{good}\n```", expect) == {"valid": False, "fenced": True, "correct": True}
    assert br.score_json('{"name": "Dana Brooks", "amount": "86.40", "ok": true}', expect)["correct"] is False
    assert br.score_json('{"name": "Dana Brooks", "amount": 86.4}', expect)["correct"] is False  # a key missing
    assert br.score_json("Sure! {}", expect) == {"valid": False, "fenced": False, "correct": False}
    assert br.value_matches("Aetna through work", "Aetna")
    assert not br.value_matches("3:00 PM", "15:00")
    assert not br.value_matches(1, True) and not br.value_matches(True, 1)


def test_cut_at_sentence_drops_the_start_of_a_stopped_sentence() -> None:
    assert br.cut_at_sentence("One. Two! Thr") == "One. Two!"
    assert br.cut_at_sentence("No end") == "No end"


@pytest.mark.parametrize("split", ["dev", "check"])
def test_the_splits_are_well_formed(split: str) -> None:
    calls, tasks = br.load_split(split)
    assert len(calls) >= 8 and len(tasks) >= 3
    personas = {p.stem for p in (ROOT / "personas").glob("*.yaml")}
    for call in calls:
        assert call.persona in personas, call.name
        assert 4 <= len(call.turns) <= 6, call.name
        assert all(t.expect and all(t.expect) for t in call.turns), call.name
    assert {c.persona for c in calls} >= {"clinic_intake", "billing", "coach", "onboarding"}
    assert sum(t.note is not None for c in calls for t in c.turns) >= 4
    assert sum(bool(t.fact) for c in calls for t in c.turns) >= 4


def test_check_shares_no_sentence_with_dev() -> None:
    dev, dev_tasks = br.load_split("dev")
    check, check_tasks = br.load_split("check")
    dev_lines = {t.user for c in dev for t in c.turns} | {t.user for t in dev_tasks}
    check_lines = {t.user for c in check for t in c.turns} | {t.user for t in check_tasks}
    assert not dev_lines & check_lines
    assert not {c.name for c in dev} & {c.name for c in check} - {"default_front_desk"}


@pytest.mark.parametrize(
    ("user", "reply"),
    [
        (
            "Good morning, I need to refill my blood pressure medication.",
            "You need to refill your blood pressure medication.",
        ),
        ("I'm moving to another city next month.", "You can move to another city next month. Where to?"),
        ("I have a question about my bill.", "You have a question about your bill? Sure."),
        (
            "Can I set up autopay so this doesn't happen again?",
            "Yes, you can set up autopay so this doesn't happen again.",
        ),
    ],
)
def test_a_reply_that_says_the_users_turn_back_is_restated(user: str, reply: str) -> None:
    assert "restated" in fails(reply, br.TurnSpec(user))


@pytest.mark.parametrize(
    ("user", "reply"),
    [
        ("I need to refill my blood pressure medication.", "Sure, which pharmacy should I send it to?"),
        ("I'm moving to another city next month.", "Congratulations! Would you like us to update your address?"),
        ("Can I pay my bill?", "Yes. You can pay it online or by phone."),  # short answers share few words
        ("Thanks.", "You're welcome."),
        ("How many more people can I add on my plan?", "You can add up to 10 more people on your plan."),
    ],
)
def test_a_reply_that_answers_is_not_restated(user: str, reply: str) -> None:
    assert "restated" not in fails(reply, br.TurnSpec(user))


def test_a_saved_run_is_scored_again_through_todays_splitter_and_guard() -> None:
    from orchestrator.config import TtsSettings

    call = br.CallSpec(
        "c", "billing", "", (br.TurnSpec("I was charged twice this month.", expect=(("refund", "dispute"),)),)
    )
    raw = ["I was charged twice this month.", "I can open a dispute for the second charge."]
    runs = [{"turns": [{"call": "c", "index": 0, "user": call.turns[0].user, "note": "", "raw": r}]} for r in raw]
    score = br.rescore(runs, [call], TtsSettings())
    # the first reply is the user's own words: asked again instead; the second answers
    assert score == {"turns": 2, "on_point": 1, "fallbacks": 1, "dropped": {"echo": 1}}
