"""Reading user audio files: WAV PCM16 mono 16 kHz, with a clear error for anything else."""

from __future__ import annotations

import wave
from pathlib import Path

from duet.errors import AudioFileError

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 320  # 20 ms


def read_pcm16(path: str | Path) -> bytes:
    """The PCM frames of a 16 kHz mono 16-bit WAV file; anything else raises `AudioFileError`."""
    p = Path(path)
    if not p.is_file():
        raise AudioFileError(f"{p}: no such file")
    try:
        with wave.open(str(p), "rb") as w:
            rate, channels, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            frames = w.readframes(n)
    except (wave.Error, EOFError) as exc:
        raise AudioFileError(f"{p}: not a readable PCM WAV file ({exc})") from exc
    problems = []
    if rate != SAMPLE_RATE:
        problems.append(f"sample rate {rate} Hz (need {SAMPLE_RATE})")
    if channels != 1:
        problems.append(f"{channels} channels (need mono)")
    if width != 2:
        problems.append(f"{8 * width}-bit samples (need 16-bit PCM)")
    if problems:
        raise AudioFileError(
            f"{p}: " + "; ".join(problems) + " — convert with e.g. `sox in.wav -r 16000 -c 1 -b 16 out.wav`"
        )
    if len(frames) < n * 2:
        raise AudioFileError(f"{p}: truncated: header says {n} frames, file holds {len(frames) // 2}")
    if n == 0:
        raise AudioFileError(f"{p}: holds no audio")
    return frames


def chunks(pcm: bytes, samples: int = CHUNK_SAMPLES) -> list[bytes]:
    step = 2 * samples
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]
