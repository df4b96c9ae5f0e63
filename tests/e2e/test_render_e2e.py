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
SYNC_TEXT = (
    "Maybe my brother bought a pumpkin pie. Papa made a big batch of bread by the barn. "
    "I am happy to help; what would you like to talk about? Bob parked his car by the market at the top of the hill."
)


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


def test_render_keeps_the_lips_on_the_voice(server: str, tmp_path: Path) -> None:
    """The A/V offset of a rendered file, measured on the decoded MP4 alone: the lip gap (MediaPipe on every
    frame) against the decoded voice, two ways. Before the mouth shapes led the TTS spans, both read +33-36 ms
    (mouth late); the target is +-40 ms and this holds half of it, so a drift of that size fails here."""
    from perf.av_sync import decode_mp4, lip_gaps, measure, voice_level
    from perf.bench_face import phoneme_sync

    out, events = tmp_path / "sync.mp4", tmp_path / "sync.jsonl"
    r = duet("render", "--text", SYNC_TEXT, "--size", "256x256", "--fps", "25", "--out", str(out),
             "--events", str(events), "--server", server)  # fmt: skip
    assert r.returncode == 0, r.stderr
    done = next(e for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "render_done")
    clip = decode_mp4(out)
    independent = measure(clip, motion=False)  # no timings: voice envelope x lip gap over +-400 ms
    assert independent["frames_with_face"] == independent["frames"] > 200
    assert independent["xcorr_r"] > 0.3, independent  # the lips follow the voice at all
    a_t, level = voice_level(clip.audio, clip.rate, clip.audio_t0)
    gap, _ = lip_gaps(clip.frames)
    labelled = phoneme_sync(done["phonemes"], clip.frame_t, gap, a_t, level)  # per phoneme vs the voice's events
    assert labelled["measured"] >= 30, labelled
    assert abs(independent["xcorr_ms"]) <= 20.0, independent
    assert abs(labelled["av_offset_ms"]) <= 20.0, labelled
    assert abs(independent["xcorr_ms"] - labelled["av_offset_ms"]) <= 40.0  # the two agree within a frame


def test_idle_and_listening_clips(server: str, tmp_path: Path) -> None:
    clips = {}
    for name, extra in (("idle", ()), ("listening", ("--listening",))):
        out = tmp_path / f"{name}.mp4"
        r = duet("render", "--text", "", "--duration", "3", *extra, "--size", "128x128", "--fps", "10",
                 "--out", str(out), "--server", server)  # fmt: skip
        assert r.returncode == 0, r.stderr
        info = probe(out)
        assert info["frames"] == 30 and info["last_t"] == pytest.approx(2.9, abs=1e-3)
        assert info["audio_s"] == pytest.approx(3.0, abs=0.08)
        with av.open(str(out)) as c:
            assert max(float(np.abs(f.to_ndarray()).max()) for f in c.decode(audio=0)) == 0.0  # silent
        clips[name] = np.stack(info["pixels"]).astype(np.float32)
    idle, listening = clips["idle"], clips["listening"]
    assert np.abs(np.diff(idle, axis=0)).mean(axis=(1, 2, 3)).max() > 0.05  # alive: breathing, sway
    # same seed, same idle life: what differs is the listening (brows, eye contact, head tilt, nods), which
    # eases in from 0 (frame 0 has the same face; only the H.264 encoding of the two files differs there)
    diff = np.abs(idle - listening).mean(axis=(1, 2, 3))
    assert diff[10:].max() > max(1.5, 3 * diff[0]), diff


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
        (("--text", ""), "bad_option"),  # nothing to say and no duration
        (("--text", "", "--duration", "-1"), "bad_option"),
        (("--text", "", "--duration", "1e9"), "bad_option"),  # refused by the server (at most 120 s)
        (("--text", "Hi.", "--listening", "--duration", "2"), "bad_option"),
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
