"""Model healing: when a Triton Python-backend stub dies or hangs, reload its model. Pure, with an injected clock.

Why it is needed: a stub that dies (a segfault in native code, the OOM killer, a kill) leaves its model READY
in Triton, and every request to it, and to the ensembles that use it, then fails after ~1 s with
`Stub process '<instance>' is not healthy.` until the model is unloaded and loaded again through the
repository API (0.4-0.5 s for a small model). Nothing in Triton does that by itself.

A stub can also hang without dying: blocked inside its model while the backend's health check still passes,
so Triton keeps it READY and queues every request behind the one it never finishes. Nothing fails; requests
just get no answer. A model is taken for hung when a request waited its whole timeout and the model answered
no request at all meanwhile (a model that is only slow answers someone).

`Healer` is the decision half. It takes what was observed, with the time:
- `failed`: a request failed with this message (the dead-stub text names the instance whose stub died);
- `answered`: a model answered a request (a response, or a piece of a streamed one);
- `silent`: a request to a model waited since a time and got nothing before its timeout;
- `stubs`: a probe found these stub processes alive (model -> pids; only where the server is local);
- `reloaded`: a reload finished, well or not;
- `tick`: time passed (a reload that failed is retried after a backoff);
and returns actions: `Reload` (unload + load that model now), `Healed`, `ReloadFailed`, and `RestartServer` when
reloading does not work (a reload that hung, or several that failed). One reload at a time
per model: failures seen while it reloads (or waits to retry) share it. A failure of a request sent before the
model's last reload says nothing about the new stub, so it starts nothing. The I/O half (the repository calls,
the probe, the clock, logs and counters) is `ModelHealer` in `orchestrator/models/triton.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

DEAD_STUB = re.compile(r"Stub process '(?P<instance>[^']+)' is not healthy")
_INSTANCE = re.compile(r"^(?P<model>.+)_\d+_\d+$")  # Triton names instances <model>_<group>_<index>


def dead_stub_instance(message: str) -> str | None:
    """The instance (e.g. `llm_0_0`) whose stub died, when `message` is Triton's dead-stub error."""
    m = DEAD_STUB.search(message)
    return m.group("instance") if m else None


@dataclass(frozen=True)
class HealingPolicy:
    backoff_s: float = 0.5  # wait before retrying a reload that failed; doubles each attempt
    max_backoff_s: float = 30.0
    # When reloading is not enough, restart the whole server (where the healer can): after a reload that hung
    # (Triton then refuses further loads of that model while the stuck one runs), or this many failed ones.
    restart_after_failures: int = 3


@dataclass(frozen=True)
class Reload:
    """Unload and load `model` now (its `attempt`-th try since it was found dead)."""

    model: str
    attempt: int
    reason: str  # what showed the stub was dead
    source: str  # "request" (a request failed), "probe" (its stub process is gone) or "silence" (it hung)


@dataclass(frozen=True)
class Healed:
    model: str
    down_s: float  # from finding it dead to the reload finishing
    attempts: int


@dataclass(frozen=True)
class ReloadFailed:
    model: str
    attempt: int
    error: str
    retry_at: float


@dataclass(frozen=True)
class RestartServer:
    """Reloading `model` does not work: restart tritonserver (the embedded one; an external one is retried)."""

    model: str
    reason: str


Action = Reload | Healed | ReloadFailed | RestartServer


class State(Enum):
    HEALTHY = "healthy"
    RELOADING = "reloading"
    WAITING = "waiting"  # a reload failed; the next one is due at `retry_at`


@dataclass
class _Model:
    state: State = State.HEALTHY
    dead_since: float = 0.0
    attempts: int = 0
    retry_at: float = 0.0
    reason: str = ""
    source: str = ""
    healed_at: float = float("-inf")  # when its last reload finished
    pids: frozenset[int] | None = None  # its stubs as last probed (None: not seen since the last reload)
    answered_at: float = float("-inf")  # when it last answered a request


class Healer:
    """Per-model healing state. `members` maps each ensemble to the models it runs (`floor` -> `turn`, ...)."""

    def __init__(self, members: Mapping[str, Iterable[str]] | None = None, policy: HealingPolicy | None = None) -> None:
        self.members: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in (members or {}).items()}
        self.policy = policy or HealingPolicy()
        self._models: dict[str, _Model] = {}

    def _model(self, name: str) -> _Model:
        return self._models.setdefault(name, _Model())

    def state(self, model: str) -> State:
        m = self._models.get(model)
        return m.state if m is not None else State.HEALTHY

    def healthy(self, model: str) -> bool:
        """Whether requests to `model` can go now: neither it nor (for an ensemble) a member is being healed."""
        return all(self.state(m) is State.HEALTHY for m in (model, *self.members.get(model, ())))

    def unhealthy(self) -> list[str]:
        return sorted(name for name, m in self._models.items() if m.state is not State.HEALTHY)

    # ---- observations -------------------------------------------------------------------------------

    def failed(self, model: str, message: str, now: float, sent: float | None = None) -> list[Action]:
        """A request to `model` (sent at `sent`) failed at `now` with `message`.

        Only Triton's dead-stub error counts. It names the instance whose stub died (`<model>_<group>_<index>`),
        which for an ensemble is one of its members; a name not of that form that is neither the model nor a
        member falls back to the model (or, for an ensemble, all its members).
        """
        instance = dead_stub_instance(message)
        if instance is None:
            return []
        reason = f"a request failed: {message}"
        return [a for m in self.culprits(model, instance) for a in self._dead(m, now, sent, reason, "request")]

    def culprits(self, model: str, instance: str) -> tuple[str, ...]:
        """The models to reload for a dead `instance` seen by a request to `model`."""
        m = _INSTANCE.match(instance)
        if m:  # `<model>_<group>_<index>`: that model, the one requested or an ensemble's member
            return (m.group("model"),)
        if instance == model or instance in self.members.get(model, ()):
            return (instance,)
        return self.members.get(model, ()) or (model,)

    def answered(self, model: str, now: float) -> None:
        """`model` answered a request at `now` (it is not hung)."""
        self._model(model).answered_at = now

    def silent(self, model: str, since: float, now: float) -> list[Action]:
        """A request to `model` waited from `since` to `now` (its timeout) and got nothing.

        The model is hung when it answered no request at all in that time: it is reloaded (its stub killed
        first, where the healer can). For an ensemble, which member hangs is not known, so all are reloaded.
        A wait that began before the model's last reload says nothing about the new stub.
        """
        if self._model(model).answered_at >= since:
            return []
        reason = f"it answered nothing for {now - since:.0f} s while a request waited: taken for hung"
        targets = self.members.get(model, ()) or (model,)
        return [a for t in targets for a in self._dead(t, now, since, reason, "silence")]

    def stubs(self, alive: Mapping[str, Iterable[int]], now: float) -> list[Action]:
        """A probe found these stubs alive (model -> pids). A model whose stub was seen and is gone now, with
        no new one in its place, died.

        A model never seen is not judged (it may not be loaded at all), and one being reloaded is left alone:
        its stub is meant to be gone for a moment, and the next probe after the reload learns the new one.
        """
        actions: list[Action] = []
        for name in sorted(set(alive) | {n for n, m in self._models.items() if m.pids}):
            pids = frozenset(alive.get(name, ()))
            m = self._model(name)
            if m.state is not State.HEALTHY:
                continue
            if m.pids is not None and m.pids - pids and not pids - m.pids:  # new pids: it was reloaded
                gone = ", ".join(str(p) for p in sorted(m.pids - pids))
                m.pids = None
                actions += self._dead(name, now, None, f"stub process {gone} is gone", "probe")
            else:
                m.pids = pids or None
        return actions

    def reloaded(self, model: str, now: float, error: str | None = None, *, hung: bool = False) -> list[Action]:
        """The reload of `model` finished at `now`: well (`error` None) or with `error`; `hung`: it did not
        finish at all within its time limit."""
        m = self._model(model)
        if m.state is not State.RELOADING:
            return []
        if error is None:
            healed = Healed(model, now - m.dead_since, m.attempts)
            m.state, m.attempts, m.healed_at, m.pids = State.HEALTHY, 0, now, None
            return [healed]
        delay = min(self.policy.backoff_s * 2 ** (m.attempts - 1), self.policy.max_backoff_s)
        m.state, m.retry_at = State.WAITING, now + delay
        actions: list[Action] = [ReloadFailed(model, m.attempts, error, m.retry_at)]
        if hung or m.attempts >= self.policy.restart_after_failures:
            why = "its reload hung" if hung else f"{m.attempts} reloads failed"
            actions.append(RestartServer(model, f"{why}: {error}"))
        return actions

    def tick(self, now: float) -> list[Action]:
        """The retries due by `now`."""
        actions: list[Action] = []
        for name, m in sorted(self._models.items()):
            if m.state is State.WAITING and now >= m.retry_at:
                actions.append(self._reload(name, m))
        return actions

    def next_due(self) -> float | None:
        """When `tick` next has something to do (None: nothing is waiting)."""
        due = [m.retry_at for m in self._models.values() if m.state is State.WAITING]
        return min(due) if due else None

    def forget(self) -> None:
        """The whole server was restarted: every model is fresh, and its stubs are new."""
        self._models.clear()

    # ---- transitions --------------------------------------------------------------------------------

    def _dead(self, name: str, now: float, sent: float | None, reason: str, source: str) -> list[Action]:
        m = self._model(name)
        if m.state is not State.HEALTHY:
            return []  # a reload is under way or due: this failure shares it
        if sent is not None and sent < m.healed_at:
            return []  # it went to the stub that died before, not to the reloaded one
        m.dead_since, m.attempts, m.reason, m.source = now, 0, reason, source
        return [self._reload(name, m)]

    def _reload(self, name: str, m: _Model) -> Reload:
        m.state = State.RELOADING
        m.attempts += 1
        return Reload(name, m.attempts, m.reason, m.source)
