"""Browser calls when things go wrong, against a real `duet serve` (real Triton, real models) over real WebRTC
(aiortc on the peer's side): a wrong or expired token, a body that is not an offer, a second join, a peer that
vanishes without a goodbye, a camera that sends nothing, and a few seconds of network loss."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import duet
from duet.wav import read_pcm16
from orchestrator.config import REPO_ROOT
from orchestrator.models.launcher import free_port
from tests.conftest import SAMPLE
from tests.e2e.conftest import DuetServer, persona_folder, start_server, stop_server
from tests.e2e.test_conversation_api_e2e import admin
from tests.e2e.webrtc_peer import join, offer, post

pytestmark = pytest.mark.e2e

FAST = {"llm": {"model": "smollm2-135m", "max_tokens": 40}}
ICE_TIMEOUT_S = 4.0  # how long a silent peer has before it counts as gone (the default is 15 s)


@pytest.fixture(scope="module")
def rtc_server(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuetServer]:
    personas = persona_folder(tmp_path_factory.mktemp("personas"))
    env = {
        "DUET_WEBRTC__ICE_TIMEOUT_S": str(ICE_TIMEOUT_S),
        "DUET_FACE__WIDTH": "256",
        "DUET_FACE__HEIGHT": "256",
        "DUET_FACE__FPS": "10",
    }
    server = start_server(triton.grpc_url, free_port(), personas, env=env)
    try:
        yield server
    finally:
        stop_server(server)


async def conversation(api: duet.Client) -> tuple[str, str]:
    persona = await api.create_persona(template="billing", name="Sam (webrtc)", layers=FAST)
    conv = await api.create_conversation(persona["persona_id"])
    return conv["conversation_id"], conv["join"]["token"]


async def ended(api: duet.Client, cid: str, within: float = 20.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while (conv := await api.get_conversation(cid))["status"] != "ended":
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"conversation {cid} still {conv['status']} after {within:g} s")
        await asyncio.sleep(0.25)
    return dict(conv)


async def test_bad_offers_and_tokens_are_refused_without_spending_the_join(rtc_server: DuetServer) -> None:
    tenant = admin(rtc_server, "tenant", "create", "Calls")
    url = rtc_server.http_url
    async with duet.Client(url, tenant["api_key"]) as api:
        cid, token = await conversation(api)
        other, _ = await conversation(api)
        from aiortc import RTCPeerConnection

        pc = RTCPeerConnection()
        pc.createDataChannel("events")
        pc.addTransceiver("audio")
        good = await offer(pc)
        await pc.close()

        for bearer, body, status, code in (
            ("jt_wrong", good, 401, "unauthenticated"),
            (tenant["api_key"], good, 401, "unauthenticated"),  # an API key is not a join token
            (token, {**good, "type": "answer"}, 422, "invalid"),  # not an offer
            (token, {"sdp": "v=0\r\nm=nonsense\r\n", "type": "offer"}, 422, "invalid"),
            (token, {"sdp": good["sdp"].replace("m=application", "m=x-none"), "type": "offer"}, 422, "invalid"),
        ):
            got, answer = await post(url, cid, bearer, body)
            assert (got, answer["error"]["code"]) == (status, code), answer
        got, answer = await post(url, other, token, good)  # another conversation's token
        assert got == 401, answer
        assert (await api.get_conversation(cid))["status"] == "created"  # nothing above spent the join

        async with __import__("aiohttp").ClientSession() as http:
            config_url = f"{url}/v1/conversations/{cid}/webrtc"
            async with http.get(config_url, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200 and await r.json() == {"ice_servers": []}
            async with http.get(config_url, headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401

        peer = await join(url, cid, token, read_pcm16(SAMPLE))
        await peer.wait_for("session_started", 30)
        assert (await api.get_conversation(cid))["status"] == "active"
        got, answer = await post(url, cid, token, good)  # the same link opened twice
        assert (got, answer["error"]["code"]) == (409, "conflict"), answer

        peer.send({"type": "echo"})  # an interaction without its text: a non-fatal error, the call goes on
        peer.send({"type": "echo", "text": "This line was typed by the backend."})
        await peer.wait_for("error", 10)
        await peer.wait_for("replica_caption", 20)
        assert any(e["type"] == "replica_caption" and "typed by the backend" in e["text"] for e in peer.events)
        peer.send({"type": "end"})
        await peer.wait_for("session_ended", 30)
        await peer.pc.close()
        conv = await ended(api, cid)
        assert conv["shutdown_reason"] == "participant_left"


async def test_a_peer_that_vanishes_leaves_the_call(rtc_server: DuetServer) -> None:
    tenant = admin(rtc_server, "tenant", "create", "Vanish")
    async with duet.Client(rtc_server.http_url, tenant["api_key"]) as api:
        cid, token = await conversation(api)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.e2e.webrtc_peer", rtc_server.http_url, cid, token,
            cwd=REPO_ROOT, stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.strip() == b"live"
            await asyncio.sleep(2.0)
            assert (await api.get_conversation(cid))["status"] == "active"
            proc.send_signal(signal.SIGKILL)  # no goodbye: no `end`, no DTLS close, no SCTP abort
            conv = await ended(api, cid, within=ICE_TIMEOUT_S + 15)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        assert conv["shutdown_reason"] == "participant_left"


async def test_the_call_goes_on_through_network_loss_with_a_camera_that_sends_nothing(
    rtc_server: DuetServer,
) -> None:
    tenant = admin(rtc_server, "tenant", "create", "Lossy")
    async with duet.Client(rtc_server.http_url, tenant["api_key"]) as api:
        cid, token = await conversation(api)
        pcm = bytes(2 * 32000) + read_pcm16(SAMPLE) + bytes(8 * 32000)
        # three seconds of the user's speech never reach the server (ICE_TIMEOUT_S is 4 s: the call holds)
        peer = await join(rtc_server.http_url, cid, token, pcm, camera=True, lost_from=4.0, lost_s=3.0)
        try:
            await peer.wait_for("session_started", 30)
            await peer.wait_for("user_turn", 60)
            await peer.wait_for("replica_speaking_start", 60)
            assert "video_started" in peer.types()  # the replica's face goes out though the camera is dead
            assert (await api.get_conversation(cid))["status"] == "active"
            peer.send({"type": "end"})
            sent_s = peer.mic.k * 0.02  # the sender's clock, the lost stretch included
            await peer.wait_for("session_ended", 60)
            # the lost stretch is silence on the session clock, not missing time: the two clocks agree
            session_s = next(e["t"] for e in peer.events if e["type"] == "session_ended")
            assert abs(session_s - sent_s) < 1.0, (session_s, sent_s)
        finally:
            await peer.pc.close()
        conv = await ended(api, cid)
        assert conv["shutdown_reason"] == "participant_left"
        fatal = [e for e in peer.events if e["type"] == "error" and e.get("fatal")]
        assert not fatal, fatal
