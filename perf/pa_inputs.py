"""Inputs for perf_analyzer (real speech from the shipped sample) and a no-dynamic-batching repository copy."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

from duet.wav import read_pcm16

ROOT = Path(__file__).resolve().parent.parent


def main(out: Path) -> None:
    audio = np.frombuffer(read_pcm16(ROOT / "perf/data/samples/demo_user.wav"), dtype="<i2").astype(np.int16)
    window = np.zeros(128000, np.int16)
    window[-min(audio.shape[0], 128000) :] = audio[-128000:]
    vad = [
        {
            "AUDIO": {"content": audio[i : i + 576].tolist(), "shape": [576]},
            "STATE": {"content": [0.0] * 256, "shape": [2, 128]},
        }
        for i in range(16000, 16000 + 8 * 512, 512)
    ]
    turn = [{"AUDIO": {"content": window.tolist(), "shape": [128000]}}]
    floor = [
        {
            **turn[0],
            "PAUSE_SAMPLES": {"content": [3200], "shape": [1]},
            "TEXT": {"content": [""], "shape": [1]},
            "CONTEXT": {"content": [""], "shape": [1]},
        }
    ]
    for name, data in (("vad", vad), ("turn", turn), ("floor", floor)):
        (out / f"{name}.json").write_text(json.dumps({"data": data}))
    repo = out / "repo_unbatched"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(ROOT / "model_repository", repo, symlinks=True)
    for cfg in repo.glob("*/config.pbtxt"):
        text = re.sub(r"dynamic_batching \{[^}]*\}\n", "", cfg.read_text())
        cfg.write_text(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
