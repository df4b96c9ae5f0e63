"""The reply state machine: when to start, release, cancel, pause, resume and stop the replica's replies.

Pure, like the floor machine: it takes floor events, transcript updates and reply progress, each stamped
with `t` on the session's audio clock, and returns actions for the session to execute (Triton requests,
playback, history). No I/O, no wall clock, no asyncio; tests drive it with virtual time.

A reply is built from a `Snapshot` (user turn, its transcript, the context version). Snapshots compare by
normalised transcript: case, spacing and punctuation around words do not make one stale, word changes do.

Phases (`phase`, derived from the state so it can never disagree with it)
- LISTENING: no reply in flight.
- SPECULATING: `eot_tentative` with a transcript started a speculative reply; it is unreleased and writes
  nothing. A word change, a context change, `eot_cancel` or `speech_start` cancels it (and, while the floor
  is still tentative, a change restarts it on the new snapshot). A context change is the conversation's
  context being overwritten or appended to (`ConversationSession.set_context`); a new perception note is
  not one (it changes many times a second; the next request simply carries it).
- RESPONDING: the turn was committed (`CommitUserTurn`); its reply (the speculative one if its snapshot
  still matches, else a fresh one) is released as soon as its first audio is buffered.
- SPEAKING / PAUSED: the released reply is on the timeline. User speech pauses it; a `backchannel` (or a
  commit of mere noise) resumes it once the user has stayed quiet `resume_after_s` (the session's clock
  reaches the machine through `tick`): "Sorry, | actually..." starts with a short burst too, and speech before
  then keeps the replica paused. A `barge_in` (or a commit of real words) stops it, and what was heard
  becomes the replica's turn.
- ENDED: `finish` was called and nothing is playing.

A conversation may open with the replica's greeting (`greet`): a scripted reply, committed from the start,
released as soon as its audio is ready, interruptible like any other; the user speaking first wins.

Interactions (`orchestrator/session/interactions.py`) steer it at any time:
- `say` (the `echo` interaction): a scripted reply like the greeting, but now: a speaking replica is stopped and
  a reply in preparation cancelled ("superseded"); it does not wait for a user who is talking.
- `respond`: the text is the user's turn: it is committed (`CommitUserTurn`, as a spoken commit would) and a
  non-speculative reply to it starts; a speaking replica is stopped and a reply in preparation superseded.
- `pause_on_speech` (the replica's interruptibility): False keeps the replica talking through the user's
  onset; only a `barge_in` (or a commit of real words) stops it.

Rules beyond the obvious ones
- Speech after a commit, before the reply is released, holds the release instead of cancelling: a cough
  would otherwise leave the turn unanswered. Once the new speech yields words (a non-empty transcript) the
  user really continued: the held reply is cancelled and the new turn gets its own reply. A commit with an
  empty transcript is noise: it writes nothing and lets the held reply go.
- An acknowledgement is not a turn either. A commit whose whole transcript is "mm-hm", "right", "I see" (and
  the like: `ACKNOWLEDGEMENTS`), from speech that began within `ack_window_s` of the replica finishing a reply
  that asked nothing (no "?"), writes nothing and starts no reply, as a `backchannel` over the replica would:
  the user heard the replica out ("You're welcome!" | "Right."). After a question it is an answer, and is
  answered. So is, in that same moment, a short sound heard as more words than it can hold (`MAX_WORDS_PER_S`
  over the speech's span, four words or more): Whisper's invention for an "mm-hm" ("and that may turn.",
  four words in 0.56 s).
- A failed reply is not retried on the same snapshot (the session reports the error); a speculative
  failure still gets one ordinary reply at commit.
- Generation and playback are separate: a stopped reply may still be generating (it is cancelled with
  reason "barge_in", before `StopPlayback` so the session cancels the request while it still tracks it).
- Inputs about unknown or finished replies are ignored: late answers are normal with cancellation.
"""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass, field


def normalise(text: str) -> str:
    """Transcript text as compared between snapshots: case-folded words with the punctuation around them
    dropped (Whisper re-decodes of the same words differ in exactly that); "it's" and "3.5" stay whole."""
    out = []
    for word in text.casefold().split():
        start, end = 0, len(word)
        while start < end and unicodedata.category(word[start]).startswith("P"):
            start += 1
        while end > start and unicodedata.category(word[end - 1]).startswith("P"):
            end -= 1
        if start < end:
            out.append(word[start:end])
    return " ".join(out)


@dataclass(frozen=True)
class Snapshot:
    """What a reply is built from. Equality uses the normalised transcript (`key`), not the raw text."""

    turn: int  # index of the user turn (increments at each eot_commit that produced a user turn)
    transcript: str = field(compare=False)  # the user's transcript of that turn, as recognised
    context_version: int = 0  # bumps when context/tool state changes
    key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", normalise(self.transcript))


@dataclass(frozen=True)
class StartReply:
    reply_id: int
    snapshot: Snapshot
    speculative: bool
    t: float
    script: str = ""  # say exactly this (the greeting) instead of generating a reply


@dataclass(frozen=True)
class CancelReply:
    reply_id: int  # stop its LLM+TTS end to end and discard its unplayed audio
    # user_continued | stale_transcript | acknowledgement | context_changed | barge_in | superseded | failed | ended
    reason: str
    t: float


@dataclass(frozen=True)
class ReleaseReply:
    reply_id: int  # start playing its audio now on the session timeline
    t: float


@dataclass(frozen=True)
class PausePlayback:
    reply_id: int  # the user started speaking over the replica: hold (it may resume)
    t: float


@dataclass(frozen=True)
class ResumePlayback:
    reply_id: int  # it was a backchannel or noise: continue where paused
    t: float


@dataclass(frozen=True)
class StopPlayback:
    reply_id: int  # a real interruption: drop the rest, then report `on_playback_stopped(what was heard)`
    t: float


@dataclass(frozen=True)
class CommitUserTurn:  # write the user's message to the history
    turn: int
    text: str
    t: float


@dataclass(frozen=True)
class CommitReplicaTurn:  # write the replica's message to the history
    reply_id: int
    text: str  # what was actually spoken
    interrupted: bool
    t: float


Action = (
    StartReply
    | CancelReply
    | ReleaseReply
    | PausePlayback
    | ResumePlayback
    | StopPlayback
    | CommitUserTurn
    | CommitReplicaTurn
)


class Phase(enum.Enum):
    LISTENING = "listening"
    SPECULATING = "speculating"
    RESPONDING = "responding"
    SPEAKING = "speaking"
    PAUSED = "paused"
    ENDED = "ended"


@dataclass
class _Reply:
    id: int
    snapshot: Snapshot
    speculative: bool  # started before its turn was committed
    committed: bool = False  # its turn was committed: release when playable
    audio: bool = False  # first audio chunk buffered
    done: bool = False  # generation finished
    text: str = ""  # full text, known when done
    script: str = ""  # a scripted reply (the greeting): no snapshot can make it stale

    @property
    def playable(self) -> bool:
        # A finished reply with no audio at all (empty text) is playable too: it plays out at once.
        return self.audio or self.done


RESUME_AFTER_S = 0.3  # quiet needed after a backchannel before the replica resumes
ACK_WINDOW_S = 1.5  # speech this soon after the replica finished can be an acknowledgement of it
MAX_WORDS_PER_S = 6.0  # faster than anyone speaks (conversational speech runs ~2.5-3.5 words/s)
# Words that only acknowledge what was said. Not "okay", "sure", "yeah", "yes" or "no": after a statement that
# offers something ("I can send you a reminder.") they accept or refuse it; not "thanks", which is answered.
ACKNOWLEDGEMENTS = frozenset({"mm-hm", "mm-hmm", "mhm", "mm", "hmm", "uh-huh", "uh huh", "right", "i see", "oh", "ah"})


def acknowledges(key: str) -> bool:
    """Whether a normalised transcript (`normalise`) only acknowledges: "right", "mm-hm", "oh i see", "right right"."""
    words = key.split()
    if not 0 < len(words) <= 4:
        return False
    i = 0
    while i < len(words):
        if i + 1 < len(words) and f"{words[i]} {words[i + 1]}" in ACKNOWLEDGEMENTS:
            i += 2
        elif words[i] in ACKNOWLEDGEMENTS:
            i += 1
        else:
            return False
    return True


def too_fast(key: str, onset: float, until: float | None) -> bool:
    """Four words or more in speech from `onset` to `until` that could not hold them (`MAX_WORDS_PER_S`): a
    recogniser's invention on a short sound."""
    words = len(key.split())
    return words >= 4 and until is not None and until > onset and words / (until - onset) > MAX_WORDS_PER_S


class ReplyMachine:
    """One session's replies. Feed it in audio-time order; it never looks at a wall clock."""

    def __init__(
        self,
        speculation: bool = True,
        resume_after_s: float = RESUME_AFTER_S,
        pause_on_speech: bool = True,
        ack_window_s: float = ACK_WINDOW_S,
    ) -> None:
        self.speculation = speculation
        self.resume_after_s = resume_after_s
        self.ack_window_s = ack_window_s
        self.pause_on_speech = pause_on_speech  # hold the replica at the user's onset (see the module's doc)
        self.replies_started = 0
        self.replies_released = 0
        self.released_from_speculation = 0
        self.cancelled = 0
        self.wasted = 0  # started but never released
        self._turn = 0  # index of the user turn being spoken
        self._transcript = ""  # its latest transcript
        self._context = 0
        self._tentative = False  # eot_tentative seen, and no eot_cancel / speech_start / eot_commit since
        self._held = False  # user speech since the commit: the committed reply waits
        self._ended = False
        self._next_id = 1
        self._pending: _Reply | None = None  # the unreleased reply (at most one)
        self._playing: _Reply | None = None  # the released reply on the timeline
        self._paused = False
        self._resume_at: float | None = None  # the paused reply resumes at this time, if the user stays quiet
        self._now = 0.0  # the newest time seen (`tick` and every input)
        self._stopping: dict[int, _Reply] = {}  # StopPlayback sent, waiting for on_playback_stopped
        self._failed: Snapshot | None = None  # a speculation failed on it: do not speculate on it again
        self._stated_at: float | None = None  # a reply that asked nothing finished playing out then
        self._onset: float | None = None  # the first speech_start of the turn being spoken
        self._spoken_until: float | None = None  # its last speech_end

    # ---- introspection --------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        if self._playing is not None:
            return Phase.PAUSED if self._paused else Phase.SPEAKING
        if self._pending is not None:
            return Phase.RESPONDING if self._pending.committed else Phase.SPECULATING
        return Phase.ENDED if self._ended else Phase.LISTENING

    @property
    def active_reply(self) -> int | None:
        """The reply on the timeline, else the one in preparation, else None."""
        reply = self._playing or self._pending
        return None if reply is None else reply.id

    @property
    def playing_reply(self) -> int | None:
        return None if self._playing is None else self._playing.id

    @property
    def snapshot(self) -> Snapshot:
        """What a reply started now would be built from."""
        return Snapshot(self._turn, self._transcript, self._context)

    # ---- inputs ---------------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """The session clock reached `now` (every input chunk): a resume whose quiet has held happens now."""
        self._now = max(self._now, now)
        if self._resume_at is None or now < self._resume_at or self._playing is None:
            return []
        self._resume_at, self._paused = None, False
        return [ResumePlayback(self._playing.id, now)]

    def on_floor(self, event: str, t: float) -> list[Action]:
        if self._ended:
            return []
        self._now = max(self._now, t)
        out: list[Action] = []
        pending = self._pending
        if event == "eot_tentative":
            self._tentative = True
            out += self._speculate(t)
        elif event in ("eot_cancel", "speech_start"):
            self._tentative = False
            if pending is not None and not pending.committed:
                out.append(self._cancel(pending, "user_continued", t))
            if event == "speech_start":
                self._onset = t if self._onset is None else self._onset
                self._held = pending is not None and pending.committed
                if self._resume_at is not None:
                    self._resume_at = None  # still paused: the resume simply does not happen
                elif self._playing is not None and not self._paused and self.pause_on_speech:
                    self._paused = True
                    out.append(PausePlayback(self._playing.id, t))
        elif event == "speech_end":
            self._spoken_until = t
        elif event == "backchannel":
            out += self._set_transcript("", t)  # "mm-hm" is not a user turn
            self._onset = None
            out += self._resume(t)
            self._held = False
            out += self._try_release(t)
        elif event == "barge_in":
            if self._playing is not None:
                out += self._stop(t)
            elif pending is not None and pending.committed:
                out.append(self._cancel(pending, "barge_in", t))  # e.g. the client's interrupt button
        elif event == "eot_commit":
            out += self._commit(t)
        return out

    def on_transcript(self, text: str, final: bool, t: float) -> list[Action]:
        del final  # every update counts: a final transcript is just the newest one
        return [] if self._ended else self._set_transcript(text, t)

    def on_context_changed(self, t: float) -> list[Action]:
        """The conversation's context changed: an unreleased reply was built on the old one. It is cancelled;
        a committed turn gets a reply on the new context, a speculation restarts while still tentative. The
        playing reply is not touched (it is already being heard)."""
        if self._ended:
            return []
        self._context += 1
        out: list[Action] = []
        pending = self._pending
        if pending is not None and not pending.script:  # (a script does not depend on the context)
            out.append(self._cancel(pending, "context_changed", t))
            if pending.committed:  # the turn still needs its reply, built on the new context
                snap = Snapshot(pending.snapshot.turn, pending.snapshot.transcript, self._context)
                out.append(self._start(snap, speculative=False, t=t, committed=True))
            elif self._tentative:
                out += self._speculate(t)
        return out

    def greet(self, text: str, t: float) -> list[Action]:
        """The session starts with the replica's greeting: a scripted reply, released as soon as its audio is
        ready and interruptible like any other. Nothing happens if the user already has the floor."""
        if self._ended or not text.strip() or self._pending is not None or self._playing is not None:
            return []
        self._pending = _Reply(self._next_id, self.snapshot, False, committed=True, script=text)
        self._next_id += 1
        self.replies_started += 1
        return [StartReply(self._pending.id, self._pending.snapshot, False, t, script=text)]

    def say(self, text: str, t: float) -> list[Action]:
        """The replica says `text` verbatim, now (the `echo` interaction): a scripted reply, released as soon as
        its audio is ready. What it replaces goes: a speaking replica is stopped (what was heard becomes its
        turn), a reply in preparation is cancelled ("superseded"), and a user talking does not hold it."""
        if self._ended or not text.strip():
            return []
        out = self._clear_floor(t)
        # (no transcript: a script is built from nothing the user said; like the greeting, the user's next words
        # still win over it while it is unreleased)
        snap = Snapshot(self._turn, "", self._context)
        self._pending = _Reply(self._next_id, snap, False, committed=True, script=text)
        self._next_id += 1
        self.replies_started += 1
        out.append(StartReply(self._pending.id, self._pending.snapshot, False, t, script=text))
        return out + self._try_release(t)

    def respond(self, text: str, t: float) -> list[Action]:
        """`text` is the user's turn (the `respond` interaction): committed as a spoken turn would be, and a
        (non-speculative) reply to it started. A speaking replica is stopped, a reply in preparation
        superseded. Speech the user is still making stays theirs: it becomes the next turn."""
        if self._ended or not text.strip():
            return []
        out = self._clear_floor(t)
        snap = Snapshot(self._turn, text, self._context)
        out.append(CommitUserTurn(snap.turn, text, t))
        self._turn += 1
        out.append(self._start(snap, speculative=False, t=t, committed=True))
        return out + self._try_release(t)

    def follow_up(self, text: str, t: float) -> list[Action]:
        """Answer the user's committed turn `text` again (a tool's result came back): a (non-speculative) reply,
        released once it is playable and the replica is quiet (the wait line it follows is heard to its end);
        nothing is committed. A reply in preparation is superseded."""
        if self._ended or not text.strip():
            return []
        out: list[Action] = []
        if self._pending is not None:
            out.append(self._cancel(self._pending, "superseded", t))
        self._held = False
        out.append(self._start(Snapshot(self._turn, text, self._context), speculative=False, t=t, committed=True))
        return out + self._try_release(t)

    def on_reply_audio(self, reply_id: int, t: float) -> list[Action]:
        reply = self._pending
        if reply is None or reply.id != reply_id:
            return []  # unknown, cancelled, or already released
        reply.audio = True
        return self._try_release(t)

    def on_reply_done(self, reply_id: int, text: str, t: float) -> list[Action]:
        for reply in (self._pending, self._playing):
            if reply is not None and reply.id == reply_id:
                reply.done, reply.text = True, text
                return self._try_release(t)
        return []

    def on_reply_failed(self, reply_id: int, error: str, t: float) -> list[Action]:
        del error  # the session reports it; here only what happens to the reply matters
        pending, playing = self._pending, self._playing
        if pending is not None and pending.id == reply_id:
            self._failed = pending.snapshot
            return [self._cancel(pending, "failed", t)]
        if playing is not None and playing.id == reply_id:
            playing.done = True
            return self._stop(t)
        return []

    def on_playback_end(self, reply_id: int, t: float) -> list[Action]:
        reply = self._playing
        if reply is None or reply.id != reply_id:
            return []  # (a stopped reply is settled by on_playback_stopped: what was heard)
        self._playing, self._paused, self._resume_at = None, False, None
        self._stated_at = None if reply.text.rstrip().endswith("?") else t
        return [CommitReplicaTurn(reply.id, reply.text, False, t), *self._try_release(t)]

    def on_playback_stopped(self, reply_id: int, spoken_text: str, t: float) -> list[Action]:
        out: list[Action] = []
        reply = self._stopping.pop(reply_id, None)
        if reply is None and self._playing is not None and self._playing.id == reply_id:
            out = self._stop(t, tell=False)  # the session stopped it itself: still cancel its generation
            reply = self._stopping.pop(reply_id)
        if reply is None:
            return []
        return [*out, CommitReplicaTurn(reply.id, spoken_text, True, t), *self._try_release(t)]

    def finish(self, t: float, *, left: bool = False) -> list[Action]:
        """Session ending: unreleased work is cancelled; a released reply may play out. A paused one is no longer
        paused: the session sends the rest of it straight after what was heard (there is no input clock left to
        resume on). When the user `left`, nobody would hear it: the playing reply stops too (reason `ended`)."""
        if self._ended:
            return []
        out: list[Action] = []
        if left and self._playing is not None:
            out += self._stop(t, reason="ended")
        if self._pending is not None:
            out.append(self._cancel(self._pending, "ended", t))
        self._paused, self._resume_at = False, None
        self._ended, self._tentative, self._held = True, False, False
        return out

    # ---- transitions --------------------------------------------------------------------------------

    def _speculate(self, t: float) -> list[Action]:
        snap = self.snapshot
        if not self.speculation or not snap.key or self._pending is not None or snap == self._failed:
            return []
        return [self._start(snap, speculative=True, t=t)]

    def _set_transcript(self, text: str, t: float) -> list[Action]:
        old, self._transcript = self.snapshot, text
        new = self.snapshot
        out: list[Action] = []
        pending = self._pending
        if pending is not None and pending.committed:
            if not (self._held and new.key):
                return out  # the next turn's text before its speech: just remember it
            out.append(self._cancel(pending, "user_continued", t))  # the speech after the commit has words
        elif pending is not None and new != old:
            out.append(self._cancel(pending, "stale_transcript", t))
        if self._tentative:
            out += self._speculate(t)
        return out

    def _commit(self, t: float) -> list[Action]:
        self._tentative = False
        snap, pending = self.snapshot, self._pending
        onset, self._onset = self._onset, None
        spoken_until, self._spoken_until = self._spoken_until, None
        out: list[Action] = []
        ack = (
            self._stated_at is not None
            and onset is not None
            and onset - self._stated_at <= self.ack_window_s
            and (acknowledges(snap.key) or too_fast(snap.key, onset, spoken_until))
        )
        if not snap.key or ack:  # noise, a cough, or "right" to what was said: nothing to answer, nothing to write
            if pending is not None and not pending.committed:
                out.append(self._cancel(pending, "acknowledgement" if ack else "stale_transcript", t))
            self._transcript, self._held = "", False
            return out + self._resume(t) + self._try_release(t)
        if self._playing is not None:  # the user took the floor without a barge_in event
            out += self._stop(t)
        if pending is not None and (pending.committed or pending.snapshot != snap):
            reason = "superseded" if pending.committed else "stale_transcript"
            out.append(self._cancel(pending, reason, t))
        out.append(CommitUserTurn(snap.turn, snap.transcript, t))
        self._turn, self._transcript, self._held = self._turn + 1, "", False
        if self._pending is not None:
            self._pending.committed = True
        else:  # (also after a failed speculation: one ordinary attempt, no loop)
            out.append(self._start(snap, speculative=False, t=t, committed=True))
        return out + self._try_release(t)

    def _start(self, snap: Snapshot, *, speculative: bool, t: float, committed: bool = False) -> StartReply:
        self._pending = _Reply(self._next_id, snap, speculative, committed=committed)
        self._next_id += 1
        self.replies_started += 1
        return StartReply(self._pending.id, snap, speculative, t)

    def _cancel(self, reply: _Reply, reason: str, t: float) -> CancelReply:
        if reply is self._pending:
            self._pending = None
            self.wasted += 1
        self.cancelled += 1
        return CancelReply(reply.id, reason, t)

    def _try_release(self, t: float) -> list[Action]:
        reply = self._pending
        if reply is None or not reply.committed or not reply.playable or self._playing is not None or self._held:
            return []
        self._pending, self._playing, self._paused = None, reply, False
        self._stated_at = None  # the replica speaks again: what follows answers this reply
        self.replies_released += 1
        self.released_from_speculation += reply.speculative
        return [ReleaseReply(reply.id, t)]

    def _resume(self, t: float) -> list[Action]:
        """Resume the paused reply once the user has been quiet `resume_after_s` (see `tick`)."""
        if self._playing is not None and self._paused:
            self._resume_at = max(t, self._now) + self.resume_after_s
            if self.resume_after_s <= 0:
                return self.tick(self._resume_at)
        return []

    def _stop(self, t: float, *, tell: bool = True, reason: str = "barge_in") -> list[Action]:
        """Take the playing reply off the timeline; `on_playback_stopped` then says what was heard."""
        reply = self._playing
        assert reply is not None
        self._playing, self._paused, self._resume_at = None, False, None
        self._stopping[reply.id] = reply
        out: list[Action] = []
        if not reply.done:  # before the stop: the session still tracks the request it must cancel
            self.cancelled += 1
            out.append(CancelReply(reply.id, reason, t))
        return [*out, StopPlayback(reply.id, t)] if tell else out

    def _clear_floor(self, t: float) -> list[Action]:
        """Make way for a reply an interaction asked for: stop the replica, drop the reply in preparation (its
        turn's words are not lost: a committed turn is in the history, an uncommitted one still being spoken),
        and release nothing held for the user."""
        out: list[Action] = []
        if self._playing is not None:
            out += self._stop(t, reason="superseded")
        if self._pending is not None:
            out.append(self._cancel(self._pending, "superseded", t))
        self._held = False
        return out
