"""A WebRTC peer that misbehaves on purpose, for the failure tests: its microphone can go quiet on the network
for a while (packets lost, the clock going on), its camera can send nothing at all, and run as a script it
joins and then waits to be killed (a peer that vanishes without a goodbye).

    python -m tests.e2e.webrtc_peer API_URL CONVERSATION_ID TOKEN   # prints "live", then streams until killed
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from duet.rtcaudio import opus_frame

FRAME_S = 0.02
FRAME_BYTES = 640


class Microphone(MediaStreamTrack):
    """`pcm` at real time, then silence; frames in [lost_from, lost_from + lost_s) never reach the network
    (their timestamps are skipped, as after a dropped connection)."""

    kind = "audio"

    def __init__(self, pcm: bytes, lost_from: float = -1.0, lost_s: float = 0.0) -> None:
        super().__init__()
        self.pcm = pcm
        self.lost = (round(lost_from / FRAME_S), round((lost_from + lost_s) / FRAME_S)) if lost_s > 0 else (0, 0)
        self.k = 0
        self.t0: float | None = None

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        if self.t0 is None:
            self.t0 = time.monotonic()
        if self.lost[0] <= self.k < self.lost[1]:
            self.k = self.lost[1]  # the lost stretch: nothing is sent, the clock moves on
        await asyncio.sleep(max(self.t0 + self.k * FRAME_S - time.monotonic(), 0.0))
        chunk = self.pcm[self.k * FRAME_BYTES : (self.k + 1) * FRAME_BYTES]
        frame = opus_frame(chunk + bytes(FRAME_BYTES - len(chunk)), self.k * 320)
        self.k += 1
        return frame


class DeadCamera(MediaStreamTrack):
    """A camera that was granted and never delivers a frame."""

    kind = "video"

    async def recv(self) -> Any:
        await asyncio.Event().wait()


@dataclass
class Peer:
    pc: RTCPeerConnection
    mic: Microphone
    events: list[dict[str, Any]] = field(default_factory=list)
    channel: Any = None

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def send(self, body: dict[str, Any]) -> None:
        self.channel.send(json.dumps(body))

    async def wait_for(self, kind: str, within: float, count: int = 1) -> None:
        deadline = time.monotonic() + within
        while self.types().count(kind) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind} (x{count}) within {within:g} s; events: {self.types()}")
            await asyncio.sleep(0.1)


async def offer(pc: RTCPeerConnection) -> dict[str, str]:
    await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate here
    return {"sdp": pc.localDescription.sdp, "type": "offer"}


async def post(api_url: str, conversation_id: str, token: str, body: Any) -> tuple[int, dict[str, Any]]:
    url = f"{api_url}/v1/conversations/{conversation_id}/webrtc"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status, await r.json()


async def join(
    api_url: str, conversation_id: str, token: str, pcm: bytes, *, camera: bool = False, **mic: float
) -> Peer:
    pc = RTCPeerConnection()
    peer = Peer(pc, Microphone(pcm, **mic))
    peer.channel = pc.createDataChannel("events")

    @peer.channel.on("message")
    def _event(message: str) -> None:
        peer.events.append(json.loads(message))

    pc.addTrack(peer.mic)
    if camera:
        pc.addTrack(DeadCamera())
    status, answer = await post(api_url, conversation_id, token, await offer(pc))
    if status != 200:
        await pc.close()
        raise AssertionError(f"join refused: {status} {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(**answer))
    return peer


async def _vanish(api_url: str, conversation_id: str, token: str) -> None:
    peer = await join(api_url, conversation_id, token, bytes(FRAME_BYTES * 50 * 600))
    await peer.wait_for("session_started", 30)
    print("live", flush=True)
    await asyncio.Event().wait()  # until killed: no goodbye, no DTLS close, nothing


if __name__ == "__main__":
    asyncio.run(_vanish(*sys.argv[1:4]))
