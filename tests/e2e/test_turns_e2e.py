"""The whole stack through real clients: `duet turns`, the SDK, bad input and faults."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest

import duet
from duet.proto import session_pb2 as pb
from duet.proto import session_pb2_grpc as pb_grpc
from duet.wav import chunks
from tests.conftest import SAMPLE
from tests.e2e.conftest import DUET, DuetServer, start_server, stop_server

pytestmark = pytest.mark.e2e
FLOOR = {"speech_start", "speech_end", "eot_tentative", "eot_cancel", "eot_commit", "backchannel", "barge_in"}


def cli_turns(server: str, *extra: str, path: Path = SAMPLE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DUET, "turns", str(path), "--jsonl", "--server", server, *extra],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


FLOOR_ONLY = {"mode": "acoustic"}  # these tests are about the floor model; tests/e2e/test_talk_e2e.py covers replies


def floor_events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


async def collect(server: str, pcm: bytes, **kw: Any) -> list[dict[str, Any]]:
    out = []
    kw.setdefault("options", FLOOR_ONLY)
    async with duet.connect(server, **kw) as session:

        async def send() -> None:
            for c in chunks(pcm):
                await session.send_audio(c)
            await session.end()

        sender = asyncio.create_task(send(), name="test-send")
        try:
            async for e in session.events():
                out.append(e)
            await sender
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return out


def test_cli_prints_the_floor_event_contract(server: str, sample_label: dict[str, Any]) -> None:
    res = cli_turns(server, "--speed", "0")
    assert res.returncode == 0, res.stderr
    events = floor_events(res.stdout)
    assert events and all(set(e) >= {"type", "t", "compute_ms"} and e["type"] in FLOOR for e in events)
    assert all(isinstance(e["t"], float) and e["compute_ms"] >= 0 for e in events)
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    commits = [e["t"] for e in events if e["type"] == "eot_commit"]
    for p in sample_label["pauses"]:
        inside = [t for t in commits if p["start"] - 0.1 <= t < p["end"]]
        if p["kind"] == "yield":
            assert len(inside) == 1, (p, commits)  # the replica answers once, in the pause
        else:
            assert inside == [], (p, commits)  # never cut the user off in a hold pause
    assert sum(e["type"] == "speech_start" for e in events) >= len(sample_label["turns"])


def decisions(events: list[dict[str, Any]], label: dict[str, Any]) -> list[tuple[str, float]]:
    """The floor decisions of one run, checked to be a real run first: two failed runs must not compare
    equal as `[] == []`. Every labelled turn starts speech and every yield pause is committed."""
    key = [(str(e["type"]), float(e["t"])) for e in events if e["type"] in FLOOR]
    yields = sum(p["kind"] == "yield" for p in label["pauses"])
    assert sum(k == "speech_start" for k, _ in key) >= len(label["turns"]), key
    assert sum(k == "eot_commit" for k, _ in key) >= yields, key
    return key


def test_decisions_do_not_depend_on_send_speed(server: str, sample_label: dict[str, Any]) -> None:
    # from audio alone (no ASR, whose timing would feed the lexical cue at different points)
    runs = [cli_turns(server, "--speed", speed, "--option", "mode=acoustic") for speed in ("0", "4")]
    for r in runs:
        assert r.returncode == 0, r.stderr
    fast, paced = (decisions(floor_events(r.stdout), sample_label) for r in runs)
    assert fast == paced


async def test_concurrent_sessions_are_independent(
    server: str, sample_audio: npt.NDArray[np.int16], sample_label: dict[str, Any]
) -> None:
    pcm = sample_audio.tobytes()
    alone = decisions(await collect(server, pcm), sample_label)
    together = await asyncio.gather(*(collect(server, pcm) for _ in range(3)))
    assert len(together) == 3
    for events in together:
        assert events[-1]["type"] == "session_ended"
        assert decisions(events, sample_label) == alone


async def test_unsupported_audio_format_is_refused(server: str) -> None:
    with pytest.raises(duet.DuetError) as err:
        await collect(server, b"\x00" * 640, sample_rate=8000, channels=2)
    assert err.value.code == "bad_audio_format"
    assert "8000" in err.value.message and "2 channels" in err.value.message


async def test_bad_chunk_is_reported_and_the_session_continues(
    server: str, sample_audio: npt.NDArray[np.int16]
) -> None:
    events = []
    async with duet.connect(server, options=FLOOR_ONLY) as session:
        await session.send_audio(b"\x01\x02\x03")  # not whole samples
        for c in chunks(sample_audio.tobytes()):
            await session.send_audio(c)
        await session.end()
        async for e in session.events():
            events.append(e)
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "bad_audio_chunk"
    assert any(e["type"] == "eot_commit" for e in events)  # nothing after it was lost
    assert events[-1]["type"] == "session_ended"


async def test_oversized_message_is_refused_and_server_keeps_serving(
    server: str, sample_audio: npt.NDArray[np.int16]
) -> None:
    with pytest.raises(duet.DuetError) as err:
        async with duet.connect(server, options=FLOOR_ONLY) as session:
            await session.send_audio(b"\x00" * (2 << 20))
            async for _ in session.events():
                pass
    assert err.value.code in {"resource_exhausted", "bad_audio_chunk"}
    with pytest.raises(duet.DuetError) as err2:
        async with duet.connect(server, options=FLOOR_ONLY) as session:
            await session.send_audio(b"\x00" * 64000)  # 2 s in one chunk: over the per-chunk bound
            await session.end()
            async for e in session.events():
                if e["type"] == "error":
                    raise duet.DuetError(e["code"], e["message"])
    assert err2.value.code == "bad_audio_chunk"
    events = await collect(server, sample_audio.tobytes())
    assert any(e["type"] == "eot_commit" for e in events)


async def test_start_must_come_first(server: str) -> None:
    async with grpc.aio.insecure_channel(server) as ch:
        stub = pb_grpc.SessionStub(ch)  # type: ignore[no-untyped-call]

        async def requests() -> Any:
            yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))

        replies = [m async for m in stub.Converse(requests())]
    assert replies[0].error.code == "protocol" and replies[0].error.fatal


async def test_client_disconnect_and_truncated_stream(
    duet_server: DuetServer, sample_audio: npt.NDArray[np.int16]
) -> None:
    server = duet_server.address
    # A client vanishes mid-stream: the server ends its session (and frees its slot) by itself.
    cid = f"vanish-{uuid.uuid4().hex[:8]}"
    async with duet.connect(server, conversation_id=cid, options=FLOOR_ONLY) as session:
        for c in chunks(sample_audio[:16000].tobytes()):
            await session.send_audio(c)
        async for e in session.events():
            if e["type"] == "speech_start":
                break  # the session is really running
    await asyncio.to_thread(duet_server.wait_logged, f"session {cid} ended", 30)
    # ...another stops sending without END (a truncated stream): the server flushes and closes cleanly.
    cut = sample_audio[: int(sample_audio.shape[0] * 0.6)].tobytes()
    async with grpc.aio.insecure_channel(server) as ch:
        stub = pb_grpc.SessionStub(ch)  # type: ignore[no-untyped-call]

        async def requests() -> Any:
            yield pb.ClientMessage(
                start=pb.Start(audio_format=pb.AudioFormat(sample_rate=16000, channels=1, sample_width=2))
            )
            for c in chunks(cut):
                yield pb.ClientMessage(audio=pb.AudioChunk(pcm=c))

        replies = [json.loads(m.event.json) async for m in stub.Converse(requests()) if m.WhichOneof("kind") == "event"]
    assert replies[-1]["type"] == "session_ended"
    assert replies[-1]["t"] == pytest.approx(len(cut) / 2 / 16000, abs=0.021)
    # And the server still serves a full session.
    assert any(e["type"] == "eot_commit" for e in await collect(server, sample_audio.tobytes()))


def test_cli_rejects_non_wav_and_wrong_rate(server: str, tmp_path: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_text("definitely not audio")
    res = cli_turns(server, path=bad)
    assert res.returncode == 2 and "bad_audio_file" in res.stderr
    import wave

    with wave.open(str(tmp_path / "44k.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(b"\x00" * 44100 * 4)
    res = cli_turns(server, path=tmp_path / "44k.wav")
    assert res.returncode == 2 and "44100 Hz" in res.stderr


def test_cli_starts_the_embedded_stack_when_no_server(sample_label: dict[str, Any]) -> None:
    from orchestrator.models.launcher import free_port

    res = cli_turns(f"127.0.0.1:{free_port()}", "--speed", "0")
    assert res.returncode == 0, res.stderr
    assert "starting the embedded stack" in res.stderr
    assert sum(e["type"] == "eot_commit" for e in floor_events(res.stdout)) >= 1


async def test_triton_dying_gives_sessions_a_typed_error(sample_audio: npt.NDArray[np.int16]) -> None:
    from orchestrator.config import TritonSettings
    from orchestrator.models.launcher import EmbeddedTriton, free_port

    triton = EmbeddedTriton(TritonSettings()).start()
    port = free_port()
    proc = start_server(triton.grpc_url, port)
    try:
        triton.stop()
        with pytest.raises(duet.DuetError) as err:
            await collect(f"127.0.0.1:{port}", sample_audio.tobytes())
        assert err.value.code == "model_unavailable"
        assert proc.poll() is None  # the session service itself is still up
    finally:
        stop_server(proc)
        triton.stop()
