"""LLM tools: functions the persona declares and the client carries out (`layers.llm.tools`).

A tool is `{name, description, parameters: <JSON Schema of an object>}`, as in the OpenAI function format
without its wrapper. `parse_llm_tools` checks a persona's list; `Invalid` carries the JSON path of the problem
("$.layers.llm.tools[2].parameters.properties.city.type").

Choosing a tool is one schema-constrained question to a small local model, asked about the user's turn:
`tool_choice_messages` is the prompt (the tools as one short line each), `tool_choice_schema` the answer's
schema, `{"tool": "none"}` or `{"tool": "<name>", "arguments": {...}}`, one `anyOf` branch per tool. The local
model decodes under a grammar llama.cpp builds from that schema, and its converter understands a subset of JSON
Schema (type, properties, required, items, enum, const, anyOf/oneOf, min/maxLength, min/maxItems, a few string
formats). So each tool's parameters enter the choice schema through `grammar_schema`, which keeps that subset
and drops the rest (descriptions, minimum, pattern, not, if/then, ...): the grammar may allow more than the
tool's schema, never less. `parse_tool_choice` then validates the arguments against the tool's own, complete
schema with `jsonschema`, so what a tool call carries always satisfies it.

The result comes back as a `tool_result` interaction; `tool_result_note` is how it enters the next reply's
prompt. (A result for an unknown `call_id` is refused by the session: `orchestrator.errors.UnknownToolCall`.)
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from orchestrator.errors import Invalid
from orchestrator.intel.judge import JudgeFailed
from orchestrator.models.ports import ChatMessage

TOOL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$")
NONE = "none"  # the choice of no tool (so no tool may be named "none")
MAX_TOOLS = 32
MAX_DESCRIPTION_CHARS = 1000
MAX_PARAMETERS_BYTES = 16 * 1024
TOOL_OUTPUT_CHARS = 1000  # of a tool's result, in the next reply's prompt
CHOICE_SCHEMA_MAX_CHARS = 16_000  # the model server refuses a schema over 16,384 characters
GRAMMAR_MAX_CHARS = 60_000  # ... and a grammar over 65,536
CHOICE_TURNS = 6  # dialogue messages shown to the chooser before the user's latest turn
CHOICE_MESSAGE_CHARS = 300
CHOICE_DESCRIPTION_CHARS = 160  # of each tool's description, in the chooser's tool list
_TOOL_KEYS = frozenset({"name", "description", "parameters"})
_EMPTY_OBJECT: Mapping[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: Mapping[str, Any]  # a JSON Schema of type object

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    name: str
    arguments: Mapping[str, Any]


def _path(base: str, parts: Sequence[object]) -> str:
    out = base
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif str(p).isidentifier():
            out += f".{p}"
        else:
            out += f"[{json.dumps(str(p))}]"
    return out


def parse_llm_tools(tools: object, *, field: str = "$.layers.llm.tools") -> tuple[Tool, ...]:
    """Validate a persona's `layers.llm.tools` (None or [] means no tools); raises `Invalid(message, path)`."""
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise Invalid("tools must be a list of {name, description, parameters}", field)
    if len(tools) > MAX_TOOLS:
        raise Invalid(f"at most {MAX_TOOLS} tools", field)
    parsed: list[Tool] = []
    for i, entry in enumerate(tools):
        parsed.append(parse_llm_tool(entry, field=f"{field}[{i}]", taken=[t.name for t in parsed]))
    problem = choice_schema_problem(parsed)
    if problem is not None:
        raise Invalid(problem, field)
    return tuple(parsed)


def choice_schema_problem(tools: Sequence[Tool]) -> str | None:
    """Why the local model would refuse the tool choice schema of `tools` (too large), or None. The model
    server caps a request's schema text and the grammar built from it (`orchestrator/inference/llm.py`)."""
    text = json.dumps(tool_choice_schema(tools), separators=(",", ":"))
    if len(text) > CHOICE_SCHEMA_MAX_CHARS:
        return (
            f"the tools' parameters make a choice schema of {len(text)} characters, over {CHOICE_SCHEMA_MAX_CHARS}: "
            "declare fewer tools or smaller parameters"
        )
    try:
        from llama_cpp.llama_grammar import json_schema_to_gbnf
    except ImportError:  # a control plane without the local model runtime: the size check above has to do
        return None
    try:
        grammar = json_schema_to_gbnf(text)
    except Exception as e:  # the converter asserts on shapes it does not expect
        return f"the tools' parameters cannot be turned into a grammar for the local model: {e}"
    if len(grammar) > GRAMMAR_MAX_CHARS:
        return (
            f"the tools' parameters make a grammar of {len(grammar)} characters, over {GRAMMAR_MAX_CHARS}: lower "
            "their maxLength and maxItems, or declare fewer tools"
        )
    return None


def parse_llm_tool(entry: object, *, field: str, taken: Sequence[str] = ()) -> Tool:
    if not isinstance(entry, Mapping):
        raise Invalid("a tool must be an object {name, description, parameters}", field)
    if "function" in entry and "name" not in entry:
        raise Invalid(
            "give the tool as {name, description, parameters}, without the OpenAI {type, function} wrapper", field
        )
    for key in entry:
        if key not in _TOOL_KEYS:
            raise Invalid(f"unknown field {key!r} (allowed: description, name, parameters)", _path(field, [key]))
    name = entry.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise Invalid("name must be 1-64 characters: a letter or _, then letters, digits, _ or -", f"{field}.name")
    if name == NONE:
        raise Invalid(f"{NONE!r} is reserved (it means no tool)", f"{field}.name")
    if name in taken:
        raise Invalid(f"tool {name!r} is declared twice", f"{field}.name")
    description = entry.get("description")
    if not isinstance(description, str) or not description.strip():
        raise Invalid("description must be a non-empty string (the model chooses tools by it)", f"{field}.description")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise Invalid(f"description is longer than {MAX_DESCRIPTION_CHARS} characters", f"{field}.description")
    parameters = entry.get("parameters", _EMPTY_OBJECT)
    return Tool(name, description.strip(), _parse_parameters(parameters, f"{field}.parameters"))


def _parse_parameters(parameters: object, field: str) -> Mapping[str, Any]:
    if not isinstance(parameters, Mapping):
        raise Invalid("parameters must be a JSON Schema object", field)
    try:
        size = len(json.dumps(parameters, separators=(",", ":")).encode())
    except (TypeError, ValueError):
        raise Invalid("parameters must be plain JSON", field) from None
    if size > MAX_PARAMETERS_BYTES:
        raise Invalid(f"parameters is larger than {MAX_PARAMETERS_BYTES // 1024} KB", field)
    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as e:
        raise Invalid(f"parameters is not a valid JSON Schema (2020-12): {e.message}", _path(field, e.path)) from None
    if parameters.get("type") != "object":
        raise Invalid('parameters must be a schema of "type": "object" (the arguments are named)', f"{field}.type")
    try:
        grammar_schema(parameters)
    except ValueError as e:
        raise Invalid(f"parameters: {e}", field) from None
    return parameters


# ---- the grammar-friendly subset -------------------------------------------------------------------------

# Every JSON value, in terms the converter knows ({} would mean "an object" to it).
ANY_VALUE: Mapping[str, Any] = {"type": ["string", "number", "boolean", "object", "array", "null"]}
_FORMATS = frozenset({"date", "time", "date-time", "uuid"})  # the string formats the converter turns into rules
# Larger min/max lengths and item counts unroll into large grammars (one nested group per unit): dropped from
# the grammar's schema (the validator still checks them).
_MAX_LENGTH = 128
_MAX_ITEMS = 16
_MAX_DEPTH = 16
_STRUCTURE = frozenset({"type", "properties", "items", "enum", "const", "anyOf", "additionalProperties"})


def grammar_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` reduced to what llama.cpp's JSON-Schema-to-grammar converter handles: local `$ref`s inlined
    (a recursive one becomes any value), `oneOf` read as `anyOf`, annotations and constraints it does not
    know dropped. A looser schema, never a stricter one, with two deliberate exceptions: objects list only their
    declared properties (the model fills in what the tool declares), and the string formats the converter knows
    (date, time, date-time, uuid) are enforced, where a validator only annotates them. Raises ValueError for a
    `$ref` it cannot resolve."""
    return _subset(schema, schema, 0, ())


def _resolve(root: Mapping[str, Any], ref: str) -> Mapping[str, Any] | bool:
    if not ref.startswith("#"):
        raise ValueError(f"only local references (#/...) are supported, not {ref!r}")
    node: Any = root
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise ValueError(f"reference {ref!r} points nowhere")
    if not isinstance(node, (Mapping, bool)):
        raise ValueError(f"reference {ref!r} is not a schema")
    return node


def _subset(node: object, root: Mapping[str, Any], depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
    if node is True or not isinstance(node, Mapping) or depth > _MAX_DEPTH:
        return dict(ANY_VALUE)
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = _resolve(root, ref)
        if ref in refs:
            return dict(ANY_VALUE)  # recursion: the grammar stops constraining here, the validator does not
        return _subset(target, root, depth + 1, (*refs, ref))
    out: dict[str, Any] = {}
    kind = node.get("type")
    if isinstance(kind, str) or (isinstance(kind, list) and kind):
        out["type"] = kind
    if "const" in node:
        out["const"] = node["const"]
    elif isinstance(node.get("enum"), list) and node["enum"]:
        out["enum"] = list(node["enum"])
    branches = node.get("anyOf", node.get("oneOf"))
    if isinstance(branches, list) and branches and not ({"const", "enum", "properties", "items"} & node.keys()):
        # The converter reads anyOf before anything else beside it, so branches are kept only where they are
        # the node's structure; branches that only constrain (each reduces to any value) are dropped.
        subs = [_subset(b, root, depth + 1, refs) for b in branches if b is not False]
        if subs and all(s != ANY_VALUE for s in subs):
            return {"anyOf": subs}
    properties = node.get("properties")
    if isinstance(properties, Mapping) and kind in (None, "object"):
        out["properties"] = {str(k): _subset(v, root, depth + 1, refs) for k, v in properties.items() if v is not False}
        required = [r for r in node.get("required", []) if r in out["properties"]]
        if required:
            out["required"] = required
    elif kind == "object" and isinstance(node.get("additionalProperties"), Mapping):
        out["additionalProperties"] = _subset(node["additionalProperties"], root, depth + 1, refs)
    items = node.get("items")
    if isinstance(items, (Mapping, bool)) and items is not False and kind in (None, "array"):
        out["items"] = _subset(items, root, depth + 1, refs)
        for bound in ("minItems", "maxItems"):
            value = node.get(bound)
            if isinstance(value, int) and value <= _MAX_ITEMS:
                out[bound] = value
    if kind == "string":
        if node.get("format") in _FORMATS:
            out["format"] = node["format"]
        for bound in ("minLength", "maxLength"):
            value = node.get(bound)
            if isinstance(value, int) and value <= _MAX_LENGTH:
                out[bound] = value
    if not (_STRUCTURE & out.keys()):
        return dict(ANY_VALUE)
    return out


def _arguments_schema(tool: Tool) -> dict[str, Any]:
    schema = grammar_schema(tool.parameters)
    if "properties" not in schema and "additionalProperties" not in schema:
        schema = {"type": "object", "properties": {}}  # no declared parameters: the arguments are {}
    return schema


def tool_choice_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    """The chooser's answer: `{"tool": "none"}` or `{"tool": <name>, "arguments": {...}}`, one branch each."""
    branches: list[dict[str, Any]] = [{"type": "object", "properties": {"tool": {"const": NONE}}, "required": ["tool"]}]
    for tool in tools:
        branches.append(
            {
                "type": "object",
                "properties": {"tool": {"const": tool.name}, "arguments": _arguments_schema(tool)},
                "required": ["tool", "arguments"],
            }
        )
    return {"anyOf": branches}


def choice_max_tokens(tools: Sequence[Tool]) -> int:
    """A budget for the chooser's answer: the longest declared arguments, roughly (a JSON token is ~3 chars)."""
    longest = max((len(json.dumps(_arguments_schema(t))) for t in tools), default=0)
    return max(24, min(256, 16 + longest // 3))


# ---- the chooser's prompt --------------------------------------------------------------------------------


def _type_of(schema: object) -> str:
    if not isinstance(schema, Mapping) or schema == ANY_VALUE:
        return "any"
    if "enum" in schema and isinstance(schema["enum"], list):
        return "|".join(json.dumps(v) for v in schema["enum"][:6])
    if "const" in schema:
        return json.dumps(schema["const"])
    if isinstance(schema.get("anyOf"), list):
        return "|".join(_type_of(b) for b in schema["anyOf"][:6])
    kind = schema.get("type")
    if isinstance(kind, list):
        return "|".join(str(k) for k in kind)
    if kind == "array":
        return f"{_type_of(schema.get('items'))}[]"
    return str(kind) if kind else "any"


def signature(tool: Tool) -> str:
    """One short line: `name(city: string, unit?: "c"|"f") - what it does` (references resolved)."""
    reduced = grammar_schema(tool.parameters)
    properties = reduced.get("properties") or {}
    required = set(reduced.get("required") or ())
    params = ", ".join(
        f"{name}{'' if name in required else '?'}: {_type_of(schema)}" for name, schema in properties.items()
    )
    description = " ".join(tool.description.split())
    if len(description) > CHOICE_DESCRIPTION_CHARS:
        description = description[: CHOICE_DESCRIPTION_CHARS - 1].rstrip() + "…"
    return f"{tool.name}({params}) - {description}"


CHOICE_SYSTEM = (
    "You decide whether the user's latest message asks for something one of these tools does. If it clearly "
    'does, answer {{"tool": <name>, "arguments": {{...}}}} with arguments taken from what the user said; '
    'otherwise answer {{"tool": "none"}}.\nTools:\n{tools}'
)


def tool_choice_messages(
    tools: Sequence[Tool], dialogue_messages: Sequence[ChatMessage], user_text: str
) -> list[ChatMessage]:
    """A compact prompt for the chooser: the tool list, the last few turns (no system prompt: the persona's
    instructions would cost tokens and distract a small model), then the user's latest turn."""
    lines = []
    for m in [m for m in dialogue_messages if m.role in ("user", "assistant")][-CHOICE_TURNS:]:
        text = " ".join(m.content.split())
        if len(text) > CHOICE_MESSAGE_CHARS:
            text = "…" + text[-CHOICE_MESSAGE_CHARS:]
        lines.append(f"{'User' if m.role == 'user' else 'Assistant'}: {text}")
    latest = " ".join(user_text.split())
    recent = ("Conversation so far:\n" + "\n".join(lines) + "\n\n") if lines else ""
    return [
        ChatMessage("system", CHOICE_SYSTEM.format(tools="\n".join(f"- {signature(t)}" for t in tools))),
        ChatMessage("user", f"{recent}Latest user message: {latest}"),
    ]


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def parse_tool_choice(obj: Mapping[str, Any], tools: Sequence[Tool], *, call_id: str | None = None) -> ToolCall | None:
    """The call the chooser's answer asks for, or None for "none". Raises `JudgeFailed` when the answer names
    no declared tool or its arguments break the tool's schema (the model's answer is unusable: no call)."""
    name = obj.get("tool")
    if name is None or name == NONE:
        return None
    tool = next((t for t in tools if t.name == name), None)
    if tool is None:
        raise JudgeFailed(f"the tool chooser named an undeclared tool {name!r}", json.dumps(dict(obj))[:500])
    arguments = obj.get("arguments", {})
    if not isinstance(arguments, Mapping):
        raise JudgeFailed(f"the arguments for {tool.name!r} are not an object", json.dumps(dict(obj))[:500])
    error = next(iter(Draft202012Validator(tool.parameters).iter_errors(dict(arguments))), None)
    if error is not None:
        where = _path("$.arguments", list(error.absolute_path))
        raise JudgeFailed(
            f"the arguments for {tool.name!r} break its schema at {where}: {error.message}",
            json.dumps(dict(obj))[:500],
        )
    return ToolCall(call_id or new_call_id(), tool.name, dict(arguments))


def tool_result_note(call: ToolCall, output: object) -> str:
    """A tool's result as one NOTE line for the next reply's prompt (output as text, or compact JSON, cut to
    `TOOL_OUTPUT_CHARS`). Unlike other notes it is meant to be used in the reply: the reply guard must not
    be given it as a note (its five-word runs would count as reading a note out)."""
    text = output if isinstance(output, str) else json.dumps(output, separators=(",", ":"), ensure_ascii=False)
    text = " ".join(text.split())
    if len(text) > TOOL_OUTPUT_CHARS:
        text = text[: TOOL_OUTPUT_CHARS - 1] + "…"
    return f"NOTE: The {call.name} tool answered: {text or '(nothing)'}. Tell them what it means, in your own words."
