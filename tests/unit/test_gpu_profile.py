"""The GPU profile, checked without a GPU: `deploy/triton/gpu_profile.py` writes valid KIND_GPU configs and leaves
the CPU repository alone, the device helper orders and filters onnxruntime's providers, and each model.py hands
its config's `device` to the runtime it drives. Only the list of providers onnxruntime reports is ever faked (a
capability of an outside build); everything else is the real code, on the CPU."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from orchestrator.config import TritonSettings
from orchestrator.inference.asr import whisper_placement
from orchestrator.inference.device import (
    CPU,
    CPU_EP,
    CUDA_EP,
    TENSORRT_EP,
    ModelDevice,
    onnx_providers,
    provider_name,
)
from orchestrator.inference.llm import llama_gpu_offload, offload_layers
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "model_repository"
KIND_GPU = mc.ModelInstanceGroup.KIND_GPU
ALL_EPS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "AzureExecutionProvider", "CPUExecutionProvider"]


def load_profile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_profile", ROOT / "deploy" / "triton" / "gpu_profile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gp = load_profile()


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def params(config: mc.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (but caches) and a digest of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture
def config_repo(tmp_path: Path) -> Path:
    """A model repository with the real configs and model.py files, without the model files (gigabytes)."""
    out = tmp_path / "root" / "model_repository"
    for config in REPO.glob("*/config.pbtxt"):
        (out / config.parent.name / "1").mkdir(parents=True)
        (out / config.parent.name / "config.pbtxt").write_bytes(config.read_bytes())
        model_py = config.parent / "1" / "model.py"
        if model_py.is_file():
            (out / config.parent.name / "1" / "model.py").write_bytes(model_py.read_bytes())
    return out


# ---- deploy/triton/gpu_profile.py ---------------------------------------------------------------------------------


def test_every_model_is_placed_once_with_a_reason_for_the_cpu() -> None:
    folders = {p.parent.name for p in REPO.glob("*/config.pbtxt")}
    assert folders == set(TritonSettings().models)
    assert set(gp.GPU_MODELS) | set(gp.CPU_ONLY) == folders
    assert not set(gp.GPU_MODELS) & set(gp.CPU_ONLY)
    assert all(len(why) > 20 for why in gp.CPU_ONLY.values())
    # the list: the ONNX models on TensorRT, the face renderer and ASR on CUDA, the LLM on a GPU backend
    assert {"vad", "turn", "embed"} <= gp.ONNX_MODELS
    assert {"face_render", "asr", "llm"} <= set(gp.GPU_MODELS)


def test_the_cpu_profile_is_todays() -> None:
    """In git every instance group is KIND_CPU and no model asks for a GPU: absent `device` means the CPU."""
    for config_path in REPO.glob("*/config.pbtxt"):
        config = parse(config_path)
        assert all(g.kind == mc.ModelInstanceGroup.KIND_CPU for g in config.instance_group), config.name
        assert params(config).get("device", "cpu") in {"cpu", "auto"}, config.name  # face_render: auto, as before


def test_rewritten_configs_parse_and_each_gpu_model_gets_its_gpu_settings(
    config_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "root" / "gpu_repository"
    argv = [str(config_repo), "--out", str(out), "--count", "2", "--gpus", "0,1", "--trt-cache", "/var/trt"]
    assert gp.main(argv) == 0
    report = capsys.readouterr().out
    for folder in sorted(config_repo.iterdir()):
        name = folder.name
        before, after = folder / "config.pbtxt", out / name / "config.pbtxt"
        assert (out / name / "1" / "model.py").exists() == (folder / "1" / "model.py").exists()
        if name in gp.CPU_ONLY:
            assert after.read_bytes() == before.read_bytes(), name
            assert f"{name}: CPU (" in report
            continue
        cpu, gpu = parse(before), parse(after)  # parses: a valid Triton ModelConfig
        assert after.read_text().startswith("# Written by deploy/triton/gpu_profile.py")
        assert f"{name}: GPU (2 instance(s) on GPU 0,1" in report
        groups = [(g.kind, g.count, list(g.gpus)) for g in gpu.instance_group]
        assert groups == [(mc.ModelInstanceGroup.KIND_GPU, 2, [0, 1])]
        want = {**params(cpu), "device": "gpu", **gp.GPU_MODELS[name]}
        if name in gp.ONNX_MODELS:
            want["trt_cache_dir"] = f"/var/trt/{name}"
        assert params(gpu) == want, name
        # nothing else changed: inputs, outputs, batching, decoupling
        for config in (cpu, gpu):
            del config.instance_group[:]
            config.ClearField("parameters")
        assert gpu == cpu, name


def test_without_gpus_every_gpu_gets_the_instances_and_the_trt_cache_is_relative(config_repo: Path) -> None:
    gp.rewrite(config_repo)
    vad = parse(config_repo / "vad" / "config.pbtxt")
    assert [(g.kind, g.count, list(g.gpus)) for g in vad.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 1, [])]
    assert params(vad)["trt_cache_dir"] == ".cache/tensorrt/vad"
    assert params(parse(config_repo / "tts" / "config.pbtxt"))["tensorrt"] == "false"
    assert params(parse(config_repo / "asr" / "config.pbtxt"))["compute_type"] == "int8"  # the CPU fallback's


def test_the_cpu_repository_is_untouched_by_a_copy(config_repo: Path, tmp_path: Path) -> None:
    before = snapshot(config_repo)
    assert gp.main([str(config_repo), "--out", str(tmp_path / "gpu")]) == 0
    assert snapshot(config_repo) == before
    assert snapshot(tmp_path / "gpu").keys() == before.keys()


def test_refuses_what_it_cannot_place(config_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gp.main([str(config_repo), "--out", str(config_repo)])  # the copy must be a new folder
    with pytest.raises(SystemExit):
        gp.main([str(tmp_path), "--in-place"])  # not a model repository
    with pytest.raises(SystemExit):
        gp.main([str(config_repo), "--in-place", "--gpus", "0,0"])
    with pytest.raises(ValueError, match="count"):
        gp.rewrite(config_repo, count=0)
    new = config_repo / "new_model"
    new.mkdir()
    (new / "config.pbtxt").write_text('name: "new_model"\nbackend: "python"\n')
    before = snapshot(config_repo)
    assert gp.main([str(config_repo), "--in-place"]) == 1
    assert "no placement for new_model" in capsys.readouterr().err
    assert snapshot(config_repo) == before  # checked before anything is written


# ---- orchestrator/inference/device.py -----------------------------------------------------------------------------


def gpu_device(tmp_path: Path, **extra: str) -> ModelDevice:
    args = {"model_name": "vad", "model_instance_kind": "GPU", "model_instance_device_id": "1"}
    return ModelDevice.from_triton({"device": "gpu", **extra}, args, tmp_path)


def reports(monkeypatch: pytest.MonkeyPatch, available: list[str]) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(available))


def test_device_from_the_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args = {"model_name": "vad", "model_instance_kind": "GPU", "model_instance_device_id": "3"}
    assert ModelDevice.from_triton({}, args, tmp_path) == ModelDevice(model="vad")
    assert not ModelDevice.from_triton({"device": "cpu"}, args, tmp_path).on_gpu
    dev = ModelDevice.from_triton({"device": "gpu"}, args, tmp_path)
    assert (dev.on_gpu, dev.device_id, dev.tensorrt, dev.trt_fp16) == (True, 3, True, True)
    assert dev.trt_cache_dir == tmp_path / ".cache" / "tensorrt" / "vad"
    assert dev.torch == "cuda:3" and CPU.torch == "cpu"
    fixed = ModelDevice.from_triton({"device": "gpu", "trt_cache_dir": "/srv/trt", "trt_fp16": "False"}, args, tmp_path)
    assert (fixed.trt_cache_dir, fixed.trt_fp16) == (Path("/srv/trt"), False)
    with pytest.raises(ValueError, match="device"):
        ModelDevice.from_triton({"device": "cuda"}, args, tmp_path)
    with pytest.raises(ValueError, match="tensorrt"):
        ModelDevice.from_triton({"device": "gpu", "tensorrt": "yes"}, args, tmp_path)
    with caplog.at_level(logging.WARNING):
        cpu_instance = ModelDevice.from_triton({"device": "gpu"}, {**args, "model_instance_kind": "CPU"}, tmp_path)
    assert cpu_instance.on_gpu and "KIND_GPU" in caplog.text


def test_cpu_providers_are_todays_without_asking_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    def never() -> list[str]:
        raise AssertionError("the CPU path asked onnxruntime")

    monkeypatch.setattr(onnxruntime, "get_available_providers", never)
    assert onnx_providers() == ["CPUExecutionProvider"]
    assert onnx_providers(ModelDevice(model="vad")) == ["CPUExecutionProvider"]


def test_gpu_providers_in_order_with_their_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reports(monkeypatch, ALL_EPS)
    device = gpu_device(tmp_path)
    with caplog.at_level(logging.WARNING):
        providers = onnx_providers(device)
    assert [provider_name(p) for p in providers] == [TENSORRT_EP, CUDA_EP, CPU_EP]
    cache = str(tmp_path / ".cache" / "tensorrt" / "vad")
    assert providers[0] == (
        TENSORRT_EP,
        {
            "device_id": 1,
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
        },
    )
    assert providers[1] == (CUDA_EP, {"device_id": 1})
    assert Path(cache).is_dir()  # made for TensorRT's engines
    assert caplog.text == ""  # nothing fell back
    no_trt = onnx_providers(gpu_device(tmp_path, tensorrt="false"))
    assert [provider_name(p) for p in no_trt] == [CUDA_EP, CPU_EP]


@pytest.mark.parametrize(
    ("available", "kept", "left_out"),
    [
        (["CUDAExecutionProvider", "CPUExecutionProvider"], [CUDA_EP, CPU_EP], "TensorrtExecutionProvider"),
        (["AzureExecutionProvider", "CPUExecutionProvider"], [CPU_EP], f"{TENSORRT_EP}, {CUDA_EP}"),
    ],
)
def test_gpu_providers_keep_only_what_onnxruntime_has_and_say_so(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    available: list[str],
    kept: list[str],
    left_out: str,
) -> None:
    reports(monkeypatch, available)
    with caplog.at_level(logging.WARNING, logger="orchestrator.inference.device"):
        providers = onnx_providers(gpu_device(tmp_path))
    assert [provider_name(p) for p in providers] == kept
    assert "vad: onnxruntime" in caplog.text and f"has no {left_out} " in caplog.text
    assert f"runs on {kept[0]}" in caplog.text
    assert not (tmp_path / ".cache").exists()  # no TensorRT, no engine cache


def test_whisper_and_llama_placement(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    gpu = gpu_device(tmp_path)
    assert whisper_placement(CPU, "int8", "float16", cuda_devices=4) == ("cpu", 0, "int8")
    assert whisper_placement(gpu, "int8", "int8_float16", cuda_devices=2) == ("cuda", 1, "int8_float16")
    with caplog.at_level(logging.WARNING):
        assert whisper_placement(gpu, "int8", "float16", cuda_devices=1) == ("cpu", 0, "int8")
    assert "Whisper stays on the CPU" in caplog.text
    caplog.clear()
    assert offload_layers(CPU, -1, supported=True) == 0
    assert offload_layers(gpu, -1, supported=True) == -1
    assert offload_layers(gpu, 20, supported=True) == 20
    with caplog.at_level(logging.WARNING):
        assert offload_layers(gpu, -1, supported=False) == 0
    assert "no GPU offload" in caplog.text
    assert llama_gpu_offload() is False  # this machine's llama.cpp is the CPU build setup makes


# ---- each model.py passes its config's device on --------------------------------------------------------------


class _Metric:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels

    def increment(self, n: int) -> None:
        pass


class _MetricFamily:
    COUNTER = 0

    def __init__(self, name: str, description: str, kind: int) -> None:
        self.name = name

    def Metric(self, labels: dict[str, str]) -> _Metric:  # Triton's name
        return _Metric(labels)


@pytest.fixture
def triton_stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What `initialize` and module import need of `triton_python_backend_utils` (it exists only in the stub)."""
    fake = ModuleType("triton_python_backend_utils")
    fake.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1  # type: ignore[attr-defined]
    fake.MetricFamily = _MetricFamily  # type: ignore[attr-defined]
    fake.TritonModelException = RuntimeError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    yield


def initialize(name: str, config: mc.ModelConfig, device_id: str = "1") -> Any:
    """The real model.py's TritonPythonModel, initialised as Triton would (`args`, the config as JSON)."""
    spec = importlib.util.spec_from_file_location(f"duet_model_{name}", REPO / name / "1" / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
            "model_name": name,
            "model_version": "1",
            "model_instance_name": f"{name}_0",
            "model_instance_kind": "GPU" if any(g.kind == KIND_GPU for g in config.instance_group) else "CPU",
            "model_instance_device_id": device_id,
            "model_repository": str(REPO / name),
        }
    )
    return model


def gpu_config_of(name: str, trt_cache: Path) -> mc.ModelConfig:
    cpu = parse(REPO / name / "config.pbtxt")
    config: mc.ModelConfig = gp.gpu_config(cpu, count=1, gpus=[1], trt_cache=str(trt_cache))
    return config


# model: (the attribute its TritonPythonModel keeps the runtime in, the ONNX file)
ONNX = {
    "vad": ("vad", "silero_vad.onnx"),
    "turn": ("turn", "smart-turn-v3.2-cpu.onnx"),
    "embed": ("embedder", "minilm-l6-v2.onnx"),
}


ORT_ASKED_FOR_MORE = "ignore:Specified provider:UserWarning"  # onnxruntime's own warning: the GPU ones are not here


@pytest.mark.filterwarnings(ORT_ASKED_FOR_MORE)
@pytest.mark.parametrize("name", sorted(ONNX))
def test_onnx_models_pass_the_device_to_onnxruntime(
    name: str, triton_stub: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    attr, onnx_file = ONNX[name]
    require(REPO / name / "1" / onnx_file, f"the {name} model")
    # as the CPU profile: the CPU provider alone, onnxruntime gives it
    cpu = getattr(initialize(name, parse(REPO / name / "config.pbtxt")), attr)
    assert cpu.providers == [CPU_EP] and cpu._session.get_providers() == [CPU_EP]
    # as the GPU profile, on an onnxruntime that has TensorRT and CUDA: asked for on GPU 2, cache per model
    reports(monkeypatch, ALL_EPS)
    gpu = getattr(initialize(name, gpu_config_of(name, tmp_path / "trt"), device_id="2"), attr)
    assert [provider_name(p) for p in gpu.providers] == [TENSORRT_EP, CUDA_EP, CPU_EP]
    assert gpu.providers[0][1]["device_id"] == 2 and gpu.providers[1] == (CUDA_EP, {"device_id": 2})
    assert gpu.providers[0][1]["trt_engine_cache_path"] == str(tmp_path / "trt" / name)
    assert gpu._session.get_providers() == [CPU_EP]  # this machine's onnxruntime has only the CPU


@pytest.mark.filterwarnings(ORT_ASKED_FOR_MORE)
def test_tts_passes_the_device_without_tensorrt(
    triton_stub: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require(REPO / "tts" / "1" / "voices" / "en_US-joe-medium.onnx", "the tts voice")
    assert initialize("tts", parse(REPO / "tts" / "config.pbtxt")).voices.get().providers == [CPU_EP]
    reports(monkeypatch, ALL_EPS)
    speaker = initialize("tts", gpu_config_of("tts", tmp_path / "trt"), device_id="2").voices.get()
    assert speaker.providers == [(CUDA_EP, {"device_id": 2}), CPU_EP]


def test_asr_passes_the_device_to_ctranslate2(
    triton_stub: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require(REPO / "asr" / "1" / "whisper-base" / "model.bin", "the asr model")
    assert initialize("asr", parse(REPO / "asr" / "config.pbtxt")).recognizer.placement == ("cpu", 0, "int8")
    with caplog.at_level(logging.WARNING):
        gpu = initialize("asr", gpu_config_of("asr", tmp_path / "trt"), device_id="2").recognizer
    # no CUDA device here: GPU 2 was asked for, and Whisper stays on the CPU with the CPU's compute type
    assert "asr: GPU 2 asked for, CTranslate2 sees 0 CUDA device(s)" in caplog.text
    assert gpu.placement == ("cpu", 0, "int8")


def test_llm_passes_the_device_to_llama_cpp(
    triton_stub: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = gpu_config_of("llm", tmp_path / "trt")
    small = "model.smollm2-135m"  # the smaller served model only: this checks the path, not the model
    require(REPO / "llm" / "1" / "SmolLM2-135M-Instruct.Q4_1.gguf", "the small llm")
    for key in [k for k in config.parameters if k.startswith("model.") and k != small]:
        del config.parameters[key]
    config.parameters["default_model"].string_value = "smollm2-135m"
    config.parameters[small].string_value = config.parameters[small].string_value.replace("engines=2", "engines=1")
    with caplog.at_level(logging.WARNING):
        model = initialize("llm", config)
    try:
        assert "llm: device gpu, but this llama.cpp build has no GPU offload" in caplog.text
        assert model.pools.names == ("smollm2-135m",)
    finally:
        model.finalize()


def test_torch_models_get_the_instances_cuda_device(triton_stub: None, tmp_path: Path) -> None:
    render = initialize("face_render", gpu_config_of("face_render", tmp_path / "trt"), device_id="1")
    assert str(render.pool.device) == "cuda:1" and render.pool.on_gpu
    assert render.round_frames == int(params(parse(REPO / "face_render" / "config.pbtxt"))["gpu_batch_frames"])
    cpu = initialize("face_render", parse(REPO / "face_render" / "config.pbtxt"))
    assert str(cpu.pool.device) == "cpu"  # `auto` as before: torch sees no GPU here
    # the expression network is moved to cuda:1, which this CPU build of torch refuses: the device got there
    require(REPO / "perception_face" / "1" / "emotion_model.hdf5", "the expression model")
    with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        initialize("perception_face", gpu_config_of("perception_face", tmp_path / "trt"))
