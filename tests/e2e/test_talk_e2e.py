"""Spoken exchanges through the whole stack: `duet serve` (real Triton: vad, floor, asr, llm, tts) and the
real clients (`duet talk`, the SDK). Streams run at real time, as a live user would."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import duet
from duet.wav import CHUNK_SAMPLES, SAMPLE_RATE, chunks
from tests.conftest import metric
from tests.e2e.conftest import wait_for

DUET = str(Path(sys.executable).parent / "duet")


def read_events(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def read_reply(folder: Path) -> npt.NDArray[np.int16]:
    with wave.open(str(folder / "reply.wav"), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def talk(server: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    from tests.conftest import SAMPLE

    return subprocess.run(
        [DUET, "talk", "--audio", str(SAMPLE), "--out", str(out), "--server", server, *extra],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_spoken_exchange_writes_the_session_outputs(server: str, tmp_path: Path, sample_label: dict[str, Any]) -> None:
    r = talk(server, tmp_path)
    assert r.returncode == 0, r.stderr
    events = read_events(tmp_path)
    kinds = [e["type"] for e in events]
    assert "eot_commit" in kinds and "replica_speaking_start" in kinds and "replica_turn" in kinds
    assert all("t" in e for e in events)

    # the user's request was heard and answered, once
    transcript = json.loads((tmp_path / "transcript.json").read_text())
    user = " ".join(t["text"] for t in transcript["turns"] if t["role"] == "user").lower()
    assert "bill" in user and ("charged" in user or "twice" in user)
    replies = [t for t in transcript["turns"] if t["role"] == "replica"]
    # a reply cut before its first word was heard is kept as an interrupted, empty turn
    assert replies and all(t["text"].strip() or t["interrupted"] for t in replies)
    assert any(t["text"].strip() for t in replies)
    starts = [e for e in events if e["type"] == "replica_speaking_start"]
    assert len({e["reply_id"] for e in starts}) == len(starts)

    # reply.wav is on the session timeline: silent until the replica speaks, sound where it said it did
    reply = read_reply(tmp_path)
    assert reply.shape[0] >= round(float(sample_label["duration"]) * SAMPLE_RATE) - CHUNK_SAMPLES
    first = round(starts[0]["t"] * SAMPLE_RATE)
    assert not reply[: max(first - 1, 0)].any()
    # (a reply the user's next words cut at once holds little sound: at least one reply is heard where it starts)
    heard = [reply[round(e["t"] * SAMPLE_RATE) : round(e["t"] * SAMPLE_RATE) + SAMPLE_RATE] for e in starts]
    assert max(int(np.abs(h.astype(np.int32)).max()) for h in heard) > 1000
    user_end = max(float(s["end"]) for s in sample_label["segments"])  # type: ignore[index]
    assert starts[-1]["t"] > user_end - 0.05  # never over the user's last words
    lat = starts[-1]["latency"]
    assert {"floor_ms", "asr_final_ms", "llm_first_token_ms", "tts_first_chunk_ms"} <= set(lat)


def test_speculation_is_cancelled_end_to_end_when_the_user_goes_on(server: str, triton: Any, tmp_path: Path) -> None:
    """A hair-trigger tentative threshold makes every hold pause start a speculative reply; the user goes
    on talking, so each must be cancelled and never heard. A reply cancelled while its LLM stream is open (a
    speculation, or a long reply cut by barge-in) must stop generating in Triton (the model's
    cancelled-requests counter rises); the raconteur persona's long replies make sure some still are."""
    before = metric(triton.metrics_url, "duet_llm_cancelled_requests_total")
    r = talk(server, tmp_path, "--persona", "raconteur", "--option", "floor.tentative_threshold=0.001")
    assert r.returncode == 0, r.stderr
    events = read_events(tmp_path)
    cancelled = [e for e in events if e["type"] == "reply_cancelled"]
    # the long replies that do get released are cut by the user's later turns (barge-in), which is fine here
    assert {e["reason"] for e in cancelled} <= {"user_continued", "stale_transcript", "barge_in"}
    speculative = [e for e in cancelled if e["reason"] != "barge_in"]
    released = {e["reply_id"] for e in events if e["type"] == "replica_speaking_start"}
    assert speculative and released and not released & {e["reply_id"] for e in speculative}
    # (on a loaded machine a speculation may be started and cancelled before its task ran; the long replies
    # cut by barge-in are still generating then)
    assert any(e["generating"] for e in cancelled)
    # the model counts a cancellation when it next polls (between tokens), maybe just after the CLI exited
    wait_for(
        lambda: metric(triton.metrics_url, "duet_llm_cancelled_requests_total") > before, 15, "a cancelled llm request"
    )


async def test_barge_in_stops_the_replica_and_history_keeps_what_was_heard(
    server: str, sample_audio: npt.NDArray[np.int16], sample_label: dict[str, Any]
) -> None:
    """A live client: once the replica answers the recorded user's last turn, the user talks over it for ~2 s.
    The recording is sent up to 0.3 s after its last words, so the wait for that answer starts before it (a
    reply that starts during the recording's trailing silence could end before a later onset)."""
    segments: list[dict[str, Any]] = sample_label["segments"]  # type: ignore[assignment]
    seg, last_end = segments[1], float(segments[-1]["end"])
    interruption = sample_audio[round(seg["start"] * SAMPLE_RATE) : round(seg["end"] * SAMPLE_RATE)]
    recording = sample_audio[: round((last_end + 0.3) * SAMPLE_RATE)]
    events: list[dict[str, Any]] = []
    speaking = asyncio.Event()  # the replica is speaking now
    starts: list[float] = []  # when each reply began to be heard
    async with duet.connect(server) as session:

        async def send() -> None:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            sent = 0

            async def pace(pcm: bytes) -> None:
                nonlocal sent
                for c in chunks(pcm):
                    await asyncio.sleep(max(t0 + sent / SAMPLE_RATE - loop.time(), 0))
                    await session.send_audio(c)
                    sent += len(c) // 2

            await pace(recording.tobytes())
            silence = np.zeros(CHUNK_SAMPLES, dtype=np.int16).tobytes()
            for _ in range(int(20 * SAMPLE_RATE / CHUNK_SAMPLES)):  # wait (streaming silence) for the answer
                if speaking.is_set() and starts and starts[-1] > last_end:
                    break
                await pace(silence)
            await pace(silence * 25)  # let it speak for 0.5 s
            onset = sent / SAMPLE_RATE
            events.append({"type": "test_onset", "t": onset})
            await pace(interruption.tobytes())
            await pace(silence * 150)  # 3 s for the new turn to be answered
            await session.end()

        sender = asyncio.create_task(send(), name="test-barge-in-send")
        try:
            async for e in session.events():
                events.append(e)
                if e["type"] == "replica_speaking_start":
                    starts.append(float(e["t"]))
                    speaking.set()
                elif e["type"] == "replica_speaking_stop":
                    speaking.clear()
            await sender
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    onset = next(e["t"] for e in events if e["type"] == "test_onset")
    paused = [e for e in events if e["type"] in ("replica_paused", "replica_speaking_stop") and e["t"] >= onset]
    assert paused, [e["type"] for e in events]
    assert paused[0]["t"] - onset < 0.35  # the replica yields right at the user's onset
    stops = [e for e in events if e["type"] == "replica_speaking_stop" and e["interrupted"]]
    assert stops and stops[0]["t"] < onset + 0.35
    cut = [e for e in events if e["type"] == "replica_turn" and e["interrupted"]]
    assert cut and cut[0]["text"] == stops[0]["spoken_text"]
    users = [e for e in events if e["type"] == "user_turn"]
    assert len(users) >= 2 and "twice" in users[-1]["text"].lower()


def test_unknown_persona_is_a_clear_error(server: str, tmp_path: Path) -> None:
    r = talk(server, tmp_path, "--persona", "nobody")
    assert r.returncode == 2 and "bad_option" in r.stderr and "unknown persona" in r.stderr
