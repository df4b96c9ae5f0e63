"""Client-side WAV reading: only 16 kHz mono PCM16, clear errors otherwise."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from duet.errors import AudioFileError
from duet.wav import chunks, read_pcm16


def write(path: Path, rate: int = 16000, channels: int = 1, width: int = 2, frames: int = 1600) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x01" * (frames * channels * width))
    return path


def test_reads_good_file(tmp_path: Path) -> None:
    pcm = read_pcm16(write(tmp_path / "ok.wav"))
    assert len(pcm) == 3200
    assert [len(c) for c in chunks(pcm)] == [640] * 5


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"rate": 8000}, "8000 Hz"),
        ({"channels": 2}, "2 channels"),
        ({"width": 1}, "8-bit"),
        ({"frames": 0}, "no audio"),
    ],
)
def test_wrong_formats(tmp_path: Path, kwargs: dict[str, int], needle: str) -> None:
    with pytest.raises(AudioFileError, match=needle):
        read_pcm16(write(tmp_path / "bad.wav", **kwargs))


def test_not_a_wav_and_truncated(tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_bytes(b"this is not audio at all")
    with pytest.raises(AudioFileError, match="not a readable"):
        read_pcm16(tmp_path / "x.wav")
    good = write(tmp_path / "t.wav").read_bytes()
    (tmp_path / "t2.wav").write_bytes(good[:-1000])
    with pytest.raises(AudioFileError, match="truncated"):
        read_pcm16(tmp_path / "t2.wav")
    with pytest.raises(AudioFileError, match="no such file"):
        read_pcm16(tmp_path / "missing.wav")
