"""The streaming-ASR simulation of the floor trainer (perf/train_floor.py --asr): which decodes the
conversation loop would run, when their text reaches the floor, and the text features built from it."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.signal.prosody import PROSODY_FEATURES
from orchestrator.turns.fusion import BASE_FEATURES, feature_vector
from perf.train_floor import TURN_PAD_S, AsrTurn, Decode, decode_schedule, transcript_at, with_texts

SR = 16_000
PAD = round((TURN_PAD_S + 0.064) * SR)  # audio kept before the speech_start event


def schedule(
    events: list[tuple[str, float]], yields: list[float], delay_ms: float, seconds: float = 8.0
) -> list[AsrTurn]:
    return decode_schedule(events, yields, int(seconds * SR), delay_ms, 480.0, 64.0)


def test_partials_every_interval_while_speaking_then_a_final_at_the_speech_end() -> None:
    turns = schedule([("speech_start", 1.0), ("speech_end", 3.0)], [2.9], delay_ms=250)
    assert len(turns) == 1
    start = 16_000 - PAD
    ends = [dc.end for dc in turns[0].decodes]
    assert ends == [round(t * SR) for t in (1.48, 1.96, 2.44, 2.92, 3.0)]  # (FINAL_PAD_S is 0)
    assert all(dc.start == start for dc in turns[0].decodes)
    assert [dc.final for dc in turns[0].decodes] == [False] * 4 + [True]
    # The last partial (2.92 + 0.25) is still running when the final's audio is there: the final does not wait
    # for it (as the server's schedule, speech/transcript.py).
    assert turns[0].decodes[-1].ready == pytest.approx(3.0 + 0.25)
    assert turns[0].decodes[0].ready == pytest.approx(1.48 + 0.25)


def test_a_hold_pause_keeps_the_turn_and_a_yield_pause_opens_a_new_one() -> None:
    events = [("speech_start", 1.0), ("speech_end", 1.6), ("speech_start", 2.2), ("speech_end", 2.8)]
    events += [("speech_start", 5.0), ("speech_end", 5.4)]
    turns = schedule(events, yields=[2.75], delay_ms=100)  # hold 1.55-2.15, yield from 2.75
    assert [tn.begin for tn in turns] == [1.0, 5.0]
    first = turns[0].decodes
    assert [dc.final for dc in first] == [False, True, False, False, True]
    assert {dc.start for dc in first} == {16_000 - PAD}  # resumed speech is re-decoded from the turn start
    # The first final ended at 1.6 s: resumed speech is more than 480 ms later, so it is decoded at once.
    assert [dc.end for dc in first[2:]] == [round(t * SR) for t in (2.2, 2.68, 2.8)]
    assert turns[1].decodes[0].start == 5 * SR - PAD


def test_a_slow_decoder_skips_partials_while_busy() -> None:
    turns = schedule([("speech_start", 1.0), ("speech_end", 4.0)], [3.9], delay_ms=700)
    partial_starts = [dc.end / SR for dc in turns[0].decodes if not dc.final]
    assert partial_starts == pytest.approx([1.48, 2.18, 2.88, 3.58])  # each as soon as the previous one is done
    final = turns[0].decodes[-1]
    assert final.final and final.ready == pytest.approx(4.0 + 0.7)  # beside the partial still running


def test_the_floor_sees_the_newest_arrived_transcript_of_the_current_turn_only() -> None:
    turns = [
        AsrTurn(1.0, 0, [Decode(0, 100, 1.7, False), Decode(0, 200, 3.4, True)]),
        AsrTurn(5.0, 300, [Decode(300, 400, 5.8, True)]),
    ]
    texts = {(0, 100): "I want to", (0, 200): "I want to go.", (300, 400): "Yes."}
    assert transcript_at(turns, 0.5, texts) == ""  # no turn yet
    assert transcript_at(turns, 1.69, texts) == ""  # nothing arrived yet
    assert transcript_at(turns, 1.7, texts) == "I want to"
    assert transcript_at(turns, 3.39, texts) == "I want to"
    assert transcript_at(turns, 4.9, texts) == "I want to go."
    assert transcript_at(turns, 5.2, texts) == ""  # a new turn: the old text is gone
    assert transcript_at(turns, 6.0, texts) == "Yes."


def test_with_the_pause_start_only_the_final_decode_of_that_pause_is_seen() -> None:
    # samples: the final (0, 200) covers up to 200/16000 s; pauses starting before that see it, later ones not
    turns = [AsrTurn(0.0, 0, [Decode(0, 100, 0.02, False), Decode(0, 200, 0.03, True)])]
    texts = {(0, 100): "I want to", (0, 200): "I want to go."}
    assert transcript_at(turns, 0.025, texts, pause_start=0.005) == ""  # the newest is a partial
    assert transcript_at(turns, 0.035, texts, pause_start=0.0124) == "I want to go."
    assert transcript_at(turns, 0.035, texts, pause_start=0.0126) == ""  # a later pause: other words


def test_text_features_match_the_servers_feature_vector() -> None:
    names = (*BASE_FEATURES, *PROSODY_FEATURES)
    prosody = [0.1 * i for i in range(len(PROSODY_FEATURES))]
    texts = ["", "I want to", "I want to go."]
    x = np.stack([feature_vector(0.7, prosody, 300.0) for _ in texts])
    got = with_texts(x, texts, names)
    want = np.stack([feature_vector(0.7, prosody, 300.0, text) for text in texts])
    np.testing.assert_allclose(got, want)
    assert got[1, names.index("text_complete")] < 0 < got[2, names.index("text_complete")]
