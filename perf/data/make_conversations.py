"""Generate the spoken-conversation benchmark set: perf/data/conversations/{dev,check}/NNN.{wav,json}.

Each WAV is what a user's microphone records during a call with the replica (a customer-service / intake
agent): 3–5 user turns with gaps the replica answers in, and in some files a backchannel ("mm-hm") or a cough
while the replica is presumably speaking, or an interruption ("sorry, actually ...") 2–3 s after the user's
previous turn.  The replica's own audio is NOT in the file: the system under test produces it live
(perf/bench_conversation.py scores it).

Runs in the generation-only environment `.venv-data` (see setup_data_tools.sh) and reuses the synthesis,
trimming, hold-pause and augmentation helpers of make_turns.py, so labels are exact in the same way: every
piece of sound is placed on the timeline by this script and its boundaries are written down as it is placed.

    .venv-data/bin/python perf/data/make_conversations.py            # rewrites conversations/{dev,check}/
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import butter, sosfilt

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make_turns.py sits next to this script

from make_turns import (
    CHECK_VOICES,
    DEV_VOICES,
    SR,
    Arr,
    Item,
    Synth,
    Voice,
    _read_wav_bytes,
    _wav_bytes,
    augment,
    build_turn,
    make_babble,
    sil,
    trim,
)

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "conversations"

# Timing rules (seconds).  The replica starts ~0.5–1.5 s after a user's end of turn and speaks 2–6 s, so a
# gap of 6–9 s leaves room for its whole answer before the user speaks again.
LEAD = (0.4, 1.0)
GAP = (6.0, 7.5)  # drawn; stretched up to GAP_MAX when a file would be shorter than 30 s
GAP_MAX = 9.0
EVENT_AFTER = (1.8, 3.0)  # backchannel / cough onset after the end of a user turn (replica mid-answer)
INTERRUPT_AFTER = (2.0, 3.0)  # interruption onset after the end of the previous user turn
HOLD = (0.3, 1.0)  # hold pauses inside a turn (shorter than the floor set's: a conversation, not a stress test)
BACKCHANNEL_LEN = (0.25, 0.6)
COUGH_LEN = (0.15, 0.30)
MIN_INTERRUPTION_S = 1.2
DURATION = (30.0, 60.0)
BACKCHANNELS = ("Mm-hm.", "Right.", "Okay.", "Uh-huh.", "Yeah.")


@dataclass(frozen=True)
class Scenario:
    """A call: user turns in order ("|" = hold point, as in make_turns) and one interruption line for it."""

    name: str
    turns: tuple[str, ...]
    interruption: str


DEV_SCENARIOS = [
    Scenario(
        "billing-double-charge",
        (
            "Hi, I'm calling about my bill, | I think I was charged twice.",
            "The charges are from the fifth, | and the sixth of this month.",
            "Can you refund one of them?",
            "How long will the refund take?",
            "Great, thanks for your help.",
        ),
        "Sorry, actually, it was the sixth and the seventh.",
    ),
    Scenario(
        "appointment-booking",
        (
            "Hello, I'd like to book an appointment with Doctor Patel.",
            "Is there anything available, um, | next Tuesday morning?",
            "Ten thirty works for me.",
            "Do I need to bring my insurance card?",
            "Okay, see you then.",
        ),
        "Wait, I meant next Thursday, not Tuesday.",
    ),
    Scenario(
        "address-change",
        (
            "I moved recently and, | I need to update my address.",
            "The new address is 42 Maple Street, | apartment 3 B.",
            "The zip code is 9 4, | 1 1 0.",
            "Will my next statement go to the new address?",
            "Thank you, that's all I needed.",
        ),
        "Sorry, actually, it's apartment 3 C, not 3 B.",
    ),
    Scenario(
        "small-talk-sleep",
        (
            "Hi there, how are you doing today?",
            "It's been a long week, | but I'm hanging in there.",
            "Do you have any tips for, uh, | sleeping better?",
            "I'll try that tonight.",
            "Thanks, it was nice talking to you.",
        ),
        "Wait, does that still work if I drink coffee late?",
    ),
    Scenario(
        "password-reset",
        (
            "I can't log into my account anymore.",
            "I tried resetting my password, | but the email never came.",
            "My email is jane dot smith at example dot com.",
            "Can you send the reset link again?",
            "It just arrived, thank you.",
        ),
        "Sorry, actually, please use my work email instead.",
    ),
    Scenario(
        "plan-upgrade",
        (
            "I'm thinking about upgrading my internet plan.",
            "Right now I pay, | fifty five dollars a month.",
            "What would the faster plan cost?",
            "Is there a contract, | or can I cancel anytime?",
            "Okay, let's go ahead with the upgrade.",
        ),
        "Wait, does that price include the router?",
    ),
]
CHECK_SCENARIOS = [
    Scenario(
        "prescription-refill",
        (
            "Good morning, I need to refill my blood pressure medication.",
            "It's lisinopril, | ten milligrams.",
            "Can you send it to the pharmacy on Fifth Avenue?",
            "When will it be ready for pickup?",
            "Perfect, have a good day.",
        ),
        "Sorry, actually, the one on Elm Street is closer.",
    ),
    Scenario(
        "late-delivery",
        (
            "My order still hasn't arrived, | and it's been two weeks.",
            "The order number is 7 7 3, | 5 0 1.",
            "Could you check where the package is?",
            "Can I get the shipping fee back?",
            "Alright, I appreciate it.",
        ),
        "Wait, I think I gave you the wrong order number.",
    ),
    Scenario(
        "cancel-membership",
        (
            "I'd like to cancel my gym membership, please.",
            "I'm moving to, um, | another city next month.",
            "Is there a cancellation fee?",
            "Could you email me a confirmation?",
            "Thanks, bye for now.",
        ),
        "Sorry, actually, can I just pause it instead?",
    ),
    Scenario(
        "small-talk-hiking",
        (
            "Hey, what's new with you?",
            "I went hiking on Saturday, | up near the lake.",
            "Have you ever been, | to the mountains in the fall?",
            "The colors were amazing this year.",
            "Anyway, I should get going.",
        ),
        "Oh wait, I forgot to ask you something important.",
    ),
]


@dataclass
class Plan:
    """What one file holds, decided before any audio is placed."""

    n_turns: int  # user turns of kind "turn"
    interrupt_after: int | None  # index of the "turn" the interruption follows (never the last)
    backchannel_after: list[int]  # indices of "turn"s whose gap gets a backchannel
    cough_after: list[int]


def _retime(x: Arr, target_s: float) -> Arr:
    """Time-stretch without changing pitch (sox tempo); the result is trimmed again."""
    factor = len(x) / SR / target_s
    data = subprocess.run(
        ["sox", "-R", "-t", "wav", "-", "-t", "wav", "-", "tempo", "-s", f"{factor:.4f}"],
        input=_wav_bytes(x),
        check=True,
        capture_output=True,
    ).stdout
    return trim(_read_wav_bytes(data))


def backchannel(synth: Synth, voice: Voice, rng: random.Random) -> tuple[str, Arr]:
    """A short acknowledgement 0.25–0.6 s long; long renditions ("mm-hm" is ~0.9 s in some voices) are sped up."""
    for text in rng.sample(BACKCHANNELS, len(BACKCHANNELS)):
        x = trim(synth(voice, text))
        if len(x) > BACKCHANNEL_LEN[1] * SR:
            x = _retime(x, rng.uniform(0.42, 0.55))
        if BACKCHANNEL_LEN[0] * SR <= len(x) <= BACKCHANNEL_LEN[1] * SR:
            return text.rstrip("."), x
    raise RuntimeError(f"{voice.name}: no backchannel within {BACKCHANNEL_LEN} s")


def cough(nrng: np.random.Generator, seconds: float) -> Arr:
    """A cough-like burst: band-passed noise with a fast attack and an exponential decay."""
    n = round(seconds * SR)
    sos = butter(4, [300.0, 3500.0], btype="bandpass", fs=SR, output="sos")
    x = np.asarray(sosfilt(sos, nrng.standard_normal(n + 800)), dtype=np.float32)[800:]  # skip filter warm-up
    t = np.arange(n) / SR
    env = np.minimum(t / 0.012, 1.0) * np.exp(-t / (seconds / 3.5))
    return np.asarray(x * env / (np.sqrt(np.mean((x * env) ** 2)) + 1e-9), dtype=np.float32)


def make_plan(rng: random.Random, interrupt: bool, n_backchannels: int, n_coughs: int) -> Plan:
    # 3 "turn"s, or 4 for one file in five without an interruption; an interruption adds one more user turn.
    n = 4 if (not interrupt and rng.random() < 0.2) else 3
    after = rng.randrange(0, n - 1) if interrupt else None
    free = [k for k in range(n) if k != after]
    rng.shuffle(free)
    bc = sorted(free[:n_backchannels])
    co = sorted(free[n_backchannels : n_backchannels + n_coughs])
    return Plan(n, after, bc, co)


def compose(
    synth: Synth, voice: Voice, scenario: Scenario, plan: Plan, rng: random.Random, nrng: np.random.Generator
) -> Item:
    """Place turns, gaps, interruption, backchannels and coughs; return clean audio and exact labels."""
    texts = [*scenario.turns[: plan.n_turns - 1], scenario.turns[-1]]  # always end with the closing line
    turns = [build_turn(synth, voice, t, "conversation") for t in texts]
    intr = build_turn(synth, voice, scenario.interruption, "interruption")
    if sum(len(p) for p in intr.pieces) < MIN_INTERRUPTION_S * SR:
        raise RuntimeError(f"{voice.name}: interruption shorter than {MIN_INTERRUPTION_S} s: {scenario.interruption}")
    speech_rms = float(np.sqrt(np.mean(np.concatenate([p for t in turns for p in t.pieces]) ** 2)))
    # Gaps are drawn first, then stretched evenly (each ≤ 9 s) if the file would be shorter than 30 s.
    sequence = [(t, "turn") for t in turns]
    if plan.interrupt_after is not None:
        sequence.insert(plan.interrupt_after + 1, (intr, "interruption"))
    gaps = [rng.uniform(*GAP) for _ in sequence]
    lead = rng.uniform(*LEAD)
    speech_s = sum(sum(len(p) for p in t.pieces) / SR for t, _ in sequence)
    holds = [[rng.uniform(*HOLD) for _ in t.pieces[1:]] for t, _ in sequence]
    intr_gap = rng.uniform(*INTERRUPT_AFTER)
    if plan.interrupt_after is not None:
        gaps[plan.interrupt_after] = intr_gap
    fixed = lead + speech_s + sum(sum(h) for h in holds)
    stretchable = [k for k in range(len(sequence)) if k != plan.interrupt_after]
    short = DURATION[0] - (fixed + sum(gaps))
    if short > 0:
        room = sum(GAP_MAX - gaps[k] for k in stretchable)
        if room < short:
            raise RuntimeError(f"cannot reach {DURATION[0]} s with {len(sequence)} user turns")
        for k in stretchable:
            gaps[k] += short * (GAP_MAX - gaps[k]) / room

    chunks: list[Arr] = [sil(lead)]
    pos = len(chunks[0])
    events: list[tuple[int, Arr]] = []  # (sample position, audio) mixed in after placement
    label_turns: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    hold_labels: list[dict[str, Any]] = []
    backchannels: list[dict[str, Any]] = []
    coughs: list[dict[str, Any]] = []
    turn_index = -1
    for k, (ta, kind) in enumerate(sequence):
        start = pos
        for pi, piece in enumerate(ta.pieces):
            segments.append({"start": pos / SR, "end": (pos + len(piece)) / SR, "text": ta.texts[pi]})
            chunks.append(piece)
            pos += len(piece)
            if pi < len(ta.pieces) - 1:
                chunks.append(sil(holds[k][pi]))
                hold_labels.append({"start": pos / SR, "end": (pos + len(chunks[-1])) / SR})
                pos += len(chunks[-1])
        label_turns.append({"start": start / SR, "end": pos / SR, "text": " ".join(ta.texts), "kind": kind})
        end = pos
        gap = sil(gaps[k])
        chunks.append(gap)
        pos += len(gap)
        if kind != "turn":
            continue
        turn_index += 1
        at = end + round(rng.uniform(*EVENT_AFTER) * SR)
        if turn_index in plan.backchannel_after:
            text, x = backchannel(synth, voice, rng)
            events.append((at, x * rng.uniform(0.55, 1.0)))  # acknowledgements are often softer than turns
            backchannels.append({"start": at / SR, "end": (at + len(x)) / SR, "text": text})
        if turn_index in plan.cough_after:
            x = cough(nrng, rng.uniform(*COUGH_LEN))
            events.append((at, x * speech_rms * rng.uniform(1.0, 2.0)))  # a cough is louder than speech
            coughs.append({"start": at / SR, "end": (at + len(x)) / SR})
    audio = np.concatenate(chunks)
    for at, x in events:
        if not np.all(audio[at : at + len(x)] == 0.0):
            raise RuntimeError("event overlaps user speech")
        audio[at : at + len(x)] += x
    for d in (*label_turns, *segments, *hold_labels, *backchannels, *coughs):
        d["start"], d["end"] = round(d["start"], 4), round(d["end"], 4)
    label = {
        "voice": voice.name,
        "scenario": scenario.name,
        "duration": round(len(audio) / SR, 4),
        "turns": label_turns,
        "backchannels": backchannels,
        "coughs": coughs,
        "segments": segments,  # stretches of user speech (turn pieces around hold pauses); augment() reads them
        "holds": hold_labels,
    }
    return Item(audio.astype(np.float32), label)


def make_split(
    name: str,
    n_items: int,
    voices: list[Voice],
    scenarios: list[Scenario],
    synth: Synth,
    babble: Arr,
    seed: int,
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    out_dir = OUT / name
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in (*out_dir.glob("*.wav"), *out_dir.glob("*.json")):
        old.unlink()
    # Spread the phenomena over the files instead of leaving them to chance: ~50 % interruptions, ~50 %
    # backchannels (one in four of those files with two), ~30 % coughs, ~50 % with light noise.
    idx = list(range(n_items))
    interrupt = set(rng.sample(idx, round(0.5 * n_items)))
    backch = set(rng.sample(idx, round(0.5 * n_items)))
    coughs = set(rng.sample(idx, round(0.3 * n_items)))
    noisy = set(rng.sample(idx, round(0.5 * n_items)))
    labels = []
    for i in idx:
        voice = voices[i % len(voices)]
        scenario = scenarios[(i + i // len(voices)) % len(scenarios)]
        n_bc = (2 if rng.random() < 0.25 else 1) if i in backch else 0
        plan = make_plan(rng, i in interrupt, n_bc, 1 if i in coughs else 0)
        item = compose(synth, voice, scenario, plan, rng, nrng)
        noise = rng.choice(("white", "pink", "babble")) if i in noisy else "none"
        snr = rng.uniform(25, 32) if noise == "babble" else rng.uniform(20, 30)
        augment(item, rng, nrng, babble, noise, snr, rng.uniform(-8, 4), False)
        stem = f"{i + 1:03d}"
        (out_dir / f"{stem}.wav").write_bytes(_wav_bytes(item.audio))
        label = {"file": f"{name}/{stem}.wav", **item.label}
        (out_dir / f"{stem}.json").write_text(json.dumps(label, indent=1) + "\n")
        labels.append(label)
    return labels


def summarize(name: str, labels: list[dict[str, Any]]) -> None:
    turns = [t for lab in labels for t in lab["turns"]]
    kinds = Counter(t["kind"] for t in turns)
    bcs = [b for lab in labels for b in lab["backchannels"]]
    dur = [lab["duration"] for lab in labels]
    with_intr = sum(1 for lab in labels if any(t["kind"] == "interruption" for t in lab["turns"]))
    holds = sum(len(lab["holds"]) for lab in labels)
    print(
        f"{name}: {len(labels)} files, {sum(dur):.0f} s ({min(dur):.1f}-{max(dur):.1f} s), "
        f"turns {kinds['turn']}, interruptions {kinds['interruption']} (in {with_intr} files), "
        f"hold pauses {holds}, backchannels {len(bcs)} {dict(Counter(b['text'] for b in bcs))}, "
        f"coughs {sum(len(lab['coughs']) for lab in labels)}"
    )
    print("  voices:", dict(Counter(lab["voice"] for lab in labels)))
    print("  scenarios:", dict(Counter(lab["scenario"] for lab in labels)))
    print("  noise:", dict(Counter(lab["noise"].split("@")[0] for lab in labels)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", type=int, default=9)
    ap.add_argument("--check", type=int, default=6)
    args = ap.parse_args()
    synth = Synth()
    babble = make_babble(synth)
    dev = make_split("dev", args.dev, DEV_VOICES, DEV_SCENARIOS, synth, babble, seed=11)
    check = make_split("check", args.check, CHECK_VOICES, CHECK_SCENARIOS, synth, babble, seed=12)
    summarize("dev", dev)
    summarize("check", check)
    size = sum(p.stat().st_size for p in OUT.rglob("*.wav"))
    print(f"audio on disk: {size / 1e6:.1f} MB")
    dev_text = {t["text"] for lab in dev for t in lab["turns"]}
    assert not dev_text & {t["text"] for lab in check for t in lab["turns"]}, "check sentences must be held out"


if __name__ == "__main__":
    main()
