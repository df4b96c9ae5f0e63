"""Micro-benchmarks of the hot pure functions (pytest-benchmark); run by `make bench-micro`, never by `make test`.

The files here are `bench_*.py`, which pytest only collects with `-o python_files='bench_*.py'` (the Makefile
passes it); `make test` / `make unit` collect `tests/` only. docs/micro-benchmarks.md says what each one measures.

Signals are synthetic and deterministic (fixed seeds): a speech-like voice (harmonic source with a drifting and
finally falling pitch, two formants, syllable envelopes, fricative noise bursts, phrase pauses, a -60 dBFS noise
floor) and a room echo of it. Nothing here reads files or the network.

Hooks below keep the saved baseline free of this machine's identity (host name, checkout folder name) and print
a "now vs baseline" table of medians after pytest-benchmark's own table.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy.signal import lfilter

SR = 16_000

F32 = npt.NDArray[np.float32]
I16 = npt.NDArray[np.int16]

# How far the median may move against the baseline before the summary marks a row (see the doc: a 2-core shared
# machine moves by +-20 % between runs on its own, so only a larger change is worth a look).
FLAG_RATIO = 1.5
# The Triton launcher runs the models with OMP_NUM_THREADS=1 (orchestrator/models/launcher.py), so OpenBLAS is
# single-threaded there; the Makefile sets the same here. With two BLAS threads on a 2-core machine a matmul
# fights any other load (the log-mel rows doubled with one busy core).
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ---------------------------------------------------------------------------------------------- process state


@pytest.fixture(scope="session", autouse=True)
def settled_allocator() -> None:
    """Free one large block first, as a long-running server process has long since done.

    glibc serves big allocations with a fresh mmap (page faults on every touch) until a block that large has been
    freed once; then it raises its threshold and reuses heap memory. Without this, a benchmark that allocates
    megabyte temporaries (the numpy log-mel alternative) measured 2.3 ms or 3.9 ms depending on which benchmarks
    happened to run before it. The server's model processes are in the settled state after their first requests.
    """
    block = np.ones(24 << 20, np.uint8)  # 24 MiB, below glibc's 32 MiB ceiling for the dynamic threshold
    del block


# ---------------------------------------------------------------------------------------------- signals


def _resonator(x: npt.NDArray[np.float64], freq: float, bandwidth: float) -> npt.NDArray[np.float64]:
    """Two-pole resonance (a formant) at `freq` Hz."""
    r = math.exp(-math.pi * bandwidth / SR)
    a = [1.0, -2.0 * r * math.cos(2.0 * math.pi * freq / SR), r * r]
    out: npt.NDArray[np.float64] = lfilter([1.0 - r], a, x)
    return out


def speech_like(
    seconds: float, seed: int, *, f0: tuple[float, float] = (190.0, 120.0), tail_pause_s: float = 0.0
) -> F32:
    """A voice-like float32 signal in [-1, 1): syllables (~4.5/s) with voiced nuclei and fricative onsets, grouped
    in phrases with pauses; pitch drifts from f0[0] to f0[1] over the signal and falls at the very end (a turn
    end); `tail_pause_s` of noise floor at the end (the pause the floor model is asked about)."""
    rng = np.random.default_rng(seed)
    n_speech = round((seconds - tail_pause_s) * SR)
    n = round(seconds * SR)
    t = np.arange(n_speech) / SR
    # Pitch: linear drift, a slow wobble (intonation), a final fall over the last 400 ms, a little jitter.
    frac = t / max(t[-1], 1e-9)
    pitch = f0[0] + (f0[1] - f0[0]) * frac
    pitch *= 1.0 + 0.06 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi))
    pitch *= 1.0 - 0.2 * np.clip((t - (t[-1] - 0.4)) / 0.4, 0.0, 1.0)
    pitch *= 1.0 + 0.01 * rng.standard_normal(n_speech).cumsum() / np.sqrt(np.arange(1, n_speech + 1))
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    harmonics = np.arange(1, 25)
    source = np.zeros(n_speech)
    for k in harmonics:
        source += np.sin(k * phase) / k  # sawtooth-like glottal source, -6 dB per octave
    voiced = _resonator(source, 650.0, 120.0) + 0.6 * _resonator(source, 1700.0, 180.0)
    voiced /= np.max(np.abs(voiced)) + 1e-12
    hiss = _resonator(rng.standard_normal(n_speech), 4500.0, 2500.0)
    hiss /= np.max(np.abs(hiss)) + 1e-12

    env_v = np.zeros(n_speech)
    env_n = np.zeros(n_speech)
    pos = round(0.15 * SR)
    while pos < n_speech - round(0.1 * SR):
        if rng.random() < 0.12:  # a phrase pause
            pos += round(rng.uniform(0.18, 0.4) * SR)
            continue
        fric = round(rng.uniform(0.0, 0.07) * SR) if rng.random() < 0.5 else 0
        nucleus = round(rng.uniform(0.11, 0.2) * SR)
        gain = rng.uniform(0.35, 1.0)
        if fric:
            env_n[pos : pos + fric] = 0.25 * gain * np.hanning(fric)[: n_speech - pos]
        a, b = pos + fric, min(pos + fric + nucleus, n_speech)
        env_v[a:b] = gain * np.hanning(nucleus)[: b - a]
        pos = b + round(rng.uniform(0.02, 0.06) * SR)
    x = np.zeros(n)
    x[:n_speech] = 0.5 * (env_v * voiced + env_n * hiss)
    x += 10 ** (-60 / 20) * rng.standard_normal(n)  # the microphone's noise floor
    return np.clip(x, -1.0, 1.0 - 1 / 32768).astype(np.float32)


def to_pcm(x: F32) -> I16:
    return np.round(x * 32767.0).astype(np.int16)


def room_echo(far: F32, delay_ms: float, seed: int, gain_db: float = -12.0) -> F32:
    """The replica's voice as the user's microphone hears it: a direct path after `delay_ms`, a few reflections
    and an exponential tail over 40 ms, `gain_db` below the far end."""
    rng = np.random.default_rng(seed)
    taps = round(0.04 * SR)
    h = rng.standard_normal(taps) * np.exp(-np.arange(taps) / (0.008 * SR)) * 0.3
    h[0] = 1.0
    h *= 10 ** (gain_db / 20) / np.sqrt(np.sum(h**2))
    d = round(delay_ms * SR / 1000)
    wet = lfilter(h, [1.0], far.astype(np.float64))
    out = np.zeros_like(far, dtype=np.float64)
    out[d:] = wet[: far.size - d]
    return out.astype(np.float32)


@pytest.fixture(scope="session")
def voice_8s() -> F32:
    """One floor window: 7.6 s of speech then a 400 ms pause, as float32 (what log-mel and prosody see)."""
    return speech_like(8.0, seed=1, tail_pause_s=0.4)


@pytest.fixture(scope="session")
def voice_8s_pcm(voice_8s: F32) -> I16:
    return to_pcm(voice_8s)


@pytest.fixture(scope="session")
def voice_long_pcm() -> I16:
    """30 s of a user talking, PCM16: the stream the per-chunk benchmarks cycle through."""
    return to_pcm(speech_like(30.0, seed=2, f0=(210.0, 150.0)))


# ---------------------------------------------------------------------------------------------- helpers


def per_unit(benchmark: Any, unit: str, count: int) -> None:
    """Note in the saved JSON that one call covers `count` units (frames, tokens, hops), for per-unit costs."""
    benchmark.extra_info["unit"] = unit
    benchmark.extra_info["units_per_call"] = count


# ---------------------------------------------------------------------------------------------- pytest-benchmark hooks


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """No host name in a checked-in file; the CPU model, core count, Python build and BLAS threads stay."""
    machine_info["node"] = "(not recorded)"
    machine_info["blas_threads"] = {k: os.environ.get(k) for k in THREAD_VARS}


def pytest_benchmark_update_commit_info(config: pytest.Config, commit_info: dict[str, Any]) -> None:
    """The project name defaults to the checkout folder's name: record the project's own name instead."""
    commit_info["project"] = "duet"


def _machine_key(info: Mapping[str, Any]) -> tuple[Any, ...]:
    cpu = info.get("cpu") or {}
    return (cpu.get("brand_raw"), cpu.get("count"), info.get("python_version"), info.get("machine"))


def pytest_benchmark_compare_machine_info(
    config: pytest.Config, benchmarksession: Any, machine_info: Mapping[str, Any], compared_benchmark: Mapping[str, Any]
) -> None:
    """Warn only when what decides the speed differs (CPU model, core count, Python), not on every field."""
    saved = compared_benchmark.get("machine_info") or {}
    if _machine_key(saved) != _machine_key(machine_info):
        benchmarksession.logger.warning(
            "The baseline was measured on another machine "
            f"(baseline: {_machine_key(saved)}, now: {_machine_key(machine_info)}): "
            "compare the columns with care, or re-save with `make bench-micro-save` on this one."
        )


@pytest.hookimpl(wrapper=True)
def pytest_terminal_summary(terminalreporter: Any) -> Any:
    """After pytest-benchmark's table (also when its --benchmark-compare-fail check raised): the comparison."""
    try:
        return (yield)
    finally:
        _compare_with_baseline(terminalreporter)


def _compare_with_baseline(tr: Any) -> None:
    """One line per benchmark: median now against the baseline's median, and the change."""
    session = getattr(tr.config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    if any(os.environ.get(k) != "1" for k in THREAD_VARS):
        tr.write_line(f"note: {'/'.join(THREAD_VARS)} are not all 1 (the server's setting): run `make bench-micro`")
    if not getattr(session, "compared_mapping", None):
        return
    saved: dict[str, Mapping[str, Any]] = {}
    source = ""
    for path, mapping in session.compared_mapping.items():
        saved.update(mapping)
        source = Path(path).name
    rows = []
    for bench in session.benchmarks:
        if not bench or bench.fullname not in saved:
            continue
        was = float(saved[bench.fullname]["stats"]["median"])
        now = float(bench.stats.median)
        rows.append((bench.group or "", bench.name, was, now, now / was if was > 0 else math.inf))
    if not rows:
        return
    tr.write_sep("-", f"median now vs baseline {source}: x{FLAG_RATIO:g} or more either way is marked")
    tr.write_line(f"{'group / benchmark':<58} {'baseline us':>12} {'now us':>12} {'change':>8}")
    group = None
    for row_group, name, was, now, ratio in sorted(rows):
        if row_group != group:
            group = row_group
            tr.write_line(group)
        mark = "  <-- slower" if ratio >= FLAG_RATIO else "  <-- faster" if ratio <= 1 / FLAG_RATIO else ""
        change = f"{(ratio - 1) * 100:+.0f}%"
        tr.write_line(f"  {name:<56} {was * 1e6:>12.2f} {now * 1e6:>12.2f} {change:>8}{mark}")
    missing = sorted(set(saved) - {b.fullname for b in session.benchmarks if b})
    if missing:
        tr.write_line(f"{len(missing)} benchmark(s) of the baseline not run now (deselected, renamed or removed)")
