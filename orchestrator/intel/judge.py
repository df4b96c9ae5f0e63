"""A JSON judge: a language model asked one question and made to answer in one JSON object of a given schema.

Guardrails (`llm` rules), objectives (did the user give what the objective asks for?) and tool choice (does the
user's turn need a tool?) each ask the model a small, schema-constrained question. They see only `JsonModel`,
so tests answer with a fake; `LlmJson` implements it over the streaming `LanguageModel`:

- the request carries the schema as `LlmRequest.json_schema`: the local model decodes under a grammar built from
  it (so its output has the schema's shape by construction), an OpenAI-compatible backend gets it as
  `response_format`;
- temperature 0: a judgement, not a conversation;
- the text is parsed and validated against the schema with `jsonschema`; anything else (no JSON, a reply cut
  at `max_tokens`, a backend that ignored the schema) raises `JudgeFailed`, which callers treat as "no
  judgement this time", never as a verdict.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Protocol

from jsonschema import Draft202012Validator

from orchestrator.errors import DuetError
from orchestrator.models.ports import ChatMessage, LanguageModel, LlmRequest


class JudgeFailed(DuetError):
    """The judge's answer was not one JSON object of the requested schema; `text` is (the start of) what it said."""

    code = "judge_failed"
    fatal = False

    def __init__(self, message: str, text: str = "") -> None:
        super().__init__(message)
        self.text = text[:500]


class JsonModel(Protocol):
    async def complete_json(
        self, messages: list[ChatMessage], schema: dict[str, Any], *, max_tokens: int
    ) -> dict[str, Any]:
        """One JSON object satisfying `schema`, or `JudgeFailed`."""
        ...


_VALIDATORS_KEPT = 64  # a session asks a handful of distinct schemas; compiled validators are reused


class LlmJson:
    """`JsonModel` over a streaming `LanguageModel` (`model`: which local model; "" = its default)."""

    def __init__(self, llm: LanguageModel, model: str = "") -> None:
        self.llm = llm
        self.model = model
        self._validators: OrderedDict[str, Draft202012Validator] = OrderedDict()

    async def complete_json(
        self, messages: list[ChatMessage], schema: dict[str, Any], *, max_tokens: int
    ) -> dict[str, Any]:
        schema_text = json.dumps(schema, separators=(",", ":"), sort_keys=False)
        request = LlmRequest(
            messages=tuple(messages),
            max_tokens=max_tokens,
            temperature=0.0,
            model=self.model,
            json_schema=schema_text,
        )
        pieces: list[str] = []
        stream = self.llm.generate(request)
        try:
            async for piece in stream:
                pieces.append(piece)
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()  # a cancelled judgement stops the model too
        text = "".join(pieces)
        value = parse_json_object(text)
        if value is None:
            raise JudgeFailed(f"the judge did not answer with one JSON object (max_tokens {max_tokens})", text)
        error = next(iter(self._validator(schema_text, schema).iter_errors(value)), None)
        if error is not None:
            where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            raise JudgeFailed(f"the judge's answer breaks its schema at {where}: {error.message}", text)
        return value

    def _validator(self, key: str, schema: dict[str, Any]) -> Draft202012Validator:
        validator = self._validators.get(key)
        if validator is None:
            validator = Draft202012Validator(schema)
            self._validators[key] = validator
            if len(self._validators) > _VALIDATORS_KEPT:
                self._validators.popitem(last=False)
        else:
            self._validators.move_to_end(key)
        return validator


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object `text` holds, or None. Lenient where backends differ harmlessly: raw control characters
    in strings (the grammar's string rule lets a newline through), a code fence or words around the object (a
    backend that ignored the schema but still answered in JSON)."""
    text = text.strip()
    candidates = [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end and (start, end) != (0, len(text) - 1):
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate, strict=False)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None
