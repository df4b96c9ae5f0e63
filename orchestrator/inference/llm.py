"""The local language models: GGUFs run by llama.cpp, streamed token by token with a cancellation check.

The Triton `llm` model is thin glue around this module. One `LlamaEngine` owns one llama.cpp context, which
is not thread safe, so it serves one request at a time. The engine keeps its context between requests:
llama.cpp then reuses the KV cache for the prompt prefix it already holds (the system prompt and earlier
turns of a growing conversation) and only evaluates the new suffix. An `EnginePool` holds several engines of
one GGUF and sends each request to the one that holds its conversation; `ModelPools` holds one pool per
served model and routes a request by the model it names (`ModelSpec`, from the model's config).

Text is streamed as it is generated, except what might be the start of a stop sequence: that is held back
until the next tokens show whether it is one (`StopMatcher`), so a stop string split across tokens never
reaches the caller.

A reply's tokens may be drafted from the conversation itself (prompt lookup, `lookup_draft`): the words that
followed the last two or three tokens where they occurred before ("…your blood pressure medication" after the
user said it) are evaluated with the next token in one batch, and kept as far as the model's own samples agree.
Decoding one token reads every weight from memory (~87 ms for the 0.5B on one core here), a batch of four costs
little more, so each draft token kept saves most of a step; the reply is sampled exactly as without it.

A request may carry a JSON Schema (JSON_SCHEMA): its reply is then sampled under the llama.cpp grammar built
from the schema (`grammar_from_schema`, compiled once per schema text by `GrammarCache`), so it parses as JSON
the schema accepts, unless a stop string or `max_tokens` cuts it. Such a request (a judge, a guardrail, a
tool choice) is a one-off for the pool: see `EnginePool`.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.inference.device import ModelDevice

if TYPE_CHECKING:
    from llama_cpp.llama_grammar import LlamaGrammar

ROLES = ("system", "user", "assistant")
MAX_STOPS = 8
MAX_STOP_CHARS = 64


class LlmInputError(ValueError):
    """A request the model cannot serve (bad JSON, unknown role, too long); the message says which input.
    A subclass with a `code` is a typed error: the model sends it as "<code>: <message>" (`error_text`) and
    the Triton adapter raises the client's error of that code (bad_option: `BadOption`)."""

    code = ""


class UnknownModel(LlmInputError):
    """A request named a model this server does not serve (the client's `BadOption`)."""

    code = "bad_option"


class JsonSchemaError(LlmInputError):
    """A JSON_SCHEMA that cannot constrain a reply: not JSON, not a schema the converter knows, or one whose
    grammar would be too large for llama.cpp (the client's `BadOption`)."""

    code = "bad_option"


def error_text(exc: LlmInputError) -> str:
    """What the client is sent for a refused request: "<code>: <message>" for a typed error."""
    return f"{exc.code}: {exc}" if exc.code else str(exc)


@dataclass(frozen=True)
class Message:
    role: str
    content: str


def parse_messages(raw: str | bytes, *, prefill: bool = False) -> list[Message]:
    """MESSAGES: a JSON list of {"role": "system"|"user"|"assistant", "content": str}, ending with a user turn
    (or, for a prefill, `MAX_TOKENS` 0, with any turn: the conversation so far)."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LlmInputError(f"MESSAGES is not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise LlmInputError('MESSAGES must be a non-empty JSON list of {"role", "content"} objects')
    out = []
    for i, m in enumerate(data):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise LlmInputError(f'MESSAGES[{i}] must be an object with string "role" and "content"')
        if m["role"] not in ROLES:
            raise LlmInputError(f"MESSAGES[{i}].role is {m['role']!r}; expected one of {', '.join(ROLES)}")
        out.append(Message(m["role"], m["content"]))
    if out[-1].role == "assistant" and not prefill:
        raise LlmInputError(
            "MESSAGES must not end with an assistant turn: the model writes the next one (MAX_TOKENS 0 evaluates a "
            "conversation so far without generating)"
        )
    return out


def parse_stop(raw: str | bytes) -> tuple[str, ...]:
    """STOP: a JSON list of up to 8 non-empty strings (empty input = no stop sequences)."""
    if not raw or (isinstance(raw, bytes) and not raw.strip()) or (isinstance(raw, str) and not raw.strip()):
        return ()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LlmInputError(f"STOP is not valid JSON: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(s, str) and s for s in data):
        raise LlmInputError("STOP must be a JSON list of non-empty strings")
    if len(data) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in data):
        raise LlmInputError(f"STOP allows at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters")
    return tuple(data)


# --- JSON_SCHEMA: replies decoded under a grammar built from a JSON Schema ---

MAX_SCHEMA_CHARS = 16_384
# Bounds on what a schema may expand into. llama-cpp-python writes `maxLength: n` (and `maxItems`, and a
# pattern's `{n}`) as n nested optional groups, and llama.cpp's grammar parser recurses once per group: some
# 12,000 levels overflow an 8 MB thread stack and crash the process, and a million-item array is a grammar of
# tens of megabytes. So repetition counts, the grammar's size and its nesting depth are capped (a judge's
# schema is a few hundred bytes; `maxLength` 1000 is a grammar of 8 KB, 1000 groups deep).
MAX_REPEAT = 1_000
MAX_GRAMMAR_CHARS = 65_536
MAX_GRAMMAR_DEPTH = 1_000
REPEAT_KEYS = frozenset(("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"))
_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")
GRAMMAR_CACHE_SIZE = 32


def parse_json_schema(raw: str | bytes | None) -> str:
    """JSON_SCHEMA: a JSON Schema (a JSON object, as text) the reply must satisfy; absent or empty = free text.
    Returns the schema's text (the grammar cache's key); a schema this server will not compile is refused
    here, before it is queued (see `MAX_REPEAT`)."""
    if raw is None:
        return ""
    try:
        text = (raw.decode() if isinstance(raw, bytes) else str(raw)).strip()
    except UnicodeDecodeError as exc:
        raise JsonSchemaError(f"JSON_SCHEMA is not UTF-8: {exc}") from exc
    if not text:
        return ""
    if len(text) > MAX_SCHEMA_CHARS:
        raise JsonSchemaError(f"JSON_SCHEMA is {len(text)} characters; at most {MAX_SCHEMA_CHARS} are allowed")
    try:
        schema = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise JsonSchemaError(f"JSON_SCHEMA is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise JsonSchemaError("JSON_SCHEMA must be a JSON object (a JSON Schema)")
    _check_repeats(schema)
    return text


def _check_repeats(node: Any, depth: int = 0) -> None:
    """Refuse repetition counts over `MAX_REPEAT`: the schema's length and item counts and its patterns'."""
    if depth > 64:
        raise JsonSchemaError("JSON_SCHEMA is nested more than 64 levels deep")
    if isinstance(node, list):
        for item in node:
            _check_repeats(item, depth + 1)
    elif isinstance(node, dict):
        for key, value in node.items():
            too_many = isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_REPEAT
            if key in REPEAT_KEYS and too_many:
                raise JsonSchemaError(f"JSON_SCHEMA: {key} {value} is over {MAX_REPEAT}")
            if key == "pattern" and isinstance(value, str):
                for m in _QUANTIFIER.finditer(value):
                    if any(n and int(n) > MAX_REPEAT for n in m.groups()):
                        raise JsonSchemaError(f"JSON_SCHEMA: the pattern's {m.group(0)} is over {MAX_REPEAT}")
            _check_repeats(value, depth + 1)


def grammar_depth(gbnf: str) -> int:
    """The deepest nesting of ( ) groups in a GBNF grammar (quoted literals and [...] classes skipped)."""
    depth = deepest = 0
    i, n = 0, len(gbnf)
    while i < n:
        c = gbnf[i]
        if c in '"[':
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and gbnf[i] != close:
                i += 2 if gbnf[i] == "\\" else 1
        elif c == "#":  # a comment, to the end of the line
            while i < n and gbnf[i] != "\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


# The pattern shorthands llama-cpp-python's converter does not know (it writes `\d` into the grammar as an
# escape llama.cpp then refuses), as the character ranges it does know; `\s` as a space only, since a raw tab
# or newline inside a JSON string is not JSON.
SHORTHANDS = {"d": "0-9", "w": "A-Za-z0-9_", "s": " "}
# The converter's string character admits raw control characters (a newline), which no JSON parser accepts
# inside a string: llama.cpp's own converter excludes them, as this does.
LOOSE_CHAR = r'char ::= [^"\\] |'
JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def expand_shorthands(pattern: str) -> str:
    r"""`pattern` with `\d`, `\w` and `\s` written as character classes (`[0-9]`, or `0-9` inside a class);
    a negated one (`\D`, `\W`, `\S`) is `JsonSchemaError`."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt in SHORTHANDS:
                out.append(SHORTHANDS[nxt] if in_class else f"[{SHORTHANDS[nxt]}]")
            elif nxt in "DWS":
                raise JsonSchemaError(f"JSON_SCHEMA: the pattern's \\{nxt} is not supported; write a class ([^0-9])")
            else:
                out.append(c + nxt)
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


def _expand_patterns(node: Any) -> Any:
    if isinstance(node, list):
        return [_expand_patterns(v) for v in node]
    if isinstance(node, dict):
        return {
            k: expand_shorthands(v) if k == "pattern" and isinstance(v, str) else _expand_patterns(v)
            for k, v in node.items()
        }
    return node


def grammar_from_schema(schema: str) -> LlamaGrammar:
    """The llama.cpp grammar (GBNF) that admits exactly the JSON texts `schema` describes; `JsonSchemaError`
    when the converter refuses the schema or its grammar is over the bounds the parser survives."""
    from llama_cpp.llama_grammar import LlamaGrammar

    try:
        if "pattern" in schema:
            schema = json.dumps(_expand_patterns(json.loads(schema)))
        gbnf = LlamaGrammar.from_json_schema(schema, verbose=False)._grammar.replace(LOOSE_CHAR, JSON_CHAR)
    except JsonSchemaError:
        raise
    except Exception as exc:  # the converter asserts, or fails on a shape it does not expect
        raise JsonSchemaError(f"JSON_SCHEMA cannot be turned into a grammar: {type(exc).__name__}: {exc}") from exc
    if len(gbnf) > MAX_GRAMMAR_CHARS or grammar_depth(gbnf) > MAX_GRAMMAR_DEPTH:
        raise JsonSchemaError(
            f"JSON_SCHEMA makes a grammar of {len(gbnf)} characters nested {grammar_depth(gbnf)} deep; at most "
            f"{MAX_GRAMMAR_CHARS} and {MAX_GRAMMAR_DEPTH} are allowed (lower maxLength, maxItems or the patterns)"
        )
    return LlamaGrammar.from_string(gbnf, verbose=False)


class GrammarCache:
    """Compiled grammars by schema text, the `size` most recently used kept (a judge sends the same schema on
    every request). Thread safe; a refused schema is not cached (it raises each time)."""

    def __init__(self, size: int = GRAMMAR_CACHE_SIZE, compile: Callable[[str], Any] = grammar_from_schema) -> None:
        self.size = size
        self._compile = compile
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._grammars)

    def get(self, schema: str) -> Any:
        with self._lock:
            grammar = self._grammars.get(schema)
            if grammar is not None:
                self._grammars.move_to_end(schema)
                self.hits += 1
                return grammar
            self.misses += 1
        grammar = self._compile(schema)  # outside the lock: a slow compile holds up nobody else's hit
        with self._lock:
            self._grammars[schema] = grammar
            self._grammars.move_to_end(schema)
            while len(self._grammars) > self.size:
                self._grammars.popitem(last=False)
        return grammar


class StopMatcher:
    """Finds stop strings in streamed text, even when one is split across tokens.

    `feed` returns the text that is safe to emit now: everything before a stop string, or, while none is
    found, everything except the longest tail that could still grow into one.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.stopped = False
        self._pending = ""

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self._pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return buf[: min(hits)]
        hold = self._partial_tail(buf)
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """At the end of generation the held tail was not a stop string after all: release it."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best


@dataclass(frozen=True)
class Step:
    """One generated token: `text` is what may be emitted now (often "", while a stop string is pending)."""

    text: str
    token: int


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV entries were reused from the previous request
    generated_tokens: int = 0
    finish_reason: str = ""  # "stop" (end of turn or stop string), "length", "cancelled"
    # The request changed the context's KV cache, which now holds its prompt. False: it was cancelled or refused
    # first, or it was a prefill of what the cache already held (maybe with more after it, which it keeps).
    evaluated: bool = False
    drafted_tokens: int = 0  # tokens drafted from the conversation (`lookup_draft`) and checked
    kept_tokens: int = 0  # of those, the ones the model's samples agreed with


class LlamaEngine:
    """One llama.cpp context over a chat GGUF; `stream` generates for one request at a time."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        n_threads: int = 1,
        seed: int = 0,
        n_gpu_layers: int = 0,
        main_gpu: int = 0,
        lookup: int = 0,
    ) -> None:
        """`lookup`: draft tokens taken from the conversation per decoding step (`lookup_draft`; 0: none)."""
        from llama_cpp import LLAMA_SPLIT_MODE_NONE, Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        # Layers on a GPU (`offload_layers`): all on the instance's GPU, none split over the others. 0: the CPU,
        # called as before the GPU profile existed.
        gpu: dict[str, Any] = {"n_gpu_layers": n_gpu_layers, "main_gpu": main_gpu, "split_mode": LLAMA_SPLIT_MODE_NONE}
        self._llama = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_batch=256,
            seed=seed,
            verbose=False,
            **(gpu if n_gpu_layers else {}),
        )
        self.n_ctx = n_ctx
        self.threads = n_threads
        self.lookup = lookup
        template = self._llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{model_path} has no chat template (tokenizer.chat_template)")
        self._eos = self._llama.token_eos()
        # The chat template twice: ending with the assistant's turn opener (a reply), and without it (a prefill).
        self._formatters = {
            opener: Jinja2ChatFormatter(
                template=template,
                eos_token=self._piece(self._eos),
                bos_token=self._piece(self._llama.token_bos()),
                add_generation_prompt=opener,
            )
            for opener in (True, False)
        }

    def set_threads(self, n: int) -> None:
        """Threads for this context's next evaluations (a prompt's batch, each token); may be called while it
        computes from another thread (llama.cpp reads the number at each evaluation)."""
        import llama_cpp

        if n != self.threads:
            llama_cpp.llama_set_n_threads(self._llama._ctx.ctx, n, n)
            self.threads = n

    def _piece(self, token: int) -> str:
        return self._llama.detokenize([token], special=True).decode("utf-8", errors="replace")

    def prompt_tokens(self, messages: Sequence[Message], *, opener: bool = True) -> list[int]:
        """The conversation in the GGUF's own chat template, ending with the assistant's turn opener (unless
        `opener` is false: then exactly the prefix that a later request adding turns will start with)."""
        chat: Any = [{"role": m.role, "content": m.content} for m in messages]
        rendered = self._formatters[opener](messages=chat)
        return list(self._llama.tokenize(rendered.prompt.encode(), add_bos=False, special=True))

    def _fitting_tokens(self, messages: Sequence[Message], *, opener: bool) -> list[int]:
        """`prompt_tokens`, refused when the context cannot hold them."""
        tokens = self.prompt_tokens(messages, opener=opener)
        if len(tokens) >= self.n_ctx:
            raise LlmInputError(f"the prompt is {len(tokens)} tokens; the context holds {self.n_ctx}")
        return tokens

    def _is_end_of_turn(self, token: int) -> bool:
        import llama_cpp

        return token == self._eos or bool(llama_cpp.llama_vocab_is_eog(self._llama._model.vocab, token))

    def _held_prefix(self, tokens: Sequence[int]) -> int:
        held = list(self._llama._input_ids[: self._llama.n_tokens])
        n = 0
        for a, b in zip(held, tokens, strict=False):
            if a != b:
                break
            n += 1
        return n

    def _cached_prefix(self, tokens: Sequence[int]) -> int:
        return min(self._held_prefix(tokens), len(tokens) - 1)  # llama.cpp re-evaluates one token for logits

    def check_grammar(self, grammar: LlamaGrammar) -> None:
        """Refuse a grammar llama.cpp cannot parse (`JsonSchemaError`) before generating with it: the sampler
        that `Llama.generate` builds does not check, and a failed parse there crashes the process."""
        import llama_cpp

        vocab = self._llama._model.vocab
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode(), grammar._root.encode())
        if not sampler:
            raise JsonSchemaError("JSON_SCHEMA makes a grammar that llama.cpp cannot parse")
        llama_cpp.llama_sampler_free(sampler)

    def prefill(self, messages: Sequence[Message], stats: GenerationStats | None = None) -> None:
        """Evaluate the conversation so far into this context's KV cache, generating nothing: a later request
        that continues it evaluates only what it adds. What the cache already holds is kept: when it holds all of
        the conversation (a new session's system prompt, at the start of another session's history), nothing
        changes, not even the rest of that history, and `stats.evaluated` stays False."""
        stats = stats if stats is not None else GenerationStats()
        tokens = self._fitting_tokens(messages, opener=False)
        held = self._held_prefix(tokens)
        stats.prompt_tokens, stats.cached_tokens, stats.finish_reason = len(tokens), held, "prefill"
        if held < len(tokens):
            self._llama.n_tokens = held  # eval drops the cache past this point, then appends the rest
            self._llama.eval(tokens[held:])
            stats.evaluated = True

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] = (),
        cancelled: Callable[[], bool] = lambda: False,
        stats: GenerationStats | None = None,
        grammar: LlamaGrammar | None = None,
    ) -> Generator[Step, None, None]:
        """Generate the assistant's reply, one `Step` per token. `cancelled` is polled before each token;
        when it turns true generation stops at once. `stats` (if given) is filled in as it goes.

        With a `grammar` (`GrammarCache.get`) every token is sampled among those the grammar allows, and the
        end of turn only once the grammar is complete; stop strings and `max_tokens` still cut the reply (a
        JSON reply cut short is returned as it is). The grammar's parse state lives in the sampler that each
        `Llama.generate` call builds afresh (a `LlamaGrammar` is only its text), so nothing of one request's
        parse carries over to the next."""
        stats = stats if stats is not None else GenerationStats()
        if max_tokens < 0:
            raise LlmInputError(f"MAX_TOKENS must be 0 (a prefill) or positive, got {max_tokens}")
        if not 0.0 <= temperature <= 2.0:
            raise LlmInputError(f"TEMPERATURE must be within [0, 2], got {temperature}")
        if max_tokens == 0:  # a prefill: nothing to stream
            if not cancelled():
                self.prefill(messages, stats)
            return
        if grammar is not None:
            self.check_grammar(grammar)
        tokens = self._fitting_tokens(messages, opener=True)
        max_tokens = min(max_tokens, self.n_ctx - len(tokens))
        stats.prompt_tokens = len(tokens)
        stats.cached_tokens = self._cached_prefix(tokens)
        matcher = StopMatcher(stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
        if cancelled():
            stats.finish_reason = "cancelled"
            return
        # JSON repeats its quotes, commas and keys by nature: no repetition penalty under a grammar (with one,
        # a closing quote grows less likely each time one was written).
        sampling: dict[str, Any] = {"temp": temperature, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
        sampling["repeat_penalty"] = 1.1 if grammar is None else 1.0
        if self.lookup and grammar is None:
            gen = self._drafted(tokens, stats, max_tokens, sampling)
        else:
            gen = self._llama.generate(tokens, grammar=grammar, **sampling)
        try:
            for token in gen:
                stats.evaluated = True  # the first token comes after the whole prompt was evaluated
                if self._is_end_of_turn(token):
                    stats.finish_reason = "stop"
                    break
                stats.generated_tokens += 1
                text = matcher.feed(decoder.decode(self._llama.detokenize([token])))
                if matcher.stopped:
                    stats.finish_reason = "stop"
                    yield Step(text, token)
                    return
                if stats.generated_tokens >= max_tokens:
                    stats.finish_reason = "length"
                    yield Step(text + matcher.feed(decoder.decode(b"", final=True)) + matcher.flush(), token)
                    return
                yield Step(text, token)
                if cancelled():
                    stats.finish_reason = "cancelled"
                    return
            tail = matcher.feed(decoder.decode(b"", final=True))
            tail += matcher.flush()
            if tail:
                yield Step(tail, -1)
        finally:
            gen.close()

    def _drafted(
        self, tokens: Sequence[int], stats: GenerationStats, max_tokens: int, sampling: dict[str, Any]
    ) -> Generator[int, None, None]:
        """The reply's tokens, as `Llama.generate` samples them, with drafts from the conversation verified in
        the same batch as each step's token (`lookup_draft`). Each token is sampled once, by the same sampler
        chain, from the logits of the tokens kept before it: the reply's distribution is unchanged.

        The context's token record (`input_ids`, `n_tokens`) always matches its KV cache: a draft token the
        samples did not keep is removed from both before the tokens of that step are handed out."""
        llama = self._llama
        cached = stats.cached_tokens
        if not llama._ctx.kv_cache_seq_rm(-1, cached, -1):  # (a model whose memory cannot drop a tail)
            cached = stats.cached_tokens = 0  # (the counters must not call a re-evaluated prompt cached)
            llama._ctx.kv_cache_seq_rm(-1, 0, -1)
        llama.n_tokens = cached
        sampler = llama._init_sampler(**sampling)
        try:
            llama.eval(tokens[cached:])
            token = sampler.sample(llama._ctx, -1)
            history = list(tokens)
            produced = 1
            while True:
                yield token
                if self._is_end_of_turn(token) or produced >= max_tokens:
                    return
                history.append(token)
                room = min(self.lookup, max_tokens - produced - 1, self.n_ctx - llama.n_tokens - 2)
                draft = lookup_draft(history, room) if room > 0 else []
                batch = [token, *draft]
                start = llama.n_tokens
                llama._batch.set_batch(batch=batch, n_past=start, logits_all=True)
                llama._ctx.decode(llama._batch)
                llama.input_ids[start : start + len(batch)] = batch
                llama.n_tokens += len(batch)
                kept: list[int] = []
                for i in range(len(batch)):
                    kept.append(sampler.sample(llama._ctx, i))
                    if i == len(draft) or kept[-1] != draft[i] or self._is_end_of_turn(kept[-1]):
                        break
                stats.drafted_tokens += len(draft)
                stats.kept_tokens += len(kept) - 1
                # positions start..start+i hold the step's token and the drafts its samples confirmed
                if start + len(kept) < llama.n_tokens:
                    llama.n_tokens = start + len(kept)
                    llama._ctx.kv_cache_seq_rm(-1, llama.n_tokens, -1)
                for token in kept[:-1]:
                    yield token
                    produced += 1
                    history.append(token)
                    if produced >= max_tokens:
                        return
                token = kept[-1]
                produced += 1
        finally:
            sampler.close()


def lookup_draft(history: Sequence[int], limit: int, *, longest: int = 3, shortest: int = 2) -> list[int]:
    """Up to `limit` tokens that may come next, taken from the conversation itself ("prompt lookup"): the
    tokens that followed the latest earlier occurrence of its last `longest` tokens, else of its last
    `longest - 1`, down to `shortest`. Replies echo the user's words, the system prompt and the replica's own
    phrases; a single token is too weak a cue (on the dev calls drafts after one token were kept 29 % of the
    time against 56 % after two or three, and saved a quarter as much). Empty when nothing matches."""
    n = len(history)
    if limit <= 0:
        return []
    for size in range(longest, shortest - 1, -1):
        if n <= size:
            continue
        key = list(history[n - size :])
        for start in range(n - size - 1, -1, -1):
            if history[start] == key[0] and list(history[start : start + size]) == key:
                return list(history[start + size : start + size + limit])
    return []


def generate_text(engine: LlamaEngine, messages: Sequence[Message], **kwargs: Any) -> str:
    """The whole reply as one string (tests and tools; serving streams with `LlamaEngine.stream`)."""
    return "".join(s.text for s in engine.stream(messages, **kwargs))


def shared_turns(a: Sequence[Message], b: Sequence[Message]) -> int:
    """How many leading messages two conversations have in common."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def words_held(held: Sequence[Message], messages: Sequence[Message]) -> int:
    """When `held` is a conversation that `messages` continue but for its last message (a prefill of the user's
    words so far; the reply's words differ from some point on), the characters that message shares with the one
    `messages` have in its place: a context holding the longer start of the user's words holds more of the
    prompt. 0 otherwise (another conversation's history is no such partial)."""
    n = shared_turns(held, messages)
    if len(held) != n + 1 or len(messages) <= n or held[n].role != messages[n].role:
        return 0
    a, b = held[n].content, messages[n].content
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def best_engine(
    free: Sequence[tuple[int, Sequence[Message], int]], messages: Sequence[Message], spare: Collection[int] = ()
) -> int:
    """Among free engines (index, conversation it served last, when it was last used), the one whose KV cache
    holds the longest prefix of `messages`: most whole turns, then most of the next one's words (`words_held`).
    On a tie between contexts holding more of it than a system prompt, the one used last: it holds the newest
    of the conversation (the reply it generated, which no message records yet). On any other tie one that
    holds no conversation (nothing yet, or only a one-off request's prompt: the indexes in `spare`), then the
    least recently used, so a new conversation does not evict the cache of the session that spoke last.
    Requests of one session thus return to the context that already evaluated its history, instead of
    alternating between contexts as Triton's instances do."""

    def key(e: tuple[int, Sequence[Message], int]) -> tuple[int, int, tuple[int, int], int]:
        index, held, used = e
        n = shared_turns(held, messages)
        tie = (0, -used) if n >= 2 else (int(bool(held) and index not in spare), used)
        return (-n, -words_held(held, messages), tie, index)

    return min(free, key=key)[0]


PRIORITY_HIGH = 1  # a request's PRIORITY, as Triton counts priority levels: 1 is served first
PRIORITY_DEFAULT = 2  # what a request without one (or with 0) gets


def parse_priority(raw: int | None) -> int:
    """The queue level of a request's optional PRIORITY input: 1 (first) or 2 (the default)."""
    if raw is None or raw == 0:
        return PRIORITY_DEFAULT
    if raw not in (PRIORITY_HIGH, PRIORITY_DEFAULT):
        raise LlmInputError(f"PRIORITY must be 0 (default), {PRIORITY_HIGH} or {PRIORITY_DEFAULT}, got {raw}")
    return raw


Job = Callable[[LlamaEngine], bool | None]  # runs on a worker; False: it evaluated nothing (cancelled first)


@dataclass
class _Queued:
    messages: Sequence[Message]
    job: Job
    queued_at: float
    priority: int
    oneshot: bool
    prefill: bool


class EnginePool:
    """Several engines (llama.cpp contexts) in one process, one worker thread each; llama.cpp releases the
    GIL while it computes, so they run in parallel. Jobs start in order of priority, then of arrival (a
    paying tenant's replies overtake the queue, never a reply being generated), each on the free engine
    that holds the longest prefix of its conversation (`best_engine`).

    A session's next request often arrives while the engine holding its history is still busy: finishing the
    last reply (the client saw the final response a moment before the worker is free again), or evaluating
    the user's words so far (a prefill, exactly the work the reply needs). Evaluating the whole history
    elsewhere costs seconds, so such a job waits for that engine: up to `affinity_wait_s` behind a reply, up
    to `prefill_wait_s` behind a prefill. A waiting job holds up no other: the jobs queued behind it are
    started meanwhile, in order, on the free engines that suit them.

    A one-off job (`oneshot`: a JSON judge or guardrail, whose prompt no later request continues) is routed
    like any other: to the engine holding the longest prefix of its messages (a judge that appends its
    question to a session's history then evaluates only the question), else to a free engine holding no
    conversation, else to the least recently used one. An engine left holding only a one-off prompt (it
    shared no turn with what the engine held before) is `spare`: the next one-off job or new conversation
    takes it before evicting a session's history, so a stream of judges keeps to one context instead of
    walking through every session's cache.

    A job that returns False left its engine's cache as it was (it was cancelled before it started, or it was a
    prefill of what the cache held already: a new session's system prompt, at the start of another session's
    history): the engine is known to hold what it held before, not the job's messages. Sessions opened at a
    high rate therefore do not make the pool forget where a live conversation is.

    With `threads` (n, most), a reply or a judge runs on `most` threads when it starts as the only job at work
    and no other context worked in the last `quiet_s` (one conversation on the machine), and drops to `n` as
    soon as another job starts (to each its `n`: the contexts never over-subscribe the cores they were given).
    A prefill always runs on `n`: it evaluates words the user is still speaking, beside the recogniser, and
    nobody waits for it. One call on the machine then gets the speed of `most` threads for its replies; two
    calls at once, whose other models (recogniser, voice, floor) also want the cores, get `n` (docs/replies.md).
    """

    def __init__(
        self,
        engines: Sequence[LlamaEngine],
        affinity_wait_s: float = 0.25,
        prefill_wait_s: float = 1.5,
        threads: tuple[int, int] | None = None,
        quiet_s: float = 3.0,
    ) -> None:
        self._engines = list(engines)
        self.affinity_wait_s = affinity_wait_s
        self.prefill_wait_s = prefill_wait_s
        self.threads = threads  # (threads per context, threads for a job alone at work); None: left as built
        self.quiet_s = quiet_s
        self._busy: set[int] = set()  # engines running a job
        self._idle_since = [-math.inf for _ in self._engines]  # when each engine's last job ended
        self._history: list[Sequence[Message]] = [() for _ in self._engines]
        self._last_used = [0 for _ in self._engines]
        self._prefilling = [False for _ in self._engines]  # the engine's current job is a prefill
        self._spare: set[int] = set()  # engines whose cache holds only a one-off job's prompt
        self._served = 0
        self._waiting: set[int] = set()
        self._jobs: deque[_Queued] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"llm-engine-{i}", daemon=True)
            for i in range(len(self._engines))
        ]
        for t in self._threads:
            t.start()

    def submit(
        self,
        messages: Sequence[Message],
        job: Job,
        priority: int = PRIORITY_DEFAULT,
        oneshot: bool = False,
        prefill: bool = False,
    ) -> None:
        """Queue `job(engine)` behind the jobs of its priority or a higher one; it runs on a worker thread and
        must handle its own errors. `oneshot`: no later request continues these messages (a JSON judge);
        `prefill`: the job only evaluates them (`MAX_TOKENS` 0), so a job waiting for its engine waits longer."""
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine pool is closed")
            at = len(self._jobs)
            while at > 0 and self._jobs[at - 1].priority > priority:
                at -= 1
            self._jobs.insert(at, _Queued(tuple(messages), job, time.monotonic(), priority, oneshot, prefill))
            self._cv.notify_all()

    def close(self) -> None:
        """Stop the workers after their current job; jobs still queued are not run."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    def _patience(self, q: _Queued, free_best: int, claimed: Mapping[int, _Queued], now: float) -> float:
        """Seconds to keep job `q` waiting for a busy engine (or one an earlier job in the queue is about to take)
        that holds more of its conversation than the best free engine; 0 = run now. Up to `affinity_wait_s`, or
        `prefill_wait_s` when either job is a prefill of more than a system prompt: the prefill's work is the
        reply's, or the prefill is only worth running where its conversation already is."""
        busy = [(self._history[k], self._prefilling[k]) for k in range(len(self._engines)) if k not in self._waiting]
        busy += [(c.messages, c.prefill) for c in claimed.values()]
        if not busy:
            return 0.0
        holds, prefilling = max(busy, key=lambda b: shared_turns(b[0], q.messages))
        held = shared_turns(holds, q.messages)
        if held <= shared_turns(self._history[free_best], q.messages):
            return 0.0
        limit = self.prefill_wait_s if held >= 2 and (prefilling or q.prefill) else self.affinity_wait_s
        return max(0.0, q.queued_at + limit - now)

    def _take(self, i: int) -> tuple[_Queued, tuple[Sequence[Message], bool]] | None:
        """The next job for engine `i`: jobs are assigned in queue order to the free engines that suit them; a job
        waiting for a busy engine is passed over. Returns it with what engine `i` held before (to restore if
        the job evaluates nothing)."""
        with self._cv:
            self._waiting.add(i)
            try:
                while not self._closed:
                    timeout: float | None = None
                    claimed: dict[int, _Queued] = {}  # free engines that earlier jobs in the queue will take
                    now = time.monotonic()
                    for pos, q in enumerate(self._jobs):
                        free = [(k, self._history[k], self._last_used[k]) for k in sorted(self._waiting - set(claimed))]
                        if not free:
                            break
                        best = best_engine(free, q.messages, self._spare)
                        wait = self._patience(q, best, claimed, now)
                        if wait:
                            timeout = wait if timeout is None else min(timeout, wait)
                            continue
                        if best != i:
                            claimed[best] = q
                            continue
                        del self._jobs[pos]
                        before = (self._history[i], i in self._spare)
                        self._served += 1
                        self._last_used[i] = self._served
                        self._prefilling[i] = q.prefill
                        if q.oneshot and not shared_turns(self._history[i], q.messages):
                            self._spare.add(i)  # it evicted nothing worth keeping, or has now
                        elif not q.oneshot:
                            self._spare.discard(i)
                        self._history[i] = q.messages  # what this context's KV cache will hold
                        self._busy.add(i)
                        self._share_threads(i)
                        if claimed or self._jobs:
                            self._cv.notify_all()  # jobs for the other free engines: let them look
                        return q, before
                    if claimed:
                        self._cv.notify_all()  # a job belongs to another free engine: wake it
                    self._cv.wait(timeout)
                return None
            finally:
                self._waiting.discard(i)

    def _share_threads(self, starting: int) -> None:
        """(Under the lock, as a job starts on engine `starting`.) Give the engines at work their threads: `n`
        each, or `most` to a reply starting alone on a quiet pool. Nothing changes when a job ends: a job left
        alone keeps what it has (the other job's conversation is live)."""
        if self.threads is None:
            return
        n, most = self.threads
        if len(self._busy) != 1:
            for k in self._busy:
                self._engines[k].set_threads(n)
        else:
            now = time.monotonic()
            quiet = all(now - t >= self.quiet_s for k, t in enumerate(self._idle_since) if k != starting)
            self._engines[starting].set_threads(most if quiet and not self._prefilling[starting] else n)

    def _work(self, i: int) -> None:
        while (taken := self._take(i)) is not None:
            q, (held, spare) = taken
            evaluated: bool | None = None
            try:
                evaluated = q.job(self._engines[i])
            except Exception:  # a job reports its own errors; the worker must outlive any of them
                logging.getLogger("duet.llm").exception("llm job failed on engine %d", i)
            with self._cv:
                self._busy.discard(i)
                self._idle_since[i] = time.monotonic()
                if evaluated is False:  # cancelled before it began, or a prefill of what it held: it holds that
                    self._history[i] = held
                    if spare:
                        self._spare.add(i)


# --- several models in one Triton model, chosen by name ---

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_KEY = "model."  # config parameter `model.<name>` describes one served model
SPEC_FIELDS = ("file", "engines", "n_threads", "max_threads", "n_ctx", "lookup")


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its GGUF (in the model's version folder) and its pool of llama.cpp contexts."""

    name: str
    file: str
    engines: int = 2  # contexts, each holding one conversation's KV cache
    n_threads: int = 1  # threads per context
    n_ctx: int = 2048
    # threads for a reply that is the pool's only job at work (`EnginePool`); 0: n_threads
    max_threads: int = 0
    lookup: int = 0  # draft tokens per decoding step from the conversation itself (`lookup_draft`); 0: none

    @property
    def threads(self) -> tuple[int, int] | None:
        """The pool's `threads`: None when a context always runs on n_threads."""
        return (self.n_threads, self.max_threads) if self.max_threads > self.n_threads else None


def parse_model_spec(name: str, text: str) -> ModelSpec:
    """`file=X.gguf engines=2 n_threads=1 max_threads=2 n_ctx=2048 lookup=3` (only `file` is required)."""
    if not MODEL_NAME.match(name):
        raise ValueError(f"llm model name {name!r} is invalid (letters, digits, '.', '_' and '-'; at most 64)")
    fields: dict[str, str] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not eq or key not in SPEC_FIELDS or key in fields or not value:
            keys = ", ".join(SPEC_FIELDS)
            raise ValueError(f"llm model {name!r}: bad item {item!r} (expected key=value, keys {keys})")
        fields[key] = value
    if "file" not in fields:
        raise ValueError(f"llm model {name!r}: no file=... given")
    if "/" in fields["file"] or not fields["file"].endswith(".gguf"):
        raise ValueError(f"llm model {name!r}: file must be a .gguf in the model's folder, got {fields['file']!r}")
    try:
        spec = ModelSpec(name, fields["file"], **{k: int(v) for k, v in fields.items() if k != "file"})
    except ValueError as exc:
        raise ValueError(f"llm model {name!r}: {exc}") from exc
    if not (1 <= spec.engines <= 8 and 1 <= spec.n_threads <= 64 and 256 <= spec.n_ctx <= 32768):
        raise ValueError(f"llm model {name!r}: need engines 1..8, n_threads 1..64, n_ctx 256..32768")
    if spec.max_threads and not spec.n_threads <= spec.max_threads <= 64:
        raise ValueError(f"llm model {name!r}: max_threads must be 0 (off) or n_threads..64")
    if not 0 <= spec.lookup <= 16:
        raise ValueError(f"llm model {name!r}: lookup must be 0 (off) to 16 draft tokens")
    return spec


def parse_model_specs(params: Mapping[str, str]) -> tuple[tuple[ModelSpec, ...], str]:
    """The served models and the default one, from the `llm` config's parameters: one `model.<name>` per model
    (see `parse_model_spec`) and `default_model` (may be left out when one model is served)."""
    specs = tuple(
        parse_model_spec(key.removeprefix(MODEL_KEY), value)
        for key, value in sorted(params.items())
        if key.startswith(MODEL_KEY)
    )
    if not specs:
        raise ValueError(f"the llm config lists no model (a parameter {MODEL_KEY}<name> per model)")
    names = [s.name for s in specs]
    default = params.get("default_model", names[0] if len(names) == 1 else "")
    if default not in names:
        raise ValueError(f"default_model {default!r} is not one of the listed models: {', '.join(names)}")
    return specs, default


def parse_model_name(raw: str | bytes | None) -> str:
    """MODEL: the name of a served model; absent or empty = the default."""
    if raw is None:
        return ""
    try:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError as exc:
        raise LlmInputError(f"MODEL is not UTF-8: {exc}") from exc
    return name.strip()


def llama_gpu_offload() -> bool:
    """Whether this llama.cpp build can put layers on a GPU (built with CUDA; the default build is CPU only)."""
    from llama_cpp import llama_supports_gpu_offload

    return bool(llama_supports_gpu_offload())


def offload_layers(device: ModelDevice, layers: int, supported: bool) -> int:
    """`n_gpu_layers` for a model instance: 0 on the CPU; `layers` (-1: all) on a GPU when this llama.cpp build
    can offload (`supported`); otherwise 0, logged, since the model then stays on the CPU."""
    if not device.on_gpu:
        return 0
    if not supported:
        logging.getLogger("duet.llm").warning(
            "%s: device gpu, but this llama.cpp build has no GPU offload: the LLM stays on the CPU "
            "(build llama-cpp-python with CMAKE_ARGS=-DGGML_CUDA=on)",
            device.model or "llm",
        )
        return 0
    return layers


class ModelPools:
    """One `EnginePool` per served model; a request goes to the pool of the model it names ("" = the default).
    Each pool keeps its own prefix routing: a session that changes model starts a fresh cache there."""

    def __init__(self, pools: Mapping[str, EnginePool], default: str) -> None:
        if default not in pools:
            raise ValueError(f"default model {default!r} is not served")
        self._pools = dict(pools)
        self.default = default

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._pools)

    @classmethod
    def load(
        cls,
        specs: Sequence[ModelSpec],
        default: str,
        folder: Path,
        engine: Callable[[Path, ModelSpec], LlamaEngine] | None = None,
        *,
        n_gpu_layers: int = 0,
        main_gpu: int = 0,
    ) -> ModelPools:
        """Load the listed models (only those: a 1.5B model's pool costs ~2 GB), each GGUF from `folder`, with
        `n_gpu_layers` layers on GPU `main_gpu` (0: all on the CPU; see `offload_layers`)."""
        make = engine or (
            lambda path, spec: LlamaEngine(
                path,
                n_ctx=spec.n_ctx,
                n_threads=spec.n_threads,
                n_gpu_layers=n_gpu_layers,
                main_gpu=main_gpu,
                lookup=spec.lookup,
            )
        )
        missing = [s for s in specs if not (folder / s.file).is_file()]
        if missing:
            names = ", ".join(f"{s.name} ({s.file})" for s in missing)
            raise FileNotFoundError(
                f"llm: the GGUF of {names} is not in the model's folder ({folder.name}/): setup extracts the "
                "default model; docs/replies.md says how to fetch another"
            )
        pools: dict[str, EnginePool] = {}
        try:
            for spec in specs:
                engines = [make(folder / spec.file, spec) for _ in range(spec.engines)]
                pools[spec.name] = EnginePool(engines, threads=spec.threads)
        except BaseException:
            for pool in pools.values():
                pool.close()
            raise
        return cls(pools, default)

    def resolve(self, name: str) -> str:
        """The served model a request's MODEL means; an unknown name is `UnknownModel`."""
        if not name:
            return self.default
        if name not in self._pools:
            raise UnknownModel(f"unknown llm model {name!r}; this server serves {', '.join(self._pools)}")
        return name

    def submit(
        self,
        name: str,
        messages: Sequence[Message],
        job: Job,
        priority: int = PRIORITY_DEFAULT,
        oneshot: bool = False,
        prefill: bool = False,
    ) -> None:
        """Queue `job(engine)` on the pool of the model `name` resolves to (see `EnginePool.submit`)."""
        self._pools[self.resolve(name)].submit(messages, job, priority, oneshot, prefill)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
