"""The face benchmark's measuring functions (perf/bench_face.py) on synthetic signals and landmarks."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from orchestrator.face.motion import EMOTIONS
from perf.bench_face import (
    BROW_INNER_L,
    BROW_INNER_R,
    CORNER_L,
    CORNER_R,
    EYE_INNER_L,
    EYE_INNER_R,
    IRIS_L,
    IRIS_R,
    LID_L,
    LID_R,
    LIP_BOTTOM,
    LIP_IN_LO,
    LIP_IN_UP,
    LIP_TOP,
    MEASURES,
    SIGNATURES,
    SUBNASALE,
    base_symbol,
    closure_threshold,
    extremum_time,
    flow_geometry,
    geometry,
    geometry_delta,
    jitter,
    markdown_table,
    noise_floor,
    pearson,
    per_frame_ms,
    percentile_abs,
    thresholds,
    verdict,
    with_flow,
)

FPS = 25.0
F64 = npt.NDArray[np.float64]


def grid(seconds: float = 1.0) -> F64:
    return np.arange(int(seconds * FPS)) / FPS


def face(iod: float = 100.0) -> F64:
    """A frontal face: (478, 2) landmarks with the points the benchmark reads at plausible places (iod px)."""
    lm = np.zeros((478, 2))
    u = iod / 100.0
    pts = {
        IRIS_R: (-50, 0),
        IRIS_L: (50, 0),
        EYE_INNER_R: (-20, 0),
        EYE_INNER_L: (20, 0),
        LID_R[0]: (-50, -10),
        LID_R[1]: (-50, 10),
        LID_L[0]: (50, -10),
        LID_L[1]: (50, 10),
        SUBNASALE: (0, 70),
        LIP_TOP: (0, 90),
        LIP_IN_UP: (0, 100),
        LIP_IN_LO: (0, 110),
        LIP_BOTTOM: (0, 120),
        CORNER_R: (-40, 105),
        CORNER_L: (40, 105),
        70: (-80, -40),
        46: (-75, -35),
        300: (80, -40),
        276: (75, -35),
    }
    for i in BROW_INNER_R:
        pts[i] = (-15, -40)
    for i in BROW_INNER_L:
        pts[i] = (15, -40)
    for i, (x, y) in pts.items():
        lm[i] = (x * u, y * u)
    return lm


def moved(lm: F64, idx: tuple[int, ...] | int, dx: float, dy: float) -> F64:
    out = lm.copy()
    out[list(idx) if isinstance(idx, tuple) else [idx]] += (dx, dy)
    return out


def test_per_frame_ms_is_the_median_per_frame() -> None:
    assert per_frame_ms([0.4, 0.1, 0.2], 4) == pytest.approx(50.0)


def test_extremum_finds_a_single_frame_minimum_between_frames() -> None:
    t = grid()
    values = (t - 0.51) ** 2
    got = extremum_time(t, values, 0.5, 0.2, "min", plateau=0.0)
    assert got is not None and abs(got - 0.51) < 0.004


def test_extremum_takes_the_nearest_closure_not_the_deepest() -> None:
    t = grid()
    values = np.full_like(t, 0.3)
    values[np.isclose(t, 0.40)] = 0.0  # a deeper closure of the previous bilabial
    values[np.isclose(t, 0.60)] = 0.02
    got = extremum_time(t, values, 0.58, 0.2, "min", plateau=0.01)
    assert got is not None and abs(got - 0.60) < 0.021


def test_extremum_counts_a_flat_bottom_at_its_centre() -> None:
    t = grid()
    values = np.full_like(t, 0.3)
    values[np.isclose(t, 0.56)] = 0.0017
    values[np.isclose(t, 0.60)] = 0.0022
    got = extremum_time(t, values, 0.57, 0.2, "min", plateau=0.01)
    assert got == pytest.approx(0.58)


def test_extremum_max_and_none_without_a_local_extreme() -> None:
    t = grid()
    bump = np.exp(-(((t - 0.44) / 0.05) ** 2))
    got = extremum_time(t, bump, 0.4, 0.2, "max", plateau=0.0)
    assert got is not None and abs(got - 0.44) < 0.005
    assert extremum_time(t, t.copy(), 0.5, 0.2, "min", plateau=0.0) is None  # only rising
    with pytest.raises(ValueError):
        extremum_time(t, t, 0.5, 0.2, "lowest", plateau=0.0)


def test_percentiles_of_absolute_offsets_in_ms() -> None:
    assert percentile_abs([0.01, -0.03, 0.02], 50) == pytest.approx(20.0)
    assert percentile_abs([], 95) is None


def test_geometry_is_zero_change_for_the_same_face_and_invariant_to_pose_and_scale() -> None:
    lm = face()
    assert all(v == pytest.approx(0.0) for v in geometry_delta(lm, lm).values())
    ang = math.radians(15)
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    other = (lm @ rot.T) * 2.5 + (300.0, 120.0)
    g, h = geometry(lm), geometry(other)
    for k in MEASURES:
        assert h[k] == pytest.approx(g[k], abs=1e-9)
    assert g["mouth_open"] == pytest.approx(10.0)  # 10 px at 100 px iod
    assert g["brow_inner"] == pytest.approx(40.0)


def test_geometry_signs_of_each_movement() -> None:
    lm = face()
    cases = {
        "brow_inner": moved(lm, BROW_INNER_R + BROW_INNER_L, 0, -5),  # up
        "brow_outer": moved(lm, (70, 46, 300, 276), 0, -5),
        "eye_open": moved(lm, (LID_R[0], LID_L[0]), 0, -3),
        "corner_up": moved(lm, (CORNER_R, CORNER_L), 0, -4),
        "corner_asym": moved(lm, CORNER_L, 0, -4),  # the image-right corner up
        "mouth_width": moved(moved(lm, CORNER_L, 5, 0), CORNER_R, -5, 0),
        "mouth_open": moved(lm, LIP_IN_LO, 0, 6),
    }
    for measure, shifted in cases.items():
        assert geometry_delta(shifted, lm)[measure] > 2.0, measure
    assert geometry_delta(moved(moved(lm, BROW_INNER_L, -3, 0), BROW_INNER_R, 3, 0), lm)["brow_dist"] == pytest.approx(
        -6.0
    )
    assert geometry_delta(moved(lm, LIP_TOP, 0, -5), lm)["nose_lip"] == pytest.approx(-5.0)


def test_flow_geometry_reads_brows_together_and_eyes_wider() -> None:
    lm = face() + np.array([200.0, 200.0])
    flow = np.zeros((480, 480, 2))
    for i, dx in ((BROW_INNER_R[0], 2.0), (BROW_INNER_L[0], -2.0)):
        x, y = lm[i].astype(int)
        flow[y - 5 : y + 6, x - 5 : x + 6, 0] = dx
    for upper in (LID_R[0], LID_L[0]):
        x, y = lm[upper].astype(int)
        flow[y - 3 : y + 4, x - 3 : x + 4, 1] = -1.0
    got = flow_geometry(flow, lm)
    assert got["brow_dist_flow"] == pytest.approx(-4.0)
    assert got["eye_open_flow"] == pytest.approx(1.0)


def test_noise_floor_thresholds_and_verdict() -> None:
    floor = noise_floor([{"a": 0.2, "b": -1.0}, {"a": -0.4, "b": 0.5}])
    assert floor == {"a": pytest.approx(0.4), "b": pytest.approx(1.0)}
    limit = thresholds(floor)
    assert limit == {"a": pytest.approx(0.6), "b": pytest.approx(1.5)}  # 1.5x the floor, at least 0.5
    assert thresholds({"c": 0.0})["c"] == pytest.approx(0.5)
    ok, misses = verdict({"a": 1.0, "b": -2.0}, limit, {"a": +1, "b": -1})
    assert ok and misses == ""
    ok, misses = verdict({"a": 0.5, "b": 2.0}, limit, {"a": +1, "b": -1})
    assert not ok and "a +0.5" in misses and "b +2.0" in misses


def test_signatures_cover_every_emotion_with_known_measures() -> None:
    assert set(SIGNATURES) == set(EMOTIONS) - {"neutral"}
    for sig in SIGNATURES.values():
        assert set(sig) <= set(MEASURES) and set(sig.values()) <= {-1, 1}
    assert with_flow({"brow_dist": -1, "corner_up": 1}) == {"brow_dist_flow": -1, "corner_up": 1}


def test_closure_threshold_is_a_quarter_of_the_way_to_neutral() -> None:
    assert closure_threshold(0.16, 0.02) == pytest.approx(0.055)


def test_jitter_is_zero_for_steady_motion_and_sees_a_shake() -> None:
    t = np.arange(10, dtype=float)
    steady = np.stack([np.stack([t, 2 * t], -1)] * 3, axis=1)  # (T, N, 2): constant velocity
    assert np.allclose(jitter(steady), 0.0)
    shake = np.zeros((10, 3, 2))
    shake[::2, :, 0] = 1.0  # +-1 px alternate frames: |x[t+1] - 2x[t] + x[t-1]| = 2
    assert np.allclose(jitter(shake), 2.0)


def test_small_helpers() -> None:
    assert base_symbol("ˈaː") == "a" and base_symbol("m") == "m"
    a = np.arange(5.0)
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, np.ones(5)) is None
    assert markdown_table(["x", "y"], [[1, 2]]) == "| x | y |\n|---|---|\n| 1 | 2 |"
