"""Merging detections that carry instance masks: an object cut by a slice border comes out
as one detection whose mask is the whole object (the union of its parts), on the small-input
path and on the sparse path; NMS keeps the kept box's mask; boxes merge exactly as without
masks."""

from __future__ import annotations

import numpy as np
import pytest

from tilescope.detections import Detections
from tilescope.instance_masks import Mask
from tilescope.postprocess import merge

SLICES = ((0, 60), (40, 100))  # two slices in x, overlapping over [40, 60)


def disk(cx: float, cy: float, r: float, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    return (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= r * r


def sliced(objects: list[np.ndarray]) -> Detections:
    """What each slice sees of each object (its part inside the slice), in image pixels."""
    parts = []
    for (x1, x2) in SLICES:
        for k, obj in enumerate(objects):
            seen = np.zeros_like(obj)
            seen[:, x1:x2] = obj[:, x1:x2]
            ys, xs = np.nonzero(seen)
            local = Mask.from_array(seen[:, x1:x2])
            box = [xs.min() - x1, ys.min(), xs.max() + 1 - x1, ys.max() + 1]
            score = 0.9 - 0.001 * k - (0.1 if x1 else 0.0)
            parts.append(Detections([box], [score], [0], masks=(local,))
                         .from_slice(0, 0, x2 - x1, obj.shape[0]).shifted(x1, 0))
    return Detections.concat(parts)


def isolated(count: int, top: int) -> Detections:
    """``count`` small lone detections below ``top``: nothing to merge with."""
    boxes = [[5 + 3 * (k % 20), top + 3 * (k // 20), 6 + 3 * (k % 20), top + 1 + 3 * (k // 20)]
             for k in range(count)]
    masks = tuple(Mask.from_array(np.ones((1, 1), bool), int(b[0]), int(b[1])) for b in boxes)
    return Detections(boxes, [0.3] * count, [0] * count, np.zeros((count, 4)), masks)


@pytest.mark.parametrize("strategy", ["greedynmm", "nmm"])
@pytest.mark.parametrize(("count", "lone"), [
    (1, 0),     # 2 detections: the small-input path
    (80, 0),    # 160: the sparse path, groups merged in numpy
    (3, 130),   # 136, 3 groups: the sparse path's scalar tail
])
def test_object_across_a_seam_is_one_detection_with_the_whole_mask(strategy: str,
                                                                  count: int,
                                                                  lone: int) -> None:
    height = 30 * count
    objects = [disk(50, 15 + 30 * k, 12, height, 100) for k in range(count)]
    dets = Detections.concat([sliced(objects), isolated(lone, height)])
    assert len(dets) == 2 * count + lone
    merged = merge(dets, strategy, "ios", 0.5)
    assert len(merged) == count + lone
    for box, mask in zip(merged.boxes[count:], (merged.masks or ())[count:], strict=True):
        assert (mask.x, mask.y, mask.area) == (box[0], box[1], 1)  # each kept its own
    boxes_only = merge(dets.with_masks(None), strategy, "ios", 0.5)
    np.testing.assert_array_equal(merged.boxes, boxes_only.boxes)
    np.testing.assert_array_equal(merged.scores, boxes_only.scores)
    assert boxes_only.masks is None
    merged = merged.select(np.arange(count))
    for k, mask in enumerate(merged.masks or ()):
        expected = Mask.from_array(objects[k])
        assert mask == expected, k
        np.testing.assert_allclose(merged.boxes[k], [38, 3 + 30 * k, 62, 27 + 30 * k])


def test_nms_keeps_the_kept_boxes_mask() -> None:
    dets = sliced([disk(50, 15, 12, 30, 100)])
    kept = merge(dets, "nms", "ios", 0.5)
    assert len(kept) == 1 and kept.masks == (dets.masks or ())[:1]
