"""Face motion (orchestrator/face/motion.py): per-frame face parameters from the replica's timeline.

A live session asks the `face_motion` model for its frames in chunks of `video.chunk_s` = 0.12 s (3 frames at
25 fps; up to 50 when catching up), once per chunk: 8.3 calls and 25 frames per second of video. The request is
what `FaceDriver._request` builds: the replica's emotion, the last 5 s of floor events and the phoneme timings of
the sentences being spoken (here ~15 phonemes a second, the frames fall inside a sentence). Rows: `generate` for a
3-frame and a 25-frame request, and the model's own path (`MotionRequest.from_json` + `generate`) for 3 frames.
Per frame = mean / `units_per_call`.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import per_unit

from orchestrator.face import params
from orchestrator.face.emotions import EmotionCue
from orchestrator.face.motion import FloorEvent, MotionRequest, Phoneme, Sentence, generate

GROUP = "face motion: one request"
FPS = 25.0
SYMBOLS = ["h", "ə", "l", "oʊ", "aɪ", "m", "k", "æ", "n", "h", "ɛ", "l", "p", "j", "uː", "w", "ɪ", "ð", "ð", "ɪ", "s"]


def sentence(t0: float, seconds: float, seed: int) -> Sentence:
    rng = np.random.default_rng(seed)
    phonemes, s = [], 0.05
    for sym in itertools.cycle(SYMBOLS):
        d = float(rng.uniform(0.045, 0.09))
        if s + d > seconds:
            break
        phonemes.append(Phoneme(sym, round(s, 3), round(s + d, 3)))
        s += d
    return Sentence(t0, tuple(phonemes))


def request(frames: int) -> MotionRequest:
    """Frames from t = 12 s: the replica is 1.2 s into its first sentence (the user's turn ended at 10.2 s)."""
    start = 12.0
    events = (
        FloorEvent(7.1, "speech_start"),
        FloorEvent(9.9, "speech_end"),
        FloorEvent(10.0, "eot_tentative"),
        FloorEvent(10.2, "eot_commit"),
    )
    speech = (sentence(10.8, 1.6, 1), sentence(12.6, 2.4, 2))
    return MotionRequest(
        fps=FPS,
        start=start,
        frames=frames,
        seed=3,
        emotion=(EmotionCue(0.0, "neutral", 0.6), EmotionCue(11.0, "happiness", 0.6)),
        speech=speech,
        events=events,
    )


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("frames", [3, 25])
def test_motion_generate(benchmark, frames):
    """`generate` of one request: 3 frames is the live chunk, 25 is one second of video."""
    req = request(frames)
    out = benchmark(generate, req)
    per_unit(benchmark, "frame", frames)
    assert out.shape == (frames, params.SIZE)
    assert float(out[:, params.INDEX["jaw_open"]].max()) > 0.1  # the replica is speaking in these frames


@pytest.mark.benchmark(group=GROUP)
def test_motion_model_path_from_json_3_frames(benchmark):
    """What the `face_motion` model runs per request: parse and validate the JSON timeline, then `generate`."""
    text = request(3).to_json()
    out = benchmark(lambda: generate(MotionRequest.from_json(text)))
    per_unit(benchmark, "frame", 3)
    assert out.shape == (3, params.SIZE)
