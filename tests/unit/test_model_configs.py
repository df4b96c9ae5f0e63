"""Every model folder has an explicit, complete config that agrees with the code that calls it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from orchestrator.config import TritonSettings
from orchestrator.signal.audio import HISTORY, VAD_CONTEXT, VAD_WINDOW

REPO = Path(__file__).resolve().parents[2] / "model_repository"
TENSOR = re.compile(r'\{\s*name:\s*"(\w+)"\s+data_type:\s*(\w+)\s+dims:\s*\[([^\]]*)\]')


def parse(model: str) -> dict[str, object]:
    text = (REPO / model / "config.pbtxt").read_text()

    def block(key: str) -> dict[str, tuple[str, list[int]]]:
        m = re.search(rf"^{key} \[(.*?)^\]", text, re.S | re.M)
        assert m, f"{model}: no {key} block"
        return {
            n: (dt, [int(d) for d in dims.replace(" ", "").split(",") if d])
            for n, dt, dims in TENSOR.findall(m.group(1))
        }

    name = re.search(r'^name:\s*"(\w+)"', text, re.M)
    mbs = re.search(r"^max_batch_size:\s*(\d+)", text, re.M)
    return {
        "name": name.group(1) if name else None,
        "max_batch_size": int(mbs.group(1)) if mbs else None,
        "input": block("input"),
        "output": block("output"),
        "text": text,
    }


@pytest.mark.parametrize("model", TritonSettings().models)
def test_config_is_explicit_and_named_after_its_folder(model: str) -> None:
    cfg = parse(model)
    assert cfg["name"] == model
    assert cfg["max_batch_size"] and int(str(cfg["max_batch_size"])) > 0
    text = str(cfg["text"])
    if "ensemble" not in text:
        assert 'backend: "python"' in text
        assert "dynamic_batching" in text  # stateless models batch across sessions
        assert "instance_group" in text
        assert (REPO / model / "1" / "model.py").is_file()
    else:
        assert (REPO / model / "1").is_dir()


def test_vad_and_floor_shapes_match_the_session_code() -> None:
    vad = parse("vad")
    assert vad["input"] == {"AUDIO": ("TYPE_INT16", [VAD_CONTEXT + VAD_WINDOW]), "STATE": ("TYPE_FP32", [2, 128])}
    floor = parse("floor")
    assert floor["input"]["AUDIO"] == ("TYPE_INT16", [HISTORY])  # type: ignore[index]
    assert set(floor["output"]) == {"P_YIELD", "P_TURN", "PROSODY"}  # type: ignore[arg-type]


def test_ensemble_steps_exist_and_batch_limits_fit() -> None:
    floor = parse("floor")
    steps = re.findall(r'model_name:\s*"(\w+)"', str(floor["text"]))
    assert steps == ["turn", "prosody", "floor_fusion"]
    for s in steps:
        assert int(str(parse(s)["max_batch_size"])) >= int(str(floor["max_batch_size"]))
        assert s in TritonSettings().models


def llm_parameters() -> dict[str, str]:
    text = str(parse("llm")["text"])
    return dict(re.findall(r'key:\s*"([^"]+)"\s+value:\s*\{\s*string_value:\s*"([^"]*)"', text))


def test_llm_config_lists_its_models_and_setup_provides_each_one() -> None:
    """Every GGUF the `llm` model loads is extracted by setup and checked against scripts/models.sha256."""
    from orchestrator.inference.llm import parse_model_specs

    specs, default = parse_model_specs(llm_parameters())
    assert default in {s.name for s in specs}
    digests = (REPO.parent / "scripts" / "models.sha256").read_text()
    bootstrap = (REPO.parent / "scripts" / "bootstrap.sh").read_text()
    for spec in specs:
        assert f"model_repository/llm/1/{spec.file}" in digests, spec
        assert spec.file in bootstrap, spec
    assert next(s for s in specs if s.name == default).lookup > 0  # the default model drafts (docs/replies.md)


def test_llm_inputs_match_what_the_adapter_sends() -> None:
    """The adapter sends exactly the config's inputs; MODEL, PRIORITY and JSON_SCHEMA are optional (a client may
    leave them out; the adapter sends JSON_SCHEMA only with a schema)."""
    from orchestrator.models.ports import ChatMessage, LlmRequest
    from orchestrator.models.triton import TritonModels

    llm = parse("llm")
    plain = LlmRequest((ChatMessage("user", "hi"),), model="smollm2-135m")
    inputs = TritonModels._llm_inputs(dataclasses.replace(plain, json_schema='{"type": "object"}'))
    assert {i.name() for i in inputs} == set(llm["input"])  # type: ignore[arg-type]
    assert {i.name() for i in TritonModels._llm_inputs(plain)} == set(llm["input"]) - {"JSON_SCHEMA"}  # type: ignore[arg-type]
    assert re.search(r'name: "JSON_SCHEMA" data_type: TYPE_STRING dims: \[ 1 \] optional: true', str(llm["text"]))
    sent = {i.name(): i.datatype() for i in inputs}
    assert sent["MODEL"] == "BYTES"
    assert re.search(r'name: "MODEL" data_type: TYPE_STRING dims: \[ 1 \] optional: true', str(llm["text"]))
    assert sent["PRIORITY"] == "INT32"
    assert re.search(r'name: "PRIORITY" data_type: TYPE_INT32 dims: \[ 1 \] optional: true', str(llm["text"]))
    assert "decoupled: true" in str(llm["text"])


def test_embed_config_matches_the_engine_and_the_adapter() -> None:
    """`embed`: one text per row in, a vector of EMBED_DIM out; the adapter's chunk is the config's batch limit; the
    ONNX file the config names is what setup exports, from sources setup checks against scripts/models.sha256."""
    from orchestrator.inference.embed import MAX_TOKENS, ONNX_FILE
    from orchestrator.models.ports import EMBED_DIM
    from orchestrator.models.triton import TritonModels

    embed = parse("embed")
    assert embed["name"] == "embed"
    assert embed["input"] == {"TEXT": ("TYPE_STRING", [1])}
    assert embed["output"] == {"EMBEDDING": ("TYPE_FP32", [EMBED_DIM])}
    assert embed["max_batch_size"] == TritonModels.embed_max_batch
    text = str(embed["text"])
    assert 'backend: "python"' in text and "dynamic_batching" in text and "instance_group" in text
    assert (REPO / "embed" / "1" / "model.py").is_file()
    params = dict(re.findall(r'key:\s*"([^"]+)"\s+value:\s*\{\s*string_value:\s*"([^"]*)"', text))
    assert params["onnx_file"] == ONNX_FILE and int(params["max_tokens"]) == MAX_TOKENS
    bootstrap = (REPO.parent / "scripts" / "bootstrap.sh").read_text()
    assert "scripts/export_embed.py" in bootstrap and "model_repository/embed/1" in bootstrap
    digests = (REPO.parent / "scripts" / "models.sha256").read_text()
    for source in ("model.safetensors", "tokenizer.json", "config.json"):
        assert f"all-minilm-l6-v2/{source}" in digests
