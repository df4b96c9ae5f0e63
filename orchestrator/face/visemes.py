"""Speech to mouth shapes: espeak IPA visemes blended with Cohen-Massaro style dominance coarticulation.

Each phoneme segment has a target over the 8 mouth parameters and, per parameter, a dominance: how strongly
it pulls the mouth toward its target near its centre. The mouth at time t is the dominance-weighted mean of
every nearby target. Dominance is flat over the segment's core and decays as a Gaussian outside it, wider
before the segment than after because the lips move before the sound (anticipatory coarticulation: rounding
for "oo" starts during the preceding consonants). Consonants made with the tongue barely constrain the lips,
so neighbouring vowels shape them. Bilabials (p, b, m) get a hard closure envelope on top of the blend, so
no amount of smoothing can leave the lips open through them, and the closure lasts at least one frame so the
video shows it at any frame rate.

Pure numpy: no clock, no I/O. Times are seconds on the session clock.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestrator.errors import BadTimings
from orchestrator.face import params

F64 = npt.NDArray[np.float64]

# the mouth block leads the parameter vector: jaw_open, lip_round, lip_spread, lip_press, lower_lip_tuck,
# upper_lip_raise, tongue_show, teeth_show
MOUTH: tuple[str, ...] = params.NAMES[:8]

MAX_PHONEMES = 4000  # per sentence; piper speaks ~15-20 symbols a second
MAX_SEGMENT_S = 30.0
_ORDER_SLACK_S = 1e-3  # piper's rounded timings may overlap by a rounding step


@dataclass(frozen=True)
class Phoneme:
    """One TTS timing entry: espeak IPA symbol `p` from `s` to `e` seconds after its sentence's audio starts."""

    p: str
    s: float
    e: float


@dataclass(frozen=True)
class Sentence:
    """A sentence's phoneme timings, its audio starting at `t0` on the session clock."""

    t0: float
    phonemes: tuple[Phoneme, ...]


def parse_phonemes(raw: Any) -> tuple[Phoneme, ...]:
    """Validate a phoneme list ([{"p", "s", "e"}, ...] or Phoneme objects, as TTS emits); raise BadTimings."""
    if not isinstance(raw, list | tuple):
        raise BadTimings(f"phonemes must be a list of {{p, s, e}} objects, got {type(raw).__name__}")
    if len(raw) > MAX_PHONEMES:
        raise BadTimings(f"too many phonemes in one sentence: {len(raw)} > {MAX_PHONEMES}")
    out: list[Phoneme] = []
    for i, item in enumerate(raw):
        if isinstance(item, Phoneme):
            p, s, e = item.p, item.s, item.e
        elif isinstance(item, dict) and {"p", "s", "e"} <= item.keys():
            p, s, e = item["p"], item["s"], item["e"]
        else:
            raise BadTimings(f"phoneme {i} must be an object with keys p, s, e; got {item!r:.80}")
        if not isinstance(p, str) or not 1 <= len(p) <= 16:
            raise BadTimings(f"phoneme {i}: symbol must be a string of 1-16 characters, got {p!r:.40}")
        s, e = _seconds(s, f"phoneme {i} start"), _seconds(e, f"phoneme {i} end")
        if e < s or e - s > MAX_SEGMENT_S:
            raise BadTimings(f"phoneme {i} ({p!r}): end {e} must be >= start {s} and within {MAX_SEGMENT_S} s")
        if out and s < out[-1].s - _ORDER_SLACK_S:
            raise BadTimings(f"phoneme {i} ({p!r}) starts at {s}, before phoneme {i - 1} at {out[-1].s}")
        out.append(Phoneme(p, s, e))
    return tuple(out)


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise BadTimings(f"{what} must be a finite number of seconds >= 0, got {value!r:.40}")
    return float(value)


# --- viseme table -------------------------------------------------------------------------------------------

# Dominance classes: (per-parameter strength over MOUTH, reach before the segment s, reach after s).
# Lingual consonants hardly constrain the lips (low lip strengths), so vowel rounding/spreading spans them.
_STRENGTH = {
    "vowel": ((1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0), 0.080, 0.065),
    "bilabial": ((1.5, 0.6, 0.6, 1.0, 2.0, 2.0, 2.0, 2.0), 0.045, 0.040),
    "labiodental": ((2.0, 0.6, 0.6, 2.0, 5.0, 1.5, 1.5, 1.5), 0.050, 0.040),
    "rounded": ((0.8, 3.0, 2.0, 0.5, 0.5, 0.8, 0.5, 1.0), 0.090, 0.070),
    "dental": ((1.2, 0.4, 0.5, 0.5, 0.5, 0.5, 3.0, 1.5), 0.050, 0.040),
    "sibilant": ((1.5, 0.5, 1.0, 0.5, 0.5, 0.5, 1.0, 2.5), 0.050, 0.040),
    "lingual": ((0.8, 0.25, 0.35, 0.3, 0.3, 0.3, 0.8, 0.8), 0.050, 0.040),
    "weak": ((0.25, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1), 0.040, 0.040),
    "pause": ((1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0), 0.060, 0.060),
}


def _t(
    jaw: float = 0.0,
    rnd: float = 0.0,
    spread: float = 0.0,
    press: float = 0.0,
    tuck: float = 0.0,
    raise_: float = 0.0,
    tongue: float = 0.0,
    teeth: float = 0.0,
) -> tuple[float, ...]:
    return (jaw, rnd, spread, press, tuck, raise_, tongue, teeth)


# symbol -> (dominance class, target over MOUTH). Length marks and diacritics are stripped before lookup.
VISEMES: dict[str, tuple[str, tuple[float, ...]]] = {
    # open vowels
    "a": ("vowel", _t(jaw=0.75, spread=0.2, teeth=0.3)),
    "æ": ("vowel", _t(jaw=0.70, spread=0.35, raise_=0.1, teeth=0.35)),
    "ɑ": ("vowel", _t(jaw=0.85, teeth=0.2)),
    "ɒ": ("vowel", _t(jaw=0.75, rnd=0.3, teeth=0.15)),
    "ɐ": ("vowel", _t(jaw=0.50, teeth=0.25)),
    "ʌ": ("vowel", _t(jaw=0.55, teeth=0.25)),
    "ɔ": ("vowel", _t(jaw=0.60, rnd=0.6, teeth=0.15)),
    # mid vowels
    "ɛ": ("vowel", _t(jaw=0.50, spread=0.35, teeth=0.35)),
    "e": ("vowel", _t(jaw=0.40, spread=0.45, teeth=0.4)),
    "ə": ("vowel", _t(jaw=0.35, teeth=0.2)),
    "ɚ": ("vowel", _t(jaw=0.30, rnd=0.35, teeth=0.2)),
    "ɝ": ("vowel", _t(jaw=0.30, rnd=0.35, teeth=0.2)),
    "ɜ": ("vowel", _t(jaw=0.35, rnd=0.3, teeth=0.2)),
    "ɘ": ("vowel", _t(jaw=0.35, teeth=0.2)),
    "ɵ": ("vowel", _t(jaw=0.35, rnd=0.5, teeth=0.15)),
    "ɤ": ("vowel", _t(jaw=0.35, spread=0.1, teeth=0.2)),
    "o": ("vowel", _t(jaw=0.45, rnd=0.75, teeth=0.1)),
    "ø": ("vowel", _t(jaw=0.30, rnd=0.7, teeth=0.1)),
    "œ": ("vowel", _t(jaw=0.45, rnd=0.6, teeth=0.1)),
    # close vowels
    "ɪ": ("vowel", _t(jaw=0.30, spread=0.45, teeth=0.45)),
    "i": ("vowel", _t(jaw=0.20, spread=0.7, teeth=0.55)),
    "ɨ": ("vowel", _t(jaw=0.25, spread=0.3, teeth=0.35)),
    "ɯ": ("vowel", _t(jaw=0.20, spread=0.3, teeth=0.3)),
    "y": ("vowel", _t(jaw=0.15, rnd=0.8, teeth=0.1)),
    "ʏ": ("vowel", _t(jaw=0.20, rnd=0.7, teeth=0.1)),
    "ʊ": ("vowel", _t(jaw=0.25, rnd=0.7, teeth=0.1)),
    "u": ("vowel", _t(jaw=0.15, rnd=0.95, teeth=0.05)),
    "ʉ": ("vowel", _t(jaw=0.15, rnd=0.85, teeth=0.05)),
    # bilabials close the lips
    "p": ("bilabial", _t(press=1.0)),
    "b": ("bilabial", _t(press=1.0)),
    "m": ("bilabial", _t(press=1.0)),
    "ɸ": ("labiodental", _t(jaw=0.05, rnd=0.3, tuck=0.4)),
    "β": ("labiodental", _t(jaw=0.05, rnd=0.3, tuck=0.4)),
    # labiodentals tuck the lower lip under the upper teeth
    "f": ("labiodental", _t(jaw=0.10, tuck=1.0, raise_=0.2, teeth=0.4)),
    "v": ("labiodental", _t(jaw=0.10, tuck=1.0, raise_=0.2, teeth=0.4)),
    "ɱ": ("labiodental", _t(jaw=0.05, tuck=0.8, teeth=0.2)),
    # rounded consonants
    "w": ("rounded", _t(jaw=0.10, rnd=1.0)),
    "ʍ": ("rounded", _t(jaw=0.10, rnd=1.0)),
    "ʃ": ("rounded", _t(jaw=0.12, rnd=0.75, raise_=0.2, teeth=0.6)),
    "ʒ": ("rounded", _t(jaw=0.12, rnd=0.75, raise_=0.2, teeth=0.6)),
    "ɹ": ("rounded", _t(jaw=0.20, rnd=0.45, teeth=0.2)),
    "r": ("rounded", _t(jaw=0.20, rnd=0.4, teeth=0.2)),
    "ɻ": ("rounded", _t(jaw=0.20, rnd=0.45, teeth=0.2)),
    # tongue between or behind the teeth
    "θ": ("dental", _t(jaw=0.15, spread=0.2, tongue=0.8, teeth=0.5)),
    "ð": ("dental", _t(jaw=0.15, spread=0.2, tongue=0.8, teeth=0.5)),
    "l": ("dental", _t(jaw=0.30, tongue=0.5, teeth=0.3)),
    "ɫ": ("dental", _t(jaw=0.30, tongue=0.4, teeth=0.3)),
    # sibilants: teeth nearly together, lips a little spread
    "s": ("sibilant", _t(jaw=0.08, spread=0.45, teeth=0.8)),
    "z": ("sibilant", _t(jaw=0.08, spread=0.45, teeth=0.8)),
    "ɕ": ("sibilant", _t(jaw=0.08, spread=0.4, teeth=0.7)),
    "ʑ": ("sibilant", _t(jaw=0.08, spread=0.4, teeth=0.7)),
    # alveolar and velar consonants: the tongue works, the lips follow the vowels
    "t": ("lingual", _t(jaw=0.18, spread=0.25, teeth=0.5)),
    "d": ("lingual", _t(jaw=0.18, spread=0.25, teeth=0.5)),
    "n": ("lingual", _t(jaw=0.18, spread=0.2, teeth=0.45)),
    "ɾ": ("lingual", _t(jaw=0.25, teeth=0.35)),
    "ɲ": ("lingual", _t(jaw=0.2, spread=0.3, teeth=0.4)),
    "j": ("lingual", _t(jaw=0.15, spread=0.5, teeth=0.45)),
    "ç": ("lingual", _t(jaw=0.15, spread=0.4, teeth=0.45)),
    "k": ("lingual", _t(jaw=0.28, teeth=0.3)),
    "ɡ": ("lingual", _t(jaw=0.28, teeth=0.3)),
    "g": ("lingual", _t(jaw=0.28, teeth=0.3)),
    "ŋ": ("lingual", _t(jaw=0.25, teeth=0.3)),
    "x": ("lingual", _t(jaw=0.28, teeth=0.3)),
    "ɣ": ("lingual", _t(jaw=0.28, teeth=0.3)),
    "q": ("lingual", _t(jaw=0.3, teeth=0.25)),
    "χ": ("lingual", _t(jaw=0.3, teeth=0.25)),
    "ʁ": ("lingual", _t(jaw=0.3, teeth=0.25)),
    # glottal sounds take the shape of their neighbours
    "h": ("weak", _t(jaw=0.3, teeth=0.2)),
    "ɦ": ("weak", _t(jaw=0.3, teeth=0.2)),
    "ʔ": ("weak", _t(jaw=0.12, teeth=0.2)),
    "ʕ": ("weak", _t(jaw=0.3, teeth=0.2)),
}
_UNKNOWN = ("lingual", _t(jaw=0.25, teeth=0.2))  # a neutral small opening, never an error
_REST = ("pause", _t())
# Spacing modifiers espeak may emit as their own symbols (palatalised "ʲ", length, stress): no shape of their own.
_MODIFIERS = frozenset("ːˑʲʷˠˤʰˈˌ‿̩̯ ̃")
_PAUSE_FULL_S = 0.15  # pauses this long or longer bring the mouth fully to rest


def viseme(symbol: str) -> tuple[str, tuple[float, ...]]:
    """(dominance class, mouth target) for one espeak symbol; unknown symbols get a neutral small opening."""
    if symbol in VISEMES:
        return VISEMES[symbol]
    if not symbol.strip() or symbol in "^$" or all(unicodedata.category(c)[0] in "PSZ" for c in symbol):
        return _REST
    base = "".join(
        c for c in unicodedata.normalize("NFD", symbol) if c not in _MODIFIERS and not unicodedata.combining(c)
    )
    if base in VISEMES:
        return VISEMES[base]
    if not base:
        return "weak", _UNKNOWN[1]
    if base[0] in VISEMES:  # affricates and diphthongs written as one symbol ("tʃ", "aɪ"): the onset shape
        return VISEMES[base[0]]
    return _UNKNOWN


# --- the track ----------------------------------------------------------------------------------------------

_CUT_STRENGTH = 60.0  # after an interruption the rest target overwhelms every leftover phoneme
_CUT_LEAD_S = 0.025  # the mouth is mostly closed this soon after the cut and at rest (<2%) within ~80 ms
_REST_FLOOR = 0.02  # a faint rest target everywhere so silence far from speech is exactly rest
_RELEASE_S = 0.03
_REACH = 4.0  # dominance is cut off this many widths out (exp(-16) ~ 1e-7): results are window-independent
# Mouth shapes lead their phoneme spans. The sound events a viewer pairs with the lips (the silence of a p/b/m
# closure, the loud middle of an open vowel) fall 30-40 ms before the centres of piper's spans, which end
# with the transition into the next sound; placed on the spans as they are, the mouth in a decoded `duet
# render` file trailed the voice by ~45 ms (perf/av_sync.py, docs/face.md). A cut still acts at its own time.
LEAD_S = 0.035


@dataclass(frozen=True)
class SpeechTrack:
    """Phoneme segments of all sentences on the session clock, ready to evaluate at any times."""

    lo: F64  # segment start (s)
    hi: F64  # segment end
    core_lo: F64  # flat-dominance core
    core_hi: F64
    before: F64  # Gaussian widths before / after the core
    after: F64
    strength: F64  # (K, 8)
    target: F64  # (K, 8)
    bilabial: npt.NDArray[np.bool_]
    spans: F64  # (S, 2) voiced span of each sentence, cut applied

    @staticmethod
    def build(sentences: Sequence[tuple[Sentence, float]]) -> SpeechTrack:
        """Segments from (sentence, cut time) pairs; phonemes at or after the cut are dropped, one across it ends."""
        rows: list[tuple[float, float, str, tuple[float, ...], float]] = []
        spans: list[tuple[float, float]] = []
        starts = sorted(s.t0 for s, _ in sentences)
        for sentence, cut in sentences:
            later = [t for t in starts if t > cut]
            rest_until = min(cut + 2.0, later[0]) if later else cut + 2.0  # the next reply may start sooner
            voiced: list[tuple[float, float]] = []
            for ph in sentence.phonemes:
                lo, hi = sentence.t0 + ph.s, min(sentence.t0 + ph.e, cut)
                if lo >= cut:
                    break
                lo, hi = lo - LEAD_S, hi - LEAD_S
                cls, target = viseme(ph.p)
                scale = 1.0
                if cls == "pause":
                    # short word gaps barely matter; from ~150 ms the pause pulls the mouth to rest
                    scale = 1.5 * min(1.0, (hi - lo) / _PAUSE_FULL_S) ** 2
                elif hi > lo:
                    voiced.append((lo, hi))
                rows.append((lo, hi, cls, target, scale))
            if math.isfinite(cut) and voiced and cut < voiced[-1][1] + 0.5:
                rows.append((cut + _CUT_LEAD_S, max(rest_until, cut + 0.12), "pause", _REST[1], _CUT_STRENGTH))
            if voiced:
                spans.append((voiced[0][0], voiced[-1][1]))
        rows.sort(key=lambda r: r[0])
        k = len(rows)
        lo_a = np.array([r[0] for r in rows], dtype=np.float64)
        hi_a = np.array([r[1] for r in rows], dtype=np.float64)
        half = 0.5 * (hi_a - lo_a)
        mid = lo_a + half
        core = 0.3 * (hi_a - lo_a)  # the central 60% holds the target
        cls_rows = [_STRENGTH[r[2]] for r in rows]
        strength = np.array([c[0] for c in cls_rows], dtype=np.float64).reshape(k, len(MOUTH))
        strength *= np.array([r[4] for r in rows], dtype=np.float64)[:, None]
        cut_rows = np.array([r[4] == _CUT_STRENGTH for r in rows], dtype=bool)
        before = np.array([c[1] for c in cls_rows], dtype=np.float64)
        before[cut_rows] = 0.02  # the cut's rest takes over fast
        return SpeechTrack(
            lo=lo_a,
            hi=hi_a,
            core_lo=np.where(cut_rows, lo_a, mid - core),
            # the cut's rest lets go just before the next sentence (if any) so it starts unhindered
            core_hi=np.where(cut_rows, hi_a - 0.09, mid + core),
            before=before,
            after=np.where(cut_rows, 0.03, np.array([c[2] for c in cls_rows], dtype=np.float64)),
            strength=strength,
            target=np.array([r[3] for r in rows], dtype=np.float64).reshape(k, len(MOUTH)),
            bilabial=np.array([r[2] == "bilabial" for r in rows], dtype=bool),
            spans=np.array(spans, dtype=np.float64).reshape(-1, 2),
        )

    def mouth(self, times: F64, fps: float) -> tuple[F64, F64]:
        """(mouth (N, 8), bilabial closure (N,)) at `times` (sorted ascending)."""
        n = times.shape[0]
        out = np.zeros((n, len(MOUTH)), dtype=np.float64)
        closure = np.zeros(n, dtype=np.float64)
        if self.lo.shape[0] == 0 or n == 0:
            return out, closure
        reach_lo = self.core_lo - _REACH * self.before
        reach_hi = self.core_hi + _REACH * self.after
        # a frame period's worth of full closure at each bilabial centre, so the video always shows it
        hold = np.maximum(0.2 * (self.hi - self.lo), 0.5 / fps + 1e-6)
        block = 128
        for b0 in range(0, n, block):
            t = times[b0 : b0 + block]
            sel = np.nonzero((reach_hi >= t[0]) & (reach_lo <= t[-1]))[0]
            if sel.size == 0:
                continue
            tt = t[:, None]
            dist_b = (self.core_lo[sel] - tt) / self.before[sel]
            dist_a = (tt - self.core_hi[sel]) / self.after[sel]
            dist = np.maximum(np.maximum(dist_b, dist_a), 0.0)
            dom = np.where(dist < _REACH, np.exp(-(dist * dist)), 0.0)  # (n, k)
            w = dom[:, :, None] * self.strength[sel][None, :, :]  # (n, k, 8)
            num = np.einsum("nkm,km->nm", w, self.target[sel])
            out[b0 : b0 + block] = num / (w.sum(axis=1) + _REST_FLOOR)
            bil = sel[self.bilabial[sel]]
            if bil.size:
                centre = 0.5 * (self.lo[bil] + self.hi[bil])
                # full closure within `hold` of the centre; lips seal and release in ~30 ms
                x = (np.abs(tt - centre) - hold[bil]) / _RELEASE_S
                closure[b0 : b0 + block] = (1.0 - smoothstep(x)).max(axis=1)
        return out, closure

    def activity(self, times: F64, rise: float = 0.12, fall: float = 0.2) -> F64:
        """0..1: how much the replica is speaking at each time (smooth over sentence spans)."""
        return interval_envelope(times, self.spans, rise, fall)


def smoothstep(x: F64) -> F64:
    """0 below 0, 1 above 1, C1-smooth in between."""
    c = np.clip(x, 0.0, 1.0)
    out: F64 = c * c * (3.0 - 2.0 * c)
    return out


def interval_envelope(times: F64, spans: F64, rise: float, fall: float) -> F64:
    """max over [a, b] spans of an ease-in from a over `rise` s times an ease-out from b over `fall` s."""
    if spans.shape[0] == 0 or times.shape[0] == 0:
        return np.zeros(times.shape[0], dtype=np.float64)
    near = spans[(spans[:, 1] + fall >= times[0]) & (spans[:, 0] <= times[-1])]
    if near.shape[0] == 0:
        return np.zeros(times.shape[0], dtype=np.float64)
    tt = times[:, None]
    up = smoothstep((tt - near[None, :, 0]) / rise)
    down = 1.0 - smoothstep((tt - near[None, :, 1]) / fall)
    env: F64 = (up * down).max(axis=1)
    return env
