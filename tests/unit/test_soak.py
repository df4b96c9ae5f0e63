"""The pure parts of the soak (perf/soak.py): the loop-lag quantile from histogram deltas, the per-minute
windows, the process tree, and the memory, leak and drift verdicts on synthetic series, including the series
that must fail them; and the orchestrator's `duet_asyncio_tasks` gauge it reads."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from orchestrator.telemetry import Telemetry, metrics_by_key
from perf.soak import (
    Probe,
    TurnResult,
    descendants,
    drift_verdict,
    growth_verdict,
    histogram_quantile,
    lag_buckets,
    leak_verdict,
    memory_verdict,
    rss_kb,
    thirds,
    turn_results,
    verdicts,
    window_rows,
)


def _probe(
    t: float, *, rss: int = 100_000, tasks: int = 20, fds: int = 30, lag: dict[str, float] | None = None
) -> Probe:
    return Probe(t, rss, 4 * rss, 12, fds, tasks, 1, lag or {}, 1.0)


def _rows(rss: list[int], latencies: list[list[float | None]] | None = None) -> list[dict[str, Any]]:
    """Full windows with the given orchestrator RSS and per-window turn latencies."""
    latencies = latencies or [[1.0]] * len(rss)
    return [
        {"window": i + 1, "full": True, "orchestrator_rss_kb": r, "latencies_s": lat}
        for i, (r, lat) in enumerate(zip(rss, latencies, strict=True))
    ]


# ------------------------------------------------------------------------------------------ loop-lag quantile
def test_the_quantile_interpolates_inside_the_bucket_of_the_delta() -> None:
    before = {"0.01": 10.0, "0.1": 10.0, "1.0": 10.0, "+Inf": 10.0}
    # 100 new observations: 90 under 10 ms, 10 between 10 and 100 ms
    after = {"0.01": 100.0, "0.1": 110.0, "1.0": 110.0, "+Inf": 110.0}
    assert histogram_quantile(0.95, before, after) == pytest.approx(0.01 + 0.09 * 5 / 10)
    assert histogram_quantile(0.5, before, after) == pytest.approx(0.01 * 50 / 90)


def test_old_observations_do_not_count_in_a_window() -> None:
    """A slow start (lag in the first window) is not seen again in a later quiet window."""
    before = {"0.01": 0.0, "1.0": 50.0, "+Inf": 50.0}  # 50 slow ticks, all before the window
    after = {"0.01": 40.0, "1.0": 90.0, "+Inf": 90.0}
    assert histogram_quantile(0.95, before, after) == pytest.approx(0.01 * 38 / 40)


def test_the_quantile_in_the_inf_bucket_is_the_largest_bound_and_none_without_observations() -> None:
    after = {"0.01": 0.0, "1.0": 0.0, "+Inf": 5.0}
    assert histogram_quantile(0.95, {}, after) == 1.0
    assert histogram_quantile(0.95, after, after) is None
    assert histogram_quantile(0.95, {}, {}) is None


def test_lag_buckets_come_from_the_orchestrator_metrics() -> None:
    t = Telemetry()
    t.loop_lag.observe(0.003)
    t.loop_lag.observe(0.3)
    from prometheus_client import generate_latest

    buckets = lag_buckets(metrics_by_key(generate_latest(t.registry).decode()))
    assert buckets["0.001"] == 0 and buckets["0.005"] == 1 and buckets["0.5"] == 2 and buckets["+Inf"] == 2
    assert histogram_quantile(0.5, {}, buckets) == pytest.approx(0.005)


def test_the_loop_watcher_counts_the_loops_tasks() -> None:
    async def scenario() -> tuple[float, float]:
        t = Telemetry()
        watcher = asyncio.create_task(t.watch_loop(period_s=0.01), name="watch")
        await asyncio.sleep(0.05)
        idle = t.asyncio_tasks._value.get()
        extra = [asyncio.create_task(asyncio.sleep(10), name=f"extra-{i}") for i in range(5)]
        await asyncio.sleep(0.05)
        busy = t.asyncio_tasks._value.get()
        for task in [*extra, watcher]:
            task.cancel()
        await asyncio.gather(*extra, watcher, return_exceptions=True)
        return idle, busy

    idle, busy = asyncio.run(scenario())
    assert idle == 2  # the test's main task and the watcher
    assert busy == idle + 5


# ---------------------------------------------------------------------------------------------- windows
def test_windows_split_turns_probes_and_sessions_by_minute() -> None:
    lag0 = {"0.01": 0.0, "0.1": 0.0, "+Inf": 0.0}
    lag1 = {"0.01": 100.0, "0.1": 100.0, "+Inf": 100.0}  # quiet first minute
    lag2 = {"0.01": 100.0, "0.1": 200.0, "+Inf": 200.0}  # second minute: every tick 10-100 ms late
    probes = [
        _probe(0, rss=100, lag=lag0),
        _probe(30, rss=110, lag=lag1),
        _probe(59, rss=120, lag=lag1, tasks=25),
        _probe(60, rss=200, lag=lag1),
        _probe(119, rss=210, lag=lag2, tasks=21, fds=33),
        _probe(130, rss=220, lag=lag2),
    ]
    turns = [TurnResult(10, 1.0), TurnResult(50, 2.0), TurnResult(70, None), TurnResult(125, 3.0)]
    rows = window_rows(probes, turns, [0.0, 40.0, 100.0], 60.0, 130.0)
    assert [r["full"] for r in rows] == [True, True, False]
    assert [r["orchestrator_rss_kb"] for r in rows] == [110, 205, 220]  # the median of each window's probes
    assert [r["sessions_started"] for r in rows] == [2, 1, 0]
    assert [(r["turns"], r["answered"], r["unanswered"]) for r in rows] == [(2, 2, 0), (1, 0, 1), (1, 1, 0)]
    # percentiles as session_load takes them (numpy's "higher": always a latency that was measured)
    assert rows[0]["response_p50_s"] == 2.0 and rows[0]["response_p95_s"] == 2.0
    assert rows[2]["response_p50_s"] == 3.0
    assert rows[1]["response_p50_s"] is None and rows[1]["latencies_s"] == [None]
    assert (rows[0]["tasks"], rows[1]["tasks"], rows[1]["fds"]) == (25, 21, 33)
    assert rows[0]["loop_lag_p95_s"] is not None and rows[0]["loop_lag_p95_s"] <= 0.01
    assert rows[1]["loop_lag_p95_s"] is not None and 0.01 < rows[1]["loop_lag_p95_s"] <= 0.1
    assert rows[2]["to_s"] == 130.0


def test_a_run_that_ends_on_a_window_edge_has_no_partial_window() -> None:
    rows = window_rows([_probe(0), _probe(60), _probe(120)], [], [0.0], 60.0, 120.0)
    assert [r["full"] for r in rows] == [True, True]
    with pytest.raises(ValueError):
        window_rows([], [], [], 0.0, 10.0)


def test_turns_land_on_the_soak_clock_and_a_failed_session_loses_every_turn() -> None:
    label = {"turns": [{"start": 1.0, "end": 2.0}, {"start": 5.0, "end": 6.0}]}
    events = [{"type": "replica_speaking_start", "t": 2.5}, {"type": "replica_speaking_start", "t": 7.25}]
    assert turn_results(100.0, label, events, False) == [TurnResult(102.0, 0.5, {}, 0), TurnResult(106.0, 1.25, {}, 1)]
    assert turn_results(100.0, label, events, True) == [TurnResult(102.0, None, {}, 0), TurnResult(106.0, None, {}, 1)]


def test_each_answered_turn_keeps_the_split_of_the_reply_that_answered_it() -> None:
    label = {"turns": [{"start": 1.0, "end": 2.0}, {"start": 5.0, "end": 6.0}]}
    split = {"asr_final_ms": 120.0, "llm_first_token_ms": 400.0, "floor_ms": None, "from_speculation": True}
    events = [{"type": "replica_speaking_start", "t": 2.5, "latency": split}]  # the second turn: no reply
    got = turn_results(0.0, label, events, False)
    assert got[0].stages_ms == {"asr_final_ms": 120.0, "llm_first_token_ms": 400.0}
    assert got[1] == TurnResult(6.0, None, {}, 1)


def test_the_triton_tree_is_every_descendant() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 11, 13: 11, 20: 1, 21: 20}
    assert descendants(10, parents) == [11, 12, 13]
    assert descendants(13, parents) == []
    assert descendants(1, parents) == [10, 11, 12, 13, 20, 21]


# ---------------------------------------------------------------------------------------------- verdicts
def test_flat_memory_passes_and_growth_of_5_percent_or_more_fails() -> None:
    assert growth_verdict(_rows([1000, 1010, 990, 1040]), "orchestrator_rss_kb")["ok"] is True
    grew = growth_verdict(_rows([1000, 1010, 1030, 1050]), "orchestrator_rss_kb")
    assert grew["ok"] is False and grew["growth"] == 0.05 and "+5.0%" in grew["why"]
    # a leak that is slow per minute still fails over the run
    slow = growth_verdict(_rows([1000 + 6 * i for i in range(10)]), "orchestrator_rss_kb")
    assert slow["ok"] is False


def test_a_working_set_filled_early_passes_and_growth_after_it_fails_at_its_rate_over_the_run() -> None:
    # +13 % in the first minutes (the LLM's contexts, onnxruntime's arenas), then flat: the 30-minute soak's shape
    plateau = [2000 + min(i, 9) * 30 for i in range(30)]
    v = growth_verdict(_rows(plateau), "orchestrator_rss_kb")
    assert v["ok"] is True and v["base_window"] == 10 and v["growth"] == 0.0 and v["from_start"] == 0.135
    assert "from window 1" in v["why"]
    # flat for ten windows, then growth: +3 % over the last twenty windows is +4.35 % at that rate over 29 (passes)
    late = [2270] * 10 + [2270 + round(68.1 * i / 20) for i in range(1, 21)]
    slow = growth_verdict(_rows(late), "orchestrator_rss_kb")
    assert slow["ok"] is True and slow["growth"] == pytest.approx(0.0435, abs=1e-3)
    faster = [2270] * 10 + [2270 + round(80 * i / 20) for i in range(1, 21)]  # +3.5 %: +5.1 % over the run
    assert growth_verdict(_rows(faster), "orchestrator_rss_kb")["ok"] is False


def test_memory_compares_full_windows_only_and_needs_two() -> None:
    rows = _rows([1000, 1010, 1020])
    rows.append({"window": 4, "full": False, "orchestrator_rss_kb": 5000, "latencies_s": []})
    v = growth_verdict(rows, "orchestrator_rss_kb")
    assert v["ok"] is True and v["last_window"] == 3
    assert growth_verdict(_rows([1000]), "orchestrator_rss_kb")["ok"] is None
    assert growth_verdict(_rows([1000, 2000]), "triton_rss_kb")["ok"] is None  # never measured


def test_tasks_or_fds_above_their_idle_count_are_a_leak() -> None:
    assert leak_verdict(40, 40)["ok"] is True
    assert leak_verdict(40, 38)["ok"] is True
    leaked = leak_verdict(40, 43)
    assert leaked["ok"] is False and "(+3)" in leaked["why"]
    assert leak_verdict(40, 41, tolerance=1)["ok"] is True
    assert leak_verdict(None, 41)["ok"] is None


def test_thirds_need_three_full_windows() -> None:
    assert thirds(_rows([1, 1])) == ([], [])
    first, last = thirds(_rows([1] * 10))
    assert [r["window"] for r in first] == [1, 2, 3] and [r["window"] for r in last] == [8, 9, 10]


def test_steady_latency_passes_and_a_drift_is_named() -> None:
    steady = _rows([1] * 6, [[1.0, 1.2], [1.1], [1.0], [1.2], [1.0, 1.1], [1.05]])
    assert drift_verdict(steady)["ok"] is True
    slower = drift_verdict(_rows([1] * 6, [[1.0], [1.0], [1.1], [1.2], [1.3], [1.4]]))
    assert slower["ok"] is False and "slower" in slower["why"] and "+40%" in slower["why"]  # 1.0 -> 1.4
    faster = drift_verdict(_rows([1] * 3, [[2.0], [1.8], [1.0]]))
    assert faster["ok"] is False and "faster" in faster["why"]


def test_a_drift_names_the_stage_that_moved_most_first() -> None:
    rows = _rows([1] * 3, [[1.0], [1.2], [2.0]])
    for r, llm, asr in zip(rows, (300.0, 350.0, 1300.0), (200.0, 210.0, 240.0), strict=True):
        r["stages_ms"] = [{"llm_first_token_ms": llm, "asr_final_ms": asr}]
    v = drift_verdict(rows)
    assert v["ok"] is False and list(v["stages_p50_ms"]) == ["llm_first_token_ms", "asr_final_ms"]
    assert "stage p50 (ms): llm_first_token 300 -> 1300, asr_final 200 -> 240" in v["why"]


def test_unanswered_turns_fail_the_drift_verdict_even_at_the_same_p50() -> None:
    v = drift_verdict(_rows([1] * 3, [[1.0], [1.0], [1.0, None]]))
    assert v["ok"] is False and "unanswered turns 0 -> 1" in v["why"]
    nothing = drift_verdict(_rows([1] * 3, [[1.0], [1.0], [None]]))
    assert nothing["ok"] is False and "no answered turn in the last third" in nothing["why"]
    assert drift_verdict(_rows([1, 1]))["ok"] is None


def test_the_verdicts_of_a_clean_run_and_of_a_leaking_one() -> None:
    idle = {"tasks": 30, "fds": 40}
    clean = verdicts(_rows([1000, 1001, 1002]), idle, {"tasks": 30, "fds": 40})
    assert clean["orchestrator_memory"]["ok"] and clean["tasks"]["ok"] and clean["fds"]["ok"]
    assert clean["latency_drift"]["ok"] and clean["triton_memory"]["ok"] is None
    leaking = verdicts(_rows([1000, 1001, 1002]), idle, {"tasks": 31, "fds": 44})
    assert leaking["tasks"]["ok"] is False and leaking["fds"]["ok"] is False
    assert not math.isnan(leaking["orchestrator_memory"]["growth"])


def test_the_report_prints_every_window_and_names_a_failed_verdict(tmp_path: Any, capsys: Any) -> None:
    import json

    from perf.soak import main

    probes = [_probe(t, rss=100_000 + 300 * t) for t in range(0, 181, 5)]  # +54 % over three minutes
    turns = [TurnResult(30.0 + 60 * k, 1.0 + k) for k in range(3)]
    rows = window_rows(probes, turns, [0.0, 60.0, 120.0], 60.0, 180.0)
    idle = {"tasks": 20, "fds": 30}
    after = {"tasks": 20, "fds": 30, "sessions_open": 0}
    result = {
        **{"date": "2026-12-06 11:00 UTC", "cpus": 2, "machine": "x86_64, Linux", "minutes": 3, "sessions": 1},
        **{"file": "dev/001", "mix": "audio", "sessions_run": 3, "failures": []},
        **{"windows": rows, "idle": idle, "after": after, "verdicts": verdicts(rows, idle, after)},
    }
    path = tmp_path / "soak.json"
    path.write_text(json.dumps(result))
    assert main(["--report", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| ") == 4  # the header and three windows
    assert "orchestrator memory growth < 5 %: FAIL" in out and "asyncio tasks back to idle: PASS" in out
    assert "latency drift (p50 of each labelled turn, last third vs first) within 20 %: FAIL" in out
    assert "slower" in out


def test_each_labelled_turn_is_compared_with_itself() -> None:
    """One recording repeated: turn 0 is slow every time (2.2 s), turns 1 and 2 fast. Pooled, the last third's
    p50 lands on another hump than the first's; turn by turn nothing moved."""
    lat = [[2.2, 1.0, 1.1], [2.2, 1.0], [2.3, 1.1, 1.0], [1.0, 1.1, 2.2], [1.0, 1.1], [1.1, 1.0, 2.2]]
    ids = [[0, 1, 2], [0, 1], [0, 1, 2], [1, 2, 0], [1, 2], [1, 2, 0]]
    rows = _rows([1] * 6, lat)
    for r, t in zip(rows, ids, strict=True):
        r["turn_ids"] = t
    v = drift_verdict(rows)
    assert v["ok"] is True and abs(v["change"]) < 0.05 and set(v["turn_changes"]) == {"0", "1", "2"}
    pooled = drift_verdict(_rows([1] * 6, [[2.2, 2.2, 1.1], [2.2], [2.3, 1.1], [1.0, 1.1, 2.2], [1.0], [1.1, 1.0]]))
    assert pooled["ok"] is False  # the same kind of series without turn ids: the pooled p50 jumps
    # one turn really slower does not pass
    for r in rows[3:]:
        r["latencies_s"] = [x * 1.5 for x in r["latencies_s"]]
    slower = drift_verdict(rows)
    assert slower["ok"] is False and "slower" in slower["why"] and "turn 0 +" in slower["why"]


def test_a_turn_result_knows_which_labelled_turn_it_is() -> None:
    label = {"turns": [{"start": 0.5, "end": 2.0}, {"start": 4.0, "end": 6.0}]}
    results = turn_results(10.0, label, [], failed=True)
    assert [(r.turn, r.t_end, r.latency_s) for r in results] == [(0, 12.0, None), (1, 16.0, None)]
    rows = window_rows([_probe(1.0), _probe(20.0)], results, [10.0], 60.0, 30.0)
    assert rows[0]["turn_ids"] == [0, 1]


def test_memory_is_judged_on_private_memory_with_rss_beside_it() -> None:
    """RSS grows as the stubs touch more of the mmapped weight files (bounded, reclaimable); private memory is
    what a leak grows. Runs saved before private memory was read are judged on RSS."""
    rows = _rows([1000, 1100, 1200])  # RSS +20 %
    for r, anon in zip(rows, (500, 505, 510), strict=True):
        r["triton_rss_kb"], r["triton_anon_kb"] = r["orchestrator_rss_kb"], anon
    v = memory_verdict(rows, "triton")
    assert v["ok"] is True and v["measure"] == "private" and v["growth"] == 0.02
    assert v["rss"]["ok"] is False and v["rss"]["growth"] == 0.2
    old = memory_verdict(_rows([1000, 1100, 1200]), "orchestrator")
    assert old["ok"] is False and old["measure"] == "rss"
    leak = _rows([1000, 1000, 1000])
    for r, anon in zip(leak, (500, 530, 560), strict=True):
        r["orchestrator_anon_kb"] = anon
    assert memory_verdict(leak, "orchestrator")["ok"] is False


def test_a_probe_reads_rss_and_private_memory_of_a_live_process() -> None:
    import os

    rss, anon = rss_kb(os.getpid()), rss_kb(os.getpid(), "RssAnon")
    assert rss is not None and anon is not None and 0 < anon <= rss
    assert rss_kb(2**22 + 12345) is None  # no such process
