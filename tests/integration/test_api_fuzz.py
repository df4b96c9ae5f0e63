"""Schemathesis against the running control plane (SQLite and PostgreSQL), from the OpenAPI document it serves:
every operation, with a valid API key, fed generated bodies, parameters and headers, both valid (positive) and
invalid (negative); no answer may be a 5xx, and every answer must match the document.

Bounded: MAX_EXAMPLES per operation and mode keeps the test to about 15 s per backend on two idle cores.
The key's rate limit is off so that the examples reach the handlers rather than a 429.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from orchestrator.store.store import utc_now
from tests.integration.conftest import StartControl, bearer, checked_client, new_tenant

pytestmark = [
    pytest.mark.integration,
    # schemathesis's negative strategies draw from `random` inside hypothesis (its own code, not ours)
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

MAX_EXAMPLES = 30  # per operation and generation mode
CHECKS = [not_a_server_error, response_schema_conformance]


def with_real_ids(case: schemathesis.Case, ids: dict[str, str]) -> schemathesis.Case:
    """The case aimed at the tenant's own objects: its path ids, and a create's persona, are real ones (random
    ids are all `404`/`422`, which never reaches the code behind them)."""
    for name in case.path_parameters or {}:
        if name in ids:
            case.path_parameters[name] = ids[name]
    if isinstance(case.body, dict) and "persona_id" in case.body:
        case.body["persona_id"] = ids["persona_id"]
        case.body.pop("face_id", None)  # no ready face here: the create would stop at it
    return case


def _takes_input(operation: Any) -> bool:
    """Whether the operation has parameters or a body (the probes and the document take none)."""
    raw = operation.definition.raw
    return bool(raw.get("parameters") or raw.get("requestBody") or "{" in operation.path)


def _aims_at_objects(operation: Any) -> bool:
    return "{" in operation.path or operation.label == "POST /v1/conversations"


def fuzz(url: str, api_key: str, ids: dict[str, str]) -> tuple[dict[str, str], int]:
    """Runs every operation's examples (blocking: call it off the event loop the server runs on); returns the
    failures by operation and mode, and how many requests were sent."""
    schema = schemathesis.openapi.from_url(f"{url}/v1/openapi.json")
    failures: dict[str, str] = {}
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        strategies = {"positive": operation.as_strategy(generation_mode=GenerationMode.POSITIVE)}
        if _takes_input(operation):  # (one without any, the probes say, has nothing to make invalid: Unsatisfiable)
            strategies["negative"] = operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
        if _aims_at_objects(operation):
            # deletes take the spare persona, so the creates after them still find the one they name
            aimed = {**ids, "persona_id": ids["spare_persona_id"]} if operation.method.upper() == "DELETE" else ids
            positive = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
            strategies["positive, real ids"] = positive.map(lambda case, aimed=aimed: with_real_ids(case, aimed))
        for mode, strategy in strategies.items():

            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same examples every run: a failure here reproduces
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def examples(case: schemathesis.Case) -> None:
                nonlocal sent
                sent += 1
                case.call_and_validate(base_url=url, headers=bearer(api_key), checks=CHECKS, timeout=10)

            try:
                examples()
            except Exception as err:
                detail = "".join(traceback.format_exception_only(err)).strip()
                failures[f"{operation.label} [{mode}]"] = detail[:3000]
    return failures, sent


async def test_every_operation_survives_generated_requests(start_control: StartControl) -> None:
    stack, url, settings_ = await start_control(key_requests_per_s=0.0)
    tenant = await new_tenant(stack, settings_, max_concurrent_conversations=10_000)
    async with checked_client(url, tenant["api_key"]) as client:  # objects for the examples to aim at
        spare_key = await client.create_key("for the fuzzer to revoke")
        persona = await client.create_persona(name="Ada", system_prompt="You are Ada.")
        spare_persona = await client.create_persona(name="Spare", system_prompt="You are spare.")
        conv = await client.create_conversation(persona["persona_id"], callback_url="http://127.0.0.1:9/hooks")
        await client.end_conversation(conv["conversation_id"])  # (webhooks to list)
    face = await stack.store.create_face(tenant["tenant_id"], "face", utc_now())
    await stack.store.set_face_status(face.id, "ready")
    ids = {
        "key_id": spare_key["key_id"],
        "persona_id": persona["persona_id"],
        "spare_persona_id": spare_persona["persona_id"],
        "conversation_id": conv["conversation_id"],
        "face_id": face.id,
    }
    began = time.monotonic()
    failures, sent = await asyncio.to_thread(fuzz, url, tenant["api_key"], ids)
    print(f"[{stack.store.backend}] {sent} requests in {time.monotonic() - began:.1f} s")
    assert not failures, "\n\n".join(f"{where}:\n{detail}" for where, detail in failures.items())
    async with checked_client(url, tenant["api_key"]) as client:  # the server is whole afterwards
        assert (await client.list_keys())["data"]
        created = (await client.list_conversations(limit=100))["data"]
        assert len(created) > 1, "no generated create reached the store"
