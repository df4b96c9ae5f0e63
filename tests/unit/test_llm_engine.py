"""The LLM engine without Triton: input parsing, stop strings across tokens, and the real GGUF in-process."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from orchestrator.config import REPO_ROOT
from orchestrator.errors import DuetError
from orchestrator.inference.llm import (
    PRIORITY_DEFAULT,
    PRIORITY_HIGH,
    EnginePool,
    GenerationStats,
    LlamaEngine,
    LlmInputError,
    Message,
    StopMatcher,
    best_engine,
    generate_text,
    lookup_draft,
    parse_messages,
    parse_priority,
    parse_stop,
    shared_turns,
    words_held,
)

GGUF = REPO_ROOT / "model_repository" / "llm" / "1" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT = [Message("system", "You are a helpful assistant."), Message("user", "Name three colours.")]


def test_parse_messages_accepts_a_chat() -> None:
    raw = json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert parse_messages(raw) == [Message("system", "Be brief."), Message("user", "Hi")]
    assert parse_messages(raw.encode()) == parse_messages(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'[{"role": "user"', "not valid JSON"),
        (b'{"role": "user", "content": "hi"}', "non-empty JSON list"),
        (b"[]", "non-empty JSON list"),
        (b'[{"role": "user"}]', 'string "role" and "content"'),
        (b'[{"role": "user", "content": 3}]', 'string "role" and "content"'),
        (b'[{"role": "wizard", "content": "hi"}]', "MESSAGES[0].role is 'wizard'"),
        (b'[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]', "assistant turn"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_parse_messages_names_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(LlmInputError, match=re.escape(message)):
        parse_messages(raw)


def test_parse_stop() -> None:
    assert parse_stop(b"") == ()
    assert parse_stop(b"[]") == ()
    assert parse_stop('["\\n", "User:"]') == ("\n", "User:")
    for bad in (b"[", b'"x"', b'[""]', b"[1]", json.dumps(["x"] * 9).encode(), json.dumps(["x" * 65]).encode()):
        with pytest.raises(LlmInputError, match="STOP"):
            parse_stop(bad)


def feed_all(matcher: StopMatcher, pieces: list[str]) -> str:
    return "".join(matcher.feed(p) for p in pieces) + matcher.flush()


def test_stop_string_split_across_pieces_is_never_emitted() -> None:
    m = StopMatcher(["User:"])
    assert m.feed("Hello. Us") == "Hello. "  # "Us" might begin "User:": held back
    assert m.feed("er") == ""
    assert m.feed(": more") == ""
    assert m.stopped
    assert m.feed("anything") == "" and m.flush() == ""


def test_a_held_tail_that_is_not_a_stop_string_is_released() -> None:
    m = StopMatcher(["User:"])
    assert m.feed("Use") == ""
    assert m.feed("ful") == "Useful"
    assert m.feed(" U") == " "
    assert m.flush() == "U"  # generation ended: the tail was ordinary text
    assert not m.stopped


def test_earliest_stop_string_wins_and_no_stops_passes_through() -> None:
    assert feed_all(StopMatcher(["c", "ab"]), ["xa", "bc"]) == "x"
    assert feed_all(StopMatcher([]), ["a", "b", ""]) == "ab"
    assert feed_all(StopMatcher(["\n"]), ["one line\nanother"]) == "one line"


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    if not GGUF.is_file():
        pytest.fail(f"{GGUF} is missing: run `make setup` (scripts/bootstrap.sh extracts it)")
    yield LlamaEngine(GGUF, n_ctx=1024, n_threads=1)


def test_prompt_uses_the_gguf_chat_template(engine: LlamaEngine) -> None:
    text = engine._llama.detokenize(engine.prompt_tokens(CHAT), special=True).decode()
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert text.endswith("<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n")


def test_max_tokens_and_cancellation_stop_generation(engine: LlamaEngine) -> None:
    story = [Message("user", "Write a long story about a dragon who bakes bread.")]
    stats = GenerationStats()
    text = generate_text(engine, story, max_tokens=4, temperature=0.0, stats=stats)
    assert text and stats.generated_tokens == 4 and stats.finish_reason == "length"

    polls = 0

    def cancelled_after_two() -> bool:
        nonlocal polls
        polls += 1
        return polls > 3  # one poll before the prompt, then one after each token

    stats = GenerationStats()
    steps = list(engine.stream(story, max_tokens=100, temperature=0.0, cancelled=cancelled_after_two, stats=stats))
    assert len(steps) == 3 and stats.generated_tokens == 3 and stats.finish_reason == "cancelled"


def test_stop_string_cuts_the_same_greedy_reply(engine: LlamaEngine) -> None:
    free = generate_text(engine, CHAT, max_tokens=24, temperature=0.0)
    assert len(free) > 10, free
    stop = free[3:8]  # spans a token boundary in any tokenisation of a 5-character piece of words
    stats = GenerationStats()
    cut = generate_text(engine, CHAT, max_tokens=24, temperature=0.0, stop=[stop], stats=stats)
    assert cut == free[: free.find(stop)] and stats.finish_reason == "stop"


def test_a_growing_conversation_reuses_the_cached_prefix(engine: LlamaEngine) -> None:
    first = GenerationStats()
    reply = generate_text(engine, CHAT, max_tokens=8, temperature=0.0, stats=first)
    longer = [*CHAT, Message("assistant", reply), Message("user", "And three animals?")]
    second = GenerationStats()
    generate_text(engine, longer, max_tokens=8, temperature=0.0, stats=second)
    assert first.prompt_tokens < second.prompt_tokens
    assert second.cached_tokens >= first.prompt_tokens - 1  # only the new turns were evaluated


def test_a_prefill_caches_the_conversation_so_far_and_generates_nothing(engine: LlamaEngine) -> None:
    history = [*CHAT, Message("assistant", "Red, green and blue.")]
    parse_messages(json.dumps([m.__dict__ for m in history]), prefill=True)  # may end with the replica's turn
    warm = GenerationStats()
    assert generate_text(engine, history, max_tokens=0, temperature=0.0, stats=warm) == ""
    assert warm.finish_reason == "prefill" and warm.prompt_tokens > 20
    assert warm.evaluated
    again = GenerationStats()
    engine.prefill(history, again)
    assert again.cached_tokens == again.prompt_tokens == warm.prompt_tokens  # nothing left to evaluate
    assert not again.evaluated  # and nothing changed
    held = engine._llama.n_tokens
    start = GenerationStats()
    engine.prefill(history[:1], start)  # a new session's system prompt: the start of this history
    assert not start.evaluated and start.cached_tokens == start.prompt_tokens < held
    assert engine._llama.n_tokens == held  # the rest of the history is still there
    nxt = GenerationStats()
    text = generate_text(
        engine, [*history, Message("user", "And three animals?")], max_tokens=6, temperature=0.0, stats=nxt
    )
    assert text and nxt.cached_tokens == warm.prompt_tokens  # the next turn found the whole history cached


def test_bad_limits_are_input_errors(engine: LlamaEngine) -> None:
    with pytest.raises(LlmInputError, match="MAX_TOKENS"):
        generate_text(engine, CHAT, max_tokens=-1, temperature=0.3)
    with pytest.raises(LlmInputError, match="TEMPERATURE"):
        generate_text(engine, CHAT, max_tokens=4, temperature=-1.0)
    with pytest.raises(LlmInputError, match="context holds"):
        generate_text(engine, [Message("user", "word " * 2000)], max_tokens=4, temperature=0.3)


# --- the OpenAI-compatible backend's stream parsing (orchestrator/models/openai_llm.py) ---


def test_sse_events_split_anywhere_are_reassembled() -> None:
    from orchestrator.models.openai_llm import SseParser

    stream = b': keep-alive\r\n\r\ndata: {"a": 1}\r\n\r\nevent: x\ndata: line one\ndata: line two\n\ndata: [DONE]\n\n'
    whole = SseParser().feed(stream)
    assert whole == ['{"a": 1}', "line one\nline two", "[DONE]"]
    parser = SseParser()
    assert [e for i in range(len(stream)) for e in parser.feed(stream[i : i + 1])] == whole  # byte by byte


def test_delta_text_and_endpoint_errors() -> None:
    from orchestrator.errors import ModelUnavailable
    from orchestrator.models.openai_llm import _endpoint_message, delta_text

    assert delta_text('{"choices": [{"delta": {"content": "Hi"}}]}') == "Hi"
    assert delta_text('{"choices": [{"delta": {"role": "assistant"}}]}') == ""
    assert delta_text('{"choices": [{"delta": {}, "finish_reason": "stop"}]}') == ""
    with pytest.raises(ModelUnavailable, match="overloaded"):
        delta_text('{"error": {"message": "overloaded"}}')
    with pytest.raises(ModelUnavailable, match="not JSON"):
        delta_text("{oops")
    assert _endpoint_message('{"error": {"message": "bad key", "type": "auth"}}') == "bad key"
    assert _endpoint_message("<html>502 Bad Gateway</html>") == "<html>502 Bad Gateway</html>"


def test_a_requests_model_overrides_the_configured_openai_model() -> None:
    from orchestrator.config import LlmSettings
    from orchestrator.models.openai_llm import OpenAIChat
    from orchestrator.models.ports import ChatMessage, LlmRequest

    settings = LlmSettings(backend="openai", openai_base_url="http://127.0.0.1:1/v1", openai_model="house-model")
    request = LlmRequest((ChatMessage("user", "hi"),))
    assert OpenAIChat(settings)._body(request)["model"] == "house-model"
    assert OpenAIChat(settings)._body(LlmRequest(request.messages, model="persona-model"))["model"] == "persona-model"
    unset = OpenAIChat(LlmSettings(backend="openai", openai_base_url="http://127.0.0.1:1/v1"))
    assert "model" not in unset._body(request)  # the endpoint's own default


async def test_a_prefill_is_never_sent_to_an_openai_compatible_endpoint() -> None:
    """The session's warm-ups (`max_tokens` 0) are for the local model's cache; an endpoint (a persona's own,
    on a server whose backend is local) would read them as a request for an empty reply, and bill it. Nothing
    listens on the endpoint's port: a request sent would fail."""
    from orchestrator.config import LlmSettings
    from orchestrator.models.openai_llm import OpenAIChat
    from orchestrator.models.ports import ChatMessage, LlmRequest

    chat = OpenAIChat(LlmSettings(backend="openai", openai_base_url="http://127.0.0.1:1/v1"))
    try:
        assert [p async for p in chat.generate(LlmRequest((ChatMessage("user", "hi"),), max_tokens=0))] == []
        with pytest.raises(DuetError):
            [p async for p in chat.generate(LlmRequest((ChatMessage("user", "hi"),), max_tokens=4))]
    finally:
        await chat.close()


# --- routing requests to the context that holds their conversation ---


def test_best_engine_prefers_the_cached_conversation_then_the_least_recently_used() -> None:
    a1 = [Message("system", "A"), Message("user", "hi")]
    a2 = [*a1, Message("assistant", "hello"), Message("user", "more")]
    b1 = [Message("system", "B"), Message("user", "yo")]
    assert shared_turns(a1, a2) == 2 and shared_turns(a1, b1) == 0
    assert best_engine([(0, (), 0), (1, a1, 5)], a2) == 1  # holds a2's history
    assert best_engine([(0, a1, 5), (1, (), 0)], b1) == 1  # new conversation: leave a1's cache alone
    assert best_engine([(0, (), 0), (1, (), 0)], b1) == 0


def test_best_engine_follows_the_users_words_and_the_reply_generated_last() -> None:
    system = Message("system", "A")
    older = [system, Message("user", "Hi there, how")]  # a prefill of the user's words so far
    other = [system, Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "bye")]
    words = [system, Message("user", "Hi there, how are you?")]
    assert words_held(older, words) == len("Hi there, how") and words_held(other, words) == 0
    # the words' own partial wins over an older context and over another conversation's longer history
    assert best_engine([(0, other, 9), (1, older, 1), (2, [system], 5)], words) == 1
    # after a reply, the history (ending with it) goes where it was generated: the context used last among
    # those holding the turn, though both hold the same messages
    history = [*words, Message("assistant", "Fine, thanks.")]
    assert best_engine([(0, words, 3), (1, words, 4)], history) == 1
    assert best_engine([(0, words, 4), (1, words, 3)], history) == 0
    # a new conversation sharing only the system prompt still takes the least recently used context
    assert best_engine([(0, other, 3), (1, history, 4)], [system, Message("user", "Yo")]) == 0


def test_pool_runs_a_sessions_next_turn_on_the_engine_holding_its_history(engine: LlamaEngine) -> None:
    second = LlamaEngine(GGUF, n_ctx=1024, n_threads=1)
    pool = EnginePool([engine, second])
    try:
        a1 = [Message("system", "You are Ada."), Message("user", "Hi, I like rivers.")]
        b1 = [Message("system", "You are Bo."), Message("user", "Hello, I like mountains.")]
        ran: list[tuple[int, GenerationStats]] = []

        def run(messages: list[Message]) -> str:
            done, out = threading.Event(), []

            def job(e: LlamaEngine) -> None:
                stats = GenerationStats()
                out.append(generate_text(e, messages, max_tokens=6, temperature=0.0, stats=stats))
                ran.append((id(e), stats))
                done.set()

            pool.submit(messages, job)
            assert done.wait(60)
            return out[0]

        a_reply = run(a1)
        run(b1)  # both engines free: the new conversation takes the one not holding a1
        run([*a1, Message("assistant", a_reply), Message("user", "Any advice for a walk?")])
        (a1_engine, _), (b1_engine, _), (a2_engine, a2_stats) = ran
        assert a1_engine != b1_engine and a2_engine == a1_engine
        assert a2_stats.cached_tokens > 10  # the system prompt and first exchange were not evaluated again
    finally:
        pool.close()


def test_pool_serves_jobs_in_parallel_and_survives_a_failing_job(engine: LlamaEngine) -> None:
    pool = EnginePool([engine, LlamaEngine(GGUF, n_ctx=1024, n_threads=1)])
    try:
        started = threading.Barrier(2, timeout=30)  # both jobs must be running at the same time
        done = threading.Semaphore(0)

        def job(e: LlamaEngine) -> None:
            started.wait()
            done.release()

        def failing(e: LlamaEngine) -> None:
            raise RuntimeError("boom")

        pool.submit(CHAT, failing)
        pool.submit(CHAT, job)
        pool.submit([Message("user", "other")], job)
        assert done.acquire(timeout=30) and done.acquire(timeout=30)
    finally:
        pool.close()


@pytest.mark.parametrize(("hold_s", "same_engine"), [(0.05, True), (0.6, False)])  # affinity_wait_s: 0.25
def test_next_turn_waits_briefly_for_the_busy_engine_holding_its_history(
    engine: LlamaEngine, hold_s: float, same_engine: bool
) -> None:
    a1 = [Message("system", "You are Ada."), Message("user", "Hi.")]
    a2 = [*a1, Message("assistant", "Hello!"), Message("user", "How are you?")]
    pool = EnginePool([engine, LlamaEngine(GGUF, n_ctx=1024, n_threads=1)], affinity_wait_s=0.25)
    release, ran, done = threading.Event(), [], threading.Semaphore(0)

    def first_turn(e: LlamaEngine) -> None:
        ran.append(e)
        release.wait(5)
        done.release()

    def next_turn(e: LlamaEngine) -> None:
        ran.append(e)
        done.release()

    try:
        pool.submit(a1, first_turn)
        while not ran:
            time.sleep(0.005)
        pool.submit(a2, next_turn)  # the engine holding a1 is still busy
        time.sleep(hold_s)
        release.set()
        assert done.acquire(timeout=5) and done.acquire(timeout=5)
        assert (ran[1] is ran[0]) == same_engine  # waited for it, or gave up and ran on the other one
    finally:
        pool.close()


A1 = (Message("system", "You are Ada."), Message("user", "Hi."))
A2 = (*A1, Message("assistant", "Hello!"), Message("user", "How are you?"))
B1 = (Message("system", "You are Bo."), Message("user", "Yo."))


class _Recorder:
    """Jobs for a pool of stand-in engines (the pool only hands them to its jobs): each records where it ran."""

    def __init__(self) -> None:
        self.ran: dict[str, Any] = {}
        self.done = threading.Semaphore(0)

    def job(self, name: str, hold: threading.Event | None = None, result: bool | None = None) -> Any:
        def run(engine: Any) -> bool | None:
            self.ran[name] = engine
            if hold is not None:
                hold.wait(5)
            self.done.release()
            return result

        return run

    def wait_for(self, name: str, timeout: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout
        while name not in self.ran and time.monotonic() < deadline:
            time.sleep(0.005)
        return name in self.ran


def test_a_job_waiting_for_its_busy_engine_holds_up_no_other_session() -> None:
    pool = EnginePool(cast(Any, ["e0", "e1"]), affinity_wait_s=1.0)
    rec, release = _Recorder(), threading.Event()
    try:
        pool.submit(A1, rec.job("a1", hold=release))
        assert rec.wait_for("a1")
        pool.submit(A2, rec.job("a2"))  # waits for the engine holding A1
        pool.submit(B1, rec.job("b1"))  # queued behind it: runs at once on the free engine
        assert rec.wait_for("b1", timeout=0.5) and "a2" not in rec.ran
        assert rec.ran["b1"] != rec.ran["a1"]
        release.set()
        assert rec.wait_for("a2") and rec.ran["a2"] == rec.ran["a1"]
    finally:
        release.set()
        pool.close()


@pytest.mark.parametrize(("prefill", "same_engine"), [(True, True), (False, False)])
def test_behind_a_prefill_of_its_conversation_a_job_waits_longer(prefill: bool, same_engine: bool) -> None:
    """The user's words being evaluated are the work the reply needs: it waits for them (`prefill_wait_s`), not
    only `affinity_wait_s` as behind a reply being generated."""
    pool = EnginePool(cast(Any, ["e0", "e1"]), affinity_wait_s=0.05, prefill_wait_s=5.0)
    rec, release = _Recorder(), threading.Event()
    try:
        pool.submit(A1, rec.job("words", hold=release), prefill=prefill)
        assert rec.wait_for("words")
        pool.submit(A2, rec.job("reply"))
        time.sleep(0.4)
        release.set()
        assert rec.wait_for("reply") and (rec.ran["reply"] == rec.ran["words"]) == same_engine
    finally:
        release.set()
        pool.close()


def test_a_reply_sent_with_the_words_prefill_follows_it_though_another_engine_is_free() -> None:
    """The session sends the pause's words (a prefill) and the reply together: both go where the conversation is,
    the reply behind the prefill, even when both arrive before either engine looks at the queue."""
    pool = EnginePool(cast(Any, ["e0", "e1"]), affinity_wait_s=0.05, prefill_wait_s=5.0)
    rec, release = _Recorder(), threading.Event()
    try:
        pool.submit(A1, rec.job("a1"))
        assert rec.done.acquire(timeout=2)
        pool.submit(B1, rec.job("b1"))
        assert rec.done.acquire(timeout=2) and rec.ran["b1"] != rec.ran["a1"]
        words = (*A2[:-1], Message("user", "How are"))
        pool.submit(words, rec.job("words", hold=release), prefill=True)
        pool.submit(A2, rec.job("reply"))
        time.sleep(0.3)
        assert "reply" not in rec.ran and rec.ran["words"] == rec.ran["a1"]
        release.set()
        assert rec.wait_for("reply") and rec.ran["reply"] == rec.ran["a1"]
    finally:
        release.set()
        pool.close()


def test_a_job_cancelled_before_it_began_leaves_its_engine_holding_what_it_held() -> None:
    pool = EnginePool(cast(Any, ["e0", "e1"]))
    rec = _Recorder()
    try:
        pool.submit(A1, rec.job("a1"))
        assert rec.done.acquire(timeout=2)
        pool.submit(B1, rec.job("b1"))  # the other engine
        assert rec.done.acquire(timeout=2) and rec.ran["b1"] != rec.ran["a1"]
        c1 = (Message("system", "You are Cy."), Message("user", "Hey."))
        pool.submit(c1, rec.job("c1", result=False))  # least recently used: A1's engine; evaluates nothing
        assert rec.done.acquire(timeout=2) and rec.ran["c1"] == rec.ran["a1"]
        pool.submit(A2, rec.job("a2"))  # still held there
        assert rec.done.acquire(timeout=2) and rec.ran["a2"] == rec.ran["a1"]
    finally:
        pool.close()


def test_a_priority_job_overtakes_the_queue_but_never_a_running_one(engine: LlamaEngine) -> None:
    """A `priority` tenant's reply (PRIORITY 1) starts before default ones queued earlier; within a level,
    arrival order holds; the job already running is not disturbed."""
    pool = EnginePool([engine])
    release, order, done = threading.Event(), [], threading.Semaphore(0)

    def job(name: str, hold: bool = False) -> Callable[[LlamaEngine], None]:
        def run(_: LlamaEngine) -> None:
            order.append(name)
            if hold:
                release.wait(5)
            done.release()

        return run

    try:
        pool.submit([Message("user", "a")], job("running", hold=True))
        while not order:
            time.sleep(0.005)
        pool.submit([Message("user", "b")], job("default-1"))
        pool.submit([Message("user", "c")], job("default-2"), PRIORITY_DEFAULT)
        pool.submit([Message("user", "d")], job("priority-1"), PRIORITY_HIGH)
        pool.submit([Message("user", "e")], job("priority-2"), PRIORITY_HIGH)
        release.set()
        for _ in range(5):
            assert done.acquire(timeout=5)
        assert order == ["running", "priority-1", "priority-2", "default-1", "default-2"]
    finally:
        pool.close()


def test_priority_input_is_checked() -> None:
    assert parse_priority(None) == parse_priority(0) == PRIORITY_DEFAULT
    assert parse_priority(1) == PRIORITY_HIGH
    with pytest.raises(LlmInputError, match="PRIORITY"):
        parse_priority(7)


class _Threads:
    """A stand-in engine that only keeps the thread count the pool gives it."""

    def __init__(self, name: str) -> None:
        self.name, self.threads = name, 1

    def set_threads(self, n: int) -> None:
        self.threads = n


def test_a_reply_alone_on_a_quiet_pool_gets_the_spare_threads_and_gives_them_back_when_another_job_starts() -> None:
    e0, e1 = _Threads("e0"), _Threads("e1")
    pool = EnginePool(cast(Any, [e0, e1]), threads=(1, 2), quiet_s=0.3)
    rec, first, second = _Recorder(), threading.Event(), threading.Event()
    try:
        pool.submit(A1, rec.job("a", hold=first))
        assert rec.wait_for("a")
        a = rec.ran["a"]
        assert a.threads == 2  # alone: both threads
        pool.submit(B1, rec.job("b", hold=second))
        assert rec.wait_for("b")
        b = rec.ran["b"]
        assert b is not a and (a.threads, b.threads) == (1, 1)  # two at work: one each
        first.set()
        assert rec.done.acquire(timeout=2)
        assert b.threads == 1  # the other conversation is live: no more than its share
        second.set()
        assert rec.done.acquire(timeout=2)
        pool.submit(B1, rec.job("b again"))  # right after the other context worked: still its share
        assert rec.done.acquire(timeout=2) and rec.ran["b again"].threads == 1
        time.sleep(0.4)  # the other conversation has gone quiet
        pool.submit(A2, rec.job("a again"))
        assert rec.done.acquire(timeout=2) and rec.ran["a again"].threads == 2
    finally:
        first.set()
        second.set()
        pool.close()


def test_a_prefill_never_takes_the_spare_threads() -> None:
    """A prefill evaluates words the user is still speaking, beside the recogniser, and nobody waits for it."""
    pool = EnginePool(cast(Any, [_Threads("e0"), _Threads("e1")]), threads=(1, 2))
    rec, hold = _Recorder(), threading.Event()
    try:
        pool.submit(A1, rec.job("words", hold=hold), prefill=True)
        assert rec.wait_for("words") and rec.ran["words"].threads == 1
    finally:
        hold.set()
        pool.close()


def test_without_spare_threads_the_pool_leaves_the_engines_as_built() -> None:
    engines = [_Threads("e0")]
    pool = EnginePool(cast(Any, engines))
    rec = _Recorder()
    try:
        engines[0].threads = 3
        pool.submit(A1, rec.job("a"))
        assert rec.done.acquire(timeout=2) and engines[0].threads == 3
    finally:
        pool.close()


def test_set_threads_changes_a_real_contexts_speed(engine: LlamaEngine) -> None:
    """llama.cpp takes the new count at the next evaluation (what `EnginePool` relies on)."""
    import llama_cpp

    engine.set_threads(2)
    try:
        ctx = engine._llama._ctx.ctx
        assert (llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)) == (2, 2)
    finally:
        engine.set_threads(1)
    assert llama_cpp.llama_n_threads(engine._llama._ctx.ctx) == 1


# --- drafts from the conversation (prompt lookup) ---


def test_a_draft_is_what_followed_the_latest_earlier_occurrence_of_the_last_tokens() -> None:
    assert lookup_draft([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3], 2) == [4, 5]  # the longest match wins
    assert lookup_draft([9, 2, 3, 7, 8, 4, 2, 3, 6, 1, 2, 3], 2) == [6, 1]  # the latest of two "2 3"
    assert lookup_draft([1, 2, 3, 4, 5, 6, 1, 2, 3], 3) == [4, 5, 6]  # the three-token match
    assert lookup_draft([1, 2, 3, 4, 5, 6, 1, 2, 3], 10) == [4, 5, 6, 1, 2, 3]  # at most what follows
    assert lookup_draft([5, 6, 7, 9, 6, 7], 2) == [9, 6]  # two tokens
    assert lookup_draft([5, 6, 7, 9, 8, 7], 2) == []  # one token is too weak a cue
    assert lookup_draft([1, 2, 3, 1, 2, 3], 0) == [] and lookup_draft([], 3) == [] and lookup_draft([1, 2], 3) == []


ECHO = [
    Message("system", "You repeat what the user says, word for word."),
    Message("user", "Say this back to me: the blue train leaves platform nine at half past seven every morning."),
]


def assert_greedy(plain: LlamaEngine, messages: list[Message], reply: list[int], slack: float = 0.1) -> None:
    """Each token of `reply` is the greedy choice after the ones before it, evaluated one at a time by `plain`
    with the engine's repeat penalty (1.1 over the reply so far), within `slack` of the best logit. A batch
    and one-token evaluation round differently; a near tie (" at" 28.28 against " every" 28.24 after
    "...platform nine") may go either way, so equality of two greedy texts would test the rounding."""
    import llama_cpp
    import numpy as np

    llama = plain._llama
    llama.n_tokens = 0
    llama._ctx.kv_cache_seq_rm(-1, 0, -1)
    llama.eval(plain.prompt_tokens(messages))
    for i, token in enumerate(reply):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama._ctx.ctx, -1), shape=(llama.n_vocab(),))
        logits = logits.copy()
        for seen in set(reply[max(0, i - 64) : i]):
            logits[seen] = logits[seen] / 1.1 if logits[seen] > 0 else logits[seen] * 1.1
        assert logits[token] >= logits.max() - slack, (i, plain._piece(token), plain._piece(int(logits.argmax())))
        llama.eval([token])


@pytest.fixture(scope="module")
def drafting() -> Iterator[LlamaEngine]:
    yield LlamaEngine(GGUF, n_ctx=1024, n_threads=1, lookup=4)


def test_drafted_replies_are_greedy_and_the_cache_holds_what_was_kept(
    engine: LlamaEngine, drafting: LlamaEngine
) -> None:
    stats = GenerationStats()
    steps = list(drafting.stream(ECHO, max_tokens=40, temperature=0.0, stats=stats))
    reply = [s.token for s in steps if s.token >= 0]
    assert "platform nine" in "".join(s.text for s in steps)
    assert stats.kept_tokens >= 3 and stats.drafted_tokens >= stats.kept_tokens
    # The context's record is the prompt and the reply's tokens, up to the last one (sampled, not evaluated):
    # every draft the samples did not keep is gone from it.
    llama = drafting._llama
    evaluated = [*drafting.prompt_tokens(ECHO), *reply]
    assert list(llama.input_ids[: llama.n_tokens]) == evaluated[: llama.n_tokens]
    assert llama.n_tokens >= len(evaluated) - 1
    assert_greedy(engine, ECHO, reply)
    # The next turn continues from that cache, and is greedy too.
    follow = [*ECHO, Message("assistant", "".join(s.text for s in steps)), Message("user", "Now say it again.")]
    again = GenerationStats()
    steps = list(drafting.stream(follow, max_tokens=40, temperature=0.0, stats=again))
    assert again.cached_tokens >= len(drafting.prompt_tokens(ECHO))
    assert_greedy(engine, follow, [s.token for s in steps if s.token >= 0])


def test_drafts_the_samples_reject_change_nothing(
    engine: LlamaEngine, drafting: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    bogus = drafting._llama.tokenize(b" zebra zebra zebra zebra", add_bos=False)
    monkeypatch.setattr("orchestrator.inference.llm.lookup_draft", lambda history, limit: bogus[:limit])
    stats = GenerationStats()
    steps = list(drafting.stream(ECHO, max_tokens=30, temperature=0.0, stats=stats))
    assert stats.drafted_tokens > 20 and stats.kept_tokens == 0
    llama = drafting._llama
    assert all(t not in bogus for t in llama.input_ids[len(drafting.prompt_tokens(ECHO)) : llama.n_tokens])
    assert_greedy(engine, ECHO, [s.token for s in steps if s.token >= 0])


def test_drafting_keeps_max_tokens_and_cancellation(drafting: LlamaEngine) -> None:
    stats = GenerationStats()
    steps = list(drafting.stream(ECHO, max_tokens=7, temperature=0.0, stats=stats))
    assert len(steps) == 7 and stats.generated_tokens == 7 and stats.finish_reason == "length"
    polls = 0

    def cancelled_after_two() -> bool:
        nonlocal polls
        polls += 1
        return polls > 3

    stats = GenerationStats()
    steps = list(drafting.stream(ECHO, max_tokens=40, temperature=0.0, cancelled=cancelled_after_two, stats=stats))
    assert len(steps) == 3 and stats.finish_reason == "cancelled"
