"""Judges, guardrails and tool choice on the local LLMs: short questions about a call answered as JSON, scored.

    python perf/bench_judges.py                                   # both served models, both modes, + latency
    python perf/bench_judges.py --models qwen2.5-coder-0.5b --modes grammar --no-latency
    python perf/bench_judges.py --engine-models qwen2.5-coder-1.5b --no-latency   # + a candidate, in-process
    python perf/bench_judges.py --report perf/out/bench_judges.json   # the tables of a saved run

Each case of `perf/data/judges.jsonl` is one judge request: a short piece of a call (a transcript, an agent's
reply and a policy, a user's words and a tool), a question, the JSON Schema of the answer and the expected
values of its decisive keys (free-text keys such as `reason` are not scored). The system prompt shows the
schema; mode `grammar` also sends it as `LlmRequest.json_schema` (the `llm` model then decodes under the
grammar built from it), mode `free` does not (the reply is whatever the model writes). A reply is `valid` when
the whole of it is one JSON object the schema accepts, `correct` when it parses (a ``` fence taken off) and
every expected key has its expected value (`value_matches`).

The latency part (the default model, `--latency-model`) times a typical judge: ~300 prompt tokens, ~30
tokens of JSON, with and without the grammar, the prompt new each time (nothing cached) and repeated (all
cached); then the server's grammar cache cold (a schema text it has not seen) against warm; and, in this
process, what compiling a schema costs (the cached part) and llama.cpp's parse of its grammar (done for
every request). Requests go one at a time through `TritonModels` to the real `llm` model in the embedded
tritonserver; token counts come from the model's counters on /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jsonschema

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.models.ports import ChatMessage, LlmRequest  # noqa: E402

DATA = ROOT / "perf" / "data" / "judges.jsonl"
OUT = ROOT / "perf" / "out" / "bench_judges.json"
MODELS = ("qwen2.5-coder-0.5b", "smollm2-135m")
MODES = ("grammar", "free")
KINDS = ("extract", "policy", "tool")
MAX_TOKENS = 96
SYSTEM = (
    "You are a careful judge of customer calls. Read the material, then answer the question with one JSON object "
    "that matches this JSON Schema:\n{schema}\nWrite only the JSON object."
)


# --- the cases (pure) ---


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # extract | policy | tool
    material: str
    question: str
    schema: dict[str, Any]
    expect: dict[str, Any]

    @property
    def decision(self) -> bool | None:
        """The expected yes/no of the case (its first expected value, when a boolean)."""
        first = next(iter(self.expect.values()), None)
        return first if isinstance(first, bool) else None


def load_cases(path: Path = DATA) -> list[Case]:
    cases = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            data = json.loads(line)
            case = Case(**data)
            if case.kind not in KINDS or not set(case.expect) <= set(case.schema.get("properties", {})):
                raise ValueError(f"{path.name}:{n}: bad case {case.id!r} (kind, or expected keys not in the schema)")
            cases.append(case)
    return cases


def judge_messages(case: Case, prefix: str = "") -> tuple[ChatMessage, ...]:
    """The judge's prompt: the schema in the system prompt, the material and the question as the user's turn.
    `prefix` starts the system prompt (a different one each time keeps the prompt out of the KV cache)."""
    system = prefix + SYSTEM.format(schema=json.dumps(case.schema))
    return (ChatMessage("system", system), ChatMessage("user", f"{case.material}\n\nQuestion: {case.question}"))


# --- scoring (pure) ---

FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.S)


def parse_reply(text: str) -> tuple[dict[str, Any] | None, bool]:
    """(the reply's JSON object, whether the whole reply was exactly that); a reply fenced in ``` is parsed from
    inside the fence (not strict). None when there is no JSON object."""

    def load(s: str) -> dict[str, Any] | None:
        try:
            value = json.loads(s)
        except (json.JSONDecodeError, RecursionError):
            return None
        return value if isinstance(value, dict) else None

    body = text.strip()
    strict = load(body)
    if strict is not None:
        return strict, True
    fence = FENCE.search(body)
    return (load(fence.group(1)) if fence else None), False


def normalise(value: str) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", value.casefold()).split())


def value_matches(got: Any, want: Any) -> bool:
    """Booleans, null and numbers exactly; strings equal once case, punctuation and spacing are set aside
    ("Margaret Okafor." is "margaret okafor"; "4471-22" is not "447122")."""
    if isinstance(want, bool) or want is None:
        return got is want
    if isinstance(want, int | float):
        return isinstance(got, int | float) and not isinstance(got, bool) and abs(got - want) < 1e-6
    return isinstance(got, str) and normalise(got) == normalise(str(want))


@dataclass(frozen=True)
class Score:
    valid: bool  # the whole reply is one JSON object the schema accepts
    parsed: bool  # a JSON object could be read from it (perhaps fenced)
    correct: bool  # parsed, and every expected key has its expected value


def score_reply(text: str, case: Case) -> Score:
    data, strict = parse_reply(text)
    if data is None:
        return Score(False, False, False)
    valid = strict and jsonschema.Draft202012Validator(case.schema).is_valid(data)
    correct = all(k in data and value_matches(data[k], v) for k, v in case.expect.items())
    return Score(valid, True, correct)


@dataclass(frozen=True)
class Row:
    """One judged case: which model and mode, the reply, its score and its cost."""

    model: str
    mode: str
    case: str
    kind: str
    text: str
    valid: bool
    correct: bool
    latency_s: float
    first_s: float
    prompt_tokens: int
    generated_tokens: int
    decision: bool | None = None  # the case's expected yes/no


def make_row(
    model: str, mode: str, case: Case, text: str, latency_s: float, first_s: float, prompt: int, generated: int
) -> Row:
    """One judged case, scored."""
    score = score_reply(text, case)
    return Row(
        model,
        mode,
        case.id,
        case.kind,
        text,
        score.valid,
        score.correct,
        latency_s,
        first_s,
        prompt,
        generated,
        case.decision,
    )


def progress(row: Row) -> None:
    mark = "ok " if row.correct else "BAD"
    print(f"[judges] {row.model} {row.mode:7} {row.case:22} {mark} {row.latency_s:5.2f}s {row.text!r}")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarise(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Per (model, mode), in the order first seen: cases, valid and correct rates, accuracy per kind and on the
    cases whose answer is yes and no (a model that always says yes scores 100% and 0%), latency p50 and p90
    (s), mean prompt and generated tokens."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.model, r.mode), []).append(r)
    out = []
    for (model, mode), rs in groups.items():
        latencies = [r.latency_s for r in rs]
        out.append(
            {
                "model": model,
                "mode": mode,
                "n": len(rs),
                "valid": sum(r.valid for r in rs) / len(rs),
                "accuracy": sum(r.correct for r in rs) / len(rs),
                "by_kind": {
                    k: sum(r.correct for r in rs if r.kind == k) / max(1, sum(r.kind == k for r in rs))
                    for k in KINDS
                    if any(r.kind == k for r in rs)
                },
                "on_yes": rate([r.correct for r in rs if r.decision is True]),
                "on_no": rate([r.correct for r in rs if r.decision is False]),
                "p50_s": percentile(latencies, 0.5),
                "p90_s": percentile(latencies, 0.9),
                "prompt_tokens": statistics.fmean(r.prompt_tokens for r in rs),
                "generated_tokens": statistics.fmean(r.generated_tokens for r in rs),
            }
        )
    return out


def table(summary: Sequence[dict[str, Any]]) -> str:
    kinds = [k for k in KINDS if any(k in s["by_kind"] for s in summary)]
    head = ["model", "mode", "cases", "valid JSON", "accuracy", *kinds, "on yes / no cases", "latency p50 / p90"]
    head.append("tokens in / out")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [
            s["model"],
            s["mode"],
            str(s["n"]),
            f"{s['valid']:.0%}",
            f"{s['accuracy']:.0%}",
            *(f"{s['by_kind'][k]:.0%}" if k in s["by_kind"] else "–" for k in kinds),
            " / ".join("–" if s.get(k) is None else f"{s[k]:.0%}" for k in ("on_yes", "on_no")),
            f"{s['p50_s']:.2f} / {s['p90_s']:.2f} s",
            f"{s['prompt_tokens']:.0f} / {s['generated_tokens']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def med(runs: Sequence[dict[str, Any]], key: str, scale: float = 1.0) -> str:
    return f"{statistics.median(r[key] for r in runs) * scale:.0f}"


def latency_table(latency: dict[str, Any]) -> str:
    """The latency part's runs: median total, first piece and generation speed per setting."""
    cpu = all("cpu_s" in r for runs in latency["runs"].values() for r in runs)
    head = ["setting", "runs", "prompt tokens (cached)", "generated", "total p50", *(["CPU p50"] if cpu else [])]
    head += ["first piece p50", "ms / generated token"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in latency["runs"].items():
        per_token = [(r["total_s"] - r["first_s"]) * 1000 / (r["generated"] - 1) for r in runs if r["generated"] > 1]
        cells = [name, str(len(runs)), f"{med(runs, 'prompt')} ({med(runs, 'cached')})", med(runs, "generated")]
        cells += [f"{med(runs, 'total_s', 1000)} ms", *([f"{med(runs, 'cpu_s', 1000)} ms"] if cpu else [])]
        cells += [f"{med(runs, 'first_s', 1000)} ms", f"{statistics.median(per_token) if per_token else 0.0:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if "compile" in latency:
        c = latency["compile"]
        lines.append(
            f"\nschema to grammar (cached per schema text): {c['convert_ms']:.2f} ms median; llama.cpp's parse of "
            f"the grammar (every request): {c['parse_ms']:.3f} ms median"
        )
    return "\n".join(lines)


# --- running against the real model ---


def counters(metrics_url: str, model: str) -> dict[str, float]:
    """The `llm` model's counters for one served model (the `llm_model` label)."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(duet_llm_\w+)\{([^}]*)\} (\S+)$", text, re.M):
        if f'llm_model="{model}"' in labels:
            out[name] = out.get(name, 0.0) + float(value)
    return out


async def judge(models: Any, metrics_url: str, request: LlmRequest) -> dict[str, Any]:
    """One request, timed: total and first-piece seconds, the reply, and its tokens from the counters."""
    before = counters(metrics_url, request.model)
    t0 = time.perf_counter()
    first, text = 0.0, ""
    async for piece in models.generate(request):
        first = first or time.perf_counter() - t0
        text += piece
    total = time.perf_counter() - t0
    after = counters(metrics_url, request.model)

    def delta(name: str) -> int:
        return int(after.get(name, 0.0) - before.get(name, 0.0))

    return {
        "text": text,
        "total_s": total,
        "first_s": first or total,
        "prompt": delta("duet_llm_prompt_tokens_total"),
        "cached": delta("duet_llm_cached_prompt_tokens_total"),
        "generated": delta("duet_llm_generated_tokens_total"),
    }


async def run_cases(
    grpc_url: str, metrics_url: str, cases: Sequence[Case], models: Sequence[str], modes: Sequence[str]
) -> list[Row]:
    from orchestrator.models.triton import TritonModels

    client = TritonModels(grpc_url, timeout_s=60.0)
    client.llm_timeout_s = 120.0
    rows = []
    try:
        for model in models:
            for mode in modes:
                for case in cases:
                    schema = json.dumps(case.schema) if mode == "grammar" else ""
                    request = LlmRequest(
                        judge_messages(case), max_tokens=MAX_TOKENS, temperature=0.0, model=model, json_schema=schema
                    )
                    got = await judge(client, metrics_url, request)
                    text, total, first = got["text"], got["total_s"], got["first_s"]
                    rows.append(make_row(model, mode, case, text, total, first, got["prompt"], got["generated"]))
                    progress(rows[-1])
    finally:
        await client.close()
    return rows


def run_cases_engine(cases: Sequence[Case], model: str, modes: Sequence[str]) -> list[Row]:
    """The cases on a model the `llm` model does not serve (a candidate), on the same engine in this process:
    `LlamaEngine` with a `GrammarCache`, as the served model runs them. Its GGUF comes from
    `perf/bench_replies.py` (extracted by setup, or fetched into .cache/llm/)."""
    from orchestrator.inference.llm import GenerationStats, GrammarCache, LlamaEngine, Message
    from perf.bench_replies import gguf_path

    engine = LlamaEngine(gguf_path(model), n_ctx=2048, n_threads=1)
    cache = GrammarCache()
    rows = []
    for mode in modes:
        for case in cases:
            stats = GenerationStats()
            grammar = cache.get(json.dumps(case.schema)) if mode == "grammar" else None
            chat = [Message(m.role, m.content) for m in judge_messages(case)]
            t0 = time.perf_counter()
            first, text = 0.0, ""
            for step in engine.stream(chat, max_tokens=MAX_TOKENS, temperature=0.0, stats=stats, grammar=grammar):
                first = first or time.perf_counter() - t0
                text += step.text
            total = time.perf_counter() - t0
            name = f"{model} (engine)"
            rows.append(make_row(name, mode, case, text, total, first, stats.prompt_tokens, stats.generated_tokens))
            progress(rows[-1])
    return rows


# A typical judge: some 300 prompt tokens (a call's transcript, the schema, the question) and some 30 tokens
# of JSON out.
LATENCY_CASE = Case(
    id="latency",
    kind="extract",
    material="\n".join(
        (
            "Agent: Good morning, Riverside Clinic, this is Ada speaking. How can I help you today?",
            "User: Hi Ada. I'd like to book a check-up. My knee has been bothering me since I went hiking last month.",
            "Agent: I'm sorry to hear that. Have you been to the clinic before?",
            "User: Yes, a couple of years ago, I saw Doctor Lin then.",
            "Agent: To find your file, may I have your full name?",
            "User: It's Daniel Brooks. Brooks with an s at the end.",
            "Agent: Thank you, Daniel. And could you confirm your date of birth for me?",
            "User: Sure, it's the twelfth of November, nineteen eighty-seven.",
            "Agent: I have Thursday at nine thirty with Doctor Lin. Would that work?",
            "User: That's perfect, thank you.",
        )
    ),
    question="Did the user give their date of birth? If so, extract it as YYYY-MM-DD. Also give the user's full name.",
    schema={
        "type": "object",
        "properties": {
            "given": {"type": "boolean"},
            "date_of_birth": {"type": "string", "pattern": r"^(\d{4}-\d{2}-\d{2})?$"},
            "name": {"type": "string"},
        },
        "required": ["given", "date_of_birth", "name"],
    },
    expect={"given": True, "date_of_birth": "1987-11-12", "name": "Daniel Brooks"},
)


def served_spec(model: str) -> tuple[Path, Any]:
    """The served model's GGUF and its `ModelSpec`, from the `llm` config."""
    from orchestrator.inference.llm import parse_model_specs

    text = (ROOT / "model_repository" / "llm" / "config.pbtxt").read_text()
    specs, _ = parse_model_specs(dict(re.findall(r'key:\s*"([^"]+)"\s+value:\s*\{\s*string_value:\s*"([^"]*)"', text)))
    spec = next(s for s in specs if s.name == model)
    return ROOT / "model_repository" / "llm" / "1" / spec.file, spec


def compile_costs(model: str, schemas: Sequence[str], n: int = 200) -> dict[str, float]:
    """In this process: the schema-to-grammar conversion (what the server caches) and llama.cpp's parse of the
    grammar (done for every request, in `LlamaEngine.check_grammar` and again in `Llama.generate`)."""
    import llama_cpp
    from llama_cpp import Llama

    from orchestrator.inference.llm import grammar_from_schema

    vocab_only = Llama(model_path=str(served_spec(model)[0]), vocab_only=True, verbose=False)
    convert, parse = [], []
    for _ in range(n):
        for schema in schemas:
            t0 = time.perf_counter()
            grammar = grammar_from_schema(schema)
            t1 = time.perf_counter()
            sampler = llama_cpp.llama_sampler_init_grammar(
                vocab_only._model.vocab, grammar._grammar.encode(), grammar._root.encode()
            )
            t2 = time.perf_counter()
            llama_cpp.llama_sampler_free(sampler)
            convert.append((t1 - t0) * 1000)
            parse.append((t2 - t1) * 1000)
    return {"convert_ms": statistics.median(convert), "parse_ms": statistics.median(parse)}


def latency_plan(repeats: int) -> list[tuple[str, tuple[ChatMessage, ...], str]]:
    """The latency part's requests, in order: (setting, messages, json_schema). The first of each "prompt
    cached" setting evaluates the prompt (`drop_first` takes it out)."""
    schema = json.dumps(LATENCY_CASE.schema)
    plan = [("warm-up", judge_messages(LATENCY_CASE, "Warm-up. "), schema)]
    for _ in range(repeats):  # interleaved, so a slow moment of the machine hits both alike
        for mode, json_schema in (("free", ""), ("grammar", schema)):
            plan.append(
                (f"{mode}, prompt new", judge_messages(LATENCY_CASE, f"Call {uuid.uuid4().hex[:8]}. "), json_schema)
            )
    same = judge_messages(LATENCY_CASE)
    for _ in range(repeats + 1):
        for mode, json_schema in (("free", ""), ("grammar", schema)):
            plan.append((f"{mode}, prompt cached", same, json_schema))
    for _ in range(repeats):  # a schema text the server has not seen (its grammar is compiled) vs a cached one
        fresh = json.dumps({**LATENCY_CASE.schema, "$comment": f"probe {uuid.uuid4().hex}"})
        plan.append(("grammar cache cold, prompt cached", same, fresh))
        plan.append(("grammar cache warm, prompt cached", same, schema))
    return plan


def drop_first(runs: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The runs without the warm-up and without the first of each "prompt cached" setting."""
    out = {k: v for k, v in runs.items() if k != "warm-up"}
    for name in ("free, prompt cached", "grammar, prompt cached"):
        if name in out:
            out[name] = out[name][1:]
    return out


def engine_latency(model: str, repeats: int) -> dict[str, Any]:
    """The latency part on the engine the `llm` model runs, in this process (one context, the config's threads):
    wall time and this thread's CPU time, which a busy machine inflates far less (llama.cpp computes in the
    calling thread when it has one thread)."""
    from orchestrator.inference.llm import GenerationStats, GrammarCache, LlamaEngine, Message

    gguf, spec = served_spec(model)
    engine = LlamaEngine(gguf, n_ctx=spec.n_ctx, n_threads=spec.n_threads)
    cache = GrammarCache()
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, messages, json_schema in latency_plan(repeats):
        stats = GenerationStats()
        t0, c0 = time.perf_counter(), time.thread_time()
        grammar = cache.get(json_schema) if json_schema else None
        first, text = 0.0, ""
        chat = [Message(m.role, m.content) for m in messages]
        for step in engine.stream(chat, max_tokens=MAX_TOKENS, temperature=0.0, stats=stats, grammar=grammar):
            first = first or time.perf_counter() - t0
            text += step.text
        got = {
            "text": text,
            "total_s": time.perf_counter() - t0,
            "cpu_s": time.thread_time() - c0,
            "first_s": first,
            "prompt": stats.prompt_tokens,
            "cached": stats.cached_tokens,
            "generated": stats.generated_tokens,
        }
        runs.setdefault(name, []).append(got)
        print(
            f"[engine] {name:34} {got['total_s'] * 1000:6.0f} ms ({got['cpu_s'] * 1000:.0f} ms CPU)  {got['prompt']} "
            f"({got['cached']}) tokens in, {got['generated']} out"
        )
    return {"model": model, "runs": drop_first(runs)}


async def run_latency(grpc_url: str, metrics_url: str, model: str, repeats: int) -> dict[str, Any]:
    from orchestrator.models.triton import TritonModels

    client = TritonModels(grpc_url, timeout_s=60.0)
    client.llm_timeout_s = 120.0
    schema = json.dumps(LATENCY_CASE.schema)
    runs: dict[str, list[dict[str, Any]]] = {}

    async def one(name: str, messages: tuple[ChatMessage, ...], json_schema: str) -> None:
        request = LlmRequest(messages, max_tokens=MAX_TOKENS, temperature=0.0, model=model, json_schema=json_schema)
        got = await judge(client, metrics_url, request)
        runs.setdefault(name, []).append(got)
        print(
            f"[latency] {name:34} {got['total_s'] * 1000:6.0f} ms  {got['prompt']} ({got['cached']}) tokens in, "
            f"{got['generated']} out: {got['text']!r}"
        )

    try:
        for name, messages, json_schema in latency_plan(repeats):
            await one(name, messages, json_schema)
    finally:
        await client.close()
    case_schemas = sorted({json.dumps(c.schema) for c in load_cases()} | {schema})
    return {"model": model, "runs": drop_first(runs), "compile": compile_costs(model, case_schemas)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--engine-models", default="", help="candidates the llm model does not serve, run in-process")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--no-cases", action="store_true", help="the latency part only")
    p.add_argument("--latency-model", default=MODELS[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--report", help="print the tables of a saved run")
    args = p.parse_args()
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        saved["summary"] = summarise(Row(**r) for r in saved["rows"])
    else:
        from orchestrator.config import TritonSettings
        from orchestrator.models.launcher import EmbeddedTriton

        cases = load_cases()
        with EmbeddedTriton(TritonSettings(models=("llm",))) as server:
            rows = []
            if not args.no_cases:
                rows = asyncio.run(
                    run_cases(server.grpc_url, server.metrics_url, cases, args.models.split(","), args.modes.split(","))
                )
            latency = None
            if not args.no_latency:
                latency = asyncio.run(
                    run_latency(server.grpc_url, server.metrics_url, args.latency_model, args.repeats)
                )
        if not args.no_cases:
            for model in filter(None, args.engine_models.split(",")):
                rows += run_cases_engine(cases, model, args.modes.split(","))
        engine = None if args.no_latency else engine_latency(args.latency_model, args.repeats)
        saved = {"rows": [asdict(r) for r in rows], "summary": summarise(rows), "latency": latency, "engine": engine}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(saved, indent=2))
        print(f"\nwritten to {out}")
    print()
    print(table(saved["summary"]))
    if saved.get("latency"):
        print(f"\nlatency of a judge on {saved['latency']['model']}, through Triton (one request at a time):\n")
        print(latency_table(saved["latency"]))
    if saved.get("engine"):
        print(f"\nthe same on the engine in this process ({saved['engine']['model']}, one context):\n")
        print(latency_table(saved["engine"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
