"""What the store hands out: frozen records, never SQLAlchemy rows, so nothing outside `orchestrator/store/`
sees the database. Times are timezone-aware UTC `datetime`s; JSON columns come back as plain dicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")
TIERS = ("standard", "priority")  # a tenant's tier; `priority` tenants' model requests are served first


@dataclass(frozen=True)
class Tenant:
    id: str  # "ten_..."
    name: str
    tier: str  # "standard" | "priority": maps to Triton request priorities
    webhook_secret: str  # "whsec_<base64 key>" (needed in clear to sign; shown to the operator once)
    max_concurrent_conversations: int
    max_minutes_per_day: int  # conversation minutes per UTC day (0 = unlimited)
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    id: str  # "key_..."
    tenant_id: str
    name: str
    prefix: str  # the first characters of the key, to recognise it in a list
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class KeyCheck:
    """What authentication needs of a key: its salted digest and its tenant."""

    key: ApiKey
    salt: bytes
    digest: bytes
    tenant: Tenant


@dataclass(frozen=True)
class PersonaRecord:
    id: str  # "per_..."
    tenant_id: str
    body: dict[str, Any]  # the persona's fields as the API takes them (validated by orchestrator/control)
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class FaceRecord:
    id: str  # "face_..."
    tenant_id: str
    name: str
    status: str  # preparing | ready | failed
    error: str | None
    created_at: datetime


@dataclass(frozen=True)
class ConversationRecord:
    id: str  # "conv_..."
    tenant_id: str
    persona_id: str
    status: str  # created | active | ended
    shutdown_reason: str | None
    settings: dict[str, Any]  # the create body's overrides and properties, as given
    callback_url: str | None
    token_expires_at: datetime
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    holder: str | None = None  # while active: the orchestrator running the session (`api.instance_id`)
    holder_url: str | None = None  # where the other orchestrators reach that one's REST API
    held_until: datetime | None = None  # the holder's lease: renewed while the session lives


@dataclass(frozen=True)
class Utterance:
    conversation_id: str
    seq: int
    role: str  # user | replica
    text: str
    t: float  # seconds on the session clock
    perception: dict[str, Any] | None = None  # the utterance summary of the user's turn, when perception ran


@dataclass(frozen=True)
class Hold:
    """An orchestrator's claim on a live conversation: who runs it, where it is reached, until when."""

    holder: str
    url: str
    until: datetime


@dataclass(frozen=True)
class WebhookEvent:
    """An event to deliver, written in the same transaction as the change it reports."""

    event_type: str
    payload: dict[str, Any]  # the whole JSON body: {"event_type", "conversation_id", "timestamp", "properties"}


@dataclass(frozen=True)
class DueWebhook:
    """A webhook message whose next attempt is due, with what signing and sending it needs."""

    id: str  # "msg_..." (the `webhook-id` header: the same on every attempt)
    tenant_id: str
    conversation_id: str
    url: str
    body: str  # the exact JSON text, signed and sent the same on every attempt
    attempts: int  # attempts made so far
    secret: str  # the tenant's webhook secret


@dataclass(frozen=True)
class WebhookAttempt:
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


@dataclass(frozen=True)
class WebhookMessage:
    id: str
    conversation_id: str
    event_type: str
    url: str
    status: str  # pending | delivered | failed
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    attempts: tuple[WebhookAttempt, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class DocumentRecord:
    id: str  # "doc_..."
    tenant_id: str
    name: str
    tags: tuple[str, ...]
    content_type: str  # text | markdown | html | pdf
    size: int
    status: str  # processing | ready | failed
    error: str | None
    chunks: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk of a ready document, with what the search index needs of it."""

    id: str  # "chk_..."
    document_id: str
    seq: int
    heading: str
    text: str
    vector: bytes  # float32 little-endian, L2-normalised
    sentence_vectors: bytes  # its sentences' vectors, one after the other (empty: one sentence)
    tags: tuple[str, ...] = ()  # its document's


@dataclass(frozen=True)
class NewChunk:
    heading: str
    text: str
    vector: bytes
    sentence_vectors: bytes = b""


@dataclass(frozen=True)
class MemoryRecord:
    id: str  # "mem_..."
    tenant_id: str
    store: str
    text: str
    pinned: bool
    conversation_id: str | None
    vector: bytes
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class BodyRecord:
    """An object kept as its validated API body: a guardrail ("grd_...") or an objectives set ("obj_...")."""

    id: str
    tenant_id: str
    body: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, oldest first; `next_cursor` is opaque (None on the last page)."""

    data: list[T]
    next_cursor: str | None
