"""The floor state machine: who holds the conversational floor, decided on the stream's audio clock.

Pure: it takes VAD frames, floor estimates and replica-speaking marks, each stamped with audio time, and
returns actions (events to emit, evaluations to run). No I/O, no wall clock, no asyncio; the session
service runs it, and tests drive it with virtual time.

How a decision is made
- Speech on/off comes from per-window VAD probabilities with hysteresis (`vad_on` / `vad_off`) and a
  minimum duration (`speech_start_ms` / `speech_end_ms`), so a click or a breath does not flip the floor.
- From the first unvoiced window after user speech the machine asks for a floor *evaluation* (the `floor`
  ensemble: Smart Turn, prosody, pause length, lexical completeness fused into P(yield)) and asks again
  every `eval_interval_ms` while the pause grows. An evaluation can only be requested once the previous
  one has answered: one in flight per session.
- P(yield) >= `tentative_threshold` emits `eot_tentative` (speculation may start); >= `commit_threshold`
  with at least `min_commit_pause_ms` of silence emits `eot_commit`. Speech resuming after a tentative
  emits `eot_cancel`. After `max_pause_ms` of silence the floor is committed regardless (safety net).
- While the replica speaks (marked by the client until the reply loop lands), user speech is either a
  `barge_in` (voiced for `barge_in_ms`) or, if it stops sooner, a `backchannel`; neither starts
  end-of-turn logic unless the user took the floor.

Every emitted event carries `t`: the end time of the last audio chunk the decision used.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from orchestrator.config import FloorSettings
from orchestrator.events import FloorEvent


class Phase(enum.Enum):
    IDLE = "idle"  # no user speech since the last commit (or ever)
    SPEAKING = "speaking"
    PAUSED = "paused"  # user speech ended; the floor is still the user's until commit
    COMMITTED = "committed"  # the user yielded; the replica holds the floor


@dataclass(frozen=True)
class Evaluate:
    """Ask for P(yield) using the audio up to `t`; `pause_ms` is the silence so far before `t`."""

    t: float
    pause_ms: float
    request_id: int
    # Past `acoustic_refresh_ms` of pause the acoustic cues (Smart Turn, prosody) hardly change: the session
    # may reuse the last ones it got in this pause and run only the fusion with the new pause length.
    reuse_acoustics: bool = False


Action = FloorEvent | Evaluate  # an event to emit, or an evaluation to run


@dataclass
class _Counters:
    voiced_ms: float = 0.0  # consecutive voiced audio
    unvoiced_ms: float = 0.0  # consecutive unvoiced audio


class FloorMachine:
    """One user's floor state. Feed it in audio-time order; it never looks at a wall clock."""

    def __init__(self, settings: FloorSettings) -> None:
        self.s = settings
        self.phase = Phase.IDLE
        self._run = _Counters()
        self._last_voiced_end = 0.0  # audio time where the last voiced window ended
        self._segment_start = 0.0  # audio time where the current user speech segment began
        self._replica_speaking = False
        self._replica_segment = False  # current user speech began while the replica was speaking
        self._barged_in = False
        self._tentative = False
        self._pending: Evaluate | None = None  # the evaluation in flight
        self._text_waiting = False  # new words arrived while an evaluation was in flight
        self._last_eval_t: float | None = None  # in the current pause
        self._fresh_in_pause = False  # a full (acoustic) evaluation was made in the current pause
        self._next_id = 0
        self._t = 0.0  # newest audio time seen

    @property
    def replica_speaking(self) -> bool:
        return self._replica_speaking

    def set_settings(self, settings: FloorSettings) -> None:
        """New thresholds, live (the `sensitivity` interaction): they apply from the next input on; what has been
        counted so far (speech, pause, an evaluation in flight) is judged by them from then on."""
        self.s = settings

    # ---- inputs -------------------------------------------------------------------------------------

    def on_vad(self, window_end: float, prob: float, window_ms: float, t: float) -> list[Action]:
        """One VAD window ending at `window_end`; `t` is the end of the chunk that completed it."""
        self._t = max(self._t, t)
        voiced = prob >= (self.s.vad_off if self.phase is Phase.SPEAKING else self.s.vad_on)
        if voiced:
            self._run.voiced_ms += window_ms
            self._run.unvoiced_ms = 0.0
        else:
            self._run.unvoiced_ms += window_ms
            self._run.voiced_ms = 0.0
        out: list[Action] = []
        if self.phase is Phase.SPEAKING:
            if voiced:
                self._last_voiced_end = window_end
                self._last_eval_t = None
                self._fresh_in_pause = False
                heard_ms = (window_end - self._segment_start) * 1000
                if self._replica_segment and not self._barged_in and heard_ms >= self.s.barge_in_ms:
                    self._barged_in = True
                    out.append(FloorEvent("barge_in", t))
            elif self._run.unvoiced_ms >= self.s.speech_end_ms:
                out += self._speech_end(t)
            elif self._user_turn():
                # First unvoiced windows: evaluate before speech_end is even confirmed (the fast path).
                out += self._maybe_evaluate(t)
        elif voiced and self._run.voiced_ms >= self.s.speech_start_ms:
            out += self._speech_start(window_end, t)
        elif self.phase is Phase.PAUSED:
            pause_ms = (t - self._last_voiced_end) * 1000
            if pause_ms >= self.s.max_pause_ms:
                out += self._commit(t, reason="max_pause")
            else:
                out += self._maybe_evaluate(t)
        return out

    @property
    def pause_start(self) -> float:
        """Audio time where the user's current pause began (the end of their last voiced window)."""
        return self._last_voiced_end

    def on_text(self) -> list[Action]:
        """The words of the user's turn reached the pause (its final transcript): evaluate now, not at the next
        tick, reusing the pause's acoustic cues when there are some. With an evaluation in flight (it read the
        older text), the next one starts as soon as it answers."""
        if self.phase is not Phase.PAUSED or not self._user_turn():
            return []
        if self._pending is not None:
            self._text_waiting = True
            return []
        return self._evaluate_now(self._t)

    def on_estimate(self, request_id: int, p_yield: float) -> list[Action]:
        """The answer to an `Evaluate`. Stale answers (speech resumed meanwhile) are ignored."""
        ev = self._pending
        if ev is None or ev.request_id != request_id:
            return []
        self._pending = None
        again, self._text_waiting = self._text_waiting, False
        if self.phase not in (Phase.PAUSED, Phase.SPEAKING) or not self._user_turn():
            return []
        out: list[Action] = []
        commit = p_yield >= self.s.commit_threshold and ev.pause_ms >= self.s.min_commit_pause_ms
        if commit and self.phase is Phase.SPEAKING:
            out.append(FloorEvent("speech_end", ev.t))  # committed from the fast path: close the segment first
        # Tentative only once speech_end is confirmed (or together with a commit): a fast-path estimate inside
        # a short dip in speech would start speculation the next words make stale at once.
        paused = self.phase is Phase.PAUSED or commit
        if p_yield >= self.s.tentative_threshold and not self._tentative and paused:
            self._tentative = True
            out.append(FloorEvent("eot_tentative", ev.t, p_yield=round(p_yield, 4)))
        if commit:
            out += self._commit(ev.t, reason="model", p_yield=p_yield)
        elif again and self.phase is Phase.PAUSED:
            out += self._evaluate_now(max(self._t, ev.t))
        return out

    def on_replica(self, speaking: bool) -> None:
        """The replica started or stopped speaking (client marks now; the reply loop later)."""
        self._replica_speaking = speaking

    def finish(self, t: float) -> list[Action]:
        """End of stream: a user pause in progress is committed (the client stopped sending)."""
        if self.phase is Phase.PAUSED and self._user_turn():
            return self._commit(max(t, self._t), reason="end_of_stream")
        return []

    # ---- transitions --------------------------------------------------------------------------------

    def _user_turn(self) -> bool:
        """Whether end-of-turn logic applies: the user spoke on their own floor or barged in."""
        return not self._replica_segment or self._barged_in

    def _speech_start(self, window_end: float, t: float) -> list[Action]:
        out: list[Action] = []
        if self._tentative:
            out.append(FloorEvent("eot_cancel", t))
        self._tentative = False
        self._pending = None  # an answer about the old pause is now stale
        self._text_waiting = False
        self._last_eval_t = None
        self._fresh_in_pause = False
        if self.phase is not Phase.PAUSED:  # a new segment (not the same turn resuming)
            self._segment_start = window_end - self._run.voiced_ms / 1000
            self._replica_segment = self._replica_speaking
            self._barged_in = False
        self.phase = Phase.SPEAKING
        self._last_voiced_end = window_end
        out.append(FloorEvent("speech_start", t))
        return out

    def _speech_end(self, t: float) -> list[Action]:
        out: list[Action] = [FloorEvent("speech_end", t)]
        if self._replica_segment and not self._barged_in:
            # Short speech over the replica's voice ("mm-hm", "right", a cough): the replica keeps the floor.
            heard_ms = round((self._last_voiced_end - self._segment_start) * 1000, 1)
            out.append(FloorEvent("backchannel", t, duration_ms=heard_ms))
            self.phase = Phase.COMMITTED
            self._replica_segment = False
            self._pending = None
            return out
        self.phase = Phase.PAUSED
        out += self._maybe_evaluate(t)
        return out

    def _maybe_evaluate(self, t: float) -> list[Action]:
        if self._pending is not None:
            return []
        if self._last_eval_t is not None and (t - self._last_eval_t) * 1000 < self.s.eval_interval_ms - 1e-6:
            return []
        pause_ms = (t - self._last_voiced_end) * 1000
        return self._evaluate_now(t, reuse=self._fresh_in_pause and pause_ms > self.s.acoustic_refresh_ms)

    def _evaluate_now(self, t: float, reuse: bool | None = None) -> list[Action]:
        """Ask for P(yield) at `t`; `reuse` (default: whenever this pause had a full evaluation) runs the fusion
        alone on the last acoustic cues."""
        reuse = self._fresh_in_pause if reuse is None else reuse
        self._next_id += 1
        self._last_eval_t = t
        self._fresh_in_pause = self._fresh_in_pause or not reuse
        pause_ms = (t - self._last_voiced_end) * 1000
        self._pending = Evaluate(t=t, pause_ms=pause_ms, request_id=self._next_id, reuse_acoustics=reuse)
        return [self._pending]

    def _commit(self, t: float, reason: str, p_yield: float | None = None) -> list[Action]:
        out: list[Action] = []
        if not self._tentative:
            sure = 1.0 if p_yield is None else p_yield
            out.append(FloorEvent("eot_tentative", t, p_yield=round(sure, 4)))
        p = None if p_yield is None else round(p_yield, 4)
        out.append(FloorEvent("eot_commit", t, reason=reason, p_yield=p))
        self.phase = Phase.COMMITTED
        self._tentative = False
        self._pending = None
        self._replica_segment = False
        return out
