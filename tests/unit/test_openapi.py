"""The REST API's OpenAPI document (orchestrator/api/http/openapi.yaml) and the body validation built on it."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from orchestrator.api.http import openapi
from orchestrator.api.http.openapi import Invalid, validate_request, validate_response
from orchestrator.errors import DuetError

DOC = openapi.document()
OPERATION_IDS = {
    "getOpenApi",
    "getLiveness",
    "getReadiness",
    "getWebRtcConfig",
    "joinWebRtc",
    "listKeys",
    "createKey",
    "revokeKey",
    "listPersonaTemplates",
    "createPersona",
    "listPersonas",
    "getPersona",
    "updatePersona",
    "deletePersona",
    "createFace",
    "getFace",
    "listFaces",
    "deleteFace",
    "createConversation",
    "getConversation",
    "listConversations",
    "endConversation",
    "getTranscript",
    "createInteraction",
    "listWebhookDeliveries",
    "createDocument",
    "listDocuments",
    "getDocument",
    "deleteDocument",
    "searchKnowledge",
    "listMemories",
    "createMemory",
    "deleteMemory",
    "createGuardrail",
    "listGuardrails",
    "getGuardrail",
    "deleteGuardrail",
    "createObjectives",
    "listObjectives",
    "getObjectives",
    "deleteObjectives",
}
CREATES = {
    "createKey", "createPersona", "createFace", "createConversation", "createInteraction", "createDocument",
    "createMemory", "createGuardrail", "createObjectives",
}  # fmt: skip
LISTS = {
    "listKeys", "listPersonas", "listFaces", "listConversations", "listWebhookDeliveries", "listDocuments",
    "listMemories", "listGuardrails", "listObjectives",
}  # fmt: skip
ERROR_RESPONSES = {
    "400": "BadRequest",
    "401": "Unauthenticated",
    "404": "NotFound",
    "409": "Conflict",
    "413": "TooLarge",
    "415": "UnsupportedMediaType",
    "422": "Invalid",
    "429": "RateLimited",
    "503": "Unavailable",
}
ERROR_CODES = {
    "400": "bad_request",
    "401": "unauthenticated",
    "404": "not_found",
    "409": "conflict",
    "413": "too_large",
    "415": "unsupported_media_type",
    "422": "invalid",
    "429": "rate_limited",
    "503": "unavailable",
}
NOW = "2025-01-02T03:04:05.678Z"


def _lookup(ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for raw in ref[2:].split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def _deref(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = _lookup(node["$ref"])
    return node


def _walk(node: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{where}/{i}")


def _ops() -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method in {"get", "put", "post", "delete", "patch", "head", "options", "trace"}:
                yield path, method, item, op


# ---- the document itself ----


def test_document_header() -> None:
    assert DOC["openapi"] == "3.1.0"
    assert DOC["info"]["title"] == "Duet control plane"
    assert DOC["info"]["version"] == "1"
    assert "servers" not in DOC  # relative: the server answers on whatever host and port it was started with
    assert json.loads(openapi.document_json()) == DOC


def test_document_matches_the_openapi_31_meta_schema() -> None:
    definitions = pytest.importorskip("schemathesis.specs.openapi.definitions")
    validator = Draft202012Validator(definitions.OPENAPI_31)
    errors = sorted(str(e.message) for e in validator.iter_errors(DOC))
    assert errors == []


def test_operation_ids_are_the_fixed_set_and_unique() -> None:
    ids = [op["operationId"] for _, _, _, op in _ops()]
    assert len(ids) == len(set(ids))
    assert set(ids) == OPERATION_IDS
    assert {op.operation_id for op in openapi.operations()} == OPERATION_IDS


def test_every_ref_resolves() -> None:
    refs = [(where, node["$ref"]) for where, node in _walk(DOC) if isinstance(node, dict) and "$ref" in node]
    assert refs
    for where, ref in refs:
        assert ref.startswith("#/"), f"{where}: only local refs"
        _lookup(ref)  # KeyError if it does not resolve


def test_every_discriminator_mapping_resolves_to_a_branch() -> None:
    for _, node in _walk(DOC):
        if isinstance(node, dict) and "discriminator" in node:
            branches = {b["$ref"] for b in node["oneOf"]}
            name = node["discriminator"]["propertyName"]
            for value, ref in node["discriminator"]["mapping"].items():
                assert ref in branches
                assert _lookup(ref)["properties"][name] == {"const": value}
            assert set(node["discriminator"]["mapping"].values()) == branches


def test_every_path_parameter_is_declared() -> None:
    for path, method, item, op in _ops():
        declared: dict[str, Any] = {}
        for listed in [*item.get("parameters", []), *op.get("parameters", [])]:
            param = _deref(listed)
            if param["in"] == "path":
                assert param["required"] is True
                declared[param["name"]] = param
        assert set(declared) == set(re.findall(r"{([^}]+)}", path)), f"{method} {path}"


JOIN_TOKEN_OPS = ("getWebRtcConfig", "joinWebRtc")  # a browser holds a conversation's join token, not a key
PUBLIC_OPS = ("getOpenApi", "getLiveness", "getReadiness")  # the document and the probes: no key at all


def test_security_is_bearer_except_for_the_public_operations_and_the_browser_join() -> None:
    for scheme in ("bearer", "joinToken"):
        assert DOC["components"]["securitySchemes"][scheme] == {
            "type": "http",
            "scheme": "bearer",
            "description": DOC["components"]["securitySchemes"][scheme]["description"],
        }
    for _, _, _, op in _ops():
        if op["operationId"] in PUBLIC_OPS:
            assert op["security"] == []
        elif op["operationId"] in JOIN_TOKEN_OPS:
            assert op["security"] == [{"joinToken": []}], op["operationId"]
        else:
            assert op["security"] == [{"bearer": []}], op["operationId"]
    auth = {op.operation_id: op.auth for op in openapi.operations()}
    assert [auth.pop(name) for name in PUBLIC_OPS] == [False, False, False]
    assert [auth.pop(name) for name in JOIN_TOKEN_OPS] == [False, False]
    assert all(auth.values())


def test_error_responses_are_listed_and_shared() -> None:
    for path, method, _, op in _ops():
        name = op["operationId"]
        if name in PUBLIC_OPS:  # no key, no body, no rate: nothing to refuse (readiness's 503: below)
            continue
        responses = op["responses"]
        expected = {"401", "429", "503"}
        if "requestBody" in op:
            expected |= {"400", "413", "415", "422"}
        if name in JOIN_TOKEN_OPS:  # an unknown conversation is 401 (a token holder learns no other ids), and a
            expected.add("409")  # joined or ended one 409; only a join starts a session (a start rate: 429)
            if name == "getWebRtcConfig":
                expected.discard("429")
        elif "{" in path:
            expected.add("404")
        if name in LISTS:
            expected.add("422")  # a bad limit or cursor
        if name in {"endConversation", "createInteraction", "searchKnowledge"} | CREATES:
            expected.add("409")  # (a search naming a document still processing: 409)
        errors = {code for code in responses if code[0] in "45"}
        assert errors == expected, f"{method} {path}"
        for code in errors:
            assert responses[code] == {"$ref": f"#/components/responses/{ERROR_RESPONSES[code]}"}


def test_probes_answer_their_own_bodies() -> None:
    by_id = {op["operationId"]: (path, op) for path, _, _, op in _ops()}
    assert by_id["getLiveness"][0] == "/v1/health/live"
    assert set(by_id["getLiveness"][1]["responses"]) == {"200"}
    path, ready = by_id["getReadiness"]
    assert path == "/v1/health/ready"
    assert set(ready["responses"]) == {"200", "503"}  # not ready is the same body, naming the failed checks
    for status in ("200", "503"):
        media = ready["responses"][status]["content"]["application/json"]
        assert media["schema"] == {"$ref": "#/components/schemas/Readiness"}
        validate_response("getReadiness", int(status), media["example"])
    checks = DOC["components"]["schemas"]["Readiness"]["properties"]["checks"]["properties"]
    assert set(checks) == {"triton", "store", "draining"}


def test_shared_error_responses_use_the_error_schema() -> None:
    responses = DOC["components"]["responses"]
    assert set(responses) == set(ERROR_RESPONSES.values())
    for status, name in ERROR_RESPONSES.items():
        media = responses[name]["content"]["application/json"]
        assert media["schema"] == {"$ref": "#/components/schemas/Error"}
        assert media["example"]["error"]["code"] == ERROR_CODES[status]
    retry_after = responses["RateLimited"]["headers"]["Retry-After"]
    assert retry_after["required"] is True
    assert retry_after["schema"]["type"] == "integer"


def test_creates_take_an_idempotency_key_and_lists_page() -> None:
    by_id = {op["operationId"]: (item, op) for _, _, item, op in _ops()}
    for name in CREATES:
        params = [_deref(p) for p in by_id[name][1].get("parameters", [])]
        key = next(p for p in params if p["name"] == "Idempotency-Key")
        assert key["in"] == "header"
        assert key["required"] is False
        assert key["schema"]["maxLength"] == 255
    for name in LISTS:
        named = {p["name"]: p for p in (_deref(p) for p in by_id[name][1]["parameters"])}
        assert named["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
        assert named["cursor"]["schema"]["type"] == "string"
        ok = _deref(by_id[name][1]["responses"]["200"]["content"]["application/json"]["schema"])
        assert ok["required"] == ["data", "next_cursor"]
        assert ok["properties"]["data"]["type"] == "array"


def test_every_component_schema_is_a_valid_2020_12_schema() -> None:
    schemas = DOC["components"]["schemas"]
    assert len(schemas) > 30
    for name, schema in schemas.items():
        try:
            Draft202012Validator.check_schema(schema)
        except Exception as e:  # pragma: no cover - the message names the schema
            raise AssertionError(f"{name}: {e}") from e


def _object_schemas(schema: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object schema inside `schema`, following schema keywords only (not the names of properties)."""
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "object" or "properties" in schema:
        yield where, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _object_schemas(sub, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _object_schemas(schema["items"], f"{where}[]")
    for keyword in ("oneOf", "anyOf", "allOf"):
        for i, sub in enumerate(schema.get(keyword, [])):
            yield from _object_schemas(sub, f"{where}/{keyword}/{i}")


def test_request_objects_reject_unknown_fields() -> None:
    # a tool's JSON Schema: any keywords; session options: any names; a guardrail's rule: its fields depend on its
    # type (the service checks them); an objective's conditional next objectives: names to conditions
    free_form = {"parameters", "options", "rule", "next_conditional"}
    seen = 0
    for op in openapi.operations():
        if op.request_schema is None:
            continue
        for where, schema in _object_schemas(op.request_schema, op.operation_id):
            if where.rsplit(".", 1)[-1] in free_form:
                continue
            seen += 1
            assert schema.get("additionalProperties") is False, where
    assert seen > 15


def test_operations_carry_routing_facts() -> None:
    by_id = {op.operation_id: op for op in openapi.operations()}
    persona = by_id["getPersona"]
    assert (persona.method, persona.path, persona.aiohttp_path) == ("GET", "/v1/personas/{persona_id}", persona.path)
    assert by_id["updatePersona"].method == "PATCH"
    assert by_id["createFace"].request_content_types == ("multipart/form-data",)
    assert by_id["createFace"].request_schema is None
    assert by_id["createPersona"].request_content_types == ("application/json",)
    assert by_id["createKey"].request_required is False
    assert by_id["endConversation"].request_schema is None
    schema = by_id["createPersona"].request_schema
    assert schema is not None
    assert "$ref" not in json.dumps(schema)  # inlined: usable without the document
    assert {op.operation_id for op in by_id.values() if op.idempotent} == CREATES
    assert openapi.operation("getFace") is by_id["getFace"]
    with pytest.raises(KeyError):
        openapi.operation("nope")


# ---- request validation ----

PERSONA: dict[str, Any] = {
    "name": "Ava",
    "system_prompt": "You are Ava, a friendly billing assistant.",
    "context": "The customer is on the Pro plan.",
    "greeting": "Hi, I'm Ava.",
    "face_id": None,
    "voice": "en_US-amy-medium",
    "emotion": "happiness",
    "vocabulary": ["Duet", "Triton"],
    "layers": {
        "llm": {
            "backend": "openai",
            "model": "gpt-4o-mini",
            "base_url": "http://127.0.0.1:8000/v1",
            "api_key": "sk-test",
            "temperature": 0.7,
            "max_tokens": 200,
            "max_sentences": 3,
            "speculation": True,
            "tools": [
                {
                    "name": "get_balance",
                    "description": "The account balance.",
                    "parameters": {"type": "object", "properties": {"account": {"type": "string"}}},
                }
            ],
        },
        "tts": {"voice": "en_US-amy-medium"},
        "perception": {"enabled": True, "tools": [{"name": "escalate", "when": "the user appears distressed"}]},
        "conversational_flow": {"turn_taking_patience": "high", "replica_interruptibility": "low"},
    },
    "document_ids": ["doc_1"],
    "document_tags": ["billing"],
    "guardrail_ids": ["grd_1"],
    "objectives_id": None,
}

CONVERSATION: dict[str, Any] = {
    "persona_id": "per_1",
    "face_id": "face_1",
    "conversational_context": "Returning customer.",
    "custom_greeting": "Welcome back!",
    "memory_store": "user:42",
    "document_ids": ["doc_1"],
    "document_tags": ["billing"],
    "callback_url": "https://example.com/hooks/duet",
    "properties": {"max_duration_s": 600, "participant_absent_timeout_s": 60, "participant_left_timeout_s": 5},
}


@pytest.mark.parametrize(
    ("operation_id", "body"),
    [
        ("createPersona", PERSONA),
        ("createPersona", {"name": "Bill", "template": "billing"}),
        ("createPersona", {"name": "x", "system_prompt": "y", "layers": {}}),
        ("updatePersona", {}),
        ("updatePersona", {"layers": {"llm": {"temperature": 0}}, "face_id": None}),
        ("createKey", {"name": "ci"}),
        ("createKey", {}),
        ("createKey", None),  # the body is optional here
        ("createConversation", CONVERSATION),
        ("createConversation", {"persona_id": "per_1"}),
    ],
)
def test_good_bodies_pass(operation_id: str, body: object) -> None:
    validate_request(operation_id, body)


def _with(base: dict[str, Any], change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    body = copy.deepcopy(base)
    change(body)
    return body


@pytest.mark.parametrize(
    ("operation_id", "body", "field", "words"),
    [
        # unknown fields, at every depth
        ("createPersona", _with(PERSONA, lambda b: b.update(nickname="A")), "$.nickname", "not a known field"),
        ("createPersona", _with(PERSONA, lambda b: b["layers"].update(video={})), "$.layers.video", "not a known"),
        ("createPersona", _with(PERSONA, lambda b: b["layers"]["llm"].update(top_p=1)), "$.layers.llm.top_p", "known"),
        (
            "createPersona",
            _with(PERSONA, lambda b: b["layers"]["llm"]["tools"][0].update(strict=True)),
            "$.layers.llm.tools[0].strict",
            "not a known field",
        ),
        ("updatePersona", {"persona_id": "per_1"}, "$.persona_id", "not a known field"),
        ("createKey", {"name": "a", "scope": "all"}, "$.scope", "not a known field"),
        ("createConversation", _with(CONVERSATION, lambda b: b["properties"].update(x=1)), "$.properties.x", "known"),
        # wrong types
        ("createPersona", _with(PERSONA, lambda b: b.update(name=5)), "$.name", "must be a string"),
        ("createPersona", _with(PERSONA, lambda b: b["layers"].update(llm=[])), "$.layers.llm", "must be an object"),
        (
            "createPersona",
            _with(PERSONA, lambda b: b["layers"]["llm"].update(speculation="yes")),
            "$.layers.llm.speculation",
            "true or false",
        ),
        (
            "createPersona",
            _with(PERSONA, lambda b: b["layers"]["llm"].update(max_tokens=1.5)),
            "$.layers.llm.max_tokens",
            "integer",
        ),
        ("createPersona", _with(PERSONA, lambda b: b.update(face_id=3)), "$.face_id", "a string or null"),
        ("createPersona", [], "$", "the body must be an object"),
        ("createKey", "ci", "$", "the body must be an object"),
        # missing required
        ("createPersona", _with(PERSONA, lambda b: b.pop("name")), "$.name", "is required"),
        ("createConversation", {"face_id": "face_1"}, "$.persona_id", "is required"),
        ("createPersona", None, "$", "must be an object"),
        (
            "createPersona",
            _with(PERSONA, lambda b: b["layers"]["perception"]["tools"][0].pop("when")),
            "$.layers.perception.tools[0].when",
            "is required",
        ),
        # enums, ranges, lengths, patterns, formats
        (
            "createPersona",
            _with(PERSONA, lambda b: b["layers"]["llm"].update(backend="vllm")),
            "$.layers.llm.backend",
            '"local", "openai"',
        ),
        (
            "createPersona",
            _with(PERSONA, lambda b: b["layers"]["conversational_flow"].update(turn_taking_patience="extreme")),
            "$.layers.conversational_flow.turn_taking_patience",
            "one of",
        ),
        (
            "createPersona",
            _with(PERSONA, lambda b: b["layers"]["llm"].update(temperature=2.5)),
            "$.layers.llm.temperature",
            "at most 2",
        ),
        (
            "createPersona",
            _with(PERSONA, lambda b: b["layers"]["llm"].update(max_tokens=0)),
            "$.layers.llm.max_tokens",
            "at least 1",
        ),
        ("createPersona", _with(PERSONA, lambda b: b.update(name="")), "$.name", "must not be empty"),
        ("createPersona", _with(PERSONA, lambda b: b.update(greeting="x" * 1001)), "$.greeting", "at most 1000"),
        ("createPersona", _with(PERSONA, lambda b: b.update(vocabulary=["w"] * 101)), "$.vocabulary", "at most 100"),
        ("createPersona", _with(PERSONA, lambda b: b["vocabulary"].append("")), "$.vocabulary[2]", "empty"),
        ("createPersona", _with(PERSONA, lambda b: b.update(template="bill ing")), "$.template", "must match"),
        (
            "createPersona",
            _with(PERSONA, lambda b: b["layers"]["llm"]["tools"][0].update(name="get balance")),
            "$.layers.llm.tools[0].name",
            "must match",
        ),
        (
            "createPersona",
            _with(PERSONA, lambda b: b["layers"]["llm"].update(base_url="not a url")),
            "$.layers.llm.base_url",
            "absolute URI",
        ),
        ("createConversation", _with(CONVERSATION, lambda b: b.update(memory_store="a b")), "$.memory_store", "match"),
        ("createConversation", _with(CONVERSATION, lambda b: b.update(callback_url="x y")), "$.callback_url", "URI"),
        (
            "createConversation",
            _with(CONVERSATION, lambda b: b["properties"].update(max_duration_s=5)),
            "$.properties.max_duration_s",
            "at least 10",
        ),
        ("updatePersona", {"name": None}, "$.name", "must be a string"),
    ],
)
def test_bad_bodies_name_the_field(operation_id: str, body: object, field: str, words: str) -> None:
    with pytest.raises(Invalid) as caught:
        validate_request(operation_id, body)
    assert caught.value.field == field
    assert words in caught.value.message
    assert caught.value.message.startswith("the body" if field == "$" else field)


def test_invalid_is_a_non_fatal_duet_error() -> None:
    error = Invalid("$.name is required", "$.name")
    assert isinstance(error, DuetError)
    assert (error.code, error.fatal, error.field, error.message) == ("invalid", False, "$.name", "$.name is required")
    assert Invalid("x").field == "$"


def test_long_values_do_not_flood_the_message() -> None:
    with pytest.raises(Invalid) as caught:
        validate_request("createPersona", _with(PERSONA, lambda b: b.update(template="?" * 5000)))
    assert len(caught.value.message) < 200


def test_field_paths_quote_odd_names() -> None:
    with pytest.raises(Invalid) as caught:
        validate_request("createKey", {"a b": 1})
    assert caught.value.field == '$["a b"]'


def test_operations_without_a_json_body_refuse_validation() -> None:
    with pytest.raises(LookupError):
        validate_request("createFace", {})
    with pytest.raises(KeyError):
        validate_request("noSuchOperation", {})


# ---- interactions: one schema per `type` ----


@pytest.mark.parametrize(
    "body",
    [
        {"type": "echo", "text": "Hello there."},
        {"type": "respond", "text": "What is my balance?"},
        {"type": "interrupt"},
        {"type": "overwrite_context", "text": ""},
        {"type": "append_context", "text": "The user is driving."},
        {"type": "sensitivity", "turn_taking_patience": "low"},
        {"type": "sensitivity", "replica_interruptibility": "high", "turn_taking_patience": "medium"},
        {"type": "tool_result", "call_id": "call_1", "output": {"balance": 12.5}},
        {"type": "tool_result", "call_id": "call_1", "output": "12.50 EUR"},
        {"type": "tool_result", "call_id": "call_1", "output": None},
    ],
)
def test_good_interactions_pass(body: dict[str, Any]) -> None:
    validate_request("createInteraction", body)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"type": "shout", "text": "hi"}, "$.type", "must be one of echo, respond, interrupt"),
        ({"text": "hi"}, "$.type", "is required: one of echo"),
        ({"type": 3}, "$.type", "must be one of"),
        (["echo"], "$", "the body must be an object"),
        ({"type": "echo"}, "$.text", "is required"),
        ({"type": "echo", "text": ""}, "$.text", "must not be empty"),
        ({"type": "respond", "text": "x" * 4001}, "$.text", "at most 4000"),
        ({"type": "interrupt", "text": "now"}, "$.text", "not a known field (allowed: type)"),
        ({"type": "append_context", "text": ""}, "$.text", "must not be empty"),
        ({"type": "sensitivity"}, "$", "at least 2 fields (of turn_taking_patience, replica_interruptibility)"),
        ({"type": "sensitivity", "turn_taking_patience": "slow"}, "$.turn_taking_patience", "one of"),
        ({"type": "tool_result", "output": 1}, "$.call_id", "is required"),
        ({"type": "tool_result", "call_id": "c"}, "$.output", "is required"),
        ({"type": "tool_result", "call_id": "c", "output": "x" * 20001}, "$.output", "at most 20000"),
    ],
)
def test_bad_interactions_name_the_branch_problem(body: object, field: str, words: str) -> None:
    with pytest.raises(Invalid) as caught:
        validate_request("createInteraction", body)
    assert caught.value.field == field
    assert words in caught.value.message
    assert "any of the given schemas" not in caught.value.message


# ---- response validation ----

KEY = {
    "key_id": "key_1",
    "name": "ci",
    "prefix": "duet_ab12",
    "created_at": NOW,
    "revoked_at": None,
    "last_used_at": NOW,
}
LAYERS_OUT = {
    "llm": {
        "backend": "openai",
        "model": "gpt-4o-mini",
        "base_url": "http://127.0.0.1:8000/v1",
        "api_key_set": True,
        "temperature": 0.7,
        "max_tokens": 200,
        "max_sentences": 3,
        "speculation": True,
        "tools": [],
    },
    "tts": {"voice": "en_US-amy-medium"},
    "perception": {"enabled": False, "tools": []},
    "conversational_flow": {"turn_taking_patience": "medium", "replica_interruptibility": "medium"},
}
PERSONA_OUT = {
    **{k: v for k, v in PERSONA.items() if k != "layers"},
    "layers": LAYERS_OUT,
    "template": None,
    "persona_id": "per_1",
    "created_at": NOW,
    "updated_at": "2025-01-02T03:04:05+00:00",
}
FACE = {"face_id": "face_1", "name": "me", "status": "failed", "error": "no face found", "created_at": NOW}
CONVERSATION_OUT: dict[str, Any] = {
    "conversation_id": "conv_1",
    "persona_id": "per_1",
    "face_id": None,
    "status": "ended",
    "shutdown_reason": "ended_by_api",
    "callback_url": "https://example.com/hooks",
    "conversational_context": None,
    "custom_greeting": None,
    "memory_store": None,
    "document_ids": [],
    "document_tags": [],
    "properties": {"max_duration_s": 1800, "participant_absent_timeout_s": 300, "participant_left_timeout_s": 10},
    "created_at": NOW,
    "started_at": NOW,
    "ended_at": NOW,
    "conversation_url": "http://127.0.0.1:8080/c/conv_1",
}
DELIVERY = {
    "webhook_id": "msg_1",
    "event_type": "conversation.ended",
    "url": "https://example.com/hooks",
    "status": "pending",
    "created_at": NOW,
    "delivered_at": None,
    "next_attempt_at": NOW,
    "attempts": [{"at": NOW, "status_code": 503, "error": None, "duration_ms": 12.5}],
}


def _page(item: dict[str, Any]) -> dict[str, Any]:
    return {"data": [item], "next_cursor": "c2"}


@pytest.mark.parametrize(
    ("operation_id", "status", "body"),
    [
        ("getOpenApi", 200, DOC),
        ("getLiveness", 200, {"live": True}),
        ("getReadiness", 200, {"ready": True, "checks": {"store": {"ok": True}, "draining": {"ok": True}}}),
        (
            "getReadiness",
            503,
            {
                "ready": False,
                "checks": {
                    "triton": {"ok": False, "message": "Triton or a model this server calls is not ready"},
                    "store": {"ok": True},
                    "draining": {"ok": True},
                },
            },
        ),
        ("listKeys", 200, _page(KEY)),
        ("createKey", 201, {k: KEY[k] for k in ("key_id", "name", "prefix", "created_at")} | {"api_key": "duet_x"}),
        ("revokeKey", 200, KEY | {"revoked_at": NOW}),
        (
            "listPersonaTemplates",
            200,
            {
                "data": [
                    {
                        "template": "billing",
                        "name": "Billing assistant",
                        "system_prompt": "You help with bills.",
                        "greeting": "Hi!",
                        "voice": "en_US-amy-medium",
                        "emotion": "neutral",
                        "layers": {"llm": {"speculation": True}},
                    }
                ]
            },
        ),
        ("createPersona", 201, PERSONA_OUT),
        ("getPersona", 200, PERSONA_OUT),
        ("updatePersona", 200, PERSONA_OUT | {"layers": {}}),
        ("listPersonas", 200, {"data": [], "next_cursor": None}),
        ("deletePersona", 204, None),
        ("createFace", 202, {"face_id": "face_1", "name": "me", "status": "preparing", "created_at": NOW}),
        ("getFace", 200, FACE),
        ("listFaces", 200, _page(FACE | {"status": "ready", "error": None})),
        ("deleteFace", 204, None),
        (
            "createConversation",
            201,
            {
                "conversation_id": "conv_1",
                "status": "created",
                "persona_id": "per_1",
                "join": {"grpc": "127.0.0.1:50051", "token": "jt_abc", "expires_at": NOW},
                "conversation_url": "http://127.0.0.1:8080/c/conv_1",
                "created_at": NOW,
            },
        ),
        ("getConversation", 200, CONVERSATION_OUT | {"status": "created", "shutdown_reason": None, "ended_at": None}),
        ("listConversations", 200, _page(CONVERSATION_OUT)),
        ("endConversation", 200, CONVERSATION_OUT),
        (
            "getTranscript",
            200,
            {
                "conversation_id": "conv_1",
                "turns": [
                    {"role": "user", "text": "Hi", "t": 1.2, "perception": {"arc": "calm"}},
                    {"role": "replica", "text": "Hello!", "t": 2.0, "perception": None},
                ],
            },
        ),
        ("createInteraction", 202, {"conversation_id": "conv_1", "type": "echo", "status": "accepted"}),
        ("listWebhookDeliveries", 200, _page(DELIVERY)),
        ("getPersona", 404, {"error": {"code": "not_found", "message": "no persona per_2"}}),
        ("createPersona", 422, {"error": {"code": "invalid", "message": "$.name is required", "field": "$.name"}}),
        ("listKeys", 429, {"error": {"code": "rate_limited", "message": "slow down"}}),
    ],
)
def test_good_responses_pass(operation_id: str, status: int, body: object) -> None:
    validate_response(operation_id, status, body)


@pytest.mark.parametrize(
    ("operation_id", "status", "body", "field"),
    [
        # the LLM api_key is write-only
        ("getPersona", 200, PERSONA_OUT | {"layers": {"llm": {"api_key": "sk-leak"}}}, "$.layers.llm.api_key"),
        ("getPersona", 200, {k: v for k, v in PERSONA_OUT.items() if k != "updated_at"}, "$.updated_at"),
        ("getPersona", 200, PERSONA_OUT | {"created_at": "yesterday"}, "$.created_at"),
        ("getPersona", 200, PERSONA_OUT | {"created_at": "2025-13-02T03:04:05Z"}, "$.created_at"),
        ("getFace", 200, FACE | {"status": "broken"}, "$.status"),
        ("getFace", 200, FACE | {"face_id": "per_1"}, "$.face_id"),
        ("getConversation", 200, CONVERSATION_OUT | {"shutdown_reason": "bored"}, "$.shutdown_reason"),
        ("listKeys", 200, {"data": [KEY]}, "$.next_cursor"),
        ("getPersona", 404, {"error": {"message": "no"}}, "$.error.code"),
        ("getPersona", 404, {"code": "not_found"}, "$.code"),
        ("getPersona", 201, PERSONA_OUT, "$"),  # not a documented status
        ("deletePersona", 204, {"deleted": True}, "$"),
        ("getReadiness", 200, {"ready": True, "checks": {"store": {"ok": True}}}, "$.checks.draining"),
        ("getReadiness", 503, {"ready": False, "checks": {"draining": {"ok": "no"}}}, "$.checks.draining.ok"),
        ("getReadiness", 200, {"ready": True, "checks": {"draining": {"ok": True}, "x": {"ok": True}}}, "$.checks.x"),
        ("getLiveness", 503, {"live": True}, "$"),
    ],
)
def test_bad_responses_are_caught(operation_id: str, status: int, body: object, field: str) -> None:
    with pytest.raises(Invalid) as caught:
        validate_response(operation_id, status, body)
    assert caught.value.field == field


def test_warm_builds_everything_up_front() -> None:
    openapi.warm()
    validate_request("createPersona", PERSONA)
