"""Generate the spoken-conversation benchmark set: perf/data/conversations/{dev,check}/NNN.{wav,json}.

Each WAV is what a user's microphone records during a call with the replica (a customer-service / intake
agent): 3–5 user turns with gaps the replica answers in, and in some files a backchannel ("mm-hm") or a cough
while the replica is presumably speaking, or an interruption ("sorry, actually ...") 2–3 s after the user's
previous turn.  The replica's own audio is NOT in the file: the system under test produces it live
(perf/bench_conversation.py scores it).

Runs in the generation-only environment `.venv-data` (see setup_data_tools.sh) and reuses the synthesis,
trimming, hold-pause and augmentation helpers of make_turns.py, so labels are exact in the same way: every
piece of sound is placed on the timeline by this script and its boundaries are written down as it is placed.

    .venv-data/bin/python perf/data/make_conversations.py            # rewrites every set below
    .venv-data/bin/python perf/data/make_conversations.py --set asr  # writes only conversations/asr-{dev,check}/
    .venv-data/bin/python perf/data/make_conversations.py --root DIR # write elsewhere (to compare bytes)

Two sets: `dev`/`check` (the conversation benchmark's calls) and `asr-dev`/`asr-check` (the transcript
benchmark's, perf/bench_asr.py: four persona scenarios with fillers and numbers, every scripted turn in each
call, and the replica's scripted reply before each user turn in the labels as `reply_before`).
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
# A persona with a greeting speaks first: the user waits for it. The replica's voice (piper joe) says 17-20
# characters a second (measured on the four greetings: 3.8-7.4 s); 16 a second, + 0.3 s for the TTS to start,
# leaves it room to finish.
GREETING_CHARS_PER_S = 16.0
GREETING_START_S = 0.3
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
    """A call: user turns in order ("|" = hold point, as in make_turns) and one interruption line for it.

    The transcript set's scenarios also name the persona the call is made with and script the replica: its
    greeting, its answer after each user turn and after the interruption. The labels carry the reply each user
    turn follows (`reply_before`): what the replica would have said, for the recogniser's prompt variants.
    """

    name: str
    turns: tuple[str, ...]
    interruption: str
    persona: str = ""
    greeting: str = ""
    replies: tuple[str, ...] = ()  # the replica's answer after each user turn
    interruption_reply: str = ""


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
        replies=(
            "I'm sorry about that. Which dates were you charged on?",
            "I see two charges on your account. Let me look into them for you.",
            "Yes, I can refund the second charge for you.",
            "The refund should reach your account in three to five business days.",
            "You're welcome, have a great day.",
        ),
        interruption_reply="No problem, the sixth and the seventh then.",
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
        replies=(
            "Sure, I can help you book with Doctor Patel. What day works for you?",
            "Next Tuesday we have ten thirty or eleven fifteen in the morning.",
            "Great, you're booked for ten thirty next Tuesday.",
            "Yes, please bring your insurance card and a photo ID.",
            "See you then, take care.",
        ),
        interruption_reply="Okay, next Thursday then. Let me check what's open.",
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
        replies=(
            "Of course. What is your new address?",
            "Thank you. And what is the zip code?",
            "Got it, I've updated your address on file.",
            "Yes, your next statement will go to the new address.",
            "You're welcome, have a nice day.",
        ),
        interruption_reply="Thanks, I've changed it to apartment 3 C.",
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
        replies=(
            "I'm doing well, thanks for asking. How has your week been?",
            "I'm glad you're hanging in there. Is there anything I can help with?",
            "Try keeping a regular bedtime and putting screens away an hour before sleep.",
            "I hope it helps. Let me know how it goes.",
            "It was nice talking to you too. Take care.",
        ),
        interruption_reply="Coffee late in the day can make it harder to fall asleep.",
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
        replies=(
            "I'm sorry to hear that. Have you tried resetting your password?",
            "Let me check that for you. What email is on the account?",
            "Thanks, I see the account. Sometimes the email lands in the spam folder.",
            "I've sent a new reset link just now.",
            "Great, I'm glad it worked.",
        ),
        interruption_reply="Sure, what is your work email address?",
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
        replies=(
            "Happy to help with that. What do you pay right now?",
            "Thanks. The faster plan is seventy dollars a month.",
            "It's seventy dollars a month, with twice the speed.",
            "There's no contract, you can cancel anytime.",
            "Great, I've upgraded your plan starting today.",
        ),
        interruption_reply="Yes, the router is included in the price.",
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
        replies=(
            "I can help with that. What is the name of the medication?",
            "Thank you. Which pharmacy should we send it to?",
            "Sure, I'll send it to the pharmacy on Fifth Avenue.",
            "It should be ready for pickup tomorrow afternoon.",
            "You too, take care.",
        ),
        interruption_reply="No problem, I'll send it to the Elm Street pharmacy instead.",
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
        replies=(
            "I'm sorry about the delay. Could I have your order number?",
            "Thank you, let me look that up.",
            "The package is at the local depot and should arrive tomorrow.",
            "Yes, I've refunded the shipping fee.",
            "You're welcome, have a good day.",
        ),
        interruption_reply="That's okay, what is the right order number?",
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
        replies=(
            "I'm sorry to see you go. May I ask why you're cancelling?",
            "I understand. I can cancel it from the end of this month.",
            "There's no fee if you give thirty days notice.",
            "Yes, I'll email you a confirmation today.",
            "Bye, and good luck with the move.",
        ),
        interruption_reply="Yes, you can pause it for up to three months.",
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
        replies=(
            "Not much, just helping people all day. How about you?",
            "That sounds lovely. How was the weather up there?",
            "I haven't, but I hear the fall colors are beautiful.",
            "I'm glad you had a great time.",
            "Okay, it was nice chatting with you.",
        ),
        interruption_reply="Of course, what did you want to ask?",
    ),
]


# The transcript benchmark's calls (perf/bench_asr.py): the four personas of personas/, every turn with a
# filler ("um", "uh", "you know") or a number (dates of birth, account and member numbers, amounts, times).
# Written as the voices should say them ("Doctor Patel", digits spaced); the scorer's normaliser makes
# "Dr." and "doctor", "1986" and "nineteen eighty six" the same words.
ASR_DEV_SCENARIOS = [
    Scenario(
        "clinic-intake",
        (
            "Hi, um, I'm seeing Doctor Patel today, | for a sore knee.",
            "My date of birth is, | July the ninth, 1986.",
            "I have Blue Cross, uh, | the member ID is 4 0 7, | 2 2 1 8.",
            "Do I need to bring my insurance card, | up to the front desk?",
            "Okay, you know, | that's everything, thanks.",
        ),
        "Sorry, actually, my birthday is the nineteenth, not the ninth.",
        persona="clinic_intake",
        greeting="Hi, this is Maya from Riverside Family Clinic. I'll help you check in for your visit with "
        "Dr. Patel. What brings you in today?",
        replies=(
            "I'm sorry to hear about your knee. Could I have your date of birth, please?",
            "Thank you. Which insurance provider do you have?",
            "Got it, Blue Cross. Your copay for this visit is twenty five dollars.",
            "Yes, please show your card at the front desk when you arrive.",
            "You're all set. Dr. Patel will see you shortly.",
        ),
        interruption_reply="No problem, I've changed it to July nineteenth.",
    ),
    Scenario(
        "billing-dispute",
        (
            "Hi, I'd like to, um, | dispute a late fee on my bill.",
            "My account number is 5 5 8, | 0 3 1 2.",
            "The late fee was, | thirty five dollars, | but I paid on time.",
            "I paid on the, uh, | twelfth of October, with autopay.",
            "Great, so when will I see the refund?",
        ),
        "Wait, the account number ends in 3 1 4, not 3 1 2.",
        persona="billing",
        greeting="Hi, you've reached Sam in Northwind Energy billing. How can I help with your bill today?",
        replies=(
            "I can help with that. Can I have your account number, please?",
            "Thanks. I see a late fee on your last statement. What happened?",
            "I understand. When did you make the payment?",
            "I see the autopay on October twelfth, so I'll open a dispute and waive the fee.",
            "Refunds take five to seven business days.",
        ),
        interruption_reply="Thanks, I've corrected it to the account ending in 3 1 4.",
    ),
    Scenario(
        "coaching-sleep",
        (
            "I want to, you know, | get more sleep this week.",
            "Most nights I go to bed at, um, | twelve thirty.",
            "My goal is to be in bed by eleven, | five nights a week.",
            "I could, uh, | put my phone away at ten forty five.",
            "Sounds good, let's check in on Friday.",
        ),
        "Actually, make that four nights, weekends are hard.",
        persona="coach",
        greeting="Hey, it's Jordan. Good to see you. What would you like to work on this week?",
        replies=(
            "Sleep is a great goal. What time do you usually go to bed now?",
            "Got it. What would be a realistic bedtime goal?",
            "Eleven, five nights a week. What usually keeps you up?",
            "That's a clear first step: the phone goes away at ten forty five.",
            "Great, I'll check in with you on Friday.",
        ),
        interruption_reply="Four nights it is, that's still a solid goal.",
    ),
    Scenario(
        "onboarding-workspace",
        (
            "Yes, um, | I just created a workspace called Blue Harbor.",
            "We have, uh, | fourteen people on the team.",
            "I'd like to connect our Outlook calendar, | you know, the shared one.",
            "The admin email is, | sam dot lee at blueharbor dot com.",
            "Perfect, I'll invite the rest of the team now.",
        ),
        "Sorry, actually, we're sixteen people, not fourteen.",
        persona="onboarding",
        greeting="Hi, I'm Riley from Tandem. Welcome aboard! Shall we set up your workspace together?",
        replies=(
            "Great name! How many people will use Tandem?",
            "Fourteen, great. Would you like to connect a Google or Outlook calendar?",
            "Sure. Which email should be the workspace admin?",
            "Thanks. I've sent a confirmation to that address.",
            "Wonderful. Your invites will go out by email.",
        ),
        interruption_reply="Sixteen people, got it, that's no problem.",
    ),
]
ASR_CHECK_SCENARIOS = [
    Scenario(
        "clinic-intake",
        (
            "Good afternoon, I'm here to see, um, | Doctor Patel about my allergies.",
            "I was born on, | February the twenty fourth, 1979.",
            "My insurance is Aetna, | and the policy number is 9 1 3, | 6 0 5.",
            "Is the copay still, uh, | twenty dollars?",
            "Alright, you know, | I'll wait in the lobby.",
        ),
        "Wait, I switched to Blue Cross in January.",
        persona="clinic_intake",
        greeting="Hi, this is Maya from Riverside Family Clinic. I'll help you check in for your visit with "
        "Dr. Patel. What brings you in today?",
        replies=(
            "Sorry to hear about your allergies. What is your date of birth?",
            "Thank you. And who is your insurance provider?",
            "Thanks, I have Aetna on file now.",
            "The copay for this visit is twenty five dollars.",
            "Thank you, Dr. Patel will call you in soon.",
        ),
        interruption_reply="Thanks, I've updated your provider to Blue Cross.",
    ),
    Scenario(
        "billing-meter",
        (
            "Hello, uh, | I think my meter reading is wrong.",
            "The account is under 6 2 0, | 4 4 7 9.",
            "This month's bill is, um, | two hundred and ten dollars, | usually it's ninety.",
            "Can you, you know, | open a dispute for me?",
            "Thanks, I'll wait for the refund then.",
        ),
        "Sorry, actually, the bill is two hundred and twelve.",
        persona="billing",
        greeting="Hi, you've reached Sam in Northwind Energy billing. How can I help with your bill today?",
        replies=(
            "I can look into that. What's your account number?",
            "Thank you. What does your bill show this month?",
            "That's a big jump. It may be an estimated reading.",
            "Yes, I've opened a dispute. A technician will check the meter.",
            "If it's confirmed, the refund takes five to seven business days.",
        ),
        interruption_reply="Two hundred and twelve, thanks for the correction.",
    ),
    Scenario(
        "coaching-running",
        (
            "Hi Jordan, um, | I'd like to start running again.",
            "Last year I ran, | about fifteen miles a week.",
            "I could run on Tuesday, uh, | and Thursday mornings.",
            "My first step is a twenty minute jog, | at six fifteen.",
            "Okay, you know, | I feel good about this.",
        ),
        "Wait, Thursday won't work, I have meetings.",
        persona="coach",
        greeting="Hey, it's Jordan. Good to see you. What would you like to work on this week?",
        replies=(
            "Love that. How much were you running before?",
            "Nice. Which days could you run this week?",
            "Tuesday and Thursday. What's a small first step?",
            "A twenty minute jog at six fifteen sounds doable.",
            "Great, let's check in next week.",
        ),
        interruption_reply="No problem, which other day could work?",
    ),
    Scenario(
        "onboarding-invites",
        (
            "Hi Riley, um, | I'm setting up Tandem for my company.",
            "Our workspace should be called, | Green Valley Dental.",
            "I need to invite, uh, | eight teammates by email.",
            "Can we turn on reminders, | you know, thirty minutes before meetings?",
            "That worked, thank you so much.",
        ),
        "Sorry, actually, make that nine teammates.",
        persona="onboarding",
        greeting="Hi, I'm Riley from Tandem. Welcome aboard! Shall we set up your workspace together?",
        replies=(
            "Welcome! What would you like to call your workspace?",
            "Green Valley Dental, got it. Who should we invite?",
            "You can paste their emails on the invite screen.",
            "Yes, reminders can go out thirty minutes before each meeting.",
            "You're all set up. Enjoy Tandem!",
        ),
        interruption_reply="Nine teammates, sure, just add one more email.",
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


def make_plan(
    rng: random.Random, interrupt: bool, n_backchannels: int, n_coughs: int, n_turns: int | None = None
) -> Plan:
    # 3 "turn"s, or 4 for one file in five without an interruption; an interruption adds one more user turn.
    # (The transcript set takes every turn of its scenario: `n_turns`.)
    n = n_turns if n_turns is not None else (4 if (not interrupt and rng.random() < 0.2) else 3)
    after = rng.randrange(0, n - 1) if interrupt else None
    free = [k for k in range(n) if k != after]
    rng.shuffle(free)
    bc = sorted(free[:n_backchannels])
    co = sorted(free[n_backchannels : n_backchannels + n_coughs])
    return Plan(n, after, bc, co)


def texts_index(scenario: Scenario, plan: Plan, k: int) -> int:
    """The scenario line that a file's k-th user turn of kind "turn" says (the last is always the closing one)."""
    return len(scenario.turns) - 1 if k == plan.n_turns - 1 else k


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
    if scenario.greeting:  # the user answers the greeting: their first turn starts after it
        lead += len(scenario.greeting) / GREETING_CHARS_PER_S + GREETING_START_S
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
    if scenario.replies:  # the scripted reply each user turn follows (the greeting before the first)
        said, k = scenario.greeting, 0
        for d in label_turns:
            d["reply_before"] = said
            if d["kind"] == "turn":
                said, k = scenario.replies[texts_index(scenario, plan, k)], k + 1
            else:
                said = scenario.interruption_reply
    label = {
        "voice": voice.name,
        "scenario": scenario.name,
        **({"persona": scenario.persona} if scenario.persona else {}),
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
    *,
    root: Path = OUT,
    every_turn: bool = False,
    write: bool = True,
) -> list[dict[str, Any]]:
    """One split's files (`write=False`: made, not written). `every_turn` (the transcript set): each call says
    all its scenario's turns, and scenario k of file i is i mod len(scenarios), so each scenario is spoken by
    several voices."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    out_dir = root / name
    if write:
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
        scenario = scenarios[i % len(scenarios) if every_turn else (i + i // len(voices)) % len(scenarios)]
        n_bc = (2 if rng.random() < 0.25 else 1) if i in backch else 0
        n_turns = len(scenario.turns) if every_turn else None
        plan = make_plan(rng, i in interrupt, n_bc, 1 if i in coughs else 0, n_turns)
        item = compose(synth, voice, scenario, plan, rng, nrng)
        noise = rng.choice(("white", "pink", "babble")) if i in noisy else "none"
        snr = rng.uniform(25, 32) if noise == "babble" else rng.uniform(20, 30)
        augment(item, rng, nrng, babble, noise, snr, rng.uniform(-8, 4), False)
        stem = f"{i + 1:03d}"
        label = {"file": f"{name}/{stem}.wav", **item.label}
        if write:
            (out_dir / f"{stem}.wav").write_bytes(_wav_bytes(item.audio))
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
    ap.add_argument("--set", choices=("all", "conversation", "asr"), default="all", help="which sets are written")
    ap.add_argument("--dev", type=int, default=9)
    ap.add_argument("--check", type=int, default=6)
    ap.add_argument("--asr-dev", type=int, default=8)
    ap.add_argument("--asr-check", type=int, default=8)
    ap.add_argument("--root", type=Path, default=OUT, help="where the split folders go (default: conversations/)")
    args = ap.parse_args()
    synth = Synth()
    babble = make_babble(synth)
    # Every set is made, in this order, whichever are written: piper's seeded noise generator runs on from one
    # synthesis to the next, so a file's audio depends on everything synthesised before it in the run.
    pairs: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
    kw: dict[str, Any] = {"root": args.root, "write": args.set in ("all", "conversation")}
    dev = make_split("dev", args.dev, DEV_VOICES, DEV_SCENARIOS, synth, babble, seed=11, **kw)
    check = make_split("check", args.check, CHECK_VOICES, CHECK_SCENARIOS, synth, babble, seed=12, **kw)
    summarize("dev", dev)
    summarize("check", check)
    pairs.append((dev, check))
    kw = {"root": args.root, "write": args.set in ("all", "asr"), "every_turn": True}
    adev = make_split("asr-dev", args.asr_dev, DEV_VOICES, ASR_DEV_SCENARIOS, synth, babble, seed=21, **kw)
    acheck = make_split("asr-check", args.asr_check, CHECK_VOICES, ASR_CHECK_SCENARIOS, synth, babble, seed=22, **kw)
    summarize("asr-dev", adev)
    summarize("asr-check", acheck)
    pairs.append((adev, acheck))
    size = sum(p.stat().st_size for p in args.root.rglob("*.wav"))
    print(f"audio on disk: {size / 1e6:.1f} MB")
    # Held out: no sentence of a check split is said in any dev split.
    dev_text = {t["text"] for d, _ in pairs for lab in d for t in lab["turns"]}
    check_text = {t["text"] for _, c in pairs for lab in c for t in lab["turns"]}
    assert not dev_text & check_text, "check sentences must be held out"


if __name__ == "__main__":
    main()
