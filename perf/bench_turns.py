"""Turn-taking benchmark: Duet's floor model vs. silence timeouts vs. Smart Turn, on the same labelled audio.

    .venv/bin/python perf/bench_turns.py --split dev --systems timeout500,timeout800,smartturn
    .venv/bin/python perf/bench_turns.py --split check --server 127.0.0.1:8001   # + Duet through its CLI

Prints one Markdown table (one row per system; columns from perf/turns_eval.py) and writes
perf/out/bench_turns.json.  Labels and audio: perf/data/turns/{dev,check}/ (check/ is held out from tuning).

Systems (every baseline runs in-process with onnxruntime on ONE thread and streams the file in 20 ms chunks,
as a live system receives it; the decision's audio time ``t`` is the end of the chunk it used and
``compute_ms`` the measured compute for that chunk):

* ``timeout500`` / ``timeout800``: Silero VAD v6 (``model_repository/vad/1/silero_vad.onnx``, 512-sample
  windows with 64 samples of context), speech on at p >= 0.5, off below 0.35; ``eot_commit`` once the silence
  after speech reaches 500 / 800 ms.
* ``smartturn``: pipecat's published Smart Turn v3 behaviour (``LocalSmartTurnAnalyzerV3`` with its default
  ``SmartTurnParams`` behind a VAD with ``stop_secs=0.2``): after 200 ms of VAD silence run Smart Turn v3.2
  (``model_repository/turn/1/smart-turn-v3.2-cpu.onnx``) on the turn's audio since 0.5 s before its speech
  start (at most the last 8 s, front-padded with zeros to 8 s, Whisper log-mel [80, 800]); p > 0.5 commits
  (compute_ms = VAD + features + inference).  Otherwise keep listening and commit after 3 s of silence
  (``stop_secs=3``); when the user speaks again, the next VAD stop re-runs the model on the grown segment.
* ``duet``: the floor model, through the stable CLI ``duet turns FILE --jsonl --server HOST:PORT --speed 0``
  (one subprocess per file).  Without ``--server`` the script starts ``duet serve --port P`` itself.

Smart Turn features come from pipecat's numpy reference (``.cache/reference/smart_turn_whisper_features.py``,
extracted from the pipecat-ai wheel by the bootstrap; BSD-2), used here only as the baseline's own code.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from duet.wav import read_pcm16
from orchestrator.inference.vad import onnx_session
from orchestrator.models.launcher import free_port

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perf.turns_eval import aggregate, markdown_table, pauses_of, score_file  # noqa: E402

SR = 16000
CHUNK = 320  # 20 ms
VAD_WIN = 512
VAD_CTX = 64
VAD_ON, VAD_OFF = 0.5, 0.35
DATA = ROOT / "perf" / "data" / "turns"
VAD_MODEL = ROOT / "model_repository" / "vad" / "1" / "silero_vad.onnx"
TURN_MODEL = ROOT / "model_repository" / "turn" / "1" / "smart-turn-v3.2-cpu.onnx"
FEATURES_REF = ROOT / ".cache" / "reference" / "smart_turn_whisper_features.py"
ALL_SYSTEMS = ("duet", "timeout500", "timeout800", "smartturn")

Audio = npt.NDArray[np.float32]
Event = dict[str, Any]


def one_thread_session(path: Path) -> ort.InferenceSession:
    return onnx_session(path, threads=1)


def read_wav(path: Path) -> Audio:
    return (np.frombuffer(read_pcm16(path), dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------- VAD trace
@dataclass(frozen=True)
class VadTrace:
    """Per 20 ms chunk: end time (s), VAD speech state after hysteresis, compute ms spent on that chunk."""

    t: list[float]
    speech: list[bool]
    compute_ms: list[float]


class SileroStream:
    def __init__(self, session: ort.InferenceSession) -> None:
        self._s = session
        self._state = np.zeros((2, 1, 128), np.float32)
        self._ctx = np.zeros(VAD_CTX, np.float32)
        self._pending = np.zeros(0, np.float32)
        self._sr = np.array(SR, dtype=np.int64)
        self.prob = 0.0

    def feed(self, chunk: Audio) -> float:
        """Add audio; run every complete 512-sample window.  Returns compute ms."""
        self._pending = np.concatenate([self._pending, chunk])
        t0 = time.perf_counter()
        while len(self._pending) >= VAD_WIN:
            win, self._pending = self._pending[:VAD_WIN], self._pending[VAD_WIN:]
            x = np.concatenate([self._ctx, win])[None, :]
            out, self._state = self._s.run(None, {"input": x, "state": self._state, "sr": self._sr})
            self.prob = float(out[0][0])
            self._ctx = win[-VAD_CTX:]
        return (time.perf_counter() - t0) * 1000.0


def vad_trace(audio: Audio, session: ort.InferenceSession) -> VadTrace:
    vad = SileroStream(session)
    ts: list[float] = []
    sp: list[bool] = []
    ms: list[float] = []
    speaking = False
    for i in range(0, len(audio) - CHUNK + 1, CHUNK):
        ms.append(vad.feed(audio[i : i + CHUNK]))
        speaking = vad.prob >= VAD_ON if not speaking else vad.prob >= VAD_OFF
        sp.append(speaking)
        ts.append((i + CHUNK) / SR)
    return VadTrace(ts, sp, ms)


# ----------------------------------------------------------------------------------------------- baselines
def run_timeout(trace: VadTrace, timeout_ms: float) -> list[Event]:
    events: list[Event] = []
    triggered, silence_ms = False, 0.0
    for t, speech, ms in zip(trace.t, trace.speech, trace.compute_ms, strict=True):
        if speech:
            if not triggered:
                events.append({"type": "speech_start", "t": t, "compute_ms": ms})
            triggered, silence_ms = True, 0.0
        elif triggered:
            silence_ms += CHUNK / SR * 1000.0
            if silence_ms >= timeout_ms - 1e-6:
                events.append({"type": "speech_end", "t": t, "compute_ms": ms})
                events.append({"type": "eot_commit", "t": t, "compute_ms": ms})
                triggered = False
    return events


class SmartTurn:
    def __init__(self, session: ort.InferenceSession, features: Callable[..., Any]) -> None:
        self._s = session
        self._features = features

    def predict(self, segment: Audio) -> tuple[float, float]:
        """Probability that the turn is complete, and compute ms (features + inference)."""
        t0 = time.perf_counter()
        n = 8 * SR
        x = segment[-n:] if len(segment) > n else np.pad(segment, (n - len(segment), 0))
        feats = np.asarray(self._features(x, do_normalize=True), dtype=np.float32)[None]
        p = float(self._s.run(None, {"input_features": feats})[0][0][0])
        return p, (time.perf_counter() - t0) * 1000.0


def run_smartturn(
    audio: Audio,
    trace: VadTrace,
    st: SmartTurn,
    calls: list[dict[str, Any]],
    vad_stop_ms: float = 200.0,
    stop_secs: float = 3.0,
    pre_speech_ms: float = 500.0,
) -> list[Event]:
    events: list[Event] = []
    triggered, silence_ms, analyzed = False, 0.0, False
    seg_start = 0  # sample index where the turn's buffer starts
    for k, (t, speech, ms) in enumerate(zip(trace.t, trace.speech, trace.compute_ms, strict=True)):
        end = (k + 1) * CHUNK
        if speech:
            if not triggered:
                seg_start = max(0, end - CHUNK - int(pre_speech_ms / 1000 * SR))
                events.append({"type": "speech_start", "t": t, "compute_ms": ms})
            triggered, silence_ms, analyzed = True, 0.0, False
            continue
        if not triggered:
            continue
        silence_ms += CHUNK / SR * 1000.0
        if silence_ms >= vad_stop_ms - 1e-6 and not analyzed:
            analyzed = True
            events.append({"type": "speech_end", "t": t, "compute_ms": ms})
            p, st_ms = st.predict(audio[seg_start:end])
            calls.append({"t": t, "p": p, "compute_ms": st_ms})
            if p > 0.5:
                events.append({"type": "eot_commit", "t": t, "compute_ms": ms + st_ms})
                triggered = False
                continue
        if silence_ms >= stop_secs * 1000.0 - 1e-6:
            events.append({"type": "eot_commit", "t": t, "compute_ms": ms})
            triggered = False
    return events


def load_features() -> Callable[..., Any]:
    if not FEATURES_REF.exists():
        raise SystemExit(
            f"missing {FEATURES_REF.relative_to(ROOT)}: extract pipecat/audio/turn/smart_turn/"
            "_whisper_features.py from the pipecat-ai wheel there (see the module docstring)"
        )
    spec = importlib.util.spec_from_file_location("smart_turn_whisper_features", FEATURES_REF)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fn: Callable[..., Any] = mod.compute_whisper_log_mel_features
    return fn


# ----------------------------------------------------------------------------------------------- duet
def duet_cli() -> str | None:
    local = ROOT / ".venv" / "bin" / "duet"
    if local.exists():
        return str(local)
    return shutil.which("duet")


def run_duet(cli: str, server: str, wav: Path, speed: float = 1.0, timeout_s: float = 300.0) -> list[Event]:
    proc = subprocess.run(
        [cli, "turns", str(wav), "--jsonl", "--server", server, "--speed", str(speed)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"duet turns {wav.name} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    events: list[Event] = []
    for raw in proc.stdout.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            obj = json.loads(line)
            if "type" in obj and "t" in obj:
                events.append(obj)
    return events


def start_server(cli: str, probe_wav: Path, wait_s: float = 180.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start `duet serve` on a free port (one thread per library) and wait until `duet turns` answers."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = tempfile.NamedTemporaryFile(prefix="duet-serve-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([cli, "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    server = f"127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"duet serve exited with {proc.returncode}; log: {log.name}")
        try:
            run_duet(cli, server, probe_wav, timeout_s=60.0)
            return proc, server
        except (RuntimeError, subprocess.TimeoutExpired):
            time.sleep(2.0)
    proc.terminate()
    raise RuntimeError(f"duet serve did not answer within {wait_s:.0f} s; log: {log.name}")


# ----------------------------------------------------------------------------------------------- main
def load_labels(split: str) -> list[dict[str, Any]]:
    splits = ["dev", "check"] if split == "all" else [split]
    out: list[dict[str, Any]] = []
    for s in splits:
        path = DATA / s / "labels.jsonl"
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def where(label: dict[str, Any], t: float) -> str:
    for p in pauses_of(label):
        if p.start <= t < p.end:
            return p.kind
    return "speech"


def iter_files(labels: list[dict[str, Any]], limit: int | None) -> Iterator[tuple[dict[str, Any], Path]]:
    for lab in labels[:limit]:
        yield lab, DATA / lab["file"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Turn-taking benchmark (one table, same audio for every system)")
    ap.add_argument("--split", choices=("dev", "check", "all", "real"), default="dev")  # real: make_real_turns.py
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS), help=f"comma list from {','.join(ALL_SYSTEMS)}")
    ap.add_argument("--server", default=None, help="HOST:PORT of a running duet server (else one is started)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N files (smoke runs)")
    ap.add_argument("--speed", type=float, default=1.0, help="duet: x real time (1 = live; 0 = as fast as possible)")
    ap.add_argument("--jobs", type=int, default=2, help="duet: files streamed at once (concurrent sessions)")
    ap.add_argument("--out", default=str(ROOT / "perf" / "out" / "bench_turns.json"))
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(ALL_SYSTEMS)
    if unknown:
        ap.error(f"unknown systems: {sorted(unknown)}")
    labels = load_labels(args.split)

    events: dict[str, dict[str, list[Event]]] = defaultdict(dict)
    st_calls: list[dict[str, Any]] = []
    notes: list[str] = []
    baselines = [s for s in systems if s != "duet"]
    if baselines:
        vad_s = one_thread_session(VAD_MODEL)
        st = SmartTurn(one_thread_session(TURN_MODEL), load_features()) if "smartturn" in baselines else None
        for lab, wav in iter_files(labels, args.limit):
            audio = read_wav(wav)
            trace = vad_trace(audio, vad_s)
            for name in baselines:
                if name.startswith("timeout"):
                    events[name][lab["file"]] = run_timeout(trace, float(name.removeprefix("timeout")))
                elif name == "smartturn" and st is not None:
                    calls: list[dict[str, Any]] = []
                    events[name][lab["file"]] = run_smartturn(audio, trace, st, calls)
                    for c in calls:
                        st_calls.append(
                            {"file": lab["file"], "voice": lab["voice"], **c, "at": where(lab, c["t"] - 0.2)}
                        )

    if "duet" in systems:
        cli = duet_cli()
        if cli is None:
            notes.append("duet: skipped — the `duet` CLI is not installed (.venv/bin/duet)")
            systems.remove("duet")
        else:
            server_proc: subprocess.Popen[bytes] | None = None
            try:
                server = args.server
                if server is None:
                    server_proc, server = start_server(cli, DATA / labels[0]["file"])
                # Real time by default: compute_ms then measures what a live user would wait for (a file sent
                # faster than real time queues behind the server, which compute_ms would honestly include).
                files = list(iter_files(labels, args.limit))
                with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                    done = pool.map(lambda lw: run_duet(cli, server, lw[1], args.speed), files)
                    for (lab, _), evs in zip(files, done, strict=True):
                        events["duet"][lab["file"]] = evs
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                notes.append(f"duet: skipped — {e}")
                systems.remove("duet")
                events.pop("duet", None)
            finally:
                if server_proc is not None:
                    server_proc.terminate()
                    server_proc.wait(timeout=30)

    rows: dict[str, dict[str, Any]] = {}
    by_voice: dict[str, dict[str, Any]] = {}
    for name in systems:
        scored = [(lab, score_file(lab, events[name][lab["file"]])) for lab, _ in iter_files(labels, args.limit)]
        rows[name] = aggregate(s for _, s in scored)
        voices = sorted({lab["voice"] for lab, _ in scored})
        by_voice[name] = {v: aggregate(s for lab, s in scored if lab["voice"] == v) for v in voices}

    print(f"split={args.split} files={len(labels[: args.limit])} (decision time = t + compute_ms; 1 thread)")
    print(markdown_table(rows))
    for n in notes:
        print(f"note: {n}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "split": args.split,
                "systems": rows,
                "by_voice": by_voice,
                "notes": notes,
                "smartturn_calls": st_calls,
                "events": events,
            },
            indent=1,
            default=str,
        )
        + "\n"
    )
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
