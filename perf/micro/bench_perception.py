"""Perception features: per-hop voice features (orchestrator/perception/prosody_features.py) and the fuser's
per-frame step (orchestrator/perception/fusion.py `Fuser.observe_face`).

A perceiving session cuts its audio into 20 ms hops with `frame_pcm` and sends them to the `perception_audio`
model, which runs `frame_features` on them (50 hops per second of audio; usually one hop per call, more when the
voice loop falls behind and batches). Per hop = mean / `units_per_call`.

Every analysed camera frame becomes a `FaceObservation` and goes through `Fuser.observe_face` (up to
`server.max_video_fps` = 30 per second). The fuser first takes 120 s of 15 fps observations (its history is full,
so every call also prunes one); each timed call builds the next observation (a face at the camera, a drifting
8-class expression) and observes it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import per_unit

from orchestrator.perception.fusion import EMOTIONS, FaceObservation, Fuser
from orchestrator.perception.prosody_features import HOP, N_FEATURES, frame_features, frame_pcm

GROUP = "perception: voice features per chunk"


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("hops", [1, 50])
def test_voice_frame_pcm_and_features(benchmark, voice_long_pcm, hops):
    """`frame_pcm` of the next chunk (carrying the 20 ms tail) + `frame_features` of its hops: 1 hop (a live 20 ms
    chunk) or 50 (one second batched)."""
    n = hops * HOP
    starts = itertools.cycle(range(0, voice_long_pcm.size - n, n))
    tail = None

    def step():
        nonlocal tail
        i = next(starts)
        frames, tail = frame_pcm(voice_long_pcm[i : i + n], tail)
        return frame_features(frames)

    out = benchmark(step)
    per_unit(benchmark, "hop", hops)
    assert out.shape == (hops, N_FEATURES)


def _observation(k: int, fps: float = 15.0) -> FaceObservation:
    """Frame k: a face at the camera, small head movements, an expression drifting between neutral and a smile."""
    t = k / fps
    smile = 0.5 + 0.45 * np.sin(2 * np.pi * t / 9.0)
    rest = (1.0 - smile) / (len(EMOTIONS) - 1)
    emotion = {e: rest for e in EMOTIONS} | {"happiness": float(smile)}
    return FaceObservation(
        t=t,
        faces=1,
        emotion=emotion,
        yaw=float(8 * np.sin(t)),
        pitch=float(4 * np.cos(0.7 * t)),
        roll=1.0,
        gaze="camera" if (k // 40) % 5 else "away",
        gaze_score=0.8,
        eyes_closed=False,
        mouth_open=0.1,
    )


@pytest.mark.benchmark(group="perception: fuser per camera frame")
def test_fuser_observe_face(benchmark):
    """Build one `FaceObservation` (validation included, as the pipeline does per frame) and fuse it."""
    fuser = Fuser()
    for k in range(120 * 15):
        fuser.observe_face(_observation(k))
    frames = itertools.count(120 * 15)
    benchmark(lambda: fuser.observe_face(_observation(next(frames))))
    assert fuser.snapshot().faces == 1


@pytest.mark.benchmark(group="perception: fuser per camera frame")
def test_fuser_part_observation_only(benchmark):
    """Part of it: building and validating the observation alone."""
    frames = itertools.count()
    obs = benchmark(lambda: _observation(next(frames)))
    assert obs.faces == 1
