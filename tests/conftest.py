"""Shared fixtures: a real embedded tritonserver (started once per test run) and sample audio."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from duet.wav import read_pcm16

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "perf" / "data" / "samples" / "demo_user.wav"
SAMPLE_LABEL = ROOT / "perf" / "data" / "samples" / "demo_user.json"


def read_wav(path: Path) -> npt.NDArray[np.int16]:
    return np.frombuffer(read_pcm16(path), dtype="<i2").astype(np.int16)


@pytest.fixture(scope="session")
def sample_audio() -> npt.NDArray[np.int16]:
    return read_wav(SAMPLE)


@pytest.fixture(scope="session")
def sample_label() -> dict[str, object]:
    return dict(json.loads(SAMPLE_LABEL.read_text()))


@pytest.fixture(scope="session")
def triton() -> Iterator[object]:
    from orchestrator.config import TritonSettings
    from orchestrator.launcher import EmbeddedTriton

    with EmbeddedTriton(TritonSettings()) as server:
        yield server
