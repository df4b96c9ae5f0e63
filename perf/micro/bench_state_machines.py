"""The pure per-input state machines: the floor machine (orchestrator/turns/floor.py) on every 32 ms VAD window,
and the streaming transcript (orchestrator/speech/transcript.py) on every partial decode of the user's turn.

`FloorMachine.on_vad` runs 31.25 times per second of audio. The script cycles a realistic 6.5 s pattern (speech,
a hold pause, speech, a pause that ends the turn, silence); an `Evaluate` the machine asks for is answered at once
with a P(yield) that grows with the pause, as the floor model would, and that `on_estimate` is part of the call.

`StreamingTranscript.update` runs once per partial decode (every 480 ms of user speech, `asr.partial_interval_ms`),
on the whole turn's hypothesis, so its cost grows with the turn. One benchmark call is one turn: `reset`, every
partial and the final decode; the per-decode cost is the mean divided by `units_per_call` (the JSON's extra_info).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from conftest import per_unit

from orchestrator.config import FloorSettings
from orchestrator.speech.transcript import StreamingTranscript
from orchestrator.turns.floor import Evaluate, FloorMachine

WINDOW_S = 0.032


def _script() -> list[float]:
    """VAD probabilities per 32 ms window for one cycle: speech, hold pause, speech, end-of-turn pause, silence."""
    out: list[float] = []
    for seconds, prob in ((1.6, 0.92), (0.35, 0.08), (1.2, 0.88), (1.5, 0.05), (0.3, 0.6), (1.55, 0.03)):
        out += [prob] * round(seconds / WINDOW_S)
    return out


@pytest.mark.benchmark(group="state machines: per input")
def test_floor_machine_on_vad(benchmark):
    """One VAD window through the floor machine (31.25 per second of audio), evaluations answered inline."""
    machine = FloorMachine(FloorSettings())
    probs = itertools.cycle(_script())
    clock = itertools.count(1)
    answered = 0

    def step():
        nonlocal answered
        t = next(clock) * WINDOW_S
        actions = machine.on_vad(t, next(probs), WINDOW_S * 1000, t)
        for action in actions:
            if isinstance(action, Evaluate):
                p_yield = min(0.95, 0.1 + action.pause_ms / 600)
                actions = actions + machine.on_estimate(action.request_id, p_yield)
                answered += 1
        return actions

    benchmark(step)
    assert answered > 0  # evaluations were asked for and answered


@dataclass(frozen=True)
class Word:
    text: str


@dataclass(frozen=True)
class Hyp:
    text: str
    words: tuple[Word, ...]


TURN = (
    "Hi, yes, I'm calling because I got a bill last week that I think is wrong. It says I owe two hundred and "
    "forty dollars, but I already paid most of it in March, so could you check what happened and maybe send me "
    "a corrected one by email?"
).split()


def _hypotheses(words: list[str], per_decode: int, revise_at: int | None) -> list[Hyp]:
    """Partial decodes of a growing turn: each one hears `per_decode` more words and gets its last word wrong (cut
    mid-way); at decode `revise_at` the decoder also changes its mind about the turn's third word."""
    hyps = []
    for i, n in enumerate(range(per_decode, len(words) + per_decode, per_decode)):
        heard = list(words[: min(n, len(words))])
        if n < len(words):
            heard[-1] = heard[-1][: max(1, len(heard[-1]) // 2)]  # the word the audio cuts
        if revise_at is not None and i == revise_at:
            heard[2] = "I"
        hyps.append(Hyp(" ".join(heard), tuple(Word(" " + w) for w in heard)))
    return hyps


@pytest.mark.benchmark(group="state machines: transcript turn")
@pytest.mark.parametrize(
    ("words", "revise"), [(20, False), (70, True)], ids=["20_words_8s", "70_words_28s_one_revision"]
)
def test_streaming_transcript_turn(benchmark, words, revise):
    """One turn, a partial decode per new word (2.5 words/s x 480 ms ~ 1.2 words) and the final: 20 words (8 s of
    speech) or 70 (28 s, the longest turn Whisper hears whole) with one decode that revises a committed word."""
    text = (TURN * 2)[:words]
    hyps = _hypotheses(text, per_decode=1, revise_at=words // 2 if revise else None)
    partials, final = hyps[:-1], hyps[-1]
    st = StreamingTranscript()

    def turn():
        st.reset()
        for h in partials:
            st.update(h)
        return st.finalize(final)

    out = benchmark(turn)
    per_unit(benchmark, "decode", len(hyps))
    assert out.final and out.stable.split()[-1] == text[-1]
