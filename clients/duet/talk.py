"""`duet talk`: a recorded user talks to the replica; the session's outputs are written to a folder.

Outputs (the session-output contract of DESIGN.md):
- `reply.wav`: the replica's audio on the session timeline (sample 0 = the first input sample; silence
  where the replica is quiet), exactly as a client would have played it: when the server pauses or
  stops the replica at `t`, the audio this client held beyond `t` is dropped.
- `events.jsonl`: every event, `t` on the same clock.
- `transcript.json`: the committed conversation (user and replica turns, interruptions marked).
- with `video=True`, `reply.mp4`: the replica's face (H.264) and voice (AAC) on the same timeline.

`--echo-gain/--echo-delay-ms` simulate speaker bleed: the replica audio this client "plays" is mixed back
into the microphone signal it sends, delayed and softened, as a laptop without headphones would.
"""

from __future__ import annotations

import json
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from duet.sdk import ReplyAudio, VideoFrame, stream_file
from duet.wav import SAMPLE_RATE, read_pcm16


@dataclass
class Speaker:
    """The client's loudspeaker: replica audio placed on the session timeline."""

    samples: npt.NDArray[np.int16] = field(default_factory=lambda: np.zeros(SAMPLE_RATE * 60, dtype=np.int16))
    end: int = 0  # one past the last sample written

    def _grow(self, n: int) -> None:
        if n > self.samples.shape[0]:
            bigger = np.zeros(max(n, 2 * self.samples.shape[0]), dtype=np.int16)
            bigger[: self.samples.shape[0]] = self.samples
            self.samples = bigger

    def place(self, t: float, pcm: bytes) -> None:
        x = np.frombuffer(pcm, dtype="<i2")
        start = round(t * SAMPLE_RATE)
        self._grow(start + x.shape[0])
        self.samples[start : start + x.shape[0]] = x
        self.end = max(self.end, start + x.shape[0])

    def drop_after(self, t: float) -> None:
        """The server paused/stopped the replica at `t`: what was buffered beyond it is never played."""
        start = round(t * SAMPLE_RATE)
        if start < self.end:
            self.samples[start : self.end] = 0
            self.end = start

    def window(self, start: int, n: int) -> npt.NDArray[np.int16]:
        out = np.zeros(n, dtype=np.int16)
        lo, hi = max(start, 0), min(start + n, self.samples.shape[0])
        if lo < hi:
            out[lo - start : hi - start] = self.samples[lo:hi]
        return out


@dataclass
class Bleed:
    """Speaker-to-microphone leakage: delayed, low-passed, scaled replica audio added to the mic."""

    speaker: Speaker
    gain: float
    delay: int  # samples

    def __call__(self, start: int, chunk: bytes) -> bytes:
        mic = np.frombuffer(chunk, dtype="<i2").astype(np.float32)
        if self.gain <= 0:
            return chunk
        far = self.speaker.window(start - self.delay - 1, mic.shape[0] + 1).astype(np.float32)
        echo = 0.5 * (far[1:] + far[:-1])  # a small speaker's low-pass
        out = np.clip(mic + self.gain * echo, -32768, 32767).astype("<i2")
        return out.tobytes()


def write_wav(path: Path, samples: npt.NDArray[np.int16]) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.astype("<i2").tobytes())


async def talk(
    audio: str | Path,
    server: str,
    out: str | Path,
    *,
    persona: str = "",
    options: dict[str, str] | None = None,
    speed: float = 1.0,
    echo_gain: float = 0.0,
    echo_delay_ms: float = 120.0,
    on_event: Any = None,
    video: bool = False,
    conversation_id: str = "",
    token: str = "",
) -> dict[str, Any]:
    """Run one session from a recorded user and write the outputs to `out`; returns the transcript."""
    n_in = len(read_pcm16(audio)) // 2
    speaker = Speaker()
    bleed = Bleed(speaker, echo_gain, round(echo_delay_ms * SAMPLE_RATE / 1000)) if echo_gain > 0 else None
    events: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    frames: list[VideoFrame] = []
    fps = 0.0
    options = {**(options or {}), **({"video": "true"} if video else {})}
    stream = stream_file(
        audio,
        server,
        speed=speed,
        options=options,
        persona=persona,
        audio=True,
        mic=bleed,
        conversation_id=conversation_id,
        token=token,
    )
    async for item in stream:
        if isinstance(item, ReplyAudio):
            speaker.place(item.t, item.pcm)
            continue
        if isinstance(item, VideoFrame):
            frames.append(item)
            continue
        events.append(item)
        kind = item.get("type")
        if kind in ("replica_paused", "replica_speaking_stop") and item.get("interrupted", True):
            speaker.drop_after(float(item["t"]))
        elif kind == "video_started":
            fps = float(item["fps"])
        elif kind == "user_turn":
            turns.append({"role": "user", "t": item["t"], "text": item["text"]})
        elif kind == "replica_turn":
            turns.append({"role": "replica", "t": item["t"], "text": item["text"], "interrupted": item["interrupted"]})
        if on_event is not None:
            on_event(item)
    transcript = {"audio": str(audio), "persona": persona or "default", "turns": turns}
    if conversation_id:
        transcript["conversation_id"] = conversation_id
    reply = speaker.window(0, max(n_in, speaker.end))
    write_outputs(Path(out), reply, events, transcript)
    if video:
        from duet.video import write_mp4

        write_mp4(Path(out) / "reply.mp4", frames, fps or 25.0, reply)
    return transcript


def session_problems(events: list[dict[str, Any]]) -> list[str]:
    """What went wrong in a finished session, one sentence each (empty when every user turn was answered).

    A model error or a fatal error is a problem; so is a committed user turn that no replica speech followed
    before the next user turn (an interrupted reply still counts: it was heard), unless the user went on
    before the replica could answer (its reply cancelled `user_continued`: the reply to the next turn answers
    both, and the last turn must be answered); so is a session that heard no user turn at all. `duet talk
    --check` (and so `make demo`) exits non-zero on any of these.
    """
    problems = [
        f"t={e.get('t', 0):.2f}s {e.get('code', 'error')}: {e.get('message', '')}"
        for e in events
        if e.get("type") == "error"
    ]
    user_turns = [i for i, e in enumerate(events) if e.get("type") == "user_turn"]
    if not user_turns:
        problems.append("the session committed no user turn")
    for n, i in enumerate(user_turns):
        last = n + 1 == len(user_turns)
        after = events[i + 1 : len(events) if last else user_turns[n + 1]]
        went_on = not last and any(
            e.get("type") == "reply_cancelled" and e.get("reason") == "user_continued" for e in after
        )
        if not went_on and not any(e.get("type") == "replica_speaking_start" for e in after):
            t, text = events[i].get("t", 0), events[i].get("text", "")
            problems.append(f"the user turn at t={t:.2f}s ({text!r}) got no spoken reply")
    return problems


def write_outputs(
    folder: Path, reply: npt.NDArray[np.int16], events: list[dict[str, Any]], transcript: dict[str, Any]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_wav(folder / "reply.wav", reply)
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (folder / "transcript.json").write_text(json.dumps(transcript, indent=2) + "\n")
