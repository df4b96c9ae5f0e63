"""The reply state machine on virtual time: scripted floor events, transcripts and reply progress."""

from __future__ import annotations

import random

import pytest

from orchestrator.config import FloorSettings
from orchestrator.turns.floor import Evaluate, FloorMachine
from orchestrator.turns.replies import (
    Action,
    CancelReply,
    CommitReplicaTurn,
    CommitUserTurn,
    PausePlayback,
    Phase,
    ReleaseReply,
    ReplyMachine,
    ResumePlayback,
    Snapshot,
    StartReply,
    StopPlayback,
    acknowledges,
    normalise,
    too_fast,
)

REASONS = {
    "user_continued",
    "stale_transcript",
    "acknowledgement",
    "context_changed",
    "barge_in",
    "superseded",
    "failed",
    "ended",
}


def only(actions: list[Action], kind: type) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


def phase(m: ReplyMachine) -> Phase:
    return m.phase  # (a call, so mypy does not keep a narrowed property across the machine's inputs)


def speculate(m: ReplyMachine, text: str = "what time is it", t: float = 1.0) -> StartReply:
    m.on_transcript(text, True, t)
    (start,) = m.on_floor("eot_tentative", t)
    assert isinstance(start, StartReply)
    return start


def answered(m: ReplyMachine, text: str = "what time is it", t: float = 1.0) -> int:
    """A committed user turn whose (speculative) reply has been released; returns the reply id."""
    start = speculate(m, text, t)
    m.on_reply_audio(start.reply_id, t + 0.2)
    acts = m.on_floor("eot_commit", t + 0.3)
    assert ReleaseReply(start.reply_id, t + 0.3) in acts
    return start.reply_id


# ---- normalisation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What time is it?", "what time is it"),
        ("  what time is it.  ", "What time is it"),
        ("Hello, world!", "hello world"),
        ("¿Qué hora es?", "qué hora es"),
        ("well... okay", "Well okay."),
    ],
)
def test_normalise_ignores_case_spacing_and_punctuation(a: str, b: str) -> None:
    assert normalise(a) == normalise(b)
    assert Snapshot(0, a, 0) == Snapshot(0, b, 0)


@pytest.mark.parametrize(
    ("a", "b"), [("what time is it", "what time was it"), ("it's 3.5", "its 35"), ("book a table", "book a")]
)
def test_normalise_keeps_word_changes(a: str, b: str) -> None:
    assert normalise(a) != normalise(b)
    assert Snapshot(0, a, 0) != Snapshot(0, b, 0)


def test_snapshot_differs_by_turn_and_context() -> None:
    assert Snapshot(0, "hi", 0) != Snapshot(1, "hi", 0)
    assert Snapshot(0, "hi", 0) != Snapshot(0, "hi", 1)
    assert Snapshot(0, "Hi.", 0).transcript == "Hi."  # the reply is built from the text as recognised


# ---- speculation ---------------------------------------------------------------------------------------------


def test_tentative_starts_speculative_reply_once() -> None:
    m = ReplyMachine()
    start = speculate(m)
    assert start == StartReply(1, Snapshot(0, "what time is it", 0), True, 1.0)
    assert m.phase is Phase.SPECULATING and m.active_reply == 1
    assert m.on_floor("eot_tentative", 1.1) == []  # same snapshot: nothing new
    assert m.on_transcript("What time is it?", True, 1.2) == []  # a re-decode differing only in form
    assert m.replies_started == 1


def test_tentative_without_transcript_waits_for_one() -> None:
    m = ReplyMachine()
    assert m.on_floor("eot_tentative", 1.0) == []
    (start,) = m.on_transcript("book a table", True, 1.1)
    assert isinstance(start, StartReply) and start.speculative and start.t == 1.1


def test_word_change_restarts_speculation_while_tentative() -> None:
    m = ReplyMachine()
    first = speculate(m, "book a table")
    acts = m.on_transcript("book a table for two", True, 1.2)
    assert acts[0] == CancelReply(first.reply_id, "stale_transcript", 1.2)
    assert isinstance(acts[1], StartReply) and acts[1].snapshot.transcript == "book a table for two"
    assert acts[1].reply_id > first.reply_id


def test_word_change_after_eot_cancel_does_not_restart() -> None:
    m = ReplyMachine()
    first = speculate(m)
    assert m.on_floor("eot_cancel", 1.1) == [CancelReply(first.reply_id, "user_continued", 1.1)]
    assert m.on_transcript("what time is it in Paris", False, 1.2) == []
    assert m.phase is Phase.LISTENING and m.wasted == 1


def test_context_change_restarts_speculation() -> None:
    m = ReplyMachine()
    first = speculate(m)
    acts = m.on_context_changed(1.2)
    assert acts[0] == CancelReply(first.reply_id, "context_changed", 1.2)
    assert isinstance(acts[1], StartReply) and acts[1].snapshot.context_version == 1


def test_context_change_with_nothing_pending_only_bumps_the_version() -> None:
    m = ReplyMachine()
    assert m.on_context_changed(0.5) == [] and m.snapshot.context_version == 1
    assert speculate(m).snapshot.context_version == 1  # the next reply is built on the new context


def test_context_change_after_eot_cancel_does_not_restart_speculation() -> None:
    m = ReplyMachine()
    first = speculate(m)
    m.on_floor("eot_cancel", 1.1)
    assert m.on_context_changed(1.2) == [] and m.phase is Phase.LISTENING
    assert m.cancelled == 1 and first.reply_id == 1


def test_context_change_leaves_the_reply_being_heard_alone() -> None:
    m = ReplyMachine()
    rid = answered(m)
    assert m.on_context_changed(2.0) == []  # already on the timeline: the user is hearing it
    assert m.phase is Phase.SPEAKING and m.playing_reply == rid
    m.on_reply_done(rid, "It is noon.", 2.1)
    assert m.on_playback_end(rid, 2.5) == [CommitReplicaTurn(rid, "It is noon.", False, 2.5)]
    assert speculate(m, "and tomorrow", 3.0).snapshot == Snapshot(1, "and tomorrow", 1)


@pytest.mark.parametrize("event", ["eot_cancel", "speech_start"])
def test_user_continuing_cancels_even_after_first_audio(event: str) -> None:
    m = ReplyMachine()
    start = speculate(m)
    assert m.on_reply_audio(start.reply_id, 1.1) == []  # buffered, not released: not committed
    assert m.on_floor(event, 1.2) == [CancelReply(start.reply_id, "user_continued", 1.2)]
    # Late news about the cancelled reply is ignored.
    assert m.on_reply_audio(start.reply_id, 1.3) == []
    assert m.on_reply_done(start.reply_id, "It is noon.", 1.4) == []
    assert m.on_reply_failed(start.reply_id, "cancelled", 1.4) == []
    assert m.replies_released == 0 and m.phase is Phase.LISTENING


# ---- commit --------------------------------------------------------------------------------------------------


def test_commit_releases_matching_speculation_at_once() -> None:
    m = ReplyMachine()
    start = speculate(m, "what time is it")
    m.on_reply_audio(start.reply_id, 1.1)
    m.on_transcript("What time is it?", True, 1.15)  # the final decode, same words
    acts = m.on_floor("eot_commit", 1.3)
    assert acts == [CommitUserTurn(0, "What time is it?", 1.3), ReleaseReply(start.reply_id, 1.3)]
    assert m.phase is Phase.SPEAKING and m.playing_reply == start.reply_id
    assert (m.replies_released, m.released_from_speculation, m.wasted) == (1, 1, 0)


def test_commit_while_speculation_still_generating_releases_on_first_audio() -> None:
    m = ReplyMachine()
    start = speculate(m)
    assert m.on_floor("eot_commit", 1.3) == [CommitUserTurn(0, "what time is it", 1.3)]
    assert m.phase is Phase.RESPONDING
    assert m.on_reply_audio(start.reply_id, 1.9) == [ReleaseReply(start.reply_id, 1.9)]


def test_commit_uses_the_latest_speculation_after_changes() -> None:
    m = ReplyMachine()
    speculate(m, "book a table")  # reply 1
    m.on_floor("eot_cancel", 1.1)
    assert m.on_transcript("book a table for two", True, 1.5) == []  # not tentative: nothing starts
    m.on_floor("eot_tentative", 1.6)  # reply 2, on the new text
    m.on_context_changed(1.7)  # reply 3, on the new context
    assert m.on_floor("eot_commit", 1.8) == [CommitUserTurn(0, "book a table for two", 1.8)]
    assert m.on_reply_audio(2, 2.0) == []
    assert m.on_reply_audio(3, 2.0) == [ReleaseReply(3, 2.0)]
    assert (m.replies_started, m.wasted) == (3, 2)


def test_commit_after_a_stale_speculation_starts_a_fresh_reply() -> None:
    m = ReplyMachine()
    first = speculate(m, "book a table")
    m.on_floor("eot_cancel", 1.1)
    m.on_transcript("book a table for two", True, 1.2)
    acts = m.on_floor("eot_commit", 1.3)
    assert acts[0] == CommitUserTurn(0, "book a table for two", 1.3)
    assert acts[1] == StartReply(first.reply_id + 1, Snapshot(0, "book a table for two", 0), False, 1.3)


def test_commit_of_noise_writes_nothing() -> None:
    m = ReplyMachine()
    assert m.on_floor("speech_start", 0.5) == []
    assert m.on_floor("eot_tentative", 1.0) == []
    assert m.on_transcript("  ", True, 1.05) == []
    assert m.on_floor("eot_commit", 1.1) == []
    assert m.on_transcript("...", True, 1.2) == []
    assert m.on_floor("eot_commit", 1.3) == []  # punctuation only is no words either
    assert m.replies_started == 0


def test_turn_index_counts_committed_user_turns() -> None:
    m = ReplyMachine()
    rid = answered(m, "hello", 1.0)
    m.on_reply_done(rid, "Hi there.", 1.5)
    m.on_playback_end(rid, 2.5)
    m.on_floor("eot_commit", 2.7)  # noise: not a turn
    start = speculate(m, "how are you", 3.0)
    assert start.snapshot.turn == 1
    acts = m.on_floor("eot_commit", 3.2)
    assert CommitUserTurn(1, "how are you", 3.2) in acts


def test_speculation_off_starts_only_at_commit() -> None:
    m = ReplyMachine(speculation=False)
    m.on_transcript("what time is it", False, 0.9)
    assert m.on_floor("eot_tentative", 1.0) == []
    assert m.on_transcript("what time is it now", True, 1.1) == []
    acts = m.on_floor("eot_commit", 1.2)
    assert acts[0] == CommitUserTurn(0, "what time is it now", 1.2)
    assert acts[1] == StartReply(1, Snapshot(0, "what time is it now", 0), False, 1.2)
    assert m.on_reply_audio(1, 2.0) == [ReleaseReply(1, 2.0)]
    assert m.released_from_speculation == 0


# ---- speech after the commit, before the release ----------------------------------------------------------


def test_noise_after_commit_holds_release_until_it_settles() -> None:
    m = ReplyMachine(speculation=False)
    m.on_transcript("what time is it", True, 1.0)
    m.on_floor("eot_commit", 1.1)
    assert m.on_floor("speech_start", 1.3) == []  # a cough: not yet known
    assert m.on_reply_audio(1, 1.5) == []  # held while the user makes sound
    assert m.on_floor("eot_tentative", 1.8) == []
    assert m.on_floor("eot_commit", 1.9) == [ReleaseReply(1, 1.9)]  # empty transcript: noise


def test_words_after_commit_cancel_held_reply_and_answer_new_turn() -> None:
    m = ReplyMachine()
    m.on_transcript("book a table", True, 1.0)
    m.on_floor("eot_commit", 1.1)
    m.on_floor("speech_start", 1.3)
    assert m.on_transcript("for two people", False, 1.6) == [CancelReply(1, "user_continued", 1.6)]
    (spec,) = m.on_floor("eot_tentative", 2.0)
    assert isinstance(spec, StartReply) and spec.snapshot == Snapshot(1, "for two people", 0)
    m.on_reply_audio(spec.reply_id, 2.1)
    acts = m.on_floor("eot_commit", 2.2)
    assert acts == [CommitUserTurn(1, "for two people", 2.2), ReleaseReply(spec.reply_id, 2.2)]


def test_context_change_after_commit_rebuilds_reply_for_same_turn() -> None:
    m = ReplyMachine()
    start = speculate(m)
    m.on_floor("eot_commit", 1.2)
    acts = m.on_context_changed(1.3)
    assert acts[0] == CancelReply(start.reply_id, "context_changed", 1.3)
    assert acts[1] == StartReply(start.reply_id + 1, Snapshot(0, "what time is it", 1), False, 1.3)
    assert m.on_reply_audio(start.reply_id, 1.4) == []
    assert m.on_reply_audio(start.reply_id + 1, 1.6) == [ReleaseReply(start.reply_id + 1, 1.6)]


def test_reply_without_audio_is_released_when_done() -> None:
    m = ReplyMachine(speculation=False)
    m.on_transcript("hm", True, 1.0)
    m.on_floor("eot_commit", 1.1)
    assert m.on_reply_done(1, "", 1.5) == [ReleaseReply(1, 1.5)]
    assert m.on_playback_end(1, 1.5) == [CommitReplicaTurn(1, "", False, 1.5)]


def played_out(m: ReplyMachine, said: str, t: float = 3.0) -> int:
    """A user turn answered with `said`, heard to its end at `t`; returns the reply id."""
    rid = answered(m)
    m.on_reply_done(rid, said, t - 0.5)
    assert m.on_playback_end(rid, t) == [CommitReplicaTurn(rid, said, False, t)]
    return rid


@pytest.mark.parametrize("text", ["Right.", "Mm-hm.", "Mhm", "I see.", "Oh, right.", "uh huh", "Right, right."])
def test_an_acknowledgement_of_what_the_replica_said_is_not_a_turn(text: str) -> None:
    m = ReplyMachine()
    played_out(m, "You're welcome!")
    assert m.on_floor("speech_start", 3.9) == []
    start = speculate(m, text, 4.4)
    assert m.on_floor("eot_commit", 4.9) == [CancelReply(start.reply_id, "acknowledgement", 4.9)]
    assert m.phase is Phase.LISTENING
    assert m.snapshot.turn == 1  # no user turn was written
    start = speculate(m, "And one more thing about my bill", 9.0)  # the next real turn is answered as usual
    assert start.snapshot.turn == 1


def test_the_same_words_answer_a_question_or_come_too_late_and_are_answered() -> None:
    asked = ReplyMachine()
    played_out(asked, "Is that the right address?")
    asked.on_floor("speech_start", 3.5)
    asked.on_transcript("Right.", True, 4.0)
    assert only(asked.on_floor("eot_commit", 4.4), CommitUserTurn) == [CommitUserTurn(1, "Right.", 4.4)]
    late = ReplyMachine()
    played_out(late, "Your appointment is on Friday.")
    late.on_floor("speech_start", 5.0)  # two seconds after the replica finished: a turn of its own
    late.on_transcript("Right.", True, 5.5)
    assert only(late.on_floor("eot_commit", 5.9), CommitUserTurn) == [CommitUserTurn(1, "Right.", 5.9)]


def test_words_that_accept_an_offer_or_say_more_are_answered() -> None:
    for text in ("Okay.", "Sure.", "Yeah.", "Yes.", "No.", "Thanks.", "Right, and my card was charged twice."):
        m = ReplyMachine()
        played_out(m, "I can send you a reminder.")
        m.on_floor("speech_start", 3.4)
        m.on_transcript(text, True, 3.9)
        assert only(m.on_floor("eot_commit", 4.2), CommitUserTurn) == [CommitUserTurn(1, text, 4.2)], text


def test_a_short_sound_heard_as_too_many_words_after_a_statement_is_not_a_turn() -> None:
    """Whisper's words for an "Mm-hm" of 0.56 s: "and that may turn." (7 words/s)."""
    m = ReplyMachine()
    played_out(m, "You have a good day.", t=25.06)
    m.on_floor("speech_start", 25.6)
    m.on_floor("speech_end", 26.16)
    start = speculate(m, "and that may turn.", 26.3)
    assert m.on_floor("eot_commit", 26.64) == [CancelReply(start.reply_id, "acknowledgement", 26.64)]
    assert m.snapshot.turn == 1


def test_the_same_words_at_a_speaking_pace_are_a_turn() -> None:
    m = ReplyMachine()
    played_out(m, "You have a good day.", t=25.06)
    m.on_floor("speech_start", 25.6)
    m.on_floor("speech_end", 26.9)  # 1.3 s: 3 words/s
    m.on_transcript("And you, take care.", True, 27.0)
    assert only(m.on_floor("eot_commit", 27.3), CommitUserTurn) == [CommitUserTurn(1, "And you, take care.", 27.3)]


def test_too_fast_needs_four_words_and_a_known_span() -> None:
    assert too_fast("and that may turn", 25.6, 26.16)
    assert not too_fast("and that may turn", 25.6, 27.0)
    assert not too_fast("yes that works", 25.6, 25.9)  # three words: a quick answer can be that fast
    assert not too_fast("and that may turn", 25.6, None) and not too_fast("and that may turn", 25.6, 25.5)


def test_acknowledges_whole_transcripts_only() -> None:
    assert acknowledges("right") and acknowledges("all right") is False and acknowledges("mm-hm mm-hm")
    assert not acknowledges("") and not acknowledges("right now") and not acknowledges("oh i see what you mean")


# ---- playback and interruptions ----------------------------------------------------------------------------


def test_backchannel_pauses_then_resumes_and_full_text_is_committed() -> None:
    m = ReplyMachine()
    rid = answered(m)
    assert m.on_floor("speech_start", 2.0) == [PausePlayback(rid, 2.0)]
    assert m.phase is Phase.PAUSED
    assert m.on_floor("speech_end", 2.2) == []
    assert m.on_floor("backchannel", 2.2) == []  # resumes once the user has stayed quiet a moment
    assert m.tick(2.4) == [] and m.phase is Phase.PAUSED
    assert m.on_reply_done(rid, "It is noon.", 2.45) == []
    assert m.tick(2.5) == [ResumePlayback(rid, 2.5)] and m.phase is Phase.SPEAKING
    assert m.tick(2.6) == []
    assert m.on_playback_end(rid, 3.0) == [CommitReplicaTurn(rid, "It is noon.", False, 3.0)]
    assert m.on_playback_end(rid, 3.1) == []  # once only
    assert phase(m) is Phase.LISTENING


def test_speech_before_the_resume_keeps_the_replica_paused() -> None:
    m = ReplyMachine()
    rid = answered(m)
    assert m.on_floor("speech_start", 2.0) == [PausePlayback(rid, 2.0)]
    assert m.on_floor("backchannel", 2.2) == []
    assert m.on_floor("speech_start", 2.4) == []  # "Sorry, | actually...": no second pause, and no resume
    assert m.tick(2.6) == [] and m.tick(5.0) == [] and m.phase is Phase.PAUSED
    assert m.on_floor("backchannel", 5.1) == []  # it was a backchannel after all
    assert m.tick(5.4) == [ResumePlayback(rid, 5.4)]


def test_a_stop_during_the_resume_delay_cancels_the_resume() -> None:
    m = ReplyMachine()
    rid = answered(m)
    m.on_reply_done(rid, "It is noon.", 1.5)
    m.on_floor("speech_start", 2.0)
    m.on_floor("backchannel", 2.2)
    assert m.on_floor("barge_in", 2.3) == [StopPlayback(rid, 2.3)]
    assert m.tick(3.0) == []


def test_barge_in_while_generating_cancels_and_stops_then_new_turn() -> None:
    m = ReplyMachine()
    rid = answered(m)
    m.on_floor("speech_start", 2.0)
    acts = m.on_floor("barge_in", 2.3)
    assert acts == [CancelReply(rid, "barge_in", 2.3), StopPlayback(rid, 2.3)]  # cancel first, see module doc
    assert m.on_reply_done(rid, "It is noon and", 2.35) == []  # a late answer about the stopped reply
    assert m.on_playback_stopped(rid, "It is", 2.3) == [CommitReplicaTurn(rid, "It is", True, 2.3)]
    assert m.on_playback_stopped(rid, "It is", 2.3) == []
    assert m.on_floor("backchannel", 2.9) == []  # nothing to resume
    new = speculate(m, "no wait, what day is it", 3.0)
    assert new.snapshot.turn == 1
    m.on_reply_audio(new.reply_id, 3.2)
    assert ReleaseReply(new.reply_id, 3.3) in m.on_floor("eot_commit", 3.3)
    assert m.replies_released == 2 and m.cancelled == 1 and m.wasted == 0


def test_barge_in_after_generation_done_only_stops() -> None:
    m = ReplyMachine()
    rid = answered(m)
    m.on_reply_done(rid, "It is noon.", 1.5)
    assert m.on_floor("barge_in", 2.0) == [StopPlayback(rid, 2.0)]


def test_commit_of_words_while_playing_stops_first() -> None:
    m = ReplyMachine()
    rid = answered(m)
    m.on_reply_done(rid, "It is noon.", 1.5)
    m.on_floor("speech_start", 2.0)
    m.on_transcript("thanks bye", True, 2.4)
    acts = m.on_floor("eot_commit", 2.5)
    assert acts[:2] == [StopPlayback(rid, 2.5), CommitUserTurn(1, "thanks bye", 2.5)]
    assert isinstance(acts[2], StartReply) and not acts[2].speculative
    assert m.on_reply_audio(acts[2].reply_id, 2.6) == [ReleaseReply(acts[2].reply_id, 2.6)]  # old one is off
    assert m.on_playback_stopped(rid, "It is", 2.5) == [CommitReplicaTurn(rid, "It is", True, 2.5)]


def test_commit_of_noise_while_paused_resumes() -> None:
    m = ReplyMachine()
    rid = answered(m)
    m.on_floor("speech_start", 2.0)
    assert m.on_floor("eot_commit", 2.5) == []
    assert m.tick(2.8) == [ResumePlayback(rid, 2.8)]


def test_reentrant_stop_keeps_history_in_order() -> None:
    """The session answers StopPlayback with on_playback_stopped while executing it (as conversation.py does)."""
    m = ReplyMachine()
    rid = answered(m)
    m.on_transcript("stop please", True, 2.0)
    history: list[Action] = []

    def execute(actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, StopPlayback):
                execute(m.on_playback_stopped(a.reply_id, "It", a.t))
            if isinstance(a, CommitUserTurn | CommitReplicaTurn):
                history.append(a)

    execute(m.on_floor("eot_commit", 2.1))
    assert history == [CommitReplicaTurn(rid, "It", True, 2.1), CommitUserTurn(1, "stop please", 2.1)]


# ---- failures and the end -----------------------------------------------------------------------------------


def test_failed_speculation_is_not_retried_until_commit() -> None:
    m = ReplyMachine()
    start = speculate(m)
    assert m.on_reply_failed(start.reply_id, "llm down", 1.1) == [CancelReply(start.reply_id, "failed", 1.1)]
    assert m.on_transcript("What time is it?", True, 1.2) == []  # same snapshot: no loop
    assert m.on_floor("eot_tentative", 1.3) == []
    acts = m.on_floor("eot_commit", 1.4)
    assert isinstance(acts[1], StartReply) and not acts[1].speculative  # one ordinary attempt
    assert m.on_reply_failed(acts[1].reply_id, "llm down", 1.6) == [CancelReply(acts[1].reply_id, "failed", 1.6)]
    assert m.phase is Phase.LISTENING and m.wasted == 2


def test_failure_while_playing_stops_and_commits_what_was_heard() -> None:
    m = ReplyMachine()
    rid = answered(m)
    assert m.on_reply_failed(rid, "tts crashed", 2.0) == [StopPlayback(rid, 2.0)]
    assert m.on_playback_stopped(rid, "It is", 2.0) == [CommitReplicaTurn(rid, "It is", True, 2.0)]


def test_finish_cancels_unreleased_and_lets_playing_reply_end() -> None:
    m = ReplyMachine()
    rid = answered(m)
    m.on_floor("speech_start", 2.0)
    m.on_transcript("and", False, 2.1)
    spec = speculate(m, "and tomorrow", 2.2)
    acts = m.finish(2.5)
    assert acts == [CancelReply(spec.reply_id, "ended", 2.5)]  # and the paused reply is paused no more
    assert m.on_floor("eot_commit", 2.6) == [] and m.on_transcript("x", True, 2.6) == []
    assert m.phase is Phase.SPEAKING
    m.on_reply_done(rid, "It is noon.", 2.7)
    assert m.on_playback_end(rid, 3.0) == [CommitReplicaTurn(rid, "It is noon.", False, 3.0)]
    assert phase(m) is Phase.ENDED and m.finish(3.1) == []


def test_when_the_user_left_finish_stops_the_playing_reply_too() -> None:
    m = ReplyMachine()
    rid = answered(m)
    m.on_floor("speech_start", 2.0)
    spec = speculate(m, "and tomorrow", 2.2)
    acts = m.finish(2.5, left=True)  # a hang-up: nobody would hear the rest
    assert acts == [CancelReply(rid, "ended", 2.5), StopPlayback(rid, 2.5), CancelReply(spec.reply_id, "ended", 2.5)]
    assert m.on_playback_stopped(rid, "It is", 2.5) == [CommitReplicaTurn(rid, "It is", True, 2.5)]
    assert phase(m) is Phase.ENDED and m.finish(2.6, left=True) == []


def test_a_greeting_is_released_at_its_first_audio_and_is_the_first_replica_turn() -> None:
    m = ReplyMachine()
    [start] = m.greet("Hi, I'm Ava.", 0.0)
    assert start == StartReply(1, Snapshot(0, "", 0), False, 0.0, script="Hi, I'm Ava.")
    assert m.greet("again", 0.1) == []  # one at a time
    assert m.on_reply_audio(1, 0.3) == [ReleaseReply(1, 0.3)]
    m.on_reply_done(1, "Hi, I'm Ava.", 0.5)
    assert m.on_playback_end(1, 1.8) == [CommitReplicaTurn(1, "Hi, I'm Ava.", False, 1.8)]
    assert speculate(m).snapshot.turn == 0  # the greeting is not a user turn


def test_a_greeting_is_interruptible_and_the_user_speaking_first_wins() -> None:
    m = ReplyMachine()
    m.greet("Hi, I'm Ava. How can I help?", 0.0)
    m.on_reply_audio(1, 0.2)
    assert m.on_floor("speech_start", 0.8) == [PausePlayback(1, 0.8)]
    assert m.on_floor("barge_in", 1.4) == [CancelReply(1, "barge_in", 1.4), StopPlayback(1, 1.4)]
    early = ReplyMachine()
    early.greet("Hi, I'm Ava.", 0.0)
    early.on_floor("speech_start", 0.1)  # before the greeting's audio: it waits
    assert early.on_reply_audio(1, 0.2) == []
    assert early.on_transcript("hello I need help", False, 0.6) == [CancelReply(1, "user_continued", 0.6)]
    assert early.on_context_changed(0.7) == []  # (and a context change never rebuilds a greeting)


def test_unknown_ids_are_ignored() -> None:
    m = ReplyMachine()
    for call in (m.on_reply_audio, m.on_playback_end):
        assert call(42, 1.0) == []
    assert m.on_reply_done(42, "x", 1.0) == [] and m.on_reply_failed(42, "x", 1.0) == []
    assert m.on_playback_stopped(42, "x", 1.0) == [] and m.on_floor("speech_end", 1.0) == []
    assert m.on_floor("no_such_event", 1.0) == []


# ---- randomised sequences -----------------------------------------------------------------------------------

TEXTS = ["", "what time is it", "What time is it?", " what time is it. ", "what time was it", "book a table", "um"]
FLOOR = ["speech_start", "speech_end", "eot_tentative", "eot_cancel", "eot_commit", "backchannel", "barge_in"]


class Session:
    """A model of the orchestrator executing the actions, checking every invariant as they come."""

    def __init__(self, rng: random.Random, speculation: bool, reentrant: bool) -> None:
        self.m = ReplyMachine(speculation)
        self.rng, self.reentrant = rng, reentrant
        self.t, self.ctx, self.input, self.ended = 0.0, 0, "", False
        self.started: dict[int, StartReply] = {}
        self.generating: set[int] = set()
        self.done: dict[int, str] = {}
        self.released: list[int] = []
        self.cancelled: dict[int, CancelReply] = {}
        self.cancelled_after_release: set[int] = set()
        self.playing: int | None = None
        self.paused = False
        self.stopping: set[int] = set()
        self.replica_turns: dict[int, CommitReplicaTurn] = {}
        self.user_turns: list[CommitUserTurn] = []
        self.released_turns: set[int] = set()

    def feed(self, name: str, actions: list[Action]) -> None:
        for a in actions:
            self.input = name
            self.apply(a)

    def apply(self, a: Action) -> None:
        assert a.t == self.t  # actions happen at the time of the input that caused them
        if isinstance(a, StartReply):
            assert not self.ended and a.snapshot.key
            assert a.reply_id > max(self.started, default=0)  # ids strictly increase
            committed = a.snapshot.turn < len(self.user_turns)  # for a turn already in the history
            assert a.speculative != committed and a.snapshot.turn == len(self.user_turns) - committed
            assert self.input in (("eot_commit", "ctx") if committed else ("eot_tentative", "text", "ctx"))
            assert self.m.speculation or not a.speculative
            self.started[a.reply_id] = a
            self.generating.add(a.reply_id)
        elif isinstance(a, CancelReply):
            assert a.reply_id in self.started and a.reply_id not in self.cancelled and a.reason in REASONS
            if a.reply_id in self.released:  # only a released reply still generating, at a stop
                assert a.reason == "barge_in" and a.reply_id in self.generating
                self.cancelled_after_release.add(a.reply_id)
            self.cancelled[a.reply_id] = a
            self.generating.discard(a.reply_id)
        elif isinstance(a, ReleaseReply):
            rid = a.reply_id
            assert rid in self.started and rid not in self.released and rid not in self.cancelled
            assert self.playing is None  # never two replies released at once
            snap = self.started[rid].snapshot
            turn = len(self.user_turns) - 1
            assert snap == Snapshot(turn, self.user_turns[turn].text, self.ctx)  # valid at release
            assert turn not in self.released_turns  # one reply per committed user turn
            self.released_turns.add(turn)
            self.released.append(rid)
            self.playing, self.paused = rid, False
        elif isinstance(a, PausePlayback):
            assert a.reply_id == self.playing and not self.paused
            self.paused = True
        elif isinstance(a, ResumePlayback):
            assert a.reply_id == self.playing and self.paused
            self.paused = False
        elif isinstance(a, StopPlayback):
            assert a.reply_id == self.playing
            self.playing = None
            self.stopping.add(a.reply_id)
            if self.reentrant:
                self.stopped(a.reply_id)
        elif isinstance(a, CommitUserTurn):
            assert self.input == "eot_commit" and a.turn == len(self.user_turns) and normalise(a.text)
            if self.reentrant:  # the interrupted or finished reply's turn is already written
                assert all(r in self.replica_turns for r in self.released)
            self.user_turns.append(a)
        else:
            assert isinstance(a, CommitReplicaTurn)
            assert a.reply_id in self.released and a.reply_id not in self.replica_turns
            if not a.interrupted:
                assert a.text == self.done[a.reply_id]
            self.replica_turns[a.reply_id] = a

    def stopped(self, rid: int) -> None:
        self.stopping.discard(rid)
        self.feed("stopped", self.m.on_playback_stopped(rid, "heard", self.t))

    def step(self) -> None:
        rng, m = self.rng, self.m
        self.t = round(self.t + rng.choice([0.0, 0.02, 0.1, 0.4]), 3)
        ids = [*self.started, max(self.started, default=0) + 7]  # known, stale and unknown ids
        kinds = ["floor", "text", "ctx", "audio", "done", "fail", "end", "stop", "tick"]
        kind = rng.choices(kinds, [8, 5, 1, 4, 3, 1, 3, 2, 4])[0]
        if kind == "tick":  # the session clock moves on (a resume may be due)
            self.feed("tick", m.tick(self.t))
        elif kind == "floor":
            event = rng.choice(FLOOR)
            self.feed(event, m.on_floor(event, self.t))
        elif kind == "text":
            self.feed("text", m.on_transcript(rng.choice(TEXTS), rng.random() < 0.5, self.t))
        elif kind == "ctx":
            self.ctx += 0 if self.ended else 1
            self.feed("ctx", m.on_context_changed(self.t))
        elif kind == "audio":
            rid = rng.choice(ids)
            self.feed("audio", m.on_reply_audio(rid, self.t))
        elif kind in ("done", "fail"):
            live = sorted(self.generating)
            rid = rng.choice(live) if live and rng.random() < 0.8 else rng.choice(ids)
            if kind == "done":
                if rid in self.generating:
                    self.generating.discard(rid)
                    self.done[rid] = f"reply {rid}"
                self.feed("done", m.on_reply_done(rid, f"reply {rid}", self.t))
            else:
                self.generating.discard(rid)
                self.feed("fail", m.on_reply_failed(rid, "boom", self.t))
        elif kind == "end":
            if self.playing is not None and self.playing in self.done and not self.paused:
                rid, self.playing = self.playing, None
            else:
                rid = rng.choice([i for i in ids if i != self.playing])
            self.feed("end", m.on_playback_end(rid, self.t))
        elif self.stopping:
            self.stopped(rng.choice(sorted(self.stopping)))
        elif self.playing is not None and rng.random() < 0.2:  # the session stops it on its own
            rid, self.playing = self.playing, None
            self.feed("stopped", m.on_playback_stopped(rid, "heard", self.t))

    def finish(self) -> None:
        self.t += 1.0
        self.feed("finish", self.m.finish(self.t))
        self.ended = True
        self.paused = False  # the session sends the rest of a paused reply (see ReplyMachine.finish)
        assert self.m.on_floor("eot_commit", self.t) == [] and self.m.on_context_changed(self.t) == []
        for rid in sorted(self.stopping):
            self.stopped(rid)
        if self.playing is not None:
            rid = self.playing
            assert not self.paused
            if rid not in self.done:
                self.generating.discard(rid)
                self.done[rid] = f"reply {rid}"
                self.feed("done", self.m.on_reply_done(rid, self.done[rid], self.t))
            self.playing = None
            self.feed("end", self.m.on_playback_end(rid, self.t))

    def check_end(self) -> None:
        m = self.m
        for rid in self.started:  # every start ends in exactly one of release or cancel-before-release
            assert (rid in self.released) != (rid in self.cancelled and rid not in self.cancelled_after_release)
        assert set(self.replica_turns) == set(self.released)  # one replica turn per released reply
        assert not self.generating  # nothing left generating that nobody will hear (cancelled end to end)
        assert m.phase is Phase.ENDED and m.active_reply is None
        assert m.replies_started == len(self.started) and m.replies_released == len(self.released)
        assert m.cancelled == len(self.cancelled)
        assert m.wasted == len(self.started) - len(self.released)
        assert m.released_from_speculation == sum(self.started[r].speculative for r in self.released)


@pytest.mark.parametrize("block", range(8))
def test_random_sequences_keep_invariants(block: int) -> None:
    totals = {"released": 0, "speculative": 0, "interrupted": 0}
    for seed in range(block * 500, (block + 1) * 500):
        rng = random.Random(seed)
        s = Session(rng, speculation=rng.random() < 0.8, reentrant=rng.random() < 0.5)
        for _ in range(rng.randint(5, 120)):
            s.step()
            assert s.m.playing_reply == s.playing
            assert (s.m.phase in (Phase.SPEAKING, Phase.PAUSED)) == (s.playing is not None)
            assert (s.m.phase is Phase.PAUSED) == (s.playing is not None and s.paused)
        s.finish()
        s.check_end()
        totals["released"] += len(s.released)
        totals["speculative"] += s.m.released_from_speculation
        totals["interrupted"] += sum(c.interrupted for c in s.replica_turns.values())
    # The random walk must actually reach the interesting states, or the invariants above prove little.
    assert min(totals.values()) > 50, totals


# ---- with the real floor machine ----------------------------------------------------------------------------


def test_driven_by_the_floor_machine_through_a_barge_in() -> None:
    """The floor FSM's own event stream (VAD scripted, P(yield) always confident) drives the reply machine,
    and the replica's playback feeds back into the floor FSM, as the conversation session wires them."""
    win = 0.032
    speech = [(0.5, 2.0, "What time is it?"), (3.0, 4.2, "wait, tomorrow")]  # the second barges in
    floor, replies = FloorMachine(FloorSettings(barge_in_ms=320)), ReplyMachine()
    ready: dict[int, float] = {}  # reply id -> when its first audio is buffered
    playing: tuple[int, float] | None = None  # reply id, end of its audio on the timeline
    log: list[Action] = []

    def execute(actions: list[Action], t: float) -> None:
        nonlocal playing
        for a in actions:
            if isinstance(a, StartReply):
                ready[a.reply_id] = t + 0.3
            elif isinstance(a, ReleaseReply):
                playing = (a.reply_id, t + 2.0)
            if isinstance(a, CommitUserTurn | CommitReplicaTurn | ReleaseReply | StopPlayback | PausePlayback):
                log.append(a)
            if isinstance(a, StopPlayback):
                playing = None
                execute(replies.on_playback_stopped(a.reply_id, "It is", t), t)
            floor.on_replica(playing is not None)

    for i in range(int(7.0 / win)):
        end = (i + 1) * win
        voiced = any(s < end and end - win < e for s, e, _ in speech)
        queue, events = floor.on_vad(end, 0.9 if voiced else 0.05, win * 1000, end), []
        while queue:  # evaluations are answered at once: the model is always confident
            a = queue.pop(0)
            if isinstance(a, Evaluate):
                queue += floor.on_estimate(a.request_id, 0.95)
            else:
                events.append(a)
        for ev in events:
            if ev.type == "speech_end":  # the final decode of the segment that just ended
                text = next(x for s, e, x in speech if s <= ev.t <= e + 0.2)
                execute(replies.on_transcript(text, True, ev.t), ev.t)
            else:
                execute(replies.on_floor(ev.type, ev.t), ev.t)
        for rid, at in list(ready.items()):
            if at <= end:
                del ready[rid]
                execute(replies.on_reply_audio(rid, end), end)
                execute(replies.on_reply_done(rid, f"reply {rid}", end), end)
        if playing is not None and playing[1] <= end:
            rid, playing = playing[0], None
            execute(replies.on_playback_end(rid, end), end)

    assert [(type(a).__name__, round(a.t, 3)) for a in log] == [
        ("CommitUserTurn", 2.048),  # speech ended at 2.0: the first unvoiced windows decide
        ("ReleaseReply", 2.368),  # the speculative reply, after 0.3 s of generation
        ("PausePlayback", 3.04),  # the user speaks over it from 3.0 ...
        ("StopPlayback", 3.296),  # ... long enough to be a barge-in
        ("CommitReplicaTurn", 3.296),
        ("CommitUserTurn", 4.256),
        ("ReleaseReply", 4.576),
        ("CommitReplicaTurn", 6.592),  # played out (2 s)
    ]
    user = [a for a in log if isinstance(a, CommitUserTurn)]
    replica = [a for a in log if isinstance(a, CommitReplicaTurn)]
    assert [u.text for u in user] == ["What time is it?", "wait, tomorrow"]
    assert [(r.text, r.interrupted) for r in replica] == [("It is", True), ("reply 2", False)]
    assert replies.released_from_speculation == 2 and replies.wasted == 0
