"""The only module that imports `tritonclient`: typed async calls to the Duet models over one gRPC channel.

Everything else sees the small `FloorModels` protocol, so the session logic stays testable and the
transport stays replaceable. Failures become `ModelUnavailable` with the model's own message.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from orchestrator.errors import ModelUnavailable

F32 = npt.NDArray[np.float32]
I16 = npt.NDArray[np.int16]


@dataclass(frozen=True)
class FloorEstimate:
    p_yield: float
    p_turn: float


class FloorModels(Protocol):
    async def vad(self, audio: I16, state: F32) -> tuple[float, F32]: ...

    async def floor(self, audio: I16, pause_samples: int, text: str, context: str) -> FloorEstimate: ...


class TritonModels:
    """Async client for `vad` and the `floor` ensemble. One instance is shared by all sessions."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url=url)

    async def close(self) -> None:
        await self._client.close()

    async def ready(self, models: tuple[str, ...] = ("vad", "floor")) -> None:
        try:
            live = await self._client.is_server_ready()
            missing = [m for m in models if not await self._client.is_model_ready(m)]
        except InferenceServerException as exc:
            raise ModelUnavailable(f"Triton at {self.url} is not reachable: {exc.message()}") from exc
        if not live or missing:
            raise ModelUnavailable(f"Triton at {self.url} is not ready (models not ready: {missing or 'server'})")

    async def _infer(self, model: str, inputs: list[Any], outputs: list[str]) -> Any:
        try:
            return await asyncio.wait_for(
                self._client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs]),
                timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise ModelUnavailable(f"model {model!r} failed: {exc.message()}") from exc
        except TimeoutError as exc:
            raise ModelUnavailable(f"model {model!r} did not answer within {self.timeout_s:.0f}s") from exc

    async def vad(self, audio: I16, state: F32) -> tuple[float, F32]:
        a = grpcclient.InferInput("AUDIO", [1, audio.shape[0]], "INT16")
        a.set_data_from_numpy(audio.reshape(1, -1))
        s = grpcclient.InferInput("STATE", [1, 2, 128], "FP32")
        s.set_data_from_numpy(state.reshape(1, 2, 128))
        res = await self._infer("vad", [a, s], ["PROB", "STATE_OUT"])
        return float(res.as_numpy("PROB")[0, 0]), res.as_numpy("STATE_OUT")[0]

    async def floor(self, audio: I16, pause_samples: int, text: str, context: str) -> FloorEstimate:
        a = grpcclient.InferInput("AUDIO", [1, audio.shape[0]], "INT16")
        a.set_data_from_numpy(audio.reshape(1, -1))
        p = grpcclient.InferInput("PAUSE_SAMPLES", [1, 1], "INT32")
        p.set_data_from_numpy(np.array([[pause_samples]], dtype=np.int32))
        tx = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        tx.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        cx = grpcclient.InferInput("CONTEXT", [1, 1], "BYTES")
        cx.set_data_from_numpy(np.array([[context.encode()]], dtype=np.object_))
        res = await self._infer("floor", [a, p, tx, cx], ["P_YIELD", "P_TURN"])
        return FloorEstimate(p_yield=float(res.as_numpy("P_YIELD")[0, 0]), p_turn=float(res.as_numpy("P_TURN")[0, 0]))

    async def metrics_text(self, metrics_url: str) -> str:
        """Prometheus text from Triton's metrics endpoint (used by benchmarks and the fault tests)."""
        import urllib.request

        def fetch() -> str:
            with urllib.request.urlopen(metrics_url, timeout=5) as r:
                return str(r.read().decode())

        return await asyncio.to_thread(fetch)
