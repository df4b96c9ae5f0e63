"""Triton servers found by DNS: a name whose address records are the servers, resolved again every few
seconds, so that servers added or removed (Triton pods scaled by an autoscaler, replaced by a rollout) join
and leave the orchestrator's set without a restart.

In `triton.url`/`triton.urls` an entry `dns:///NAME:PORT` (gRPC's own spelling of a DNS target) stands for
every address NAME resolves to, each with PORT: a Kubernetes headless Service's name resolves to the address of
each of its pods. Fixed `host:port` entries may sit beside it.

- `DnsName`/`parse_dns` read the entry; `Membership` (pure) holds what the set should be: the fixed entries and
  each name's addresses at its last successful resolution. A failed or empty answer keeps the last addresses:
  a DNS hiccup must not empty the set, and a server that is really gone is dropped from rotation by its failed
  health checks meanwhile.
- `EndpointDiscovery` does the I/O: resolves each name (the event loop's `getaddrinfo`, or an injected
  resolver), and applies the difference to `TritonModels` (`add_endpoint`: out of rotation until its first
  ready check; `retire_endpoint`: no new calls, the running ones finish), telling the caller so that each
  server has its healer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.errors import BadOption, ModelUnavailable

if TYPE_CHECKING:  # (the settings import this module: no gRPC client at import)
    from orchestrator.models.triton import TritonModels

log = logging.getLogger("duet.triton")

DNS_PREFIX = "dns:///"

Resolve = Callable[[str, int], Awaitable[Sequence[str]]]  # (name, port) -> gRPC addresses "ip:port"


@dataclass(frozen=True)
class DnsName:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{DNS_PREFIX}{self.host}:{self.port}"


def parse_dns(url: str) -> DnsName | None:
    """The DNS name of a `dns:///NAME:PORT` entry; None for a fixed `host:port`. BadOption when malformed
    (a DNS server given as gRPC's `dns://AUTHORITY/` is not supported: the system resolver is used)."""
    if not url.startswith("dns:"):
        return None
    if not url.startswith(DNS_PREFIX):
        raise BadOption(f"triton.url: {url!r}: write a DNS name as {DNS_PREFIX}NAME:PORT")
    host, _, port = url.removeprefix(DNS_PREFIX).rpartition(":")
    if not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadOption(f"triton.url: {url!r}: write a DNS name as {DNS_PREFIX}NAME:PORT (PORT 1..65535)")
    return DnsName(host, int(port))


def address(ip: str, port: int) -> str:
    """gRPC's `host:port` for an IP address (an IPv6 one in brackets)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


async def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, as `ip:port`, sorted (the system resolver: /etc/hosts, then DNS)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({address(str(info[4][0]), port) for info in infos})


class Membership:
    """The servers the set should hold: the fixed entries, then each name's addresses at its last successful
    resolution. Pure."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.fixed: list[str] = []
        self.names: list[DnsName] = []
        for url in entries:
            name = parse_dns(url)
            if name is None:
                self.fixed.append(url)
            elif name not in self.names:
                self.names.append(name)
        self._last: dict[DnsName, tuple[str, ...]] = {}

    @property
    def dynamic(self) -> bool:
        return bool(self.names)

    def resolved(self, name: DnsName, addresses: Sequence[str]) -> bool:
        """`name` now resolves to `addresses` (an empty answer keeps the last ones). True: a change."""
        if not addresses or tuple(addresses) == self._last.get(name):
            return False
        self._last[name] = tuple(addresses)
        return True

    def source(self, url: str) -> str:
        """Where `url` comes from: the names that resolve to it, or "fixed"."""
        return ", ".join(str(n) for n in self.names if url in self._last.get(n, ())) or "fixed"

    def wanted(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.fixed, *(a for n in self.names for a in self._last.get(n, ()))]))

    def changes(self, current: Collection[str]) -> tuple[list[str], list[str]]:
        """What to add to the set `current` and what to retire from it. Nothing is retired while nothing is
        wanted (no name resolved yet)."""
        wanted = self.wanted()
        add = [u for u in wanted if u not in current]
        retire = [u for u in current if u not in wanted] if wanted else []
        return add, retire


class EndpointDiscovery:
    """Resolves the names of `membership` every `interval_s` and applies the changes to `models`; `on_added` and
    `on_retired` hear of each server that joined or left the set. `run()` is the owned task."""

    def __init__(
        self,
        models: TritonModels,
        membership: Membership,
        *,
        interval_s: float = 5.0,
        resolve: Resolve = resolve_addresses,
        timeout_s: float = 5.0,
        on_added: Callable[[str], None] = lambda url: None,
        on_retired: Callable[[str], None] = lambda url: None,
    ) -> None:
        self.models = models
        self.membership = membership
        self.interval_s = interval_s
        self.resolve = resolve
        self.timeout_s = timeout_s
        self.on_added = on_added
        self.on_retired = on_retired
        self._problems: dict[DnsName, str] = {}  # what the last resolution of each name found wrong

    async def run(self) -> None:
        """Until cancelled: resolve, apply, wait `interval_s`."""
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                await resolve_all(self.membership, self.resolve, self.timeout_s, self._problems)
                self.apply()
        except Exception:  # the set must not freeze unnoticed (cancellation is no Exception: it passes)
            log.exception("Triton endpoint discovery stopped")
            raise

    def apply(self) -> tuple[list[str], list[str]]:
        """Bring `models`' set to what `membership` wants; returns (added, retired)."""
        add, retire = self.membership.changes(self.models.urls)
        for url in add:
            if self.models.add_endpoint(url):
                log.warning("Triton at %s found (%s): checked before it takes calls", url, self.membership.source(url))
                self.on_added(url)
        for url in retire:
            if self.models.retire_endpoint(url):
                log.warning("Triton at %s is no longer listed: no new calls go there", url)
                self.on_retired(url)
        return add, retire


async def resolve_all(
    membership: Membership, resolve: Resolve, timeout_s: float, problems: dict[DnsName, str] | None = None
) -> None:
    """Resolve every name of `membership` once (together); a failure keeps that name's last addresses and is
    logged once per change (`problems` remembers what each name last found wrong)."""
    seen = problems if problems is not None else {}

    async def one(name: DnsName) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                addresses = list(await resolve(name.host, name.port))
            problem = "" if addresses else "no address"
        except (OSError, TimeoutError) as exc:  # socket.gaierror is an OSError
            addresses, problem = [], str(exc) or type(exc).__name__
        if problem and seen.get(name) != problem:
            log.warning("Triton discovery: %s did not resolve (%s); keeping its last servers", name, problem)
        seen[name] = problem
        membership.resolved(name, addresses)

    await asyncio.gather(*(one(n) for n in membership.names))


async def initial_endpoints(
    entries: Iterable[str], resolve: Resolve = resolve_addresses, timeout_s: float = 5.0
) -> tuple[Membership, tuple[str, ...]]:
    """The membership of the configured entries and the servers to start with (names resolved once).
    ModelUnavailable when that leaves none."""
    membership = Membership(entries)
    problems: dict[DnsName, str] = {}
    await resolve_all(membership, resolve, timeout_s, problems)
    wanted = membership.wanted()
    if not wanted:
        found = "; ".join(f"{n}: {problems.get(n) or 'no address'}" for n in membership.names)
        raise ModelUnavailable(f"no Triton server to call: {found}")
    return membership, wanted


__all__ = [
    "DNS_PREFIX",
    "DnsName",
    "EndpointDiscovery",
    "Membership",
    "Resolve",
    "address",
    "initial_endpoints",
    "parse_dns",
    "resolve_addresses",
    "resolve_all",
]
