"""The transcription gate (pure): which decodes run, and when a floor event may act on the words it concerns."""

from __future__ import annotations

from orchestrator.config import FloorSettings
from orchestrator.models.ports import Transcript
from orchestrator.speech.gate import FINAL_PAD_S, TURN_PAD_S, Decode, Heard, TranscriptGate

FLOOR = FloorSettings()
START = FLOOR.speech_start_ms / 1000  # speech_start is confirmed this long after the onset


def gate() -> TranscriptGate:
    return TranscriptGate(FLOOR, partial_interval_ms=480, max_utterance_s=28.0)


def test_events_go_on_at_once_while_no_final_decode_is_due() -> None:
    g = gate()
    assert g.on_floor("speech_start", 1.0 + START) == []
    assert g.ready() == ("speech_start", 1.0 + START)
    assert g.delivered() == []
    assert g.ready() is None and g.pending == 0


def test_a_speech_end_holds_everything_until_its_final_transcript() -> None:
    g = gate()
    g.on_floor("speech_start", 1.0 + START)
    g.delivered()
    [final] = g.on_floor("speech_end", 2.0)
    assert final.window.final and final.window.end_s == 2.0 + FINAL_PAD_S
    assert final.window.start_s == 1.0 - TURN_PAD_S  # from just before the onset
    assert not g.queued("eot_tentative", "eot_commit")
    g.on_floor("eot_tentative", 2.1)
    assert g.queued("eot_commit", "eot_tentative") and not g.queued("eot_commit")
    g.on_floor("eot_commit", 2.3)
    assert g.ready() is None and g.pending == 3  # all wait for the words
    assert g.heard(final.window, Transcript("what time is it")) == Heard("what time is it", True, 2.0 + FINAL_PAD_S)
    assert g.settled(final.window) is None
    assert [g.ready(), g.delivered(), g.ready()] == [("speech_end", 2.0), [], ("eot_tentative", 2.1)]
    g.delivered()
    assert g.ready() == ("eot_commit", 2.3) and g.turn_text == "what time is it"
    g.delivered()
    assert g.turn_text == "" and g.pending == 0  # the commit closed the turn


def test_a_held_event_stays_queued_while_handled_so_later_ones_wait_behind_it() -> None:
    g = gate()
    g.on_floor("speech_start", 1.0 + START)
    g.delivered()
    [final] = g.on_floor("speech_end", 2.0)
    g.on_floor("eot_commit", 2.3)
    g.heard(final.window, Transcript("hello"))
    g.settled(final.window)
    assert g.ready() == ("speech_end", 2.0)
    g.on_floor("speech_start", 2.5 + START)  # arrives while the session acts on the speech_end
    assert g.ready() == ("speech_end", 2.0)  # still the head: nothing overtakes it
    g.delivered()
    assert [g.ready(), g.delivered(), g.ready()] == [("eot_commit", 2.3), [], ("speech_start", 2.5 + START)]


def test_a_turn_begun_while_the_last_final_decodes_is_decoded_on_its_own_audio() -> None:
    g = gate()
    g.on_floor("speech_start", 0.3 + START)
    g.delivered()
    [first] = g.on_floor("speech_end", 2.2)
    g.on_floor("eot_commit", 2.6)  # held for turn 1's final, while the user goes on
    assert g.on_floor("speech_start", 3.0 + START) == []
    assert g.on_floor("speech_end", 4.2) == []  # turn 2's final must wait for turn 1 to close
    g.heard(first.window, Transcript("my bill is wrong"))
    g.settled(first.window)
    out: list[Decode] = []
    while (ready := g.ready()) is not None:
        out += g.delivered()
        if ready[0] == "eot_commit":
            assert out, "turn 2 was never scheduled"
    [second] = out
    assert second.window.final and second.window.start_s == 3.0 - TURN_PAD_S
    assert second.window.end_s == 4.2 + FINAL_PAD_S and second.window.turn == first.window.turn + 1
    assert g.heard(second.window, Transcript("it was charged twice")) is not None
    assert g.ready() is None  # its speech_end waits for its own final


def test_partials_while_speaking_and_a_stale_result_is_dropped() -> None:
    g = gate()
    g.on_floor("speech_start", 0.5 + START)
    g.delivered()
    assert g.poll(1.0) is None  # under the minimum audio
    partial = g.poll(1.5)
    assert partial is not None and not partial.window.final and g.poll(2.5) is None  # one at a time
    assert g.heard(partial.window, Transcript("what time")) == Heard("what time", False, 1.5)
    g.settled(partial.window)
    [final] = g.on_floor("speech_end", 2.0)
    g.on_floor("eot_commit", 2.2)
    g.heard(final.window, Transcript("what time is it"))
    g.settled(final.window)
    while g.ready() is not None:
        g.delivered()
    assert g.heard(partial.window, Transcript("late")) is None  # from the closed turn: dropped


def test_the_final_does_not_wait_for_a_partial_in_flight_whose_words_are_then_dropped() -> None:
    g = gate()
    g.on_floor("speech_start", 0.5 + START)
    g.delivered()
    partial = g.poll(1.5)
    assert partial is not None
    [final] = g.on_floor("speech_end", 1.7)  # at once, beside the partial
    assert final.window.final and final.window.end_s == 1.7 + FINAL_PAD_S
    g.on_floor("eot_commit", 1.9)
    assert g.heard(partial.window, Transcript("what")) is None  # older words than the final's: dropped
    g.settled(partial.window)
    assert g.ready() is None and g.turn_text == ""  # the events still wait for the final
    assert g.heard(final.window, Transcript("what time is it")) == Heard("what time is it", True, 1.7)
    g.settled(final.window)
    assert g.ready() == ("speech_end", 1.7)


def test_a_failed_final_decode_releases_the_events_without_words() -> None:
    g = gate()
    g.on_floor("speech_start", 1.0 + START)
    g.delivered()
    [final] = g.on_floor("speech_end", 2.0)
    g.on_floor("eot_commit", 2.2)
    assert g.heard(final.window, None) is None  # the recogniser failed
    g.settled(final.window)
    assert g.ready() == ("speech_end", 2.0) and g.turn_text == ""


def test_flush_lets_queued_events_go_at_the_end_of_the_stream() -> None:
    g = gate()
    g.on_floor("speech_start", 1.0 + START)
    g.delivered()
    g.on_floor("speech_end", 2.0)  # its decode never reports (the session is ending)
    assert g.ready() is None
    g.flush()
    assert g.ready() == ("speech_end", 2.0)


def test_speech_over_the_replica_is_transcribed_only_once_it_is_a_barge_in() -> None:
    g = gate()
    assert g.on_floor("speech_start", 1.0 + START, replica_speaking=True) == []
    g.delivered()
    assert g.poll(3.0) is None  # a backchannel may follow: nothing is decoded yet
    g.on_floor("barge_in", 1.64)
    g.delivered()
    partial = g.poll(3.0)
    assert partial is not None and partial.window.start_s == 1.64 - FLOOR.barge_in_ms / 1000 - TURN_PAD_S


def test_a_barge_in_turn_starts_at_the_backchannel_the_user_went_on_from() -> None:
    g = gate()
    g.on_floor("speech_start", 2.0 + START, replica_speaking=True)  # "Okay, you know," over the replica
    g.on_floor("speech_end", 2.6 + FLOOR.speech_end_ms / 1000, replica_speaking=True)
    g.on_floor("backchannel", 2.6 + FLOOR.speech_end_ms / 1000, replica_speaking=True)
    g.on_floor("speech_start", 3.2 + START, replica_speaking=True)  # "that's everything": 0.6 s later
    g.on_floor("barge_in", 3.2 + FLOOR.barge_in_ms / 1000, replica_speaking=True)
    while g.ready() is not None:
        g.delivered()
    partial = g.poll(5.0)
    assert partial is not None and partial.window.start_s == 2.0 - TURN_PAD_S  # from "Okay", not "that's"


def test_a_backchannel_long_before_is_not_part_of_the_barge_in_turn() -> None:
    g = gate()
    g.on_floor("speech_start", 2.0 + START, replica_speaking=True)  # "mm-hm"
    g.on_floor("backchannel", 2.4, replica_speaking=True)
    g.on_floor("speech_start", 6.0 + START, replica_speaking=True)  # much later: a new start
    g.on_floor("barge_in", 6.0 + FLOOR.barge_in_ms / 1000, replica_speaking=True)
    while g.ready() is not None:
        g.delivered()
    partial = g.poll(8.0)
    assert partial is not None and abs(partial.window.start_s - (6.0 - TURN_PAD_S)) < 1e-6
