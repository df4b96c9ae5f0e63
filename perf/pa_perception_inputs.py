"""perf_analyzer inputs for `perception_audio` (3 hops of real speech, what a session sends every 60 ms) and
`perception_face` (a real 640x480 photo as JPEG), a server launcher that loads only those two models, and
the summary table.

    python perf/pa_perception_inputs.py inputs OUT    # OUT/audio.json, OUT/face.json
    python perf/pa_perception_inputs.py serve         # print `grpc_url`, hold until SIGTERM
    python perf/pa_perception_inputs.py summary OUT   # markdown table from the CSVs
"""

from __future__ import annotations

import base64
import io
import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from duet.wav import read_pcm16  # noqa: E402
from orchestrator.config import TritonSettings  # noqa: E402
from orchestrator.models.launcher import EmbeddedTriton  # noqa: E402
from orchestrator.perception.prosody_features import frame_pcm  # noqa: E402
from perf.pa_summary import row  # noqa: E402

MODELS = ("perception_audio", "perception_face")
LEVELS = (1, 4, 8, 16)


def inputs(out: Path) -> None:
    from PIL import Image
    from skimage.data import astronaut

    out.mkdir(parents=True, exist_ok=True)
    audio = np.frombuffer(read_pcm16(ROOT / "perf/data/samples/demo_user.wav"), dtype="<i2").astype(np.int16)
    frames, _ = frame_pcm(audio[round(3.0 * 16000) : round(3.0 * 16000) + 3 * 320])  # 3 hops of speech
    (out / "audio.json").write_text(
        json.dumps({"data": [{"FRAMES": {"content": frames.reshape(-1).tolist(), "shape": list(frames.shape)}}]})
    )
    img = Image.fromarray(astronaut()).resize((480, 480)).crop((0, 0, 480, 480))
    canvas = Image.new("RGB", (640, 480), (128, 128, 128))
    canvas.paste(img, (80, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=85)
    # A BYTES tensor in binary form is each element's 4-byte little-endian length, then its bytes.
    raw = len(buf.getvalue()).to_bytes(4, "little") + buf.getvalue()
    face = {"IMAGE": {"b64": base64.b64encode(raw).decode(), "shape": [1]}}
    (out / "face.json").write_text(json.dumps({"data": [face]}))


def serve() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with EmbeddedTriton(TritonSettings(models=MODELS)) as server:
        print(server.grpc_url, flush=True)
        stop.wait()


def summary(out: Path) -> None:
    print("| model | request | concurrency | infer/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for model, what in (("perception_audio", "3 hops (60 ms) of speech"), ("perception_face", "640x480 JPEG")):
        for c in LEVELS:
            r = row(out / f"{model}_c{c}.csv")
            if r is not None:
                print(f"| {model} | {what} | {c} | {r['thr']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} |")


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "inputs":
        inputs(Path(sys.argv[2]))
    elif command == "serve":
        serve()
    else:
        summary(Path(sys.argv[2]))
