"""How the user sounds: per-utterance prosody relative to the speaker's own running baseline, and derived states.

Input is the per-frame matrix of `prosody_features.frame_features` (one row per 20 ms hop). `VoiceTracker`
is one speaker's streaming state machine (time injected, no clocks, no I/O): it groups frames into utterances
(from the floor model's speech boundaries, or its own energy VAD), summarises each one (`UtteranceStats`),
scores it against the speaker's baseline (`VoiceStates`) and only then folds it into the baseline, so an
utterance is never compared with itself.

What the measures are:
- pitch level (median, semitones re 100 Hz) and range (10th-90th percentile span), the whole-utterance slope,
  and the terminal slope over the last 400 ms of voicing;
- level (median dBFS of voiced frames) and spectral tilt (alpha ratio, median over voiced frames);
- speaking rate as syllable nuclei per second (de Jong & Wempe 2009 style: peaks of the 300-2500 Hz band level
  with >= 2 dB dips on both sides, at least 80 ms apart, voiced, within 25 dB of the loudest peak), per second
  of phonation ("articulation rate") and per second of utterance ("speech rate");
- pauses (inactive runs >= 200 ms inside the utterance; long ones >= 600 ms), filled-pause-like stretches
  (>= 400 ms of steady voicing: flat pitch, steady level and spectrum, i.e. "uhh"/"umm"), and fragments (a
  speech burst < 300 ms cut off by a pause before speech resumes: the acoustic trace of "I- I mean");
- jitter and shimmer *at 20 ms resolution*: mean |Δ period| / period and mean |Δ level| between consecutive
  voiced hops. Praat's jitter compares single glottal cycles (typically 0.2-1 %); ours compares 20 ms
  averages, so it also contains fast intonation and is several times larger (1-4 % for fluent speech). Use it
  only relative to the same speaker; it cannot diagnose voice pathology.

States (`VoiceStates`), each 0..1, are logistic functions of z-scores against the baseline with hand-set,
documented weights. Calibration: there is no labelled emotional speech offline, so the scales are set on
controlled manipulations, not on human ratings. Once the baseline is warm, the same voice 12 dB louder reads
arousal ~0.75-0.8 and 12 dB quieter ~0.05; 1.4x faster with pitch 6 semitones up ~0.8; another sentence at the
usual level 0.35-0.65 (sentences of one speaker differ by ±20 % in rate and ±1.5 st in range). 0.5 is the point
where a state is worth mentioning (`phrases`). Arousal is bipolar (0.5 = the speaker's usual); the others read
0.05-0.3 for ordinary speech.

Warm-up: until `TrackerConfig.warmup_speech_s` of speech, level comparisons (pitch, energy, rate, tilt) are
shrunk toward "usual" by the baseline confidence (1 - exp(-speech_s / warmup)), and for rate and pitch range
the reference falls back on population priors (4.5 syllables/s, 5 semitones). Cues that need no baseline
(pauses, filled pauses, terminal rise, absolute monotony) count from the first utterance.

What prosody cannot tell: valence is weak in the voice. Happiness and anger are both loud, high and wide;
the only separating cue used here (a pressed, flatter spectrum for anger) is unreliable and depends on the
microphone, so without the words they are often confused. Fear and surprise overlap with arousal and a rising
end; disgust and contempt have no dependable prosodic signature here and stay at a low constant. A rising end
is as often a question or list intonation as uncertainty; a slow flat voice may be tiredness, sadness,
concentration or a second language; a quiet voice may be a distant microphone until the baseline is warm.
Scores describe how the voice differs from *this speaker's* usual, never a diagnosis.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.signal import find_peaks

from orchestrator.perception.prosody_features import (
    ALPHA,
    CLIPPED,
    ENERGY,
    F0,
    N_FEATURES,
    SLOPE,
    VOICED,
    VOICING,
    VOWEL,
    BadVoiceInput,
)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

FRAME_S: Final = 0.020
EMOTIONS: Final[tuple[str, ...]] = (
    "neutral",
    "happiness",
    "sadness",
    "anger",
    "fear",
    "surprise",
    "disgust",
    "contempt",
)
PRIOR_RATE_SPS: Final = 4.5  # adult English articulation rate, syllables per second of phonation
PRIOR_RANGE_ST: Final = 5.0  # typical 10-90 % pitch span of conversational speech, semitones
MONOTONE_RANGE_ST: Final = 3.0  # below this span an utterance sounds flat whoever speaks
_MIN_VOICED_FRAMES: Final = 5
_CLIP_FLAG: Final = 0.005  # share of samples at full scale above which the audio is called clipped


@dataclass(frozen=True)
class TrackerConfig:
    warmup_speech_s: float = 10.0  # speech seen before the baseline is trusted (confidence 1 - 1/e)
    baseline_tau_s: float = 30.0  # the baseline forgets with this time constant of speech
    vad_margin_db: float = 12.0  # a frame is active this far above the noise floor
    vad_min_dbfs: float = -55.0  # ... and never below this level
    vad_start_frames: int = 3  # own VAD: this many active frames in a row open an utterance
    end_silence_s: float = 1.0  # own VAD: this much inactivity closes it (longer pauses split utterances)
    min_pause_s: float = 0.2
    long_pause_s: float = 0.6
    filled_pause_s: float = 0.4
    fragment_s: float = 0.3
    final_window_s: float = 0.4  # terminal slope: the last 400 ms of voicing
    max_utterance_s: float = 30.0  # longer utterances are summarised on their last 30 s


@dataclass(frozen=True)
class UtteranceStats:
    """Acoustic measures of one utterance, in absolute units (not yet relative to anyone)."""

    t_start: float
    t_end: float
    duration_s: float
    phonation_s: float  # duration minus pauses
    voiced_fraction: float
    pitch_hz: float | None
    pitch_st: float | None  # semitones re 100 Hz
    pitch_range_st: float | None
    pitch_slope_st_per_s: float | None  # whole utterance (declination is negative)
    final_slope_st_per_s: float | None
    final_rel_st: float | None  # last 100 ms of voicing vs the utterance median
    energy_dbfs: float
    energy_range_db: float
    syllables: int
    articulation_rate_sps: float  # nuclei per second of phonation
    speech_rate_sps: float  # nuclei per second of utterance, pauses included
    pauses_s: tuple[float, ...]
    long_pauses: int
    filled_pauses: int
    fragments: int
    jitter_pct: float | None
    shimmer_db: float | None
    alpha_ratio_db: float | None
    slope_db_per_khz: float | None
    clipped_fraction: float
    clipped: bool


@dataclass(frozen=True)
class Baseline:
    """A speaker's usual voice: exponentially weighted over utterances by their speech time."""

    speech_s: float = 0.0
    pitch_st: float | None = None
    pitch_range_st: float | None = None
    energy_dbfs: float | None = None
    rate_sps: float | None = None
    alpha_ratio_db: float | None = None

    def confidence(self, warmup_s: float) -> float:
        return 1.0 - math.exp(-self.speech_s / warmup_s)


@dataclass(frozen=True)
class VoiceStates:
    arousal: float
    hesitancy: float
    uncertainty: float
    tension: float
    flatness: float  # fatigue / flatness: monotone, quiet, slow
    emotion: dict[str, float]
    confidence: float  # baseline confidence 0..1; level-based cues are shrunk by it
    warmup: bool
    relative: dict[str, float | None]  # energy_db, pitch_st, range_st, rate_ratio vs the baseline
    phrases: dict[str, str]  # state -> a short phrase for the LLM, only for states worth mentioning
    text: str  # one sentence


@dataclass(frozen=True)
class UtteranceSummary:
    stats: UtteranceStats
    states: VoiceStates

    def voice(self) -> dict[str, float | None]:
        """The `voice` object of a perception event (DESIGN.md), plus the other state scores."""
        s, v = self.stats, self.states
        return {
            "arousal": round(v.arousal, 3),
            "hesitancy": round(v.hesitancy, 3),
            "pitch_hz": None if s.pitch_hz is None else round(s.pitch_hz, 1),
            "rate_sps": round(s.articulation_rate_sps, 2),
            "uncertainty": round(v.uncertainty, 3),
            "tension": round(v.tension, 3),
            "flatness": round(v.flatness, 3),
        }


# ---------------------------------------------------------------------------------------------------------
# Utterance measures


def _runs(mask: Bool) -> list[tuple[int, int]]:
    """[start, end) of every run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _slope(t: F64, y: F64) -> float:
    tc = t - t.mean()
    den = float(np.dot(tc, tc))
    return float(np.dot(tc, y - y.mean()) / den) if den > 0 else 0.0


def syllable_nuclei(feats: F32, active: Bool) -> npt.NDArray[np.intp]:
    """Frame indices of syllable nuclei: peaks of the vowel-band level with >= 2 dB dips on both sides, >= 80 ms
    apart, within 25 dB of the loudest, and periodic nearby (NCCF >= 0.45 within ±40 ms: the pitch window lags
    a sharp vowel onset, so a stricter "voiced at the peak" test missed a quarter of the nuclei)."""
    level = feats[:, VOWEL].astype(np.float64)
    if level.size < 3:
        return np.zeros(0, np.intp)
    peaks, _ = find_peaks(level, prominence=2.0, distance=4)
    if peaks.size == 0:  # a steady tone has no nuclei
        return np.zeros(0, np.intp)
    periodic = np.convolve(feats[:, VOICING] >= 0.45, np.ones(5), mode="same") > 0
    keep = periodic[peaks] & active[peaks] & (level[peaks] > level[peaks].max() - 25.0)
    out: npt.NDArray[np.intp] = peaks[keep].astype(np.intp)
    return out


def utterance_stats(feats: F32, active: Bool, t_end: float, config: TrackerConfig | None = None) -> UtteranceStats:
    """Summarise one utterance from its (T, N_FEATURES) frames; `t_end` is the end time of the last frame."""
    cfg = config or TrackerConfig()
    feats = _check_features(feats)
    if active.shape != (feats.shape[0],):
        raise BadVoiceInput(f"activity mask shape {active.shape} does not match {feats.shape[0]} frames")
    n = feats.shape[0]
    t = (np.arange(n) + 1) * FRAME_S + (t_end - n * FRAME_S)
    duration = n * FRAME_S
    voiced = (feats[:, VOICED] > 0.5) & active
    energy = feats[:, ENERGY].astype(np.float64)

    pauses = [(a, b) for a, b in _runs(~active) if a > 0 and b < n and (b - a) * FRAME_S >= cfg.min_pause_s]
    pauses_s = tuple(round((b - a) * FRAME_S, 3) for a, b in pauses)
    phonation = max(duration - sum(pauses_s), FRAME_S)

    pitch_hz = pitch_st = pitch_range = slope = final_slope = final_rel = jitter = shimmer = None
    filled = 0
    if np.count_nonzero(voiced) >= _MIN_VOICED_FRAMES:
        st_all = 12.0 * np.log2(np.maximum(feats[:, F0].astype(np.float64), 1.0) / 100.0)
        median = float(np.median(st_all[voiced]))
        # Octave errors of the tracker are isolated jumps of ~12 st: keep them out of every pitch statistic.
        good = voiced & (np.abs(st_all - median) < 9.0)
        st, tv = st_all[good], t[good]
        pitch_st = float(np.median(st))
        pitch_hz = 100.0 * 2.0 ** (pitch_st / 12.0)
        pitch_range = float(np.percentile(st, 90) - np.percentile(st, 10))
        slope = _slope(tv, st)
        tail = tv >= tv[-1] - cfg.final_window_s
        if np.count_nonzero(tail) >= 4:
            final_slope = _slope(tv[tail], st[tail])
            final_rel = float(np.median(st[tv >= tv[-1] - 0.1]) - pitch_st)
        jitter, shimmer = _perturbation(feats, good)
        filled = _filled_pauses(feats, good, st_all, cfg)

    nuclei = syllable_nuclei(feats, active)
    speech_runs = _runs(active)
    fragments = sum(
        1
        for i, (a, b) in enumerate(speech_runs[:-1])
        if (b - a) * FRAME_S < cfg.fragment_s and (speech_runs[i + 1][0] - b) * FRAME_S >= 0.15
    )
    # The level is read on voiced hops: which weak consonants clear the VAD threshold changes with the gain, and
    # would bias a median over active hops (a -12 dB copy read as -9 dB); vowels stay voiced at any gain.
    act_energy = energy[voiced] if voiced.any() else energy[active] if active.any() else energy
    vfe = feats[voiced]
    clipped_fraction = float(feats[active, CLIPPED].mean()) if active.any() else 0.0
    return UtteranceStats(
        t_start=float(t_end - duration),
        t_end=float(t_end),
        duration_s=duration,
        phonation_s=phonation,
        voiced_fraction=float(np.count_nonzero(voiced) / n),
        pitch_hz=pitch_hz,
        pitch_st=pitch_st,
        pitch_range_st=pitch_range,
        pitch_slope_st_per_s=slope,
        final_slope_st_per_s=final_slope,
        final_rel_st=final_rel,
        energy_dbfs=float(np.median(act_energy)),
        energy_range_db=float(np.percentile(act_energy, 90) - np.percentile(act_energy, 10)),
        syllables=int(nuclei.size),
        articulation_rate_sps=nuclei.size / phonation,
        speech_rate_sps=nuclei.size / duration,
        pauses_s=pauses_s,
        long_pauses=sum(1 for p in pauses_s if p >= cfg.long_pause_s),
        filled_pauses=filled,
        fragments=fragments,
        jitter_pct=jitter,
        shimmer_db=shimmer,
        alpha_ratio_db=float(np.median(vfe[:, ALPHA])) if vfe.size else None,
        slope_db_per_khz=float(np.median(vfe[:, SLOPE])) if vfe.size else None,
        clipped_fraction=clipped_fraction,
        clipped=clipped_fraction > _CLIP_FLAG,
    )


def _perturbation(feats: F32, good: Bool) -> tuple[float | None, float | None]:
    """Jitter (%) and shimmer (dB) between consecutive voiced 20 ms hops (see the module docstring)."""
    pair = good[1:] & good[:-1]
    if np.count_nonzero(pair) < 3:
        return None, None
    period = 1.0 / feats[:, F0].astype(np.float64).clip(1.0)
    d_period = np.abs(np.diff(period))[pair]
    jitter = float(100.0 * d_period.mean() / period[good].mean())
    shimmer = float(np.abs(np.diff(feats[:, ENERGY].astype(np.float64)))[pair].mean())
    return jitter, shimmer


def _filled_pauses(feats: F32, good: Bool, st: F64, cfg: TrackerConfig) -> int:
    """Voiced stretches >= filled_pause_s with flat pitch and steady level and spectrum: an "uhh", not a word."""
    count = 0
    min_frames = round(cfg.filled_pause_s / FRAME_S)
    for a, b in _runs(good):
        if b - a < min_frames:
            continue
        seg = slice(a + 1, b - 1)  # the edges of a vowel ramp up and down
        steady = (
            float(np.percentile(st[seg], 90) - np.percentile(st[seg], 10)) < 1.0
            and float(np.std(feats[seg, ENERGY])) < 2.0
            and float(np.std(feats[seg, ALPHA])) < 2.0
        )
        count += int(steady)
    return count


# ---------------------------------------------------------------------------------------------------------
# States


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def _blend(value: float | None, base: float | None, prior: float | None, c: float) -> float | None:
    """The reference for `value`: the baseline weighted by confidence, the population prior for the rest."""
    if value is None:
        return None
    if base is None:
        return prior
    return c * base + (1.0 - c) * (prior if prior is not None else base)


def derive_states(stats: UtteranceStats, baseline: Baseline, config: TrackerConfig | None = None) -> VoiceStates:
    """Score one utterance against the speaker's baseline (see the module docstring for the calibration)."""
    cfg = config or TrackerConfig()
    c = baseline.confidence(cfg.warmup_speech_s)
    # Levels with no population prior (pitch, energy, tilt: they depend on sex and microphone) are shrunk by c.
    d_energy = c * (stats.energy_dbfs - baseline.energy_dbfs) if baseline.energy_dbfs is not None else 0.0
    d_pitch = (
        c * (stats.pitch_st - baseline.pitch_st)
        if stats.pitch_st is not None and baseline.pitch_st is not None
        else 0.0
    )
    d_alpha = (
        c * (stats.alpha_ratio_db - baseline.alpha_ratio_db)
        if stats.alpha_ratio_db is not None and baseline.alpha_ratio_db is not None
        else 0.0
    )
    ref_range = _blend(stats.pitch_range_st, baseline.pitch_range_st, PRIOR_RANGE_ST, c)
    d_range = (stats.pitch_range_st - ref_range) if stats.pitch_range_st is not None and ref_range else 0.0
    rate = max(stats.articulation_rate_sps, 0.5)
    ref_rate = baseline.rate_sps if baseline.rate_sps is not None else PRIOR_RATE_SPS
    # Against the speaker's own rate half an octave is large (one speaker's sentences vary by ±20 %); against the
    # population prior it is not (speakers differ by that much), so the prior's share is read on a wider scale.
    z_rate = 0.0
    if stats.syllables >= 2:
        own = c * math.log2(rate / ref_rate) / 0.5 if baseline.rate_sps is not None else 0.0
        prior_share = 1.0 - c if baseline.rate_sps is not None else 1.0
        z_rate = own + prior_share * math.log2(rate / PRIOR_RATE_SPS) / 0.8
    z_energy, z_pitch, z_range, z_alpha = d_energy / 5.0, d_pitch / 2.0, d_range / 3.0, d_alpha / 6.0
    # Tilt stays out of arousal: over voiced hops it still follows the phonetic content (a sentence of sonorants
    # reads 7 dB steeper than one full of stops), which swamped the level cue on piper speech.
    arousal = _sigmoid(1.0 * z_energy + 0.5 * z_pitch + 0.25 * z_range + 0.3 * z_rate)

    pause_total = sum(stats.pauses_s)
    pause_share = pause_total / stats.duration_s if stats.duration_s > 0 else 0.0
    slow = max(0.0, -z_rate)
    hesitancy = _sigmoid(
        -2.5
        + 1.1 * stats.long_pauses
        + 3.0 * pause_share
        + 1.3 * stats.filled_pauses
        + 0.7 * stats.fragments
        + 0.6 * slow
    )

    if stats.final_slope_st_per_s is not None and stats.final_rel_st is not None:
        rise = 0.5 * stats.final_slope_st_per_s / 10.0 + 0.5 * stats.final_rel_st / 3.0
        uncertainty = _sigmoid(4.0 * (rise - 0.5))
    else:
        uncertainty = 0.0

    tension = _sigmoid(-1.5 + 0.8 * z_pitch - 0.6 * z_range - 0.7 * z_alpha + 0.3 * z_energy)

    range_st = stats.pitch_range_st if stats.pitch_range_st is not None else PRIOR_RANGE_ST
    flatness = _sigmoid(
        -1.0 + (MONOTONE_RANGE_ST + 0.5 - range_st) / 1.0 - 0.5 * z_energy - 0.4 * z_rate - 0.3 * z_range
    )

    emotion = _emotion(arousal, flatness, uncertainty, z_pitch, z_range, z_rate, z_alpha)
    relative: dict[str, float | None] = {
        "energy_db": round(d_energy / c, 2) if c > 0 and baseline.energy_dbfs is not None else None,
        "pitch_st": round(d_pitch / c, 2) if c > 0 and baseline.pitch_st is not None and stats.pitch_st else None,
        "range_st": round(d_range, 2) if stats.pitch_range_st is not None else None,
        "rate_ratio": round(rate / ref_rate, 3) if stats.syllables >= 2 else None,  # vs baseline, else prior
    }
    scores = {"arousal": arousal, "hesitancy": hesitancy, "uncertainty": uncertainty, "tension": tension}
    scores["flatness"] = flatness
    phrases = _phrases(stats, scores, z_energy, z_pitch, z_rate, c)
    warmup = baseline.speech_s < cfg.warmup_speech_s
    return VoiceStates(
        arousal=arousal,
        hesitancy=hesitancy,
        uncertainty=uncertainty,
        tension=tension,
        flatness=flatness,
        emotion=emotion,
        confidence=c,
        warmup=warmup,
        relative=relative,
        phrases=phrases,
        text=_sentence(phrases, stats, warmup),
    )


def _emotion(
    arousal: float, flatness: float, uncertainty: float, z_pitch: float, z_range: float, z_rate: float, z_alpha: float
) -> dict[str, float]:
    """A small hand-set linear model + softmax over the 8 classes, from the vocal-cue profiles reviewed by
    Juslin & Laukka (2003) and Banse & Scherer (1996): anger and happiness loud/high/fast (anger with a flatter,
    pressed spectrum, happiness with a wider range), sadness quiet/low/slow/flat, fear high and fast with a
    narrow range, surprise a wide range and a rising end. Disgust and contempt get a low constant: the voice
    alone does not carry them reliably. Neutral wins whenever the voice is close to its usual."""
    a = 4.0 * (arousal - 0.5)  # -2..2
    logits = {
        "neutral": 1.2 - 1.2 * abs(a) - 1.5 * max(0.0, flatness - 0.5) - 1.2 * max(0.0, uncertainty - 0.5),
        "happiness": -0.8 + 0.9 * a + 0.6 * z_range + 0.3 * z_alpha,
        "anger": -0.8 + 0.9 * a - 0.6 * z_alpha - 0.2 * z_range,
        "sadness": -0.8 - 0.8 * a + 2.0 * (flatness - 0.5) - 0.3 * z_rate,
        "fear": -1.4 + 0.5 * a + 0.6 * z_pitch + 0.3 * z_rate - 0.4 * z_range,
        "surprise": -1.4 + 0.4 * a + 2.0 * (uncertainty - 0.5) + 0.4 * z_range,
        "disgust": -2.2,
        "contempt": -2.2,
    }
    top = max(logits.values())
    exps = {k: math.exp(v - top) for k, v in logits.items()}
    total = sum(exps.values())
    return {k: exps[k] / total for k in EMOTIONS}


_WORDS: Final = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _count(n: int, noun: str) -> str:
    word = _WORDS[n] if n < len(_WORDS) else str(n)
    return f"{word} {noun}{'' if n == 1 else 's'}"


def _phrases(
    stats: UtteranceStats, scores: dict[str, float], z_energy: float, z_pitch: float, z_rate: float, c: float
) -> dict[str, str]:
    """A short phrase per state worth mentioning (score >= 0.5, arousal outside 0.35-0.65), naming its evidence."""
    out: dict[str, str] = {}
    if scores["arousal"] >= 0.65 or scores["arousal"] <= 0.35:
        high = scores["arousal"] >= 0.65
        # "than usual" only once there is a usual to speak of; before that, plain descriptions.
        warm = c >= 0.5
        cues = [
            (comparative if warm else plain)
            for z, comparative, plain in (
                (z_energy, "louder" if high else "quieter", "a loud voice" if high else "a quiet voice"),
                (z_pitch, "higher" if high else "lower", "a high pitch" if high else "a low pitch"),
                (z_rate, "faster" if high else "slower", "a fast pace" if high else "a slow pace"),
            )
            if (z > 0.5 if high else z < -0.5)
        ]
        why = (f": {' and '.join(cues)} than usual" if warm else f": {' and '.join(cues)}") if cues else ""
        out["arousal"] = ("sounds energised" if high else "sounds subdued") + why
    if scores["hesitancy"] >= 0.5:
        cues = []
        if stats.long_pauses:
            cues.append(_count(stats.long_pauses, "long pause"))
        elif stats.pauses_s:
            cues.append(_count(len(stats.pauses_s), "pause"))
        if stats.filled_pauses:
            cues.append(_count(stats.filled_pauses, "drawn-out filler"))
        if stats.fragments:
            cues.append(_count(stats.fragments, "false start"))
        if z_rate < -0.5:
            cues.append("a slow pace")
        out["hesitancy"] = "sounds hesitant" + (f": {', '.join(cues[:-1])} and {cues[-1]}" if len(cues) > 1 else "")
        if len(cues) == 1:
            out["hesitancy"] += f": {cues[0]}"
    if scores["uncertainty"] >= 0.5:
        out["uncertainty"] = "ends on a rising pitch, as if unsure or asking"
    if scores["tension"] >= 0.5:
        out["tension"] = "sounds tense: a high, narrow pitch and a pressed voice"
    if scores["flatness"] >= 0.5:
        out["flatness"] = "sounds flat: " + (
            "monotone and quiet" if z_energy < -0.5 else "monotone" if z_rate > -0.5 else "monotone and slow"
        )
    return out


def _sentence(phrases: dict[str, str], stats: UtteranceStats, warmup: bool) -> str:
    body = "; ".join(phrases.values()) if phrases else "sounds calm and steady"
    extra = " (the audio is clipping)" if stats.clipped else ""
    learning = " (still learning this voice)" if warmup else ""
    return f"The user {body}{extra}{learning}."


def update_baseline(baseline: Baseline, stats: UtteranceStats, config: TrackerConfig | None = None) -> Baseline:
    """Fold one utterance into the baseline, weighted by its phonation time (clipped audio is not learned)."""
    cfg = config or TrackerConfig()
    if stats.clipped or stats.pitch_st is None:
        return baseline
    w = 1.0 - math.exp(-stats.phonation_s / cfg.baseline_tau_s)

    def ema(old: float | None, new: float | None) -> float | None:
        if new is None:
            return old
        return new if old is None else (1.0 - w) * old + w * new

    # The first utterance sets the baseline outright: weighting it against nothing would be meaningless.
    return Baseline(
        speech_s=baseline.speech_s + stats.phonation_s,
        pitch_st=ema(baseline.pitch_st, stats.pitch_st),
        pitch_range_st=ema(baseline.pitch_range_st, stats.pitch_range_st),
        energy_dbfs=ema(baseline.energy_dbfs, stats.energy_dbfs),
        rate_sps=ema(baseline.rate_sps, stats.articulation_rate_sps if stats.syllables >= 2 else None),
        alpha_ratio_db=ema(baseline.alpha_ratio_db, stats.alpha_ratio_db),
    )


def _check_features(feats: object) -> F32:
    if not isinstance(feats, np.ndarray) or feats.ndim != 2 or feats.shape[1] != N_FEATURES:
        shape = getattr(feats, "shape", None)
        raise BadVoiceInput(f"expected a (T, {N_FEATURES}) feature matrix, got {type(feats).__name__} {shape}")
    if feats.shape[0] == 0:
        raise BadVoiceInput("no frames")
    if not np.issubdtype(feats.dtype, np.floating) or not np.isfinite(feats).all():
        raise BadVoiceInput("features must be finite floats (NaN or inf found, or not a float array)")
    return feats.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------
# Streaming


@dataclass
class TrackerState:
    """Everything a `VoiceTracker` knows; copy it out to persist a speaker, pass it back in to resume."""

    baseline: Baseline = field(default_factory=Baseline)
    noise_floor_db: float = -70.0
    in_utterance: bool = False
    run_active: int = 0  # own VAD: active frames in a row
    run_silent: int = 0  # inactive frames in a row inside an utterance
    frames: deque[npt.NDArray[np.float32]] = field(default_factory=deque)
    active: deque[bool] = field(default_factory=deque)
    t_last: float | None = None


class VoiceTracker:
    """One speaker's voice over a session. Feed every 20 ms hop with `push`; it returns an `UtteranceSummary`
    when an utterance ends. `speech` is the floor model's "user is speaking" flag when there is one (True while
    speaking; the True -> False edge closes the utterance); None uses the tracker's own energy VAD (an
    utterance opens after `vad_start_frames` active hops and closes after `end_silence_s` of inactivity).
    """

    def __init__(self, config: TrackerConfig | None = None, state: TrackerState | None = None) -> None:
        self.config = config or TrackerConfig()
        self.state = state or TrackerState()
        self._max_frames = round(self.config.max_utterance_s / FRAME_S)

    @property
    def baseline(self) -> Baseline:
        return self.state.baseline

    def is_active(self, row: F32) -> bool:
        """Whether a hop has speech-like energy above the running noise floor."""
        floor = max(self.state.noise_floor_db, -90.0)
        return bool(row[ENERGY] > max(floor + self.config.vad_margin_db, self.config.vad_min_dbfs))

    def push(self, t: float, row: F32, speech: bool | None = None) -> UtteranceSummary | None:
        """One hop's feature row, `t` = the end time of the hop (seconds, session clock)."""
        row = _check_features(np.asarray(row).reshape(1, -1))[0]
        st = self.state
        if st.t_last is not None and t < st.t_last:
            raise BadVoiceInput(f"time went backwards: {t} after {st.t_last}")
        st.t_last = t
        active = self.is_active(row)
        self._track_floor(float(row[ENERGY]), active)
        if speech is None:
            return self._own_vad(t, row, active)
        if speech:
            self._append(row, active)
            st.in_utterance = True
            return None
        return self.end(t - FRAME_S) if st.in_utterance else None

    def end(self, t: float) -> UtteranceSummary | None:
        """Close the open utterance at time `t` (the floor model's speech_end); None when there is nothing."""
        summary = self.snapshot(t)
        st = self.state
        if summary is not None:
            st.baseline = update_baseline(st.baseline, summary.stats, self.config)
        st.frames.clear()
        st.active.clear()
        st.in_utterance, st.run_silent, st.run_active = False, 0, 0
        return summary

    def snapshot(self, t: float) -> UtteranceSummary | None:
        """The open utterance so far, scored against the baseline without learning from it (for live events)."""
        st = self.state
        active = np.fromiter(st.active, bool, len(st.active))
        if not active.any():
            return None
        last = int(np.flatnonzero(active)[-1]) + 1  # drop trailing silence: it is not a pause inside speech
        first = int(np.flatnonzero(active)[0])
        feats = np.stack(list(st.frames))[first:last]
        t_end = t - (len(st.frames) - last) * FRAME_S
        stats = utterance_stats(feats, active[first:last], t_end, self.config)
        return UtteranceSummary(stats, derive_states(stats, st.baseline, self.config))

    def _append(self, row: F32, active: bool) -> None:
        st = self.state
        st.frames.append(row.copy())
        st.active.append(active)
        if len(st.frames) > self._max_frames:
            st.frames.popleft()
            st.active.popleft()

    def _own_vad(self, t: float, row: F32, active: bool) -> UtteranceSummary | None:
        st, cfg = self.state, self.config
        if not st.in_utterance:
            st.run_active = st.run_active + 1 if active else 0
            self._append(row, active)
            keep = max(st.run_active, 1)
            while len(st.frames) > keep:  # only the active run that may become an utterance is kept
                st.frames.popleft()
                st.active.popleft()
            if st.run_active >= cfg.vad_start_frames:
                st.in_utterance = True
            return None
        self._append(row, active)
        st.run_silent = 0 if active else st.run_silent + 1
        if st.run_silent * FRAME_S >= cfg.end_silence_s:
            return self.end(t)
        return None

    def _track_floor(self, energy: float, active: bool) -> None:
        """Noise floor: falls fast to any quieter hop, rises 1 dB/s through inactive hops only."""
        st = self.state
        if energy < st.noise_floor_db:
            st.noise_floor_db = 0.7 * st.noise_floor_db + 0.3 * energy
        elif not active:
            st.noise_floor_db += 0.02


def replace_baseline(state: TrackerState, baseline: Baseline) -> TrackerState:
    """A copy of `state` with another baseline (e.g. restored from a returning user's profile)."""
    return replace(state, baseline=baseline)
