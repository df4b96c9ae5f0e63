"""A long run at a fixed load: does anything creep? (issue 17's soak: no leaked tasks, memory growth under 5 %,
no latency drift.)

One `duet serve` on one tritonserver (started as perf/session_load.py starts them). After one unmeasured
warm-up session and an idle baseline, N simulated users talk for `--minutes`: each streams a recorded
conversation at real time through the SDK and, when it ends, starts another (a new session each time). New
sessions start only before the deadline; the soak ends when the last one has ended.

Every `--probe-s` seconds a probe reads, from /proc and the orchestrator's Prometheus endpoint:
- the orchestrator's RSS (`VmRSS`), private memory (`RssAnon`) and open file descriptors (`/proc/PID/fd`);
- the tritonserver's RSS and private memory, summed with its Python backend stubs (every descendant of the
  launcher);
- `duet_sessions_open`, `duet_asyncio_tasks` (live tasks on the orchestrator's loop, counted by its loop-lag
  watcher) and the cumulative buckets of `duet_event_loop_lag_seconds`.

Per window (`--window-s`, a minute by default): the median RSS of its probes, the most tasks and fds a probe
saw, the open sessions at its end, the event loop's lag p95 (from the histogram's deltas over the window,
interpolated as Prometheus' `histogram_quantile` does), and the response latency p50/p95 of the user turns
that ended in it (as session_load measures it: end of the labelled user turn -> the next replica start; an
unanswered turn is counted, and left out of the percentiles).

Verdicts:
- **memory**: growth under 5 % (orchestrator and tritonserver each), of private memory (`RssAnon`; RSS
  beside it), once the working set is reached: from the end of the first third of the full windows to the
  last one, at that rate over the whole run (`growth_verdict`). The growth from the first window is reported
  beside it: the LLM's contexts and onnxruntime's arenas grow to their working set in the first minutes.
  RSS also counts the pages of the models' weight files mapped in, which the stubs touch lazily as new tokens
  and layers come up (the LLM's GGUF files are 1.1 GB): bounded by the files, shared with the page cache and
  reclaimable, so not a leak;
- **leaks**: once the last session has ended and `duet_sessions_open` reads 0, tasks and fds return to the
  idle baseline taken after the warm-up (waiting up to `--settle-s` for them);
- **latency drift**: the p50 of the turns in the last third of the full windows within 20 % of the first
  third's (otherwise the change is named), and no unanswered turn. Each labelled turn of the recording is
  compared with itself (the median of their changes): the pooled p50 of one recording repeated jumps between
  its slow and fast turns.

    .venv/bin/python perf/soak.py [--minutes 30] [--sessions 1] [--file dev/001] [--mix audio|full|webrtc]
        [--option KEY=VALUE ...] [--window-s 60] [--probe-s 5] [--out perf/out/soak.json]
    .venv/bin/python perf/soak.py --report perf/out/soak.json   # the table and verdicts again
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients"))

from orchestrator.telemetry import metrics_by_key  # noqa: E402

MEMORY_GROWTH_LIMIT = 0.05  # issue 17: memory growth under 5 %
DRIFT_LIMIT = 0.20  # last third's p50 within 20 % of the first third's
LAG = "duet_event_loop_lag_seconds_bucket"


# --------------------------------------------------------------------------------------------- the probes
@dataclass(frozen=True)
class Probe:
    """One reading, `t` seconds after the soak began."""

    t: float
    orchestrator_rss_kb: int | None
    triton_rss_kb: int | None
    triton_procs: int
    fds: int | None
    tasks: int | None
    sessions_open: int | None
    lag_buckets: dict[str, float]  # le (as text; "+Inf" last) -> cumulative count
    load1: float
    # Private memory (RssAnon): RSS less the file pages mapped in (the models' weight files, touched lazily)
    orchestrator_anon_kb: int | None = None
    triton_anon_kb: int | None = None


def rss_kb(pid: int, field: str = "VmRSS") -> int | None:
    """A live process's VmRSS (or `field`: RssAnon, its private memory) in kB, None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return 0  # a zombie has no VmRSS line


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def parent_map() -> dict[int, int]:
    """pid -> parent pid of every process now (from /proc/PID/stat; the name may hold spaces and ')')."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(root: int, parents: Mapping[int, int]) -> list[int]:
    """Every process below `root` (children, their children, ...), not `root` itself, sorted."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in out or pid == root:
            continue
        out.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(out)


def lag_buckets(metrics: Mapping[str, float]) -> dict[str, float]:
    """The cumulative buckets of `duet_event_loop_lag_seconds` from `metrics_by_key` output, by `le`."""
    prefix = LAG + "{le="
    return {k[len(prefix) : -1]: v for k, v in metrics.items() if k.startswith(prefix) and k.endswith("}")}


def gauge(metrics: Mapping[str, float], name: str) -> int | None:
    return round(metrics[name]) if name in metrics else None


def take_probe(t: float, orchestrator_pid: int, triton_root: int, metrics_url: str) -> Probe:
    """Read the processes and the orchestrator's metrics now (blocking: run it in a thread)."""
    triton = descendants(triton_root, parent_map())
    sizes = [r for r in (rss_kb(p) for p in triton) if r is not None]
    anon = [r for r in (rss_kb(p, "RssAnon") for p in triton) if r is not None]
    try:
        metrics = metrics_by_key(urllib.request.urlopen(metrics_url, timeout=5).read().decode())
    except OSError:
        metrics = {}
    return Probe(
        t=round(t, 2),
        orchestrator_rss_kb=rss_kb(orchestrator_pid),
        triton_rss_kb=sum(sizes) if sizes else None,
        triton_procs=len(sizes),
        fds=fd_count(orchestrator_pid),
        tasks=gauge(metrics, "duet_asyncio_tasks"),
        sessions_open=gauge(metrics, "duet_sessions_open"),
        lag_buckets=lag_buckets(metrics),
        load1=round(os.getloadavg()[0], 2),
        orchestrator_anon_kb=rss_kb(orchestrator_pid, "RssAnon"),
        triton_anon_kb=sum(anon) if anon else None,
    )


# ------------------------------------------------------------------------------------ windows (pure parts)
def histogram_quantile(q: float, before: Mapping[str, float], after: Mapping[str, float]) -> float | None:
    """The q-quantile of the observations a cumulative histogram gained between two scrapes, interpolated
    linearly inside its bucket as Prometheus' `histogram_quantile` does (the largest finite bound when it falls
    in `+Inf`); None when nothing was observed."""
    bounds = sorted(((float(le), after[le] - before.get(le, 0.0)) for le in after), key=lambda b: b[0])
    if not bounds or bounds[-1][1] <= 0:
        return None
    total = bounds[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in bounds:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


@dataclass(frozen=True)
class TurnResult:
    """A labelled user turn: when it ended (seconds after the soak began) and its response latency (None:
    unanswered)."""

    t_end: float
    latency_s: float | None
    stages_ms: dict[str, float] = field(default_factory=dict)  # the answering reply's split (its latency fields)
    turn: int = -1  # which labelled turn of the recording (-1: unknown)


def percentile(values: Sequence[float], q: float) -> float | None:
    return round(p_higher(values, q), 3) if values else None


def p_higher(values: Sequence[float], q: float = 50) -> float:
    """The `q`th percentile of `values`, one of them (the higher at a tie: numpy's `method="higher"`)."""
    return float(np.percentile(values, q, method="higher"))


def window_rows(
    probes: Sequence[Probe],
    turns: Sequence[TurnResult],
    session_starts: Sequence[float],
    window_s: float,
    end_s: float,
) -> list[dict[str, Any]]:
    """One row per window [k*window_s, (k+1)*window_s) up to `end_s` (when the last session ended); a window
    that `end_s` cuts short is not `full`. RSS is the median of the window's probes (a probe mid-reply and one
    between sessions differ); tasks and fds the most any probe saw (a leak raises the peak whatever the phase of
    the sessions), open sessions the last probe's; the loop-lag p95 is over the
    histogram's gain from the last probe before the window to the window's last."""
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    rows: list[dict[str, Any]] = []
    n = max(math.ceil(end_s / window_s - 1e-9), 1)
    ordered = sorted(probes, key=lambda p: p.t)
    for k in range(n):
        lo, hi = k * window_s, (k + 1) * window_s
        inside = [p for p in ordered if lo <= p.t < hi or (k == n - 1 and p.t >= hi)]
        before = [p for p in ordered if p.t < lo]
        last = inside[-1] if inside else None
        start = before[-1] if before else (inside[0] if inside else None)
        lag_p95 = None
        if last is not None and start is not None and last is not start:
            lag_p95 = histogram_quantile(0.95, start.lag_buckets, last.lag_buckets)
        in_window = [x for x in turns if lo <= x.t_end < hi or (k == n - 1 and x.t_end >= hi)]
        answered = [x.latency_s for x in in_window if x.latency_s is not None]

        def median(values: Iterable[int | None]) -> int | None:
            known = [v for v in values if v is not None]
            return round(statistics.median(known)) if known else None

        def peak(values: Iterable[int | None]) -> int | None:
            known = [v for v in values if v is not None]
            return max(known) if known else None

        rows.append(
            {
                "window": k + 1,
                "from_s": lo,
                "to_s": min(hi, end_s) if k == n - 1 else hi,
                "full": hi <= end_s + 1e-9,
                "probes": len(inside),
                "sessions_started": sum(1 for s in session_starts if lo <= s < hi),
                "turns": len(in_window),
                "answered": len(answered),
                "unanswered": len(in_window) - len(answered),
                "latencies_s": [x.latency_s for x in in_window],
                "turn_ids": [x.turn for x in in_window],
                "stages_ms": [x.stages_ms for x in in_window if x.latency_s is not None],
                "response_p50_s": percentile(answered, 50),
                "response_p95_s": percentile(answered, 95),
                "loop_lag_p95_s": None if lag_p95 is None else round(lag_p95, 4),
                "orchestrator_rss_kb": median(p.orchestrator_rss_kb for p in inside),
                "triton_rss_kb": median(p.triton_rss_kb for p in inside),
                "orchestrator_anon_kb": median(p.orchestrator_anon_kb for p in inside),
                "triton_anon_kb": median(p.triton_anon_kb for p in inside),
                "tasks": peak(p.tasks for p in inside),
                "fds": peak(p.fds for p in inside),
                "sessions_open": None if last is None else last.sessions_open,
                "load1": None if last is None else last.load1,
            }
        )
    return rows


# ------------------------------------------------------------------------------------- verdicts (pure parts)
def growth_verdict(rows: Sequence[Mapping[str, Any]], key: str, limit: float = MEMORY_GROWTH_LIMIT) -> dict[str, Any]:
    """`key`'s growth over the run, judged once the working set is reached: from the last window of the first
    third (`thirds`) to the last full window, scaled to the whole run (its rate per window times the run's
    windows), ok when under `limit` (a share). A process that fills its working set in the first minutes (the
    LLM's KV pages, onnxruntime's arena growing to the longest clause) and then holds passes; one that keeps
    growing at any point after fails, as it would over the whole run. With fewer than three full windows there
    is no first third: first to last. The growth from the first window is reported beside (`from_start`).
    Fewer than two full windows with the value: no verdict (ok None)."""
    values = [(r["window"], r[key]) for r in rows if r["full"] and r.get(key) is not None]
    if len(values) < 2:
        return {"ok": None, "why": "fewer than two full windows measured it"}
    (w0, first), (w1, last) = values[0], values[-1]
    wb, base = values[max(len(values) // 3 - 1, 0)]
    from_start = (last - first) / first if first else math.inf
    growth = (last - base) / base * (w1 - w0) / (w1 - wb) if base and w1 > wb else math.inf
    settled = f"window {wb} {base} -> window {w1} {last}"
    return {
        "ok": growth < limit,
        "first": first,
        "base": base,
        "last": last,
        "first_window": w0,
        "base_window": wb,
        "last_window": w1,
        "growth": round(growth, 4),
        "from_start": round(from_start, 4),
        "why": (
            f"{first} -> {last} ({growth:+.1%}; limit {limit:.0%})"
            if wb == w0
            else f"{settled}, {growth:+.1%} over the run at that rate (limit {limit:.0%}); "
            f"from window {w0}: {first} -> {last} ({from_start:+.1%})"
        ),
    }


def memory_verdict(rows: Sequence[Mapping[str, Any]], part: str, limit: float = MEMORY_GROWTH_LIMIT) -> dict[str, Any]:
    """`part`'s memory growth, judged on its private memory (RssAnon) where the windows have it: RSS also counts
    the pages of files mapped in, above all the models' weight files (the LLM's GGUF files are 1.1 GB), which a
    process touches lazily as new tokens and layers come up. Those are bounded by the files and reclaimable;
    a leak is private memory. The RSS verdict rides along (`rss`); runs saved without RssAnon are judged on RSS."""
    rss = growth_verdict(rows, f"{part}_rss_kb", limit)
    private = growth_verdict(rows, f"{part}_anon_kb", limit)
    if private["ok"] is None:
        return {**rss, "measure": "rss"}
    return {**private, "measure": "private", "rss": rss}


def leak_verdict(baseline: int | None, after: int | None, tolerance: int = 0) -> dict[str, Any]:
    """A count back to (or under) its idle baseline after the last session: ok; above it by more than
    `tolerance`: a leak. Unmeasured: no verdict."""
    if baseline is None or after is None:
        return {"ok": None, "why": "not measured"}
    return {
        "ok": after <= baseline + tolerance,
        "baseline": baseline,
        "after": after,
        "why": f"idle {baseline}, after the last session {after}"
        + (f" (+{after - baseline})" if after > baseline else ""),
    }


def thirds(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The first and last third of the full windows (at least one window each; none below three windows)."""
    full = [r for r in rows if r["full"]]
    if len(full) < 3:
        return [], []
    k = len(full) // 3
    return list(full[:k]), list(full[-k:])


def drift_verdict(rows: Sequence[Mapping[str, Any]], limit: float = DRIFT_LIMIT) -> dict[str, Any]:
    """The p50 response latency of the turns in the last third of the full windows against the first third's
    (pooled, taken as the windows' are): ok when within `limit` and no turn of either third went unanswered;
    otherwise the change is named."""
    first, last = thirds(rows)
    if not first:
        return {"ok": None, "why": "fewer than three full windows"}

    def pool(part: Sequence[Mapping[str, Any]]) -> tuple[list[float], int]:
        lat = [x for r in part for x in r["latencies_s"]]
        return [x for x in lat if x is not None], sum(x is None for x in lat)

    (a, a_missed), (b, b_missed) = pool(first), pool(last)
    span = f"windows {first[0]['window']}-{first[-1]['window']} vs {last[0]['window']}-{last[-1]['window']}"
    if not a or not b:
        return {"ok": False, "why": f"{span}: no answered turn in the {'first' if not a else 'last'} third"}
    p_a, p_b = p_higher(a), p_higher(b)
    per_turn = turn_changes(first, last)
    if per_turn:
        # The same recording, repeated: each labelled turn against itself. Pooled, the thirds' p50 jumps between
        # turns that are slow every time and turns that are fast (a two-humped spread), with no drift at all.
        change = float(statistics.median(per_turn.values()))
        why = (
            f"{span}: each labelled turn's p50, median change {change:+.0%} (limit ±{limit:.0%}; "
            + ", ".join(f"turn {k} {v:+.0%}" for k, v in sorted(per_turn.items()))
            + f"); pooled p50 {p_a:.2f} s -> {p_b:.2f} s"
        )
    else:
        change = (p_b - p_a) / p_a if p_a > 0 else math.inf
        why = f"{span}: p50 {p_a:.2f} s -> {p_b:.2f} s ({change:+.0%}; limit ±{limit:.0%})"
    ok = abs(change) <= limit and a_missed == 0 and b_missed == 0
    if abs(change) > limit:
        why += f": the replies got {'slower' if change > 0 else 'faster'}"
    if a_missed or b_missed:
        why += f"; unanswered turns {a_missed} -> {b_missed}"
    split = stage_split(first, last)
    if split:
        why += "; stage p50 (ms): " + ", ".join(
            f"{k.removesuffix('_ms')} {v[0]:.0f} -> {v[1]:.0f}" for k, v in split.items()
        )
    return {
        "ok": ok,
        "first_p50_s": round(p_a, 3),
        "last_p50_s": round(p_b, 3),
        "change": round(change, 4),
        "turn_changes": {str(k): round(v, 4) for k, v in sorted(per_turn.items())},
        "turns": [len(a) + a_missed, len(b) + b_missed],
        "stages_p50_ms": split,
        "why": why,
    }


def turn_changes(first: Sequence[Mapping[str, Any]], last: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """Per labelled turn answered in both thirds: the relative change of its p50 latency ({} when the rows do not
    say which turn each latency is: runs saved before they did)."""

    def by_turn(part: Sequence[Mapping[str, Any]]) -> dict[int, list[float]] | None:
        out: dict[int, list[float]] = {}
        for r in part:
            ids = r.get("turn_ids")
            if ids is None or len(ids) != len(r["latencies_s"]):
                return None
            for turn, lat in zip(ids, r["latencies_s"], strict=True):
                if lat is not None and turn >= 0:
                    out.setdefault(turn, []).append(lat)
        return out

    a, b = by_turn(first), by_turn(last)
    if a is None or b is None:
        return {}
    p50 = {k: (p_higher(a[k]), p_higher(b[k])) for k in a.keys() & b.keys()}
    return {k: (lb - la) / la for k, (la, lb) in p50.items() if la > 0}


def stage_split(
    first: Sequence[Mapping[str, Any]], last: Sequence[Mapping[str, Any]]
) -> dict[str, tuple[float, float]]:
    """Per stage of the replies' split measured in both thirds: (first third's p50, last third's p50) in ms,
    the stage that changed most first: where a drift came from."""

    def pooled(part: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for r in part:
            for split in r.get("stages_ms", []):
                for k, v in split.items():
                    out.setdefault(k, []).append(v)
        return out

    a, b = pooled(first), pooled(last)
    both = {k: (p_higher(a[k]), p_higher(b[k])) for k in a.keys() & b.keys()}
    return dict(sorted(both.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0])))


def verdicts(rows: Sequence[Mapping[str, Any]], idle: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "orchestrator_memory": memory_verdict(rows, "orchestrator"),
        "triton_memory": memory_verdict(rows, "triton"),
        "tasks": leak_verdict(idle.get("tasks"), after.get("tasks")),
        "fds": leak_verdict(idle.get("fds"), after.get("fds")),
        "latency_drift": drift_verdict(rows),
    }


# ---------------------------------------------------------------------------------------------- the users
@dataclass
class Soak:
    """The soak's clock and what its users did (times in seconds after `t0`)."""

    t0: float
    deadline: float
    turns: list[TurnResult] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    sessions: int = 0

    def now(self) -> float:
        return time.perf_counter() - self.t0


def turn_results(
    start_s: float, label: Mapping[str, Any], events: list[dict[str, Any]], failed: bool
) -> list[TurnResult]:
    """A session's labelled turns on the soak's clock (the session clock runs at real time from its start);
    a failed session leaves every turn unanswered, as session_load counts it."""
    from perf.session_load import response_latencies

    ends = sorted(float(t["end"]) for t in label["turns"])
    latencies: list[float | None] = [None] * len(ends) if failed else response_latencies(dict(label), events)
    splits = reply_splits(label, events)
    return [
        TurnResult(round(start_s + e, 3), lat, splits[i] if lat is not None else {}, i)
        for i, (e, lat) in enumerate(zip(ends, latencies, strict=True))
    ]


def reply_splits(label: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Per labelled turn, the wall-clock split (`*_ms` of `replica_speaking_start.latency`) of the reply that
    answered it, found as session_load's `response_latencies` finds the reply; {} for none."""
    starts = sorted((float(e["t"]), e) for e in events if e.get("type") == "replica_speaking_start")
    turns = sorted(label["turns"], key=lambda x: x["start"])
    out: list[dict[str, float]] = []
    for i, turn in enumerate(turns):
        nxt = turns[i + 1]["start"] if i + 1 < len(turns) else math.inf
        reply = next((e for t, e in starts if turn["end"] - 0.3 <= t < nxt), None)
        latency = reply.get("latency") if reply is not None else None
        out.append(
            {k: float(v) for k, v in latency.items() if k.endswith("_ms") and isinstance(v, int | float)}
            if isinstance(latency, dict)
            else {}
        )
    return out


@dataclass
class BrowserCalls:
    """Where the webrtc mix's calls go: the API's URL, and how a conversation is made for each."""

    api_url: str
    new_conversation: Callable[[], Awaitable[Any]]


@dataclass
class Caller:
    """How a user's sessions are made: `duet talk` naming the default persona (`audio`), session_load's `full`
    mix (a conversation from the REST API, camera frames, face video, perception, documents), or a browser
    call (`webrtc`: a conversation from the REST API joined over WebRTC by `duet call`, the face coming back)."""

    server: str
    options: dict[str, str]
    tmp: Path
    full: Any = None  # a perf.session_load.Mix, for the full mix
    browser: BrowserCalls | None = None  # for the webrtc mix

    async def session(self, i: int, wav: Path, name: str) -> tuple[list[dict[str, Any]], str]:
        """One conversation at real time; returns its events and its failure ("" when none)."""
        workdir = self.tmp / name
        try:
            if self.browser is not None:
                return await self.webrtc_call(wav, workdir)
            if self.full is None:
                from duet.talk import talk

                events: list[dict[str, Any]] = []
                try:
                    await talk(wav, self.server, workdir, options=dict(self.options), on_event=events.append)
                except Exception as exc:  # a failed session counts against the soak; the others go on
                    return events, f"{type(exc).__name__}: {exc}"
                return events, ""
            from perf.session_load import SessionLog

            log = SessionLog(duration_s=wav_seconds(wav))
            await self.full.user(i, wav, workdir, log)  # records its own failure
            return log.events, log.failure or ""
        finally:
            shutil.rmtree(workdir, ignore_errors=True)  # a long soak would fill the disk with replies

    async def webrtc_call(self, wav: Path, workdir: Path) -> tuple[list[dict[str, Any]], str]:
        from duet.call import call

        assert self.browser is not None
        events: list[dict[str, Any]] = []
        try:
            conversation = await self.browser.new_conversation()
            await call(
                conversation["conversation_id"],
                conversation["join"]["token"],
                wav,
                workdir,
                api_url=self.browser.api_url,
                options=dict(self.options),
                on_event=events.append,
            )
        except Exception as exc:  # a failed call counts against the soak; the others go on
            return events, f"{type(exc).__name__}: {exc}"
        return events, ""


def wav_seconds(wav: Path) -> float:
    from duet.wav import SAMPLE_RATE, read_pcm16

    return len(read_pcm16(wav)) / 2 / SAMPLE_RATE


async def user(soak: Soak, i: int, wav: Path, label: Mapping[str, Any], caller: Caller) -> None:
    """One simulated user: a new session after each one ends, until the deadline."""
    from perf.session_load import STAGGER_S

    if caller.full is None:  # users don't all start on the same sample (the full mix staggers by itself)
        await asyncio.sleep(STAGGER_S * i)
    k = 0
    while soak.now() < soak.deadline:
        start = soak.now()
        soak.starts.append(round(start, 3))
        events, failure = await caller.session(i, wav, f"u{i}-{k}")
        soak.sessions += 1
        if failure:
            soak.failures.append(failure)
        soak.turns += turn_results(start, label, events, bool(failure))
        k += 1


async def sample(soak: Soak, probes: list[Probe], every_s: float, pids: tuple[int, int], url: str) -> None:
    while True:
        probes.append(await asyncio.to_thread(take_probe, soak.now(), pids[0], pids[1], url))
        await asyncio.sleep(every_s - soak.now() % every_s)


async def idle_reading(
    pids: tuple[int, int], url: str, settle_s: float, floor: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The server at rest: waits until `duet_sessions_open` reads 0 and tasks and fds hold still for two
    readings a second apart (or, given `floor`, come back to it), up to `settle_s`; returns the last reading."""
    deadline = time.perf_counter() + settle_s
    previous = None
    while True:
        p = await asyncio.to_thread(take_probe, 0.0, pids[0], pids[1], url)
        reading = {
            "tasks": p.tasks,
            "fds": p.fds,
            "sessions_open": p.sessions_open,
            "orchestrator_rss_kb": p.orchestrator_rss_kb,
            "triton_rss_kb": p.triton_rss_kb,
            "orchestrator_anon_kb": p.orchestrator_anon_kb,
            "triton_anon_kb": p.triton_anon_kb,
        }
        if p.sessions_open == 0:
            if floor is not None:
                back = all(
                    reading[k] is not None and floor.get(k) is not None and reading[k] <= floor[k]
                    for k in ("tasks", "fds")
                )
                if back:
                    return reading
            elif previous is not None and (previous["tasks"], previous["fds"]) == (p.tasks, p.fds):
                return reading
        if time.perf_counter() > deadline:
            return reading
        previous = reading
        await asyncio.sleep(1.0)


async def run_soak(stack: Any, args: Any, wav: Path, label: Mapping[str, Any]) -> dict[str, Any]:
    from perf.session_load import Mix

    pids = (stack.procs[0].pid, stack.procs[1].pid)
    options = dict(args.session_options)
    api: Any = None
    with tempfile.TemporaryDirectory(prefix="duet-soak-") as tmp:
        caller = Caller(stack.server, options, Path(tmp))
        if args.mix in ("full", "webrtc"):  # a conversation from the REST API for each session
            import duet
            from perf.session_load import camera_frames, default_persona

            key, persona_id = await default_persona(stack, "soak", 1000, knowledge=args.mix == "full")
            api = duet.Client(stack.http_url, key)
            await api.__aenter__()

            async def new_conversation() -> Any:
                return await api.create_conversation(persona_id)

            if args.mix == "full":
                caller.full = Mix("full", stack.server, {"video": "true", "perception": "true", **options})
                caller.full.camera = await asyncio.to_thread(camera_frames, wav_seconds(wav) + 1.0, 10.0)
                caller.full.new_conversation = new_conversation
            else:
                caller.browser = BrowserCalls(stack.http_url, new_conversation)
        try:
            before_warmup = await idle_reading(pids, stack.metrics_url, 20.0, None)
            warm = Soak(time.perf_counter(), 0.0)
            for w in range(args.warmup):  # first-use costs (caches, a cold LLM context) are not a leak
                events, failure = await caller.session(0, wav, f"warm{w}")
                warm.turns += turn_results(0.0, label, events, bool(failure))
                if failure:
                    warm.failures.append(failure)
            idle = await idle_reading(pids, stack.metrics_url, args.settle_s, None)
            warm_answered = sum(x.latency_s is not None for x in warm.turns)
            print(
                json.dumps(
                    {
                        "warmup": f"{warm_answered}/{len(warm.turns)} turns answered",
                        "failures": warm.failures,
                        "idle_before_warmup": before_warmup,
                        "idle": idle,
                    }
                ),
                flush=True,
            )
            soak = Soak(time.perf_counter(), args.minutes * 60.0)
            probes: list[Probe] = []
            sampler = asyncio.create_task(
                sample(soak, probes, args.probe_s, pids, stack.metrics_url), name="soak-sampler"
            )
            try:
                async with asyncio.TaskGroup() as tg:
                    for i in range(args.sessions):
                        tg.create_task(user(soak, i, wav, label, caller), name=f"soak-user-{i}")
                end_s = soak.now()
                probes.append(await asyncio.to_thread(take_probe, end_s, pids[0], pids[1], stack.metrics_url))
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
            after = await idle_reading(pids, stack.metrics_url, args.settle_s, idle)
        finally:
            if api is not None:
                await api.__aexit__(None, None, None)
    rows = window_rows(probes, soak.turns, soak.starts, args.window_s, end_s)
    return {
        "idle_before_warmup": before_warmup,
        "idle": idle,
        "after": after,
        "end_s": round(end_s, 1),
        "sessions_run": soak.sessions,
        "failures": soak.failures,
        "windows": rows,
        "verdicts": verdicts(rows, idle, after),
        "probes": [asdict(p) for p in probes],
    }


# ---------------------------------------------------------------------------------------------- the report
def mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f}"


def private(row: Mapping[str, Any], part: str) -> str:
    """ " / <private MiB>" where the row has it."""
    kb = row.get(f"{part}_anon_kb")
    return "" if kb is None else f" / {mib(kb)}"


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def memory_phrase(v: Mapping[str, Any]) -> str:
    """A memory verdict in MiB: the settled growth and its rate over the run, and the growth from the start."""
    whole = f"window {v['first_window']} {mib(v['first'])} MiB -> window {v['last_window']} {mib(v['last'])} MiB"
    if v.get("base_window", v["first_window"]) == v["first_window"]:
        return f"{whole} ({v['growth']:+.1%})"
    return (
        f"window {v['base_window']} {mib(v['base'])} MiB -> window {v['last_window']} {mib(v['last'])} MiB, "
        f"{v['growth']:+.1%} over the run at that rate; from {whole} ({v['from_start']:+.1%})"
    )


def print_report(result: Mapping[str, Any]) -> None:
    print(
        f"\nsoak: {result['minutes']} min, {result['sessions']} user(s), {result['file']}, mix {result['mix']}, "
        f"{result['sessions_run']} sessions, {len(result['failures'])} failed; {result['date']}, "
        f"{result['cpus']} CPUs ({result['machine']})\n"
    )
    print(
        "| window | min | sessions started | turns answered | response p50 (s) | p95 (s) | loop lag p95 (ms) "
        "| orchestrator RSS / private (MiB) | tritonserver RSS / private (MiB) | asyncio tasks (max) | fds (max) "
        "| sessions open | load (1 min) |"
    )
    print("|---" * 13 + "|")
    for r in result["windows"]:
        lag = "-" if r["loop_lag_p95_s"] is None else f"{r['loop_lag_p95_s'] * 1000:.1f}"
        span = f"{round(r['from_s'] / 60, 2):g}-{round(r['to_s'] / 60, 2):g}" + ("" if r["full"] else " (partial)")
        print(
            f"| {r['window']} | {span} | {r['sessions_started']} | {r['answered']}/{r['turns']} "
            f"| {secs(r['response_p50_s'])} | {secs(r['response_p95_s'])} | {lag} "
            f"| {mib(r['orchestrator_rss_kb'])}{private(r, 'orchestrator')} "
            f"| {mib(r['triton_rss_kb'])}{private(r, 'triton')} | {r['tasks']} | {r['fds']} | {r['sessions_open']} "
            f"| {r['load1']} |"
        )
    idle, after = result["idle"], result["after"]
    print(
        f"\nidle (after warm-up): tasks {idle['tasks']}, fds {idle['fds']}; after the last session: tasks "
        f"{after['tasks']}, fds {after['fds']}, sessions open {after['sessions_open']}"
    )
    names = {
        "orchestrator_memory": "orchestrator memory growth < 5 %",
        "triton_memory": "tritonserver memory growth < 5 %",
        "tasks": "asyncio tasks back to idle",
        "fds": "file descriptors back to idle",
        "latency_drift": "latency drift (p50 of each labelled turn, last third vs first) within 20 %",
    }
    print()
    for key, name in names.items():
        v = result["verdicts"][key]
        mark = {True: "PASS", False: "FAIL", None: "n/a"}[v["ok"]]
        why = v["why"]
        if key.endswith("_memory") and v["ok"] is not None:
            why = f"{'private memory' if v.get('measure') == 'private' else 'RSS'}: {memory_phrase(v)}"
            if (rss := v.get("rss")) and rss.get("ok") is not None:
                why += f"; RSS: {memory_phrase(rss)}"
        print(f"- {name}: {mark} ({why})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sessions", type=int, default=1, help="simultaneous users")
    ap.add_argument(
        "--file", default="dev/001", help="the recorded conversation: SPLIT/NAME in perf/data/conversations"
    )
    ap.add_argument("--mix", choices=("audio", "full", "webrtc"), default="audio")
    ap.add_argument("--option", action="append", default=[], help="a session option KEY=VALUE (repeatable)")
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--probe-s", type=float, default=5.0)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured sessions before the idle baseline")
    ap.add_argument("--settle-s", type=float, default=30.0, help="how long to wait for the server to come to rest")
    ap.add_argument("--out", default=str(ROOT / "perf" / "out" / "soak.json"))
    ap.add_argument("--report", default="", help="print the table of a saved run (its --out) instead of running")
    args = ap.parse_args(argv)
    if args.report:  # judged again by the rules of today, from the saved windows
        saved = json.loads(Path(args.report).read_text())
        print_report({**saved, "verdicts": verdicts(saved["windows"], saved["idle"], saved["after"])})
        return 0
    from perf.session_load import DATA, session_options, stack_running

    try:
        args.session_options = session_options(args.option)
    except ValueError as exc:
        ap.error(str(exc))
    if args.minutes <= 0 or args.sessions < 1 or args.window_s <= 0 or not 0 < args.probe_s <= args.window_s:
        ap.error("need --minutes > 0, --sessions >= 1 and 0 < --probe-s <= --window-s")
    wav = DATA / f"{args.file}.wav"
    if not wav.is_file():
        print(f"no conversation file {wav}", file=sys.stderr)
        return 2
    label = json.loads(wav.with_suffix(".json").read_text())
    with stack_running("duet-soak-store-") as stack:
        run = asyncio.run(run_soak(stack, args, wav, label))
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "minutes": args.minutes,
        "sessions": args.sessions,
        "file": args.file,
        "mix": args.mix,
        "options": args.session_options,
        "window_s": args.window_s,
        "probe_s": args.probe_s,
        "warmup": args.warmup,
        **run,
    }
    print_report(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    failed = [k for k, v in result["verdicts"].items() if v["ok"] is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
