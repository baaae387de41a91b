"""``anonymize=face``: the real BlazeFace detector run sliced over the image by the ordinary
pipeline, its boxes blurred; nothing found, nothing changed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tilescope.anonymize import (
    anonymized_reader,
    boxes_to_anonymize,
    check_anonymize,
    margin_boxes,
)
from tilescope.detections import Detections
from tilescope.params import InferenceParams
from tilescope.readers.array import ArrayReader
from tilescope.results import ImageInfo
from tilescope.samples import sample_array

#: the astronaut's face in scikit-image's photo (512²), boxed by hand
ASTRONAUT_FACE = np.array([172, 74, 277, 180])


def scene_with_a_face() -> np.ndarray:
    """The astronaut pasted into a larger dark scene: the face only a sliced run sees at
    full resolution (a whole-image pass would shrink it)."""
    scene = np.full((1200, 1500, 3), 40, np.uint8)
    scene[300:812, 700:1212] = sample_array("astronaut")
    return scene


def faces_and_copy(pixels: np.ndarray) -> tuple[np.ndarray, dict, np.ndarray]:
    reader = ArrayReader(pixels, format="PNG")
    image = ImageInfo("mem://scene.png", reader.width, reader.height, "0" * 64, "PNG",
                      pixels.nbytes)
    params = InferenceParams(anonymize="face", anonymize_margin=0.15)
    boxes, counts = boxes_to_anonymize(reader, image, Detections.empty(), [], params)
    return boxes, counts, anonymized_reader(reader, boxes, params).read_all()


def test_the_face_in_a_larger_scene_is_found_sliced_and_blurred():
    pixels = scene_with_a_face()
    boxes, counts, copy = faces_and_copy(pixels)
    assert counts == {"face": 1} and len(boxes) == 1
    face = ASTRONAUT_FACE + np.array([700, 300, 700, 300])
    x1, y1, x2, y2 = face
    found = boxes[0]
    assert found[0] < x1 + 20 and found[1] < y1 + 20 and found[2] > x2 - 20 \
        and found[3] > y2 - 20  # the detector's box covers the hand-drawn one (± 20 px)
    gx1, gy1, gx2, gy2 = margin_boxes(boxes, 0.15, 1500, 1200)[0]  # the anonymized box
    grey = [cv2.cvtColor(p[gy1:gy2, gx1:gx2], cv2.COLOR_RGB2GRAY) for p in (pixels, copy)]
    before, after = (cv2.Laplacian(g, cv2.CV_64F).var() for g in grey)
    assert after < 0.1 * before
    changed = np.any(copy != pixels, axis=2)
    ys, xs = np.nonzero(changed)
    margin = 0.15 * (found[2:] - found[:2])  # nothing changed beyond the grown face box
    assert xs.min() >= found[0] - margin[0] - 1 and xs.max() <= found[2] + margin[0] + 1
    assert ys.min() >= found[1] - margin[1] - 1 and ys.max() <= found[3] + margin[1] + 1


@pytest.mark.parametrize("value", [0, 128])
def test_no_face_no_change(value):
    pixels = np.full((700, 900, 3), value, np.uint8)  # blank images
    boxes, counts, copy = faces_and_copy(pixels)
    assert counts == {"face": 0} and len(boxes) == 0
    assert np.array_equal(copy, pixels)


def test_face_goes_with_any_model_and_classes():
    targets = check_anonymize(InferenceParams(anonymize="person,face"))
    assert targets is not None and targets.faces and targets.classes == ("person",)
