"""The endpoint pool on virtual time: least outstanding requests, rotation out and back, session affinity; and
the settings and metrics that name and show the endpoints."""

from __future__ import annotations

import random
from typing import Any

import pytest

from orchestrator.config import load_settings
from orchestrator.errors import BadOption
from orchestrator.models.endpoints import Dropped, EndpointPool, PoolPolicy, Restored, affinity_key

A, B, C = "a:8001", "b:8001", "c:8001"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def pool(*urls: str, **policy: Any) -> tuple[EndpointPool, Clock]:
    clock = Clock()
    return EndpointPool(urls or (A, B), PoolPolicy(**policy), clock), clock


def test_each_call_goes_to_the_least_outstanding_endpoint() -> None:
    p, _ = pool(A, B, C)
    p.begin(A)
    p.begin(A)
    p.begin(B)
    assert p.choose() == C
    p.begin(C)
    assert p.choose() == B  # A 2, B 1, C 1: B's turn among the ties
    p.end(A)
    p.end(A)
    assert p.choose() == A
    p.end(C)
    p.end(C)  # more ends than begins never go below zero
    assert p.outstanding(C) == 0


def test_idle_endpoints_take_calls_in_turn() -> None:
    p, _ = pool(A, B, C)
    assert [p.choose() for _ in range(6)] == [A, B, C, A, B, C]


def test_concurrent_calls_spread_evenly() -> None:
    p, _ = pool(A, B)
    for _ in range(10):
        url = p.choose()
        assert url is not None
        p.begin(url)
    assert p.outstanding(A) == p.outstanding(B) == 5


def test_a_transport_failure_drops_the_endpoint_at_once() -> None:
    p, clock = pool(A, B)
    sent = p.begin(A)
    clock.t += 0.5
    p.end(A)
    assert p.failed(A, sent, "connection refused", retried=True) == Dropped(A, "a call failed: connection refused")
    assert not p.up(A) and p.in_rotation() == [B]
    assert {p.choose() for _ in range(5)} == {B}
    assert p.failed(A, sent, "again") is None  # already out
    (a,) = [s for s in p.states() if s.url == A]
    assert (a.up, a.drops, a.retries, a.calls) == (False, 1, 1, 1)


def test_a_ready_check_takes_an_endpoint_back() -> None:
    p, clock = pool(A, B)
    p.failed(A, p.now(), "refused")
    clock.t += 2.5
    assert p.checked(A, ready=False, reason="refused") is None  # still out
    clock.t += 1.0
    assert p.checked(A, ready=True) == Restored(A, 3.5, "its health check says ready")
    assert p.up(A)
    assert p.checked(A, ready=True) is None


def test_failed_checks_drop_after_a_run_unless_the_connection_was_refused() -> None:
    p, _ = pool(A, B, failed_checks_to_drop=2)
    assert p.checked(A, ready=False, reason="no answer within 2s") is None  # one slow check: stays
    assert p.checked(A, ready=True) is None  # the run is broken
    assert p.checked(A, ready=False) is None
    dropped = p.checked(A, ready=False, reason="not ready")
    assert isinstance(dropped, Dropped) and "2 health checks failed: not ready" in dropped.reason
    assert isinstance(p.checked(B, ready=False, reason="refused", at_once=True), Dropped)


def test_stale_news_is_ignored() -> None:
    p, clock = pool(A, B)
    old = p.begin(A)  # sent before A went down and came back
    clock.t += 1
    p.failed(A, p.now(), "refused")
    clock.t += 1
    assert p.succeeded(A, old) is None  # answered by the server that went down: says nothing now
    assert not p.up(A)
    p.checked(A, ready=True)
    clock.t += 1
    assert p.failed(A, old, "socket closed") is None  # a call to the old server failing: not the new one
    assert p.up(A)


def test_with_every_endpoint_down_a_call_is_still_tried_and_its_answer_takes_it_back() -> None:
    p, clock = pool(A)
    p.failed(A, p.now(), "refused")
    assert p.choose() == A  # one Triton: tried, not refused, as with a single channel
    clock.t += 1
    sent = p.begin(A)
    assert p.succeeded(A, sent) == Restored(A, 1.0, "a call was answered")
    assert p.up(A)

    p, _ = pool(A, B)
    p.begin(B)
    p.failed(A, p.now(), "refused")
    p.failed(B, p.now(), "refused")
    assert p.choose() == A  # all down: the least loaded of all
    assert p.choose(exclude={A, B}) is None


def test_among_exclude_and_prefer() -> None:
    p, _ = pool(A, B, C)
    assert p.choose(among={B}) == B
    assert {p.choose(exclude={A}) for _ in range(4)} == {B, C}
    p.begin(C)
    assert p.choose(prefer={C}) == C  # where the model is healthy, though busier
    assert p.choose(prefer=set()) in (A, B)  # none preferred: any
    p.failed(C, p.now(), "refused")
    assert p.choose(prefer={C}) in (A, B)  # in rotation first


def test_a_session_keeps_to_its_endpoint_while_it_is_in_rotation() -> None:
    p, clock = pool(A, B)
    first = p.choose(affinity="session-1")
    assert first is not None
    other = B if first == A else A
    for _ in range(3):
        p.begin(first)  # busier than the other: it still goes back (its KV cache is there)
    assert p.choose(affinity="session-1") == first
    assert p.choose() == other  # calls without affinity go by load
    p.failed(first, p.now(), "refused")
    assert p.choose(affinity="session-1") == other  # moved
    clock.t += 1
    p.checked(first, ready=True)
    assert p.choose(affinity="session-1") == other  # and stays where its cache is now
    assert p.pinned("session-1") == other


def test_affinities_are_bounded() -> None:
    p, _ = pool(A, B, max_affinities=3)
    for i in range(5):
        p.choose(affinity=f"s{i}")
    assert [p.pinned(f"s{i}") is None for i in range(5)] == [True, True, False, False, False]


def test_health_checks_fall_due_every_interval() -> None:
    p, clock = pool(A, B, check_interval_s=1.0)
    assert p.due() == [A, B]  # never checked
    p.checked(A, ready=True)
    clock.t += 0.4
    p.checked(B, ready=True)
    assert p.due() == []
    assert p.next_due() == pytest.approx(101.0)
    clock.t += 0.6
    assert p.due() == [A]


def test_affinity_key_is_the_session_part_of_a_request_id() -> None:
    assert affinity_key("session-ab12-3") == "session-ab12"
    assert affinity_key("session-ab12-warm") == "session-ab12"
    assert affinity_key("") == ""
    assert affinity_key("judge") == "judge"


def test_randomised_the_rotation_and_counts_stay_consistent() -> None:
    rng = random.Random(7)
    p, clock = pool(A, B, C)
    open_calls: list[tuple[str, float]] = []
    for _ in range(5000):
        clock.t += rng.random() * 0.1
        r = rng.random()
        if r < 0.4:
            exclude = rng.choice([(), (A,)])
            url = p.choose(affinity=rng.choice(["", "s1", "s2"]), exclude=exclude)
            assert url is not None and url not in exclude
            assert p.up(url) or not [u for u in p.in_rotation() if u not in exclude]  # out only when all are
            open_calls.append((url, p.begin(url)))
        elif r < 0.7 and open_calls:
            url, sent = open_calls.pop(rng.randrange(len(open_calls)))
            p.end(url)
            if rng.random() < 0.1:
                p.failed(url, sent, "refused")
            else:
                p.succeeded(url, sent)
        else:
            p.checked(rng.choice([A, B, C]), ready=rng.random() < 0.7, at_once=rng.random() < 0.2)
        for u in (A, B, C):
            assert p.outstanding(u) == sum(1 for v, _ in open_calls if v == u)
        if p.in_rotation():
            assert p.choose() in p.in_rotation()


# ---- the set changing: endpoints added and retired --------------------------------------------------------------


def test_an_added_endpoint_takes_no_call_before_its_first_ready_check() -> None:
    p, clock = pool(A, B)
    for _ in range(2):
        p.checked(A, True)
        p.checked(B, True)
    assert p.add(C) and not p.add(C)  # (once)
    assert not p.up(C) and C not in p.in_rotation()
    assert p.due() == [C]  # its check is due at once, the others' not yet
    assert {p.choose() for _ in range(6)} == {A, B}
    clock.t += 0.3
    restored = p.checked(C, False, "not ready")
    assert restored is None and not p.up(C)  # not ready: still out
    restored = p.checked(C, True)
    assert isinstance(restored, Restored) and restored.first and restored.url == C
    assert C in {p.choose() for _ in range(6)}
    p.failed(C, p.now(), "refused")
    clock.t += 1
    back = p.checked(C, True)
    assert isinstance(back, Restored) and not back.first  # coming back later is not a first time


def test_a_retired_endpoint_takes_no_new_call_and_is_forgotten_once_its_calls_end() -> None:
    p, clock = pool(A, B)
    p.checked(B, True)  # at 100 s; A never checked
    assert p.choose(affinity="session-2") == A
    sent = p.begin(A)
    p.begin(A)
    assert p.pinned("session-2") == A
    assert p.retire(A) and not p.retire(A) and not p.retire(C)
    assert p.urls == (B,) and p.in_rotation() == [B] and [s.url for s in p.states()] == [B]
    assert {p.choose() for _ in range(4)} == {B}
    assert p.choose(affinity="session-2") == B  # its pin to A is gone with A
    assert A not in p.due()
    clock.t += 5
    assert p.due() == [B] and p.next_due() == 101.0  # B's next check, not A's (never checked)
    # news about it changes nothing now
    assert p.failed(A, sent, "refused") is None and p.succeeded(A, sent) is None and p.checked(A, True) is None
    p.end(A)
    assert p.drained() == []  # one call still runs there
    p.end(A)
    assert p.drained() == [A] and p.drained() == []
    p.end(A)  # a late end of a forgotten endpoint is ignored
    p.begin(A)  # ... and so is a call sent as it was forgotten
    assert p.urls == (B,)


def test_the_last_endpoint_is_never_retired() -> None:
    p, _ = pool(A, B)
    p.retire(A)
    with pytest.raises(ValueError, match="last Triton endpoint"):
        p.retire(B)
    assert p.urls == (B,) and p.choose() == B


def test_an_endpoint_retired_then_added_again_keeps_its_calls_and_is_checked_again() -> None:
    p, _ = pool(A, B)
    p.begin(A)
    p.retire(A)
    assert p.add(A)
    assert p.outstanding(A) == 1 and not p.up(A) and A in p.due()
    assert p.drained() == []
    assert isinstance(p.checked(A, True), Restored)
    assert p.urls == (B, A)


# ---- settings and metrics -------------------------------------------------------------------------------------


def test_one_url_still_works_and_several_are_a_list() -> None:
    assert load_settings(env={}).triton.endpoints() == ()
    assert load_settings(env={"DUET_TRITON__URL": "h:8001"}).triton.endpoints() == ("h:8001",)
    s = load_settings(env={"DUET_TRITON__URLS": "a:8001, b:8001,a:8001"})
    assert s.triton.urls == ("a:8001", "b:8001", "a:8001")
    assert s.triton.endpoints() == ("a:8001", "b:8001")
    both = load_settings(env={"DUET_TRITON__URL": "c:8001", "DUET_TRITON__URLS": "a:8001,b:8001"})
    assert both.triton.endpoints() == ("c:8001", "a:8001", "b:8001")


def test_an_http_url_or_a_silly_interval_is_refused() -> None:
    with pytest.raises(BadOption, match="gRPC"):
        load_settings(env={"DUET_TRITON__URLS": "a:8001,http://b:8000"})
    with pytest.raises(BadOption, match="health_interval_s"):
        load_settings(env={"DUET_TRITON__HEALTH_INTERVAL_S": "0"})


def test_the_endpoints_are_in_the_metrics() -> None:
    from prometheus_client import generate_latest

    from orchestrator.telemetry import Telemetry, metrics_by_key

    p, _ = pool(A, B)
    p.begin(A)
    p.begin(B)
    p.failed(B, p.now(), "refused", retried=True)
    t = Telemetry()
    t.watch_endpoints(p.states)
    m = metrics_by_key(generate_latest(t.registry).decode())
    assert m[f"duet_triton_endpoint_up{{endpoint={A}}}"] == 1.0
    assert m[f"duet_triton_endpoint_up{{endpoint={B}}}"] == 0.0
    assert m[f"duet_triton_endpoint_outstanding{{endpoint={A}}}"] == 1.0
    assert m[f"duet_triton_endpoint_calls_total{{endpoint={A}}}"] == 1.0
    assert m[f"duet_triton_endpoint_drops_total{{endpoint={B}}}"] == 1.0
    assert m[f"duet_triton_endpoint_retries_total{{endpoint={B}}}"] == 1.0
