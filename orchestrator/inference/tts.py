"""Piper text-to-speech for the `tts` model: text -> sentences -> 16 kHz PCM16 with phoneme timings.

The voice (a VITS ONNX model, 22.05 kHz) runs through piper's phonemizer (espeak-ng) and our own onnxruntime
session, so the thread count is ours. Piper's alignment support needs the `onnx` package to expose the
duration tensor; `add_alignment_output` does the same edit on the raw protobuf bytes instead (the duration
tensor is the output of the graph's only `Ceil` node), which keeps `onnx` out of the runtime.

Synthesis is deterministic: the VITS noise scales default to 0 here, because onnxruntime's RandomNormalLike
has no per-call seed, so any noise makes every call differ. With noise 0 the voice speaks its mean prosody
(a little flatter) and the same text always gives the same audio, which makes caching and tests possible.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from orchestrator.inference.device import CPU_EP, Provider
from orchestrator.speech.clauses import normalize, split_text

I16 = npt.NDArray[np.int16]
F32 = npt.NDArray[np.float32]

SAMPLE_RATE: Final = 16_000  # the session audio rate
MAX_TEXT_CHARS: Final = 2_000  # about two minutes of speech; a reply clause is far shorter
VOICE_NAME: Final = re.compile(r"^[A-Za-z0-9_-]+$")  # a file stem in the voices folder, never a path
STRESS: Final = frozenset("ˈˌ")
LENGTH: Final = frozenset("ː")
PEAK: Final = 0.9  # per-sentence peak level; headroom for the resampler's overshoot


@dataclass(frozen=True)
class PhonemeTiming:
    phoneme: str  # espeak IPA symbol; "^" / "$" are the leading / trailing silence, " " a word gap
    start: float  # seconds from the start of the sentence's audio
    end: float


@dataclass(frozen=True)
class SpokenSentence:
    text: str
    pcm: I16  # 16 kHz mono
    phonemes: tuple[PhonemeTiming, ...]

    @property
    def duration(self) -> float:
        return self.pcm.shape[0] / SAMPLE_RATE

    def phonemes_json(self) -> str:
        """The PHONEMES output: [{"p": phoneme, "s": start_s, "e": end_s}, ...]."""
        return json.dumps(
            [{"p": p.phoneme, "s": round(p.start, 4), "e": round(p.end, 4)} for p in self.phonemes],
            ensure_ascii=False,
        )


def sentences(text: str, clause_max_chars: int = 160, max_chars: int = MAX_TEXT_CHARS) -> list[str]:
    """Validate and split the request text into the sentences that become one response each."""
    if len(text) > max_chars:
        raise ValueError(f"TEXT is {len(text)} characters; at most {max_chars} are allowed per request")
    if not normalize(text):
        raise ValueError("TEXT is empty (nothing speakable after removing markdown and emoji)")
    return split_text(text, first_clause_min_chars=None, clause_max_chars=clause_max_chars)


def resample_to_16k(audio: F32, rate: int) -> I16:
    """Float audio in [-1, 1] at `rate` -> int16 at 16 kHz with a polyphase (Kaiser-windowed FIR) resampler."""
    if rate != SAMPLE_RATE:
        g = int(np.gcd(rate, SAMPLE_RATE))
        audio = resample_poly(audio.astype(np.float64), SAMPLE_RATE // g, rate // g)
    pcm: I16 = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
    return pcm


def phoneme_timings(
    phoneme_ids: list[int], id_samples: npt.NDArray[Any], id_to_phoneme: dict[int, str], pad_id: int, rate: int
) -> tuple[PhonemeTiming, ...]:
    """Per-phoneme spans from VITS's per-id sample counts (piper interleaves a pad id after every phoneme).

    The spans tile the audio from 0 to its end with no gaps: a pad's samples belong to the phoneme before it
    (its tail); a stress mark (ˈ ˌ), which VITS also gives frames, is the onset of the phoneme after it; a
    length mark (ː) extends the phoneme before it ("iː"). What is left are sounds a face can show.
    """
    spans: list[list[Any]] = []  # [phoneme, start, end] in samples
    pos = 0
    onset: int | None = None  # start of pending stress marks
    for pid, n in zip(phoneme_ids, id_samples.tolist(), strict=True):
        p, end = id_to_phoneme.get(pid, "?"), pos + int(n)
        if pid == pad_id:
            if onset is None and spans:  # (after a stress mark the pad is part of the onset)
                spans[-1][2] = end
        elif p in STRESS:
            onset = pos if onset is None else onset
        elif p in LENGTH and spans:
            spans[-1][0] += p
            spans[-1][2] = end
        else:
            spans.append([p, pos if onset is None else onset, end])
            onset = None
        pos = end
    if onset is not None and spans:  # a stress mark with nothing after it (never seen): keep the audio tiled
        spans[-1][2] = pos
    return tuple(PhonemeTiming(p, s / rate, e / rate) for p, s, e in spans if e > s)


# --- the alignment output, added on the protobuf wire format (ModelProto.graph=7, GraphProto.node=1,
# GraphProto.output=12, NodeProto.output=2, NodeProto.op_type=4, ValueInfoProto.name=1) ---


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, tag offset, value start, value end) of each field of the message in buf[start:end]."""
    i = start
    while i < end:
        tag_at = i
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            _, j = _read_varint(buf, i)
        elif wire == 1:
            j = i + 8
        elif wire == 5:
            j = i + 4
        elif wire == 2:
            n, i = _read_varint(buf, i)
            j = i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, tag_at, i, j
        i = j


def add_alignment_output(model: bytes) -> bytes:
    """Expose the output of the graph's only `Ceil` node (frames per phoneme id) as an extra graph output."""
    graph = next(((t, s, e) for num, t, s, e in _fields(model, 0, len(model)) if num == 7), None)
    if graph is None:
        raise ValueError("not an ONNX model: no graph")
    tag_at, start, end = graph
    ceil: list[str] = []
    outputs: list[str] = []
    for num, _, s, e in _fields(model, start, end):
        if num == 12:
            outputs += [model[fs:fe].decode() for n, _, fs, fe in _fields(model, s, e) if n == 1]
        if num != 1:
            continue
        fields = [(n, model[fs:fe]) for n, _, fs, fe in _fields(model, s, e) if n in (2, 4)]
        if (4, b"Ceil") in fields:
            ceil += [v.decode() for n, v in fields if n == 2]
    if len(ceil) != 1:
        raise ValueError(f"expected one Ceil node output (the durations), found {ceil}")
    if ceil[0] in outputs:
        return model  # already patched (piper.patch_voice_with_alignment)
    name = ceil[0].encode()
    value_info = b"\x0a" + _varint(len(name)) + name
    new_graph = model[start:end] + b"\x62" + _varint(len(value_info)) + value_info
    return model[:tag_at] + b"\x3a" + _varint(len(new_graph)) + new_graph + model[end:]


def onnx_session(model: bytes, threads: int, providers: Sequence[Provider] = (CPU_EP,)) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No memory pattern: it plans (and keeps) buffers per input shape, and every clause has a length of its own.
    # Without it the voice holds ~45 MiB less after a few hundred clauses, at the same speed (docs/robustness.md).
    so.enable_mem_pattern = False
    return ort.InferenceSession(model, sess_options=so, providers=list(providers))


class PiperSpeaker:
    """One loaded piper voice that turns a sentence into 16 kHz audio with phoneme timings."""

    def __init__(
        self,
        model_path: str | Path,
        threads: int = 1,
        noise_scale: float = 0.0,
        noise_w: float = 0.0,
        providers: Sequence[Provider] = (CPU_EP,),
    ):
        from piper import PiperVoice
        from piper.config import PiperConfig, SynthesisConfig

        path = Path(model_path)
        config = PiperConfig.from_dict(json.loads(Path(f"{path}.json").read_text(encoding="utf-8")))
        self.providers = list(providers)  # asked for; the session's get_providers() is what onnxruntime gave
        session = onnx_session(add_alignment_output(path.read_bytes()), threads, self.providers)
        self.voice = PiperVoice(session=session, config=config)
        self.syn_config = SynthesisConfig(noise_scale=noise_scale, noise_w_scale=noise_w, normalize_audio=False)
        self.rate = config.sample_rate
        self._id_to_phoneme = {ids[0]: p for p, ids in config.phoneme_id_map.items() if len(ids) == 1}
        self._pad_id = config.phoneme_id_map["_"][0]

    def synthesize(self, text: str) -> SpokenSentence:
        """Speak one sentence (piper may phonemize it as several; their audio is joined)."""
        audio: list[F32] = []
        timings: list[PhonemeTiming] = []
        offset = 0
        for chunk in self.voice.synthesize(text, syn_config=self.syn_config, include_alignments=True):
            samples = chunk.phoneme_id_samples
            if samples is None or len(samples) != len(chunk.phoneme_ids):
                raise RuntimeError("the voice model gave no phoneme durations")
            span = phoneme_timings(chunk.phoneme_ids, samples, self._id_to_phoneme, self._pad_id, self.rate)
            t0 = offset / self.rate
            timings += [PhonemeTiming(p.phoneme, p.start + t0, p.end + t0) for p in span]
            audio.append(chunk.audio_float_array)
            offset += chunk.audio_float_array.shape[0]
        if not audio:
            return SpokenSentence(text, np.zeros(0, np.int16), ())
        raw = np.concatenate(audio)
        peak = float(np.max(np.abs(raw)))
        # One gain per sentence (VITS levels drift between sentences); never amplify near-silence.
        gain = PEAK / peak if peak > 1e-3 else 1.0
        return SpokenSentence(text, resample_to_16k(raw * gain, self.rate), tuple(timings))


class VoiceLibrary:
    """The voices in one folder (`<name>.onnx` + `<name>.onnx.json`), loaded on first use and kept."""

    def __init__(self, folder: str | Path, default: str, **speaker_options: Any) -> None:
        self.folder = Path(folder)
        self.default = default
        self._options = speaker_options
        self._loaded: dict[str, PiperSpeaker] = {}
        self.get(default)  # fail at model load, not on the first request

    def available(self) -> list[str]:
        return sorted(p.name.removesuffix(".onnx") for p in self.folder.glob("*.onnx") if Path(f"{p}.json").exists())

    def get(self, name: str = "") -> PiperSpeaker:
        name = name or self.default
        if name not in self._loaded:
            path = self.folder / f"{name}.onnx"
            if not VOICE_NAME.match(name) or not path.is_file() or not Path(f"{path}.json").is_file():
                raise ValueError(f"unknown voice {name!r}; available: {', '.join(self.available()) or 'none'}")
            self._loaded[name] = PiperSpeaker(path, **self._options)
        return self._loaded[name]
