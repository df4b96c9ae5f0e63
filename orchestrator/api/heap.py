"""Freed heap memory given back to the operating system after sessions end.

A session allocates and frees many medium-sized native buffers (audio, frames, protobuf messages, numpy
arrays). glibc keeps freed memory in the heap for reuse, and with the heap fragmented it rarely returns it:
the soak (`perf/soak.py`) saw the orchestrator's RSS grow ~3 MiB a session without levelling off, although
Python's own allocations (tracemalloc) grew by kilobytes and `malloc_trim(0)` took RSS back to its idle
figure. So after a session ends, once the server has been quiet for a moment, the heap is trimmed in a worker
thread. Where the C library has no `malloc_trim` (musl, macOS) nothing is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("duet.heap")

TRIM_DELAY_S = 2.0  # after the last session ended: sessions ending together are trimmed for once


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class HeapTrimmer:
    """`soon()` after a session ends: one trim, in the loop's default executor, `delay_s` after the latest call
    (a timer, not a task: nothing is left pending when the loop closes)."""

    def __init__(self, delay_s: float = TRIM_DELAY_S, trim: Callable[[int], int] | None = None) -> None:
        self.delay_s = delay_s
        self._trim = trim if trim is not None else _malloc_trim()
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Future[int] | None = None
        self.trims = 0

    def soon(self) -> None:
        if self._trim is None:
            return
        if self._timer is not None:
            self._timer.cancel()  # a later end restarts the wait: one trim after a burst of ends
        self._timer = asyncio.get_running_loop().call_later(self.delay_s, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._trim is None or (self._running is not None and not self._running.done()):
            return
        self._running = asyncio.get_running_loop().run_in_executor(None, self._trim, 0)
        self.trims += 1

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running is not None:
            with contextlib.suppress(Exception):
                await self._running
