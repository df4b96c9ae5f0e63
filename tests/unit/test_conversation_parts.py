"""Pure parts of the conversation loop: personas, history/prompt, playback on the timeline, client outputs."""

from __future__ import annotations

import asyncio
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from duet.talk import Bleed, Speaker
from orchestrator.api.options import parse_options
from orchestrator.config import Settings
from orchestrator.errors import BadOption
from orchestrator.events import FloorEvent
from orchestrator.models.ports import ChatMessage, ConversationModels, SpeechChunk, Transcript
from orchestrator.session.conversation import ConversationSession
from orchestrator.session.dialogue import CONTEXT_HEADING, Dialogue, note_line, speaking_rules
from orchestrator.session.persona import Persona, load_persona
from orchestrator.session.playback import Playback, ReplyAudio
from tests.recording import RecordingOutlet

PERSONAS = Path(__file__).resolve().parents[2] / "personas"


def chunk(n: int, text: str, value: int = 1000) -> SpeechChunk:
    return SpeechChunk(pcm=np.full(n, value, dtype=np.int16), text=text)


# ---- personas -----------------------------------------------------------------------------------------


def test_default_persona_loads() -> None:
    p = load_persona(PERSONAS, "default")
    assert p.system_prompt and p.max_tokens > 0 and p.speculation


@pytest.mark.parametrize("name", ["nobody", "../default", "a/b", ""])
def test_unknown_or_unsafe_persona_is_a_typed_error(name: str) -> None:
    with pytest.raises(BadOption):
        load_persona(PERSONAS, name)


def test_malformed_persona_files(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "extra.yaml").write_text("system_prompt: hi\nvoice_speed: 2\n")
    (tmp_path / "empty.yaml").write_text("name: x\n")
    (tmp_path / "broken.yaml").write_text("system_prompt: [unclosed\n")
    (tmp_path / "tokens.yaml").write_text("system_prompt: hi\nmax_tokens: 0\n")
    for name in ("list", "extra", "empty", "broken", "tokens"):
        with pytest.raises(BadOption):
            load_persona(tmp_path, name)


# ---- dialogue -----------------------------------------------------------------------------------------


def persona() -> Persona:
    return Persona(id="t", name="T", system_prompt="Be brief.", max_tokens=32)


def test_speculative_request_does_not_touch_history() -> None:
    d = Dialogue(persona())
    req = d.request("hello there")
    assert [m.role for m in req.messages] == ["system", "user"]
    assert req.messages[-1].content == "hello there" and req.max_tokens == 32
    assert d.turns == []


def test_committed_turns_enter_the_prompt_once_and_alternate() -> None:
    d = Dialogue(persona())
    d.commit_user("my bill is wrong", 1.0)
    d.commit_replica("Sorry to hear that. Which", 3.0, interrupted=True)
    d.commit_user("the March one", 4.0)
    req = d.request("the March one")
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "user"]
    assert req.messages[2].content == "Sorry to hear that. Which" and d.turns[1].interrupted
    d.commit_user("and April", 6.0)  # no reply in between: merged for the chat template
    req = d.request("and April")
    assert req.messages[-1].content == "the March one and April"
    assert d.said() == ["Sorry to hear that. Which"]


def test_perception_note_goes_just_before_the_user_turn_and_keeps_the_prefix() -> None:
    d = Dialogue(persona())
    d.commit_user("my bill is wrong", 1.0)
    d.commit_replica("Sorry to hear that.", 3.0, interrupted=False)
    plain = d.request("it was charged twice")
    d.perception_note = "[perception] The user sounds tense and looks away."
    noted = d.request("it was charged twice")
    assert [m.role for m in noted.messages] == ["system", "user", "assistant", "system", "user"]
    assert noted.messages[3].content == "NOTE: They sound tense and look away."  # guidance, not a line to say
    assert noted.messages[:3] == plain.messages[:3]  # the history prefix (and the LLM's cache of it) is unchanged
    assert noted.messages[-1] == plain.messages[-1]


def test_context_follows_the_system_prompt_and_the_rest_of_the_prompt_is_unchanged() -> None:
    d = Dialogue(persona())
    d.commit_user("my bill is wrong", 1.0)
    d.commit_replica("Sorry to hear that.", 3.0, interrupted=False)
    plain = d.request("it was charged twice")
    d.context = "The caller is Alex, account 4471."
    req = d.request("it was charged twice")
    assert req.messages[0] == ChatMessage(
        "system", f"Be brief.\n\n{speaking_rules(2)}\n\n{CONTEXT_HEADING}\nThe caller is Alex, account 4471."
    )
    assert req.messages[1:] == plain.messages[1:]


def test_the_system_prompt_is_the_persona_then_the_rules_and_the_request_names_the_model() -> None:
    d = Dialogue(Persona(id="t", name="T", system_prompt="Be brief.", llm_model="qwen2.5-0.5b"))
    req = d.request("hi")
    assert req.messages[0].content == f"Be brief.\n\n{speaking_rules(2)}" and req.model == "qwen2.5-0.5b"
    assert "you" in speaking_rules(2) and "NOTE" in speaking_rules(2) and "two short" in speaking_rules(2)
    assert "two short" not in speaking_rules(12)  # a storyteller may go on


@pytest.mark.parametrize(
    ("note", "line"),
    [
        ("[perception] The user sounds hesitant.", "NOTE: They sound hesitant."),
        ("[perception] The user's voice dropped; the user is smiling.", "NOTE: Their voice dropped; they are smiling."),
        ("The caller has left the frame.", "NOTE: They have left the frame."),
        ("Nobody is in view.", "NOTE: Nobody is in view."),
    ],
)
def test_notes_are_marked_and_about_them_not_the_user(note: str, line: str) -> None:
    assert note_line(note) == line


def test_the_prompt_only_grows_at_its_end_so_the_cached_prefix_holds() -> None:
    d = Dialogue(persona(), history_turns=40)
    d.perception_note = "[perception] The user sounds tense."
    first = d.request("my bill is wrong").messages
    assert [m.role for m in first] == ["system", "system", "user"]
    d.commit_user("my bill is wrong", 1.0)
    d.commit_replica("Sorry to hear that.", 2.0, interrupted=False)
    same_note = d.request("it was charged twice").messages
    assert same_note[: len(first)] == first  # the earlier turn keeps its note where it was
    assert [m.role for m in same_note[len(first) :]] == ["assistant", "user"]  # an unchanged note is not repeated
    d.perception_note = "[perception] The user smiles."
    d.request("it was charged twice")  # its reply, asked once the note changed
    d.commit_user("it was charged twice", 3.0)
    assert d.request("it was charged twice").messages[-2].content == "NOTE: They smile."
    d.commit_replica("I see the two charges.", 4.0, interrupted=False)
    d.perception_note = ""
    later = d.request("thanks").messages
    assert list(later[:-2]) == [*same_note[:-1], ChatMessage("system", "NOTE: They smile."),
                          ChatMessage("user", "it was charged twice")]  # fmt: skip
    assert later[-2] == ChatMessage("assistant", "I see the two charges.") and later[-1].role == "user"
    assert d.prompt_notes("thanks") == ["NOTE: They sound tense.", "NOTE: They smile."]


def test_the_history_window_moves_in_steps_and_starts_with_the_user() -> None:
    d = Dialogue(persona(), history_turns=8)
    prompts = []
    for i in range(12):
        d.commit_user(f"u{i}", i)
        d.commit_replica(f"r{i}", i + 0.5, interrupted=False)
        prompts.append(d.request("next").messages)
    starts = [p[1].content for p in prompts]
    assert starts == ["u0", "u0", "u0", "u2", "u2", "u4", "u4", "u6", "u6", "u8", "u8", "u10"]
    assert all(len(p) - 1 <= 8 for p in prompts)  # the history and the user's turn: at most history_turns
    # between two moves the earlier prompt, but for its last user turn, is a prefix of the next one
    assert prompts[4][: len(prompts[3]) - 1] == prompts[3][:-1]


def test_the_warm_request_is_the_next_prompt_but_its_last_user_turn() -> None:
    d = Dialogue(persona(), history_turns=6)
    first = d.warm_request()  # nothing said yet: the system prompt alone, what every prompt starts with
    assert first is not None and [m.role for m in first.messages] == ["system"]
    assert d.request("hello").messages[0] == first.messages[0]
    d.perception_note = "[perception] The user sounds tense."
    for i in range(9):
        d.commit_user(f"u{i}", i)
        if i % 3 == 2:
            d.perception_note = f"[perception] Note {i}."
        assert d.warm_request() is None  # the replica has not answered yet
        d.commit_replica(f"r{i}", i + 0.5, interrupted=False)
        warm = d.warm_request(request_id="w")
        assert warm is not None and warm.max_tokens == 0 and warm.messages[-1] == ChatMessage("assistant", f"r{i}")
        speculative = d.request(f"u{i + 1}").messages
        d.commit_user(f"u{i + 1}", i + 1)
        committed = d.request(f"u{i + 1}").messages
        assert speculative == committed  # committing the words changes nothing
        assert committed[: len(warm.messages)] == warm.messages  # even on a turn where the window moves
        d.turns.pop()


def test_the_words_request_is_the_reply_prompt_as_a_prefill_while_its_turn_is_the_next() -> None:
    d = Dialogue(persona(), history_turns=6)
    d.perception_note = "[perception] The user sounds tense."
    for i in range(7):
        words = d.words_request(f"so u{i}", request_id="w")
        reply = d.request(f"so u{i} and more")
        assert words is not None and words.max_tokens == 0 and not words.stop and words.request_id == "w"
        # the reply's own prompt with the words heard so far: the same messages up to the user's words
        assert words.messages[:-1] == reply.messages[:-1] and reply.messages[-1].content.startswith(
            words.messages[-1].content
        )
        assert words.model == reply.model
        assert d.words_request("   ") is None  # nothing heard yet
        d.commit_user(f"so u{i} and more", i)
        # its reply cancelled, the user goes on: the two turns merged, as the next reply will have them
        went_on = d.words_request("and then")
        assert went_on is not None and went_on.messages == d.request("and then").messages
        assert went_on.messages[-1].content == f"so u{i} and more and then"
        d.commit_replica(f"r{i}", i + 0.5, interrupted=False)


def test_history_is_bounded() -> None:
    d = Dialogue(persona(), history_turns=4)
    for i in range(10):
        d.commit_user(f"u{i}", i)
        d.commit_replica(f"r{i}", i + 0.5, interrupted=False)
    req = d.request("now")
    assert 1 + 2 <= len(req.messages) <= 1 + 4


# ---- playback -----------------------------------------------------------------------------------------


def test_playback_sends_only_a_lead_ahead_and_places_audio_at_release() -> None:
    r = ReplyAudio(1, [chunk(1600, "Hello there,"), chunk(3200, "how can I help?")])
    pb = Playback(r, at=16000, lead=320)
    seg = pb.due(16000)
    assert len(seg) == 1 and seg[0].start == 16000 and seg[0].pcm.shape[0] == 320
    seg = pb.due(16000 + 1000)
    assert seg[0].start == 16320 and seg[0].pcm.shape[0] == 1000
    assert not pb.finished(10**6)  # generation not done yet
    r.done = True
    pb.due(30000)
    assert pb.sent == 4800 and pb.finished(30000) and pb.end == 16000 + 4800


def test_pause_rewinds_to_what_was_heard_and_resume_continues_later() -> None:
    r = ReplyAudio(1, [chunk(8000, "one two three four"), chunk(8000, "five six seven eight")], done=True)
    pb = Playback(r, at=0, lead=1600)
    pb.due(4000)  # sent up to 5600
    at = pb.pause(4000)
    assert at == 4000 and pb.sent == 4000 and pb.due(9000) == []
    assert r.text_heard(pb.sent) == "one two"
    pb.resume(9000)
    seg = pb.due(9000)
    assert seg[0].start == 9000 and seg[0].pcm.shape[0] == 1600
    spoken = pb.stop(10000)  # heard 4000 before the pause and 1000 after the resume
    assert pb.sent == 5000 and spoken == "one two"


def test_stop_reports_whole_clauses_then_a_share_of_the_next() -> None:
    r = ReplyAudio(1, [chunk(1000, "First clause,"), chunk(1000, "a b c d")], done=True)
    pb = Playback(r, at=0, lead=2000)
    pb.due(0)
    assert pb.stop(1500) == "First clause, a b"


def test_underrun_continues_from_the_present() -> None:
    r = ReplyAudio(1, [chunk(800, "a")])
    pb = Playback(r, at=0, lead=100)
    pb.due(800)
    assert pb.due(1200) == []  # synthesis has not caught up: the client's buffer runs dry
    r.chunks.append(chunk(800, "b"))
    seg = pb.due(2000)  # the second chunk arrived late: placed now, not in the past
    assert seg[0].start == 2000
    assert pb.underrun == 2000 - 800  # the silence the user heard inside the reply
    r.chunks.append(chunk(800, "c"))
    pb.due(2700)  # in time: no more silence
    assert pb.underrun == 1200


def test_flush_places_the_rest_contiguously() -> None:
    r = ReplyAudio(1, [chunk(1000, "a"), chunk(1000, "b")], done=True)
    pb = Playback(r, at=500, lead=100)
    pb.due(500)
    seg = pb.flush()
    assert seg[0].start == 600 and seg[0].pcm.shape[0] == 1900 and pb.finished(pb.end)


# ---- options ------------------------------------------------------------------------------------------


def test_session_options() -> None:
    s = Settings()
    o = parse_options(s, {"mode": "floor", "speculation": "false", "floor.commit_threshold": "0.9"})
    assert o.mode == "floor" and o.speculation is False and o.floor.commit_threshold == 0.9
    assert parse_options(s, {}).mode == "conversation" and parse_options(s, {}).warm_words is None
    assert parse_options(s, {"warm_words": "false"}).warm_words is False
    for bad in ({"mode": "chat"}, {"speculation": "maybe"}, {"warm_words": "2"}, {"volume": "11"}, {"floor.nope": "1"}):
        with pytest.raises(BadOption):
            parse_options(s, bad)


# ---- client outputs -----------------------------------------------------------------------------------


def test_speaker_drops_what_it_held_beyond_a_pause() -> None:
    sp = Speaker()
    sp.place(1.0, np.full(3200, 7, dtype="<i2").tobytes())
    sp.drop_after(1.1)
    assert sp.end == 17600 and sp.window(16000, 3200)[:1600].min() == 7 and not sp.window(17600, 1600).any()


def test_bleed_adds_delayed_replica_audio_to_the_mic() -> None:
    sp = Speaker()
    sp.place(0.0, np.full(1600, 10000, dtype="<i2").tobytes())
    bleed = Bleed(sp, gain=0.5, delay=160)
    quiet = np.zeros(320, dtype="<i2").tobytes()
    out = np.frombuffer(bleed(0, quiet), dtype="<i2")
    assert out[:160].max() == 0 and abs(int(out[200]) - 5000) <= 1
    assert np.frombuffer(bleed(1800, quiet), dtype="<i2").max() == 0  # past the replica audio


def test_perception_is_on_for_conversations_and_perceive_sessions_only() -> None:
    s = Settings()
    assert parse_options(s, {}).perception
    assert parse_options(s, {"mode": "perceive"}).perception
    assert not parse_options(s, {"mode": "floor"}).perception
    assert not parse_options(s, {"mode": "acoustic"}).perception
    assert not parse_options(s, {"perception": "false"}).perception
    with pytest.raises(BadOption):
        parse_options(s, {"perception": "sometimes"})
    with pytest.raises(BadOption):
        parse_options(s, {"mode": "perceive", "video": "true"})  # the replica's face needs replies


# ---- the conversation's ASR turns ------------------------------------------------------------------------


class ScriptedASR:
    """Stands in for Triton's `asr` (only `transcribe` is called here): each decode waits until the test
    answers it, so a final transcript can be made to arrive late, as under load."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, asyncio.Future[Transcript]]] = []

    async def transcribe(self, audio: Any, prompt: str = "", *, word_timings: bool = True) -> Transcript:
        del prompt
        answer: asyncio.Future[Transcript] = asyncio.get_running_loop().create_future()
        self.calls.append((int(audio.shape[0]), word_timings, answer))
        return await answer


async def _next_turn_while_the_last_final_decodes() -> tuple[list[dict[str, Any]], ScriptedASR]:
    settings = Settings()
    out = RecordingOutlet()
    asr = ScriptedASR()
    session = ConversationSession(typing.cast(ConversationModels, asr), None, settings, persona(), out, replies=False)
    floor = session.floor
    speech_start_s = settings.floor.speech_start_ms / 1000

    def until(t: float) -> None:  # the audio clock moves on (the floor models are not needed here)
        while floor.timeline.now < t - 1e-9:
            floor.timeline.push(np.zeros(320, dtype="<i2").tobytes())

    async def floor_event(kind: str, t: float) -> None:
        until(t)
        await session._on_floor_event(FloorEvent(kind, t))
        await asyncio.sleep(0)

    await floor_event("speech_start", 0.3 + speech_start_s)  # turn 1: 0.3-2.0 s
    await floor_event("speech_end", 2.2)
    assert [c[1] for c in asr.calls] == [True]  # its final decode, still running when...
    await floor_event("eot_commit", 2.6)  # ...the floor commits (held for the final) and the user goes on
    await floor_event("speech_start", 3.0 + speech_start_s)  # turn 2: 3.0-4.0 s
    await floor_event("speech_end", 4.2)
    asr.calls[0][2].set_result(Transcript("my bill is wrong"))  # turn 1's final arrives late
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(asr.calls) == 2, "turn 2 was never transcribed"
    assert asr.calls[1][1]  # its own final decode, of its own audio (from just before 3.0 s to 4.2 s + pad)
    assert asr.calls[1][0] < round(1.6 * 16000)
    asr.calls[1][2].set_result(Transcript("it was charged twice"))
    for _ in range(10):
        await asyncio.sleep(0)
    await session.close()
    return out.dicts, asr


def test_a_turn_begun_while_the_last_final_decodes_gets_its_own_transcript() -> None:
    events, _ = asyncio.run(_next_turn_while_the_last_final_decodes())
    finals = [e["text"] for e in events if e["type"] == "transcript" and e["final"]]
    assert finals == ["my bill is wrong", "it was charged twice"]
    assert [e["type"] for e in events if e["type"] != "transcript"] == [
        "speech_start",
        "speech_end",
        "eot_commit",
        "speech_start",
        "speech_end",
    ]


def test_a_turn_keeps_the_notes_its_reply_was_built_with_so_the_next_prompt_extends_that_reply() -> None:
    """Perception's note changes between the speculative reply and the commit: the history shows the note the reply
    was answered with, so the warm-up after it (and every later prompt) continues the reply's own prompt."""
    d = Dialogue(persona(), history_turns=40)
    d.commit_user("my bill is wrong", 1.0)
    d.commit_replica("Sorry to hear that.", 2.0, interrupted=False)
    d.perception_note = ""
    d.words_request("it was", request_id="w")  # a prefill's words are not a reply's
    reply = d.request("it was charged twice").messages  # speculative: no note yet
    d.perception_note = "[perception] The user sounds tense."  # arrives before the commit
    assert d.words_request("it was charged twice") is not None
    d.commit_user("it was charged twice", 3.0)
    d.commit_replica("I see two charges.", 4.0, interrupted=False)
    warm = d.warm_request()
    assert warm is not None and warm.messages[: len(reply)] == reply
    assert warm.messages[len(reply) :] == (ChatMessage("assistant", "I see two charges."),)
    # the next turn, answered after its commit, carries the note in force
    d.commit_user("and in March", 5.0)
    assert d.request("and in March").messages[-2] == ChatMessage("system", "NOTE: They sound tense.")
    # a reply asked for other words than those committed lends the turn nothing
    d.commit_replica("March too.", 6.0, interrupted=False)
    d.perception_note = ""
    d.request("and")
    d.commit_user("and April", 7.0)
    assert d.request("and April").messages[-2].role == "assistant"  # no note: the one in force now is none


def test_the_dialogue_gives_the_guard_the_user_turns_its_prompt_shows() -> None:
    d = Dialogue(persona())
    d.commit_user("Hi, I'm calling about my bill.", 1.0)
    d.commit_replica("Sure, what is the charge?", 2.0, interrupted=False)
    guard = d.guard("I think I paid it twice.")
    assert guard.check("Hi, I'm calling about my bill.") == "echo"  # an earlier turn
    assert guard.check("I think I paid it twice.") == "echo"  # the turn being answered
    assert guard.check("Sure, what is the charge?") == "repetition"  # what the replica said
