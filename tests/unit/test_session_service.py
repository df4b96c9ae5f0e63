"""Session service teardown: a reader blocked on a full inbox must end when the session is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from duet.proto import session_pb2 as pb
from orchestrator.api.session_service import SessionService, _End, _Stamped
from orchestrator.config import Settings


async def endless() -> AsyncIterator[pb.ClientMessage]:
    while True:
        yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
        await asyncio.sleep(0)


async def test_reader_blocked_on_full_inbox_ends_on_cancel() -> None:
    service = SessionService(models=None, settings=Settings())  # type: ignore[arg-type]
    inbox: asyncio.Queue[_Stamped | _End] = asyncio.Queue(maxsize=2)
    reader = asyncio.create_task(service._read(endless(), inbox), name="test-reader")
    await asyncio.sleep(0.05)  # the reader fills the inbox and blocks on the next put
    assert inbox.full() and not reader.done()
    reader.cancel()
    done, _ = await asyncio.wait({reader}, timeout=2.0)
    assert done, "the reader hung on the full inbox after cancellation"


async def test_reader_marks_end_after_client_end() -> None:
    async def messages() -> AsyncIterator[pb.ClientMessage]:
        yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))
        yield pb.ClientMessage(control=pb.Control(kind=pb.Control.END))
        yield pb.ClientMessage(audio=pb.AudioChunk(pcm=b"\x00" * 640))  # after END: not read

    service = SessionService(models=None, settings=Settings())  # type: ignore[arg-type]
    inbox: asyncio.Queue[_Stamped | _End] = asyncio.Queue(maxsize=8)
    await service._read(messages(), inbox)
    items = [inbox.get_nowait() for _ in range(inbox.qsize())]
    assert [type(i).__name__ for i in items] == ["_Stamped", "_Stamped", "_End"]
