"""Spoken-conversation benchmark: `duet talk` on recorded users, scored from what the replica did on the timeline.

    .venv/bin/python perf/bench_conversation.py --split dev                     # speculation on vs. off
    .venv/bin/python perf/bench_conversation.py --split check --echo            # + replica echo in the mic
    .venv/bin/python perf/bench_conversation.py --split dev --systems duet --option llm.max_tokens=64

Data: perf/data/conversations/{dev,check}/NNN.wav + NNN.json (check/ is held out from tuning; see
perf/data/README.md).  For every file and system the script runs
``duet talk --audio NNN.wav --out DIR --server HOST:PORT [--option k=v ...] [--echo-gain G --echo-delay-ms D]``
(one subprocess per file, real time) against one shared ``duet serve`` it starts itself (or ``--server``), reads
``DIR/reply.wav`` (replica audio on the input's clock) and ``DIR/events.jsonl``, and scores them with the pure
functions below.  Prints one Markdown table (a row per system) and writes perf/out/conversation_<split>.json.

Systems: ``duet`` (session defaults) and ``duet-nospec`` (``--option speculation=false``), side by side.

Scoring (all times on the input file's clock; "audible" = |sample| > ``THRESHOLD``; replica "talk spans" are
runs of audible samples with gaps shorter than ``SPAN_GAP_S`` merged, so pauses between words don't split them):

* **Response latency**, per user turn (kind "turn" or "interruption"): from the labelled end of the turn to the
  first audible replica sample after it, searched up to the next user turn's start.  None = a **miss**.  When a
  talk span that began inside the turn (after its first ``OVERLAP_GRACE_S``) is still running at its end, the
  replica answered **early** if a ``replica_speaking_start`` came during the turn: latency = span start - turn
  end (negative).  Any other sound running at the turn's end is the previous reply running on and is skipped.
* **Latency split**: medians of the ``latency`` dict of the ``replica_speaking_start`` event matched to each
  response (the event in the turn's window nearest the audible onset, within ``MATCH_S``); share of those
  with ``from_speculation``.
* **Wasted speculative tokens** per user turn: sum of ``reply_cancelled.tokens`` / number of user turns.
* **Barge-in stop latency**, per interruption during which the replica was talking (a talk span covers its
  start or begins within ``OVERLAP_GRACE_S`` of it): from the interruption's start to the last audible replica
  sample before the replica's next reply (its next ``replica_speaking_start``; without one, the first talk span
  that begins after the interruption).  Sound still there at the interruption's end counts as **never
  stopped** (kept out of the median; a gap in the middle of a reply, e.g. TTS running slower than real time,
  is not mistaken for a stop this way).
* **False stops**: backchannels and coughs that start inside a talk span and are followed within
  ``FALSE_STOP_WINDOW_S`` by ``replica_speaking_stop`` with ``interrupted: true``; **pauses**: a
  ``replica_paused`` in that window followed later by ``replica_resumed`` of the same reply.
* **Spurious stops**: ``replica_speaking_stop`` with ``interrupted: true`` not explained by any user turn (from
  its start to ``FALSE_STOP_WINDOW_S`` after its end) nor by a backchannel/cough — e.g. the replica's own echo.
* **Duplicate replies**: user turns whose window (turn start to next turn start) holds more than one
  ``replica_speaking_start`` (must be 0).
* **Overlap**: seconds of replica talk spans inside a user turn, beyond its first ``OVERLAP_GRACE_S``.
* **Stalls**: silence inside a reply while its synthesis caught up with playback (``replica_speaking_stop``'s
  ``stall_ms``): the total in seconds, and how many replies had any.
* **Failed runs**: a ``duet talk`` that exited non-zero, timed out or left outputs that cannot be read is not
  dropped: it is counted (column "failed runs") and every user turn of its file counts as a miss.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import wave
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "perf" / "data" / "conversations"
PROBE_WAV = ROOT / "perf" / "data" / "samples" / "demo_user.wav"
SR = 16000

THRESHOLD = 100 / 32768  # ≈ -50 dBFS: above dither and resampling noise, below any spoken sound
SPAN_GAP_S = 0.4  # TTS pauses at commas and between sentences run to ~0.3 s: shorter silences are not a stop
OVERLAP_GRACE_S = 0.3  # talking into the first 300 ms of a user turn is a fair collision, not overlap
FALSE_STOP_WINDOW_S = 1.5
MATCH_S = 0.5  # replica_speaking_start.t vs. the audible onset it announces
LATENCY_KEYS = ("floor_ms", "asr_final_ms", "llm_first_token_ms", "tts_first_chunk_ms")
SYSTEMS: dict[str, tuple[str, ...]] = {
    "duet": (),
    "duet-nospec": ("speculation=false",),
    "duet-nowords": ("warm_words=false",),  # the user's words not evaluated by the LLM while they speak
    "duet-smollm2": ("llm_model=smollm2-135m",),  # the small LLM that was the default before Qwen 0.5B
    "duet-video": ("video=true",),  # the replica's face streamed too (512x512 at 25 fps by default)
    "duet-video-lite": ("video=true", "video.fps=15", "video.size=384x384"),  # a CPU-sized face stream
}
ECHO_ARGS = ("--echo-gain", "0.3", "--echo-delay-ms", "120")

Event = Mapping[str, Any]
Samples = npt.NDArray[np.float32]


# ----------------------------------------------------------------------------------------------- audio
@dataclass(frozen=True)
class Span:
    """A stretch of replica audio: first audible sample to just after the last one (seconds)."""

    start: float
    end: float

    def overlap(self, a: float, b: float) -> float:
        return max(0.0, min(self.end, b) - max(self.start, a))


def as_float(pcm: npt.NDArray[Any]) -> Samples:
    """int16 PCM or float samples in [-1, 1] as float32."""
    if pcm.dtype == np.int16:
        return (pcm.astype(np.float32) / 32768.0).astype(np.float32)
    return np.asarray(pcm, dtype=np.float32)


def talk_spans(pcm: npt.NDArray[Any], threshold: float = THRESHOLD, gap_s: float = SPAN_GAP_S) -> list[Span]:
    """Runs of audible samples, merging silences shorter than ``gap_s`` (sample-exact edges)."""
    idx = np.flatnonzero(np.abs(as_float(pcm)) > threshold)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > gap_s * SR)
    starts = np.concatenate([idx[:1], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], idx[-1:]])
    return [Span(int(s) / SR, (int(e) + 1) / SR) for s, e in zip(starts, ends, strict=True)]


def read_reply(path: Path) -> Samples:
    """DIR/reply.wav as float32 (16 kHz mono PCM16; an empty file is allowed: the replica never spoke)."""
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SR, 1, 2):
            raise ValueError(f"{path}: need 16 kHz mono PCM16")
        data = w.readframes(w.getnframes())
    return as_float(np.frombuffer(data, dtype="<i2"))


def read_events(path: Path) -> list[dict[str, Any]]:
    out = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("{"):
            obj = json.loads(line)
            if "type" in obj and "t" in obj:
                out.append(obj)
    return out


# ----------------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class UserTurn:
    start: float
    end: float
    kind: str  # "turn" | "interruption"
    text: str = ""


@dataclass(frozen=True)
class Blip:
    """A backchannel or cough: the replica should keep talking through it."""

    start: float
    end: float
    kind: str  # "backchannel" | "cough"


def user_turns(label: Mapping[str, Any]) -> list[UserTurn]:
    out = [UserTurn(float(t["start"]), float(t["end"]), str(t["kind"]), str(t.get("text", ""))) for t in label["turns"]]
    for t in out:
        if t.kind not in ("turn", "interruption"):
            raise ValueError(f"unknown turn kind {t.kind!r}")
        if t.end <= t.start:
            raise ValueError(f"empty turn {t}")
    return sorted(out, key=lambda t: t.start)


def blips(label: Mapping[str, Any]) -> list[Blip]:
    out = [Blip(float(b["start"]), float(b["end"]), "backchannel") for b in label.get("backchannels", [])]
    out += [Blip(float(c["start"]), float(c["end"]), "cough") for c in label.get("coughs", [])]
    return sorted(out, key=lambda b: b.start)


@dataclass
class TurnResult:
    start: float
    end: float
    kind: str
    latency_ms: float | None = None  # None: no reply before the next user turn (a miss)
    early: bool = False  # the reply began while the user was still talking
    from_speculation: bool | None = None  # None: no replica_speaking_start matched the onset
    split_ms: dict[str, float] = field(default_factory=dict)
    starts: int = 0  # replica_speaking_start events in the turn's window
    overlap_s: float = 0.0


@dataclass
class BargeIn:
    start: float
    end: float
    stop_ms: float | None  # None: the replica talked through the whole interruption
    stop_event: bool  # a replica_speaking_stop with interrupted=true came during it


@dataclass
class FileScore:
    file: str
    turns: list[TurnResult] = field(default_factory=list)
    barge_ins: list[BargeIn] = field(default_factory=list)
    interruptions: int = 0
    blips_during_talk: int = 0
    false_stops: list[str] = field(default_factory=list)  # kinds of the blips that stopped the replica
    pauses: int = 0  # paused + resumed after a blip
    spurious_stops: int = 0
    wasted_tokens: int = 0
    stalls_ms: list[float] = field(default_factory=list)  # per reply heard with a stall: its silence inside
    failed: str = ""  # why the run failed (non-empty: no outputs to score; every turn is a miss)


def _of_type(events: Iterable[Event], kind: str) -> list[Event]:
    return sorted((e for e in events if e.get("type") == kind), key=lambda e: float(e["t"]))


def respond(
    turn: UserTurn, next_start: float, spans: Sequence[Span], starts: Sequence[Event]
) -> tuple[float | None, bool]:
    """Onset of the replica's response to ``turn`` (seconds) and whether it began early; (None, False) = miss.

    Sound already running at the turn's end is an early answer only if it began after the turn's first
    ``OVERLAP_GRACE_S`` and a ``replica_speaking_start`` came during the turn; otherwise it is the previous
    reply running on (resumed after a pause, or after a gap while TTS fell behind real time).
    """
    announced = any(turn.start <= float(e["t"]) <= turn.end for e in starts)
    for s in spans:
        if s.end <= turn.end:
            continue
        if s.start < turn.end:  # talking at the turn's end
            if announced and s.start > turn.start + OVERLAP_GRACE_S:
                return s.start, True
            continue
        return (s.start, False) if s.start < next_start else (None, False)
    return None, False


def score_turns(
    turns: Sequence[UserTurn], duration: float, spans: Sequence[Span], starts: Sequence[Event]
) -> list[TurnResult]:
    out = []
    for k, turn in enumerate(turns):
        next_start = turns[k + 1].start if k + 1 < len(turns) else duration
        res = TurnResult(turn.start, turn.end, turn.kind)
        window = [e for e in starts if turn.start <= float(e["t"]) < next_start]
        res.starts = len(window)
        res.overlap_s = sum(s.overlap(turn.start + OVERLAP_GRACE_S, turn.end) for s in spans)
        onset, res.early = respond(turn, next_start, spans, window)
        if onset is not None:
            res.latency_ms = (onset - turn.end) * 1000.0
            near = [e for e in window if abs(float(e["t"]) - onset) <= MATCH_S]
            if near:
                ev = min(near, key=lambda e: abs(float(e["t"]) - onset))
                res.from_speculation = bool(ev.get("from_speculation", False))
                lat = ev.get("latency") or {}
                res.split_ms = {k: float(lat[k]) for k in LATENCY_KEYS if lat.get(k) is not None}
        out.append(res)
    return out


def score_barge_ins(
    turns: Sequence[UserTurn], duration: float, spans: Sequence[Span], starts: Sequence[Event], stops: Sequence[Event]
) -> list[BargeIn]:
    out = []
    for k, turn in enumerate(turns):
        if turn.kind != "interruption":
            continue
        if not any(s.start < turn.start + OVERLAP_GRACE_S and s.end > turn.start for s in spans):
            continue  # the replica was already quiet: nothing to stop
        # The replica's next reply begins at its replica_speaking_start (or, without one, at the first talk span
        # that begins after the interruption); its last sound before that is where it stopped.
        bound = turns[k + 1].start if k + 1 < len(turns) else duration
        later = [float(e["t"]) for e in starts if float(e["t"]) > turn.start]
        onsets = later[:1] if later else [s.start for s in spans if s.start >= turn.end]
        bound = min([bound, *onsets])
        ends = [min(s.end, bound) for s in spans if s.start < bound and s.end > turn.start]
        stop_t = max(ends, default=turn.start)
        stop_ms = None if stop_t >= turn.end else (stop_t - turn.start) * 1000.0
        by_event = any(e.get("interrupted") and turn.start <= float(e["t"]) <= turn.end for e in stops)
        out.append(BargeIn(turn.start, turn.end, stop_ms, by_event))
    return out


def score_file(label: Mapping[str, Any], reply: npt.NDArray[Any], events: Sequence[Event]) -> FileScore:
    """Score one ``duet talk`` run: its labels, its reply.wav samples and its events.jsonl objects."""
    spans = talk_spans(reply)
    turns = user_turns(label)
    score = FileScore(str(label.get("file", "")))
    starts = _of_type(events, "replica_speaking_start")
    score.turns = score_turns(turns, float(label["duration"]), spans, starts)
    stops = [e for e in _of_type(events, "replica_speaking_stop") if e.get("interrupted")]
    score.barge_ins = score_barge_ins(turns, float(label["duration"]), spans, starts, stops)
    score.interruptions = sum(1 for t in turns if t.kind == "interruption")
    paused = _of_type(events, "replica_paused")
    resumed = _of_type(events, "replica_resumed")
    explained: set[int] = set()
    label_blips = blips(label)
    for b in label_blips:
        if not any(s.start <= b.start < s.end for s in spans):
            continue
        score.blips_during_talk += 1
        hits = [i for i, e in enumerate(stops) if b.start <= float(e["t"]) <= b.start + FALSE_STOP_WINDOW_S]
        explained.update(hits)
        if hits:
            score.false_stops.append(b.kind)
        for p in paused:
            if b.start <= float(p["t"]) <= b.start + FALSE_STOP_WINDOW_S and any(
                r.get("reply_id") == p.get("reply_id") and float(r["t"]) >= float(p["t"]) for r in resumed
            ):
                score.pauses += 1
                break
    for i, e in enumerate(stops):
        t = float(e["t"])
        by_user = any(u.start <= t <= u.end + FALSE_STOP_WINDOW_S for u in turns)
        by_blip = any(b.start <= t <= b.start + FALSE_STOP_WINDOW_S for b in label_blips)
        if i not in explained and not by_user and not by_blip:
            score.spurious_stops += 1
    score.wasted_tokens = sum(int(e.get("tokens") or 0) for e in events if e.get("type") == "reply_cancelled")
    stalls = (float(e.get("stall_ms") or 0.0) for e in _of_type(events, "replica_speaking_stop"))
    score.stalls_ms = [x for x in stalls if x > 0.0]
    return score


def failed_file(label: Mapping[str, Any], why: str) -> FileScore:
    """A run that failed or left nothing to score: counted against the system, every user turn a miss."""
    turns = user_turns(label)
    score = FileScore(str(label.get("file", "")), failed=why or "failed")
    score.turns = [TurnResult(t.start, t.end, t.kind) for t in turns]
    score.interruptions = sum(1 for t in turns if t.kind == "interruption")
    return score


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    return float(np.quantile(np.asarray(values, dtype=np.float64), q))


def aggregate(scores: Iterable[FileScore]) -> dict[str, Any]:
    scores = list(scores)
    turns = [t for s in scores for t in s.turns]
    lat = [t.latency_ms for t in turns if t.latency_ms is not None]
    matched = [t for t in turns if t.from_speculation is not None]
    stops = [b.stop_ms for s in scores for b in s.barge_ins if b.stop_ms is not None]
    barge = [b for s in scores for b in s.barge_ins]
    false_stops = [k for s in scores for k in s.false_stops]
    return {
        "files": len(scores),
        "failed_runs": sum(1 for s in scores if s.failed),
        "user_turns": len(turns),
        "replied": len(lat),
        "missed": len(turns) - len(lat),
        "early": sum(t.early for t in turns),
        "latency_median_ms": quantile(lat, 0.5),
        "latency_p90_ms": quantile(lat, 0.9),
        "split_median_ms": {
            k: quantile([t.split_ms[k] for t in matched if k in t.split_ms], 0.5) for k in LATENCY_KEYS
        },
        "matched_start_events": len(matched),
        "from_speculation_pct": 100.0 * sum(bool(t.from_speculation) for t in matched) / len(matched)
        if matched
        else math.nan,
        "wasted_tokens_per_turn": sum(s.wasted_tokens for s in scores) / len(turns) if turns else math.nan,
        "interruptions": sum(s.interruptions for s in scores),
        "interruptions_during_talk": len(barge),
        "bargein_stop_median_ms": quantile(stops, 0.5),
        "bargein_stop_p90_ms": quantile(stops, 0.9),
        "never_stopped": sum(1 for b in barge if b.stop_ms is None),
        "blips_during_talk": sum(s.blips_during_talk for s in scores),
        "false_stops": len(false_stops),
        "false_stops_backchannel": false_stops.count("backchannel"),
        "false_stops_cough": false_stops.count("cough"),
        "pauses": sum(s.pauses for s in scores),
        "spurious_stops": sum(s.spurious_stops for s in scores),
        "duplicate_replies": sum(1 for t in turns if t.starts > 1),
        "overlap_s": sum(t.overlap_s for t in turns),
        "turns_with_overlap": sum(1 for t in turns if t.overlap_s > 0.0),
        "stall_s": sum(x for s in scores for x in s.stalls_ms) / 1000.0,
        "stalled_replies": sum(len(s.stalls_ms) for s in scores),
    }


TABLE_COLUMNS = (
    "system",
    "failed runs",
    "turns",
    "missed",
    "early",
    "median ms",
    "p90 ms",
    "floor / asr / llm / tts ms",
    "spec %",
    "wasted tok/turn",
    "barge-in stop ms (med / p90)",
    "never stopped",
    "false stops",
    "pauses",
    "spurious stops",
    "duplicates",
    "overlap s (turns)",
    "stalls s (replies)",
)


def _fmt(v: float, digits: int = 0) -> str:
    return "–" if math.isnan(v) else f"{v:.{digits}f}"


def table_row(system: str, agg: Mapping[str, Any]) -> list[str]:
    split = " / ".join(_fmt(agg["split_median_ms"][k]) for k in LATENCY_KEYS)
    return [
        system,
        f"{agg['failed_runs']}/{agg['files']}",
        str(agg["user_turns"]),
        str(agg["missed"]),
        str(agg["early"]),
        _fmt(agg["latency_median_ms"]),
        _fmt(agg["latency_p90_ms"]),
        split,
        _fmt(agg["from_speculation_pct"], 0),
        _fmt(agg["wasted_tokens_per_turn"], 1),
        f"{_fmt(agg['bargein_stop_median_ms'])} / {_fmt(agg['bargein_stop_p90_ms'])}",
        f"{agg['never_stopped']}/{agg['interruptions_during_talk']}",
        f"{agg['false_stops']}/{agg['blips_during_talk']}",
        str(agg["pauses"]),
        str(agg["spurious_stops"]),
        str(agg["duplicate_replies"]),
        f"{agg['overlap_s']:.1f} ({agg['turns_with_overlap']})",
        f"{agg['stall_s']:.1f} ({agg['stalled_replies']})",
    ]


def markdown_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(table_row(name, agg)) + " |" for name, agg in rows.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- runner
def duet_cli() -> str:
    local = ROOT / ".venv" / "bin" / "duet"
    if not local.exists():
        raise SystemExit(f"missing {local}: run `make setup`")
    return str(local)


def load_labels(split: str) -> list[dict[str, Any]]:
    splits = ["dev", "check"] if split == "all" else [split]
    out: list[dict[str, Any]] = []
    for s in splits:
        out += [json.loads(p.read_text()) for p in sorted((DATA / s).glob("*.json"))]
    if not out:
        raise SystemExit(f"no labels under {DATA}: run perf/data/make_conversations.py")
    return out


def talk_command(cli: str, server: str, wav: Path, out_dir: Path, options: Sequence[str], echo: bool) -> list[str]:
    cmd = [cli, "talk", "--audio", str(wav), "--out", str(out_dir), "--server", server]
    for opt in options:
        cmd += ["--option", opt]
    return cmd + list(ECHO_ARGS if echo else ())


def run_dir(runs: Path, system: str, label: Mapping[str, Any]) -> Path:
    """RUNS/<system>/<split>/<stem>/: where one `duet talk` run writes its outputs."""
    return runs / system / Path(str(label["file"])).with_suffix("")


def run_talk(cmd: Sequence[str], out_dir: Path, duration: float) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in ("reply.wav", "events.jsonl", "transcript.json"):  # never score a previous run's outputs
        (out_dir / old).unlink(missing_ok=True)
    # Real-time streaming: the file's length plus room for the last reply and for a loaded machine.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3 * duration + 120, check=False)
    (out_dir / "talk.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4])} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")


def start_server(cli: str, wait_s: float = 300.0) -> tuple[subprocess.Popen[bytes], str]:
    """`duet serve` on a free port, ready once a session answers (the floor benchmark's own starter)."""
    from perf.bench_turns import start_server as start_duet_serve

    return start_duet_serve(cli, PROBE_WAV, wait_s)


def video_summary(dirs: Sequence[Path]) -> dict[str, Any]:
    """The sessions' `video_stats` events: frames, drops, and how long after its time each frame was sent."""
    stats = [e for d in dirs for e in read_events(d / "events.jsonl") if e.get("type") == "video_stats"]
    if not stats:
        return {}
    lag95 = [float(e["lag_ms_p95"]) for e in stats if e.get("lag_ms_p95") is not None]
    lag50 = [float(e["lag_ms_p50"]) for e in stats if e.get("lag_ms_p50") is not None]
    return {
        "sessions": len(stats),
        "frames": sum(int(e["frames"]) for e in stats),
        "dropped": sum(int(e["dropped"]) for e in stats),
        "lag_ms_p50_median": round(float(np.median(lag50)), 1) if lag50 else None,
        "lag_ms_p95_worst": round(max(lag95), 1) if lag95 else None,
    }


def score_run(label: Mapping[str, Any], out_dir: Path) -> FileScore:
    return score_file(label, read_reply(out_dir / "reply.wav"), read_events(out_dir / "events.jsonl"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Spoken-conversation benchmark (duet talk on recorded users)")
    ap.add_argument("--split", choices=("dev", "check", "all"), default="dev")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list from {','.join(SYSTEMS)}")
    ap.add_argument("--option", action="append", default=[], help="session option k=v for every system")
    ap.add_argument("--echo", action="store_true", help=f"feed the replica's echo back: {' '.join(ECHO_ARGS)}")
    ap.add_argument("--server", default=None, help="HOST:PORT of a running duet server (else one is started)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N files (smoke runs)")
    ap.add_argument("--jobs", type=int, default=1, help="files streamed at once (>1 adds load: latency rises)")
    ap.add_argument(
        "--runs",
        default=None,
        help="where talk outputs go: RUNS/<system>/<split>/NNN/ (default perf/out/conversation_<split>/)",
    )
    ap.add_argument("--reuse", action="store_true", help="score existing outputs in --runs instead of running")
    ap.add_argument("--out", default=None, help="JSON results (default perf/out/conversation_<split>.json)")
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := set(systems) - set(SYSTEMS):
        ap.error(f"unknown systems: {sorted(unknown)}")
    bad = [o for o in args.option if "=" not in o]
    if bad:
        ap.error(f"--option needs key=value: {bad}")
    tag = args.split + ("_echo" if args.echo else "")
    runs = Path(args.runs) if args.runs else ROOT / "perf" / "out" / f"conversation_{tag}"
    out = Path(args.out) if args.out else ROOT / "perf" / "out" / f"conversation_{tag}.json"
    labels = load_labels(args.split)[: args.limit]

    notes: list[str] = []
    failed: dict[Path, str] = {}  # run folder -> why: counted against the system, never dropped
    server_proc: subprocess.Popen[bytes] | None = None
    try:
        if not args.reuse:
            cli = duet_cli()
            server = args.server
            if server is None:
                try:
                    server_proc, server = start_server(cli)
                except RuntimeError as e:
                    raise SystemExit(f"bench_conversation: {e}") from e
            # Systems alternate file by file, so load from the other engineers' jobs hits both alike.
            jobs = [
                (
                    talk_command(cli, server, DATA / lab["file"], run_dir(runs, name, lab), opts, args.echo),
                    run_dir(runs, name, lab),
                    float(lab["duration"]),
                )
                for lab in labels
                for name in systems
                for opts in [[*SYSTEMS[name], *args.option]]
            ]
            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                for job, fut in zip(jobs, [pool.submit(run_talk, *j) for j in jobs], strict=True):
                    try:
                        fut.result()
                    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                        failed[job[1]] = str(e)
                        notes.append(f"{job[1].relative_to(runs)}: {e}")
    finally:
        if server_proc is not None:
            server_proc.terminate()
            server_proc.wait(timeout=60)

    rows: dict[str, dict[str, Any]] = {}
    per_file: dict[str, list[dict[str, Any]]] = {}
    for name in systems:
        scores = []
        for lab in labels:
            where = run_dir(runs, name, lab)
            if where in failed:
                scores.append(failed_file(lab, failed[where]))
                continue
            try:
                scores.append(score_run(lab, where))
            except (OSError, ValueError) as e:
                notes.append(f"{name}/{lab['file']}: not scored ({e}); counted as a failed run")
                failed[where] = f"not scored: {e}"
                scores.append(failed_file(lab, failed[where]))
        rows[name] = aggregate(scores)
        per_file[name] = [asdict(s) for s in scores]

    echo = f", echo {' '.join(ECHO_ARGS)}" if args.echo else ""
    print(f"split={args.split} files={len(labels)} jobs={args.jobs}{echo} options={args.option or '-'}")
    print(markdown_table(rows))
    for name in systems:
        video = video_summary([run_dir(runs, name, lab) for lab in labels if run_dir(runs, name, lab) not in failed])
        if video:
            rows[name]["video"] = video
            print(f"{name} video: {video}")
    for n in notes:
        print(f"note: {n}")
    for name, agg in rows.items():
        if agg["failed_runs"]:
            print(f"{name}: {agg['failed_runs']} of {agg['files']} runs FAILED (their turns are counted as missed)")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"split": args.split, "echo": args.echo, "options": args.option, "systems": rows, "files": per_file}
    out.write_text(json.dumps({**payload, "notes": notes}, indent=1, default=str) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
