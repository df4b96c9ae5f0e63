"""How many simultaneous conversations one machine carries in real time, and what a session-hour costs.

N simulated users (recorded conversation files from perf/data/conversations, streamed at real time through
the SDK) talk to one `duet serve` at once, for N = 1, 2, 3, ... Two mixes (`--mix`):

- `full` (the default; the real mix of issue 17): each user joins a conversation made through the REST API
  (a tenant from `duet admin tenant create`, the documents of perf/data/knowledge, a persona answering from
  them with the default persona's prompt and limits), streams the recorded voice at real time **and** camera
  frames (`--camera-fps`, 10 by default: the shipped portrait, faces/astronaut.png, moving as a head does, made
  deterministically), with perception on, and receives the replica's face (`video=true`, the server's size and
  rate unless `--option video.size=...`).
- `audio`: the voice alone, naming the default persona, exactly like `duet talk` (the first version of this
  benchmark; its old table is in docs/capacity.md).

Per level: response latency p50/p95 (true end of user speech → first replica audio on the session timeline),
the floor's decision time p95 (`compute_ms`), and for `full` the replica's video frames received against those
the session clock called for (fps achieved), the frames the renderer skipped to stay on time (`video_stats`),
the server's `duet_drops_total` by kind (from the orchestrator's metrics endpoint), and how many `knowledge`
and visual `perception` events the sessions got (the mix really ran). Where the time went: Triton's own
per-model queue and compute time over the level, from its Prometheus metrics.

A level is **within target** when the floor keeps up (p95 `compute_ms` under 250 ms), the p95 response is
under 1 s, every turn was answered without errors, and (`full`) at least 90 % of the expected face frames
arrived. Nothing is dropped from the count: a labelled user turn with no reply before the next one is
**unanswered** and counts in the percentiles as an infinitely late reply; a session that failed counts every
turn of its file as unanswered (and as a failed session).

The cost model turns the largest N within target into a cost per session-hour for the machine types of
`MACHINES` (prices are assumptions, dated, unless given with `--price NAME=USD_PER_HOUR`); the run's N stands
for `--machine` (this machine's type), other types need `--sessions NAME=N` from a run on them.

    .venv/bin/python perf/session_load.py [--mix full|audio] [--levels 1,2,3,4,6] [--split dev]
        [--camera-fps 10] [--option KEY=VALUE ...] [--no-warmup] [--out perf/out/session_load.json] [--keep DIR]
        [--machine cpu-2vcpu] [--price NAME=USD_PER_HOUR ...] [--sessions NAME=N ...]
    .venv/bin/python perf/session_load.py --report perf/out/session_load.json [--price ...]   # tables again
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients"))

from duet.sdk import VideoFrame, connect  # noqa: E402
from duet.talk import talk  # noqa: E402
from duet.wav import CHUNK_SAMPLES, SAMPLE_RATE, chunks, read_pcm16  # noqa: E402
from orchestrator.models.launcher import free_port  # noqa: E402

DATA = ROOT / "perf" / "data" / "conversations"
KNOWLEDGE = ROOT / "perf" / "data" / "knowledge"
KNOWLEDGE_FILES = ("clinic_policies.md", "telecom_billing.html", "onboarding_handbook.txt")
PORTRAIT = ROOT / "faces" / "astronaut.png"
METRIC = re.compile(r'^(nv_inference_(?:queue|compute_infer)_duration_us|nv_inference_request_success)\{model="(\w+)"')
DROPS = re.compile(r'^duet_drops_total\{kind="([^"]+)"\}\s+(\S+)')
CONTROL_PLANE = re.compile(r"control plane\b.*? on (http://\S+?)/v1")  # what `duet serve` logs at start
OWN_METRICS = re.compile(r"duet metrics on (http://\S+)")
MIXES = ("full", "audio")
RT_COMPUTE_MS = 250.0
TARGET_P95_S = 1.0
VIDEO_MIN_RATIO = 0.9  # a face that delivers fewer frames than this share of the session clock's is not live
STAGGER_S = 0.37  # users don't all start on the same sample
CAMERA_SIZE = (640, 480)


# ---------------------------------------------------------------------------------------------- cost model
@dataclass(frozen=True)
class Machine:
    name: str
    usd_per_hour: float
    what: str


PRICES_ASSUMED_ON = "2026-12-06"
# ASSUMPTIONS, not quotes: round on-demand list-price ballparks as of PRICES_ASSUMED_ON, for the order of
# magnitude only. Pass `--price NAME=USD_PER_HOUR` with what you pay.
MACHINES = (
    Machine("cpu-2vcpu", 0.10, "a 2-vCPU general-purpose VM, no GPU (the class of the machine measured here)"),
    Machine("gpu-h100-x1", 3.00, "one H100 80 GB GPU with its share of host CPUs (one-GPU cloud node)"),
)


def cost_per_session_hour(usd_per_hour: float, sessions: int) -> float | None:
    """A machine's hourly price shared by the sessions it carries at once within target; None when it
    carries none (no session-hour is ever delivered within target, so there is no price for one)."""
    if usd_per_hour < 0:
        raise ValueError(f"a price cannot be negative: {usd_per_hour}")
    if sessions <= 0:
        return None
    return usd_per_hour / sessions


def cost_rows(
    machines: Sequence[Machine],
    prices: Mapping[str, float],
    sessions: Mapping[str, int],
    measured: str,
) -> list[dict[str, Any]]:
    """One row per machine type: its price (given, or the dated assumption), its sessions within target
    (`measured` by this run, `given`, or unknown) and the cost per session-hour, with a sentence when there is
    none."""
    rows = []
    for m in machines:
        price = prices.get(m.name, m.usd_per_hour)
        price_source = "given" if m.name in prices else f"assumed ({PRICES_ASSUMED_ON})"
        n = sessions.get(m.name)
        source = "not measured" if n is None else ("measured" if m.name == measured else "given")
        cost = None if n is None else cost_per_session_hour(price, n)
        if n is None:
            note = "no measurement: pass --sessions NAME=N from a run on this machine type"
        elif cost is None:
            note = "0 sessions within target: this machine type carries none, so no cost per session-hour"
        else:
            note = ""
        rows.append(
            {
                "machine": m.name,
                "what": m.what,
                "usd_per_hour": price,
                "price": price_source,
                "sessions_within_target": n,
                "sessions": source,
                "usd_per_session_hour": None if cost is None else round(cost, 4),
                "note": note,
            }
        )
    return rows


def parse_pairs(raw: Iterable[str], cast: Callable[[str], Any], known: Iterable[str]) -> dict[str, Any]:
    """`NAME=VALUE` options for the machine table; an unknown name or a bad value is an error."""
    names = set(known)
    out: dict[str, Any] = {}
    for item in raw:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"{item!r}: need NAME=VALUE with NAME one of {', '.join(sorted(names))}")
        out[name] = cast(value)
    return out


def session_options(raw: Iterable[str]) -> dict[str, str]:
    """`--option KEY=VALUE` session options (the server validates them at the first session's start)."""
    out = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r}: need KEY=VALUE")
        out[key] = value
    return out


# -------------------------------------------------------------------------------------- per-level accounting
def scrape(metrics_url: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for line in urllib.request.urlopen(metrics_url, timeout=5).read().decode().splitlines():
        if m := METRIC.match(line):
            key = (m.group(2), m.group(1))
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def triton_breakdown(
    before: Mapping[tuple[str, str], float], after: Mapping[tuple[str, str], float]
) -> dict[str, dict[str, float]]:
    """Per model that served requests over the level: requests, and Triton's queue and compute time (ms,
    summed over the requests)."""
    per_model: dict[str, dict[str, float]] = {}
    for (model, name), value in after.items():
        per_model.setdefault(model, {})[name] = value - before.get((model, name), 0.0)
    return {
        m: {
            "requests": int(v.get("nv_inference_request_success", 0)),
            "queue_ms": round(v.get("nv_inference_queue_duration_us", 0) / 1000, 1),
            "compute_ms": round(v.get("nv_inference_compute_infer_duration_us", 0) / 1000, 1),
        }
        for m, v in sorted(per_model.items())
        if v.get("nv_inference_request_success", 0) > 0
    }


def drops_by_kind(metrics_text: str) -> dict[str, float]:
    """`duet_drops_total{kind}` from the orchestrator's Prometheus text."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if m := DROPS.match(line):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def counter_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
    return {k: round(v - before.get(k, 0.0)) for k, v in sorted(after.items()) if v - before.get(k, 0.0) > 0}


def response_latencies(label: dict[str, Any], events: list[dict[str, Any]]) -> list[float | None]:
    """Per labelled user turn: seconds from its end to the next replica start (before the next turn), or
    None when the turn went unanswered."""
    starts = sorted(float(e["t"]) for e in events if e["type"] == "replica_speaking_start")
    turns = sorted(label["turns"], key=lambda x: x["start"])
    out: list[float | None] = []
    for i, turn in enumerate(turns):
        nxt = turns[i + 1]["start"] if i + 1 < len(turns) else float("inf")
        after = [s for s in starts if turn["end"] - 0.3 <= s < nxt]
        out.append(after[0] - turn["end"] if after else None)
    return out


def latency_summary(latencies: list[float | None]) -> dict[str, Any]:
    """Answered and unanswered turns, and percentiles with each unanswered turn as an infinitely late reply
    (so a p95 is finite only if at most 5 % of the turns went unanswered)."""
    values = [math.inf if x is None else x for x in latencies]

    def pct(q: float) -> float | None:
        if not values:
            return None
        v = float(np.percentile(values, q, method="higher"))
        return v if math.isinf(v) else round(v, 3)

    return {
        "turns": len(latencies),
        "replies": sum(x is not None for x in latencies),
        "unanswered": sum(x is None for x in latencies),
        "response_p50_s": pct(50),
        "response_p95_s": pct(95),
    }


@dataclass
class SessionLog:
    """What one simulated user saw: every event, and the (t, index) of each replica video frame."""

    duration_s: float  # the input's length: the session clock runs on the user's audio
    events: list[dict[str, Any]] = field(default_factory=list)
    frames: list[tuple[float, int]] = field(default_factory=list)
    failure: str | None = None


def video_accounting(frames: Sequence[tuple[float, int]], fps: float, duration_s: float) -> dict[str, int]:
    """One session's face: the frames its clock called for over `duration_s` at `fps`, and how many distinct
    ones of those arrived (a missing index is a frame the server dropped or never rendered)."""
    expected = math.ceil(duration_s * fps - 1e-9) if fps > 0 else 0
    received = len({i for t, i in frames if 0 <= i < expected and t < duration_s + 1e-6})
    return {"expected": expected, "received": received, "missing": expected - received}


def video_summary(logs: Sequence[SessionLog]) -> dict[str, Any]:
    """The level's face video: frames expected and received over all sessions, the frame rate achieved per
    session-second against the one promised (`video_started.fps`), and the frames the renderers skipped to stay
    on time (their `video_stats.dropped`). A session whose video never started (it failed first) is held to the
    rate the others were promised: all its frames are missing."""
    promised = [float(e["fps"]) for log in logs for e in log.events if e.get("type") == "video_started"]
    level_fps = max(promised, default=0.0)
    expected = received = skipped = 0
    seconds = 0.0
    for log in logs:
        fps = next((float(e["fps"]) for e in log.events if e.get("type") == "video_started"), level_fps)
        stats = [e for e in log.events if e.get("type") == "video_stats"]
        skipped += int(stats[-1].get("dropped", 0)) if stats else 0
        a = video_accounting(log.frames, fps, log.duration_s)
        expected += a["expected"]
        received += a["received"]
        seconds += log.duration_s
    return {
        "fps": level_fps or None,
        "expected": expected,
        "received": received,
        "missing": expected - received,
        "fps_achieved": round(received / seconds, 2) if seconds > 0 else None,
        "received_ratio": round(received / expected, 3) if expected else None,
        "renderer_skipped": skipped,
    }


def level_row(
    n: int, wall_s: float, logs: Sequence[SessionLog], labels: Sequence[dict[str, Any]], *, video: bool
) -> dict[str, Any]:
    """A level's row from its sessions' logs and the label files they streamed."""
    compute = [float(e["compute_ms"]) for log in logs for e in log.events if "compute_ms" in e]
    latency: list[float | None] = []
    for log, label in zip(logs, labels, strict=True):
        latency += [None] * len(label["turns"]) if log.failure else response_latencies(label, log.events)
    row: dict[str, Any] = {
        "sessions": n,
        "wall_s": round(wall_s, 1),
        "compute_ms_p95": round(float(np.percentile(compute, 95)), 1) if compute else None,
        **latency_summary(latency),
        "errors": sum(1 for log in logs for e in log.events if e.get("type") == "error"),
        "failed_sessions": sum(1 for log in logs if log.failure),
        "failures": sorted({log.failure for log in logs if log.failure}),
    }
    if video:
        row["video"] = video_summary(logs)
        row["knowledge_events"] = sum(1 for log in logs for e in log.events if e.get("type") == "knowledge")
        row["visual_perception_events"] = sum(
            1 for log in logs for e in log.events if e.get("type") == "perception" and e.get("modality") == "visual"
        )
    return row


def within_target(row: dict[str, Any]) -> bool:
    """Real-time floor, p95 response under target, every turn answered without errors, and (with video) the
    face delivering at least VIDEO_MIN_RATIO of its frames."""
    video = row.get("video")
    return bool(
        row["compute_ms_p95"] is not None
        and row["compute_ms_p95"] < RT_COMPUTE_MS
        and row["response_p95_s"] is not None
        and row["response_p95_s"] < TARGET_P95_S
        and row["unanswered"] == 0
        and row["failed_sessions"] == 0
        and row["errors"] == 0
        and (video is None or (video["received_ratio"] is not None and video["received_ratio"] >= VIDEO_MIN_RATIO))
    )


# ------------------------------------------------------------------------------------------------ the camera
def camera_frames(duration_s: float, fps: float, portrait: Any = None) -> list[tuple[float, bytes]]:
    """(t, jpeg) camera frames of a user facing the camera for `duration_s`: the portrait on a grey 640x480
    frame, swaying, nodding and leaning as a head does (slow sines, so every run sends the same bytes)."""
    from PIL import Image

    if portrait is None:
        portrait = load_portrait()
    face = Image.fromarray(np.ascontiguousarray(portrait, dtype=np.uint8)).convert("RGB")
    w, h = CAMERA_SIZE
    out = []
    for k in range(max(int(duration_s * fps), 1)):
        t = k / fps
        scale = 1.0 + 0.05 * math.sin(2 * math.pi * t / 5.0)
        side = round(0.9 * h * scale)
        dx = round(24 * math.sin(2 * math.pi * t / 3.0))
        dy = round(10 * math.sin(2 * math.pi * t / 4.3))
        frame = Image.new("RGB", (w, h), (118, 118, 118))
        frame.paste(face.resize((side, side), Image.Resampling.BILINEAR), ((w - side) // 2 + dx, (h - side) // 2 + dy))
        buf = io.BytesIO()
        frame.save(buf, format="JPEG", quality=80)
        out.append((round(t, 4), buf.getvalue()))
    return out


def load_portrait() -> Any:
    """faces/astronaut.png (set up by scripts/bootstrap.sh), or the same photo from scikit-image."""
    if PORTRAIT.is_file():
        from PIL import Image

        with Image.open(PORTRAIT) as im:
            return np.asarray(im.convert("RGB"))
    import skimage.data

    photo: Callable[[], Any] = skimage.data.astronaut  # (untyped package)
    return photo()


# ---------------------------------------------------------------------------------------------- the users
async def camera_call(
    server: str,
    pcm: bytes,
    frames: Sequence[tuple[float, bytes]],
    conversation: Mapping[str, Any],
    options: Mapping[str, str],
    log: SessionLog,
) -> None:
    """One user with a camera in a conversation: 20 ms voice chunks at real time, camera frames sent when
    the audio clock reaches them, every event and replica video frame recorded in `log`."""
    audio = chunks(pcm)
    join = conversation["join"]
    async with connect(
        server, conversation_id=conversation["conversation_id"], token=join["token"], options=options
    ) as session:

        async def send() -> None:
            t0 = time.perf_counter()
            v = 0
            for a, chunk in enumerate(audio):
                t_audio = a * CHUNK_SAMPLES / SAMPLE_RATE
                while v < len(frames) and frames[v][0] <= t_audio:
                    await session.send_video(frames[v][1], frames[v][0])
                    v += 1
                if (delay := t0 + t_audio - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                await session.send_audio(chunk)
            await session.end()

        sender = asyncio.create_task(send(), name="load-user-send-media")
        try:
            async for item in session.items():
                if isinstance(item, VideoFrame):
                    log.frames.append((item.t, item.index))
                elif isinstance(item, dict):
                    log.events.append(item)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        if not sender.cancelled() and (exc := sender.exception()) is not None:
            raise exc


@dataclass
class Mix:
    """What each simulated user does: `audio` (`duet talk` naming a persona) or `full` (camera, face video,
    perception, a conversation with documents)."""

    name: str
    server: str
    options: dict[str, str]
    camera: list[tuple[float, bytes]] = field(default_factory=list)
    new_conversation: Callable[[], Any] | None = None  # async () -> conversation (full)

    async def user(self, i: int, wav: Path, workdir: Path, log: SessionLog) -> None:
        await asyncio.sleep(STAGGER_S * i)
        try:
            if self.name == "audio":
                await talk(wav, self.server, workdir / f"u{i}", options=self.options, on_event=log.events.append)
                return
            assert self.new_conversation is not None
            conversation = await self.new_conversation()
            await camera_call(self.server, read_pcm16(wav), self.camera, conversation, self.options, log)
        except Exception as exc:  # a failed session counts against the level; the others go on
            log.failure = f"{type(exc).__name__}: {exc}"
        finally:
            if self.name == "full":
                folder = workdir / f"u{i}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log.events))


async def one_level(n: int, files: list[Path], mix: Mix, workdir: Path) -> dict[str, Any]:
    picks = [files[i % len(files)] for i in range(n)]
    logs = [SessionLog(duration_s=len(read_pcm16(wav)) / 2 / SAMPLE_RATE) for wav in picks]
    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i, wav in enumerate(picks):
            tg.create_task(mix.user(i, wav, workdir / f"n{n}", logs[i]), name=f"load-user-{i}")
    wall = time.perf_counter() - t0
    labels = [json.loads(wav.with_suffix(".json").read_text()) for wav in picks]
    return level_row(n, wall, logs, labels, video=mix.name == "full")


# ---------------------------------------------------------------------------------------------- the stack
@dataclass
class Stack:
    procs: list[subprocess.Popen[str]]
    server: str
    triton_metrics: str
    http_url: str
    metrics_url: str  # the orchestrator's own
    env: dict[str, str]
    lines: collections.deque[str]


def start_stack(store: Path) -> Stack:
    """A tritonserver with every model, and `duet serve` on it with its control plane on a free port and a
    store of its own; the server's output is read all the time (a full pipe would stall it)."""
    tri = subprocess.Popen(
        [sys.executable, str(ROOT / "perf" / "triton_up.py")], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert tri.stdout is not None
    grpc_url, metrics_url = tri.stdout.readline().split()
    port = free_port()
    env = dict(os.environ, DUET_TRITON__URL=grpc_url, DUET_API__HTTP_PORT="0", DUET_STORE__URL=str(store))
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "duet"), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert serve.stdout is not None
    lines: collections.deque[str] = collections.deque(maxlen=200)
    http_url = own_metrics = ""
    while "serving sessions on" not in (line := serve.stdout.readline()):
        lines.append(line.rstrip("\n"))
        if serve.poll() is not None:
            tri.terminate()
            raise RuntimeError("duet serve exited:\n" + "\n".join(lines))
        if m := CONTROL_PLANE.search(line):
            http_url = m.group(1)
        if m := OWN_METRICS.search(line):
            own_metrics = m.group(1)

    def drain() -> None:
        assert serve.stdout is not None
        for rest in serve.stdout:
            lines.append(rest.rstrip("\n"))

    threading.Thread(target=drain, name="duet-serve-log", daemon=True).start()
    return Stack([serve, tri], f"127.0.0.1:{port}", metrics_url, http_url, own_metrics, env, lines)


@contextlib.contextmanager
def stack_running(prefix: str) -> Iterator[Stack]:
    """`start_stack` on a throwaway store; the server's last output is printed if the block fails, and every
    process is stopped after it."""
    with tempfile.TemporaryDirectory(prefix=prefix) as store:
        stack = start_stack(Path(store) / "duet.db")
        try:
            yield stack
        except BaseException:
            print("\n".join(list(stack.lines)[-40:]), file=sys.stderr)
            raise
        finally:
            for p in stack.procs:
                p.terminate()
                p.wait(timeout=30)


def read_drops(url: str) -> dict[str, float]:
    return drops_by_kind(urllib.request.urlopen(url, timeout=5).read().decode()) if url else {}


async def create_tenant(stack: Stack, name: str, max_concurrent: int) -> str:
    """A tenant made as an operator makes one (`duet admin tenant create`, on the stack's store); its API key."""
    if not stack.http_url:
        raise RuntimeError("duet serve did not log its control plane's address:\n" + "\n".join(stack.lines))
    done = await asyncio.to_thread(
        subprocess.run,
        [
            str(Path(sys.executable).parent / "duet"),
            "admin",
            "tenant",
            "create",
            name,
            "--max-concurrent",
            str(max_concurrent),
        ],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"duet admin tenant create failed: {done.stderr[-2000:]}")
    return str(json.loads(done.stdout)["api_key"])


async def default_persona(stack: Stack, tenant: str, max_concurrent: int, *, knowledge: bool) -> tuple[str, str]:
    """A tenant (as an operator makes one) and a persona with the default persona's prompt, voice and limits;
    with `knowledge`, it also answers from the knowledge documents and perceives. Returns (api key, persona id)."""
    import yaml

    import duet

    key = await create_tenant(stack, tenant, max_concurrent)
    base = yaml.safe_load((ROOT / "personas" / "default.yaml").read_text())
    body: dict[str, Any] = {
        "name": "Load test (default persona + knowledge)" if knowledge else "Default persona",
        "system_prompt": base["system_prompt"],
        "voice": base["voice"],
        "layers": {
            "llm": {
                "speculation": bool(base.get("speculation", True)),
                "max_tokens": int(base["max_tokens"]),
                "max_sentences": int(base["max_sentences"]),
                "temperature": float(base["temperature"]),
            }
        },
    }
    async with duet.Client(stack.http_url, key) as api:
        if knowledge:
            docs = [await api.create_document(path=KNOWLEDGE / name) for name in KNOWLEDGE_FILES]
            for d in docs:
                await api.wait_document(d["document_id"])
            body["document_ids"] = [d["document_id"] for d in docs]
            body["layers"]["perception"] = {"enabled": True}
        persona = await api.create_persona(body)
    return key, persona["persona_id"]


async def run_levels(
    stack: Stack, mix_name: str, levels: list[int], files: list[Path], options: dict[str, str], args: Any
) -> list[dict[str, Any]]:
    import duet

    mix = Mix(mix_name, stack.server, dict(options))
    rows: list[dict[str, Any]] = []
    api: Any = None
    try:
        if mix_name == "full":
            mix.options = {"video": "true", "perception": "true", **options}
            longest = max(len(read_pcm16(f)) / 2 / SAMPLE_RATE for f in files)
            mix.camera = await asyncio.to_thread(camera_frames, longest + 1.0, args.camera_fps)
            key, persona_id = await default_persona(stack, "load", 1000, knowledge=True)
            api = duet.Client(stack.http_url, key)
            await api.__aenter__()

            async def new_conversation() -> Any:
                return await api.create_conversation(persona_id)

            mix.new_conversation = new_conversation
        with contextlib.ExitStack() as scope:
            # each session's outputs (events.jsonl; the audio mix's reply.wav): kept in --keep, else thrown away
            tmp = args.keep or scope.enter_context(tempfile.TemporaryDirectory(prefix="duet-load-"))
            if args.warmup:  # one unmeasured session: first-use costs (caches, a cold LLM context) are not load
                warm = await one_level(1, files, mix, Path(tmp) / "warmup")
                print(json.dumps({"warmup": {k: warm[k] for k in ("replies", "turns", "failures")}}), flush=True)
            for n in levels:
                before = await asyncio.to_thread(scrape, stack.triton_metrics)
                drops_before = await asyncio.to_thread(read_drops, stack.metrics_url)
                row = await one_level(n, files, mix, Path(tmp))
                after = await asyncio.to_thread(scrape, stack.triton_metrics)
                drops_after = await asyncio.to_thread(read_drops, stack.metrics_url)
                row["mix"] = mix_name
                row["drops"] = counter_delta(drops_before, drops_after)
                row["triton"] = triton_breakdown(before, after)
                row["ok"] = within_target(row)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "triton"}), flush=True)
    finally:
        if api is not None:
            await api.__aexit__(None, None, None)
    return rows


# ---------------------------------------------------------------------------------------------- the report
def fmt_s(x: float | None) -> str:
    return "-" if x is None else ("∞" if math.isinf(x) else f"{x:.2f} s")


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:g} ms"


def print_report(result: Mapping[str, Any], prices: Mapping[str, float], sessions: Mapping[str, int]) -> None:
    rows = result["levels"]
    best = result["largest_n"]
    video = any("video" in r for r in rows)
    head = "| sessions | response p50 | p95 | floor compute p95 | answered | unanswered | failed sessions | errors "
    if video:
        head += "| face frames received / expected (fps achieved of promised) | renderer skipped | duet_drops_total "
        head += "| knowledge events | visual perception events "
    print(f"\nmix: {result['mix']}\n\n{head}| within target |")
    print("|---" * (head.count("|") + 1) + "|")
    for r in rows:
        line = (
            f"| {r['sessions']} | {fmt_s(r['response_p50_s'])} | {fmt_s(r['response_p95_s'])} "
            f"| {fmt_ms(r['compute_ms_p95'])} | {r['replies']}/{r['turns']} | {r['unanswered']} "
            f"| {r['failed_sessions']} | {r['errors']} "
        )
        if video:
            v = r["video"]
            drops = ", ".join(f"{k} {n}" for k, n in r["drops"].items()) or "0"
            line += (
                f"| {v['received']}/{v['expected']} ({v['fps_achieved']} of {v['fps']} fps) | {v['renderer_skipped']} "
                f"| {drops} | {r['knowledge_events']} | {r['visual_perception_events']} "
            )
        print(line + f"| {'yes' if r['ok'] else 'no'} |")
    print("(p50/p95 count each unanswered turn as an infinitely late reply)")
    print(f"\nlargest N within target (p95 response < {TARGET_P95_S:.0f} s, real-time floor): {best}")
    for r in rows:
        print(f"\nwhere the time went at N={r['sessions']} (Triton, summed over the level's {r['wall_s']} s):")
        print("| model | requests | queue ms | compute ms |\n|---|---|---|---|")
        for m, t in r["triton"].items():
            print(f"| {m} | {t['requests']} | {t['queue_ms']} | {t['compute_ms']} |")
    measured = result["machine"]
    costs = cost_rows(MACHINES, prices, {**sessions, measured: best}, measured)
    print(f"\ncost per session-hour (this run's N stands for {measured}; prices assumed unless given):")
    print("| machine | $/hour | price | sessions within target | sessions | $/session-hour |")
    print("|---|---|---|---|---|---|")
    for c in costs:
        cost = c["usd_per_session_hour"]
        print(
            f"| {c['machine']} | {c['usd_per_hour']:.2f} | {c['price']} | "
            f"{'-' if c['sessions_within_target'] is None else c['sessions_within_target']} | {c['sessions']} | "
            f"{'-' if cost is None else f'{cost:.4f}'} |"
        )
    for c in costs:
        if c["note"]:
            print(f"- {c['machine']}: {c['note']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--mix", choices=MIXES, default="full")
    ap.add_argument("--levels", default="1,2,3,4,6")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--camera-fps", type=float, default=10.0, help="camera frames per second each user sends (full)")
    ap.add_argument("--option", action="append", default=[], help="a session option KEY=VALUE (repeatable)")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the unmeasured first session")
    ap.add_argument("--out", default=str(ROOT / "perf" / "out" / "session_load.json"))
    ap.add_argument("--keep", default="", help="keep each session's events in this folder (LEVEL/USER/)")
    ap.add_argument("--machine", default=MACHINES[0].name, choices=[m.name for m in MACHINES])
    ap.add_argument("--price", action="append", default=[], help="NAME=USD_PER_HOUR (instead of the assumption)")
    ap.add_argument("--sessions", action="append", default=[], help="NAME=N measured on another machine type")
    ap.add_argument("--report", default="", help="print the tables of a saved run (its --out) instead of running")
    args = ap.parse_args(argv)
    names = [m.name for m in MACHINES]
    try:
        prices = parse_pairs(args.price, float, names)
        sessions = parse_pairs(args.sessions, int, names)
        options = session_options(args.option)
    except ValueError as exc:
        ap.error(str(exc))
    if args.report:
        print_report(json.loads(Path(args.report).read_text()), prices, sessions)
        return 0
    if not 0.5 <= args.camera_fps <= 30:
        ap.error("--camera-fps must be within 0.5..30")
    files = sorted((DATA / args.split).glob("*.wav"))
    if not files:
        print(f"no conversation files in {DATA / args.split}", file=sys.stderr)
        return 2
    levels = [int(x) for x in args.levels.split(",")]
    with stack_running("duet-load-store-") as stack:
        rows = asyncio.run(run_levels(stack, args.mix, levels, files, options, args))
    result = {
        "mix": args.mix,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "cpus": os.cpu_count(),
        "machine": args.machine,
        "camera_fps": args.camera_fps if args.mix == "full" else None,
        "options": options,
        "warmup": args.warmup,
        "levels": rows,
        "largest_n": max((r["sessions"] for r in rows if r["ok"]), default=0),
    }
    print_report(result, prices, sessions)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
