"""Real headless Firefox (Debian's `firefox-esr`), driven over WebDriver BiDi, the W3C protocol Firefox speaks
natively (`--remote-debugging-port`): no geckodriver, no browser download. Enough of it for the browser tests:
open a page, evaluate an expression, read the answer.

Firefox's fake media devices (`media.navigator.streams.fake`) stand in for the hardware: a tone as the
microphone, a test pattern as the camera; the permission prompt is turned off.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

FIREFOX = os.environ.get("DUET_FIREFOX") or shutil.which("firefox-esr") or shutil.which("firefox") or ""
# Fake devices, no prompts, and none of Firefox's own traffic (the machine's network is closed).
PREFS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.autoplay.block-webaudio": False,
    "browser.shell.checkDefaultBrowser": False,
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "extensions.update.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.startup.page": 0,
    "remote.prefs.recommended": True,
    # ICE as on a LAN: real host addresses (not mDNS names), loopback allowed
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.ice.loopback": True,
}


def firefox_available() -> bool:
    return bool(FIREFOX) and Path(FIREFOX).is_file()


class BiDi:
    """One WebDriver BiDi session over its WebSocket: `call(method, params)` → the result."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self.context = ""
        self.logs: list[str] = []  # the page's console messages and errors (`log.entryAdded`)

    async def call(self, method: str, params: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
        mid = next(self._ids)
        await self.ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        async with asyncio.timeout(timeout_s):
            while True:
                msg = json.loads((await self.ws.receive()).data)
                if msg.get("id") != mid:
                    if msg.get("method") == "log.entryAdded":
                        entry = msg.get("params", {})
                        self.logs.append(f"{entry.get('level')}: {entry.get('text')}")
                    continue
                if msg.get("type") == "error":
                    raise RuntimeError(f"{method}: {msg.get('error')}: {msg.get('message')}")
                result: dict[str, Any] = msg["result"]
                return result

    async def goto(self, url: str) -> None:
        await self.call("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of `expression` (evaluated in the page, awaited if a promise)."""
        result = await self.call(
            "script.evaluate",
            {
                "expression": f"(async () => JSON.stringify(await ({expression})))()",
                "target": {"context": self.context},
                "awaitPromise": True,
            },
        )
        if result.get("type") == "exception":
            raise RuntimeError(f"page exception: {result.get('exceptionDetails', {}).get('text')}")
        value = result["result"].get("value")
        return json.loads(value) if isinstance(value, str) else None


@contextlib.asynccontextmanager
async def firefox(port: int) -> AsyncIterator[BiDi]:
    """A headless Firefox with a fresh profile, its BiDi session open on `port`."""
    profile = Path(tempfile.mkdtemp(prefix="duet-firefox-"))
    (profile / "user.js").write_text(
        "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
    )
    proc = await asyncio.create_subprocess_exec(
        FIREFOX, "--headless", "--no-remote", "--profile", str(profile), f"--remote-debugging-port={port}",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"},
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            ws = None
            for _ in range(120):  # Firefox takes a few seconds to open its remote agent
                try:
                    ws = await http.ws_connect(f"ws://127.0.0.1:{port}/session", max_msg_size=64 << 20)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.25)
            if ws is None:
                raise RuntimeError("Firefox's WebDriver BiDi endpoint did not open")
            bidi = BiDi(ws)
            await bidi.call("session.new", {"capabilities": {}})
            await bidi.call("session.subscribe", {"events": ["log.entryAdded"]})
            tree = await bidi.call("browsingContext.getTree", {})
            bidi.context = tree["contexts"][0]["context"]
            try:
                yield bidi
            finally:
                with contextlib.suppress(Exception):
                    await bidi.call("session.end", {}, timeout_s=5)
                await ws.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
