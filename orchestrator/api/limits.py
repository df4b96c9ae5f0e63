"""Admission bounds that keep one client from taking what others need: audio pacing, byte and start rates,
camera frame rate. Pure decisions: each takes the time as an argument.
"""

from __future__ import annotations


class TokenBucket:
    """`rate` units per wall second with `capacity` units of slack. For audio (the audio clock against the wall
    clock: 1 s of audio per second, a burst of a client catching up after a network hiccup) and for bytes.
    `take(n, now)` returns how long to wait before accepting `n` units so that the stream never runs further
    ahead than the capacity."""

    def __init__(self, capacity: float, rate: float = 1.0) -> None:
        self.burst = capacity
        self.rate = rate
        self._tokens = capacity
        self._at: float | None = None

    def _refill(self, now: float) -> None:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + max(now - self._at, 0.0) * self.rate)
        self._at = now if self._at is None else max(now, self._at)

    def admit(self, n: float, now: float) -> bool:
        """Take `n` if the bucket holds them; a refusal takes nothing (a rate limit, not a queue)."""
        self._refill(now)
        if self._tokens < n - 1e-9:
            return False
        self._tokens -= n
        return True

    def take(self, audio_s: float, now: float) -> float:
        self._refill(now)
        self._tokens -= audio_s
        if self._tokens >= -1e-9:  # (float dust from summing 20 ms chunks is no reason to wait)
            return 0.0
        wait = -self._tokens / self.rate
        self._tokens, self._at = 0.0, now + wait  # the wait itself refills exactly the deficit
        return wait


class AudioClock:
    """How far a stream's audio runs ahead of the wall clock since it began: `take(d, now)` returns how
    long to wait before accepting `d` more seconds so that it stays at most `burst_s` ahead. A stream that fell
    behind (the server stalled, or the client paused) may catch up at any speed: only running ahead costs."""

    def __init__(self, burst_s: float, start: float | None = None) -> None:
        self.burst = burst_s
        self.audio_s = 0.0
        # From the stream's `start` (`SessionService.Converse`) rather than the first chunk read: on a loaded
        # server the session may be admitted and built, and its first chunk read, seconds later, and the chunks
        # queued behind it would look like a client running ahead (a live call then paced, and kept in the bulk
        # lane for good).
        self.first: float | None = start

    def ahead(self, now: float) -> float:
        return 0.0 if self.first is None else self.audio_s - (now - self.first)

    def take(self, audio_s: float, now: float) -> float:
        if self.first is None:
            self.first = now
        self.audio_s += audio_s
        over = self.ahead(now) - self.burst
        return over if over > 1e-9 else 0.0


class FrameRate:
    """Admits at most `fps` frames per second (wall clock); frames in between are dropped, not queued."""

    def __init__(self, fps: float) -> None:
        self._gap = 1.0 / fps
        self._next = float("-inf")

    def admit(self, now: float) -> bool:
        if now < self._next:
            return False
        # A small allowance for jitter: a 30 fps client whose frames arrive 1 ms early is not throttled.
        self._next = now + self._gap * 0.9
        return True
