"""One frozen settings tree, loaded from YAML and `DUET_*` environment variables, validated at start.

Environment overrides use double underscores between levels: `DUET_TRITON__URL=host:8001`,
`DUET_SERVER__PORT=50051`, `DUET_FLOOR__COMMIT_THRESHOLD=0.7`; lists are comma-separated:
`DUET_TRITON__URLS=triton-a:8001,triton-b:8001`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import BadOption
from orchestrator.models.discovery import parse_dns

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TritonSettings:
    url: str = ""  # gRPC host:port of an existing Triton; empty (and no `urls`) = launch the embedded one
    # Several Triton servers (gRPC host:port each; env: comma-separated): every model call goes to the one with
    # the least outstanding requests, a server that fails or is not ready leaves rotation until it is ready
    # again (docs/robustness.md). `url` and `urls` together name them all.
    urls: tuple[str, ...] = ()
    health_interval_s: float = 1.0  # each server's readiness is checked this often
    # An entry `dns:///NAME:PORT` stands for every address NAME resolves to (a Kubernetes headless Service: each
    # Triton pod), resolved again this often: servers join (once ready) and leave the set as the name changes.
    discovery_interval_s: float = 5.0
    model_repository: str = str(REPO_ROOT / "model_repository")
    models: tuple[str, ...] = (
        "vad",
        "turn",
        "prosody",
        "floor_fusion",
        "floor",
        "asr",
        "llm",
        "tts",
        "face_motion",
        "face_render",
        "perception_audio",
        "perception_face",
        "embed",
    )
    http_port: int = 0  # 0 = pick a free loopback port
    grpc_port: int = 0
    metrics_port: int = 0
    startup_timeout_s: float = 90.0
    request_timeout_s: float = 10.0

    def endpoints(self) -> tuple[str, ...]:
        """The configured Triton servers, `url` first (empty: launch the embedded one)."""
        items = [u.strip() for part in (self.url, *self.urls) for u in part.split(",")]
        return tuple(dict.fromkeys(u for u in items if u))


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    max_sessions: int = 64
    max_message_bytes: int = 1 << 20  # one gRPC message; 20 ms of audio is 640 bytes
    max_audio_chunk_ms: int = 200  # larger audio chunks are refused (clients send ~20 ms)
    inbox_chunks: int = 256  # bounded per-session queue of pending audio chunks (~5 s)
    # A session that sends no audio for this long ends with a fatal `idle_timeout` (0 = never).
    idle_timeout_s: float = 30.0
    # Conversation and perceive sessions are read no faster than real time beyond this much audio of burst
    # (the reader waits: gRPC flow control slows the client); floor/acoustic sessions may run ahead (`--speed 0`).
    audio_burst_s: float = 2.0
    max_text_chars: int = 4000  # a longer `text` message is refused with `text_too_long` (not fatal)
    max_video_fps: float = 30.0  # camera frames arriving faster than this are dropped before any analysis
    input_bytes_per_s: int = 2_000_000  # all of one session's messages, beyond a burst of one second's worth
    max_client_errors: int = 20  # refused inputs (bad chunks, frames, oversized text) before the session ends
    # New sessions per second, server-wide and per client connection (each with 2 s worth of burst); beyond
    # them a `start` is refused with `rate_limited`, after a short delay, so a reconnect loop costs little.
    # (One process's channels to the same server share a connection: a gateway's users all count here.)
    starts_per_s: float = 10.0  # a 64-session server rarely sees more; churn beyond it cost live sessions
    starts_per_connection_per_s: float = 10.0
    session_inflight: int = 4  # unary Triton requests one session may have in flight (streams not counted)
    triton_inflight: int = 32  # ... and all sessions together; waiting requests are served session by session
    # ... of which sessions running ahead of real time (floor/acoustic fed as fast as possible) hold at most this
    bulk_inflight: int = 2
    # ... and, while live sessions are about, keep the models busy this share of the time at most, all together
    bulk_share: float = 0.1
    # On SIGTERM/SIGINT `duet serve` drains: no new sessions, readiness fails, live sessions go on for at most
    # this long, then the rest are ended (shutdown reason `error`); a second signal stops at once (docs/deploy.md).
    drain_timeout_s: float = 30.0


@dataclass(frozen=True)
class FloorSettings:
    """Thresholds of the floor state machine (orchestrator/turns/floor.py documents each)."""

    vad_on: float = 0.5
    vad_off: float = 0.35
    speech_start_ms: int = 64  # voiced audio needed to declare speech_start
    speech_end_ms: int = 64  # unvoiced audio needed to declare speech_end
    # Low on purpose: eot_tentative starts the speculative reply, and starting it early in the pause hides
    # LLM + TTS behind the rest of the floor decision (a wrong guess costs only cancelled tokens).
    tentative_threshold: float = 0.15
    commit_threshold: float = 0.8
    eval_interval_ms: int = 96  # re-evaluate the floor while a pause grows
    acoustic_refresh_ms: int = 400  # later in a pause, reuse the last Smart Turn/prosody outputs (fusion only)
    max_pause_ms: int = 1800  # commit regardless after this much silence (safety net)
    min_commit_pause_ms: int = 0  # never commit on the model alone before this much silence
    backchannel_max_ms: int = 600  # replica speaking: shorter user speech is a backchannel
    # Replica speaking: sustained user speech beyond this is a barge-in. The replica already pauses at the
    # speech onset, so this only decides between "drop the rest" and "resume"; long enough for "uh-huh".
    barge_in_ms: int = 640


@dataclass(frozen=True)
class AsrSettings:
    """Streaming transcription: re-decode the growing utterance and keep what two decodes agree on."""

    partial_interval_ms: int = 480  # re-decode the current utterance this often while the user speaks
    max_utterance_s: float = 28.0  # Whisper's window; longer utterances are decoded in their last 28 s
    language: str = "en"


@dataclass(frozen=True)
class LlmSettings:
    backend: str = "triton"  # "triton" (the local `llm` model) or "openai" (any OpenAI-compatible endpoint)
    openai_base_url: str = ""  # e.g. http://127.0.0.1:8000/v1 (the endpoint's /chat/completions is used)
    openai_model: str = ""
    openai_api_key_env: str = "OPENAI_API_KEY"  # the name of the env var holding the key, never the key
    max_tokens: int = 96
    temperature: float = 0.3
    stop: tuple[str, ...] = ()
    history_turns: int = 12  # user+replica messages kept in the prompt
    # Evaluate the history as soon as the replica's turn is committed (a prefill: MAX_TOKENS 0), so the next reply
    # evaluates only the user's new words (docs/replies.md). Local backend only: an OpenAI-compatible
    # endpoint is never sent such requests.
    warm_history: bool = True
    # With `warm_history`: also evaluate the user's words while they speak (each partial transcript, then the
    # pause's final), so a reply evaluates only the words that changed (docs/conversation.md). For a
    # conversation whose replies are grounded in a context (documents, memories, tools), only with `warm_context`.
    warm_words: bool = True
    # With `warm_words`, in a grounded conversation: prefill the context the reply layer retrieves for the words
    # so far (two transcripts in a row) before them. Off by default: on 2 CPU cores each context costs ~2 s of a
    # core while the user speaks, and the ones the final words no longer retrieve slow the reply as much as the
    # others save (docs/intelligence-bench.md: first token p50 -400 ms, p95 +1.3 s, mean unchanged).
    warm_context: bool = False
    timeout_s: float = 30.0


@dataclass(frozen=True)
class TtsSettings:
    voice: str = "en_US-joe-medium"
    first_clause_min_chars: int = 12  # split the reply at the first clause boundary past this many chars
    # ... or before a phrase's first word ("by", "with", "because") past this many chars, when the first clause
    # runs on without punctuation (spoken as a clause that goes on); 0 turns it off
    first_phrase_chars: int = 24
    clause_max_chars: int = 160


@dataclass(frozen=True)
class ConversationSettings:
    persona: str = "default"  # persona used when `start.persona` is empty
    personas_dir: str = str(REPO_ROOT / "personas")
    speculation: bool = True  # start the reply on eot_tentative (a persona may turn it off)
    playback_lead_ms: int = 120  # send replica audio this far ahead of the session clock
    echo_suppression: bool = True


@dataclass(frozen=True)
class FaceSettings:
    """The replica's video: which portrait, at what size and rate (the `video` session option turns it on)."""

    face: str = "astronaut"  # faces/<face>.png|jpg, unless the persona names another
    faces_dir: str = str(REPO_ROOT / "faces")
    width: int = 512
    height: int = 512
    fps: float = 25.0
    quality: int = 80  # JPEG quality of the frames on the stream
    emotion: str = "neutral"  # unless the persona or a control message says otherwise
    intensity: float = 0.6
    chunk_s: float = 0.12  # a session renders its frames in chunks of this much session time (3 frames at 25 fps)
    max_lag_s: float = 0.5  # frames further behind the session clock than this are dropped, not queued
    # Render frames this far ahead of the input clock (at most the playback lead: the speech there is already
    # released). 0 for the gRPC stream, whose clients place frames by time; a WebRTC call plays frames as they
    # come, so rendering ahead keeps the face from lagging the voice (docs/webrtc.md).
    ahead_s: float = 0.0


@dataclass(frozen=True)
class MetricsSettings:
    """The orchestrator's own Prometheus endpoint (`GET /metrics`): sessions, stage latencies, drops, refusals."""

    enabled: bool = True
    host: str = "127.0.0.1"  # loopback unless an operator opens it on purpose
    port: int = 0  # 0 = pick a free port (logged at start); set it to scrape a fixed address


@dataclass(frozen=True)
class StoreSettings:
    """Where tenants, personas, conversations and webhooks live (orchestrator/store/)."""

    # A path (SQLite, relative to the working directory) or `sqlite:///PATH`, or `postgresql://user@host/db`.
    url: str = ".duet/duet.db"


@dataclass(frozen=True)
class ApiSettings:
    """The REST control plane (`duet serve --http-port`; docs/api.md)."""

    enabled: bool = True
    http_port: int = 8080
    public_url: str = ""  # how clients reach this server (for `conversation_url`); empty: http(s)://HOST:PORT
    # HTTPS for the API and the pages: a browser gives a page the microphone only over https (or on localhost),
    # so a call from another machine needs these (or a TLS proxy in front, with `public_url` set to it).
    tls_cert_file: str = ""  # PEM certificate chain
    tls_key_file: str = ""  # PEM private key
    join_token_ttl_s: float = 3600.0  # a conversation must be joined within this long of its creation
    max_body_bytes: int = 1 << 20  # a JSON body; larger is `413 too_large`
    max_portrait_bytes: int = 10 << 20
    key_requests_per_s: float = 50.0  # per API key, beyond a burst of twice as many (429 + Retry-After)
    # Hosts a persona's OpenAI-compatible LLM layer may name (`layers.llm.base_url`); empty: any host.
    allowed_llm_hosts: tuple[str, ...] = ()
    # Defaults of a new tenant's quotas (`duet admin tenant create` may set others).
    max_concurrent_conversations: int = 16
    max_minutes_per_day: int = 0  # 0 = unlimited
    default_max_duration_s: int = 1800  # a conversation's `properties.max_duration_s` when not given
    default_absent_timeout_s: int = 300  # created but nobody joined this long: ended `participant_absent`
    # Several orchestrators on one store (docs/deploy.md): each holds the conversations whose sessions it runs.
    instance_id: str = ""  # this orchestrator's name in the store (a pod's name); empty: a fresh one per process
    internal_url: str = ""  # where the other orchestrators reach this one's API; empty: the local API address
    hold_lease_s: float = 15.0  # a holder renews its conversations' lease every third of this; one not renewed
    # within it (the holder died) is ended `error` by any orchestrator


@dataclass(frozen=True)
class WebRtcSettings:
    """Browser calls (`POST /v1/conversations/{id}/webrtc`; docs/webrtc.md)."""

    enabled: bool = True
    # STUN/TURN server URLs handed to both ends ("stun:host:3478", "turn:host:3478?transport=udp"); empty: host
    # candidates only (loopback and LAN calls need nothing more).
    ice_servers: tuple[str, ...] = ()
    # The TURN servers' shared secret (coturn `use-auth-secret`), read from this environment variable: each call
    # gets short-lived credentials made from it. Empty: TURN servers are given without credentials.
    turn_secret_env: str = ""
    turn_ttl_s: int = 3600
    # The replica's voice and face leave this long after their time on the session clock (both the same: the
    # browser keeps them in step by their timestamps).
    playout_delay_ms: int = 20
    # When the face falls behind its time (a renderer short of CPU), the voice may wait for it, up to this long
    # (the lips stay with the words, at the cost of that much latency). Off by default: a call's face renders
    # ahead and leaves on time, and a wait set by a passing stall outlasts it (docs/webrtc.md).
    max_sync_delay_ms: int = 0
    # A call's session sends the replica's audio this far ahead (`playback_lead_ms`: the call holds it until its
    # time, and cuts it on a pause), so its face can render `face_ahead_ms` ahead: on time after a 120 ms chunk
    # and the render itself.
    playback_lead_ms: int = 300
    face_ahead_ms: int = 240  # `video.ahead_ms` of a call's session
    camera_fps: float = 5.0  # the user's camera frames handed to perception, at most this many per second
    ice_timeout_s: float = 15.0  # a peer that sends no audio (or stays disconnected) this long has left the call


@dataclass(frozen=True)
class IntelSettings:
    """The intelligence layer: the knowledge base, memories, guardrails, objectives, tools (docs/intelligence.md)."""

    max_document_bytes: int = 10 << 20  # an uploaded document (413 above)
    strategy: str = "balanced"  # retrieval in conversations: speed | balanced | quality
    top_k: int = 2  # chunks given to a reply (their best two sentences each: perf/bench_context.py)
    min_score: float = 0.25  # a chunk whose cosine similarity to the turn is below this is not given
    # Retrieval in a reply's path waits at most this long; a slower search is left out of that reply (logged).
    retrieval_timeout_ms: int = 150
    memories_per_turn: int = 3  # memories (besides pinned ones) given to a reply
    memory_min_score: float = 0.3
    memory_dedup_score: float = 0.85  # a new fact this similar to a memory updates it instead of adding one
    max_memories_per_conversation: int = 8
    # how facts are learnt after a conversation: "rules" (the user's own first-person statements) or "llm" (the
    # default LLM, schema-constrained; weaker on the 0.5B default: docs/intelligence.md)
    memory_extractor: str = "rules"
    # a turn goes to the LLM's tool choice only when its embedding is this close to a tool's name and description
    # (the choice costs seconds on a CPU; 0 asks on every turn; calibrated in docs/intelligence.md)
    tool_prefilter: float = 0.25
    judge_timeout_s: float = 20.0  # an objectives judge, a tool choice, an LLM guardrail: given up after this
    tool_result_timeout_s: float = 60.0  # a tool call waits this long for its result before the replica goes on


@dataclass(frozen=True)
class Settings:
    triton: TritonSettings = field(default_factory=TritonSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    floor: FloorSettings = field(default_factory=FloorSettings)
    asr: AsrSettings = field(default_factory=AsrSettings)
    llm: LlmSettings = field(default_factory=LlmSettings)
    tts: TtsSettings = field(default_factory=TtsSettings)
    conversation: ConversationSettings = field(default_factory=ConversationSettings)
    face: FaceSettings = field(default_factory=FaceSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    webrtc: WebRtcSettings = field(default_factory=WebRtcSettings)
    intel: IntelSettings = field(default_factory=IntelSettings)
    log_level: str = "INFO"


def coerce_bool(value: Any, where: str) -> bool:
    v = str(value).strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off"}:
        return False
    raise BadOption(f"{where}: {value!r} is not a boolean (true/false)")


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            return value if isinstance(value, bool) else coerce_bool(value, where)
        if typ is int and isinstance(value, str):
            return int(value.strip())  # "1e20", "3.5": not integers, refused
        if typ in (int, float, str):
            return typ(value)
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip() for i in items if str(i).strip())
    except (TypeError, ValueError) as exc:
        raise BadOption(f"{where}: cannot read {value!r} as {typ}") from exc
    raise BadOption(f"{where}: unsupported type {typ}")


def _build(cls: Any, data: Mapping[str, Any], env: Mapping[str, str], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise BadOption(f"unknown setting(s) under {prefix or 'root'}: {sorted(unknown)}")
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        env_key = f"{prefix}{f.name}".upper()
        if dataclasses.is_dataclass(typ):
            sub = data.get(f.name) or {}
            kwargs[f.name] = _build(typ, sub, env, f"{env_key}__")
            continue
        if env_key in env:
            kwargs[f.name] = _coerce(env[env_key], typ, env_key)
        elif f.name in data:
            kwargs[f.name] = _coerce(data[f.name], typ, f"{prefix}{f.name}")
    return cls(**kwargs)


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from defaults, then the YAML file (`DUET_CONFIG` if no path), then `DUET_*` env vars."""
    env = dict(os.environ if env is None else env)
    data: dict[str, Any] = {}
    path = path or env.get("DUET_CONFIG")
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise BadOption(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise BadOption(f"config file {path} must hold a mapping")
        data = loaded
    settings: Settings = _build(Settings, data, env, "DUET_")
    validate(settings)
    return settings


# Documented ranges of the numeric settings a session may set or a config may hold (docs/robustness.md).
FLOOR_RANGES_MS: dict[str, tuple[int, int]] = {
    "speech_start_ms": (32, 2000),
    "speech_end_ms": (32, 2000),
    "eval_interval_ms": (32, 2000),
    "acoustic_refresh_ms": (0, 10000),
    "max_pause_ms": (200, 10000),
    "min_commit_pause_ms": (0, 10000),
    "backchannel_max_ms": (0, 5000),
    "barge_in_ms": (64, 5000),
}
FACE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a file name in faces/, never a path
INSTANCE_ID = re.compile(r"^[A-Za-z0-9._-]*$")  # empty: generated at start


def _in_range(where: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:  # also refuses NaN
        raise BadOption(f"{where} must be within {lo:g}..{hi:g}, not {value:g}")


def validate(s: Settings) -> None:
    f = s.floor
    if not 0.0 < f.vad_off <= f.vad_on < 1.0:
        raise BadOption("floor: need 0 < vad_off <= vad_on < 1")
    if not 0.0 < f.tentative_threshold <= f.commit_threshold <= 1.0:
        raise BadOption("floor: need 0 < tentative_threshold <= commit_threshold <= 1")
    for name, (lo, hi) in FLOOR_RANGES_MS.items():
        _in_range(f"floor.{name}", getattr(f, name), lo, hi)
    if f.min_commit_pause_ms > f.max_pause_ms:
        raise BadOption("floor: min_commit_pause_ms must not exceed max_pause_ms")
    if not 0 < s.server.port < 65536:
        raise BadOption("server.port out of range")
    _in_range("tts.first_clause_min_chars", s.tts.first_clause_min_chars, 0, 1000)
    _in_range("tts.first_phrase_chars", s.tts.first_phrase_chars, 0, 1000)
    _in_range("tts.clause_max_chars", s.tts.clause_max_chars, 1, 10000)
    sv = s.server
    if bool(s.api.tls_cert_file) != bool(s.api.tls_key_file):
        raise BadOption("api.tls_cert_file and api.tls_key_file go together (both or neither)")
    w = s.webrtc
    _in_range("webrtc.playout_delay_ms", w.playout_delay_ms, 0, 2000)
    _in_range("webrtc.playback_lead_ms", w.playback_lead_ms, 40, 1000)
    _in_range("webrtc.face_ahead_ms", w.face_ahead_ms, 0, w.playback_lead_ms)
    _in_range("webrtc.max_sync_delay_ms", w.max_sync_delay_ms, 0, 2000)
    _in_range("webrtc.camera_fps", w.camera_fps, 0.0, 30.0)
    _in_range("webrtc.ice_timeout_s", w.ice_timeout_s, 1.0, 600.0)
    _in_range("webrtc.turn_ttl_s", w.turn_ttl_s, 60, 86400)
    i = s.intel
    if i.memory_extractor not in ("rules", "llm"):
        raise BadOption(f"intel.memory_extractor: {i.memory_extractor!r} is not rules or llm")
    if i.strategy not in ("speed", "balanced", "quality"):
        raise BadOption(f"intel.strategy: {i.strategy!r} is not speed, balanced or quality")
    _in_range("intel.max_document_bytes", i.max_document_bytes, 1 << 10, 100 << 20)
    _in_range("intel.top_k", i.top_k, 1, 10)
    _in_range("intel.retrieval_timeout_ms", i.retrieval_timeout_ms, 10, 5000)
    _in_range("intel.min_score", i.min_score, -1.0, 1.0)
    _in_range("intel.memory_dedup_score", i.memory_dedup_score, 0.0, 1.0)
    for url in w.ice_servers:
        if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
            raise BadOption(f"webrtc.ice_servers: {url!r} is not a stun:, stuns:, turn: or turns: URL")
    _in_range("server.idle_timeout_s", sv.idle_timeout_s, 0.0, 86400.0)
    _in_range("api.hold_lease_s", s.api.hold_lease_s, 3.0, 3600.0)
    if len(s.api.instance_id) > 80 or not INSTANCE_ID.match(s.api.instance_id):
        raise BadOption(f"api.instance_id {s.api.instance_id[:80]!r} is not a name (letters, digits, '.', '-', '_')")
    if s.api.internal_url and not s.api.internal_url.startswith(("http://", "https://")):
        raise BadOption(f"api.internal_url {s.api.internal_url[:80]!r} is not an http(s) URL")
    _in_range("server.drain_timeout_s", sv.drain_timeout_s, 0.0, 86400.0)
    _in_range("server.audio_burst_s", sv.audio_burst_s, 0.1, 60.0)
    _in_range("server.max_text_chars", sv.max_text_chars, 1, 1 << 20)
    _in_range("server.max_video_fps", sv.max_video_fps, 1.0, 120.0)
    _in_range("server.session_inflight", sv.session_inflight, 1, 64)
    _in_range("server.input_bytes_per_s", sv.input_bytes_per_s, 100_000, 1 << 32)
    _in_range("server.max_client_errors", sv.max_client_errors, 1, 1 << 20)
    _in_range("server.starts_per_s", sv.starts_per_s, 0.1, 1e6)
    _in_range("server.starts_per_connection_per_s", sv.starts_per_connection_per_s, 0.1, 1e6)
    _in_range("server.triton_inflight", sv.triton_inflight, 1, 4096)
    _in_range("server.bulk_inflight", sv.bulk_inflight, 1, sv.triton_inflight)
    _in_range("server.bulk_share", sv.bulk_share, 0.01, 1.0)
    _in_range("metrics.port", s.metrics.port, 0, 65535)
    _in_range("triton.health_interval_s", s.triton.health_interval_s, 0.05, 60.0)
    _in_range("triton.discovery_interval_s", s.triton.discovery_interval_s, 0.1, 3600.0)
    for url in s.triton.endpoints():
        if url.startswith(("http://", "https://")):  # Triton's HTTP URL where its gRPC endpoint is wanted
            raise BadOption(f"triton.url/urls: {url!r} is an HTTP URL; give Triton's gRPC host:port")
        parse_dns(url)  # a malformed dns:/// entry
    if s.llm.backend not in ("triton", "openai"):
        raise BadOption(f"llm.backend must be 'triton' or 'openai', not {s.llm.backend!r}")
    if s.llm.backend == "openai" and not s.llm.openai_base_url:
        raise BadOption("llm.backend 'openai' needs llm.openai_base_url")
    if s.llm.max_tokens < 1:
        raise BadOption("llm.max_tokens must be positive")
    if s.server.max_sessions < 1 or s.server.inbox_chunks < 1:
        raise BadOption("server: max_sessions and inbox_chunks must be positive")
    v = s.face
    if not (1.0 <= v.fps <= 60.0 and 1 <= v.quality <= 100 and 0.0 <= v.intensity <= 1.0):
        raise BadOption("face: need fps 1..60, quality 1..100, intensity 0..1")
    if not (0.02 <= v.chunk_s <= 2.0 and v.max_lag_s >= v.chunk_s):
        raise BadOption("face: need chunk_s 0.02..2 and max_lag_s >= chunk_s")
    if not 0.0 <= v.ahead_s <= s.conversation.playback_lead_ms / 1000:
        raise BadOption(
            f"face: ahead_s must be 0..{s.conversation.playback_lead_ms / 1000:g} s (the playback lead: the speech "
            "further ahead is not released yet)"
        )
    if not (64 <= v.width <= 3840 and 64 <= v.height <= 2160) or v.width % 2 or v.height % 2:
        raise BadOption(f"face: {v.width}x{v.height} is not a supported size (even sides, 64..3840 x 64..2160)")
    if not FACE_NAME.match(v.face):
        raise BadOption(f"face {v.face[:80]!r} is not a face name (letters, digits, '-' and '_'; no paths)")


def with_floor_options(floor: FloorSettings, options: Mapping[str, str]) -> FloorSettings:
    """Apply per-session `floor.*` options from `Start.options`; unknown keys are a typed error."""
    updates: dict[str, Any] = {}
    hints = typing.get_type_hints(FloorSettings)
    for key, raw in options.items():
        if not key.startswith("floor."):
            raise BadOption(f"unknown session option {key!r}")
        name = key.removeprefix("floor.")
        if name not in hints:
            raise BadOption(f"unknown floor option {name!r}")
        updates[name] = _coerce(raw, hints[name], key)
    out = dataclasses.replace(floor, **updates)
    validate(Settings(floor=out))
    return out


def as_dict(settings: Settings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


__all__ = [
    "AsrSettings",
    "ConversationSettings",
    "FaceSettings",
    "FloorSettings",
    "IntelSettings",
    "LlmSettings",
    "MetricsSettings",
    "ServerSettings",
    "Settings",
    "TritonSettings",
    "TtsSettings",
    "as_dict",
    "coerce_bool",
    "load_settings",
    "with_floor_options",
]
