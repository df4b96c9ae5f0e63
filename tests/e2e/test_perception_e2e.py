"""Perception through the whole stack: `duet perceive` prints the stable event stream, and in a conversation
what perception says reaches the LLM's context; a broken camera frame is refused and the session goes on."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import skimage.data
from PIL import Image

from duet.sdk import stream_media
from orchestrator.config import REPO_ROOT

DUET = str(Path(sys.executable).parent / "duet")
KEYS = {"type", "t", "modality", "text", "faces", "emotion", "head_pose", "gaze", "voice", "latency_ms"}


def jpeg(rgb: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def test_perceive_prints_visual_and_voice_events(server: str) -> None:
    from tests.conftest import SAMPLE

    r = subprocess.run(
        [
            DUET,
            "perceive",
            "--video",
            str(REPO_ROOT / "faces" / "astronaut.png"),
            "--audio",
            str(SAMPLE),
            "--jsonl",
            "--server",
            server,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    perception = [e for e in events if e["type"] == "perception"]
    assert perception and all(set(e) >= KEYS for e in perception)
    assert all(isinstance(e["text"], str) and e["text"].strip() for e in perception)
    seen = next(e for e in perception if e["faces"] == 1)
    assert seen["gaze"] == "camera" and max(seen["emotion"], key=seen["emotion"].get) == "happiness"
    assert any(e["voice"] for e in perception)  # the voice was heard too
    summaries = [e for e in events if e["type"] == "utterance_summary"]
    assert summaries and all(s["text"] for s in summaries)
    assert len(perception) < 40  # on change, never one per frame (the clip sends ~140 frames)


async def test_perception_reaches_the_llm_and_a_bad_frame_does_not_end_the_session(server: str) -> None:
    from duet.wav import read_pcm16
    from tests.conftest import SAMPLE

    pcm = read_pcm16(SAMPLE)
    face = jpeg(skimage.data.astronaut())
    duration = len(pcm) / 32000
    frames = [(0.1, b"\xff\xd8\xff this is not a jpeg")] + [(0.5 * k, face) for k in range(1, int(duration * 2))]
    events = [e async for e in stream_media(server, pcm, frames, speed=1.0)]
    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["bad_frame"]
    assert any(e["type"] == "perception" and e["faces"] == 1 for e in events)
    replies = [e for e in events if e["type"] == "reply_started"]
    assert replies and any((e.get("perception_note") or "").startswith("[perception]") for e in replies)
    assert events[-1]["type"] == "session_ended"
