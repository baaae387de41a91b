"""TF.js graph model → ONNX converter, checked against an independent numpy interpreter.

Small graphs are written here node by node (with weights serialized the way TF.js does,
float16 quantization included), converted, run on onnxruntime and compared with
``tfjs_reference.run_reference`` evaluating the *TF.js* graph with TF's NHWC semantics.
"""

from __future__ import annotations

import base64
import collections
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tilescope.models.tfjs import (
    SUPPORTED_OPS,
    TfjsConversionError,
    convert_graph_model,
    convert_model_dir,
    decode_weights,
)
from tilescope.models.weights import CENTERNET, read_nanodet_tfjs, read_tfjs

RNG = np.random.default_rng(1234)


# ------------------------------------------------------------------ a tiny TF.js writer


def s_attr(value: str) -> dict[str, str]:
    return {"s": base64.b64encode(value.encode()).decode()}


def ints_attr(values: Sequence[int]) -> dict[str, Any]:
    return {"list": {"i": [str(v) for v in values]}}


def strs_attr(values: Sequence[str]) -> dict[str, Any]:
    return {"list": {"s": [base64.b64encode(v.encode()).decode() for v in values]}}


def type_attr(name: str = "DT_FLOAT") -> dict[str, str]:
    return {"type": name}


class GraphWriter:
    """Builds ``model.json`` + one weight shard exactly as the TF.js converter lays them out."""

    def __init__(self, float16: bool = True) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.specs: list[dict[str, Any]] = []
        self.blobs: list[bytes] = []
        self.float16 = float16

    def input(self, name: str, shape: Sequence[int]) -> str:
        dims = [{"size": str(d)} for d in shape]
        attrs = {"shape": {"shape": {"dim": dims}}, "dtype": type_attr()}
        self.nodes.append({"name": name, "op": "Placeholder", "attr": attrs})
        return name

    def const(self, name: str, value: Any, tf_type: str = "DT_FLOAT") -> str:
        array = np.asarray(value)
        spec: dict[str, Any] = {"name": name, "shape": list(array.shape)}
        if tf_type == "DT_FLOAT":
            spec["dtype"] = "float32"
            if self.float16:
                spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
                self.blobs.append(array.astype("<f2").tobytes())
            else:
                self.blobs.append(array.astype("<f4").tobytes())
        else:  # TF.js keeps int64 tensors as int32 in the shards
            spec["dtype"] = "int32"
            self.blobs.append(array.astype("<i4").tobytes())
        self.specs.append(spec)
        tensor = {"dtype": tf_type, "tensorShape": {"dim": [{"size": str(d)} for d in array.shape]}}
        attrs = {"value": {"tensor": tensor}, "dtype": type_attr(tf_type)}
        self.nodes.append({"name": name, "op": "Const", "attr": attrs})
        return name

    def ints(self, name: str, value: Any, tf_type: str = "DT_INT32") -> str:
        return self.const(name, np.asarray(value), tf_type)

    def op(self, name: str, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        self.nodes.append({"name": name, "op": op, "input": list(inputs), "attr": attrs})
        return name

    def model(self, outputs: Sequence[str]) -> tuple[dict[str, Any], dict[str, bytes]]:
        manifest = [{"paths": ["group1-shard1of1.bin"], "weights": self.specs}]
        signature = {"outputs": {f"{o}:0": {"name": f"{o}:0"} for o in outputs}}
        model = {
            "format": "graph-model",
            "modelTopology": {"node": self.nodes},
            "signature": signature,
            "weightsManifest": manifest,
        }
        return model, {"group1-shard1of1.bin": b"".join(self.blobs)}


def conv_attrs(strides: int = 1, padding: str = "VALID", **extra: Any) -> dict[str, Any]:
    return {
        "T": type_attr(),
        "strides": ints_attr([1, strides, strides, 1]),
        "padding": s_attr(padding),
        "data_format": s_attr("NHWC"),
        "dilations": ints_attr([1, 1, 1, 1]),
        **extra,
    }


def weights_of(model: dict[str, Any], shards: dict[str, bytes]) -> dict[str, np.ndarray]:
    return decode_weights(model["weightsManifest"], shards.__getitem__)


def run_onnx(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def op_counts(proto: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in proto.graph.node)


# ------------------------------------------------------------------ test graphs


def onnx_tf_style_graph() -> tuple[GraphWriter, list[str]]:
    """An NCHW network wrapped in NHWC transposes, like onnx-tf exports (and NanoDet)."""
    g = GraphWriter()
    x = g.input("input_1", [1, 3, 12, 10])
    nchw, nhwc = g.ints("to_nchw", [0, 3, 1, 2]), g.ints("to_nhwc", [0, 2, 3, 1])
    p = g.op("pad", "Pad", [x, g.ints("pads", [[0, 0], [0, 0], [1, 1], [1, 1]])])
    t = g.op("t1", "Transpose", [p, nhwc])
    c = g.op("conv1", "Conv2D", [t, g.const("w1", RNG.normal(size=(3, 3, 3, 8)))], **conv_attrs(2))
    a = g.op("bias1", "Add", [c, g.const("b1", RNG.normal(size=8))])
    l1 = g.op("lrelu1", "LeakyRelu", [g.op("t2", "Transpose", [a, nchw])], alpha={"f": 0.1})
    t3 = g.op("t3", "Transpose", [l1, nhwc])
    c2 = g.op("conv2", "Conv2D", [t3, g.const("w2", RNG.normal(size=(1, 1, 8, 8)))], **conv_attrs())
    a2 = g.op("bias2", "Add", [c2, g.const("b2", RNG.normal(size=8))])
    l2 = g.op("lrelu2", "LeakyRelu", [g.op("t4", "Transpose", [a2, nchw])], alpha={"f": 0.1})
    cat = g.op("cat", "ConcatV2", [l1, l2, g.ints("axis", 1)], N={"i": "2"})  # [1,16,6,5]
    pv = g.op(
        "padv2",
        "PadV2",
        [cat, g.ints("pads2", [[0, 0], [0, 0], [0, 1], [0, 1]]), g.const("pad_value", -3.0)],
    )
    mp = g.op(
        "pool",
        "MaxPool",
        [g.op("t5", "Transpose", [pv, nhwc])],
        ksize=ints_attr([1, 2, 2, 1]),
        strides=ints_attr([1, 2, 2, 1]),
        padding=s_attr("VALID"),
        data_format=s_attr("NHWC"),
    )  # NHWC [1,3,3,16]
    rz = g.op(
        "resize",
        "ResizeBilinear",
        [mp, g.ints("size", [6, 5])],
        half_pixel_centers={"b": True},
        align_corners={"b": False},
    )
    s = g.op("sum", "AddV2", [g.op("t6", "Transpose", [rz, nchw]), cat])
    sp = g.op(
        "split",
        "SplitV",
        [s, g.ints("sizes", [10, -1]), g.ints("split_dim", 1)],
        num_split={"i": "2"},
    )
    sig = g.op("sig", "Sigmoid", [sp])
    # the shape arithmetic onnx-tf emits: SparseToDense(empty) + const, folded by the converter
    where = g.ints("where", np.zeros((0, 1)), "DT_INT64")
    dense = g.op(
        "std",
        "SparseToDense",
        [
            where,
            g.ints("dshape", [3], "DT_INT64"),
            g.ints("gather", np.zeros(0), "DT_INT64"),
            g.ints("zeros", 0, "DT_INT64"),
        ],
    )
    target = g.op("target", "AddV2", [g.ints("base_shape", [1, 10, -1], "DT_INT64"), dense])
    r1 = g.op("reshape1", "Reshape", [sig, target])
    g.op("Identity", "Identity", [g.op("t7", "Transpose", [r1, g.ints("p021", [0, 2, 1])])])
    r2 = g.op("reshape2", "Reshape", [f"{sp}:1", g.ints("shape2", [1, 6, -1])])
    g.op("Identity_1", "Identity", [g.op("t8", "Transpose", [r2, g.ints("p021b", [0, 2, 1])])])
    return g, ["Identity", "Identity_1"]


def nhwc_graph() -> tuple[GraphWriter, list[str]]:
    """A TF-native NHWC network: fused convs, depthwise, SAME padding, arithmetic, Mean."""
    g = GraphWriter(float16=False)
    x = g.input("image", [1, 11, 13, 4])
    f = g.op(
        "fused",
        "_FusedConv2D",
        [x, g.const("fw", RNG.normal(size=(3, 3, 4, 6))), g.const("fb", RNG.normal(size=6))],
        **conv_attrs(2, "SAME"),
        fused_ops=strs_attr(["BiasAdd", "Relu"]),
        num_args={"i": "1"},
    )  # [1,6,7,6]
    d = g.op(
        "dw",
        "FusedDepthwiseConv2dNative",
        [f, g.const("dw_w", RNG.normal(size=(3, 3, 6, 2))), g.const("dw_b", RNG.normal(size=12))],
        **conv_attrs(1, "SAME"),
        fused_ops=strs_attr(["BiasAdd", "Relu6"]),
        num_args={"i": "1"},
    )  # [1,6,7,12]
    # a Pad on a tensor the converter keeps in NCHW while TF sees NHWC (not before a
    # MaxPool: onnxruntime's Pad_Fusion wrongly folds zero pads into MaxPool pads)
    d = g.op("pad", "Pad", [d, g.ints("pads", [[0, 0], [1, 2], [0, 1], [0, 0]])])  # [1,9,8,12]
    d2 = g.op(
        "dw2",
        "DepthwiseConv2dNative",
        [d, g.const("dw2_w", RNG.normal(size=(3, 3, 12, 1)))],
        **{**conv_attrs(1, "SAME"), "dilations": ints_attr([1, 2, 2, 1])},
    )
    m = g.op("mul", "Mul", [d2, g.const("scale", RNG.normal(size=12))])
    s = g.op("sub", "Sub", [m, g.const("half", 0.5)])
    r = g.op("div", "RealDiv", [s, g.const("two", 2.0)])
    r6 = g.op("relu6", "Relu6", [r])
    mp = g.op(
        "pool",
        "MaxPool",
        [r6],
        ksize=ints_attr([1, 3, 3, 1]),
        strides=ints_attr([1, 2, 2, 1]),
        padding=s_attr("SAME"),
    )  # [1,4,4,12]
    rz = g.op("resize", "ResizeBilinear", [mp, g.ints("size", [5, 7])], align_corners={"b": True})
    g.op(
        "Identity",
        "Identity",
        [g.op("mean", "Mean", [rz, g.ints("axes", [1, 2])], keep_dims={"b": False})],
    )
    g.op("Identity_1", "Identity", [g.op("relu", "Relu", [rz])])
    return g, ["Identity", "Identity_1"]


def check_against_reference(
    writer: GraphWriter,
    outputs: list[str],
    feeds: dict[str, np.ndarray],
    run_reference: Callable[..., list[np.ndarray]],
) -> onnx.ModelProto:
    model, shards = writer.model(outputs)
    weights = weights_of(model, shards)
    proto = convert_graph_model(model, weights)
    got = run_onnx(proto, feeds)
    expected = run_reference(writer.nodes, weights, feeds, outputs)
    assert [o.name for o in proto.graph.output] == outputs
    declared = [
        tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in proto.graph.output
    ]
    for name, g, e, shape in zip(outputs, got, expected, declared, strict=True):
        assert g.shape == e.shape == shape, name  # the converter's shape tracking is right
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=name)
    return proto


# ------------------------------------------------------------------ tests


def test_onnx_tf_style_graph_matches_reference_and_drops_transposes(run_reference) -> None:
    writer, outputs = onnx_tf_style_graph()
    feeds = {"input_1": RNG.normal(size=(1, 3, 12, 10)).astype(np.float32)}
    proto = check_against_reference(writer, outputs, feeds, run_reference)
    counts = op_counts(proto)
    # NHWC<->NCHW pairs cancel: only the two real output transposes are left ...
    assert counts["Transpose"] == 2
    # ... and both conv biases are folded into their Conv: the one Add left joins two tensors
    assert counts["Add"] == 1
    assert counts["Conv"] == 2
    assert all(len(n.input) == 3 for n in proto.graph.node if n.op_type == "Conv")
    # SparseToDense / shape arithmetic was constant-folded away
    assert not {"SparseToDense", "Cast"} & set(counts)


def test_nhwc_graph_matches_reference(run_reference) -> None:
    writer, outputs = nhwc_graph()
    feeds = {"image": RNG.normal(size=(1, 11, 13, 4)).astype(np.float32)}
    proto = check_against_reference(writer, outputs, feeds, run_reference)
    counts = op_counts(proto)
    assert counts["Conv"] == 3
    # depthwise convs became grouped convs
    groups = [
        next((a.i for a in n.attribute if a.name == "group"), 1)
        for n in proto.graph.node
        if n.op_type == "Conv"
    ]
    assert groups == [1, 6, 12]


def test_conversion_is_deterministic() -> None:
    writer, outputs = onnx_tf_style_graph()
    model, shards = writer.model(outputs)
    first = convert_graph_model(model, weights_of(model, shards)).SerializeToString()
    second = convert_graph_model(model, weights_of(model, shards)).SerializeToString()
    assert first == second


def test_convert_model_dir_reads_shards_from_disk(tmp_path: Path, run_reference) -> None:
    import json

    writer, outputs = onnx_tf_style_graph()
    model, shards = writer.model(outputs)
    (tmp_path / "model.json").write_text(json.dumps(model))
    for name, data in shards.items():
        (tmp_path / name).write_bytes(data)
    proto = convert_model_dir(tmp_path / "model.json")
    feeds = {"input_1": np.ones((1, 3, 12, 10), np.float32)}
    expected = run_reference(writer.nodes, weights_of(model, shards), feeds, outputs)
    for got, exp in zip(run_onnx(proto, feeds), expected, strict=True):
        np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)


def test_decode_weights_float16_affine_and_multiple_shards() -> None:
    halfs = np.array([[0.1, -2.5], [65504.0, 1e-3]], np.float32)
    ints = np.array([7, -8, 2**31 - 1], np.int32)
    quantized = np.array([0, 1, 255], np.uint8)
    raw = np.arange(3, dtype=np.float32)
    blob = (
        halfs.astype("<f2").tobytes()
        + ints.astype("<i4").tobytes()
        + quantized.tobytes()
        + raw.astype("<f4").tobytes()
    )
    manifest = [
        {
            "paths": ["a.bin", "b.bin"],  # one group split over two shards
            "weights": [
                {
                    "name": "h",
                    "shape": [2, 2],
                    "dtype": "float32",
                    "quantization": {"dtype": "float16", "original_dtype": "float32"},
                },
                {"name": "i", "shape": [3], "dtype": "int32"},
                {
                    "name": "q",
                    "shape": [3],
                    "dtype": "float32",
                    "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0},
                },
                {"name": "f", "shape": [3], "dtype": "float32"},
            ],
        }
    ]
    shards = {"a.bin": blob[:5], "b.bin": blob[5:]}
    weights = decode_weights(manifest, shards.__getitem__)
    assert weights["h"].dtype == np.float32
    np.testing.assert_array_equal(weights["h"], halfs.astype(np.float16).astype(np.float32))
    assert weights["h"][0, 0] != np.float32(0.1)  # really went through float16
    np.testing.assert_array_equal(weights["i"], ints)
    np.testing.assert_allclose(weights["q"], [-1.0, -0.5, 126.5])
    np.testing.assert_array_equal(weights["f"], raw)


def test_decode_weights_refuses_short_or_long_shards() -> None:
    manifest = [{"paths": ["a.bin"], "weights": [{"name": "w", "shape": [4], "dtype": "float32"}]}]
    with pytest.raises(TfjsConversionError, match="past the end"):
        decode_weights(manifest, lambda _: b"\0" * 12)
    with pytest.raises(TfjsConversionError, match="manifest uses 16"):
        decode_weights(manifest, lambda _: b"\0" * 20)


def peak_graph() -> tuple[GraphWriter, list[str]]:
    """CenterNet's peak mask: ``heat * Cast(Equal(heat, MaxPool3x3(heat)))``, then a top-k
    that only the graph's own ``detections`` output needs."""
    g = GraphWriter()
    x = g.input("heat", [1, 6, 7, 3])
    heat = g.op("sigmoid", "Sigmoid", [x])
    pooled = g.op(
        "pool", "MaxPool", [heat], ksize=ints_attr([1, 3, 3, 1]),
        strides=ints_attr([1, 1, 1, 1]), padding=s_attr("SAME"), data_format=s_attr("NHWC"),
    )
    equal = g.op("equal", "Equal", [heat, pooled])
    mask = g.op("cast", "Cast", [equal], SrcT=type_attr("DT_BOOL"), DstT=type_attr("DT_FLOAT"))
    peaks = g.op("peaks", "Mul", [heat, mask])  # an op's own tensor is an output
    flat = g.op("flat", "Reshape", [peaks, g.ints("flat_shape", [1, -1])])
    g.op("detections", "TopKV2", [flat, g.ints("k", 5)])
    return g, ["peaks", "detections"]


def test_equal_and_an_op_tensor_as_output_match_reference(run_reference) -> None:
    writer, _ = peak_graph()
    heat = RNG.normal(size=(1, 6, 7, 3)).astype(np.float32)
    heat[0, 2, 3, 1] = heat[0, 2, 4, 1]  # a plateau: both cells equal their 3×3 maximum
    feeds = {"heat": heat}
    proto = check_against_reference(writer, ["peaks"], feeds, run_reference)
    assert op_counts(proto)["Equal"] == 1
    (peaks,) = run_onnx(proto, feeds)
    assert 0 < np.count_nonzero(peaks) < peaks.size  # some cells are peaks, not all
    assert len({n.name for n in proto.graph.node}) == len(proto.graph.node)  # names unique


def test_only_what_the_chosen_outputs_need_is_converted() -> None:
    writer, outputs = peak_graph()
    model, shards = writer.model(outputs)
    weights = weights_of(model, shards)
    assert "TopKV2" not in SUPPORTED_OPS
    with pytest.raises(TfjsConversionError, match="unsupported op TopKV2"):
        convert_graph_model(model, weights)  # the signature asks for the top-k too
    proto = convert_graph_model(model, weights, outputs=["peaks"])
    assert "TopK" not in op_counts(proto)
    with pytest.raises(TfjsConversionError, match="'nowhere' is not in the graph"):
        convert_graph_model(model, weights, outputs=["nowhere"])


def test_unsupported_op_is_named() -> None:
    g = GraphWriter()
    g.op("Identity", "Softmax", [g.input("x", [1, 4])])
    model, shards = g.model(["Identity"])
    assert "Softmax" not in SUPPORTED_OPS
    with pytest.raises(TfjsConversionError, match="unsupported op Softmax"):
        convert_graph_model(model, weights_of(model, shards))


def test_nanodet_conversion_matches_reference(nanodet_tarball: Path, run_reference) -> None:
    """The real 489-node NanoDet graph: ONNX == TF semantics on random input."""
    model, weights = read_nanodet_tfjs(nanodet_tarball)
    proto = convert_graph_model(model, weights)
    counts = op_counts(proto)
    assert counts["Conv"] == 34
    assert counts["Transpose"] == 6  # only the [1, C, cells] -> [1, cells, C] output transposes
    feeds = {"input_1": RNG.normal(size=(1, 3, 416, 416)).astype(np.float32)}
    outputs = [f"Identity{s}" for s in ("", "_1", "_2", "_3", "_4", "_5")]
    got = run_onnx(proto, feeds)
    expected = run_reference(model["modelTopology"]["node"], weights, feeds, outputs)
    shapes = [(1, 2704, 80), (1, 676, 80), (1, 169, 80), (1, 2704, 44), (1, 676, 44), (1, 169, 44)]
    for name, g, e, shape in zip(outputs, got, expected, shapes, strict=True):
        assert g.shape == e.shape == shape, name
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=name)


def test_centernet_conversion_matches_reference(nanodet_tarball: Path, run_reference) -> None:
    """The real CenterNet graph up to its heat map, peak-masked heat map and box sides:
    ONNX == TF semantics on a random 0–255 image."""
    model, weights = read_tfjs(nanodet_tarball, "centernet")
    outputs = ["tower_0/keypoints", *CENTERNET.outputs]
    proto = convert_graph_model(model, weights, outputs=outputs)
    counts = op_counts(proto)
    assert counts["Conv"] == 89 and counts["Equal"] == 1 and "TopK" not in counts
    feeds = {"tower_0/images": RNG.uniform(0, 255, size=(1, 512, 512, 3)).astype(np.float32)}
    heat, peaks, sides = run_onnx(proto, feeds)
    ref_heat, ref_peaks, ref_sides = run_reference(
        model["modelTopology"]["node"], weights, feeds, outputs)
    assert heat.shape == peaks.shape == ref_peaks.shape == (1, 128, 128, 80)
    assert sides.shape == ref_sides.shape == (1, 128, 128, 4)
    np.testing.assert_allclose(heat, ref_heat, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(sides, ref_sides, rtol=1e-3, atol=1e-2)
    # "equals its 3×3 maximum" flips on near-ties between float orders of summation: the
    # peaks agree everywhere else, to the value
    agree = (peaks > 0) == (ref_peaks > 0)
    assert agree.mean() > 0.999 and np.count_nonzero(ref_peaks) > 1000
    np.testing.assert_allclose(peaks[agree], ref_peaks[agree], rtol=1e-3, atol=1e-4)
