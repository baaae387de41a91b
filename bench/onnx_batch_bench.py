"""What batching slices buys ``model=onnx`` on the CPU: slices per second with ``batch`` 1
against 2, 4 and 8 slices per ``session.run``, in one sitting, as ratios.

The network is built here with ``onnx.helper``: a YOLOv8n-sized convolutional stack (about
4 GFLOPs a 640² slice, random weights, class scores biased far below any threshold so
decoding costs what it costs on an empty photo) ending in YOLOv8's (N, 84, 8400) layout
with a dynamic batch axis — what ``yolo export format=onnx dynamic=True`` gives. The
slices are real photo crops. Each setting runs ``--slices`` slices through
``OnnxDetector.predict`` after a warm-up, on one thread (``parallel_slices=1``) and on the
slice pool (one thread a core, the default); the settings take turns ``--rounds`` times and
each keeps its best, so a passing load does not favour one.

    python bench/onnx_batch_bench.py [--slices 16] [--size 640] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def yolo_like(size: int) -> bytes:
    """A YOLOv8n-sized ONNX detector with random weights and a dynamic batch axis."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def conv(source: str, cin: int, cout: int, stride: int, name: str, act: bool = True,
             kernel: int = 3, bias: float = 0.0) -> str:
        weight = rng.normal(0, (2.0 / (cin * kernel * kernel)) ** 0.5,
                            (cout, cin, kernel, kernel)).astype(np.float32)
        inits.extend([numpy_helper.from_array(weight, f"{name}_w"),
                      numpy_helper.from_array(np.full(cout, bias, np.float32), f"{name}_b")])
        nodes.append(helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [name],
                                      strides=[stride, stride], pads=[kernel // 2] * 4))
        if not act:
            return name
        nodes.append(helper.make_node("Relu", [name], [f"{name}_r"]))
        return f"{name}_r"

    x = conv("images", 3, 16, 2, "stem")
    widths, features = [16, 32, 64, 128, 256], []
    for level in range(1, 5):
        x = conv(x, widths[level - 1], widths[level], 2, f"down{level}")
        for block in range(2):
            x = conv(x, widths[level], widths[level], 1, f"c{level}_{block}")
        if level >= 2:
            features.append((x, widths[level]))
    heads = []
    for i, (feature, width) in enumerate(features):
        head = conv(feature, width, 84, 1, f"head{i}", act=False, kernel=1, bias=-8.0)
        inits.append(numpy_helper.from_array(np.array([0, 84, -1], np.int64), f"shape{i}"))
        nodes.append(helper.make_node("Reshape", [head, f"shape{i}"], [f"flat{i}"]))
        heads.append(f"flat{i}")
    nodes += [helper.make_node("Concat", heads, ["raw"], axis=2),
              helper.make_node("Sigmoid", ["raw"], ["output0"])]
    anchors = sum((size // s) ** 2 for s in (8, 16, 32))
    graph = helper.make_graph(
        nodes, "yolo_like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 84, anchors])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    entry = model.metadata_props.add()
    entry.key, entry.value = "names", repr({i: f"class{i}" for i in range(80)})
    return model.SerializeToString()


def photo_slices(count: int, size: int) -> list[np.ndarray]:
    from tilescope.readers import open_image
    from tilescope.samples import sample_path

    reader, _ = open_image(str(sample_path("kite")))
    pixels = reader.read_all()
    height, width = pixels.shape[:2]
    out = []
    for i in range(count):
        y = (i * 97) % max(1, height - size)
        x = (i * 131) % max(1, width - size)
        out.append(np.ascontiguousarray(pixels[y:y + size, x:x + size]))
    return out


def rates(path: str, slices: list[np.ndarray], settings: dict[str, tuple[Any, int | None]],
          rounds: int) -> dict[str, float]:
    """Slices per second through ``OnnxDetector.predict`` per setting (``batch``,
    ``parallel_slices``): the settings take turns, ``rounds`` times, best of each kept, so
    a load that comes and goes weighs on all of them alike."""
    from tilescope.models.onnx_detector import OnnxDetector

    models = {label: OnnxDetector(path, batch=batch, parallel_slices=parallel)
              for label, (batch, parallel) in settings.items()}
    best = dict.fromkeys(settings, float("inf"))
    try:
        for model in models.values():
            model.predict(slices[:8])  # warm-up: allocations, not timed
        for _ in range(rounds):
            for label, model in models.items():
                started = time.perf_counter()
                model.predict(slices)
                best[label] = min(best[label], time.perf_counter() - started)
    finally:
        for model in models.values():
            model.close()
    return {label: len(slices) / seconds for label, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "yolo_like.onnx"
        path.write_bytes(yolo_like(args.size))
        slices = photo_slices(args.slices, args.size)
        for label, parallel in (("one thread", 1), ("slice pool", None)):
            settings = {str(b): (b, parallel) for b in (1, 2, 4, 8, "auto")}
            measured = rates(str(path), slices, settings, args.rounds)
            print(f"{label}: batch 1 = {measured['1']:.2f} slices/s; " + ", ".join(
                f"batch {b} / batch 1 = {measured[b] / measured['1']:.2f}"
                for b in ("2", "4", "8", "auto")), flush=True)


if __name__ == "__main__":
    main()
