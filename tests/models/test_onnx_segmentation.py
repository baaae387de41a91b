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

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from support.onnx_graphs import detector, names_metadata, write

from tilescope.cli import main
from tilescope.errors import BadModelError
from tilescope.instance_masks import Mask
from tilescope.models import families
from tilescope.models.onnx_detector import OnnxDetector
from tilescope.results import Result

#: pycocotools' decode under numpy 2 warns about ``__array__``; harmless here
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

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


def test_cli_predict_writes_segmentation(tmp_path: Path) -> None:
    """``tilescope predict --model onnx`` on a 128×64 image in two 64² slices: each slice
    finds the object, and coco.json (and result.json) hold each one's mask as an RLE of the
    whole image that pycocotools decodes to the hand-worked pixels, moved by its slice."""
    image = tmp_path / "two.png"
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(image)
    coco, out = tmp_path / "coco.json", tmp_path / "result.json"
    assert main(["predict", str(image), "--model", "onnx", "--model-option",
                 f"path={seg_graph(tmp_path)}", "--slice", "64", "--overlap", "0",
                 "--coco", str(coco), "--out", str(out), "--quiet"]) == 0
    annotations = sorted(json.loads(coco.read_text())["annotations"],
                         key=lambda a: a["bbox"][0])
    assert [a["bbox"] for a in annotations] == [[10, 20, 30, 40], [74, 20, 30, 40]]
    for annotation, left in zip(annotations, (0, 64), strict=True):
        expected = np.zeros((64, 128), bool)
        expected[:, left:left + SIDE] = expected_canvas_mask()
        segmentation = annotation["segmentation"]
        assert segmentation["size"] == [64, 128]
        decoded = coco_mask.decode({"size": segmentation["size"],
                                    "counts": segmentation["counts"].encode()})
        np.testing.assert_array_equal(decoded, expected)
        assert annotation["area"] == int(expected.sum()) == 238
    result = Result.from_dict(json.loads(out.read_text()))
    assert result.to_coco()["annotations"] == json.loads(coco.read_text())["annotations"]


def test_yolov8_seg_named_on_a_detector_without_prototypes(tmp_path: Path) -> None:
    path = write(tmp_path / "v8.onnx", detector(
        {"output0": np.zeros((4 + len(NAMES), ANCHORS), np.float32)},
        input_shape=("N", 3, SIDE, SIDE), metadata=names_metadata(NAMES)))
    with pytest.raises(BadModelError, match="not a yolov8-seg model: its outputs"):
        OnnxDetector(path, family="yolov8-seg")


def test_masks_are_made_for_boxes_kept_by_nms_only(tmp_path: Path, monkeypatch) -> None:
    """Three candidates, two of them the same kite (IoU 0.9): NMS runs before the masks, as
    Ultralytics does, so two masks are made, not three (counted with a spy)."""
    pred = np.zeros((4 + len(NAMES) + COEFFICIENTS, ANCHORS), np.float32)
    pred[:4, 7] = [25, 40, 30, 40]
    pred[:4, 8] = [25, 41, 30, 38]        # inside the first: IoU 38/40 = 0.95
    pred[:4, 9] = [52, 10, 10, 10]        # elsewhere
    pred[4 + 1, [7, 8, 9]] = [0.9, 0.8, 0.7]
    pred[4 + len(NAMES), [7, 8, 9]] = 1.0
    protos = np.full((COEFFICIENTS, SIDE // 4, SIDE // 4), -10, np.float32)
    protos[0, 2:8, 3:8] = 10
    protos[1:] = 0
    path = write(tmp_path / "three.onnx", detector(
        {"output0": pred, "output1": protos}, input_shape=("N", 3, SIDE, SIDE),
        metadata=names_metadata(NAMES)))
    made = []
    real = families._instance_mask
    monkeypatch.setattr(families, "_instance_mask",
                        lambda box, *rest: made.append(box.tolist()) or real(box, *rest))
    with OnnxDetector(path) as model:
        made.clear()  # the probe's blank run
        (dets,) = model.predict([np.zeros((SIDE, SIDE, 3), np.uint8)])
    assert dets.scores.tolist() == pytest.approx([0.9, 0.7])
    assert made == [[10, 20, 40, 60], [47, 5, 57, 15]]
    assert dets.masks is not None and dets.masks[0] == Mask.from_array(expected_canvas_mask())
