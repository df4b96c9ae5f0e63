"""The quiet a synthesised line opens with, cut from the start of a reply (and capped inside one).

The piper voice starts every line with near-silence (|sample| under ~10) before the first sound: 20-70 ms
usually, but now and then its duration model gives the start 0.25-0.7 s ("I managed 3 days.": 255 ms; "This
sounds like you're experiencing a serious health issue.": 673 ms). Between sentences a little of it is part
of the pause, but at the start of a reply all of it is latency: the user waits for a sound that has not
begun. `trim_lead` cuts it down to `keep_s` before the first sample at or above `quiet` (-54 dBFS: soft onsets
such as "h" and "f" rise through it within their first ~10 ms), and moves the phoneme timings with the audio
so the face stays in sync. Pure.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from orchestrator.models.ports import Phoneme, SpeechChunk
from orchestrator.signal.audio import SAMPLE_RATE

QUIET = 64  # |sample| below this is silence
KEEP_S = 0.01  # kept before a reply's first sound, so its attack is never clipped
GAP_S = 0.07  # the most kept before a later line's first sound: the usual quiet, not the outliers


def trim_lead(chunk: SpeechChunk, quiet: int = QUIET, keep_s: float = KEEP_S) -> SpeechChunk:
    """`chunk` without its leading quiet (all but `keep_s` of it); unchanged when it has none or is silent."""
    loud = np.flatnonzero(np.abs(chunk.pcm.astype(np.int32)) >= quiet)
    cut = int(loud[0]) - round(keep_s * SAMPLE_RATE) if loud.size else 0
    if cut <= 0:
        return chunk
    dt = cut / SAMPLE_RATE
    phonemes = tuple(Phoneme(p.phoneme, max(p.start - dt, 0.0), max(p.end - dt, 0.0)) for p in chunk.phonemes)
    return dataclasses.replace(chunk, pcm=chunk.pcm[cut:], phonemes=phonemes)
