"""Floor fusion: every cue about the end of a turn, combined into one calibrated P(yield).

Cues: the acoustic end-of-turn model (Smart Turn v3, as a logit), how long the pause has lasted, the
prosody at the end of the phrase (pitch fall, energy decay, final lengthening; orchestrator.signal.prosody),
and the lexical completeness of the transcript when there is one. A logistic model, trained on our own
labelled development set (perf/train_floor.py), weighs them; weights live next to the Triton model as JSON,
so retraining never touches code.

The pause length enters separately, as a hazard: past `pause_knee_s`, each second of silence adds
`pause_gain_per_s` to the log-odds. The acoustic weights are fitted on early evaluation points only (where
the decision matters), with every pause weighted equally; the hazard and the commit threshold are then
chosen by simulating the floor state machine. Fitting pause length as an ordinary feature instead lets it
dominate (most yield-labelled points sit late in long pauses) and leaves holds and yields inseparable early.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from orchestrator.turns.lexical import lexical
from orchestrator.turns.textturn import TextTurnModel

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

BASE_FEATURES = (
    "turn_logit",
    "pause_s",
    "log_pause",
    "turn_logit_x_pause",
    "text_present",
    "text_complete",
    "text_turn",
    "context_question",
)
TEXT_TURN_CLIP = 6.0  # the learned text model's log-odds, bounded: one odd transcript cannot decide alone


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def text_features(
    text: str, context: str = "", model: TextTurnModel | None = None
) -> tuple[float, float, float, float]:
    """`text_present`, `text_complete` (the rules of `lexical`), `text_turn` (the learned text model's bounded
    log-odds that the turn is complete, `orchestrator.turns.textturn`) and `context_question`."""
    lx = lexical(text, context)
    learned = (model or TextTurnModel.load()).logit(text, context) if lx.present else 0.0
    turn = max(-TEXT_TURN_CLIP, min(TEXT_TURN_CLIP, learned))
    return lx.present, (lx.complete - 0.5) * lx.present, turn, lx.context_question


def feature_vector(
    p_turn: float,
    prosody: Sequence[float],
    pause_ms: float,
    text: str = "",
    context: str = "",
    text_model: TextTurnModel | None = None,
) -> F64:
    """Raw features in the order `BASE_FEATURES + prosody names`."""
    pause_s = max(pause_ms, 0.0) / 1000.0
    tl = _logit(p_turn)
    base = [tl, pause_s, math.log(0.02 + pause_s), tl * pause_s, *text_features(text, context, text_model)]
    return np.asarray([*base, *(float(v) for v in prosody)], dtype=np.float64)


@dataclass(frozen=True)
class FusionWeights:
    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    bias: float
    note: str = ""
    stats: dict[str, float] = field(default_factory=dict)  # training facts, e.g. evaluations per audio second
    pause_knee_s: float = 0.0
    pause_gain_per_s: float = 0.0  # log-odds added per second of pause beyond the knee

    def predict(self, x: F64) -> F64:
        """P(yield) for rows of raw features [N, F]."""
        if x.shape[-1] != len(self.coef):
            raise ValueError(f"fusion expects {len(self.coef)} features ({', '.join(self.names)}), got {x.shape[-1]}")
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        s = z @ np.asarray(self.coef) + self.bias
        if self.pause_gain_per_s:
            s = s + self.pause_gain_per_s * np.maximum(0.0, x[..., self.names.index("pause_s")] - self.pause_knee_s)
        out: F64 = 1.0 / (1.0 + np.exp(-np.clip(s, -30, 30)))
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @staticmethod
    def load(path: str | Path) -> FusionWeights:
        d = json.loads(Path(path).read_text())
        return FusionWeights(
            names=tuple(d["names"]),
            mean=tuple(d["mean"]),
            scale=tuple(d["scale"]),
            coef=tuple(d["coef"]),
            bias=float(d["bias"]),
            note=str(d.get("note", "")),
            stats={k: float(v) for k, v in d.get("stats", {}).items()},
            pause_knee_s=float(d.get("pause_knee_s", 0.0)),
            pause_gain_per_s=float(d.get("pause_gain_per_s", 0.0)),
        )


def fit_logistic(
    x: F64,
    y: F64,
    names: Sequence[str],
    l2: float = 1.0,
    sample_weight: F64 | None = None,
    iters: int = 200,
    note: str = "",
) -> FusionWeights:
    """L2-regularised logistic regression by Newton's method (small data: a few thousand rows)."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((x.shape[0], 1))])
    w = np.zeros(z.shape[1])
    sw = np.ones(x.shape[0]) if sample_weight is None else sample_weight
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        grad = z.T @ (sw * (p - y)) + reg * w
        hess = (z * (sw * p * (1 - p))[:, None]).T @ z + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return FusionWeights(
        names=tuple(names),
        mean=tuple(mean.tolist()),
        scale=tuple(scale.tolist()),
        coef=tuple(w[:-1].tolist()),
        bias=float(w[-1]),
        note=note,
    )
