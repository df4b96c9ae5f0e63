"""The replica's face through the whole stack: `duet render` (text -> voice + face MP4, or lip-sync of given
audio and timings) and `duet talk --video` (a conversation's face on the session timeline)."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

DUET = str(Path(sys.executable).parent / "duet")
BASIC = {"neutral", "happiness", "sadness", "anger", "fear", "surprise", "disgust", "contempt"}


def duet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DUET, *args], capture_output=True, text=True, timeout=300, check=False)


def probe(path: Path) -> dict[str, Any]:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = list(c.decode(video=0))
        with av.open(str(path)) as again:  # a second pass: the first consumed the demuxer
            samples = sum(f.samples for f in again.decode(audio=0))
        return {
            "video": v.codec_context.name,
            "audio": a.codec_context.name,
            "size": (v.codec_context.width, v.codec_context.height),
            "frames": len(frames),
            "last_t": float(frames[-1].pts * frames[-1].time_base),
            "audio_s": samples / a.codec_context.sample_rate,
            "pixels": [f.to_ndarray(format="rgb24") for f in frames],
        }


def test_render_says_the_text_with_the_face(server: str, tmp_path: Path) -> None:
    out = tmp_path / "hello.mp4"
    r = duet("render", "--text", "Hello, I am Ava. How can I help?", "--emotion", "happiness", "--size", "192x144",
             "--fps", "15", "--out", str(out), "--server", server)  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert (info["video"], info["audio"], info["size"]) == ("h264", "aac", (192, 144))
    assert info["audio_s"] > 1.0
    # the face covers the speech and a short settling tail, on the audio's clock
    assert info["audio_s"] <= info["last_t"] + 1 / 15 <= info["audio_s"] + 0.6
    px = np.stack(info["pixels"]).astype(np.float32)
    assert np.abs(np.diff(px, axis=0)).mean(axis=(1, 2, 3)).max() > 0.5  # it moves: never a frozen picture


def test_render_lip_syncs_given_audio_and_timings(server: str, tmp_path: Path) -> None:
    from orchestrator.config import REPO_ROOT
    from orchestrator.inference.tts import PiperSpeaker

    spoken = PiperSpeaker(REPO_ROOT / "model_repository/tts/1/voices/en_US-joe-medium.onnx").synthesize(
        "Maybe we meet on Monday."
    )
    wav, timings = tmp_path / "a.wav", tmp_path / "a.json"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(spoken.pcm.astype("<i2").tobytes())
    timings.write_text(spoken.phonemes_json())
    out = tmp_path / "sync.mp4"
    r = duet("render", "--audio", str(wav), "--timings", str(timings), "--size", "128x128", "--fps", "20",
             "--out", str(out), "--server", server)  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert info["audio_s"] == pytest.approx(spoken.pcm.shape[0] / 16000, abs=0.08)
    assert info["frames"] == int(np.ceil((spoken.pcm.shape[0] / 16000 + 0.4) * 20))


def test_list_emotions_and_bad_requests(server: str, tmp_path: Path) -> None:
    r = duet("render", "--list-emotions", "--server", server)
    assert r.returncode == 0, r.stderr
    names = {line.split()[0] for line in r.stdout.splitlines() if line.strip()}
    assert names >= BASIC and len(names) >= 10
    for args, code in (
        (("--text", "Hi.", "--emotion", "elated"), "bad_emotion"),
        (("--text", "Hi.", "--face", "nobody"), "bad_portrait"),
        (("--text", "Hi.", "--size", "33x33"), "bad_face_params"),
        (("--audio", str(tmp_path / "missing.wav"), "--timings", str(tmp_path / "x.json")), "bad_audio"),
        (("--audio", str(tmp_path / "missing.wav")), "bad_timings"),
    ):
        r = duet("render", *args, "--out", str(tmp_path / "x.mp4"), "--server", server)
        assert r.returncode == 2 and code in r.stderr, (args, r.stderr)
        assert not (tmp_path / "x.mp4").exists()


def test_talk_with_video_writes_the_face_on_the_session_timeline(server: str, tmp_path: Path) -> None:
    from tests.conftest import SAMPLE

    r = duet("talk", "--audio", str(SAMPLE), "--out", str(tmp_path), "--server", server, "--video",
             "--option", "video.size=128x128", "--option", "video.fps=10")  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["type"] == "error"]
    starts = [e["t"] for e in events if e["type"] == "replica_speaking_start"]
    assert starts
    info = probe(tmp_path / "reply.mp4")
    assert info["size"] == (128, 128)
    with wave.open(str(tmp_path / "reply.wav")) as w:
        timeline_s = w.getnframes() / 16000
    assert info["last_t"] >= timeline_s - 0.3  # frames for the whole session, the reply included
    # the face is alive while the user talks (listening, blinking) and moves more while the replica speaks
    px = np.stack(info["pixels"]).astype(np.float32)
    motion = np.abs(np.diff(px, axis=0)).mean(axis=(1, 2, 3))
    speaking = motion[int(starts[0] * 10) : int(starts[0] * 10) + 15]
    assert motion[: int(starts[0] * 10) - 5].max() > 0.1
    assert speaking.mean() > 0.3
