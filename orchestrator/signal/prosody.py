"""End-of-phrase prosody: is the voice falling, fading and slowing down the way it does at a turn end?

Everything is measured on the speech *before* the current pause, inside the same 8 s window Smart Turn
sees, and expressed relative to that window's own statistics (semitones against the speaker's median
pitch, dB against the median speech level, durations against earlier syllables), so the features carry
across voices, microphones and loudness. Pitch comes from a vectorised YIN tracker.
"""

from __future__ import annotations

import itertools
from typing import Final

import numpy as np
import numpy.typing as npt
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import find_peaks

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]
Int = npt.NDArray[np.intp]

SAMPLE_RATE: Final = 16_000
HOP_S: Final = 0.010  # one pitch/level frame every 10 ms
FRAME_S: Final = 0.040  # YIN frame: holds 2.4 periods at the lowest pitch
F0_MIN: Final = 60.0
F0_MAX: Final = 400.0
VOICING_THRESHOLD: Final = 0.2  # YIN's normalised difference must dip below this (~1 for noise)

PROSODY_FEATURES: Final[tuple[str, ...]] = (
    "final_pitch_slope_st_per_s",  # robust slope of pitch over the last 300 ms of voicing (falls are < 0)
    "final_pitch_rel_st",  # pitch of the last 100 ms of voicing vs the utterance median, semitones
    "final_pitch_z",  # the same final pitch as a z-score of the utterance's pitch distribution
    "pitch_range_st",  # 10th-90th percentile span of the utterance's pitch, semitones
    "final_energy_slope_db_per_s",  # robust slope of the level over the last 200 ms of speech
    "final_energy_rel_db",  # level of the last 100 ms of speech vs the median speech level, dB
    "final_lengthening_log2",  # log2(last syllable nucleus duration / median of the earlier ones)
    "final_rate_log2",  # log2(syllable rate over the last 1 s / the utterance's rate), smoothed
    "final_voiced_fraction",  # share of the last 300 ms of speech that is voiced
    "speech_duration_s",  # seconds of speech in the window before the pause
    "speaking_rate_sps",  # syllable nuclei per second over the speech span
)
N_FEATURES: Final = len(PROSODY_FEATURES)

_MS_FLOOR: Final = 1e-12  # mean-square floor (-120 dBFS): digital silence, never speech
_MIN_VOICED: Final = 3
_YIN_CHUNK: Final = 128  # frames per YIN pass: temporaries stay in cache and in the malloc arena
_MIN_SYLLABLE: Final = 5  # frames: 50 ms


def _hop_levels(x: F32, hop: int, n: int) -> F64:
    """Mean square over 3 hops (30 ms at 10 ms) centred on every hop k * hop, zeros beyond the edges.

    Built from per-hop block sums, which costs one pass and no long running sum.
    """
    half = hop // 2
    buf = np.zeros(n * hop, np.float32)  # block k covers samples [k * hop - half, k * hop + half)
    m = min(x.size, buf.size - half)
    buf[half : half + m] = x[:m]
    blocks = buf.reshape(n, hop)
    energy = np.einsum("ij,ij->i", blocks, blocks).astype(np.float64)
    total = energy.copy()
    total[1:] += energy[:-1]
    total[:-1] += energy[1:]
    out: F64 = total / (3 * hop)
    return out


def _half_rate(x: F32) -> F32:
    """Halve the sample rate behind a (1, 2, 1)/4 low-pass (zero gain at the old Nyquist).

    Crude but cheap: YIN only needs the periodicity carried by the low harmonics, and what aliases from
    the top octave is weak in voiced speech.
    """
    even = x[: x.size - x.size % 2]
    odd = even[1::2]
    y = even[0::2] * np.float32(0.5)
    y += np.float32(0.25) * odd
    y[1:] += np.float32(0.25) * odd[:-1]
    return y


def _yin(
    x: F32, frames: Int, n: int, sr: int, frame_len: int, hop: int, fmin: float, fmax: float, threshold: float
) -> tuple[F32, Bool]:
    """YIN (de Cheveigné & Kawahara 2002) on the selected centred frames, all frames at once via FFT."""
    f0 = np.zeros(n, np.float32)
    voiced = np.zeros(n, bool)
    # Half the samples per frame is half the work; 20 samples per period at fmax keep the lag resolution
    # (with parabolic interpolation) far below 1 %.
    if sr // 2 >= 20 * fmax and hop % 2 == 0 and frame_len % 2 == 0:
        x, sr, hop, frame_len = _half_rate(x), sr // 2, hop // 2, frame_len // 2
    tau_min = int(sr // fmax)
    tau_max = int(np.ceil(sr / fmin)) + 1  # one spare lag for the parabolic interpolation
    width = frame_len - tau_max  # integration window: every lag compares `width` samples
    if frames.size == 0 or width <= 0:
        return f0, voiced

    padded = np.zeros(x.size + frame_len, np.float32)
    padded[frame_len // 2 : frame_len // 2 + x.size] = x
    all_frames = sliding_window_view(padded, frame_len)[::hop]
    # Window energies sum_{j<width} x[j + tau]^2 from one running sum over the whole signal (float64:
    # the differences of a long cumulative sum would lose the quiet frames in float32).
    csum = np.zeros(padded.size + 1)
    np.cumsum(np.square(padded, dtype=np.float64), out=csum[1:])
    win_energy = (csum[width:] - csum[:-width]).astype(np.float32)
    all_energy = sliding_window_view(win_energy, tau_max + 1)[::hop]
    lags = np.arange(1, tau_max + 1, dtype=np.float32)
    # Chunks of frames keep every temporary small enough to stay in cache and in the malloc arena.
    for lo in range(0, frames.size, _YIN_CHUNK):
        chunk = frames[lo : lo + _YIN_CHUNK]
        f0[chunk], voiced[chunk] = _yin_frames(
            all_frames[chunk], all_energy[chunk], lags, sr, width, tau_min, tau_max, threshold
        )
    return f0, voiced


def _yin_frames(
    block: F32, energy: F32, lags: F32, sr: int, width: int, tau_min: int, tau_max: int, threshold: float
) -> tuple[F32, Bool]:
    """YIN on a block of frames [k, frame_len] with their lagged window energies [k, tau_max + 1]."""
    frame_len = block.shape[1]
    # Lagged products r(tau) = sum_j x[j] x[j + tau] for j < width. An FFT of the frame length is enough:
    # j + tau < width + tau_max = frame_len, so the circular correlation never wraps onto these lags.
    head = block.copy()
    head[:, width:] = 0.0
    spec = scipy.fft.rfft(block, axis=1)
    head_spec = scipy.fft.rfft(head, axis=1)
    spec *= np.conjugate(head_spec, out=head_spec)
    r = scipy.fft.irfft(spec, n=frame_len, axis=1)[:, : tau_max + 1]

    diff = energy[:, :1] + energy - 2.0 * r  # squared difference d(tau)
    np.maximum(diff, 0.0, out=diff)

    # Cumulative-mean normalisation: d'(tau) = d(tau) * tau / sum_{1..tau} d, scale-free, ~1 for noise.
    running = np.cumsum(diff[:, 1:], axis=1)
    norm = diff[:, 1:] * lags / np.maximum(running, 1e-30)
    seg = norm[:, tau_min - 1 : tau_max - 1]  # lags tau_min .. tau_max-1

    # First dip under the threshold (avoids sub-octave picks), then slide down to its local minimum.
    below = seg < threshold
    has_dip = below.any(axis=1)
    first = np.argmax(below, axis=1)
    lag_idx = np.arange(seg.shape[1])
    rising = np.ones_like(below)
    rising[:, :-1] = seg[:, 1:] >= seg[:, :-1]
    best = np.argmax(rising & (lag_idx >= first[:, None]), axis=1)

    rows = np.arange(block.shape[0])
    tau = best + tau_min
    a, b, c = diff[rows, tau - 1], diff[rows, tau], diff[rows, tau + 1]
    curve = a - 2.0 * b + c
    shift = np.where(curve > 0, 0.5 * (a - c) / np.where(curve > 0, curve, 1.0), 0.0)
    period = tau + np.clip(shift, -1.0, 1.0)
    f0 = np.where(has_dip, sr / period, 0.0).astype(np.float32)
    return f0, has_dip


def pitch_track(
    audio: npt.ArrayLike,
    sr: int = SAMPLE_RATE,
    *,
    fmin: float = F0_MIN,
    fmax: float = F0_MAX,
    frame_s: float = FRAME_S,
    hop_s: float = HOP_S,
    threshold: float = VOICING_THRESHOLD,
    gate_db: float = 40.0,
) -> tuple[F32, Bool]:
    """Pitch per hop (frames centred at k * hop): (f0 in Hz, 0 where unvoiced; voiced flags).

    Frames more than ``gate_db`` below the loudest frame are unvoiced without running YIN, which
    also skips the front padding and pauses for free.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D audio, got shape {list(x.shape)}")
    hop, frame_len = round(sr * hop_s), round(sr * frame_s)
    n = x.size // hop
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, bool)
    ms = _hop_levels(x, hop, n)
    gate = ms > max(float(ms.max()) * 10 ** (-gate_db / 10), _MS_FLOOR)
    return _yin(x, np.flatnonzero(gate), n, sr, frame_len, hop, fmin, fmax, threshold)


def _robust_slope(t: F64, y: F64) -> float:
    """Theil-Sen slope: the median of all pairwise slopes, indifferent to a few octave or edge errors."""
    i, j = np.triu_indices(t.size, k=1)
    dt = t[j] - t[i]
    ok = dt > 0
    return float(np.median((y[j][ok] - y[i][ok]) / dt[ok])) if ok.any() else 0.0


def _speech_mask(level_db: F64, before_end: Bool) -> Bool:
    """Frames loud enough to be speech, relative to this window's own loudest frame and noise floor."""
    audible = before_end & (level_db > 10 * np.log10(_MS_FLOOR) + 1.0)
    if not audible.any():
        return np.zeros_like(before_end)
    peak = float(level_db[audible].max())
    floor = float(np.percentile(level_db[audible], 5))
    # 6 dB over the noise floor, but never stricter than 20 dB or laxer than 35 dB below the peak.
    threshold = min(max(floor + 6.0, peak - 35.0), peak - 20.0)
    mask: Bool = audible & (level_db > threshold)
    return mask


def _syllables(env_db: F64, speech: Bool, voiced: Bool) -> tuple[Int, Int, F64]:
    """Syllables and their nuclei: (first frame, end frame, nucleus duration in frames) per syllable.

    Syllables are the speech stretches between pauses and significant dips (>= 3 dB below the lower of
    the two neighbouring maxima); dips are found as prominent troughs, so a long steady vowel stays one
    syllable however its level ripples. The nucleus is the part within 6 dB of the syllable's peak,
    and it must be voiced, which drops bursts of noise.
    """
    floor = float(env_db[speech].min()) - 10.0
    masked = np.where(speech, env_db, floor)
    troughs, _ = find_peaks(-masked, prominence=3.0)
    cuts = np.zeros(masked.size + 1, bool)
    cuts[troughs[speech[troughs]]] = True
    edges = np.diff(speech.astype(np.int8), prepend=0, append=0)
    cuts[edges != 0] = True
    bounds = np.flatnonzero(cuts)
    near_voiced = np.convolve(voiced, np.ones(5), mode="same") > 0
    spans: list[tuple[int, int]] = []
    durations: list[float] = []
    for lo, hi in itertools.pairwise(bounds):
        if hi - lo < _MIN_SYLLABLE or not speech[lo]:
            continue
        peak = lo + int(np.argmax(masked[lo:hi]))
        if near_voiced[peak]:
            spans.append((lo, hi))
            durations.append(float(np.count_nonzero(masked[lo:hi] >= masked[peak] - 6.0)))
    starts, ends = np.asarray(spans, np.intp).reshape(-1, 2).T
    return starts, ends, np.asarray(durations)


def prosody_features(audio: npt.ArrayLike, pause_samples: int, sr: int = SAMPLE_RATE) -> F32:
    """The PROSODY_FEATURES vector for one window; zeros when there is no voiced speech before the pause."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D audio, got shape {list(x.shape)}")
    out = np.zeros(N_FEATURES, np.float32)
    hop = round(sr * HOP_S)
    n = x.size // hop
    if n == 0:
        return out
    t = np.arange(n) * HOP_S
    end = x.size - int(np.clip(pause_samples, 0, x.size))
    before_end = np.arange(n) * hop < end

    level_db = 10 * np.log10(_hop_levels(x, hop, n) + _MS_FLOOR)
    speech = _speech_mask(level_db, before_end)
    if not speech.any():
        return out
    frame_len = round(sr * FRAME_S)
    f0, voiced = _yin(x, np.flatnonzero(speech), n, sr, frame_len, hop, F0_MIN, F0_MAX, VOICING_THRESHOLD)
    if np.count_nonzero(voiced) < _MIN_VOICED:
        return out

    # Pitch in semitones against the speaker's own median; more than an octave off is a tracking error.
    st = np.zeros(n)
    st[voiced] = 12.0 * np.log2(f0[voiced] / np.median(f0[voiced]))
    voiced &= np.abs(st) <= 12.0
    v_idx = np.flatnonzero(voiced)
    st_v = st[v_idx]
    last_voiced_t = t[v_idx[-1]]
    final_fit = v_idx[t[v_idx] >= last_voiced_t - 0.300]
    final_pitch = float(np.median(st[v_idx[t[v_idx] >= last_voiced_t - 0.100]]))
    median_st = float(np.median(st_v))
    out[0] = _robust_slope(t[final_fit], st[final_fit]) if final_fit.size >= _MIN_VOICED else 0.0
    out[1] = final_pitch - median_st
    out[2] = (final_pitch - float(st_v.mean())) / max(float(st_v.std()), 1.0)  # 1 st floor: flat voices
    p10, p90 = np.percentile(st_v, [10, 90])
    out[3] = p90 - p10

    s_idx = np.flatnonzero(speech)
    first_t, last_t = t[s_idx[0]], t[s_idx[-1]]
    median_db = float(np.median(level_db[s_idx]))
    # The decay is read on the last stretch of continuous speech only: a level fit across a gap would
    # measure the previous syllable's offset rather than this one's fading.
    gaps = np.flatnonzero(~speech[: s_idx[-1]])
    run_start = t[gaps[-1] + 1] if gaps.size else first_t
    tail = s_idx[t[s_idx] >= max(last_t - 0.200, run_start)]
    out[4] = _robust_slope(t[tail], level_db[tail]) if tail.size >= _MIN_VOICED else 0.0
    out[5] = float(level_db[s_idx[t[s_idx] >= last_t - 0.100]].mean()) - median_db

    # Syllables from a 50 ms-smoothed level envelope.
    env = np.convolve(level_db, np.ones(5) / 5, mode="same")
    starts, ends, durations = _syllables(env, speech, voiced)
    if durations.size >= 2:
        out[6] = np.log2(durations[-1] / max(float(np.median(durations[:-1])), 1.0))
    span = last_t - first_t + HOP_S
    rate = durations.size / span
    recent = min(1.0, span)
    # Syllables in the last second, each counted by the share of it that falls inside, so a long
    # syllable straddling the boundary counts in proportion rather than by where its peak happens to be.
    overlap = np.clip(np.minimum(t[ends - 1] + HOP_S, last_t + HOP_S) - np.maximum(t[starts], last_t - recent), 0, None)
    n_recent = float(np.sum(overlap / ((ends - starts) * HOP_S)))
    # +0.5 pseudo-counts keep short or sparse utterances near the neutral 0.
    out[7] = np.log2((n_recent + 0.5) / (rate * recent + 0.5))
    final_region = before_end & (t >= last_t - 0.300) & (t <= last_t)
    out[8] = np.count_nonzero(voiced & final_region) / max(np.count_nonzero(speech & final_region), 1)
    out[9] = s_idx.size * HOP_S
    out[10] = rate
    return out


def prosody_batch(audio: npt.ArrayLike, pause_samples: npt.ArrayLike, sr: int = SAMPLE_RATE) -> F32:
    """[B, N] audio and [B] pause lengths (samples) -> [B, len(PROSODY_FEATURES)] float32."""
    x = np.asarray(audio, dtype=np.float32)
    pauses = np.asarray(pause_samples).reshape(-1)
    if x.ndim != 2 or pauses.size != x.shape[0]:
        raise ValueError(f"expected audio [B, N] and B pause lengths, got {list(x.shape)} and {pauses.size}")
    out = np.zeros((x.shape[0], N_FEATURES), np.float32)
    for i in range(x.shape[0]):
        out[i] = prosody_features(x[i], int(pauses[i]), sr)
    return out
