"""The REST API's OpenAPI 3.1 document (openapi.yaml, the source of truth) and validation of bodies against it.

The document is loaded once. Validators are built once per operation (and response) from the schema with its
`$ref: '#/components/schemas/X'` inlined (the document has no recursive schemas), so a persona body is checked in a
few hundred microseconds. Errors come back as `Invalid(message, field)` with `field` a JSON path (`$.layers.llm`),
the one error `jsonschema.exceptions.best_match` finds most relevant.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match

from orchestrator.errors import Invalid

__all__ = [
    "Invalid",
    "Operation",
    "document",
    "document_json",
    "operation",
    "operations",
    "validate_request",
    "validate_response",
    "warm",
]

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_JSON = "application/json"


@dataclass(frozen=True)
class Operation:
    """One operation of the document, as the server routes it."""

    operation_id: str
    method: str  # upper case
    path: str  # OpenAPI template, `/v1/personas/{persona_id}`
    aiohttp_path: str  # aiohttp's route syntax (the same `{name}` placeholders)
    # The application/json body schema with every $ref inlined (self-contained); None without a JSON body.
    request_schema: dict[str, Any] | None = field(compare=False)
    request_content_types: tuple[str, ...]
    request_required: bool  # False: the body may be left out (`validate_request(op, None)` passes)
    auth: bool  # an API key is required (the `bearer` scheme); False for `security: []` and join-token operations
    idempotent: bool = False  # takes an `Idempotency-Key` header (a retry gets the first answer)


# ---- the document ----


@functools.cache
def document() -> dict[str, Any]:
    """The parsed document (shared: treat it as read-only)."""
    text = resources.files(__package__).joinpath("openapi.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise TypeError("openapi.yaml does not hold a mapping")
    return doc


@functools.cache
def document_json() -> bytes:
    """The document as the server sends it at /v1/openapi.json."""
    return json.dumps(document(), ensure_ascii=False, separators=(",", ":")).encode()


def _pointer(*segments: str) -> str:
    return "".join("/" + s.replace("~", "~0").replace("/", "~1") for s in segments)


def _at(pointer: str) -> Any:
    node: Any = document()
    for raw in pointer.split("/")[1:]:
        key = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def _follow(pointer: str) -> tuple[str, dict[str, Any]]:
    """Where a (request body / response) object really is: local `$ref`s followed."""
    node = _at(pointer)
    for _ in range(32):
        ref = node.get("$ref") if isinstance(node, dict) else None
        if not isinstance(ref, str):
            return pointer, node
        if not ref.startswith("#"):
            raise ValueError(f"only local $refs are supported, not {ref!r}")
        pointer = ref[1:]
        node = _at(pointer)
    raise ValueError(f"$ref loop at {pointer}")


def _inline(node: Any, stack: tuple[str, ...] = ()) -> Any:
    """`node` with every local `$ref` replaced by a copy of its target (the document has no recursive schemas)."""
    if isinstance(node, list):
        return [_inline(item, stack) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        if ref in stack:
            raise ValueError(f"recursive $ref {ref}")
        target = _inline(_at(ref[1:]), (*stack, ref))
        siblings = {k: _inline(v, stack) for k, v in node.items() if k != "$ref"}
        # 2020-12 applies a $ref's siblings too: keep both rather than letting one override the other.
        return {"allOf": [target], **siblings} if siblings else target
    return {k: _inline(v, stack) for k, v in node.items()}


@functools.cache
def _operations() -> tuple[Operation, ...]:
    doc = document()
    found: list[Operation] = []
    for path, item in doc.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            content_types: tuple[str, ...] = ()
            request_schema = None
            required = False
            if "requestBody" in op:
                _, body = _follow(_pointer("paths", path, method, "requestBody"))
                content = body.get("content", {})
                content_types = tuple(content)
                required = bool(body.get("required", False))
                if _JSON in content and "schema" in content[_JSON]:
                    request_schema = _inline(content[_JSON]["schema"])
            security = op.get("security", doc.get("security", []))
            params = [
                _at(p["$ref"][1:]) if "$ref" in p else p
                for p in [*item.get("parameters", []), *op.get("parameters", [])]
            ]
            found.append(
                Operation(
                    operation_id=op["operationId"],
                    method=method.upper(),
                    path=path,
                    aiohttp_path=path,
                    request_schema=request_schema,
                    request_content_types=content_types,
                    request_required=required,
                    auth=any("bearer" in requirement for requirement in security),
                    idempotent=any(p["in"] == "header" and p["name"].lower() == "idempotency-key" for p in params),
                )
            )
    return tuple(found)


def operations() -> list[Operation]:
    """Every operation, in document order."""
    return list(_operations())


@functools.cache
def _by_id() -> dict[str, Operation]:
    return {op.operation_id: op for op in _operations()}


def operation(operation_id: str) -> Operation:
    """The operation named `operation_id` (KeyError if the document has none)."""
    try:
        return _by_id()[operation_id]
    except KeyError:
        raise KeyError(f"the OpenAPI document has no operation {operation_id!r}") from None


# ---- validators ----

# Formats checked here, with the standard library, so validation does not depend on which of jsonschema's optional
# format packages happen to be installed.
_FORMATS = FormatChecker(formats=())
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s\x00-\x1f\x7f]+$")


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if not _DATE_TIME.match(instance):
        return False
    datetime.fromisoformat(instance.upper())  # month 13, day 32, hour 25: ValueError
    return True


@_FORMATS.checks("uri")
def _is_uri(instance: object) -> bool:
    return not isinstance(instance, str) or bool(_URI.match(instance))


@functools.cache
def _validator(pointer: str) -> Draft202012Validator:
    """A validator for the schema at `pointer` in the document.

    Its $refs are inlined first: resolving them through a `referencing` registry on every call made a persona
    body take about 2.5 times as long to check.
    """
    return Draft202012Validator(_inline(_at(pointer)), format_checker=_FORMATS)


@dataclass(frozen=True)
class _Union:
    """A `oneOf` with a `discriminator`: branches chosen by the discriminating property's value."""

    property_name: str
    branches: dict[str, str]  # value -> the branch schema's pointer


def _request_pointer(op: Operation) -> str | None:
    if op.request_schema is None:
        return None
    body_pointer, _ = _follow(_pointer("paths", op.path, op.method.lower(), "requestBody"))
    return f"{body_pointer}{_pointer('content', _JSON, 'schema')}"


def _union(schema_pointer: str) -> _Union | None:
    pointer, schema = _follow(schema_pointer)
    disc = schema.get("discriminator")
    if not isinstance(disc, dict) or "oneOf" not in schema:
        return None
    name = disc["propertyName"]
    branches: dict[str, str] = {}
    for value, ref in disc.get("mapping", {}).items():
        branches[value] = ref[1:]
    for i in range(len(schema["oneOf"])):
        # Branches the mapping leaves out are found by their `const` (OpenAPI would use the schema's name).
        branch_pointer, resolved = _follow(f"{pointer}/oneOf/{i}")
        const = resolved.get("properties", {}).get(name, {}).get("const")
        if isinstance(const, str):
            branches.setdefault(const, branch_pointer)
    return _Union(name, branches)


@functools.cache
def _request_check(operation_id: str) -> tuple[Operation, _Union | None, Draft202012Validator | None]:
    op = operation(operation_id)
    pointer = _request_pointer(op)
    if pointer is None:
        return op, None, None
    return op, _union(pointer), _validator(pointer)


def _response_pointer(operation_id: str, status: int) -> tuple[str, bool] | None:
    """(pointer to the JSON body schema or to the response, whether it has a JSON body); None if undocumented."""
    op = operation(operation_id)
    responses_pointer = _pointer("paths", op.path, op.method.lower(), "responses")
    responses = _at(responses_pointer)
    for key in (str(status), f"{status // 100}XX", "default"):
        if key in responses:
            pointer, response = _follow(f"{responses_pointer}/{key}")
            content = response.get("content", {})
            if _JSON in content and "schema" in content[_JSON]:
                return f"{pointer}{_pointer('content', _JSON, 'schema')}", True
            return pointer, False
    return None


# ---- validation ----


def validate_request(operation_id: str, body: object) -> None:
    """Check a parsed JSON request body (None when the request had none) against the operation's schema.

    Raises `Invalid` naming the most relevant error; KeyError for an unknown operation; LookupError for an
    operation that takes no JSON body.
    """
    op, union, validator = _request_check(operation_id)
    if validator is None:
        raise LookupError(f"{operation_id} takes no JSON body")
    if body is None and not op.request_required:
        return
    if union is not None:
        # Pick the branch by its discriminator first: oneOf's own error ("not valid under any of the given
        # schemas") would not say what is wrong.
        validator = _branch(union, body)
    _raise_best(validator.iter_errors(body))


def validate_response(operation_id: str, status: int, body: object) -> None:
    """Check a response's parsed JSON body (None when it has none) against what the document says of `status`."""
    found = _response_pointer(operation_id, status)
    if found is None:
        raise Invalid(f"status {status} is not documented for {operation_id}")
    pointer, has_json = found
    if not has_json:
        if body not in (None, b"", ""):
            raise Invalid(f"status {status} of {operation_id} has no body")
        return
    _raise_best(_validator(pointer).iter_errors(body))


def _branch(union: _Union, body: object) -> Draft202012Validator:
    if not isinstance(body, dict):
        raise Invalid("the body must be an object", "$")
    name = union.property_name
    path = _path((name,))
    allowed = ", ".join(union.branches)
    value = body.get(name)
    if name not in body:
        raise Invalid(f"{path} is required: one of {allowed}", path)
    if not isinstance(value, str) or value not in union.branches:
        raise Invalid(f"{path} must be one of {allowed}, not {_show(value)}", path)
    return _validator(union.branches[value])


def _raise_best(errors: Iterable[ValidationError]) -> None:
    error = best_match(errors)
    if error is not None:
        message, where = _explain(error)
        raise Invalid(message, where)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TYPE_WORDS = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def _path(parts: Iterable[str | int]) -> str:
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.match(part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def _show(value: object, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _subject(path: str) -> str:
    return "the body" if path == "$" else path


def _explain(error: ValidationError) -> tuple[str, str]:
    """A message that says what to do, and the JSON path of the field to blame."""
    parts = list(error.absolute_path)
    keyword = str(error.validator)
    value: Any = error.validator_value
    instance = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}

    if keyword in ("additionalProperties", "unevaluatedProperties") and isinstance(instance, dict):
        known = schema.get("properties", {})
        patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
        extras = [k for k in instance if k not in known and not any(p.search(k) for p in patterns)]
        if extras:
            where = _path([*parts, extras[0]])
            allowed = ", ".join(known) or "none"
            return f"{where} is not a known field (allowed: {allowed})", where
    if keyword == "required" and isinstance(instance, dict):
        missing = [p for p in value if p not in instance]
        # jsonschema reports one error per missing property and names it in the message.
        name = next((p for p in missing if repr(p) in error.message), missing[0] if missing else None)
        if name is not None:
            where = _path([*parts, name])
            return f"{where} is required", where

    where = _path(parts)
    subject = _subject(where)
    text = _keyword_text(keyword, value, instance, schema)
    return (f"{subject} {text}" if text else f"{subject}: {error.message}"), where


def _keyword_text(keyword: str, value: Any, instance: Any, schema: Mapping[str, Any]) -> str | None:
    if keyword == "type":
        types = value if isinstance(value, list) else [value]
        return "must be " + " or ".join(_TYPE_WORDS.get(str(t), str(t)) for t in types)
    if keyword == "enum":
        return f"must be one of {', '.join(_show(v) for v in value)}, not {_show(instance)}"
    if keyword == "const":
        return f"must be {_show(value)}, not {_show(instance)}"
    if keyword == "minLength":
        return "must not be empty" if value == 1 else f"must be at least {value} characters long"
    if keyword == "maxLength":
        return f"must be at most {value} characters long (it has {len(instance)})"
    if keyword == "minimum":
        return f"must be at least {value}"
    if keyword == "maximum":
        return f"must be at most {value}"
    if keyword == "exclusiveMinimum":
        return f"must be greater than {value}"
    if keyword == "exclusiveMaximum":
        return f"must be less than {value}"
    if keyword == "minItems":
        return f"must have at least {value} items"
    if keyword == "maxItems":
        return f"must have at most {value} items (it has {len(instance)})"
    if keyword == "uniqueItems":
        return "must not repeat items"
    if keyword == "pattern":
        return f"must match {value} (it is {_show(instance)})"
    if keyword == "format":
        what = {"date-time": "an ISO-8601 date and time", "uri": "an absolute URI"}.get(value, f"a valid {value}")
        return f"must be {what}, not {_show(instance)}"
    if keyword == "minProperties":
        names = [k for k in schema.get("properties", {}) if k not in (instance or {})]
        hint = f" (of {', '.join(names)})" if names else ""
        return f"must have at least {value} fields{hint}"
    if keyword == "maxProperties":
        return f"must have at most {value} fields"
    return None


def warm() -> None:
    """Load the document and build every request validator now, so that no request pays for it (call at start)."""
    document_json()
    for op in _operations():
        _request_check(op.operation_id)
