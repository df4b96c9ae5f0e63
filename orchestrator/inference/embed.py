"""Sentence embeddings with all-MiniLM-L6-v2 (ONNX), the way sentence-transformers computes them.

Each text is cut into at most 256 word pieces ([CLS] and [SEP] included) by the model's own `tokenizer.json`,
the encoder runs on onnxruntime, its last hidden states are averaged over the tokens the attention mask keeps,
and each average is L2-normalised: rows are unit vectors, so a cosine similarity is a dot product.

A batch is sorted by length and run in groups of similar length, each padded only to its own longest text, so
one long text does not make every short one pay for its padding. The ONNX file comes from
`scripts/export_embed.py`, run at setup.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestrator.errors import DuetError
from orchestrator.inference.device import CPU_EP, Provider
from orchestrator.inference.vad import onnx_session

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

DIM = 384  # the width of the encoder's hidden states, and so of every embedding
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model, special tokens included
# Characters of a text given to the tokenizer at most. 256 word pieces take far fewer (a word piece is rarely
# over 20 characters); this only bounds the work a huge text can cost before it is cut anyway.
MAX_CHARS = 16 * 1024
# Padded tokens per ONNX call at most when a batch is split into groups of similar length. Small calls keep the
# activations in the CPU's caches: on the 2-core machine, chunks of 80 words cost 30 ms of CPU per text at
# 1024 tokens a call, 47 ms at 8192, 68 ms at 32768 (and no less at 256 or 512).
GROUP_TOKENS = 1024
ONNX_FILE = "minilm-l6-v2.onnx"
TOKENIZER_FILE = "tokenizer.json"


class EmbedInputError(DuetError):
    """A request the model cannot serve; the message names what is wrong. The model sends it as
    "<code>: <message>" (the Triton adapter raises `BadText` again from "bad_text: ...")."""

    code = "bad_input"
    fatal = False


class BadText(EmbedInputError):
    """A text that is not valid UTF-8 (or not text at all)."""

    code = "bad_text"


class EmptyBatch(EmbedInputError):
    """No texts at all (the adapter answers an empty list itself, without asking the model)."""

    code = "empty_batch"


def decode_texts(raw: Sequence[bytes | str | Any]) -> list[str]:
    """Triton's BYTES elements (or str) -> str; anything that is not UTF-8 text is `BadText`, naming its row."""
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, bytes | bytearray | memoryview | np.bytes_):
            try:
                out.append(bytes(item).decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise BadText(f"TEXT[{i}] is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        else:
            raise BadText(f"TEXT[{i}] is {type(item).__name__}, not text")
    return out


def mean_pool(hidden: F32, mask: npt.NDArray[np.integer[Any]]) -> F32:
    """Average of `hidden` [n, seq, dim] over the positions where `mask` [n, seq] is 1 -> [n, dim]."""
    m = mask.astype(np.float32)[:, :, None]
    summed = (hidden.astype(np.float32) * m).sum(axis=1)
    count = np.maximum(m.sum(axis=1), np.float32(1e-9))  # a row with no token stays a zero vector
    out: F32 = (summed / count).astype(np.float32)
    return out


def l2_normalize(x: F32) -> F32:
    """Each row divided by its Euclidean norm (a zero row stays zero), as sentence-transformers' Normalize."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    out: F32 = (x / np.maximum(norm, np.float32(1e-12))).astype(np.float32)
    return out


def length_groups(lengths: Sequence[int], budget: int = GROUP_TOKENS) -> list[list[int]]:
    """Indices of `lengths` sorted by length, cut into consecutive groups whose padded size (count times the
    longest) stays within `budget` tokens (a group always holds at least one)."""
    groups: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (len(current) + 1) * lengths[i] > budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


class Tokenizer:
    """The model's WordPiece tokenizer, cutting at `max_tokens` and padding each batch to its longest text."""

    def __init__(self, path: str | Path, max_tokens: int = MAX_TOKENS) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        self.max_tokens = max_tokens
        self._tok = HfTokenizer.from_file(str(path))
        self._tok.enable_truncation(max_length=max_tokens)
        self._tok.no_padding()  # padding is per group (`pad`), after sorting by length
        self._pad_id = self._tok.token_to_id("[PAD]") or 0

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, [CLS] ... [SEP], at most `max_tokens` each."""
        return [e.ids for e in self._tok.encode_batch([t[:MAX_CHARS] for t in texts])]

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[I64, I64]:
        """input_ids and attention_mask [n, longest], padded on the right."""
        width = max((len(r) for r in rows), default=0)
        ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return ids, mask

    def __call__(self, texts: Sequence[str]) -> tuple[I64, I64]:
        return self.pad(self.ids(texts))


class SentenceEmbedder:
    """texts -> float32 [n, 384], unit rows. `model_dir` holds `minilm-l6-v2.onnx` and `tokenizer.json`."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        onnx_file: str = ONNX_FILE,
        threads: int = 1,
        max_tokens: int = MAX_TOKENS,
        group_tokens: int = GROUP_TOKENS,
        providers: Sequence[Provider] = (CPU_EP,),
    ) -> None:
        folder = Path(model_dir)
        self.tokenizer = Tokenizer(folder / TOKENIZER_FILE, max_tokens)
        self.providers = list(providers)  # asked for; `_session.get_providers()` is what onnxruntime gave
        self._session = onnx_session(folder / onnx_file, threads, self.providers)
        self.group_tokens = group_tokens

    def encode(self, ids: I64, mask: I64) -> F32:
        """One ONNX call: input_ids, attention_mask [n, seq] -> pooled, normalised [n, 384]."""
        (hidden,) = self._session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})
        return l2_normalize(mean_pool(np.asarray(hidden, dtype=np.float32), mask))

    def __call__(self, texts: Sequence[str]) -> F32:
        if not texts:
            raise EmptyBatch("no texts to embed")
        rows = self.tokenizer.ids(texts)
        out = np.empty((len(rows), DIM), dtype=np.float32)
        for group in length_groups([len(r) for r in rows], self.group_tokens):
            out[group] = self.encode(*self.tokenizer.pad([rows[i] for i in group]))
        return out
