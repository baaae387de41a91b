"""Tiny ONNX "detectors" built with ``onnx.helper`` whose outputs are known exactly.

Each output is ``base + gain × mean(image)``: ``base`` and ``gain`` are constants of the
output's shape (without the batch axis), ``mean`` is the mean of one image's input tensor.
With no gain the outputs are exactly ``base`` whatever the image (decoding checks); with a
gain every image of a batch gets its own outputs (batched vs unbatched checks: a mixed-up
slot would show). fp16 and uint8 inputs go through Cast nodes, as real exports do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16,
          np.uint8: TensorProto.UINT8}


def detector(outputs: Mapping[str, np.ndarray], *, input_shape: Sequence[int | str] = (
             "N", 3, 640, 640), input_dtype: type = np.float32, output_dtype: type = np.float32,
             gains: Mapping[str, np.ndarray] | None = None,
             metadata: Mapping[str, str] | None = None, input_name: str = "images") -> bytes:
    """A serialized model whose named outputs are ``base + gain × mean(image)``."""
    nodes, inits = [], []
    source = input_name
    if input_dtype is not np.float32:
        nodes.append(helper.make_node("Cast", [input_name], ["x"], to=TensorProto.FLOAT))
        source = "x"
    nodes.append(helper.make_node("ReduceMean", [source], ["mean"],
                                  axes=list(range(1, len(input_shape))),
                                  keepdims=1))
    graph_outputs = []
    for name, base in outputs.items():
        base = np.asarray(base, np.float32)
        gain = np.asarray((gains or {}).get(name, np.zeros_like(base)), np.float32)
        rank = base.ndim + 1
        inits += [numpy_helper.from_array(base[None], f"{name}_base"),
                  numpy_helper.from_array(gain[None], f"{name}_gain"),
                  numpy_helper.from_array(np.array([-1] + [1] * (rank - 1), np.int64),
                                          f"{name}_shape")]
        nodes += [
            helper.make_node("Reshape", ["mean", f"{name}_shape"], [f"{name}_m"]),
            helper.make_node("Mul", [f"{name}_gain", f"{name}_m"], [f"{name}_g"]),
        ]
        final = name if output_dtype is np.float32 else f"{name}_f32"
        nodes.append(helper.make_node("Add", [f"{name}_base", f"{name}_g"], [final]))
        if output_dtype is not np.float32:
            nodes.append(helper.make_node("Cast", [final], [name], to=_TYPES[output_dtype]))
        graph_outputs.append(helper.make_tensor_value_info(
            name, _TYPES[output_dtype], ["N", *base.shape]))
    graph = helper.make_graph(
        nodes, "test_detector",
        [helper.make_tensor_value_info(input_name, _TYPES[input_dtype], list(input_shape))],
        graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write(path: Path, data: bytes) -> str:
    """Write a model file; returns its path as a string (what ``path=`` takes)."""
    path.write_bytes(data)
    return str(path)


def names_metadata(names: Sequence[str]) -> dict[str, str]:
    """``names`` as Ultralytics writes it: a Python dict literal in ``metadata_props``."""
    return {"names": repr(dict(enumerate(names)))}
