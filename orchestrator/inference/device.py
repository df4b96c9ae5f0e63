"""Where a model instance runs, read from its Triton config, and what each runtime is told.

A model's config may carry the parameter `device`: `cpu` or `gpu`. Absent, it is `cpu`, and every runtime is
called exactly as it was before the parameter existed. With `gpu` the instance uses the GPU Triton gives it
(`args["model_instance_device_id"]`, meaningful for a KIND_GPU instance group). `deploy/triton/gpu_profile.py`
writes these parameters into a copy of the model repository for a GPU node.

onnxruntime models ask for the execution providers TensorRT (engines and timing cache in `trt_cache_dir`, fp16
unless `trt_fp16` is false; left out when `tensorrt` is false), CUDA, then CPU, and keep only those this build
of onnxruntime has: the PyPI `onnxruntime` wheel has only the CPU one. What was left out is logged as a warning,
so a GPU profile that runs on the CPU says so in Triton's log instead of being silently slow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"
DEVICES = ("cpu", "gpu")
TRT_CACHE_ROOT = ".cache/tensorrt"  # relative to the repository root (the folder holding model_repository/)

# onnxruntime's `providers` argument: a name, or a name with its options.
Provider = str | tuple[str, dict[str, str | int | bool]]


def _flag(params: Mapping[str, str], key: str, default: bool) -> bool:
    raw = params.get(key)
    if raw is None:
        return default
    if raw.lower() not in ("true", "false"):
        raise ValueError(f"parameter {key} must be true or false, got {raw!r}")
    return raw.lower() == "true"


@dataclass(frozen=True)
class ModelDevice:
    """One model instance's placement: `kind` cpu or gpu, and for gpu its CUDA device and TensorRT settings."""

    model: str = ""
    kind: str = "cpu"
    device_id: int = 0
    tensorrt: bool = True
    trt_fp16: bool = True
    trt_cache_dir: Path | None = None

    @property
    def on_gpu(self) -> bool:
        return self.kind == "gpu"

    @classmethod
    def from_triton(cls, params: Mapping[str, str], args: Mapping[str, str], root: Path) -> ModelDevice:
        """From a model's config parameters and the `args` Triton passes to `initialize`. `root` is the repository
        root a relative `trt_cache_dir` is taken from (default `.cache/tensorrt/<model>`)."""
        model = args.get("model_name", "")
        kind = params.get("device", "cpu")
        if kind not in DEVICES:
            raise ValueError(f"{model}: parameter device must be one of {', '.join(DEVICES)}, got {kind!r}")
        if kind == "cpu":
            return cls(model=model)
        instance_kind = args.get("model_instance_kind", "")
        if instance_kind != "GPU":
            # A KIND_CPU instance is given device id 0: every such instance would share GPU 0.
            log.warning("%s: device gpu on a %s instance: GPU 0 (use instance_group KIND_GPU)", model, instance_kind)
        cache = Path(params.get("trt_cache_dir", f"{TRT_CACHE_ROOT}/{model or 'model'}"))
        return cls(
            model=model,
            kind=kind,
            device_id=int(args.get("model_instance_device_id", "0")),
            tensorrt=_flag(params, "tensorrt", True),
            trt_fp16=_flag(params, "trt_fp16", True),
            trt_cache_dir=cache if cache.is_absolute() else root / cache,
        )

    @property
    def torch(self) -> str:
        """The torch device string: `cpu`, or `cuda:<id>`."""
        return f"cuda:{self.device_id}" if self.on_gpu else "cpu"


CPU = ModelDevice()


def provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def onnx_providers(device: ModelDevice = CPU) -> list[Provider]:
    """onnxruntime's execution providers for `device`, best first, only those this onnxruntime has.

    On the CPU: `["CPUExecutionProvider"]`, what every model used before (onnxruntime is not even asked)."""
    if not device.on_gpu:
        return [CPU_EP]
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    cache = device.trt_cache_dir or Path(TRT_CACHE_ROOT) / (device.model or "model")
    wanted: list[Provider] = []
    if device.tensorrt:
        wanted.append(
            (
                TENSORRT_EP,
                {
                    "device_id": device.device_id,
                    "trt_fp16_enable": device.trt_fp16,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": str(cache),
                },
            )
        )
    wanted += [(CUDA_EP, {"device_id": device.device_id}), CPU_EP]
    kept = [p for p in wanted if provider_name(p) in available]
    left_out = [provider_name(p) for p in wanted if provider_name(p) not in available]
    if left_out:
        log.warning(
            "%s: onnxruntime %s has no %s (it has %s): runs on %s",
            device.model or "model",
            getattr(ort, "__version__", "?"),
            ", ".join(left_out),
            ", ".join(sorted(available)) or "none",
            provider_name(kept[0]) if kept else "nothing",
        )
    if any(provider_name(p) == TENSORRT_EP for p in kept):
        cache.mkdir(parents=True, exist_ok=True)  # TensorRT writes its engines there on first load
    return kept
