"""The browser call end to end, in real headless Chromium (Debian's package, driven by Playwright): a person
opens the conversation link, the recorded user is the page's microphone, the replica's voice is heard at the
page (measured there with Web Audio), its face is shown, captions of both sides appear, and hanging up ends
the conversation `participant_left`. And a team builds a persona in the persona builder, uploads a portrait,
watches it prepare and starts a test call from it in one click. A real `duet serve` (real Triton, real models)
throughout; nothing of the browser's WebRTC, Opus or VP8 is stood in for."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import duet
from duet.talk import write_wav
from duet.wav import read_pcm16
from orchestrator.config import REPO_ROOT
from orchestrator.models.launcher import free_port
from tests.browser import PAGE_STATE, chromium, chromium_available, in_chromium, measured
from tests.conftest import SAMPLE
from tests.e2e.conftest import DuetServer, persona_folder, start_server, stop_server
from tests.e2e.test_conversation_api_e2e import admin
from tests.e2e.test_webrtc_e2e import ended
from tests.firefox import firefox, firefox_available

pytestmark = pytest.mark.e2e

FAST = {"llm": {"model": "smollm2-135m", "max_tokens": 40}}  # what is said does not matter here
GREETING = "Hello, this is Sam from the browser test."
SCREENSHOTS = os.environ.get("DUET_SCREENSHOTS")  # a folder to keep the page screenshots in (docs/images)
# The face small and at 15 fps: two cores carry the models, Chromium and both ends' video codecs at once.
FACE = {"DUET_FACE__WIDTH": "384", "DUET_FACE__HEIGHT": "384", "DUET_FACE__FPS": "15"}


@pytest.fixture(scope="module")
def web_server(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuetServer]:
    if not chromium_available():  # setup installs it: a missing browser fails the tests, it never skips them
        pytest.fail("Debian's chromium is not installed (`make setup` installs it; or set DUET_CHROMIUM)")
    personas = persona_folder(tmp_path_factory.mktemp("personas"))
    faces = tmp_path_factory.mktemp("faces")
    (faces / "astronaut.png").write_bytes((REPO_ROOT / "faces" / "astronaut.png").read_bytes())
    server = start_server(triton.grpc_url, free_port(), personas, env={**FACE, "DUET_FACE__FACES_DIR": str(faces)})
    try:
        yield server
    finally:
        stop_server(server)


def user_recording(folder: Path, silence_s: float = 4.0) -> Path:
    """The recorded user: quiet while the greeting plays, then the shipped sample user, then quiet."""
    path = folder / "user.wav"
    pcm = bytes(int(silence_s * 32000)) + read_pcm16(SAMPLE) + bytes(6 * 32000)
    write_wav(path, np.frombuffer(pcm, dtype="<i2"))
    return path


Evaluate = Callable[[str], Awaitable[Any]]  # a page's expressions, in Chromium or Firefox


async def holds(evaluate: Evaluate, expression: str, within: float, what: str, console: Any = None) -> None:
    """Poll a page expression until it is true. (Not Playwright's `wait_for_function`: the pages'
    Content-Security-Policy forbids the eval it needs, and the tests keep that policy on.)"""
    deadline = asyncio.get_running_loop().time() + within
    while not await evaluate(expression):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} within {within:g} s" + (f"; its console: {console[-10:]}" if console else ""))
        await asyncio.sleep(0.25)


async def until(evaluate: Evaluate, check: Any, within: float, what: str, console: Any = None) -> dict[str, Any]:
    """Poll the page's state (`PAGE_STATE`) until `check(state)` holds (a bound on how long the stack may take)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        state: dict[str, Any] = await evaluate(PAGE_STATE)
        if check(state):
            return state
        if asyncio.get_running_loop().time() > deadline:
            also = f"; its console: {console[-10:]}" if console else ""
            raise AssertionError(f"{what} within {within:g} s; the page says {state}{also}")
        await asyncio.sleep(0.5)


async def test_a_person_talks_with_the_replica_face_to_face_in_chromium(web_server: DuetServer, tmp_path: Path) -> None:
    tenant = admin(web_server, "tenant", "create", "Browser")
    async with duet.Client(web_server.http_url, tenant["api_key"]) as api:
        persona = await api.create_persona(template="billing", name="Sam (browser)", greeting=GREETING, layers=FAST)
        conv = await api.create_conversation(persona["persona_id"])
        cid, url = conv["conversation_id"], conv["conversation_url"]
        assert url.startswith(f"{web_server.http_url}/c/{cid}#token=")

        async with chromium(user_recording(tmp_path)) as browser:
            page = await browser.new_page()
            chrome = in_chromium(page)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(measured(url, debug=True))
            await page.click("#join")
            state = await until(chrome, lambda s: s["state"] == "live", 30, "the call did not go live")
            assert (await api.get_conversation(cid))["status"] == "active"

            # the greeting is heard at the page, the face moves on screen, captions of both sides appear
            await until(chrome, lambda s: s["replicaLoud"] > 50, 40, "the replica's greeting was not heard")
            await until(chrome, lambda s: "user_turn" in s["events"], 60, "no user turn was committed")
            state = await until(
                chrome,
                lambda s: s["events"].count("replica_speaking_start") >= 2,
                90,
                "the user's turn got no spoken reply",
            )
            assert state["frames"] > 30, "the replica's face was not shown"
            captions = await page.inner_text("#captions")
            assert GREETING in captions
            assert "bill" in captions.lower(), captions  # the user's own words, as recognised
            assert state["micLoud"] > 50  # the page heard its microphone (the recorded user)
            if SCREENSHOTS:
                await page.screenshot(path=str(Path(SCREENSHOTS) / "call.png"))

            await page.click("#end")
            state = await until(chrome, lambda s: s["state"] == "ended", 15, "hanging up did not end the call")
            assert "session_ended" in state["events"]
            assert not errors, errors

        final = await ended(api, cid, within=10.0)
        assert final["shutdown_reason"] == "participant_left"
        turns = (await api.get_transcript(cid))["turns"]
        assert next(t["text"] for t in turns if t["role"] == "replica") == GREETING
        assert any(t["role"] == "user" and "bill" in t["text"].lower() for t in turns), turns


async def test_a_team_builds_a_persona_and_tries_it_in_one_click(web_server: DuetServer, tmp_path: Path) -> None:
    tenant = admin(web_server, "tenant", "create", "Builder")
    portrait = REPO_ROOT / "faces" / "astronaut.png"
    async with chromium(user_recording(tmp_path, silence_s=8.0)) as browser:
        context = await browser.new_context()
        page = await context.new_page()
        builder = in_chromium(page)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{web_server.http_url}/builder")
        await page.fill("#api-key", tenant["api_key"])
        await page.click("#sign-in")
        await page.click("#new-persona")
        await page.fill("#name", "Riley (builder)")
        await page.fill("#system-prompt", "You are Riley, a friendly receptionist. Answer in one short sentence.")
        await page.set_input_files("#face-file", str(portrait))
        status = "document.querySelector('#face-status').dataset.status"
        await holds(builder, f"{status} === 'ready'", 90, "the uploaded portrait did not become ready")
        await page.click("#save")
        saved = "document.querySelector('#save-status').textContent.startsWith('Created')"
        await holds(builder, saved, 15, "the persona was not saved")  # (the button shows before the save returns)
        if SCREENSHOTS:
            await page.screenshot(path=str(Path(SCREENSHOTS) / "builder.png"), full_page=True)

        async with duet.Client(web_server.http_url, tenant["api_key"]) as api:
            personas = (await api.list_personas())["data"]
            assert [p["name"] for p in personas] == ["Riley (builder)"]
            face_id = personas[0]["face_id"]
            assert face_id and face_id.startswith("face_")
            assert (await api.get_face(face_id))["status"] == "ready"

            async with context.expect_page() as popup:
                await page.click("#test-call")
            call = await popup.value
            test_call = in_chromium(call)
            await call.wait_for_load_state()
            assert "/c/conv_" in call.url and "#token=" in call.url
            cid = call.url.split("/c/")[1].split("#")[0].split("?")[0]
            call.on("pageerror", lambda exc: errors.append(str(exc)))
            await call.click("#join")
            await until(test_call, lambda s: s["state"] == "live", 30, "the test call did not go live")
            await until(
                test_call, lambda s: "replica_speaking_start" in s["events"], 60, "the persona's replica never spoke"
            )
            await call.click("#end")
            await until(test_call, lambda s: s["state"] == "ended", 15, "hanging up did not end the test call")
            conv = await api.get_conversation(cid)
            assert conv["persona_id"] == personas[0]["persona_id"]
        assert not errors, errors


# What Firefox's WebRTC stack received of the replica's voice (the inbound audio RTP stream's statistics).
FIREFOX_AUDIO_IN = """(async () => {
    for (const s of (await window.duet.pc.getStats()).values()) {
        if (s.type === "inbound-rtp" && s.kind === "audio") return {packets: s.packetsReceived, bytes: s.bytesReceived};
    }
    return {packets: 0, bytes: 0};
})()"""


async def test_the_page_joins_and_the_replica_answers_in_firefox(web_server: DuetServer) -> None:
    if not firefox_available():
        pytest.fail("Debian's firefox-esr is not installed (`make setup` installs it; or set DUET_FIREFOX)")
    tenant = admin(web_server, "tenant", "create", "Firefox")
    async with duet.Client(web_server.http_url, tenant["api_key"]) as api:
        persona = await api.create_persona(template="billing", name="Sam (firefox)", greeting=GREETING, layers=FAST)
        conv = await api.create_conversation(persona["persona_id"])
        cid = conv["conversation_id"]
        async with firefox(free_port()) as ff:
            await ff.goto(measured(conv["conversation_url"]))

            await ff.evaluate("window.duet.join()")
            await until(ff.evaluate, lambda s: s["state"] == "live", 30, "the call did not go live", ff.logs)
            assert (await api.get_conversation(cid))["status"] == "active"
            spoke = "the replica never spoke"
            await until(ff.evaluate, lambda s: "replica_speaking_start" in s["events"], 40, spoke, ff.logs)
            await until(ff.evaluate, lambda s: s["frames"] > 10, 20, "the replica's face was not shown", ff.logs)
            # The interactions go in on the data channel, and the replica's voice comes back as RTP. (Headless
            # Firefox here has no audio output device, so its AudioContext never starts: the page's meters
            # stay empty, and the voice is checked on the receiver's statistics instead.)
            await ff.evaluate("window.duet.send({type: 'echo', text: 'Firefox hears this line.'})")
            echoed = "window.duet.events.some(e => e.type === 'replica_caption' && e.text.includes('Firefox hears'))"
            await holds(ff.evaluate, echoed, 30, "the echo sent on the data channel was not spoken", ff.logs)
            audio_in = f"{FIREFOX_AUDIO_IN.strip()}.then(r => r.packets > 150 && r.bytes > 5000)"
            arrived = f"the replica's voice did not arrive: {await ff.evaluate(FIREFOX_AUDIO_IN)}"
            await holds(ff.evaluate, audio_in, 30, arrived, ff.logs)
            await ff.evaluate("window.duet.hangup()")
            await until(ff.evaluate, lambda s: s["state"] == "ended", 15, "hanging up did not end the call", ff.logs)
        final = await ended(api, cid, within=10.0)
        assert (final["status"], final["shutdown_reason"]) == ("ended", "participant_left")
    # Firefox's microphone and camera (its fake devices) reached the session: the server's account of the call.
    # (Only the start of it: with no audio device on this machine, headless Firefox's media clock stalls after a
    # few seconds; a sustained call in Firefox needs a machine with sound, docs/webrtc.md.)
    web_server.wait_logged(f"call {cid} ended", 10)
    ended_line = next(line for line in web_server.log(100_000).splitlines() if f"call {cid} ended" in line)
    stats = json.loads(ended_line.split("): ", 1)[1])
    assert stats["mic_chunks"] > 50 and stats["camera_frames"] > 0, stats
