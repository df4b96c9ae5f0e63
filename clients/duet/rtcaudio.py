"""WebRTC audio to the session's form: any decoded frame (48 kHz stereo Opus, or whatever a peer sends) to
16 kHz mono PCM16 in 20 ms chunks, without drift.

Both ends of a call use it: the server turns the user's microphone into session chunks, and `duet call` turns
the replica's voice into 16 kHz samples for `reply.wav`. Resampling is exact (one stateful resampler for the
whole call, so 48 000 samples in are 16 000 out however the frames are cut), and the frames' own timestamps
keep the chunk count on the sender's clock: where packets were lost (a gap in `pts`), the gap is filled with
silence, so a few seconds of network loss leave the session's clock where the sender's is.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av
import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 320  # 20 ms
PTS_MODULO = 1 << 32  # RTP timestamps wrap here
MAX_GAP_S = 10.0  # a longer jump in `pts` is a new timeline (a reset sender), not a loss to fill


class Framer:
    """Decoded audio frames in, 16 kHz mono PCM16 chunks of `chunk` samples out (`push`), with lost stretches
    filled by silence. `samples_out` counts every sample produced (chunks handed out plus what is buffered)."""

    def __init__(self, rate: int = SAMPLE_RATE, chunk: int = CHUNK_SAMPLES, max_gap_s: float = MAX_GAP_S) -> None:
        self.rate = rate
        self.chunk = chunk
        self.max_gap_s = max_gap_s
        self._resampler: av.AudioResampler | None = None
        self._layout: tuple[int, str, str] | None = None  # (rate, layout, format) the resampler was made for
        self._next_pts: int | None = None  # where the next frame should start, in the frames' time base
        self._pending = np.zeros(0, dtype=np.int16)
        self.samples_out = 0
        self.filled = 0  # samples of silence put in for lost audio

    def push(self, frame: av.AudioFrame) -> list[bytes]:
        out: list[npt.NDArray[np.int16]] = []
        gap = self._gap(frame)
        if gap > 0:
            out.append(np.zeros(gap, dtype=np.int16))
            self.filled += gap
        out.append(self._resample(frame))
        return self._frame(out)

    def silence(self, seconds: float) -> list[bytes]:
        """Silence the caller knows was missed (a peer that stopped sending for `seconds`)."""
        n = max(round(seconds * self.rate), 0)
        self.filled += n
        return self._frame([np.zeros(n, dtype=np.int16)])

    def _gap(self, frame: av.AudioFrame) -> int:
        """Output samples missing before `frame`, judged by its pts against where the last frame ended."""
        pts, base = frame.pts, frame.time_base
        if base is None:
            return 0
        expected = self._next_pts
        step = round(frame.samples * Fraction(1, frame.sample_rate) / Fraction(base))
        if pts is None:  # an unstamped frame follows on from the last one
            self._next_pts = None if expected is None else (expected + step) % PTS_MODULO
            return 0
        self._next_pts = (pts + step) % PTS_MODULO
        if expected is None:
            return 0
        ahead = (pts - expected) % PTS_MODULO
        if ahead >= PTS_MODULO // 2:  # behind (a reordered or repeated frame): nothing was lost
            return 0
        seconds = float(ahead * Fraction(base))
        if seconds > self.max_gap_s:
            return 0
        return round(seconds * self.rate)

    def _resample(self, frame: av.AudioFrame) -> npt.NDArray[np.int16]:
        key = (frame.sample_rate, frame.layout.name, frame.format.name)
        if self._resampler is None or key != self._layout:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
            self._layout = key
        frame.pts = None  # the resampler must not stretch or pad on its own: gaps are handled above
        parts = [o.to_ndarray().reshape(-1) for o in self._resampler.resample(frame)]
        return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, dtype=np.int16)

    def _frame(self, parts: list[npt.NDArray[np.int16]]) -> list[bytes]:
        added = sum(p.shape[0] for p in parts)
        self.samples_out += added
        buf = np.concatenate([self._pending, *parts]) if added else self._pending
        n = buf.shape[0] // self.chunk * self.chunk
        self._pending = buf[n:]
        return [buf[i : i + self.chunk].astype("<i2").tobytes() for i in range(0, n, self.chunk)]


def pcm_frame(pcm: bytes, pts: int, rate: int = SAMPLE_RATE) -> av.AudioFrame:
    """PCM16 mono samples as an `av.AudioFrame` starting at sample `pts` (time base 1/rate)."""
    samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame


def opus_frame(pcm: bytes, pts: int, rate: int = SAMPLE_RATE) -> av.AudioFrame:
    """PCM16 mono samples as a frame to send over WebRTC: the same samples in both channels of a stereo frame.
    aiortc's Opus encoder works in stereo and would upmix a mono frame at -3 dB; a browser plays this at the
    level it was spoken."""
    samples = np.frombuffer(pcm, dtype="<i2")
    frame = av.AudioFrame.from_ndarray(np.repeat(samples, 2).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame


# aiortc's audio receiver holds a frame until 4 later ones have arrived (`JitterBuffer(prefetch=4)`): 80 ms
# added to every word, in both directions of a call. With a prefetch of 1 a frame is handed on as soon as the
# next one starts (20 ms: its buffer can tell a frame is complete no sooner). Reordering is as rare on the
# loopback and LAN paths Duet serves without TURN as it is harmless to Opus (a late frame is dropped).
RECEIVER_HOLD_FRAMES = 1


def prompt_audio(pc: Any) -> None:
    """Make every audio receiver of the peer connection `pc` hand frames on after one frame, not four."""
    from aiortc.jitterbuffer import JitterBuffer

    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind == "audio":
            if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
                raise RuntimeError("aiortc's RTCRtpReceiver changed: its audio jitter buffer cannot be set")
            receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=RECEIVER_HOLD_FRAMES)
