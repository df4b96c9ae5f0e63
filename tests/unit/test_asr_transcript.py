"""Streaming partials (LocalAgreement-2, never retracting) and the re-decode schedule, on virtual time; plus the
pure helpers of the Whisper decoder (encoder window, end-of-audio cut, input checks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from orchestrator.inference.asr import (
    DecodeOptions,
    check_audio,
    cut_at_audio_end,
    encoder_frames,
    is_silent,
    merge_punctuation,
)
from orchestrator.speech.transcript import (
    DecodeWindow,
    PartialSchedule,
    StreamingTranscript,
    common_prefix,
    normalise,
)


@dataclass(frozen=True)
class W:
    text: str


@dataclass(frozen=True)
class Hyp:
    text: str
    words: tuple[W, ...] = ()


def hyp(text: str, with_words: bool = False) -> Hyp:
    return Hyp(text, tuple(W(w) for w in text.split()) if with_words else ())


# --- LocalAgreement ---


def test_normalise_ignores_case_and_punctuation() -> None:
    assert normalise("Bill,") == normalise("bill") == "bill"
    assert normalise("I'm") == "i'm"
    assert common_prefix(["Hi,", "I'm", "calling"], ["hi", "I'm", "called"]) == 2


def test_first_hypothesis_is_all_unstable_then_agreement_becomes_stable() -> None:
    t = StreamingTranscript()
    p = t.update(hyp("Hi, I'm"))
    assert (p.stable, p.unstable) == ("", "Hi, I'm")
    p = t.update(hyp("Hi, I'm calling a"))
    assert (p.stable, p.unstable) == ("Hi, I'm", "calling a")
    p = t.update(hyp("hi I'm calling about my"))
    assert (p.stable, p.unstable) == ("Hi, I'm calling", "about my")
    assert p.text == "Hi, I'm calling about my"


def test_stable_words_are_never_retracted() -> None:
    t = StreamingTranscript()
    t.update(hyp("I already paid the bill"))
    p = t.update(hyp("I already paid the bill last"))
    assert p.stable == "I already paid the bill"
    # The decoder changes its mind about a committed word: stable text stays, the new words follow it.
    p = t.update(hyp("I already paid the spill last month"))
    assert p.stable.startswith("I already paid the bill")
    assert p.unstable.endswith("month")
    p = t.update(hyp("I already paid the spill last month."))
    assert p.stable == "I already paid the bill last month."
    assert p.unstable == ""


def test_the_text_counts_the_words_only_without_one_and_empty_ones_are_dropped() -> None:
    t = StreamingTranscript()
    t.update(Hyp("", (W(" Can"), W("you"), W("..."), W("check"))))
    p = t.update(hyp("Can you check that", with_words=True))
    assert p.stable == "Can you check"
    t.reset()
    t.update(Hyp("Can you ... check", (W(" Can"), W("ignored"))))
    assert t.update(hyp("Can you check it")).stable == "Can you check"


def test_final_decode_replaces_the_tail_and_the_turn_can_go_on() -> None:
    t = StreamingTranscript()
    t.update(hyp("it looks like I was"))
    t.update(hyp("it looks like I was charged"))
    p = t.finalize(hyp("It looks like I was charged twice this month."))
    assert p.final and p.unstable == ""
    assert p.stable == "It looks like I was charged twice this month."  # the final's words (and spelling) win
    # A hold pause, then the user continues: later partials of the whole turn only add after the final.
    t.update(hyp("It looks like I was charged twice this month. Can you"))
    p = t.update(hyp("It looks like I was charged twice this month. Can you check"))
    assert p.stable == "It looks like I was charged twice this month. Can you"
    assert p.unstable == "check"
    t.reset()
    assert t.update(hyp("New turn")).stable == ""


def test_a_window_that_no_longer_starts_at_the_turn_start_still_aligns() -> None:
    """Past max_utterance_s the decoded window drops the turn's first words."""
    t = StreamingTranscript()
    t.finalize(hyp("one two three four five"))
    t.update(hyp("three four five six seven"))
    p = t.update(hyp("four five six seven eight"))
    assert p.stable == "one two three four five six seven"
    assert p.unstable == "eight"


def test_random_hypothesis_streams_never_shrink_the_stable_text() -> None:
    rng = np.random.default_rng(1)
    vocab = ["yes", "no", "the", "bill", "was", "paid", "twice", "Bill,", "Paid."]
    for _ in range(200):
        t = StreamingTranscript()
        truth = list(rng.choice(vocab, size=12))
        stable: list[str] = []
        for n in range(1, 13):
            words = truth[:n]
            if rng.random() < 0.4:  # a wrong last word, as a cut-off word often is
                words = [*words[:-1], str(rng.choice(vocab))]
            p = t.update(hyp(" ".join(words)))
            now = p.stable.split()
            assert now[: len(stable)] == stable
            stable = now
        assert t.finalize(hyp(" ".join(truth))).stable.split()[: len(stable)] == stable


# --- the schedule ---


def test_partials_are_due_every_interval_while_speaking_one_in_flight() -> None:
    s = PartialSchedule(interval_ms=480, max_utterance_s=28.0, pad_s=0.2)
    assert s.poll(1.0) is None  # no speech yet
    s.speech_start(1.0)
    assert s.poll(1.2) is None  # too little audio
    assert s.poll(1.46) is None  # interval not reached
    w = s.poll(1.48)
    assert w == DecodeWindow(start_s=0.8, end_s=1.48, final=False, turn=0)
    assert s.poll(2.5) is None  # one in flight
    s.decoded(w)
    w2 = s.poll(2.5)  # more than an interval of audio since the last decode's end: due at once
    assert w2 is not None and w2.end_s == 2.5 and not w2.final
    s.decoded(w2)
    assert s.poll(2.9) is None and s.poll(2.98) is not None


def test_speech_end_gives_a_final_decode_at_once_and_what_was_in_flight_goes_stale() -> None:
    s = PartialSchedule(interval_ms=480, max_utterance_s=28.0)
    s.speech_start(0.5)
    f = s.speech_end(0.9)
    assert f is not None and f.final and f.end_s == 0.9
    s.decoded(f)
    assert s.poll(2.0) is None  # not speaking: no partials
    s.speech_start(1.5)  # same turn (a hold pause): window still starts at the turn start
    w = s.poll(2.0)
    assert w is not None and w.start_s == pytest.approx(0.3) and s.is_current(w)
    f = s.speech_end(2.1)  # a partial is in flight: the final does not wait for it
    assert f is not None and f.final and f.end_s == 2.1 and f.start_s == pytest.approx(0.3)
    assert s.in_flight == f and s.is_current(f)
    assert not s.is_current(w)  # the partial's words are older than the final's: dropped when they come
    s.decoded(w)  # ... and its end changes nothing
    assert s.in_flight == f
    s.speech_start(2.3)
    assert s.poll(3.0) is None  # no partial while the final is out
    s.decoded(f)
    assert s.in_flight is None and s.poll(3.0) is not None


def test_a_later_speech_end_overtakes_the_final_of_an_earlier_pause() -> None:
    s = PartialSchedule(interval_ms=480, max_utterance_s=28.0)
    s.speech_start(0.5)
    f1 = s.speech_end(1.2)
    s.speech_start(1.3)  # a short hold: the user went on before the first final came back
    f2 = s.speech_end(1.8)
    assert f1 is not None and f2 is not None and f2.end_s == 1.8 and f2.start_s == f1.start_s
    assert s.in_flight == f2 and not s.is_current(f1) and s.is_current(f2)
    s.decoded(f1)
    assert s.in_flight == f2


def test_windows_are_capped_and_turn_end_makes_results_stale() -> None:
    s = PartialSchedule(interval_ms=480, max_utterance_s=28.0)
    s.speech_start(10.0)
    w = s.poll(45.0)
    assert w is not None and w.start_s == pytest.approx(17.0) and w.end_s - w.start_s == pytest.approx(28.0)
    s.end_turn()
    assert not s.is_current(w)
    s.decoded(w)
    assert s.in_flight is None
    s.speech_start(50.0)
    w2 = s.poll(50.5)
    assert w2 is not None and w2.turn == 1 and s.is_current(w2) and w2.start_s == pytest.approx(49.8)
    s.decoded(w)  # the old one finishing late changes nothing
    assert s.in_flight == w2
    f = s.speech_end(50.6)  # w2 in flight: the final overtakes it
    assert f is not None and f.final and s.in_flight == f and not s.is_current(w2)


def test_window_never_starts_before_the_stream() -> None:
    s = PartialSchedule(interval_ms=480, max_utterance_s=28.0, pad_s=0.2)
    s.speech_start(0.05)
    w = s.speech_end(0.5)
    assert w is not None and w.start_s == 0.0


# --- decoder helpers ---


def test_encoder_window_is_utterance_plus_margin_rounded_to_the_bucket() -> None:
    o = DecodeOptions(margin_s=1.0, bucket_s=1.0, min_window_s=2.0)
    assert encoder_frames(16000, o) == 200
    assert encoder_frames(16001, o) == 300
    assert encoder_frames(0, o) == 200
    assert encoder_frames(28 * 16000, o) == 2900
    assert encoder_frames(30 * 16000, o) == 3000  # never more than Whisper's window
    assert encoder_frames(3 * 16000, DecodeOptions(margin_s=0.5, bucket_s=0.5, min_window_s=1.0)) == 350
    assert encoder_frames(16000, DecodeOptions(min_window_s=4.0)) == 400  # short answers get a longer window


def test_text_is_cut_where_a_segment_starts_after_the_audio() -> None:
    ts, eot = 50364, 50257  # Whisper's <|0.00|> and <|endoftext|>
    tokens = [ts, 10, 11, ts + 50, ts + 50, 12, ts + 90, ts + 150, 10, 11, ts + 200]
    assert cut_at_audio_end(tokens, ts, eot, audio_s=2.0, tolerance_s=0.3) == [10, 11, 12]
    assert cut_at_audio_end(tokens, ts, eot, audio_s=4.0, tolerance_s=0.3) == [10, 11, 12, 10, 11]
    assert cut_at_audio_end([ts, 10, eot, 11], ts, eot, audio_s=4.0, tolerance_s=0.3) == [10]


def test_a_segment_repeating_the_one_before_ends_the_text() -> None:
    ts, eot = 50364, 50257
    loop = [ts, 10, 11, ts + 50, ts + 50, 10, 11, ts + 100, ts + 100, 10]  # "A B. A B. A" (hit the length cap)
    assert cut_at_audio_end(loop, ts, eot, audio_s=9.0, tolerance_s=0.1) == [10, 11]
    # Different text in the next segment is kept, and a segment that merely starts like the last one too.
    assert cut_at_audio_end([ts, 10, ts + 50, ts + 50, 10, 12, eot], ts, eot, 9.0, 0.1) == [10, 10, 12]


def test_audio_checks() -> None:
    check_audio(np.zeros(16000, np.int16))
    with pytest.raises(ValueError, match="int16"):
        check_audio(np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="1-D"):
        check_audio(np.zeros((2, 16000), np.int16))
    with pytest.raises(ValueError, match="at most 28 s"):
        check_audio(np.zeros(29 * 16000, np.int16))
    o = DecodeOptions()
    assert is_silent(np.zeros(16000, np.int16), o)
    assert is_silent(np.full(800, 3000, np.int16), o)  # 50 ms: too short for a word
    assert not is_silent((np.sin(np.arange(16000) / 5) * 3000).astype(np.int16), o)


def test_punctuation_joins_its_word() -> None:
    raw = [
        {"word": " Hi", "probs": [0.9]},
        {"word": ",", "probs": [0.5]},
        {"word": ' "', "probs": [0.4]},
        {"word": "yes", "probs": [0.8]},
        {"word": '".', "probs": [0.7]},
    ]
    assert [w["word"] for w in merge_punctuation(raw)] == [" Hi,", ' "yes".']


def test_decoding_loops_are_cut_to_one_occurrence() -> None:
    from orchestrator.inference.asr import collapse_loops

    loop = [5, 6, 7] * 5
    assert collapse_loops([1, 2, *loop]) == [1, 2, 5, 6, 7]
    assert collapse_loops([9, 9, 9, 9]) == [9]
    said = [1, 2, 3, 1, 2, 4, 1, 2, 3]  # repeats, but not in a row
    assert collapse_loops(said) == said
    assert collapse_loops([3, 3, 8]) == [3, 3, 8]  # "no, no" is real speech
    phrase = [10, 11, 12, 13, 14]
    assert collapse_loops([*phrase, *phrase]) == phrase  # a whole phrase twice running is a loop
    assert collapse_loops([]) == []


def test_repeated_phrases_are_cut_whatever_their_case_and_punctuation() -> None:
    from orchestrator.inference.asr import collapse_repeated_words

    assert collapse_repeated_words("can you check that for me. Can you check that for me.") == (
        "can you check that for me."
    )
    assert collapse_repeated_words("I think I think so.") == "I think I think so."  # two words: real speech
    # an amount said twice running is a loop; single digits read out are not
    assert collapse_repeated_words("This month's deal is $210, $210.") == "This month's deal is $210,"
    assert collapse_repeated_words("Is the copay still 20 dollars 20 dollars") == "Is the copay still 20 dollars"
    assert collapse_repeated_words("It's 10mg 10mg") == "It's 10mg"
    assert collapse_repeated_words("It is 5 5 8, no, no.") == "It is 5 5 8, no, no."
    # a loop that ran into the length cap: the text ends inside the second copy
    looped = "to make calls or messages. I don't have the ability to make calls or messages. I don't have the"
    assert collapse_repeated_words(looped) == "to make calls or messages. I don't have the ability"
    assert collapse_repeated_words("I paid the bill and I paid") == "I paid the bill and I paid"  # too short
    assert collapse_repeated_words("Hi. I'm calling about my bill.") == "Hi. I'm calling about my bill."


def test_a_whole_sentence_decoded_twice_is_kept_once_however_long() -> None:
    """Issue 12's duplicate: Whisper looped over the whole 13-word turn ("Do I need ... desk? Do I need ...
    desk?") and the loop guard only knew phrases of up to 12 words (measured again offline in
    docs/transcripts.md: "My goal was to be in bed by 11. Five nights a week." twice, 13 words)."""
    from orchestrator.inference.asr import collapse_loops, collapse_repeated_words

    once = "Do I need to bring my insurance card up to the front desk?"
    assert len(once.split()) == 13
    assert collapse_repeated_words(f"{once} {once}") == once
    assert collapse_repeated_words(f"{once} do I need to bring my insurance card up to the front desk") == once
    long = "I would like to book an appointment with Doctor Patel for next Tuesday morning at ten thirty, please."
    assert collapse_repeated_words(f"{long} {long}") == long
    tokens = list(range(100, 130))
    assert collapse_loops([*tokens, *tokens]) == tokens


def test_the_final_decode_of_the_whole_turn_replaces_the_words_partials_committed() -> None:
    """Partials decode audio cut mid-phrase, so the words two of them agree on can still be wrong ("the new
    address. The 42 ..."); the final decode hears the whole turn and its transcript is the turn's."""
    t = StreamingTranscript()
    t.update(hyp("The new address."))
    t.update(hyp("The new address. The 42"))
    assert t.update(hyp("The new address. The 42 Maple")).stable == "The new address. The 42"
    p = t.finalize(hyp("The new address is 42 Maple Street, apartment 3B."))
    assert p.final and p.text == "The new address is 42 Maple Street, apartment 3B."
    # a hold pause, then more: the next final of the whole turn replaces again, and nothing is said twice
    t.update(hyp("The new address is 42 Maple Street, apartment 3B. Or"))
    p = t.finalize(hyp("The new address is 42 Maple Street apartment 3B, or 3C."))
    assert p.text == "The new address is 42 Maple Street apartment 3B, or 3C."


def test_a_final_that_heard_less_than_the_committed_words_does_not_lose_them() -> None:
    """A final decode that does not start where the turn started (a turn past max_utterance_s), or that came
    back empty, adds only what follows the committed words, as before."""
    t = StreamingTranscript()
    t.finalize(hyp("one two three four five"))
    assert t.finalize(hyp("four five six seven")).text == "one two three four five six seven"
    assert t.finalize(hyp("")).text == "one two three four five six seven"


def test_a_word_written_with_a_hyphen_or_a_dot_inside_is_one_word() -> None:
    """Whisper's word splitter cuts "558-0312." into " 558", "-0312" and "."; the words list must hold one word
    per word of the text, or the transcript built from it loses the turn's last words (issue 12: "My account
    number is 558" for "... 558-0312."; "Great so -and -will, I see" for "Great so-and-will, I see the refund.")."""
    raw = [
        {"word": " My", "probs": [0.9]},
        {"word": " number", "probs": [0.9]},
        {"word": " 558", "probs": [0.8]},
        {"word": "-0312", "probs": [0.7, 0.6]},
        {"word": ".", "probs": [0.9]},
        {"word": " sam", "probs": [0.8]},
        {"word": ".ly", "probs": [0.5]},
    ]
    merged = merge_punctuation(raw)
    assert [w["word"] for w in merged] == [" My", " number", " 558-0312.", " sam.ly"]
    assert merged[2]["probs"] == [0.8, 0.7, 0.6, 0.9]


def test_the_transcript_follows_the_text_when_the_words_do_not_spell_it() -> None:
    t = StreamingTranscript()
    words = (W(" My"), W(" account"), W(" number"), W(" is"), W(" 558"), W("-0312."))
    p = t.finalize(Hyp("My account number is 558-0312.", words))
    assert p.text == "My account number is 558-0312."
    p = t.finalize(Hyp("My account number is 558-0312.", words[:5]))  # a word list cut short
    assert p.text == "My account number is 558-0312."
