"""Score floor events against turn-taking labels (perf/data/turns/*/labels.jsonl).

Pure functions, no I/O.  A label record holds ``pauses``: ``{"start", "end", "kind": "hold"|"yield"}``
(a pause starts at the true end of speech of the segment before it).  Events are floor events as printed by
``duet turns FILE --jsonl`` (see DESIGN.md "Floor events"): ``{"type", "t", "compute_ms"}``.

Rules:

* The decision time of an event is ``t + compute_ms / 1000`` (audio clock of the last chunk it used, plus the
  time it took to decide).
* For each yield pause, the first ``eot_commit`` whose decision time lies in ``[pause.start - 0.3 s, pause.end)``
  detects it; latency = decision time - pause.start (may be slightly negative when a system commits just
  before the labelled end of speech).  Recall = detected yields / yields.  Further commits in the same window
  are counted as ``duplicate_commits``.
* Every other commit is an error: inside a hold pause it is an ``interruption`` (the user was only pausing);
  anywhere else (during speech, or after a yield window ended) it is a ``spurious`` commit.
* Tentatives: ``eot_tentative`` events whose decision time lies in a hold pause, and the count of
  ``eot_cancel`` events.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

EARLY_TOLERANCE_S = 0.3


@dataclass(frozen=True)
class Pause:
    start: float
    end: float
    kind: str  # "hold" | "yield"
    cat: str = ""

    def contains(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True)
class Decision:
    type: str
    time: float  # t + compute_ms / 1000


@dataclass
class FileScore:
    file: str
    n_yield: int = 0
    n_hold: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    interruptions: int = 0  # commits inside hold pauses
    holds_interrupted: int = 0  # hold pauses with at least one commit
    spurious: int = 0  # commits neither in a yield window nor in a hold pause
    duplicate_commits: int = 0  # extra commits inside an already detected yield window
    tentatives_in_holds: int = 0
    holds_with_tentative: int = 0
    cancels: int = 0
    interrupted_cats: Counter[str] = field(default_factory=Counter)
    hold_cats: Counter[str] = field(default_factory=Counter)

    @property
    def detected(self) -> int:
        return len(self.latencies_ms)


def pauses_of(label: Mapping[str, Any]) -> list[Pause]:
    out = [Pause(float(p["start"]), float(p["end"]), str(p["kind"]), str(p.get("cat", ""))) for p in label["pauses"]]
    for p in out:
        if p.kind not in ("hold", "yield"):
            raise ValueError(f"unknown pause kind {p.kind!r}")
        if p.end <= p.start:
            raise ValueError(f"empty pause {p}")
    return sorted(out, key=lambda p: p.start)


def decisions_of(events: Iterable[Mapping[str, Any]]) -> list[Decision]:
    out = [Decision(str(e["type"]), float(e["t"]) + float(e.get("compute_ms") or 0.0) / 1000.0) for e in events]
    return sorted(out, key=lambda d: d.time)


def score_file(label: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> FileScore:
    pauses = pauses_of(label)
    decisions = decisions_of(events)
    yields = [p for p in pauses if p.kind == "yield"]
    holds = [p for p in pauses if p.kind == "hold"]
    score = FileScore(file=str(label.get("file", "")), n_yield=len(yields), n_hold=len(holds))
    score.hold_cats.update(p.cat for p in holds)
    commits = [d.time for d in decisions if d.type == "eot_commit"]
    used: set[int] = set()
    for y in yields:
        window = [i for i, t in enumerate(commits) if y.start - EARLY_TOLERANCE_S <= t < y.end and i not in used]
        if window:
            score.latencies_ms.append((commits[window[0]] - y.start) * 1000.0)
            score.duplicate_commits += len(window) - 1
            used.update(window)
    hit_holds: set[int] = set()
    for i, t in enumerate(commits):
        if i in used:
            continue
        inside = [k for k, h in enumerate(holds) if h.contains(t)]
        if inside:
            score.interruptions += 1
            hit_holds.add(inside[0])
        else:
            score.spurious += 1
    score.holds_interrupted = len(hit_holds)
    score.interrupted_cats.update(holds[k].cat for k in hit_holds)
    tent_holds: set[int] = set()
    for d in decisions:
        if d.type == "eot_cancel":
            score.cancels += 1
        elif d.type == "eot_tentative":
            inside = [k for k, h in enumerate(holds) if h.contains(d.time)]
            if inside:
                score.tentatives_in_holds += 1
                tent_holds.add(inside[0])
    score.holds_with_tentative = len(tent_holds)
    return score


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def aggregate(scores: Iterable[FileScore]) -> dict[str, Any]:
    scores = list(scores)
    lat = [v for s in scores for v in s.latencies_ms]
    n_yield = sum(s.n_yield for s in scores)
    n_hold = sum(s.n_hold for s in scores)
    hold_cats: Counter[str] = Counter()
    hit_cats: Counter[str] = Counter()
    for s in scores:
        hold_cats.update(s.hold_cats)
        hit_cats.update(s.interrupted_cats)
    return {
        "files": len(scores),
        "n_yield": n_yield,
        "n_hold": n_hold,
        "detected": len(lat),
        "recall_pct": 100.0 * len(lat) / n_yield if n_yield else math.nan,
        "latency_median_ms": quantile(lat, 0.5),
        "latency_p90_ms": quantile(lat, 0.9),
        "interruptions": sum(s.interruptions for s in scores),
        "holds_interrupted": sum(s.holds_interrupted for s in scores),
        "holds_interrupted_pct": 100.0 * sum(s.holds_interrupted for s in scores) / n_hold if n_hold else math.nan,
        "spurious": sum(s.spurious for s in scores),
        "duplicate_commits": sum(s.duplicate_commits for s in scores),
        "tentatives_per_hold": sum(s.tentatives_in_holds for s in scores) / n_hold if n_hold else math.nan,
        "holds_with_tentative": sum(s.holds_with_tentative for s in scores),
        "cancels": sum(s.cancels for s in scores),
        "holds_interrupted_by_cat": {c: f"{hit_cats[c]}/{n}" for c, n in sorted(hold_cats.items()) if c},
    }


TABLE_COLUMNS = (
    "system",
    "n_yield",
    "n_hold",
    "recall %",
    "median ms",
    "p90 ms",
    "interruptions",
    "holds hit %",
    "spurious",
    "tent./hold",
    "cancels",
)


def _fmt(v: float, digits: int = 0) -> str:
    return "–" if math.isnan(v) else f"{v:.{digits}f}"


def table_row(system: str, agg: Mapping[str, Any]) -> list[str]:
    return [
        system,
        str(agg["n_yield"]),
        str(agg["n_hold"]),
        _fmt(agg["recall_pct"], 1),
        _fmt(agg["latency_median_ms"]),
        _fmt(agg["latency_p90_ms"]),
        str(agg["interruptions"]),
        _fmt(agg["holds_interrupted_pct"], 1),
        str(agg["spurious"]),
        _fmt(agg["tentatives_per_hold"], 2),
        str(agg["cancels"]),
    ]


def markdown_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(table_row(name, agg)) + " |" for name, agg in rows.items()]
    return "\n".join(lines)
