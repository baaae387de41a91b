"""``model=onnx`` with a YOLOv8-seg graph: masks decoded from prototypes and coefficients.

The graph (``support.onnx_graphs``) answers constant tensors: one candidate box, one mask
coefficient of 1 and a prototype that is +10 on a block of cells and −10 elsewhere. Upsampled
×4 bilinearly (``align_corners=False``), the value crosses 0 exactly half-way between a
−10 cell and a +10 cell, so the mask is the block's cells times 4, cropped to the box — by
hand, in canvas pixels — then moved by the letterbox offset into the slice. Only the block's
corner pixels differ: there three of the four cells mixed are −10, e.g. at the bottom-left
corner 0.625 × (0.375 × −10 + 0.625 × 10) + 0.375 × −10 = −2.19, so bilinear upsampling
rounds each corner off by one pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support.onnx_graphs import detector, names_metadata, write

from tilescope.masks import Mask
from tilescope.models.onnx_detector import OnnxDetector

NAMES = ["person", "kite", "dog"]
SIDE = 64          # network input 64×64: anchors 8² + 4² + 2² = 84
ANCHORS = 84
COEFFICIENTS = 32


def seg_graph(tmp_path: Path) -> str:
    """One kite at canvas box x 10–40, y 20–60 whose prototype block is cells rows 2–7 ×
    cols 3–7 (canvas pixels rows 8–31, cols 12–31)."""
    pred = np.zeros((4 + len(NAMES) + COEFFICIENTS, ANCHORS), np.float32)
    pred[:4, 7] = [25, 40, 30, 40]        # cx, cy, w, h → x1 10, y1 20, x2 40, y2 60
    pred[4 + 1, 7] = 0.9
    pred[4 + len(NAMES), 7] = 1.0         # coefficient of prototype 0
    protos = np.full((COEFFICIENTS, SIDE // 4, SIDE // 4), -10, np.float32)
    protos[0, 2:8, 3:8] = 10
    protos[1:] = 0
    return write(tmp_path / "seg.onnx", detector(
        {"output0": pred, "output1": protos}, input_shape=("N", 3, SIDE, SIDE),
        metadata=names_metadata(NAMES)))


def expected_canvas_mask() -> np.ndarray:
    canvas = np.zeros((SIDE, SIDE), bool)
    canvas[8:32, 12:32] = True            # the block × 4
    canvas[[8, 8, 31, 31], [12, 31, 12, 31]] = False  # its corners, rounded off
    box = np.zeros_like(canvas)
    box[20:60, 10:40] = True              # pixel centres inside the box
    return canvas & box


def test_yolov8_seg_mask_by_hand(tmp_path: Path) -> None:
    with OnnxDetector(seg_graph(tmp_path)) as model:
        assert model.family == "yolov8-seg"
        # a 64-wide, 32-high slice: letterboxed at ratio 1, top = round(16 - 0.1) = 16
        (dets,) = model.predict([np.zeros((32, SIDE, 3), np.uint8)])
    assert dets.category_ids.tolist() == [1]
    np.testing.assert_allclose(dets.boxes, [[10, 4, 40, 32]])
    expected = expected_canvas_mask()[16:48]
    assert dets.masks == (Mask.from_array(expected),)
    assert dets.masks[0].area == 12 * 20 - 2  # canvas rows 20–31 × columns 12–31, 2 corners


def test_yolov8_seg_mask_resampled_into_a_larger_slice(tmp_path: Path) -> None:
    """A 128×128 slice is halved onto the canvas: its mask is the canvas mask doubled."""
    with OnnxDetector(seg_graph(tmp_path)) as model:
        (dets,) = model.predict([np.zeros((128, 128, 3), np.uint8)])
    doubled = np.repeat(np.repeat(expected_canvas_mask(), 2, axis=0), 2, axis=1)
    np.testing.assert_allclose(dets.boxes, [[20, 40, 80, 120]])
    assert dets.masks == (Mask.from_array(doubled),)
