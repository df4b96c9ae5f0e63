"""Perception fusion: voice and face observations in, short descriptions of the user's state out.

Pure and deterministic: every input carries its own times, nothing reads a clock, so tests drive it with
virtual time and the session drives it with the stream clock.

Two clocks, on purpose
- `t` is stream time (seconds on the session's media clock): what the user did, when. Debouncing, dwell times,
  rate limiting and the utterance arc all run on it, so the output does not depend on how busy the server is.
- `arrival` / `now` are the orchestrator's monotonic clock: when an input reached us and when the event was
  emitted. They only feed `latency_ms` (the freshness benchmark). `arrival` defaults to `t` and `now` to the
  newest arrival, i.e. zero latency, which is what a test with one virtual clock wants.

The baseline: the first confident reading of each modality is an event of its own, whatever it says, so a
client learns the user's starting state (a calm voice, a neutral face) and not only departures from it; after
that only changes are events. The visual baseline comes once the face count is confirmed and the face's
expression, gaze, head and eyes have settled (at most `baseline_wait_s` after the count): "The user is in view,
has a neutral expression and is looking at the camera." (or "Nobody is in view."). The audio baseline comes with
the first voice reading over at least `baseline_voice_s` of speech: "The user sounds calm and fluent." Such an
event lists its modalities in the extra key `baseline` (`[]` on a change). Until its baseline a modality says
nothing; readings before it still move the state the baseline describes.

What counts as a meaningful change (everything else is silent; see `FusionSettings` for the numbers)
- presence: the confirmed face count changes (debounced over `presence_confirm_s`, so one missed detection is
  not "the user left"); these bypass the rate limit;
- expression: the smoothed dominant of the 8 classes changes, with a margin (hysteresis) and a minimum dwell;
- gaze away for longer than `gaze_away_s`, and back; head turned away (yaw/pitch beyond a threshold, with
  hysteresis) for `head_away_s`, and back; eyes closed for longer than `eyes_closed_s`, and open again;
- voice arousal (low/moderate/high) or hesitancy (fluent/hesitant) crossing a band edge by a margin.
Events are at least `min_interval_s` of stream time apart unless presence changed. A change that is undone
before it could be reported is never reported (the fuser diffs the stable state against what it last said).

Errors: `BadPerceptionInput` (code "bad_perception_input", not fatal) for malformed observations: unknown
emotion names, scores outside 0..1, negative face counts, a turn that ends before it starts.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.errors import DuetError
from orchestrator.events import ArcSegment, Event, HeadPose, PerceptionEvent, UtteranceSummary, VoiceReading


class BadPerceptionInput(DuetError):
    """A malformed perception observation; the observation is rejected and the session goes on."""

    code = "bad_perception_input"
    fatal = False


EMOTIONS: tuple[str, ...] = ("neutral", "happiness", "sadness", "anger", "fear", "surprise", "disgust", "contempt")
NEGATIVE_EMOTIONS: tuple[str, ...] = ("sadness", "anger", "fear", "disgust", "contempt")
GAZES: tuple[str, ...] = ("camera", "away")
VOICE_STATES: tuple[str, ...] = ("arousal", "hesitancy", "uncertainty", "tension", "flatness")

# How an expression reads in a sentence about the user ("The user is smiling").
_EXPRESSION_PRED: dict[str, str] = {
    "neutral": "has a neutral expression",
    "happiness": "is smiling",
    "sadness": "looks sad",
    "anger": "looks angry",
    "fear": "looks afraid",
    "surprise": "looks surprised",
    "disgust": "looks disgusted",
    "contempt": "looks contemptuous",
}
_EXPRESSION_PAST: dict[str, str] = {
    "happiness": "smiled",
    "sadness": "looked sad",
    "anger": "looked angry",
    "fear": "looked afraid",
    "surprise": "looked surprised",
    "disgust": "looked disgusted",
    "contempt": "looked contemptuous",
}
_AROUSAL_LEVELS: tuple[str, ...] = ("low", "moderate", "high")
_HESITANCY_LEVELS: tuple[str, ...] = ("fluent", "hesitant")

# The state an aspect starts in, or returns to, without anything worth saying: after the modality's baseline,
# reaching it from "unknown" (None) is silent, so a returning calm user does not produce a stream of events.
_DEFAULTS: dict[str, object] = {
    "expression": "neutral",
    "gaze": "camera",
    "head_turned": False,
    "eyes_closed_long": False,
    "arousal": "moderate",
    "hesitancy": "fluent",
}
_ASPECT_MODALITY: dict[str, str] = {
    "presence": "visual",
    "head_turned": "visual",
    "gaze": "visual",
    "eyes_closed_long": "visual",
    "expression": "visual",
    "arousal": "audio",
    "hesitancy": "audio",
}
_MODALITIES: tuple[str, ...] = ("visual", "audio")
# How the baseline describes a default state, said only when nothing about the modality is notable.
_BASELINE_PRED: dict[str, dict[object, str]] = {
    "expression": {"neutral": "has a neutral expression"},
    "gaze": {"camera": "is looking at the camera"},
    "arousal": {"moderate": "sounds calm"},
    "hesitancy": {"fluent": "sounds fluent"},
}
_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _unit(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise BadPerceptionInput(f"{name} must be a score in 0..1, got {value!r}")
    return float(value)


def _finite(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise BadPerceptionInput(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _emotions(name: str, probs: Mapping[str, float] | None) -> dict[str, float] | None:
    if probs is None:
        return None
    unknown = sorted(set(probs) - set(EMOTIONS))
    if unknown:
        raise BadPerceptionInput(f"{name} has unknown classes {unknown}; the classes are {', '.join(EMOTIONS)}")
    out = {e: _unit(f"{name}.{e}", float(probs.get(e, 0.0))) or 0.0 for e in EMOTIONS}
    total = sum(out.values())
    if total <= 0.0:
        return None  # all-zero: the classifier said nothing, which is not the same as "neutral"
    # Renormalise: upstream classifiers may drop classes or round; comparisons need a distribution.
    return {e: p / total for e, p in out.items()}


def _time(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise BadPerceptionInput(f"{name} must be a finite time in seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class FaceObservation:
    """One analysed video frame. Per-face fields describe the primary (largest) face; None where unknown.

    `t` is the frame's capture time on the stream clock; `arrival` when it reached the orchestrator (defaults
    to `t`). `gaze` is "camera" or "away"; yaw/pitch/roll are degrees with 0 facing the camera.
    """

    t: float
    faces: int
    emotion: Mapping[str, float] | None = None
    yaw: float | None = None
    pitch: float | None = None
    roll: float | None = None
    gaze: str | None = None
    gaze_score: float | None = None
    eyes_closed: bool | None = None
    mouth_open: float | None = None
    arrival: float | None = None

    def __post_init__(self) -> None:
        _time("face.t", self.t)
        if isinstance(self.faces, bool) or not isinstance(self.faces, int) or self.faces < 0:
            raise BadPerceptionInput(f"faces must be a count >= 0, got {self.faces!r}")
        if self.gaze is not None and self.gaze not in GAZES:
            raise BadPerceptionInput(f"gaze must be 'camera', 'away' or None, got {self.gaze!r}")
        object.__setattr__(self, "emotion", _emotions("emotion", self.emotion))
        for name in ("yaw", "pitch", "roll"):
            _finite(name, getattr(self, name))
        _unit("gaze_score", self.gaze_score)
        _unit("mouth_open", self.mouth_open)
        if self.arrival is not None:
            _time("face.arrival", self.arrival)

    @property
    def arrived(self) -> float:
        return self.t if self.arrival is None else self.arrival


@dataclass(frozen=True)
class VoiceObservation:
    """Voice states for one utterance or a partial of one, over stream time [t_start, t_end].

    States are 0..1 relative to the speaker's own baseline; `emotion` holds the classes voice supports (others
    may be missing: they count as 0). Partials should describe a recent window rather than the whole utterance
    so far, or the turn's arc cannot show changes inside an utterance.
    """

    t_start: float
    t_end: float
    arousal: float | None = None
    hesitancy: float | None = None
    uncertainty: float | None = None
    tension: float | None = None
    flatness: float | None = None
    pitch_hz: float | None = None
    rate_sps: float | None = None
    emotion: Mapping[str, float] | None = None
    final: bool = True
    arrival: float | None = None

    def __post_init__(self) -> None:
        if _time("voice.t_end", self.t_end) < _time("voice.t_start", self.t_start):
            raise BadPerceptionInput(f"voice observation ends ({self.t_end}) before it starts ({self.t_start})")
        for name in VOICE_STATES:
            _unit(f"voice.{name}", getattr(self, name))
        for name in ("pitch_hz", "rate_sps"):
            value = _finite(name, getattr(self, name))
            if value is not None and value < 0:
                raise BadPerceptionInput(f"{name} must be >= 0, got {value!r}")
        object.__setattr__(self, "emotion", _emotions("voice.emotion", self.emotion))
        if self.arrival is not None:
            _time("voice.arrival", self.arrival)

    @property
    def arrived(self) -> float:
        return self.t_end if self.arrival is None else self.arrival


@dataclass(frozen=True)
class FusionSettings:
    """Thresholds of the fuser; stream seconds, degrees and 0..1 scores."""

    min_interval_s: float = 1.0  # between events, unless presence changed
    presence_confirm_s: float = 0.2  # a face count must hold this long (a few frames) to count
    emotion_tau_s: float = 0.4  # time constant of the expression smoothing
    expression_min_prob: float = 0.35  # a dominant expression needs at least this smoothed probability
    expression_margin: float = 0.1  # ... and must beat the current one by this much (hysteresis)
    expression_dwell_s: float = 0.6  # ... for this long
    gaze_away_s: float = 2.0
    gaze_back_s: float = 0.3
    head_away_yaw_deg: float = 30.0
    head_back_yaw_deg: float = 20.0
    head_away_pitch_deg: float = 25.0
    head_back_pitch_deg: float = 15.0
    head_away_s: float = 1.0
    eyes_closed_s: float = 1.5
    arousal_edges: tuple[float, float] = (0.35, 0.65)
    hesitancy_edge: float = 0.5
    band_margin: float = 0.05  # a voice score must pass a band edge by this much to change band
    voice_context_s: float = 5.0  # voice older than this is not mentioned as context in a visual event
    baseline_voice_s: float = 1.0  # a voice reading over this much speech is confident: the audio baseline
    baseline_wait_s: float = 2.0  # the visual baseline waits at most this long after the face count for the rest
    history_s: float = 120.0  # observations kept for utterance summaries


@dataclass(frozen=True)
class PerceptionSnapshot:
    """The fuser's current view of the user, for perception tools (`orchestrator.perception.tools`).

    `faces` is the confirmed (debounced) count, `emotion` the smoothed distribution of the primary face,
    `gaze` and `head_pose` the latest frame's, `voice` the latest voice observation's scores.
    """

    t: float
    faces: int | None
    emotion: Mapping[str, float] | None
    gaze: str | None
    head_pose: Mapping[str, float] | None
    voice: Mapping[str, float] | None


class _Debounce:
    """A value that changes only after a new value has been seen continuously for a hold time."""

    def __init__(self) -> None:
        self.state: object = None
        self.state_since = 0.0  # when the current state's run began (not when it was confirmed)
        self.candidate: object = None
        self.candidate_since = 0.0

    def update(self, value: object, t: float, hold_s: float) -> bool:
        if value == self.state:
            self.candidate = None
            return False
        if self.candidate is None or value != self.candidate:
            self.candidate, self.candidate_since = value, t
        if t - self.candidate_since >= hold_s:
            self.state, self.state_since, self.candidate = value, self.candidate_since, None
            return True
        return False

    def reset(self) -> None:
        self.state, self.candidate = None, None


def _band(value: float, edges: Sequence[float], margin: float, current: int | None) -> int:
    if current is None:
        return sum(value >= e for e in edges)
    level = current
    while level < len(edges) and value >= edges[level] + margin:
        level += 1
    while level > 0 and value < edges[level - 1] - margin:
        level -= 1
    return level


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _opt_bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _seconds(value: float) -> str:
    n = max(1, round(value))
    return f"{n} second" if n == 1 else f"{n} seconds"


def _join(parts: Sequence[str]) -> str:
    """Join as "a, b and c"; a repeated "sounds"/"sounded" is dropped ("sounds subdued and hesitant")."""
    parts = [
        p.split(" ", 1)[1]
        if i and p.startswith(("sounds ", "sounded ")) and parts[i - 1].split(" ")[0] == p.split(" ")[0]
        else p
        for i, p in enumerate(parts)
    ]
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _people(n: int) -> str:
    return _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)


class Fuser:
    """Keeps the smoothed perception state of one session and emits events when it changes meaningfully.

    Feed it with `observe_face` / `observe_voice` (each returns the events to emit now, usually none), call
    `end_turn` at each end of turn for the utterance summary, and `poll` from a timer if inputs may pause while
    a rate-limited change waits. Frames older than the newest one seen are ignored (stale frames are dropped
    upstream too; they must not move the state backwards).
    """

    def __init__(self, settings: FusionSettings | None = None) -> None:
        self.settings = settings or FusionSettings()
        self._faces_history: deque[FaceObservation] = deque()
        self._voice_history: deque[VoiceObservation] = deque()
        self._face: FaceObservation | None = None
        self._voice: VoiceObservation | None = None
        self._presence = _Debounce()
        self._ever_present = False
        self._smoothed: dict[str, float] | None = None
        self._smoothed_t = 0.0
        self._expression: str | None = None
        self._expr_candidate: str | None = None
        self._expr_candidate_since = 0.0
        self._gaze = _Debounce()
        self._last_away_s = 0.0  # how long the last confirmed look-away lasted, for the "back" sentence
        self._head = _Debounce()
        self._eyes = _Debounce()
        self._arousal: int | None = None
        self._hesitancy: int | None = None
        self._reported: dict[str, object] = {}
        self._last_emit_t: float | None = None
        self._baselined: set[str] = set()  # modalities whose baseline event has gone out
        self._voice_confident = False  # a voice reading long enough for the audio baseline has been seen
        self._presence_first_t: float | None = None  # when a face count was first confirmed

    # ---- inputs -----------------------------------------------------------------------------------------

    def observe_face(self, obs: FaceObservation, now: float | None = None) -> list[PerceptionEvent]:
        """Take one analysed frame; `now` is the emit time on the arrival clock (default: its arrival)."""
        if self._face is not None and obs.t < self._face.t:
            return []
        s = self.settings
        self._face = obs
        self._faces_history.append(obs)
        self._prune(obs.t)
        confirmed = self._presence.update(obs.faces, obs.t, s.presence_confirm_s)
        if confirmed and self._presence_first_t is None:
            self._presence_first_t = obs.t
        if confirmed and obs.faces == 0:
            # Nobody to describe: forget the per-face state so a returning user starts fresh.
            self._smoothed, self._expression, self._expr_candidate = None, None, None
            self._gaze.reset()
            self._head.reset()
            self._eyes.reset()
        if obs.faces > 0:
            self._update_expression(obs)
            if obs.gaze is not None:
                self._gaze.update(obs.gaze, obs.t, s.gaze_away_s if obs.gaze == "away" else s.gaze_back_s)
                if self._gaze.state == "camera" and self._reported.get("gaze") == "away":
                    self._last_away_s = self._gaze.state_since - self._away_since()
            if obs.yaw is not None or obs.pitch is not None:
                turned = self._head_turned(obs)
                self._head.update(turned, obs.t, s.head_away_s if turned else s.gaze_back_s)
            if obs.eyes_closed is not None:
                self._eyes.update(obs.eyes_closed, obs.t, s.eyes_closed_s if obs.eyes_closed else 0.0)
        return self._maybe_emit(obs.t, now)

    def observe_voice(self, obs: VoiceObservation, now: float | None = None) -> list[PerceptionEvent]:
        """Take one utterance's (or partial's) voice states; `now` as in `observe_face`."""
        if self._voice is not None and obs.t_end < self._voice.t_end:
            return []
        s = self.settings
        self._voice = obs
        self._voice_history.append(obs)
        self._prune(obs.t_end)
        if obs.arousal is not None:
            self._arousal = _band(obs.arousal, s.arousal_edges, s.band_margin, self._arousal)
        if obs.hesitancy is not None:
            self._hesitancy = _band(obs.hesitancy, (s.hesitancy_edge,), s.band_margin * 2, self._hesitancy)
        if (obs.arousal is not None or obs.hesitancy is not None) and obs.t_end - obs.t_start >= s.baseline_voice_s:
            self._voice_confident = True
        return self._maybe_emit(obs.t_end, now)

    def poll(self, t: float, now: float | None = None) -> list[PerceptionEvent]:
        """Emit a change that the rate limit held back, if its time has come (no new input needed)."""
        return self._maybe_emit(t, now)

    def snapshot(self) -> PerceptionSnapshot:
        face, voice = self._face, self._voice
        head: dict[str, float] | None = None
        if face is not None and face.faces > 0 and face.yaw is not None:
            head = {"yaw": face.yaw, "pitch": face.pitch or 0.0, "roll": face.roll or 0.0}
        voice_scores: dict[str, float] | None = None
        if voice is not None:
            voice_scores = {
                k: float(v) for k in (*VOICE_STATES, "pitch_hz", "rate_sps") if (v := getattr(voice, k)) is not None
            }
        return PerceptionSnapshot(
            t=self._newest_t(),
            faces=self._presence.state if isinstance(self._presence.state, int) else None,
            emotion=dict(self._smoothed) if self._smoothed is not None else None,
            gaze=face.gaze if face is not None and face.faces > 0 else None,
            head_pose=head,
            voice=voice_scores,
        )

    # ---- state updates ----------------------------------------------------------------------------------

    def _prune(self, t: float) -> None:
        horizon = t - self.settings.history_s
        while self._faces_history and self._faces_history[0].t < horizon:
            self._faces_history.popleft()
        while self._voice_history and self._voice_history[0].t_end < horizon:
            self._voice_history.popleft()

    def _away_since(self) -> float:
        # The start of the latest run of "away" frames: scan back from the frame that ended it.
        start = self._gaze.state_since
        for obs in reversed(self._faces_history):
            if obs.t >= self._gaze.state_since:
                continue
            if obs.gaze == "away":
                start = obs.t
            elif obs.gaze == "camera":
                break
        return start

    def _head_turned(self, obs: FaceObservation) -> bool:
        s = self.settings
        yaw, pitch = abs(obs.yaw or 0.0), abs(obs.pitch or 0.0)
        if self._head.state is True:  # hysteresis: coming back needs a smaller angle than going away
            return yaw > s.head_back_yaw_deg or pitch > s.head_back_pitch_deg
        return yaw > s.head_away_yaw_deg or pitch > s.head_away_pitch_deg

    def _update_expression(self, obs: FaceObservation) -> None:
        if obs.emotion is None:
            return
        s = self.settings
        if self._smoothed is None:
            self._smoothed = dict(obs.emotion)
        else:
            alpha = 1.0 - math.exp(-max(0.0, obs.t - self._smoothed_t) / s.emotion_tau_s)
            self._smoothed = {e: (1 - alpha) * self._smoothed[e] + alpha * obs.emotion[e] for e in EMOTIONS}
        self._smoothed_t = obs.t
        smoothed = self._smoothed
        top = max(EMOTIONS, key=lambda e: smoothed[e])
        floor = s.expression_min_prob
        if self._expression is not None:
            floor = max(floor, smoothed[self._expression] + s.expression_margin)
        if top == self._expression or smoothed[top] < floor:
            self._expr_candidate = None
            return
        if top != self._expr_candidate:
            self._expr_candidate, self._expr_candidate_since = top, obs.t
        if obs.t - self._expr_candidate_since >= s.expression_dwell_s:
            self._expression, self._expr_candidate = top, None

    # ---- emission ---------------------------------------------------------------------------------------

    def _stable(self) -> dict[str, object]:
        present = isinstance(self._presence.state, int) and self._presence.state > 0
        return {
            "presence": self._presence.state,
            "head_turned": self._head.state if present else None,
            "gaze": self._gaze.state if present else None,
            "eyes_closed_long": self._eyes.state if present else None,
            "expression": self._expression if present else None,
            "arousal": None if self._arousal is None else _AROUSAL_LEVELS[self._arousal],
            "hesitancy": None if self._hesitancy is None else _HESITANCY_LEVELS[self._hesitancy],
        }

    def _newest_t(self) -> float:
        times = [self._face.t] if self._face is not None else []
        if self._voice is not None:
            times.append(self._voice.t_end)
        return max(times, default=0.0)

    def _baseline_ready(self, modality: str, t: float) -> bool:
        """Whether the first confident reading of `modality` is in (its baseline event may go out)."""
        if modality == "audio":
            return self._voice_confident
        faces = self._presence.state
        if not isinstance(faces, int):
            return False
        if faces == 0 or self._presence_first_t is None:
            return True
        if t - self._presence_first_t >= self.settings.baseline_wait_s:
            return True  # an expression that never settles (an ambiguous face) does not hold the baseline forever
        settling = (self._smoothed is not None and self._expression is None) or any(
            d.state is None and d.candidate is not None for d in (self._gaze, self._head, self._eyes)
        )
        return not settling

    def _maybe_emit(self, t: float, now: float | None) -> list[PerceptionEvent]:
        stable = self._stable()
        changes: list[str] = []
        for aspect, new in stable.items():
            old = self._reported.get(aspect)
            if new == old or _ASPECT_MODALITY[aspect] not in self._baselined:
                continue  # unchanged, or held until the modality's baseline
            if new is None or (old is None and new == _DEFAULTS.get(aspect)):
                self._reported[aspect] = new  # to/from "unknown" quietly: presence events cover the face
                continue
            changes.append(aspect)
        baseline = [m for m in _MODALITIES if m not in self._baselined and self._baseline_ready(m, t)]
        changes += [a for a, v in stable.items() if _ASPECT_MODALITY[a] in baseline and v is not None]
        if not changes:
            return []
        last = self._last_emit_t
        if "presence" not in changes and last is not None and t - last < self.settings.min_interval_s:
            return []
        event = self._event(t, now, changes, stable, baseline)
        self._baselined.update(baseline)
        self._reported.update({a: v for a, v in stable.items() if _ASPECT_MODALITY[a] in self._baselined})
        self._last_emit_t = t
        return [event]

    def _baseline_predicates(self, modality: str, stable: Mapping[str, object], t: float) -> list[str]:
        """What the baseline says of a modality: its notable states, or else the calm defaults it found."""
        aspects = [a for a in _ASPECT_MODALITY if _ASPECT_MODALITY[a] == modality and a != "presence"]
        notable = [
            self._predicate(a, None, stable[a], t)
            for a in aspects
            if stable[a] is not None and stable[a] != _DEFAULTS.get(a)
        ]
        return notable or [_BASELINE_PRED[a][stable[a]] for a in aspects if stable[a] in _BASELINE_PRED.get(a, {})]

    def _predicate(self, aspect: str, old: object, new: object, t: float) -> str:
        if aspect == "expression":
            return f"now {_EXPRESSION_PRED['neutral']}" if new == "neutral" else _EXPRESSION_PRED[str(new)]
        if aspect == "gaze":
            if new == "away":
                return f"has been looking away for {_seconds(t - self._away_since())}"
            return f"looked away for {_seconds(self._last_away_s)} and is looking at the camera again"
        if aspect == "head_turned":
            return "has turned their head away from the camera" if new else "has turned back toward the camera"
        if aspect == "eyes_closed_long":
            if new:
                return f"has had their eyes closed for {_seconds(t - self._eyes.state_since)} and may be drowsy"
            return "has opened their eyes again"
        if aspect == "arousal":
            if new == "high":
                return "sounds animated"
            if new == "low":
                return "sounds subdued"
            return "sounds calmer" if old == "high" else "sounds more energetic"
        if aspect == "hesitancy":
            return "sounds hesitant" if new == "hesitant" else "sounds more sure of themselves"
        raise AssertionError(aspect)

    def _context(self, modalities: set[str], stable: Mapping[str, object], t: float) -> tuple[str, str] | None:
        """One current, notable state of the other modality, so a one-sided change reads in context."""
        if modalities == {"audio"} and "visual" in self._baselined:
            if stable.get("gaze") == "away":
                return "visual", "is looking away"
            if stable.get("head_turned") is True:
                return "visual", "has their head turned away"
            expr = stable.get("expression")
            if isinstance(expr, str) and expr != "neutral":
                return "visual", _EXPRESSION_PRED[expr]
        if (
            modalities == {"visual"}
            and "audio" in self._baselined
            and self._voice is not None
            and t - self._voice.t_end <= self.settings.voice_context_s
        ):
            if stable.get("hesitancy") == "hesitant":
                return "audio", "sounds hesitant"
            if stable.get("arousal") == "high":
                return "audio", "sounds animated"
            if stable.get("arousal") == "low":
                return "audio", "sounds subdued"
        return None

    def _event(
        self, t: float, now: float | None, changes: list[str], stable: Mapping[str, object], baseline: list[str]
    ) -> PerceptionEvent:
        order = ("presence", "head_turned", "gaze", "eyes_closed_long", "expression", "arousal", "hesitancy")
        changes = sorted(changes, key=order.index)
        modalities = {_ASPECT_MODALITY[a] for a in changes}
        preds: list[str] = []
        for m in _MODALITIES:
            if m in baseline:
                preds += self._baseline_predicates(m, stable, t)
            else:
                preds += [
                    self._predicate(a, self._reported.get(a), stable[a], t)
                    for a in changes
                    if a != "presence" and _ASPECT_MODALITY[a] == m
                ]
        faces = stable["presence"]
        if (context := self._context(modalities, stable, t)) is not None and faces != 0:
            modalities.add(context[0])
            preds.append(context[1])
        text = self._sentence(changes, faces, preds)

        face = self._face if self._face is not None and self._face.faces > 0 else None
        voice = self._voice
        arrivals = [o.arrived for o in (self._face, voice) if o is not None]
        emit = max(arrivals) if now is None else now
        modality = "fused" if len(modalities) > 1 else next(iter(modalities))
        return PerceptionEvent(
            t=round(self._newest_t(), 3),
            modality=modality,
            text=text,
            faces=faces if isinstance(faces, int) else None,
            emotion={e: round(p, 3) for e, p in self._smoothed.items()} if self._smoothed and face else None,
            head_pose=(
                HeadPose(yaw=_r(face.yaw, 1), pitch=_r(face.pitch, 1), roll=_r(face.roll, 1))
                if face is not None and face.yaw is not None
                else None
            ),
            # Before the gaze is confirmed (the first few frames), the latest frame's reading is the best we have.
            gaze=_opt_str(stable["gaze"] if stable["gaze"] is not None or face is None else face.gaze),
            voice=(
                VoiceReading(
                    arousal=_r(voice.arousal),
                    hesitancy=_r(voice.hesitancy),
                    pitch_hz=_r(voice.pitch_hz, 1),
                    rate_sps=_r(voice.rate_sps, 2),
                    uncertainty=_r(voice.uncertainty),
                    tension=_r(voice.tension),
                    flatness=_r(voice.flatness),
                )
                if voice is not None
                else None
            ),
            latency_ms=round(max(0.0, emit - max(arrivals)) * 1000.0, 1) if arrivals else 0.0,
            # Extra fields: what changed (or was first read), and the discrete states the sentence was built from.
            changes=tuple(changes),
            baseline=tuple(baseline),
            expression=_opt_str(stable["expression"]),
            head_turned=_opt_bool(stable["head_turned"]),
            eyes_closed_long=_opt_bool(stable["eyes_closed_long"]),
            arousal_band=_opt_str(stable["arousal"]),
            hesitancy_band=_opt_str(stable["hesitancy"]),
            mouth_open=_r(face.mouth_open) if face is not None else None,
        )

    def _sentence(self, changes: Sequence[str], faces: object, preds: list[str]) -> str:
        if "presence" not in changes or not isinstance(faces, int):
            return f"The user {_join(preds)}."
        old = self._reported.get("presence")
        before = old if isinstance(old, int) else 0
        if faces == 0:
            if old is None:  # the visual baseline: nobody there from the start
                return f"Nobody is in view, and the user {_join(preds)}." if preds else "Nobody is in view."
            if not preds:
                return "Everyone has left the frame." if before >= 2 else "The user has left the frame."
            if before >= 2:
                return f"Everyone has left the frame, and the user {_join(preds)}."
            return f"The user has left the frame and {_join(preds)}."
        if faces == 1:
            if before >= 2:
                head = "The other person has left and only the user is in view"
                return f"{head}, and the user {_join(preds)}." if preds else f"{head}."
            arrived = "has come back into view" if self._ever_present else "is in view"
            self._ever_present = True
            return f"The user {_join([arrived, *preds])}."
        self._ever_present = True
        if faces == 2 and before == 1:
            head = "A second person has appeared"
        else:
            head = f"{_people(faces).capitalize()} people are in view"
        return f"{head}, and the user {_join(preds)}." if preds else f"{head}."

    # ---- utterance summary ------------------------------------------------------------------------------

    def end_turn(
        self, t_start: float, t_end: float, transcript: str | None = None, now: float | None = None
    ) -> UtteranceSummary:
        """Describe the user's turn [t_start, t_end] (stream time): its arc, and cues that disagree."""
        t_start, t_end = _time("t_start", t_start), _time("t_end", t_end)
        if t_end <= t_start:
            raise BadPerceptionInput(f"a turn must end after it starts (start {t_start}, end {t_end})")
        faces = [o for o in self._faces_history if t_start <= o.t <= t_end]
        voices = [o for o in self._voice_history if o.t_start < t_end and o.t_end > t_start]
        arc = _arc(t_start, t_end, faces, voices)
        cues = _turn_cues(faces, voices)
        tone, word = _transcript_tone(transcript)
        disagreements = _disagreements(tone, word, cues)
        text = _arc_text(arc)
        if disagreements:
            text += f" They {disagreements[0]}."
        arrivals = [o.arrived for o in faces] + [o.arrived for o in voices]
        emit = max(arrivals, default=0.0) if now is None else now
        modalities = {m for m, obs in (("visual", faces), ("audio", voices)) if obs}
        face_emotion = _mean_emotion([o.emotion for o in faces if o.emotion is not None])
        return UtteranceSummary(
            t=round(t_end, 3),
            start=round(t_start, 3),
            end=round(t_end, 3),
            text=text,
            arc=tuple(arc),
            disagreement=bool(disagreements),
            disagreements=tuple(disagreements),
            modality=("fused" if len(modalities) > 1 else next(iter(modalities))) if modalities else None,
            faces=max((o.faces for o in faces), default=None),
            emotion={e: round(p, 3) for e, p in face_emotion.items()} if face_emotion else None,
            gaze_away_fraction=_r(cues.away_fraction),
            voice={k: _r(v) for k, v in cues.voice.items()} or None,
            transcript_tone=tone,
            latency_ms=round(max(0.0, emit - max(arrivals)) * 1000.0, 1) if arrivals else 0.0,
        )


# ---- utterance summary helpers (module level: pure functions of the observations) -----------------------

_ARC_CHANGE: dict[str, str] = {
    "calm": "calmed down",
    "tense": "grew tense",
    "hesitant": "became hesitant",
    "downcast": "became downcast",
    "uneasy": "grew uneasy",
    "flat": "went flat",
    "cheerful": "brightened",
    "animated": "grew animated",
    "looking away": "started looking away",
}
# An interpretation the system note may add, always hedged ("may"): never a diagnosis.
_ARC_READING: dict[str, str] = {
    "tense": "they may be frustrated",
    "hesitant": "they may be unsure",
    "downcast": "they may be upset",
    "uneasy": "they may be worried",
    "flat": "they may be tired or disengaged",
    "looking away": "they may be distracted",
}


def _mean_emotion(dists: Sequence[Mapping[str, float] | None]) -> dict[str, float] | None:
    present = [d for d in dists if d is not None]
    if not present:
        return None
    return {e: sum(d.get(e, 0.0) for d in present) / len(present) for e in EMOTIONS}


def _dominant(dist: Mapping[str, float] | None, floor: float = 0.4) -> str | None:
    if not dist:
        return None
    top = max(EMOTIONS, key=lambda e: dist.get(e, 0.0))
    return top if dist.get(top, 0.0) >= floor else None


def _mood(voice: VoiceObservation | None, faces: Sequence[FaceObservation]) -> str | None:
    """One word for the user's state in a slice of the turn; None when there is nothing to go on."""
    seen = [o for o in faces if o.faces > 0]
    face_dom = _dominant(_mean_emotion([o.emotion for o in seen]))
    gazes = [o.gaze for o in seen if o.gaze is not None]
    away = sum(g == "away" for g in gazes) / len(gazes) if gazes else 0.0

    def v(name: str) -> float:
        value = getattr(voice, name) if voice is not None else None
        return float(value) if value is not None else 0.0

    voice_dom = _dominant(voice.emotion if voice is not None else None, 0.5)
    if v("tension") >= 0.6 or face_dom in ("anger", "disgust", "contempt") or voice_dom == "anger":
        return "tense"
    if max(v("hesitancy"), v("uncertainty")) >= 0.6:
        return "hesitant"
    if face_dom == "sadness" or voice_dom == "sadness":
        return "downcast"
    if face_dom == "fear" or voice_dom == "fear":
        return "uneasy"
    if v("flatness") >= 0.6:
        return "flat"
    if face_dom == "happiness" or voice_dom == "happiness":
        return "cheerful"
    if v("arousal") >= 0.65:
        return "animated"
    if away >= 0.6:
        return "looking away"
    return "calm" if voice is not None or seen else None


def _arc(
    t_start: float, t_end: float, faces: Sequence[FaceObservation], voices: Sequence[VoiceObservation]
) -> list[ArcSegment]:
    duration = t_end - t_start
    # About one-second slices (finer for short turns, at most 12 for long ones): enough to place a change.
    width = duration / 12.0 if duration > 12.0 else min(1.0, max(0.25, duration / 4.0))
    n = max(1, math.ceil(duration / width - 1e-9))
    labels: list[str | None] = []
    for i in range(n):
        lo, hi = t_start + i * width, min(t_end, t_start + (i + 1) * width)
        in_bin = [o for o in faces if lo <= o.t < hi or (i == n - 1 and o.t == hi)]
        overlapping = [o for o in voices if o.t_start < hi and o.t_end > lo]
        # The most local voice window describes this slice best; ties go to the later one.
        voice = min(overlapping, key=lambda o: (o.t_end - o.t_start, -o.t_end)) if overlapping else None
        labels.append(_mood(voice, in_bin))
    # Slices with nothing to go on take the previous state (or the next one at the start).
    known = [lab for lab in labels if lab is not None]
    if not known:
        return []
    filled: list[str] = []
    for lab in labels:
        filled.append(lab if lab is not None else (filled[-1] if filled else known[0]))
    # A one-slice blip between two equal states is noise, not a change of mood.
    for i in range(1, len(filled) - 1):
        if filled[i - 1] == filled[i + 1] != filled[i]:
            filled[i] = filled[i - 1]
    segments: list[ArcSegment] = []
    for i, lab in enumerate(filled):
        lo, hi = round(i * width, 3), round(min(duration, (i + 1) * width), 3)
        if segments and segments[-1].state == lab:
            segments[-1] = ArcSegment(from_s=segments[-1].from_s, to_s=hi, state=lab)
        else:
            segments.append(ArcSegment(from_s=lo, to_s=hi, state=lab))
    return segments


def _arc_phrase(arc: Sequence[ArcSegment], with_times: bool) -> str:
    """The arc as "started calm, grew tense around 4 s and ended hesitant" (times optional)."""
    if len(arc) == 1:
        state = arc[0].state
        return "was looking away throughout" if state == "looking away" else f"seemed {state} throughout"
    parts = [f"started {arc[0].state}"]
    middle = list(arc[1:-1])
    if len(middle) > 2:  # keep the two longest middle states: a summary is not a log
        keep = sorted(middle, key=lambda s: s.to_s - s.from_s, reverse=True)[:2]
        middle = [s for s in middle if s in keep]
    for seg in [*middle, arc[-1]] if len(arc) == 2 else middle:
        when = f" around {round(seg.from_s)} s" if with_times else ""
        parts.append(f"{_ARC_CHANGE[seg.state]}{when}")
    if len(arc) > 2:
        parts.append(f"ended {arc[-1].state}")
    return _join(parts)


def _arc_text(arc: Sequence[ArcSegment]) -> str:
    if not arc:
        return "There were no voice or camera cues during this turn."
    return f"Over this turn the user {_arc_phrase(arc, with_times=True)}."


@dataclass(frozen=True)
class _Cues:
    voice: dict[str, float] = field(default_factory=dict)  # duration-weighted means over the turn
    away_fraction: float | None = None
    negative: tuple[str, ...] = ()  # past-tense phrases: "sounded flat", "looked away"
    positive_face: bool = False
    positive_voice: bool = False
    negative_voice: tuple[str, ...] = ()
    negative_face: tuple[str, ...] = ()


def _turn_cues(faces: Sequence[FaceObservation], voices: Sequence[VoiceObservation]) -> _Cues:
    means: dict[str, float] = {}
    for name in VOICE_STATES:
        pairs = [(getattr(o, name), max(o.t_end - o.t_start, 0.05)) for o in voices if getattr(o, name) is not None]
        if pairs:
            means[name] = sum(v * w for v, w in pairs) / sum(w for _, w in pairs)
    voice_emotion = _dominant(_mean_emotion([o.emotion for o in voices]), 0.5)
    neg_voice = [
        phrase
        for name, phrase in (
            ("flatness", "sounded flat"),
            ("tension", "sounded tense"),
            ("hesitancy", "sounded hesitant"),
        )
        if means.get(name, 0.0) >= 0.6
    ]
    if voice_emotion in NEGATIVE_EMOTIONS:
        neg_voice.append(f"sounded {'sad' if voice_emotion == 'sadness' else 'upset'}")
    seen = [o for o in faces if o.faces > 0]
    gazes = [o.gaze for o in seen if o.gaze is not None]
    away = sum(g == "away" for g in gazes) / len(gazes) if gazes else None
    face_dom = _dominant(_mean_emotion([o.emotion for o in seen]))
    neg_face = [_EXPRESSION_PAST[face_dom]] if face_dom in NEGATIVE_EMOTIONS else []
    if away is not None and away >= 0.5:
        neg_face.append("looked away")
    return _Cues(
        voice=means,
        away_fraction=away,
        negative=(*neg_voice, *neg_face),
        positive_face=face_dom == "happiness",
        positive_voice=voice_emotion == "happiness",
        negative_voice=tuple(neg_voice),
        negative_face=tuple(neg_face),
    )


_POSITIVE_WORDS = frozenset(
    "fine good great okay ok sure yes yeah happy alright love perfect excellent wonderful glad amazing awesome "
    "nice cool brilliant fantastic".split()
)
_NEGATIVE_WORDS = frozenset(
    "bad terrible awful sad upset angry hate horrible worse worst annoyed frustrated tired wrong problem "
    "unhappy miserable".split()
)
_NEGATORS = frozenset("not no never hardly barely".split())


def _transcript_tone(transcript: str | None) -> tuple[str | None, str | None]:
    """("positive"|"negative"|None, the word that set it): a small lexicon, with "not"/"n't" flipping it."""
    if not transcript:
        return None, None
    words = re.findall(r"[a-z']+", transcript.lower())
    score, first = 0, {1: "", -1: ""}
    for i, word in enumerate(words):
        polarity = 1 if word in _POSITIVE_WORDS else -1 if word in _NEGATIVE_WORDS else 0
        if not polarity:
            continue
        quote = word
        negated = [j for j in range(max(0, i - 2), i) if words[j] in _NEGATORS or words[j].endswith("n't")]
        if negated:
            polarity = -polarity
            quote = " ".join(words[negated[0] : i + 1])  # quote "not fine", not "fine"
        score += polarity
        first[polarity] = first[polarity] or quote
    if score > 0:
        return "positive", first[1]
    if score < 0:
        return "negative", first[-1]
    return None, None


def _disagreements(tone: str | None, word: str | None, cues: _Cues) -> list[str]:
    """Phrases (subject "they") where words, voice and face point different ways."""
    out: list[str] = []
    if tone == "positive" and cues.negative:
        out.append(f"said '{word}' but {_join(list(cues.negative))}")
    elif tone == "negative" and (cues.positive_face or cues.positive_voice):
        out.append(f"said '{word}' but {'smiled' if cues.positive_face else 'sounded cheerful'}")
    if cues.positive_face and cues.negative_voice:
        out.append(f"smiled but {_join(list(cues.negative_voice))}")
    elif cues.positive_voice and cues.negative_face:
        out.append(f"sounded cheerful but {_join(list(cues.negative_face))}")
    return out


# ---- the LLM's system note ------------------------------------------------------------------------------


def _note_from_state(event: PerceptionEvent) -> tuple[str, set[str]] | None:
    """A clause about the user's current state from a perception event's structured fields (not its text)."""
    faces = event.faces
    sources: set[str] = set()
    preds: list[str] = []
    reading: str | None = None
    voice = event.voice
    if voice is not None:
        hes, aro = voice.hesitancy, voice.arousal
        if hes is not None and hes >= 0.6:
            preds.append("sounds hesitant")
        if aro is not None and aro >= 0.7:
            preds.append("sounds animated")
        elif aro is not None and aro <= 0.3:
            preds.append("sounds subdued")
        if preds:
            sources.add("voice")
    n_voice = len(preds)
    expression = event.expression if event.expression is not None else _dominant(event.emotion, 0.5)
    if expression is not None and expression != "neutral" and expression in _EXPRESSION_PRED:
        preds.append(_EXPRESSION_PRED[expression].replace("is smiling", "smiles"))
    if event.gaze == "away":
        preds.append("looks away")
    elif event.head_turned is True:
        preds.append("has turned away from the camera")
    if event.eyes_closed_long is True:
        preds.append("has had their eyes closed for a while")
        reading = "they may be tired"
    if len(preds) > n_voice:
        sources.add("camera")
    if "sounds hesitant" in preds:
        reading = "they may be unsure"
    elif expression in ("anger", "disgust", "contempt"):
        reading = "they may be frustrated"
    elif expression in ("sadness", "fear"):
        reading = "they may be upset"
    if faces == 0:
        return "Nobody is in view of the camera right now", {"camera"}
    subject = "The user"
    if faces is not None and faces >= 2:
        subject = f"{_people(faces).capitalize()} people are in view, and the user"
        sources.add("camera")
        if not preds:
            return f"{_people(faces).capitalize()} people are in view of the camera", sources
    if not preds:
        return None
    clause = f"{subject} {_join(preds)}"
    return (f"{clause}; {reading}" if reading else clause), sources


def system_note(events: Iterable[Event]) -> str:
    """The marked note for the LLM context: at most two sentences, no numbers, hedged; "" if nothing to say.

    It describes the newest of the latest `PerceptionEvent` and the latest `UtteranceSummary` in `events`
    (in order; other events are skipped), built from their structured fields so the wording stays short
    whatever the events' texts say.
    """
    latest: PerceptionEvent | UtteranceSummary | None = None
    for event in events:
        if isinstance(event, PerceptionEvent | UtteranceSummary):
            latest = event
    if latest is None:
        return ""
    sources: set[str]
    if isinstance(latest, UtteranceSummary):
        modality = latest.modality
        sources = {"voice", "camera"} if modality == "fused" else {"voice"} if modality == "audio" else {"camera"}
        disagreements = latest.disagreements
        arc = latest.arc
        if disagreements:
            first = disagreements[0]
            if first.startswith("said"):
                sources.add("words")
            sentence = (
                f"The user {first}, so their {'words and manner' if first.startswith('said') else 'face and voice'}"
            )
            sentence += " may not match"
        elif arc:
            sentence = f"Over their last turn the user {_arc_phrase(arc, with_times=False)}"
            reading = _ARC_READING.get(arc[-1].state)
            sentence += f"; {reading}" if reading else ""
        else:
            return ""
    else:
        found = _note_from_state(latest)
        if found is None:
            return ""
        sentence, sources = found
    where = _join([s for s in ("words", "voice", "camera") if s in sources]) or "voice and camera"
    return f"[perception] {sentence}. This is an observation from {where} cues and may be wrong."
