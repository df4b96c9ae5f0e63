"""The leading quiet cut from a reply's first chunk: the sound and its timings move together."""

from __future__ import annotations

import numpy as np

from orchestrator.models.ports import Phoneme, SpeechChunk
from orchestrator.speech.onset import trim_lead


def chunk(quiet_ms: int, sound_ms: int = 200) -> SpeechChunk:
    rng = np.random.default_rng(0)
    pcm = np.concatenate(
        [rng.integers(-8, 8, quiet_ms * 16), (3000 * np.cos(np.arange(sound_ms * 16) / 5)).astype(np.int64)]
    ).astype(np.int16)
    phonemes = (Phoneme("^", 0.0, quiet_ms / 1000), Phoneme("h", quiet_ms / 1000, (quiet_ms + 80) / 1000))
    return SpeechChunk(pcm=pcm, text="Hi.", phonemes=phonemes)


def test_the_leading_quiet_is_cut_to_ten_ms_and_the_phonemes_move_with_it() -> None:
    before = chunk(60)
    after = trim_lead(before)
    assert len(before.pcm) - len(after.pcm) == 50 * 16
    assert np.array_equal(after.pcm, before.pcm[50 * 16 :])
    times = [(p.phoneme, round(p.start, 6), round(p.end, 6)) for p in after.phonemes]
    assert times == [("^", 0.0, 0.01), ("h", 0.01, 0.09)]
    assert after.text == before.text


def test_a_chunk_that_starts_loud_or_is_silent_is_left_alone() -> None:
    for c in (chunk(0), chunk(5), SpeechChunk(pcm=np.zeros(1600, dtype=np.int16), text="")):
        assert trim_lead(c) is c


def test_a_later_line_keeps_the_usual_quiet_and_loses_only_an_outliers_excess() -> None:
    usual = chunk(50)
    assert trim_lead(usual, keep_s=0.07) is usual
    long = chunk(600)
    assert len(long.pcm) - len(trim_lead(long, keep_s=0.07).pcm) == (600 - 70) * 16
