"""A plain numpy interpreter of TF.js graph models with TensorFlow's own (NHWC) semantics.

Deliberately written without anything from the converter (no layout tracking, no ONNX):
it is the reference the converted ONNX graphs are compared against.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

_DTYPES = {"DT_FLOAT": np.float32, "DT_INT32": np.int32, "DT_INT64": np.int64,
           "DT_BOOL": np.bool_}


def _attr(node: Mapping[str, Any], key: str) -> Any:
    return node.get("attr", {}).get(key, {})


def _s(node: Mapping[str, Any], key: str, default: str) -> str:
    value = _attr(node, key)
    return base64.b64decode(value["s"]).decode() if "s" in value else default


def _ints(node: Mapping[str, Any], key: str, default: Sequence[int]) -> list[int]:
    values = _attr(node, key).get("list", {}).get("i", [])
    return [int(v) for v in values] or list(default)


def _same(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, node: Mapping[str, Any], kh: int, kw: int, fill: float) -> np.ndarray:
    """(N, OH, OW, C, kh, kw) windows of NHWC ``x`` with TF padding/stride/dilation."""
    strides = _ints(node, "strides", [1, 1, 1, 1])
    dil = _ints(node, "dilations", [1, 1, 1, 1])
    padding = _s(node, "padding", "VALID")
    if padding == "SAME":
        pads = [
            _same(x.shape[1], kh, strides[1], dil[1]),
            _same(x.shape[2], kw, strides[2], dil[2]),
        ]
    elif padding == "EXPLICIT":
        ex = _ints(node, "explicit_paddings", [0] * 8)
        pads = [(ex[2], ex[3]), (ex[4], ex[5])]
    else:
        pads = [(0, 0), (0, 0)]
    x = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)], constant_values=fill)
    span_h, span_w = (kh - 1) * dil[1] + 1, (kw - 1) * dil[2] + 1
    win = sliding_window_view(x, (span_h, span_w), axis=(1, 2))
    return win[:, :: strides[1], :: strides[2], :, :: dil[1], :: dil[2]]


def _conv(x: np.ndarray, w: np.ndarray, node: Mapping[str, Any]) -> np.ndarray:
    win = _windows(x, node, w.shape[0], w.shape[1], 0.0)
    if "Depthwise" in node["op"]:
        out = np.einsum("nhwcij,ijcm->nhwcm", win, w)
        return out.reshape(*out.shape[:3], -1).astype(np.float32)
    return np.einsum("nhwcij,ijco->nhwo", win, w, optimize=True).astype(np.float32)


def _resize_bilinear(x: np.ndarray, size: np.ndarray, node: Mapping[str, Any]) -> np.ndarray:
    """TF's ResizeBilinear (legacy, align_corners and half_pixel_centers variants)."""
    align = bool(_attr(node, "align_corners").get("b", False))
    half = bool(_attr(node, "half_pixel_centers").get("b", False))

    def weights(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = (in_size - 1) / (out_size - 1) if align and out_size > 1 else in_size / out_size
        i = np.arange(out_size, dtype=np.float64)
        src = (i + 0.5) * scale - 0.5 if half else i * scale
        low = np.floor(src)
        frac = src - low
        lo = np.clip(low, 0, in_size - 1).astype(int)
        hi = np.clip(np.ceil(src), 0, in_size - 1).astype(int)
        return lo, hi, frac

    ylo, yhi, yf = weights(int(size[0]), x.shape[1])
    xlo, xhi, xf = weights(int(size[1]), x.shape[2])
    top = (
        x[:, ylo][:, :, xlo] * (1 - xf)[None, None, :, None]
        + x[:, ylo][:, :, xhi] * xf[None, None, :, None]
    )
    bot = (
        x[:, yhi][:, :, xlo] * (1 - xf)[None, None, :, None]
        + x[:, yhi][:, :, xhi] * xf[None, None, :, None]
    )
    return (top * (1 - yf)[None, :, None, None] + bot * yf[None, :, None, None]).astype(np.float32)


def _sparse_to_dense(idx: np.ndarray, shape: np.ndarray, vals: np.ndarray, default: np.ndarray):
    out = np.full(np.atleast_1d(shape).astype(int), default, dtype=vals.dtype)
    rows = idx.reshape(len(idx), -1) if idx.size else np.zeros((0, out.ndim), int)
    for row, v in zip(rows, np.broadcast_to(vals, (len(rows),)), strict=True):
        out[tuple(row)] = v
    return out


def _activation(x: np.ndarray, op: str, node: Mapping[str, Any]) -> np.ndarray:
    if op == "Relu":
        return np.maximum(x, 0)
    if op == "Relu6":
        return np.clip(x, 0, 6)
    if op == "LeakyRelu":
        alpha = _attr(node, "alpha").get("f", _attr(node, "leakyrelu_alpha").get("f", 0.2))
        return np.where(x >= 0, x, x * np.float32(alpha))
    if op == "Sigmoid":
        return (1 / (1 + np.exp(-x))).astype(np.float32)
    raise NotImplementedError(op)


def run_reference(
    nodes: Sequence[Mapping[str, Any]],
    weights: Mapping[str, np.ndarray],
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str],
) -> list[np.ndarray]:
    """``outputs`` (node refs) of a TF.js graph evaluated on ``feeds`` (placeholder → array)."""
    by_name = {n["name"]: n for n in nodes}
    cache: dict[str, list[np.ndarray]] = {}

    def get(ref: str) -> np.ndarray:
        name, _, idx = ref.partition(":")
        if name not in cache:
            cache[name] = evaluate(by_name[name])
        return cache[name][int(idx or 0)]

    def evaluate(node: Mapping[str, Any]) -> list[np.ndarray]:
        op = node["op"]
        ins = [get(r) for r in node.get("input", []) if not r.startswith("^")]
        if op == "Placeholder":
            return [np.asarray(feeds[node["name"]], np.float32)]
        if op == "Const":
            dtype = _DTYPES[_attr(node, "dtype").get("type", "DT_FLOAT")]
            return [np.asarray(weights[node["name"]]).astype(dtype)]
        if op in ("Identity", "StopGradient"):
            return [ins[0]]
        if op in ("Add", "AddV2", "BiasAdd"):
            return [ins[0] + ins[1]]
        if op == "Sub":
            return [ins[0] - ins[1]]
        if op == "Mul":
            return [ins[0] * ins[1]]
        if op == "RealDiv":
            return [ins[0] / ins[1]]
        if op == "Equal":
            return [np.equal(ins[0], ins[1])]
        if op in ("Relu", "Relu6", "LeakyRelu", "Sigmoid"):
            return [_activation(ins[0], op, node)]
        if op == "Transpose":
            return [np.transpose(ins[0], ins[1])]
        if op == "Reshape":
            return [ins[0].reshape(ins[1].astype(int))]
        if op == "Cast":
            return [ins[0].astype(_DTYPES[_attr(node, "DstT")["type"]])]
        if op in ("Pad", "PadV2"):
            fill = ins[2].item() if op == "PadV2" else 0
            return [np.pad(ins[0], ins[1].astype(int), constant_values=fill)]
        if op == "ConcatV2":
            return [np.concatenate(ins[:-1], axis=int(ins[-1]))]
        if op == "SplitV":
            return np.split(ins[0], np.cumsum(ins[1])[:-1], axis=int(ins[2]))
        if op == "Split":
            return np.split(ins[1], int(_attr(node, "num_split")["i"]), axis=int(ins[0]))
        if op == "SparseToDense":
            return [_sparse_to_dense(*ins)]
        if op == "Mean":
            keep = bool(_attr(node, "keep_dims").get("b", False))
            return [ins[0].mean(axis=tuple(np.atleast_1d(ins[1]).tolist()), keepdims=keep)]
        if op == "MaxPool":
            k = _ints(node, "ksize", [1, 1, 1, 1])
            return [_windows(ins[0], node, k[1], k[2], -np.inf).max(axis=(-2, -1))]
        if op == "ResizeBilinear":
            return [_resize_bilinear(ins[0], ins[1], node)]
        if op in ("Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative"):
            out = _conv(ins[0], ins[1], node)
            fused = [
                base64.b64decode(s).decode()
                for s in _attr(node, "fused_ops").get("list", {}).get("s", [])
            ]
            if fused[:1] == ["BiasAdd"]:
                out = out + ins[2]
                fused = fused[1:]
            for act in fused:
                out = _activation(out, act, node)
            return [out]
        raise NotImplementedError(op)

    return [get(o) for o in outputs]
