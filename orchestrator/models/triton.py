"""The Triton adapter, and the only module that imports `tritonclient`: typed async calls to the Duet models
over one gRPC channel per Triton server, spread over several servers where there are several, and the healer
that reloads a model whose stub died.

It implements the protocols of `orchestrator.models.ports`; everything else sees only those, so the session
logic stays testable with fakes and the transport stays replaceable. Failures become `ModelUnavailable` with
the model's own message.

Several servers (`triton.urls`): each call goes to the server with the least outstanding requests
(`orchestrator.models.endpoints` decides; `watch_endpoints` checks their health). A call that fails with a
transport error (gRPC UNAVAILABLE: the server is gone, refused the connection, or closed the socket under
the call) drops that server from rotation and is sent once more, to another server, when that is safe:
- unary calls (`vad`, `floor`, `floor_fusion`, `asr`, `face_motion`, the perception models, `embed`) always:
  each is a pure function of its inputs (the state of a session's VAD travels in and out as tensors), so a
  call that did reach the lost server and is computed again elsewhere changes nothing but the time taken;
- streams (`llm`, `tts`, `face_render`) only before their first response: their caller has seen nothing
  yet, so the stream starts afresh elsewhere as if sent there first. A stream that already yielded (LLM
  tokens, speech, frames) is never replayed (its caller would get a second, different start) and fails with
  `model_unavailable`, as a stream cut by a dead stub does;
- a call that failed for any other reason (its input, the model's own error, a timeout: the server may be
  slow, not gone) is not sent again elsewhere; a dead stub is the healer's case (below).
One session's LLM requests keep to the server that served its last turn (its KV cache, holding the
conversation's prefix, lives there) while that server is in rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from orchestrator.errors import BadFaceParams, BadOption, BadPortrait, ModelUnavailable
from orchestrator.models.endpoints import (
    EndpointPool,
    EndpointState,
    PoolPolicy,
    Restored,
    Transition,
    affinity_key,
)
from orchestrator.models.healing import (
    Action,
    Healed,
    Healer,
    HealingPolicy,
    Reload,
    RestartServer,
    dead_stub_instance,
)
from orchestrator.models.ports import (
    F32,
    I16,
    FloorEstimate,
    LlmRequest,
    Phoneme,
    RenderedFrames,
    SpeechChunk,
    Transcript,
    Word,
)

log = logging.getLogger("duet.triton")


class StubDied(ModelUnavailable):
    """The model's stub process died, or hung, while it held this request (the healer is reloading the model)."""


class NoAnswer(ModelUnavailable):
    """The model sent nothing within the request's timeout (slow, or hung: the healer judges which)."""


class ReloadHung(ModelUnavailable):
    """A reload did not finish in its time: Triton refuses to load that model again while the stuck load runs."""


class EndpointDown(ModelUnavailable):
    """A transport error: the Triton server did not take the call, or was lost during it (gRPC UNAVAILABLE)."""


_UNAVAILABLE = str(grpc.StatusCode.UNAVAILABLE)  # how tritonclient spells the status of such an error


# tritonclient's own channel defaults, plus a short reconnect backoff: after Triton restarts (or an external
# one comes back) the channel is usable within ~1 s, not after gRPC's default backoff of up to 120 s.
_KEEPALIVE = grpcclient.KeepAliveOptions()
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", _KEEPALIVE.keepalive_time_ms),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE.keepalive_timeout_ms),
    ("grpc.keepalive_permit_without_calls", _KEEPALIVE.keepalive_permit_without_calls),
    ("grpc.http2.max_pings_without_data", _KEEPALIVE.http2_max_pings_without_data),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


PRIORITY_LEVELS = ("asr",)  # models whose config.pbtxt declares `priority_levels` (Triton queues by priority)


class _Endpoint:
    """One Triton server: its gRPC channel, and the healer of its models (set by `ModelHealer`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = grpcclient.InferenceServerClient(url=url, channel_args=_CHANNEL_ARGS)
        self.healer: ModelHealer | None = None


def endpoint_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """The gRPC endpoints named by `url`: one `host:port`, a comma-separated list, or a sequence of them."""
    items = url.split(",") if isinstance(url, str) else [u for part in url for u in part.split(",")]
    return tuple(dict.fromkeys(u.strip() for u in items if u.strip()))


# How long a stream whose final response has come waits for Triton to close it (the gRPC status) before it is
# cancelled: on loopback the status follows the final response within a millisecond, a few on a loaded machine.
STREAM_CLOSE_WAIT_S = 1.0


async def _await_close(stream: Any) -> None:
    """Wait for Triton to close a stream whose request is complete, instead of cancelling it under the server.

    Triton 2.51's gRPC frontend leaks the state of a stream cancelled while it is still finishing a request:
    ~2 KB (64 px frames) to ~6 KB (512 px) each. Cancelled right after the final response, as every stream
    once was, a loaded machine hit that race on most streams; the face's 8 streams a second then grew the
    tritonserver ~3 MiB a minute (docs/robustness.md). Anything still unread past the final response is
    dropped, and a stream not closed in `STREAM_CLOSE_WAIT_S` is cancelled by the caller's `finally`."""
    with contextlib.suppress(StopAsyncIteration, TimeoutError, grpc.RpcError):
        async with asyncio.timeout(STREAM_CLOSE_WAIT_S):
            while True:
                await anext(stream)


class TritonModels:
    """Async client for every Duet model, over one or several Triton servers. One instance is shared by all
    sessions. `url`: one gRPC `host:port`, or several (a sequence, or comma-separated)."""

    def __init__(
        self,
        url: str | Sequence[str],
        timeout_s: float = 10.0,
        *,
        policy: PoolPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        urls = endpoint_urls(url)
        if not urls:
            raise ValueError("TritonModels needs a Triton gRPC endpoint (host:port)")
        self.timeout_s = timeout_s
        # The servers of the set, shared by every view (`with_priority`, `at`): `add_endpoint`/`retire_endpoint`
        # change it for all of them. `_only`: the one server of an `at` view.
        self._by_url: dict[str, _Endpoint] = {u: _Endpoint(u) for u in urls}
        self._only: _Endpoint | None = None
        self._retiring: dict[str, _Endpoint] = {}  # left the set, calls still running there
        self._set_changed = asyncio.Event()  # wakes `watch_endpoints` (a new server is checked at once)
        self.pool = EndpointPool(urls, policy, clock)
        self._ready_problems: dict[str, str | None] = {}  # what `ready` last found wrong with each server
        # How long a request waits for a model being healed before it fails: a reload takes 0.5-3 s on an idle
        # machine, 10 s and more for a large model on a loaded one; waiting beats failing a turn (or, for `vad`
        # and `floor`, the session).
        self.heal_wait_s = 30.0
        # Triton request priority (1 first, 2 the default; 0: the model's default): `with_priority` makes a
        # view for a `priority` tenant's sessions. The llm model takes it as its PRIORITY input (its engine
        # pool queues replies), the models in PRIORITY_LEVELS through Triton's scheduler queue.
        self.priority = 0

    @property
    def healer(self) -> ModelHealer | None:
        """The healer of this client's one server (`ModelHealer(models.at(url))` for one of several)."""
        return self._single().healer

    @healer.setter
    def healer(self, healer: ModelHealer | None) -> None:
        self._single().healer = healer

    @property
    def _endpoints(self) -> tuple[_Endpoint, ...]:
        return (self._only,) if self._only is not None else tuple(self._by_url.values())

    @property
    def urls(self) -> tuple[str, ...]:
        """The servers calls go to now (one, for an `at` view)."""
        return tuple(e.url for e in self._endpoints)

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def _single(self) -> _Endpoint:
        if len(self._endpoints) != 1:
            raise ValueError(f"{len(self._endpoints)} Triton endpoints: a healer heals one (use `at(url)`)")
        return self._endpoints[0]

    def at(self, url: str) -> TritonModels:
        """This client (same channels, same pool) sending only to the server at `url`: what its healer uses."""
        view = copy.copy(self)
        view._only = self._by_url[url]
        return view

    def add_endpoint(self, url: str) -> bool:
        """A server joins the set (a new Triton pod): out of rotation until its readiness check, which runs at
        once (`watch_endpoints`). False: it is in the set already."""
        if self._only is not None:
            raise ValueError("an `at` view has one server: add endpoints to the client it came from")
        if url in self._by_url:
            return False
        self._by_url[url] = self._retiring.pop(url) if url in self._retiring else _Endpoint(url)
        self.pool.add(url)
        self._set_changed.set()
        return True

    def retire_endpoint(self, url: str) -> bool:
        """A server leaves the set (its pod is gone from DNS): no new call goes there; calls already sent finish,
        then its channel is closed (`watch_endpoints`). Its healer, if any, is for the caller to stop. False: not
        in the set. The last server of the set stays (ValueError)."""
        if self._only is not None:
            raise ValueError("an `at` view has one server: retire endpoints on the client it came from")
        if url not in self._by_url:
            return False
        self.pool.retire(url)  # raises for the last one, before anything changed
        e = self._retiring[url] = self._by_url.pop(url)
        e.healer = None  # (its calls in flight keep the one they began with)
        self._set_changed.set()
        return True

    async def _close_drained(self) -> None:
        """Close the channels of retired servers whose calls have all ended."""
        for url in self.pool.drained():
            e = self._retiring.pop(url, None)
            if e is not None:
                await e.client.close()

    def healers(self) -> list[ModelHealer]:
        return [e.healer for e in self._endpoints if e.healer is not None]

    def with_priority(self, priority: int) -> TritonModels:
        """This client (same channels, same healers, same pool) sending its requests at `priority`."""
        view = copy.copy(self)
        view.priority = priority
        return view

    def endpoint_states(self) -> list[EndpointState]:
        """Each server's rotation, outstanding requests and counts (for metrics)."""
        return self.pool.states()

    async def close(self) -> None:
        for e in (*self._endpoints, *self._retiring.values()):
            await e.client.close()
        self._retiring.clear()

    async def ready(self, models: tuple[str, ...] = ("vad", "floor")) -> None:
        """Raises unless a server is ready with `models`. With several, those not ready leave rotation (logged)
        and are taken back by `watch_endpoints` once they are."""
        problems = await asyncio.gather(*(self._not_ready(e, models) for e in self._endpoints))
        for e, problem in zip(self._endpoints, problems, strict=True):
            self._log(self.pool.checked(e.url, problem is None, problem or "", at_once=True))
        if all(p is not None for p in problems):
            raise ModelUnavailable("; ".join(p for p in problems if p))
        for e, problem in zip(self._endpoints, problems, strict=True):
            # said once per change: readiness probes call this every second, and with the chart's per-pod list
            # a pod that does not exist yet is not ready on every one of them
            if problem is not None and self._ready_problems.get(e.url) != problem:
                log.warning("%s; serving from the other Triton endpoints meanwhile", problem)
            self._ready_problems[e.url] = problem

    async def _not_ready(self, e: _Endpoint, models: tuple[str, ...]) -> str | None:
        try:
            live = await e.client.is_server_ready()
            missing = [m for m in models if not await e.client.is_model_ready(m)]
        except InferenceServerException as exc:
            return f"Triton at {e.url} is not reachable: {exc.message()}"
        if not live or missing:
            return f"Triton at {e.url} is not ready (models not ready: {missing or 'server'})"
        return None

    # --- the endpoints: which server takes a call, and which are in rotation ---

    async def watch_endpoints(self) -> None:
        """Until cancelled: check each server's readiness (gRPC ServerReady) every `check_interval_s`, taking
        back a server that is ready and dropping one whose checks keep failing. Run it as an owned task."""
        policy = self.pool.policy
        try:
            while True:
                self._set_changed.clear()
                await self._close_drained()
                due = [self._by_url[u] for u in self.pool.due()]
                results = await asyncio.gather(*(self._check(e, policy.check_timeout_s) for e in due))
                for e, (problem, refused) in zip(due, results, strict=True):
                    self._log(self.pool.checked(e.url, problem is None, problem or "", at_once=refused))
                with contextlib.suppress(TimeoutError):  # a server added meanwhile is checked at once
                    async with asyncio.timeout(max(self.pool.next_due() - self.pool.now(), 0.01)):
                        await self._set_changed.wait()
        except Exception:  # the rotation must not freeze unnoticed (cancellation is no Exception: it passes)
            log.exception("Triton endpoint health checks stopped")
            raise

    @staticmethod
    async def _check(e: _Endpoint, timeout_s: float) -> tuple[str | None, bool]:
        """What is wrong with the server at `e` (None: it is ready), and whether it is gone (a transport error:
        one such check is enough to drop it, while a slow or not-ready answer must repeat)."""
        try:
            async with asyncio.timeout(timeout_s):
                ready = await e.client.is_server_ready(client_timeout=timeout_s)
        except InferenceServerException as exc:
            return exc.message() or str(exc.status()), exc.status() == _UNAVAILABLE
        except TimeoutError:
            return f"no answer within {timeout_s:g}s", False
        return (None, False) if ready else ("not ready", False)

    @staticmethod
    def _log(transition: Transition | None) -> None:
        if transition is None:
            return
        if isinstance(transition, Restored) and transition.first:
            log.warning("Triton at %s joined rotation (%s)", transition.url, transition.reason)
        elif isinstance(transition, Restored):
            log.warning(
                "Triton at %s is back in rotation after %.2f s (%s)",
                transition.url,
                transition.down_s,
                transition.reason,
            )
        else:
            log.warning("Triton at %s left rotation: %s", transition.url, transition.reason)

    def _pick(self, model: str, tried: set[str], affinity: str = "") -> _Endpoint | None:
        """The server for a call to `model` (None: every one was tried): in rotation, not healing `model`."""
        healthy = [e.url for e in self._endpoints if e.healer is None or e.healer.healthy(model)]
        url = self.pool.choose(among=self.urls, exclude=tried, prefer=healthy, affinity=affinity)
        return None if url is None else self._by_url[url]

    async def _begin(
        self, model: str, tried: set[str], affinity: str = ""
    ) -> tuple[_Endpoint, ModelHealer | None, float, float] | None:
        """The server a call goes to (None: every one was tried), once `model` is healthy there: the server,
        its healer, and when the call went out by the healer's clock and by the pool's."""
        while True:
            e = self._pick(model, tried, affinity)
            if e is None:
                return None
            healer = e.healer
            if healer is not None and not healer.healthy(model):
                await healer.wait_healthy(model, self.heal_wait_s)
            if e.url in self._by_url or e is self._only:
                break  # (else it left the set while the call waited: choose again)
        heal_sent = healer.now() if healer is not None else 0.0
        return e, healer, heal_sent, self.pool.begin(e.url)

    def _in_rotation(self, tried: set[str]) -> bool:
        """Whether a server not yet tried is in rotation."""
        return any(e.url not in tried and self.pool.up(e.url) for e in self._endpoints)

    def _elsewhere(self, model: str, tried: set[str]) -> bool:
        """Whether a server not yet tried is in rotation and not healing `model`."""
        return any(
            e.url not in tried and self.pool.up(e.url) and (e.healer is None or e.healer.healthy(model))
            for e in self._endpoints
        )

    async def _infer(self, e: _Endpoint, model: str, inputs: list[Any], outputs: list[str]) -> Any:
        try:
            # Not `asyncio.wait_for`: on Python 3.11 it can return the result when a cancel and the reply land
            # together, so a cancelled session would carry on (and never release its slot).
            async with asyncio.timeout(self.timeout_s):
                return await e.client.infer(
                    model,
                    inputs,
                    outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                    priority=self.priority if model in PRIORITY_LEVELS else 0,
                )
        except InferenceServerException as exc:
            if exc.status() == _UNAVAILABLE:
                raise EndpointDown(f"model {model!r} is not reachable at {e.url}: {exc.message()}") from exc
            raise ModelUnavailable(f"model {model!r} failed: {exc.message()}") from exc
        except TimeoutError as exc:
            raise NoAnswer(f"model {model!r} did not answer within {self.timeout_s:.0f}s") from exc

    async def _call(self, model: str, inputs: list[Any], outputs: list[str]) -> Any:
        """`_infer` on the least loaded server, sent at most twice (every model called this way is a pure
        function of its inputs, so a second send is always safe):
        - a transport error drops the server from rotation; the call goes to another server if there is one;
        - a dead stub starts (or joins) its model's reload on that server; the call goes to another server
          where the model is healthy, else waits for the reload and goes to the same one. A request that kills
          the new stub too fails."""
        tried: set[str] = set()
        for attempt in (1, 2):
            if (begun := await self._begin(model, tried)) is None:
                break
            e, healer, heal_sent, sent = begun
            try:
                result = await self._infer(e, model, inputs, outputs)
            except EndpointDown as exc:
                retry = attempt == 1 and self._in_rotation({*tried, e.url})
                self._log(self.pool.failed(e.url, sent, exc.message, retried=retry))
                if not retry:
                    raise
                log.info("%s; sending it to another endpoint", exc.message)
                tried.add(e.url)
                continue
            except ModelUnavailable as exc:
                if healer is None:
                    raise
                # its stub died or hung, or it went to a model being reloaded meanwhile ("unknown model", "not
                # ready")
                dead = (
                    healer.failed(model, exc.message, heal_sent)
                    or (isinstance(exc, NoAnswer) and healer.silent(model, heal_sent))
                    or not healer.healthy(model)
                )
                if not dead or attempt == 2:
                    raise  # (a second failure on a dead stub has started another reload: the next call waits)
                if self._elsewhere(model, {*tried, e.url}):
                    tried.add(e.url)
                elif not await healer.wait_healthy(model, self.heal_wait_s):
                    raise
                continue
            finally:
                self.pool.end(e.url)
            if healer is not None:
                healer.answered(model)
            self._log(self.pool.succeeded(e.url, sent))
            return result
        raise ModelUnavailable(f"model {model!r}: no Triton endpoint left to try")

    # --- the repository API (model healing) ---

    async def reload(self, model: str, timeout_s: float = 30.0) -> None:
        """Unload and load `model` again: what brings back a model whose stub died (a plain load of an unchanged
        model does nothing). Ensembles that use it come back by themselves. On this client's one server."""
        client = self._single().client
        try:
            async with asyncio.timeout(timeout_s):
                await client.unload_model(model)
                await client.load_model(model)
        except InferenceServerException as exc:
            raise ModelUnavailable(f"reloading model {model!r} failed: {exc.message()}") from exc
        except TimeoutError as exc:
            raise ReloadHung(f"reloading model {model!r} took over {timeout_s:.0f}s") from exc

    async def ensembles(self) -> dict[str, tuple[str, ...]]:
        """The loaded ensembles and the models each runs (`floor` -> `turn`, `prosody`, `floor_fusion`), on this
        client's one server."""
        client = self._single().client
        try:
            index = await client.get_model_repository_index(as_json=True)
            out: dict[str, tuple[str, ...]] = {}
            for entry in index.get("models", []):
                if entry.get("state") != "READY":
                    continue
                config = (await client.get_model_config(entry["name"], as_json=True)).get("config", {})
                if config.get("platform") == "ensemble":
                    steps = config.get("ensemble_scheduling", {}).get("step", [])
                    out[entry["name"]] = tuple(dict.fromkeys(step["model_name"] for step in steps))
            return out
        except InferenceServerException as exc:
            raise ModelUnavailable(f"Triton at {self.url} is not reachable: {exc.message()}") from exc

    async def vad(self, audio: I16, state: F32) -> tuple[float, F32]:
        a = grpcclient.InferInput("AUDIO", [1, audio.shape[0]], "INT16")
        a.set_data_from_numpy(audio.reshape(1, -1))
        s = grpcclient.InferInput("STATE", [1, 2, 128], "FP32")
        s.set_data_from_numpy(state.reshape(1, 2, 128))
        res = await self._call("vad", [a, s], ["PROB", "STATE_OUT"])
        return float(res.as_numpy("PROB")[0, 0]), res.as_numpy("STATE_OUT")[0]

    @staticmethod
    def _pause_and_text(pause_samples: int, text: str, context: str) -> list[Any]:
        p = grpcclient.InferInput("PAUSE_SAMPLES", [1, 1], "INT32")
        p.set_data_from_numpy(np.array([[pause_samples]], dtype=np.int32))
        tx = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        tx.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        cx = grpcclient.InferInput("CONTEXT", [1, 1], "BYTES")
        cx.set_data_from_numpy(np.array([[context.encode()]], dtype=np.object_))
        return [p, tx, cx]

    async def floor(self, audio: I16, pause_samples: int, text: str, context: str) -> FloorEstimate:
        """The full `floor` ensemble: Smart Turn and prosody on the 8 s window, then the fusion."""
        a = grpcclient.InferInput("AUDIO", [1, audio.shape[0]], "INT16")
        a.set_data_from_numpy(audio.reshape(1, -1))
        res = await self._call(
            "floor", [a, *self._pause_and_text(pause_samples, text, context)], ["P_YIELD", "P_TURN", "PROSODY"]
        )
        return FloorEstimate(
            p_yield=float(res.as_numpy("P_YIELD")[0, 0]),
            p_turn=float(res.as_numpy("P_TURN")[0, 0]),
            prosody=res.as_numpy("PROSODY")[0],
        )

    async def fuse(self, acoustics: FloorEstimate, pause_samples: int, text: str, context: str) -> FloorEstimate:
        """Only `floor_fusion`, reusing earlier acoustic outputs with a new pause length and text (~1 ms)."""
        pt = grpcclient.InferInput("P_TURN", [1, 1], "FP32")
        pt.set_data_from_numpy(np.array([[acoustics.p_turn]], dtype=np.float32))
        pr = grpcclient.InferInput("PROSODY", [1, acoustics.prosody.shape[0]], "FP32")
        pr.set_data_from_numpy(acoustics.prosody.reshape(1, -1).astype(np.float32))
        res = await self._call(
            "floor_fusion", [pt, pr, *self._pause_and_text(pause_samples, text, context)], ["P_YIELD"]
        )
        return FloorEstimate(
            p_yield=float(res.as_numpy("P_YIELD")[0, 0]), p_turn=acoustics.p_turn, prosody=acoustics.prosody
        )

    # --- asr (model `asr`) ---

    async def transcribe(self, audio: I16, prompt: str = "", *, word_timings: bool = True) -> Transcript:
        """One utterance (16 kHz int16, ≤ 28 s) -> text and word timings; the server batches across sessions.

        `word_timings=False` leaves `words` empty and saves the alignment pass (up to ~30 % of the time): enough for
        streaming partials, which compare text only. Silence or audio under 0.1 s gives an empty transcript;
        audio over 28 s fails with ModelUnavailable carrying the model's message.
        """
        if audio.dtype != np.int16 or audio.ndim != 1:
            raise ValueError(f"transcribe needs 1-D int16 PCM, got {audio.dtype} {list(audio.shape)}")
        a = grpcclient.InferInput("AUDIO", [1, audio.shape[0]], "INT16")
        a.set_data_from_numpy(audio.reshape(1, -1))
        p = grpcclient.InferInput("PROMPT", [1, 1], "BYTES")
        p.set_data_from_numpy(np.array([[prompt.encode()]], dtype=np.object_))
        wt = grpcclient.InferInput("WORD_TIMESTAMPS", [1, 1], "BOOL")
        wt.set_data_from_numpy(np.array([[word_timings]], dtype=np.bool_))
        res = await self._call("asr", [a, p, wt], ["TEXT", "WORDS"])
        words = json.loads(res.as_numpy("WORDS").reshape(-1)[0])
        return Transcript(
            text=res.as_numpy("TEXT").reshape(-1)[0].decode(),
            words=tuple(Word(w["w"], float(w["s"]), float(w["e"]), float(w["p"])) for w in words),
        )

    # --- llm (model `llm`, decoupled) ---

    # Longest wait for the next piece of a reply. Longer than `timeout_s`: the first piece waits for a free
    # instance and the prompt's evaluation (seconds on a loaded CPU). Set it from `LlmSettings.timeout_s`.
    llm_timeout_s: float = 30.0

    @staticmethod
    def _llm_inputs(request: LlmRequest, priority: int = 0) -> list[Any]:
        def tensor(name: str, dtype: str, value: npt.NDArray[Any]) -> Any:
            t = grpcclient.InferInput(name, [1, 1], dtype)
            t.set_data_from_numpy(value.reshape(1, 1))
            return t

        messages = json.dumps([{"role": m.role, "content": m.content} for m in request.messages])
        inputs = [
            tensor("MESSAGES", "BYTES", np.array([messages.encode()], dtype=np.object_)),
            tensor("MAX_TOKENS", "INT32", np.array([request.max_tokens], dtype=np.int32)),
            tensor("TEMPERATURE", "FP32", np.array([request.temperature], dtype=np.float32)),
            tensor("STOP", "BYTES", np.array([json.dumps(list(request.stop)).encode()], dtype=np.object_)),
            # Which served model ("" = the model's default); an unknown name comes back as a bad_option error.
            tensor("MODEL", "BYTES", np.array([request.model.encode()], dtype=np.object_)),
            tensor("PRIORITY", "INT32", np.array([priority], dtype=np.int32)),  # 0: the default level
        ]
        if request.json_schema:  # the reply decoded under the schema's grammar; a bad schema is a bad_option error
            inputs.append(tensor("JSON_SCHEMA", "BYTES", np.array([request.json_schema.encode()], dtype=np.object_)))
        return inputs

    async def generate(self, request: LlmRequest) -> AsyncIterator[str]:
        """Stream the reply's text pieces from the decoupled `llm` model over one gRPC stream.

        Closing this generator early (`aclose()`, or cancelling the task that iterates it) cancels the gRPC
        call; Triton then marks the request cancelled and the model stops generating at the next token.
        `llm_timeout_s` bounds the wait for each piece, not the whole reply. `request.model` names the served
        model ("" = the default); a name the model does not serve is `BadOption`, and so is a
        `request.json_schema` the model cannot compile into a grammar.
        """
        responses = self._stream(
            "llm",
            self._llm_inputs(request, self.priority),
            ["TEXT"],
            self.llm_timeout_s,
            request_id=request.request_id,
            affinity=affinity_key(request.request_id),  # one session's replies: where its KV cache is
        )
        try:
            async for result in responses:
                if result.as_numpy("TEXT") is not None:
                    piece = result.as_numpy("TEXT").reshape(-1)[0]
                    if piece:
                        yield piece.decode() if isinstance(piece, bytes) else str(piece)
        except ModelUnavailable as exc:  # the model names a typed input error as "<code>: ..."
            marker = f": {BadOption.code}: "
            if marker in exc.message:
                raise BadOption(exc.message.split(marker, 1)[1]) from None
            raise
        finally:
            await responses.aclose()  # closing us must cancel the request now, not when GC gets to it

    async def _stream(
        self,
        model: str,
        inputs: list[Any],
        outputs: list[str],
        timeout_s: float,
        request_id: str = "",
        affinity: str = "",
    ) -> AsyncGenerator[Any, None]:
        """`_stream_once` on the least loaded server (or the one `affinity` used last), healing a model whose
        stub died. A stream that fails before its first response is sent once more: to another server after a
        transport error, or after a dead stub where another server has the model healthy, else to the same one
        when the model is back. One that fails later cannot be (its caller has seen its start), so it fails; a
        dead stub's failure is still reported, and starts the reload the next request finds done."""
        tried: set[str] = set()
        for attempt in (1, 2):
            if (begun := await self._begin(model, tried, affinity)) is None:
                break
            e, healer, heal_sent, sent = begun
            responses = self._stream_once(e, model, inputs, outputs, timeout_s, request_id)
            started = False
            try:
                async for result in responses:
                    if not started:
                        started = True
                        self._log(self.pool.succeeded(e.url, sent))
                    yield result
                return
            except EndpointDown as exc:
                retry = not started and attempt == 1 and self._in_rotation({*tried, e.url})
                self._log(self.pool.failed(e.url, sent, exc.message, retried=retry))
                if not retry:
                    raise
                log.info("%s; sending it to another endpoint", exc.message)
                tried.add(e.url)
            except ModelUnavailable as exc:
                if healer is None:
                    raise
                # reported even when it cannot be sent again: the failure is what starts the reload
                dead = isinstance(exc, StubDied) or healer.failed(model, exc.message, heal_sent)
                if started or attempt == 2 or not (dead or not healer.healthy(model)):
                    raise
                if self._elsewhere(model, {*tried, e.url}):
                    tried.add(e.url)
                elif not await healer.wait_healthy(model, self.heal_wait_s):
                    raise
            finally:
                self.pool.end(e.url)
                await responses.aclose()
        raise ModelUnavailable(f"model {model!r}: no Triton endpoint left to try")

    async def _stream_once(
        self, e: _Endpoint, model: str, inputs: list[Any], outputs: list[str], timeout_s: float, request_id: str = ""
    ) -> AsyncGenerator[Any, None]:
        """One request to a decoupled model over a gRPC stream: its responses until the FINAL flag.

        Closing this generator early (`aclose()`, or cancelling the task iterating it) cancels the gRPC call:
        Triton marks the request cancelled and the model stops at its next check. `timeout_s` bounds the wait
        for each response, not the whole stream.
        """

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": model,
                "inputs": inputs,
                "outputs": [grpcclient.InferRequestedOutput(o) for o in outputs],
                "request_id": request_id,
                # Triton then sends the FINAL flag as its own (empty) response: the end of this request.
                "parameters": {"triton_enable_empty_final_response": True},
            }

        stream = e.client.stream_infer(inputs_iterator=one_request())
        healer = e.healer
        deaths = healer.deaths(model) if healer is not None else 0
        try:
            while True:
                waited = healer.now() if healer is not None else 0.0
                try:
                    async with asyncio.timeout(timeout_s) as deadline:
                        # A stub that dies mid-request never answers it: the healer ends this wait when it
                        # finds the stub dead, instead of letting it run the whole timeout.
                        with healer.watching(model, deadline) if healer is not None else contextlib.nullcontext():
                            result, error = await anext(stream)
                except StopAsyncIteration:
                    raise ModelUnavailable(f"model {model!r} closed the stream before its final response") from None
                except TimeoutError as exc:
                    if healer is not None and healer.deaths(model) != deaths:
                        raise StubDied(f"model {model!r} failed: its stub died during the request") from None
                    if healer is not None and healer.silent(model, waited):
                        raise StubDied(f"model {model!r} sent nothing for {timeout_s:.0f}s: taken for hung") from None
                    raise NoAnswer(f"model {model!r} sent nothing for {timeout_s:.0f}s") from exc
                except grpc.RpcError as exc:
                    message = f"model {model!r} is not reachable at {e.url}: {exc}"
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        raise EndpointDown(message) from exc
                    raise ModelUnavailable(message) from exc
                if healer is not None:
                    healer.answered(model)
                if error is not None:
                    raise ModelUnavailable(f"model {model!r} failed: {error.message()}")
                yield result
                if result.get_response().parameters["triton_final_response"].bool_param:
                    await _await_close(stream)
                    return
        finally:
            # A no-op once the call has finished; otherwise this is what cancels the request in Triton.
            stream.cancel()

    # --- tts (model `tts`, decoupled) ---

    async def synthesize(self, text: str, voice: str = "") -> AsyncIterator[SpeechChunk]:
        """Stream `text` as speech from the decoupled `tts` model, one chunk per sentence, as each is ready.

        Closing this generator early (`aclose()`, or cancelling the task that iterates it) cancels the gRPC
        call; Triton marks the request cancelled and the model stops before its next sentence.
        `timeout_s` bounds the wait for each sentence, not the whole text.
        """
        inputs = []
        for name, value in (("TEXT", text), ("VOICE", voice)):
            t = grpcclient.InferInput(name, [1, 1], "BYTES")
            t.set_data_from_numpy(np.array([[value.encode()]], dtype=np.object_))
            inputs.append(t)

        responses = self._stream("tts", inputs, ["AUDIO", "TEXT", "PHONEMES"], self.timeout_s)
        try:
            async for result in responses:
                pcm = result.as_numpy("AUDIO")
                if pcm is not None:
                    spoken = result.as_numpy("TEXT").reshape(-1)[0]
                    timings = json.loads(result.as_numpy("PHONEMES").reshape(-1)[0])
                    yield SpeechChunk(
                        pcm=pcm.reshape(-1).astype(np.int16, copy=False),
                        text=spoken.decode() if isinstance(spoken, bytes) else str(spoken),
                        phonemes=tuple(Phoneme(p["p"], float(p["s"]), float(p["e"])) for p in timings),
                    )
        finally:
            await responses.aclose()

    # --- face (models `face_motion` and `face_render`) ---

    async def face_motion(self, request_json: str) -> F32:
        req = grpcclient.InferInput("REQUEST", [1, 1], "BYTES")
        req.set_data_from_numpy(np.array([[request_json.encode()]], dtype=np.object_))
        res = await self._call("face_motion", [req], ["PARAMS"])
        out: F32 = res.as_numpy("PARAMS")[0].astype(np.float32, copy=False)
        return out

    async def render_frames(
        self, face: str, params: F32, width: int, height: int, quality: int
    ) -> AsyncIterator[RenderedFrames]:
        """Stream the JPEG frames of `params` from the decoupled `face_render` model, in runs as each batch is
        drawn. Closing this generator early cancels the request; the model stops before its next run."""
        f = grpcclient.InferInput("FACE", [1, 1], "BYTES")
        f.set_data_from_numpy(np.array([[face.encode()]], dtype=np.object_))
        p = grpcclient.InferInput("PARAMS", [1, *params.shape], "FP32")
        p.set_data_from_numpy(params[None].astype(np.float32, copy=False))
        size = grpcclient.InferInput("SIZE", [1, 2], "INT32")
        size.set_data_from_numpy(np.array([[width, height]], dtype=np.int32))
        q = grpcclient.InferInput("QUALITY", [1, 1], "INT32")
        q.set_data_from_numpy(np.array([[quality]], dtype=np.int32))
        responses = self._stream("face_render", [f, p, size, q], ["JPEG", "FIRST"], self.timeout_s)
        try:
            async for result in responses:
                jpegs = result.as_numpy("JPEG")
                if jpegs is not None:
                    yield RenderedFrames(
                        int(result.as_numpy("FIRST").reshape(-1)[0]), tuple(bytes(j) for j in jpegs.reshape(-1))
                    )
        except ModelUnavailable as exc:  # the model names a typed input error as "<code>: ..."
            for typed in (BadPortrait, BadFaceParams):
                if f": {typed.code}: " in exc.message:
                    raise typed(exc.message.split(f"{typed.code}: ", 1)[1]) from None
            raise
        finally:
            await responses.aclose()

    # --- perception (models `perception_audio` and `perception_face`) ---

    async def voice_features(self, frames: I16) -> F32:
        x = grpcclient.InferInput("FRAMES", [1, *frames.shape], "INT16")
        x.set_data_from_numpy(frames[None].astype(np.int16, copy=False))
        res = await self._call("perception_audio", [x], ["FEATURES"])
        out: F32 = res.as_numpy("FEATURES")[0].astype(np.float32, copy=False)
        return out

    async def analyze_frame(self, image: bytes) -> dict[str, Any]:
        x = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        x.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        try:
            res = await self._call("perception_face", [x], ["RESULT"])
        except ModelUnavailable as exc:  # the model names a bad frame as "bad_frame: ..."
            if ": bad_frame: " in exc.message:
                from orchestrator.perception.face import BadFrame

                raise BadFrame(exc.message.split("bad_frame: ", 1)[1]) from None
            raise
        raw = res.as_numpy("RESULT").reshape(-1)[0]
        result: dict[str, Any] = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        return result

    # --- embeddings (model `embed`) ---

    embed_max_batch = 64  # the `embed` config's max_batch_size: the most texts one request may carry
    # A request of many long texts takes seconds on a CPU (64 texts of 256 word pieces: ~4 s on one idle core), so
    # its timeout grows with its size: at least `timeout_s`, and this much per text.
    embed_timeout_per_text_s = 0.5

    async def embed(self, texts: list[str]) -> F32:
        """Sentence embeddings (`ports.Embedder`): [len(texts), EMBED_DIM] float32, unit rows; [] gives (0, EMBED_DIM).

        Up to `embed_max_batch` texts go as one request; more go in requests of that size one after another, so
        the queries of live sessions get in between them. A text that cannot be sent as UTF-8 (a lone surrogate)
        is `BadText`; a longer text than the model's window is cut by the model (256 word pieces).
        """
        from orchestrator.inference.embed import BadText
        from orchestrator.models.ports import EMBED_DIM

        if not texts:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        rows = []
        for i, text in enumerate(texts):
            try:
                rows.append(text.encode())
            except UnicodeEncodeError as exc:
                raise BadText(f"texts[{i}] is not valid Unicode text ({exc.reason} at {exc.start})") from None
        parts = []
        for start in range(0, len(rows), self.embed_max_batch):
            chunk = rows[start : start + self.embed_max_batch]
            t = grpcclient.InferInput("TEXT", [len(chunk), 1], "BYTES")
            t.set_data_from_numpy(np.array(chunk, dtype=np.object_).reshape(-1, 1))
            client = self
            if len(chunk) * self.embed_timeout_per_text_s > self.timeout_s:
                client = copy.copy(self)  # same channel and healer, a longer timeout
                client.timeout_s = len(chunk) * self.embed_timeout_per_text_s
            try:
                res = await client._call("embed", [t], ["EMBEDDING"])
            except ModelUnavailable as exc:  # the model names a bad text as "bad_text: ..."
                if f": {BadText.code}: " in exc.message:
                    raise BadText(exc.message.split(f"{BadText.code}: ", 1)[1]) from None
                raise
            parts.append(res.as_numpy("EMBEDDING").astype(np.float32, copy=False))
        out: F32 = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return out


class ModelHealer:
    """Heals the models of one `TritonModels` whose stub died: the I/O around `orchestrator.models.healing.Healer`.
    One server's: with several, each has its own (`ModelHealer(models.at(url))`).

    - Requests report their failures (`failed`); the dead-stub one starts a reload, shared by every request
      that fails meanwhile, and those wait for it (`wait_healthy`) and are sent once more.
    - Where the server is local, `probe` (model -> live stub pids, e.g. `EmbeddedTriton.stubs`) is polled
      every `probe_interval_s`, so a dead stub is reloaded before a request has to fail on it.
    - A reload is Triton's repository API: unload, then load. One that fails is retried after a backoff;
      one that hangs, or keeps failing, restarts the server through `restart_server` where there is one.
    `run()` is the owned task that does the reloads; `counts` and `heals` say what it did (logs say it too).
    """

    def __init__(
        self,
        models: TritonModels,
        *,
        probe: Callable[[], Mapping[str, frozenset[int]] | None] | None = None,
        policy: HealingPolicy | None = None,
        restart_server: Callable[[], None] | None = None,
        kill_stubs: Callable[[str], Sequence[int]] | None = None,
        probe_interval_s: float = 0.5,
        reload_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.healer = Healer(policy=policy)
        self.models = models
        self.probe = probe
        self.restart_server = restart_server  # kills the (embedded) server, for its supervisor to start again
        self.kill_stubs = kill_stubs  # kills a model's stubs on the (embedded) server before it is reloaded
        self.probe_interval_s = probe_interval_s
        self.reload_timeout_s = reload_timeout_s
        self.now = clock
        # (what, model): what is "dead_stub_failure", "silent_timeout", "found_by_request", "found_by_probe",
        # "found_by_silence", "reload", "healed", "reload_failed"
        self.counts: Counter[tuple[str, str]] = Counter()
        self.heals: list[Healed] = []  # every heal, in order (the last few hundred)
        self._due: list[Reload] = []
        self._deaths: Counter[str] = Counter()
        self._restarting = False
        self._waits: dict[str, set[asyncio.Timeout]] = {}  # streams' waits for their next response, by model
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()  # replaced on every change of health: waiters wake and look again
        models.healer = self

    def healthy(self, model: str) -> bool:
        return self.healer.healthy(model)

    def count(self, what: str) -> int:
        """`counts` summed over the models."""
        return sum(n for (w, _), n in self.counts.items() if w == what)

    def deaths(self, model: str) -> int:
        """How many times `model`'s stub was found dead (a stream compares it before and after a wait)."""
        return self._deaths[model]

    @contextlib.contextmanager
    def watching(self, model: str, deadline: asyncio.Timeout) -> Iterator[None]:
        """While in this block, finding `model`'s stub dead expires `deadline` at once."""
        waits = self._waits.setdefault(model, set())
        waits.add(deadline)
        try:
            yield
        finally:
            waits.discard(deadline)

    def answered(self, model: str) -> None:
        """`model` answered a request just now: it is not hung."""
        self.healer.answered(model, self.now())

    def silent(self, model: str, since: float) -> bool:
        """A request to `model` waited from `since` and got nothing within its timeout. True when the model is
        taken for hung (it answered nobody meanwhile): it is being reloaded, and the request may be sent again
        once `wait_healthy`."""
        actions = self.healer.silent(model, since, self.now())
        if actions:
            self.counts["silent_timeout", model] += 1
            self._act(actions)
        return bool(actions)

    def failed(self, model: str, message: str, sent: float) -> bool:
        """A request to `model` sent at `sent` failed with `message`. True when its stub had died: the model
        is being (or has just been) reloaded, and the request may be sent again once `wait_healthy`."""
        if dead_stub_instance(message) is None:
            return False
        self.counts["dead_stub_failure", model] += 1
        self._act(self.healer.failed(model, message, self.now(), sent))
        return True

    async def wait_healthy(self, model: str, timeout_s: float) -> bool:
        """Wait until `model` (and, for an ensemble, its members) is not being healed; False after `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self.healer.healthy(model):
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def server_restarted(self) -> None:
        """The whole server came back fresh (see `EmbeddedTriton.supervise`): forget its old stubs."""
        self.healer.forget()
        self._restarting = False
        self._notify()

    async def run(self) -> None:
        """Until cancelled: reload what is due, poll the probe, retry failed reloads after their backoff."""
        try:
            self.healer.members = await self.models.ensembles()
        except ModelUnavailable as exc:
            log.warning("model healing: ensembles unknown (%s); a failing ensemble heals all it names", exc)
        try:
            await self._loop()
        except Exception:  # healing must not stop unnoticed (cancellation is no Exception: it passes)
            log.exception("model healing stopped")
            raise

    async def _loop(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                if self.probe is not None:
                    alive = await asyncio.to_thread(self.probe)
                    if alive is not None:
                        self._act(self.healer.stubs(alive, self.now()))
                self._act(self.healer.tick(self.now()))
                for reload in self._due:
                    tg.create_task(self._reload(reload), name=f"heal-{reload.model}-{reload.attempt}")
                self._due.clear()
                wait = self.probe_interval_s if self.probe is not None else 3600.0
                if (due := self.healer.next_due()) is not None:
                    wait = min(wait, max(due - self.now(), 0.0))
                self._wake.clear()
                try:
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _reload(self, reload: Reload) -> None:
        self.counts["reload", reload.model] += 1
        t0 = self.now()
        error: str | None = None
        hung = False
        try:
            if self.kill_stubs is not None:
                # A stub found "not healthy" may be hung rather than gone: one that woke up after its successor
                # started took that one down with it (a face_render stub stopped for 3 s did, again and again).
                killed = await asyncio.to_thread(self.kill_stubs, reload.model)
                if killed:
                    log.warning("model %r: killed its stub process %s before reloading", reload.model, killed)
            await self.models.reload(reload.model, self.reload_timeout_s)
        except ModelUnavailable as exc:
            error, hung = exc.message, isinstance(exc, ReloadHung)
        log.info("model %r: unload + load took %.2f s", reload.model, self.now() - t0)
        self._act(self.healer.reloaded(reload.model, self.now(), error, hung=hung))

    def _act(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Reload):
                if a.attempt == 1:
                    self.counts[f"found_by_{a.source}", a.model] += 1
                    self._deaths[a.model] += 1
                    now = asyncio.get_running_loop().time()
                    for deadline in self._waits.get(a.model, ()):
                        deadline.reschedule(now)  # the requests it held will never be answered
                what = "it hung" if a.source == "silence" else "its stub died"
                log.warning("model %r: %s (%s); reloading it (attempt %d)", a.model, what, a.reason, a.attempt)
                self._due.append(a)
                self._wake.set()
            elif isinstance(a, Healed):
                self.counts["healed", a.model] += 1
                self.heals = [*self.heals[-255:], a]
                log.warning("model %r healed: back %.2f s after its stub was found dead", a.model, a.down_s)
            elif isinstance(a, RestartServer):
                if self.restart_server is None or self._restarting:
                    log.error("model %r cannot be healed by reloading (%s); retrying", a.model, a.reason)
                    continue
                self._restarting = True  # until `server_restarted`: one restart at a time
                self.counts["server_restart", a.model] += 1
                log.error("model %r cannot be healed by reloading (%s): restarting tritonserver", a.model, a.reason)
                self.restart_server()
            else:
                self.counts["reload_failed", a.model] += 1
                log.error(
                    "model %r: reload %d failed (next in %.1f s): %s",
                    a.model,
                    a.attempt,
                    max(a.retry_at - self.now(), 0.0),
                    a.error,
                )
        if actions:
            self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
