"""The live face's timeline logic (pure): replica audio segments -> phonemes on the session clock, cuts,
video session options and render-request checks. The render task itself runs against the real models in
tests/integration/test_face_models.py and the e2e tests."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from orchestrator.api.session_service import parse_options
from orchestrator.config import Settings
from orchestrator.errors import BadEmotion, BadFaceParams, BadOption, BadPortrait, BadTimings
from orchestrator.face import params
from orchestrator.face.clip import GAP_S, PHRASE_S, ClipSpec, check_spec, listening_events, parse_timings
from orchestrator.face.driver import place_segment, trim
from orchestrator.face.library import FaceLibrary, check_params, check_size
from orchestrator.face.motion import EmotionCue, MotionRequest, Sentence, generate
from orchestrator.face.motion import Phoneme as MotionPhoneme
from orchestrator.models.ports import Phoneme, SpeechChunk

SR = 16000


def chunk(seconds: float, phonemes: list[tuple[str, float, float]]) -> SpeechChunk:
    return SpeechChunk(
        np.zeros(round(seconds * SR), dtype=np.int16), "text", tuple(Phoneme(p, s, e) for p, s, e in phonemes)
    )


CHUNKS = [
    chunk(1.0, [("^", 0.0, 0.1), ("h", 0.1, 0.2), ("ə", 0.2, 0.5), ("l", 0.5, 0.7), ("$", 0.7, 1.0)]),
    chunk(0.5, [("m", 0.0, 0.2), ("a", 0.2, 0.5)]),
]


def test_a_whole_reply_sent_at_once_keeps_its_timings_shifted_to_the_release_time() -> None:
    out = place_segment(CHUNKS, 0, 24000, at=3.0)
    assert [s.t0 for s in out] == [3.0, 4.0]
    assert [p.p for p in out[0].phonemes] == ["^", "h", "ə", "l", "$"]
    assert out[1].phonemes[0] == MotionPhoneme("m", 0.0, 0.2)


def test_segments_in_pieces_place_each_phoneme_where_its_audio_plays() -> None:
    # 0.3 s of reply first (at 2.0), the rest later; a pause made the second piece start at 5.0, not 2.3
    first = place_segment(CHUNKS, 0, 4800, at=2.0)
    rest = place_segment(CHUNKS, 4800, 24000, at=5.0)
    assert first == [
        Sentence(2.0, (MotionPhoneme("^", 0.0, 0.1), MotionPhoneme("h", 0.1, 0.2), MotionPhoneme("ə", 0.2, 0.3)))
    ]
    # the second piece: chunk 0's own time 0 now falls at 5.0 - 0.3 = 4.7; "ə" resumes at 0.3 of it
    assert rest[0].t0 == pytest.approx(4.7)
    assert rest[0].phonemes[0] == MotionPhoneme("ə", 0.3, 0.5)
    assert rest[1].t0 == pytest.approx(5.7)  # chunk 1 starts 1.0 s into the reply = 0.7 s after the piece


def test_trim_removes_what_was_never_heard() -> None:
    sentences = place_segment(CHUNKS, 0, 24000, at=3.0)
    cut = trim(sentences, 3.6)  # stopped 0.6 s in, in the middle of "l"
    assert len(cut) == 1
    assert [p.p for p in cut[0].phonemes] == ["^", "h", "ə", "l"]
    assert cut[0].phonemes[-1].e == pytest.approx(0.6)
    assert trim(sentences, 2.0) == []


def test_video_options_parse_and_refuse_bad_values() -> None:
    s = Settings()
    opts = parse_options(s, {"video": "true", "video.fps": "12", "video.size": "256x192"})
    assert opts.video is not None and (opts.video.fps, opts.video.width, opts.video.height) == (12.0, 256, 192)
    assert parse_options(s, {}).video is None
    for bad in ({"video": "true", "video.size": "big"}, {"video": "true", "video.fps": "500"}, {"video": "maybe"}):
        with pytest.raises(BadOption):
            parse_options(s, bad)
    with pytest.raises(BadOption):
        parse_options(s, {"video": "true", "mode": "floor"})
    with pytest.raises(BadOption):  # video.* without video=true is an unknown option, not silently ignored
        parse_options(s, {"video.fps": "12"})


def test_render_requests_are_checked_before_any_work() -> None:
    with pytest.raises(BadEmotion, match="happiness"):
        check_spec(ClipSpec(text="hi", emotion="elated"))
    with pytest.raises(BadOption, match="duration"):  # nothing to say and no duration
        check_spec(ClipSpec(text="   "))
    with pytest.raises(BadTimings):
        check_spec(ClipSpec(text="x" * 5000))
    check_spec(ClipSpec(text="Hello.", emotion="contempt"))


def test_idle_and_listening_clips_are_checked() -> None:
    check_spec(ClipSpec(text="", duration=2.0))
    check_spec(ClipSpec(text="", duration=120.0, listening=True))
    check_spec(ClipSpec(text="Hello.", duration=5.0))  # speech, then idle up to 5 s
    for bad in (-1.0, 120.5, 1e9, float("nan"), float("inf")):
        with pytest.raises(BadOption, match="duration"):
            check_spec(ClipSpec(text="", duration=bad))
    with pytest.raises(BadOption, match="listening"):
        check_spec(ClipSpec(text="Hello.", duration=2.0, listening=True))
    with pytest.raises(BadOption):
        check_spec(ClipSpec(text="", listening=True))


def test_a_listening_clip_hears_phrases_with_pauses() -> None:
    events = listening_events(30.0, seed=3)
    assert events == listening_events(30.0, seed=3) != listening_events(30.0, seed=4)
    kinds = [e.type for e in events]
    assert kinds[0] == "speech_start" and events[0].t == 0.0
    assert kinds[::2] == ["speech_start"] * len(kinds[::2]) and set(kinds[1::2]) == {"speech_end"}
    assert all(e.t < 30.0 for e in events) and len(kinds) >= 14  # ~2.5 + 0.6 s per phrase
    for a, b in itertools.pairwise(events):
        lo, hi = PHRASE_S if a.type == "speech_start" else GAP_S
        assert lo - 1e-3 <= b.t - a.t <= hi + 1e-3
    # the face listens: attentive brows while the user talks, a nod after a pause; the idle face does neither
    t = 1 / 25
    cue = (EmotionCue(0.0, "neutral", 0.6),)
    listening = generate(MotionRequest(fps=25.0, start=0.0, frames=250, emotion=cue, events=events))
    idle = generate(MotionRequest(fps=25.0, start=0.0, frames=250, emotion=cue))
    ix = params.INDEX
    talking = slice(round(0.8 / t), round(events[1].t / t))
    assert (listening[talking, ix["brow_inner_up"]] - idle[talking, ix["brow_inner_up"]]).min() > 0.08
    nod = slice(round(events[1].t / t), round((events[1].t + 0.8) / t))
    assert np.abs(listening[nod, ix["head_pitch"]] - idle[nod, ix["head_pitch"]]).max() > 1.5
    assert np.abs(listening[:, :8] - idle[:, :8]).max() < 0.05  # no mouth movement: the user is talking


def test_timings_for_given_audio_are_validated() -> None:
    good = json.dumps([{"p": "h", "s": 0.0, "e": 0.1}, {"p": "a", "s": 0.1, "e": 0.4}])
    assert [p.p for p in parse_timings(good, audio_s=0.5)] == ["h", "a"]
    for bad in (
        "not json",
        "[]",
        json.dumps([{"p": "a", "s": 0.0, "e": 3.0}]),
        json.dumps([{"p": "a", "s": -1, "e": 0.1}]),
    ):
        with pytest.raises(BadTimings):
            parse_timings(bad, audio_s=0.5)


def test_sizes_params_and_face_names() -> None:
    check_size(512, 512)
    check_size(1920, 1080)
    for w, h in ((511, 512), (32, 32), (8000, 1080)):
        with pytest.raises(BadFaceParams):
            check_size(w, h)
    check_params(np.zeros((3, 27), dtype=np.float32))
    for bad in (np.zeros((3, 26)), np.zeros((0, 27)), np.full((2, 27), np.nan)):
        with pytest.raises(BadFaceParams):
            check_params(bad)


def test_unknown_and_invalid_face_names_are_typed_errors(tmp_path: object) -> None:
    from pathlib import Path

    lib = FaceLibrary(Path(str(tmp_path)), Path(str(tmp_path)) / "cache")
    (Path(str(tmp_path)) / "ava.png").write_bytes(b"")
    assert lib.names() == ["ava"]
    with pytest.raises(BadPortrait, match="known: ava"):
        lib.path("bob")
    with pytest.raises(BadPortrait, match="invalid"):
        lib.path("../etc/passwd")
