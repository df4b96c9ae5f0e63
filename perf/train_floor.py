"""Train the floor fusion on the development set, the way the server will use it.

Each dev file is replayed through the same code the server runs (AudioTimeline -> Silero VAD -> the
floor state machine) with a model that never commits, so every evaluation point the machine would ask
about (the first unvoiced windows, then every `eval_interval_ms` while a pause grows) is recorded with its
features (Smart Turn, prosody, pause length) and a label from the exact annotations: 1 inside a yield pause,
0 inside a hold pause or inside speech. A logistic model is fitted on those rows, then the commit and
tentative thresholds are chosen by simulating the state machine on the recorded sequences: the lowest
latency with no commit inside a hold pause, with a safety margin.

Leave-one-voice-out cross-validation reports how the choice generalises to a voice it has not seen.

    .venv/bin/python perf/train_floor.py            # writes model_repository/floor_fusion/1/weights.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients"))

from duet.wav import read_pcm16  # noqa: E402
from orchestrator.audio import SAMPLE_RATE, AudioTimeline  # noqa: E402
from orchestrator.config import FloorSettings  # noqa: E402
from orchestrator.inference.turn import SmartTurn, pcm_to_float  # noqa: E402
from orchestrator.inference.vad import SileroBatch  # noqa: E402
from orchestrator.signal.prosody import PROSODY_FEATURES, prosody_batch  # noqa: E402
from orchestrator.turns.floor import Emit, Evaluate, FloorMachine  # noqa: E402
from orchestrator.turns.fusion import BASE_FEATURES, FusionWeights, feature_vector, fit_logistic  # noqa: E402
from orchestrator.turns.lexical import lexical  # noqa: E402

DATA = ROOT / "perf" / "data" / "turns"
WEIGHTS = ROOT / "model_repository" / "floor_fusion" / "1" / "weights.json"
WINDOW_MS = 32.0
F64 = npt.NDArray[np.float64]


@dataclass
class Point:
    file: str
    voice: str
    t: float
    pause_ms: float
    label: int  # 1 = inside a yield pause
    where: str  # "yield" | "hold" | "speech" | "onset" (speech resumed, VAD not yet caught up)
    pause_key: str  # which labelled pause (file:index) or "" in speech
    pause_start: float  # true start of that pause
    features: F64 | None = None


def read_wav(path: Path) -> npt.NDArray[np.int16]:
    return np.frombuffer(read_pcm16(path), dtype="<i2").astype(np.int16)


def locate(label: dict[str, object], t: float, pause_ms: float) -> tuple[str, int]:
    """Which labelled pause `t` falls in; "onset" when speech resumed but the evaluation's pause began
    before that segment (the VAD has not caught up yet: the point belongs to the pause before)."""
    pauses = label["pauses"]
    assert isinstance(pauses, list)
    for i, p in enumerate(pauses):
        if p["start"] <= t < p["end"] + 1e-9:
            return str(p["kind"]), i
    for p in pauses:
        if p["end"] <= t and t - pause_ms / 1000 < p["end"]:
            return "onset", -1
    return "speech", -1


def replay(
    label: dict[str, object], audio: npt.NDArray[np.int16], vad: SileroBatch, settings: FloorSettings
) -> tuple[list[Point], list[npt.NDArray[np.int16]], list[int]]:
    """Evaluation points of one file with the windows the floor ensemble would get."""
    fsm = FloorMachine(dataclasses.replace(settings, tentative_threshold=1.0, commit_threshold=1.0))
    tl = AudioTimeline()
    state = np.zeros((1, 2, 128), np.float32)
    points: list[Point] = []
    windows: list[npt.NDArray[np.int16]] = []
    pauses: list[int] = []
    for i in range(0, audio.shape[0] - 319, 320):
        for w in tl.push(audio[i : i + 320].tobytes()):
            prob, state = vad(w.audio[None, :], state)
            actions = fsm.on_vad(w.end, float(prob[0, 0]), WINDOW_MS, w.t)
            while actions:
                a = actions.pop(0)
                if isinstance(a, Evaluate):
                    where, idx = locate(label, a.t, a.pause_ms)
                    p = label["pauses"][idx] if idx >= 0 else None  # type: ignore[index]
                    points.append(
                        Point(
                            str(label["file"]),
                            str(label["voice"]),
                            a.t,
                            a.pause_ms,
                            1 if where == "yield" else 0,
                            where,
                            f"{label['file']}:{idx}" if idx >= 0 else "",
                            float(p["start"]) if p else a.t,
                        )
                    )
                    windows.append(tl.window(a.t))
                    pauses.append(round(a.pause_ms * SAMPLE_RATE / 1000))
                    actions += fsm.on_estimate(a.request_id, 0.0)
                elif isinstance(a, Emit):
                    pass
    return points, windows, pauses


def collect(split: str, settings: FloorSettings) -> tuple[list[Point], list[dict[str, object]]]:
    labels = [json.loads(line) for line in (DATA / split / "labels.jsonl").read_text().splitlines() if line]
    vad = SileroBatch(ROOT / "model_repository/vad/1/silero_vad.onnx")
    turn = SmartTurn(ROOT / "model_repository/turn/1/smart-turn-v3.2-cpu.onnx")
    all_points: list[Point] = []
    t0 = time.perf_counter()
    for n, label in enumerate(labels):
        audio = read_wav(DATA / str(label["file"]))
        points, windows, pauses = replay(label, audio, vad, settings)
        if not points:
            continue
        x = np.stack(windows)
        p_turn = np.concatenate([turn(x[i : i + 1]) for i in range(x.shape[0])]).reshape(-1)
        pros = prosody_batch(pcm_to_float(x), np.asarray(pauses))
        for pt, pt_turn, pr in zip(points, p_turn, pros, strict=True):
            pt.features = feature_vector(float(pt_turn), pr.tolist(), pt.pause_ms)
        all_points += points
        print(
            f"  [{n + 1}/{len(labels)}] {label['file']}: {len(points)} evaluation points "
            f"({time.perf_counter() - t0:.0f}s)",
            file=sys.stderr,
        )
    return all_points, labels


@dataclass(frozen=True)
class PolicyResult:
    threshold: float
    latencies_ms: list[float]
    interruptions: int
    spurious: int
    yields: int
    recalled: int

    @property
    def median(self) -> float:
        return float(np.median(self.latencies_ms)) if self.latencies_ms else float("nan")

    @property
    def p90(self) -> float:
        return float(np.percentile(self.latencies_ms, 90)) if self.latencies_ms else float("nan")


def simulate(
    points: Sequence[Point],
    p: F64,
    threshold: float,
    compute_ms: float,
    max_pause_ms: float,
    labels: Sequence[dict[str, object]],
) -> PolicyResult:
    """First evaluation point per pause with p >= threshold commits; the safety net commits at max pause."""
    by_pause: dict[str, list[tuple[Point, float]]] = {}
    spurious = 0
    committed_in_speech: set[str] = set()
    for pt, prob in zip(points, p, strict=True):
        if pt.where == "speech":
            if prob >= threshold:
                spurious += 1
                committed_in_speech.add(pt.file)
            continue
        by_pause.setdefault(pt.pause_key, []).append((pt, float(prob)))
    lat: list[float] = []
    interruptions = 0
    yields = 0
    recalled = 0
    for label in labels:
        for i, pause in enumerate(label["pauses"]):  # type: ignore[arg-type]
            seq = by_pause.get(f"{label['file']}:{i}", [])
            hit = next((pt for pt, prob in seq if prob >= threshold), None)
            if pause["kind"] == "hold":
                dur_ms = (pause["end"] - pause["start"]) * 1000
                if hit is not None or dur_ms >= max_pause_ms + 100:
                    interruptions += 1
                continue
            yields += 1
            if hit is not None:
                lat.append((hit.t - pause["start"]) * 1000 + compute_ms)
                recalled += 1
            elif (pause["end"] - pause["start"]) * 1000 > max_pause_ms:
                lat.append(max_pause_ms + 64 + compute_ms)  # the safety net
                recalled += 1
    return PolicyResult(threshold, lat, interruptions, spurious, yields, recalled)


PAUSE_FEATURES = ("pause_s", "log_pause", "turn_logit_x_pause")
TEXT_FEATURES = ("text_present", "text_complete", "context_question")


def text_so_far(label: dict[str, Any], t: float) -> str:
    """What an ideal ASR would have transcribed of the current turn by audio time `t`."""
    turns = [tn for tn in label["turns"] if tn["start"] <= t]
    if not turns:
        return ""
    start = turns[-1]["start"]
    return " ".join(sg["text"] for sg in label["segments"] if sg["start"] >= start - 1e-6 and sg["end"] <= t + 1e-6)


def with_text(x: F64, points: Sequence[Point], by_file: dict[str, dict[str, Any]], names: Sequence[str]) -> F64:
    out = x.copy()
    ip, ic = names.index("text_present"), names.index("text_complete")
    for i, pt in enumerate(points):
        lx = lexical(text_so_far(by_file[pt.file], pt.t))
        out[i, ip], out[i, ic] = lx.present, (lx.complete - 0.5) * lx.present
    return out


def apply_reuse(points: Sequence[Point], names: Sequence[str], refresh_ms: float) -> int:
    """Mirror the server: past `refresh_ms` of a pause, evaluations reuse the acoustic features (Smart Turn,
    prosody) of the last full evaluation in that pause; only the pause length is new."""
    acoustic = [i for i, n in enumerate(names) if n == "turn_logit" or n in PROSODY_FEATURES]
    ipause, icross = names.index("pause_s"), names.index("turn_logit_x_pause")
    last: dict[tuple[str, float], F64] = {}
    full = 0
    for pt in points:
        assert pt.features is not None
        key = (pt.file, round(pt.t - pt.pause_ms / 1000, 4))  # same VAD speech end = same pause
        if pt.pause_ms > refresh_ms and key in last:
            pt.features[acoustic] = last[key][acoustic]
            pt.features[icross] = pt.features[0] * pt.features[ipause]
        else:
            last[key] = pt.features.copy()
            full += 1
    return full  # evaluations that run Smart Turn and prosody


@dataclass(frozen=True)
class Policy:
    threshold: float
    knee_s: float
    gain_per_s: float


def hazard(logit: F64, pause_ms: F64, knee_s: float, gain: float) -> F64:
    out: F64 = 1.0 / (1.0 + np.exp(-np.clip(logit + gain * np.maximum(0.0, pause_ms / 1000 - knee_s), -30, 30)))
    return out


def search(
    points: Sequence[Point],
    logit: F64,
    labels: Sequence[dict[str, object]],
    compute_ms: float,
    max_pause_ms: float,
    budget: int,
) -> tuple[Policy, PolicyResult]:
    """Fastest policy (median + p90/2) whose commits in hold pauses and in speech total at most `budget`."""
    pause = np.asarray([pt.pause_ms for pt in points])
    best: tuple[float, Policy, PolicyResult] | None = None
    fallback: tuple[int, Policy, PolicyResult] | None = None
    for knee in (0.2, 0.4, 0.7):
        for gain in (0.0, 1.0, 2.0, 4.0, 8.0):
            p = hazard(logit, pause, knee, gain)
            for th in np.round(np.arange(0.30, 0.996, 0.01), 3):
                r = simulate(points, p, float(th), compute_ms, max_pause_ms, labels)
                bad = r.interruptions + r.spurious
                pol = Policy(float(th), knee, gain)
                if bad <= budget:
                    cost = r.median + 0.5 * r.p90
                    if best is None or cost < best[0]:
                        best = (cost, pol, r)
                    break  # higher thresholds are only slower
                if fallback is None or bad < fallback[0]:
                    fallback = (bad, pol, r)
    if best is not None:
        return best[1], best[2]
    assert fallback is not None
    return fallback[1], fallback[2]


def fit_acoustic(
    x: F64, y: F64, points: Sequence[Point], names: Sequence[str], early_ms: float, l2: float, x_text: F64 | None = None
) -> FusionWeights:
    """Logistic fit on early points (pause <= early_ms), each pause weighing the same, classes balanced;
    pause features get zero weight (the hazard term carries the pause)."""
    early = np.asarray([pt.pause_ms <= early_ms and pt.where in ("yield", "hold", "speech") for pt in points])
    keys = [pt.pause_key or f"{pt.file}@{pt.t:.2f}" for pt in points]
    count: dict[str, int] = {}
    for k, e in zip(keys, early, strict=True):
        if e:
            count[k] = count.get(k, 0) + 1
    w = np.asarray([1.0 / count[k] if e else 0.0 for k, e in zip(keys, early, strict=True)])
    pos = float((w * y).sum())
    neg = float((w * (1 - y)).sum())
    w = w * np.where(y > 0, 1.0 / pos, 1.0 / neg) * float(early.sum())
    cols = [i for i, n in enumerate(names) if n not in PAUSE_FEATURES]
    xs, ys, ws = x[early][:, cols], y[early], w[early]
    if x_text is not None:  # the same points as an ASR would see them: the model works with or without text
        xs, ys, ws = np.vstack([xs, x_text[early][:, cols]]), np.concatenate([ys, ys]), np.concatenate([ws, ws])
    part = fit_logistic(xs, ys, [names[i] for i in cols], l2=l2, sample_weight=ws)
    mean, scale, coef = list(np.mean(x, axis=0)), list(np.std(x, axis=0) + 1e-9), [0.0] * len(names)
    for j, i in enumerate(cols):
        mean[i], scale[i], coef[i] = part.mean[j], part.scale[j], part.coef[j]
    return FusionWeights(names=tuple(names), mean=tuple(mean), scale=tuple(scale), coef=tuple(coef), bias=part.bias)


def logit_of(w: FusionWeights, x: F64) -> F64:
    out: F64 = (x - np.asarray(w.mean)) / np.asarray(w.scale) @ np.asarray(w.coef) + w.bias
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--split", default="dev")
    ap.add_argument("--l2", type=float, default=3.0)
    ap.add_argument("--early-ms", type=float, default=700.0, help="fit acoustic weights on points up to this pause")
    ap.add_argument("--budget", type=int, default=2, help="commits allowed inside hold pauses or speech (dev set)")
    ap.add_argument("--compute-ms", type=float, default=70.0, help="expected floor evaluation time")
    ap.add_argument("--out", default=str(WEIGHTS))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "floor_points.pkl"))
    ap.add_argument("--reuse", action="store_true", help="reuse the cached replay of the split")
    ap.add_argument("--no-lovo", action="store_true", help="skip leave-one-voice-out")
    args = ap.parse_args(argv)

    settings = FloorSettings()
    cache = Path(args.cache)
    if args.reuse and cache.exists():
        with cache.open("rb") as f:
            points, labels = pickle.load(f)
    else:
        print(f"replaying {args.split} through VAD + floor machine ...", file=sys.stderr)
        points, labels = collect(args.split, settings)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("wb") as f:
            pickle.dump((points, labels), f)
    by_file = {str(lb["file"]): lb for lb in labels}
    for pt in points:  # relabel (cheap) so label fixes apply to cached replays too
        pt.where, idx = locate(by_file[pt.file], pt.t, pt.pause_ms)
        pt.label = 1 if pt.where == "yield" else 0
        pt.pause_key = f"{pt.file}:{idx}" if idx >= 0 else ""
    names = (*BASE_FEATURES, *PROSODY_FEATURES)
    n_all = len(points)
    n_full = apply_reuse(points, names, settings.acoustic_refresh_ms)
    points = [pt for pt in points if pt.where != "onset"]
    x = np.stack([pt.features for pt in points if pt.features is not None])
    xt = with_text(x, points, by_file, names)
    y = np.asarray([pt.label for pt in points], dtype=np.float64)
    mp = settings.max_pause_ms
    print(
        f"{len(points)} points: {int(y.sum())} in yield pauses, {sum(pt.where == 'hold' for pt in points)} in hold "
        f"pauses, {sum(pt.where == 'speech' for pt in points)} in speech (VAD dips)"
    )

    def row(tag: str, r: PolicyResult, holds: int) -> str:
        return (
            f"| {tag} | {r.yields} | {holds} | {r.median:.0f} | {r.p90:.0f} | {r.interruptions} | {r.spurious} | "
            f"{r.recalled}/{r.yields} |"
        )

    header = [
        "| held out | yields | holds | median ms | p90 ms | interruptions | spurious | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if not args.no_lovo:
        print("\nleave-one-voice-out, audio only (weights and policy fitted on the other voices):")
        print("\n".join(header))
        for v in sorted({pt.voice for pt in points}):
            tr = np.asarray([pt.voice != v for pt in points])
            tr_pts = [pt for pt, keep in zip(points, tr, strict=True) if keep]
            te_pts = [pt for pt, keep in zip(points, tr, strict=True) if not keep]
            tr_lb = [lb for lb in labels if lb["voice"] != v]
            te_lb = [lb for lb in labels if lb["voice"] == v]
            w = fit_acoustic(x[tr], y[tr], tr_pts, names, args.early_ms, args.l2, xt[tr])
            pol, _ = search(tr_pts, logit_of(w, x[tr]), tr_lb, args.compute_ms, mp, args.budget)
            p = hazard(logit_of(w, x[~tr]), np.asarray([pt.pause_ms for pt in te_pts]), pol.knee_s, pol.gain_per_s)
            r = simulate(te_pts, p, pol.threshold, args.compute_ms, mp, te_lb)
            holds = sum(q["kind"] == "hold" for lb in te_lb for q in lb["pauses"])  # type: ignore[attr-defined]
            print(row(v, r, holds))

    w = fit_acoustic(x, y, points, names, args.early_ms, args.l2, xt)
    pol, r = search(points, logit_of(w, x), labels, args.compute_ms, mp, args.budget)
    pause = np.asarray([pt.pause_ms for pt in points])
    rt = simulate(
        points, hazard(logit_of(w, xt), pause, pol.knee_s, pol.gain_per_s), pol.threshold, args.compute_ms, mp, labels
    )
    holds = sum(q["kind"] == "hold" for lb in labels for q in lb["pauses"])  # type: ignore[attr-defined]
    print(f"\nall of {args.split} (in-sample), policy {pol}:")
    print("\n".join([*header, row("audio only", r, holds), row("with ideal transcript", rt, holds)]))
    print("coefficients (standardised):")
    for n, c in sorted(zip(names, w.coef, strict=True), key=lambda nc: -abs(nc[1])):
        if c:
            print(f"  {n:32s} {c:+.3f}")
    audio_s = sum(float(lb["duration"]) for lb in labels)  # type: ignore[arg-type]
    # Shift the bias so the chosen threshold lands on the configured commit threshold: same decisions,
    # and retraining never needs a settings change.
    target = settings.commit_threshold
    shift = math.log(target / (1 - target)) - math.log(pol.threshold / (1 - pol.threshold))
    w = dataclasses.replace(
        w,
        bias=w.bias + shift,
        pause_knee_s=pol.knee_s,
        pause_gain_per_s=pol.gain_per_s,
        note=f"trained by perf/train_floor.py on perf/data/turns/{args.split} ({len(points)} evaluation points); "
        f"policy threshold {pol.threshold:.2f} calibrated to floor.commit_threshold {target:.2f}",
        stats={
            "evals_per_audio_s": round(n_all / audio_s, 3),
            "full_evals_per_audio_s": round(n_full / audio_s, 3),
            "commit_threshold": target,
        },
    )
    w.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
