"""Conversations: created through the API, joined on the session stream with a join token, recorded while
they run (transcript, perception summaries, webhooks), ended with a reason.

created ──join (gRPC start + token)──▶ active ──▶ ended (`shutdown_reason`)
   └──── nobody joined within `participant_absent_timeout_s`, or `POST .../end` ────▶ ended

The session side (orchestrator/api/session_service.py) calls `join` at start, feeds the running session's
events to the `Recorder` it gets back, and reports how the session ended. The REST side calls the rest. Every
change that webhooks report is written with its outbox rows in one transaction (store), and the deliverer is
woken (`notify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from orchestrator.config import ApiSettings, Settings
from orchestrator.control import personas as pz
from orchestrator.control.credentials import new_join_token, token_matches
from orchestrator.control.intel import Intel, Plan
from orchestrator.control.webhooks import event_body, iso_utc
from orchestrator.errors import Conflict, DuetError, Invalid, NotFound, QuotaExceeded, Unauthenticated
from orchestrator.events import (
    Event,
    GuardrailTriggered,
    ObjectiveCompleted,
    PerceptionToolCall,
    ReplicaTurn,
    ToolCall,
    UserTurn,
    UtteranceSummary,
)
from orchestrator.session.interactions import Interaction
from orchestrator.session.persona import Persona
from orchestrator.store.records import ConversationRecord, Hold, Tenant, Utterance
from orchestrator.store.store import QuotaFull, Store, transient, utc_now

log = logging.getLogger("duet.conversations")

SHUTDOWN_REASONS = ("ended_by_api", "max_duration", "participant_absent", "participant_left", "error")
RECORD_QUEUE = 256  # events waiting to be written to the store, per conversation
RECORD_RETRY_S = 120.0  # a write that fails because the store is away is tried again for this long
SWEEP_S = 5.0


class LiveSessions(Protocol):
    """The sessions this process runs, by conversation id (the gRPC session service)."""

    async def interact(self, conversation_id: str, interaction: Interaction) -> bool: ...

    async def stop(self, conversation_id: str, reason: str) -> bool: ...

    def held(self) -> list[str]:
        """The conversations whose sessions run here now."""
        ...


class HeldElsewhere(DuetError):
    """The conversation's session runs on another orchestrator, reached at `url`: the request goes there."""

    code = "conflict"
    fatal = False

    def __init__(self, conversation_id: str, url: str) -> None:
        super().__init__(f"conversation {conversation_id} runs on another server")
        self.url = url


@dataclass(frozen=True)
class Joined:
    """What a session needs of its conversation: who the replica is and how long the call may last."""

    conversation: ConversationRecord
    tenant: Tenant
    persona: Persona
    persona_body: Mapping[str, Any]
    max_duration_s: float
    recorder: Recorder
    plan: Plan | None = None  # what it uses of the intelligence layer (None: nothing)


def _properties(settings: ApiSettings, given: Mapping[str, Any] | None) -> dict[str, int]:
    given = dict(given or {})
    return {
        "max_duration_s": int(given.get("max_duration_s", settings.default_max_duration_s)),
        "participant_absent_timeout_s": int(
            given.get("participant_absent_timeout_s", settings.default_absent_timeout_s)
        ),
        "participant_left_timeout_s": int(given.get("participant_left_timeout_s", 10)),
    }


class Conversations:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        notify: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.settings = settings
        self.api = settings.api
        self.templates = pz.Templates(settings.conversation.personas_dir)
        self.notify = notify  # wakes the webhook deliverer
        self.clock = clock
        self.live: LiveSessions | None = None  # set once the session service exists
        self.grpc_address = f"{settings.server.host}:{settings.server.port}"
        self.public_url = settings.api.public_url or f"http://{settings.server.host}:{settings.api.http_port}"
        self.intel = Intel(store, settings)  # documents, memories, guardrails, objectives, tools
        # Which orchestrator this is, among those sharing the store, and where the others reach it (the server
        # sets the local API address once it listens, unless `api.internal_url` names one).
        self.instance_id = settings.api.instance_id or f"duet-{secrets.token_hex(6)}"
        self._renewed_since: datetime | None = None  # since when this server's renewals have all succeeded
        self.internal_url = settings.api.internal_url or self.public_url

    # ---- the API's side ---------------------------------------------------------------------------------------

    def url_of(self, conversation_id: str) -> str:
        return f"{self.public_url.rstrip('/')}/c/{conversation_id}"

    def view(self, c: ConversationRecord) -> dict[str, Any]:
        s = c.settings
        return {
            "conversation_id": c.id,
            "persona_id": c.persona_id,
            "face_id": s.get("face_id"),
            "status": c.status,
            "shutdown_reason": c.shutdown_reason,
            "callback_url": c.callback_url,
            "conversational_context": s.get("conversational_context"),
            "custom_greeting": s.get("custom_greeting"),
            "memory_store": s.get("memory_store"),
            "document_ids": list(s.get("document_ids") or []),
            "document_tags": list(s.get("document_tags") or []),
            "properties": _properties(self.api, s.get("properties")),
            "created_at": iso_utc(c.created_at),
            "started_at": iso_utc(c.started_at) if c.started_at else None,
            "ended_at": iso_utc(c.ended_at) if c.ended_at else None,
            "conversation_url": self.url_of(c.id),
        }

    async def create(self, tenant: Tenant, body: Mapping[str, Any]) -> dict[str, Any]:
        now = self.clock()
        try:
            await self.store.get_persona(tenant.id, body["persona_id"])  # another tenant's: not found
        except NotFound as err:  # a body field, not the path: 422 naming it (the document has no 404 here)
            raise Invalid(f"no persona {body['persona_id']}", "$.persona_id") from err
        if face_id := body.get("face_id"):
            await self._check_face(tenant.id, face_id, "$.face_id")
        if url := body.get("callback_url"):
            pz.http_host(url, "$.callback_url")
        await self._check_minutes(tenant, now)
        settings = {k: v for k, v in body.items() if k not in ("persona_id", "callback_url")}
        settings["properties"] = _properties(self.api, body.get("properties"))
        token, digest = new_join_token()
        expires = now + timedelta(seconds=self.api.join_token_ttl_s)
        try:
            conv = await self.store.create_conversation(
                tenant.id,
                persona_id=body["persona_id"],
                settings=settings,
                callback_url=body.get("callback_url"),
                token_digest=digest,
                token_expires_at=expires,
                now=now,
                max_concurrent=tenant.max_concurrent_conversations,
            )
        except QuotaFull as err:
            raise QuotaExceeded(err.message, retry_after_s=30.0) from err
        return {
            "conversation_id": conv.id,
            "status": conv.status,
            "persona_id": conv.persona_id,
            "join": {"grpc": self.grpc_address, "token": token, "expires_at": iso_utc(expires)},
            # the page joins with the token in the fragment, which no browser sends to a server or its logs
            "conversation_url": f"{self.url_of(conv.id)}#token={token}",
            "created_at": iso_utc(conv.created_at),
        }

    async def _check_face(self, tenant_id: str, face_id: str, field: str) -> None:
        try:
            face = await self.store.get_face(tenant_id, face_id)
        except NotFound as err:
            raise Invalid(f"no face {face_id} (upload one with POST /v1/faces)", field) from err
        if face.status != "ready":
            raise Invalid(f"face {face_id} is {face.status}, not ready", field)

    async def check_persona_face(self, tenant_id: str, face_id: str | None) -> None:
        """A persona may name the tenant's own face or a built-in portrait (`faces/`)."""
        if not face_id:
            return
        if face_id.startswith("face_"):
            await self._check_face(tenant_id, face_id, "$.face_id")
        elif face_id not in self._builtin_faces():
            raise Invalid(f"no face {face_id}", "$.face_id")

    def _builtin_faces(self) -> set[str]:
        from orchestrator.face.library import FaceLibrary

        lib = FaceLibrary(self.settings.face.faces_dir, ".")
        return {n for n in lib.names() if not n.startswith("face_")}

    async def _check_minutes(self, tenant: Tenant, now: datetime) -> None:
        if tenant.max_minutes_per_day <= 0:
            return
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        used = await self.store.minutes_used(tenant.id, day, now)
        if used >= tenant.max_minutes_per_day:
            wait = (day + timedelta(days=1) - now).total_seconds()
            raise QuotaExceeded(
                f"the tenant has used its {tenant.max_minutes_per_day} conversation minutes for today", wait
            )

    async def end(self, tenant: Tenant, conversation_id: str) -> dict[str, Any]:
        conv = await self.store.get_conversation(tenant.id, conversation_id)
        if conv.status == "ended":
            raise Conflict(f"conversation {conversation_id} has already ended")
        self._route(conv)
        if conv.status == "active" and self.live is not None and await self.live.stop(conversation_id, "ended_by_api"):
            # the session ends itself and records the end (with its transcript); wait for it, briefly
            for _ in range(100):
                conv = await self.store.get_conversation(tenant.id, conversation_id)
                if conv.status == "ended":
                    return self.view(conv)
                await asyncio.sleep(0.05)
        with contextlib.suppress(Conflict):  # (the session may have ended it meanwhile)
            await self.finish(conv, "ended_by_api")
        return self.view(await self.store.get_conversation(tenant.id, conversation_id))

    async def transcript(self, tenant: Tenant, conversation_id: str) -> dict[str, Any]:
        turns = await self.store.transcript(tenant.id, conversation_id)
        return {"conversation_id": conversation_id, "turns": [_turn(u) for u in turns]}

    async def interact(self, tenant: Tenant, conversation_id: str, interaction: Interaction) -> None:
        conv = await self.store.get_conversation(tenant.id, conversation_id)
        if conv.status != "active":
            raise Conflict(f"conversation {conversation_id} is {conv.status}; interactions need an active one")
        self._route(conv)
        if self.live is None or not await self.live.interact(conversation_id, interaction):
            raise Conflict(f"conversation {conversation_id} has no live session on this server")

    def _route(self, conv: ConversationRecord) -> None:
        """An active conversation another live orchestrator holds is that one's to steer: `HeldElsewhere`.
        One whose holder's lease ran out is this server's to end (the sweeper would end it `error` anyway)."""
        if (
            conv.status == "active"
            and conv.holder is not None
            and conv.holder != self.instance_id
            and conv.holder_url
            and conv.held_until is not None
            and conv.held_until > self.clock()
        ):
            raise HeldElsewhere(conv.id, conv.holder_url)

    def hold(self, now: datetime) -> Hold:
        """This orchestrator's claim on a conversation it starts running at `now`."""
        return Hold(self.instance_id, self.internal_url, now + timedelta(seconds=self.api.hold_lease_s))

    async def renew(self) -> int:
        """Renew the lease of every conversation whose session runs here (every third of `api.hold_lease_s`)."""
        if self.live is None:
            return 0
        now = self.clock()
        held = self.live.held()
        try:
            renewed = await self.store.renew_holds(self.instance_id, held, self.hold(now).until)
            if not held:
                await self.store.ping()  # holding nothing, it must still know the store answers (sweep_orphans)
        except Exception:
            self._renewed_since = None
            raise
        if self._renewed_since is None:
            self._renewed_since = now
        return renewed

    async def sweep_orphans(self, page: int = 500) -> int:
        """Ends (`error`) the active conversations whose holder stopped renewing: its process died, or lost the
        store for longer than the lease. Their transcripts so far are kept and the `conversation.ended`
        webhooks go out from here. Conversations of this instance are left to their sessions."""
        now = self.clock()
        lease = timedelta(seconds=self.api.hold_lease_s)
        if self.live is not None and (self._renewed_since is None or now - self._renewed_since < lease):
            # After a store outage every lease has lapsed: give the live holders one lease to renew first.
            return 0
        ended = 0
        held_here = set(self.live.held()) if self.live is not None else set()
        for conv in await self.store.orphaned(now, page):
            if conv.id in held_here:
                continue
            with contextlib.suppress(Conflict):
                await self.finish(conv, "error")
                ended += 1
                log.warning("conversation %s ended: its server %s stopped renewing its hold", conv.id, conv.holder)
        return ended

    # ---- the session's side -----------------------------------------------------------------------------------

    async def check_token(self, conversation_id: str, token: str) -> ConversationRecord:
        """The conversation `token` may join now (nothing changes). Any mismatch is `Unauthenticated`, with the
        same message, so a guess learns nothing about which ids exist; a joined or ended one is `Conflict`."""
        found = await self.store.conversation_for_join(conversation_id)
        if found is None or not token_matches(token, found[1]):
            raise Unauthenticated("the join token is not valid for this conversation")
        conv = found[0]
        if conv.status == "created" and conv.token_expires_at <= self.clock():
            raise Unauthenticated("the join token has expired")
        if conv.status != "created":
            raise Conflict(f"conversation {conversation_id} is {conv.status}; it can be joined once")
        return conv

    async def join(self, conversation_id: str, token: str) -> Joined:
        """Checks the join token (`check_token`) and makes the conversation active (once)."""
        now = self.clock()
        conv = await self.check_token(conversation_id, token)
        tenant = await self.store.get_tenant(conv.tenant_id)
        try:
            record = await self.store.get_persona(conv.tenant_id, conv.persona_id)
        except NotFound as err:
            raise Conflict(f"the persona of conversation {conversation_id} was deleted") from err
        s = conv.settings
        persona = pz.runtime_persona(
            conv.persona_id,
            record.body,
            face=s.get("face_id"),
            greeting=s.get("custom_greeting"),
            context=s.get("conversational_context"),
        )
        plan = await self.intel.plan(conv, record.body)
        started = event_body("conversation.started", conv.id, now, {"persona_id": conv.persona_id})
        conv = await self.store.activate_conversation(conv.id, now, [started], self.hold(now))
        self.notify()
        props = _properties(self.api, s.get("properties"))
        recorder = Recorder(self, conv)
        return Joined(conv, tenant, persona, record.body, float(props["max_duration_s"]), recorder, plan)

    async def finish(
        self,
        conv: ConversationRecord,
        reason: str,
        *,
        perception: list[dict[str, Any]] | None = None,
        objectives: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ConversationRecord:
        """End `conv` with `reason`: the `conversation.ended` webhook holds the transcript, the perception
        summaries and every completed objective's outputs (by objective name). A conversation with a memory
        store is then learnt from, in the background."""
        now = self.clock()
        turns = await self.store.transcript(conv.tenant_id, conv.id)
        props = {
            "shutdown_reason": reason,
            "transcript": [_turn(u) for u in turns],
            "perception_summary": perception or [u.perception for u in turns if u.perception],
            "objective_outputs": {name: dict(values) for name, values in (objectives or {}).items()},
        }
        ended = event_body("conversation.ended", conv.id, now, props)
        record = await self.store.end_conversation(conv.id, reason, now, [ended])
        self.notify()
        if store := conv.settings.get("memory_store"):
            self.intel.memories.learn_later(conv.tenant_id, store, conv.id, [(u.role, u.text) for u in turns])
        return record

    async def sweep(self, page: int = 500) -> int:
        """Ends conversations nobody joined within their absent timeout (`participant_absent`), all of them:
        each tenant's own timeout, so every waiting one is looked at, page by page."""
        now = self.clock()
        ended = 0
        after: str | None = None
        while batch := await self.store.stale_created(now - timedelta(seconds=5), page, after):
            for conv in batch:
                absent = _properties(self.api, conv.settings.get("properties"))["participant_absent_timeout_s"]
                if conv.created_at + timedelta(seconds=absent) <= now:
                    with contextlib.suppress(Conflict):
                        await self.finish(conv, "participant_absent")
                        ended += 1
            if len(batch) < page:
                break
            after = batch[-1].id
        return ended

    async def run_sweeper(self) -> None:
        """For ever (an owned task): renew this server's holds, end absent and orphaned conversations."""
        while True:
            steps = (("renewing holds", self.renew), ("sweeping", self.sweep), ("ending orphans", self.sweep_orphans))
            for what, step in steps:
                try:
                    await step()
                except Exception:  # the store being away for a moment must not stop the sweeper
                    log.exception("%s failed", what)
            await asyncio.sleep(min(SWEEP_S, self.api.hold_lease_s / 3))

    def llm_endpoint(self, body: Mapping[str, Any]) -> dict[str, str] | None:
        """A persona's OpenAI-compatible endpoint (base_url, model, api_key), if its LLM layer names one."""
        llm = (body.get("layers") or {}).get("llm") or {}
        if llm.get("backend") != "openai" or not llm.get("base_url"):
            return None
        pz.check_endpoint(llm["base_url"], self.api.allowed_llm_hosts)  # the operator's list may have changed
        return {"base_url": llm["base_url"], "model": llm.get("model") or "", "api_key": llm.get("api_key") or ""}


def _turn(u: Utterance) -> dict[str, Any]:
    return {"role": u.role, "text": u.text, "t": u.t, "perception": u.perception}


class Recorder:
    """A live conversation's record: its turns, perception summaries and webhooks, written by one owned task
    from a bounded queue, so a slow store never holds up the session (a full queue drops perception first)."""

    def __init__(self, service: Conversations, conv: ConversationRecord) -> None:
        self.service = service
        self.conv = conv
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(RECORD_QUEUE)
        self._task: asyncio.Task[None] | None = None
        self._last_user_seq: int | None = None
        self.summaries: list[dict[str, Any]] = []
        self.objectives: dict[str, dict[str, Any]] = {}  # completed objectives' outputs, by name
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._write(), name=f"conversation-{self.conv.id}-recorder")

    def event(self, event: Event) -> None:
        if isinstance(event, ObjectiveCompleted):
            self.objectives[event.name] = dict(event.output_variables)
        if not isinstance(event, RECORDED):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("conversation %s: record queue full, %s not recorded", self.conv.id, event.type)

    async def _write(self) -> None:
        while (event := await self._queue.get()) is not None:
            await self._record_retrying(event)

    async def _record_retrying(self, event: Event) -> None:
        """Write `event`; while the store is away (a restart, a failover) try again with backoff, the session
        going on meanwhile and later events waiting in the queue, so nothing is lost or reordered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECORD_RETRY_S
        delay = 0.2
        while True:
            try:
                await self._record(event)
                return
            except Exception as err:
                if not transient(err) or loop.time() + delay > deadline:
                    log.exception("conversation %s: recording %s failed", self.conv.id, event.type)
                    return
                log.warning("conversation %s: the store is away (%s); retrying in %.1f s", self.conv.id, err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _record(self, event: Event) -> None:
        from orchestrator.api.wire import event_dict

        store, conv, now = self.service.store, self.conv, self.service.clock()
        if isinstance(event, (UserTurn, ReplicaTurn)):
            role = "user" if isinstance(event, UserTurn) else "replica"
            if not event.text.strip():
                return
            hook = event_body("conversation.utterance", conv.id, now, {"role": role, "text": event.text, "t": event.t})
            u = await store.add_utterance(conv.id, role, event.text, event.t, events=[hook], now=now)
            if role == "user":
                self._last_user_seq = u.seq
            self.service.notify()
        elif isinstance(event, UtteranceSummary):
            summary = event_dict(event)
            self.summaries.append(summary)
            if self._last_user_seq is not None:
                await store.set_utterance_perception(conv.id, self._last_user_seq, summary)
        elif isinstance(event, WEBHOOKED):
            props = {k: v for k, v in event_dict(event).items() if k != "type"}
            hook = event_body(f"conversation.{event.type}", conv.id, now, props)
            await store.enqueue_webhooks(conv.id, [hook], now)
            self.service.notify()

    async def ended(self, reason: str) -> None:
        """The session is over: write what is queued, then end the conversation with `reason`."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self._queue.put(None), timeout=5.0)
                await asyncio.wait_for(asyncio.shield(self._task), timeout=RECORD_RETRY_S + 10.0)
            except TimeoutError:
                log.error("conversation %s: the recorder did not finish in time", self.conv.id)
                self._task.cancel()
        with contextlib.suppress(Conflict):  # ended by the API meanwhile (it waits for this)
            await self.service.finish(
                self.conv, reason if reason in SHUTDOWN_REASONS else "error", objectives=self.objectives
            )


# Events that are webhooks of their own (`conversation.<type>`), besides the turns.
WEBHOOKED = (PerceptionToolCall, ToolCall, GuardrailTriggered, ObjectiveCompleted)
RECORDED = (UserTurn, ReplicaTurn, UtteranceSummary, *WEBHOOKED)


def request_digest(body: object) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


__all__ = ["Conversations", "Joined", "LiveSessions", "Recorder", "request_digest"]
