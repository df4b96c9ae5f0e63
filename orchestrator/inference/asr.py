"""Whisper (CTranslate2) speech recognition for short utterances, batched across sessions, tuned for latency.

Whisper is trained on 30 s windows, and encoding the full 3000-frame window is most of the cost of a
short utterance (~1.2 s for 1-4 s of speech on this 2-core CPU under load, measured). CTranslate2 accepts
shorter mel inputs, so the encoder sees only the utterance plus `margin_s` of silence, rounded up to
`bucket_s` and at least `min_window_s` (measured: 5-8x faster, WER a few points worse on our noisy
synthetic turns; the table is in the ASR report). Three things keep a short window from going wrong:

- The silence after the utterance is real log-mel silence: the audio is zero-padded *before* the
  features are computed, so padded frames sit at Whisper's floor value as in training, instead of the
  all-zero features that faster-whisper pads with (zero features on a short window made the decoder loop:
  "No no no no ...").
- Decoding keeps timestamp tokens: the text ends at a segment that starts past the end of the audio or
  repeats the segment before it (the loop Whisper falls into on short windows), and `max_length` grows
  with the audio length, so a loop cannot run for long.
- Windows are never shorter than `min_window_s`: on 1-2 s windows short answers ("Yes.", "Sure, go
  ahead.") came back empty or garbled.

English fixed, no language detection and no VAD filter (our own VAD segments). Decodes that ask for word
timings (a session's final decode of a turn) use a beam search of `final_beam_size` (5); the others (the
partials while the user speaks) are greedy: beam 5 took the final transcripts' word error rate from 11.9 % to
10.7 % on the dev calls for ~1.7x the decode time (docs/transcripts.md), and only finals are kept.
Word timings and probabilities come from CTranslate2's cross-attention alignment, as faster-whisper does;
they cost an extra decoder pass, so callers that need only text can skip them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from orchestrator.inference.device import CPU, ModelDevice

SAMPLE_RATE: Final = 16_000
HOP: Final = 160  # samples per mel frame (10 ms)
FULL_FRAMES: Final = 3000  # Whisper's 30 s window
MAX_SECONDS: Final = 28.0  # longest utterance accepted (room for the margin inside the 30 s window)
TIME_PER_TIMESTAMP: Final = 0.02  # seconds per Whisper timestamp token
TOKENS_PER_SECOND: Final = 50  # encoder positions per second (alignment time index)
# faster-whisper's defaults for attaching punctuation to the neighbouring word.
PREPEND_PUNCTUATION: Final = "\"'“¿([{-"
APPEND_PUNCTUATION: Final = "\"'.。,，!！?？:：”)]}、"

I16 = npt.NDArray[np.int16]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class DecodeOptions:
    """How an utterance is decoded; the defaults are the measured fastest at near-equal accuracy."""

    margin_s: float = 1.0  # silence after the utterance that the encoder sees (its cue that speech ended)
    bucket_s: float = 1.0  # encoder lengths are rounded up to this; utterances in one bucket share a batch
    min_window_s: float = 4.0  # the encoder never sees less: 2 s windows lost short answers ("Yes." -> "")
    min_audio_s: float = 0.1  # shorter audio is "" without running the model
    silence_rms: float = 1e-4  # audio quieter than this (RMS, full scale 1.0) is "" without running the model
    tokens_per_s: float = 10.0  # generation cap: extra_tokens + tokens_per_s * seconds (English is ~3-4/s)
    extra_tokens: int = 12
    end_tolerance_s: float = 0.1  # a segment starting later than this past the audio's end is a hallucination
    no_speech_threshold: float = 0.6  # with avg log-prob below logprob_threshold: treat as no speech
    logprob_threshold: float = -1.0
    word_timestamps: bool = True
    prompt_tokens: int = 64  # tokens of prompt kept (Whisper allows 223; fewer decode faster)
    beam_size: int = 1  # decodes without word timings (a session's partials): greedy
    final_beam_size: int = 5  # decodes with word timings (a session asks for them on its finals only)


@dataclass(frozen=True)
class RecognizedWord:
    text: str
    start: float  # seconds from the start of the utterance's audio
    end: float
    probability: float


@dataclass(frozen=True)
class Recognition:
    text: str
    words: tuple[RecognizedWord, ...] = ()


EMPTY: Final = Recognition("")


def encoder_frames(n_samples: int, options: DecodeOptions) -> int:
    """Mel frames the encoder sees for an utterance: its length + margin, rounded up to the bucket, ≤ 3000."""
    bucket = max(1, round(options.bucket_s * SAMPLE_RATE / HOP))
    wanted = math.ceil(n_samples / HOP) + round(options.margin_s * SAMPLE_RATE / HOP)
    shortest = max(bucket, round(options.min_window_s * SAMPLE_RATE / HOP))
    return int(min(FULL_FRAMES, max(shortest, math.ceil(wanted / bucket) * bucket)))


def check_audio(audio: npt.NDArray[Any]) -> None:
    """Raise ValueError with a clear message for anything but one utterance of ≤ 28 s of int16 PCM."""
    if audio.dtype != np.int16:
        raise ValueError(f"AUDIO must be int16 PCM, got {audio.dtype}")
    if audio.ndim != 1:
        raise ValueError(f"AUDIO must be one utterance (1-D), got shape {list(audio.shape)}")
    if audio.shape[0] > MAX_SECONDS * SAMPLE_RATE:
        raise ValueError(f"AUDIO is {audio.shape[0] / SAMPLE_RATE:.1f} s; at most {MAX_SECONDS:.0f} s per utterance")


def is_silent(audio: I16, options: DecodeOptions) -> bool:
    """Too short or too quiet to hold a word: skip the model (Whisper would invent "Thank you.")."""
    if audio.shape[0] < options.min_audio_s * SAMPLE_RATE:
        return True
    rms = float(np.sqrt(np.mean(np.square(audio.astype(np.float64) / 32768.0))))
    return rms < options.silence_rms


def cut_at_audio_end(
    tokens: Sequence[int], timestamp_begin: int, eot: int, audio_s: float, tolerance_s: float
) -> list[int]:
    """The text tokens of the segments Whisper really heard; timestamps dropped.

    On a short encoder window Whisper sometimes finishes the utterance and then loops, repeating it as new
    segments ("That's right.<|1.00|><|1.00|> That's right.<|2.00|>..."), measured on 6 of 94 dev turns.
    Decoding stops at the first segment that starts past the audio's end (+ `tolerance_s`) or that repeats
    the segment before it (the same tokens, or a prefix of them when the loop hit the length cap).
    """
    segments: list[list[int]] = [[]]
    for t in tokens:
        if t >= timestamp_begin:
            if segments[-1]:  # a timestamp after text closes the segment
                segments.append([])
            if (t - timestamp_begin) * TIME_PER_TIMESTAMP > audio_s + tolerance_s:
                break
            continue
        if t >= eot:  # eot and the other special tokens end the text
            break
        segments[-1].append(t)
    text: list[int] = []
    previous: list[int] = []
    for seg in segments:
        if not seg or (previous and seg == previous[: len(seg)]):
            break
        text.extend(seg)
        previous = seg
    return text


def collapse_loops(
    tokens: list[int], min_repeats: int = 3, max_ngram: int | None = None, long_ngram: int = 4
) -> list[int]:
    """Cut a decoding loop: a run of tokens repeated in a row is kept once and the text ends there. Greedy
    Whisper loops on short or cut windows ("the new address, the new address, ..."; "can you check that for
    me. Can you check that for me."), and sometimes over a whole turn. A phrase of `long_ngram` tokens or more
    counts after two occurrences (people rarely say a whole phrase twice running), a shorter one after
    `min_repeats` ("no, no" is real). Phrases of any length count (`max_ngram` None): until 2026-12-05 they
    were capped at 12 tokens, and a 13-word turn decoded twice went through (issue 12)."""
    n = len(tokens)
    for start in range(n):
        longest = (n - start) // 2 if max_ngram is None else max_ngram
        for size in range(1, longest + 1):
            repeats = 2 if size >= long_ngram else min_repeats
            if start + size * repeats > n or tokens[start + size] != tokens[start]:
                continue
            gram = tokens[start : start + size]
            if all(tokens[start + k * size : start + (k + 1) * size] == gram for k in range(1, repeats)):
                return tokens[: start + size]
    return tokens


def collapse_repeated_words(text: str, min_words: int = 3, max_words: int | None = None) -> str:
    """The same loop cut at the word level, where case and punctuation differ between the copies ("can you
    check that for me. Can you check that for me."): a phrase of `min_words` or more words said twice in a
    row is kept once, and the text ends there. Any length counts (`max_words` None; see `collapse_loops`).
    A shorter phrase counts when it holds a number of two digits or more ("$210, $210."; "20 dollars 20
    dollars"; "10mg 10mg"): nobody says an amount twice running, while "no, no" and "5 5" are speech. A text
    that ends inside a second copy (the loop ran into the length cap) is cut as well."""
    words = text.split()
    norm = [w.strip(".,!?;:\"'").lower() for w in words]
    n = len(words)
    for start in range(n):
        longest = (n - start) // 2 if max_words is None else max_words
        for size in range(1, longest + 1):
            if start + 2 * size > n:
                break
            if norm[start + size] != norm[start] or norm[start : start + size] != norm[start + size : start + 2 * size]:
                continue
            if size >= min_words or any(sum(c.isdigit() for c in w) >= 2 for w in norm[start : start + size]):
                return " ".join(words[: start + size])
        # The loop cut by the length cap: the text ends inside a second copy of a phrase (>= min_words of it).
        for size in range(2 * min_words, n - start):
            rest = n - start - size
            if (
                min_words <= rest < size
                and norm[start + size] == norm[start]
                and norm[start : start + rest] == norm[start + size :]
            ):
                return " ".join(words[: start + size])
    return text


def merge_punctuation(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per word of the text: attach leading punctuation to the next word, and anything that does not
    start with a space to the word before it. Whisper's word splitter cuts at punctuation, so "558-0312." comes
    as " 558", "-0312", "." and "sam.ly" as " sam", ".ly"; left apart, the list had more entries than the text
    has words, and cutting it to the text's length lost the turn's last words (issue 12)."""
    merged: list[dict[str, Any]] = []
    pending_prefix: dict[str, Any] | None = None
    for w in words:
        stripped = w["word"].strip()
        if pending_prefix is None and merged and stripped and not w["word"].startswith(" "):
            merged[-1]["word"] += w["word"]
            merged[-1]["probs"].extend(w["probs"])
            if "end" in w:
                merged[-1]["end"] = w["end"]
            continue
        if stripped and all(c in PREPEND_PUNCTUATION for c in stripped) and w["word"].startswith(" "):
            pending_prefix = w
            continue
        if pending_prefix is not None:
            text = " " + (pending_prefix["word"] + w["word"].lstrip()).lstrip()
            w = {**w, "word": text, "probs": pending_prefix["probs"] + w["probs"]}  # noqa: PLW2901
            pending_prefix = None
        merged.append(w)
    return merged


def words_from_alignment(
    tokenizer: Any, text_tokens: list[int], alignments: Sequence[tuple[int, int]], token_probs: Sequence[float]
) -> tuple[RecognizedWord, ...]:
    """Word timings from the cross-attention alignment path (same maths as faster-whisper's find_alignment)."""
    words, word_tokens = tokenizer.split_to_word_tokens([*text_tokens, tokenizer.eot])
    if len(word_tokens) <= 1 or not alignments:
        return ()
    text_idx = np.array([a[0] for a in alignments])
    time_idx = np.array([a[1] for a in alignments])
    # The time at which the path moves to each next token is that token's start.
    jumps = np.pad(np.diff(text_idx), (1, 0), constant_values=1).astype(bool)
    jump_times = time_idx[jumps] / TOKENS_PER_SECOND
    bounds = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    if jump_times.shape[0] <= bounds[-1]:  # a path that skipped tokens: no reliable timings
        return ()
    raw = [
        {"word": w, "start": float(jump_times[i]), "end": float(jump_times[j]), "probs": list(token_probs[i:j])}
        for w, i, j in zip(words[:-1], bounds[:-1], bounds[1:], strict=True)
    ]
    return tuple(
        RecognizedWord(
            text=w["word"].strip(),
            start=round(w["start"], 3),
            end=round(w["end"], 3),
            probability=round(float(np.mean(w["probs"])) if w["probs"] else 0.0, 4),
        )
        for w in merge_punctuation(raw)
        if w["word"].strip()
    )


def words_to_json(words: Sequence[RecognizedWord]) -> str:
    """The WORDS output: [{"w": text, "s": start, "e": end, "p": probability}, ...]."""
    return json.dumps([{"w": w.text, "s": w.start, "e": w.end, "p": w.probability} for w in words])


def whisper_placement(
    device: ModelDevice, compute_type: str, gpu_compute_type: str, cuda_devices: int
) -> tuple[str, int, str]:
    """CTranslate2's (device, device_index, compute_type): the CPU with `compute_type` unless `device` is a GPU
    that this CTranslate2 sees (`cuda_devices`, its `get_cuda_device_count()`), then CUDA with `gpu_compute_type`
    (float16, or int8_float16 for int8 weights with float16 activations). A GPU asked for but not seen is logged
    and the model stays on the CPU."""
    if not device.on_gpu:
        return "cpu", 0, compute_type
    if device.device_id >= cuda_devices:
        logging.getLogger(__name__).warning(
            "%s: GPU %d asked for, CTranslate2 sees %d CUDA device(s): Whisper stays on the CPU (%s)",
            device.model or "asr",
            device.device_id,
            cuda_devices,
            compute_type,
        )
        return "cpu", 0, compute_type
    return "cuda", device.device_id, gpu_compute_type


class WhisperRecognizer:
    """Whisper on CTranslate2: `recognizer(audios, prompts)` transcribes a batch of utterances in one call."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        threads: int = 2,
        compute_type: str = "int8",
        language: str = "en",
        options: DecodeOptions | None = None,
        device: ModelDevice = CPU,
        gpu_compute_type: str = "float16",
    ) -> None:
        import ctranslate2
        import tokenizers
        from faster_whisper.feature_extractor import FeatureExtractor
        from faster_whisper.tokenizer import Tokenizer

        self._ct2 = ctranslate2
        cuda_devices = ctranslate2.get_cuda_device_count() if device.on_gpu else 0
        self.placement = whisper_placement(device, compute_type, gpu_compute_type, cuda_devices)
        where, index, compute_type = self.placement
        self.model = ctranslate2.models.Whisper(
            str(model_dir), device=where, device_index=index, compute_type=compute_type, intra_threads=threads
        )
        self.tokenizer = Tokenizer(
            tokenizers.Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json")),
            self.model.is_multilingual,
            task="transcribe",
            language=language,
        )
        self.options = options or DecodeOptions()
        self._features = FeatureExtractor(feature_size=self.model.n_mels)

    def features(self, audio: I16, frames: int) -> F32:
        """Log-mel [n_mels, frames] of the utterance followed by digital silence (see the module docstring)."""
        x = np.zeros(frames * HOP, np.float32)
        n = min(audio.shape[0], x.shape[0])
        x[:n] = audio[:n].astype(np.float32) / 32768.0
        mel: F32 = self._features(x)[:, :frames]
        return mel

    def prompt(self, previous_text: str) -> list[int]:
        """Whisper's decoder prompt: the caller's prompt text (if any; its last `prompt_tokens` tokens), then the
        transcribe sequence. Whisper spells what its prompt spells, and copies from it: the session sends the
        persona's vocabulary (orchestrator/speech/prompt.py), never the replica's words."""
        tokens: list[int] = []
        if previous_text.strip():
            tokens = [
                self.tokenizer.sot_prev,
                *self.tokenizer.encode(" " + previous_text.strip())[-self.options.prompt_tokens :],
            ]
        return [*tokens, *self.tokenizer.sot_sequence]

    def __call__(
        self, audios: Sequence[I16], prompts: Sequence[str] | None = None, timings: Sequence[bool] | None = None
    ) -> list[Recognition]:
        """Transcribe each utterance (int16, 16 kHz, ≤ 28 s). Raises ValueError for bad audio.

        `timings[i]` asks for word timings of utterance i (default: `options.word_timestamps`). They cost an
        extra alignment pass (up to ~30 % more time, measured), which decodes that need only text can skip.
        """
        prompts = list(prompts) if prompts is not None else [""] * len(audios)
        timings = list(timings) if timings is not None else [self.options.word_timestamps] * len(audios)
        if not len(prompts) == len(timings) == len(audios):
            raise ValueError(f"{len(audios)} utterances but {len(prompts)} prompts and {len(timings)} timing flags")
        for a in audios:
            check_audio(a)
        results = [EMPTY] * len(audios)
        todo = [i for i, a in enumerate(audios) if not is_silent(a, self.options)]
        if todo:
            decoded = self._decode([audios[i] for i in todo], [prompts[i] for i in todo], [timings[i] for i in todo])
            for i, r in zip(todo, decoded, strict=True):
                results[i] = r
        return results

    def _decode(self, audios: list[I16], prompts: list[str], timings: list[bool]) -> list[Recognition]:
        # Rows are grouped by encoder length: padding a short utterance to a longer one's window would change
        # its transcript, and a request must get the same answer batched or alone.
        by_frames: dict[int, list[int]] = {}
        for i, a in enumerate(audios):
            by_frames.setdefault(encoder_frames(a.shape[0], self.options), []).append(i)
        out = [EMPTY] * len(audios)
        for frames, rows in by_frames.items():
            part = self._decode_window(
                frames, [audios[i] for i in rows], [prompts[i] for i in rows], [timings[i] for i in rows]
            )
            for i, r in zip(rows, part, strict=True):
                out[i] = r
        return out

    def _decode_window(
        self, frames: int, audios: list[I16], prompts: list[str], timings: list[bool]
    ) -> list[Recognition]:
        """Encode rows that share one encoder length in one call, then decode and align them."""
        mel = np.stack([self.features(a, frames) for a in audios])
        # On a GPU the encoding is copied back to the CPU: `_rows` picks rows of it with numpy.
        encoded = self.model.encode(self._ct2.StorageView.from_array(mel), to_cpu=self.placement[0] == "cuda")
        prompt_ids = [self.prompt(p) for p in prompts]
        content = [min(frames, math.ceil(a.shape[0] / HOP)) for a in audios]
        # CTranslate2 needs <|startoftranscript|> at the same position in every row of one generate call, so
        # rows are grouped by prompt length (sharing the encoding), and by beam size (finals search wider).
        # Sessions of one persona send the same prompt, so their decodes share one call.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(prompt_ids):
            beam = self.options.final_beam_size if timings[i] else self.options.beam_size
            groups.setdefault((len(p), beam), []).append(i)
        texts: list[list[int]] = [[] for _ in audios]
        for (_, beam), rows in groups.items():
            enc = encoded if len(rows) == len(audios) else self._rows(encoded, rows)
            decoded = self._generate(enc, [prompt_ids[i] for i in rows], [audios[i] for i in rows], beam)
            for i, t in zip(rows, decoded, strict=True):
                texts[i] = t
        words = self._align(encoded, [t if want else [] for t, want in zip(texts, timings, strict=True)], content)
        out = []
        for t, w in zip(texts, words, strict=True):
            text = collapse_repeated_words(self.tokenizer.decode(t).strip())
            out.append(Recognition(text, w[: len(text.split())] if w else w))
        return out

    def _rows(self, encoded: Any, rows: list[int]) -> Any:
        return self._ct2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[rows]))

    def _generate(
        self, encoded: Any, prompt_ids: list[list[int]], audios: list[I16], beam_size: int = 1
    ) -> list[list[int]]:
        """Decoding with timestamps (greedy, or a beam search); returns each row's text tokens, cut at the end
        of its audio."""
        opts, tok = self.options, self.tokenizer
        seconds = [a.shape[0] / SAMPLE_RATE for a in audios]
        new_tokens = opts.extra_tokens + math.ceil(opts.tokens_per_s * max(seconds))
        results = self.model.generate(
            encoded,
            prompt_ids,
            beam_size=beam_size,
            max_length=len(prompt_ids[0]) + new_tokens,
            return_scores=True,
            return_no_speech_prob=True,
        )
        texts: list[list[int]] = []
        for r, s in zip(results, seconds, strict=True):
            no_speech = r.no_speech_prob > opts.no_speech_threshold and r.scores[0] < opts.logprob_threshold
            cut = cut_at_audio_end(r.sequences_ids[0], tok.timestamp_begin, tok.eot, s, opts.end_tolerance_s)
            texts.append([] if no_speech else collapse_loops(cut))
        return texts

    def _align(
        self, encoded: Any, texts: list[list[int]], content_frames: list[int]
    ) -> list[tuple[RecognizedWord, ...]]:
        """Word timings for the items that have text and want them (aligning an empty text is undefined)."""
        out: list[tuple[RecognizedWord, ...]] = [()] * len(texts)
        keep = [i for i, t in enumerate(texts) if t]
        if not keep:
            return out
        enc = encoded if len(keep) == len(texts) else self._rows(encoded, keep)
        aligned = self.model.align(
            enc, self.tokenizer.sot_sequence, [texts[i] for i in keep], [content_frames[i] for i in keep]
        )
        for i, a in zip(keep, aligned, strict=True):
            out[i] = words_from_alignment(self.tokenizer, texts[i], a.alignments, a.text_token_probs)
        return out
