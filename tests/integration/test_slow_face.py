"""A slow face and a hung one, in a real tritonserver, while the replica speaks with its video on: the
`face_render` stub made thirty times slower for 4 s (stopped with SIGSTOP for 300 ms of every 310), or stopped
outright for 4 s.

The whole service runs in this process (`running_stack`, as `duet serve` wires it) and a conversation session
with `video=true` streams silence at real time while the replica says a long line (`echo`). During the fault:
the replica's voice keeps coming at its pace (TTS and playback do not wait for the face), the floor models go
on answering, and no error reaches the user. The frames that fall behind are dropped (gaps in the frame
indices, counted in `video_stats`) rather than queued and sent late in a burst, and afterwards the face goes on
in step with the clock. A slow stub stays (it is slow, not dead); a hung one is found "not healthy" by Triton's
Python backend, and the healer kills it and reloads the model once. Checks are on what happened, not on how
fast.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.integration.stalls import Run, run_session

pytestmark = pytest.mark.integration

SECONDS = 16.0  # of input: the line is about ten seconds of speech
FREEZE_AT_S = 3.0  # session time of the fault: the face is about a second and a half into the line
STALL_S = 4.0
STOP_S, RUN_S = 0.3, 0.01  # a thirtieth of its speed: short stops, each well within the backend's health check
FPS = 25.0
MAX_LAG_S = 0.5  # FaceSettings.max_lag_s: frames further behind than this are dropped


def face_run(stop_s: float, run_s: float) -> Run:
    """The session with its video on while the `face_render` stub is stopped for `stop_s` of every
    `stop_s + run_s` seconds, for STALL_S."""
    run = run_session(
        "face_render", stop_s, run_s, stall_s=STALL_S, stall_at_s=FREEZE_AT_S, seconds=SECONDS, video_fps=FPS
    )
    stats = [e for e in run.events if e["type"] == "video_stats"]
    print(
        f"[face fault] stops of {stop_s:g} s for {run.ended - run.began:.1f} s ({run.cycles}); same stub "
        f"{run.same_stub}; vad calls meanwhile {run.vad_calls:.0f}; {len(run.frames)} frames, {len(run.audio)} "
        f"audio chunks; last video_stats {stats[-1] if stats else None}"
    )
    return run


def check_voice_floor_and_face(run: Run) -> None:
    """No error; the VAD kept pace; the voice did not wait for the face; what fell behind was dropped, not
    queued; and the face is back in step with the clock after the fault."""
    assert not run.errors, run.errors
    assert run.vad_kept_pace(), run.vad_calls

    # The voice did not wait for the face: reply audio kept arriving during the fault, and the whole line
    # was played (about ten seconds of speech).
    during = [a for w, a in run.audio if run.began + 0.5 <= w <= run.ended]
    assert len(during) >= 10, (len(during), len(run.audio))
    assert run.spoken_s() >= 6.0, run.spoken_s()

    # What fell behind was dropped, not queued: the first frame after the fault is near the session clock, the
    # frame indices have gaps, and `video_stats` counts the drops.
    after = [(w, f) for w, f in run.frames if w > run.ended]
    assert after, "the face never came back"
    resumed_at = run.ended - run.clock0  # session time when the renderer was back
    first = after[0][1]
    assert first.t >= resumed_at - 1.5, (first.t, resumed_at)  # not a frame from the fault's start
    indices = [f.index for _, f in run.frames]
    assert indices == sorted(indices), "frames out of order"
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(indices) if b > a + 1)
    assert gaps >= int(STALL_S * FPS / 4), (gaps, indices)  # it drew a small part of the time at most
    stats = [e for e in run.events if e["type"] == "video_stats"]
    assert stats and stats[-1]["dropped"] >= gaps, stats[-1:]
    # and it kept up once back: the frames of the last seconds were sent within the allowed lag
    late = [w - run.clock0 - f.t for w, f in after if f.t >= resumed_at + 2.0]
    assert late, "no frames in the seconds after the fault"
    assert float(np.median(late)) <= MAX_LAG_S + 0.5, late


def test_a_slow_renderer_drops_frames_while_the_voice_and_the_floor_go_on() -> None:
    run = face_run(STOP_S, RUN_S)
    assert run.same_stub, "the slow stub was restarted: Triton or the healer took it for dead"
    check_voice_floor_and_face(run)


def test_a_hung_renderer_is_replaced_at_most_once_and_the_face_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    """Stopped outright for STALL_S. Whether Triton's backend finds the stub "not healthy" depends on what it
    was asked meanwhile; when it does, the healer kills the stub and reloads the model, once. (A stub left alive
    woke up beside its successor and took it down with it: the face stopped for good, and once a `vad` request
    waited 10 s and ended the session.)"""
    caplog.set_level("INFO", logger="duet.triton")
    run = face_run(STALL_S, 0.0)
    reloads = [r.getMessage() for r in caplog.records if "reloading it (attempt" in r.getMessage()]
    print(f"[face fault] hung stub: {len(reloads)} reload(s): {reloads}")
    assert run.cycles == 1
    check_voice_floor_and_face(run)
    assert len(reloads) <= 1, reloads  # found dead once at most, and healed by one reload
