"""The GPU profile: rewrite a copy of the model repository so its models run on a GPU node's GPUs.

Each model that gains from a GPU gets `instance_group [{ kind: KIND_GPU, count, gpus }]` and the config
parameter `device: gpu`, which its `model.py` reads (`orchestrator/inference/device.py`): the ONNX models ask
onnxruntime for TensorRT (an engine cache per model under `--trt-cache`, fp16) then CUDA then the CPU, Whisper
runs on CTranslate2's CUDA device in float16, the LLM offloads its layers when its llama.cpp build can, and the
torch models (face renderer, the expression network) use the instance's CUDA device. The models with nothing to
put on a GPU keep their config file byte for byte (`CPU_ONLY` says why for each). A model this file does not
know stops the rewrite: every new model must be placed here on purpose.

Configs are parsed and written with protobuf's text format and Triton's own `ModelConfig` message (from
tritonclient), so every file written is a valid Triton config. Usage, from the repository root:

    python deploy/triton/gpu_profile.py model_repository --out DIR [--count N] [--gpus 0,1] [--trt-cache DIR]
    python deploy/triton/gpu_profile.py model_repository --in-place      # what the inference image does

A copy (`--out`) should sit beside the original, in the same repository root: `face_render` reads portraits
from `faces/` beside its repository, and a relative `--trt-cache` is taken from there too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

CONFIG = "config.pbtxt"
TRT_CACHE = ".cache/tensorrt"  # relative: from the repository root (the folder holding the model repository)
HEADER = "# Written by deploy/triton/gpu_profile.py (the GPU profile) from the CPU config in git.\n"

# The models a GPU serves, and the parameters each gets besides `device: gpu`.
GPU_MODELS: Mapping[str, Mapping[str, str]] = {
    # onnxruntime: TensorRT execution provider, then CUDA, then CPU
    "vad": {"tensorrt": "true"},
    "turn": {"tensorrt": "true"},
    "embed": {"tensorrt": "true"},
    # piper's VITS voice on onnxruntime: CUDA only. Its inputs change length with every sentence (phonemes) and
    # its duration predictor shapes the rest, so TensorRT would build engines over and over.
    "tts": {"tensorrt": "false"},
    # Whisper on CTranslate2's CUDA device; compute_type (int8) stays the CPU's and the fallback's
    "asr": {"gpu_compute_type": "float16"},
    # llama.cpp: every layer on the instance's GPU, when the build has GPU offload (else logged, stays on CPU)
    "llm": {"n_gpu_layers": "-1"},
    # torch: the face renderer (batched across sessions: gpu_batch_frames) and the expression network
    "face_render": {},
    "perception_face": {},
}
ONNX_MODELS = frozenset(m for m, p in GPU_MODELS.items() if "tensorrt" in p)

# The models that stay on the CPU, and why.
CPU_ONLY: Mapping[str, str] = {
    "prosody": "numpy pitch (YIN) and energy features of the 8 s window: no network to put on a GPU",
    "floor_fusion": "two small logistic models (cue fusion, hashed-word text turn): microseconds on a CPU",
    "perception_audio": "numpy voice features (pitch, level, spectrum) per 20 ms frame",
    "face_motion": "a deterministic numpy function of the timeline, a few frames per request",
    "floor": "an ensemble: it has no instances, its steps run where their own configs put them",
}


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def gpu_config(config: mc.ModelConfig, *, count: int, gpus: Sequence[int], trt_cache: str) -> mc.ModelConfig:
    """`config` with KIND_GPU instances (`count` on each of `gpus`; empty: on every GPU) and its GPU parameters."""
    name = config.name
    if name not in GPU_MODELS:
        raise ValueError(f"{name} is not a GPU model")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    out = mc.ModelConfig()
    out.CopyFrom(config)
    del out.instance_group[:]
    out.instance_group.add(count=count, kind=mc.ModelInstanceGroup.KIND_GPU, gpus=list(gpus))
    out.parameters["device"].string_value = "gpu"
    for key, value in GPU_MODELS[name].items():
        out.parameters[key].string_value = value
    if name in ONNX_MODELS:
        out.parameters["trt_cache_dir"].string_value = f"{trt_cache.rstrip('/')}/{name}"
    return out


def rewrite(repository: Path, *, count: int = 1, gpus: Sequence[int] = (), trt_cache: str = TRT_CACHE) -> list[str]:
    """Rewrite the configs of `repository` (a copy) in place; returns one line per model saying where it runs."""
    folders = sorted(p.parent for p in repository.glob(f"*/{CONFIG}"))
    unknown = [f.name for f in folders if f.name not in GPU_MODELS and f.name not in CPU_ONLY]
    if unknown:
        raise ValueError(f"no placement for {', '.join(unknown)}: add it to GPU_MODELS or CPU_ONLY")
    report = []
    for folder in folders:
        path = folder / CONFIG
        config = parse(path.read_text())
        if config.name != folder.name:
            raise ValueError(f"{path} names the model {config.name!r}")
        if folder.name in CPU_ONLY:
            report.append(f"{folder.name}: CPU ({CPU_ONLY[folder.name]})")
            continue
        new = gpu_config(config, count=count, gpus=gpus, trt_cache=trt_cache)
        path.write_text(HEADER + text_format.MessageToString(new))
        parse(path.read_text())  # what was written reads back
        on = "GPU " + ",".join(map(str, gpus)) if gpus else "every GPU"
        extra = "".join(f", {k}={v}" for k, v in GPU_MODELS[folder.name].items())
        report.append(f"{folder.name}: GPU ({count} instance(s) on {on}{extra})")
    return report


def gpu_list(text: str) -> list[int]:
    ids = [int(v) for v in text.split(",") if v.strip()]
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"GPU ids must be distinct and non-negative, got {text!r}")
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", type=Path, help="the model repository (CPU profile, as in git)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write the GPU profile to this new folder (a copy)")
    where.add_argument("--in-place", action="store_true", help="rewrite REPOSITORY itself (an image's own copy)")
    parser.add_argument("--count", type=int, default=1, help="instances of each GPU model per GPU (default 1)")
    parser.add_argument("--gpus", type=gpu_list, default=[], help="GPU ids, e.g. 0,1 (default: every GPU)")
    parser.add_argument("--trt-cache", default=TRT_CACHE, help=f"TensorRT engine cache root (default {TRT_CACHE})")
    args = parser.parse_args(argv)
    if not (args.repository / "vad" / CONFIG).is_file():
        parser.error(f"{args.repository} is not Duet's model repository")
    target = args.repository
    if args.out is not None:
        if args.out.exists():
            parser.error(f"{args.out} exists: the copy goes to a new folder")
        shutil.copytree(args.repository, args.out, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        target = args.out
    try:
        report = rewrite(target, count=args.count, gpus=args.gpus, trt_cache=args.trt_cache)
    except ValueError as exc:
        print(f"gpu_profile: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
