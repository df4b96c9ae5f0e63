"""Objectives: what a conversation should achieve, in order, and what it must collect on the way.

The body of `POST /v1/objectives`::

    {"objectives": [
      {"name": "get_name", "prompt": "Ask for the caller's full name.", "output_variables": ["full_name"],
       "next_required": ["get_issue"]},
      {"name": "get_issue", "prompt": "Find out what went wrong.", "output_variables": ["issue"],
       "next_conditional": {"refund": "the user asks for their money back"}},
      {"name": "refund", "prompt": "Take the order number.", "confirmation_mode": "manual",
       "output_variables": ["order_number"]}]}

`parse_objectives` checks it (unique names, known successors, no cycles, every objective reachable from the
first) and gives an `ObjectiveGraph`; `Invalid` carries the JSON path of the problem.

`ObjectiveTracker` runs one conversation through the graph. It is pure (no model, no I/O, time given):

- the **active** objectives start as the first one; completing one activates its `next_required` and those of
  its `next_conditional` whose condition the judge said holds (judged once, at completion). An objective
  reached from two parents starts when the first of them completes; a completed objective never restarts;
- the **focus** is the earliest-activated active objective: `steer()` is a short guidance line for the replica
  about it, and `judge_request(turns)` a schema-constrained question about it for a small local model. One
  objective per question keeps the schema small enough for a 0.5B judge; an answer given early for a later
  objective is picked up when that one gets the focus (the judge reads the recent transcript);
- `apply(judgement, t)` records what the judge found. Values collected are kept across questions (a name said
  early still counts after it scrolls out of the judge's window; a newer value replaces it). The objective
  completes only when the judge says `completed`, every output variable has a non-empty value, and, for
  `confirmation_mode: "manual"`, the judge says `confirmed` (the replica read the values back and the user
  agreed);
- `outputs()` is everything collected for the `conversation.ended` webhook; `done` once nothing is active.

`advance(tracker, judge, turns)` is the one-call version (ask the judge about the focus, apply the answer).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from orchestrator.errors import Invalid
from orchestrator.intel.judge import JsonModel, JudgeFailed
from orchestrator.models.ports import ChatMessage

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")  # snake_case-ish: letters, digits, _ and -, up to 64
VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")  # an identifier, up to 64
MAX_OBJECTIVES = 50
MAX_PROMPT_CHARS = 2000
MAX_VARIABLES = 16
MAX_CONDITION_CHARS = 500
VALUE_CHARS = 120  # a collected value the judge may write (a name, an email, an order number)
JUDGE_TURNS = 8  # the judge reads this many of the latest turns
JUDGE_TURN_CHARS = 400  # each cut to this many characters (its end kept)
_KEYS = frozenset({"name", "prompt", "confirmation_mode", "output_variables", "next_required", "next_conditional"})


@dataclass(frozen=True)
class Objective:
    name: str
    prompt: str
    confirmation_mode: Literal["auto", "manual"] = "auto"
    output_variables: tuple[str, ...] = ()
    next_required: tuple[str, ...] = ()
    next_conditional: Mapping[str, str] = field(default_factory=dict)  # objective name -> condition

    @property
    def manual(self) -> bool:
        return self.confirmation_mode == "manual"

    @property
    def successors(self) -> tuple[str, ...]:
        return (*self.next_required, *self.next_conditional)

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prompt": self.prompt,
            "confirmation_mode": self.confirmation_mode,
            "output_variables": list(self.output_variables),
            "next_required": list(self.next_required),
            "next_conditional": dict(self.next_conditional),
        }


@dataclass(frozen=True)
class ObjectiveGraph:
    objectives: tuple[Objective, ...]

    @property
    def start(self) -> Objective:
        return self.objectives[0]

    def __getitem__(self, name: str) -> Objective:
        for o in self.objectives:
            if o.name == name:
                return o
        raise KeyError(name)

    def body(self) -> dict[str, Any]:
        """The objectives as the API shows them (canonical: defaults filled in)."""
        return {"objectives": [o.body() for o in self.objectives]}


# ---- parsing ---------------------------------------------------------------------------------------------


def _names(value: object, path: str, what: str) -> list[Any]:
    """A list field's entries, checked one by one by the caller (None: empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(f"{what} must be a list of names", path)
    return list(value)


def parse_objectives(body: Mapping[str, Any]) -> ObjectiveGraph:
    """Validate an API body (or a stored one); raises `Invalid(message, json_path)`."""
    if not isinstance(body, Mapping):
        raise Invalid("objectives must be a JSON object {objectives: [...]}", "$")
    for key in body:
        if key != "objectives":
            raise Invalid(f"unknown field {key!r} (allowed: objectives)", f"$.{key}")
    items = body.get("objectives")
    if not isinstance(items, list) or not items:
        raise Invalid("objectives must be a non-empty list", "$.objectives")
    if len(items) > MAX_OBJECTIVES:
        raise Invalid(f"at most {MAX_OBJECTIVES} objectives", "$.objectives")
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        base = f"$.objectives[{i}]"
        if not isinstance(item, Mapping):
            raise Invalid("an objective must be an object", base)
        name = item.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise Invalid("name must be 1-64 characters: a letter, then letters, digits, '_' or '-'", f"{base}.name")
        if name in seen:
            raise Invalid(f"objective {name!r} is declared twice (first at $.objectives[{seen[name]}])", f"{base}.name")
        seen[name] = i
    objectives = tuple(_parse_one(item, i, seen) for i, item in enumerate(items))
    graph = ObjectiveGraph(objectives)
    _check_cycles(graph)
    _check_reachable(graph)
    return graph


def _parse_one(item: Mapping[str, Any], i: int, known: Mapping[str, int]) -> Objective:
    base = f"$.objectives[{i}]"
    for key in item:
        if key not in _KEYS:
            raise Invalid(f"unknown field {key!r} (allowed: {', '.join(sorted(_KEYS))})", f"{base}.{key}")
    name = str(item["name"])
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Invalid("prompt must be a non-empty string", f"{base}.prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise Invalid(f"prompt is longer than {MAX_PROMPT_CHARS} characters", f"{base}.prompt")
    mode = item.get("confirmation_mode", "auto")
    if mode not in ("auto", "manual"):
        raise Invalid("confirmation_mode must be 'auto' or 'manual'", f"{base}.confirmation_mode")

    variables = _names(item.get("output_variables"), f"{base}.output_variables", "output_variables")
    if len(variables) > MAX_VARIABLES:
        raise Invalid(f"at most {MAX_VARIABLES} output variables", f"{base}.output_variables")
    for j, v in enumerate(variables):
        path = f"{base}.output_variables[{j}]"
        if not isinstance(v, str) or not VARIABLE.match(v):
            raise Invalid("an output variable name must be an identifier (letters, digits, _) of 1-64", path)
        if v in variables[:j]:
            raise Invalid(f"output variable {v!r} is listed twice", path)

    required = _names(item.get("next_required"), f"{base}.next_required", "next_required")
    for j, nxt in enumerate(required):
        _check_successor(nxt, name, known, f"{base}.next_required[{j}]")
        if nxt in required[:j]:
            raise Invalid(f"{nxt!r} is listed twice", f"{base}.next_required[{j}]")

    conditional = item.get("next_conditional") or {}
    if not isinstance(conditional, Mapping):
        raise Invalid("next_conditional must be an object {objective: condition}", f"{base}.next_conditional")
    for nxt, condition in conditional.items():
        path = f"{base}.next_conditional.{nxt}" if str(nxt).isidentifier() else f'{base}.next_conditional["{nxt}"]'
        _check_successor(nxt, name, known, path)
        if nxt in required:
            raise Invalid(f"{nxt!r} is both required and conditional", path)
        if not isinstance(condition, str) or not condition.strip():
            raise Invalid("a condition must be a non-empty string", path)
        if len(condition) > MAX_CONDITION_CHARS:
            raise Invalid(f"a condition is longer than {MAX_CONDITION_CHARS} characters", path)
    return Objective(
        name,
        prompt.strip(),
        mode,
        tuple(variables),
        tuple(required),
        {str(k): str(v).strip() for k, v in conditional.items()},
    )


def _check_successor(nxt: object, name: str, known: Mapping[str, int], path: str) -> None:
    if not isinstance(nxt, str):
        raise Invalid("a next objective must be named by a string", path)
    if nxt not in known:
        raise Invalid(f"no objective is named {nxt!r}", path)
    if nxt == name:
        raise Invalid(f"objectives form a cycle: {name} -> {name}", path)


def _edge_path(graph: ObjectiveGraph, i: int, nxt: str) -> str:
    o = graph.objectives[i]
    if nxt in o.next_required:
        return f"$.objectives[{i}].next_required[{o.next_required.index(nxt)}]"
    return (
        f"$.objectives[{i}].next_conditional.{nxt}"
        if nxt.isidentifier()
        else (f'$.objectives[{i}].next_conditional["{nxt}"]')
    )


def _check_cycles(graph: ObjectiveGraph) -> None:
    index = {o.name: i for i, o in enumerate(graph.objectives)}
    state = dict.fromkeys(index, 0)  # 0 unseen, 1 on the path, 2 finished
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for nxt in graph.objectives[index[name]].successors:
            if state[nxt] == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise Invalid(f"objectives form a cycle: {' -> '.join(cycle)}", _edge_path(graph, index[name], nxt))
            if state[nxt] == 0:
                visit(nxt)
        path.pop()
        state[name] = 2

    for o in graph.objectives:  # at most MAX_OBJECTIVES deep: recursion is fine
        if state[o.name] == 0:
            visit(o.name)


def _check_reachable(graph: ObjectiveGraph) -> None:
    reached = {graph.start.name}
    todo = [graph.start]
    while todo:
        for nxt in todo.pop().successors:
            if nxt not in reached:
                reached.add(nxt)
                todo.append(graph[nxt])
    for i, o in enumerate(graph.objectives):
        if o.name not in reached:
            raise Invalid(
                f"objective {o.name!r} is never reached from the first objective {graph.start.name!r}: list it in "
                "another objective's next_required or next_conditional",
                f"$.objectives[{i}].name",
            )


# ---- one conversation's progress -------------------------------------------------------------------------


class SpokenTurn(Protocol):
    """A transcript turn (`orchestrator.session.dialogue.Turn` is one): role "user", or the replica's."""

    @property
    def role(self) -> str: ...

    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class Completed:
    name: str
    output_variables: Mapping[str, str]
    t: float


_VALUE: dict[str, Any] = {"anyOf": [{"type": "string", "maxLength": VALUE_CHARS}, {"type": "null"}]}

JUDGE_SYSTEM = (
    "You follow a conversation between a user and an assistant who has an objective. Report in JSON what the "
    "user has said that the objective needs. Copy values from the user's words; use null for anything not "
    "clearly said. Never guess. completed is true only when the objective is achieved."
)


def judge_schema(objective: Objective) -> dict[str, Any]:
    """The judge's answer for `objective`: `variables` (each a string or null), `confirmed` (manual mode),
    `conditions` (one boolean per conditional next objective), then `completed`. The findings come before the
    verdict on purpose: a small model decides `completed` better once it has written out what it found. Keys
    that would be empty are left out."""
    properties: dict[str, Any] = {}
    if objective.output_variables:
        properties["variables"] = {
            "type": "object",
            "properties": {v: _VALUE for v in objective.output_variables},
            "required": list(objective.output_variables),
            "additionalProperties": False,
        }
    if objective.manual:
        properties["confirmed"] = {"type": "boolean"}
    if objective.next_conditional:
        properties["conditions"] = {
            "type": "object",
            "properties": {name: {"type": "boolean"} for name in objective.next_conditional},
            "required": list(objective.next_conditional),
            "additionalProperties": False,
        }
    properties["completed"] = {"type": "boolean"}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def judge_max_tokens(objective: Objective) -> int:
    """Enough tokens for the longest answer `judge_schema(objective)` allows (a token is >= ~3 characters)."""
    tokens = 12  # braces, "completed": false
    tokens += sum(6 + len(v) // 3 + VALUE_CHARS // 3 for v in objective.output_variables)
    tokens += 8 if objective.manual else 0
    tokens += sum(6 + len(name) // 3 for name in objective.next_conditional)
    return min(tokens, 1024)


def _transcript(turns: Sequence[SpokenTurn]) -> str:
    lines = []
    for turn in list(turns)[-JUDGE_TURNS:]:
        text = " ".join(turn.text.split())
        if len(text) > JUDGE_TURN_CHARS:
            text = "…" + text[-JUDGE_TURN_CHARS:]
        if text:
            lines.append(f"{'User' if turn.role == 'user' else 'Assistant'}: {text}")
    return "\n".join(lines) or "(nothing said yet)"


class ObjectiveTracker:
    """One conversation's progress through an `ObjectiveGraph` (see the module docstring)."""

    def __init__(self, graph: ObjectiveGraph, clock: Callable[[], float]) -> None:
        self.graph = graph
        self.clock = clock
        self._active: list[str] = [graph.start.name]
        self.activated_at: dict[str, float] = {graph.start.name: clock()}
        self._completed: dict[str, Completed] = {}
        self._collected: dict[str, dict[str, str]] = {}  # objective -> variable -> value, so far
        self._asked: str | None = None  # the objective the last judge request was about

    @property
    def current(self) -> tuple[Objective, ...]:
        """The active objectives, in the order they became active."""
        return tuple(self.graph[name] for name in self._active)

    @property
    def focus(self) -> Objective | None:
        return self.graph[self._active[0]] if self._active else None

    @property
    def completed(self) -> tuple[Completed, ...]:
        return tuple(self._completed.values())

    @property
    def done(self) -> bool:
        return not self._active

    def collected(self, name: str) -> dict[str, str]:
        """The values found so far for objective `name` (complete or not)."""
        return dict(self._collected.get(name, {}))

    def missing(self, name: str) -> tuple[str, ...]:
        """The output variables of `name` with no value yet."""
        found = self._collected.get(name, {})
        return tuple(v for v in self.graph[name].output_variables if not found.get(v))

    def steer(self) -> str:
        """A short guidance line for the replica about the focus objective ("" when done)."""
        o = self.focus
        if o is None:
            return ""
        line = f"Current objective: {o.prompt}"
        missing = self.missing(o.name)
        if missing:
            return f"{line} Still to find out: {', '.join(v.replace('_', ' ') for v in missing)}."
        if o.manual and o.output_variables:
            values = "; ".join(f"{v.replace('_', ' ')}: {self._collected[o.name][v]}" for v in o.output_variables)
            return f"{line} Read back what you noted ({values}) and ask them to confirm it is right."
        return line

    def judge_request(
        self, turns: Sequence[SpokenTurn], *, objective: str | None = None
    ) -> tuple[list[ChatMessage], dict[str, Any]]:
        """Messages and schema asking the judge about `objective` (default: the focus). The tracker remembers
        which objective was asked about; `apply` applies the answer to it."""
        name = objective or (self.focus.name if self.focus is not None else None)
        if name is None:
            raise ValueError("all objectives are complete: there is nothing to judge")
        o = self.graph[name]
        self._asked = name
        lines = [f"Objective: {o.prompt}"]
        if o.output_variables:
            lines.append(f"Values to find in what the user said: {', '.join(o.output_variables)}")
        if o.manual:
            lines.append("confirmed: true only if the assistant read the values back and the user said they are right.")
        if o.next_conditional:
            lines.append("conditions (true or false, from what the user said):")
            lines += [f"- {nxt}: {condition}" for nxt, condition in o.next_conditional.items()]
        lines += ["", "Conversation:", _transcript(turns)]
        messages = [ChatMessage("system", JUDGE_SYSTEM), ChatMessage("user", "\n".join(lines))]
        return messages, judge_schema(o)

    def judge_max_tokens(self, objective: str | None = None) -> int:
        name = objective or self._asked or (self.focus.name if self.focus is not None else None)
        return judge_max_tokens(self.graph[name]) if name is not None else 0

    def apply(
        self, judgement: Mapping[str, Any], t: float | None = None, *, objective: str | None = None
    ) -> list[Completed]:
        """Record a judge's answer about `objective` (default: the one last asked about). Returns the objectives
        it completed ([] if none, or if that objective is no longer active: a stale answer)."""
        name = objective or self._asked or (self.focus.name if self.focus is not None else None)
        if name is None or name not in self._active:
            return []
        o = self.graph[name]
        found = self._collected.setdefault(name, {})
        variables = judgement.get("variables")
        if isinstance(variables, Mapping):
            for v in o.output_variables:
                value = variables.get(v)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = str(value)
                if isinstance(value, str) and value.strip():
                    found[v] = value.strip()
        if judgement.get("completed") is not True or self.missing(name):
            return []
        if o.manual and judgement.get("confirmed") is not True:
            return []
        when = self.clock() if t is None else t
        done = Completed(name, {v: found[v] for v in o.output_variables}, when)
        self._completed[name] = done
        self._active.remove(name)
        conditions = judgement.get("conditions")
        taken = [c for c in o.next_conditional if isinstance(conditions, Mapping) and conditions.get(c) is True]
        for nxt in (*o.next_required, *taken):
            if nxt not in self._completed and nxt not in self._active:
                self._active.append(nxt)
                self.activated_at[nxt] = when
        if self._asked == name:
            self._asked = None
        return [done]

    def outputs(self) -> dict[str, dict[str, str]]:
        """Every completed objective's values, by objective name, in completion order (for the end webhook)."""
        return {c.name: dict(c.output_variables) for c in self._completed.values()}


async def advance(
    tracker: ObjectiveTracker, judge: JsonModel, turns: Sequence[SpokenTurn], t: float | None = None
) -> list[Completed]:
    """Ask `judge` about the focus objective and apply its answer; a failed judgement completes nothing."""
    focus = tracker.focus
    if focus is None:
        return []
    messages, schema = tracker.judge_request(turns, objective=focus.name)
    try:
        answer = await judge.complete_json(messages, schema, max_tokens=judge_max_tokens(focus))
    except JudgeFailed:
        return []
    return tracker.apply(answer, t, objective=focus.name)
