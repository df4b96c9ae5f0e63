"""Setup's last step: run every model's runtime once, each in its own process, and name the one that fails.

A native runtime that crashes (a llama.cpp build for another CPU dies with SIGSEGV or SIGILL in its first
decode) would otherwise only show up inside Triton as a stub that is "not healthy" on the first user turn.
Here each check runs in a child process, so a crash is caught with its signal and reported with the model's
name, and setup fails before anything else starts:

    python scripts/smoke_models.py            # every check; exit 1 naming each model that failed
    python scripts/smoke_models.py llm asr    # just these

Each check does the least real work of its model: a few tokens from each LLM, one decode from Whisper, one
sentence of piper speech, one face frame rendered and encoded, one window of VAD and Smart Turn, one camera
frame through MediaPipe and the expression network, three sentences through the embedding model.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "model_repository"
TIMEOUT_S = 180


def _llm() -> str:
    """Every GGUF the `llm` config lists, the default first (one token each is enough to crash a bad build)."""
    from orchestrator.inference.llm import LlamaEngine, Message, generate_text, parse_model_specs

    config = (REPO / "llm" / "config.pbtxt").read_text()
    params = dict(re.findall(r'key:\s*"([^"]+)"\s+value:\s*\{\s*string_value:\s*"([^"]*)"', config))
    specs, default = parse_model_specs(params)
    said = []
    for spec in sorted(specs, key=lambda s: s.name != default):
        gguf = REPO / "llm" / "1" / spec.file
        engine = LlamaEngine(gguf, n_ctx=512, n_threads=1)
        text = generate_text(engine, [Message("user", "Say hello.")], max_tokens=4, temperature=0.0)
        if not text.strip():
            raise RuntimeError(f"the LLM {spec.name} ({gguf.name}) generated no text")
        said.append(f"{spec.name}{' (default)' if spec.name == default else ''}: {text.strip()!r}")
    return "; ".join(said)


def _tts() -> str:
    from orchestrator.inference.tts import PiperSpeaker

    voice = next((REPO / "tts" / "1" / "voices").glob("*.onnx"))
    spoken = PiperSpeaker(voice).synthesize("Hello there.")
    if spoken.pcm.size < 1600 or not spoken.phonemes:
        raise RuntimeError("piper produced no speech or no phoneme timings")
    return f"{voice.stem}: {spoken.duration:.2f} s, {len(spoken.phonemes)} phonemes"


def _asr() -> str:
    from orchestrator.inference.asr import WhisperRecognizer
    from orchestrator.inference.tts import PiperSpeaker

    voice = next((REPO / "tts" / "1" / "voices").glob("*.onnx"))
    audio = PiperSpeaker(voice).synthesize("Good morning, I would like to book an appointment.").pcm
    (result,) = WhisperRecognizer(REPO / "asr" / "1" / "whisper-base", threads=1)([audio])
    if "appointment" not in result.text.lower():
        raise RuntimeError(f"Whisper decoded {result.text!r} from a known sentence")
    return repr(result.text.strip())


def _face() -> str:
    from orchestrator.face.library import RenderPool
    from orchestrator.face.params import rest

    pool = RenderPool(faces_dir=ROOT / "faces", cache_dir=ROOT / ".cache" / "faces", device="cpu", threads=1)
    pool.renderer("astronaut", 256, 256)
    (jpeg,) = pool.encode(pool.render(("astronaut", 256, 256), rest(1)), 80)
    if not jpeg.startswith(b"\xff\xd8"):
        raise RuntimeError("the face renderer did not produce a JPEG")
    return f"one 256x256 frame, {len(jpeg)} bytes"


def _onnx() -> str:
    import numpy as np

    from orchestrator.inference.turn import SmartTurn
    from orchestrator.inference.vad import STATE_SHAPE, WINDOW, SileroBatch
    from orchestrator.signal.logmel import WINDOW_SAMPLES

    SileroBatch(REPO / "vad" / "1" / "silero_vad.onnx")(
        np.zeros((1, WINDOW + 64), np.int16), np.zeros((1, *STATE_SHAPE), np.float32)
    )
    turn_path = next((REPO / "turn" / "1").glob("*.onnx"))
    p = SmartTurn(turn_path)(np.zeros((1, WINDOW_SAMPLES), np.int16))
    return f"silero VAD and {turn_path.name} (p={float(p[0, 0]):.2f})"


def _perception() -> str:
    from orchestrator.perception.face import FaceAnalyzer, decode_frame

    image = decode_frame((ROOT / "faces" / "astronaut.png").read_bytes())
    analyzer = FaceAnalyzer(REPO / "perception_face" / "1" / "emotion_model.hdf5")
    try:
        (analysis,) = analyzer.analyze_batch([image])
    finally:
        analyzer.close()
    if analysis.faces != 1 or analysis.face is None:
        raise RuntimeError(f"MediaPipe found {analysis.faces} faces on the shipped portrait, expected 1")
    top = max(analysis.face.emotion, key=analysis.face.emotion.__getitem__)
    return f"MediaPipe mesh + expression network on one portrait ({top})"


def _embed() -> str:
    from orchestrator.inference.embed import SentenceEmbedder

    embedder = SentenceEmbedder(REPO / "embed" / "1")
    query, paraphrase, other = embedder(
        ["How do I reset my password?", "Steps to change a forgotten password", "The clinic opens at 8 am."]
    )
    close, far = float(query @ paraphrase), float(query @ other)
    if not close > far + 0.2:
        raise RuntimeError(f"MiniLM embeddings look wrong: paraphrase cosine {close:.2f}, unrelated {far:.2f}")
    return f"MiniLM on three sentences (cosine paraphrase {close:.2f}, unrelated {far:.2f})"


CHECKS: dict[str, Callable[[], str]] = {
    "llm": _llm,
    "asr": _asr,
    "tts": _tts,
    "face": _face,
    "vad+turn": _onnx,
    "perception": _perception,
    "embed": _embed,
}


def _child(name: str) -> None:
    sys.path.insert(0, str(ROOT))
    print(CHECKS[name](), flush=True)


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"crashed with {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited {rc}"


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--child":
        _child(argv[1])
        return 0
    names = argv or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"[smoke] unknown checks {unknown}; known: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", name],
                check=False,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
            rc, out, err = proc.returncode, proc.stdout.strip(), proc.stderr.strip()
        except subprocess.TimeoutExpired:
            rc, out, err = 124, "", f"no answer within {TIMEOUT_S} s"
        took = time.monotonic() - t0
        if rc == 0:
            print(f"[smoke] {name:<10} ok in {took:4.1f} s: {out.splitlines()[-1] if out else ''}")
            continue
        failed.append(name)
        why = "timed out" if rc == 124 else _describe(rc)
        tail = "\n".join(err.splitlines()[-12:])
        print(f"[smoke] {name:<10} FAILED: {why} after {took:.1f} s\n{tail}", file=sys.stderr)
    if failed:
        print(
            f"[smoke] the runtime of {', '.join(failed)} does not work on this machine; setup stops here. "
            "A crash signal in the LLM usually means a llama.cpp build for another CPU: delete "
            "the llama-cpp folder of Duet's build cache and run setup again.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
