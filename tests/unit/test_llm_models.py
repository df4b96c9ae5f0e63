"""Several GGUFs in one `llm` model: the config's model lines, routing by name, typed errors, per-model pools.

No llama.cpp here: engines are fakes (the pools and routing never look inside one).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from orchestrator.inference.llm import (
    EnginePool,
    LlamaEngine,
    LlmInputError,
    Message,
    ModelPools,
    ModelSpec,
    UnknownModel,
    parse_model_name,
    parse_model_spec,
    parse_model_specs,
)


class FakeEngine:
    def __init__(self, label: str) -> None:
        self.label = label


def fake(label: str) -> LlamaEngine:
    return cast(LlamaEngine, FakeEngine(label))


def label(engine: LlamaEngine) -> str:
    return cast(FakeEngine, engine).label


def test_a_model_line_names_its_file_and_pool() -> None:
    assert parse_model_spec("qwen", "file=q.gguf") == ModelSpec("qwen", "q.gguf", engines=2, n_threads=1, n_ctx=2048)
    spec = parse_model_spec("smollm2-135m", "file=S.gguf engines=1 n_threads=2 n_ctx=1024")
    assert spec == ModelSpec("smollm2-135m", "S.gguf", engines=1, n_threads=2, n_ctx=1024)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("m", "engines=2", "no file"),
        ("m", "file=a.gguf file=b.gguf", "bad item"),
        ("m", "file=a.gguf threads=2", "bad item 'threads=2'"),
        ("m", "file=a.gguf engines", "bad item 'engines'"),
        ("m", "file=a.gguf engines=two", "invalid literal"),
        ("m", "file=a.gguf engines=0", "engines 1..8"),
        ("m", "file=a.gguf n_ctx=64", "n_ctx 256..32768"),
        ("m", "file=../a.gguf", "file must be a .gguf"),
        ("m", "file=a.bin", "file must be a .gguf"),
        ("bad name", "file=a.gguf", "is invalid"),
        ("", "file=a.gguf", "is invalid"),
    ],
)
def test_a_bad_model_line_says_what_is_wrong(name: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_model_spec(name, text)


def test_the_config_lists_the_models_and_their_default() -> None:
    params = {
        "default_model": "b",
        "model.a": "file=a.gguf",
        "model.b": "file=b.gguf engines=1",
        "unrelated": "x",
    }
    specs, default = parse_model_specs(params)
    assert [s.name for s in specs] == ["a", "b"] and default == "b"
    assert parse_model_specs({"model.only": "file=o.gguf"})[1] == "only"  # one model: it is the default
    with pytest.raises(ValueError, match="lists no model"):
        parse_model_specs({"gguf_file": "old.gguf"})
    with pytest.raises(ValueError, match="default_model 'c' is not one of the listed models: a, b"):
        parse_model_specs({**params, "default_model": "c"})
    with pytest.raises(ValueError, match="default_model '' is not one"):
        parse_model_specs({"model.a": "file=a.gguf", "model.b": "file=b.gguf"})  # two models: name the default


def test_the_model_input_is_optional_text() -> None:
    assert parse_model_name(None) == ""
    assert parse_model_name(b"") == ""
    assert parse_model_name(b" qwen2.5-coder-0.5b ") == "qwen2.5-coder-0.5b"
    assert parse_model_name("smollm2-135m") == "smollm2-135m"
    with pytest.raises(LlmInputError, match="MODEL is not UTF-8"):
        parse_model_name(b"\xff")


def run(pools: ModelPools, name: str, messages: Sequence[Message]) -> str:
    """Submit one job and wait for it: the label of the engine that ran it."""
    done, ran = threading.Event(), []

    def job(engine: LlamaEngine) -> None:
        ran.append(label(engine))
        done.set()

    pools.submit(name, messages, job)
    assert done.wait(10)
    return ran[0]


@pytest.fixture
def pools() -> Any:
    made = ModelPools(
        {
            "big": EnginePool([fake("big-0"), fake("big-1")]),
            "small": EnginePool([fake("small-0"), fake("small-1")]),
        },
        default="big",
    )
    yield made
    made.close()


def test_requests_go_to_the_model_they_name_and_empty_means_the_default(pools: ModelPools) -> None:
    chat = [Message("user", "hi")]
    assert run(pools, "small", chat).startswith("small-")
    assert run(pools, "big", chat).startswith("big-")
    assert run(pools, "", chat).startswith("big-")
    assert pools.names == ("big", "small") and pools.resolve("") == "big"


def test_an_unknown_model_is_a_typed_error_naming_what_is_served(pools: ModelPools) -> None:
    with pytest.raises(UnknownModel, match=r"unknown llm model 'gpt-9'; this server serves big, small") as caught:
        pools.submit("gpt-9", [Message("user", "hi")], lambda engine: None)
    assert caught.value.code == "bad_option"  # the client raises BadOption from "bad_option: ..."
    assert isinstance(caught.value, LlmInputError)
    with pytest.raises(ValueError, match="not served"):
        ModelPools({"a": EnginePool([fake("a")])}, default="b")


def test_each_model_keeps_its_own_prefix_routing(pools: ModelPools) -> None:
    """A session's next turn returns to the context holding its history, in its model's pool; another
    model's traffic in between does not move it."""
    a1 = [Message("system", "A"), Message("user", "one")]
    a2 = [*a1, Message("assistant", "ok"), Message("user", "two")]
    b1 = [Message("system", "B"), Message("user", "yo")]
    first = run(pools, "small", a1)
    assert run(pools, "small", b1) != first  # a new conversation leaves a1's context alone
    run(pools, "big", a1)
    run(pools, "big", b1)
    assert run(pools, "small", a2) == first


def test_concurrent_requests_to_both_models_each_run_once(pools: ModelPools) -> None:
    ran: list[str] = []
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def job(engine: LlamaEngine) -> None:
        with lock:
            ran.append(label(engine))
        done.release()

    def client(i: int) -> None:
        for j in range(10):
            pools.submit(("big", "small", "")[(i + j) % 3], [Message("user", f"{i}-{j}")], job)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(40):
        assert done.acquire(timeout=10)
    assert len(ran) == 40
    assert sum(r.startswith("small-") for r in ran) == sum((i + j) % 3 == 1 for i in range(4) for j in range(10))


def test_load_makes_only_the_listed_models_and_checks_their_files(tmp_path: Path) -> None:
    for name in ("a.gguf", "b.gguf", "unlisted.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    made: list[tuple[str, int]] = []

    def engine(path: Path, spec: ModelSpec) -> LlamaEngine:
        made.append((path.name, spec.n_threads))
        return fake(f"{spec.name}-{len(made)}")

    specs = [ModelSpec("a", "a.gguf", engines=2), ModelSpec("b", "b.gguf", engines=1, n_threads=2)]
    pools = ModelPools.load(specs, "a", tmp_path, engine)
    try:
        assert made == [("a.gguf", 1), ("a.gguf", 1), ("b.gguf", 2)]
        assert pools.names == ("a", "b") and pools.default == "a"
    finally:
        pools.close()

    with pytest.raises(FileNotFoundError, match=r"the GGUF of c \(c.gguf\) is not in the model's folder"):
        ModelPools.load([*specs, ModelSpec("c", "c.gguf")], "a", tmp_path, engine)


def test_a_model_that_fails_to_load_closes_the_pools_already_started(tmp_path: Path) -> None:
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")

    def engine(path: Path, spec: ModelSpec) -> LlamaEngine:
        if spec.name == "b":
            raise RuntimeError("llama.cpp could not load b")
        return fake("a")

    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="could not load b"):
        ModelPools.load([ModelSpec("a", "a.gguf"), ModelSpec("b", "b.gguf")], "a", tmp_path, engine)
    started = [t for t in threading.enumerate() if t not in before and t.name.startswith("llm-engine-")]
    assert not started  # a's workers were stopped


def test_max_threads_is_parsed_and_checked() -> None:
    spec = parse_model_spec("q", "file=q.gguf n_threads=1 max_threads=2")
    assert spec.max_threads == 2 and spec.threads == (1, 2)
    assert parse_model_spec("q", "file=q.gguf").threads is None  # off by default
    assert parse_model_spec("q", "file=q.gguf n_threads=2 max_threads=2").threads is None  # nothing spare
    with pytest.raises(ValueError, match="max_threads"):
        parse_model_spec("q", "file=q.gguf n_threads=2 max_threads=1")


def test_lookup_is_parsed_and_checked_and_the_default_model_drafts() -> None:
    assert parse_model_spec("q", "file=q.gguf lookup=3").lookup == 3
    assert parse_model_spec("q", "file=q.gguf").lookup == 0  # off by default
    with pytest.raises(ValueError, match="lookup"):
        parse_model_spec("q", "file=q.gguf lookup=17")
