"""Acoustic echo handling for speaker bleed: the replica's own voice coming back through the user's microphone.

The server knows exactly what the replica said and where it sits on the session's sample clock (`play`), so
the mic chunk (`process`) can be cleaned before VAD and the floor model see it. Three stages, all cheap:

1. **Delay** — GCC-PHAT between the last second of mic audio and the far end, over lags 0..`max_delay_ms`,
   re-run while the replica plays (every `delay_every_ms` until locked, then every second such interval, and
   every half interval over half the window while the residual stops looking like echo). The phase transform
   whitens speech's harmonic spectrum, so the peak is sharp and near-end speech or noise (uncorrelated with the
   far end) does not move it. A new delay is taken only when the peak stands well above the rest of the
   correlation and a second estimate agrees, so a single bad window cannot throw a converged filter off.
2. **Linear filter** — a block frequency-domain NLMS over `filter_ms` taps, starting `pre_ms` before the
   estimated delay (the adaptive filter models only the room's reflections, not the device latency, so 64 ms
   of taps suffice at any delay up to 320 ms; a delay change just moves the window and keeps the taps). The
   block is the incoming chunk itself, so there is no added latency; per-bin power normalisation makes it
   converge on coloured speech in a few hundred ms. Two copies run (as in Speex's MDF and WebRTC's AEC):
   the *background* filter adapts, the *foreground* filter produces the output and is replaced by the
   background only while the background cancels clearly better. A double-talk detector freezes background
   adaptation once the filter has converged and the residual is no longer explained by echo (the user is
   talking); if the background diverges anyway it is reset from the foreground. A "double talk" that lasts
   longer than `dt_escape_ms` is treated as an echo-path change and adaptation resumes.
3. **Residual echo gate** — the linear filter cannot remove the reverberant tail beyond its taps or its own
   misadjustment, and Silero VAD fires even on quiet speech. Each chunk's residual power is compared with
   the echo it should contain (the echo estimate's envelope, decaying no faster than a room does, times the
   measured residual-to-echo leak): a chunk whose residual is consistent with echo only is attenuated by
   `suppress_db`; one with clearly more energy (the user) passes. Gains are ramped inside the chunk.

When no replica audio is near the chunk (nothing played in the last `max_delay_ms + filter_ms`, or only
samples below `silence_level`) the chunk is returned unchanged, bit for bit, so the floor model sees exactly
what it would without echo handling.

Cost per 20 ms chunk: five real FFTs of `fft_size` (2048) for the two filters plus the amortised GCC (three
FFTs of 32768 points, about 1 ms, every 500 ms while the replica plays); measured ~0.25 ms median per chunk.
Simplifications: a full-band gate (no per-band suppression, which would need overlap-add and add latency), so a
user more than ~8 dB below the bleed is gated with it; one delay per session (no clock-drift tracking).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft

I16 = npt.NDArray[np.int16]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]

_FULL_SCALE = 32768.0


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class _Ring:
    """Samples on the session clock, `cap` wide; a slot is valid only if it holds the sample index read."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        # Allocated at the first write (the far ring holds 20 s: 6 MB a session, most of a session's start cost,
        # and a session whose replica never speaks never needs it).
        self._buf: F32 | None = None
        self._tag: npt.NDArray[np.int64] | None = None  # which sample index each slot holds

    def write(self, start: int, x: F32) -> None:
        if self._buf is None or self._tag is None:
            self._buf = np.zeros(self.cap, dtype=np.float32)
            self._tag = np.full(self.cap, -1, dtype=np.int64)
        idx = np.arange(start, start + x.shape[0], dtype=np.int64)
        self._buf[idx % self.cap] = x
        self._tag[idx % self.cap] = idx

    def read(self, start: int, end: int) -> F32:
        """Samples [start, end); never-written (or overwritten) samples read as zeros."""
        if self._buf is None or self._tag is None:
            return np.zeros(max(end - start, 0), dtype=np.float32)
        idx = np.arange(start, end, dtype=np.int64)
        slot = idx % self.cap
        return np.where(self._tag[slot] == idx, self._buf[slot], np.float32(0.0)).astype(np.float32)


@dataclass(frozen=True)
class EchoStats:
    """Diagnostics after the last processed chunk."""

    delay: int | None  # estimated acoustic + device delay in samples (None until the first confident estimate)
    erle_db: float  # smoothed mic-to-output power ratio over recent echo-only chunks (linear filter + gate)
    linear_erle_db: float  # the same for the linear filter alone
    echo_only: bool  # last chunk: far end active, near end not (it was attenuated)
    far_active: bool  # last chunk: replica audio present in the filter's window
    passthrough: bool  # last chunk returned unchanged (no replica audio near it)


class EchoCanceller:
    """Per-session echo canceller. Pure and synchronous; `play` and `process` share the session sample clock."""

    def __init__(
        self,
        sample_rate: int = 16000,
        max_delay_ms: int = 320,
        filter_ms: int = 64,
        *,
        pre_ms: int = 8,
        max_chunk: int = 1024,
        horizon_s: float = 20.0,
        mu: float = 1.0,
        gcc_window_ms: int = 1024,
        delay_every_ms: int = 250,
        gcc_margin: float = 2.0,
        suppress_db: float = 40.0,
        silence_level: int = 8,
        dt_escape_ms: int = 1500,
        near_ratio_db: float = -8.0,
    ) -> None:
        self.sample_rate = sample_rate
        self.max_delay = max_delay_ms * sample_rate // 1000
        self.taps = filter_ms * sample_rate // 1000
        self.pre = pre_ms * sample_rate // 1000
        self.max_chunk = max_chunk
        self.fft_size = _next_pow2(self.taps + max_chunk)
        self.mu = mu
        self.gcc_window = gcc_window_ms * sample_rate // 1000
        self.delay_every = delay_every_ms * sample_rate // 1000
        self.gcc_margin = gcc_margin
        self.suppress = float(10 ** (-suppress_db / 20))
        self.silence = silence_level / _FULL_SCALE
        self.dt_escape = dt_escape_ms * sample_rate // 1000
        self.near_ratio = float(10 ** (near_ratio_db / 10))
        # The far end must hold what may be played ahead plus everything the filter and GCC look back on.
        self._lookback = self.max_delay + self.taps + self.gcc_window + max_chunk
        self._far = _Ring(_next_pow2(int(horizon_s * sample_rate) + self._lookback))
        self._mic = _Ring(_next_pow2(self.gcc_window + max_chunk))
        self._now = 0  # end of the last processed chunk
        bins = self.fft_size // 2 + 1
        self._w_bg = np.zeros(bins, dtype=np.complex128)  # background filter (adapts), frequency domain
        self._w_fg = np.zeros(bins, dtype=np.complex128)  # foreground filter (produces the output)
        self._power = np.zeros(bins)  # smoothed far-end power per bin, for NLMS normalisation
        self._delay: int | None = None
        self._candidate: int | None = None  # a delay seen once, waiting for a second estimate to agree
        self._next_gcc = 0
        self._suspect_until = 0  # until then the delay is re-checked often (the residual stopped being echo)
        self._far_active_run = 0  # samples of far-end activity since the last GCC run (enough signal to use)
        self._e_bg = 0.0  # smoothed residual powers of the two filters, for the copy/reset decisions
        self._e_fg = 0.0
        self._echo_env = 0.0  # envelope of the echo estimate's power, decays like a room tail
        self._leak = 1.0  # residual-to-echo power ratio on echo-only chunks (linear filter misadjustment)
        self._converged = False
        self._dt_run = 0  # samples of continuous double talk (adaptation frozen)
        self._gain = 1.0  # gate gain at the end of the last chunk
        self._noise = 0.0  # mic noise floor power
        self._noise_rise = 10 ** (3 / 10 / sample_rate)
        self._erle_in = 1e-12  # smoothed mic / linear residual / output powers over echo-only chunks
        self._erle_lin = 1e-12
        self._erle_out = 1e-12
        self._echo_only = False
        self._far_active = False
        self._passthrough = True
        # Decay of the echo envelope per sample: 60 dB over 300 ms, a slow (reverberant) room.
        self._env_decay_per_sample = 10 ** (-60 / 10 / (0.3 * sample_rate))

    # ---------------------------------------------------------------- far end

    def play(self, start_sample: int, pcm: I16) -> None:
        """Place replica audio on the session clock at `start_sample` (overwrites what was there)."""
        if pcm.ndim != 1:
            raise ValueError(f"pcm must be 1-D, got shape {list(pcm.shape)}")
        end = start_sample + pcm.shape[0]
        if end - (self._now - self._lookback) > self._far.cap:
            raise ValueError(
                f"replica audio ending at sample {end} is more than {self._far.cap - self._lookback} samples "
                f"ahead of the mic (at {self._now}); raise horizon_s"
            )
        self._far.write(start_sample, pcm.astype(np.float32) / _FULL_SCALE)

    # ---------------------------------------------------------------- near end

    @property
    def stats(self) -> EchoStats:
        return EchoStats(
            delay=self._delay,
            erle_db=float(10 * np.log10(self._erle_in / self._erle_out)),
            linear_erle_db=float(10 * np.log10(self._erle_in / self._erle_lin)),
            echo_only=self._echo_only,
            far_active=self._far_active,
            passthrough=self._passthrough,
        )

    def process(self, start_sample: int, mic: I16) -> I16:
        """Echo-reduced copy of the mic chunk [start_sample, start_sample + len); the chunk itself if no replica."""
        if mic.ndim != 1:
            raise ValueError(f"mic must be 1-D, got shape {list(mic.shape)}")
        n = mic.shape[0]
        end = start_sample + n
        y = mic.astype(np.float32) / _FULL_SCALE
        self._mic.write(start_sample, y)
        self._now = end
        p_mic = float(np.mean(y.astype(np.float64) ** 2)) + 1e-12
        # Noise floor: follows the mic's power down at once, up by 3 dB/s (minimum statistics, simplified).
        self._noise = min(p_mic, self._noise * self._noise_rise**n) if self._noise > 0 else p_mic
        near_far = self._far.read(start_sample - self.max_delay - self.taps, end)
        if not np.any(np.abs(near_far) > self.silence):
            self._passthrough, self._echo_only, self._far_active = True, False, False
            self._gain = 1.0
            self._echo_env *= self._env_decay_per_sample**n
            return mic
        self._passthrough = False
        self._far_active_run += n
        # While the residual is not explained by the echo (double talk, or a path that moved), look at the delay
        # twice as often over half the window, so a changed delay is found within about a second.
        if self._dt_run >= self.sample_rate // 8:
            self._suspect_until = end + self.sample_rate
        suspect = end < self._suspect_until
        window = self.gcc_window // 2 if suspect else self.gcc_window
        if end >= self._next_gcc and self._far_active_run >= window // 4:
            self._estimate_delay(end, window)
            if suspect:
                self._next_gcc = min(self._next_gcc, end + self.delay_every // 2)
        if self._delay is None:
            # No alignment yet: nothing to cancel with, and no basis to call anything echo. Pass through.
            self._echo_only, self._far_active = False, True
            return mic
        out = np.empty(n, dtype=np.float64)
        for a in range(0, n, self.max_chunk):
            b = min(n, a + self.max_chunk)
            out[a:b] = self._block(start_sample + a, y[a:b].astype(np.float64))
        pcm: I16 = np.clip(np.round(out * _FULL_SCALE), -32768, 32767).astype(np.int16)
        return pcm

    # ---------------------------------------------------------------- delay

    def _estimate_delay(self, end: int, w: int) -> None:
        """GCC-PHAT over the last `w` mic samples; adopt a new delay once two confident estimates agree."""
        self._next_gcc = end + self.delay_every * (1 if self._delay is None else 2)
        self._far_active_run = 0
        d, nfft = self.max_delay, _next_pow2(w + self.max_delay)
        x = self._far.read(end - w - d, end)
        y = self._mic.read(end - w, end)
        fx = scipy.fft.rfft(x.astype(np.float64), nfft)
        fy = scipy.fft.rfft(y.astype(np.float64), nfft)
        cross = np.conj(fy) * fx
        mag = np.abs(cross)
        cross /= mag + 1e-3 * float(mag.mean()) + 1e-20
        c = scipy.fft.irfft(cross, nfft)[: d + 1]  # c[m]: mic at t against far end at t - (d - m)
        peak = int(np.argmax(c))
        # Reflections cluster within a few ms of the direct path; the peak must beat everything farther away.
        cluster = self.pre
        rest = np.concatenate([c[: max(0, peak - cluster)], c[peak + cluster + 1 :]])
        if rest.size == 0 or c[peak] < self.gcc_margin * float(np.max(np.abs(rest))):
            return
        lag = d - peak
        same = cluster // 2  # a move smaller than this is the same path (or a neighbouring reflection)
        if self._delay is not None and abs(lag - self._delay) <= same:
            self._candidate = None
            return
        if self._delay is None or (self._candidate is not None and abs(lag - self._candidate) <= same):
            self._delay, self._candidate = lag, None
            self._next_gcc = end + self.delay_every
        else:
            self._candidate = lag
            self._next_gcc = end + self.delay_every

    # ---------------------------------------------------------------- filter and gate

    def _block(self, start: int, y: F64) -> F64:
        assert self._delay is not None
        m = y.shape[0]
        nfft = self.fft_size
        offset = max(0, self._delay - self.pre)  # the filter's tap 0 sits this far behind the mic
        x = self._far.read(start + m - offset - nfft, start + m - offset).astype(np.float64)
        fx = scipy.fft.rfft(x)
        echo_bg = scipy.fft.irfft(fx * self._w_bg, nfft)[nfft - m :]
        echo_fg = scipy.fft.irfft(fx * self._w_fg, nfft)[nfft - m :]
        e_bg = y - echo_bg
        e_fg = y - echo_fg
        p_y = float(np.mean(y * y)) + 1e-12
        p_bg = float(np.mean(e_bg * e_bg)) + 1e-12
        p_fg = float(np.mean(e_fg * e_fg)) + 1e-12
        p_echo = float(np.mean(echo_fg * echo_fg))
        p_x = float(np.mean(x[-(m + self.taps) :] ** 2))
        far_active = p_x > self.silence**2 * 4

        # Residual gate: is the residual (above the noise floor) more than the echo the filter leaves behind?
        self._echo_env = max(p_echo, self._echo_env * self._env_decay_per_sample**m)
        noise = self._noise
        excess = max(p_fg - 2.0 * noise, 0.0)
        # The user is there only if the residual is both above the echo left behind and not much below the mic:
        # the filter removes most of an echo-only chunk but cannot touch the user's voice.
        near = not self._converged or (excess > 4.0 * self._leak * self._echo_env and p_fg > self.near_ratio * p_y)
        echo_only = far_active and not near
        gain = self.suppress if not near else 1.0

        # Double talk: freeze the background once it has converged and the residual is not echo.
        self._dt_run = self._dt_run + m if (near and self._converged) else 0
        adapt = far_active and (not self._converged or not near or self._dt_run > self.dt_escape)
        if adapt:
            self._power = 0.7 * self._power + 0.3 * (fx.real**2 + fx.imag**2)
            reg = 1e-2 * float(self._power.mean()) + nfft * 1e-8
            grad_spec = np.conj(fx) * scipy.fft.rfft(np.concatenate([np.zeros(nfft - m), e_bg]))
            grad = scipy.fft.irfft(grad_spec / (self._power + reg), nfft)[: self.taps]
            self._w_bg += self.mu * (m / (nfft - self.taps)) * scipy.fft.rfft(grad, nfft)

        # Foreground follows the background only while it is clearly better; a diverged background is reset.
        self._e_bg = 0.6 * self._e_bg + 0.4 * p_bg
        self._e_fg = 0.6 * self._e_fg + 0.4 * p_fg
        if far_active and self._e_bg < 0.7 * self._e_fg:
            self._w_fg = self._w_bg.copy()
            self._e_fg = self._e_bg
        elif far_active and self._e_bg > 8.0 * self._e_fg:
            self._w_bg = self._w_fg.copy()
            self._e_bg = self._e_fg

        if far_active and p_echo > noise:
            if not self._converged and p_y > 4.0 * noise and p_fg - noise < 0.4 * (p_y - noise):
                self._converged = True  # the filter removes 4 dB of what is above the noise: it explains the echo
            if echo_only or not self._converged:
                ratio = max(p_fg - noise, 0.0) / p_echo
                self._leak = float(np.clip(0.8 * self._leak + 0.2 * ratio, 1e-3, 1.0))

        # A filter still aligned to a delay that has moved adds echo instead of removing it: then pass the mic.
        out = e_fg if p_fg <= p_y else y
        if gain != 1.0 or self._gain != 1.0:
            out = e_fg * np.linspace(self._gain, gain, m)
        self._gain = gain
        if echo_only:
            self._erle_in = 0.95 * self._erle_in + 0.05 * p_y
            self._erle_lin = 0.95 * self._erle_lin + 0.05 * p_fg
            self._erle_out = 0.95 * self._erle_out + 0.05 * (float(np.mean(out * out)) + 1e-12)
        self._echo_only, self._far_active = echo_only, far_active
        return out
