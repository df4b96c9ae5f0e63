"""Sentence embeddings without Triton: pooling and normalisation, length groups, input checks, the tokenizer's
cut at 256 word pieces, the real exported model against sentence-transformers' published similarities, and the
export script's encoder and weight loading (scripts/export_embed.py)."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from orchestrator.config import REPO_ROOT
from orchestrator.inference.embed import (
    DIM,
    MAX_TOKENS,
    BadText,
    EmptyBatch,
    SentenceEmbedder,
    Tokenizer,
    decode_texts,
    l2_normalize,
    length_groups,
    mean_pool,
)
from orchestrator.models.ports import EMBED_DIM
from tests.conftest import require

MODEL_DIR = REPO_ROOT / "model_repository" / "embed" / "1"


# --- the pure parts ------------------------------------------------------------------------------------------------


def test_dim_matches_the_port() -> None:
    assert DIM == EMBED_DIM == 384


def test_mean_pool_averages_only_the_kept_tokens() -> None:
    hidden = np.array(
        [[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[2.0, 0.0], [50.0, 50.0], [60.0, 60.0]]], dtype=np.float32
    )
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=np.int64)
    np.testing.assert_allclose(mean_pool(hidden, mask), [[2.0, 3.0], [2.0, 0.0]])
    assert mean_pool(hidden, mask).dtype == np.float32
    # a row with no kept token is a zero vector, not NaN
    np.testing.assert_array_equal(mean_pool(hidden, np.zeros((2, 3), np.int64)), np.zeros((2, 2)))


def test_l2_normalize_makes_unit_rows_and_keeps_zero_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1e-3, 0.0]], dtype=np.float32)
    out = l2_normalize(x)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    ("lengths", "budget"), [([5, 3, 9, 3, 7], 12), ([256] * 70, 8192), ([2] * 5, 1), ([], 10), ([10, 300, 4], 600)]
)
def test_length_groups_cover_every_text_once_within_the_budget(lengths: list[int], budget: int) -> None:
    groups = length_groups(lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(flat)  # sorted by length: each group pads little
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= budget


def test_decode_texts_accepts_text_and_names_the_bad_row() -> None:
    assert decode_texts([b"caf\xc3\xa9", "tea", np.bytes_(b"x"), b""]) == ["café", "tea", "x", ""]
    with pytest.raises(BadText, match=r"TEXT\[1\] is not valid UTF-8"):
        decode_texts([b"ok", b"\xff\xfe broken"])
    with pytest.raises(BadText, match=r"TEXT\[0\] is int"):
        decode_texts([3])
    assert BadText("x").code == "bad_text" and not BadText("x").fatal


# --- the real tokenizer and model (setup exports them) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    require(MODEL_DIR / "minilm-l6-v2.onnx", "the exported embedding model")
    require(MODEL_DIR / "tokenizer.json", "the embedding model's tokenizer")
    return SentenceEmbedder(MODEL_DIR)


def test_tokenizer_cuts_at_256_word_pieces_and_pads_to_the_longest() -> None:
    tok = Tokenizer(require(MODEL_DIR / "tokenizer.json", "the embedding model's tokenizer"))
    long, empty, short = tok.ids(["word " * 1000, "", "Hello world"])
    assert len(long) == MAX_TOKENS and long[0] == 101 and long[-1] == 102  # [CLS] ... [SEP]
    assert empty == [101, 102]
    assert short == [101, 7592, 2088, 102]  # lower-cased WordPiece
    ids, mask = tok.pad([short, empty])
    assert ids.shape == mask.shape == (2, 4) and ids.dtype == mask.dtype == np.int64
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(ids[1], [101, 102, 0, 0])
    # a text of a million characters costs no more than its first window
    assert len(tok.ids(["a " * 500_000])[0]) == MAX_TOKENS


def test_similarities_match_sentence_transformers(embedder: SentenceEmbedder) -> None:
    """The similarity matrix sentence-transformers' documentation prints for all-MiniLM-L6-v2 on these three."""
    v = embedder(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    published = [[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]]
    np.testing.assert_allclose(v @ v.T, published, atol=2e-3)


def test_paraphrase_is_closer_than_an_unrelated_sentence(embedder: SentenceEmbedder) -> None:
    q, para, other = embedder(
        ["How do I reset my password?", "Steps to change a forgotten password", "The clinic opens at 8 am"]
    )
    assert float(q @ para) > float(q @ other) + 0.4


def test_rows_are_unit_vectors_and_a_batch_equals_single_texts(embedder: SentenceEmbedder) -> None:
    texts = ["", "Short.", "A somewhat longer sentence about booking an appointment next Tuesday.", "word " * 400]
    batch = embedder(texts)
    assert batch.shape == (4, DIM) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    singles = np.concatenate([embedder([t]) for t in texts])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    # small length groups (many ONNX calls) give the same vectors as one padded call
    grouped = SentenceEmbedder(MODEL_DIR, group_tokens=1)(texts)
    np.testing.assert_allclose(grouped, batch, atol=1e-5)


def test_text_past_the_window_is_cut(embedder: SentenceEmbedder) -> None:
    head = "The quick brown fox jumps over the lazy dog. " * 40  # well over 256 word pieces
    a, b = embedder([head, head + "Completely different words about invoices and tax returns. " * 20])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_empty_batch_is_a_typed_error(embedder: SentenceEmbedder) -> None:
    with pytest.raises(EmptyBatch):
        embedder([])


# --- the export script's encoder --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export_embed() -> ModuleType:
    path = REPO_ROOT / "scripts" / "export_embed.py"
    spec = importlib.util.spec_from_file_location("export_embed", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["export_embed"] = module
    spec.loader.exec_module(module)
    return module


def small_config(ex: ModuleType) -> Any:
    return ex.BertConfig(
        vocab_size=50, hidden=16, layers=2, heads=4, intermediate=32, max_positions=20, type_vocab_size=2, eps=1e-12
    )


def test_encoder_layer_is_torch_s_post_norm_transformer_layer(export_embed: ModuleType) -> None:
    """Our BERT layer computes what torch.nn.TransformerEncoderLayer (post-norm, exact GELU) does with the same
    weights, padding masked: an independent implementation of the same math."""
    import torch

    torch.manual_seed(0)
    cfg = small_config(export_embed)
    ours = export_embed.Layer(cfg).eval()
    ref = torch.nn.TransformerEncoderLayer(
        cfg.hidden,
        cfg.heads,
        cfg.intermediate,
        dropout=0.0,
        activation="gelu",
        layer_norm_eps=cfg.eps,
        batch_first=True,
    ).eval()
    a = ours.attention
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(torch.cat([a.self.query.weight, a.self.key.weight, a.self.value.weight]))
        ref.self_attn.in_proj_bias.copy_(torch.cat([a.self.query.bias, a.self.key.bias, a.self.value.bias]))
        ref.self_attn.out_proj.weight.copy_(a.output.dense.weight)
        ref.self_attn.out_proj.bias.copy_(a.output.dense.bias)
        for mine, theirs in ((a.output.LayerNorm, ref.norm1), (ours.output.LayerNorm, ref.norm2)):
            mine.weight.normal_()
            mine.bias.normal_()
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
        ref.linear1.weight.copy_(ours.intermediate.dense.weight)
        ref.linear1.bias.copy_(ours.intermediate.dense.bias)
        ref.linear2.weight.copy_(ours.output.dense.weight)
        ref.linear2.bias.copy_(ours.output.dense.bias)
        x = torch.randn(2, 5, cfg.hidden)
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        got = ours(x, bias)
        want = ref(x, src_key_padding_mask=mask == 0)
    keep = mask == 1
    torch.testing.assert_close(got[keep], want[keep], atol=1e-5, rtol=1e-5)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray[Any, Any]]) -> None:
    names = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, t in tensors.items():
        raw = np.ascontiguousarray(t).astype(t.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_weights_load_by_name_and_a_misfit_checkpoint_fails(export_embed: ModuleType, tmp_path: Path) -> None:
    import torch

    cfg = small_config(export_embed)
    source = export_embed.BertEncoder(cfg)
    tensors = {n: p.detach().numpy().copy() for n, p in source.state_dict().items()}
    tensors["embeddings.position_ids"] = np.arange(cfg.max_positions, dtype=np.int64)[None]
    tensors["pooler.dense.weight"] = np.zeros((cfg.hidden, cfg.hidden), np.float32)
    write_safetensors(tmp_path / "ok.safetensors", tensors)
    read = export_embed.read_safetensors(tmp_path / "ok.safetensors")
    assert read.keys() == tensors.keys()
    word = "embeddings.word_embeddings.weight"
    np.testing.assert_array_equal(read[word], tensors[word])

    target = export_embed.BertEncoder(cfg)
    export_embed.load_weights(target, read)
    ids = torch.tensor([[1, 5, 7, 2, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        torch.testing.assert_close(target(ids, mask), source(ids, mask))

    for broken, message in (
        ({k: v for k, v in read.items() if k != "encoder.layer.1.output.dense.bias"}, "missing encoder.layer.1"),
        ({**read, "encoder.layer.2.output.dense.bias": np.zeros(16, np.float32)}, "unexpected encoder.layer.2"),
        ({**read, "embeddings.LayerNorm.weight": np.ones(8, np.float32)}, r"shape \[8\], expected \[16\]"),
        ({**read, "embeddings.position_ids": np.zeros((1, 20), np.int64)}, "position_ids is not 0..n-1"),
    ):
        with pytest.raises(export_embed.ExportError, match=message):
            export_embed.load_weights(export_embed.BertEncoder(cfg), broken)


def test_a_truncated_safetensors_file_fails_loudly(export_embed: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"w": np.ones((4, 4), np.float32)})
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(export_embed.ExportError, match="byte range"):
        export_embed.read_safetensors(path)
