"""Interactions, pure: parsing, the conversational-flow levels mapped to floor settings, and the reply machine's
`say` / `respond` / `pause_on_speech` on virtual time."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from orchestrator.config import FloorSettings, Settings, validate
from orchestrator.errors import BadInteraction
from orchestrator.session.interactions import (
    AppendContext,
    Echo,
    Interrupt,
    OverwriteContext,
    Respond,
    Sensitivity,
    ToolResult,
    flow_barge_in,
    flow_floor,
    flow_settings,
    interaction_of,
    parse_interaction,
    pauses_at_onset,
)
from orchestrator.turns.replies import (
    Action,
    CancelReply,
    CommitReplicaTurn,
    CommitUserTurn,
    PausePlayback,
    Phase,
    ReleaseReply,
    ReplyMachine,
    Snapshot,
    StartReply,
    StopPlayback,
)
from tests.unit.test_replies import REASONS, Session, answered, speculate

# ---- parsing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"type": "echo", "text": "Hello there."}, Echo("Hello there.")),
        ({"type": "respond", "text": "What time is it?"}, Respond("What time is it?")),
        ({"type": "interrupt"}, Interrupt()),
        ({"type": "overwrite_context", "text": "The caller is Alex."}, OverwriteContext("The caller is Alex.")),
        ({"type": "overwrite_context", "text": ""}, OverwriteContext("")),  # clears the context
        ({"type": "append_context", "text": "They are in Oslo."}, AppendContext("They are in Oslo.")),
        ({"type": "sensitivity", "turn_taking_patience": "high"}, Sensitivity("high", None)),
        ({"type": "sensitivity", "replica_interruptibility": "low"}, Sensitivity(None, "low")),
        (
            {"type": "sensitivity", "turn_taking_patience": "low", "replica_interruptibility": None},
            Sensitivity("low", None),
        ),
        ({"type": "tool_result", "call_id": "call_1", "output": '{"ok": true}'}, ToolResult("call_1", '{"ok": true}')),
        ({"type": "tool_result", "call_id": "call_1", "output": ""}, ToolResult("call_1", "")),
    ],
)
def test_every_interaction_parses_to_its_typed_value(obj: dict[str, Any], expected: object) -> None:
    assert parse_interaction(obj) == expected
    assert parse_interaction(obj).type == obj["type"]


@pytest.mark.parametrize(
    ("obj", "field", "says"),
    [
        ({"type": "shout", "text": "hi"}, "type", "unknown interaction type 'shout'"),
        ({"text": "hi"}, "type", "unknown interaction type None"),
        ({"type": 3}, "type", "unknown interaction type 3"),
        ({"type": "echo"}, "text", "needs 'text' as text"),
        ({"type": "echo", "text": "   "}, "text", "non-empty 'text'"),
        ({"type": "respond", "text": 42}, "text", "needs 'text' as text"),
        ({"type": "append_context", "text": ""}, "text", "non-empty 'text'"),
        ({"type": "overwrite_context"}, "text", "needs 'text' as text"),
        ({"type": "echo", "text": "hi", "voice": "x"}, "voice", "takes no 'voice'"),
        ({"type": "interrupt", "text": "now"}, "text", "takes nothing but its type"),
        ({"type": "sensitivity"}, "turn_taking_patience", "needs turn_taking_patience or"),
        ({"type": "sensitivity", "turn_taking_patience": "very"}, "turn_taking_patience", "low, medium, high"),
        ({"type": "sensitivity", "replica_interruptibility": "HIGH"}, "replica_interruptibility", "not 'HIGH'"),
        ({"type": "sensitivity", "replica_interruptibility": 2}, "replica_interruptibility", "not 2"),
        ({"type": "tool_result", "output": "x"}, "call_id", "'call_id'"),
        ({"type": "tool_result", "call_id": "c", "output": {"a": 1}}, "output", "needs 'output' as text"),
        ({"type": "tool_result", "call_id": "c"}, "output", "needs 'output' as text"),
        ({"type": "tool_result", "call_id": " ", "output": "x"}, "call_id", "non-empty 'call_id'"),
    ],
)
def test_a_bad_interaction_is_a_typed_error_naming_what_is_wrong(obj: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(BadInteraction) as caught:
        parse_interaction(obj)
    err = caught.value
    assert err.code == "bad_interaction" and not err.fatal
    assert err.field == field and says in err.message


def test_text_is_bounded_and_a_body_that_is_not_an_object_is_refused() -> None:
    assert parse_interaction({"type": "echo", "text": "x" * 10}, max_chars=10) == Echo("x" * 10)
    with pytest.raises(BadInteraction, match="11 characters; the limit is 10"):
        parse_interaction({"type": "echo", "text": "x" * 11}, max_chars=10)
    with pytest.raises(BadInteraction, match="not list"):
        parse_interaction(["echo"])  # type: ignore[arg-type]
    assert interaction_of("respond", {"text": "hi"}) == Respond("hi")  # (the stream's controls: no `type` key)


# ---- conversational flow -> floor settings --------------------------------------------------------------------


def test_medium_is_todays_settings_exactly() -> None:
    base = FloorSettings()
    for level in ("medium", None):
        assert flow_floor(base, level) is base
        assert flow_barge_in(base, level) is base
        assert flow_settings(base, level, level) is base
        assert pauses_at_onset(level)
    tuned = FloorSettings(commit_threshold=0.6, max_pause_ms=900, barge_in_ms=300)  # a client's own tuning
    assert flow_settings(tuned, "medium", "medium") is tuned


def test_the_levels_table() -> None:
    base = FloorSettings()
    low, high = flow_floor(base, "low"), flow_floor(base, "high")
    assert (low.commit_threshold, low.max_pause_ms, low.min_commit_pause_ms) == (0.6425, 1200, 0)
    assert (high.commit_threshold, high.max_pause_ms, high.min_commit_pause_ms) == (0.899, 2700, 300)
    assert flow_barge_in(base, "low").barge_in_ms == 960 and flow_barge_in(base, "high").barge_in_ms == 384
    assert not pauses_at_onset("low") and pauses_at_onset("high")
    # patience moves only the turn-taking settings, interruptibility only the barge-in
    changed = {f.name for f in dataclasses.fields(base) if getattr(high, f.name) != getattr(base, f.name)}
    assert changed == {"commit_threshold", "max_pause_ms", "min_commit_pause_ms"}
    barge = flow_barge_in(base, "low")
    assert {f.name for f in dataclasses.fields(base) if getattr(barge, f.name) != getattr(base, f.name)} == {
        "barge_in_ms"
    }
    both = flow_settings(base, "high", "low")
    assert (both.commit_threshold, both.max_pause_ms, both.barge_in_ms) == (0.899, 2700, 960)


def test_levels_are_ordered_and_shift_a_tuned_floor_the_same_way() -> None:
    for base in (FloorSettings(), FloorSettings(commit_threshold=0.5, max_pause_ms=1000, barge_in_ms=320)):
        low, mid, high = (flow_floor(base, lv) for lv in ("low", "medium", "high"))
        assert low.commit_threshold < mid.commit_threshold < high.commit_threshold
        assert low.max_pause_ms < mid.max_pause_ms < high.max_pause_ms
        assert low.min_commit_pause_ms <= mid.min_commit_pause_ms <= high.min_commit_pause_ms
        lo, hi = flow_barge_in(base, "low").barge_in_ms, flow_barge_in(base, "high").barge_in_ms
        assert hi < base.barge_in_ms < lo and lo % 32 == 0 and hi % 32 == 0  # whole VAD windows


@pytest.mark.parametrize(
    "base",
    [
        FloorSettings(),
        FloorSettings(commit_threshold=1.0),  # only the safety net commits: no level changes that
        FloorSettings(tentative_threshold=0.7, commit_threshold=0.7),
        FloorSettings(max_pause_ms=200, min_commit_pause_ms=200, barge_in_ms=64),
        FloorSettings(max_pause_ms=10000, min_commit_pause_ms=9000, barge_in_ms=5000),
    ],
)
def test_every_level_of_a_valid_floor_is_a_valid_floor(base: FloorSettings) -> None:
    validate(Settings(floor=base))
    for patience in ("low", "medium", "high"):
        for interruptibility in ("low", "medium", "high"):
            validate(Settings(floor=flow_settings(base, patience, interruptibility)))
    if base.commit_threshold == 1.0:
        assert flow_floor(base, "low").commit_threshold == 1.0


# ---- the reply machine: say (echo) ---------------------------------------------------------------------------


def test_say_speaks_a_script_now_and_it_becomes_the_replicas_turn() -> None:
    m = ReplyMachine()
    assert m.say("Welcome back.", 1.0) == [StartReply(1, Snapshot(0, ""), False, 1.0, script="Welcome back.")]
    assert m.phase is Phase.RESPONDING
    assert m.on_reply_audio(1, 1.2) == [ReleaseReply(1, 1.2)]
    m.on_reply_done(1, "Welcome back.", 1.3)
    assert m.on_playback_end(1, 2.0) == [CommitReplicaTurn(1, "Welcome back.", False, 2.0)]
    assert speculate(m).snapshot.turn == 0  # a script is not a user turn


def test_say_stops_the_speaking_replica_first() -> None:
    m = ReplyMachine()
    rid = answered(m)  # playing, still generating
    acts = m.say("Let me stop you there.", 2.0)
    assert acts == [
        CancelReply(rid, "superseded", 2.0),  # its generation, before the stop (the session still tracks it)
        StopPlayback(rid, 2.0),
        StartReply(rid + 1, Snapshot(1, ""), False, 2.0, script="Let me stop you there."),
    ]
    assert m.on_playback_stopped(rid, "Sure, it", 2.0) == [CommitReplicaTurn(rid, "Sure, it", True, 2.0)]
    assert m.on_reply_audio(rid + 1, 2.1) == [ReleaseReply(rid + 1, 2.1)]


def test_say_cancels_a_reply_in_preparation_and_does_not_wait_for_the_user() -> None:
    m = ReplyMachine()
    start = speculate(m)
    assert m.say("One moment.", 1.1)[0] == CancelReply(start.reply_id, "superseded", 1.1)
    committed = ReplyMachine(speculation=False)
    committed.on_transcript("what time is it", True, 1.0)
    (_, reply) = committed.on_floor("eot_commit", 1.0)
    assert isinstance(reply, StartReply)
    committed.on_floor("speech_start", 1.2)  # the user goes on: the committed reply is held
    acts = committed.say("One moment.", 1.3)
    assert acts[0] == CancelReply(reply.reply_id, "superseded", 1.3)
    assert committed.on_reply_audio(reply.reply_id + 1, 1.4) == [ReleaseReply(reply.reply_id + 1, 1.4)]


# ---- the reply machine: respond ------------------------------------------------------------------------------


def test_respond_commits_the_text_as_the_users_turn_and_answers_it() -> None:
    m = ReplyMachine()
    assert m.respond("What's the weather?", 0.5) == [
        CommitUserTurn(0, "What's the weather?", 0.5),
        StartReply(1, Snapshot(0, "What's the weather?"), False, 0.5),
    ]
    assert m.phase is Phase.RESPONDING
    assert m.on_reply_audio(1, 0.9) == [ReleaseReply(1, 0.9)]
    m.on_transcript("and tomorrow", True, 3.0)  # the next spoken turn is turn 1
    acts = m.on_floor("eot_commit", 3.0)
    assert CommitUserTurn(1, "and tomorrow", 3.0) in acts


def test_respond_stops_the_replica_and_supersedes_a_reply_in_preparation() -> None:
    m = ReplyMachine()
    rid = answered(m)
    acts = m.respond("Actually, book a table.", 2.0)
    assert acts == [
        CancelReply(rid, "superseded", 2.0),
        StopPlayback(rid, 2.0),
        CommitUserTurn(1, "Actually, book a table.", 2.0),
        StartReply(rid + 1, Snapshot(1, "Actually, book a table."), False, 2.0),
    ]
    m2 = ReplyMachine()
    start = speculate(m2)
    assert m2.respond("book a table", 1.1)[0] == CancelReply(start.reply_id, "superseded", 1.1)


def test_say_and_respond_do_nothing_after_the_end_or_without_words() -> None:
    m = ReplyMachine()
    assert m.say("  ", 0.1) == [] and m.respond("", 0.1) == []
    m.finish(1.0)
    assert m.say("hello", 1.1) == [] and m.respond("hello", 1.1) == []


# ---- the reply machine: interruptibility ----------------------------------------------------------------------


def test_a_replica_that_does_not_pause_at_the_onset_stops_only_for_a_barge_in() -> None:
    m = ReplyMachine(pause_on_speech=False)
    rid = answered(m)
    assert m.on_floor("speech_start", 2.0) == []  # talks on over the user's onset
    assert m.phase is Phase.SPEAKING
    assert m.on_floor("backchannel", 2.3) == [] and m.tick(3.0) == []  # nothing to resume
    m.on_floor("speech_start", 3.5)
    assert m.on_floor("barge_in", 4.5) == [CancelReply(rid, "barge_in", 4.5), StopPlayback(rid, 4.5)]
    default = ReplyMachine()
    rid = answered(default)
    assert default.on_floor("speech_start", 2.0) == [PausePlayback(rid, 2.0)]  # (the default: unchanged)


# ---- randomised sequences with interactions ----------------------------------------------------------------


class Steered(Session):
    """test_replies' model of the session, with `say`, `respond` and the interruptibility mixed in: every
    invariant there still holds, scripts and responded turns aside."""

    def __init__(self, rng: random.Random, speculation: bool, reentrant: bool) -> None:
        super().__init__(rng, speculation, reentrant)
        self.m.pause_on_speech = rng.random() < 0.7
        self.scripts: set[int] = set()

    def apply(self, a: Action) -> None:
        if isinstance(a, StartReply) and self.input == "say":
            assert a.script and not a.speculative and a.reply_id > max(self.started, default=0)
            self.scripts.add(a.reply_id)
            self.started[a.reply_id] = a
            self.generating.add(a.reply_id)
        elif isinstance(a, StartReply) and self.input == "respond":
            assert not a.speculative and a.snapshot == Snapshot(len(self.user_turns) - 1, "responded", self.ctx)
            self.input = "eot_commit"  # (checked as the reply to a committed turn)
            super().apply(a)
        elif isinstance(a, CommitUserTurn) and self.input == "respond":
            assert a.turn == len(self.user_turns) and a.text == "responded"
            self.user_turns.append(a)
        elif isinstance(a, CancelReply) and a.reply_id in self.released and self.input in ("say", "respond"):
            assert a.reason == "superseded" and a.reply_id in self.generating and a.reason in REASONS
            self.cancelled_after_release.add(a.reply_id)
            self.cancelled[a.reply_id] = a
            self.generating.discard(a.reply_id)
        elif isinstance(a, ReleaseReply) and a.reply_id in self.scripts:
            assert a.reply_id not in self.released and a.reply_id not in self.cancelled and self.playing is None
            self.released.append(a.reply_id)
            self.playing, self.paused = a.reply_id, False
        else:
            super().apply(a)

    def step(self) -> None:
        r = self.rng.random()
        if r < 0.04:
            self.t = round(self.t + 0.1, 3)
            self.feed("say", self.m.say("scripted", self.t))
        elif r < 0.08:
            self.t = round(self.t + 0.1, 3)
            self.feed("respond", self.m.respond("responded", self.t))
        else:
            super().step()


@pytest.mark.parametrize("block", range(4))
def test_random_sequences_with_interactions_keep_invariants(block: int) -> None:
    totals = {"scripts": 0, "responded": 0, "superseded": 0}
    for seed in range(block * 500, (block + 1) * 500):
        rng = random.Random(seed)
        s = Steered(rng, speculation=rng.random() < 0.8, reentrant=rng.random() < 0.5)
        for _ in range(rng.randint(5, 120)):
            s.step()
            assert s.m.playing_reply == s.playing
            assert (s.m.phase is Phase.PAUSED) == (s.playing is not None and s.paused)
        s.finish()
        s.check_end()
        totals["scripts"] += len(s.scripts & set(s.released))
        totals["responded"] += sum(u.text == "responded" for u in s.user_turns)
        totals["superseded"] += sum(c.reason == "superseded" for c in s.cancelled.values())
    assert min(totals.values()) > 50, totals
