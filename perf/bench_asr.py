"""Transcript benchmark: word error rate of the user's turns on multi-turn calls, and the two ways a transcript
went wrong in issue 12 (a sentence said once and transcribed twice; the replica's words at the start of a user
turn).

    .venv/bin/python perf/bench_asr.py --view offline --split check                 # (a) recogniser alone
    .venv/bin/python perf/bench_asr.py --view offline --split dev --variants none,vocab --threads 1
    .venv/bin/python perf/bench_asr.py --view stream --split dev --variants vocab   # (a2) through the gate
    .venv/bin/python perf/bench_asr.py --view e2e --split check                     # (b) duet talk + duet serve
    .venv/bin/python perf/bench_asr.py --view e2e --split check --reuse --runs DIR  # score earlier runs

Data: perf/data/conversations/{dev,asr-dev} (split `dev`, for tuning) and {check,asr-check} (split `check`,
held out: other voices, other sentences); `--sets conversation|asr` picks one of the two sets. Labels hold each
user turn's exact span and text and the scripted replica reply before it (`reply_before`); the asr set also
names the persona of the call (perf/data/README.md).

Views:
(a) **offline**: the recogniser of the `asr` model (orchestrator.inference.asr.WhisperRecognizer, the same
    code and decode options as model_repository/asr) in this process, on each labelled turn's audio exactly as
    a session sends its final decode: from `TURN_PAD_S` (0.25 s) before the turn's first speech to
    `FINAL_PAD_S` (0 s since 2026-12-06) after its last (orchestrator/speech/gate.py), hold pauses included. One row per
    prompt variant (`VARIANTS`); `ms/turn` is the wall time of that decode (word timings included, as for a
    final) with `--threads` CTranslate2 threads. Turns run in call order, so the variants that use the user's
    earlier words use the recogniser's own earlier transcripts, as a session would.
(a2) **stream**: the same turns through the session's own transcription gate (speech/gate.py,
    speech/transcript.py): speech edges from the labels, partials when the gate asks for them, each decode's
    result applied when it would finish. The session's transcription path without the floor's decisions.
(b) **e2e**: `duet talk` on each call at real time against one `duet serve` (started here, or `--server`), with
    the call's persona (`--persona`, the default persona for the conversation set). Each labelled user turn
    is matched to the `user_turn` events committed between its start and the next labelled turn's start
    (their texts joined; none = every word deleted) and scored; the final `transcript` events in that window
    are checked for duplicates too. The replica's previous words are its `replica_turn` texts committed
    before the user turn was.

Scoring (pure functions below, unit-tested in tests/unit/test_bench_asr.py):
* **WER** = (substitutions + deletions + insertions) / reference words, summed over turns, after `normalise`
  of both texts. Two figures: with fillers (a reference "um" that Whisper leaves out is a deletion) and
  without (hesitations `FILLERS` removed from both sides; "you know" stays, it is words).
* **duplicate**: a run of >= 3 words said twice in a row in a transcript, where the reference has no such
  repeat (a turn counts once).
* **leak**: words of the replica's earlier reply in a user turn that the user did not say: the transcript's
  unmatched words before its first word that matches the reference (>= 2 of them forming a run of the reply),
  or any run of >= 3 unmatched words found in the reply.
* **hallucinated runs**: runs of >= 3 inserted words (words with nothing under them in the reference).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "perf" / "data" / "conversations"
SETS = {"conversation": ("dev", "check"), "asr": ("asr-dev", "asr-check")}
SR = 16000

# ------------------------------------------------------------------------------------------- the normaliser
# Why each rule (docs/transcripts.md): the reference is the text the voice was given, the hypothesis is what
# Whisper writes; they differ in ways no listener would call an error. Case and punctuation; "Dr." for
# "doctor"; "it's" for "it is"; "1986" for "nineteen eighty six", "$35" for "thirty five dollars", "10:30" for
# "ten thirty", "9th" for "ninth"; "e-mail" for "email". Numbers end as single digits ("447" and "four four
# seven" and "four hundred forty seven" are all "4 4 7"), so how a recogniser groups digits never counts,
# while a wrong digit costs one word. Hesitations ("um", "uh") are counted or removed (both are reported).

FILLERS = frozenset({"um", "umm", "uh", "uhm", "uhh", "er", "erm", "ah", "hmm", "hm", "mm"})
_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
}  # fmt: skip
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
    "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19, "twentieth": 20,
    "thirtieth": 30, "fortieth": 40, "fiftieth": 50, "sixtieth": 60, "seventieth": 70, "eightieth": 80,
    "ninetieth": 90,
}  # fmt: skip
_CONTRACTIONS = {
    "it's": "it is", "that's": "that is", "what's": "what is", "there's": "there is", "here's": "here is",
    "he's": "he is", "she's": "she is", "who's": "who is", "where's": "where is", "how's": "how is",
    "let's": "let us", "i'm": "i am", "can't": "can not", "won't": "will not", "cannot": "can not",
    "shan't": "shall not", "ain't": "is not",
}  # fmt: skip
_SUFFIXES = (("n't", " not"), ("'re", " are"), ("'ve", " have"), ("'ll", " will"), ("'d", " would"))
_WORDS = {
    "dr": "doctor", "mr": "mister", "mrs": "missus", "ok": "okay", "alright": "all right", "e mail": "email",
    "mg": "milligrams",
}  # fmt: skip


def _number_words(tokens: list[str]) -> list[str]:
    """Runs of number words as digit strings: "nineteen eighty six" -> "19 86", "two hundred and ten" -> "210",
    "four oh seven" -> "4 0 7", "twenty fourth" -> "24". Two numbers said in a row stay two numbers."""
    out: list[str] = []
    total = group = 0
    last = ""  # kind of the previous number word; "" = not in a number

    def flush() -> None:
        nonlocal total, group, last
        if last:
            out.append(str(total + group))
        total = group = 0
        last = ""

    def is_num(k: int) -> bool:
        return k < len(tokens) and (tokens[k] in _UNITS or tokens[k] in _TEENS or tokens[k] in _TENS)

    for k, t in enumerate(tokens):
        if t == "oh" and last in ("unit", "teen", "tens") and is_num(k + 1):
            t = "zero"  # noqa: PLW2901 ("four oh seven")
        if t in _UNITS or (t in _ORDINALS and _ORDINALS[t] < 10):
            v = _UNITS.get(t, _ORDINALS.get(t, 0))
            if last in ("tens", "hundred", "thousand") and group % 10 == 0:
                group += v
            else:
                flush()
                group = v
            last = "unit"
        elif t in _TEENS or t in _TENS or t in _ORDINALS:
            v = _TEENS.get(t, _TENS.get(t, _ORDINALS.get(t, 0)))
            if last in ("hundred", "thousand") and group % 100 == 0:
                group += v
            else:
                flush()
                group = v
            last = "tens" if v % 10 == 0 and v >= 20 else "teen"
        elif t == "hundred":
            if last in ("unit", "teen", "tens") and 0 < group < 100:
                group *= 100
            else:
                flush()
                if out and out[-1] == "a":
                    out.pop()
                group = 100
            last = "hundred"
        elif t == "thousand":
            if last and total == 0:
                total, group = (group or 1) * 1000, 0
            else:
                flush()
                if out and out[-1] == "a":
                    out.pop()
                total = 1000
            last = "thousand"
        elif t == "and" and last in ("hundred", "thousand") and is_num(k + 1):
            continue
        else:
            flush()
            out.append(t)
            continue
        if t in _ORDINALS:
            flush()  # an ordinal ends its number ("the twenty fourth 1979")
    flush()
    return out


def normalise(text: str, *, fillers: bool = True) -> list[str]:
    """Words to compare: lower case, no punctuation, contractions and abbreviations expanded, numbers as single
    digits; `fillers=False` drops hesitations (`FILLERS`)."""
    s = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    s = re.sub(r"\b([ap])\.m\.", r"\1m", s)
    s = re.sub(
        r"\$(\d[\d,]*)(?:\.(\d\d))?",
        lambda m: f"{m[1]} dollars" + (f" {m[2]} cents" if m[2] and m[2] != "00" else ""),
        s,
    )
    s = s.replace("%", " percent").replace("&", " and ").replace("@", " at ")
    s = re.sub(r"(?<=[a-z])\.(?=[a-z])", " dot ", s)  # sam.lee@x.com
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # 1,985
    s = re.sub(r"(?<=\d)\.(?=\d)", " point ", s)
    s = re.sub(r"(?<=\d):(?=\d)", " ", s)  # 10:30
    s = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", r"\1", s)
    s = re.sub(r"(?<=\d)(?=[a-z])|(?<=[a-z])(?=\d)", " ", s)  # "3b" is "3 b"
    s = re.sub(r"[-/]", " ", s)
    words: list[str] = []
    for raw in s.split():
        w = raw.strip(".,!?;:\"()[]{}*'")
        if w in _CONTRACTIONS:
            words += _CONTRACTIONS[w].split()
            continue
        for suffix, full in _SUFFIXES:
            if w.endswith(suffix) and len(w) > len(suffix):
                w = w[: -len(suffix)] + full
                break
        words += re.sub(r"[^a-z0-9 ]", "", w.replace("'", "")).split()
    joined = " ".join(words)
    for a, b in _WORDS.items():
        joined = re.sub(rf"\b{a}\b", b, joined)
    tokens = _number_words(joined.split())
    for k in range(len(tokens) - 2):  # "200 and 12" (how Whisper writes "two hundred and twelve") is 212
        a, b, c = tokens[k : k + 3]
        if a.isdigit() and a.endswith("00") and b == "and" and c.isdigit() and len(c) <= 2:
            tokens[k : k + 3] = [str(int(a) + int(c)), "", ""]
    out: list[str] = []
    for w in (t for t in tokens if t):
        out += list(w) if w.isdigit() else [w]
    return out if fillers else [w for w in out if w not in FILLERS]


# ------------------------------------------------------------------------------------------- alignment
@dataclass(frozen=True)
class Errors:
    sub: int = 0
    dele: int = 0
    ins: int = 0
    ref: int = 0  # reference words

    @property
    def wer(self) -> float:
        return (self.sub + self.dele + self.ins) / self.ref if self.ref else math.nan

    def __add__(self, o: Errors) -> Errors:
        return Errors(self.sub + o.sub, self.dele + o.dele, self.ins + o.ins, self.ref + o.ref)


def align(ref: Sequence[str], hyp: Sequence[str]) -> list[tuple[str, int, int]]:
    """Levenshtein alignment: ("ok" | "sub" | "del" | "ins", ref index, hyp index) in order (-1 where none).

    Fewest edits first; among alignments with as few edits, the one with the most matched words (so a
    transcript's words are not called substitutions when an equally short path matches them)."""
    n, m = len(ref), len(hyp)
    big = n + m + 1  # one edit outweighs any number of matches
    d = np.zeros((n + 1, m + 1), dtype=np.int64)
    d[:, 0] = np.arange(n + 1) * big
    d[0, :] = np.arange(m + 1) * big

    def diag(i: int, j: int) -> int:
        return int(d[i - 1, j - 1]) + (-1 if ref[i - 1] == hyp[j - 1] else big)

    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(diag(i, j), d[i - 1, j] + big, d[i, j - 1] + big)
    ops: list[tuple[str, int, int]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i, j] == diag(i, j):
            ops.append(("ok" if ref[i - 1] == hyp[j - 1] else "sub", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif j > 0 and d[i, j] == d[i, j - 1] + big:
            ops.append(("ins", -1, j - 1))
            j -= 1
        else:
            ops.append(("del", i - 1, -1))
            i -= 1
    return ops[::-1]


def errors(ref: Sequence[str], hyp: Sequence[str]) -> Errors:
    ops = align(ref, hyp)
    return Errors(
        sum(o == "sub" for o, _, _ in ops),
        sum(o == "del" for o, _, _ in ops),
        sum(o == "ins" for o, _, _ in ops),
        len(ref),
    )


def _has_run(words: Sequence[str], run: Sequence[str]) -> bool:
    n = len(run)
    return n > 0 and any(list(words[i : i + n]) == list(run) for i in range(len(words) - n + 1))


def duplicated(hyp_text: str, ref_text: str, min_words: int = 3) -> bool:
    """A run of >= `min_words` words said twice in a row in the transcript that the reference does not repeat
    (the second copy may be cut short by the transcript's end, by >= `min_words` words)."""
    hyp, ref = normalise(hyp_text, fillers=False), normalise(ref_text, fillers=False)
    for size in range(min_words, len(hyp)):
        for i in range(len(hyp) - size - min_words + 1):
            again = hyp[i + size : i + 2 * size]
            whole = len(again) == size
            cut = i + size + len(again) == len(hyp)
            if (
                (whole or cut)
                and again == hyp[i : i + len(again)]
                and not _has_run(ref, hyp[i : i + size + len(again)])
            ):
                return True
    return False


def leaked(hyp_text: str, ref_text: str, replica_texts: Iterable[str]) -> list[str]:
    """The transcript's words that come from the replica's earlier words and that the user did not say."""
    hyp, ref = normalise(hyp_text, fillers=False), normalise(ref_text, fillers=False)
    sources = [normalise(t, fillers=False) for t in replica_texts if t.strip()]
    if not hyp or not sources:
        return []
    unmatched = [True] * len(hyp)
    for op, _, j in align(ref, hyp):
        if op == "ok":
            unmatched[j] = False
    runs: list[tuple[int, int]] = []  # [start, end) of unmatched hypothesis words
    k = 0
    while k < len(hyp):
        if unmatched[k]:
            e = k
            while e < len(hyp) and unmatched[e]:
                e += 1
            runs.append((k, e))
            k = e
        else:
            k += 1
    out: list[str] = []
    for a, b in runs:
        need = 2 if a == 0 else 3  # at the turn's start a 2-word run of the reply is already a copy
        best: list[str] = []
        for i in range(a, b):
            for j in range(b, i + need - 1, -1):
                if j - i > len(best) and any(_has_run(src, hyp[i:j]) for src in sources):
                    best = hyp[i:j]
                    break
        if len(best) >= need:
            out += best
    return out


def hallucinated_runs(ref_text: str, hyp_text: str, min_words: int = 3) -> int:
    """Runs of >= `min_words` inserted words (nothing under them in the reference)."""
    runs, n = 0, 0
    for op, _, _ in align(normalise(ref_text, fillers=False), normalise(hyp_text, fillers=False)):
        n = n + 1 if op == "ins" else 0
        if n == min_words:
            runs += 1
    return runs


# ------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class LabelledTurn:
    file: str
    index: int
    start: float
    end: float
    text: str
    kind: str
    reply_before: str
    persona: str


@dataclass(frozen=True)
class Call:
    file: str  # "asr-dev/001.wav"
    persona: str  # "" = the default persona
    duration: float
    turns: tuple[LabelledTurn, ...]


def load_calls(split: str, sets: str = "all") -> list[Call]:
    folders = [SETS[s][0 if split == "dev" else 1] for s in (SETS if sets == "all" else (sets,))]
    calls = []
    for folder in folders:
        for p in sorted((DATA / folder).glob("*.json")):
            lab = json.loads(p.read_text())
            persona = str(lab.get("persona", ""))
            turns = sorted(lab["turns"], key=lambda t: float(t["start"]))
            calls.append(
                Call(
                    str(lab["file"]),
                    persona,
                    float(lab["duration"]),
                    tuple(
                        LabelledTurn(
                            str(lab["file"]),
                            k,
                            float(t["start"]),
                            float(t["end"]),
                            str(t["text"]),
                            str(t["kind"]),
                            str(t.get("reply_before", "")),
                            persona,
                        )
                        for k, t in enumerate(turns)
                    ),
                )
            )
    if not calls:
        raise SystemExit(f"no labels for {split} under {DATA}: run perf/data/make_conversations.py")
    return calls


def read_wav(path: Path) -> np.ndarray[Any, np.dtype[np.int16]]:
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SR, 1, 2):
            raise ValueError(f"{path}: need 16 kHz mono PCM16")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def vocabulary(persona: str) -> tuple[str, ...]:
    from orchestrator.session.persona import load_persona

    return load_persona(ROOT / "personas", persona or "default").vocabulary


# ------------------------------------------------------------------------------------------- scoring
@dataclass
class TurnScore:
    file: str
    index: int
    kind: str
    ref: str
    hyp: str
    errors: Errors
    errors_nofill: Errors
    duplicate: bool
    leaked: list[str]
    hallucinated: int
    ms: float | None = None
    committed: int = 1  # e2e: user_turn events matched to the labelled turn (0: none, >1: split)
    prompt: str = ""
    audio_s: float = 0.0  # offline: seconds of audio decoded


def score_turn(
    turn: LabelledTurn, hyp: str, replica: Sequence[str], *, also: Sequence[str] = (), ms: float | None = None
) -> TurnScore:
    """One turn's scores; `also`: other transcripts of the turn (e2e finals) checked for duplicates too."""
    return TurnScore(
        turn.file,
        turn.index,
        turn.kind,
        turn.text,
        hyp,
        errors(normalise(turn.text), normalise(hyp)),
        errors(normalise(turn.text, fillers=False), normalise(hyp, fillers=False)),
        any(duplicated(h, turn.text) for h in (hyp, *also)),
        leaked(hyp, turn.text, replica),
        hallucinated_runs(turn.text, hyp),
        ms,
    )


def summary(scores: Sequence[TurnScore]) -> dict[str, Any]:
    total = sum((s.errors for s in scores), Errors())
    nofill = sum((s.errors_nofill for s in scores), Errors())
    ms = [s.ms for s in scores if s.ms is not None]
    return {
        "turns": len(scores),
        "ref_words": total.ref,
        "wer": total.wer,
        "wer_no_fillers": nofill.wer,
        "sub_del_ins": [total.sub, total.dele, total.ins],
        "duplicates": sum(s.duplicate for s in scores),
        "leaks": sum(bool(s.leaked) for s in scores),
        "leaked_words": sum(len(s.leaked) for s in scores),
        "hallucinated_runs": sum(s.hallucinated for s in scores),
        "uncommitted": sum(s.committed == 0 for s in scores),
        "split_turns": sum(s.committed > 1 for s in scores),
        "ms_median": float(np.median(ms)) if ms else math.nan,
        "ms_p90": float(np.quantile(ms, 0.9)) if ms else math.nan,
        "ms_by_audio": {  # the decode's cost by the length of the turn's audio (pads included)
            name: [float(np.median(m)), float(np.quantile(m, 0.9)), len(m)] if m else None
            for name, lo, hi in (("1-2 s", 0.0, 2.0), ("2-3 s", 2.0, 3.0), ("3-4 s", 3.0, 4.0), ("> 4 s", 4.0, 99.0))
            for m in [[x.ms for x in scores if x.ms is not None and lo < x.audio_s <= hi]]
        },
    }


def _pct(v: float) -> str:
    return "–" if math.isnan(v) else f"{100 * v:.1f} %"


def _ms(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.0f}"


def table(rows: Mapping[str, Mapping[str, Any]], *, e2e: bool = False) -> str:
    cols = ["system / prompt", "turns", "words", "WER", "WER w/o fillers", "S/D/I", "duplicates", "leaks (words)"]
    cols += ["hallucinated runs"] + (["uncommitted / split turns"] if e2e else ["ms/turn median / p90"])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in rows.items():
        cells = [
            name,
            str(r["turns"]),
            str(r["ref_words"]),
            _pct(r["wer"]),
            _pct(r["wer_no_fillers"]),
            "/".join(map(str, r["sub_del_ins"])),
            str(r["duplicates"]),
            f"{r['leaks']} ({r['leaked_words']})",
            str(r["hallucinated_runs"]),
            f"{r['uncommitted']} / {r['split_turns']}" if e2e else f"{_ms(r['ms_median'])} / {_ms(r['ms_p90'])}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- (a) offline
# A variant makes the decode's prompt from: the call's persona vocabulary, the replica's reply before the turn
# (scripted, in the labels), and the recogniser's own transcripts of the user's earlier turns in this call.
PromptFn = Callable[[tuple[str, ...], str, list[str]], str]


def _variants() -> dict[str, PromptFn]:
    from orchestrator.speech.prompt import decoder_prompt, recent_words, vocabulary_prompt

    return {
        "none": lambda vocab, reply, said: "",
        "replica": lambda vocab, reply, said: reply,  # Duet until 2026-12-05: the replica's last reply
        "vocab": lambda vocab, reply, said: vocabulary_prompt(vocab),  # "Dr. Patel, Blue Cross, copay."
        "hotwords": lambda vocab, reply, said: " ".join(vocab),  # faster-whisper's hotwords: the terms, spaced
        "user": lambda vocab, reply, said: recent_words(said, 200),  # the user's own earlier words only
        "vocab+user": lambda vocab, reply, said: decoder_prompt(vocab, said),
    }


VARIANTS = ("none", "replica", "vocab", "hotwords", "user", "vocab+user")


def run_offline(
    calls: Sequence[Call],
    variants: Sequence[str],
    *,
    threads: int,
    model_dir: Path,
    pad: tuple[float, float],
    decode: Mapping[str, float] | None = None,
    systems: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, list[TurnScore]]:
    """View (a); `decode` overrides DecodeOptions fields (beam_size, min_window_s, ...). `systems` compares
    several decode settings side by side (name -> overrides; rows "variant name"): every turn is decoded by
    each in turn, so load from other jobs hits them alike."""
    from orchestrator.inference.asr import DecodeOptions, WhisperRecognizer

    def options(over: Mapping[str, float]) -> DecodeOptions:
        return DecodeOptions(**{k: type(getattr(DecodeOptions(), k))(v) for k, v in over.items()})

    setups = systems or {"": decode or {}}
    recognizers = {
        name: WhisperRecognizer(model_dir, threads=threads, options=options({**(decode or {}), **over}))
        for name, over in setups.items()
    }
    fns = _variants()
    audio = {c.file: read_wav(DATA / c.file) for c in calls}
    warm = audio[calls[0].file][: 3 * SR]
    for r in recognizers.values():
        for _ in range(2):
            r([warm], [""], [True])
    rows = [(v, name) for v in variants for name in setups]
    out: dict[str, list[TurnScore]] = {f"{v} {name}".strip(): [] for v, name in rows}
    for c in calls:
        vocab = vocabulary(c.persona)
        said: dict[tuple[str, str], list[str]] = {row: [] for row in rows}
        replies: list[str] = []
        for turn in c.turns:
            if turn.reply_before:
                replies.append(turn.reply_before)
            a = max(0, round((turn.start - pad[0]) * SR))
            b = min(len(audio[c.file]), round((turn.end + pad[1]) * SR))
            for v, name in rows:  # rows alternate turn by turn: load from other jobs hits them alike
                prompt = fns[v](vocab, turn.reply_before, said[(v, name)])
                t0 = time.perf_counter()
                hyp = recognizers[name]([audio[c.file][a:b]], [prompt], [True])[0].text
                ms = (time.perf_counter() - t0) * 1000
                s = score_turn(turn, hyp, replies[-1:], ms=ms)
                s.prompt, s.audio_s = prompt, (b - a) / SR
                out[f"{v} {name}".strip()].append(s)
                said[(v, name)].append(hyp)
    return out


# ------------------------------------------------------------------------------------------- (a2) stream
def stream_turn(
    decode: Callable[[float, float, bool, str], tuple[str, float]],
    segments: Sequence[tuple[float, float]],
    prompt: str,
    *,
    step_s: float = 0.02,
) -> tuple[str, list[str]]:
    """One labelled turn through the session's own transcription gate (speech/gate.py, speech/transcript.py):
    speech_start and speech_end at each labelled speech segment's edges (+ the floor's 64 ms confirmation),
    partial decodes when the gate asks for them, and each decode's result applied when it would finish
    (`decode(start_s, end_s, final, prompt)` -> (text, seconds it took)). Returns the turn's transcript after
    its last final decode, and every final transcript on the way."""
    from orchestrator.config import FloorSettings
    from orchestrator.speech.gate import Decode, TranscriptGate

    floor = FloorSettings()
    gate = TranscriptGate(floor, partial_interval_ms=480, max_utterance_s=28.0)
    confirm = floor.speech_start_ms / 1000
    edges: list[tuple[float, str]] = []
    for a, b in segments:
        edges += [(a + confirm, "speech_start"), (b + floor.speech_end_ms / 1000, "speech_end")]
    finals: list[str] = []
    in_flight: tuple[Decode, str, float] | None = None  # the decode, its text, when its result arrives
    queue: list[Decode] = []

    @dataclass(frozen=True)
    class _Hyp:
        text: str
        words: tuple[Any, ...] = ()

    def start(now: float) -> None:
        nonlocal in_flight
        if in_flight is None and queue:
            d = queue.pop(0)
            text, took = decode(d.window.start_s, d.window.end_s, d.window.final, prompt)
            in_flight = (d, text, now + took)

    now = edges[0][0]
    end = edges[-1][0]
    while now <= end + 30.0:
        while edges and edges[0][0] <= now:
            _, kind = edges.pop(0)
            queue += gate.on_floor(kind, now)
        if in_flight is not None and in_flight[2] <= now:
            d, text, _ = in_flight
            in_flight = None
            heard = gate.heard(d.window, _Hyp(text))
            if heard is not None and heard.final:
                finals.append(heard.text)
            gate.settled(d.window)
        if in_flight is None and not queue and (p := gate.poll(now)) is not None:
            queue.append(p)
        start(now)
        if not edges and in_flight is None and not queue and now > end:
            break
        now = round(now + step_s, 6)
    return gate.turn_text, finals


def run_stream(
    calls: Sequence[Call], variant: str, *, threads: int, model_dir: Path, labels: Mapping[str, Mapping[str, Any]]
) -> list[TurnScore]:
    """View (a2): every turn through the session's gate with in-process decodes (see `stream_turn`)."""
    from orchestrator.inference.asr import DecodeOptions, WhisperRecognizer

    recognizer = WhisperRecognizer(model_dir, threads=threads, options=DecodeOptions())
    fn = _variants()[variant]
    out: list[TurnScore] = []
    for c in calls:
        audio = read_wav(DATA / c.file)
        vocab = vocabulary(c.persona)
        said: list[str] = []
        segs = [(float(g["start"]), float(g["end"])) for g in labels[c.file]["segments"]]

        def decode(
            a: float, b: float, final: bool, prompt: str, audio: np.ndarray[Any, np.dtype[np.int16]] = audio
        ) -> tuple[str, float]:
            t0 = time.perf_counter()
            x = audio[max(0, round(a * SR)) : min(len(audio), round(b * SR))]
            text = recognizer([x], [prompt], [final])[0].text
            return text, time.perf_counter() - t0

        for turn in c.turns:
            mine = [(a, b) for a, b in segs if a >= turn.start - 1e-3 and b <= turn.end + 1e-3]
            text, finals = stream_turn(decode, mine, fn(vocab, turn.reply_before, said))
            s = score_turn(turn, text, [turn.reply_before] if turn.reply_before else [], also=finals)
            out.append(s)
            said.append(text)
    return out


# ------------------------------------------------------------------------------------------- (b) e2e
def score_call_e2e(call: Call, events: Sequence[Mapping[str, Any]]) -> list[TurnScore]:
    """Match each labelled turn to the user_turn events committed in its window, and score them."""
    commits = sorted((e for e in events if e["type"] == "user_turn"), key=lambda e: float(e["t"]))
    finals = [e for e in events if e["type"] == "transcript" and e.get("final")]
    replica = sorted((e for e in events if e["type"] == "replica_turn"), key=lambda e: float(e["t"]))
    out = []
    for k, turn in enumerate(call.turns):
        until = call.turns[k + 1].start if k + 1 < len(call.turns) else math.inf
        mine = [e for e in commits if turn.start <= float(e["t"]) < until]
        hyp = " ".join(str(e["text"]) for e in mine).strip()
        first = float(mine[0]["t"]) if mine else until
        said = [str(e["text"]) for e in replica if float(e["t"]) < first]
        also = [str(e["text"]) for e in finals if turn.start <= float(e["t"]) < first + 1e-6]
        s = score_turn(turn, hyp, said, also=also)
        s.committed = len(mine)
        out.append(s)
    return out


def run_e2e(calls: Sequence[Call], runs: Path, server: str | None, reuse: bool, options: Sequence[str]) -> list[str]:
    """Run `duet talk` on every call (unless `reuse`); returns notes on failed runs."""
    from perf.bench_conversation import duet_cli, run_dir, run_talk, start_server

    notes: list[str] = []
    if reuse:
        return notes
    cli = duet_cli()
    proc = None
    try:
        if server is None:
            proc, server = start_server(cli)
        for c in calls:
            where = run_dir(runs, "duet", {"file": c.file})
            cmd = [cli, "talk", "--audio", str(DATA / c.file), "--out", str(where), "--server", server]
            if c.persona:
                cmd += ["--persona", c.persona]
            for opt in options:
                cmd += ["--option", opt]
            try:
                run_talk(cmd, where, c.duration)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                notes.append(f"{c.file}: {e}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    return notes


def score_e2e(calls: Sequence[Call], runs: Path) -> list[TurnScore]:
    from perf.bench_conversation import read_events, run_dir

    out: list[TurnScore] = []
    for c in calls:
        path = run_dir(runs, "duet", {"file": c.file}) / "events.jsonl"
        events = read_events(path) if path.exists() else []
        out += score_call_e2e(c, events)
    return out


def rescore(payload: Mapping[str, Any], calls: Sequence[Call]) -> dict[str, list[TurnScore]]:
    """The transcripts of an earlier offline or stream run (its JSON), scored again (after a normaliser change)."""
    turns = {(t.file, t.index): t for c in calls for t in c.turns}
    out: dict[str, list[TurnScore]] = {}
    for name, rows in payload["turns"].items():
        out[name] = []
        for r in rows:
            turn = turns[(r["file"], r["index"])]
            before = [t.reply_before for t in turns.values() if t.file == turn.file and t.index <= turn.index]
            replies = [x for x in before if x][-1:]
            s = score_turn(turn, r["hyp"], replies, ms=r.get("ms"))
            s.prompt, s.audio_s = r.get("prompt", ""), float(r.get("audio_s", 0.0))
            out[name].append(s)
    return out


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Transcript benchmark: WER, duplicates and leaks on multi-turn calls")
    ap.add_argument("--view", choices=("offline", "stream", "e2e"), default="offline")
    ap.add_argument("--split", choices=("dev", "check"), default="dev")
    ap.add_argument("--sets", choices=("all", *SETS), default="all")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="offline: comma list of prompt variants")
    ap.add_argument("--threads", type=int, default=1, help="offline: CTranslate2 threads (the cost is per core)")
    ap.add_argument("--model-dir", default=str(ROOT / "model_repository" / "asr" / "1" / "whisper-base"))
    ap.add_argument("--limit", type=int, default=None, help="only the first N calls")
    ap.add_argument("--server", default=None, help="e2e: HOST:PORT of a running duet server (else one is started)")
    ap.add_argument(
        "--runs", default=None, help="e2e: talk outputs, RUNS/duet/<folder>/NNN/ (default perf/out/asr_e2e)"
    )
    ap.add_argument("--reuse", action="store_true", help="e2e: score the outputs in --runs instead of running")
    ap.add_argument("--option", action="append", default=[], help="e2e: session option k=v")
    ap.add_argument("--label", default="duet", help="e2e: the row's name")
    ap.add_argument("--out", default=None, help="JSON results (default perf/out/asr_<view>_<split>.json)")
    ap.add_argument("--show", action="store_true", help="print every turn that has an error")
    ap.add_argument("--rescore", default=None, help="offline/stream: score the transcripts of this earlier JSON again")
    ap.add_argument("--decode", action="append", default=[], help="offline: DecodeOptions field=value (beam_size=5)")
    ap.add_argument(
        "--system",
        action="append",
        default=[],
        help="offline: NAME:field=value,... decode settings compared side by side (greedy:final_beam_size=1)",
    )
    args = ap.parse_args(argv)
    calls = load_calls(args.split, args.sets)[: args.limit]
    out = Path(args.out) if args.out else ROOT / "perf" / "out" / f"asr_{args.view}_{args.split}.json"
    notes: list[str] = []
    from orchestrator.speech.gate import FINAL_PAD_S, TURN_PAD_S

    if args.rescore:
        old = json.loads(Path(args.rescore).read_text())
        if (old["view"], old["split"], old["sets"]) != (args.view, args.split, args.sets):
            ap.error(f"{args.rescore} is a {old['view']} run of {old['split']}/{old['sets']}")
        per = rescore(old, calls)
    elif args.view == "offline":
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        if unknown := set(variants) - set(_variants()):
            ap.error(f"unknown variants {sorted(unknown)}")
        decode = {k: float(v) for k, v in (d.split("=", 1) for d in args.decode)}
        systems = {
            name: {k: float(v) for k, v in (kv.split("=", 1) for kv in rest.split(",") if kv)}
            for name, rest in (x.split(":", 1) for x in args.system)
        }
        per = run_offline(
            calls,
            variants,
            threads=args.threads,
            model_dir=Path(args.model_dir),
            pad=(TURN_PAD_S, FINAL_PAD_S),
            decode=decode,
            systems=systems or None,
        )
    elif args.view == "stream":
        labels = {c.file: json.loads((DATA / c.file).with_suffix(".json").read_text()) for c in calls}
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        per = {
            v: run_stream(calls, v, threads=args.threads, model_dir=Path(args.model_dir), labels=labels)
            for v in variants
        }
    else:
        runs = Path(args.runs) if args.runs else ROOT / "perf" / "out" / "asr_e2e"
        notes = run_e2e(calls, runs, args.server, args.reuse, args.option)
        per = {args.label: score_e2e(calls, runs)}
    rows = {name: summary(scores) for name, scores in per.items()}
    for s, folders in SETS.items():  # the same figures per data set
        for name, scores in per.items():
            part = [x for x in scores if x.file.split("/")[0] in folders]
            if part and args.sets == "all":
                rows[name].setdefault("by_set", {})[s] = summary(part)
    print(f"view={args.view} split={args.split} sets={args.sets} calls={len(calls)} threads={args.threads}")
    print(table(rows, e2e=args.view == "e2e"))
    if args.sets == "all":
        for s in SETS:
            sub = {f"{n} [{s}]": r["by_set"][s] for n, r in rows.items() if s in r.get("by_set", {})}
            if sub:
                print(table(sub, e2e=args.view == "e2e"))
    if args.view == "offline":
        print("ms per decode by turn audio (median / p90, turns):")
        for name, r in rows.items():
            cells = [
                f"{k}: " + (f"{v[0]:.0f} / {v[1]:.0f} ({v[2]})" if v else "–") for k, v in r["ms_by_audio"].items()
            ]
            print(f"  {name}: " + "; ".join(cells))
    if args.show:
        for name, scores in per.items():
            for x in scores:
                if x.errors.sub + x.errors.dele + x.errors.ins or x.duplicate or x.leaked:
                    flags = ("DUP " if x.duplicate else "") + (f"LEAK{x.leaked} " if x.leaked else "")
                    print(f"[{name}] {x.file}#{x.index} {flags}\n   ref: {x.ref}\n   hyp: {x.hyp}")
    for n in notes:
        print(f"note: {n}")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "view": args.view,
        "split": args.split,
        "sets": args.sets,
        "threads": args.threads,
        "decode": args.decode,
        "systems": args.system,
        "rows": rows,
        "turns": {name: [asdict(x) for x in scores] for name, scores in per.items()},
        "notes": notes,
    }
    if args.rescore:  # the decode settings are the earlier run's
        earlier = json.loads(Path(args.rescore).read_text())
        payload.update({k: earlier.get(k) for k in ("threads", "decode", "systems")}, rescored_from=args.rescore)
    out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
