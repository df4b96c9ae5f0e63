"""Floor fusion (orchestrator/turns/fusion.py) and its lexical cue (orchestrator/turns/lexical.py).

Every floor evaluation, full or fusion-only, ends in the `floor_fusion` model: `feature_vector` (which runs the
lexical cue on the user's transcript and the replica's last words) and the logistic `FusionWeights.predict`, with
the weights the server ships. The session bounds both texts to 1000 characters (orchestrator/session/floor.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.turns.fusion import FusionWeights, feature_vector
from orchestrator.turns.lexical import lexical

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "model_repository" / "floor_fusion" / "1" / "weights.json"

PROSODY = np.array([-12.9, -6.7, -2.7, 6.2, 9.5, 2.6, -0.2, 0.3, 0.68, 5.2, 4.0], np.float32)
USER = "Yes, I'd like to move my appointment on Friday to the following week, if that's possible."
CONTEXT = "Sure. Your next appointment is on Friday at 10:30 with Dr. Patel. Would you like to change it?"
# A long turn as the fusion sees it: the last ~1000 characters of the user's words (bounded_text).
LONG = (
    "So the thing is, I moved last month and I need to update my address, and also the bill that came in March "
    "went to the old place, and I think I think I paid it twice. "
) * 6
LONG = LONG[-1000:].split(" ", 1)[1]

TEXTS = {
    "empty": "",
    "answer": "Friday.",
    "sentence": USER,
    "dangling": "so I was wondering if you could, um, maybe the",
    "long_1000_chars": LONG,
}


@pytest.fixture(scope="module")
def weights() -> FusionWeights:
    return FusionWeights.load(WEIGHTS)


@pytest.mark.benchmark(group="floor fusion: one evaluation")
def test_fusion_feature_vector_and_predict(benchmark, weights):
    """What `floor_fusion` runs per request: the feature row (lexical cue included) and P(yield)."""

    def run():
        row = feature_vector(0.62, PROSODY, 240.0, USER, CONTEXT)
        return weights.predict(np.stack([row]))

    p = benchmark(run)
    assert p.shape == (1,) and 0.0 < p[0] < 1.0


@pytest.mark.benchmark(group="floor fusion: one evaluation")
def test_fusion_part_feature_vector(benchmark):
    """Part of it: the feature row alone."""
    row = benchmark(feature_vector, 0.62, PROSODY, 240.0, USER, CONTEXT)
    assert row.shape == (18,)


@pytest.mark.benchmark(group="floor fusion: one evaluation")
def test_fusion_part_predict(benchmark, weights):
    """Part of it: the logistic model on one row (numpy on an 18-wide vector: call overhead, mostly)."""
    rows = np.stack([feature_vector(0.62, PROSODY, 240.0, USER, CONTEXT)])
    p = benchmark(weights.predict, rows)
    assert p.shape == (1,)


@pytest.mark.benchmark(group="lexical cue: one transcript")
@pytest.mark.parametrize("kind", list(TEXTS))
def test_lexical(benchmark, kind):
    """`lexical(text, context)` on transcripts of different shapes (the long one is the bounded worst case)."""
    out = benchmark(lexical, TEXTS[kind], CONTEXT)
    assert out.context_question == 1.0
