"""Perception through the whole stack: `duet perceive` prints the stable event stream (also for a video with
no audio track, a still image alone, and a calm voice alone: each modality's first reading is an event), and
in a conversation what perception says reaches the LLM's context; a broken camera frame is refused and the
session goes on."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
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


def perceive(server: str, *args: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    r = subprocess.run(
        [DUET, "perceive", *args, "--jsonl", "--server", server],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    events = [json.loads(line) for line in r.stdout.splitlines()] if r.returncode == 0 else []
    return r, [e for e in events if e["type"] == "perception"]


def silent_clip(path: Path, seconds: float = 4.0, fps: int = 15) -> Path:
    """A webcam-like MP4 with a video track only: the shipped portrait, H.264, no audio stream at all."""
    import av

    rgb = np.asarray(Image.open(REPO_ROOT / "faces" / "astronaut.png").convert("RGB"))
    rgb = np.ascontiguousarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2])
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = rgb.shape[:2]
        stream.pix_fmt = "yuv420p"
        for _ in range(round(seconds * fps)):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    with av.open(str(path)) as check:
        assert check.streams.video and not check.streams.audio
    return path


@pytest.mark.parametrize("kind", ["silent_mp4", "still_image"])
def test_perceive_video_without_any_audio_is_visual_only(server: str, tmp_path: Path, kind: str) -> None:
    video = silent_clip(tmp_path / "webcam.mp4") if kind == "silent_mp4" else REPO_ROOT / "faces" / "astronaut.png"
    r, perception = perceive(server, "--video", str(video))
    assert r.returncode == 0, r.stderr
    assert "bad_audio_file" not in r.stderr and "error" not in r.stderr, r.stderr
    assert perception and all(set(e) >= KEYS for e in perception)
    assert all(e["modality"] == "visual" and e["voice"] is None for e in perception), perception
    first = perception[0]
    assert first["baseline"] == ["visual"] and first["faces"] == 1 and first["gaze"] == "camera"
    assert max(first["emotion"], key=first["emotion"].get) == "happiness" and first["expression"] == "happiness"
    assert len(perception) <= 3  # the same face all along: its baseline, not one event per frame


def test_a_calm_voice_alone_gets_its_baseline_event(server: str, tmp_path: Path, sample_label: dict[str, Any]) -> None:
    """The first phrase of the sample, said calmly, then silence: today's only reading is the calm baseline."""
    from duet.wav import read_pcm16
    from tests.conftest import SAMPLE

    end = float(sample_label["segments"][0]["end"]) + 0.1
    pcm = read_pcm16(SAMPLE)[: round(end * 16000) * 2] + bytes(2 * 16000 * 2)
    calm = tmp_path / "calm.wav"
    with wave.open(str(calm), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    r, perception = perceive(server, "--audio", str(calm))
    assert r.returncode == 0, r.stderr
    audio = [e for e in perception if e["modality"] == "audio"]
    assert audio and all(set(e) >= KEYS for e in audio), perception
    baseline = audio[0]
    assert baseline["baseline"] == ["audio"] and baseline["t"] <= end, baseline
    assert baseline["arousal_band"] == "moderate" and baseline["hesitancy_band"] == "fluent", baseline  # calm
    assert baseline["text"] == "The user sounds calm and fluent." and baseline["faces"] is None
    assert baseline["voice"]["arousal"] is not None and baseline["voice"]["pitch_hz"] > 50
    assert sum("audio" in e["baseline"] for e in perception) == 1


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
