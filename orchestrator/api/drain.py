"""Graceful drain of `duet serve`, as a pure state machine: signals and the count of live sessions in, with the
time; what to do next out. No I/O and no clock of its own (`orchestrator.app.serve` drives it).

    serving ──signal──▶ draining ──every session ended──────────────────────────────▶ stopped (exit 0)
                           │  (no new sessions; readiness fails; live sessions go on)
                           └──drain_timeout_s passed──▶ ending ──ended, or ENDING_S──▶ stopped
                                                         (the rest are told to end)
    any phase but serving ──a second signal──▶ stopped (at once: what is left is cancelled)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Once the remaining sessions were told to end, how long their teardown (and their conversation's end: the
# transcript, the webhook written) may take before the process stops anyway and cancels what is left.
ENDING_S = 10.0


class Phase(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"  # no new sessions; the live ones go on until they end or the drain time passes
    ENDING = "ending"  # the drain time passed: the sessions left were told to end
    STOPPED = "stopped"


class Step(enum.Enum):
    WAIT = "wait"  # check again shortly (or on the next signal)
    END_REMAINING = "end_remaining"  # end every session still live now (once)
    EXIT = "exit"  # stop the server


@dataclass
class Drain:
    """The drain of one server. `timeout_s`: how long live sessions may go on after the first signal."""

    timeout_s: float
    phase: Phase = Phase.SERVING
    began: float | None = None  # when the first signal came
    ending_since: float | None = None
    forced: bool = False  # stopped by a second signal (nothing more is waited for)

    @property
    def draining(self) -> bool:
        """Whether new sessions are refused (and readiness fails): from the first signal on."""
        return self.phase is not Phase.SERVING

    def signal(self, now: float) -> Step:
        """A SIGTERM or SIGINT. The first starts the drain; any later one stops at once."""
        if self.phase is Phase.SERVING:
            self.phase, self.began = Phase.DRAINING, now
            return Step.WAIT
        self.forced = self.phase is not Phase.STOPPED
        self.phase = Phase.STOPPED
        return Step.EXIT

    def step(self, now: float, live: int) -> Step:
        """What to do with `live` sessions still holding a slot at `now`."""
        if self.phase is Phase.SERVING:
            return Step.WAIT
        if self.phase is Phase.STOPPED:
            return Step.EXIT
        if live <= 0:
            self.phase = Phase.STOPPED
            return Step.EXIT
        if self.phase is Phase.DRAINING:
            assert self.began is not None
            if now - self.began >= self.timeout_s:
                self.phase, self.ending_since = Phase.ENDING, now
                return Step.END_REMAINING
            return Step.WAIT
        assert self.ending_since is not None
        if now - self.ending_since >= ENDING_S:  # a session that will not end does not hold the process
            self.phase = Phase.STOPPED
            return Step.EXIT
        return Step.WAIT

    def wait_s(self, now: float, tick_s: float) -> float:
        """How long the driver may sleep before the next `step` (at most `tick_s`, less near the deadline)."""
        if self.phase is Phase.DRAINING and self.began is not None:
            return max(min(tick_s, self.began + self.timeout_s - now), 0.0)
        return tick_s
