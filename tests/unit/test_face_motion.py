"""Face motion on virtual time: visemes, emotions, idle life, listening, the request format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.errors import BadEmotion, BadTimings, DuetError
from orchestrator.face import params
from orchestrator.face.emotions import EMOTIONS, EmotionCue, emotion_names
from orchestrator.face.idle import blink_times
from orchestrator.face.motion import (
    BadMotionRequest,
    FloorEvent,
    MotionRequest,
    generate,
    mouth_openness,
)
from orchestrator.face.visemes import LEAD_S, MOUTH, VISEMES, Phoneme, Sentence, parse_phonemes, viseme
from tests.conftest import require

IX = params.INDEX
ROOT = Path(__file__).resolve().parents[2]
VOICE = ROOT / "model_repository/tts/1/voices/en_US-joe-medium.onnx"


def seq(*items: tuple[str, float], lead: float = 0.3) -> tuple[Phoneme, ...]:
    """Phonemes back to back from (symbol, duration) pairs, after `lead` s of leading silence."""
    out, t = [Phoneme("^", 0.0, lead)], lead
    for p, d in items:
        out.append(Phoneme(p, t, t + d))
        t += d
    out.append(Phoneme("$", t, t + 0.3))
    return tuple(out)


def run(fps: float = 30.0, start: float = 0.0, frames: int = 120, **kw: object) -> np.ndarray:
    return generate(MotionRequest(fps=fps, start=start, frames=frames, **kw))  # type: ignore[arg-type]


def at(frames: np.ndarray, t: float, fps: float = 30.0, start: float = 0.0) -> np.ndarray:
    return frames[round((t - start) * fps)]


@pytest.fixture(scope="module")
def piper() -> list[tuple[str, tuple[Phoneme, ...]]]:
    require(VOICE, "the piper voice")
    from orchestrator.inference.tts import PiperSpeaker

    speaker = PiperSpeaker(str(VOICE))
    texts = ["Maybe we should visit the zoo, or watch a movie about fish and ships.", "Bob bought a map. Hmm!"]
    return [(t, parse_phonemes(json.loads(speaker.synthesize(t).phonemes_json()))) for t in texts]


# --- visemes -----------------------------------------------------------------------------------------------


def test_mouth_block_leads_the_parameter_vector() -> None:
    assert params.NAMES[:8] == MOUTH
    assert all(len(t) == 8 for _, t in VISEMES.values())


def test_every_symbol_piper_speaks_has_a_shape(piper: list[tuple[str, tuple[Phoneme, ...]]]) -> None:
    for _, phonemes in piper:
        for ph in phonemes:
            cls, target = viseme(ph.p)
            assert len(target) == 8
            if ph.p in "^$ ,.!?;:":
                assert cls == "pause" and not any(target)
    assert viseme("iː") == VISEMES["i"]
    assert viseme("tʃ") == VISEMES["t"]
    cls, target = viseme("☃")  # not IPA at all: a neutral small opening, never an error
    assert cls == "pause" or 0 < target[0] < 0.4
    cls, target = viseme("ʘ")
    assert cls == "lingual" and 0 < target[0] < 0.4


@pytest.mark.parametrize("fps", [25.0, 30.0, 60.0])
def test_bilabials_close_the_lips_at_their_centres(piper: list[tuple[str, tuple[Phoneme, ...]]], fps: float) -> None:
    for _, phonemes in piper:
        frames = run(
            fps=fps, frames=int(6 * fps), speech=(Sentence(0.2, phonemes),), emotion=(EmotionCue(0, "amusement"),)
        )
        bilabials = [p for p in phonemes if p.p in ("p", "b", "m")]
        assert bilabials
        for p in bilabials:
            i = round((0.2 + (p.s + p.e) / 2 - LEAD_S) * fps)  # the frame nearest the centre, lips leading
            assert frames[i, IX["lip_press"]] == 1.0, p
            assert frames[i, IX["jaw_open"]] < 0.02, p
            assert frames[i, IX["lower_lip_tuck"]] < 0.02


def test_labiodentals_tuck_and_rounded_sounds_round() -> None:
    frames = run(
        frames=60, speech=(Sentence(0.0, seq(("ɑː", 0.2), ("f", 0.12), ("ɑː", 0.2), ("uː", 0.2), ("iː", 0.2))),)
    )
    f, a, u, i = (at(frames, t) for t in (0.56, 0.4, 0.9, 1.1))
    assert f[IX["lower_lip_tuck"]] > 0.6 > a[IX["lower_lip_tuck"]]
    assert u[IX["lip_round"]] > 0.6 > i[IX["lip_round"]]
    assert i[IX["lip_spread"]] > u[IX["lip_spread"]]


def test_vowel_openness_order() -> None:
    jaw = {}
    for v in ("ɑː", "æ", "ɛ", "e", "ɪ", "i"):
        frames = run(frames=30, speech=(Sentence(0.0, seq(("h", 0.08), (v, 0.25), ("h", 0.08))),))
        jaw[v] = at(frames, 0.3 + 0.08 + 0.125)[IX["jaw_open"]]
    assert jaw["ɑː"] > jaw["æ"] > jaw["ɛ"] > jaw["e"] > jaw["ɪ"] > jaw["i"] > 0.1


def test_lips_move_before_the_sound() -> None:
    onset = 0.5
    frames = run(fps=100, frames=100, speech=(Sentence(0.0, seq(("ɑː", 0.3), lead=onset)),))
    jaw = frames[:, IX["jaw_open"]]
    assert jaw[: round((onset - 0.2) * 100)].max() < 0.01  # at rest well before
    assert jaw[round((onset - 0.05) * 100)] > 0.1  # already opening 50 ms before the acoustic onset
    # the opening is centred LEAD_S (plus a little anticipatory spread) before the vowel's span centre
    t = np.arange(100) / 100
    centre = float((t * jaw).sum() / jaw.sum())
    assert onset + 0.15 - LEAD_S - 0.015 < centre < onset + 0.15 - LEAD_S + 0.005
    assert jaw[round((onset + 0.15) * 100)] > 0.6


def test_long_pauses_return_to_rest_short_gaps_do_not() -> None:
    phon = seq(("ɑː", 0.2), (",", 0.4), ("ɑː", 0.2), (" ", 0.04), ("ɑː", 0.2))
    frames = run(fps=100, frames=200, speech=(Sentence(0.0, phon),))
    mouth = frames[:, :8]
    assert np.abs(mouth[round(0.7 * 100)]).max() < 0.03  # the middle of the 400 ms pause
    assert mouth[round(1.12 * 100), IX["jaw_open"]] > 0.4  # the 40 ms word gap keeps the mouth open
    assert np.abs(mouth[round(1.8 * 100) :]).max() < 0.01  # after the sentence
    short = run(fps=100, frames=100, speech=(Sentence(0.0, seq(("ɑː", 0.2), (".", 0.2), ("ɑː", 0.2))),))
    assert np.abs(short[round((0.6 - LEAD_S) * 100), :8]).max() < 0.05  # a 200 ms pause is already (near) rest


# --- emotions ----------------------------------------------------------------------------------------------


def expression_of(name: str, intensity: float = 1.0) -> np.ndarray:
    """The emotion's effect on the face: its frames minus neutral frames (same seed, so idle life cancels)."""
    base = run(frames=30)
    frames = run(frames=30, emotion=(EmotionCue(0.0, name, intensity),))
    return (frames - base)[-1]


def test_at_least_ten_named_emotions_with_descriptions() -> None:
    names = emotion_names()
    assert len(names) >= 10 and names == list(EMOTIONS)
    for basic in ("neutral", "happiness", "sadness", "anger", "fear", "surprise", "disgust", "contempt"):
        assert basic in names
    assert all(e.description for e in EMOTIONS.values())


def test_emotion_signatures_are_distinct_and_scale_with_intensity() -> None:
    sig = {n: expression_of(n) for n in emotion_names() if n != "neutral"}
    names = list(sig)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert np.abs(sig[names[a]] - sig[names[b]]).max() > 0.15, (names[a], names[b])
    assert sig["happiness"][IX["lip_corner_up"]] > 0.5 and sig["happiness"][IX["cheek_raise"]] > 0.5
    assert sig["sadness"][IX["lip_corner_down"]] > 0.5 and sig["sadness"][IX["brow_inner_up"]] > 0.5
    assert sig["sadness"][IX["head_pitch"]] > 2 and sig["sadness"][IX["gaze_y"]] > 0.1
    assert sig["surprise"][IX["jaw_open"]] > 0.3 and sig["surprise"][IX["upper_lid_raise"]] > 0.5
    assert sig["anger"][IX["brow_lower"]] > 0.5 and sig["anger"][IX["lip_tighten"]] > 0.5
    assert sig["disgust"][IX["nose_wrinkle"]] > 0.5
    assert abs(sig["contempt"][IX["smirk"]]) > 0.5 and sig["contempt"][IX["lip_corner_up"]] < 0.1
    assert sig["fear"][IX["lip_spread"]] > 0.3 and sig["fear"][IX["brow_inner_up"]] > 0.5
    half = expression_of("sadness", 0.5)
    cols = [IX["brow_inner_up"], IX["lip_corner_down"], IX["head_pitch"]]
    np.testing.assert_allclose(half[cols], 0.5 * sig["sadness"][cols], rtol=0.02)


def test_unknown_emotion_lists_the_known_ones() -> None:
    with pytest.raises(BadEmotion) as err:
        EmotionCue(0.0, "smug")
    assert err.value.code == "bad_emotion" and "happiness" in str(err.value) and "contempt" in str(err.value)
    with pytest.raises(BadEmotion):
        EmotionCue(0.0, "happiness", 1.5)


def test_emotion_changes_are_smooth() -> None:
    cues = tuple(
        EmotionCue(0.2 + 0.3 * k, n, 1.0) for k, n in enumerate(["surprise", "sadness", "anger", "amusement", "fear"])
    )
    for fps, bound in ((30.0, 0.2), (120.0, 0.06)):
        frames = run(fps=fps, frames=int(2.5 * fps), emotion=cues)
        steps = np.abs(np.diff(frames[:, IX["brow_inner_up"] : IX["lip_tighten"] + 1], axis=0))
        assert steps.max() < bound
        head = np.abs(np.diff(frames[:, IX["head_yaw"] :], axis=0))
        assert head.max() < 45 / fps  # degrees per frame: head turns no faster than ~45 deg/s
    # the transition takes roughly 250-400 ms
    frames = run(fps=100, frames=100, emotion=(EmotionCue(0.2, "happiness"),))
    smile = frames[:, IX["lip_corner_up"]]
    assert smile[15] < 0.05 and smile[40] > 0.45 and smile[60] > 0.85


def test_a_smile_narrows_rounding_but_not_bilabial_closure() -> None:
    phon = seq(("uː", 0.25), ("m", 0.06), ("uː", 0.25))
    plain = run(fps=100, frames=120, speech=(Sentence(0.0, phon),))
    happy = run(fps=100, frames=120, speech=(Sentence(0.0, phon),), emotion=(EmotionCue(0.0, "happiness"),))
    u = round((0.3 + 0.125) * 100)
    assert happy[u, IX["lip_round"]] < plain[u, IX["lip_round"]] - 0.1
    m = round((0.3 + 0.25 + 0.03 - LEAD_S) * 100)
    assert happy[m, IX["lip_press"]] == 1.0 and happy[m, IX["jaw_open"]] < 0.02


# --- idle life ---------------------------------------------------------------------------------------------


def count_blinks(blink: np.ndarray) -> int:
    shut = blink > 0.5
    return int(np.count_nonzero(shut[1:] & ~shut[:-1]) + shut[0])


def test_blinks_at_natural_rates_and_close_fully() -> None:
    rates = []
    for seed in range(6):
        blink = np.concatenate([run(frames=1800, start=60.0 * k, seed=seed)[:, IX["blink"]] for k in range(2)])
        rates.append(count_blinks(blink) / 2.0)
        # every blink reaches full closure on some frame
        shut = blink > 0.5
        edges = np.flatnonzero(np.diff(shut.astype(int)))
        for a, b in zip(edges[::2], edges[1::2], strict=False):
            assert blink[a + 1 : b + 1].max() == 1.0
    assert min(rates) >= 10 and max(rates) <= 24
    assert 12 <= float(np.median(rates)) <= 20


def test_blinks_keep_a_refractory_gap_and_are_brief() -> None:
    onsets = blink_times(7, 0.0, 3600.0, np.zeros_like)
    gaps = np.diff(onsets)
    assert gaps.min() >= 0.2  # only double blinks come this close
    assert np.mean(gaps < 0.5) < 0.15  # and they are occasional
    frames = run(fps=120, frames=1200, seed=3)
    shut = frames[:, IX["blink"]] > 0.5
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], shut.astype(int), [0]]))))[::2] / 120
    assert runs.size and runs.min() >= 0.04 and runs.max() <= 0.15  # closure (half-shut or more) is brief


def test_speaking_raises_the_blink_rate() -> None:
    quiet = blink_times(5, 0.0, 3600.0, np.zeros_like).size
    speaking = blink_times(5, 0.0, 3600.0, np.ones_like).size
    assert speaking > 1.15 * quiet


def test_the_face_is_never_frozen() -> None:
    frames = run(frames=300, seed=11)  # 10 s of pure idle
    for name, least in (("breath", 0.3), ("head_yaw", 0.5), ("head_pitch", 0.3), ("gaze_x", 0.03)):
        assert np.ptp(frames[:, IX[name]]) > least, name
    breath = frames[:, IX["breath"]]
    crossings = np.count_nonzero(np.diff(np.sign(breath - breath.mean())) != 0) / 2
    assert 1.5 <= crossings <= 3.5  # ~0.25 Hz over 10 s
    assert np.abs(frames[:, IX["head_yaw"] :]).max() < 4.0


def test_chunks_give_the_same_frames_as_one_request(piper: list[tuple[str, tuple[Phoneme, ...]]]) -> None:
    timeline = {
        "seed": 9,
        "speech": (Sentence(0.4, piper[0][1]), Sentence(5.5, piper[1][1])),
        "emotion": (EmotionCue(0.0, "interested", 0.7), EmotionCue(1.9, "happiness", 0.8)),
        "events": (FloorEvent(5.0, "speech_start"), FloorEvent(5.2, "barge_in"), FloorEvent(6.1, "speech_end")),
        "user_emotion": (EmotionCue(2.0, "sadness", 0.9),),
    }
    whole = run(frames=240, **timeline)
    parts = np.concatenate([run(frames=60, start=2.0 * k, **timeline) for k in range(4)])
    np.testing.assert_allclose(parts, whole, atol=1e-6)
    odd = np.concatenate([run(frames=n, start=s / 30, **timeline) for s, n in ((0, 7), (7, 101), (108, 132))])
    np.testing.assert_allclose(odd, whole, atol=1e-6)


def test_deterministic_per_seed_and_seeds_differ() -> None:
    a, b, c = run(frames=300, seed=1), run(frames=300, seed=1), run(frames=300, seed=2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


# --- listening ---------------------------------------------------------------------------------------------


def test_nods_at_user_pauses_while_listening() -> None:
    events = (FloorEvent(1.0, "speech_start"), FloorEvent(3.0, "speech_end"), FloorEvent(3.3, "eot_tentative"))
    base = run(frames=150, seed=4, events=(FloorEvent(1.0, "speech_start"),))
    nod = run(frames=150, seed=4, events=events)
    pitch = nod[:, IX["head_pitch"]] - base[:, IX["head_pitch"]]
    assert np.abs(pitch[: 3 * 30]).max() < 1e-6  # nothing before the pause
    assert pitch[3 * 30 : 4 * 30].max() > 1.5  # a nod (chin down) within a second of speech_end
    assert pitch[-1] < 0.5  # and back up


def test_no_nods_at_pauses_while_the_replica_speaks() -> None:
    speech = (Sentence(0.0, seq(("ɑː", 1.5), ("m", 0.1), ("ɑː", 1.5))),)
    base = run(frames=120, seed=4, speech=speech)
    with_pause = run(frames=120, seed=4, speech=speech, events=(FloorEvent(1.2, "speech_end"),))
    assert np.abs(with_pause[:, IX["head_pitch"]] - base[:, IX["head_pitch"]]).max() < 0.3


def test_attentive_while_the_user_speaks() -> None:
    base = run(frames=150, seed=4)
    listening = run(frames=150, seed=4, events=(FloorEvent(1.0, "speech_start"),))
    d = listening - base
    assert d[-1, IX["brow_inner_up"]] > 0.08 and d[-1, IX["upper_lid_raise"]] > 0.05
    assert np.abs(listening[-60:, IX["gaze_x"]]).max() < np.abs(base[:, IX["gaze_x"]]).max() + 1e-6


def test_eot_commit_cue_then_thinking_look_away() -> None:
    base = run(frames=60, seed=2, events=(FloorEvent(0.0, "speech_start"), FloorEvent(0.8, "speech_end")))
    cue = run(
        frames=60,
        seed=2,
        events=(FloorEvent(0.0, "speech_start"), FloorEvent(0.8, "speech_end"), FloorEvent(1.0, "eot_commit")),
    )
    d = cue - base
    assert d[round(1.4 * 30), IX["breath"]] > 0.2  # inhale
    assert d[round(1.4 * 30), IX["jaw_open"]] > 0.05  # lips part
    assert np.abs(d[round(1.6 * 30), IX["gaze_x"]]) > 0.2  # looking aside while thinking


def test_barge_in_cuts_speech_at_once_and_turns_to_listening() -> None:
    speech = (Sentence(0.0, seq(*[("ɑː", 0.2), ("d", 0.05)] * 8)),)
    fps = 100
    cut = 1.0
    frames = run(fps=fps, frames=200, speech=speech, events=(FloorEvent(cut, "barge_in"),))
    full = run(fps=fps, frames=200, speech=speech)
    open_ = mouth_openness(
        MotionRequest(fps=fps, start=0.0, frames=200, speech=speech, events=(FloorEvent(cut, "barge_in"),))
    )
    assert full[round((cut + 0.1) * fps), IX["jaw_open"]] > 0.4  # it would still be talking
    assert np.abs(frames[round((cut + 0.08) * fps) :, :8]).max() < 0.05  # mouth at rest within 80 ms
    assert open_[round(0.95 * fps)] > 0.3 and open_[round((cut + 0.08) * fps) :].max() < 0.05
    assert frames[-1, IX["brow_inner_up"]] > full[-1, IX["brow_inner_up"]] + 0.05  # listening
    # speaking_cut does the same without an event
    cut_frames = run(fps=fps, frames=200, speech=speech, speaking_cut=cut)
    assert np.abs(cut_frames[round((cut + 0.08) * fps) :, :8]).max() < 0.05
    # a sentence placed after the barge-in is not cut
    later = (*speech, Sentence(1.5, seq(("ɑː", 0.3))))
    resumed = run(fps=fps, frames=250, speech=later, events=(FloorEvent(cut, "barge_in"),))
    assert resumed[round((1.5 + 0.3 + 0.15) * fps), IX["jaw_open"]] > 0.5


def test_mirrors_the_users_emotion_at_reduced_intensity() -> None:
    events = (FloorEvent(0.0, "speech_start"),)
    base = run(frames=60, events=events)
    sad = run(frames=60, events=events, user_emotion=(EmotionCue(0.2, "sadness", 1.0),))
    happy = run(frames=60, events=events, user_emotion=(EmotionCue(0.2, "happiness", 1.0),))
    d_sad, d_happy = sad[-1] - base[-1], happy[-1] - base[-1]
    assert 0.15 < d_sad[IX["brow_inner_up"]] < 0.6  # concern, not full sadness
    assert 0.15 < d_happy[IX["lip_corner_up"]] < 0.6
    angry = run(frames=60, events=events, user_emotion=(EmotionCue(0.2, "anger", 1.0),))
    assert angry[-1, IX["brow_lower"]] - base[-1, IX["brow_lower"]] < 0.15  # no anger back at the user


# --- the request -------------------------------------------------------------------------------------------


def test_output_shape_dtype_and_ranges(piper: list[tuple[str, tuple[Phoneme, ...]]]) -> None:
    frames = run(
        fps=24,
        frames=240,
        speech=(Sentence(0.1, piper[0][1]),),
        emotion=(EmotionCue(0.0, "fear"), EmotionCue(3.0, "amusement")),
        events=(FloorEvent(4.0, "speech_start"), FloorEvent(6.0, "speech_end"), FloorEvent(6.3, "eot_commit")),
        user_emotion=(EmotionCue(4.0, "surprise"),),
    )
    assert frames.shape == (240, params.SIZE) and frames.dtype == np.float32
    assert np.isfinite(frames).all()
    assert (frames >= params.LOW).all() and (frames <= params.HIGH).all()


def test_json_round_trip(piper: list[tuple[str, tuple[Phoneme, ...]]]) -> None:
    req = MotionRequest(
        fps=25,
        start=1.0,
        frames=50,
        seed=3,
        emotion=(EmotionCue(0.5, "sadness", 0.4),),
        speech=(Sentence(0.2, piper[1][1]),),
        events=(FloorEvent(2.0, "backchannel"),),
        user_emotion=(EmotionCue(0.1, "happiness", 0.3),),
        speaking_cut=2.5,
    )
    again = MotionRequest.from_json(req.to_json())
    assert again == req
    np.testing.assert_array_equal(generate(again), generate(req))
    # floor events in DESIGN.md's stable format (with compute_ms) and emotion triples are accepted as they are
    raw = {
        "fps": 30,
        "frames": 3,
        "events": [{"type": "speech_start", "t": 0.1, "compute_ms": 3.2}],
        "emotion": [[0, "anger", 0.5]],
    }
    assert MotionRequest.from_json(json.dumps(raw)).events == (FloorEvent(0.1, "speech_start"),)


BAD = [
    ({"fps": 0, "frames": 10}, BadMotionRequest),
    ({"fps": 121, "frames": 10}, BadMotionRequest),
    ({"fps": 30, "frames": 0}, BadMotionRequest),
    ({"fps": 30, "frames": 1801}, BadMotionRequest),
    ({"fps": 30, "frames": 2.5}, BadMotionRequest),
    ({"fps": 30, "frames": 10, "seed": -1}, BadMotionRequest),
    ({"fps": 30}, BadMotionRequest),
    ({"fps": 30, "frames": 10, "colour": 1}, BadMotionRequest),
    ({"fps": 30, "frames": 10, "start": -1}, BadTimings),
    ({"fps": 30, "frames": 10, "start": float("nan")}, BadTimings),
    ({"fps": 30, "frames": 10, "emotion": [{"t": 0, "emotion": "smug"}]}, BadEmotion),
    ({"fps": 30, "frames": 10, "emotion": [{"t": -1, "emotion": "anger"}]}, BadTimings),
    ({"fps": 30, "frames": 10, "user_emotion": [{"t": 0, "emotion": "anger", "intensity": "high"}]}, BadEmotion),
    ({"fps": 30, "frames": 10, "events": [{"t": 1, "type": "shout"}]}, BadMotionRequest),
    ({"fps": 30, "frames": 10, "events": [{"t": float("inf"), "type": "barge_in"}]}, BadTimings),
    ({"fps": 30, "frames": 10, "speech": [{"t": 0, "phonemes": "hello"}]}, BadTimings),
    ({"fps": 30, "frames": 10, "speech": [{"t": 0, "phonemes": [{"p": "a", "s": 0.2}]}]}, BadTimings),
    ({"fps": 30, "frames": 10, "speech": [{"t": 0, "phonemes": [{"p": "a", "s": 0.2, "e": 0.1}]}]}, BadTimings),
    ({"fps": 30, "frames": 10, "speech": [{"t": 0, "phonemes": [{"p": "a", "s": -0.1, "e": 0.1}]}]}, BadTimings),
    (
        {"fps": 30, "frames": 10, "speech": [{"t": 0, "phonemes": [{"p": "a", "s": float("nan"), "e": 0.1}]}]},
        BadTimings,
    ),
    ({"fps": 30, "frames": 10, "speech": [{"t": 0, "phonemes": [{"p": "", "s": 0.0, "e": 0.1}]}]}, BadTimings),
    (
        {
            "fps": 30,
            "frames": 10,
            "speech": [{"t": 0, "phonemes": [{"p": "a", "s": 0.5, "e": 0.6}, {"p": "b", "s": 0.1, "e": 0.2}]}],
        },
        BadTimings,
    ),
    ({"fps": 30, "frames": 10, "speech": [{"t": -2, "phonemes": []}]}, BadTimings),
    ({"fps": 30, "frames": 10, "speaking_cut": "soon"}, BadTimings),
]


@pytest.mark.parametrize(("raw", "error"), BAD)
def test_bad_requests_raise_typed_errors(raw: dict[str, object], error: type[DuetError]) -> None:
    with pytest.raises(error) as err:
        MotionRequest.from_json(json.dumps(raw))
    assert isinstance(err.value, DuetError) and err.value.code


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"fps": NaN, "frames": 3}', b"\xff\xfe"])
def test_garbage_json(text: str) -> None:
    with pytest.raises(DuetError):
        MotionRequest.from_json(text)
