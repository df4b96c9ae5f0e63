"""The transcription gate: when the user's turn is decoded, and when a floor decision may act on it.

Replies are built from what the user said, so a floor decision must not reach the reply machine before the
words it concerns. The gate keeps that order:
- It schedules the decodes of the user's current turn (`PartialSchedule`: partials while they speak, a
  final one at each speech end) and folds their results into the turn's transcript (`StreamingTranscript`).
- Every floor event queues here. The head of the queue may go on (`ready`) unless a speech end's final
  decode is still awaited; it stays queued while the session acts on it (`delivered` removes it), so
  events arriving meanwhile wait behind it and everything reaches the reply machine in audio-time order.
- An `eot_commit` that goes on closes the turn. Speech that began after a commit still queued belongs to the
  next turn, whose decodes can only start once that commit has closed this one: its schedule calls wait in
  the gate and are replayed then.
- Speech over the replica is not transcribed until it becomes a `barge_in` (most of it is "mm-hm"). A barge-in
  turn then starts at the first speech over the replica that led to it: a backchannel the user went on from
  within `LINK_S` ("Okay, you know, | that's everything") is the start of the turn, not noise to drop.

Pure: audio times in seconds on the session clock, given by the caller; the session runs the decodes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from orchestrator.config import FloorSettings
from orchestrator.speech.transcript import DecodeWindow, Hypothesis, PartialSchedule, StreamingTranscript

TURN_PAD_S = 0.25  # audio kept before the detected speech start (VAD confirms speech ~64 ms late)
FINAL_PAD_S = 0.0  # and after speech end, for the final decode (speech_end already lies 64+ ms into the pause)
PARTIAL_MIN_AUDIO_S = 0.8  # no partial decode of less speech than this: short windows make Whisper loop
LINK_S = 1.2  # speech over the replica this soon after a backchannel continues it (one barge-in turn)


@dataclass(frozen=True)
class Decode:
    """Run the recogniser on this window of session audio, then report `heard` and `settled`."""

    window: DecodeWindow


@dataclass(frozen=True)
class Heard:
    """The open turn's transcript after a decode."""

    text: str
    final: bool
    t: float  # the end of the decoded audio


class TranscriptGate:
    def __init__(
        self,
        floor: FloorSettings,
        *,
        partial_interval_ms: int,
        max_utterance_s: float,
        pad_s: float = TURN_PAD_S,
        final_pad_s: float = FINAL_PAD_S,
        min_audio_s: float = PARTIAL_MIN_AUDIO_S,
    ) -> None:
        self.floor = floor
        self.final_pad_s = final_pad_s
        self.schedule = PartialSchedule(partial_interval_ms, max_utterance_s, pad_s=pad_s, min_audio_s=min_audio_s)
        self.transcript = StreamingTranscript()
        self.turn_text = ""  # the open turn's latest transcript (partial or final)
        self._awaiting_final = False  # a speech end's decode is due: floor events wait for its transcript
        self._queue: deque[tuple[str, float]] = deque()  # floor events not yet acted on, the head in progress
        self._next_turn: list[tuple[str, float]] = []  # the next turn's schedule calls ("start"/"end", time)
        self._overlap_onset: float | None = None  # the first speech over the replica not yet a turn or dropped
        self._backchannel_at: float | None = None  # when the last backchannel over the replica ended

    @property
    def awaiting_final(self) -> bool:
        return self._awaiting_final

    @property
    def pending(self) -> int:
        """Floor events not yet acted on."""
        return len(self._queue)

    def queued(self, *kinds: str) -> bool:
        """Whether a floor event of one of these kinds waits to be acted on (the one in progress included)."""
        return any(k in kinds for k, _ in self._queue)

    # ---- floor events -------------------------------------------------------------------------------------

    def on_floor(self, kind: str, t: float, *, replica_speaking: bool = False) -> list[Decode]:
        """A floor event at `t`: schedule the turn's decodes from it, and queue it. Returns decodes to run."""
        next_turn = any(k == "eot_commit" for k, _ in self._queue)  # (a slow final decode: the user went on)
        out: list[Decode] = []
        onset = t - self.floor.speech_start_ms / 1000  # speech_start is confirmed this late
        if kind == "speech_start" and not replica_speaking:
            self._overlap_onset = None
            self._speech_start(onset, next_turn)
        elif kind == "speech_start":  # over the replica: kept in mind until it is a backchannel or a barge-in
            linked = self._backchannel_at is not None and onset - self._backchannel_at <= LINK_S
            if self._overlap_onset is None or not linked:
                self._overlap_onset = onset
        elif kind == "backchannel":
            self._backchannel_at = t - self.floor.speech_end_ms / 1000
        elif kind == "barge_in":  # speech over the replica became a real turn: transcribe from its first words
            start = t - self.floor.barge_in_ms / 1000
            if self._overlap_onset is not None:
                start = min(start, self._overlap_onset)
            self._overlap_onset = self._backchannel_at = None
            self._speech_start(start, next_turn)
        elif kind == "speech_end":
            if next_turn:
                self._next_turn.append(("end", t + self.final_pad_s))
            else:
                out += self._speech_end(t + self.final_pad_s)
        self._queue.append((kind, t))
        return out

    def ready(self) -> tuple[str, float] | None:
        """The floor event that may be acted on now (it stays queued until `delivered`)."""
        if self._awaiting_final or not self._queue:
            return None
        return self._queue[0]

    def delivered(self) -> list[Decode]:
        """The session acted on the `ready` event. After an `eot_commit` the turn is closed, and the next turn's
        speech (if the user went on meanwhile) is scheduled: returns decodes to run."""
        kind, _ = self._queue.popleft()
        if kind != "eot_commit":
            return []
        self.turn_text = ""
        self.schedule.end_turn()
        self.transcript.reset()
        self._awaiting_final = False
        if any(k == "eot_commit" for k, _ in self._queue):
            return []  # still the speech of a later turn: wait for that commit too
        out: list[Decode] = []
        calls, self._next_turn = self._next_turn, []
        for call, at in calls:
            if call == "start":
                self._speech_start(at, False)
            else:
                out += self._speech_end(at)
        return out

    def flush(self) -> None:
        """End of stream, with no decode left running: queued events go on without waiting."""
        self._awaiting_final = False

    # ---- decodes ------------------------------------------------------------------------------------------

    def poll(self, now: float) -> Decode | None:
        """A partial decode, if one is due at audio time `now`."""
        window = self.schedule.poll(now)
        return None if window is None else Decode(window)

    def heard(self, window: DecodeWindow, hypothesis: Hypothesis | None) -> Heard | None:
        """A decode's result (None: it failed): the open turn's transcript, unless it belongs to an older turn."""
        if hypothesis is None or not self.schedule.is_current(window):
            return None
        part = self.transcript.finalize(hypothesis) if window.final else self.transcript.update(hypothesis)
        self.turn_text = part.text
        return Heard(part.text, window.final, window.end_s)

    def settled(self, window: DecodeWindow) -> None:
        """A decode is over (after `heard`). Once none whose result counts is in flight, queued floor events may
        go on (a stale decode finishing changes nothing: the final that overtook it is still awaited)."""
        self.schedule.decoded(window)
        if self.schedule.in_flight is None:
            self._awaiting_final = False

    # ---- the schedule -------------------------------------------------------------------------------------

    def _speech_start(self, onset: float, next_turn: bool) -> None:
        if next_turn:
            self._next_turn.append(("start", onset))
        else:
            self.schedule.speech_start(onset)

    def _speech_end(self, at: float) -> list[Decode]:
        window = self.schedule.speech_end(at)
        self._awaiting_final = window is not None
        return [] if window is None else [Decode(window)]
