"""Instance masks (:mod:`tilescope.instance_masks`): COCO's compressed RLE written and read
by our own codec, checked on a hand-worked example and against pycocotools; box-local windows moved,
scaled, clipped, united and written as image-sized COCO segmentations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from tilescope.detections import Detections
from tilescope.instance_masks import (
    Mask,
    counts_to_string,
    decode_rle,
    encode_rle,
    string_to_counts,
)
from tilescope.results import RegionFinding, detections_from_compact, detections_to_compact


def reference(binary: np.ndarray) -> str:
    return coco_mask.encode(np.asfortranarray(binary.astype(np.uint8)))["counts"].decode()


def test_hand_worked_rle() -> None:
    # 3×2, column-major: column 0 = 0,1,1 and column 1 = 1,0,0 → runs 1 zero, 3 ones, 2 zeros
    binary = np.array([[0, 1], [1, 0], [1, 0]], bool)
    # runs [1, 3, 2]: 1 → '1', 3 → '3', 2 → '2' (the fourth run on is a delta; none here)
    assert encode_rle(binary) == "132"
    assert string_to_counts("132") == [1, 3, 2]
    # deltas and negatives: [0, 40, 5, 30] → 0, 40 (two 5-bit groups), 5, 30-40 = -10
    assert string_to_counts(counts_to_string([0, 40, 5, 30])) == [0, 40, 5, 30]
    assert (decode_rle("132", 3, 2) == binary).all()


@pytest.mark.parametrize("seed", range(20))
def test_codec_equals_pycocotools(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 60, 2)
    binary = rng.random((h, w)) < rng.random() ** 2
    assert encode_rle(binary) == reference(binary)
    assert (decode_rle(reference(binary), h, w) == binary).all()


@pytest.mark.parametrize("seed", range(20))
def test_box_local_window_to_image_rle(seed: int) -> None:
    """The image-sized RLE is built from the window's runs alone and equals pycocotools'
    encoding of the whole image — also when runs go on from one column's bottom to the next
    column's top (a window touching both the top and the bottom of the image)."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 30, 2)
    binary = rng.random((h, w)) < 0.5
    binary[0, 0] = binary[-1, -1] = True
    height, width = h + int(rng.integers(0, 3)), w + int(rng.integers(0, 9))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    image = np.zeros((height, width), bool)
    image[y:y + h, x:x + w] = binary
    mask = Mask.from_array(binary).shifted(x, y)
    segmentation = mask.to_coco(height, width)
    assert segmentation == {"size": [height, width], "counts": reference(image)}
    assert mask.area == int(binary.sum()) == int(coco_mask.area(
        {"size": [height, width], "counts": segmentation["counts"].encode()}))


def test_window_is_tight_and_ops() -> None:
    binary = np.zeros((10, 10), bool)
    binary[2:5, 3:7] = True
    mask = Mask.from_array(binary, 100, 50)
    assert (mask.x, mask.y, mask.width, mask.height) == (103, 52, 4, 3)
    doubled = mask.transformed(2, 2)
    assert (doubled.x, doubled.y, doubled.width, doubled.height, doubled.area) == \
        (206, 104, 8, 6, 48)
    assert mask.clipped(105, 100).width == 2
    assert mask.clipped(100, 100).area == 0
    other = Mask.from_array(np.ones((1, 1), bool), 110, 52)
    union = Mask.union([mask, other])
    assert (union.x, union.width, union.area) == (103, 8, 13)


def test_masks_travel_with_detections_and_through_json() -> None:
    masks = (Mask.from_array(np.ones((2, 3), bool), 1, 1),
             Mask.from_array(np.eye(4, dtype=bool), 10, 10))
    dets = Detections([[1, 1, 4, 3], [10, 10, 14, 14]], [0.9, 0.8], [0, 1], masks=masks)
    moved = dets.from_slice(0, 0, 20, 20).shifted(100, 200)
    assert [(m.x, m.y) for m in moved.masks or ()] == [(101, 201), (110, 210)]
    assert moved.select(np.array([1])).masks == (moved.masks or ())[1:]
    back = detections_from_compact(detections_to_compact(moved))
    assert back.masks == moved.masks
    assert Detections.concat([dets, Detections([[0, 0, 1, 1]], [0.5], [0])]).masks is None
    assert "masks" not in detections_to_compact(dets.with_masks(None))


@pytest.mark.parametrize("seed", range(10))
def test_from_coco_inverts_to_coco(seed: int) -> None:
    rng = np.random.default_rng(seed)
    binary = rng.random((int(rng.integers(1, 20)), int(rng.integers(1, 20)))) < 0.4
    binary[0, 0] = True
    mask = Mask.from_array(binary, int(rng.integers(0, 30)), int(rng.integers(0, 30)))
    assert Mask.from_coco(mask.to_coco(60, 50)) == mask
    empty = {"size": [4, 4], "counts": counts_to_string([16])}
    assert Mask.from_coco(empty) == Mask(0, 0, 0, 0, "")


def test_region_finding_carries_masks_through_json() -> None:
    """What crosses XCom: a region finding as JSON text, masks and all."""
    mask = Mask.from_array(np.tri(5, dtype=bool), 40, 60)
    dets = Detections([[40, 60, 45, 65]], [0.7], [2], masks=(mask,)).from_slice(0, 0, 64, 64)
    finding = RegionFinding(index=0, name="r0c0", row=0, col=0, box=[0, 0, 64, 64],
                            slice_count=1, detections=dets)
    back = RegionFinding.from_dict(json.loads(json.dumps(finding.to_dict())))
    assert back.detections.masks == (mask,)
