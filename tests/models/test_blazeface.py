"""BlazeFace (the embedded face detector) with the real converted weights: its anchors and
decoding on hand-made outputs, its input rule, and the faces it finds on real photos."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tilescope.models import load_model
from tilescope.models.blazeface import (
    ANCHORS,
    INPUT_SIZE,
    BlazeFaceModel,
    decode_blazeface,
    preprocess,
)
from tilescope.models.registry import model_categories, model_coco_ids, model_slice_size
from tilescope.models.weights import BLAZEFACE, build_model_onnx, sha256_file
from tilescope.params import InferenceParams
from tilescope.pipeline import run_image
from tilescope.readers.array import ArrayReader
from tilescope.results import ImageInfo
from tilescope.samples import sample_array

#: the astronaut's face in scikit-image's photo (512²), boxed by hand
ASTRONAUT_FACE = np.array([172, 74, 277, 180], np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union)


@pytest.fixture(scope="module")
def blazeface(blazeface_onnx: Path) -> Iterator[BlazeFaceModel]:
    with BlazeFaceModel(model_path=blazeface_onnx, parallel_slices=2) as model:
        yield model


# --------------------------------------------------------------------- decoding


def test_anchors_follow_the_networks_output_order() -> None:
    assert ANCHORS.shape == (896, 2)
    # 16×16 cells at stride 16, two anchors each, row by row ...
    assert ANCHORS[:4].tolist() == [[8, 8], [8, 8], [24, 8], [24, 8]]
    assert ANCHORS[32].tolist() == [8, 24]
    # ... then 8×8 cells at stride 32, six anchors each
    assert ANCHORS[512:519].tolist() == [[16, 16]] * 6 + [[48, 16]]
    assert ANCHORS[-1].tolist() == [240, 240]


def test_decode_centres_the_box_on_the_anchor_plus_its_offset() -> None:
    logits = np.full(896, -10.0, np.float32)
    regressors = np.zeros((896, 16), np.float32)
    logits[34] = 2.0  # anchor 34: cell (column 1, row 1) at stride 16 → centre (24, 24)
    regressors[34, :4] = (3, -2, 20, 10)  # centre offset x, y; width, height
    logits[600] = -1.0  # sigmoid 0.27: below 0.5
    dets = decode_blazeface(logits, regressors, 0.5)
    assert dets.boxes.tolist() == [[27 - 10, 22 - 5, 27 + 10, 22 + 5]]
    assert dets.scores.tolist() == pytest.approx([1 / (1 + np.exp(-2.0))])
    assert dets.category_ids.tolist() == [0]


def test_input_is_rgb_in_minus_one_to_one_top_left_on_black() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 0, 255, 51
    tensor, factor = preprocess(image)
    assert tensor.shape == (1, INPUT_SIZE, INPUT_SIZE, 3) and factor == 1.0
    np.testing.assert_allclose(tensor[0, 99, 199], [-1.0, 1.0, -0.6], atol=1e-6)
    assert (tensor[0, 100:] == -1).all() and (tensor[0, :, 200:] == -1).all()
    _, factor = preprocess(np.zeros((512, 1024, 3), np.uint8))
    assert factor == 0.25


# --------------------------------------------------------------------- the real model


def test_the_converted_weights_are_pinned(blazeface_onnx: Path, nanodet_tarball: Path) -> None:
    assert sha256_file(blazeface_onnx) == BLAZEFACE.onnx_sha256
    assert build_model_onnx(BLAZEFACE, nanodet_tarball) == blazeface_onnx.read_bytes()


def test_finds_the_astronauts_face(blazeface: BlazeFaceModel) -> None:
    (dets,) = blazeface.predict([sample_array("astronaut")])
    assert len(dets) == 1 and dets.scores[0] > 0.8
    assert iou(dets.boxes[0], ASTRONAUT_FACE) > 0.8


@pytest.mark.parametrize("value", [0, 128, 255])
def test_finds_nothing_on_flat_images(blazeface: BlazeFaceModel, value: int) -> None:
    (dets,) = blazeface.predict([np.full((480, 640, 3), value, np.uint8)])
    assert len(dets) == 0


def test_finds_nothing_on_photos_without_faces(blazeface: BlazeFaceModel) -> None:
    for photo in ("kite", "giraffe", "motorcycle_left"):  # kite's people are too small
        (dets,) = blazeface.predict([sample_array(photo)])
        assert len(dets) == 0, photo


def test_sliced_run_finds_the_face_in_a_larger_scene(blazeface: BlazeFaceModel) -> None:
    """Through the pipeline with the model's own 256 px slices: the face, at full
    resolution, where it was pasted."""
    scene = np.zeros((1200, 1500, 3), np.uint8)
    scene[300:812, 700:1212] = sample_array("astronaut")
    info = ImageInfo("mem://scene.png", 1500, 1200, "0" * 64, "PNG", scene.nbytes)
    result = run_image(ArrayReader(scene, format="PNG"), info,
                       InferenceParams(model="blazeface"), blazeface)
    assert result.category_names == ["face"]
    faces = result.detections.boxes
    assert len(faces) == 1
    assert iou(faces[0], ASTRONAUT_FACE + np.float32([700, 300, 700, 300])) > 0.7


def test_registered_as_blazeface(blazeface_onnx: Path) -> None:
    assert model_slice_size("blazeface") == INPUT_SIZE
    assert model_categories("blazeface") == ["face"] and model_coco_ids("blazeface") is None
    with load_model("blazeface", model_path=blazeface_onnx, parallel_slices=1) as model:
        assert isinstance(model, BlazeFaceModel)
        (dets,) = model.predict([sample_array("astronaut")])
        assert len(dets) == 1


def test_mediapipes_thresholds_are_its_defaults_and_options_win(blazeface_onnx: Path) -> None:
    """MediaPipe's 0.5 / 0.3 unless given (the shared embedded defaults are 0.4 / 0.5).
    Seen red with BlazeFace's configured_options removed (0.4 / 0.5)."""
    with BlazeFaceModel(model_path=blazeface_onnx, parallel_slices=1) as model:
        assert (model.score_threshold, model.nms_threshold) == (0.5, 0.3)
    with load_model("blazeface", model_path=blazeface_onnx, parallel_slices=1,
                    score_threshold=0.7, nms_threshold=0.45) as model:
        assert (model.score_threshold, model.nms_threshold) == (0.7, 0.45)
