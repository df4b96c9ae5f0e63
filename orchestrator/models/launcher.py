"""Start and stop the real `tritonserver` that ships inside the `nvidia-pytriton` wheel.

No Docker, no GPU needed. The wheel has the server binary, the Python backend and one backend stub per
Python version; Triton needs them as one backend folder, so we build a symlink farm (symlinks, not copies:
the stub finds its libraries relative to its real location). Before starting we run the stub once: a stub
that cannot load its libraries would otherwise leave the server "loading" forever.

`supervise` restarts a server that died, on the same ports, so clients reconnect to the same address; `stubs`
lists the live Python stubs by model, the probe the model healer (`orchestrator/models/healing.py`) uses to notice
a stub that died. The server is tethered to this process (`orchestrator/models/tether.py`: it gets SIGTERM when
the process dies, however it dies), and each start sweeps away what servers whose owner died left behind
(`sweep_orphans`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import REPO_ROOT, TritonSettings
from orchestrator.errors import TritonStartError
from orchestrator.models.tether import spawn

log = logging.getLogger("duet.launcher")


@dataclass(frozen=True)
class TritonLayout:
    """Where the pieces of the wheel's Triton live for this interpreter."""

    server_root: Path
    libs: Path
    stub: Path
    python_libdir: Path

    @property
    def binary(self) -> Path:
        return self.server_root / "bin" / "tritonserver"

    @staticmethod
    def discover() -> TritonLayout:
        purelib = Path(sysconfig.get_paths()["purelib"])
        root = purelib / "pytriton" / "tritonserver"
        ver = f"{sys.version_info.major}.{sys.version_info.minor}"
        layout = TritonLayout(
            server_root=root,
            libs=purelib / "nvidia_pytriton.libs",
            stub=root / "python_backend_stubs" / ver / "triton_python_backend_stub",
            python_libdir=Path(str(sysconfig.get_config_var("LIBDIR") or "")),
        )
        missing = [p for p in (layout.binary, layout.stub, layout.libs) if not p.exists()]
        if missing:
            raise TritonStartError(
                f"the nvidia-pytriton wheel is not installed for Python {ver} (missing {missing[0]}); run `make setup`"
            )
        if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
            raise TritonStartError("this Python is not a shared-library build; the Triton Python stub needs one")
        return layout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedTriton:
    """A tritonserver child process on loopback. Use as a context manager or call start()/stop()."""

    def __init__(self, settings: TritonSettings, *, log_path: Path | None = None) -> None:
        self.settings = settings
        self.layout = TritonLayout.discover()
        self.http_port = settings.http_port or free_port()
        self.grpc_port = settings.grpc_port or free_port()
        self.metrics_port = settings.metrics_port or free_port()
        self._workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self.log_path = log_path or self._workdir / "tritonserver.log"
        self._shm_prefix = f"duet_{uuid.uuid4().hex[:8]}_"
        self._owner: int | None = _claim(self._workdir, self._shm_prefix)  # released when this process dies
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False  # stop() was called: supervise() must not bring it back
        self._lock = threading.Lock()  # start/stop may run in different threads (supervise restarts in one)
        self.restarts = 0  # how many times supervise() restarted a server that died
        # a stub's command line starts with its model file: <repository>/<model>/<version>/model.py
        repo = re.escape(str(Path(settings.model_repository).resolve()))
        self._stub_model = re.compile(rf"^{repo}/(?P<model>[^/]+)/\d+/model\.py$")

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The stub takes `python3` from PATH as its interpreter, so our venv's bin must come first.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.layout.python_libdir), str(self.layout.libs), env.get("LD_LIBRARY_PATH")) if p
        )
        # model.py files import their logic from the repository's packages.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _backend_farm(self) -> Path:
        farm = self._workdir / "backends" / "python"
        farm.mkdir(parents=True, exist_ok=True)
        py_backend = self.layout.server_root / "backends" / "python"
        for src in (
            py_backend / "libtriton_python.so",
            py_backend / "triton_python_backend_utils.py",
            self.layout.stub,
        ):
            link = farm / src.name
            link.unlink(missing_ok=True)  # a restart builds it again
            link.symlink_to(src)
        return farm.parent

    def preflight(self, env: dict[str, str]) -> None:
        """Run the stub with no arguments: exit 1 = libraries load (it wants arguments), 127 = loader failed."""
        proc = subprocess.run([str(self.layout.stub)], env=env, capture_output=True, timeout=30, check=False)
        if proc.returncode == 127:
            raise TritonStartError(
                "the Triton Python backend stub cannot load its shared libraries: "
                + proc.stderr.decode(errors="replace").strip()[-400:]
            )

    def command(self, backends: Path) -> list[str]:
        cmd = [
            str(self.layout.binary),
            f"--model-repository={self.settings.model_repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={self.layout.server_root / 'caches'}",
            "--disable-auto-complete-config",
            "--model-control-mode=explicit",
            "--exit-timeout-secs=5",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--metrics-config=summary_latencies=true",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--log-verbose=0",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        cmd += [f"--load-model={m}" for m in self.settings.models]
        return cmd

    def _clean_shm(self) -> None:
        shm = Path("/dev/shm")
        if shm.is_dir():
            for p in shm.glob(f"{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    p.unlink()

    def _ready(self) -> bool:
        """Models ready, and the metrics endpoint up (Triton starts it after the health endpoint: a caller
        reading `metrics_url` right after start was once refused)."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as r:
                if r.status != 200:
                    return False
            with urllib.request.urlopen(self.metrics_url, timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def start(self) -> EmbeddedTriton:
        with self._lock:
            self._closed = False
        sweep_orphans(self._workdir.parent)
        try:
            return self._launch(log_mode="wb")
        except _Crashed as exc:
            # Seen on a loaded 2-core machine: the Python backend aborts the server while stubs start
            # (`boost::interprocess::lock_exception`). A crash, unlike a refused config, is worth one more try.
            log.warning("tritonserver crashed while starting; starting it once more: %s", exc.message[:200])
            return self._launch(log_mode="ab")

    def _launch(self, log_mode: str) -> EmbeddedTriton:
        env = self._env()
        self.preflight(env)
        backends = self._backend_farm()
        self._clean_shm()
        cmd = self.command(backends)
        log.info("starting tritonserver on %s (models: %s)", self.grpc_url, ", ".join(self.settings.models))
        with self._lock:  # stop() from another thread either comes first (and we start nothing) or sees this one
            if self._closed:
                raise TritonStartError("tritonserver was stopped while it was being started")
            logf = open(self.log_path, log_mode)  # noqa: SIM115 - owned by the child for its lifetime
            try:
                # tethered: it gets SIGTERM when this process dies, however it dies (a SIGKILL included)
                proc = self._proc = spawn(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
            finally:
                logf.close()
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc is not proc:
                raise TritonStartError("tritonserver was stopped while it was being started")
            if proc.poll() is not None:
                error = _Crashed if proc.returncode < 0 else TritonStartError  # < 0: killed by a signal
                raise error(f"tritonserver exited with code {proc.returncode} while starting:\n{self.log_tail()}")
            if self._ready():
                waited = self.settings.startup_timeout_s - (deadline - time.monotonic())
                log.info("tritonserver ready after %.1fs", waited)
                return self
            time.sleep(0.1)
        self._terminate()
        raise TritonStartError(
            f"tritonserver not ready after {self.settings.startup_timeout_s:.0f}s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and remove its working folder. The folder, with the log, stays when the server died
        and was restarted meanwhile (its path is logged), so the crash can still be read."""
        with self._lock:
            self._closed = True
        self._terminate(timeout)
        if self.restarts:
            log.warning(
                "tritonserver died %d time(s) during this run; its log stays at %s", self.restarts, self.log_path
            )
            (self._workdir / OWNER_FILE).unlink(missing_ok=True)  # kept on purpose: no sweep takes it
        else:
            shutil.rmtree(self._workdir, ignore_errors=True)
        if self._owner is not None:
            os.close(self._owner)
            self._owner = None

    def _terminate(self, timeout: float = 15.0) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._reap_stubs()
        self._clean_shm()
        shutil.rmtree(self._workdir / "backends", ignore_errors=True)

    def _reap_stubs(self) -> None:
        """Kill the Python stubs a dead server of ours left behind. They mostly exit by themselves within ~5 s,
        but one busy in its model can outlive its server for good (seen: an orphaned `turn` stub, 150 MB and
        its share of CPU, 20 minutes after its tritonserver was killed)."""
        _kill_processes_of(self._workdir)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def child_pids(self) -> Sequence[int]:
        """PIDs of the Python stubs (children of tritonserver), for crash detection and tests."""
        return [] if self._proc is None else child_pids(self._proc.pid)

    def kill_stubs(self, model: str) -> list[int]:
        """SIGKILL `model`'s live Python stubs (before a reload): a stub that is hung, not dead (Triton's backend
        found it "not healthy"), must not wake up later beside its successor. Returns the pids killed."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return []
        killed = []
        for pid in child_pids(proc.pid):
            argv = process_argv(pid)
            if len(argv) > 1 and (m := self._stub_model.match(argv[1])) and m.group("model") == model:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        return killed

    def stubs(self) -> dict[str, frozenset[int]] | None:
        """The live Python stubs of this server by model (model -> pids); None when the server is not running.

        Read from /proc (the server's children and their command lines): cheap enough to poll twice a second.
        Blocking (up to 50 ms): call it from a worker thread.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None
        found: dict[str, set[int]] = {}
        for pid in child_pids(proc.pid):
            argv = process_argv(pid)  # empty when it has just exited
            if len(argv) > 1 and (m := self._stub_model.match(argv[1])):
                found.setdefault(m.group("model"), set()).add(pid)
        if not found:
            time.sleep(0.05)  # no stub at all: maybe the server itself is dying (a kill takes a moment)
        if proc.poll() is not None:
            return None  # it died while we read: its stubs are gone because it is, not one by one
        return {model: frozenset(pids) for model, pids in found.items()}

    def kill(self) -> None:
        """Kill the server at once: `supervise` starts it again (what the healer does when reloads do not work)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            log.warning("killing tritonserver (pid %d) for a restart", proc.pid)
            proc.kill()

    def restart(self) -> EmbeddedTriton:
        """Start again after the server died, on the same ports (clients reconnect to the same address).

        The old server's stubs are killed (most exit by themselves within ~5 s); the start clears their shared
        memory. The log goes on in the same file, so the crash stays readable.
        """
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        self._reap_stubs()
        shutil.rmtree(self._workdir / "backends", ignore_errors=True)
        return self._launch(log_mode="ab")

    async def supervise(
        self,
        on_restart: Callable[[], Awaitable[None]] | None = None,
        *,
        interval_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        """Restart the server whenever it dies, until cancelled or stopped (run it as an owned task).

        A restart that fails is tried again after a doubling backoff. `on_restart` runs after each restart
        (the client reconnects, the healer forgets the old stubs).
        """
        while True:
            await asyncio.sleep(interval_s)
            proc = self._proc
            if self._closed or proc is None or proc.poll() is None:
                continue
            log.error("tritonserver exited with code %s; restarting it on %s", proc.returncode, self.grpc_url)
            t0 = time.monotonic()
            backoff = 1.0
            while not self._closed:
                try:
                    await asyncio.to_thread(self.restart)
                    break
                except (TritonStartError, OSError, subprocess.SubprocessError) as exc:
                    log.error("tritonserver restart failed (next try in %.0f s): %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff_s)
            if self._closed:
                return
            self.restarts += 1
            log.warning("tritonserver restarted in %.1f s (restart %d)", time.monotonic() - t0, self.restarts)
            if on_restart is not None:
                await on_restart()

    def __enter__(self) -> EmbeddedTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


WORKDIR_PREFIX = "duet-triton-"
OWNER_FILE = "owner"  # in a server's working folder: holds its shared-memory prefix, locked by its owner


def _claim(workdir: Path, shm_prefix: str) -> int:
    """Mark `workdir` as this process's: an open file under an exclusive lock, which the kernel releases however
    the process ends. Written and locked under another name first, so a sweep never sees it unlocked."""
    tmp = workdir / f".{OWNER_FILE}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, shm_prefix.encode())
    tmp.rename(workdir / OWNER_FILE)
    return fd


def sweep_orphans(root: Path, shm: Path = Path("/dev/shm")) -> list[Path]:
    """Remove what embedded servers whose owner died left behind (a SIGKILLed orchestrator runs no cleanup):
    their working folders, their Python backend's shared memory, and any of their processes still running (a
    server is tethered to its owner, `orchestrator/models/tether.py`, but its stubs only notice it is gone
    after a while). A folder whose owner lives stays locked and is left alone; so is one kept on purpose (the
    log of a server that died: `stop` removes its owner file). Returns the folders removed."""
    removed = []
    for owner in root.glob(f"{WORKDIR_PREFIX}*/{OWNER_FILE}"):
        try:
            fd = os.open(owner, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner is alive
            prefix = os.read(fd, 64).decode(errors="replace")
            folder = owner.parent
            _kill_processes_of(folder)
            if re.fullmatch(r"duet_[0-9a-f]{8}_", prefix):
                for region in shm.glob(f"{prefix}*"):
                    with contextlib.suppress(OSError):
                        region.unlink()
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    if removed:
        log.warning("removed %d folder(s) of embedded tritonservers whose owner died", len(removed))
    return removed


def _kill_processes_of(workdir: Path) -> None:
    """SIGKILL the processes of the server whose working folder is `workdir`: its Python stubs (they run from
    its backend folder) and the server itself (given that folder as --backend-directory)."""
    backends = workdir / "backends"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = process_argv(int(entry.name))
        if argv and (argv[0].startswith(f"{backends}/") or f"--backend-directory={backends}" in argv):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


class _Crashed(TritonStartError):
    """tritonserver died of a signal (an abort, a segfault) while starting."""


def child_pids(pid: int) -> list[int]:
    """PIDs of `pid`'s children (Linux /proc): each thread lists the ones it started."""
    out: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in children.read_text().split()]
    return out


def process_argv(pid: int) -> list[str]:
    """A process's command line (Linux /proc); empty once it has exited."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


@contextlib.contextmanager
def triton_for(settings: TritonSettings) -> Iterator[str]:
    """Yield a gRPC URL: the configured ones (comma-separated when several), or an embedded server's for the
    duration of the block."""
    if endpoints := settings.endpoints():
        yield ",".join(endpoints)
        return
    with EmbeddedTriton(settings) as server:
        yield server.grpc_url
