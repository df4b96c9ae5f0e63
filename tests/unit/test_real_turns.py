"""perf/data/make_real_turns.py: a real call's STM becomes user turns that end in the other speaker's answer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_real_turns", ROOT / "perf" / "data" / "make_real_turns.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_real_turns"] = mod
    spec.loader.exec_module(mod)
    return mod


STM = """call 1 Ann 1.00 1.50 Hello?
call 1 Bob 1.90 2.40 Hi there.
call 1 Bob 2.80 3.60 It's Bob, from the office.
call 1 Ann 3.70 4.20 Oh, hi Bob.
call 1 Ann 4.22 5.00 How are you?
"""


def test_runs_end_where_the_other_speaker_answers() -> None:
    m = _module()
    runs = m.runs(m.parse_stm(STM))
    assert [[u.text for u in run] for run, _ in runs] == [["Hello?"], ["Hi there.", "It's Bob, from the office."]]
    assert [context for _, context in runs] == ["", "Hello?"]  # Ann's last run has no answer: left out


def test_a_clip_is_background_the_turn_and_a_yield_pause_with_holds_inside() -> None:
    m = _module()
    rate = m.RATE
    audio = np.zeros(6 * rate + 8000, dtype=np.int16)
    audio[round(1.9 * rate) : round(3.6 * rate)] = 3000  # Bob speaking
    m.QUIET = (5.2, 6.4)  # nobody speaks there in this call
    clips = m.clips(audio, m.parse_stm(STM))
    name, pcm, label = clips[1]
    assert name == "002.wav" and label["voice"] == "pyannote-sample:Bob"
    assert pcm.shape[0] / rate == label["duration"]
    hold, yld = label["pauses"]
    assert hold["kind"] == "hold" and abs((hold["end"] - hold["start"]) - 0.4) < 1e-6  # the 0.4 s gap, as spoken
    assert yld["kind"] == "yield" and abs(yld["end"] - yld["start"] - m.TAIL_S) < 1e-3
    start = round(label["segments"][0]["start"] * rate)
    assert pcm[start + 100] == 3000 and pcm[: round(m.LEAD_S * rate) - 400].max() == 0  # the turn, after background
