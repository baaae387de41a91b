"""CenterNet (the second embedded COCO detector) with the real converted weights: its
decoding on hand-made outputs, its input rule, and what it finds on real photos."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tilescope.models import load_model
from tilescope.models.centernet import (
    GRID,
    INPUT_SIZE,
    STRIDE,
    CenterNetModel,
    decode_centernet,
    preprocess,
)
from tilescope.models.coco import COCO_NAMES
from tilescope.models.registry import model_categories, model_coco_ids, model_slice_size
from tilescope.models.weights import CENTERNET, build_model_onnx, sha256_file
from tilescope.samples import sample_array


@pytest.fixture(scope="module")
def centernet(centernet_onnx: Path) -> Iterator[CenterNetModel]:
    with CenterNetModel(score_threshold=0.3, model_path=centernet_onnx,
                        parallel_slices=2) as model:
        yield model


def found(model: CenterNetModel, image: np.ndarray) -> set[str]:
    (dets,) = model.predict([image])
    return {model.category_names[c] for c in dets.category_ids}


# --------------------------------------------------------------------- decoding


def test_decode_measures_the_sides_from_the_cells_corner_point() -> None:
    peaks = np.zeros((GRID, GRID, 80), np.float32)
    sides = np.zeros((GRID, GRID, 4), np.float32)
    peaks[10, 20, 3] = 0.9  # row 10, column 20: the point (80, 40) on the canvas
    sides[10, 20] = (5, 6, 7, 8)  # left, top, right, bottom
    peaks[50, 60, 0] = 0.2  # below the threshold
    dets = decode_centernet(peaks, sides, 0.3)
    assert dets.boxes.tolist() == [[80 - 5, 40 - 6, 80 + 7, 40 + 8]]
    assert dets.scores.tolist() == pytest.approx([0.9])
    assert dets.category_ids.tolist() == [3]
    # threshold 0 keeps every peak, never the zeroed non-peak cells
    assert len(decode_centernet(peaks, sides, 0.0)) == 2
    assert STRIDE * GRID == INPUT_SIZE


def test_input_is_raw_rgb_top_left_and_never_enlarged() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30
    tensor, factor = preprocess(image)
    assert tensor.shape == (1, INPUT_SIZE, INPUT_SIZE, 3) and factor == 1.0
    assert tensor[0, 99, 199].tolist() == [10, 20, 30]  # RGB, 0–255, not normalised
    assert not tensor[0, 100:].any() and not tensor[0, :, 200:].any()  # black padding
    big, factor = preprocess(np.full((1024, 768, 3), 7, np.uint8))
    assert factor == 0.5 and big[0, 511, 383].tolist() == [7, 7, 7] and not big[0, :, 384:].any()


# --------------------------------------------------------------------- the real model


def test_the_converted_weights_are_pinned(centernet_onnx: Path, nanodet_tarball: Path) -> None:
    assert sha256_file(centernet_onnx) == CENTERNET.onnx_sha256
    assert build_model_onnx(CENTERNET, nanodet_tarball) == centernet_onnx.read_bytes()


@pytest.mark.parametrize(("photo", "expected"), [
    ("dog", {"dog", "bicycle", "car"}),
    ("person", {"person", "dog"}),
    ("eagle", {"bird"}),
    ("giraffe", {"giraffe", "zebra"}),
    ("motorcycle_left", {"motorcycle"}),
])
def test_finds_the_subjects_of_real_photos(centernet: CenterNetModel, photo: str,
                                           expected: set[str]) -> None:
    assert expected <= found(centernet, sample_array(photo))


def test_finds_nothing_on_flat_images(centernet: CenterNetModel) -> None:
    for value in (0, 128, 255):
        assert found(centernet, np.full((512, 512, 3), value, np.uint8)) == set()


def test_boxes_are_in_slice_pixels_whatever_the_slice_size(centernet: CenterNetModel) -> None:
    photo = sample_array("eagle")  # 773×512: shrunk to 512 wide
    twice = cv2.resize(photo, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    (small,), (large,) = centernet.predict([photo]), centernet.predict([twice])
    bird = COCO_NAMES.index("bird")
    a = small.boxes[small.category_ids == bird][0]
    b = large.boxes[large.category_ids == bird][0]
    np.testing.assert_allclose(b / 2, a, atol=8)
    assert a[2] > 500  # the bird spans most of the 773 px width


def test_registered_as_centernet_coco(centernet_onnx: Path) -> None:
    assert model_slice_size("centernet-coco") == INPUT_SIZE
    assert model_categories("centernet-coco") == list(COCO_NAMES)
    assert model_coco_ids("centernet-coco") is not None
    with load_model("centernet-coco", model_path=centernet_onnx, parallel_slices=1) as model:
        assert isinstance(model, CenterNetModel) and model.name == "centernet-coco"
        assert found(model, sample_array("chelsea")) == {"cat"}
