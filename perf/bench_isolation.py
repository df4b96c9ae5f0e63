"""Isolation benchmark: a healthy call's response latency on the wall clock, alone and beside hostile streams.

One `duet serve` (the real stack: a tritonserver with every model). The healthy call is a recorded user
(perf/data/conversations, `check` split) streamed at real time in a conversation session, as `duet talk`
does; its response latency per labelled user turn is measured on the **wall clock**, as the user would feel
it: from the moment the client sent the end of the user's speech to the moment the first audible sample of the
reply could be played (received, and due on the session clock). The call runs alone, then with `--hostile`
streams beside it (then alone again, when `--repeats` > 1), in one run, against the same server.

The hostile streams, in equal shares, each a loop that reconnects whenever the server ends it:
- `flood`: a conversation session sending low-level noise 12x faster than real time (the server paces it);
- `bulk`: an acoustic session sending the same user speech as fast as gRPC allows (the bulk lane);
- `garbage`: odd-length, empty and oversized audio chunks and undecodable camera frames, then a second `start`;
- `idle`: a conversation session that sends nothing (the idle timeout ends it);
- `churn`: open a session, send a little, cancel within 0.3 s, again;
- `text`: a floor session sending 1 MB `text` messages as fast as it can.

At the end every hostile client stops and the orchestrator's `/metrics` must read zero open sessions; the
report lists how the hostile sessions ended (refused, paced, ended with which code) and any slot leaked.

    .venv/bin/python perf/bench_isolation.py [--hostile 50] [--healthy 1] [--call check/001] [--repeats 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients"))

import duet  # noqa: E402
from duet.proto import session_pb2 as pb  # noqa: E402
from duet.proto import session_pb2_grpc as pb_grpc  # noqa: E402
from duet.sdk import ReplyAudio, probe  # noqa: E402
from duet.wav import read_pcm16  # noqa: E402
from orchestrator.models.launcher import free_port  # noqa: E402
from orchestrator.telemetry import metrics_by_key  # noqa: E402

DATA = ROOT / "perf" / "data" / "conversations"
KINDS = ("flood", "bulk", "garbage", "idle", "churn", "text")
CHUNK_BYTES = 640  # 20 ms
AUDIBLE = 300  # |sample| above this is reply speech, not the TTS's leading silence
STAGGER_S = 0.7  # between the starts of simultaneous healthy calls: their turns do not end in the same instant
IDLE_TIMEOUT_S = 10.0  # the server's idle timeout in this run (the default is 30 s): idle streams end in the run


# ---------------------------------------------------------------------------------------------- the stack


def start_stack(env_extra: dict[str, str], log_path: str = "") -> tuple[list[subprocess.Popen[str]], str, str]:
    tri = subprocess.Popen(
        [sys.executable, str(ROOT / "perf" / "triton_up.py")], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert tri.stdout is not None
    grpc_url, _ = tri.stdout.readline().split()
    port, mport = free_port(), free_port()
    env = dict(os.environ, DUET_TRITON__URL=grpc_url, DUET_METRICS__PORT=str(mport), **env_extra)
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 (held for the server's life)
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "duet"), "serve", "--port", str(port)],
        stdout=log,  # a file, never a pipe: an unread pipe would stall the server
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    metrics = f"http://127.0.0.1:{mport}/metrics"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise RuntimeError("duet serve exited")
        try:
            scrape(metrics)
            if asyncio.run(probe(f"127.0.0.1:{port}")):
                return [serve, tri], f"127.0.0.1:{port}", metrics
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("duet serve did not become ready")


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback
        return metrics_by_key(resp.read().decode())


def delta(after: dict[str, float], before: dict[str, float], prefix: str) -> dict[str, float]:
    return {
        k.removeprefix(prefix): round(v - before.get(k, 0.0), 3)
        for k, v in sorted(after.items())
        if k.startswith(prefix) and v - before.get(k, 0.0) > 0
    }


# ---------------------------------------------------------------------------------------------- healthy call


async def healthy_call(server: str, wav: Path) -> dict[str, Any]:
    """Stream `wav` at real time in a conversation session; per labelled turn, the wall-clock latency."""
    label = json.loads(wav.with_suffix(".json").read_text())
    pcm = read_pcm16(wav)
    chunks = [pcm[i : i + CHUNK_BYTES] for i in range(0, len(pcm), CHUNK_BYTES)]
    heard: list[tuple[float, float]] = []  # (session time of the first audible sample, wall time it arrived)
    errors: list[str] = []
    t0 = 0.0
    # its own connection, as a user's own client has (gRPC would otherwise share one between the calls)
    async with duet.connect(server, channel_args=[("grpc.use_local_subchannel_pool", 1)]) as session:

        async def send() -> None:
            nonlocal t0
            t0 = time.perf_counter()
            for i, chunk in enumerate(chunks):
                delay = t0 + i * 0.02 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await session.send_audio(chunk)
            await session.end()

        sender = asyncio.create_task(send(), name="healthy-sender")
        async for item in session.items():
            if isinstance(item, ReplyAudio):
                x = np.abs(np.frombuffer(item.pcm, dtype="<i2").astype(np.int32))
                loud = np.flatnonzero(x > AUDIBLE)
                if loud.size:
                    heard.append((item.t + loud[0] / 16000, time.perf_counter()))
            elif isinstance(item, dict) and item.get("type") == "error":
                errors.append(str(item.get("code")))
        await sender
    turns = sorted(label["turns"], key=lambda x: x["start"])
    wall: list[float | None] = []
    clock: list[float | None] = []
    for i, turn in enumerate(turns):
        nxt = turns[i + 1]["start"] if i + 1 < len(turns) else math.inf
        after = [(t, r) for t, r in heard if turn["end"] - 0.3 <= t < nxt]
        if not after:
            wall.append(None)
            clock.append(None)
            continue
        t, received = after[0]
        spoken_end = t0 + turn["end"]  # the live user stopped speaking then
        playable = max(received, t0 + t)  # a client plays it when it has it and its time has come
        wall.append(round(playable - spoken_end, 3))
        clock.append(round(t - turn["end"], 3))
    return {"wall_s": wall, "audio_clock_s": clock, "errors": errors}


async def healthy_calls(server: str, wav: Path, n: int) -> dict[str, Any]:
    """`n` healthy calls at once (each started `STAGGER_S` after the one before, as users join a service), their
    turns pooled: what one call returns, over all of them."""

    async def one(i: int) -> dict[str, Any]:
        await asyncio.sleep(i * STAGGER_S)
        try:
            return await healthy_call(server, wav)
        except duet.DuetError as err:  # refused (server_busy, rate_limited) or ended: every turn unanswered
            turns = len(json.loads(wav.with_suffix(".json").read_text())["turns"])
            return {"wall_s": [None] * turns, "audio_clock_s": [None] * turns, "errors": [f"fatal:{err.code}"]}

    calls = await asyncio.gather(*(one(i) for i in range(n)))
    return {key: [x for c in calls for x in c[key]] for key in ("wall_s", "audio_clock_s", "errors")}


# ---------------------------------------------------------------------------------------------- hostile streams


def start_msg(**options: str) -> pb.ClientMessage:
    fmt = pb.AudioFormat(sample_rate=16000, channels=1, sample_width=2, encoding="pcm_s16le")
    return pb.ClientMessage(start=pb.Start(audio_format=fmt, options=options))


def audio_msg(pcm: bytes) -> pb.ClientMessage:
    return pb.ClientMessage(audio=pb.AudioChunk(pcm=pcm))


class Tally:
    """How the hostile sessions went: opened, and what each ended with."""

    def __init__(self) -> None:
        self.opened: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.notices: Counter[str] = Counter()

    def record(self, kind: str, outcome: str) -> None:
        self.outcomes[f"{kind}:{outcome}"] += 1


async def one_session(
    stub: Any, kind: str, tally: Tally, first: pb.ClientMessage, writes: Callable[[], AsyncIterator[pb.ClientMessage]]
) -> None:
    """Open a session, write what `writes` yields while reading everything; record how it ended."""
    call = stub.Converse()
    tally.opened[kind] += 1
    outcome = "open"

    async def write() -> None:
        try:
            await call.write(first)
            async for m in writes():
                await call.write(m)
        except Exception:  # the server ended the call: nothing more to write
            pass

    writer = asyncio.create_task(write(), name=f"hostile-{kind}-writer")
    try:
        async for msg in call:
            if msg.WhichOneof("kind") == "error":
                if msg.error.fatal:
                    outcome = msg.error.code
                else:
                    tally.notices[f"{kind}:{msg.error.code}"] += 1
            elif msg.WhichOneof("kind") == "event" and msg.event.type == "session_ended":
                outcome = "session_ended"
    except grpc.aio.AioRpcError as exc:  # e.g. a stream reset while the client was still writing
        outcome = f"rpc_{exc.code().name.lower()}"
    except asyncio.CancelledError:
        outcome = "stopped_by_client"
        raise
    finally:
        writer.cancel()
        call.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        tally.record(kind, outcome)


async def hostile(kind: str, n: int, server: str, speech: bytes, stop: asyncio.Event, tally: Tally) -> None:
    rng = random.Random(n)
    noise = (np.random.default_rng(n).normal(0, 30, 16000 * 4)).astype("<i2").tobytes()  # about -60 dBFS
    speech_chunks = [speech[i : i + CHUNK_BYTES] for i in range(0, len(speech), CHUNK_BYTES)]
    # Its own connection (grpc otherwise shares one between the channels of a process): another client.
    opts = [("grpc.max_send_message_length", 4 << 20), ("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(server, options=opts) as ch:
        stub = pb_grpc.SessionStub(ch)  # type: ignore[no-untyped-call]
        while not stop.is_set():
            if kind == "flood":

                async def flood() -> AsyncIterator[pb.ClientMessage]:
                    i = 0
                    while True:  # 12x real time, until the server's pacing holds the writes back
                        yield audio_msg(noise[(i * CHUNK_BYTES) % len(noise) :][:CHUNK_BYTES])
                        i += 1
                        if i % 12 == 0:
                            await asyncio.sleep(0.02)

                job = one_session(stub, kind, tally, start_msg(), flood)
            elif kind == "bulk":

                async def bulk() -> AsyncIterator[pb.ClientMessage]:
                    for c in speech_chunks:
                        yield audio_msg(c)
                    yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))

                job = one_session(stub, kind, tally, start_msg(mode="acoustic"), bulk)
            elif kind == "garbage":

                async def garbage() -> AsyncIterator[pb.ClientMessage]:
                    for _ in range(20):
                        yield audio_msg(b"\x01")  # odd length
                        yield audio_msg(b"")
                        yield audio_msg(b"\x00" * 16000)  # 500 ms: over the chunk limit
                        yield pb.ClientMessage(video=pb.VideoFrame(jpeg=b"\xff\xd8 not a jpeg", t=0.0))
                        await asyncio.sleep(0.05)
                    yield start_msg()  # a second start: fatal

                job = one_session(stub, kind, tally, start_msg(mode="perceive"), garbage)
            elif kind == "idle":

                async def idle() -> AsyncIterator[pb.ClientMessage]:
                    await stop.wait()  # sends nothing at all
                    nothing: tuple[pb.ClientMessage, ...] = ()
                    for m in nothing:
                        yield m

                job = one_session(stub, kind, tally, start_msg(), idle)
            elif kind == "churn":

                async def churn() -> AsyncIterator[pb.ClientMessage]:
                    for c in speech_chunks[: rng.randrange(8)]:
                        yield audio_msg(c)
                    await asyncio.Event().wait()

                task = asyncio.create_task(
                    one_session(stub, kind, tally, start_msg(mode=rng.choice(["conversation", "perceive"])), churn),
                    name="hostile-churn",
                )
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                continue
            else:  # text

                async def text() -> AsyncIterator[pb.ClientMessage]:
                    big = pb.ClientMessage(text=pb.TextInput(text="so " * 330_000))
                    while True:
                        yield big
                        yield audio_msg(speech_chunks[0])

                job = one_session(stub, kind, tally, start_msg(mode="floor"), text)
            task = asyncio.create_task(job, name=f"hostile-{kind}")
            stopper = asyncio.create_task(stop.wait(), name=f"hostile-{kind}-stop")
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            task.cancel()
            await asyncio.gather(task, stopper, return_exceptions=True)
            await asyncio.sleep(0.05)  # then reconnect


# ---------------------------------------------------------------------------------------------- run


async def sessions_left(metrics: str, within_s: float) -> float:
    """Open sessions on the server once they have had `within_s` to end (polling its /metrics)."""
    for _ in range(int(within_s * 2)):
        if (left := scrape(metrics)["duet_sessions_open"]) == 0:
            return left
        await asyncio.sleep(0.5)  # polling another process
    return scrape(metrics)["duet_sessions_open"]


def summary(values: list[float | None]) -> dict[str, Any]:
    v = [math.inf if x is None else x for x in values]
    if not v:
        return {"turns": 0}
    return {
        "turns": len(v),
        "answered": sum(x is not None for x in values),
        "median_s": round(float(np.percentile(v, 50, method="higher")), 3),
        "p90_s": round(float(np.percentile(v, 90, method="higher")), 3),
        "max_s": round(max(v), 3),
    }


def loop_lag(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Mean lag of the orchestrator's event loop between two scrapes."""
    n = after.get("duet_event_loop_lag_seconds_count", 0.0) - before.get("duet_event_loop_lag_seconds_count", 0.0)
    total = after.get("duet_event_loop_lag_seconds_sum", 0.0) - before.get("duet_event_loop_lag_seconds_sum", 0.0)
    return round(total / n, 4) if n > 0 else None


async def sample_open(metrics: str, into: list[float]) -> None:
    while True:
        into.append(scrape(metrics)["duet_sessions_open"])
        await asyncio.sleep(2.0)


async def run(args: argparse.Namespace, server: str, metrics: str) -> dict[str, Any]:
    wav = DATA / f"{args.call}.wav"
    results: dict[str, Any] = {"alone": [], "hostile": []}
    plan = ["alone", "hostile"] * args.repeats + ["alone"]  # alone before and after: the machine's drift shows
    await healthy_call(server, ROOT / "perf" / "data" / "samples" / "demo_user.wav")  # warm-up (caches, first calls)
    for phase in plan:
        if phase == "alone":
            results["alone"].append(await healthy_calls(server, wav, args.healthy))
            print(f"alone: {results['alone'][-1]}", flush=True)
            continue
        before = scrape(metrics)
        # The hostile clients run in their own process, at a lower CPU priority: on one machine they stand for
        # clients elsewhere, whose own work is not the server's load (nor the healthy client's).
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--hostile-worker",
            "--server",
            server,
            "--hostile",
            str(args.hostile),
            "--call",
            args.call,
            "--kinds",
            args.kinds,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=lambda: os.nice(10),
        )
        await asyncio.sleep(args.warmup)  # the hostile streams are all going before the call starts
        samples: list[float] = []
        sampler = asyncio.create_task(sample_open(metrics, samples), name="open-sessions-sampler")
        call = await healthy_calls(server, wav, args.healthy)
        sampler.cancel()
        assert worker.stdin is not None
        worker.stdin.close()  # the worker's signal to stop
        out, _ = await worker.communicate()
        tally = json.loads(out.decode().strip().splitlines()[-1])
        left = await sessions_left(metrics, within_s=60.0)
        after = scrape(metrics)
        call.update(
            {
                "open_sessions_during": {"min": min(samples), "max": max(samples), "samples": len(samples)},
                "sessions_left_after": left,
                "hostile_opened": tally["opened"],
                "hostile_outcomes": tally["outcomes"],
                "hostile_notices": tally["notices"],
                "server_refusals": delta(after, before, "duet_refusals_total"),
                "server_ended": delta(after, before, "duet_sessions_ended_total"),
                "server_drops": delta(after, before, "duet_drops_total"),
                "server_paced_sessions": delta(after, before, "duet_paced_sessions_total"),
                "server_pacing_wait_s": delta(after, before, "duet_pacing_delay_seconds_total"),
                "server_loop_lag_mean_s": loop_lag(before, after),
            }
        )
        results["hostile"].append(call)
        print(f"hostile: {json.dumps(call)}", flush=True)
    for phase in ("alone", "hostile"):
        runs = results[phase]
        results[f"{phase}_summary"] = {
            "wall": summary([x for r in runs for x in r["wall_s"]]),
            "audio_clock": summary([x for r in runs for x in r["audio_clock_s"]]),
        }
    return results


def table(res: dict[str, Any], hostile: int, n: int = 1) -> str:
    a, h = res["alone_summary"]["wall"], res["hostile_summary"]["wall"]
    ac, hc = res["alone_summary"]["audio_clock"], res["hostile_summary"]["audio_clock"]
    ratio = h["median_s"] / a["median_s"] if a.get("median_s") else math.nan
    rows = [
        "| healthy calls | turns answered | wall median s | wall p90 s | wall max s | audio-clock median s |",
        "|---|---|---|---|---|---|",
        f"| {n} alone | {a['answered']}/{a['turns']} | {a['median_s']} | {a['p90_s']} | {a['max_s']} "
        f"| {ac['median_s']} |",
        f"| {n} beside {hostile} hostile streams | {h['answered']}/{h['turns']} | {h['median_s']} | {h['p90_s']} "
        f"| {h['max_s']} | {hc['median_s']} |",
        "",
        f"median with hostile streams / alone: {ratio:.2f} (target ≤ 1.20); "
        f"sessions left open after: {[r['sessions_left_after'] for r in res['hostile']]}; healthy calls' errors: "
        f"alone {[e for r in res['alone'] for e in r['errors']]}, "
        f"beside {[e for r in res['hostile'] for e in r['errors']]}",
    ]
    return "\n".join(rows)


async def hostile_worker(args: argparse.Namespace) -> None:
    """`--hostile-worker`: run the hostile streams until stdin closes, then print the tally as one JSON line."""
    speech = read_pcm16(DATA / f"{args.call}.wav")
    kinds = args.kinds.split(",")
    stop = asyncio.Event()
    tally = Tally()
    tasks = [
        asyncio.create_task(
            hostile(kinds[i % len(kinds)], i, args.server, speech, stop, tally),
            name=f"hostile-{kinds[i % len(kinds)]}-{i}",
        )
        for i in range(args.hostile)
    ]
    await asyncio.to_thread(sys.stdin.read)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    report = {
        "opened": dict(tally.opened),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "notices": dict(sorted(tally.notices.items())),
    }
    print(json.dumps(report), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hostile", type=int, default=50)
    ap.add_argument("--call", default="check/001", help="a recorded user under perf/data/conversations")
    ap.add_argument("--healthy", type=int, default=1, help="healthy calls at once (the same recording)")
    ap.add_argument("--repeats", type=int, default=1, help="alone/hostile pairs (then alone once more)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of hostile traffic before the call")
    ap.add_argument("--out", default=str(ROOT / "perf" / "out" / "isolation.json"))
    ap.add_argument("--server-log", default="", help="write the server's log to this file")
    ap.add_argument("--env", action="append", default=[], metavar="DUET_X=V", help="a setting for the server")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"hostile kinds, in equal shares (of {','.join(KINDS)})")
    ap.add_argument("--hostile-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.hostile_worker:
        asyncio.run(hostile_worker(args))
        return 0
    env = {"DUET_SERVER__IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S), **dict(kv.split("=", 1) for kv in args.env)}
    procs, server, metrics = start_stack(env, args.server_log)
    try:
        res = asyncio.run(run(args, server, metrics))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    res["args"] = vars(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(table(res, args.hostile, args.healthy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
