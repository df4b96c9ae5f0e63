"""Lexical completeness and the fusion's logistic model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.turns.fusion import BASE_FEATURES, FusionWeights, feature_vector, fit_logistic
from orchestrator.turns.lexical import completeness, lexical


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("I'd like to book a flight to", False),
        ("the problem is that", False),
        ("I need eggs, milk, and", False),
        ("so um", False),
        ("I want to change my address, um", False),
        ("Can you help me with my bill?", True),
        ("yes", True),
        ("No thanks.", True),
        ("it was charged twice last month.", True),
    ],
)
def test_completeness(text: str, complete: bool) -> None:
    assert (completeness(text) > 0.5) is complete


@pytest.mark.parametrize(
    "text",
    [
        "before we start.",  # Whisper's "Before we start," - a subordinate clause alone
        "I need eggs. Milk.",  # a list item after a full stop
        "We use a mail, Slack.",  # a list with no "and" yet
        "My phone number is 555.",  # an identifier read in groups
        "The account number is 447.",
        "My date of birth is March.",
        "I'd like to.",  # dangling word behind Whisper's full stop
        "I signed up because I signed up because I signed up because I",  # decoder loop on cut-off audio
        "the invoice",  # a verbless start, no question asked
    ],
)
def test_whisper_holds_read_unfinished_despite_the_full_stop(text: str) -> None:
    assert completeness(text) < 0.5


@pytest.mark.parametrize(
    "text",
    [
        "I need eggs, milk, and bread.",
        "The account number is 4472901.",
        "It was on the 14th of February.",
        "It was on the, fourteenth of February.",
        "No, well, maybe once.",
        "If I upgrade my plan, will the price go up?",
        "I called last weekend. Nobody got back to me.",
    ],
)
def test_finished_whisper_turns_read_complete(text: str) -> None:
    assert completeness(text) > 0.5


def test_a_full_stop_is_weaker_evidence_than_a_question_and_short_answers_need_a_question() -> None:
    assert completeness("How do I reset my password?") > completeness("I'm allergic to penicillin.")
    # No closing mark: a partial decoded mid-speech, neither finished nor dangling.
    assert completeness("I'm allergic to penicillin.") > completeness("I'm allergic to penicillin") == 0.5
    assert completeness("Friday.") < 0.5 < completeness("Friday.", asked=True)
    assert lexical("Friday.", "Which day suits you?").complete > 0.5


def test_unknown_text_is_neutral_and_marked_absent() -> None:
    lx = lexical("", "What is your date of birth?")
    assert lx.present == 0.0 and lx.complete == 0.5 and lx.context_question == 1.0


def test_feature_vector_layout() -> None:
    x = feature_vector(0.9, [1.0, 2.0], 250.0, "yes", "")
    assert x.shape == (len(BASE_FEATURES) + 2,)
    assert x[BASE_FEATURES.index("pause_s")] == pytest.approx(0.25)
    assert x[BASE_FEATURES.index("text_present")] == 1.0


def test_fit_separates_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] - 0.5 * x[:, 2] > 0).astype(np.float64)
    w = fit_logistic(x, y, ["a", "b", "c"], l2=0.1)
    acc = float(((w.predict(x) > 0.5) == (y > 0.5)).mean())
    assert acc > 0.95
    assert w.coef[0] > 0 > w.coef[2]
    w.save(tmp_path / "w.json")
    again = FusionWeights.load(tmp_path / "w.json")
    assert np.allclose(again.predict(x), w.predict(x))
    with pytest.raises(ValueError, match="expects 3 features"):
        w.predict(np.zeros((1, 5)))


def test_pause_hazard_raises_p_yield_past_the_knee_and_survives_save_load(tmp_path: Path) -> None:
    names = (*BASE_FEATURES, "f")
    n = len(names)
    w = FusionWeights(
        names=names,
        mean=(0.0,) * n,
        scale=(1.0,) * n,
        coef=(0.0,) * n,
        bias=-2.0,
        pause_knee_s=0.5,
        pause_gain_per_s=4.0,
        stats={"evals_per_audio_s": 3.0},
    )
    rows = np.stack([feature_vector(0.5, [0.0], ms) for ms in (100.0, 500.0, 1000.0, 1500.0)])
    p = w.predict(rows)
    assert p[0] == pytest.approx(p[1]) and p[1] < 0.2 < p[2] < p[3]
    w.save(tmp_path / "w.json")
    assert FusionWeights.load(tmp_path / "w.json") == w  # every field round-trips
