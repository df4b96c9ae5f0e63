"""LLM tools without a server: parsing (every malformed declaration refused with its JSON path), the choice
schema and the grammar-friendly subset (accepted by llama.cpp's converter and its grammar parser, and by the
model server's own checks), the chooser's prompt, validating a choice, and the result note. The last test
decodes a choice under the grammar with the real small GGUF, in-process."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from orchestrator.config import REPO_ROOT
from orchestrator.errors import Invalid
from orchestrator.intel.guardrails import JUDGE_SCHEMA
from orchestrator.intel.judge import JudgeFailed
from orchestrator.intel.objectives import judge_schema, parse_objectives
from orchestrator.intel.tools import (
    ANY_VALUE,
    CHOICE_SCHEMA_MAX_CHARS,
    GRAMMAR_MAX_CHARS,
    MAX_PARAMETERS_BYTES,
    TOOL_OUTPUT_CHARS,
    Tool,
    ToolCall,
    choice_max_tokens,
    grammar_schema,
    parse_llm_tools,
    parse_tool_choice,
    signature,
    tool_choice_messages,
    tool_choice_schema,
    tool_result_note,
)
from orchestrator.models.ports import ChatMessage
from tests.conftest import require

GGUF = REPO_ROOT / "model_repository" / "llm" / "1" / "SmolLM2-135M-Instruct.Q4_1.gguf"

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city name", "minLength": 1},
            "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
}
BOOK: dict[str, Any] = {
    "name": "book-table",
    "description": "Book a table at the restaurant.",
    "parameters": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "person": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "phone": {"type": "string", "pattern": r"^\+?[0-9 ]+$"}},
                "required": ["name"],
            }
        },
        "properties": {
            "date": {"type": "string", "format": "date"},
            "guests": {"type": "integer", "exclusiveMinimum": 0},
            "contact": {"$ref": "#/$defs/person"},
            "seating": {"oneOf": [{"const": "inside"}, {"const": "terrace"}]},
            "notes": {"type": ["string", "null"], "maxLength": 2000},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5, "uniqueItems": True},
            "extras": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "anything": {},
            "never": False,
        },
        "required": ["date", "guests", "contact"],
    },
}
HANG_UP: dict[str, Any] = {"name": "_hang_up", "description": "End the call."}  # no parameters


def tools() -> tuple[Tool, ...]:
    return parse_llm_tools([WEATHER, BOOK, HANG_UP])


# --- parsing -----------------------------------------------------------------------------------------------------


def test_parse_tools() -> None:
    weather, book, hang_up = tools()
    assert weather == Tool("get_weather", "Get the current weather for a city.", WEATHER["parameters"])
    assert book.name == "book-table"
    assert hang_up.parameters == {"type": "object", "properties": {}}
    assert weather.body() == WEATHER
    assert parse_llm_tools(None) == () and parse_llm_tools([]) == ()


def entry(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(WEATHER)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def params(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


T0 = "$.layers.llm.tools[0]"


@pytest.mark.parametrize(
    ("tools_body", "field", "message"),
    [
        ({"get_weather": WEATHER}, "$.layers.llm.tools", "must be a list"),
        ([WEATHER] * 33, "$.layers.llm.tools", "at most 32"),
        (["get_weather"], T0, "must be an object"),
        ([{"type": "function", "function": WEATHER}], T0, "without the OpenAI {type, function} wrapper"),
        ([entry(strict=True)], f"{T0}.strict", "unknown field 'strict'"),
        ([entry(name=None)], f"{T0}.name", "name must be 1-64"),
        ([entry(name="get weather")], f"{T0}.name", "name must be 1-64"),
        ([entry(name="9lives")], f"{T0}.name", "name must be 1-64"),
        ([entry(name="x" * 65)], f"{T0}.name", "name must be 1-64"),
        ([entry(name="none")], f"{T0}.name", "reserved"),
        ([WEATHER, WEATHER], "$.layers.llm.tools[1].name", "declared twice"),
        ([entry(description=None)], f"{T0}.description", "non-empty string"),
        ([entry(description="  ")], f"{T0}.description", "non-empty string"),
        ([entry(description="d" * 1001)], f"{T0}.description", "longer than 1000"),
        ([entry(parameters="object")], f"{T0}.parameters", "must be a JSON Schema object"),
        ([entry(parameters=[])], f"{T0}.parameters", "must be a JSON Schema object"),
        ([entry(parameters={"type": "string"})], f"{T0}.parameters.type", '"type": "object"'),
        ([entry(parameters={"properties": {}})], f"{T0}.parameters.type", '"type": "object"'),
        (
            [entry(parameters=params(city={"type": "strin"}))],
            f"{T0}.parameters.properties.city.type",
            "not a valid JSON Schema",
        ),
        (
            [entry(parameters={"type": "object", "required": "city"})],
            f"{T0}.parameters.required",
            "not a valid JSON Schema",
        ),
        (
            [entry(parameters=params(**{"odd key": {"minLength": -1}}))],
            f'{T0}.parameters.properties["odd key"].minLength',
            "not a valid JSON Schema",
        ),
        (
            [entry(parameters=params(**{f"p{i}": {"type": "string", "description": "x" * 200} for i in range(80)}))],
            f"{T0}.parameters",
            f"larger than {MAX_PARAMETERS_BYTES // 1024} KB",
        ),
        (
            [entry(parameters=params(a={"$ref": "https://example.com/schema.json"}))],
            f"{T0}.parameters",
            "only local references",
        ),
        ([entry(parameters=params(a={"$ref": "#/$defs/missing"}))], f"{T0}.parameters", "points nowhere"),
        (
            [entry(parameters=params(a={"type": "number", "minimum": float("nan")}) | {"x": {1, 2}})],
            f"{T0}.parameters",
            "plain JSON",
        ),
    ],
)
def test_malformed_tools_are_refused_with_their_path(tools_body: Any, field: str, message: str) -> None:
    with pytest.raises(Invalid, match=re.escape(message)) as info:
        parse_llm_tools(tools_body)
    assert info.value.field == field
    assert info.value.code == "invalid" and not info.value.fatal


def test_a_custom_field_prefix() -> None:
    with pytest.raises(Invalid) as info:
        parse_llm_tools([entry(name="bad name")], field="$.tools")
    assert info.value.field == "$.tools[0].name"


def test_tool_sets_too_large_for_the_local_model_are_refused() -> None:
    many = [
        entry(
            name=f"tool_{i}",
            parameters=params(**{f"field_{j}": {"type": "string", "maxLength": 100} for j in range(12)}),
        )
        for i in range(30)
    ]
    with pytest.raises(Invalid, match="declare fewer tools") as info:
        parse_llm_tools(many)
    assert info.value.field == "$.layers.llm.tools"


def test_the_limits_fit_the_model_server() -> None:
    """The model server refuses larger schemas and grammars (orchestrator/inference/llm.py)."""
    from orchestrator.inference import llm

    assert CHOICE_SCHEMA_MAX_CHARS <= llm.MAX_SCHEMA_CHARS
    assert GRAMMAR_MAX_CHARS <= llm.MAX_GRAMMAR_CHARS


# --- the grammar-friendly subset and the choice schema -----------------------------------------------------------


def test_grammar_schema_keeps_the_subset_the_converter_knows() -> None:
    weather, book, _ = tools()
    assert grammar_schema(weather.parameters) == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1},
            "unit": {"type": "string", "enum": ["c", "f"]},
            "days": {"type": "integer"},
        },
        "required": ["city"],
    }
    reduced = grammar_schema(book.parameters)
    props = reduced["properties"]
    assert props["contact"] == {
        "type": "object",
        "properties": {"name": {"type": "string"}, "phone": {"type": "string"}},  # the pattern is left out
        "required": ["name"],
    }
    assert props["date"] == {"type": "string", "format": "date"}
    assert props["seating"] == {"anyOf": [{"const": "inside"}, {"const": "terrace"}]}
    assert props["notes"] == {"type": ["string", "null"]}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "maxItems": 5}
    assert props["extras"] == {"type": "object", "additionalProperties": {"type": "boolean"}}
    assert props["anything"] == ANY_VALUE
    assert "never" not in props
    assert reduced["required"] == ["date", "guests", "contact"]


def test_recursive_references_stop_constraining_where_they_recurse() -> None:
    tree = {
        "type": "object",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
            }
        },
        "properties": {"root": {"$ref": "#/$defs/node"}},
    }
    reduced = grammar_schema(tree)
    assert reduced["properties"]["root"]["properties"]["kids"]["items"] == ANY_VALUE


def test_the_grammar_schema_is_looser_than_the_tool_schema() -> None:
    """Whatever the tool's schema accepts, the choice schema accepts too (the validator does the rest)."""
    _, book, _ = tools()
    valid = {
        "date": "2026-05-01",
        "guests": 2,
        "contact": {"name": "Ann", "phone": "+44 1234"},
        "seating": "terrace",
        "notes": None,
        "tags": ["quiet"],
        "extras": {"high_chair": True},
        "anything": [1, {"x": None}],
    }
    jsonschema.validate(valid, book.parameters)
    jsonschema.validate(valid, grammar_schema(book.parameters))
    jsonschema.validate({"tool": "book-table", "arguments": valid}, tool_choice_schema(tools()))


def test_the_choice_schema_has_a_none_branch_and_one_branch_per_tool() -> None:
    schema = tool_choice_schema(tools())
    branches = schema["anyOf"]
    assert branches[0] == {"type": "object", "properties": {"tool": {"const": "none"}}, "required": ["tool"]}
    assert [b["properties"]["tool"]["const"] for b in branches[1:]] == ["get_weather", "book-table", "_hang_up"]
    assert all(b["required"] == ["tool", "arguments"] for b in branches[1:])
    assert branches[3]["properties"]["arguments"] == {"type": "object", "properties": {}}  # no parameters: {}
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"tool": "none"}, schema)
    jsonschema.validate({"tool": "get_weather", "arguments": {"city": "Lisbon"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"tool": "get_weather", "arguments": {"unit": "c"}}, schema)
    assert tool_choice_schema([]) == {"anyOf": [branches[0]]}
    assert 24 <= choice_max_tokens(tools()) <= 256


def every_schema() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "tool choice", tool_choice_schema(tools())
    for name, extra in [
        ("nested arrays", params(m={"type": "array", "items": {"type": "array", "items": {"type": "number"}}})),
        ("allOf and not", params(a={"allOf": [{"type": "string"}, {"minLength": 2}]}, b={"not": {"type": "null"}})),
        ("if then", params(a={"type": "string", "if": {"const": "x"}, "then": {"minLength": 1}})),
        ("anyOf of constraints", params(a={"type": "string", "anyOf": [{"format": "email"}, {"maxLength": 3}]})),
        ("boolean schemas", params(a=True, b={"type": "array", "items": True})),
        (
            "big bounds",
            params(a={"type": "string", "maxLength": 5000}, b={"type": "array", "maxItems": 999, "items": {}}),
        ),
        ("bare object", {"type": "object"}),
        ("map", {"type": "object", "additionalProperties": {"type": "integer"}}),
        ("prefixItems", params(p={"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "number"}})),
        ("uuid and time", params(u={"type": "string", "format": "uuid"}, t={"type": "string", "format": "date-time"})),
        ("null and enum of mixed", params(n={"type": "null"}, e={"enum": [1, "a", None, True]})),
    ]:
        yield name, tool_choice_schema(parse_llm_tools([entry(parameters=extra)]))
    yield "guardrail judge", JUDGE_SCHEMA
    objectives = parse_objectives(
        {
            "objectives": [
                {
                    "name": "a",
                    "prompt": "p",
                    "confirmation_mode": "manual",
                    "output_variables": ["x", "y"],
                    "next_conditional": {"b": "c"},
                },
                {"name": "b", "prompt": "p"},
            ]
        }
    )
    for o in objectives.objectives:
        yield f"objective {o.name}", judge_schema(o)


@pytest.mark.parametrize(("name", "schema"), list(every_schema()))
def test_llama_cpp_converts_every_schema(name: str, schema: dict[str, Any]) -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    jsonschema.Draft202012Validator.check_schema(schema)
    grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)._grammar
    assert "root ::=" in grammar and len(grammar) < GRAMMAR_MAX_CHARS, name


@pytest.fixture(scope="module")
def vocab() -> Any:
    import llama_cpp

    return llama_cpp.Llama(model_path=str(require(GGUF, "the small LLM (GGUF)")), vocab_only=True, verbose=False)


@pytest.mark.parametrize(("name", "schema"), list(every_schema()))
def test_llama_cpp_parses_every_grammar_and_the_model_server_accepts_it(
    name: str, schema: dict[str, Any], vocab: Any
) -> None:
    """llama.cpp's own grammar parser (what decoding uses) accepts each grammar, as built by the model server."""
    import llama_cpp

    from orchestrator.inference.llm import grammar_from_schema, parse_json_schema

    grammar = grammar_from_schema(parse_json_schema(json.dumps(schema, separators=(",", ":"))))
    sampler = llama_cpp.llama_sampler_init_grammar(vocab._model.vocab, grammar._grammar.encode(), b"root")
    assert sampler, f"llama.cpp refused the grammar of {name}"
    llama_cpp.llama_sampler_free(sampler)


# --- the chooser's prompt and its answer -------------------------------------------------------------------------


def test_signatures_are_one_short_line() -> None:
    weather, book, hang_up = tools()
    assert (
        signature(weather)
        == 'get_weather(city: string, unit?: "c"|"f", days?: integer) - Get the current weather for a city.'
    )
    assert signature(hang_up) == "_hang_up() - End the call."
    assert signature(book).startswith(
        'book-table(date: string, guests: integer, contact: object, seating?: "inside"|"terrace", notes?: string|null'
    )
    assert "never" not in signature(book) and "anything?: any" in signature(book)
    assert "tags?: string[]" in signature(book) and "notes?: string|null" in signature(book)
    long = Tool("t", "word " * 100, {"type": "object", "properties": {}})
    assert len(signature(long)) < 200 and signature(long).endswith("…")


def test_the_chooser_prompt_is_compact() -> None:
    dialogue = [
        ChatMessage("system", "You are Ava, the persona, with a long prompt. " * 20),
        *[ChatMessage("user" if i % 2 == 0 else "assistant", f"message {i} " + "x " * 300) for i in range(10)],
    ]
    messages = tool_choice_messages(tools(), dialogue, "What's the weather\nin Lisbon?")
    assert [m.role for m in messages] == ["system", "user"]
    system, user = messages[0].content, messages[1].content
    assert "- get_weather(city: string" in system and "- _hang_up() - End the call." in system
    assert '{"tool": "none"}' in system
    assert "persona" not in system + user  # the persona's prompt stays out
    assert user.endswith("Latest user message: What's the weather in Lisbon?")
    assert sum(line.startswith(("User: ", "Assistant: ")) for line in user.splitlines()) == 6
    assert len(user) < 6 * 320 + 200
    bare = tool_choice_messages(tools(), [], "hi")
    assert bare[1].content == "Latest user message: hi"


def test_parse_a_choice() -> None:
    ts = tools()
    assert parse_tool_choice({"tool": "none"}, ts) is None
    assert parse_tool_choice({"tool": "none", "arguments": {}}, ts) is None
    assert parse_tool_choice({}, ts) is None
    call = parse_tool_choice({"tool": "get_weather", "arguments": {"city": "Lisbon", "unit": "c"}}, ts)
    assert isinstance(call, ToolCall)
    assert call.name == "get_weather" and call.arguments == {"city": "Lisbon", "unit": "c"}
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.call_id)
    other = parse_tool_choice({"tool": "get_weather", "arguments": {"city": "Lisbon"}}, ts)
    assert other is not None and other.call_id != call.call_id
    assert parse_tool_choice({"tool": "_hang_up"}, ts, call_id="call_x") == ToolCall("call_x", "_hang_up", {})


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"tool": "launch_rockets", "arguments": {}}, "undeclared tool 'launch_rockets'"),
        ({"tool": "get_weather", "arguments": "Lisbon"}, "not an object"),
        ({"tool": "get_weather", "arguments": {}}, "break its schema at $.arguments: 'city' is a required property"),
        ({"tool": "get_weather", "arguments": {"city": "X", "days": 9}}, "at $.arguments.days: 9 is greater than"),
        ({"tool": "get_weather", "arguments": {"city": "X", "wind": 1}}, "Additional properties are not allowed"),
        (
            {"tool": "book-table", "arguments": {"date": "d", "guests": 0, "contact": {"name": "A"}}},
            "$.arguments.guests",
        ),
    ],
)
def test_unusable_choices_are_judge_failures(answer: dict[str, Any], message: str) -> None:
    with pytest.raises(JudgeFailed, match=re.escape(message)) as info:
        parse_tool_choice(answer, tools())
    assert json.loads(info.value.text) == answer


def test_tool_result_notes() -> None:
    call = ToolCall("call_1", "get_weather", {"city": "Lisbon"})
    assert tool_result_note(call, "Sunny,\n 24 C") == (
        "NOTE: The get_weather tool answered: Sunny, 24 C. Tell them what it means, in your own words."
    )
    note = tool_result_note(call, {"temp": 24, "sky": "clear", "city": "Lisboa – Portugal"})
    assert '{"temp":24,"sky":"clear","city":"Lisboa – Portugal"}' in note
    long = tool_result_note(call, "x" * 5000)
    assert "x" * (TOOL_OUTPUT_CHARS - 1) + "…" in long and "x" * TOOL_OUTPUT_CHARS not in long
    assert "(nothing)" in tool_result_note(call, "")
    assert "null" in tool_result_note(call, None)


# --- the real small model, decoding under the choice grammar ------------------------------------------------------


def test_the_small_model_decodes_a_valid_choice_under_the_grammar() -> None:
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar

    weather = parse_llm_tools(
        [
            {
                "name": "get_weather",
                "description": "Get the current weather for a city.",
                "parameters": params(city={"type": "string", "maxLength": 40}, unit={"enum": ["c", "f"]})
                | {"required": ["city", "unit"]},
            }
        ]
    )
    llm = llama_cpp.Llama(model_path=str(require(GGUF, "the small LLM (GGUF)")), n_ctx=1024, verbose=False)
    grammar = LlamaGrammar.from_json_schema(json.dumps(tool_choice_schema(weather)), verbose=False)
    messages = tool_choice_messages(weather, [], "What's the weather like in Paris today, in celsius?")
    chat: Any = [{"role": m.role, "content": m.content} for m in messages]
    out: Any = llm.create_chat_completion(
        chat,
        grammar=grammar,
        temperature=0.0,
        max_tokens=choice_max_tokens(weather),
    )
    text = out["choices"][0]["message"]["content"]
    answer = json.loads(text)
    jsonschema.validate(answer, tool_choice_schema(weather))
    call = parse_tool_choice(answer, weather)  # whatever it chose, the grammar made it valid
    assert call is None or (call.name == "get_weather" and call.arguments["unit"] in ("c", "f"))
