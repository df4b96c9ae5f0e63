"""HeapTrimmer: one trim after a burst of session ends, in a worker thread; nothing where libc has none."""

from __future__ import annotations

import asyncio

from orchestrator.api.heap import HeapTrimmer, _malloc_trim


async def test_a_burst_of_ends_trims_once_after_the_last() -> None:
    calls: list[int] = []
    heap = HeapTrimmer(delay_s=0.05, trim=lambda pad: calls.append(pad) or 1)
    for _ in range(5):
        heap.soon()
        await asyncio.sleep(0.01)
    assert calls == []  # still within the delay of the latest end
    await asyncio.sleep(0.15)
    await heap.close()  # (waits for the trim in the executor)
    assert calls == [0] and heap.trims == 1
    heap.soon()
    await heap.close()  # closing cancels a pending trim
    assert calls == [0]


async def test_without_malloc_trim_nothing_is_scheduled() -> None:
    heap = HeapTrimmer(delay_s=0.0)
    heap._trim = None
    heap.soon()
    assert heap._timer is None


def test_glibc_gives_a_working_trim() -> None:
    trim = _malloc_trim()
    assert trim is not None  # the machines Duet runs on (Debian, NVIDIA's Ubuntu image) use glibc
    assert trim(0) in (0, 1)
