"""What a grounded reply is given: whole chunks vs their best sentences (`orchestrator/knowledge/retrieve.py`
`excerpt`), on the knowledge QA set: the context's size in the default LLM's tokens (every token is evaluated
afresh at ~65 tokens/s on one CPU thread, before the first word of the reply) and whether the answer's fact is
still in it. Same retrieval (`balanced`, top 3 above the conversations' similarity floor), same run.

    .venv/bin/python perf/bench_context.py [--top-k 3] [--out perf/out/knowledge/bench_context.json]

Runs in-process (the `embed` model's ONNX through `orchestrator.inference.embed`, the Qwen tokenizer through
llama.cpp with the vocabulary only): a minute or two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from orchestrator.config import REPO_ROOT, IntelSettings
from orchestrator.inference.embed import SentenceEmbedder
from orchestrator.knowledge.chunk import chunk_document
from orchestrator.knowledge.index import STRATEGY_MODES, IndexedChunk, KnowledgeIndex
from orchestrator.knowledge.parse import parse_document
from orchestrator.knowledge.retrieve import excerpt, sentence_text

DATA = REPO_ROOT / "perf" / "data" / "knowledge"
GGUF = REPO_ROOT / "model_repository" / "llm" / "1" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def contains(context: str, fact: str) -> bool:
    return " ".join(fact.lower().split()) in " ".join(context.lower().split())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--top-k", type=int, default=IntelSettings().top_k)
    ap.add_argument("--sentences", type=int, default=2, help="sentences per excerpt")
    ap.add_argument("--out", default=str(REPO_ROOT / "perf" / "out" / "knowledge" / "bench_context.json"))
    args = ap.parse_args()
    from llama_cpp import Llama

    tokenizer = Llama(model_path=str(GGUF), vocab_only=True, verbose=False)
    embed = SentenceEmbedder(REPO_ROOT / "model_repository" / "embed" / "1")
    index = KnowledgeIndex()
    for path in sorted(DATA.iterdir()):
        if path.suffix not in (".md", ".html", ".txt"):
            continue
        chunks = chunk_document(parse_document(path.read_bytes(), filename=path.name))
        vectors = embed([c.text for c in chunks])
        indexed = []
        for i, (c, v) in enumerate(zip(chunks, vectors, strict=True)):
            sv = embed([sentence_text(c, s) for s in c.sentences]) if len(c.sentences) > 1 else None
            indexed.append(IndexedChunk(f"{path.stem}-{i}", c.text, v, sv))
        index.add(path.stem, indexed)
    questions = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines() if line.strip()]
    floor = IntelSettings().min_score
    rows: dict[str, dict[str, list[float]]] = {"whole chunks": {"tokens": [], "fact": []},
                                               "excerpts": {"tokens": [], "fact": []}}  # fmt: skip
    for q in questions:
        if not q.get("answerable", True):
            continue
        vector = embed([q["question"]])[0]
        hits = index.search(q["question"], vector, mode=STRATEGY_MODES["balanced"], top_k=args.top_k)
        hits = [h for h in hits if h.similarity >= floor]
        contexts = {
            "whole chunks": "\n".join(h.text for h in hits),
            "excerpts": "\n".join(
                excerpt(h.text, index.sentence_vectors(h.chunk_id), vector, sentences=args.sentences) for h in hits
            ),
        }
        for name, context in contexts.items():
            rows[name]["tokens"].append(len(tokenizer.tokenize(context.encode(), add_bos=False)))
            rows[name]["fact"].append(float(contains(context, q["fact"])))
    out: dict[str, Any] = {}
    print(f"| context (top {args.top_k}) | tokens p50 | tokens p95 | fact in context | prompt eval, 65 tok/s |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        p50 = statistics.median(r["tokens"])
        p95 = float(np.percentile(r["tokens"], 95))
        share = sum(r["fact"]) / len(r["fact"])
        out[name] = {"tokens_p50": p50, "tokens_p95": p95, "fact_share": share, "questions": len(r["fact"])}
        print(f"| {name} | {p50:.0f} | {p95:.0f} | {share:.2f} ({len(r['fact'])} questions) | {p50 / 65:.1f} s |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
