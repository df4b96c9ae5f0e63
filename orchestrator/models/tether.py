"""Child processes that do not outlive the process that started them (the embedded `tritonserver`).

A parent that is SIGKILLed (or a pytest run stopped by SIGTERM, which skips its fixtures' teardown) never
stops its children: an embedded tritonserver was found still running, every model loaded, 1 h 40 min after
its parent died. Linux's `PR_SET_PDEATHSIG` signals a child when its parent goes, with two catches:

- The "parent" is the *thread* that forked the child, not the process. A server restarted from a worker
  thread (`EmbeddedTriton.supervise` restarts in one) would be signalled the moment that thread exits, with
  the orchestrator alive and well. So every tethered child is started from one daemon thread that lives as
  long as the process (`spawn`).
- The setting must be made in the child, between fork and exec. `preexec_fn` is unsafe in a process with
  threads, so the child runs a short Python prelude instead (`python -S -c`): it asks for `signal` when its
  parent dies, exits if the parent already died before it asked (the race between fork and prctl), and
  execs the command, which keeps the setting and the pid.

Linux only (so is the rest of the launcher: it reads /proc); elsewhere the prelude simply execs the command.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any, cast

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ORPHANED = 75  # the prelude's exit code when its parent had died before it could ask for the signal

_PRELUDE = f"""\
import ctypes, os, sys
prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
if prctl is not None:
    prctl({PR_SET_PDEATHSIG}, int(sys.argv[1]), 0, 0, 0)
if os.getppid() != int(sys.argv[2]):
    sys.exit({ORPHANED})
os.execv(sys.argv[3], sys.argv[3:])
"""

_Job = tuple[list[str], dict[str, Any], "Future[subprocess.Popen[bytes]]"]


class _Spawner:
    """The thread every tethered child is started from (see the module's doc): one per process, started on
    first use (and again in a forked child, which does not inherit threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def submit(self, cmd: list[str], kwargs: dict[str, Any]) -> subprocess.Popen[bytes]:
        done: Future[subprocess.Popen[bytes]] = Future()
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, args=(self._jobs,), name="duet-spawner", daemon=True)
                self._pid = os.getpid()
                self._thread.start()
            self._jobs.put((cmd, kwargs, done))
        return done.result()

    @staticmethod
    def _run(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            cmd, kwargs, done = jobs.get()
            try:
                done.set_result(cast("subprocess.Popen[bytes]", subprocess.Popen(cmd, **kwargs)))  # (no text=)
            except BaseException as exc:  # (handed to the caller, whose thread raises it)
                done.set_exception(exc)


_SPAWNER = _Spawner()


def tethered_command(cmd: list[str], sig: int = signal.SIGTERM) -> list[str]:
    """`cmd` behind the prelude that asks for `sig` when this process dies."""
    if not cmd:
        raise ValueError("an empty command")
    return [sys.executable, "-S", "-c", _PRELUDE, str(int(sig)), str(os.getpid()), *cmd]


def spawn(cmd: list[str], *, sig: int = signal.SIGTERM, **kwargs: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(cmd, **kwargs)` (binary pipes: no `text`), except that the child gets `sig` when this
    process dies, however it dies. `cmd[0]` must be a path (it is exec'd as is, no PATH search). The Popen's pid
    is the command's."""
    return _SPAWNER.submit(tethered_command(cmd, sig), kwargs)
