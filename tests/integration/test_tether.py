"""Children that die with their parent (orchestrator/models/tether.py): a SIGKILLed orchestrator, or a test run
stopped before its teardown, leaves no tritonserver behind; and a server restarted from a worker thread is not
stopped when that thread exits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from orchestrator.config import REPO_ROOT
from orchestrator.models.launcher import OWNER_FILE, WORKDIR_PREFIX, _claim, process_argv, sweep_orphans


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet (its parent was killed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := [p for p in pids if not gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def parent(script: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    """A Python process running `script`, which prints one JSON line and then waits to be killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"the parent printed nothing (exit code {proc.poll()})"
    return proc, json.loads(line)


def test_a_child_started_from_a_thread_that_exited_lives_on_and_dies_with_its_parent() -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    proc, said = parent(
        f"""
        import json, threading, time
        from orchestrator.models.tether import spawn
        got = []
        def ask():
            got.append(spawn([{sleep!r}, "300"]))
            time.sleep(1.0)  # (the child has asked for its signal by now)
        t = threading.Thread(target=ask)
        t.start(); t.join()
        time.sleep(0.5)  # the thread that asked is gone: the child must not be
        print(json.dumps({{"child": got[0].pid, "alive": got[0].poll() is None}}), flush=True)
        time.sleep(300)
        """
    )
    child = int(str(said["child"]))
    try:
        assert said["alive"], "the child died when the thread that started it exited"
        assert not gone(child)
        os.kill(proc.pid, signal.SIGKILL)
        assert wait_gone([child], 5.0) == [], "the child outlived its SIGKILLed parent"
    finally:
        proc.kill()
        proc.wait()
        if not gone(child):
            os.kill(child, signal.SIGKILL)


def test_the_embedded_tritonserver_and_its_stubs_stop_when_the_orchestrator_is_killed() -> None:
    proc, said = parent(
        """
        import json, time
        from orchestrator.config import TritonSettings
        from orchestrator.models.launcher import EmbeddedTriton
        server = EmbeddedTriton(TritonSettings(models=("vad",))).start()
        print(json.dumps({"server": server._proc.pid, "stubs": list(server.child_pids()),
                          "workdir": str(server._workdir)}), flush=True)
        time.sleep(300)
        """
    )
    server = int(str(said["server"]))
    stubs = [int(p) for p in said["stubs"]]  # type: ignore[attr-defined]
    try:
        assert stubs, "the Python model vad should run in a stub"
        assert not gone(server)
        os.kill(proc.pid, signal.SIGKILL)  # no teardown, no atexit: only the kernel can tell the server
        assert wait_gone([server], 20.0) == [], "tritonserver outlived its SIGKILLed parent"
        assert wait_gone(stubs, 15.0) == [], "Python stubs outlived their server"
        workdir = Path(str(said["workdir"]))
        assert workdir in sweep_orphans(workdir.parent), "the next start would not sweep the dead server's folder"
        assert not workdir.exists()
    finally:
        proc.kill()
        proc.wait()
        for pid in [server, *stubs]:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_sweep_removes_what_a_dead_owners_server_left_and_nothing_else(tmp_path: Path) -> None:
    root, shm = tmp_path / "tmp", tmp_path / "shm"
    root.mkdir()
    shm.mkdir()

    def folder(name: str, prefix: str) -> Path:
        d = root / f"{WORKDIR_PREFIX}{name}"
        (d / "backends" / "python").mkdir(parents=True)
        (d / "tritonserver.log").write_text("...")
        (shm / f"{prefix}region_1").write_bytes(b"\0" * 64)
        return d

    dead = folder("dead", "duet_0000dead_")
    fd = _claim(dead, "duet_0000dead_")
    sleep = shutil.which("sleep")
    assert sleep is not None
    stub = dead / "backends" / "python" / "triton_python_backend_stub"  # a "stub" of the dead owner's server
    shutil.copy(sleep, stub)
    orphan = subprocess.Popen([str(stub), "300"])
    # Popen may return before the kernel has set up the new program's command line (the exec is not over
    # yet): an empty one would not name the folder. A real orphan has been running for a while.
    deadline = time.monotonic() + 5
    while process_argv(orphan.pid)[:1] != [str(stub)] and time.monotonic() < deadline:
        time.sleep(0.01)
    os.close(fd)  # the owner died: the kernel drops its lock

    alive = folder("alive", "duet_000a11ve_")
    fd_alive = _claim(alive, "duet_000a11ve_")
    kept = folder("kept", "duet_0000kept_")  # a crash log kept on purpose: no owner file
    try:
        assert sweep_orphans(root, shm) == [dead]
        assert orphan.wait(timeout=5) == -signal.SIGKILL, "the dead owner's stub is still running"
        assert not dead.exists() and not list(shm.glob("duet_0000dead_*"))
        assert (alive / OWNER_FILE).exists() and list(shm.glob("duet_000a11ve_*"))
        assert (kept / "tritonserver.log").exists() and list(shm.glob("duet_0000kept_*"))
        assert sweep_orphans(root, shm) == []
    finally:
        os.close(fd_alive)
        if orphan.poll() is None:
            orphan.kill()
