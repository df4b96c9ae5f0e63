"""Fault benchmark: kill a model's stub in the middle of a spoken session; time to recovery and turns lost.

    .venv/bin/python perf/bench_faults.py                                  # llm, tts, asr on conversations/dev/001
    .venv/bin/python perf/bench_faults.py --faults llm --repeats 3 --file dev/002

It starts one `duet serve` (embedded tritonserver, healing on, as shipped), then for each run streams one recorded
multi-turn user at real time with `duet talk` (perf/data/conversations; labels give the user turns). A baseline
run has no fault. Each fault run SIGKILLs one model's Python-backend stub, found among tritonserver's children by
its command line (`<repo>/model_repository/<model>/1/model.py`), at a moment that model is at work, on the session
clock (the session starts when the server's `duet_sessions_open` gauge goes to 1):
- `llm`: `--reply-delay` (0.5 s) after the first user turn ends: the reply is being generated;
- `tts`: 0.4 s later than that: the reply's first sentences are being synthesised;
- `asr`: 1.5 s into the second user turn: its streaming partials are being decoded.

Reported per run:
- **recovery**: from the kill until the server's own metrics say the model was healed
  (`duet_model_healing_total{event="healed"}` goes up; or `duet_triton_restarts_total` if tritonserver itself
  died and was restarted). Target: <= 2 s.
- **turns lost**: user turns the baseline run answered and this run did not (answered = replica audio after the
  turn's end and before the next turn, scored by `perf/bench_conversation.score_file`). Target: only the turn in
  flight, i.e. at most 1 for `llm`/`tts` and 0-1 for `asr`.
- **errors**: `error` events the session got (their codes), and whether it ran to `session_ended`.

Prints a Markdown table and writes perf/out/bench_faults.json. A benchmark, not a test: numbers vary with load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orchestrator.models.launcher import child_pids, process_argv  # noqa: E402
from perf.bench_conversation import (  # noqa: E402
    DATA,
    duet_cli,
    read_events,
    read_reply,
    score_file,
    user_turns,
)

REPOSITORY = ROOT / "model_repository"
FAULTS = ("llm", "tts", "asr")
METRICS_LINE = re.compile(r"duet metrics on (http://\S+)")
SERVING_LINE = re.compile(r"duet serving sessions on (\S+)")


# ----------------------------------------------------------------------------------------------- processes
def tritonserver_of(serve_pid: int) -> int:
    for pid in child_pids(serve_pid):
        argv = process_argv(pid)
        if argv and Path(argv[0]).name == "tritonserver":
            return pid
    raise RuntimeError(f"no tritonserver under duet serve ({serve_pid})")


def stub_of(serve_pid: int, model: str) -> int:
    """The pid of `model`'s stub: tritonserver's child whose command line holds the model's file."""
    model_file = f"{REPOSITORY.resolve()}/{model}/1/model.py"
    triton = tritonserver_of(serve_pid)
    for pid in child_pids(triton):
        if model_file in process_argv(pid):
            return pid
    raise RuntimeError(f"no stub for {model!r} under tritonserver {triton}")


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    address: str
    metrics_url: str
    log_path: Path

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from orchestrator.telemetry import parse_metrics

        text = urllib.request.urlopen(self.metrics_url, timeout=2).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in parse_metrics(text)}

    def value(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_serve(cli: str, out: Path, wait_s: float = 300.0) -> Serve:
    from orchestrator.models.launcher import free_port

    log_path = out / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [cli, "serve", "--port", str(free_port())], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        serving, metrics = SERVING_LINE.search(text), METRICS_LINE.search(text)
        if serving and metrics:
            return Serve(proc, serving.group(1), metrics.group(1), log_path)
        if proc.poll() is not None:
            raise RuntimeError(f"duet serve exited with {proc.returncode}; log: {log_path}")
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"duet serve not ready in {wait_s:.0f} s; log: {log_path}")


def wait_until(cond: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> float | None:
    """Seconds until `cond()` held (None: it did not within `timeout_s`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if cond():
            return time.monotonic() - t0
        time.sleep(poll_s)
    return None


# ----------------------------------------------------------------------------------------------- one run
@dataclass
class Run:
    fault: str  # "none" or the model whose stub was killed
    file: str
    killed_at_s: float | None = None  # on the session clock
    stub_pid: int | None = None
    recovery_s: float | None = None  # kill -> the server's metrics say healed (or restarted)
    recovered_by: str = ""  # "reload" | "restart" | "" (not recovered)
    answered: list[bool] = field(default_factory=list)  # per user turn
    latency_ms: list[float | None] = field(default_factory=list)  # per user turn: end of turn -> replica audio
    hit_turn: int | None = None  # the user turn whose reply (or transcript) the kill hit
    errors: list[str] = field(default_factory=list)  # codes of the session's error events
    ended: bool = False  # the session ran to session_ended
    talk_rc: int | None = None
    lost: int | None = None  # filled against the baseline


def kill_time(fault: str, label: dict[str, Any], reply_delay_s: float) -> float:
    turns = user_turns(label)
    if fault == "llm":
        return turns[0].end + reply_delay_s
    if fault == "tts":
        return turns[0].end + reply_delay_s + 0.4
    if fault == "asr":
        second = turns[1] if len(turns) > 1 else turns[0]
        return second.start + min(1.5, (second.end - second.start) / 2)
    raise ValueError(f"unknown fault {fault!r}")


def hit_turn(label: dict[str, Any], t: float) -> int:
    """The user turn whose reply or transcript is in the making at `t`: the last one begun by then."""
    starts = [turn.start for turn in user_turns(label)]
    return max((k for k, s in enumerate(starts) if s <= t), default=0)


def one_run(
    cli: str, serve: Serve, label: dict[str, Any], fault: str, out: Path, reply_delay_s: float, heal_wait_s: float
) -> Run:
    wav = DATA / str(label["file"])
    run = Run(fault, str(label["file"]))
    out.mkdir(parents=True, exist_ok=True)
    for old in ("reply.wav", "events.jsonl", "transcript.json"):
        (out / old).unlink(missing_ok=True)
    healed0 = serve.value("duet_model_healing_total", event="healed", model=fault)
    restarts0 = serve.value("duet_triton_restarts_total")
    duration = float(label["duration"])
    with open(out / "talk.log", "wb") as talk_log:
        talk = subprocess.Popen(
            [cli, "talk", "--audio", str(wav), "--out", str(out), "--server", serve.address],
            stdout=talk_log,
            stderr=subprocess.STDOUT,
        )
    try:
        if wait_until(lambda: serve.value("duet_sessions_open") >= 1, 60.0) is None:
            raise RuntimeError("the session did not start within 60 s")
        t0 = time.monotonic()  # ~ the session clock's zero (audio streams at real time from here)
        if fault != "none":
            at = kill_time(fault, label, reply_delay_s)
            time.sleep(max(at - (time.monotonic() - t0), 0.0))
            run.stub_pid = stub_of(serve.proc.pid, fault)
            os.kill(run.stub_pid, signal.SIGKILL)
            t_kill = time.monotonic()
            run.killed_at_s = round(t_kill - t0, 2)
            run.hit_turn = hit_turn(label, run.killed_at_s)

            def recovered() -> bool:
                if serve.value("duet_triton_restarts_total") > restarts0:
                    run.recovered_by = "restart"
                    return True
                if serve.value("duet_model_healing_total", event="healed", model=fault) > healed0:
                    run.recovered_by = "reload"
                    return True
                return False

            took = wait_until(recovered, heal_wait_s)
            run.recovery_s = None if took is None else round(time.monotonic() - t_kill, 2)
        try:
            run.talk_rc = talk.wait(timeout=3 * duration + 120)
        except subprocess.TimeoutExpired:
            run.errors.append("duet talk timed out")  # counted against the system, not dropped
    finally:
        if talk.poll() is None:
            talk.kill()
            talk.wait()
    try:
        events = read_events(out / "events.jsonl")
        score = score_file(label, read_reply(out / "reply.wav"), events)
        run.answered = [t.latency_ms is not None for t in score.turns]
        run.latency_ms = [None if t.latency_ms is None else round(t.latency_ms) for t in score.turns]
        run.errors += [str(e.get("code")) for e in events if e.get("type") == "error"]
        run.ended = any(e.get("type") == "session_ended" for e in events)
    except (OSError, ValueError) as exc:
        run.answered = [False] * len(user_turns(label))
        run.errors.append(f"no outputs: {type(exc).__name__}")
    return run


# ----------------------------------------------------------------------------------------------- table
def lost_against(run: Run, baseline: Run) -> int:
    return sum(1 for b, r in zip(baseline.answered, run.answered, strict=True) if b and not r)


def hit_latency(run: Run, baseline: Run | None) -> str:
    if run.hit_turn is None or baseline is None or run.hit_turn >= len(run.latency_ms):
        return "-"

    def ms(v: float | None) -> str:
        return "missed" if v is None else f"{v:.0f}"

    return f"turn {run.hit_turn + 1}: {ms(baseline.latency_ms[run.hit_turn])} → {ms(run.latency_ms[run.hit_turn])}"


def table(runs: Sequence[Run]) -> str:
    head = (
        "| fault | killed at (session s) | recovery (s) | by | turns answered | turns lost "
        "| turn hit: response latency, baseline → fault (ms) | errors in session | session ended |"
    )
    rows = [head, "|---|---|---|---|---|---|---|---|---|"]
    baseline = next((r for r in runs if r.fault == "none"), None)
    for r in runs:
        errors = ", ".join(f"{c} x{r.errors.count(c)}" for c in dict.fromkeys(r.errors)) or "none"
        rows.append(
            f"| {r.fault} | {'-' if r.killed_at_s is None else f'{r.killed_at_s:.1f}'} "
            f"| {'-' if r.fault == 'none' else ('not recovered' if r.recovery_s is None else f'{r.recovery_s:.2f}')} "
            f"| {r.recovered_by or '-'} | {sum(r.answered)}/{len(r.answered)} "
            f"| {'-' if r.lost is None else r.lost} | {hit_latency(r, baseline)} | {errors} "
            f"| {'yes' if r.ended else 'no'} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Kill model stubs mid-session: time to recovery and turns lost")
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"comma list from {','.join(FAULTS)}")
    ap.add_argument("--file", default="dev/001", help="a recorded user under perf/data/conversations (no suffix)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--reply-delay", type=float, default=0.5, help="llm kill: seconds after the first turn's end")
    ap.add_argument("--heal-wait", type=float, default=60.0, help="how long to wait for a recovery")
    ap.add_argument("--out", default=str(ROOT / "perf" / "out" / "bench_faults"))
    args = ap.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if unknown := set(faults) - set(FAULTS):
        ap.error(f"unknown faults: {sorted(unknown)}")
    label = json.loads((DATA / f"{args.file}.json").read_text())
    if len(user_turns(label)) < 2:
        ap.error(f"{args.file} has fewer than 2 user turns: nothing can be answered after a fault")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli = duet_cli()
    serve = start_serve(cli, out)
    runs: list[Run] = []
    try:
        baseline = one_run(cli, serve, label, "none", out / "none", args.reply_delay, args.heal_wait)
        runs.append(baseline)
        print(f"baseline: {sum(baseline.answered)}/{len(baseline.answered)} turns answered", flush=True)
        for k in range(args.repeats):
            for fault in faults:
                time.sleep(3.0)  # the last reply done, the healer idle
                run = one_run(cli, serve, label, fault, out / f"{fault}-{k}", args.reply_delay, args.heal_wait)
                run.lost = lost_against(run, baseline)
                runs.append(run)
                print(
                    f"{fault}: killed at {run.killed_at_s} s, recovered in {run.recovery_s} s ({run.recovered_by}), "
                    f"{run.lost} turns lost, errors {run.errors}",
                    flush=True,
                )
    finally:
        serve.stop()
    print()
    print(table(runs))
    payload = {"file": args.file, "runs": [asdict(r) for r in runs], "serve_log": str(serve.log_path)}
    result = out.parent / "bench_faults.json"
    result.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {result.relative_to(ROOT) if result.is_relative_to(ROOT) else result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
