"""Several Triton servers behind one adapter: which endpoint takes each call, and which are in rotation.
Pure, with an injected clock (no I/O, no sleeping): `TritonModels` in `orchestrator/models/triton.py` does the
calls and the health checks and reports here.

`EndpointPool` is the decision half. It takes what was observed, with the time:
- `begin`/`end`: a call was sent to an endpoint, and finished (its outstanding requests);
- `failed`: a call failed there with a transport error (gRPC UNAVAILABLE: connection refused, the socket
  closed under it): the endpoint leaves rotation at once;
- `succeeded`: a call sent while the endpoint was out of rotation was answered: it is back;
- `checked`: a health check (Triton's ServerReady) said ready or not; an endpoint out of rotation is taken
  back by one ready check, one in rotation is dropped after `failed_checks_to_drop` failed checks in a row
  (one slow check on a loaded machine does not drop a server), or by one that was refused a connection;
- `due`: which endpoints are to be checked now (every `check_interval_s`, in rotation or not);
and answers `choose`: among the endpoints in rotation, the one with the least outstanding requests (ties
in turn). A call keyed by `affinity` (one session's LLM stream: its KV cache lives on the server that served
its last turn) returns to the endpoint it used last while that one is in rotation. When no endpoint is in
rotation a call still goes to one (the least loaded of all): with a single Triton, or all of them down, a
call is tried rather than refused, as with one channel before, and one that succeeds takes its endpoint back.

The set can change while calls run (`orchestrator.models.discovery` re-resolves a DNS name): `add` puts a new
endpoint out of rotation until its first ready check (a server listed before it is ready must not take
calls); `retire` takes one out of the choosing and the checks at once, while calls already sent to it finish
there (`drained` says when the last has, so its channel can be closed).

Stale news is ignored: a failure of a call sent before its endpoint came back says nothing about the server
that came back, and a success of a call sent before its endpoint was dropped says nothing about the server
that went down.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class PoolPolicy:
    check_interval_s: float = 1.0  # every endpoint's health is checked this often
    check_timeout_s: float = 2.0  # a check that takes longer has failed
    failed_checks_to_drop: int = 2  # failed checks in a row that drop an endpoint in rotation
    max_affinities: int = 4096  # sessions remembered with their endpoint (the least recently used forgotten)


@dataclass(frozen=True)
class Dropped:
    """`url` left rotation: `reason` says what showed it was down."""

    url: str
    reason: str


@dataclass(frozen=True)
class Restored:
    """`url` is back in rotation after `down_s` seconds out of it."""

    url: str
    down_s: float
    reason: str
    first: bool = False  # a new endpoint (`add`) entering rotation for the first time


Transition = Dropped | Restored


@dataclass(frozen=True)
class EndpointState:
    """One endpoint as metrics show it."""

    url: str
    up: bool
    outstanding: int
    calls: int  # calls sent to it
    drops: int  # times it left rotation
    retries: int  # calls that failed there and were sent again to another endpoint


@dataclass
class _Endpoint:
    url: str
    up: bool = True  # in rotation
    since: float = float("-inf")  # when it last entered (up) or left (down) rotation
    outstanding: int = 0
    calls: int = 0
    drops: int = 0
    retries: int = 0
    failed_checks: int = 0  # in a row
    checked_at: float = float("-inf")
    joined: bool = True  # has been in rotation (an endpoint `add`ed later starts out of it)
    retired: bool = False  # taken out of the set: no new calls, no checks; gone once its calls have ended


def affinity_key(request_id: str) -> str:
    """The session part of a request id (`<session>-<reply>`, as conversations name their LLM requests:
    `session-ab12-3`, `session-ab12-warm` -> `session-ab12`); "" for no id."""
    return request_id.rsplit("-", 1)[0] if request_id else ""


class EndpointPool:
    """The endpoints (gRPC `host:port` of each Triton), their rotation, load and session affinity."""

    def __init__(
        self, urls: Iterable[str], policy: PoolPolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._endpoints = {url: _Endpoint(url) for url in urls}
        if not self._endpoints:
            raise ValueError("an endpoint pool needs at least one endpoint")
        self.policy = policy or PoolPolicy()
        self.now = clock
        self._order = list(self._endpoints)
        self._turn = 0  # rotates ties between equally loaded endpoints
        self._affinity: OrderedDict[str, str] = OrderedDict()

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(self._order)

    def up(self, url: str) -> bool:
        return self._endpoints[url].up

    def outstanding(self, url: str) -> int:
        return self._endpoints[url].outstanding

    def in_rotation(self) -> list[str]:
        return [u for u in self._order if self._endpoints[u].up]

    def states(self) -> list[EndpointState]:
        """The endpoints of the set (not the retired ones still finishing calls)."""
        return [
            EndpointState(e.url, e.up, e.outstanding, e.calls, e.drops, e.retries)
            for e in (self._endpoints[u] for u in self._order)
        ]

    # ---- the set ---------------------------------------------------------------------------------------------

    def add(self, url: str) -> bool:
        """`url` joins the set, out of rotation until a ready check (or an answered call) takes it in; its check
        is due at once. False: it is in the set already. One retired but still finishing calls comes back."""
        e = self._endpoints.get(url)
        if e is not None and not e.retired:
            return False
        if e is None:
            e = self._endpoints[url] = _Endpoint(url, joined=False)
        e.retired, e.up, e.since, e.failed_checks, e.checked_at = False, False, self.now(), 0, float("-inf")
        self._order.append(url)
        return True

    def retire(self, url: str) -> bool:
        """`url` leaves the set: no call is sent to it from now on and it is no longer checked; calls already
        sent finish there. False: not in the set. The last endpoint of the set is never retired (ValueError)."""
        e = self._endpoints.get(url)
        if e is None or e.retired:
            return False
        if len(self._order) == 1:
            raise ValueError(f"{url} is the last Triton endpoint: a pool keeps at least one")
        e.retired, e.up = True, False
        self._order.remove(url)
        for key in [k for k, u in self._affinity.items() if u == url]:
            del self._affinity[key]
        return True

    def drained(self) -> list[str]:
        """The retired endpoints whose calls have all ended, forgotten now (their channels can be closed)."""
        done = [u for u, e in self._endpoints.items() if e.retired and e.outstanding == 0]
        for u in done:
            del self._endpoints[u]
        return done

    # ---- choosing --------------------------------------------------------------------------------------------

    def choose(
        self,
        *,
        among: Collection[str] | None = None,
        exclude: Collection[str] = (),
        prefer: Collection[str] | None = None,
        affinity: str = "",
    ) -> str | None:
        """The endpoint for a call: one of `among` (default: all) not in `exclude` (None: none is left).

        In rotation before out of it; within that, in `prefer` (e.g. where the model is not being healed) when
        any is; the one `affinity` used last when it qualifies, else the least outstanding, ties in turn.
        """
        candidates = [u for u in self._order if (among is None or u in among) and u not in exclude]
        if not candidates:
            return None
        candidates = [u for u in candidates if self._endpoints[u].up] or candidates
        if prefer is not None:
            candidates = [u for u in candidates if u in prefer] or candidates
        if affinity and (pinned := self._affinity.get(affinity)) in candidates:
            self._affinity.move_to_end(affinity)
            return pinned
        n = len(self._order)
        index = {u: i for i, u in enumerate(self._order)}
        url = min(candidates, key=lambda u: (self._endpoints[u].outstanding, (index[u] - self._turn) % n))
        self._turn = (self._turn + 1) % n
        if affinity:
            self._affinity[affinity] = url
            self._affinity.move_to_end(affinity)
            while len(self._affinity) > self.policy.max_affinities:
                self._affinity.popitem(last=False)
        return url

    def pinned(self, affinity: str) -> str | None:
        """The endpoint `affinity`'s calls go to while it is in rotation (None: none yet)."""
        return self._affinity.get(affinity)

    # ---- observations ----------------------------------------------------------------------------------------

    def begin(self, url: str) -> float:
        """A call is sent to `url` now; returns the time it was sent (for `failed`/`succeeded`)."""
        e = self._endpoints.get(url)
        if e is not None:  # (one forgotten after it was retired and drained is not counted)
            e.outstanding += 1
            e.calls += 1
        return self.now()

    def end(self, url: str) -> None:
        """A call to `url` finished, well or not (a stream: when it closed)."""
        e = self._endpoints.get(url)
        if e is not None:
            e.outstanding = max(e.outstanding - 1, 0)

    def failed(self, url: str, sent: float, reason: str, *, retried: bool = False) -> Dropped | None:
        """A call sent to `url` at `sent` failed with a transport error (`retried`: it goes to another one)."""
        e = self._endpoints.get(url)
        if e is None:
            return None
        e.retries += retried
        if not e.up or sent < e.since:
            return None  # out of rotation already, or a call to the server before it came back
        return self._drop(e, f"a call failed: {reason}")

    def succeeded(self, url: str, sent: float) -> Restored | None:
        """A call sent to `url` at `sent` was answered."""
        e = self._endpoints.get(url)
        if e is None or e.up or e.retired or sent < e.since:
            return None
        return self._restore(e, "a call was answered")

    def checked(self, url: str, ready: bool, reason: str = "", *, at_once: bool = False) -> Transition | None:
        """A health check of `url` found it ready or not (`reason`: what it found instead). `at_once`: the
        failure is certain (the server refused the connection; the first look at start), one drops it."""
        e = self._endpoints.get(url)
        if e is None or e.retired:
            return None  # checked while it left the set
        e.checked_at = self.now()
        if ready:
            e.failed_checks = 0
            return None if e.up else self._restore(e, "its health check says ready")
        e.failed_checks += 1
        if e.up and (at_once or e.failed_checks >= self.policy.failed_checks_to_drop):
            return self._drop(e, f"{e.failed_checks} health checks failed: {reason or 'not ready'}")
        return None

    def due(self) -> list[str]:
        """The endpoints whose health check is due now."""
        now = self.now()
        return [u for u in self._order if now - self._endpoints[u].checked_at >= self.policy.check_interval_s]

    def next_due(self) -> float:
        """When the next health check is due."""
        return min(self._endpoints[u].checked_at for u in self._order) + self.policy.check_interval_s

    # ---- transitions -----------------------------------------------------------------------------------------

    def _drop(self, e: _Endpoint, reason: str) -> Dropped:
        e.up, e.since, e.drops = False, self.now(), e.drops + 1
        return Dropped(e.url, reason)

    def _restore(self, e: _Endpoint, reason: str) -> Restored:
        now = self.now()
        down_s = now - e.since
        first = not e.joined
        e.up, e.since, e.failed_checks, e.joined = True, now, 0, True
        return Restored(e.url, down_s, reason, first)


__all__ = [
    "Dropped",
    "EndpointPool",
    "EndpointState",
    "PoolPolicy",
    "Restored",
    "Transition",
    "affinity_key",
]
