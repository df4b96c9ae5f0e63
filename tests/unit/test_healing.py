"""The healer's state machine: dead-stub failures and lost stubs in, one reload per model out, with backoff."""

from __future__ import annotations

import random

from orchestrator.models.healing import (
    Healed,
    Healer,
    HealingPolicy,
    Reload,
    ReloadFailed,
    RestartServer,
    State,
    dead_stub_instance,
)

DEAD_LLM = "model 'llm' failed: Stub process 'llm_0_0' is not healthy."
FLOOR = {"floor": ("turn", "prosody", "floor_fusion")}


def reloads(actions: list[object]) -> list[str]:
    return [a.model for a in actions if isinstance(a, Reload)]


def test_reads_the_instance_from_tritons_message() -> None:
    assert dead_stub_instance(DEAD_LLM) == "llm_0_0"
    assert dead_stub_instance("in ensemble 'floor', Stub process 'turn_0_0' is not healthy.") == "turn_0_0"
    assert dead_stub_instance("model 'llm' failed: unexpected shape for input 'MESSAGES'") is None
    assert dead_stub_instance("") is None


def test_a_dead_stub_failure_reloads_that_model_once() -> None:
    h = Healer()
    assert reloads(h.failed("llm", DEAD_LLM, now=10.0)) == ["llm"]
    assert h.state("llm") is State.RELOADING
    assert not h.healthy("llm")
    # concurrent failures share the reload under way
    for t in (10.1, 10.2, 10.9):
        assert h.failed("llm", DEAD_LLM, now=t) == []
    assert h.reloaded("llm", now=10.5) == [Healed("llm", down_s=0.5, attempts=1)]
    assert h.healthy("llm")


def test_other_failures_start_nothing() -> None:
    h = Healer()
    assert h.failed("llm", "model 'llm' did not answer within 10s", now=1.0) == []
    assert h.failed("asr", "model 'asr' failed: audio is longer than 28 s", now=1.0) == []
    assert h.healthy("llm") and h.healthy("asr")


def test_models_heal_independently() -> None:
    h = Healer()
    assert reloads(h.failed("llm", DEAD_LLM, now=0.0)) == ["llm"]
    assert reloads(h.failed("tts", "Stub process 'tts_0_0' is not healthy.", now=0.1)) == ["tts"]
    h.reloaded("tts", now=0.3)
    assert h.healthy("tts") and not h.healthy("llm")
    assert h.unhealthy() == ["llm"]


def test_an_ensemble_failure_heals_the_member_named() -> None:
    h = Healer(FLOOR)
    msg = "model 'floor' failed: in ensemble 'floor', Stub process 'turn_0_0' is not healthy."
    assert reloads(h.failed("floor", msg, now=5.0)) == ["turn"]
    assert not h.healthy("floor")  # the ensemble waits for its member
    assert h.healthy("prosody")
    h.reloaded("turn", now=5.4)
    assert h.healthy("floor")


def test_an_unrecognised_instance_heals_the_model_or_all_members() -> None:
    h = Healer(FLOOR)
    assert reloads(h.failed("floor", "Stub process 'gpu_group' is not healthy.", now=0.0)) == [
        "turn",
        "prosody",
        "floor_fusion",
    ]
    h2 = Healer()
    assert reloads(h2.failed("llm", "Stub process 'custom' is not healthy.", now=0.0)) == ["llm"]
    # members unknown (Triton's configs could not be read): the instance's own model, not the ensemble
    h3 = Healer()
    assert reloads(h3.failed("floor", "in ensemble 'floor', Stub process 'turn_0_0' is not healthy.", 0.0)) == ["turn"]


def test_a_failed_reload_is_retried_with_doubling_backoff() -> None:
    h = Healer(policy=HealingPolicy(backoff_s=0.5, max_backoff_s=2.0))
    h.failed("llm", DEAD_LLM, now=0.0)
    assert h.reloaded("llm", now=1.0, error="load failed") == [ReloadFailed("llm", 1, "load failed", 1.5)]
    assert h.state("llm") is State.WAITING
    assert h.failed("llm", DEAD_LLM, now=1.2) == []  # waiting: failures do not hammer the server
    assert h.tick(1.4) == [] and h.next_due() == 1.5
    assert [(a.model, a.attempt) for a in h.tick(1.5) if isinstance(a, Reload)] == [("llm", 2)]
    assert h.next_due() is None
    retry_at = [a.retry_at for a in h.reloaded("llm", now=2.0, error="x") if isinstance(a, ReloadFailed)]
    assert retry_at == [3.0]  # 1.0 s after the second failure
    h.tick(3.0)
    assert [a.retry_at for a in h.reloaded("llm", now=3.0, error="x") if isinstance(a, ReloadFailed)] == [5.0]
    h.tick(5.0)
    assert [a.retry_at for a in h.reloaded("llm", now=5.0, error="x") if isinstance(a, ReloadFailed)] == [7.0]
    h.tick(7.0)
    assert h.reloaded("llm", now=7.2) == [Healed("llm", down_s=7.2, attempts=5)]


def test_a_reload_that_hangs_or_keeps_failing_asks_for_a_server_restart() -> None:
    h = Healer(policy=HealingPolicy(backoff_s=0.5, restart_after_failures=3))
    h.failed("asr", "Stub process 'asr_0_0' is not healthy.", now=0.0)
    hung = h.reloaded("asr", now=30.0, error="took over 30s", hung=True)
    assert [type(a) for a in hung] == [ReloadFailed, RestartServer]
    assert h.state("asr") is State.WAITING  # still retried: an external server cannot be restarted from here
    h2 = Healer(policy=HealingPolicy(backoff_s=0.5, restart_after_failures=3))
    h2.failed("llm", DEAD_LLM, now=0.0)
    kinds = []
    for t in (1.0, 3.0, 6.0):
        h2.tick(t)
        kinds.append([type(a) for a in h2.reloaded("llm", now=t, error="load failed")])
    assert kinds == [[ReloadFailed], [ReloadFailed], [ReloadFailed, RestartServer]]


def test_a_failure_of_a_request_sent_before_the_reload_starts_nothing() -> None:
    h = Healer()
    h.failed("llm", DEAD_LLM, now=1.0, sent=0.0)
    h.reloaded("llm", now=1.5)
    # its request went to the stub that died; the reloaded one is fine
    assert h.failed("llm", DEAD_LLM, now=1.6, sent=0.9) == []
    assert h.healthy("llm")
    # a request sent to the new stub that fails the same way is a new crash
    assert reloads(h.failed("llm", DEAD_LLM, now=9.0, sent=8.0)) == ["llm"]


def test_a_probe_that_finds_a_stub_gone_reloads_its_model() -> None:
    h = Healer()
    assert h.stubs({"llm": [101], "tts": [102]}, now=0.0) == []
    assert h.stubs({"llm": [101], "tts": [102]}, now=0.5) == []
    actions = h.stubs({"tts": [102]}, now=1.0)
    assert reloads(actions) == ["llm"]
    assert "101" in actions[0].reason  # type: ignore[union-attr]
    # while it reloads its stub is meant to be gone, and a request failing meanwhile shares the reload
    assert h.stubs({"tts": [102]}, now=1.2) == []
    assert h.failed("llm", DEAD_LLM, now=1.3) == []
    h.reloaded("llm", now=1.5)
    assert h.stubs({"llm": [201], "tts": [102]}, now=2.0) == []  # the new stub is learnt
    assert reloads(h.stubs({"tts": [102]}, now=2.5)) == ["llm"]  # and its death noticed in turn


def test_a_probe_taken_before_the_reload_finished_starts_nothing() -> None:
    h = Healer()
    h.stubs({"llm": [101]}, now=0.0)
    h.failed("llm", DEAD_LLM, now=1.0)
    h.reloaded("llm", now=1.5)
    assert h.stubs({"llm": [101]}, now=1.6) == []  # read before the reload: the old pid
    assert h.stubs({"llm": [201]}, now=2.0) == []  # a new pid in its place is a reload, not a death
    assert h.healthy("llm")
    assert reloads(h.stubs({}, now=2.2)) == ["llm"]  # 201 was seen and is gone: that one did die


def test_a_model_never_seen_by_the_probe_is_not_judged() -> None:
    h = Healer()
    assert h.stubs({}, now=0.0) == []
    assert h.stubs({"vad": [7]}, now=1.0) == []
    assert h.healthy("llm") and h.healthy("vad")


def test_one_of_several_instances_dying_reloads_the_model() -> None:
    h = Healer()
    h.stubs({"asr": [1, 2]}, now=0.0)
    assert reloads(h.stubs({"asr": [2]}, now=1.0)) == ["asr"]


def test_a_server_restart_forgets_everything() -> None:
    h = Healer()
    h.stubs({"llm": [1]}, now=0.0)
    h.failed("tts", "Stub process 'tts_0_0' is not healthy.", now=0.0)
    h.forget()
    assert h.healthy("tts")
    assert h.stubs({"llm": [9]}, now=1.0) == []


def test_random_observations_never_reload_a_model_twice_at_once() -> None:
    """Whatever arrives in whatever order, a model has at most one reload under way, and every Reload is
    answered by exactly one Healed or ReloadFailed."""
    rng = random.Random(7)
    models = ("llm", "tts", "asr", "turn")
    for _ in range(200):
        h = Healer({"floor": ("turn", "prosody")}, HealingPolicy(backoff_s=0.1, max_backoff_s=0.4))
        now = 0.0
        in_flight: set[str] = set()
        pids = {m: [rng.randrange(1000)] for m in models}
        for _ in range(200):
            now += rng.random() * 0.3
            kind = rng.random()
            if kind < 0.3:
                m = rng.choice((*models, "floor"))
                inst = rng.choice(models)
                actions = h.failed(m, f"Stub process '{inst}_0_0' is not healthy.", now, sent=now - rng.random())
            elif kind < 0.55:
                alive = {m: p for m, p in pids.items() if rng.random() > 0.1}
                actions = h.stubs(alive, now)
            elif kind < 0.85 and in_flight:
                m = rng.choice(sorted(in_flight))
                in_flight.discard(m)
                actions = h.reloaded(m, now, error=None if rng.random() < 0.7 else "no")
                pids[m] = [rng.randrange(1000)]
            else:
                actions = h.tick(now)
            for a in actions:
                if isinstance(a, Reload):
                    assert a.model not in in_flight, (a, in_flight)
                    in_flight.add(a.model)
                    assert h.state(a.model) is State.RELOADING
            for m in models:
                assert (h.state(m) is State.RELOADING) == (m in in_flight)
            waiting = [m for m in (*models, "prosody") if h.state(m) is State.WAITING]
            assert (h.next_due() is None) == (not waiting)


def test_a_model_that_answered_nobody_for_a_whole_timeout_is_reloaded_as_hung() -> None:
    h = Healer()
    h.answered("tts", now=1.0)
    actions = h.silent("tts", since=2.0, now=12.0)
    assert reloads(actions) == ["tts"]
    assert isinstance(actions[0], Reload) and actions[0].source == "silence"
    assert "answered nothing for 10 s" in actions[0].reason
    # the other requests that waited on it meanwhile share the reload
    assert h.silent("tts", since=2.5, now=12.5) == []
    h.reloaded("tts", now=13.0)
    assert h.healthy("tts")


def test_a_slow_model_that_answered_someone_meanwhile_is_not_taken_for_hung() -> None:
    h = Healer()
    h.answered("llm", now=5.0)  # another session's reply went on while this request waited
    assert h.silent("llm", since=2.0, now=12.0) == []
    assert h.healthy("llm")


def test_a_wait_begun_before_the_last_reload_says_nothing_about_the_new_stub() -> None:
    h = Healer()
    assert reloads(h.silent("tts", since=0.0, now=10.0)) == ["tts"]
    h.reloaded("tts", now=11.0)
    assert h.silent("tts", since=5.0, now=15.0) == []  # sent to the stub that hung, answered by none since
    assert reloads(h.silent("tts", since=11.5, now=21.5)) == ["tts"]  # the new one hangs too


def test_a_silent_ensemble_reloads_every_member() -> None:
    h = Healer(members=FLOOR)
    assert reloads(h.silent("floor", since=0.0, now=10.0)) == ["turn", "prosody", "floor_fusion"]
    assert not h.healthy("floor")
