"""Settings: defaults, YAML, environment overrides, validation and per-session floor options."""

from __future__ import annotations

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
