"""NanoDet on real photos (scikit-image's bundled samples) with the real converted weights.

What is asserted was observed to be robust: the top detection's class and rough extent on
photos with one large, clear subject, mirror consistency and exact slice-pixel geometry.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest
import skimage.data

from tilescope.detections import Detections
from tilescope.errors import ConfigError
from tilescope.models import load_model
from tilescope.models.coco import COCO_CATEGORY_IDS, COCO_NAMES, coco_category_id, contiguous_id
from tilescope.models.nanodet import (
    INPUT_SIZE,
    STRIDES,
    NanoDetModel,
    decode_nanodet,
    preprocess,
)
from tilescope.models.registry import model_categories, model_coco_ids, model_slice_size

_MEAN_RGB = np.array([123.675, 116.28, 103.53], np.float32)
_STD_RGB = np.array([58.395, 57.12, 57.375], np.float32)


def rgb(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.stack([image] * 3, axis=-1) if image.ndim == 2 else image)


PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": skimage.data.astronaut,
    "chelsea": skimage.data.chelsea,
    "camera": lambda: rgb(skimage.data.camera()),
    "motorcycle_left": lambda: skimage.data.stereo_motorcycle()[0],
    "coffee": skimage.data.coffee,
}


def names(model: NanoDetModel, dets: Detections) -> list[str]:
    return [model.category_names[c] for c in dets.category_ids]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


# --------------------------------------------------------------------- real photos


@pytest.mark.parametrize(
    ("photo", "category", "min_score", "box"),
    [
        # the astronaut: head to bottom edge, left part of the frame
        ("astronaut", "person", 0.6, (15, 15, 364, 508)),
        ("camera", "person", 0.75, (4, 68, 318, 512)),  # the cameraman
        ("chelsea", "cat", 0.5, (2, 2, 436, 298)),  # the cat fills the photo
        ("motorcycle_left", "motorcycle", 0.7, (99, 84, 687, 451)),
    ],
)
def test_finds_the_subject(
    nanodet: NanoDetModel, photo: str, category: str, min_score: float, box: tuple[int, ...]
) -> None:
    image = PHOTOS[photo]()
    dets = nanodet.predict([image])[0].sorted_by_score()
    assert len(dets) >= 1
    assert names(nanodet, dets)[0] == category
    assert dets.scores[0] >= min_score
    assert iou(dets.boxes[0], np.array(box, np.float32)) > 0.9
    # one subject, so after per-slice NMS there is one box of that class
    assert names(nanodet, dets).count(category) == 1


def test_coffee_has_table_things_and_no_living_thing(nanodet_onnx) -> None:
    """No strong subject in ``coffee``: at 0.3 the table setting shows up, never a creature."""
    with NanoDetModel(score_threshold=0.3, model_path=nanodet_onnx, parallel_slices=1) as model:
        found = set(names(model, model.predict([PHOTOS["coffee"]()])[0]))
    assert found & {"dining table", "cup"}
    living = set(COCO_NAMES[:1]) | set(COCO_NAMES[14:24])  # person, bird ... giraffe
    assert not found & living


def test_blank_slice_has_no_detections(nanodet: NanoDetModel) -> None:
    gray = np.full((300, 400, 3), 128, np.uint8)
    black = np.zeros((416, 416, 3), np.uint8)
    assert [len(d) for d in nanodet.predict([gray, black])] == [0, 0]


@pytest.mark.parametrize("photo", ["astronaut", "camera", "motorcycle_left"])
def test_horizontal_flip_mirrors_boxes(nanodet: NanoDetModel, photo: str) -> None:
    """Boxes of the mirrored photo mirror the original's (catches a missing half-cell offset,
    which shifts both by half a stride in opposite directions)."""
    image = PHOTOS[photo]()
    width = image.shape[1]
    original, flipped = nanodet.predict([image, np.ascontiguousarray(image[:, ::-1])])
    top, top_flipped = original.sorted_by_score(), flipped.sorted_by_score()
    assert top.category_ids[0] == top_flipped.category_ids[0]
    mirrored = top_flipped.boxes[0].copy()
    mirrored[[0, 2]] = width - top_flipped.boxes[0][[2, 0]]
    np.testing.assert_allclose(mirrored, top.boxes[0], atol=0.025 * width)
    assert iou(mirrored, top.boxes[0]) > 0.93


# --------------------------------------------------------------------- preprocessing rule


def test_small_slice_is_not_enlarged_and_padding_is_zero() -> None:
    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    tensor, factor = preprocess(image)
    assert factor == 1.0
    assert tensor.shape == (1, 3, INPUT_SIZE, INPUT_SIZE) and tensor.dtype == np.float32
    expected_rgb = (image.astype(np.float32) - _MEAN_RGB) / _STD_RGB
    # channel 0 of the network input is *blue*
    np.testing.assert_allclose(
        tensor[0, :, :150, :200], expected_rgb[..., ::-1].transpose(2, 0, 1), rtol=1e-5, atol=1e-5
    )
    assert not tensor[0, :, 150:, :].any() and not tensor[0, :, :, 200:].any()


def test_mean_colour_normalizes_to_zero() -> None:
    mean_pixel = np.round(_MEAN_RGB).astype(np.uint8)
    tensor, _ = preprocess(np.broadcast_to(mean_pixel, (416, 416, 3)).copy())
    assert np.abs(tensor).max() < 0.01


def test_big_slice_is_shrunk_keeping_aspect() -> None:
    image = np.full((624, 832, 3), 255, np.uint8)
    tensor, factor = preprocess(image)
    assert factor == pytest.approx(0.5)
    content = tensor[0, 0] != 0
    rows, cols = np.nonzero(content)
    assert (rows.max() + 1, cols.max() + 1) == (312, 416)  # 624x832 -> 312x416, top-left


def test_preprocess_refuses_non_rgb_uint8() -> None:
    with pytest.raises(ConfigError):
        preprocess(np.zeros((10, 10), np.uint8))
    with pytest.raises(ConfigError):
        preprocess(np.zeros((10, 10, 3), np.float32))


def test_boxes_come_back_in_slice_pixels(nanodet: NanoDetModel) -> None:
    """The same scene at 256², 512² and 1024²: one box, scaled by the slice size."""
    image = PHOTOS["astronaut"]()
    sizes = (256, 512, 1024)
    slices = [cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA) for s in sizes]
    results = nanodet.predict(slices)
    person = COCO_NAMES.index("person")
    boxes = []
    for size, dets in zip(sizes, results, strict=True):
        best = dets.select(dets.category_ids == person).sorted_by_score()
        assert len(best) >= 1
        assert (best.boxes >= 0).all() and (best.boxes <= size).all()
        boxes.append(best.boxes[0] * (512 / size))
    # 512 and 1024 both fill the canvas; 256 is not enlarged (a 256² corner of it)
    np.testing.assert_allclose(boxes[2], boxes[1], atol=4)
    np.testing.assert_allclose(boxes[0], boxes[1], atol=12)


def test_boxes_are_clipped_to_the_slice(nanodet: NanoDetModel) -> None:
    crop = np.ascontiguousarray(PHOTOS["astronaut"]()[:300, :300])
    dets = nanodet.predict([crop])[0]
    assert len(dets)
    assert dets.boxes.min() >= 0 and dets.boxes.max() <= 300
    assert np.isclose(dets.boxes[:, 2], 300).any()  # the person continues past the right edge


# --------------------------------------------------------------------- decoding


def test_decode_uses_cell_centres_and_expected_distances() -> None:
    """One confident stride-16 cell; the box is its centre ± expectation × stride."""
    scores = [np.zeros(((INPUT_SIZE // s) ** 2, 80), np.float32) for s in STRIDES]
    boxes = [np.zeros(((INPUT_SIZE // s) ** 2, 44), np.float32) for s in STRIDES]
    n = INPUT_SIZE // 16
    cell = 5 * n + 7  # row 5, column 7 -> centre (7.5 * 16, 5.5 * 16) = (120, 88)
    scores[1][cell, 15] = 0.9
    logits = np.full((4, 11), -50.0, np.float32)
    logits[0, 2] = logits[1, 3] = logits[3, 1] = 50.0  # left 2, top 3, bottom 1 bins
    logits[2, 4:6] = 50.0  # right: half in bin 4, half in bin 5 -> 4.5
    boxes[1][cell] = logits.reshape(-1)
    dets = decode_nanodet(scores, boxes, 0.4)
    assert len(dets) == 1 and dets.category_ids[0] == 15
    np.testing.assert_allclose(dets.scores, [0.9])
    np.testing.assert_allclose(dets.boxes[0], [120 - 32, 88 - 48, 120 + 72, 88 + 16], atol=1e-3)


def test_decode_is_multi_label_and_thresholded() -> None:
    scores = [np.zeros(((INPUT_SIZE // s) ** 2, 80), np.float32) for s in STRIDES]
    boxes = [np.zeros(((INPUT_SIZE // s) ** 2, 44), np.float32) for s in STRIDES]
    scores[2][0, [0, 16]] = [0.5, 0.45]
    scores[2][1, 3] = 0.39
    dets = decode_nanodet(scores, boxes, 0.4)
    assert sorted(dets.category_ids.tolist()) == [0, 16]
    # uniform bins: expectation 5 bins x stride 32 around the centre (16, 16)
    np.testing.assert_allclose(dets.boxes[0], [16 - 160, 16 - 160, 16 + 160, 16 + 160])


# --------------------------------------------------------------------- model behaviour


def test_registry_builds_nanodet(nanodet_onnx) -> None:
    assert model_slice_size("nanodet-coco") == 416
    assert model_categories("nanodet-coco") == list(COCO_NAMES)
    assert model_coco_ids("nanodet-coco") == list(COCO_CATEGORY_IDS)
    model = load_model("nanodet-coco", model_path=nanodet_onnx, parallel_slices=1)
    try:
        assert isinstance(model, NanoDetModel)
        assert model.preferred_slice_size == 416
        assert len(model.category_names) == 80 and model.category_names[15] == "cat"
    finally:
        model.close()


def test_parallel_predict_equals_sequential(nanodet: NanoDetModel) -> None:
    images = [PHOTOS[p]() for p in ("astronaut", "chelsea", "camera", "motorcycle_left")] * 2
    parallel = nanodet.predict(images)
    sequential = [nanodet.predict_one(image) for image in images]
    for a, b in zip(parallel, sequential, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.category_ids, b.category_ids)


def test_empty_inputs(nanodet: NanoDetModel) -> None:
    assert nanodet.predict([]) == []
    assert len(nanodet.predict([np.zeros((0, 10, 3), np.uint8)])[0]) == 0


@pytest.mark.parametrize(
    "options",
    [
        {"score_threshold": 1.5},
        {"nms_threshold": 0},
        {"intra_op_threads": 0},
        {"parallel_slices": 0},
    ],
)
def test_invalid_options(options: dict[str, float], nanodet_onnx) -> None:
    with pytest.raises(ConfigError):
        NanoDetModel(model_path=nanodet_onnx, **options)


def test_coco_ids() -> None:
    assert len(COCO_NAMES) == len(COCO_CATEGORY_IDS) == 80
    assert tuple(sorted(set(COCO_CATEGORY_IDS))) == COCO_CATEGORY_IDS
    assert coco_category_id(0) == 1 and coco_category_id(79) == 90
    assert coco_category_id(COCO_NAMES.index("cat")) == 17
    assert contiguous_id(90) == 79
    with pytest.raises(ValueError):
        contiguous_id(12)  # a gap in COCO's ids
