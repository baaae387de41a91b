"""TensorFlow.js *graph model* → ONNX, with numpy and the ``onnx`` package only.

Why this exists: the detector weights we can fetch reproducibly from a package registry
(npm) ship as a TF.js graph model (``model.json`` + ``.bin`` shards). Pulling in TensorFlow
just to convert ~500 nodes once would cost a gigabyte of dependencies, so this module
translates the handful of TF ops such graphs use directly into ONNX nodes.

How it works:

* weights are decoded from the manifest (float16 / affine uint8-uint16 quantization
  undone, TF.js' int32 storage of int64 tensors widened back);
* nodes are visited in a deterministic topological order; anything computable from
  constants alone (``SparseToDense``, ``Cast``, ``Reshape``, arithmetic on constants...) is
  folded with numpy, so the ONNX graph only holds real work;
* layouts are tracked *lazily*: every converted tensor remembers a permutation ``perm``
  with ``tf_value == transpose(onnx_value, perm)``. A TF ``Transpose`` then only updates
  ``perm`` and emits nothing, and NHWC ops (``Conv2D``, ``MaxPool``, ``ResizeBilinear``)
  ask for their input in NCHW and hand back an NCHW result. Graphs exported by onnx-tf
  (NCHW model wrapped in NHWC transposes around every conv) come out transpose-free;
* a bias ``Add`` right after a conv is folded into the ONNX ``Conv``.

The output is deterministic: same input, same onnx version → same serialized bytes, so
callers can pin a sha256 of the result.

Caveat (onnxruntime 1.31, not this converter): ORT's basic-level ``Pad_Fusion`` folds a
*zero* ``Pad`` followed by ``MaxPool`` into the pool's pads, which MaxPool treats as -inf,
so results differ on negative inputs. Run graphs with that pattern with
``disabled_optimizers=["Pad_Fusion"]``. NanoDet pads with -inf before its MaxPool, which
ORT leaves alone.
"""

from __future__ import annotations

import base64
import heapq
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "SUPPORTED_OPS",
    "TfjsConversionError",
    "convert_graph_model",
    "convert_model_dir",
    "decode_weights",
    "load_weights",
]

#: ONNX opset emitted (ReduceMean still takes ``axes`` as an attribute there)
OPSET: Final = 17
#: IR version pinned so the bytes do not change with the onnx package's default
IR_VERSION: Final = 8
_PRODUCER: Final = "tilescope.models.tfjs"

Perm = tuple[int, ...]
Shape = tuple[int, ...]  # TF shape; -1 marks an unknown dimension

_NCHW_AS_NHWC: Final[Perm] = (0, 2, 3, 1)  # tf(NHWC) == transpose(onnx(NCHW), this)


class TfjsConversionError(ValueError):
    """The TF.js model uses something this converter does not understand."""


# --------------------------------------------------------------------------- weights

_TF_DTYPES: Final[dict[str, np.dtype]] = {
    "DT_FLOAT": np.dtype(np.float32),
    "DT_HALF": np.dtype(np.float16),
    "DT_DOUBLE": np.dtype(np.float64),
    "DT_INT32": np.dtype(np.int32),
    "DT_INT64": np.dtype(np.int64),
    "DT_INT16": np.dtype(np.int16),
    "DT_INT8": np.dtype(np.int8),
    "DT_UINT8": np.dtype(np.uint8),
    "DT_BOOL": np.dtype(np.bool_),
}
# TF.js stores every tensor as one of these, int64 included (as int32).
_MANIFEST_DTYPES: Final[dict[str, np.dtype]] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype(np.bool_),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
}


def _manifest_dtype(name: str) -> np.dtype:
    try:
        return _MANIFEST_DTYPES[name]
    except KeyError:
        raise TfjsConversionError(f"unsupported weight dtype {name!r}") from None


def _decode_one(spec: Mapping[str, Any], buffer: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One weight from a weight-group buffer; returns it and the offset after it.

    Quantized weights are stored in ``quantization.dtype``: float16 is simply widened,
    uint8/uint16 are affine (``q * scale + min``), as TF.js' ``decodeWeights`` does.
    """
    shape = tuple(int(d) for d in spec["shape"])
    count = int(np.prod(shape, dtype=np.int64))
    target = _manifest_dtype(spec["dtype"])
    quant = spec.get("quantization")
    stored = _manifest_dtype(quant["dtype"]) if quant else target
    nbytes = count * stored.itemsize
    if offset + nbytes > len(buffer):
        raise TfjsConversionError(f"weight {spec['name']!r} runs past the end of its shards")
    raw = np.frombuffer(buffer, dtype=stored, count=count, offset=offset)
    if quant and quant["dtype"] in ("uint8", "uint16"):
        if "scale" not in quant or "min" not in quant:
            raise TfjsConversionError(f"weight {spec['name']!r}: affine quantization lacks scale")
        values = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
    else:
        values = raw
    return values.astype(target.newbyteorder("=")).reshape(shape), offset + nbytes


def decode_weights(
    manifest: Sequence[Mapping[str, Any]], read_shard: Callable[[str], bytes]
) -> dict[str, np.ndarray]:
    """All weights of a ``weightsManifest``; ``read_shard(path)`` returns a shard's bytes.

    Each manifest group's shards are concatenated and its weights laid out back to back,
    which is how TF.js writes them.
    """
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        buffer = b"".join(read_shard(path) for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            weights[spec["name"]], offset = _decode_one(spec, buffer, offset)
        if offset != len(buffer):
            raise TfjsConversionError(
                f"weight shards {group['paths']} hold {len(buffer)} bytes, manifest uses {offset}"
            )
    return weights


def load_weights(model: Mapping[str, Any], model_dir: Path) -> dict[str, np.ndarray]:
    """Weights of ``model`` (a parsed model.json) read from shards next to it in ``model_dir``."""
    return decode_weights(model["weightsManifest"], lambda p: (model_dir / p).read_bytes())


# --------------------------------------------------------------------------- attributes


def _attr(node: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    return node.get("attr", {}).get(key)


def _attr_str(node: Mapping[str, Any], key: str, default: str = "") -> str:
    value = _attr(node, key)
    return base64.b64decode(value["s"]).decode() if value and "s" in value else default


def _attr_strs(node: Mapping[str, Any], key: str) -> list[str]:
    value = _attr(node, key)
    items = value.get("list", {}).get("s", []) if value else []
    return [base64.b64decode(s).decode() for s in items]


def _attr_ints(node: Mapping[str, Any], key: str, default: Sequence[int]) -> list[int]:
    value = _attr(node, key)
    if not value or "list" not in value:
        return list(default)
    return [int(i) for i in value["list"].get("i", [])] or list(default)


def _attr_int(node: Mapping[str, Any], key: str, default: int) -> int:
    value = _attr(node, key)
    return int(value["i"]) if value and "i" in value else default


def _attr_float(node: Mapping[str, Any], key: str, default: float) -> float:
    value = _attr(node, key)
    return float(value["f"]) if value and "f" in value else default


def _attr_bool(node: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = _attr(node, key)
    return bool(value["b"]) if value and "b" in value else default


def _attr_dtype(node: Mapping[str, Any], key: str) -> np.dtype:
    value = _attr(node, key)
    name = value.get("type", "DT_FLOAT") if value else "DT_FLOAT"
    try:
        return _TF_DTYPES[name]
    except KeyError:
        raise TfjsConversionError(f"{node['name']}: unsupported dtype {name}") from None


def _tf_shape(shape_attr: Mapping[str, Any] | None) -> Shape | None:
    if not shape_attr or shape_attr.get("unknownRank"):
        return None
    return tuple(int(d.get("size", -1)) for d in shape_attr.get("dim", []))


# --------------------------------------------------------------------------- layout helpers


def _identity(rank: int) -> Perm:
    return tuple(range(rank))


def _inverse(perm: Perm) -> Perm:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _broadcast_shape(a: Shape | None, b: Shape | None) -> Shape | None:
    if a is None or b is None:
        return None
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + a
    b = (1,) * (rank - len(b)) + b
    out = []
    for x, y in zip(a, b, strict=True):
        if x == 1:
            out.append(y)
        elif y in (1, x):
            out.append(x)
        elif y == -1 or x == -1:
            out.append(max(x, y))
        else:
            raise TfjsConversionError(f"shapes {a} and {b} do not broadcast")
    return tuple(out)


@dataclass(frozen=True)
class _Value:
    """A converted TF tensor: a numpy constant, or an ONNX tensor in a possibly permuted layout.

    ``tf_value == transpose(onnx tensor ``name``, perm)``; ``perm`` is ``None`` for constants.
    """

    dtype: np.dtype
    shape: Shape | None
    name: str = ""
    perm: Perm | None = None
    const: np.ndarray | None = None

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def stored_shape(self) -> Shape | None:
        if self.shape is None or self.perm is None:
            return self.shape
        inv = _inverse(self.perm)
        return tuple(self.shape[i] for i in inv)


def _const(array: np.ndarray) -> _Value:
    array = np.asarray(array)
    return _Value(dtype=array.dtype, shape=tuple(array.shape), const=array)


_ONNX_DTYPES: Final[dict[np.dtype, int]] = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int16): TensorProto.INT16,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.bool_): TensorProto.BOOL,
}


def _onnx_dtype(dtype: np.dtype) -> int:
    try:
        return _ONNX_DTYPES[np.dtype(dtype)]
    except KeyError:
        raise TfjsConversionError(f"no ONNX type for {dtype}") from None


def _split_input(ref: str) -> tuple[str, int]:
    """``"node:2"`` → ``("node", 2)``; TF.js graph inputs omit ``:0``."""
    name, sep, index = ref.rpartition(":")
    if sep and index.isdigit():
        return name, int(index)
    return ref, 0


def _tensor_key(node: str, index: int) -> str:
    return node if index == 0 else f"{node}:{index}"


def _topological_order(nodes: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Nodes ordered so inputs come first; ties keep file order, so the result is stable."""
    position = {n["name"]: i for i, n in enumerate(nodes)}
    pending = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        deps = {_split_input(r.lstrip("^"))[0] for r in node.get("input", [])}
        for dep in deps:
            if dep not in position:
                raise TfjsConversionError(f"{node['name']}: input {dep!r} is not in the graph")
            pending[i] += 1
            users[position[dep]].append(i)
    ready = [i for i, count in enumerate(pending) if count == 0]
    heapq.heapify(ready)
    order: list[Mapping[str, Any]] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for user in users[i]:
            pending[user] -= 1
            if pending[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):
        raise TfjsConversionError("the graph has a cycle")
    return order


# --------------------------------------------------------------------------- converter

_UNARY: Final[dict[str, str]] = {
    "Sigmoid": "Sigmoid",
    "Relu": "Relu",
    "Tanh": "Tanh",
    "Elu": "Elu",
    "Exp": "Exp",
    "Neg": "Neg",
    "Sqrt": "Sqrt",
    "Abs": "Abs",
}
_BINARY: Final[dict[str, tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]]] = {
    "Add": ("Add", np.add),
    "AddV2": ("Add", np.add),
    "BiasAdd": ("Add", np.add),
    "Sub": ("Sub", np.subtract),
    "Mul": ("Mul", np.multiply),
    "RealDiv": ("Div", np.divide),
    "Maximum": ("Max", np.maximum),
    "Minimum": ("Min", np.minimum),
    "Equal": ("Equal", np.equal),
}
#: binary ops whose result is boolean whatever their inputs are
_COMPARISONS: Final = frozenset({"Equal"})
_ALIASES: Final = frozenset({"Identity", "StopGradient", "Snapshot"})
_CONVS: Final = frozenset(
    {"Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"}
)


class _Converter:
    """Builds one ONNX graph from one TF.js topology; use :func:`convert_graph_model`."""

    def __init__(self, nodes: Sequence[Mapping[str, Any]], weights: Mapping[str, np.ndarray]):
        self.nodes = _topological_order(nodes)
        self.weights = weights
        self.values: dict[str, _Value] = {}
        self.onnx_nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.used_names: set[str] = set()
        self.layout_cache: dict[tuple[str, Perm], str] = {}

    # ---- naming and emission

    def unique(self, base: str) -> str:
        name, n = base, 0
        while name in self.used_names:
            n += 1
            name = f"{base}_{n}"
        self.used_names.add(name)
        return name

    def emit(self, op: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: Any) -> None:
        self.onnx_nodes.append(
            helper.make_node(op, list(inputs), list(outputs), name=outputs[0], **attrs)
        )

    def initializer(self, base: str, array: np.ndarray) -> str:
        """Store ``array`` as an initializer (deduplicated by name and content)."""
        array = np.ascontiguousarray(array)
        existing = self.initializers.get(base)
        if existing is not None:
            previous = numpy_helper.to_array(existing)
            if previous.dtype == array.dtype and np.array_equal(previous, array):
                return base
        name = self.unique(base)
        self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def ints(self, base: str, values: Iterable[int]) -> str:
        return self.initializer(base, np.asarray(list(values), dtype=np.int64))

    # ---- value access

    def value(self, ref: str) -> _Value:
        key = _tensor_key(*_split_input(ref))
        try:
            return self.values[key]
        except KeyError:
            raise TfjsConversionError(f"tensor {ref!r} was never produced") from None

    def const_input(self, node: Mapping[str, Any], index: int) -> np.ndarray:
        value = self.value(node["input"][index])
        if value.const is None:
            raise TfjsConversionError(
                f"{node['name']} ({node['op']}): input {index} must be a constant"
            )
        return value.const

    def in_layout(self, value: _Value, perm: Perm, hint: str) -> str:
        """ONNX name of ``value`` stored so that ``tf == transpose(stored, perm)``."""
        if value.const is not None:
            return self.initializer(hint, np.transpose(value.const, _inverse(perm)))
        assert value.perm is not None
        composite = tuple(value.perm[i] for i in _inverse(perm))
        if composite == _identity(len(composite)):
            return value.name
        key = (value.name, composite)
        if key not in self.layout_cache:
            out = self.unique(f"{value.name}/transpose")
            self.emit("Transpose", [value.name], [out], perm=list(composite))
            self.layout_cache[key] = out
        return self.layout_cache[key]

    def plain(self, value: _Value, hint: str) -> str:
        """ONNX name of ``value`` in TF's own layout."""
        rank = len(value.shape) if value.shape is not None else len(value.perm or ())
        return self.in_layout(value, _identity(rank), hint)

    def bind(self, node: Mapping[str, Any], value: _Value, index: int = 0) -> None:
        self.values[_tensor_key(node["name"], index)] = value

    def output(self, node: Mapping[str, Any], index: int = 0) -> str:
        return self.unique(_tensor_key(node["name"], index))

    # ---- driver

    def run(self) -> None:
        for node in self.nodes:
            op = node["op"]
            handler = _HANDLERS.get(op)
            if handler is None:
                raise TfjsConversionError(f"{node['name']}: unsupported op {op}")
            handler(self, node)

    def finish(self, outputs: Sequence[tuple[str, str]], graph_name: str) -> onnx.GraphProto:
        """Graph with ``outputs`` = (TF tensor ref, ONNX output name), unused nodes dropped."""
        infos = []
        for _, out_name in outputs:
            if out_name in self.used_names:  # an op's own tensor (not an Identity) is asked for
                self._rename_tensor(out_name, self.unique(f"{out_name}/value"))
        for ref, out_name in outputs:
            value = self.value(ref)
            if value.is_const:
                raise TfjsConversionError(f"output {ref} is a constant")
            stored = self.plain(value, out_name)
            self.used_names.add(out_name)
            self.emit("Identity", [stored], [out_name])
            dims = [d if d >= 0 else None for d in value.shape] if value.shape else None
            infos.append(helper.make_tensor_value_info(out_name, _onnx_dtype(value.dtype), dims))
        names = [name for _, name in outputs]
        self.onnx_nodes = _fold_conv_bias(
            self.onnx_nodes, self.initializers, self.initializer, set(names)
        )
        nodes = self._live_nodes(names)
        used = {i for n in nodes for i in n.input}
        inits = [t for name, t in self.initializers.items() if name in used]
        inputs = [i for i in self.inputs if i.name in used]
        return helper.make_graph(nodes, graph_name, inputs, infos, initializer=inits)

    def _rename_tensor(self, old: str, new: str) -> None:
        """Call the ONNX tensor ``old`` ``new`` everywhere, freeing ``old`` for an output."""
        for node in self.onnx_nodes:
            if node.name == old:  # onnxruntime refuses two nodes of one name
                node.name = new
            for names in (node.input, node.output):
                for i, name in enumerate(names):
                    if name == old:
                        names[i] = new
        for key, value in self.values.items():
            if value.name == old:
                self.values[key] = _Value(value.dtype, value.shape, new, value.perm, value.const)
        self.layout_cache = {
            (new if name == old else name, perm): (new if out == old else out)
            for (name, perm), out in self.layout_cache.items()
        }

    def _live_nodes(self, outputs: Sequence[str]) -> list[onnx.NodeProto]:
        producer = {o: n for n in self.onnx_nodes for o in n.output}
        needed, stack = set(), list(outputs)
        while stack:
            name = stack.pop()
            node = producer.get(name)
            if node is None or id(node) in needed:
                continue
            needed.add(id(node))
            stack.extend(i for i in node.input if i)
        return [n for n in self.onnx_nodes if id(n) in needed]


def _fold_conv_bias(
    nodes: list[onnx.NodeProto],
    initializers: Mapping[str, TensorProto],
    add_initializer: Callable[[str, np.ndarray], str],
    outputs: set[str],
) -> list[onnx.NodeProto]:
    """``Add(Conv(x), per-channel constant)`` → one ``Conv`` with that bias.

    Saves a full pass over every conv output; onnx-tf exports add conv biases separately.
    """
    uses: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    convs = {n.output[0]: n for n in nodes if n.op_type == "Conv" and len(n.input) == 2}
    dropped: set[int] = set()
    for node in nodes:
        if node.op_type != "Add":
            continue
        for x, b in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            conv = convs.get(x)
            if conv is None or uses[x] != 1 or x in outputs or b not in initializers:
                continue
            channels = int(initializers[conv.input[1]].dims[0])
            bias = numpy_helper.to_array(initializers[b])
            if bias.ndim > 4:
                continue
            bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
            if bias.shape[0] != 1 or bias.shape[2:] != (1, 1) or bias.shape[1] not in (1, channels):
                continue
            vector = np.broadcast_to(bias.reshape(-1), (channels,)).astype(np.float32)
            conv.input.append(add_initializer(f"{conv.name}/bias", vector))
            conv.output[0] = node.output[0]
            del convs[x]
            dropped.add(id(node))
            break
    return [n for n in nodes if id(n) not in dropped]


# --------------------------------------------------------------------------- op handlers


def _placeholder(c: _Converter, node: Mapping[str, Any]) -> None:
    attr_shape = _attr(node, "shape")
    shape = _tf_shape(attr_shape.get("shape") if attr_shape else None)
    dtype = _attr_dtype(node, "dtype")
    name = c.unique(node["name"])
    dims: list[int | str] | None = None
    if shape is not None:
        dims = [d if d >= 0 else f"{name}_d{i}" for i, d in enumerate(shape)]
    c.inputs.append(helper.make_tensor_value_info(name, _onnx_dtype(dtype), dims))
    perm = _identity(len(shape)) if shape is not None else None
    c.bind(node, _Value(dtype=dtype, shape=shape, name=name, perm=perm))


def _inline_tensor(node: Mapping[str, Any], dtype: np.dtype) -> np.ndarray:
    tensor = (_attr(node, "value") or {}).get("tensor", {})
    shape = _tf_shape(tensor.get("tensorShape")) or ()
    for key in ("floatVal", "intVal", "int64Val", "boolVal", "doubleVal", "halfVal"):
        if key in tensor:
            flat = np.asarray(tensor[key]).astype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            if flat.size == count:
                return flat.reshape(shape)
            return np.full(shape, flat[-1] if flat.size else 0, dtype=dtype)
    raise TfjsConversionError(f"{node['name']}: constant has no weight and no inline value")


def _const_node(c: _Converter, node: Mapping[str, Any]) -> None:
    dtype = _attr_dtype(node, "dtype")
    if node["name"] in c.weights:
        array = np.asarray(c.weights[node["name"]]).astype(dtype, copy=False)
    else:
        array = _inline_tensor(node, dtype)
    c.bind(node, _const(array))


def _alias(c: _Converter, node: Mapping[str, Any]) -> None:
    c.bind(node, c.value(node["input"][0]))


def _unary(c: _Converter, node: Mapping[str, Any]) -> None:
    x = c.value(node["input"][0])
    op = node["op"]
    if x.is_const:
        x = _Value(x.dtype, x.shape, c.plain(x, node["name"] + "/x"), _identity(len(x.shape or ())))
    out = c.output(node)
    attrs: dict[str, Any] = {}
    inputs = [x.name]
    if op == "LeakyRelu":
        onnx_op, attrs["alpha"] = "LeakyRelu", _attr_float(node, "alpha", 0.2)
    elif op == "Relu6":
        onnx_op = "Clip"
        inputs += [
            c.initializer("relu6/min", np.array(0, x.dtype)),
            c.initializer("relu6/max", np.array(6, x.dtype)),
        ]
    else:
        onnx_op = _UNARY[op]
    c.emit(onnx_op, inputs, [out], **attrs)
    c.bind(node, _Value(x.dtype, x.shape, out, x.perm))


def _bias_to_tf_rank(node: Mapping[str, Any], bias: np.ndarray) -> np.ndarray:
    """``BiasAdd`` bias as a broadcastable constant for the data format."""
    if node["op"] == "BiasAdd" and _attr_str(node, "data_format", "NHWC") == "NCHW":
        return bias.reshape(-1, 1, 1)
    return bias


def _binary(c: _Converter, node: Mapping[str, Any]) -> None:
    onnx_op, fold = _BINARY[node["op"]]
    a, b = c.value(node["input"][0]), c.value(node["input"][1])
    if b.is_const and node["op"] == "BiasAdd":
        b = _const(_bias_to_tf_rank(node, b.const))  # type: ignore[arg-type]  # is_const
    comparison = node["op"] in _COMPARISONS
    if a.is_const and b.is_const:
        result_dtype = np.dtype(np.bool_) if comparison else a.dtype
        c.bind(node, _const(fold(a.const, b.const).astype(result_dtype)))  # type: ignore[arg-type]  # consts
        return
    shape = _broadcast_shape(a.shape, b.shape)
    variable = b if a.is_const else a
    dtype = np.dtype(np.bool_) if comparison else variable.dtype
    rank = len(shape) if shape is not None else None
    same_layout = all(
        v.is_const or (v.perm == variable.perm and v.shape is not None and len(v.shape) == rank)
        for v in (a, b)
    )
    perm: tuple[int, ...] | None
    if same_layout and variable.perm is not None and rank == len(variable.perm):
        perm = variable.perm
        names = [c.in_layout(_expand_const(v, rank), perm, node["name"] + "/c") for v in (a, b)]
    else:
        perm = _identity(rank) if rank is not None else None
        names = [c.plain(v, node["name"] + "/c") for v in (a, b)]
    out = c.output(node)
    c.emit(onnx_op, names, [out])
    c.bind(node, _Value(dtype, shape, out, perm))


def _expand_const(value: _Value, rank: int) -> _Value:
    """A constant reshaped to ``rank`` dims (leading 1s) so it can be transposed with a perm."""
    if value.const is None or value.const.ndim == rank:
        return value
    return _const(value.const.reshape((1,) * (rank - value.const.ndim) + value.const.shape))


def _transpose(c: _Converter, node: Mapping[str, Any]) -> None:
    x = c.value(node["input"][0])
    perm = tuple(int(p) for p in c.const_input(node, 1))
    if x.const is not None:
        c.bind(node, _const(np.transpose(x.const, perm)))
        return
    assert x.perm is not None
    shape = tuple(x.shape[p] for p in perm) if x.shape is not None else None
    c.bind(node, _Value(x.dtype, shape, x.name, tuple(x.perm[p] for p in perm)))


def _resolve_reshape(in_shape: Shape | None, target: Sequence[int]) -> Shape:
    target = [int(t) for t in target]
    if -1 in target and in_shape is not None and -1 not in in_shape:
        known = int(np.prod([t for t in target if t != -1], dtype=np.int64))
        total = int(np.prod(in_shape, dtype=np.int64))
        target[target.index(-1)] = total // known if known else 0
    return tuple(target)


def _reshape(c: _Converter, node: Mapping[str, Any]) -> None:
    x = c.value(node["input"][0])
    target = c.const_input(node, 1)
    if x.const is not None:
        c.bind(node, _const(x.const.reshape([int(t) for t in target])))
        return
    shape = _resolve_reshape(x.shape, [int(t) for t in target])
    out = c.output(node)
    allow_zero = 1 if 0 in shape else 0
    c.emit(
        "Reshape",
        [c.plain(x, node["name"] + "/x"), c.ints(node["name"] + "/shape", shape)],
        [out],
        **({"allowzero": 1} if allow_zero else {}),
    )
    c.bind(node, _Value(x.dtype, shape, out, _identity(len(shape))))


def _cast(c: _Converter, node: Mapping[str, Any]) -> None:
    x = c.value(node["input"][0])
    dtype = _attr_dtype(node, "DstT")
    if x.const is not None:
        c.bind(node, _const(x.const.astype(dtype)))
        return
    out = c.output(node)
    c.emit("Cast", [x.name], [out], to=_onnx_dtype(dtype))
    c.bind(node, _Value(dtype, x.shape, out, x.perm))


def _sparse_to_dense(c: _Converter, node: Mapping[str, Any]) -> None:
    """Only constant-folded: onnx-tf exports use it to compute Reshape targets."""
    indices, shape, values, default = (c.const_input(node, i) for i in range(4))
    dense = np.full([int(s) for s in np.atleast_1d(shape)], default, dtype=values.dtype)
    if indices.size:
        idx = indices.reshape(indices.shape[0], -1) if indices.ndim > 1 else indices[:, None]
        dense[tuple(idx.T)] = values
    c.bind(node, _const(dense))


def _pad(c: _Converter, node: Mapping[str, Any]) -> None:
    x = c.value(node["input"][0])
    paddings = c.const_input(node, 1).astype(np.int64).reshape(-1, 2)
    fill = c.const_input(node, 2) if node["op"] == "PadV2" else np.array(0, x.dtype)
    if x.const is not None:
        fill_value = fill.item()
        c.bind(node, _const(np.pad(x.const, paddings, constant_values=fill_value)))
        return
    assert x.perm is not None
    if not paddings.any():
        c.bind(node, x)
        return
    stored = np.zeros_like(paddings)
    for axis, p in enumerate(x.perm):
        stored[p] = paddings[axis]
    out = c.output(node)
    inputs = [
        x.name,
        c.ints(node["name"] + "/pads", [*stored[:, 0], *stored[:, 1]]),
        c.initializer(node["name"] + "/value", np.asarray(fill, dtype=x.dtype).reshape(())),
    ]
    c.emit("Pad", inputs, [out], mode="constant")
    shape = None
    if x.shape is not None:
        shape = tuple(
            d + int(a + b) if d >= 0 else -1 for d, (a, b) in zip(x.shape, paddings, strict=True)
        )
    c.bind(node, _Value(x.dtype, shape, out, x.perm))


def _concat(c: _Converter, node: Mapping[str, Any]) -> None:
    refs = [r for r in node["input"] if not r.startswith("^")]
    parts = [c.value(r) for r in refs[:-1]]
    axis = int(c.const_input(node, len(refs) - 1))
    if all(p.const is not None for p in parts):
        c.bind(node, _const(np.concatenate([p.const for p in parts], axis=axis)))
        return
    lead = next(p for p in parts if not p.is_const)
    assert lead.perm is not None
    rank = len(lead.perm)
    axis %= rank
    names = [c.in_layout(p, lead.perm, node["name"] + "/c") for p in parts]
    out = c.output(node)
    c.emit("Concat", names, [out], axis=lead.perm[axis])
    shape = None
    if all(p.shape is not None for p in parts) and lead.shape is not None:
        sizes = [p.shape[axis] for p in parts]  # type: ignore[index]  # all() checked shapes
        total = -1 if -1 in sizes else sum(sizes)
        shape = (*lead.shape[:axis], total, *lead.shape[axis + 1 :])
    c.bind(node, _Value(lead.dtype, shape, out, lead.perm))


def _split(c: _Converter, node: Mapping[str, Any]) -> None:
    if node["op"] == "Split":  # inputs: split_dim, value
        x, axis = c.value(node["input"][1]), int(c.const_input(node, 0))
        sizes: list[int] | None = None
    else:  # SplitV inputs: value, size_splits, split_dim
        x, axis = c.value(node["input"][0]), int(c.const_input(node, 2))
        sizes = [int(s) for s in c.const_input(node, 1)]
    if x.shape is None or x.perm is None:
        raise TfjsConversionError(f"{node['name']}: Split needs a known rank")
    axis %= len(x.shape)
    dim = x.shape[axis]
    count = _attr_int(node, "num_split", len(sizes) if sizes else 1)
    if sizes is None:
        sizes = [dim // count] * count if dim >= 0 else [-1] * count
    if -1 in sizes:
        if dim < 0 or sizes.count(-1) > 1:
            raise TfjsConversionError(f"{node['name']}: cannot resolve split sizes {sizes}")
        sizes[sizes.index(-1)] = dim - (sum(sizes) + 1)
    if x.const is not None:
        pieces = np.split(x.const, np.cumsum(sizes)[:-1], axis=axis)
        for i, piece in enumerate(pieces):
            c.bind(node, _const(piece), i)
        return
    outs = [c.output(node, i) for i in range(len(sizes))]
    c.emit("Split", [x.name, c.ints(node["name"] + "/sizes", sizes)], outs, axis=x.perm[axis])
    for i, (out, size) in enumerate(zip(outs, sizes, strict=True)):
        shape = (*x.shape[:axis], size, *x.shape[axis + 1 :])
        c.bind(node, _Value(x.dtype, shape, out, x.perm), i)


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF 'SAME' padding for one axis: the extra pixel goes at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _spatial(
    node: Mapping[str, Any], nchw_shape: Shape | None, kernel: Sequence[int]
) -> tuple[dict[str, Any], Shape | None]:
    """ONNX conv/pool attributes (strides, dilations, pads) and the NCHW output shape."""
    nhwc = _attr_str(node, "data_format", "NHWC") != "NCHW"
    hw = (1, 2) if nhwc else (2, 3)
    strides = _attr_ints(node, "strides", [1, 1, 1, 1])
    dilations = _attr_ints(node, "dilations", [1, 1, 1, 1])
    stride = [strides[hw[0]], strides[hw[1]]]
    dilation = [dilations[hw[0]], dilations[hw[1]]]
    padding = _attr_str(node, "padding", "VALID")
    size = list(nchw_shape[2:]) if nchw_shape is not None else [-1, -1]
    attrs: dict[str, Any] = {"strides": stride}
    if padding == "VALID":
        pads = [0, 0, 0, 0]
    elif padding == "EXPLICIT":
        ex = _attr_ints(node, "explicit_paddings", [0] * 8)
        pads = [ex[2 * hw[0]], ex[2 * hw[1]], ex[2 * hw[0] + 1], ex[2 * hw[1] + 1]]
    elif padding == "SAME" and -1 not in size:
        (t, b), (left, r) = (
            _same_pads(size[i], kernel[i], stride[i], dilation[i]) for i in range(2)
        )
        pads = [t, left, b, r]
    elif padding == "SAME":
        attrs["auto_pad"] = "SAME_UPPER"
        pads = []
    else:
        raise TfjsConversionError(f"{node['name']}: unsupported padding {padding}")
    if pads:
        attrs["pads"] = pads
    if any(d != 1 for d in dilation):
        attrs["dilations"] = dilation
    out_shape: Shape | None = None
    if nchw_shape is not None:
        hw_out = []
        for i in range(2):
            if size[i] < 0:
                hw_out.append(-1)
            elif not pads:
                hw_out.append(-(-size[i] // stride[i]))
            else:
                span = size[i] + pads[i] + pads[i + 2] - (kernel[i] - 1) * dilation[i] - 1
                hw_out.append(span // stride[i] + 1)
        out_shape = (nchw_shape[0], nchw_shape[1], *hw_out)
    return attrs, out_shape


def _nchw_input(c: _Converter, node: Mapping[str, Any], x: _Value) -> tuple[str, Shape | None]:
    """The op's 4-D input as an ONNX NCHW tensor, plus its NCHW shape."""
    nhwc = _attr_str(node, "data_format", "NHWC") != "NCHW"
    want = _NCHW_AS_NHWC if nhwc else _identity(4)
    shape = None
    if x.shape is not None:
        shape = tuple(x.shape[i] for i in ((0, 3, 1, 2) if nhwc else range(4)))
    return c.in_layout(x, want, node["name"] + "/x"), shape


def _bind_nchw(
    c: _Converter, node: Mapping[str, Any], out: str, shape: Shape | None, dtype: np.dtype
) -> None:
    nhwc = _attr_str(node, "data_format", "NHWC") != "NCHW"
    perm = _NCHW_AS_NHWC if nhwc else _identity(4)
    tf_shape = tuple(shape[i] for i in perm) if shape is not None else None
    c.bind(node, _Value(dtype, tf_shape, out, perm))


def _activation(
    c: _Converter, node: Mapping[str, Any], op: str, x: str, args: Sequence[np.ndarray]
) -> str:
    """Emit the activation of a fused conv on the NCHW tensor ``x``."""
    out = c.unique(f"{node['name']}/{op.lower()}")
    if op == "Relu":
        c.emit("Relu", [x], [out])
    elif op == "Relu6":
        lo = c.initializer("relu6/min", np.array(0, np.float32))
        hi = c.initializer("relu6/max", np.array(6, np.float32))
        c.emit("Clip", [x, lo, hi], [out])
    elif op == "LeakyRelu":
        c.emit("LeakyRelu", [x], [out], alpha=_attr_float(node, "leakyrelu_alpha", 0.2))
    elif op == "Elu":
        c.emit("Elu", [x], [out])
    elif op == "Sigmoid":
        c.emit("Sigmoid", [x], [out])
    elif op == "Prelu":
        slope = np.asarray(args[1], np.float32).reshape(-1, 1, 1)
        c.emit("PRelu", [x, c.initializer(node["name"] + "/alpha", slope)], [out])
    else:
        raise TfjsConversionError(f"{node['name']}: unsupported fused activation {op}")
    return out


def _conv(c: _Converter, node: Mapping[str, Any]) -> None:
    op = node["op"]
    x = c.value(node["input"][0])
    kernel = c.const_input(node, 1).astype(np.float32)
    kh, kw, cin, cout = kernel.shape
    depthwise = "Depthwise" in op
    if depthwise:  # [H, W, C, M] -> [C*M, 1, H, W]; output channel c*M + m as in TF
        weights = kernel.reshape(kh, kw, cin * cout).transpose(2, 0, 1)[:, None]
    else:  # HWIO -> OIHW
        weights = kernel.transpose(3, 2, 0, 1)
    source, shape = _nchw_input(c, node, x)
    attrs, out_shape = _spatial(node, shape, (kh, kw))
    if out_shape is not None:
        out_shape = (out_shape[0], weights.shape[0], *out_shape[2:])
    if depthwise:
        attrs["group"] = cin
    fused = _attr_strs(node, "fused_ops") if op.startswith(("_Fused", "Fused")) else []
    num_args = _attr_int(node, "num_args", 0)
    args = [c.const_input(node, 2 + i) for i in range(num_args)]
    inputs = [source, c.initializer(node["name"] + "/weights", weights)]
    if fused[:1] == ["BiasAdd"]:
        inputs.append(c.initializer(node["name"] + "/bias", args[0].astype(np.float32)))
        fused = fused[1:]
    elif fused and fused[0] not in ("Relu", "Relu6", "LeakyRelu", "Elu", "Sigmoid"):
        raise TfjsConversionError(f"{node['name']}: unsupported fused ops {fused}")
    out = c.unique(node["name"] if not fused else f"{node['name']}/conv")
    c.emit("Conv", inputs, [out], kernel_shape=[kh, kw], **attrs)
    for activation in fused:
        out = _activation(c, node, activation, out, args)
    _bind_nchw(c, node, out, out_shape, np.dtype(np.float32))


def _pool(c: _Converter, node: Mapping[str, Any]) -> None:
    x = c.value(node["input"][0])
    nhwc = _attr_str(node, "data_format", "NHWC") != "NCHW"
    ksize = _attr_ints(node, "ksize", [1, 1, 1, 1])
    kernel = [ksize[1], ksize[2]] if nhwc else [ksize[2], ksize[3]]
    source, shape = _nchw_input(c, node, x)
    attrs, out_shape = _spatial(node, shape, kernel)
    out = c.output(node)
    onnx_op = "MaxPool" if node["op"] == "MaxPool" else "AveragePool"
    c.emit(onnx_op, [source], [out], kernel_shape=kernel, **attrs)
    _bind_nchw(c, node, out, out_shape, x.dtype)


def _resize(c: _Converter, node: Mapping[str, Any]) -> None:
    x = c.value(node["input"][0])
    height, width = (int(s) for s in c.const_input(node, 1))
    source, shape = _nchw_input(c, node, x)
    bilinear = node["op"] == "ResizeBilinear"
    if _attr_bool(node, "align_corners"):
        transform, rounding = "align_corners", "round_prefer_ceil"
    elif _attr_bool(node, "half_pixel_centers"):
        transform, rounding = "half_pixel", "round_prefer_ceil"
    else:
        transform, rounding = "asymmetric", "floor"
    attrs: dict[str, Any] = {"mode": "linear" if bilinear else "nearest"}
    attrs["coordinate_transformation_mode"] = transform
    if not bilinear:
        attrs["nearest_mode"] = rounding
    out = c.output(node)
    if shape is not None and -1 not in shape[:2]:
        sizes = c.ints(node["name"] + "/sizes", [shape[0], shape[1], height, width])
        c.emit("Resize", [source, "", "", sizes], [out], **attrs)
    elif shape is not None and -1 not in shape[2:]:
        scales = np.array([1, 1, height / shape[2], width / shape[3]], np.float32)
        c.emit(
            "Resize", [source, "", c.initializer(node["name"] + "/scales", scales)], [out], **attrs
        )
    else:
        raise TfjsConversionError(f"{node['name']}: resize needs a known input size")
    out_shape = (shape[0], shape[1], height, width)
    _bind_nchw(c, node, out, out_shape, x.dtype)


def _mean(c: _Converter, node: Mapping[str, Any]) -> None:
    x = c.value(node["input"][0])
    if x.shape is None or x.perm is None:
        raise TfjsConversionError(f"{node['name']}: Mean needs a known rank")
    rank = len(x.shape)
    axes = sorted({int(a) % rank for a in np.atleast_1d(c.const_input(node, 1))})
    keep = _attr_bool(node, "keep_dims")
    if x.const is not None:
        c.bind(node, _const(x.const.mean(axis=tuple(axes), keepdims=keep).astype(x.dtype)))
        return
    stored_axes = sorted(x.perm[a] for a in axes)
    out = c.output(node)
    c.emit("ReduceMean", [x.name], [out], axes=stored_axes, keepdims=int(keep))
    if keep:
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        c.bind(node, _Value(x.dtype, shape, out, x.perm))
        return
    remaining = [i for i in range(rank) if i not in axes]
    kept_stored = sorted(x.perm[i] for i in remaining)
    perm = tuple(kept_stored.index(x.perm[i]) for i in remaining)
    c.bind(node, _Value(x.dtype, tuple(x.shape[i] for i in remaining), out, perm))


_Handler = Callable[[_Converter, Mapping[str, Any]], None]
_HANDLERS: Final[dict[str, _Handler]] = {
    "Placeholder": _placeholder,
    "Const": _const_node,
    **dict.fromkeys(_ALIASES, _alias),
    **dict.fromkeys([*_UNARY, "LeakyRelu", "Relu6"], _unary),
    **dict.fromkeys(_BINARY, _binary),
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Cast": _cast,
    "SparseToDense": _sparse_to_dense,
    "Pad": _pad,
    "PadV2": _pad,
    "ConcatV2": _concat,
    "Split": _split,
    "SplitV": _split,
    **dict.fromkeys(_CONVS, _conv),
    "MaxPool": _pool,
    "AvgPool": _pool,
    "ResizeBilinear": _resize,
    "ResizeNearestNeighbor": _resize,
    "Mean": _mean,
}
#: TF op names the converter handles
SUPPORTED_OPS: Final = frozenset(_HANDLERS)


# --------------------------------------------------------------------------- public API


def _natural_key(name: str) -> tuple[str, int]:
    base, _, suffix = name.rpartition("_")
    if suffix.isdigit():
        return base, int(suffix)
    return name, -1


def _graph_outputs(model: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]) -> list[str]:
    """Output tensor refs: the signature's, else nodes nobody consumes; in natural name order."""
    signature = model.get("signature", {}).get("outputs") or {}
    refs = [spec.get("name", key) for key, spec in signature.items()]
    if not refs:
        used = {_split_input(r.lstrip("^"))[0] for n in nodes for r in n.get("input", [])}
        refs = [n["name"] for n in nodes if n["name"] not in used and n["op"] != "Const"]
    return sorted(refs, key=lambda r: _natural_key(_split_input(r)[0]))


def _needed_nodes(
    nodes: Sequence[Mapping[str, Any]], refs: Sequence[str]
) -> list[Mapping[str, Any]]:
    """The nodes ``refs`` depend on, in file order: a graph's own post-processing past the
    chosen outputs (CenterNet's top-k decoding) is never converted, so its ops need no
    handler."""
    by_name = {n["name"]: n for n in nodes}
    needed: set[str] = set()
    stack = [_split_input(r)[0] for r in refs]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        node = by_name.get(name)
        if node is None:
            raise TfjsConversionError(f"output {name!r} is not in the graph")
        needed.add(name)
        stack.extend(_split_input(r.lstrip("^"))[0] for r in node.get("input", []))
    return [n for n in nodes if n["name"] in needed]


def convert_graph_model(
    model: Mapping[str, Any],
    weights: Mapping[str, np.ndarray],
    *,
    graph_name: str = "tfjs_graph_model",
    outputs: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """ONNX model of a parsed TF.js graph ``model.json`` and its decoded ``weights``.

    ``outputs`` (TF tensor refs such as ``"Identity:0"``) default to the model signature's;
    only the nodes they depend on are converted. ONNX inputs and outputs are named after the
    TF tensors without ``:0``.
    """
    topology = model.get("modelTopology", model)
    nodes = topology.get("node")
    if not nodes:
        raise TfjsConversionError("not a TF.js graph model: modelTopology.node is missing")
    refs = list(outputs) if outputs is not None else _graph_outputs(model, nodes)
    converter = _Converter(_needed_nodes(nodes, refs), weights)
    converter.run()
    named = [(ref, _split_input(ref)[0]) for ref in refs]
    graph = converter.finish(named, graph_name)
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=_PRODUCER,
        producer_version="1",
    )
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto)
    return proto


def convert_model_dir(model_json: Path) -> onnx.ModelProto:
    """Convert ``model.json`` whose weight shards sit in the same directory."""
    model = json.loads(model_json.read_text())
    return convert_graph_model(model, load_weights(model, model_json.parent))
