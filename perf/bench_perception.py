"""Perception benchmark: freshness through the real stack, controlled accuracy per attribute, and CPU cost.

    .venv/bin/python perf/bench_perception.py              # every part (about 3-4 minutes on a shared 2-core box)
    .venv/bin/python perf/bench_perception.py --quick      # shorter clip, coarser sweeps, fewer repetitions
    .venv/bin/python perf/bench_perception.py --skip-stack # parts 2 and 3 only (no duet serve / Triton)

Parts (outputs in --out, default perf/out/perception: results.json, clip15s.mp4/.wav, perceive_*.jsonl):

1. Freshness and drops through the real stack. A clip is built: the replica renderer on faces/astronaut.png at
   640x480 (head yaw/pitch sweeps, gaze shifts, blinks, a smile; poses rendered at 15 fps, each frame written
   twice into a 30 fps H.264 MP4) and a piper voice reading sentences with pauses. One `duet serve` is started
   (embedded tritonserver) and `duet perceive --video clip.mp4 --audio clip.wav --jsonl --all-events --speed 1`
   streams it at real time with `--fps 30` and `--fps 10` (--stack-reps runs each, default 2), then the astronaut
   photo as a still camera with the same voice at `--fps 30`; the session's `perception_stats` event gives audio
   and visual freshness p50/p95 (arrival of a hop / frame -> the state including it emitted) and the frames
   analysed and dropped. The session runs in `perceive` mode, so floor, ASR and perception share the 2 cores.
   The clip is cached in --out (rebuilt when its inputs change; the first run spends ~20 s building it).
2. Accuracy, controlled (direct calls to the Python modules, static mode, no smoothing):
   - head pose: rendered yaw/pitch/roll sweeps; measured minus the rest render's reading vs the rendered angle
     (MAE, gain from a least-squares fit, sign accuracy, cross-talk on the other two axes); the astronaut photo
     rotated in-plane (cv2: + = counter-clockwise, so roll should move by -angle) and mirrored (yaw and roll
     should flip sign).
   - gaze: a 5x5 grid of rendered gaze_x/gaze_y. Truth "camera" only at (0, 0), "away" when either offset is
     0.8; 0.4 offsets are shown but not scored (whether 0.4 of the eye's half-width is still "at the camera" is
     a matter of definition, not of measurement).
   - blink: rendered blink 0 / 0.5 / 1 on four faces (rest, yaw +-10, smiling) -> eyes_closed. 0 = open and
     1 = closed are scored, 0.5 is shown.
   - faces: skimage coffee, chelsea (a cat) and a flat grey frame (0), the photo and renders (1), two and three
     photos side by side -> count confusion.
   - expression: the astronaut photo (a real smile) and the renderer's 8 basic emotions at intensity 0.6 and 1.0
     -> 8-class confusion; the renderer's 7 conversational states are listed with what was read.
   - voice: piper (the voice the voice module's weights were set on, with the same kinds of manipulation, but
     other sentences than its unit tests) and espeak-ng (held out: a different, formant-synthesised voice; nothing
     was tuned on it). Each voice first warms a baseline on 6 sentences; each condition is then scored on 3 test
     sentences from a copy of that warm tracker; the table shows median scores and whether each expected
     movement vs the "normal" row happened (by at least 0.05).
3. Cost on this CPU: voice features per second of audio (frame_features on 3 hops per call, as the session
   sends them, plus the tracker), face analysis per 640x480 frame (JPEG decode + analyze), and batching:
   frame_features at batch 1 vs 64, FaceAnalyzer.analyze_batch at 1 vs 8 frames.

Timings on a shared 2-core machine are noisy: every timing is the median of several repetitions after a warm-up,
torch runs with 1 thread. Nothing printed is hard-coded: every number is measured in the run.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I16 = npt.NDArray[np.int16]
U8 = npt.NDArray[np.uint8]

PORTRAIT = ROOT / "faces" / "astronaut.png"
CACHE = ROOT / ".cache" / "faces"
VOICE = ROOT / "model_repository" / "tts" / "1" / "voices" / "en_US-joe-medium.onnx"
SR = 16_000
HOP = 320
WIDTH, HEIGHT = 640, 480
CLIP_FPS = 30
RENDER_EVERY = 2  # poses at 15 fps, each written twice
AUDIO_TARGET_MS = 100.0
VISUAL_TARGET_MS = 300.0
MOVE_TOL = 0.05  # a state "moves" when its median changes by at least this much
RISES_ST = (4.0, 8.0)  # the rising-end manipulations: glides to +4 / +8 semitones over the last 400 ms of voicing

CLIP_SENTENCES = (
    "Hi, thanks for taking the time to talk with me today.",
    "I have been trying to sort out a problem with my account.",
    "Last month I was charged twice for the same subscription.",
    "I called once already, but nobody got back to me.",
    "Could you have a look and tell me what happened?",
    "I would really like to get this fixed this week.",
)
# Warm-baseline and test sentences: none is among the voice unit tests' sentences.
BASELINE_TEXTS = (
    "Good morning, I hope you had a nice weekend.",
    "I am calling about the heating in my apartment.",
    "The radiator in the bedroom has been cold for days.",
    "My neighbour said the same thing happened to her.",
    "I can be at home any afternoon next week.",
    "Let me know what time suits the technician.",
)
TEST_TEXTS = (
    "We could meet at the library after lunch on Friday.",
    "The new printer keeps jamming whenever I use it.",
    "She said the package would be delivered this morning.",
)
QUESTION_TEXTS = (
    "Could we meet at the library after lunch on Friday?",
    "Is the new printer jamming whenever you use it?",
    "Did she say the package would be delivered this morning?",
)
# Expected movement vs the "normal" row: +1 up, -1 down. Unlisted states are not scored.
EXPECTED: dict[str, dict[str, int]] = {
    "quiet (-12 dB)": {"arousal": -1},
    "loud (+12 dB)": {"arousal": +1},
    "slow": {"arousal": -1, "hesitancy": +1},
    "fast": {"arousal": +1},
    "long pauses": {"hesitancy": +1},
    "rising end +4 st": {"uncertainty": +1},
    "rising end +8 st": {"uncertainty": +1},
    "question": {"uncertainty": +1},
    "calm": {"arousal": -1, "flatness": +1},
    "agitated": {"arousal": +1, "flatness": -1},
}
STATES = ("arousal", "hesitancy", "uncertainty", "tension", "flatness")
EMOTIONS8 = ("neutral", "happiness", "sadness", "anger", "fear", "surprise", "disgust", "contempt")
CONVERSATIONAL = ("empathy", "amusement", "thoughtful", "reassuring", "interested", "happily_surprised", "confused")


# --------------------------------------------------------------------------------------- pure helpers
def median(xs: Iterable[float]) -> float | None:
    vals = [float(x) for x in xs]
    return statistics.median(vals) if vals else None


def confusion(pairs: Iterable[tuple[str, str]], labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """{true: {predicted: count}} over `labels` (a label outside them is counted under its own key)."""
    table: dict[str, dict[str, int]] = {t: dict.fromkeys(labels, 0) for t in labels}
    for true, pred in pairs:
        row = table.setdefault(true, dict.fromkeys(labels, 0))
        row[pred] = row.get(pred, 0) + 1
    return table


def accuracy(pairs: Sequence[tuple[str, str]]) -> float | None:
    return sum(1 for t, p in pairs if t == p) / len(pairs) if pairs else None


def pose_metrics(true: Sequence[float], measured: Sequence[float], rest: float) -> dict[str, float | None]:
    """Measured angles (absolute) vs rendered ones, after subtracting the rest render's reading `rest`.

    mae: mean |(measured - rest) - true|; gain: least-squares slope of (measured - rest) on true;
    sign_acc: share of non-zero true angles whose offset-corrected reading has the same sign."""
    t = np.asarray(true, np.float64)
    m = np.asarray(measured, np.float64) - rest
    if t.size == 0:
        return {"mae": None, "gain": None, "sign_acc": None, "max_err": None}
    err = np.abs(m - t)
    nz = t != 0
    den = float(np.dot(t - t.mean(), t - t.mean()))
    return {
        "mae": float(err.mean()),
        "max_err": float(err.max()),
        "gain": float(np.dot(t - t.mean(), m - m.mean()) / den) if den > 0 else None,
        "sign_acc": float(np.mean(np.sign(m[nz]) == np.sign(t[nz]))) if nz.any() else None,
    }


def gaze_truth(gx: float, gy: float) -> str | None:
    """'camera' at (0, 0), 'away' when either offset is at least 0.8, None (not scored) in between."""
    if gx == 0 and gy == 0:
        return "camera"
    if max(abs(gx), abs(gy)) >= 0.8:
        return "away"
    return None


def count_label(n: int) -> str:
    return "4+" if n >= 4 else str(n)


def moved(delta: float | None, expected: int, reference: float | None = None, tol: float = MOVE_TOL) -> bool | None:
    """Whether a change `delta` goes the `expected` way (+1/-1) by at least `tol`. None when there is no delta, or
    when the `reference` score (0..1) has less than `tol` of room left in that direction (it cannot move)."""
    if delta is None or expected == 0:
        return None
    if reference is not None and (reference < tol if expected < 0 else reference > 1.0 - tol):
        return None
    return delta * expected >= tol


def perception_stats(lines: Iterable[str]) -> dict[str, Any] | None:
    """The last `perception_stats` event of a `duet perceive --jsonl --all-events` output (None if absent)."""
    found: dict[str, Any] | None = None
    for raw in lines:
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("type") == "perception_stats":
            found = event
    return found


def count_types(lines: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            kind = str(event.get("type"))
            out[kind] = out.get(kind, 0) + 1
    return out


def db_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def to_pcm(x: npt.NDArray[np.floating[Any]]) -> I16:
    pcm: I16 = np.clip(np.round(np.asarray(x, np.float64) * 32767.0), -32768, 32767).astype(np.int16)
    return pcm


def scale(pcm: I16, gain: float) -> I16:
    return to_pcm(pcm.astype(np.float64) / 32768.0 * gain)


def rising_end(pcm: I16, end: int, semitones: float = 4.0, window_s: float = 0.4, sr: int = SR) -> I16:
    """Raise the pitch over the `window_s` before sample `end` (the end of voicing) in a linear glide from 0 to
    `semitones`, by playing that stretch at a rate rising from 1 to 2^(semitones/12) (it gets shorter; formants
    move too); the rest is untouched."""
    x = pcm.astype(np.float64)
    end = min(max(end, 0), x.size)
    start = max(0, end - int(window_s * sr))
    if end - start < 2:
        return pcm.copy()
    seg = x[start:end]
    n = seg.size
    top = 2.0 ** (semitones / 12.0)
    pos, out = 0.0, []
    i = 0
    while pos < n - 1:
        out.append(pos)
        i += 1
        pos += 1.0 + (top - 1.0) * min(i / n, 1.0)
    glide = np.interp(np.asarray(out), np.arange(n), seg)
    joined = np.concatenate([x[:start], glide, x[end:]])
    return to_pcm(joined / 32768.0)


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def mark(ok: bool | None, none: str = "-") -> str:
    return none if ok is None else ("yes" if ok else "**no**")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def timed(fn: Callable[[], object], reps: int, warmup: int = 1) -> list[float]:
    """Seconds per call of `fn`, `reps` times after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------------------- media helpers
def write_wav(path: Path, pcm: I16, sr: int = SR) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.astype("<i2").tobytes())


def jpeg(rgb: U8, quality: int = 85) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Voices:
    """Piper (the tuning voice) and espeak-ng (held out) as 16 kHz PCM16, cached per (text, settings)."""

    def __init__(self) -> None:
        from orchestrator.inference.tts import PiperSpeaker

        self.piper = PiperSpeaker(VOICE)
        self._cache: dict[tuple[str, str, float], I16] = {}
        self.espeak = shutil.which("espeak-ng")

    def say(self, text: str, length_scale: float = 1.0) -> I16:
        key = ("piper", text, length_scale)
        if key not in self._cache:
            self.piper.syn_config.length_scale = length_scale
            self._cache[key] = self.piper.synthesize(text).pcm
            self.piper.syn_config.length_scale = 1.0
        return self._cache[key]

    def espeak_say(self, text: str, speed: int = 160, pitch: int = 50, amplitude: int = 50) -> I16:
        from scipy.signal import resample_poly

        if self.espeak is None:
            raise RuntimeError("espeak-ng is not installed")
        proc = subprocess.run(
            [self.espeak, "-v", "en-us", "-s", str(speed), "-p", str(pitch), "-a", str(amplitude), "--stdout", text],
            capture_output=True,
            check=True,
        )
        with wave.open(io.BytesIO(proc.stdout)) as w:
            rate = w.getframerate()
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        g = math.gcd(SR, rate)
        return to_pcm(resample_poly(raw / 32768.0, SR // g, rate // g))


# --------------------------------------------------------------------------------------- face helpers
def make_renderer() -> Any:
    from orchestrator.face import assets as fa
    from orchestrator.face.render import FaceRenderer

    return FaceRenderer(fa.prepare_portrait(PORTRAIT, CACHE), WIDTH, HEIGHT, device="cpu")


def render(renderer: Any, params: F32) -> list[U8]:
    out: list[U8] = []
    for i in range(0, params.shape[0], 16):
        frames = renderer.render(params[i : i + 16]).permute(0, 2, 3, 1).cpu().numpy()
        out.extend(np.ascontiguousarray(f, dtype=np.uint8) for f in frames)
    return out


def vec(**values: float) -> F32:
    from orchestrator.face import params as fp

    return fp.vector(**values)


def emotion_vec(name: str, intensity: float) -> F32:
    from orchestrator.face import params as fp
    from orchestrator.face.emotions import emotion

    v = emotion(name).vector(intensity).astype(np.float32)
    v[fp.INDEX["blink"]] = 0.0
    return v


def sample_image(name: str) -> U8:
    """One of scikit-image's bundled images (real, public-domain photos) as contiguous RGB."""
    import skimage.data

    load: Callable[[], Any] = getattr(skimage.data, name)
    return np.ascontiguousarray(load(), dtype=np.uint8)


def astronaut() -> U8:
    return sample_image("astronaut")


# --------------------------------------------------------------------------------------- 1. stack
def clip_params(seconds: float, fps: float) -> F32:
    """Replica parameters over the clip: head sweeps, gaze shifts, blinks, a smile."""
    from orchestrator.face import params as fp

    n = round(seconds * fps)
    t = np.arange(n) / fps
    p = fp.rest(n)
    p[:, fp.INDEX["head_yaw"]] = 15.0 * np.sin(2 * np.pi * t / 6.0)
    p[:, fp.INDEX["head_pitch"]] = 6.0 * np.sin(2 * np.pi * t / 4.5)
    p[:, fp.INDEX["head_roll"]] = 4.0 * np.sin(2 * np.pi * t / 7.0)
    gaze = np.zeros(n)
    gaze[(t % 7.5 >= 4.0) & (t % 7.5 < 5.5)] = 0.7
    gaze[(t % 7.5 >= 6.0) & (t % 7.5 < 7.0)] = -0.7
    p[:, fp.INDEX["gaze_x"]] = gaze
    blink = np.zeros(n)
    for tb in np.arange(1.5, seconds, 2.7):
        blink = np.maximum(blink, np.clip(1.0 - np.abs(t - tb) / 0.08, 0.0, 1.0))
    p[:, fp.INDEX["blink"]] = blink
    smile = np.clip((t % 10.0 - 6.0) / 0.5, 0.0, 1.0) * np.clip((9.0 - t % 10.0) / 0.5, 0.0, 1.0)
    p[:, fp.INDEX["lip_corner_up"]] = 0.8 * smile
    p[:, fp.INDEX["cheek_raise"]] = 0.6 * smile
    return p


def build_clip(out: Path, seconds: float, voices: Voices, log: Callable[[str], None]) -> tuple[Path, Path, float]:
    """clip.mp4 (30 fps, 640x480) and clip.wav (16 kHz) of `seconds`; reused when the same inputs were built."""
    import av

    params = clip_params(seconds, CLIP_FPS / RENDER_EVERY)
    key = hashlib.sha256(params.tobytes() + PORTRAIT.read_bytes() + "|".join(CLIP_SENTENCES).encode()).hexdigest()
    stem = out / f"clip{seconds:.0f}s"
    video, audio, stamp = stem.with_suffix(".mp4"), stem.with_suffix(".wav"), stem.with_suffix(".sha256")
    if video.is_file() and audio.is_file() and stamp.is_file() and stamp.read_text() == key:
        log(f"clip: reusing {video.name} + {audio.name}")
        return video, audio, seconds
    t0 = time.perf_counter()
    gap = np.zeros(int(0.7 * SR), np.int16)
    parts: list[I16] = [np.zeros(int(0.4 * SR), np.int16)]
    i = 0
    while sum(p.size for p in parts) < seconds * SR:
        parts += [voices.say(CLIP_SENTENCES[i % len(CLIP_SENTENCES)]), gap]
        i += 1
    pcm = scale(np.concatenate(parts)[: int(seconds * SR)], db_gain(-6.0))
    write_wav(audio, pcm)
    frames = render(make_renderer(), params)
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for f in frames:
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            for _ in range(RENDER_EVERY):
                for packet in stream.encode(vf):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    stamp.write_text(key)
    log(f"clip: {seconds:.0f} s built in {time.perf_counter() - t0:.1f} s ({len(frames)} rendered poses)")
    return video, audio, seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(cli: str, out: Path, wait_s: float = 240.0) -> tuple[subprocess.Popen[bytes], str, float]:
    """`duet serve` on a free port, its output in out/serve.log (a file: a pipe nobody reads would fill up and
    stall the server); ready when the log says so."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    path = out / "serve.log"
    t0 = time.perf_counter()
    with path.open("wb") as log:
        proc = subprocess.Popen([cli, "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if "serving sessions on" in path.read_text(errors="replace"):
            return proc, f"127.0.0.1:{port}", time.perf_counter() - t0
        if proc.poll() is not None:
            raise RuntimeError(f"duet serve exited with {proc.returncode}; see {path}")
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"duet serve did not start within {wait_s:.0f} s; see {path}")


def stack_report(
    out: Path,
    plan: Sequence[tuple[str, Path, int]],
    audio: Path,
    seconds: float,
    server: str | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One `duet perceive --speed 1` per (input name, video or image, fps) of `plan`, all on one server."""
    cli = str(Path(sys.executable).parent / "duet")
    proc: subprocess.Popen[bytes] | None = None
    startup = None
    if server is None:
        proc, server, startup = start_serve(cli, out)
        log(f"stack: duet serve ready on {server} in {startup:.1f} s")
    runs: list[dict[str, Any]] = []
    try:
        for i, (name, video, fps) in enumerate(plan):
            cmd = [cli, "perceive", "--video", str(video), "--audio", str(audio), "--jsonl", "--all-events"]
            cmd += ["--fps", str(fps), "--speed", "1", "--server", server]
            t0 = time.perf_counter()
            try:
                res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=seconds * 3 + 60)
                rc, stdout, stderr = res.returncode, res.stdout, res.stderr
            except subprocess.TimeoutExpired as exc:  # what it printed so far still counts
                rc = 124
                stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
                stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            wall = time.perf_counter() - t0
            (out / f"perceive_{i}_fps{fps}.jsonl").write_text(stdout)
            lines = stdout.splitlines()
            stats = perception_stats(lines)
            types = count_types(lines)
            row: dict[str, Any] = {
                "input": name,
                "fps": fps,
                "rc": rc,
                "wall_s": round(wall, 1),
                "clip_s": seconds,
                "frames_nominal": round(seconds * fps),
                "stats": stats,
                "events": {k: types.get(k, 0) for k in ("perception", "utterance_summary", "error")},
                "stderr_tail": stderr[-600:],
            }
            if stats is not None:
                a95, v95 = stats.get("audio_ms_p95"), stats.get("visual_ms_p95")
                row["audio_ok"] = a95 is not None and a95 <= AUDIO_TARGET_MS
                row["visual_ok"] = v95 is not None and v95 <= VISUAL_TARGET_MS
            runs.append(row)
            log(f"stack: {name} fps {fps}: {stats} in {wall:.1f} s (rc {rc})")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"server_startup_s": None if startup is None else round(startup, 1), "runs": runs}


# --------------------------------------------------------------------------------------- 2. face accuracy
def face_accuracy(analyzer: Any, renderer: Any, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    import cv2

    from orchestrator.face import params as fp

    t0 = time.perf_counter()

    def analyse(img: U8) -> Any:
        return analyzer.analyze(np.ascontiguousarray(img))

    res: dict[str, Any] = {}
    rest_img = render(renderer, vec()[None])[0]
    rest = analyse(rest_img).face
    assert rest is not None, "the rest render shows no face"
    rest_pose = {k: getattr(rest.head_pose, k) for k in ("yaw", "pitch", "roll")}
    res["rest_pose"] = {k: round(v, 2) for k, v in rest_pose.items()}

    # head pose sweeps
    angles = [-20.0, -10.0, 0.0, 10.0, 20.0] if quick else [-20.0, -15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 20.0]
    sweeps: dict[str, Any] = {}
    for axis in ("yaw", "pitch", "roll"):
        imgs = render(renderer, np.stack([vec(**{f"head_{axis}": a}) for a in angles]))
        measured: list[float] = []
        others: list[float] = []
        hit: list[float] = []
        for a, img in zip(angles, imgs, strict=True):
            f = analyse(img).face
            if f is None:
                continue
            hit.append(a)
            measured.append(getattr(f.head_pose, axis))
            others.append(
                max(abs(getattr(f.head_pose, o) - rest_pose[o]) for o in ("yaw", "pitch", "roll") if o != axis)
            )
        m = pose_metrics(hit, measured, rest_pose[axis])
        sweeps[axis] = {
            **m,
            "true": hit,
            "measured_minus_rest": [round(x - rest_pose[axis], 1) for x in measured],
            "crosstalk_max": max(others) if others else None,
            "missed": len(angles) - len(hit),
        }
    res["pose_sweeps"] = sweeps

    # the real photo rotated in-plane and mirrored
    photo = astronaut()
    base = analyse(photo).face
    h, w = photo.shape[:2]
    rot_rows: list[dict[str, Any]] = []
    for ang in (-20.0, -10.0, 10.0, 20.0):
        mtx = cv2.getRotationMatrix2D((w / 2, h / 2), ang, 1.0)
        f = analyse(np.asarray(cv2.warpAffine(photo, mtx, (w, h), borderMode=cv2.BORDER_REFLECT), np.uint8)).face
        if f is None or base is None:
            rot_rows.append({"ccw_deg": ang, "roll_change": None, "expected": -ang, "err": None})
            continue
        d = f.head_pose.roll - base.head_pose.roll
        rot_rows.append({"ccw_deg": ang, "roll_change": round(d, 1), "expected": -ang, "err": round(abs(d + ang), 1)})
    res["photo_rotation"] = rot_rows
    mir = analyse(np.ascontiguousarray(photo[:, ::-1])).face
    turned = render(renderer, np.stack([vec(head_yaw=15.0), vec(head_yaw=-15.0)]))
    mirror_rows: list[dict[str, Any]] = []
    if base is not None and mir is not None:
        mirror_rows.append(
            {
                "image": "astronaut photo",
                "yaw": round(base.head_pose.yaw, 1),
                "yaw_mirrored": round(mir.head_pose.yaw, 1),
                "roll": round(base.head_pose.roll, 1),
                "roll_mirrored": round(mir.head_pose.roll, 1),
            }
        )
    for img, name in zip(turned, ("render yaw +15", "render yaw -15"), strict=True):
        a, b = analyse(img).face, analyse(np.ascontiguousarray(img[:, ::-1])).face
        if a is not None and b is not None:
            mirror_rows.append(
                {
                    "image": name,
                    "yaw": round(a.head_pose.yaw, 1),
                    "yaw_mirrored": round(b.head_pose.yaw, 1),
                    "roll": round(a.head_pose.roll, 1),
                    "roll_mirrored": round(b.head_pose.roll, 1),
                }
            )
    for r in mirror_rows:
        r["yaw_flips"] = bool(np.sign(r["yaw"]) == -np.sign(r["yaw_mirrored"]))
        r["roll_flips"] = bool(np.sign(r["roll"]) == -np.sign(r["roll_mirrored"]))
    res["mirror"] = mirror_rows

    # gaze grid
    levels = [-0.8, -0.4, 0.0, 0.4, 0.8]
    grid = [(gx, gy) for gy in levels for gx in levels]
    imgs = render(renderer, np.stack([vec(gaze_x=gx, gaze_y=gy) for gx, gy in grid]))
    gaze_rows: list[dict[str, Any]] = []
    for (gx, gy), img in zip(grid, imgs, strict=True):
        f = analyse(img).face
        gaze_rows.append(
            {
                "gaze_x": gx,
                "gaze_y": gy,
                "truth": gaze_truth(gx, gy),
                "read": None if f is None else f.gaze,
                "score": None if f is None else round(f.gaze_score, 3),
                "offset": None if f is None else [round(v, 1) for v in f.gaze_offset],
            }
        )
    scored = [(r["truth"], r["read"] or "none") for r in gaze_rows if r["truth"] is not None]
    res["gaze"] = {
        "rows": gaze_rows,
        "confusion": confusion(scored, ("camera", "away")),
        "accuracy": accuracy(scored),
        "x_sign_acc": _sign_acc([(r["gaze_x"], r["offset"][0]) for r in gaze_rows if r["offset"] and r["gaze_y"] == 0]),
        "y_sign_acc": _sign_acc([(r["gaze_y"], r["offset"][1]) for r in gaze_rows if r["offset"] and r["gaze_x"] == 0]),
    }

    # blink
    faces = {"rest": {}, "yaw +10": {"head_yaw": 10.0}, "yaw -10": {"head_yaw": -10.0}, "smiling": {}}
    blink_rows: list[dict[str, Any]] = []
    for name, extra in faces.items():
        for b in (0.0, 0.5, 1.0):
            v = (emotion_vec("happiness", 0.8) if name == "smiling" else vec(**extra)).copy()
            v[fp.INDEX["blink"]] = b
            f = analyse(render(renderer, v[None])[0]).face
            blink_rows.append(
                {
                    "face": name,
                    "blink": b,
                    "read": None if f is None else ("closed" if f.eyes_closed else "open"),
                    "ear": None if f is None else round((f.ear[0] + f.ear[1]) / 2, 3),
                }
            )
    truth = {0.0: "open", 1.0: "closed"}
    bpairs = [(truth[r["blink"]], r["read"] or "none") for r in blink_rows if r["blink"] in truth]
    res["blink"] = {
        "rows": blink_rows,
        "confusion": confusion(bpairs, ("open", "closed")),
        "accuracy": accuracy(bpairs),
        "half_closed_read": [r["read"] for r in blink_rows if r["blink"] == 0.5],
    }

    # face count
    flat = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    two = np.concatenate([photo, photo], axis=1)
    three = np.concatenate([photo, photo[:, ::-1], photo], axis=1)
    r3 = np.concatenate(render(renderer, np.stack([vec(), vec(head_yaw=10.0), vec(head_yaw=-10.0)])), axis=1)
    cases: list[tuple[str, int, U8]] = [
        ("skimage coffee", 0, sample_image("coffee")),
        ("skimage chelsea (cat)", 0, sample_image("chelsea")),
        ("flat grey 640x480", 0, flat),
        ("astronaut photo", 1, photo),
        ("render rest", 1, rest_img),
        ("render yaw +15", 1, turned[0]),
        ("2 photos side by side", 2, np.ascontiguousarray(two)),
        ("photo + mirrored photo", 2, np.ascontiguousarray(np.concatenate([photo, photo[:, ::-1]], axis=1))),
        ("3 photos side by side", 3, np.ascontiguousarray(three)),
        ("3 renders side by side", 3, np.ascontiguousarray(r3)),
    ]
    count_rows: list[dict[str, Any]] = [{"image": n, "true": k, "read": int(analyse(img).faces)} for n, k, img in cases]
    cpairs = [(count_label(r["true"]), count_label(r["read"])) for r in count_rows]
    res["faces"] = {
        "rows": count_rows,
        "confusion": confusion(cpairs, ("0", "1", "2", "3", "4+")),
        "accuracy": accuracy(cpairs),
    }

    # expression
    exp_rows: list[dict[str, Any]] = []
    f = analyse(photo).face
    exp_rows.append(_exp_row("astronaut photo (real smile)", "happiness", f))
    for name in EMOTIONS8:
        for inten in (0.6, 1.0):
            f = analyse(render(renderer, emotion_vec(name, inten)[None])[0]).face
            exp_rows.append(_exp_row(f"render {name} {inten}", name, f))
    epairs = [(r["true"], r["read"] or "none") for r in exp_rows]
    conv_rows: list[dict[str, Any]] = []
    for name in CONVERSATIONAL:
        f = analyse(render(renderer, emotion_vec(name, 1.0)[None])[0]).face
        conv_rows.append(_exp_row(f"render {name} 1.0", name, f))
    res["expression"] = {
        "rows": exp_rows,
        "confusion": confusion(epairs, EMOTIONS8),
        "accuracy": accuracy(epairs),
        "accuracy_rendered_only": accuracy(epairs[1:]),
        "conversational": conv_rows,
    }
    res["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"face accuracy: {res['seconds']} s")
    return res


def _sign_acc(pairs: Sequence[tuple[float, float]]) -> float | None:
    nz = [(t, m) for t, m in pairs if t != 0]
    return sum(1 for t, m in nz if np.sign(t) == np.sign(m)) / len(nz) if nz else None


def _exp_row(name: str, true: str, face: Any) -> dict[str, Any]:
    if face is None:
        return {"image": name, "true": true, "read": None, "p_read": None, "p_true": None}
    return {
        "image": name,
        "true": true,
        "read": face.top_emotion,
        "p_read": round(face.emotion[face.top_emotion], 3),
        "p_true": round(face.emotion[true], 3) if true in face.emotion else None,
    }


# --------------------------------------------------------------------------------------- 2b. voice accuracy
def summarise(tracker: Any, pcm: I16, t0: float) -> Any:
    """One utterance through frame_pcm/frame_features and the tracker with floor boundaries; returns its summary."""
    from orchestrator.perception.prosody_features import frame_features, frame_pcm

    padded = np.concatenate([pcm, np.zeros((-pcm.size) % HOP, np.int16)])
    feats = frame_features(frame_pcm(padded)[0])
    for i, row in enumerate(feats):
        tracker.push(t0 + (i + 1) * 0.02, row, speech=True)
    return tracker.end(t0 + feats.shape[0] * 0.02)


def voiced_end(pcm: I16) -> int:
    """The sample after the last voiced hop (frame_features' own voicing decision)."""
    from orchestrator.perception.prosody_features import VOICED, frame_features, frame_pcm

    padded = np.concatenate([pcm, np.zeros((-pcm.size) % HOP, np.int16)])
    voiced = np.flatnonzero(frame_features(frame_pcm(padded)[0])[:, VOICED] > 0.5)
    return min(int(voiced[-1] + 1) * HOP, pcm.size) if voiced.size else pcm.size


def glide(pcm: I16, semitones: float) -> I16:
    return rising_end(pcm, voiced_end(pcm), semitones)


def piper_conditions(v: Voices) -> tuple[list[I16], dict[str, list[I16]]]:
    from scipy.signal import resample_poly

    usual = db_gain(-12.0)  # the speaker's usual level: 12 dB below piper's own, so +12 dB does not clip
    base = [scale(v.say(t), usual) for t in BASELINE_TEXTS]
    gap = np.zeros(int(0.9 * SR), np.int16)

    def pauses(text: str) -> I16:
        words = text.rstrip(".").split()
        k = len(words) // 3
        chunks = [" ".join(words[:k]), " ".join(words[k : 2 * k]), " ".join(words[2 * k :]) + "."]
        return np.concatenate([v.say(c) if i == 2 else np.concatenate([v.say(c), gap]) for i, c in enumerate(chunks)])

    cond: dict[str, list[I16]] = {
        "normal": [scale(v.say(t), usual) for t in TEST_TEXTS],
        "quiet (-12 dB)": [scale(v.say(t), usual * db_gain(-12.0)) for t in TEST_TEXTS],
        "loud (+12 dB)": [scale(v.say(t), usual * db_gain(12.0)) for t in TEST_TEXTS],
        "slow": [scale(v.say(t, 1.6), usual) for t in TEST_TEXTS],
        "fast": [to_pcm(resample_poly(v.say(t) / 32768.0 * usual, 5, 7)) for t in TEST_TEXTS],
        "long pauses": [scale(pauses(t), usual) for t in TEST_TEXTS],
        **{f"rising end +{st:.0f} st": [glide(scale(v.say(t), usual), st) for t in TEST_TEXTS] for st in RISES_ST},
        "question": [scale(v.say(t), usual) for t in QUESTION_TEXTS],
        "calm": [scale(v.say(t, 1.25), usual * db_gain(-6.0)) for t in TEST_TEXTS],
        "agitated": [to_pcm(resample_poly(v.say(t, 0.9) / 32768.0 * usual * db_gain(6.0), 6, 7)) for t in TEST_TEXTS],
    }
    return base, cond


PIPER_SETTINGS = {
    "normal": "usual level (-12 dB re piper)",
    "quiet (-12 dB)": "gain -12 dB",
    "loud (+12 dB)": "gain +12 dB",
    "slow": "piper length_scale 1.6",
    "fast": "resampled 1.4x (pitch +5.8 st too)",
    "long pauses": "3 pieces, 0.9 s silences",
    "rising end +4 st": "pitch glide 0 -> +4 st over the last 400 ms of voicing",
    "rising end +8 st": "pitch glide 0 -> +8 st over the last 400 ms of voicing",
    "question": "question wording, same voice",
    "calm": "length_scale 1.25, -6 dB",
    "agitated": "length_scale 0.9, resampled 1.17x (+2.7 st), +6 dB",
}
ESPEAK_SETTINGS = {
    "normal": "-s 160 -p 50 -a 50",
    "quiet (-12 dB)": "-a 13",
    "loud (+12 dB)": "-a 200",
    "slow": "-s 110",
    "fast": "-s 240",
    "long pauses": "3 pieces, 0.9 s silences",
    "rising end +4 st": "pitch glide 0 -> +4 st over the last 400 ms of voicing",
    "rising end +8 st": "pitch glide 0 -> +8 st over the last 400 ms of voicing",
    "question": "question wording",
    "calm": "-s 130 -p 30 -a 30",
    "agitated": "-s 220 -p 80 -a 120",
}


def espeak_conditions(v: Voices) -> tuple[list[I16], dict[str, list[I16]]]:
    base = [v.espeak_say(t) for t in BASELINE_TEXTS]
    gap = np.zeros(int(0.9 * SR), np.int16)

    def pauses(text: str) -> I16:
        words = text.rstrip(".").split()
        k = len(words) // 3
        chunks = [" ".join(words[:k]), " ".join(words[k : 2 * k]), " ".join(words[2 * k :]) + "."]
        pieces = [v.espeak_say(c) for c in chunks]
        return np.concatenate([pieces[0], gap, pieces[1], gap, pieces[2]])

    cond: dict[str, list[I16]] = {
        "normal": [v.espeak_say(t) for t in TEST_TEXTS],
        "quiet (-12 dB)": [v.espeak_say(t, amplitude=13) for t in TEST_TEXTS],
        "loud (+12 dB)": [v.espeak_say(t, amplitude=200) for t in TEST_TEXTS],
        "slow": [v.espeak_say(t, speed=110) for t in TEST_TEXTS],
        "fast": [v.espeak_say(t, speed=240) for t in TEST_TEXTS],
        "long pauses": [pauses(t) for t in TEST_TEXTS],
        **{f"rising end +{st:.0f} st": [glide(v.espeak_say(t), st) for t in TEST_TEXTS] for st in RISES_ST},
        "question": [v.espeak_say(t) for t in QUESTION_TEXTS],
        "calm": [v.espeak_say(t, speed=130, pitch=30, amplitude=30) for t in TEST_TEXTS],
        "agitated": [v.espeak_say(t, speed=220, pitch=80, amplitude=120) for t in TEST_TEXTS],
    }
    return base, cond


def voice_table(base: Sequence[I16], cond: Mapping[str, Sequence[I16]]) -> dict[str, Any]:
    from orchestrator.perception.voice import VoiceTracker

    warm = VoiceTracker()
    t = 0.0
    for pcm in base:
        summarise(warm, pcm, t)
        t += pcm.size / SR + 2.0
    rows: dict[str, Any] = {}
    for name, pcms in cond.items():
        per: dict[str, list[float]] = {s: [] for s in STATES}
        extra: dict[str, list[float]] = {"energy_db": [], "rate_sps": [], "long_pauses": [], "final_rel_st": []}
        clipped = 0
        for pcm in pcms:
            tracker = copy.deepcopy(warm)
            s = summarise(tracker, pcm, t + 10.0)
            for k in STATES:
                per[k].append(float(getattr(s.states, k)))
            if s.states.relative.get("energy_db") is not None:
                extra["energy_db"].append(float(s.states.relative["energy_db"]))
            extra["rate_sps"].append(float(s.stats.articulation_rate_sps))
            extra["long_pauses"].append(float(s.stats.long_pauses))
            if s.stats.final_rel_st is not None:
                extra["final_rel_st"].append(float(s.stats.final_rel_st))
            clipped += int(s.stats.clipped)
        rows[name] = {
            **{k: median(v) for k, v in per.items()},
            **{k: median(v) for k, v in extra.items()},
            "clipped": clipped,
            "n": len(pcms),
        }
    normal = rows["normal"]
    for name, row in rows.items():
        checks = {}
        for state, sign in EXPECTED.get(name, {}).items():
            d = None if row[state] is None or normal[state] is None else row[state] - normal[state]
            checks[state] = {"delta": d, "ok": moved(d, sign, normal[state])}
        row["checks"] = checks
    n_checks = [c["ok"] for r in rows.values() for c in r["checks"].values() if c["ok"] is not None]
    return {
        "baseline_speech_s": round(warm.baseline.speech_s, 1),
        "rows": rows,
        "passed": sum(n_checks),
        "checks": len(n_checks),
    }


def voice_accuracy(voices: Voices, log: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    res: dict[str, Any] = {}
    base, cond = piper_conditions(voices)
    res["piper"] = {
        **voice_table(base, cond),
        "settings": PIPER_SETTINGS,
        "role": "the tuning voice, on other sentences",
    }
    if voices.espeak is not None:
        base, cond = espeak_conditions(voices)
        res["espeak"] = {**voice_table(base, cond), "settings": ESPEAK_SETTINGS, "role": "held out"}
    else:
        res["espeak"] = None
    res["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"voice accuracy: {res['seconds']} s")
    return res


# --------------------------------------------------------------------------------------- 3. cost
def cost_report(
    analyzer: Any, renderer: Any, voices: Voices, quick: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    from orchestrator.perception.face import decode_frame
    from orchestrator.perception.prosody_features import frame_features, frame_pcm
    from orchestrator.perception.voice import VoiceTracker

    t0 = time.perf_counter()
    reps = 3 if quick else 5
    speech = np.concatenate([scale(voices.say(t), db_gain(-12.0)) for t in TEST_TEXTS])
    speech = speech[: speech.size // (3 * HOP) * 3 * HOP]
    seconds = speech.size / SR
    chunks = speech.reshape(-1, 3 * HOP)

    def stream_features() -> F32:
        tail = None
        rows = []
        for c in chunks:
            frames, tail = frame_pcm(c, tail)
            rows.append(frame_features(frames))
        return np.concatenate(rows)

    feats = stream_features()
    feat_s = timed(stream_features, reps)

    def track() -> None:
        tr = VoiceTracker()
        for i, row in enumerate(feats):
            tr.push((i + 1) * 0.02, row)

    track_s = timed(track, reps)
    all_frames, _ = frame_pcm(speech)
    batch: dict[str, Any] = {}
    for b in (1, 64):
        x = all_frames[:b]
        n = 200 if b == 1 else 10

        def many(x: I16 = x, n: int = n) -> None:
            for _ in range(n):
                frame_features(x)

        per = [s / n for s in timed(many, reps)]
        batch[str(b)] = {"ms_per_call": 1e3 * (median(per) or 0.0), "us_per_frame": 1e6 * (median(per) or 0.0) / b}
    voice = {
        "audio_s": round(seconds, 2),
        "features_ms_per_audio_s": 1000 * (median(feat_s) or 0.0) / seconds,
        "tracker_ms_per_audio_s": 1000 * (median(track_s) or 0.0) / seconds,
        "features_batch": batch,
    }

    # face: 8 distinct 640x480 frames
    imgs = render(
        renderer,
        np.stack(
            [
                vec(head_yaw=y, gaze_x=g, lip_corner_up=s)
                for y, g, s in zip(
                    (-15, -8, 0, 8, 15, 4, -4, 0),
                    (0, 0.5, 0, -0.5, 0, 0.3, 0, 0),
                    (0, 0, 0.8, 0, 0, 0.4, 0, 0),
                    strict=True,
                )
            ]
        ),
    )
    jpegs = [jpeg(i) for i in imgs]
    dec_s = timed(lambda: [decode_frame(j) for j in jpegs], reps)
    decoded = [decode_frame(j) for j in jpegs]
    ana_s = timed(lambda: [analyzer.analyze(i) for i in decoded], reps)
    bat_s = timed(lambda: analyzer.analyze_batch(decoded), reps)
    dec_ms = 1000 * (median(dec_s) or 0.0) / len(jpegs)
    ana_ms = 1000 * (median(ana_s) or 0.0) / len(jpegs)
    bat_ms = 1000 * (median(bat_s) or 0.0) / len(jpegs)
    face = {
        "decode_ms_per_frame": dec_ms,
        "analyze_ms_per_frame": ana_ms,
        "total_ms_per_frame": dec_ms + ana_ms,
        "ms_per_s_at_10fps": 10 * (dec_ms + ana_ms),
        "ms_per_s_at_30fps": 30 * (dec_ms + ana_ms),
        "batch1_ms_per_frame": ana_ms,
        "batch8_ms_per_frame": bat_ms,
    }
    res = {"voice": voice, "face": face, "reps": reps, "seconds": round(time.perf_counter() - t0, 1)}
    log(f"cost: {res['seconds']} s")
    return res


# --------------------------------------------------------------------------------------- output
def print_tables(res: Mapping[str, Any]) -> None:
    print("\n## Perception benchmark\n")
    print(f"{res['machine']}; torch threads 1; timings are medians of repeated runs on shared cores.\n")
    st = res.get("stack")
    if st:
        print("### 1. Freshness through the real stack (`duet perceive --speed 1`, one `duet serve`)\n")
        rows = []
        for r in st["runs"]:
            s = r["stats"] or {}
            rows.append(
                [
                    r["input"],
                    r["fps"],
                    fmt(r["clip_s"], 0),
                    fmt(s.get("audio_ms_p50")),
                    f"{fmt(s.get('audio_ms_p95'))} ({mark(r.get('audio_ok'))})",
                    fmt(s.get("visual_ms_p50")),
                    f"{fmt(s.get('visual_ms_p95'))} ({mark(r.get('visual_ok'))})",
                    r["frames_nominal"],
                    s.get("frames", "-"),
                    s.get("dropped", "-"),
                    r["events"]["perception"],
                    r["events"]["utterance_summary"],
                    r["rc"],
                ]
            )
        print(
            markdown_table(
                [
                    "input",
                    "fps in",
                    "clip s",
                    "audio p50 ms",
                    "audio p95 ms (<=100)",
                    "visual p50 ms",
                    "visual p95 ms (<=300)",
                    "frames sent",
                    "analysed",
                    "dropped",
                    "perception events",
                    "utterance summaries",
                    "rc",
                ],
                rows,
            )
        )
        print(f"\nserver start-up {fmt(st.get('server_startup_s'))} s (embedded tritonserver).\n")
    fa = res.get("face")
    if fa:
        print("### 2a. Head pose (rendered replica, 640x480; reading minus the rest render's reading)\n")
        print(f"rest render reads {fa['rest_pose']}\n")
        rows = []
        for axis, m in fa["pose_sweeps"].items():
            rows.append(
                [
                    axis,
                    f"{min(m['true']):.0f}..{max(m['true']):.0f}",
                    fmt(m["mae"]),
                    fmt(m["max_err"]),
                    fmt(m["gain"], 2),
                    fmt(m["sign_acc"], 2),
                    fmt(m["crosstalk_max"]),
                    m["missed"],
                    " ".join(f"{x:+.0f}" for x in m["measured_minus_rest"]),
                ]
            )
        print(
            markdown_table(
                ["axis", "true deg", "MAE deg", "max err", "gain", "sign acc", "cross-talk max", "missed", "read"],
                rows,
            )
        )
        print("\nAstronaut photo rotated in-plane (roll should change by -angle):\n")
        print(
            markdown_table(
                ["rotation (ccw deg)", "roll change", "expected", "abs err"],
                [[r["ccw_deg"], fmt(r["roll_change"]), r["expected"], fmt(r["err"])] for r in fa["photo_rotation"]],
            )
        )
        print("\nMirrored (yaw and roll should flip sign):\n")
        print(
            markdown_table(
                ["image", "yaw", "yaw mirrored", "flips", "roll", "roll mirrored", "flips"],
                [
                    [
                        r["image"],
                        r["yaw"],
                        r["yaw_mirrored"],
                        mark(r["yaw_flips"]),
                        r["roll"],
                        r["roll_mirrored"],
                        mark(r["roll_flips"]),
                    ]
                    for r in fa["mirror"]
                ],
            )
        )
        g = fa["gaze"]
        print("\n### 2b. Gaze (rendered gaze_x, gaze_y grid): label read, score in brackets\n")
        levels = sorted({r["gaze_x"] for r in g["rows"]})
        grid = {(r["gaze_x"], r["gaze_y"]): r for r in g["rows"]}
        rows = [
            [f"gaze_y {gy:+.1f}"]
            + [f"{grid[gx, gy]['read'] or 'none'} ({fmt(grid[gx, gy]['score'], 2)})" for gx in levels]
            for gy in levels
        ]
        print(markdown_table([""] + [f"gaze_x {x:+.1f}" for x in levels], rows))
        print("\nScored cells (truth camera at 0,0; away when an offset is 0.8):\n")
        print(_confusion_md(g["confusion"]))
        print(
            f"\naccuracy {fmt(g['accuracy'], 2)}; sign of the measured gaze offset: "
            f"x {fmt(g['x_sign_acc'], 2)}, y {fmt(g['y_sign_acc'], 2)}\n"
        )
        b = fa["blink"]
        print("### 2c. Blink -> eyes_closed (rest, yaw +-10, smiling)\n")
        print(_confusion_md(b["confusion"]))
        print(
            f"\naccuracy {fmt(b['accuracy'], 2)}; blink 0.5 read as {b['half_closed_read']}; EAR by blink: "
            + ", ".join(f"{r['face']}/{r['blink']}: {fmt(r['ear'], 3)}" for r in b["rows"])
            + "\n"
        )
        fc = fa["faces"]
        print("### 2d. Face count\n")
        print(_confusion_md(fc["confusion"]))
        print(
            "\n" + markdown_table(["image", "true", "read"], [[r["image"], r["true"], r["read"]] for r in fc["rows"]])
        )
        print(f"\naccuracy {fmt(fc['accuracy'], 2)}\n")
        ex = fa["expression"]
        print("### 2e. Expression, 8 classes (rows true, columns read)\n")
        print(_confusion_md(ex["confusion"]))
        print(
            f"\naccuracy {fmt(ex['accuracy'], 2)} (rendered only {fmt(ex['accuracy_rendered_only'], 2)}); per image:\n"
        )
        print(
            markdown_table(
                ["image", "read", "p(read)", "p(true)"],
                [[r["image"], r["read"], fmt(r["p_read"], 2), fmt(r["p_true"], 2)] for r in ex["rows"]],
            )
        )
        print("\nConversational states (no 8-class truth):\n")
        print(
            markdown_table(
                ["image", "read", "p(read)"],
                [[r["image"], r["read"], fmt(r["p_read"], 2)] for r in ex["conversational"]],
            )
        )
        print()
    vo = res.get("voice")
    if vo:
        for key in ("piper", "espeak"):
            v = vo.get(key)
            if not v:
                print(f"### 2f. Voice ({key}): not run\n")
                continue
            print(
                f"### 2f. Voice states, {key} ({v['role']}); medians over {len(TEST_TEXTS)} sentences after a "
                f"{v['baseline_speech_s']} s warm baseline; movement vs normal checked where expected\n"
            )
            rows = []
            for name, r in v["rows"].items():
                cells = []
                for s in ("arousal", "hesitancy", "uncertainty", "tension", "flatness"):
                    c = r["checks"].get(s)
                    cells.append(
                        fmt(r[s], 2)
                        + ("" if c is None else f" {'+' if EXPECTED[name][s] > 0 else '-'}{mark(c['ok'], 'n/a')}")
                    )
                rows.append(
                    [
                        name,
                        v["settings"][name],
                        *cells,
                        fmt(r["energy_db"]),
                        fmt(r["rate_sps"], 2),
                        fmt(r["final_rel_st"]),
                        fmt(r["long_pauses"], 0),
                        r["clipped"],
                    ]
                )
            print(
                markdown_table(
                    [
                        "condition",
                        "made by",
                        "arousal",
                        "hesitancy",
                        "uncertainty",
                        "tension",
                        "flatness",
                        "energy vs base dB",
                        "syll/s",
                        "final rise st",
                        "long pauses",
                        "clipped",
                    ],
                    rows,
                )
            )
            print(f"\nexpected movements that happened: {v['passed']}/{v['checks']}\n")
    co = res.get("cost")
    if co:
        print("### 3. Cost on this CPU (one session; ms of CPU per second of input)\n")
        vc, fc2 = co["voice"], co["face"]
        print(
            markdown_table(
                ["what", "ms per s of input", "per unit"],
                [
                    ["voice features (3 hops per call)", fmt(vc["features_ms_per_audio_s"], 2), "-"],
                    ["voice tracker (VoiceTracker.push)", fmt(vc["tracker_ms_per_audio_s"], 2), "-"],
                    ["face: JPEG decode 640x480", "-", f"{fmt(fc2['decode_ms_per_frame'])} ms/frame"],
                    ["face: analyze 640x480", "-", f"{fmt(fc2['analyze_ms_per_frame'])} ms/frame"],
                    ["face at 10 fps", fmt(fc2["ms_per_s_at_10fps"], 0), "-"],
                    ["face at 30 fps", fmt(fc2["ms_per_s_at_30fps"], 0), "-"],
                ],
            )
        )
        print("\nBatching:\n")
        fb = vc["features_batch"]
        print(
            markdown_table(
                ["call", "batch", "ms per call", "per item"],
                [
                    ["frame_features", 1, fmt(fb["1"]["ms_per_call"], 3), f"{fmt(fb['1']['us_per_frame'])} us/frame"],
                    [
                        "frame_features",
                        64,
                        fmt(fb["64"]["ms_per_call"], 3),
                        f"{fmt(fb['64']['us_per_frame'])} us/frame",
                    ],
                    [
                        "FaceAnalyzer.analyze_batch",
                        1,
                        fmt(fc2["batch1_ms_per_frame"]),
                        f"{fmt(fc2['batch1_ms_per_frame'])} ms/frame",
                    ],
                    [
                        "FaceAnalyzer.analyze_batch",
                        8,
                        fmt(8 * fc2["batch8_ms_per_frame"]),
                        f"{fmt(fc2['batch8_ms_per_frame'])} ms/frame",
                    ],
                ],
            )
        )
        print()
    print(f"total {res['seconds']} s\n")


def _confusion_md(table: Mapping[str, Mapping[str, int]]) -> str:
    cols: list[str] = []
    for row in table.values():
        for c in row:
            if c not in cols:
                cols.append(c)
    rows = [[f"**{t}**", *[row.get(c, 0) or "." for c in cols]] for t, row in table.items() if sum(row.values())]
    return markdown_table(["true \\ read", *cols], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Perception benchmark: freshness, accuracy, cost")
    ap.add_argument("--quick", action="store_true", help="8 s clip, fps 30 only, coarser sweeps, fewer repetitions")
    ap.add_argument("--skip-stack", action="store_true", help="no duet serve / Triton: parts 2 and 3 only")
    ap.add_argument("--stack-reps", type=int, default=2, help="runs per frame rate through the stack (default 2)")
    ap.add_argument("--server", default=None, help="HOST:PORT of a running duet server (else one is started)")
    ap.add_argument("--out", default=str(ROOT / "perf" / "out" / "perception"))
    args = ap.parse_args(argv)

    import torch
    from PIL import Image

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    from orchestrator.perception.face import FaceAnalyzer

    res: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "quick": args.quick,
    }
    voices = Voices()
    if not args.skip_stack:
        seconds = 8.0 if args.quick else 15.0
        video, audio, seconds = build_clip(out, seconds, voices, log)
        photo = out / "astronaut.png"
        Image.fromarray(astronaut()).save(photo)
        clip_name = "replica clip (MP4)"
        plan = [(clip_name, video, 30)]
        if not args.quick:
            plan = [
                *[(clip_name, video, 30)] * args.stack_reps,
                *[(clip_name, video, 10)] * args.stack_reps,
                ("astronaut photo (still)", photo, 30),
            ]
        res["stack"] = stack_report(out, plan, audio, seconds, args.server, log)
    analyzer = FaceAnalyzer()
    renderer = make_renderer()
    try:
        res["face"] = face_accuracy(analyzer, renderer, args.quick, log)
        res["voice"] = voice_accuracy(voices, log)
        res["cost"] = cost_report(analyzer, renderer, voices, args.quick, log)
    finally:
        analyzer.close()
    res["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(res, indent=2, default=_json_default))
    print_tables(res)
    print(f"wrote {out / 'results.json'}")
    return 0


def _json_default(x: object) -> object:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


if __name__ == "__main__":
    sys.exit(main())
