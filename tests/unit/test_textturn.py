"""The learned text end-of-turn model (orchestrator/turns/textturn.py) with its shipped weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.turns.textturn import (
    DEFAULT_PATH,
    TextTurnModel,
    context_flags,
    feature_strings,
    features,
    normalise,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model() -> TextTurnModel:
    return TextTurnModel.load()


def test_shipped_weights_load(model: TextTurnModel) -> None:
    assert DEFAULT_PATH.is_file()
    assert DEFAULT_PATH.stat().st_size < 1_500_000
    assert model.size == 1 << 15 and len(model.coef) == model.size
    assert sum(1 for c in model.coef if c != 0.0) > 1000
    assert TextTurnModel.load(DEFAULT_PATH) is model  # cached per path


def test_unfinished_scores_below_finished(model: TextTurnModel) -> None:
    unfinished = [model.p_complete(t) for t in ("I would like to", "My number is five five five and")]
    finished = [model.p_complete(t) for t in ("That's all, thank you", "I'd like to change my address")]
    assert max(unfinished) < 0.2
    assert max(unfinished) + 0.1 < min(finished)


def test_whisper_full_stop_does_not_finish_a_dangling_turn(model: TextTurnModel) -> None:
    assert model.p_complete("I would like to.") == pytest.approx(model.p_complete("I would like to"))
    assert model.p_complete("I'm calling about, um,") < model.p_complete("I'm calling about my bill.")


def test_short_answer_after_a_question_is_more_complete(model: TextTurnModel) -> None:
    assert model.p_complete("Tuesday", "What day works for you?") > model.p_complete("Tuesday", "")
    assert model.p_complete("Yes", "Do you want to keep the Friday slot?") > model.p_complete("Yes", "")


def test_empty_text_is_unknown(model: TextTurnModel) -> None:
    assert model.p_complete("") == 0.5
    assert model.p_complete("  ...  ", "How can I help?") == 0.5
    assert model.logit("") == 0.0


def test_probability_and_logit_agree(model: TextTurnModel) -> None:
    import math

    z = model.logit("I need eggs and", "What do you need?")
    assert model.p_complete("I need eggs and", "What do you need?") == pytest.approx(1 / (1 + math.exp(-z)))


def test_normalise_ignores_punctuation_and_case() -> None:
    a = normalise("Yes, um... that's RIGHT!")
    assert a == ["yes", "um", "that's", "right"]
    assert normalise("yes um that's right.") == a
    assert normalise("Yes - um - that\u2019s right") == a
    assert normalise("Yes, um... that's RIGHT!") == a  # deterministic


def test_normalise_digits_and_question_token() -> None:
    assert normalise("It's 4521.") == normalise("it's 4 5 2 1")
    assert normalise("Is it open?", question_token=True)[-1] == "<q>"
    assert normalise("Is it open?")[-1] == "open"
    assert normalise("?", question_token=True) == []


def test_context_flags() -> None:
    assert context_flags("") == ["none"]
    assert context_flags("What day works for you?") == ["q", "wh"]
    assert context_flags("Got it. Do you want the earlier slot?") == ["q", "yn"]
    assert "tell" in context_flags("Tell me about your symptoms.")
    assert context_flags("I have moved your appointment.") == ["stmt"]


def test_features_are_stable_across_processes() -> None:
    here = features("I'd like to, um", "What can I do for you?")
    code = (
        "import json; from orchestrator.turns.textturn import features; "
        "print(json.dumps(features(\"I'd like to, um\", 'What can I do for you?')))"
    )
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(out.stdout) == here


def test_feature_strings_cover_the_turn_and_its_context() -> None:
    fs = feature_strings("so I was thinking", "What brings you in today?")
    assert "w1=thinking" in fs and "f1=so" in fs and "w2=was thinking" in fs
    assert any(f.startswith("cn=wh|") for f in fs)
    assert feature_strings("") == []


def test_sparse_and_dense_weights_read_the_same(tmp_path: Path) -> None:
    coef = [0.0] * 16
    coef[3], coef[9] = 0.5, -1.25
    dense = {"feature_version": 1, "size": 16, "bias": 0.1, "coef": coef}
    sparse = {**dense, "coef": {"3": 0.5, "9": -1.25}}
    (tmp_path / "d.json").write_text(json.dumps(dense))
    (tmp_path / "s.json").write_text(json.dumps(sparse))
    a, b = TextTurnModel.load(tmp_path / "d.json"), TextTurnModel.load(tmp_path / "s.json")
    assert a.coef == b.coef
    assert a.p_complete("I need eggs and") == b.p_complete("I need eggs and")


def test_wrong_feature_version_is_refused() -> None:
    with pytest.raises(ValueError, match="feature_version"):
        TextTurnModel.from_dict({"feature_version": 99, "size": 4, "bias": 0.0, "coef": [0, 0, 0, 0]})


def test_short_answers_and_acknowledgements_are_complete(model: TextTurnModel) -> None:
    for t in ("Definitely not.", "Nope.", "Yep.", "Sure, that works.", "Sounds great."):
        assert model.p_complete(t) > 0.5, t
    assert model.p_complete("Yes, but") < 0.5


def test_phrasal_verb_particle_ends_a_turn(model: TextTurnModel) -> None:
    assert model.p_complete("I need to sign in.") > model.p_complete("I need to sign") + 0.2
    assert model.p_complete("I want to remove the extra add on.") > 0.5
    assert model.p_complete("I need to sign in to the") < 0.2


def test_list_closed_by_and_is_complete(model: TextTurnModel) -> None:
    assert model.p_complete("I have a cough, a fever and a rash.") > 0.5
    closed = model.p_complete("We use Outlook, Teams and Dropbox.")
    assert closed > model.p_complete("We use Outlook, Teams") + 0.2
    assert model.p_complete("We use Outlook, Teams and") < 0.2


def test_amounts_and_full_digit_groups_are_complete(model: TextTurnModel) -> None:
    assert model.p_complete("The bill was sixty four twenty.") > 0.5
    assert model.p_complete("My phone number is 212 555 0148.") > model.p_complete("My phone number is 212") + 0.2
