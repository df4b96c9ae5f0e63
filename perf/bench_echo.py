"""Echo handling benchmark: speaker bleed of the replica's voice, with and without `EchoCanceller`.

    .venv/bin/python perf/bench_echo.py            # full grid (a minute or two on a loaded 2-core box)
    .venv/bin/python perf/bench_echo.py --quick    # 3 conditions

Real speech only (the labelled TTS recordings in perf/data): the replica is piper "joe", the user other voices.
Bleed = replica delayed by the acoustic+device delay, through a synthetic room (direct path + exponentially
decaying noise tail of the given RT60, mild low-pass), scaled by the echo gain, plus white noise at -50 dBFS.
Every condition streams 20 ms chunks through three front ends and Silero VAD v6 (in-process, one thread,
512-sample windows with 64 samples of context, state carried, as the session does):

* ``raw``: the mic as is;
* ``gate``: the obvious alternative, mute the mic while the replica plays (plus the maximum delay);
* ``aec``: `orchestrator.signal.echo.EchoCanceller`.

Columns: ERLE (dB) on echo-only audio after the first second; VAD false triggers on echo-only audio (share of
windows with p >= 0.5, and how many voiced runs of >= 64 ms); and for a user who talks over the replica
(barge-in), the share of the user's voiced windows still voiced and the share of barge-in utterances missed
(no voiced run of >= 64 ms while the user speaks). Timing: ms of `process` per 20 ms chunk (median).
The helpers here (scene building, VAD) are also what tests/unit/test_echo.py runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.signal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from duet.wav import read_pcm16  # noqa: E402
from orchestrator.inference.vad import CONTEXT, STATE_SHAPE, WINDOW, SileroBatch  # noqa: E402
from orchestrator.signal.echo import EchoCanceller  # noqa: E402

SR = 16000
CHUNK = 320
DATA = ROOT / "perf" / "data"
VAD_MODEL = ROOT / "model_repository" / "vad" / "1" / "silero_vad.onnx"
F64 = npt.NDArray[np.float64]
I16 = npt.NDArray[np.int16]

# Clean recordings (no added noise or reverb) with their speech segments from the labels.
REPLICA_FILES = ("samples/demo_user", "turns/dev/007", "turns/dev/025")  # piper joe
USER_FILES = {
    "gb-f2": ("turns/dev/012",),  # espeak en-gb f2
    "slt": ("turns/dev/014",),  # festival slt
    "us-f3": ("turns/dev/034", "turns/dev/004"),  # espeak en-us f3
}


def _labels(stem: str) -> dict[str, object]:
    path = DATA / f"{stem}.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    split = stem.split("/")
    for line in (DATA / "turns" / split[1] / "labels.jsonl").read_text().splitlines():
        label = json.loads(line)
        if label["file"] == f"{split[1]}/{split[2]}.wav":
            return dict(label)
    raise KeyError(stem)


def speech_segments(stems: Iterable[str], level_dbfs: float = -20.0) -> list[F64]:
    """The labelled stretches of speech of some recordings (floats in [-1, 1]), each at `level_dbfs` RMS."""
    out = []
    for stem in stems:
        audio = np.frombuffer(read_pcm16(DATA / f"{stem}.wav"), dtype="<i2").astype(np.float64) / 32768.0
        segments = _labels(stem)["segments"]
        assert isinstance(segments, list)
        for seg in segments:
            piece = audio[int(seg["start"] * SR) : int(seg["end"] * SR)]
            out.append(piece * 10 ** (level_dbfs / 20) / (np.sqrt(np.mean(piece**2)) + 1e-12))
    return out


def talk(segments: list[F64], seconds: float, gap_s: float = 0.25) -> F64:
    """Segments one after another with short pauses (a fluent talker), cycled, cut to `seconds`."""
    n = int(seconds * SR)
    out = np.zeros(n)
    pos, i = 0, 0
    while pos < n:
        seg = segments[i % len(segments)]
        take = min(seg.shape[0], n - pos)
        out[pos : pos + take] = seg[:take]
        pos += take + int(gap_s * SR)
        i += 1
    return out


def room(rt60_s: float, rng: np.random.Generator) -> F64:
    """Loudspeaker-to-mic response: direct path + exponentially decaying reflections (RT60), mild low-pass."""
    n = int(rt60_s * SR)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s)
    tail[: int(0.002 * SR)] = 0.0  # first reflection after 2 ms
    tail /= np.sqrt(np.sum(tail**2))  # reflections carry as much energy as the direct path (laptop-like)
    tail[0] = 1.0
    b, a = scipy.signal.butter(2, 5000 / (SR / 2))
    h = scipy.signal.lfilter(b, a, tail)
    return np.asarray(h / np.sqrt(np.sum(h**2)))


def bleed(far: F64, delay_ms: float, gain_db: float, rt60_s: float, rng: np.random.Generator) -> F64:
    """What the mic picks up of the replica: delayed, through the room, scaled."""
    d = int(delay_ms * SR / 1000)
    echo = scipy.signal.fftconvolve(far, room(rt60_s, rng))[: far.shape[0]] * 10 ** (gain_db / 20)
    return np.concatenate([np.zeros(d), echo[: far.shape[0] - d]])


def to_pcm(x: F64) -> I16:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def noise(n: int, rng: np.random.Generator, dbfs: float = -50.0) -> F64:
    return rng.standard_normal(n) * 10 ** (dbfs / 20)


class Vad:
    """Silero v6 streamed over a whole signal the way a session frames it; returns one probability per window."""

    def __init__(self) -> None:
        self._model = SileroBatch(VAD_MODEL, threads=1)

    def __call__(self, pcm: I16) -> F64:
        state = np.zeros((1, *STATE_SHAPE), dtype=np.float32)
        padded = np.concatenate([np.zeros(CONTEXT, dtype=np.int16), pcm])
        probs = []
        for end in range(WINDOW, pcm.shape[0] + 1, WINDOW):
            prob, state = self._model(padded[None, end - WINDOW : end + CONTEXT], state)
            probs.append(float(prob[0, 0]))
        return np.asarray(probs)


def window_mask(active: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Per-sample mask -> per-VAD-window mask (a window counts if the mask holds over most of it)."""
    n = active.shape[0] // WINDOW
    return np.asarray(active[: n * WINDOW].reshape(n, WINDOW).mean(axis=1) > 0.5)


def longest_run(flags: npt.NDArray[np.bool_]) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def voiced_runs(flags: npt.NDArray[np.bool_], min_windows: int = 2) -> int:
    """Number of runs of >= `min_windows` voiced windows (2 windows = 64 ms)."""
    count = run = 0
    for f in [*flags, False]:
        if f:
            run += 1
        else:
            count += run >= min_windows
            run = 0
    return count


def activity(x: F64, floor_dbfs: float = -45.0, hang_s: float = 0.0) -> npt.NDArray[np.bool_]:
    """Per-sample: is there signal in the surrounding 20 ms (optionally held `hang_s` longer)?"""
    env = scipy.signal.fftconvolve(x**2, np.ones(CHUNK) / CHUNK, mode="same")
    on = env > 10 ** (floor_dbfs / 10)
    if hang_s:
        on = np.convolve(on, np.ones(int(hang_s * SR) + 1))[: on.shape[0]] > 0.5  # held after it ends
    return np.asarray(on)


@dataclass(frozen=True)
class Scene:
    """A session: the replica's audio (as played), the user's clean speech, and the mic."""

    far: F64
    near: F64
    mic: F64
    echo: F64  # the bleed alone (without noise)


def scene(
    far: F64, near: F64, delay_ms: float, gain_db: float, rt60_s: float, seed: int = 0, delay2_ms: float | None = None
) -> Scene:
    """Mic = user + bleed + noise; with `delay2_ms` the delay changes half way through."""
    rng = np.random.default_rng(seed)
    echo = bleed(far, delay_ms, gain_db, rt60_s, rng)
    if delay2_ms is not None:
        half = far.shape[0] // 2
        later = bleed(far, delay2_ms, gain_db, rt60_s, np.random.default_rng(seed))
        echo = np.concatenate([echo[:half], later[half:]])
    mic = near + echo + noise(far.shape[0], rng)
    return Scene(far=far, near=near, mic=mic, echo=echo)


def run_canceller(sc: Scene, canceller: EchoCanceller | None = None, ahead: int = 4000) -> tuple[I16, list[float]]:
    """Stream the scene through a canceller in 20 ms chunks; the replica is scheduled `ahead` samples early."""
    aec = canceller or EchoCanceller()
    far, mic = to_pcm(sc.far), to_pcm(sc.mic)
    out = np.empty_like(mic)
    timings = []
    played = 0
    for start in range(0, mic.shape[0] - CHUNK + 1, CHUNK):
        while played < min(far.shape[0], start + CHUNK + ahead):
            aec.play(played, far[played : played + CHUNK])
            played += CHUNK
        t0 = time.perf_counter()
        out[start : start + CHUNK] = aec.process(start, mic[start : start + CHUNK])
        timings.append((time.perf_counter() - t0) * 1000)
    n = (mic.shape[0] // CHUNK) * CHUNK
    out[n:] = mic[n:]
    return out, timings


def energy_gate(sc: Scene, max_delay_ms: float = 320) -> I16:
    """Baseline: mute the mic whenever the replica is playing (and for the maximum delay after)."""
    playing = activity(sc.far, hang_s=max_delay_ms / 1000)
    return to_pcm(np.where(playing, 0.0, sc.mic))


def erle_db(mic: I16, out: I16, mask: npt.NDArray[np.bool_]) -> float:
    m, o = mic[mask].astype(np.float64), out[mask].astype(np.float64)
    return min(99.0, float(10 * np.log10((np.sum(m**2) + 1e-9) / (np.sum(o**2) + 1e-9))))  # 99: muted


@dataclass(frozen=True)
class Score:
    erle_db: float
    false_rate: float  # echo-only windows with p >= 0.5
    false_runs: int  # voiced runs of >= 64 ms on echo-only audio
    kept: float  # barge-in: share of the user's voiced windows still voiced
    missed: float  # barge-in utterances with no voiced run of >= 64 ms


def score(vad: Vad, sc: Scene, out: I16, settle_s: float = 1.0) -> Score:
    n = (sc.mic.shape[0] // WINDOW) * WINDOW
    echo_on = activity(sc.echo, floor_dbfs=-55.0)
    # Scored from `settle_s` after the replica's voice first reaches the mic (the canceller's convergence).
    settle = np.arange(sc.mic.shape[0]) >= int(np.argmax(echo_on)) + settle_s * SR
    near_on = activity(sc.near, floor_dbfs=-60.0, hang_s=0.1)
    echo_only = echo_on & ~near_on & settle
    p = vad(out[:n]) >= 0.5
    eo_w = window_mask(echo_only)
    erle = erle_db(to_pcm(sc.mic), out, echo_only)
    false_rate = float(p[eo_w].mean()) if eo_w.any() else 0.0
    false_runs = voiced_runs(p & eo_w)
    near_p = (vad(to_pcm(sc.near)[:n]) >= 0.5) & window_mask(activity(sc.near, floor_dbfs=-60.0))  # no hangover
    dt_w = window_mask(echo_on) & near_p
    kept = float(p[dt_w].mean()) if dt_w.any() else float("nan")
    # Barge-in utterances: runs of the user's own voiced windows that overlap the replica's echo.
    utterances, missed, start = 0, 0, None
    for i, v in enumerate([*near_p, False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if dt_w[start:i].any() and i - start >= 2:  # the clean voice itself holds a 64 ms voiced run
                utterances += 1
                missed += voiced_runs(p[start:i]) == 0
            start = None
    return Score(erle, false_rate, false_runs, kept, missed / utterances if utterances else float("nan"))


def conditions(quick: bool) -> list[tuple[float, float, float]]:
    """(delay ms, gain dB, RT60 s)."""
    if quick:
        return [(40, -6, 0.1), (150, -12, 0.2), (280, -20, 0.3)]
    return [(d, g, r) for d in (40, 150, 280) for g in (-6, -12, -20) for r in (0.1, 0.3)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=12.0)
    args = ap.parse_args()
    vad = Vad()
    far = talk(speech_segments(REPLICA_FILES), args.seconds)
    users = {name: speech_segments(stems, level_dbfs=-20.0) for name, stems in USER_FILES.items()}
    rows = []
    all_ms: list[float] = []
    for k, (delay, gain, rt60) in enumerate(conditions(args.quick)):
        name = list(users)[k % len(users)]
        # Echo only for the first half; then the user barges in with short utterances over the replica.
        near = np.zeros_like(far)
        barge = talk(users[name], args.seconds / 2, gap_s=0.6)
        near[-barge.shape[0] :] = barge
        sc = scene(far, near, delay, gain, rt60, seed=k)
        out, ms = run_canceller(sc)
        all_ms += ms
        for system, audio in (("raw", to_pcm(sc.mic)), ("gate", energy_gate(sc)), ("aec", out)):
            s = score(vad, sc, audio)
            rows.append((delay, gain, rt60, name, system, s))
    print(
        "| delay ms | gain dB | RT60 s | user | system | ERLE dB | VAD false % | false runs | barge-in kept % "
        "| barge-in missed % |"
    )
    print("|---:|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for delay, gain, rt60, name, system, s in rows:
        print(
            f"| {delay:.0f} | {gain:.0f} | {rt60:.1f} | {name} | {system} | {s.erle_db:.1f} | "
            f"{100 * s.false_rate:.1f} | {s.false_runs} | {100 * s.kept:.0f} | {100 * s.missed:.0f} |"
        )
    print()
    for system in ("raw", "gate", "aec"):
        ss = [r[5] for r in rows if r[4] == system]
        print(
            f"{system:5s} median ERLE {statistics.median(s.erle_db for s in ss):5.1f} dB | "
            f"VAD false {100 * statistics.mean(s.false_rate for s in ss):5.1f} % | "
            f"false runs {sum(s.false_runs for s in ss):3d} | "
            f"barge-in kept {100 * statistics.mean(s.kept for s in ss):5.1f} % | "
            f"missed {100 * statistics.mean(s.missed for s in ss):5.1f} %"
        )
    print(
        f"aec cost: median {statistics.median(all_ms):.3f} ms, p95 {np.percentile(all_ms, 95):.3f} ms "
        f"per {CHUNK}-sample chunk (one core, shared machine)"
    )


if __name__ == "__main__":
    main()
