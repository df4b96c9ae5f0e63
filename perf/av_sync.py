"""Lip sync measured on a decoded MP4 alone: the voice's energy against the mouth's opening on the frames.

    .venv/bin/python perf/av_sync.py clip.mp4 [--json]

Nothing from the renderer is used (no phoneme timings, no face parameters): the file is decoded with PyAV,
each stream on its own presentation clock (the MP4's edit lists applied, so the AAC priming and the H.264
reordering delay are accounted for), and

- the voice: RMS level of the decoded audio in 20 ms windows every 1 ms, in dB under the clip's peak
  (floored at -50 dB);
- the mouth: MediaPipe FaceMesh (static mode, no temporal filter) on every decoded frame, the inner-lip gap
  (landmarks 13-14) in iris distances.

Two figures, each "how long after the sound the mouth does the same", ms (> 0: the mouth is late):

- `xcorr_ms`: the lag, within +-400 ms, that best correlates the lip gap at each frame time t with the voice's
  amplitude envelope (the RMS level, linear) at t - lag (Pearson r), refined by a parabola through the peak.
  It uses every frame. (Linear, because the loud vowel nuclei are what open a mouth; on a dB scale the
  speech/silence edges dominate, and the estimate moved ~10 ms more between sentence sets.)
- `onset_ms`: the median over voice onsets (the level rising through -30 dB after at least 150 ms below it)
  of the nearest mouth opening within +-400 ms (the gap rising through the midpoint of its closed and open
  levels, interpolated between frames) minus the onset. Lips part a little before a voice starts, so
  expect this one slightly below `xcorr_ms`.

`mouth_motion_xcorr_ms` is the same lag search on the mean absolute frame difference in the mouth region:
the crude check that was once used; it follows how fast the mouth changes, not how open it is, and is kept
only to show how far such a figure can be from the opening's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

MAX_LAG_S = 0.4
LAG_STEP_S = 0.001
WINDOW_S = 0.02
FLOOR_DB = -50.0
ONSET_DB = -30.0
SILENCE_S = 0.15
IRIS_R, IRIS_L = 468, 473
LIP_IN_UP, LIP_IN_LO = 13, 14
MOUTH_BOX = (61, 291, 0, 17)  # corners, top of the upper lip, bottom of the lower lip


@dataclass(frozen=True)
class Decoded:
    frames: list[U8]
    frame_t: F64  # presentation time of each frame, s
    audio: F32  # mono, full scale 1.0
    audio_t0: float  # presentation time of audio[0], s
    rate: int


def decode_mp4(path: str | Path) -> Decoded:
    """Every video frame with its presentation time, and the audio track (mono float) with its start time."""
    import av

    with av.open(str(path)) as c:
        decoded = list(c.decode(video=0))
        frames: list[U8] = [np.asarray(f.to_ndarray(format="rgb24"), dtype=np.uint8) for f in decoded]
        times: F64 = np.array([float((f.pts or 0) * (f.time_base or 0)) for f in decoded], dtype=np.float64)
    parts: list[F32] = []
    start: float | None = None
    rate = 16000
    with av.open(str(path)) as c:
        if c.streams.audio:
            for f in c.decode(audio=0):
                if start is None:
                    start = float((f.pts or 0) * (f.time_base or 0))
                rate = f.sample_rate
                parts.append(np.asarray(f.to_ndarray(), dtype=np.float32).mean(axis=0))
    audio: F32 = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    order = np.argsort(times, kind="stable")
    return Decoded([frames[i] for i in order], times[order], audio, start or 0.0, rate)


def voice_level(audio: F32, rate: int, t0: float, hop_s: float = LAG_STEP_S) -> tuple[F64, F64]:
    """(times, level dB under the peak, floored at FLOOR_DB): RMS over WINDOW_S centred on each time."""
    win = max(round(WINDOW_S * rate), 1)
    hop = max(round(hop_s * rate), 1)
    x = audio.astype(np.float64)
    padded = np.pad(x, (win // 2, win - win // 2))
    csum = np.concatenate([[0.0], np.cumsum(padded * padded)])
    centres = np.arange(0, x.shape[0], hop)
    rms = np.sqrt(np.maximum(csum[centres + win] - csum[centres], 0.0) / win)
    db = 20.0 * np.log10(np.maximum(rms, 1e-9))
    peak = float(db.max()) if db.size else 0.0
    level: F64 = np.maximum(db - peak, FLOOR_DB)
    times: F64 = t0 + centres / rate
    return times, level


class Lips:
    """MediaPipe FaceMesh with irises: (478, 2) pixel landmarks of one frame, or None without a face.
    `static`: every frame detected on its own (no tracking between frames)."""

    def __init__(self, static: bool = True) -> None:
        import mediapipe as mp

        self.mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static, refine_landmarks=True, max_num_faces=1, min_detection_confidence=0.5
        )

    def __call__(self, rgb: U8) -> F64 | None:
        h, w = rgb.shape[:2]
        res = self.mesh.process(np.ascontiguousarray(rgb))
        if not res.multi_face_landmarks:
            return None
        return np.array([[q.x * w, q.y * h] for q in res.multi_face_landmarks[0].landmark], dtype=np.float64)

    def close(self) -> None:
        self.mesh.close()


def lip_gaps(frames: Sequence[U8]) -> tuple[F64, F64 | None]:
    """(inner-lip gap per frame in iris distances, NaN without a face; the landmarks of the first face found)."""
    lips = Lips()
    gaps = np.full(len(frames), np.nan)
    first: F64 | None = None
    try:
        for i, frame in enumerate(frames):
            lm = lips(frame)
            if lm is None:
                continue
            first = lm if first is None else first
            gaps[i] = np.linalg.norm(lm[LIP_IN_LO] - lm[LIP_IN_UP]) / np.linalg.norm(lm[IRIS_L] - lm[IRIS_R])
    finally:
        lips.close()
    return gaps, first


def mouth_motion(frames: Sequence[U8], landmarks: F64) -> F64:
    """Mean |difference| of the grey mouth region to the frame before (the first frame gets the second's)."""
    xs, ys = landmarks[list(MOUTH_BOX), 0], landmarks[list(MOUTH_BOX), 1]
    pad_x, pad_y = 0.3 * (xs.max() - xs.min()), 0.6 * (ys.max() - ys.min()) + 4
    h, w = frames[0].shape[:2]
    x0, x1 = int(max(xs.min() - pad_x, 0)), int(min(xs.max() + pad_x, w))
    y0, y1 = int(max(ys.min() - pad_y, 0)), int(min(ys.max() + pad_y, h))
    grey = [f[y0:y1, x0:x1].astype(np.float64).mean(axis=2) for f in frames]
    out = np.array([0.0] + [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(grey)])
    if out.shape[0] > 1:
        out[0] = out[1]
    return out


def lag_search(
    video_t: F64, video: F64, audio_t: F64, audio: F64, max_lag: float = MAX_LAG_S, step: float = LAG_STEP_S
) -> tuple[float, float, F64, F64]:
    """(best lag s, its r, lags, r per lag): r of video(t) against audio(t - lag), parabola-refined peak.
    Positive lag: the video does what the audio did `lag` seconds later."""
    ok = np.isfinite(video)
    vt, v = video_t[ok], video[ok]
    lags: F64 = np.arange(-max_lag, max_lag + step / 2, step)
    rs = np.full(lags.shape[0], np.nan)
    for i, lag in enumerate(lags):
        a = np.interp(vt - lag, audio_t, audio, left=np.nan, right=np.nan)
        m = np.isfinite(a)
        if m.sum() >= 10 and np.std(a[m]) > 0 and np.std(v[m]) > 0:
            rs[i] = np.corrcoef(v[m], a[m])[0, 1]
    if not np.isfinite(rs).any():
        raise ValueError("no overlap between the video and audio signals to correlate")
    k = int(np.nanargmax(rs))
    best = float(lags[k])
    if 0 < k < rs.shape[0] - 1 and np.isfinite(rs[k - 1]) and np.isfinite(rs[k + 1]):
        den = rs[k - 1] - 2 * rs[k] + rs[k + 1]
        if den < 0:
            best += float(np.clip(0.5 * (rs[k - 1] - rs[k + 1]) / den, -0.5, 0.5)) * step
    return best, float(rs[k]), lags, rs


def voice_onsets(times: F64, level: F64, threshold: float = ONSET_DB, silence: float = SILENCE_S) -> F64:
    """Times the level rises through `threshold` after at least `silence` s below it (speech after a pause)."""
    above = level >= threshold
    out: list[float] = []
    last_above = -np.inf
    for i in range(1, above.shape[0]):
        if above[i] and not above[i - 1] and times[i] - last_above >= silence:
            # interpolate the crossing between the two samples
            a, b = level[i - 1], level[i]
            out.append(float(times[i - 1] + (threshold - a) / (b - a) * (times[i] - times[i - 1])))
        if above[i]:
            last_above = times[i]
    if above.shape[0] and above[0]:
        out.insert(0, float(times[0]))
    return np.array(out, dtype=np.float64)


def mouth_openings(times: F64, gap: F64) -> tuple[F64, float]:
    """(times the lip gap rises through its midpoint level, that level): midway between its 10th and 90th
    percentiles, the crossing interpolated between frames."""
    ok = np.isfinite(gap)
    t, g = times[ok], gap[ok]
    if g.size < 3:
        return np.zeros(0), float("nan")
    lo, hi = np.percentile(g, [10, 90])
    mid = float(0.5 * (lo + hi))
    up = np.nonzero((g[:-1] < mid) & (g[1:] >= mid))[0]
    out = [t[i] + (mid - g[i]) / (g[i + 1] - g[i]) * (t[i + 1] - t[i]) for i in up]
    return np.array(out, dtype=np.float64), mid


def onset_offsets(voice: F64, mouth: F64, window: float = MAX_LAG_S) -> list[float | None]:
    """For each voice onset, the nearest mouth opening within `window` minus the onset (None: none near)."""
    out: list[float | None] = []
    for v in voice:
        if mouth.size == 0:
            out.append(None)
            continue
        d = mouth - v
        k = int(np.argmin(np.abs(d)))
        out.append(float(d[k]) if abs(d[k]) <= window else None)
    return out


def measure(clip: Decoded, motion: bool = True) -> dict[str, Any]:
    """Every figure above for one decoded clip (ms, > 0: the mouth after the sound)."""
    if not clip.frames:
        raise ValueError("no video frames")
    if clip.audio.size == 0:
        raise ValueError("no audio track")
    a_t, level = voice_level(clip.audio, clip.rate, clip.audio_t0)
    gap, landmarks = lip_gaps(clip.frames)
    if landmarks is None:
        raise ValueError("no face found on any frame")
    amplitude = 10.0 ** (level / 20.0)
    lag, r, _, _ = lag_search(clip.frame_t, gap, a_t, amplitude)
    onsets = voice_onsets(a_t, level)
    openings, mid = mouth_openings(clip.frame_t, gap)
    offsets = onset_offsets(onsets, openings)
    found = [o for o in offsets if o is not None]
    out: dict[str, Any] = {
        "frames": len(clip.frames),
        "frames_with_face": int(np.isfinite(gap).sum()),
        "fps": round(float(1.0 / np.median(np.diff(clip.frame_t))), 3) if len(clip.frames) > 1 else None,
        "video_start_s": round(float(clip.frame_t[0]), 4),
        "audio_start_s": round(clip.audio_t0, 4),
        "audio_s": round(clip.audio.shape[0] / clip.rate, 3),
        "xcorr_ms": round(1000 * lag, 1),
        "xcorr_r": round(r, 3),
        "voice_onsets": len(onsets),
        "onsets_matched": len(found),
        "onset_ms": round(1000 * float(np.median(found)), 1) if found else None,
        "onset_offsets_ms": [None if o is None else round(1000 * o, 1) for o in offsets],
        "open_level_iod": round(mid, 4),
    }
    if motion:
        mlag, mr, _, _ = lag_search(clip.frame_t, mouth_motion(clip.frames, landmarks), a_t, amplitude)
        out["mouth_motion_xcorr_ms"] = round(1000 * mlag, 1)
        out["mouth_motion_xcorr_r"] = round(mr, 3)
    return out


def measure_file(path: str | Path, motion: bool = True) -> dict[str, Any]:
    try:
        return measure(decode_mp4(path), motion)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A/V offset of an MP4 from its decoded voice and mouth alone")
    ap.add_argument("mp4", nargs="+")
    ap.add_argument("--json", action="store_true", help="one JSON object per file")
    args = ap.parse_args(argv)
    for path in args.mp4:
        res = measure_file(path)
        if args.json:
            print(json.dumps({"mp4": path, **res}))
            continue
        print(
            f"{path}: mouth after voice by {res['xcorr_ms']} ms (cross-correlation, r = {res['xcorr_r']}); "
            f"{res['onset_ms']} ms median over {res['onsets_matched']}/{res['voice_onsets']} voice onsets; "
            f"mouth-region motion {res.get('mouth_motion_xcorr_ms')} ms (r = {res.get('mouth_motion_xcorr_r')})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
