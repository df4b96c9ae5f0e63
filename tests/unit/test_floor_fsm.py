"""The floor state machine on virtual time: scripted VAD probabilities and scripted floor estimates."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import pytest

from orchestrator.config import FloorSettings
from orchestrator.events import FloorEvent
from orchestrator.turns.floor import Evaluate, FloorMachine, Phase

WIN = 0.032  # VAD window, s


def run(
    segments: list[tuple[float, float]],
    duration: float,
    p_yield: Callable[[float, float], float],
    settings: FloorSettings | None = None,
    replica: list[tuple[float, float]] | None = None,
    eval_lag_windows: int = 0,
) -> list[FloorEvent]:
    """Drive the machine: `segments` are (start, end) of voiced audio; `p_yield(t, pause_ms)` answers
    evaluations, delivered after `eval_lag_windows` further windows (0 = before the next window)."""
    fsm = FloorMachine(settings or FloorSettings())
    events: list[FloorEvent] = []
    pending: list[tuple[int, Evaluate]] = []

    def apply(actions: list[FloorEvent | Evaluate], i: int) -> None:
        for a in actions:
            if isinstance(a, FloorEvent):
                events.append(a)
            else:
                pending.append((i + eval_lag_windows, a))

    n = int(duration / WIN)
    for i in range(n):
        end = (i + 1) * WIN
        if replica is not None:
            fsm.on_replica(any(s <= end - WIN < e for s, e in replica))
        voiced = any(s < end and end - WIN < e for s, e in segments)
        apply(fsm.on_vad(end, 0.9 if voiced else 0.05, WIN * 1000, end), i)
        while pending and pending[0][0] <= i:
            _, ev = pending.pop(0)
            apply(fsm.on_estimate(ev.request_id, p_yield(ev.t, ev.pause_ms)), i)
    apply(fsm.finish(n * WIN), n)
    return events


def types(events: list[FloorEvent]) -> list[str]:
    return [e.type for e in events]


def test_single_turn_confident_model_commits_fast() -> None:
    ev = run([(0.5, 2.0)], 3.5, lambda t, pause: 0.95)
    assert types(ev) == ["speech_start", "speech_end", "eot_tentative", "eot_commit"]
    commit = ev[-1]
    assert commit.t - 2.0 <= 0.1  # first unvoiced window already decides
    assert commit.reason == "model"


def test_hold_pause_never_commits_while_model_says_hold() -> None:
    # 0.7 s pause inside the turn; the model says "hold" until the real end at 3.0 s.
    def model(t: float, pause: float) -> float:
        return 0.05 if t < 2.9 else 0.95

    ev = run([(0.5, 1.5), (2.2, 3.0)], 4.5, model)
    commits = [e for e in ev if e.type == "eot_commit"]
    assert len(commits) == 1 and commits[0].t >= 3.0
    assert types(ev).count("speech_start") == 2


def test_tentative_then_cancel_when_speech_resumes() -> None:
    def model(t: float, pause: float) -> float:
        return 0.6 if t < 2.5 else 0.95  # tentative but not committed during the hold pause

    ev = run([(0.5, 1.5), (2.0, 2.6)], 4.0, model)
    seq = types(ev)
    assert seq.index("eot_tentative") < seq.index("eot_cancel") < seq.index("eot_commit")
    cancel = next(e for e in ev if e.type == "eot_cancel")
    assert 2.0 <= cancel.t <= 2.2


def test_max_pause_commits_even_if_model_never_sure() -> None:
    s = FloorSettings(max_pause_ms=1200)
    ev = run([(0.5, 1.5)], 4.0, lambda t, pause: 0.1, settings=s)
    commit = next(e for e in ev if e.type == "eot_commit")
    assert commit.reason == "max_pause"
    assert 1.5 + 1.2 - 0.05 <= commit.t <= 1.5 + 1.2 + 0.07


def test_min_commit_pause_is_respected() -> None:
    s = FloorSettings(min_commit_pause_ms=300)
    ev = run([(0.5, 1.5)], 3.0, lambda t, pause: 0.99, settings=s)
    commit = next(e for e in ev if e.type == "eot_commit")
    assert commit.t - 1.5 >= 0.3 - 1e-6


def test_reevaluates_periodically_with_growing_pause() -> None:
    seen: list[float] = []

    def model(t: float, pause: float) -> float:
        seen.append(pause)
        return 0.9 if pause >= 500 else 0.1

    run([(0.5, 1.5)], 3.0, model)
    assert len(seen) >= 4
    assert all(b > a for a, b in itertools.pairwise(seen))
    assert seen[1] - seen[0] >= FloorSettings().eval_interval_ms - 1


def test_stale_estimate_after_speech_resumes_is_ignored() -> None:
    # The answer arrives 20 windows late: by then the user is speaking again, so no commit may follow.
    ev = run([(0.5, 1.5), (1.7, 3.0)], 3.2, lambda t, pause: 0.99 if t < 1.6 else 0.0, eval_lag_windows=20)
    assert "eot_commit" not in types(ev)[: types(ev).index("speech_start", 1) + 1]


def test_one_evaluation_in_flight() -> None:
    fsm = FloorMachine(FloorSettings())
    actions = []
    for i in range(40):
        end = (i + 1) * WIN
        actions += fsm.on_vad(end, 0.9 if end < 0.6 else 0.0, WIN * 1000, end)
    evals = [a for a in actions if isinstance(a, Evaluate)]
    assert len(evals) == 1  # nobody answered, so no second request


def test_short_blip_does_not_start_speech() -> None:
    ev = run([(1.0, 1.02)], 2.0, lambda t, pause: 0.9)
    assert ev == []


def test_backchannel_while_replica_speaks() -> None:
    ev = run([(1.0, 1.25)], 3.0, lambda t, pause: 0.99, replica=[(0.5, 3.0)])
    assert types(ev) == ["speech_start", "speech_end", "backchannel"]


def test_barge_in_while_replica_speaks_then_user_turn() -> None:
    ev = run([(1.0, 2.2)], 4.0, lambda t, pause: 0.99, replica=[(0.5, 1.4)])
    seq = types(ev)
    assert seq[:2] == ["speech_start", "barge_in"]
    barge = ev[1]
    assert barge.t - 1.0 <= FloorSettings().barge_in_ms / 1000 + 0.07
    assert seq[-1] == "eot_commit"  # after barging in, the user holds the floor and yields normally


def test_finish_commits_open_pause() -> None:
    ev = run([(0.5, 1.9)], 2.0, lambda t, pause: 0.1)
    assert types(ev)[-1] == "eot_commit"
    assert ev[-1].reason == "end_of_stream"


def test_phase_after_commit_and_new_turn() -> None:
    fsm = FloorMachine(dataclasses.replace(FloorSettings(), max_pause_ms=300))
    for i in range(60):
        end = (i + 1) * WIN
        fsm.on_vad(end, 0.9 if 0.3 < end < 0.8 else 0.0, WIN * 1000, end)
    assert fsm.phase is Phase.COMMITTED


@pytest.mark.parametrize("seed", range(20))
def test_random_scripts_keep_invariants(seed: int) -> None:
    import random

    rng = random.Random(seed)
    segs, t = [], rng.uniform(0.1, 0.6)
    for _ in range(rng.randint(1, 6)):
        d = rng.uniform(0.05, 1.5)
        segs.append((t, t + d))
        t += d + rng.uniform(0.05, 2.5)
    lag = rng.randint(0, 4)
    ev = run(segs, t + 0.5, lambda tt, p: rng.random(), eval_lag_windows=lag)
    seq = types(ev)
    # With answers in order (as the session guarantees) events are in audio-time order; a late answer is
    # stamped with the audio it used, which may precede a speech_end emitted meanwhile.
    if lag == 0:
        assert all(a.t <= b.t + 1e-9 for a, b in itertools.pairwise(ev))
    # Commits are preceded by a tentative, cancels follow a tentative.
    open_tentative = False
    for name in seq:
        if name == "eot_tentative":
            assert not open_tentative
            open_tentative = True
        elif name in ("eot_commit", "eot_cancel"):
            assert open_tentative
            open_tentative = False
    assert seq.count("speech_start") >= seq.count("eot_commit")


def test_late_evaluations_reuse_acoustics_and_reset_per_pause() -> None:
    fsm = FloorMachine(FloorSettings())
    evals: list[Evaluate] = []
    for i in range(int(4.0 / WIN)):
        end = (i + 1) * WIN
        voiced = 0.3 < end < 1.0 or 1.8 < end < 2.4
        for a in fsm.on_vad(end, 0.9 if voiced else 0.0, WIN * 1000, end):
            if isinstance(a, Evaluate):
                evals.append(a)
                fsm.on_estimate(a.request_id, 0.0)  # never sure: the pause keeps being evaluated
    first = [e for e in evals if e.t < 1.8]
    second = [e for e in evals if e.t > 2.4]
    for pause in (first, second):
        assert not pause[0].reuse_acoustics
        assert all(e.reuse_acoustics == (e.pause_ms > FloorSettings().acoustic_refresh_ms) for e in pause)
        assert any(e.reuse_acoustics for e in pause)


def _pause(fsm: FloorMachine, speech_s: float, pause_s: float) -> list[FloorEvent | Evaluate]:
    """Voiced audio for `speech_s`, then `pause_s` of silence; every evaluation left unanswered but the first."""
    out: list[FloorEvent | Evaluate] = []
    for i in range(round((speech_s + pause_s) / WIN)):
        end = (i + 1) * WIN
        out += fsm.on_vad(end, 0.9 if end <= speech_s else 0.05, WIN * 1000, end)
    return out


def test_words_arriving_in_a_pause_are_evaluated_at_once() -> None:
    fsm = FloorMachine(FloorSettings(eval_interval_ms=2000))  # (no tick would come before the words)
    first = [a for a in _pause(fsm, 1.0, 0.13) if isinstance(a, Evaluate)][-1]
    assert fsm.on_estimate(first.request_id, 0.1) == []  # the acoustics alone: a hold, so far
    [ev] = fsm.on_text()  # the final transcript reached the pause
    assert isinstance(ev, Evaluate) and ev.reuse_acoustics and ev.t == pytest.approx(1.12)
    assert ev.pause_ms == pytest.approx((1.12 - fsm.pause_start) * 1000)
    assert types([e for e in fsm.on_estimate(ev.request_id, 0.95) if isinstance(e, FloorEvent)]) == [
        "eot_tentative",
        "eot_commit",
    ]
    assert fsm.on_text() == []  # committed: nothing left to decide


def test_words_arriving_during_an_evaluation_start_the_next_one_when_it_answers() -> None:
    fsm = FloorMachine(FloorSettings(eval_interval_ms=2000))
    first = [a for a in _pause(fsm, 1.0, 0.13) if isinstance(a, Evaluate)][-1]
    assert fsm.on_text() == []  # one evaluation in flight: it read the older words
    [again] = fsm.on_estimate(first.request_id, 0.1)
    assert isinstance(again, Evaluate) and again.request_id > first.request_id
    assert fsm.on_estimate(again.request_id, 0.1) == []  # answered, and no new words since: no third


def test_words_outside_a_pause_evaluate_nothing() -> None:
    fsm = FloorMachine(FloorSettings())
    assert fsm.on_text() == []  # nobody spoke yet
    for i in range(20):
        fsm.on_vad((i + 1) * WIN, 0.9, WIN * 1000, (i + 1) * WIN)
    assert fsm.on_text() == []  # the user is speaking
