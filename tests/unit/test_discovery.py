"""Triton servers found by DNS (`orchestrator.models.discovery`): reading `dns:///NAME:PORT`, what the set should
hold as answers change or fail, and the changes applied to `TritonModels` with each server's healer told. The
resolver is a stand-in (DNS is the outside system here), except in the one test that asks the system resolver
for `localhost`. (tests/integration/test_endpoints.py runs it against real tritonservers.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from orchestrator.config import load_settings
from orchestrator.errors import BadOption, ModelUnavailable
from orchestrator.models.discovery import (
    DnsName,
    EndpointDiscovery,
    Membership,
    address,
    initial_endpoints,
    parse_dns,
    resolve_addresses,
    resolve_all,
)
from orchestrator.models.triton import TritonModels

NAME = "dns:///triton-pods.duet.svc.cluster.local:8001"


class Dns:
    """A scripted resolver: name -> addresses, or an error to raise."""

    def __init__(self, answers: dict[str, list[str] | OSError]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        answer = self.answers[host]
        if isinstance(answer, OSError):
            raise answer
        return [address(ip, port) for ip in answer]


def test_a_dns_entry_is_read_and_a_malformed_one_refused() -> None:
    assert parse_dns("triton:8001") is None
    assert parse_dns(NAME) == DnsName("triton-pods.duet.svc.cluster.local", 8001)
    assert str(parse_dns(NAME)) == NAME
    for bad in ("dns:triton:8001", "dns://10.0.0.10/triton:8001", "dns:///triton", "dns:///:8001", "dns:///t:0"):
        with pytest.raises(BadOption, match="dns:///NAME:PORT"):
            parse_dns(bad)
    assert load_settings(env={"DUET_TRITON__URL": NAME}).triton.endpoints() == (NAME,)
    with pytest.raises(BadOption, match="dns:///NAME:PORT"):
        load_settings(env={"DUET_TRITON__URLS": "a:8001,dns:///triton"})
    with pytest.raises(BadOption, match="discovery_interval_s"):
        load_settings(env={"DUET_TRITON__DISCOVERY_INTERVAL_S": "0"})


def test_addresses_are_grpc_host_port() -> None:
    assert address("10.1.2.3", 8001) == "10.1.2.3:8001"
    assert address("fd00::1", 8001) == "[fd00::1]:8001"


def test_the_set_is_the_fixed_entries_and_each_names_last_answer() -> None:
    m = Membership(["fixed:8001", NAME, NAME])
    name = parse_dns(NAME)
    assert name is not None and m.names == [name] and m.fixed == ["fixed:8001"] and m.dynamic
    assert not Membership(["a:8001"]).dynamic
    assert m.wanted() == ("fixed:8001",)
    assert m.resolved(name, ["10.0.0.1:8001", "10.0.0.2:8001"])
    assert not m.resolved(name, ["10.0.0.1:8001", "10.0.0.2:8001"])  # the same answer: no change
    assert m.wanted() == ("fixed:8001", "10.0.0.1:8001", "10.0.0.2:8001")
    assert m.source("10.0.0.2:8001") == NAME and m.source("fixed:8001") == "fixed"
    assert not m.resolved(name, [])  # an empty answer keeps the last one
    assert m.wanted() == ("fixed:8001", "10.0.0.1:8001", "10.0.0.2:8001")
    m.resolved(name, ["10.0.0.2:8001", "10.0.0.3:8001"])
    assert m.changes(["fixed:8001", "10.0.0.1:8001", "10.0.0.2:8001"]) == (["10.0.0.3:8001"], ["10.0.0.1:8001"])


def test_nothing_is_retired_while_nothing_is_wanted() -> None:
    m = Membership([NAME])
    assert m.changes(["10.0.0.1:8001"]) == ([], [])


async def test_a_failed_resolution_keeps_the_last_servers_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    m = Membership([NAME])
    host = "triton-pods.duet.svc.cluster.local"
    dns = Dns({host: ["10.0.0.1"]})
    await resolve_all(m, dns, 1.0)
    assert m.wanted() == ("10.0.0.1:8001",)
    dns.answers[host] = OSError(-2, "Name or service not known")
    problems: dict[DnsName, str] = {}
    with caplog.at_level(logging.WARNING, logger="duet.triton"):
        for _ in range(3):
            await resolve_all(m, dns, 1.0, problems)
    assert m.wanted() == ("10.0.0.1:8001",)
    said = [r.getMessage() for r in caplog.records if "did not resolve" in r.getMessage()]
    assert len(said) == 1 and "Name or service not known" in said[0] and "keeping its last servers" in said[0]


async def test_a_resolver_that_hangs_times_out() -> None:
    async def hang(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(30)
        return []

    with pytest.raises(ModelUnavailable, match=r"no Triton server to call: dns:///triton:8001: TimeoutError"):
        await asyncio.wait_for(initial_endpoints(["dns:///triton:8001"], hang, timeout_s=0.05), 5)


async def test_no_server_at_start_is_a_clear_error() -> None:
    dns = Dns({"triton": OSError(-2, "Name or service not known")})
    with pytest.raises(ModelUnavailable, match=r"dns:///triton:8001: .*Name or service not known"):
        await initial_endpoints(["dns:///triton:8001"], dns)
    membership, urls = await initial_endpoints(["b:8001", "dns:///triton:8001"], dns)
    assert urls == ("b:8001",) and membership.dynamic  # a fixed server to start with; the name tried again later


async def test_the_system_resolver_answers_for_localhost() -> None:
    assert "127.0.0.1:8001" in await resolve_addresses("localhost", 8001)


async def test_changes_reach_the_client_and_each_server_is_announced_once() -> None:
    host = "triton-pods.duet.svc.cluster.local"
    dns = Dns({host: ["10.0.0.1", "10.0.0.2"]})
    membership, urls = await initial_endpoints([NAME], dns)
    models = TritonModels(urls)
    added: list[str] = []
    retired: list[str] = []
    discovery = EndpointDiscovery(
        models, membership, interval_s=0.01, resolve=dns, on_added=added.append, on_retired=retired.append
    )
    try:
        assert models.urls == ("10.0.0.1:8001", "10.0.0.2:8001")
        dns.answers[host] = ["10.0.0.2", "10.0.0.3"]  # a pod replaced
        task = asyncio.create_task(discovery.run())
        await asyncio.sleep(0.1)
        assert models.urls == ("10.0.0.2:8001", "10.0.0.3:8001")
        assert added == ["10.0.0.3:8001"] and retired == ["10.0.0.1:8001"]
        assert not models.pool.up("10.0.0.3:8001")  # not before its first ready check
        dns.answers[host] = OSError(-3, "Temporary failure in name resolution")  # DNS down: the set stays
        await asyncio.sleep(0.05)
        assert models.urls == ("10.0.0.2:8001", "10.0.0.3:8001") and len(added) == len(retired) == 1
        dns.answers[host] = ["10.0.0.3"]  # scaled in
        await asyncio.sleep(0.05)
        assert models.urls == ("10.0.0.3:8001",) and retired == ["10.0.0.1:8001", "10.0.0.2:8001"]
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await models.close()


async def test_each_server_has_its_healer_task_and_a_gone_ones_counts_stay() -> None:
    from orchestrator.app import HealerTasks
    from orchestrator.models.triton import ModelHealer

    models = TritonModels(["a:8001", "b:8001"])
    healers = HealerTasks(ModelHealer)
    try:
        for u in models.urls:
            healers.add(models.at(u))
        assert not any(t.get_name().startswith("model-healer") for t in asyncio.all_tasks())  # not before start
        healers.start()
        models.add_endpoint("c:8001")
        healers.add(models.at("c:8001"))  # after start: runs at once
        await asyncio.sleep(0)
        names = sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("model-healer"))
        assert names == ["model-healer-a:8001", "model-healer-b:8001", "model-healer-c:8001"]
        (a,) = [h for h in healers.all() if h.models.url == "a:8001"]
        a.counts[("reload", "vad")] += 2
        models.retire_endpoint("a:8001")
        healers.remove("a:8001")
        assert [h.models.url for h in healers.all()] == ["b:8001", "c:8001"]
        for _ in range(100):
            if "model-healer-a:8001" not in {t.get_name() for t in asyncio.all_tasks()}:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the gone server's healer task still runs")
        assert healers.counts()[("reload", "vad")] == 2  # a counter never goes back
    finally:
        await healers.close()
        await models.close()
    assert not any(t.get_name().startswith("model-healer") for t in asyncio.all_tasks())
