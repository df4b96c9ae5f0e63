"""Browser calls measured: response latency at the page against `duet talk` over gRPC on the same recordings,
lip sync as the browser shows it, and what a WebRTC call costs the server.

    .venv/bin/python perf/bench_webrtc.py                  # starts its own tritonserver and `duet serve`
    .venv/bin/python perf/bench_webrtc.py --calls 3 --size 384 --load-sizes 384,512 --load-counts 1,2,3

One `duet serve` (real Triton, real models, the face on), three transports on the same held-out recordings
(perf/data/conversations/check, 3 s of silence put first so every transport hears the first word):

1. **gRPC**: `duet talk --conversation --video` writes `reply.wav` on the session timeline. Latency per
   labelled user turn = first audible replica sample after the turn's labelled end (10 ms RMS windows).
2. **Browser**: headless Chromium (Debian's, Playwright) opens `conversation_url` with the recording as its
   fake microphone. The page's meters (`?measure=1`: an AudioWorklet on the microphone and on the replica's
   voice, one AudioContext, times at the audio output) give both envelopes on one clock; the microphone's is
   aligned to the file's by cross-correlation, so each labelled turn end is a page time, and latency is the
   first audible replica window after it, heard at the page's output.
3. **`duet call`** (the SDK's WebRTC client, aiortc): `reply.wav` holds the replica's audio at its arrival time
   on the microphone's timeline; latency as for gRPC.

Lip sync: the mouth's motion (mean luminance change in the mouth box per displayed frame) against the voice's
envelope, cross-correlated within ±400 ms: the lag of the best match. The same measure on the gRPC run's
`reply.mp4` (frames and voice on the session clock, exactly as rendered) is the renderer's own lag; what the
browser adds is the difference. The mouth box is found from the rendered frames (where the pixels move most
while the replica speaks), not from any one face's landmarks.

Cost: the server process's CPU seconds per second of call, gRPC (+face) against a browser call (+face, Opus,
VP8), and how many simultaneous `duet call` clients one machine carries with the face at each size (frames
dropped, video late, response latency).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "clients"))

import duet  # noqa: E402
from duet.talk import write_wav  # noqa: E402
from duet.wav import read_pcm16  # noqa: E402
from perf.bench_api import Server, Triton, admin, log, proc_cpu_s  # noqa: E402
from tests.browser import chromium, measured  # noqa: E402

DUET = str(Path(sys.executable).parent / "duet")
CHECK = ROOT / "perf" / "data" / "conversations" / "check"
LEAD_S = 3.0  # silence put before each recording
WIN_S = 0.01
LOUD = 0.02  # RMS (full scale 1.0) of a 10 ms window the listener hears as the replica speaking
FAST = {"llm": {"model": "smollm2-135m", "max_tokens": 40}}  # the sessions' timing, not their wording


# ---------------------------------------------------------------------------------------------- signals
def rms_windows(pcm: npt.NDArray[np.int16], rate: int = 16000) -> npt.NDArray[np.float64]:
    n = int(rate * WIN_S)
    x = pcm[: len(pcm) // n * n].astype(np.float64).reshape(-1, n) / 32768.0
    out: npt.NDArray[np.float64] = np.sqrt((x**2).mean(axis=1))
    return out


def read_wav(path: Path) -> npt.NDArray[np.int16]:
    return np.frombuffer(read_pcm16(path), dtype="<i2")


def onset_after(env: npt.NDArray[np.float64], t0: float, t1: float, lo: float = 0.0) -> float | None:
    """First time in [t0, t1) (seconds, `env` on a 10 ms grid starting at `lo`) where the voice is audible
    (two loud windows in a row)."""
    a, b = max(int((t0 - lo) / WIN_S), 0), min(int((t1 - lo) / WIN_S), len(env) - 1)
    loud = env[a:b] > LOUD
    hits = np.flatnonzero(loud[:-1] & loud[1:])
    return lo + (a + int(hits[0])) * WIN_S if hits.size else None


def latencies(reply_env: npt.NDArray[np.float64], turns: Sequence[dict[str, Any]], lo: float = 0.0) -> list[float]:
    """Per labelled turn: seconds from its end to the first audible replica sound before the next turn."""
    out = []
    for i, turn in enumerate(turns):
        end = turn["end"] + LEAD_S
        nxt = turns[i + 1]["start"] + LEAD_S if i + 1 < len(turns) else end + 15.0
        if (on := onset_after(reply_env, end, nxt, lo)) is not None:
            out.append(on - end)
    return out


def server_parts(
    events: Sequence[dict[str, Any]], turns: Sequence[dict[str, Any]], vad_s: float | None
) -> tuple[list[float], float]:
    """Per labelled turn, the server's own part of the latency: from the turn's end to the session time its reply
    started (`replica_speaking_start.t`), with the session clock placed on the file's by the VAD's `speech_end`
    events (which trail the labelled ends by `vad_s`, as measured on the gRPC run, whose session clock is the
    file's). Returns (parts, offset of the session clock in the file)."""
    ends = [e["t"] for e in events if e.get("type") == "speech_end"]
    starts = [e["t"] for e in events if e.get("type") == "replica_speaking_start"]
    labelled = [t["end"] + LEAD_S for t in turns]
    offset = 0.0
    if vad_s is not None and ends:
        best = (0.0, float("inf"))
        for shift in np.arange(0.0, 4.0, WIN_S):
            cost = sum(min(abs(x + shift - e - vad_s) for x in ends) for e in labelled)
            if cost < best[1]:
                best = (float(shift), cost)
        offset = best[0]
    parts = []
    for i, e in enumerate(labelled):
        nxt = turns[i + 1]["start"] + LEAD_S if i + 1 < len(turns) else e + 15.0
        after = [s + offset for s in starts if e <= s + offset < nxt]
        if after:
            parts.append(after[0] - e)
    return parts, offset


def vad_lag(events: Sequence[dict[str, Any]], turns: Sequence[dict[str, Any]]) -> float | None:
    """How long after a labelled end the VAD's `speech_end` comes, on a run whose session clock is the file's."""
    ends = [e["t"] for e in events if e.get("type") == "speech_end"]
    lags = [min((x - (t["end"] + LEAD_S) for x in ends), key=abs) for t in turns] if ends else []
    return float(np.median(lags)) if lags else None


def call_stats(server: Server, conversation_id: str) -> dict[str, Any]:
    """What the server logged of a browser call when it ended (the face's lateness, the voice's waits)."""
    for _ in range(40):
        for line in server.lines:
            if f"call {conversation_id} ended" in line:
                stats: dict[str, Any] = json.loads(line.split("): ", 1)[1])
                return stats
        time.sleep(0.25)
    return {}


def events_of(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines() if line.strip()]


def grid(points: Sequence[Sequence[float]], t0: float, t1: float) -> npt.NDArray[np.float64]:
    """[ms, value] samples as a 10 ms grid over [t0, t1) seconds (sample-and-hold)."""
    ts = np.array([p[0] / 1000 for p in points])
    vs = np.array([p[1] for p in points])
    at = np.arange(t0, t1, WIN_S)
    idx = np.clip(np.searchsorted(ts, at, side="right") - 1, 0, len(vs) - 1)
    return vs[idx] if len(vs) else np.zeros_like(at)


SYNC_MAX_S = 0.4  # lip-sync lags searched: ±400 ms


def lag_curve(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], max_s: float = SYNC_MAX_S) -> list[float]:
    """The correlation of `b` shifted against `a` for each lag from −max_s to +max_s (10 ms steps; positive:
    `b` comes later)."""
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    a = (a - a.mean()) / (a.std() + 1e-9)
    b = (b - b.mean()) / (b.std() + 1e-9)
    k = int(max_s / WIN_S)
    out = []
    for lag in range(-k, k + 1):
        x, y = (a[: len(a) - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: len(b) + lag])
        out.append(float(np.dot(x, y) / len(x)) if len(x) > 50 else -1.0)
    return out


def peak(curve: Sequence[float]) -> tuple[float, float]:
    k = (len(curve) - 1) // 2
    i = int(np.argmax(curve))
    return (i - k) * WIN_S, float(curve[i])


def pooled(curves: Sequence[Sequence[float]]) -> tuple[float, float]:
    """One lag for several calls: the peak of their summed correlation curves (a call alone is noisy)."""
    return peak(list(np.mean(np.array(curves), axis=0))) if curves else (0.0, -1.0)


def align(mic_points: Sequence[Sequence[float]], file_env: npt.NDArray[np.float64]) -> float:
    """Page time (s) of the recording's sample 0: the microphone's envelope matched to the file's."""
    t0 = mic_points[0][0] / 1000
    page = grid(mic_points, t0, mic_points[-1][0] / 1000)
    a, b = np.log(page + 1e-4), np.log(file_env + 1e-4)
    best = (0.0, -2.0)
    for lag in range(0, min(len(page), 1500)):  # the file starts within 15 s of the first meter reading
        n = min(len(b), len(page) - lag)
        if n < 300:
            break
        x, y = a[lag : lag + n], b[:n]
        c = float(np.corrcoef(x, y)[0, 1])
        if c > best[1]:
            best = (lag * WIN_S, c)
    return t0 + best[0]


def mouth_box(frames: Sequence[npt.NDArray[np.uint8]]) -> list[float]:
    """Where the face moves most while speaking: a box (fractions x, y, w, h) around the motion's centre."""
    stack = np.stack([f.mean(axis=2) for f in frames]).astype(np.float32)
    motion = np.abs(np.diff(stack, axis=0)).mean(axis=0)
    h, w = motion.shape
    top = motion > np.percentile(motion, 99)
    ys, xs = np.nonzero(top)
    cy, cx = float(np.median(ys)) / h, float(np.median(xs)) / w
    bw, bh = 0.24, 0.14
    return [min(max(cx - bw / 2, 0.0), 1 - bw), min(max(cy - bh / 2, 0.0), 1 - bh), bw, bh]


def box_motion(frames: Sequence[npt.NDArray[np.uint8]], box: Sequence[float]) -> npt.NDArray[np.float64]:
    h, w = frames[0].shape[:2]
    x, y, bw, bh = (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))
    lum = [f[y : y + bh, x : x + bw].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) for f in frames]
    return np.array([0.0] + [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(lum)])


def reference_sync(folder: Path) -> dict[str, Any]:
    """The renderer's own lip sync on the gRPC run's reply.mp4 (frames and voice on the session clock)."""
    import av

    frames, times = [], []
    with av.open(str(folder / "reply.mp4")) as c:
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.pts * f.time_base))
    reply = rms_windows(read_wav(folder / "reply.wav"))
    speaking = [i for i, t in enumerate(times) if int(t / WIN_S) < len(reply) and reply[int(t / WIN_S)] > LOUD]
    box = mouth_box([frames[i] for i in speaking[:400]] or frames[:400])
    motion = box_motion(frames, box)
    t1 = min(times[-1], len(reply) * WIN_S)
    video = grid([(t * 1000, m) for t, m in zip(times, motion, strict=False)], 0.0, t1)
    curve = lag_curve(reply[: len(video)], video)
    lag, corr = peak(curve)
    return {"box": box, "lag_ms": round(lag * 1000), "corr": round(corr, 2), "curve": curve}


def page_sync(data: dict[str, Any]) -> dict[str, Any]:
    frames, voice = data["frames"], data["levels"]["replica"]
    if len(frames) < 50 or len(voice) < 100:
        return {"lag_ms": None, "corr": None}
    t0 = max(frames[0][0], voice[0][0]) / 1000
    t1 = min(frames[-1][0], voice[-1][0]) / 1000
    curve = lag_curve(grid(voice, t0, t1), grid(frames, t0, t1))
    lag, corr = peak(curve)
    return {"lag_ms": round(lag * 1000), "corr": round(corr, 2), "curve": curve}


# ---------------------------------------------------------------------------------------------- the runs
class Stack:
    def __init__(self, server: Server, api_key: str) -> None:
        self.server = server
        self.api_key = api_key

    async def conversation(self) -> dict[str, Any]:
        async with duet.Client(self.server.http_url, self.api_key) as api:
            persona = await api.create_persona(template="billing", name="Bench", layers=FAST)
            return dict(await api.create_conversation(persona["persona_id"]))


def recording(name: str, folder: Path) -> tuple[Path, list[dict[str, Any]], npt.NDArray[np.float64]]:
    label = json.loads((CHECK / f"{name}.json").read_text())
    pcm = np.concatenate([np.zeros(int(LEAD_S * 16000), np.int16), read_wav(CHECK / f"{name}.wav")])
    path = folder / f"{name}.wav"
    write_wav(path, pcm)
    turns = [t for t in label["turns"] if t.get("kind", "turn") == "turn"]
    return path, turns, rms_windows(pcm)


async def run_cli(stack: Stack, command: str, audio: Path, out: Path) -> tuple[float, float]:
    """`duet talk` (gRPC, with the face) or `duet call` (WebRTC) joining a new conversation with `audio`:
    (server CPU seconds, wall seconds) it took."""
    conv = await stack.conversation()
    where = ["--server", stack.server.address, "--video"] if command == "talk" else ["--api-url", stack.server.http_url]
    cmd = [DUET, command, "--conversation", conv["conversation_id"], "--token", conv["join"]["token"]]
    cpu0, t0 = proc_cpu_s(stack.server.pid), time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *cmd, "--audio", str(audio), "--out", str(out), *where,
        env=stack.server.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"duet {command} failed: {err.decode()[-1500:]}")
    return proc_cpu_s(stack.server.pid) - cpu0, time.monotonic() - t0


async def run_browser(stack: Stack, audio: Path, seconds: float, box: Sequence[float] | None) -> dict[str, Any]:
    conv = await stack.conversation()
    async with chromium(audio) as browser:
        page = await browser.new_page()
        await page.goto(measured(conv["conversation_url"]))
        if box is not None:
            await page.evaluate(f"() => {{ window.duet.mouthBox = {json.dumps(list(box))}; }}")
        cpu0, t0 = proc_cpu_s(stack.server.pid), time.monotonic()
        await page.click("#join")
        samples = []
        end = time.monotonic() + seconds + 4.0
        while time.monotonic() < end:  # Chromium's own view of the call, once a second
            await asyncio.sleep(1.0)
            samples.append(await page.evaluate(SYNC_JS))
        data: dict[str, Any] = await page.evaluate(
            "() => ({levels: window.duet.levels, frames: window.duet.frames,"
            " events: window.duet.events.map(e => ({type: e.type, t: e.t, _at: e._at}))})"
        )
        data["chrome"] = [s for s in samples if s]
        data["jitter_ms"] = await page.evaluate(JITTER_JS)
        await page.click("#end")
        await asyncio.sleep(1.0)
        data["conversation_id"] = conv["conversation_id"]
        data["cpu_s"], data["wall_s"] = proc_cpu_s(stack.server.pid) - cpu0, time.monotonic() - t0
    return data


# The browser's own receive buffer for the replica's voice: WebRTC's jitter buffer delay per sample played.
JITTER_JS = """async () => {
    const stats = await window.duet.pc.getStats();
    for (const s of stats.values()) {
        if (s.type === "inbound-rtp" && s.kind === "audio" && s.jitterBufferEmittedCount) {
            return 1000 * s.jitterBufferDelay / s.jitterBufferEmittedCount;
        }
    }
    return null;
}"""


# Chromium's view of voice and face: the sender-clock (NTP) time of the content playing now on each
# (`estimatedPlayoutTimestamp`: video minus audio is how far the face runs ahead of the voice, by the RTCP
# sender reports, as Chromium lines them up), and how long its audio jitter buffer aims to hold the voice
# against the least it needs (the difference is what it adds to line the voice up with the face).
SYNC_JS = """async () => {
    const out = {};
    for (const s of (await window.duet.pc.getStats()).values()) {
        if (s.type === "inbound-rtp" && s.jitterBufferEmittedCount) {
            out[s.kind] = {
                playout: s.estimatedPlayoutTimestamp || null,
                target_ms: 1000 * (s.jitterBufferTargetDelay || 0) / s.jitterBufferEmittedCount,
                minimum_ms: 1000 * (s.jitterBufferMinimumDelay || 0) / s.jitterBufferEmittedCount,
            };
        }
    }
    return out.audio && out.video ? out : null;
}"""


def chrome_sync(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    pairs = [(s["video"]["playout"], s["audio"]["playout"]) for s in samples]
    offsets = [v - a for v, a in pairs if v and a]
    settled = offsets[len(offsets) // 3 :]  # after Chromium's synchroniser has had a few seconds
    last = samples[-1] if samples else None
    return {
        "offset_ms_p50": round(float(np.median(settled))) if settled else None,
        "offset_ms_abs_p90": round(float(np.percentile(np.abs(settled), 90))) if settled else None,
        "audio_target_ms": round(last["audio"]["target_ms"]) if last else None,
        "audio_minimum_ms": round(last["audio"]["minimum_ms"]) if last else None,
    }


def browser_latencies(data: dict[str, Any], turns: Sequence[dict[str, Any]], file_env: Any) -> list[float]:
    mic, voice = data["levels"]["mic"], data["levels"]["replica"]
    if len(mic) < 100 or len(voice) < 100:
        return []
    start = align(mic, file_env)  # page seconds of file sample 0
    env = grid(voice, start, voice[-1][0] / 1000)
    return latencies(env, turns)


async def part_latency(stack: Stack, names: Sequence[str], work: Path) -> dict[str, Any]:
    rows: dict[str, Any] = {"grpc": [], "browser": [], "call": [], "sync_ref": [], "sync_page": [], "cpu": []}
    rows.update(grpc_server=[], browser_server=[], call_server=[])
    for name in names:
        audio, turns, env = recording(name, work)
        seconds = len(env) * WIN_S
        log(f"{name}: gRPC (duet talk --video) ...")
        g_out = work / f"{name}-grpc"
        g_cpu, g_wall = await run_cli(stack, "talk", audio, g_out)
        rows["grpc"] += latencies(rms_windows(read_wav(g_out / "reply.wav")), turns)
        vad_s = vad_lag(events_of(g_out), turns)
        rows["grpc_server"] += server_parts(events_of(g_out), turns, None)[0]
        ref = reference_sync(g_out)
        rows["sync_ref"].append(ref)
        log(f"{name}: browser (Chromium) ...")
        page = await run_browser(stack, audio, seconds, ref["box"])
        rows["browser"] += browser_latencies(page, turns, env)
        rows.setdefault("calls_server", []).append(call_stats(stack.server, page["conversation_id"]))
        rows["browser_server"] += server_parts(page["events"], turns, vad_s)[0]
        rows["sync_page"].append(page_sync(page))
        log(f"{name}: duet call (aiortc) ...")
        c_out = work / f"{name}-call"
        c_cpu, c_wall = await run_cli(stack, "call", audio, c_out)
        rows["call"] += latencies(rms_windows(read_wav(c_out / "reply.wav")), turns)
        rows["call_server"] += server_parts(events_of(c_out), turns, vad_s)[0]
        rows["cpu"].append({"grpc": g_cpu / g_wall, "browser": page["cpu_s"] / page["wall_s"], "call": c_cpu / c_wall})
        brief = {k: v for k, v in ref.items() if k != "curve"}
        log(f"  {name}: sync ref {brief}, page {rows['sync_page'][-1]['lag_ms']} ms, cpu {rows['cpu'][-1]}")
        log(f"  {name}: the server's side of the browser call: {rows['calls_server'][-1]}")
        rows.setdefault("browser_jitter_ms", []).append(page.get("jitter_ms"))
        rows.setdefault("chrome_sync", []).append(chrome_sync(page.get("chrome", [])))
        log(f"  {name}: Chromium's A/V view: {rows['chrome_sync'][-1]}")
        log(f"  {name}: Chromium's jitter buffer held the voice {page.get('jitter_ms')} ms on average")
    return rows


async def part_capacity(stack: Stack, name: str, counts: Sequence[int], work: Path) -> list[dict[str, Any]]:
    """K simultaneous `duet call` clients on one recording: what the server keeps up with."""
    audio, turns, _ = recording(name, work)
    out: list[dict[str, Any]] = []
    for k in counts:
        convs = [await stack.conversation() for _ in range(k)]
        cpu0, t0 = proc_cpu_s(stack.server.pid), time.monotonic()
        procs = []
        for i, c in enumerate(convs):
            cmd = [DUET, "call", "--conversation", c["conversation_id"], "--token", c["join"]["token"]]
            cmd += ["--audio", str(audio), "--out", str(work / f"cap{k}-{i}"), "--api-url", stack.server.http_url]
            procs.append(
                await asyncio.create_subprocess_exec(
                    *cmd, env=stack.server.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        codes = [await p.wait() for p in procs]
        wall = time.monotonic() - t0
        lats: list[float] = []
        dropped = sent = 0
        for i in range(k):
            folder = work / f"cap{k}-{i}"
            if not (folder / "reply.wav").exists():
                continue
            lats += latencies(rms_windows(read_wav(folder / "reply.wav")), turns)
            for line in (folder / "events.jsonl").read_text().splitlines():
                e = json.loads(line)
                if e.get("type") == "video_stats":
                    dropped += int(e.get("dropped", 0))
                    sent += int(e.get("frames", 0))
        out.append(
            {
                "calls": k,
                "failed": sum(1 for c in codes if c != 0),
                "latency_ms_p50": round(float(np.median(lats)) * 1000) if lats else None,
                "answered": f"{len(lats)}/{k * len(turns)}",
                "frames_dropped_pct": round(100 * dropped / max(dropped + sent, 1), 1),
                "server_cpu_cores": round((proc_cpu_s(stack.server.pid) - cpu0) / wall, 2),
            }
        )
        log(f"  capacity {out[-1]}")
    return out


def summary(xs: Sequence[float]) -> str:
    if not xs:
        return "–"
    return f"{np.median(xs) * 1000:.0f} / {np.percentile(xs, 90) * 1000:.0f}"


def report(lat: dict[str, Any], caps: dict[str, list[dict[str, Any]]], size: int) -> str:
    lines = [
        f"Face {size}x{size}; {len(lat['sync_ref'])} held-out calls; latency = labelled end of the user's turn → first"
        " audible replica sound.",
        "",
        "| transport | turns answered | heard at the listener: median / p90 ms | the server's part (reply start on"
        " the session clock): median ms | the transport's part (heard − server's): median ms |",
        "|---|---|---|---|---|",
    ]
    transports = (("gRPC (`duet talk`)", "grpc"), ("browser (Chromium page)", "browser"), ("`duet call`", "call"))
    for label, key in transports:
        xs, srv = lat[key], lat[f"{key}_server"]
        transport = f"{(np.median(xs) - np.median(srv)) * 1000:.0f}" if xs and srv else "–"
        server = f"{np.median(srv) * 1000:.0f}" if srv else "–"
        lines.append(f"| {label} | {len(xs)} | {summary(xs)} | {server} | {transport} |")
    lines += ["", "| lip sync (voice → mouth motion lag) | per call ms (corr) |", "|---|---|"]
    lines.append(
        "| renderer, on the session clock (reply.mp4) | "
        + ", ".join(f"{s['lag_ms']} ({s['corr']})" for s in lat["sync_ref"])
        + " |"
    )
    lines.append(
        "| at the browser page | " + ", ".join(f"{s['lag_ms']} ({s['corr']})" for s in lat["sync_page"]) + " |"
    )
    ref_lag, ref_c = pooled([s["curve"] for s in lat["sync_ref"] if s.get("curve")])
    page_lag, page_c = pooled([s["curve"] for s in lat["sync_page"] if s.get("curve")])
    lines.append(
        f"| pooled over the calls: renderer / page / what the transport adds | {ref_lag * 1000:.0f} ({ref_c:.2f}) / "
        f"{page_lag * 1000:.0f} ({page_c:.2f}) / **{(page_lag - ref_lag) * 1000:+.0f} ms** |"
    )
    video = [c.get("video", {}) for c in lat.get("calls_server", [])]
    lines.append(
        "| the face's frames at the server: left after their time, p50 ms; the voice's longest wait for it, ms | "
        + ", ".join(f"{v.get('late_ms_p50')}; {v.get('voice_waited_ms_max')}" for v in video)
        + " |"
    )
    for c in lat.get("chrome_sync", []):
        lines.append(
            f"| Chromium's own A/V line-up (face minus voice, sender clock): p50 {c['offset_ms_p50']} ms, |p90| "
            f"{c['offset_ms_abs_p90']} ms; its audio buffer aims at {c['audio_target_ms']} ms (needs "
            f"{c['audio_minimum_ms']}) | |"
        )
    jitter = [j for j in lat.get("browser_jitter_ms", []) if j is not None]
    if jitter:
        held = ", ".join(f"{j:.0f}" for j in jitter)
        lines.append(f"| Chromium's jitter buffer, mean hold of the voice per call, ms | {held} |")
    cpu = lat["cpu"]
    lines += [
        "",
        "| server CPU, cores per call | gRPC + face | browser + face | duet call + face |",
        "|---|---|---|---|",
        "| mean | " + " | ".join(f"{np.mean([x[k] for x in cpu]):.2f}" for k in ("grpc", "browser", "call")) + " |",
    ]
    for size_key, rows in caps.items():
        lines += [
            "",
            f"Simultaneous `duet call` clients, face {size_key}:",
            "",
            "| calls | failed | turns answered | latency p50 ms | frames dropped | server CPU (cores) |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['calls']} | {r['failed']} | {r['answered']} | {r['latency_ms_p50']} | "
                f"{r['frames_dropped_pct']} % | {r['server_cpu_cores']} |"
            )
    return "\n".join(lines)


def save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))


async def amain(args: argparse.Namespace) -> int:
    names = [f"{i:03d}" for i in range(1, args.calls + 1)]
    work = Path(tempfile.mkdtemp(prefix="duet-bench-webrtc-"))
    triton = Triton(args.triton_url)
    servers: list[Server] = []
    try:
        url = triton.start()
        caps: dict[str, list[dict[str, Any]]] = {}
        lat: dict[str, Any] = {}
        for size in [args.size, *[s for s in args.load_sizes if s != args.size]]:
            env = dict(
                os.environ,
                DUET_TRITON__URL=url,
                DUET_STORE__URL=str(work / f"duet-{size}.db"),
                DUET_FACE__WIDTH=str(size),
                DUET_FACE__HEIGHT=str(size),
                DUET_SERVER__MAX_SESSIONS="16",
            )
            server = Server(env, work, work / f"serve-{size}.log").start()
            servers.append(server)
            key = admin(env, work, "tenant", "create", "bench")["api_key"]
            stack = Stack(server, key)
            if size == args.size:
                lat = await part_latency(stack, names, work)
            if size in args.load_sizes:
                caps[f"{size}x{size}"] = await part_capacity(stack, names[0], args.load_counts, work)
            server.stop()
        text = report(lat, caps, args.size)
        print(text)
        save(Path(args.out), {"latency": lat, "capacity": caps, "table": text})
        return 0
    finally:
        for s in servers:
            s.stop()
        triton.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--triton-url", default="")
    ap.add_argument("--calls", type=int, default=3, help="held-out recordings (check/001..)")
    ap.add_argument("--size", type=int, default=384, help="the face's size in the latency and sync runs")
    ap.add_argument("--load-sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[384, 512])
    ap.add_argument("--load-counts", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 2, 3])
    ap.add_argument("--out", default=str(ROOT / "perf" / "out" / "bench_webrtc.json"))
    return asyncio.run(amain(ap.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
