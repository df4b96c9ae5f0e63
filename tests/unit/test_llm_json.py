"""Schema-constrained JSON replies: the JSON_SCHEMA input's checks, the grammar cache, routing one-off (judge)
requests, both backends' request bodies, and the real GGUF decoding under a grammar in-process."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import jsonschema
import pytest

from orchestrator.config import REPO_ROOT
from orchestrator.inference.llm import (
    MAX_REPEAT,
    MAX_SCHEMA_CHARS,
    EnginePool,
    GenerationStats,
    GrammarCache,
    JsonSchemaError,
    LlamaEngine,
    LlmInputError,
    Message,
    UnknownModel,
    best_engine,
    error_text,
    expand_shorthands,
    generate_text,
    grammar_depth,
    grammar_from_schema,
    parse_json_schema,
)

GGUF = REPO_ROOT / "model_repository" / "llm" / "1" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SCHEMA = {
    "type": "object",
    "properties": {"completed": {"type": "boolean"}, "name": {"type": "string"}},
    "required": ["completed", "name"],
}
JUDGE = [
    Message("system", "You extract facts from a conversation. Answer with one JSON object."),
    Message(
        "user",
        "Conversation:\nAgent: May I have your name?\nUser: Sure, it's Maria Lopez.\n\nDid the user give "
        "their name? JSON keys: completed (true or false), name (the name, or empty).",
    ),
]


# --- the JSON_SCHEMA input ---


def test_an_absent_or_empty_schema_means_free_text() -> None:
    assert parse_json_schema(None) == parse_json_schema(b"") == parse_json_schema("  \n") == ""


def test_a_schema_comes_back_as_its_text() -> None:
    text = json.dumps(SCHEMA)
    assert parse_json_schema(text.encode()) == parse_json_schema(f" {text}\n") == text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{oops", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b"true", "must be a JSON object"),
        (json.dumps({"type": "string", "description": "x" * MAX_SCHEMA_CHARS}).encode(), "characters; at most"),
        (json.dumps({"type": "string", "maxLength": MAX_REPEAT + 1}).encode(), "maxLength 1001 is over 1000"),
        (json.dumps({"type": "array", "items": {"type": "integer"}, "minItems": 10**6}).encode(), "minItems"),
        (json.dumps({"properties": {"a": {"type": "string", "pattern": "^a{1,5000}$"}}}).encode(), "{1,5000}"),
        (b'{"items": ' * 70 + b"{}" + b"}" * 70, "nested more than 64"),
        (b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}", "not valid JSON"),  # deeper than the JSON parser goes
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None,
)
def test_a_schema_that_cannot_be_served_is_a_typed_error(raw: bytes, message: str) -> None:
    with pytest.raises(JsonSchemaError, match=re.escape(message)) as caught:
        parse_json_schema(raw)
    assert error_text(caught.value).startswith("bad_option: ")  # the client's BadOption


def test_error_text_prefixes_typed_errors_only() -> None:
    assert error_text(LlmInputError("MESSAGES is not valid JSON")) == "MESSAGES is not valid JSON"
    assert error_text(UnknownModel("unknown llm model 'x'")) == "bad_option: unknown llm model 'x'"
    assert error_text(JsonSchemaError("bad")) == "bad_option: bad"


# --- schema to grammar ---


def test_a_schema_becomes_a_grammar_with_its_keys() -> None:
    gbnf = grammar_from_schema(json.dumps(SCHEMA))._grammar
    assert gbnf.startswith(("boolean ::=", "char ::=")) and "root ::=" in gbnf
    assert '"\\"completed\\""' in gbnf and '"\\"name\\""' in gbnf


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "wizard"}, "Unrecognized schema"),
        ({"type": "string", "pattern": "[a-z"}, "Pattern must start"),
        ({"$ref": "#/definitions/missing"}, "Error resolving ref"),
        ({"$ref": "https://example.invalid/schema.json"}, "Fetching remote schemas is not allowed"),
    ],
)
def test_a_schema_the_converter_refuses_is_a_typed_error(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(JsonSchemaError, match=re.escape(message)):
        grammar_from_schema(json.dumps(schema))


def test_the_grammar_stays_within_what_the_parser_survives() -> None:
    """llama.cpp's parser recurses per nested group; the converter nests one per allowed character."""
    at_limit = grammar_from_schema(json.dumps({"type": "string", "maxLength": MAX_REPEAT}))._grammar
    assert grammar_depth(at_limit) == MAX_REPEAT
    # Nested schemas multiply: each level's repetition within the bound, the whole over it.
    wide = {"type": "object", "properties": {f"k{i}": {"type": "string", "maxLength": 999} for i in range(10)}}
    with pytest.raises(JsonSchemaError, match="grammar of"):
        grammar_from_schema(json.dumps(wide))


@pytest.mark.parametrize(
    ("pattern", "expanded"),
    [
        (r"^\d{4}-\d{2}-\d{2}$", "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"),
        (r"^[\d-]+$", "^[0-9-]+$"),  # inside a class: the range only
        (r"^\w+\s\w+$", "^[A-Za-z0-9_]+[ ][A-Za-z0-9_]+$"),  # \s: a space (a raw newline is no JSON)
        (r"^a\.b\\d$", r"^a\.b\\d$"),  # other escapes, and an escaped backslash, are left alone
    ],
)
def test_pattern_shorthands_become_classes_the_converter_knows(pattern: str, expanded: str) -> None:
    assert expand_shorthands(pattern) == expanded


def test_a_negated_shorthand_is_refused_and_a_date_pattern_compiles() -> None:
    with pytest.raises(JsonSchemaError, match=re.escape("\\D is not supported")):
        expand_shorthands(r"^\D+$")
    gbnf = grammar_from_schema(json.dumps({"type": "string", "pattern": r"^\d{4}-\d{2}$"}))._grammar
    assert "\\d" not in gbnf and "[0-9]" in gbnf


def test_a_string_admits_no_raw_control_character() -> None:
    """A raw newline inside a JSON string is not JSON: the grammar's string character excludes them."""
    gbnf = grammar_from_schema(json.dumps(SCHEMA))._grammar
    assert r'char ::= [^"\\\x7F\x00-\x1F] |' in gbnf, gbnf


def test_grammar_depth_skips_literals_and_classes() -> None:
    assert grammar_depth('root ::= ("a" ("b")?)?') == 2
    assert grammar_depth('root ::= "(((" [(] x\nx ::= ( [^"\\\\] )') == 1
    assert grammar_depth("# ((( a comment\nroot ::= x") == 0


# --- the cache ---


def test_the_cache_compiles_each_schema_once_and_keeps_the_most_recent() -> None:
    compiled: list[str] = []

    def compile_(schema: str) -> str:
        compiled.append(schema)
        return f"grammar of {schema}"

    cache = GrammarCache(size=2, compile=compile_)
    assert cache.get("a") == "grammar of a" and cache.get("a") == "grammar of a"
    cache.get("b")
    cache.get("a")  # a is now the most recent: b goes first
    cache.get("c")
    assert len(cache) == 2 and compiled == ["a", "b", "c"]
    cache.get("a")
    cache.get("b")  # evicted: compiled again
    assert compiled == ["a", "b", "c", "b"] and (cache.hits, cache.misses) == (3, 4)


def test_a_refused_schema_is_not_cached() -> None:
    cache = GrammarCache(size=4)
    for _ in range(2):
        with pytest.raises(JsonSchemaError):
            cache.get('{"type": "wizard"}')
    assert len(cache) == 0 and cache.misses == 2
    assert cache.get(json.dumps(SCHEMA)) is cache.get(json.dumps(SCHEMA))


def test_the_cache_is_safe_from_several_threads() -> None:
    cache = GrammarCache(size=8, compile=lambda s: object())
    seen: list[object] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(200):
            seen.append(cache.get(str((n + i) % 12)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 1600 and len(cache) == 8


# --- routing a one-off (judge) request ---

A1 = (Message("system", "You are Ada."), Message("user", "Hi."))
B1 = (Message("system", "You are Bo."), Message("user", "Hello."))
J = (Message("system", "You are a judge."), Message("user", "Transcript: ... Did they give a name?"))


def test_best_engine_takes_a_spare_engine_before_evicting_a_conversation() -> None:
    # Engine 0 holds a session, engine 1 only a judge's prompt: a new judge or session takes 1, even though 0
    # was used less recently.
    assert best_engine([(0, A1, 1), (1, J, 5)], B1, spare={1}) == 1
    assert best_engine([(0, A1, 1), (1, J, 5)], B1) == 0  # without spares, the least recently used
    assert best_engine([(0, A1, 1), (1, J, 5)], (*A1, Message("user", "?")), spare={1}) == 0  # its history


class Recorder:
    """Runs a pool's jobs one at a time and records which engine ran each."""

    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool
        self.ran: list[int] = []

    def run(self, messages: tuple[Message, ...], oneshot: bool = False) -> int:
        done = threading.Event()

        def job(engine: LlamaEngine) -> None:
            self.ran.append(cast(Any, engine))
            done.set()

        self.pool.submit(messages, job, oneshot=oneshot)
        assert done.wait(5)
        return self.ran[-1]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    pool = EnginePool(cast(Any, [0, 1, 2]))
    yield Recorder(pool)
    pool.close()


def test_a_stream_of_judges_keeps_to_one_engine_and_spares_the_sessions(recorder: Recorder) -> None:
    a, b = recorder.run(A1), recorder.run(B1)
    judges = {recorder.run((J[0], Message("user", f"Transcript {i}")), oneshot=True) for i in range(5)}
    assert len({a, b}) == 2 and len(judges) == 1 and judges.isdisjoint({a, b})
    # Both sessions' next turns still find their history.
    assert recorder.run((*A1, Message("assistant", "Hello!"), Message("user", "More."))) == a
    assert recorder.run((*B1, Message("assistant", "Hi!"), Message("user", "More."))) == b
    # A new session takes the judges' engine rather than evicting either session.
    c = recorder.run((Message("system", "You are Cy."), Message("user", "Hey.")))
    assert c not in {a, b}


def test_a_judge_that_continues_a_sessions_history_runs_where_that_history_is(recorder: Recorder) -> None:
    a = recorder.run(A1)
    recorder.run(B1)
    judge = (*A1, Message("assistant", "Hello!"), Message("user", "Did the user greet you? Answer in JSON."))
    assert recorder.run(judge, oneshot=True) == a  # only the question is evaluated
    # That engine still holds the session's history: it is not spare, a new session goes elsewhere.
    assert recorder.run((*A1, Message("assistant", "Hello!"), Message("user", "More."))) == a
    assert recorder.run((Message("system", "You are Cy."), Message("user", "Hey."))) != a


# --- the backends' requests ---


def test_the_triton_request_carries_the_schema_only_when_set() -> None:
    from orchestrator.models.ports import ChatMessage, LlmRequest
    from orchestrator.models.triton import TritonModels

    plain = LlmRequest((ChatMessage("user", "hi"),))
    assert "JSON_SCHEMA" not in [i.name() for i in TritonModels._llm_inputs(plain)]  # older servers still serve it
    inputs = {i.name(): i for i in TritonModels._llm_inputs(LlmRequest(plain.messages, json_schema=json.dumps(SCHEMA)))}
    assert inputs["JSON_SCHEMA"].datatype() == "BYTES" and inputs["JSON_SCHEMA"].shape() == [1, 1]


def test_the_openai_request_asks_for_structured_output() -> None:
    from orchestrator.config import LlmSettings
    from orchestrator.errors import BadOption
    from orchestrator.models.openai_llm import OpenAIChat
    from orchestrator.models.ports import ChatMessage, LlmRequest

    chat = OpenAIChat(LlmSettings(backend="openai", openai_base_url="http://127.0.0.1:1/v1"))
    request = LlmRequest((ChatMessage("user", "hi"),))
    assert "response_format" not in chat._body(request)
    body = chat._body(LlmRequest(request.messages, json_schema=json.dumps(SCHEMA)))
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True},
    }
    for bad in ("{oops", "[1]"):
        with pytest.raises(BadOption, match="JSON schema"):
            chat._body(LlmRequest(request.messages, json_schema=bad))


# --- the real GGUF under a grammar ---


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    if not GGUF.is_file():
        pytest.fail(f"{GGUF} is missing: run `make setup` (scripts/bootstrap.sh extracts it)")
    yield LlamaEngine(GGUF, n_ctx=1024, n_threads=1)


def constrained(engine: LlamaEngine, **kwargs: Any) -> Callable[[], str]:
    grammar = GrammarCache().get(json.dumps(SCHEMA))
    return lambda: generate_text(engine, JUDGE, grammar=grammar, **{"max_tokens": 48, "temperature": 0.0, **kwargs})


def test_a_constrained_reply_parses_and_validates_every_time(engine: LlamaEngine) -> None:
    """The grammar's state is fresh for each request: the same grammar twice (and at a temperature) gives a
    whole object each time, not an empty reply left over from the last parse."""
    free = generate_text(engine, JUDGE, max_tokens=48, temperature=0.0)
    replies = [constrained(engine)(), constrained(engine)(), constrained(engine, temperature=0.8)()]
    for text in replies:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert replies[0] == replies[1]
    assert free != replies[0]  # the grammar did change what this model writes


def test_stop_strings_and_max_tokens_still_cut_a_constrained_reply(engine: LlamaEngine) -> None:
    whole = constrained(engine)()
    stats = GenerationStats()
    cut = constrained(engine, stop=['"name"'], stats=stats)()
    assert cut == whole[: whole.find('"name"')] and stats.finish_reason == "stop"
    stats = GenerationStats()
    short = constrained(engine, max_tokens=3, stats=stats)()
    assert whole.startswith(short) and stats.finish_reason == "length" and stats.generated_tokens == 3


def test_a_pattern_constrains_the_reply(engine: LlamaEngine) -> None:
    schema = {
        "type": "object",
        "properties": {
            "given": {"type": "boolean"},
            "date_of_birth": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        },
        "required": ["given", "date_of_birth"],
    }
    grammar = grammar_from_schema(json.dumps(schema))
    engine.check_grammar(grammar)  # llama.cpp parses what the shorthands became
    chat = [Message("user", "I was born on the 3rd of March 1985. Reply with JSON: given, date_of_birth.")]
    reply = json.loads(generate_text(engine, chat, max_tokens=48, temperature=0.0, grammar=grammar))
    jsonschema.validate(reply, schema)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", reply["date_of_birth"])


def test_a_grammar_llama_cpp_cannot_parse_is_refused_not_run(engine: LlamaEngine) -> None:
    """A grammar llama.cpp fails to parse would crash the process inside `Llama.generate`: refused first."""
    from llama_cpp.llama_grammar import LlamaGrammar

    with pytest.raises(JsonSchemaError, match="cannot parse"):
        generate_text(engine, JUDGE, max_tokens=8, temperature=0.0, grammar=LlamaGrammar.from_string("root ::= foo"))
    assert generate_text(engine, JUDGE, max_tokens=4, temperature=0.0)  # the engine serves on
