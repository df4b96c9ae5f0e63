"""Settings: defaults, YAML, environment overrides, validation and per-session floor options."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.config import FloorSettings, load_settings, with_floor_options
from orchestrator.errors import BadOption


def test_defaults_validate() -> None:
    s = load_settings(env={})
    assert s.triton.url == ""
    assert "floor" in s.triton.models


def test_yaml_then_env_override(tmp_path: Path) -> None:
    f = tmp_path / "duet.yaml"
    f.write_text("server:\n  port: 6000\nfloor:\n  commit_threshold: 0.9\n")
    s = load_settings(f, env={"DUET_SERVER__PORT": "7000", "DUET_TRITON__MODELS": "vad,floor"})
    assert s.server.port == 7000
    assert s.floor.commit_threshold == 0.9
    assert s.triton.models == ("vad", "floor")


@pytest.mark.parametrize(
    "yaml_text",
    ["floor:\n  vad_on: 0.2\n  vad_off: 0.5\n", "nonsense: 1\n", "server:\n  port: many\n", "- a list\n"],
)
def test_invalid_settings_are_typed_errors(tmp_path: Path, yaml_text: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(BadOption):
        load_settings(f, env={})


def test_session_floor_options() -> None:
    out = with_floor_options(FloorSettings(), {"floor.commit_threshold": "0.95", "floor.max_pause_ms": "3000"})
    assert out.commit_threshold == 0.95 and out.max_pause_ms == 3000
    with pytest.raises(BadOption, match="unknown"):
        with_floor_options(FloorSettings(), {"persona.voice": "x"})
    with pytest.raises(BadOption):
        with_floor_options(FloorSettings(), {"floor.commit_threshold": "0.1"})  # below tentative threshold


@pytest.mark.parametrize(
    "key,value",
    [
        ("floor.eval_interval_ms", "-1"),
        ("floor.barge_in_ms", "-1"),
        ("floor.speech_start_ms", "1e20"),
        ("floor.speech_start_ms", "100000000000000000000"),
        ("floor.speech_end_ms", "0"),
        ("floor.max_pause_ms", "99999999"),
        ("floor.backchannel_max_ms", "-5"),
        ("floor.acoustic_refresh_ms", "3.5"),
        ("floor.vad_on", "nan"),
        ("floor.commit_threshold", "inf"),
    ],
)
def test_floor_options_out_of_range_are_refused(key: str, value: str) -> None:
    with pytest.raises(BadOption):
        with_floor_options(FloorSettings(), {key: value})


@pytest.mark.parametrize(
    "options",
    [
        {"video": "true", "video.face": "../../etc/passwd"},
        {"video": "true", "video.face": "/etc/passwd"},
        {"video": "true", "video.face": "a b"},
        {"video": "true", "video.fps": "0"},
        {"video": "true", "video.fps": "nan"},
        {"video": "true", "video.size": "513x512"},
        {"video": "true", "video.size": "512x512x3"},
        {"video": "true", "video.quality": "101"},
        {"video": "maybe"},
        {"speculation": "perhaps"},
        {"mode": "turbo"},
        {"floor.nonsense": "1"},
        {"nonsense": "1"},
        {"mode": "floor", "video": "true"},
        {"llm_model": "a model"},
        {"llm_model": "-x"},
        {"llm_model": "x" * 200},
        {"playback_lead_ms": "20"},
        {"playback_lead_ms": "soon"},
        {"video": "true", "video.ahead_ms": "200"},  # ahead of the (default, 120 ms) lead: not released yet
        {"video": "true", "video.ahead_ms": "-5"},
    ],
)
def test_session_options_refused_as_documented(options: dict[str, str]) -> None:
    from orchestrator.api.session_service import parse_options
    from orchestrator.config import Settings

    with pytest.raises(BadOption):
        parse_options(Settings(), options)


def test_session_options_within_range_pass() -> None:
    from orchestrator.api.session_service import parse_options
    from orchestrator.config import FLOOR_RANGES_MS, Settings

    opts = {f"floor.{k}": str(lo) for k, (lo, _) in FLOOR_RANGES_MS.items()}
    parsed = parse_options(Settings(), {**opts, "video": "true", "video.face": "my-face_2", "mode": "conversation"})
    assert parsed.floor.barge_in_ms == FLOOR_RANGES_MS["barge_in_ms"][0]
    assert parsed.video is not None and parsed.video.face == "my-face_2"
    assert parsed.llm_model == ""  # the persona's
    assert parse_options(Settings(), {"llm_model": "smollm2-135m"}).llm_model == "smollm2-135m"
    # the embedded stack of a client command (`duet talk --video`) runs on port 0: its options still parse
    embedded = dataclasses.replace(Settings(), server=dataclasses.replace(Settings().server, port=0))
    assert parse_options(embedded, {"video": "true", "video.size": "384x384"}).video is not None
    # a call's session: a longer lead, and the face rendered that far ahead
    call = parse_options(Settings(), {"playback_lead_ms": "300", "video": "true", "video.ahead_ms": "240"})
    assert call.playback_lead_ms == 300 and call.video is not None and call.video.ahead_s == 0.24


@pytest.mark.parametrize(
    "env",
    [
        {"DUET_SERVER__IDLE_TIMEOUT_S": "-1"},
        {"DUET_SERVER__AUDIO_BURST_S": "0"},
        {"DUET_SERVER__MAX_TEXT_CHARS": "0"},
        {"DUET_SERVER__SESSION_INFLIGHT": "0"},
        {"DUET_METRICS__PORT": "70000"},
        {"DUET_METRICS__ENABLED": "sometimes"},
        {"DUET_FACE__FACE": "../x"},
    ],
)
def test_server_limits_are_validated(env: dict[str, str]) -> None:
    with pytest.raises(BadOption):
        load_settings(env=env)
