"""Train the floor fusion on the development set, the way the server will use it.

Each dev file is replayed through the same code the server runs (AudioTimeline -> Silero VAD -> the
floor state machine) with a model that never commits, so every evaluation point the machine would ask
about (the first unvoiced windows, then every `eval_interval_ms` while a pause grows) is recorded with its
features (Smart Turn, prosody, pause length) and a label from the exact annotations: 1 inside a yield pause,
0 inside a hold pause or inside speech. A logistic model is fitted on those rows, then the commit and
tentative thresholds are chosen by simulating the state machine on the recorded sequences: the lowest
latency with no commit inside a hold pause, with a safety margin.

Leave-one-voice-out cross-validation reports how the choice generalises to a voice it has not seen.

The text features (lexical completeness) come from the transcript an ideal ASR would give (`text_so_far`),
or with `--asr` from the real recogniser run on the schedule the conversation loop uses (`decode_schedule`:
partial re-decodes while the user speaks, a final one at each speech end, each reaching the floor `d` ms
later); transcripts are cached in .cache/floor_asr_transcripts.pkl. With `--asr` the weights are written only
if they beat the audio-only recipe on held-out voices (lower median latency, no more hold interruptions).

    .venv/bin/python perf/train_floor.py            # writes model_repository/floor_fusion/1/weights.json
    .venv/bin/python perf/train_floor.py --reuse --asr --budget 1   # the shipped weights (see README)
    .venv/bin/python perf/train_floor.py --split check --asr --score W.json   # score frozen weights, no fitting
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients"))

from duet.wav import read_pcm16  # noqa: E402
from orchestrator.config import AsrSettings, FloorSettings  # noqa: E402
from orchestrator.inference.turn import SmartTurn, pcm_to_float  # noqa: E402
from orchestrator.inference.vad import SileroBatch  # noqa: E402
from orchestrator.signal.audio import SAMPLE_RATE, AudioTimeline  # noqa: E402
from orchestrator.signal.prosody import PROSODY_FEATURES, prosody_batch  # noqa: E402
from orchestrator.speech.gate import FINAL_PAD_S, TURN_PAD_S  # noqa: E402
from orchestrator.turns.floor import Evaluate, FloorMachine  # noqa: E402
from orchestrator.turns.fusion import (  # noqa: E402
    BASE_FEATURES,
    FusionWeights,
    feature_vector,
    fit_logistic,
    text_features,
)

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
    min_pause_ms: float = 0.0,
) -> PolicyResult:
    """First evaluation point per pause with p >= threshold (and at least `min_pause_ms` of pause) commits;
    the safety net commits at max pause."""
    by_pause: dict[str, list[tuple[Point, float]]] = {}
    spurious = 0
    committed_in_speech: set[str] = set()
    for pt, prob in zip(points, p, strict=True):
        if pt.where == "speech":
            if prob >= threshold and pt.pause_ms >= min_pause_ms:
                spurious += 1
                committed_in_speech.add(pt.file)
            continue
        by_pause.setdefault(pt.pause_key, []).append((pt, float(prob)))
    lat: list[float] = []
    interruptions = 0
    yields = 0
    recalled = 0
    for label in labels:
        pauses: list[dict[str, Any]] = label["pauses"]  # type: ignore[assignment]
        for i, pause in enumerate(pauses):
            seq = by_pause.get(f"{label['file']}:{i}", [])
            hit = next((pt for pt, prob in seq if prob >= threshold and pt.pause_ms >= min_pause_ms), None)
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
TEXT_FEATURES = ("text_present", "text_complete", "text_turn", "context_question")


def text_so_far(label: dict[str, Any], t: float) -> str:
    """What an ideal ASR would have transcribed of the current turn by audio time `t`."""
    turns = [tn for tn in label["turns"] if tn["start"] <= t]
    if not turns:
        return ""
    start = turns[-1]["start"]
    return " ".join(sg["text"] for sg in label["segments"] if sg["start"] >= start - 1e-6 and sg["end"] <= t + 1e-6)


def with_texts(x: F64, texts: Sequence[str], names: Sequence[str]) -> F64:
    """`x` with the text features of each row computed from `texts` (as feature_vector does)."""
    out = x.copy()
    cols = [names.index(n) for n in ("text_present", "text_complete", "text_turn", "context_question")]
    for i, text in enumerate(texts):
        out[i, cols] = text_features(text)
    return out


def with_text(x: F64, points: Sequence[Point], by_file: dict[str, dict[str, Any]], names: Sequence[str]) -> F64:
    """`x` with the transcript an ideal ASR would have given at each point."""
    return with_texts(x, [text_so_far(by_file[pt.file], pt.t) for pt in points], names)


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


# Commit thresholds the policy search tries: coarse, then finer near 1 where text-bearing models land.
THRESHOLDS = np.concatenate([np.round(np.arange(0.30, 0.99, 0.01), 3), np.round(np.arange(0.990, 0.9995, 0.001), 4)])


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
            for th in THRESHOLDS:
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


# ---- real streaming ASR (--asr) ---------------------------------------------------------------------------
#
# The conversation loop (orchestrator/session/) feeds the floor the newest Whisper transcript of the
# current turn: every `partial_interval_ms` of audio while the user speaks it re-decodes [turn start - pad,
# now], and at each speech_end it decodes [turn start - pad, speech_end + FINAL_PAD_S] (the "final"). One
# decode runs at a time; each result reaches the floor `delay_ms` after the decode started. A turn lasts from
# its first speech_start until the commit, i.e. across hold pauses. The simulation below replays that schedule
# on the audio clock (streaming is real time, so wall time = audio time) and runs the real recogniser.

ASR_MODEL = ROOT / "model_repository" / "asr" / "1" / "whisper-base"
# the gate keeps TURN_PAD_S of audio before the detected speech start, FINAL_PAD_S after speech_end (0 since
# 2026-12-06: speech_end already lies 64+ ms into the pause)
ASR_DELAY_MS = 250.0  # default decode latency d (see --asr-delay-ms)
CHUNK = 320  # 20 ms client chunks: the conversation checks for a due partial after each one


@dataclass(frozen=True)
class Decode:
    start: int  # first sample of the decoded audio
    end: int  # one past the last sample
    ready: float  # audio time (s) at which the transcript reaches the floor
    final: bool


@dataclass
class AsrTurn:
    begin: float  # the speech_start event that opened the turn
    start: int  # first sample every decode of the turn covers
    decodes: list[Decode]


def speech_events(audio: npt.NDArray[np.int16], vad: SileroBatch, settings: FloorSettings) -> list[tuple[str, float]]:
    """(speech_start | speech_end, t) of the floor machine over `audio`, t the end of the chunk that decided."""
    fsm = FloorMachine(dataclasses.replace(settings, tentative_threshold=1.0, commit_threshold=1.0))
    tl = AudioTimeline()
    state = np.zeros((1, 2, 128), np.float32)
    events: list[tuple[str, float]] = []
    for i in range(0, audio.shape[0] - CHUNK + 1, CHUNK):
        for w in tl.push(audio[i : i + CHUNK].tobytes()):
            prob, state = vad(w.audio[None, :], state)
            actions = fsm.on_vad(w.end, float(prob[0, 0]), WINDOW_MS, w.t)
            while actions:
                a = actions.pop(0)
                if isinstance(a, Evaluate):
                    actions += fsm.on_estimate(a.request_id, 0.0)
                elif a.type in ("speech_start", "speech_end"):
                    events.append((a.type, a.t))
    return events


def decode_schedule(
    events: Sequence[tuple[str, float]],
    yield_starts: Sequence[float],
    n_samples: int,
    delay_ms: float,
    interval_ms: float,
    speech_start_ms: float,
    final_pad_s: float = FINAL_PAD_S,
) -> list[AsrTurn]:
    """The decodes the conversation loop would run on one file, grouped by user turn.

    A speech_start opens a new turn when a yield pause began since the last turn opened (the floor commits
    inside yield pauses; a hold pause keeps the turn). Partials start only on a chunk boundary with the
    decoder idle; a final waits for its audio and for a final in flight (never for a partial: that one is
    stale once speech ended, and the final runs beside it), then starts at once."""
    d = delay_ms / 1000
    interval = round(interval_ms * SAMPLE_RATE / 1000)
    turns: list[AsrTurn] = []
    speaking = False
    busy_until = -1.0
    final_busy_until = -1.0  # (a final in flight)
    last_partial = 0
    final_upto: int | None = None
    ev = list(events)
    for c in range(CHUNK, n_samples + 1, CHUNK):
        t = c / SAMPLE_RATE
        while ev and ev[0][1] <= t + 1e-9:
            kind, te = ev.pop(0)
            if kind == "speech_start":
                speaking = True
                if not turns or any(turns[-1].begin < y <= te for y in yield_starts):
                    start = max(round((te - TURN_PAD_S - speech_start_ms / 1000) * SAMPLE_RATE), 0)
                    turns.append(AsrTurn(te, start, []))
                    last_partial = c
            else:
                speaking = False
                if turns:
                    final_upto = round((te + final_pad_s) * SAMPLE_RATE)
        if not turns:
            continue
        turn = turns[-1]
        if final_upto is not None and final_upto <= c:
            begin = max(final_upto / SAMPLE_RATE, final_busy_until)
            busy_until = final_busy_until = begin + d
            turn.decodes.append(Decode(turn.start, final_upto, busy_until, True))
            last_partial, final_upto = final_upto, None
        elif speaking and final_upto is None and busy_until <= t + 1e-9 and c - last_partial >= interval:
            busy_until = t + d
            turn.decodes.append(Decode(turn.start, c, busy_until, False))
            last_partial = c
    return turns


def transcript_at(
    turns: Sequence[AsrTurn], t: float, texts: dict[tuple[int, int], str], pause_start: float | None = None
) -> str:
    """The newest transcript of the turn in progress at `t` that has reached the floor by `t`. With
    `pause_start`, only the final decode of the pause that began there counts (the server's floor sees the
    words only once they reach the pause: `FloorSession.text`); a partial decoded mid-speech is ""."""
    turn = next((tn for tn in reversed(turns) if tn.begin <= t + 1e-9), None)
    if turn is None:
        return ""
    ready = [dc for dc in turn.decodes if dc.ready <= t + 1e-9]
    if not ready:
        return ""
    newest = ready[-1]
    if pause_start is not None and not (newest.final and newest.end >= round(pause_start * SAMPLE_RATE)):
        return ""
    return texts[(newest.start, newest.end)]


class Recogniser:
    """Whisper base int8 on CTranslate2, greedy, English, no timestamps in the text, no VAD filter.

    `duet` is the server's own decoder (orchestrator.inference.asr: the encoder sees the utterance plus a
    margin instead of 30 s, ~5-10x faster on this CPU) with its default options, as the `asr` model runs it for
    partials; `faster-whisper` is the reference transcribe() on the full 30 s window."""

    def __init__(self, decoder: str, threads: int) -> None:
        self.decoder = decoder
        # Imported here: the other modes need no ASR packages.
        if decoder == "duet":
            from orchestrator.inference.asr import WhisperRecognizer

            self._duet = WhisperRecognizer(ASR_MODEL, threads=threads)
        elif decoder == "faster-whisper":
            from faster_whisper import WhisperModel

            self._fw = WhisperModel(str(ASR_MODEL), device="cpu", compute_type="int8", cpu_threads=threads)
        else:
            raise ValueError(f"unknown decoder {decoder!r} (duet | faster-whisper)")

    def __call__(self, audio: npt.NDArray[np.int16]) -> str:
        if self.decoder == "duet":
            return self._duet([audio], timings=[False])[0].text
        segments, _ = self._fw.transcribe(
            pcm_to_float(audio),
            language="en",
            beam_size=1,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        return " ".join(sg.text.strip() for sg in segments).strip()


Key = tuple[str, int, int]  # (file, first sample, end sample)


@dataclass
class AsrCache:
    """Per decoder: transcripts and decode wall times keyed by (file, first sample, end sample); VAD events
    per file (they depend only on the audio and the floor settings)."""

    texts: dict[str, dict[Key, str]] = dataclasses.field(default_factory=dict)
    decode_ms: dict[str, dict[Key, float]] = dataclasses.field(default_factory=dict)
    events: dict[str, list[tuple[str, float]]] = dataclasses.field(default_factory=dict)

    @staticmethod
    def load(path: Path) -> AsrCache:
        if not path.exists():
            return AsrCache()
        with path.open("rb") as f:
            return AsrCache(**pickle.load(f))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(dataclasses.asdict(self), f)
        tmp.replace(path)  # a killed run never leaves a torn cache


def asr_texts(
    points: Sequence[Point],
    labels: Sequence[dict[str, Any]],
    settings: FloorSettings,
    delay_ms: float,
    cache_path: Path,
    decoder: str = "duet",
    threads: int = 2,
    final_pad_s: float = FINAL_PAD_S,
    finals_only: bool = True,
) -> tuple[Callable[[Sequence[Point]], list[str]], dict[Key, float], dict[str, list[float]]]:
    """The transcript each point would see under the streaming schedule (decoding what the cache lacks), and
    the wall time of each decode the schedule runs, and when each final decode reaches the floor (per file).
    `finals_only`: a point sees only the final decode of its own pause, as the server's floor does (see
    `transcript_at`)."""
    cache = AsrCache.load(cache_path)
    interval = float(AsrSettings().partial_interval_ms)
    vad: SileroBatch | None = None
    audio: dict[str, npt.NDArray[np.int16]] = {}
    schedules: dict[str, list[AsrTurn]] = {}
    for lb in labels:
        f = str(lb["file"])
        audio[f] = read_wav(DATA / f)
        if f not in cache.events:
            vad = vad or SileroBatch(ROOT / "model_repository/vad/1/silero_vad.onnx")
            cache.events[f] = speech_events(audio[f], vad, settings)
        yields = [float(p["start"]) for p in lb["pauses"] if p["kind"] == "yield"]
        schedules[f] = decode_schedule(
            cache.events[f], yields, audio[f].shape[0], delay_ms, interval, settings.speech_start_ms, final_pad_s
        )
    texts = cache.texts.setdefault(decoder, {})
    times = cache.decode_ms.setdefault(decoder, {})
    wanted = {(f, dc.start, dc.end) for f, turns in schedules.items() for tn in turns for dc in tn.decodes}
    todo = sorted(wanted - set(texts))
    n_decodes = sum(len(tn.decodes) for turns in schedules.values() for tn in turns)
    print(f"ASR schedule (d = {delay_ms:.0f} ms): {n_decodes} decodes, {len(todo)} not cached", file=sys.stderr)
    if todo:
        recognise = Recogniser(decoder, threads)
        t0 = time.perf_counter()
        for n, key in enumerate(todo):
            f, a, b = key
            t1 = time.perf_counter()
            texts[key] = recognise(audio[f][a:b])
            times[key] = (time.perf_counter() - t1) * 1000
            if (n + 1) % 50 == 0 or n + 1 == len(todo):
                cache.save(cache_path)
                print(f"  decoded {n + 1}/{len(todo)} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    cache.save(cache_path)
    per_file: dict[str, dict[tuple[int, int], str]] = {}
    for (f, a, b), txt in texts.items():
        per_file.setdefault(f, {})[(a, b)] = txt

    def seen(pts: Sequence[Point]) -> list[str]:
        return [
            transcript_at(
                schedules[pt.file],
                pt.t,
                per_file.get(pt.file, {}),
                pt.t - pt.pause_ms / 1000 if finals_only else None,
            )
            for pt in pts
        ]

    arrivals = {f: [dc.ready for tn in turns for dc in tn.decodes if dc.final] for f, turns in schedules.items()}
    return seen, {k: times[k] for k in wanted}, arrivals


def with_arrivals(
    points: Sequence[Point], arrivals: dict[str, list[float]], names: Sequence[str], labels: Sequence[dict[str, Any]]
) -> list[Point]:
    """`points` plus an evaluation where each final transcript reaches the floor inside a pause (the server
    evaluates then, `FloorMachine.on_text`): the acoustic features of the pause's last evaluation before it,
    the pause length at that moment."""
    by_file = {str(lb["file"]): lb for lb in labels}
    ipause, ilog, icross = (names.index(n) for n in ("pause_s", "log_pause", "turn_logit_x_pause"))
    last: dict[tuple[str, float], Point] = {}  # per pause (file, VAD pause start): the points in time order
    extra: list[Point] = []
    queue = {f: sorted(ts) for f, ts in arrivals.items()}
    for pt in points:
        key = (pt.file, round(pt.t - pt.pause_ms / 1000, 4))
        prev = last.get(key)
        if prev is not None:
            for ready in queue.get(pt.file, []):
                if prev.t < ready < pt.t and prev.features is not None:
                    extra.append(_moved(prev, ready, by_file[pt.file], ipause, ilog, icross))
        last[key] = pt
    out = sorted([*points, *extra], key=lambda q: (q.file, q.t))
    return out


def _moved(pt: Point, t: float, label: dict[str, Any], ipause: int, ilog: int, icross: int) -> Point:
    assert pt.features is not None
    pause_ms = pt.pause_ms + (t - pt.t) * 1000
    f = pt.features.copy()
    f[ipause] = pause_ms / 1000
    f[ilog] = math.log(0.02 + pause_ms / 1000)
    f[icross] = f[0] * f[ipause]
    where, idx = locate(label, t, pause_ms)
    key = f"{pt.file}:{idx}" if idx >= 0 else ""
    return Point(pt.file, pt.voice, t, pause_ms, int(where == "yield"), where, key, pt.pause_start, f)


@dataclass(frozen=True)
class Recipe:
    """One way of training: the text-bearing copy of the rows stacked with the audio-only ones for the fit,
    the features the policy is chosen on, and the ones it is scored on."""

    name: str
    model: str  # recipes with the same model share the fitted weights and policy
    fit_text: F64
    tune: F64
    score: F64


def decode_time_table(decode_ms: dict[Key, float]) -> str:
    """Median and p90 decode wall time by utterance length (whole seconds, rounded up)."""
    by_len: dict[int, list[float]] = {}
    for (_, a, b), ms in decode_ms.items():
        by_len.setdefault(math.ceil((b - a) / SAMPLE_RATE), []).append(ms)
    rows = ["| audio s | decodes | median ms | p90 ms |", "|---|---|---|---|"]
    for n in sorted(by_len):
        v = by_len[n]
        rows.append(f"| {n - 1}-{n} | {len(v)} | {np.median(v):.0f} | {np.percentile(v, 90):.0f} |")
    return "\n".join(rows)


def merge(results: Sequence[PolicyResult]) -> PolicyResult:
    """Leave-one-voice-out folds pooled into one result (latencies concatenated, counts summed)."""
    return PolicyResult(
        float("nan"),
        [v for r in results for v in r.latencies_ms],
        sum(r.interruptions for r in results),
        sum(r.spurious for r in results),
        sum(r.yields for r in results),
        sum(r.recalled for r in results),
    )


def score_weights(
    paths: Sequence[str],
    recipes: Sequence[Recipe],
    points: Sequence[Point],
    labels: Sequence[dict[str, Any]],
    settings: FloorSettings,
    compute_ms: float,
) -> str:
    """Frozen weights replayed as the server runs them (commit at floor.commit_threshold) on each recipe's
    scoring features, at each turn-taking patience a persona can set (`flow_floor`: the commit threshold,
    the safety net and, when high, a minimum pause): a held-out report that fits nothing."""
    from orchestrator.session.interactions import flow_floor

    rows = [
        "| weights | text | patience | median ms | p90 ms | interruptions | spurious | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        w = FusionWeights.load(path)
        scored: set[int] = set()
        for rc in recipes:
            if id(rc.score) in scored:  # the cross rows ("scored with/without") repeat a text source
                continue
            scored.add(id(rc.score))
            p = w.predict(rc.score)
            for level in ("low", "medium", "high"):
                s = flow_floor(settings, level)
                r = simulate(points, p, s.commit_threshold, compute_ms, s.max_pause_ms, labels, s.min_commit_pause_ms)
                rows.append(
                    f"| {path} | {rc.name.split(' (')[0]} | {level} | {r.median:.0f} | {r.p90:.0f} | "
                    f"{r.interruptions} | {r.spurious} | {r.recalled}/{r.yields} |"
                )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--split", default="dev")
    ap.add_argument("--l2", type=float, default=3.0)
    ap.add_argument("--early-ms", type=float, default=700.0, help="fit acoustic weights on points up to this pause")
    ap.add_argument("--budget", type=int, default=2, help="commits allowed inside hold pauses or speech (dev set)")
    ap.add_argument("--compute-ms", type=float, default=70.0, help="expected floor evaluation time")
    ap.add_argument("--out", default=str(WEIGHTS))
    ap.add_argument("--cache", help="cached replay (default .cache/floor_points.pkl for dev, else _SPLIT.pkl)")
    ap.add_argument("--reuse", action="store_true", help="reuse the cached replay of the split")
    ap.add_argument("--no-lovo", action="store_true", help="skip leave-one-voice-out")
    ap.add_argument(
        "--asr", action="store_true", help="train and tune on real streaming Whisper transcripts (see decode_schedule)"
    )
    ap.add_argument(
        "--asr-delay-ms",
        type=float,
        default=ASR_DELAY_MS,
        help="decode latency: a transcript reaches the floor this long after its decode starts",
    )
    ap.add_argument("--asr-final-pad-ms", type=float, default=FINAL_PAD_S * 1000, help="audio decoded past speech_end")
    ap.add_argument(
        "--asr-partials", action="store_true", help="the floor also sees partials decoded mid-speech (before 2026-12)"
    )
    ap.add_argument("--asr-cache", default=str(ROOT / ".cache" / "floor_asr_transcripts.pkl"))
    ap.add_argument("--asr-threads", type=int, default=2, help="CTranslate2 threads for the decodes")
    ap.add_argument("--asr-decoder", default="duet", choices=("duet", "faster-whisper"), help="see Recogniser")
    ap.add_argument("--force", action="store_true", help="with --asr: write the weights even if they do not win")
    ap.add_argument("--score", nargs="+", metavar="WEIGHTS", help="only score these weights on the split (no fit)")
    args = ap.parse_args(argv)

    settings = FloorSettings()
    suffix = "" if args.split == "dev" else f"_{args.split}"
    cache = Path(args.cache or ROOT / ".cache" / f"floor_points{suffix}.pkl")
    if args.reuse and cache.exists():
        with cache.open("rb") as f:
            points, labels = pickle.load(f)
    else:
        print(f"replaying {args.split} through VAD + floor machine ...", file=sys.stderr)
        points, labels = collect(args.split, settings)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("wb") as out:
            pickle.dump((points, labels), out)
    by_file = {str(lb["file"]): lb for lb in labels}
    for pt in points:  # relabel (cheap) so label fixes apply to cached replays too
        pt.where, idx = locate(by_file[pt.file], pt.t, pt.pause_ms)
        pt.label = 1 if pt.where == "yield" else 0
        pt.pause_key = f"{pt.file}:{idx}" if idx >= 0 else ""
    names = (*BASE_FEATURES, *PROSODY_FEATURES)
    n_all = len(points)
    n_full = apply_reuse(points, names, settings.acoustic_refresh_ms)
    points = [pt for pt in points if pt.where != "onset"]
    seen = None
    if args.asr:
        seen, decode_ms, arrivals = asr_texts(
            points, labels, settings, args.asr_delay_ms, Path(args.asr_cache), args.asr_decoder, args.asr_threads,
            args.asr_final_pad_ms / 1000, not args.asr_partials,
        )  # fmt: skip
        if not args.asr_partials:
            n_before = len(points)
            points = [pt for pt in with_arrivals(points, arrivals, names, labels) if pt.where != "onset"]
            print(f"{len(points) - n_before} evaluations added where a final transcript arrives in a pause")
    x = np.stack([pt.features for pt in points if pt.features is not None])
    xt = with_text(x, points, by_file, names)
    y = np.asarray([pt.label for pt in points], dtype=np.float64)
    mp = settings.max_pause_ms
    pause = np.asarray([pt.pause_ms for pt in points])
    print(
        f"{len(points)} points: {int(y.sum())} in yield pauses, {sum(pt.where == 'hold' for pt in points)} in hold "
        f"pauses, {sum(pt.where == 'speech' for pt in points)} in speech (VAD dips)"
    )
    recipes = [Recipe("no text (shipped recipe)", "none", xt, x, x), Recipe("ideal text", "ideal", xt, xt, xt)]
    if seen is not None:
        texts = seen(points)
        xa = with_texts(x, texts, names)
        print(
            f"ASR ({args.asr_decoder}): d = {args.asr_delay_ms:.0f} ms; {sum(bool(t) for t in texts)}/{len(texts)} "
            "points see a transcript. Decode wall time when cached (this run's or an earlier one's):"
        )
        print(decode_time_table(decode_ms))
        recipes += [
            Recipe("real ASR text", "asr", xa, xa, xa),
            Recipe("shipped recipe, scored with ASR text", "none", xt, x, xa),
            Recipe("ASR recipe, scored without text", "asr", xa, xa, x),
        ]
    if args.score:
        print(score_weights(args.score, recipes, points, labels, settings, args.compute_ms))
        return 0
    chosen = recipes[2] if args.asr else recipes[0]

    def fit(rc: Recipe, keep: npt.NDArray[np.bool_]) -> tuple[FusionWeights, Policy]:
        pts = [pt for pt, k in zip(points, keep, strict=True) if k]
        lbs = [lb for lb in labels if any(lb["voice"] == pt.voice for pt in pts)]
        w = fit_acoustic(x[keep], y[keep], pts, names, args.early_ms, args.l2, rc.fit_text[keep])
        pol, _ = search(pts, logit_of(w, rc.tune[keep]), lbs, args.compute_ms, mp, args.budget)
        return w, pol

    def score(w: FusionWeights, pol: Policy, rc: Recipe, keep: npt.NDArray[np.bool_]) -> PolicyResult:
        pts = [pt for pt, k in zip(points, keep, strict=True) if k]
        lbs = [lb for lb in labels if any(lb["voice"] == pt.voice for pt in pts)]
        p = hazard(logit_of(w, rc.score[keep]), pause[keep], pol.knee_s, pol.gain_per_s)
        return simulate(pts, p, pol.threshold, args.compute_ms, mp, lbs)

    def cells(r: PolicyResult) -> str:
        return f"{r.median:.0f} | {r.p90:.0f} | {r.interruptions} | {r.spurious} | {r.recalled}/{r.yields}"

    everything = np.ones(len(points), dtype=bool)
    voices = sorted({pt.voice for pt in points})
    fitted: dict[str, tuple[FusionWeights, Policy]] = {}
    table = [
        "| recipe | policy (threshold, knee s, gain/s) | dev median ms | p90 | interruptions | spurious | recall "
        "| LOVO median ms | p90 | interruptions | spurious | recall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rc in recipes:
        if rc.model not in fitted:
            fitted[rc.model] = fit(rc, everything)
        w, pol = fitted[rc.model]
        dev = score(w, pol, rc, everything)
        lovo: list[PolicyResult] = []
        per_voice: list[str] = []
        for v in [] if args.no_lovo else voices:
            keep = np.asarray([pt.voice != v for pt in points])
            if f"{rc.model}/{v}" not in fitted:
                fitted[f"{rc.model}/{v}"] = fit(rc, keep)
            wv, pv = fitted[f"{rc.model}/{v}"]
            r = score(wv, pv, rc, ~keep)
            lovo.append(r)
            holds = sum(q["kind"] == "hold" for lb in labels if lb["voice"] == v for q in lb["pauses"])
            per_voice.append(f"| {v} | {r.yields} | {holds} | {cells(r)} |")
        if rc is chosen and per_voice:
            print(f"\nleave-one-voice-out, {rc.name} (weights and policy fitted on the other voices):")
            print("| held out | yields | holds | median ms | p90 ms | interruptions | spurious | recall |")
            print("|---|---|---|---|---|---|---|---|")
            print("\n".join(per_voice))
        lv = cells(merge(lovo)) if lovo else "- | - | - | - | -"
        table.append(f"| {rc.name} | {pol.threshold:.2f}, {pol.knee_s}, {pol.gain_per_s} | {cells(dev)} | {lv} |")
        if rc is recipes[0]:
            baseline = merge(lovo) if lovo else dev
        if rc is chosen:
            best_w, best_pol, best = w, pol, merge(lovo) if lovo else dev
    holds = sum(q["kind"] == "hold" for lb in labels for q in lb["pauses"])
    print(f"\n{args.split}: {holds} hold pauses; in-sample (dev) and leave-one-voice-out pooled (LOVO):")
    print("\n".join(table))
    w, pol = best_w, best_pol
    print(f"coefficients of {chosen.name} (standardised), policy {pol}:")
    for n, c in sorted(zip(names, w.coef, strict=True), key=lambda nc: -abs(nc[1])):
        if c:
            print(f"  {n:32s} {c:+.3f}")
    if args.asr and not args.force:
        wins = best.median < baseline.median and best.interruptions <= baseline.interruptions
        if not wins:
            print(
                f"not written: {chosen.name} does not beat the shipped recipe on held-out voices "
                f"(median {best.median:.0f} vs {baseline.median:.0f} ms, "
                f"interruptions {best.interruptions} vs {baseline.interruptions}); --force writes it anyway"
            )
            return 0
    audio_s = sum(float(lb["duration"]) for lb in labels)
    # Shift the bias so the chosen threshold lands on the configured commit threshold: same decisions,
    # and retraining never needs a settings change.
    target = settings.commit_threshold
    shift = math.log(target / (1 - target)) - math.log(pol.threshold / (1 - pol.threshold))
    source = f"streaming Whisper base int8 text, d = {args.asr_delay_ms:.0f} ms" if args.asr else "ideal text"
    stats = {
        "evals_per_audio_s": round(n_all / audio_s, 3),
        "full_evals_per_audio_s": round(n_full / audio_s, 3),
        "commit_threshold": target,
    }
    if args.asr:
        stats["asr_delay_ms"] = args.asr_delay_ms
    w = dataclasses.replace(
        w,
        bias=w.bias + shift,
        pause_knee_s=pol.knee_s,
        pause_gain_per_s=pol.gain_per_s,
        note=f"trained by perf/train_floor.py{' --asr' if args.asr else ''} on perf/data/turns/{args.split} "
        f"({len(points)} evaluation points, audio-only rows plus rows with {source}; text cues of "
        f"orchestrator/turns/lexical.py and textturn.py; policy budget {args.budget}); "
        f"policy threshold {pol.threshold:.2f} calibrated to floor.commit_threshold {target:.2f}",
        stats=stats,
    )
    w.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
