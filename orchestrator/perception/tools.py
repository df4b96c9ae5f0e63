"""Perception tools: persona-declared conditions on the user's state that fire `perception_tool_call` events.

A persona declares them in YAML::

    perception_tools:
      - {name: user_distressed, when: "emotion in [sadness, fear] >= 0.6 for 2s"}
      - {name: second_person, when: "faces >= 2"}
      - {name: user_left, when: "faces == 0 for 3s", rearm_s: 10}

The condition language is deliberately tiny and parsed by hand (never `eval`)::

    condition  := clause ("and" clause)*
    clause     := subject OP value ["for" DURATION]
    subject    := "faces" | "gaze" | "emotion." EMOTION | "emotion" "in" "[" EMOTION ("," EMOTION)* "]"
                | "voice." (arousal|hesitancy|uncertainty|tension|flatness|pitch_hz|rate_sps)
                | "head_pose." (yaw|pitch|roll) | "abs(" "head_pose." (yaw|pitch|roll) ")"
    OP         := ">=" | "<=" | ">" | "<" | "==" | "!="
    value      := NUMBER | "camera" | "away"          (gaze takes only == / != with camera|away)
    DURATION   := NUMBER ("s" | "ms")                 ("2s", "2 s", "500ms")

`emotion in [a, b]` is the summed probability of those classes. Values are read from the fuser's
`PerceptionSnapshot` (confirmed face count, smoothed emotions, latest gaze/head pose/voice scores); an unknown
value (no face, no voice yet) never satisfies a clause. `for` needs the clause to hold continuously, tolerating
gaps up to `grace_s` (a dropped or misclassified frame). A tool fires once per onset of its whole condition and
re-arms only after the condition has been false for `rearm_s` (default 1 s), so a flickering state does not
fire it again and again.

Not supported: anything about objects in view ("user holds up a document"). That needs an object detector,
which Duet does not have offline; such conditions are rejected with `UnsupportedPerceptionCondition` rather
than silently never firing.

Errors (all defined here): `BadPerceptionCondition` (code "bad_perception_condition"; carries `position`, the
0-based character offset of the problem), its subclass `UnsupportedPerceptionCondition` (code
"unsupported_perception_condition"), and `BadPerceptionTool` (code "bad_perception_tool") for a malformed
declaration (missing name, duplicate name, unknown keys).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import DuetError
from orchestrator.events import PerceptionToolCall
from orchestrator.perception.fusion import EMOTIONS, GAZES, PerceptionSnapshot


class BadPerceptionCondition(DuetError):
    """A perception tool condition that does not parse; `position` is where (0-based character offset)."""

    code = "bad_perception_condition"

    def __init__(self, problem: str, condition: str, position: int) -> None:
        super().__init__(f"{problem} at position {position} in perception condition {condition!r}")
        self.problem = problem
        self.condition = condition
        self.position = position


class UnsupportedPerceptionCondition(BadPerceptionCondition):
    """A condition about something Duet cannot perceive offline (objects in view)."""

    code = "unsupported_perception_condition"


class BadPerceptionTool(DuetError):
    """A malformed `perception_tools` declaration in a persona."""

    code = "bad_perception_tool"


VOICE_FIELDS: tuple[str, ...] = ("arousal", "hesitancy", "uncertainty", "tension", "flatness", "pitch_hz", "rate_sps")
POSE_AXES: tuple[str, ...] = ("yaw", "pitch", "roll")
_UNIT_FIELDS = frozenset({"arousal", "hesitancy", "uncertainty", "tension", "flatness"})
SUPPORTED = (
    "faces, gaze (camera|away), emotion.<class>, emotion in [<class>, ...], "
    f"voice.<{'|'.join(VOICE_FIELDS)}>, head_pose.<yaw|pitch|roll>, abs(head_pose.<axis>); "
    "clauses joined with 'and', each optionally 'for <N>s'"
)
# Words that mean the author wants object detection: say why it is unsupported instead of "unknown subject".
_OBJECT_WORDS = ("object", "document", "paper", "hold", "holding", "hand", "phone", "card", "item", "book", "id")
_MAX_LEN = 400
_MAX_CLAUSES = 8
_TOOL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TOOL_KEYS = frozenset({"name", "when", "rearm_s"})

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    | (?P<num>-?(?:\d+(?:\.\d*)?|\.\d+))(?P<unit>ms|s)?(?![A-Za-z0-9_.])
    | (?P<op>>=|<=|==|!=|>|<)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<punct>[\[\](),])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "num", "op", "name", "punct", "end"
    text: str
    pos: int
    unit: str | None = None


def _tokens(condition: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(condition):
        m = _TOKEN.match(condition, pos)
        if m is None:
            raise BadPerceptionCondition(f"unexpected character {condition[pos]!r}", condition, pos)
        kind = m.lastgroup if m.lastgroup != "unit" else "num"
        if kind != "ws":
            text = m.group("num") if kind == "num" else m.group(0)
            out.append(_Token(str(kind), text, pos, m.group("unit") if kind == "num" else None))
        pos = m.end()
    out.append(_Token("end", "", len(condition)))
    return out


@dataclass(frozen=True)
class Subject:
    """What a clause reads from the snapshot: `kind` is faces|gaze|emotion|voice|head_pose."""

    kind: str
    keys: tuple[str, ...] = ()
    absolute: bool = False

    @property
    def label(self) -> str:
        if self.kind == "emotion" and len(self.keys) > 1:
            return f"emotion in [{', '.join(self.keys)}]"
        name = ".".join((self.kind, *self.keys))
        return f"abs({name})" if self.absolute else name

    def read(self, snap: PerceptionSnapshot) -> float | str | None:
        if self.kind == "faces":
            return float(snap.faces) if snap.faces is not None else None
        if self.kind == "gaze":
            return snap.gaze
        if self.kind == "emotion":
            return sum(snap.emotion.get(k, 0.0) for k in self.keys) if snap.emotion is not None else None
        source = snap.voice if self.kind == "voice" else snap.head_pose
        value = source.get(self.keys[0]) if source is not None else None
        if value is None:
            return None
        return abs(value) if self.absolute else float(value)


@dataclass(frozen=True)
class Clause:
    subject: Subject
    op: str
    value: float | str
    for_s: float
    text: str  # the clause as written, for evidence and errors

    def holds(self, value: float | str | None) -> bool:
        if value is None:
            return False  # unknown is never evidence, not even for "!="
        if isinstance(self.value, str) or isinstance(value, str):
            return (value == self.value) == (self.op == "==")
        ops = {
            ">=": value >= self.value,
            "<=": value <= self.value,
            ">": value > self.value,
            "<": value < self.value,
            "==": math.isclose(value, self.value, abs_tol=1e-9),
            "!=": not math.isclose(value, self.value, abs_tol=1e-9),
        }
        return ops[self.op]


@dataclass(frozen=True)
class Condition:
    text: str
    clauses: tuple[Clause, ...]


class _Parser:
    def __init__(self, condition: str) -> None:
        self.src = condition
        self.toks = _tokens(condition)
        self.i = 0

    def peek(self) -> _Token:
        return self.toks[self.i]

    def next(self) -> _Token:
        tok = self.toks[self.i]
        self.i = min(self.i + 1, len(self.toks) - 1)
        return tok

    def fail(self, problem: str, tok: _Token) -> BadPerceptionCondition:
        return BadPerceptionCondition(problem, self.src, tok.pos)

    def expect(self, kind: str, text: str | None, what: str) -> _Token:
        tok = self.next()
        if tok.kind != kind or (text is not None and tok.text != text):
            found = "the end" if tok.kind == "end" else repr(tok.text)
            raise self.fail(f"expected {what}, found {found}", tok)
        return tok

    def condition(self) -> Condition:
        clauses = [self.clause()]
        while self.peek().kind == "name" and self.peek().text == "and":
            self.next()
            clauses.append(self.clause())
            if len(clauses) > _MAX_CLAUSES:
                raise self.fail(f"too many clauses (at most {_MAX_CLAUSES})", self.peek())
        tok = self.peek()
        if tok.kind != "end":
            if tok.kind == "name" and tok.text == "or":
                raise self.fail("'or' is not supported (declare two tools instead)", tok)
            raise self.fail(f"expected 'and' or the end, found {tok.text!r}", tok)
        return Condition(self.src, tuple(clauses))

    def clause(self) -> Clause:
        start = self.peek().pos
        subject = self.subject()
        op = self.expect("op", None, "a comparison (>=, <=, >, <, ==, !=)")
        value_tok = self.next()
        value: float | str
        if subject.kind == "gaze":
            if value_tok.kind != "name" or value_tok.text not in GAZES:
                raise self.fail("gaze compares with 'camera' or 'away'", value_tok)
            if op.text not in ("==", "!="):
                raise self.fail("gaze takes only == or !=", op)
            value = value_tok.text
        else:
            if value_tok.kind != "num" or value_tok.unit is not None:
                raise self.fail(f"{subject.label} compares with a plain number", value_tok)
            value = float(value_tok.text)
            is_score = subject.kind == "emotion" or (subject.kind == "voice" and subject.keys[0] in _UNIT_FIELDS)
            if is_score and not 0.0 <= value <= 1.0:
                raise self.fail(f"{subject.label} is a score in 0..1", value_tok)
        for_s = 0.0
        if self.peek().kind == "name" and self.peek().text == "for":
            self.next()
            for_s = self.duration()
        end = self.toks[self.i - 1]
        text = self.src[start : end.pos + len(end.text) + (len(end.unit) if end.unit else 0)].strip()
        return Clause(subject, op.text, value, for_s, text)

    def duration(self) -> float:
        tok = self.expect("num", None, "a duration like 2s or 500ms")
        unit = tok.unit
        if unit is None and self.peek().kind == "name" and self.peek().text in ("s", "ms"):
            unit = self.next().text
        if unit is None:
            raise self.fail("a duration needs a unit (s or ms)", tok)
        seconds = float(tok.text) / (1000.0 if unit == "ms" else 1.0)
        if not 0.0 < seconds <= 3600.0:
            raise self.fail("a duration must be more than 0 and at most 3600 s", tok)
        return seconds

    def subject(self) -> Subject:
        tok = self.next()
        if tok.kind != "name":
            found = "the end" if tok.kind == "end" else repr(tok.text)
            raise self.fail(f"expected a subject ({SUPPORTED}), found {found}", tok)
        head, _, rest = tok.text.partition(".")
        if tok.text == "abs":
            self.expect("punct", "(", "'('")
            inner = self.subject()
            if inner.kind != "head_pose" or inner.absolute:
                raise self.fail("abs() takes head_pose.<yaw|pitch|roll>", tok)
            self.expect("punct", ")", "')'")
            return Subject("head_pose", inner.keys, absolute=True)
        if tok.text in ("faces", "gaze"):
            return Subject(tok.text)
        if tok.text == "emotion":
            self.expect("name", "in", "'in [' or emotion.<class>")
            self.expect("punct", "[", "'['")
            names = [self.emotion_name()]
            while self.peek().kind == "punct" and self.peek().text == ",":
                self.next()
                names.append(self.emotion_name())
            self.expect("punct", "]", "',' or ']'")
            return Subject("emotion", tuple(dict.fromkeys(names)))
        if head == "emotion":
            if rest not in EMOTIONS:
                raise self.fail(f"unknown emotion {rest!r} (classes: {', '.join(EMOTIONS)})", tok)
            return Subject("emotion", (rest,))
        if head == "voice":
            if rest not in VOICE_FIELDS:
                raise self.fail(f"unknown voice field {rest!r} (fields: {', '.join(VOICE_FIELDS)})", tok)
            return Subject("voice", (rest,))
        if head == "head_pose":
            if rest not in POSE_AXES:
                raise self.fail(f"unknown head_pose axis {rest!r} (axes: yaw, pitch, roll)", tok)
            return Subject("head_pose", (rest,))
        words = re.split(r"[._]", tok.text.lower())
        if any(w.rstrip("s") in _OBJECT_WORDS or w in _OBJECT_WORDS for w in words):
            raise UnsupportedPerceptionCondition(
                f"{tok.text!r} needs an object detector, which Duet does not have offline, so conditions about "
                f"held-up objects or documents are unsupported; supported: {SUPPORTED}",
                self.src,
                tok.pos,
            )
        raise self.fail(f"unknown subject {tok.text!r}; supported: {SUPPORTED}", tok)

    def emotion_name(self) -> str:
        tok = self.expect("name", None, "an emotion class")
        if tok.text not in EMOTIONS:
            raise self.fail(f"unknown emotion {tok.text!r} (classes: {', '.join(EMOTIONS)})", tok)
        return tok.text


def parse_condition(condition: str) -> Condition:
    """Parse a `when` condition; raises `BadPerceptionCondition` (with the position) if it is malformed."""
    if not isinstance(condition, str):
        raise BadPerceptionCondition("a condition must be a string", repr(condition), 0)
    if len(condition) > _MAX_LEN:
        raise BadPerceptionCondition(f"condition longer than {_MAX_LEN} characters", condition[:40] + "...", _MAX_LEN)
    if not condition.strip():
        raise BadPerceptionCondition("empty condition", condition, 0)
    return _Parser(condition).condition()


@dataclass(frozen=True)
class PerceptionTool:
    name: str
    condition: Condition
    rearm_s: float = 1.0

    @property
    def when(self) -> str:
        return self.condition.text


def parse_tools(declarations: object) -> tuple[PerceptionTool, ...]:
    """Validate a persona's `perception_tools` list (as loaded from YAML); None or [] means no tools."""
    if declarations is None:
        return ()
    if not isinstance(declarations, Sequence) or isinstance(declarations, str):
        raise BadPerceptionTool("perception_tools must be a list of {name, when[, rearm_s]} entries")
    tools: list[PerceptionTool] = []
    for i, entry in enumerate(declarations):
        if not isinstance(entry, Mapping):
            raise BadPerceptionTool(f"perception_tools[{i}] must be a mapping with 'name' and 'when'")
        unknown = sorted(str(k) for k in entry if k not in _TOOL_KEYS)
        if unknown:
            raise BadPerceptionTool(f"perception_tools[{i}] has unknown keys {unknown} (allowed: name, when, rearm_s)")
        name, when, rearm = entry.get("name"), entry.get("when"), entry.get("rearm_s", 1.0)
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise BadPerceptionTool(f"perception_tools[{i}].name must be snake_case (a-z, 0-9, _), got {name!r}")
        if any(t.name == name for t in tools):
            raise BadPerceptionTool(f"perception tool {name!r} is declared twice")
        if not isinstance(when, str):
            raise BadPerceptionTool(f"perception tool {name!r} needs a 'when' condition string")
        if isinstance(rearm, bool) or not isinstance(rearm, (int, float)) or not 0.0 <= rearm <= 3600.0:
            raise BadPerceptionTool(f"perception tool {name!r}: rearm_s must be seconds in 0..3600, got {rearm!r}")
        tools.append(PerceptionTool(name, parse_condition(when), float(rearm)))
    return tuple(tools)


@dataclass
class _ClauseState:
    since: float | None = None  # start of the current (grace-tolerant) run of the clause holding
    last_true: float | None = None


@dataclass
class _ToolState:
    clauses: list[_ClauseState]
    armed: bool = True
    unsatisfied_since: float | None = None


class PerceptionTools:
    """Evaluates declared tools against successive snapshots; `update` returns the tool calls to emit."""

    def __init__(self, tools: Sequence[PerceptionTool], grace_s: float = 0.25) -> None:
        self.tools = tuple(tools)
        self.grace_s = grace_s
        self._state = {t.name: _ToolState([_ClauseState() for _ in t.condition.clauses]) for t in self.tools}
        self._last_t: float | None = None

    def update(self, snap: PerceptionSnapshot) -> list[PerceptionToolCall]:
        t = snap.t
        if self._last_t is not None and t < self._last_t:
            return []  # a snapshot from the past cannot start or end a duration
        self._last_t = t
        calls: list[PerceptionToolCall] = []
        for tool in self.tools:
            state = self._state[tool.name]
            values = [c.subject.read(snap) for c in tool.condition.clauses]
            satisfied = True
            for clause, cs, value in zip(tool.condition.clauses, state.clauses, values, strict=True):
                if clause.holds(value):
                    if cs.since is None:
                        cs.since = t
                    cs.last_true = t
                    satisfied = satisfied and t - cs.since >= clause.for_s - 1e-9
                else:
                    if cs.last_true is None or t - cs.last_true > self.grace_s:
                        cs.since = None
                    satisfied = False
            if not satisfied:
                if state.unsatisfied_since is None:
                    state.unsatisfied_since = t
                if not state.armed and t - state.unsatisfied_since >= tool.rearm_s:
                    state.armed = True
                continue
            state.unsatisfied_since = None
            if state.armed:
                state.armed = False
                calls.append(self._call(tool, state, values, snap))
        return calls

    @staticmethod
    def _call(
        tool: PerceptionTool, state: _ToolState, values: Sequence[float | str | None], snap: PerceptionSnapshot
    ) -> PerceptionToolCall:
        evidence: dict[str, Any] = {}
        held: dict[str, float] = {}
        for clause, cs, value in zip(tool.condition.clauses, state.clauses, values, strict=True):
            if clause.subject.kind == "faces" and isinstance(value, float):
                evidence["faces"] = int(value)
            else:
                evidence[clause.subject.label] = round(value, 3) if isinstance(value, float) else value
            if clause.subject.kind == "emotion" and snap.emotion is not None and len(clause.subject.keys) > 1:
                evidence["emotion"] = {k: round(snap.emotion.get(k, 0.0), 3) for k in clause.subject.keys}
            if clause.for_s > 0 and cs.since is not None:
                held[clause.subject.label] = round(snap.t - cs.since, 3)
        if held:
            evidence["held_s"] = held
        return PerceptionToolCall(t=round(snap.t, 3), name=tool.name, when=tool.when, evidence=evidence)
