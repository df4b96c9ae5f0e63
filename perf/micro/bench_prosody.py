"""End-of-phrase prosody (orchestrator/signal/prosody.py) on one 8 s floor window that ends in a 400 ms pause.

The `prosody` Triton model (model_repository/prosody/1/model.py) scales the int16 window to float and calls
`prosody_batch`; it runs once per full floor evaluation, beside Smart Turn. `pitch_track` (the YIN tracker over
the whole window, no speech mask) is shown as the part of that cost a pitch track alone takes.
"""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.signal.prosody import N_FEATURES, pitch_track, prosody_batch

GROUP = "prosody 8 s window"
PAUSE = 6400  # 400 ms of pause at the end of the window


@pytest.mark.benchmark(group=GROUP)
def test_prosody_batch_floor_path(benchmark, voice_8s_pcm):
    """What the prosody model runs per window: int16 -> float32 / 32768, then the 11 features."""
    window = voice_8s_pcm[None, :]
    pauses = np.array([PAUSE], np.int32)

    def run():
        return prosody_batch(window.astype(np.float32) * np.float32(1.0 / 32768.0), pauses)

    out = benchmark(run)
    assert out.shape == (1, N_FEATURES)
    assert np.count_nonzero(out) > N_FEATURES // 2  # voiced speech was found: the full path ran


@pytest.mark.benchmark(group=GROUP)
def test_prosody_part_pitch_track(benchmark, voice_8s):
    """Part of it: YIN pitch over the window's loud frames (prosody runs it on the speech frames only)."""
    _f0, voiced = benchmark(pitch_track, voice_8s)
    assert voiced.any()
