"""``model=onnx``: each family's decoding on graphs whose outputs are known exactly.

The graphs (``support.onnx_graphs``) answer constant tensors, so every expected box is worked
out by hand from the family's layout and preprocessing: letterbox offsets (Ultralytics rounds
``d ∓ 0.1``), YOLOX's top-left padding and grid decoding, DETR's normalised boxes and
softmax with a "no object" column, SSD's y-first boxes, 1-based classes and count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.onnx_graphs import detector, names_metadata, write

from tilescope.models.families import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, place
from tilescope.models.onnx_detector import OnnxDetector

NAMES = ["person", "kite", "dog"]


def blank(height: int, width: int) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def test_yolov8_letterbox_offsets_map_boxes_back(tmp_path: Path) -> None:
    out = np.zeros((4 + 3, 8400), np.float32)
    out[:4, 100] = [320, 200, 100, 50]  # canvas cx, cy, w, h
    out[4 + 1, 100] = 0.9
    out[4 + 2, 200] = 0.1  # below the threshold
    path = write(tmp_path / "v8.onnx", detector({"output0": out},
                                                metadata=names_metadata(NAMES)))
    with OnnxDetector(path) as model:
        assert (model.family, model.category_names) == ("yolov8", NAMES)
        # 480×320 slice → ×4/3 → 640×427 centred: top = round((640 - 427) / 2 - 0.1) = 106
        (dets,) = model.predict([blank(320, 480)])
    np.testing.assert_allclose(dets.boxes, [[270 * 0.75, (175 - 106) * 0.75, 370 * 0.75,
                                             (225 - 106) * 0.75]], rtol=1e-6)
    np.testing.assert_allclose(dets.scores, [0.9], rtol=1e-6)
    assert dets.category_ids.tolist() == [1]


def test_yolov8_fp16_input_and_outputs(tmp_path: Path) -> None:
    out = np.zeros((4 + 3, 8400), np.float32)
    out[:4, 7] = [100, 120, 40, 60]
    out[4 + 2, 7] = 0.75  # exact in float16
    path = write(tmp_path / "v8h.onnx", detector(
        {"output0": out}, input_dtype=np.float16, output_dtype=np.float16,
        metadata=names_metadata(NAMES)))
    with OnnxDetector(path) as model:
        (dets,) = model.predict([blank(640, 640)])
    np.testing.assert_array_equal(dets.boxes, [[80, 90, 120, 150]])
    assert dets.scores.tolist() == [0.75] and dets.category_ids.tolist() == [2]


def test_yolov5_objectness_times_class_and_nms(tmp_path: Path) -> None:
    out = np.zeros((25200, 5 + 3), np.float32)
    out[10] = [200, 300, 100, 100, 0.8, 0.5, 0.0, 0.0]  # score 0.4, class 0
    out[11] = [205, 300, 100, 100, 0.6, 0.5, 0.0, 0.0]  # 0.3, same class, IoU 0.9: dropped
    out[12] = [500, 300, 20, 20, 0.9, 0.0, 0.0, 1.0]  # 0.9, class 2
    path = write(tmp_path / "v5.onnx", detector({"output0": out},
                                                metadata=names_metadata(NAMES)))
    with OnnxDetector(path, score_threshold=0.25) as model:
        assert model.family == "yolov5"
        # 640 wide, 320 high: no scaling, top = round(160 - 0.1) = 160
        (dets,) = model.predict([blank(320, 640)])
    order = np.argsort(-dets.scores)
    np.testing.assert_allclose(dets.boxes[order], [[490, 130, 510, 150], [150, 90, 250, 190]],
                               atol=1e-4)
    np.testing.assert_allclose(dets.scores[order], [0.9, 0.4], rtol=1e-6)
    assert dets.category_ids[order].tolist() == [2, 0]


def test_end2end_nms_in_graph(tmp_path: Path) -> None:
    out = np.zeros((300, 6), np.float32)
    out[0] = [10, 20, 110, 220, 0.95, 2]
    out[1] = [12, 22, 112, 222, 0.90, 2]  # the graph's NMS kept it: so do we
    path = write(tmp_path / "e2e.onnx", detector({"output0": out},
                                                 metadata=names_metadata(NAMES)))
    with OnnxDetector(path) as model:
        assert model.family == "yolo-end2end"
        (dets,) = model.predict([blank(640, 640)])
    np.testing.assert_allclose(dets.boxes, [[10, 20, 110, 220], [12, 22, 112, 222]])
    assert dets.category_ids.tolist() == [2, 2]


def test_yolox_grid_decoding_topleft_padding(tmp_path: Path) -> None:
    cells = 52 * 52 + 26 * 26 + 13 * 13  # strides 8, 16, 32 on 416²
    out = np.zeros((cells, 5 + 3), np.float32)
    anchor = 52 * 52 + 5 * 26 + 7  # stride 16, row 5, column 7
    out[anchor] = [0.5, 0.25, np.log(2.0), np.log(3.0), 1.0, 0.0, 0.8, 0.0]
    path = write(tmp_path / "yolox.onnx", detector(
        {"output": out}, input_shape=(1, 3, 416, 416), metadata=names_metadata(NAMES)))
    with OnnxDetector(path) as model:
        assert model.family == "yolox"
        # 208×104 slice → ×2 → 416×208 at the top left; centre (7.5·16, 5.25·16), 32×48
        (dets,) = model.predict([blank(104, 208)])
    np.testing.assert_allclose(dets.boxes, [[(120 - 16) / 2, (84 - 24) / 2, (120 + 16) / 2,
                                             (84 + 24) / 2]], rtol=1e-5)
    np.testing.assert_allclose(dets.scores, [0.8], rtol=1e-6)


def test_rtdetr_normalised_boxes_stretched_input(tmp_path: Path) -> None:
    out = np.zeros((300, 4 + 3), np.float32)
    out[3] = [0.5, 0.5, 0.25, 0.5, 0.0, 0.0, 0.7]
    path = write(tmp_path / "rtdetr.onnx", detector(
        {"output0": out}, input_shape=("N", 3, 480, 640), metadata=names_metadata(NAMES)))
    with OnnxDetector(path) as model:
        assert model.family == "rtdetr"
        (dets,) = model.predict([blank(320, 480)])
    np.testing.assert_allclose(dets.boxes, [[0.375 * 480, 0.25 * 320, 0.625 * 480,
                                             0.75 * 320]], rtol=1e-6)
    assert dets.category_ids.tolist() == [2]


def test_detr_softmax_with_no_object_column(tmp_path: Path) -> None:
    logits = np.full((100, 3 + 1), -5.0, np.float32)
    logits[0] = [0.0, 4.0, 0.0, 1.0]  # kite, then "no object"
    boxes = np.full((100, 4), 0.5, np.float32)
    boxes[0] = [0.25, 0.25, 0.5, 0.5]
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(NAMES) + "\n")
    path = write(tmp_path / "detr.onnx", detector(
        {"logits": logits, "pred_boxes": boxes}, input_shape=("N", 3, 512, 512)))
    with OnnxDetector(path, labels=str(labels), score_threshold=0.5) as model:
        assert model.family == "detr" and model.category_names == NAMES
        (dets,) = model.predict([blank(200, 400)])
    expected = np.exp(4.0) / (np.exp(4.0) + 1 + 1 + np.exp(1.0))
    np.testing.assert_allclose(dets.scores, [expected], rtol=1e-5)
    np.testing.assert_allclose(dets.boxes, [[0, 0, 200, 100]], atol=1e-4)
    assert dets.category_ids.tolist() == [1]


def test_ssd_tf_style_outputs(tmp_path: Path) -> None:
    boxes = np.zeros((100, 4), np.float32)
    boxes[0] = [0.1, 0.2, 0.5, 0.6]  # y1, x1, y2, x2
    boxes[1] = [0.0, 0.0, 1.0, 1.0]  # past num_detections: never reported
    scores = np.zeros(100, np.float32)
    scores[:2] = [0.8, 0.99]
    classes = np.zeros(100, np.float32)
    classes[:2] = [3, 1]  # 1-based: dog, person
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(NAMES))
    # TF exports list outputs alphabetically: boxes, classes, scores, count
    path = write(tmp_path / "ssd.onnx", detector(
        {"detection_boxes": boxes, "detection_classes": classes, "detection_scores": scores,
         "num_detections": np.array(1.0, np.float32)},
        input_shape=("N", 300, 300, 3), input_dtype=np.uint8, input_name="image_tensor"))
    with OnnxDetector(path, labels=str(labels)) as model:
        assert model.family == "ssd"
        (dets,) = model.predict([blank(300, 600)])
    np.testing.assert_allclose(dets.boxes, [[0.2 * 600, 0.1 * 300, 0.6 * 600, 0.5 * 300]],
                               rtol=1e-6)
    assert dets.category_ids.tolist() == [2] and dets.scores.tolist() == [
        pytest.approx(0.8)]


def test_family_named_in_options_wins(tmp_path: Path) -> None:
    out = np.zeros((4 + 3, 8400), np.float32)
    path = write(tmp_path / "v8.onnx", detector({"output0": out},
                                                metadata=names_metadata(NAMES)))
    with OnnxDetector(path, family="yolov8", resize="resize") as model:
        assert model.family == "yolov8"


def test_preprocessing_channel_order_and_normalisation() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0], image[..., 2] = 255, 51  # R, B
    pre = Preprocessing("resize", mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr=True)
    canvas, placement = place(image, 4, 4, pre)
    lut = pre.lut()
    # network channel 0 is the source's blue, normalised with blue's mean and std
    assert lut[0][canvas[0, 0, 2]] == pytest.approx((51 / 255 - 0.406) / 0.225, rel=1e-5)
    assert lut[2][canvas[0, 0, 0]] == pytest.approx((1.0 - 0.485) / 0.229, rel=1e-5)
    assert (placement.factor_x, placement.factor_y) == (2.0, 2.0)
    letter, where = place(np.zeros((10, 20, 3), np.uint8), 40, 40, Preprocessing())
    assert (where.left, where.top) == (0, 10) and letter[0, 0, 0] == 114


def test_detr_of_two_classes_sigmoid_without_no_object(tmp_path: Path) -> None:
    """Logits narrower than the boxes (2 classes + "no object"), then 2 columns (sigmoid)."""
    boxes = np.full((50, 4), 0.5, np.float32)
    for width, expected in ((3, np.exp(3.0) / (np.exp(3.0) + 2)), (2, 1 / (1 + np.exp(-3.0)))):
        logits = np.full((50, width), -9.0, np.float32)
        logits[0, :2] = [3.0, 0.0]
        if width == 3:
            logits[0, 2] = 0.0
        path = write(tmp_path / f"detr{width}.onnx", detector(
            {"pred_boxes": boxes, "logits": logits}, input_shape=("N", 3, 256, 256)))
        with OnnxDetector(path, labels=["cat", "dog"], score_threshold=0.5) as model:
            (dets,) = model.predict([blank(100, 100)])
        np.testing.assert_allclose(dets.scores, [expected], rtol=1e-5)
        assert dets.category_ids.tolist() == [0]
