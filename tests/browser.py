"""Real headless Chromium (Debian's `chromium` package) driven by Playwright, for the browser tests and the
WebRTC benchmark: the conversation page with a recorded user as its microphone.

Chromium's fake media devices stand in for the hardware only: `--use-file-for-fake-audio-capture` plays a WAV
file into `getUserMedia` (once, with `%noloop`), `--use-fake-device-for-media-stream` gives a synthetic camera,
and `--use-fake-ui-for-media-stream` grants the permission prompt. Everything else (WebRTC, Opus, VP8, the
page's Web Audio meters) is the browser's own. No browser is downloaded: Playwright launches the system one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("DUET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# As root in a container, without a GPU and a network: Chromium's own background traffic would be refused by the
# closed network (and hang its start on lookups), and its sandbox needs user namespaces a container may lack.
BASE_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
)


def chromium_available() -> bool:
    return Path(CHROMIUM).is_file()


def media_args(microphone: Path | None) -> list[str]:
    """Launch arguments: `microphone` (a WAV file) is what the page's microphone hears, once."""
    args = list(BASE_ARGS)
    if microphone is not None:
        args.append(f"--use-file-for-fake-audio-capture={microphone}%noloop")
    return args


@contextlib.asynccontextmanager
async def chromium(microphone: Path | None = None) -> AsyncIterator[Any]:
    """A headless Chromium (a Playwright `Browser`) whose microphone plays `microphone`."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=media_args(microphone))
        try:
            yield browser
        finally:
            await browser.close()


def measured(url: str, *, debug: bool = False) -> str:
    """The conversation page's URL with the page's meters on (`?measure=1`), the token fragment kept."""
    base, _, fragment = url.partition("#")
    query = "measure=1" + ("&debug=1" if debug else "")
    return f"{base}{'&' if '?' in base else '?'}{query}" + (f"#{fragment}" if fragment else "")


# What the page's `window.duet` hook says now: call state, events, and how much it has heard and shown.
PAGE_STATE = """({
    state: window.duet.state,
    endReason: window.duet.endReason,
    events: window.duet.events.map(e => e.type),
    replicaLoud: window.duet.levels.replica.filter(x => x[1] > 0.01).length,
    micLoud: window.duet.levels.mic.filter(x => x[1] > 0.01).length,
    frames: window.duet.frames.length,
    levels: [window.duet.levels.mic.length, window.duet.levels.replica.length],
})"""


def in_chromium(page: Any) -> Callable[[str], Awaitable[Any]]:
    """A Playwright page as the tests' one way into a page: evaluate an expression, get its (awaited) value.
    (`tests.firefox.BiDi.evaluate` is the same for Firefox.)"""
    return lambda expression: page.evaluate(f"() => ({expression})")
